"""``ddp_spawn``: ``ddp`` with the processes made by ``torch.multiprocessing`` instead of by re-running the script.

The trained weights, ``callback_metrics``, the loop counters and the callbacks' state come back to the calling
process, so ``trainer.fit(model)`` leaves ``model`` trained there, as with one process.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch.multiprocessing as mp

from torchplug import ClusterInfo, MisconfigurationError
from torchplug_ddp import _spawn
from torchplug_ddp.strategies.ddp import DDPStrategy

if TYPE_CHECKING:
    from torchplug import Trainer


class DDPSpawnStrategy(DDPStrategy):
    """Takes every ``ddp`` option, and ``start_method``: ``"spawn"`` (default) or ``"fork"``.

    ``"forkserver"`` is refused: its workers are children of the fork server, not of this process, so the
    watchdog that ends them when the caller dies cannot hold.
    """

    def __init__(
        self,
        find_unused_parameters: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
        sync_batchnorm: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = False,
        bucket_cap_mb: float | None = None,
        broadcast_buffers: bool = True,
        start_method: str = "spawn",
    ) -> None:
        super().__init__(
            find_unused_parameters=find_unused_parameters, process_group_backend=process_group_backend,
            timeout=timeout, sync_batchnorm=sync_batchnorm, static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view, bucket_cap_mb=bucket_cap_mb,
            broadcast_buffers=broadcast_buffers,
        )  # fmt: skip
        methods = [m for m in mp.get_all_start_methods() if m != "forkserver"]
        if start_method not in methods:
            raise MisconfigurationError(f"start_method={start_method!r}: this platform offers {', '.join(methods)}")
        self.start_method = start_method

    def _launch_processes(self, trainer: Trainer, function: Callable[[], Any], info: ClusterInfo) -> Any:
        has_payload, payload = _spawn.spawn(
            function,
            num_processes=trainer.num_processes,
            num_nodes=trainer.num_nodes,
            node_rank=info.node_rank,
            main_address=info.main_address,
            main_port=info.main_port,
            start_method=self.start_method,
        )
        if not has_payload:
            return None
        self._restore_in_caller(trainer, function, payload)
        return payload["result"]

    @staticmethod
    def _restore_in_caller(trainer: Trainer, function: Callable[[], Any], payload: dict[str, Any]) -> None:
        model = trainer.lightning_module
        if model is not None and "state_dict" in payload:
            model.load_state_dict(payload["state_dict"])
            trainer.lightning_module = model
        if "callback_metrics" in payload:
            trainer.callback_metrics = payload["callback_metrics"]
            trainer.logged_metrics = payload["logged_metrics"]
            trainer.current_epoch, trainer.global_step = payload["current_epoch"], payload["global_step"]
            for callback, state in zip(trainer.callbacks, payload["callbacks"]):
                if state:
                    callback.load_state_dict(state)

"""``ddp_spawn``: ``ddp`` with the processes made by ``torch.multiprocessing`` instead of by re-running the script.

The trained weights, ``callback_metrics``, the loop counters and the callbacks' state come back to the calling
process (:func:`torchplug.distributed.adopt_run`), so ``trainer.fit(model)`` leaves ``model`` trained there, as
with one process.
"""

from __future__ import annotations

from torchplug_ddp.strategies.ddp import DDPStrategy


class DDPSpawnStrategy(DDPStrategy):
    """Takes every ``ddp`` option; ``start_method`` is ``"spawn"`` (default) or ``"fork"``.

    ``"forkserver"`` is refused: its workers are children of the fork server, not of this process, so the
    watchdog that ends them when the caller dies cannot hold.
    """

    default_start_method = "spawn"

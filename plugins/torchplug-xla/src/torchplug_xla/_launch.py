"""Running a trainer's stage in every XLA replica with ``xmp.spawn``, and bringing rank 0's outcome home.

``xmp.spawn`` starts one process per TPU chip (and, on chips with two TensorCores, one thread per core) and
discards what the replicas return. Replica 0 therefore writes its outcome to a private file: the stage's result
and what the launching process needs to look as if it had trained itself (the module's weights, the step and
epoch counters, metrics and callback state such as the best checkpoint's path). With one device, ``xmp.spawn``
runs the stage in this very process and nothing needs to come back.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch

from torchplug import MisconfigurationError, ProcessFailedError
from torchplug.utilities import apply_to_collection
from torchplug_xla import _runtime

_OUTCOME_FILE = "replica0.pt"


class _Replica:
    """The function ``xmp.spawn`` calls with the replica's index, in each process or thread.

    It carries the stage pickled, and unpickles a private copy per call: replicas that are threads of one process
    must not share one trainer and module.
    """

    def __init__(self, function: Callable[[], Any], outcome_dir: str, host_devices: int) -> None:
        try:
            self.payload = pickle.dumps(function)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise MisconfigurationError(
                "strategy='xla' starts one process per device and sends each the module, the dataloaders and the "
                f"Trainer's arguments by pickling them, which failed: {type(err).__name__}: {err}. Define them at "
                "module level (no lambdas, local classes or open handles), or use strategy='xla_spmd' (one process)"
            ) from err
        self.outcome_dir = outcome_dir
        self.host_devices = host_devices

    def __call__(self, index: int) -> None:
        import torch_xla.runtime as xr

        # This replica sees its own chip only; the trainer rebuilt below must count the host's devices.
        os.environ[_runtime.HOST_DEVICES] = str(self.host_devices)
        try:
            function = pickle.loads(self.payload)
            result = function()
        except BaseException as err:
            # The exception crosses a process boundary: keep its text and traceback, not its (maybe unpicklable) type.
            raise ProcessFailedError(
                f"XLA replica {index} failed with {type(err).__name__}: {err}\n{traceback.format_exc()}"
            ) from None
        if xr.global_ordinal() == 0:
            outcome = {"result": result, "state": collect_state(function)}
            torch.save(to_cpu(outcome), os.path.join(self.outcome_dir, _OUTCOME_FILE))


def spawn(function: Callable[[], Any], nprocs: int | None, start_method: str) -> Any:
    """Run ``function`` in every replica; return replica 0's result (and its state, restored into ``function``)."""
    import torch_xla.distributed.xla_multiprocessing as xmp

    if nprocs == 1:
        captured: list[Any] = []
        xmp.spawn(lambda index: captured.append(function()), nprocs=1)
        return captured[0]
    if _runtime_started():
        raise RuntimeError(
            "strategy='xla' cannot start its replicas: this process already used an XLA device, and PyTorch/XLA "
            "starts its runtime once per process. Touch no XLA tensor before trainer.fit/validate/test/predict, "
            "or run with devices=1"
        )
    outcome_dir = tempfile.mkdtemp(prefix="torchplug-xla-")
    try:
        replica = _Replica(function, outcome_dir, _runtime.count_devices())
        xmp.spawn(replica, nprocs=nprocs, start_method=start_method)
        path = os.path.join(outcome_dir, _OUTCOME_FILE)
        if not os.path.exists(path):
            raise ProcessFailedError("the XLA replicas finished but replica 0 reported no result")
        outcome = torch.load(path, map_location="cpu", weights_only=False)
    finally:
        shutil.rmtree(outcome_dir, ignore_errors=True)
    restore_state(function, outcome["state"])
    return outcome["result"]


def _runtime_started() -> bool:
    import torch_xla

    return bool(torch_xla._XLAC._xla_runtime_is_initialized())


def to_cpu(data: Any) -> Any:
    return apply_to_collection(data, torch.Tensor, lambda t: t.detach().cpu())


def collect_state(function: Any) -> dict[str, Any]:
    """What the launching process should adopt from replica 0 after a spawned run."""
    trainer = getattr(function, "trainer", None)
    model = getattr(function, "kwargs", {}).get("model")
    if trainer is None or model is None:
        return {}
    return {
        "model": model.state_dict(),
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "callback_metrics": dict(trainer.callback_metrics),
        "logged_metrics": dict(trainer.logged_metrics),
        "callbacks": {c.state_key: c.state_dict() for c in trainer.callbacks},
    }


def restore_state(function: Any, state: dict[str, Any]) -> None:
    trainer = getattr(function, "trainer", None)
    model = getattr(function, "kwargs", {}).get("model")
    if not state or trainer is None or model is None:
        return
    model.load_state_dict(state["model"])
    trainer.lightning_module = model
    model.trainer = trainer
    trainer.global_step, trainer.current_epoch = state["global_step"], state["current_epoch"]
    trainer.callback_metrics = state["callback_metrics"]
    trainer.logged_metrics = state["logged_metrics"]
    for callback in trainer.callbacks:
        if callback.state_key in state["callbacks"]:
            callback.load_state_dict(state["callbacks"][callback.state_key])

"""Running a trainer's stage in every XLA replica with ``xmp.spawn``, and bringing rank 0's outcome home.

``xmp.spawn`` starts one process per TPU chip (and, on chips with two TensorCores, one thread per core) and
discards what the replicas return. Replica 0 therefore writes its outcome to a private file
(:func:`torchplug.distributed.capture_run`: the stage's result, the module's weights, counters, metrics and callback
state), which the launching process adopts (:func:`torchplug.distributed.adopt_run`). With one device,
``xmp.spawn`` runs the stage in this very process and nothing needs to come back.
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
from torchplug.distributed import adopt_run, capture_run
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
            outcome = capture_run(function.trainer, to_cpu(result))
            torch.save(outcome, os.path.join(self.outcome_dir, _OUTCOME_FILE))


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
        outcome = torch.load(path, map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(outcome_dir, ignore_errors=True)
    return adopt_run(function.trainer, outcome)


def _runtime_started() -> bool:
    import torch_xla

    return bool(torch_xla._XLAC._xla_runtime_is_initialized())


def to_cpu(data: Any) -> Any:
    return apply_to_collection(data, torch.Tensor, lambda t: t.detach().cpu())

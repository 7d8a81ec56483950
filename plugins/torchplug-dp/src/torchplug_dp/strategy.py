"""``strategy="dp"``: ``torch.nn.DataParallel`` over the chosen GPUs in one process.

Each step the batch is split across the GPUs, every GPU runs the user's step on its share, and the outputs come
back to the first GPU, where the per-GPU losses (and any other per-GPU scalars) are averaged, weighted by each
GPU's share of the batch, before backward. ``strategy="ddp"`` does the same work with one process per GPU and is
faster: DataParallel replicates the model on every step and runs the replicas in Python threads.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.strategies import Strategy
from torchplug_dp._collections import reduce_paths
from torchplug_dp._parallel import DataParallel

if TYPE_CHECKING:
    from torch import nn

    from torchplug.trainer import Trainer

#: Lightning 1.x's per-stage hooks that receive the gathered outputs of every GPU and combine them.
_STEP_END = {"train": "training_step_end", "validation": "validation_step_end", "test": "test_step_end"}


class DataParallelStrategy(Strategy):
    """One process drives every GPU of ``devices`` through ``torch.nn.DataParallel``.

    ``training_step`` (and the evaluation steps) run once per GPU on a slice of the batch. Their outputs are
    gathered on the first GPU: tensors with a batch dimension are concatenated, and one-per-GPU values (the loss,
    scalars in a returned dict) are averaged, weighted by each GPU's share of the batch, so the loss is the one a
    single device would compute. A module that defines ``training_step_end(outputs)`` (or ``validation_step_end``,
    ``test_step_end``) receives the gathered outputs instead, with the per-GPU scalars stacked, and returns the
    combined output itself. ``self.log`` works in the steps: values logged on each GPU are combined the same way.
    """

    # replicas run in threads, which do not inherit inference mode: evaluation runs under no_grad
    supports_inference_mode = False

    def __init__(self) -> None:
        self._module: DataParallel | None = None

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        device_type = trainer.run.device_type
        if device_type != "cuda":
            advice = "strategy='ddp_cpu' runs several CPU processes" if device_type == "cpu" else "strategy='ddp'"
            raise MisconfigurationError(
                f"strategy='dp' runs torch.nn.DataParallel, which needs CUDA GPUs, but accelerator="
                f"{trainer.accelerator_name!r} computes on {device_type!r}. Use a CUDA accelerator "
                f"(accelerator='gpu'), or another strategy ({advice})"
            )
        if trainer.num_nodes != 1:
            raise MisconfigurationError(
                f"strategy='dp' runs in one process on one machine, but num_nodes={trainer.num_nodes}; use "
                "strategy='ddp' for several machines"
            )
        advice = (
            "on one GPU it only adds work: leave strategy='auto' (single_device)"
            if trainer.run.num_devices == 1
            else "strategy='ddp' runs one process per GPU and is faster (DataParallel copies the model to "
            "every GPU on each step and runs the copies in Python threads)"
        )
        warnings.warn(f"strategy='dp' is kept for porting old code; {advice}.", UserWarning, stacklevel=_user_frame())

    @hookimpl
    def torchplug_num_processes(self, device_ids: list[int], num_nodes: int) -> int:
        return 1

    @hookimpl
    def torchplug_wrap_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        user_module = trainer.lightning_module
        if user_module is not None and not user_module.automatic_optimization:
            raise MisconfigurationError(
                f"strategy='dp' cannot run {type(user_module).__name__} with automatic_optimization=False: its "
                "training_step runs once per GPU in parallel threads, so each would step the optimizer. Use "
                "strategy='ddp' (or one GPU) for manual optimization"
            )
        first = torch.device("cuda", trainer.device_ids[0])
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.device != first:
                raise MisconfigurationError(
                    f"strategy='dp' needs the module on the first of devices={trainer.device_ids} ({first}), but a "
                    f"parameter or buffer is on {tensor.device}; the accelerator's root device is "
                    f"{trainer.root_device}"
                )
        self._module = DataParallel(module, list(trainer.device_ids), trainer)
        return self._module

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        forward = ops.forward

        def forward_and_combine(stage: str, args: tuple[Any, ...]) -> Any:
            return self._combine(trainer, stage, forward(stage, args))

        # Left where the loader put it: DataParallel copies each GPU's slice straight to that GPU (from pinned
        # memory on side streams), instead of all of it to the first GPU and then on to the others.
        ops.to_device = _unchanged
        ops.forward = forward_and_combine
        return ops

    def _combine(self, trainer: Trainer, stage: str, output: Any) -> Any:
        """The per-GPU outputs of one step as one: ``<stage>_step_end`` if defined, else reduced by path."""
        wrapped = self._module
        if wrapped is None:
            return output
        paths, shares = wrapped.per_replica, wrapped.shares
        wrapped.per_replica, wrapped.shares = set(), []
        hook = getattr(trainer.lightning_module, _STEP_END.get(stage, ""), None)
        if hook is not None:
            combined = hook(output)
            if combined is None and stage == "train" and output is not None:
                raise MisconfigurationError(
                    f"{type(trainer.lightning_module).__name__}.training_step_end returned None; under "
                    "strategy='dp' it receives every GPU's output and must return the loss (or a dict with 'loss')"
                )
            return combined
        if not paths:
            return output  # nothing per GPU (one GPU, or a batch of one): the output is already whole
        return reduce_paths(output, paths, shares)

    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        self._module = None


def _user_frame() -> int:
    """The ``stacklevel`` that points a warning at the user's ``Trainer(...)`` line, past pluggy and torchplug."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("torchplug", "torchplug_dp", "pluggy"):
        frame, level = frame.f_back, level + 1
    return level


def _unchanged(batch: Any) -> Any:
    return batch

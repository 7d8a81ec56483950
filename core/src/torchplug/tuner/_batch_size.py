"""The batch size search: run a few steps at growing batch sizes until one runs out of memory, then keep the
largest that fit (``mode="power"``) or narrow it down between the two (``mode="binsearch"``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torchplug import _trial
from torchplug._errors import MisconfigurationError
from torchplug._evaluation import _KINDS
from torchplug.tuner import _attributes
from torchplug.tuner._memory import garbage_collection_cuda, is_oom_error
from torchplug.utilities import rank_zero_warn

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

MODES = ("power", "binsearch")


def check_arguments(
    mode: str,
    margin: float,
    steps_per_trial: int = 1,
    init_val: int = 1,
    max_trials: int = 0,
    max_val: int = 1,
) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` should be either of {MODES}; got mode={mode!r}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"`margin` should be between 0 and 1 (0 included); got margin={margin!r}")
    for name, value, least in (("steps_per_trial", steps_per_trial, 1), ("init_val", init_val, 1),
                               ("max_trials", max_trials, 0), ("max_val", max_val, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"scale_batch_size({name}={value!r}): expected an int of at least {least}")


def scale_batch_size(
    trainer: Trainer,
    mode: str = "power",
    steps_per_trial: int = 3,
    init_val: int = 2,
    max_trials: int = 25,
    batch_arg_name: str = "batch_size",
    margin: float = 0.05,
    max_val: int = 8192,
) -> int | None:
    """Run the search inside the running stage (from a callback's start hook, as :class:`BatchSizeFinder` does) and
    return the batch size found, also set on the model, hparams or datamodule that hold ``batch_arg_name``. The
    weights, the optimizer and the trainer are put back as they were, and the stage's data is loaded again with the
    size found. None when ``fast_dev_run`` skips the search."""
    check_arguments(mode, margin, steps_per_trial, init_val, max_trials, max_val)
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None
    loop = _trial.running_loop(trainer, "scale_batch_size")
    if loop.stage == "fit":
        flags = {"limit_train_batches": 1.0, "limit_val_batches": steps_per_trial}
    else:
        flags = {f"limit_{_KINDS[loop.stage]}_batches": steps_per_trial}
    path = _trial.save_temporary(trainer, ".scale_batch_size")
    try:
        with _trial.settings(trainer, [], flags):
            search = _Search(loop, batch_arg_name, steps_per_trial, max_val)
            size, _ = search.adjust(value=init_val)
            if mode == "power":
                size = search.power(size, max_trials)
            else:
                size = search.binsearch(size, max_trials, margin)
            if search.failed:  # free what the failed trials left before the real run
                garbage_collection_cuda()
            log.info("Finished batch size finder, will continue with full run using batch size %d", size)
    finally:
        _trial.rollback(trainer, path)
    _trial.reload_data(loop)
    return size


class _Search:
    """One search: sets the batch size where it lives and runs trials of ``steps`` steps from the same start."""

    def __init__(self, loop: Loop, name: str, steps: int, max_val: int) -> None:
        self.loop, self.module, self.name, self.steps, self.max_val = loop, loop.module, name, steps, max_val
        self.start = _trial.snapshot(loop.trainer)
        self.failed = False  # a trial ran out of memory

    def trial(self) -> None:
        _trial.reset(self.loop.trainer, self.start)
        _trial.run(self.loop, self.steps)

    def adjust(
        self, factor: float = 1.0, value: int | None = None, desc: str | None = None
    ) -> tuple[int, bool]:
        """Set the batch size to ``value``, or the current one times ``factor`` (at most ``max_val``); unchanged
        when the current one already takes the whole dataset. Returns it and whether it changed."""
        current = _attributes.get(self.module, self.name)
        length = _trial.dataset_length(self.loop)
        if length is not None and current >= length:
            log.info(
                "The batch size %d is greater or equal than the length of your dataset: %d.", current, length
            )
            return current, False
        new = value if value is not None else int(current * factor)
        if new > self.max_val:
            if desc:
                log.info(
                    "Batch size %d exceeds max_val limit %d, capping at %d", new, self.max_val, self.max_val
                )
            new = self.max_val
        if desc:
            log.info("Batch size %d %s, trying batch size %d", current, desc, new)
        _attributes.set_everywhere(self.module, self.name, new)
        return new, new != current

    def _out_of_memory(self, err: RuntimeError, size: int) -> None:
        if not is_oom_error(err):
            raise err
        self.failed = True
        garbage_collection_cuda()
        if size <= 1:
            raise MisconfigurationError(
                f"scale_batch_size: even a batch size of {size} ran out of memory, so no batch size fits; make the "
                f"model or its inputs smaller, or use a device with more memory. torch said: {err}"
            ) from err

    def _at_most(self, size: int) -> bool:
        """Whether ``size``, which just fit, is ``max_val``: the search goes no further."""
        if size >= self.max_val:
            log.info("Reached the maximum batch size limit of %d. Stopping search.", self.max_val)
            return True
        return False

    def power(self, size: int, max_trials: int) -> int:
        """Double after each success (at most to ``max_val``, which is tried too); after a failure halve, and stop
        if a size had fit. The size returned ran, except after ``max_trials`` failures."""
        fitted = False
        for number in range(max_trials):
            try:
                self.trial()
            except RuntimeError as err:
                self._out_of_memory(err, size)
                size, _ = self.adjust(factor=0.5, desc="failed")
                if fitted:
                    break
                continue
            if number + 1 >= max_trials or self._at_most(size):  # keep the size that just fit
                break
            size, changed = self.adjust(factor=2.0, desc="succeeded")
            if not changed:
                break
            fitted = True
        return size

    def binsearch(self, size: int, max_trials: int, margin: float) -> int:
        """Double until a size fails, then bisect between the largest that fit and the smallest that failed;
        ``max_trials`` counts the sizes that fit. The result is reduced by ``margin`` (a fraction) for safety."""
        low, high, fitted = 0, None, 0  # low: the largest size that ran (none yet)
        while True:
            try:
                self.trial()
            except RuntimeError as err:
                self._out_of_memory(err, size)
                high = size
                size, _ = self.adjust(value=(high + low) // 2 or 1, desc="failed")
                if high - low <= 1:
                    break
                continue
            fitted += 1
            low = size
            if fitted >= max_trials or self._at_most(size):
                break
            if high is not None and high - low <= 1:
                break
            if high is not None:
                size, changed = self.adjust(value=(high + low) // 2, desc="succeeded")
            else:
                size, changed = self.adjust(factor=2.0, desc="succeeded")
            if not changed:
                break
        if margin > 0:
            reduced = max(1, int(size * (1 - margin)))
            if reduced != size:
                log.info(
                    "Applying margin of %.1f%%, reducing batch size from %d to %d",
                    margin * 100,
                    size,
                    reduced,
                )
                size = reduced
                _attributes.set_everywhere(self.module, self.name, size)
        return size

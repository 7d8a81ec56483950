"""Trial runs inside a running stage: what the tuner's searches (learning rate, batch size) are made of.

A search runs from a start hook of the stage (``on_fit_start``, ``on_validation_start``, ...). It saves the run to a
temporary checkpoint (:func:`save_temporary`), runs the stage's own work a few batches at a time with its own
callbacks and a logger that writes nothing (:func:`settings`, :func:`run`), and loads the checkpoint back
(:func:`rollback`): the stage then goes on as if nothing had run, with what the search changed on purpose (a
learning rate, a batch size) and its data loaded again from the module or datamodule.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torchplug import _data, _state
from torchplug._combined_loader import CombinedLoader
from torchplug._errors import MisconfigurationError
from torchplug._evaluation import _KINDS
from torchplug._results import Results
from torchplug._states import TrainerStatus

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug._optim import LRSchedulerConfig
    from torchplug.callbacks._base import Callback
    from torchplug.trainer import Trainer


class EndStage(Exception):  # noqa: N818 (a signal, not an error)
    """Raised from a stage's start hook to end the stage there, as a success: ``Tuner`` runs a stage only for the
    search its callback makes at the start (Lightning's tuner does the same)."""


def active_loop(trainer: Trainer) -> Loop | None:
    """The loop of the stage running now, None between stages."""
    loop = trainer._loop
    return loop if loop is not None and trainer.state.status == TrainerStatus.RUNNING else None


def running_loop(trainer: Trainer, what: str) -> Loop:
    """The loop of the stage running now; a clear error when ``what`` is called outside one."""
    loop = active_loop(trainer)
    if loop is None:
        raise MisconfigurationError(
            f"{what} runs inside a stage, from a callback's hook (on_fit_start, on_validation_start, ...); outside "
            "one, use torchplug.tuner.Tuner(trainer)"
        )
    return loop


def data_given(loop: Loop) -> bool:
    """Whether the data a search runs on was passed to the entry point (``fit(model, loader)``) rather than made by
    the module or the datamodule, which a search can ask again with another batch size. In ``fit`` that is the
    training data only: the trials run training steps (validation loaders given to ``fit`` are fine, as in
    Lightning)."""
    if loop.stage == "fit":
        return loop.given.get("train") is not None
    return loop.given.get(loop.stage) is not None


def eval_loader_count(loop: Loop) -> int:
    """How many loaders an evaluation stage reads (``validate``/``test``/``predict``)."""
    trainer, kind = loop.trainer, _KINDS[loop.stage]
    data = _data.source(trainer, kind, loop.given.get(loop.stage), loop.stage)
    return 0 if data is None else len(_flattened(data, "sequential"))


# ---------------------------------------------------------------------------------------------------- checkpoint
def save_temporary(trainer: Trainer, prefix: str) -> str:
    """Save the run to ``<default_root_dir>/<prefix>_<uuid>.ckpt`` (not counted as one of the run's checkpoints)."""
    path = trainer.broadcast(os.path.join(trainer.default_root_dir, f"{prefix}_{uuid.uuid4()}.ckpt"))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _state.save_checkpoint(trainer, path, weights_only=False)
    return path


def rollback(trainer: Trainer, path: str) -> None:
    """Load the temporary checkpoint ``path`` into the running stage, then delete it (also when loading fails)."""
    loop, ckpt_path, resume = trainer._loop, trainer.ckpt_path, trainer._loop.resume
    # a checkpoint taken at an epoch's start does not hold the epoch's starting random state: keep it
    epoch_start_rng = trainer.progress.epoch_start_rng
    try:
        _state.restore(loop, path)
        if trainer.progress.epoch_start_rng is None:
            trainer.progress.epoch_start_rng = epoch_start_rng
    finally:
        loop.resume = resume
        trainer.ckpt_path = ckpt_path
        trainer.should_stop = False
        loop.train_loader = loop.val_plan = None  # the data is asked for again, with what the search left
        if trainer.is_global_zero:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        trainer.barrier("trial rollback")


# ---------------------------------------------------------------------------------------------------- settings
@contextlib.contextmanager
def settings(
    trainer: Trainer,
    callbacks: list[Callback],
    flags: dict[str, Any],
    schedulers: list[LRSchedulerConfig] | None = None,
) -> Iterator[Loop]:
    """Within the block the running stage has ``callbacks`` in place of the trainer's, a logger that writes nothing,
    the trainer ``flags`` given (``limit_val_batches=3``, ...) and, when given, ``schedulers`` in place of the
    module's; everything is put back on leaving (the random state too), the hooks bound again each time."""
    from torchplug.loggers import DummyLogger

    loop = running_loop(trainer, "a trial run")
    saved = {
        name: getattr(trainer, name) for name in ("callbacks", "loggers", "max_steps", "should_stop", *flags)
    }
    saved_schedulers, saved_results, saved_resume = (
        trainer.lr_scheduler_configs,
        trainer._results,
        loop.resume,
    )
    trainer.callbacks = list(callbacks)
    trainer.loggers = [DummyLogger()] if trainer.loggers else []
    for name, value in flags.items():
        setattr(trainer, name, value)
    if schedulers is not None:
        trainer.lr_scheduler_configs = schedulers
    loop.resume = None
    rng = _state.get_rng_states(trainer)
    _rebind(loop)
    try:
        yield loop
    finally:
        _state.set_rng_states(trainer, rng)  # as if the trials had drawn no random numbers
        for name, value in saved.items():
            setattr(trainer, name, value)
        trainer.lr_scheduler_configs, trainer._results, loop.resume = (
            saved_schedulers,
            saved_results,
            saved_resume,
        )
        _rebind(loop)


def _rebind(loop: Loop) -> None:
    loop._bind_user_hooks()
    if loop.stage == "fit":
        loop._bind_training_step()


# ---------------------------------------------------------------------------------------------------- running
def snapshot(trainer: Trainer) -> tuple[int, int, dict[str, Any]]:
    """Where the run stands (step, epoch, progress in the epoch), for :func:`reset` before each trial."""
    progress = trainer.progress
    return trainer.global_step, trainer.current_epoch, dict(vars(progress))


def reset(trainer: Trainer, where: tuple[int, int, dict[str, Any]]) -> None:
    trainer.global_step, trainer.current_epoch, progress = where
    vars(trainer.progress).update(progress)
    trainer.should_stop = False


def run(loop: Loop, steps: int) -> None:
    """The stage's work for at most ``steps`` more optimizer steps (``fit``) or ``steps`` batches per loader
    (evaluation stages), with the data asked for again first."""
    trainer = loop.trainer
    if loop.stage != "fit":
        kind = _KINDS[loop.stage]
        data = _data.source(trainer, kind, loop.given.get(loop.stage), loop.stage)
        if data is None:
            raise _data.missing(kind, loop.stage)
        loop.evaluate(loop.stage, loop.eval_plan(data, kind, loop.stage, steps), return_predictions=False)
        return
    trainer.max_steps = trainer.global_step + steps
    trainer._results = Results(trainer, training=True)
    loop.train_loader = loop.val_plan = None
    with warnings.catch_warnings():  # what loading the data warns about, the stage itself says again
        warnings.filterwarnings("ignore", message="The number of training batches", category=UserWarning)
        loop.load_train_data()
    loop.val_check_batch = loop._val_check_batch()
    trainer.training = True
    loop.train_started = loop.last_val_time = time.monotonic()
    while not loop._fit_done() and trainer.num_training_batches:
        loop._train_epoch()


def reload_data(loop: Loop) -> None:
    """Ask the module or datamodule for the stage's data now (after a search changed its batch size), so that
    ``trainer.train_dataloader`` and the others show it and the stage reads it."""
    trainer = loop.trainer
    if loop.stage == "fit":
        loop.load_train_data()
        if loop.val_enabled:
            loop._load_val_data()
        return
    kind = _KINDS[loop.stage]
    data = _data.source(trainer, kind, loop.given.get(loop.stage), loop.stage)
    if data is not None:
        loop.replacement_plan = loop.eval_plan(
            data, kind, loop.stage, getattr(trainer, f"limit_{kind}_batches")
        )


def dataset_length(loop: Loop) -> int | None:
    """The number of samples the stage's data holds (the largest dataset for ``fit``, whose loaders are read
    together; their sum for an evaluation); None when a dataset has no length."""
    trainer, stage = loop.trainer, loop.stage
    key, kind, mode = (
        ("train", "train", "max_size_cycle") if stage == "fit" else (stage, _KINDS[stage], "sequential")
    )
    data = _data.source(trainer, kind, loop.given.get(key), stage)
    if data is None:
        return None
    leaves = _flattened(data, mode)
    try:
        lengths = [len(leaf.dataset) for leaf in leaves]
    except (TypeError, AttributeError):
        return None
    if not lengths:
        return None
    return max(lengths) if mode == "max_size_cycle" else sum(lengths)


def _flattened(data: Any, mode: str) -> list[Any]:
    """The loaders in ``data`` as given (not set up for the run: counting them warns about nothing)."""
    return (data if isinstance(data, CombinedLoader) else CombinedLoader(data, mode)).flattened

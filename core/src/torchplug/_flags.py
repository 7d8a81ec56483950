"""The Trainer's loop flags: checked early, with Lightning's accepted values, defaults and read-back values.

``Trainer(...)`` hands its loop flags here; :func:`apply` checks them, resolves the defaults (``None`` means "not
given", so ``barebones`` and the info lines can tell what the user asked for) and sets what the user reads back
(``trainer.max_epochs``, ``trainer.fast_dev_run``, ``trainer.num_sanity_val_steps``, ...) as Lightning reports it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import math
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from torchplug._errors import ArgumentTypeError, MisconfigurationError, PossibleUserWarning

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

# What barebones mode turns off, each with the value that means "off" and what it costs.
_BAREBONES_OFF = {
    "enable_checkpointing": (False, "checkpointing"),
    "logger": (False, "logging"),
    "enable_progress_bar": (False, "the progress bar"),
    "log_every_n_steps": (0, "logging"),
    "enable_model_summary": (False, "the model summary"),
    "num_sanity_val_steps": (0, "sanity checking"),
    "fast_dev_run": (False, "a development run"),
    "detect_anomaly": (False, "anomaly detection"),
    "profiler": (None, "profiling"),
}


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}={value!r}: expected an int >= {minimum}{' or None' if allow_none else ''}")
    if value < minimum:
        raise MisconfigurationError(f"{name}={value!r}: expected an int >= {minimum}{' or None' if allow_none else ''}")


def batch_limit(name: str, value: Any) -> int | float:
    """A batch count (int) or fraction (float in [0, 1]); ``None`` (not given) is all batches. A whole float above 1
    counts batches, as in Lightning. Logs which one ``1``/``1.0`` means, since the two are easy to confuse."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(
            f"{name}={value!r}: expected an int (a number of batches) or a float in [0.0, 1.0] (a fraction)"
        )
    if value == 1:
        what = {"limit_train_batches": "per epoch ", "val_check_interval": ""}.get(name, "")
        if name == "val_check_interval":
            meaning = "validation will run after every batch" if isinstance(value, int) else (
                "validation will run at the end of the training epoch")  # fmt: skip
        else:
            meaning = f"1 batch {what}will be used" if isinstance(value, int) else f"100% of the batches {what}will be used"
        log.info("`Trainer(%s=%r)` was configured so %s.", name, value, meaning)
    if 0 <= value <= 1:
        return value
    if value > 1 and value % 1.0 == 0:
        return int(value)
    raise MisconfigurationError(
        f"{name}={value!r}: you passed invalid value {value} for {name}; use a float in [0.0, 1.0] (a fraction of "
        "the batches) or an int (a number of batches)"
    )


def time_interval(value: str | timedelta | dict[str, int]) -> float:
    """Seconds in ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of ``timedelta`` keywords."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        try:
            return timedelta(**value).total_seconds()
        except TypeError as err:
            raise MisconfigurationError(f"val_check_interval={value!r}: {err}; use timedelta's keywords") from None
    parts = value.split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise MisconfigurationError(
            f"val_check_interval={value!r}: invalid time format; expected 'DD:HH:MM:SS' with whole numbers"
        )
    days, hours, minutes, seconds = (int(p) for p in parts)
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def apply(trainer: Trainer, flags: dict[str, Any]) -> dict[str, Any]:
    """Check the loop flags, set them on ``trainer`` and return the resolved ``logger``/``enable_*`` switches."""
    f = dict(flags)
    barebones = f["barebones"]
    if barebones:
        for name, (off, what) in _BAREBONES_OFF.items():
            given = f[name]
            if given is not None and given != off and not (name == "logger" and given is False):
                raise MisconfigurationError(
                    f"`Trainer(barebones=True, {name}={given!r})` was passed. Barebones mode turns off {what}, which "
                    f"costs speed; leave {name} unset or drop barebones=True"
                )
            f[name] = off
        log.info(
            "You are running in `Trainer(barebones=True)` mode: checkpointing, the progress bar, the model summary, "
            "logging (loggers and self.log), sanity checking, fast_dev_run, anomaly detection and profiling are off."
        )
    trainer.barebones = barebones

    # ---- lengths -------------------------------------------------------------------------------------------------
    fast_dev_run = f["fast_dev_run"]
    if isinstance(fast_dev_run, bool):
        fast_dev_batches = int(fast_dev_run)
    elif not isinstance(fast_dev_run, int):
        raise ArgumentTypeError(f"fast_dev_run={fast_dev_run!r}: expected True, False or a number of batches")
    elif fast_dev_run < 0:
        raise MisconfigurationError(f"fast_dev_run={fast_dev_run!r} is not valid: it should be >= 0 (batches)")
    else:
        fast_dev_batches = fast_dev_run
    trainer.fast_dev_run = True if fast_dev_run == 1 else fast_dev_run  # Lightning reports 1 as True
    max_epochs, max_steps = f["max_epochs"], f["max_steps"]
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            kind = ArgumentTypeError if not isinstance(value, int) or isinstance(value, bool) else MisconfigurationError
            raise kind(f"{name}={value!r}: `{name}` must be a non-negative integer or -1 (no limit)")
    check_int("min_epochs", f["min_epochs"], 0, allow_none=True)
    check_int("min_steps", f["min_steps"], 0, allow_none=True)
    if f["min_epochs"] is not None and max_epochs not in (None, -1) and f["min_epochs"] > max_epochs:
        raise MisconfigurationError(f"min_epochs={f['min_epochs']} is larger than max_epochs={max_epochs}")
    if f["min_steps"] is not None and max_steps != -1 and f["min_steps"] > max_steps:
        raise MisconfigurationError(f"min_steps={f['min_steps']} is larger than max_steps={max_steps}")
    trainer.max_epochs, trainer.min_epochs, trainer.max_steps, trainer.min_steps = (
        max_epochs, f["min_epochs"], max_steps, f["min_steps"])  # fmt: skip
    trainer.max_time = f["max_time"]
    trainer._max_time_s = None if f["max_time"] is None else time_interval(f["max_time"])

    # ---- which batches -------------------------------------------------------------------------------------------
    overfit = batch_limit("overfit_batches", f["overfit_batches"])
    trainer.overfit_batches = overfit
    limits = {k: batch_limit(k, f[k]) for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                                                "limit_predict_batches")}  # fmt: skip
    if overfit > 0:  # train and validate on the same first batches of the training data
        limits["limit_train_batches"] = limits["limit_val_batches"] = overfit
    interval = f["val_check_interval"]
    trainer._val_check_seconds = None
    if isinstance(interval, (str, timedelta, dict)):
        trainer._val_check_seconds = time_interval(interval)
    else:
        interval = batch_limit("val_check_interval", interval)
        if isinstance(interval, int) and interval < 1:
            raise MisconfigurationError(f"val_check_interval={interval!r}: must be at least 1 batch")
    every = f["check_val_every_n_epoch"]
    if every is not None and (isinstance(every, bool) or not isinstance(every, int)):
        raise MisconfigurationError(f"check_val_every_n_epoch={every!r} should be an integer >= 1, or None")
    check_int("check_val_every_n_epoch", every, 1, allow_none=True)
    if every is None and isinstance(interval, float):
        raise MisconfigurationError(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`. "
            f"Got val_check_interval={interval!r}: a fraction of an epoch needs epochs (check_val_every_n_epoch)"
        )
    reload_every = f["reload_dataloaders_every_n_epochs"]
    if isinstance(reload_every, bool) or not isinstance(reload_every, int) or reload_every < 0:
        raise MisconfigurationError(
            f"reload_dataloaders_every_n_epochs={reload_every!r}: should be an int >= 0 (0 never reloads)"
        )
    sanity = 2 if f["num_sanity_val_steps"] is None else f["num_sanity_val_steps"]
    check_int("num_sanity_val_steps", sanity, -1)
    log_every = 50 if f["log_every_n_steps"] is None else f["log_every_n_steps"]
    check_int("log_every_n_steps", log_every, 0)
    if fast_dev_batches:
        max_epochs, trainer.max_steps, sanity = 1, fast_dev_batches, 0
        trainer.max_epochs = 1
        if not overfit:
            limits["limit_train_batches"] = limits["limit_val_batches"] = fast_dev_batches
        limits["limit_test_batches"] = limits["limit_predict_batches"] = fast_dev_batches
        interval, every, trainer._val_check_seconds, trainer._max_time_s = 1.0, 1, None, None
        log.info(
            "Running in `fast_dev_run` mode: will run the requested loop using %s batch(es). Logging and "
            "checkpointing is suppressed.", fast_dev_batches,
        )  # fmt: skip
    trainer._fast_dev_batches = fast_dev_batches
    for name, value in limits.items():
        setattr(trainer, name, value)
    trainer.val_check_interval, trainer.check_val_every_n_epoch = (
        f["val_check_interval"] if trainer._val_check_seconds is not None else interval, every)  # fmt: skip
    trainer.reload_dataloaders_every_n_epochs = reload_every
    trainer.num_sanity_val_steps = math.inf if sanity == -1 else sanity
    trainer.log_every_n_steps = log_every

    # ---- optimization ---------------------------------------------------------------------------------------------
    check_int("accumulate_grad_batches", f["accumulate_grad_batches"], 1)
    trainer.accumulate_grad_batches = f["accumulate_grad_batches"]
    clip = f["gradient_clip_val"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))):
        raise ArgumentTypeError(f"`gradient_clip_val` should be an int or a float. Got gradient_clip_val={clip!r}")
    if clip is not None and clip < 0:
        raise MisconfigurationError(f"gradient_clip_val={clip!r}: expected a number >= 0 or None")
    algorithm = f["gradient_clip_algorithm"]
    if algorithm is not None and algorithm not in ("norm", "value"):
        raise MisconfigurationError(
            f"`gradient_clip_algorithm` {algorithm} is invalid: gradient_clip_algorithm={algorithm!r}; "
            "use 'norm' or 'value'"
        )
    trainer.gradient_clip_val = clip
    trainer.gradient_clip_algorithm = algorithm
    deterministic = f["deterministic"]
    if deterministic not in (None, True, False, "warn"):
        raise MisconfigurationError(f"deterministic={deterministic!r}: use True, False or 'warn'")
    trainer.deterministic, trainer.benchmark = deterministic, f["benchmark"]
    for name in ("detect_anomaly", "inference_mode", "use_distributed_sampler"):
        if not isinstance(f[name], bool):
            raise ArgumentTypeError(f"{name}={f[name]!r}: expected True or False")
    trainer.detect_anomaly, trainer.inference_mode = f["detect_anomaly"], f["inference_mode"]
    trainer.use_distributed_sampler = f["use_distributed_sampler"]

    from torchplug.profilers._select import make_profiler

    trainer.profiler = make_profiler(f["profiler"])
    root = f["default_root_dir"]
    trainer.default_root_dir = os.path.expanduser(os.fspath(root)) if root is not None else os.getcwd()
    _check_root_dir(trainer.default_root_dir)
    return {
        "logger": True if f["logger"] is None else f["logger"],
        "enable_checkpointing": f["enable_checkpointing"] is not False,
        "enable_progress_bar": f["enable_progress_bar"] is not False,
        "enable_model_summary": f["enable_model_summary"] is not False and not fast_dev_batches,
        "fast_dev_batches": fast_dev_batches,
    }


def _check_root_dir(path: str) -> None:
    """``default_root_dir`` must be a folder or creatable as one: no part of it may be a file."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    if os.path.exists(current) and not os.path.isdir(current):
        where = "is a file" if current == os.path.abspath(path) else f"is inside {current!r}, which is a file"
        raise MisconfigurationError(
            f"default_root_dir={path!r} {where}: it must be a folder (one that does not exist yet is created); "
            "pass the folder logs and checkpoints should go to"
        )


def with_env_defaults(init: Any) -> Any:
    """``PL_TRAINER_*`` environment variables fill the arguments a caller did not pass (Lightning's behaviour)."""
    names = [n for n in inspect.signature(init).parameters if n not in ("self", "backend_options")]

    @functools.wraps(init)
    def init_with_env_defaults(self: Trainer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**env_defaults(names), **kwargs})

    return init_with_env_defaults


def env_defaults(parameters: Any) -> dict[str, Any]:
    """Lightning's ``PL_TRAINER_<ARGUMENT>`` environment variables: defaults for the arguments not passed (a Python
    literal, ``PL_TRAINER_MAX_STEPS=7``, else the string)."""
    found = {}
    for name in parameters:
        value = os.environ.get(f"PL_TRAINER_{name.upper()}")
        if value is not None:
            try:
                found[name] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                found[name] = value
    return found


def resolve_max_epochs(trainer: Trainer) -> None:
    """At ``fit``: an unset ``max_epochs`` becomes 1000 (-1 when ``max_steps`` or ``max_time`` limits the run)."""
    if trainer.max_epochs is not None:
        return
    if trainer.max_steps == -1 and trainer._max_time_s is None:
        import warnings

        warnings.warn(
            "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set `max_epochs=-1`.",
            PossibleUserWarning,
            stacklevel=4,
        )
        trainer.max_epochs = 1000
    else:
        trainer.max_epochs = -1

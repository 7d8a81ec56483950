"""Hyperparameters: ``save_hyperparameters``, ``hparams``, and building a module or datamodule from a checkpoint.

``save_hyperparameters()`` reads the arguments of the chain of ``__init__`` calls it runs in (a subclass's
``__init__`` calling its parent's, outermost values winning; as in Lightning, the chain continues through the
``__init__`` of another module or datamodule that is constructing this one), so ``load_from_checkpoint`` can call
the class again with them. Checkpoints hold hyperparameters as plain data (they load with ``weights_only=True``); an
object that is not plain data is stored as its ``repr`` and named in ``hyper_parameters_as_repr``, and loading asks
for it rather than passing the text to ``__init__``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import os
import pickle
import types
import warnings
from argparse import Namespace
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from torchplug._errors import MisconfigurationError
from torchplug.utilities import AttributeDict

_PRIMITIVES = (bool, int, float, str)
_NOT_ARGUMENTS = ("frame", "frame_args", "__class__")
_PAST_HPARAMS_KEYS = ("hparams", "module_arguments")
REPR_KEY_SUFFIX = "_as_repr"

#: The builders a checkpoint may name (its ``_instantiator`` hyperparameter) to rebuild an object: a checkpoint is
#: data, so it never chooses which code to import beyond these.
INSTANTIATORS = frozenset({"torchplug.cli.instantiate_module"})
# (class being built, hyperparameters to record for it) while a builder such as LightningCLI constructs it
_given: ContextVar[tuple[type, dict[str, Any]] | None] = ContextVar("torchplug_given_hparams", default=None)


@contextmanager
def given_hyperparameters(cls: type, hparams: dict[str, Any], instantiator: str) -> Iterator[None]:
    """While ``cls`` is constructed, ``save_hyperparameters()`` records ``hparams`` (plain config data, such as
    LightningCLI's parsed config for it) instead of the ``__init__`` arguments, and names ``instantiator`` (one of
    :data:`INSTANTIATORS`) as what ``load_from_checkpoint`` rebuilds the object with."""
    token = _given.set((cls, {**hparams, "_instantiator": instantiator}))
    try:
        yield
    finally:
        _given.reset(token)


class HyperparametersMixin:
    """``save_hyperparameters()``, ``hparams`` and ``hparams_initial``; mixed into Module and DataModule."""

    # torch.jit.script compiles properties unless they are listed here; these read Python-only objects.
    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_hyperparams = False

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Keep the constructor's arguments in ``self.hparams`` and in every checkpoint.

        With no ``args``: every ``__init__`` argument (including ``**kwargs`` given). With names: only those.
        With one ``dict``, ``argparse.Namespace`` or other mapping: that object. ``ignore`` leaves arguments out
        (also ones a parent class saved); ``logger=False`` keeps them away from the loggers.
        """
        self._log_hyperparams = logger
        if len(args) == 1 and not isinstance(args[0], str) and not args[0]:
            return  # an empty container: nothing to save
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        given = _given.get()
        if given is not None and type(self) is given[0]:
            init_args = dict(given[1])
        elif dataclasses.is_dataclass(self):
            init_args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        else:
            init_args = _init_arguments(frame)
        if isinstance(ignore, str):
            ignored = [ignore]
        else:
            ignored = [name for name in (ignore or ()) if isinstance(name, str)]
        init_args = {k: v for k, v in init_args.items() if k not in ignored}

        objects = [a for a in args if not isinstance(a, str)]
        if not args:
            hparams: Any = init_args
            self._hparams_name = "kwargs" if init_args else None
        elif len(objects) == 1:
            hparams = objects[0]
            self._hparams_name = next((k for k, v in init_args.items() if v is hparams), None)
        else:
            missing = [a for a in args if isinstance(a, str) and a not in init_args]
            if missing:
                raise MisconfigurationError(
                    f"save_hyperparameters({', '.join(map(repr, args))}): {missing} "
                    f"{'is not an argument' if len(missing) == 1 else 'are not arguments'} of "
                    f"{type(self).__name__}.__init__; its arguments are {sorted(init_args)}"
                )
            hparams = {name: init_args[name] for name in args if isinstance(name, str)}
            self._hparams_name = "kwargs"
        self._set_hparams(hparams)
        if isinstance(self._hparams, MutableMapping):
            for name in ignored:  # also what a parent class saved before
                self._hparams.pop(name, None)
        for key, value in self._hparams.items():
            if isinstance(value, nn.Module):
                warnings.warn(
                    f"Attribute {key!r} is an instance of `nn.Module` and is already saved during checkpointing "
                    f"(as part of the module's weights); leave it out with self.save_hyperparameters(ignore=[{key!r}])",
                    UserWarning,
                    stacklevel=2,
                )
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _set_hparams(self, hparams: Any) -> None:
        if isinstance(hparams, Namespace):
            hparams = vars(hparams)
        if isinstance(hparams, dict):
            hparams = AttributeDict(hparams)
        elif isinstance(hparams, _PRIMITIVES):
            raise ValueError(
                f"Primitives {_PRIMITIVES} are not allowed: save_hyperparameters({hparams!r}) takes argument names "
                "as strings, a dict, an argparse.Namespace, or nothing (all __init__ arguments)"
            )
        elif not isinstance(hparams, MutableMapping):
            raise ValueError(
                f"save_hyperparameters(): unsupported hyperparameters type {type(hparams).__name__}; pass a dict, an "
                "argparse.Namespace or another mutable mapping"
            )
        current = self.hparams
        if isinstance(hparams, dict) and isinstance(current, dict):
            current.update(hparams)
        else:
            self._hparams = hparams

    @property
    def hparams(self) -> AttributeDict | MutableMapping[str, Any]:
        """The saved hyperparameters (mutable; attribute and item access)."""
        if "_hparams" not in self.__dict__:
            self._hparams = AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as ``save_hyperparameters`` saved them (what the loggers receive)."""
        if "_hparams_initial" not in self.__dict__:
            return AttributeDict()
        return copy.deepcopy(self._hparams_initial)


def _init_arguments(frame: types.FrameType | None) -> dict[str, Any]:
    """The arguments of the innermost chain of ``__init__`` frames of hyperparameter-saving objects, the outermost
    winning."""
    chain: list[dict[str, Any]] = []
    while frame is not None:
        arguments = _frame_arguments(frame)
        if arguments is not None:
            chain.append(arguments)
        elif chain:
            break
        frame = frame.f_back
    merged: dict[str, Any] = {}
    for arguments in chain:
        merged.update(arguments)
    return merged


def _frame_arguments(frame: types.FrameType) -> dict[str, Any] | None:
    code = frame.f_code
    if code.co_name != "__init__" or code.co_argcount == 0:
        return None
    local = frame.f_locals
    if not isinstance(local.get(code.co_varnames[0]), HyperparametersMixin):
        return None
    count = code.co_argcount + code.co_kwonlyargcount
    values = {name: local[name] for name in code.co_varnames[1:count] if name in local}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        extra = local.get(code.co_varnames[count + bool(code.co_flags & inspect.CO_VARARGS)])
        if isinstance(extra, dict):
            values.update(extra)
    return {k: v for k, v in values.items() if k not in _NOT_ARGUMENTS}


def drop_unpicklable(hparams: Any) -> None:
    """Remove (with a warning) hyperparameters that cannot be pickled, before a run uses them."""
    if not isinstance(hparams, MutableMapping):
        return
    for key in [k for k, v in hparams.items() if not _picklable(v)]:
        warnings.warn(
            f"Attribute '{key}' removed from hparams because it cannot be pickled. You can suppress this warning by "
            f"setting `self.save_hyperparameters(ignore=['{key}'])`.",
            UserWarning,
            stacklevel=2,
        )
        del hparams[key]


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True


# ==================================================================================================== checkpoints
def checkpoint_entries(obj: Any) -> dict[str, Any]:
    """What a checkpoint holds of ``obj``'s hyperparameters (empty when it saved none)."""
    hparams = obj.hparams
    if not hparams:
        return {}
    plain, as_repr = _plain(hparams)
    entries = {obj.CHECKPOINT_HYPER_PARAMS_KEY: plain}
    if getattr(obj, "_hparams_name", None) is not None:
        entries[obj.CHECKPOINT_HYPER_PARAMS_NAME] = obj._hparams_name
    if as_repr:
        entries[obj.CHECKPOINT_HYPER_PARAMS_KEY + REPR_KEY_SUFFIX] = as_repr
    if _is_dictconfig(hparams):  # saved as a plain dict; load_from_checkpoint gives a DictConfig back
        entries[obj.CHECKPOINT_HYPER_PARAMS_TYPE] = "DictConfig"
    return entries


def _is_dictconfig(value: Any) -> bool:
    return type(value).__name__ == "DictConfig" and type(value).__module__.startswith("omegaconf")


def _plain(hparams: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Hyperparameters as data ``torch.load(weights_only=True)`` accepts, and the top-level keys kept as ``repr``."""
    safe = tuple(t for t in _registered_safe_globals() if isinstance(t, type))
    as_repr: set[str] = set()

    def convert(value: Any, key: str) -> Any:
        if value is None or type(value) in (bool, int, float, str, torch.dtype, torch.device, torch.Size):
            return value
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if type(value) in (list, tuple, set):
            return type(value)(convert(v, key) for v in value)
        if safe and type(value) in safe:
            return value
        if isinstance(value, Mapping):  # dict subclasses and other mappings (an OmegaConf DictConfig) as dicts
            return {str(k): convert(v, key) for k, v in value.items()}
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # an OmegaConf ListConfig
            return [convert(v, key) for v in value]
        as_repr.add(key)
        return repr(value)

    plain = {str(k): convert(v, str(k)) for k, v in hparams.items()}
    return plain, sorted(as_repr)


def _registered_safe_globals() -> list[Any]:
    getter = getattr(torch.serialization, "get_safe_globals", None)
    return list(getter()) if getter is not None else []


def load_from_checkpoint(
    cls: type,
    checkpoint_path: str | os.PathLike[str] | Any,
    map_location: Any = None,
    hparams_file: str | os.PathLike[str] | None = None,
    strict: bool | None = None,
    weights_only: bool | None = None,
    **overrides: Any,
) -> Any:
    """Build ``cls`` from the hyperparameters in a checkpoint (``overrides`` win) and load its state."""
    from torchplug._checkpoint import load_checkpoint
    from torchplug.module import DataModule, Module

    checkpoint = load_checkpoint(checkpoint_path, map_location=map_location, weights_only=weights_only)
    key = cls.CHECKPOINT_HYPER_PARAMS_KEY
    if hparams_file is not None:
        checkpoint[key] = _read_hparams_file(hparams_file)
        checkpoint.pop(key + REPR_KEY_SUFFIX, None)
    hparams: dict[str, Any] = {}
    if issubclass(cls, Module):
        for old_key in _PAST_HPARAMS_KEYS:  # checkpoints of old Lightning versions
            hparams.update(checkpoint.get(old_key) or {})
    hparams.update(checkpoint.get(key) or {})
    hparams.update(overrides)
    instantiator = _instantiator(hparams.pop("_instantiator", None), checkpoint_path)
    if str(checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_TYPE, "")).lower() == "dictconfig":
        from omegaconf import OmegaConf  # saved from an OmegaConf config, so omegaconf is installed

        hparams = OmegaConf.create(hparams)
    arguments, passed = _constructor_arguments(cls, checkpoint, hparams, overrides)
    as_repr = [k for k in checkpoint.get(key + REPR_KEY_SUFFIX, ()) if k in passed and k not in overrides]
    if as_repr:
        raise MisconfigurationError(
            f"{cls.__name__}.load_from_checkpoint({str(checkpoint_path)!r}): the hyperparameter(s) {as_repr} were "
            "objects that a checkpoint holds only as their repr (checkpoints are plain data, loaded with "
            f"weights_only=True); pass them again: {cls.__name__}.load_from_checkpoint(path, "
            f"{', '.join(f'{k}=...' for k in as_repr)})"
        )
    obj = instantiator(cls, arguments) if instantiator is not None else cls(**arguments)
    if isinstance(obj, DataModule):
        state = checkpoint.get("datamodule")
        if state:
            obj.load_state_dict(state)
        return obj
    if not isinstance(obj, Module):
        raise TypeError(f"load_from_checkpoint builds a Module or a DataModule, not a {cls.__name__}")
    if obj._strict_loading is not None and strict is not None and strict != obj.strict_loading:
        raise ValueError(
            f"You set `.load_from_checkpoint(..., strict={strict!r})` which is in conflict with "
            f"`{cls.__name__}.strict_loading={obj.strict_loading!r}`: give both the same value"
        )
    strict = obj.strict_loading if strict is None else strict
    if type(obj).configure_model is not Module.configure_model:
        obj.configure_model()
    obj.on_load_checkpoint(checkpoint)
    state_dict = checkpoint["state_dict"]
    result = obj.load_state_dict(state_dict, strict=strict)
    if not strict and result is not None:
        if result.missing_keys:
            warnings.warn(
                f"Found keys that are in the model state dict but not in the checkpoint: {result.missing_keys}",
                UserWarning,
                stacklevel=3,
            )
        if result.unexpected_keys:
            warnings.warn(
                f"Found keys that are not in the model state dict but in the checkpoint: {result.unexpected_keys}",
                UserWarning,
                stacklevel=3,
            )
    if not state_dict:
        warnings.warn(f"The state dict in {str(checkpoint_path)!r} contains no parameters.", UserWarning, stacklevel=3)
        return obj
    device = next((t.device for t in state_dict.values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
    return obj.to(device)


def _instantiator(path: Any, checkpoint_path: Any) -> Any:
    """The builder a checkpoint's hyperparameters name (saved by LightningCLI), checked against the known ones."""
    if path is None:
        return None
    if path not in INSTANTIATORS:
        raise MisconfigurationError(
            f"load_from_checkpoint({str(checkpoint_path)!r}): the checkpoint names _instantiator={path!r}, which is "
            f"not one torchplug rebuilds objects with ({', '.join(sorted(INSTANTIATORS))}); remove the key from "
            "its hyper_parameters to build the class directly"
        )
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _constructor_arguments(
    cls: type, checkpoint: dict[str, Any], hparams: dict[str, Any], overrides: dict[str, Any]
) -> tuple[dict[str, Any], set[str]]:
    """The keyword arguments to call ``cls`` with (the saved hyperparameters, filtered to what ``__init__``
    takes), and the names of the hyperparameters that reach it."""
    parameters = inspect.signature(cls.__init__).parameters
    names = [
        n for i, (n, p) in enumerate(parameters.items())
        if i > 0 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]  # fmt: skip
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    name = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_NAME)
    if name and name in names:  # saved from one object given as this argument (a dict or Namespace)
        arguments = {name: hparams, **overrides}
        passed = set(hparams)
    else:
        arguments = dict(hparams)
        passed = set(hparams) if takes_any else set(hparams) & set(names)
    if not takes_any:
        arguments = {k: v for k, v in arguments.items() if k in names}
    return arguments, passed


def _read_hparams_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    from torchplug.loggers.csv_logs import load_hparams_from_yaml

    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    if suffix in ("yml", "yaml"):
        if "://" not in os.fspath(path) and not os.path.exists(path):
            # as in Lightning: a warning, and the file's (empty) hyperparameters replace the checkpoint's
            warnings.warn(
                f"Missing Tags: {os.fspath(path)}. hparams_file={os.fspath(path)!r} does not exist: no "
                "hyperparameters are read, the constructor's defaults and the keyword overrides apply",
                RuntimeWarning,
                stacklevel=4,
            )
            return {}
        return dict(load_hparams_from_yaml(path))
    if suffix == "csv":  # the legacy meta_tags.csv
        from torchplug.loggers.csv_logs import load_hparams_from_tags_csv

        return load_hparams_from_tags_csv(path)
    raise ValueError(f"hparams_file={os.fspath(path)!r}: use a .yaml or .yml file (or a legacy .csv of tags)")

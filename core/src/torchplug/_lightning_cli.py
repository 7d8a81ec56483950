"""``LightningCLI``: a command line and config files for a Module, a DataModule and the Trainer, from their signatures.

Built on jsonargparse (the library Lightning's CLI uses, an optional dependency: ``pip install 'torchplug[cli]'``), so
a Lightning user's CLI script, its YAML configs and its ``--print_config`` output port by changing imports::

    python train.py fit --config config.yaml --trainer.max_epochs=3 --model.lr=0.1
    python train.py fit --model=my_pkg.MyModel --optimizer=Adam --lr_scheduler=StepLR --lr_scheduler.step_size=5
    python train.py fit --print_config > config.yaml

Parsing builds one parser per subcommand (fit, validate, test, predict: the Trainer method of that name, whose
arguments other than the model and data become options); classes are instantiated after parsing, the chosen Trainer
method runs last. The parsed config is written to the run's log folder by :class:`SaveConfigCallback`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
import typing
from collections.abc import Callable, Iterable
from functools import partial, update_wrapper
from types import MethodType
from typing import Any

import torch
import yaml
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

import torchplug
from torchplug._errors import MisconfigurationError
from torchplug._hparams import given_hyperparameters
from torchplug.callbacks._base import Callback
from torchplug.cli import _LIGHTNING_CLI_NAMES
from torchplug.module import DataModule, Module
from torchplug.trainer import Trainer
from torchplug.utilities import rank_zero_warn, seed_everything

_INSTALL_HINT = "pip install 'torchplug[cli]'"
_missing = [
    name
    for name in ("jsonargparse", "docstring_parser", "typeshed_client")
    if not importlib.util.find_spec(name)
]
if _missing:
    raise ModuleNotFoundError(
        f"torchplug's LightningCLI needs jsonargparse with its 'signatures' extra; {', '.join(_missing)} "
        f"{'is' if len(_missing) == 1 else 'are'} not installed: {_INSTALL_HINT}"
    )

import docstring_parser  # noqa: E402
from jsonargparse import (  # noqa: E402
    ActionConfigFile,
    ArgumentParser,
    Namespace,
    class_from_function,
    register_unresolvable_import_paths,
)

# torch's classes report ``__module__`` paths that do not import (torch.optim.adam.Adam is torch.optim.Adam):
# jsonargparse then writes the importable path into configs.
register_unresolvable_import_paths(torch)


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau`` that also names the logged metric it follows (``monitor``), so that the CLI can
    build the scheduler from a config alone (``--lr_scheduler=ReduceLROnPlateau --lr_scheduler.monitor=val_loss``)."""

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


# Its public home, the path configs name (torch's own class of the same name is not accepted by the CLI).
ReduceLROnPlateau.__module__ = "torchplug.cli"


#: The scheduler types the CLI offers. torch's own ReduceLROnPlateau is an LRScheduler too (torch >= 2.2), so the
#: parser accepts it; it cannot say what to monitor, and is refused when the optimizers are built.
LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = LRScheduler | ReduceLROnPlateau
LRSchedulerType = type[LRScheduler] | type[ReduceLROnPlateau]

#: What ``LightningCLI(args=...)`` takes: command-line style strings, or a structured config.
ArgsType = list[str] | dict[str, Any] | Namespace | None
#: Type a module's ``__init__`` argument with these to receive an optimizer or scheduler the user configures
#: (``--model.optimizer=Adam``), built later from the parameters (the optimizer) as ``configure_optimizers`` needs.
OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]

_LIGHTNING_CLASSES = (Trainer, Module, DataModule, Callback)
_AUTOMATIC = "AUTOMATIC"
#: What checkpoints of a CLI-built model name as the builder ``load_from_checkpoint`` rebuilds it with.
_INSTANTIATOR = "torchplug.cli.instantiate_module"


class LightningArgumentParser(ArgumentParser):
    """jsonargparse's ``ArgumentParser`` with groups for the Trainer, modules, callbacks, optimizers and schedulers.

    ``default_env=True`` also reads options from environment variables named after ``env_prefix``
    (``PL_FIT__TRAINER__MAX_EPOCHS`` under the ``fit`` subcommand, ``PL_TRAINER__MAX_EPOCHS`` with ``run=False``;
    ``PL_CONFIG`` for a whole config), as Lightning does.
    """

    def __init__(
        self,
        *args: Any,
        description: str = "torchplug Trainer command line tool",
        env_prefix: str = "PL",
        default_env: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs
        )
        #: The nested keys that hold callbacks (``add_lightning_class_args(SomeCallback, "key")``).
        self.callback_keys: list[str] = []
        # nested key -> (class or tuple of classes, link_to), for the optimizer and scheduler groups added
        self._optimizers: dict[str, tuple[type | tuple[type, ...], str]] = {}
        self._lr_schedulers: dict[str, tuple[type | tuple[type, ...], str]] = {}

    def add_lightning_class_args(
        self,
        lightning_class: type | Callable[..., Any],
        nested_key: str | None,
        subclass_mode: bool = False,
        required: bool = True,
    ) -> list[str]:
        """Add the ``__init__`` arguments of a Trainer, Module, DataModule or Callback class (or of a function
        returning one) under ``nested_key``; with ``subclass_mode`` any subclass may be named by its class path.

        Returns the names of the arguments added.
        """
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, _LIGHTNING_CLASSES)):
            raise MisconfigurationError(
                f"add_lightning_class_args({lightning_class!r}): expected a subclass of Trainer, LightningModule, "
                "LightningDataModule or Callback, or a function annotated to return one"
            )
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(
                lightning_class, nested_key, fail_untyped=False, required=required
            )
        # the Trainer is built by the CLI itself, after the callbacks it adds are known
        instantiate = not issubclass(lightning_class, Trainer)
        return self.add_class_arguments(
            lightning_class, nested_key, fail_untyped=False, instantiate=instantiate, sub_configs=True
        )

    def add_optimizer_args(
        self,
        optimizer_class: type[Optimizer] | tuple[type[Optimizer], ...] = (Optimizer,),
        nested_key: str = "optimizer",
        link_to: str = _AUTOMATIC,
    ) -> None:
        """Add an optimizer group: one class's arguments, or (a tuple) any subclass chosen by ``--<key>=Name``.

        ``link_to="AUTOMATIC"`` lets the CLI build it in ``configure_optimizers``; else the dotted key of an
        argument (``model.optimizer_init``) that receives its config (``class_path`` and ``init_args``).
        """
        _check_classes("add_optimizer_args", "optimizer_class", optimizer_class, (Optimizer,))
        self._add_not_instantiated(optimizer_class, nested_key, skip={"params"})
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(
        self,
        lr_scheduler_class: LRSchedulerType | tuple[LRSchedulerType, ...] = LRSchedulerTypeTuple,
        nested_key: str = "lr_scheduler",
        link_to: str = _AUTOMATIC,
    ) -> None:
        """Add a learning-rate scheduler group, as :meth:`add_optimizer_args` adds an optimizer's (torch's schedulers
        and this module's :class:`ReduceLROnPlateau`)."""
        _check_classes(
            "add_lr_scheduler_args", "lr_scheduler_class", lr_scheduler_class, LRSchedulerTypeTuple
        )
        self._add_not_instantiated(lr_scheduler_class, nested_key, skip={"optimizer"})
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)

    def _add_not_instantiated(
        self, classes: type | tuple[type, ...], nested_key: str, skip: set[str]
    ) -> None:
        # built later, by the CLI or by the user's code, from what this group parsed
        options: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": skip}
        if isinstance(classes, tuple):
            self.add_subclass_arguments(classes, nested_key, **options)
        else:
            self.add_class_arguments(classes, nested_key, sub_configs=True, **options)


def _check_classes(method: str, argument: str, given: Any, bases: tuple[type, ...]) -> None:
    classes = given if isinstance(given, tuple) else (given,)
    if not classes or not all(isinstance(c, type) and issubclass(c, bases) for c in classes):
        raise TypeError(
            f"{method}({argument}={given!r}): expected a subclass of {' or '.join(b.__name__ for b in bases)}, or a "
            "tuple of them"
        )


class SaveConfigCallback(Callback):
    """Writes the CLI's parsed config to the run's log folder (``trainer.log_dir``) when the run sets up, once.

    Refuses to overwrite a config already there (``overwrite=True`` allows it). ``multifile=True`` keeps a config
    given as several files as several files. Subclass it and implement :meth:`save_config` to also save the config
    elsewhere (a logger's hyperparameters); ``save_to_log_dir=False`` then skips the file.

    Raises:
        RuntimeError: the config file exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: Namespace,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = True,
    ) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and type(self).save_config is SaveConfigCallback.save_config:
            raise ValueError(
                "`save_to_log_dir=False` only makes sense when subclassing SaveConfigCallback with a `save_config` that "
                "saves the config elsewhere; as given, the config would be saved nowhere (keep save_to_log_dir=True)"
            )

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir
            path = os.path.join(log_dir, self.config_filename)
            exists = trainer.broadcast(trainer.is_global_zero and not self.overwrite and os.path.isfile(path))
            if exists:
                raise RuntimeError(
                    f"{type(self).__name__} found {path}, the config of an earlier run. Aborting to avoid overwriting "
                    "it: delete it, disable saving with LightningCLI(save_config_callback=None), or allow "
                    'overwriting with LightningCLI(save_config_kwargs={"overwrite": True})'
                )
            if trainer.is_global_zero:  # one writer; the folder may not exist before the logger writes
                os.makedirs(log_dir, exist_ok=True)
                self.parser.save(
                    self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
                )
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        """Implement to save the config somewhere besides the log folder; called once, on global rank 0 only (a
        collective call here would hang the other ranks: use :meth:`setup` for those).

        Example::

            def save_config(self, trainer, pl_module, stage):
                config = self.parser.dump(self.config, skip_none=False)
                trainer.logger.log_hyperparams({"config": config})
        """


class LightningCLI:
    """A command line tool that builds a Module, a DataModule and a Trainer from arguments and config files, then
    runs a Trainer method (``fit``, ``validate``, ``test``, ``predict``).

    Args:
        model_class: The Module class (or a function returning a Module). ``None``: any Module, named with
            ``--model=ClassPath``.
        datamodule_class: The DataModule class (or a function returning one). ``None``: optional, any DataModule
            named with ``--data=ClassPath``.
        save_config_callback: The callback class that saves the parsed config (None: none).
        save_config_kwargs: Keyword arguments for ``save_config_callback``.
        trainer_class: The Trainer class, or a function returning a Trainer.
        trainer_defaults: Trainer argument defaults; its ``callbacks`` are always added and not configurable.
        seed_everything_default: The ``--seed_everything`` default: an int seeds with it, True with the seed
            ``seed_everything`` already set or else a random one (written back into the config), False does not seed.
        parser_kwargs: Keyword arguments for each parser; a key named after a subcommand holds that one's.
        parser_class: The parser class.
        subclass_mode_model: Accept any subclass of ``model_class``, named by class path.
        subclass_mode_data: Accept any subclass of ``datamodule_class``, named by class path.
        args: What to parse instead of ``sys.argv[1:]``: a list of command-line strings, or a dict/Namespace config.
        run: Run the subcommand's Trainer method. With False there are no subcommands: the classes are built only.
        auto_configure_optimizers: Add ``--optimizer``/``--lr_scheduler`` and, when given, set the model's
            ``configure_optimizers`` to return them.
        load_from_checkpoint_support: ``save_hyperparameters()`` in the model and datamodule records their parsed
            config (plain data: class paths and arguments) rather than the objects ``__init__`` received, so that
            ``load_from_checkpoint`` rebuilds injected objects (optimizer callables, submodules) the same way.
    """

    def __init__(
        self,
        model_class: type[Module] | Callable[..., Module] | None = None,
        datamodule_class: type[DataModule] | Callable[..., DataModule] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | dict[str, dict[str, Any]] | None = None,
        parser_class: type[LightningArgumentParser] = LightningArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        if not isinstance(seed_everything_default, (bool, int)):
            raise TypeError(
                f"LightningCLI(seed_everything_default={seed_everything_default!r}): expected an int seed, True "
                "(a random seed) or False (no seeding)"
            )
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers
        self.model_class = model_class
        self.datamodule_class = datamodule_class
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data
        self._model_class = model_class or Module
        self._datamodule_class = datamodule_class or DataModule
        self._dumped: dict[str, Any] | None = None  # the parsed config as plain data, made when first needed

        names = self.subcommands()
        main_kwargs = {k: v for k, v in self.parser_kwargs.items() if k not in names}
        subcommand_kwargs = {k: v for k, v in self.parser_kwargs.items() if k in names}
        self.setup_parser(run, main_kwargs, subcommand_kwargs)
        self.parse_arguments(self.parser, args)
        self._parse_ckpt_path()
        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._set_seed()
        if load_from_checkpoint_support:
            self._record_parsed_hyperparameters()

        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ----------------------------------------------------------------------------------------------------- parsers
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Create a parser (one per subcommand, and the main one) with its ``--config`` option."""
        kwargs.setdefault("dump_header", [f"torchplug=={torchplug.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ActionConfigFile,
            help="Path to a configuration file in json or yaml format.",
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Create the main parser and, with ``add_subcommands``, one parser per subcommand; add their arguments."""
        self.parser = self.init_parser(**main_kwargs)
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        self._subcommand_method_arguments: dict[str, list[str]] = {}
        if not add_subcommands:
            self._add_arguments(self.parser)
            return
        subcommands = self.parser.add_subcommands()
        trainer_class = self._trainer_type()
        for name, skip in self.subcommands().items():
            description = _short_description(getattr(trainer_class, name))
            kwargs = dict(subparser_kwargs.get(name, {}))
            kwargs.setdefault("description", description)
            parser = self.init_parser(**kwargs)
            self._add_arguments(parser)
            # the method's own arguments (ckpt_path, verbose, ...): passed to it when it runs
            self._subcommand_method_arguments[name] = parser.add_method_arguments(
                trainer_class, name, skip=set(skip)
            )
            self._subcommand_parsers[name] = parser
            subcommands.add_subcommand(name, parser, help=description)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands (Trainer methods) and, for each, the method arguments the CLI supplies itself."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule"},
        }

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:  # unless the user's add_arguments_to_parser added them
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        self.link_optimizers_and_lr_schedulers(parser)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the arguments that are not a class's: ``--seed_everything``."""
        parser.add_argument(
            "--seed_everything",
            type=bool | int,
            default=self.seed_everything_default,
            help="An int: seed_everything(value) before the classes are built; True: a random seed; False: no seeding.",
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the Trainer's (``--trainer.*``), the model's (``--model.*``) and the data's (``--data.*``) arguments."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        # without a datamodule class the data is optional: the model may bring its own dataloaders
        parser.add_lightning_class_args(
            self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
            required=self.datamodule_class is not None,
        )  # fmt: skip

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments (``parser.add_optimizer_args``, ``parser.add_lightning_class_args``) or to link
        them (``parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")``)."""

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: LightningArgumentParser) -> None:
        """Link each optimizer and scheduler group added with a ``link_to`` key to that key."""
        for key, (classes, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to == _AUTOMATIC:
                continue
            if isinstance(classes, tuple):  # subclass mode: the group's value already has its class_path
                parser.link_arguments(key, link_to)
            else:
                parser.link_arguments(key, link_to, compute_fn=partial(_class_config, classes))

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` (a list of strings, a dict or Namespace) or else ``sys.argv`` into ``self.config``."""
        if args is not None and len(sys.argv) > 1:
            rank_zero_warn(
                "LightningCLI's args parameter replaces the command line, which is not empty: it parses "
                f"args={args} and ignores sys.argv[1:]={sys.argv[1:]} (give one of the two)"
            )
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, the model's hyperparameters saved in that checkpoint replace the parsed ones, so the
        model is built as the checkpoint's was."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config.get(f"{subcommand}.ckpt_path") if subcommand else None
        if not ckpt_path or not os.path.isfile(ckpt_path):
            return
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model: dict[str, Any] = hparams
        if "_class_path" in hparams:  # recorded by a CLI in subclass mode: the class it was trained as
            model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        elif self.subclass_mode_model:  # the config names the class; the checkpoint gives its arguments
            model = {"class_path": self.config[f"{subcommand}.model.class_path"], "init_args": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of ckpt_path hyperparameters failed for ckpt_path={ckpt_path!r}\n")
            raise

    def _record_parsed_hyperparameters(self) -> None:
        """Build the model and the datamodule inside :func:`torchplug._hparams.given_hyperparameters`, with their part
        of the parsed config."""
        for key, cls, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            base = cls if isinstance(cls, type) else _return_type(cls)
            if isinstance(base, type):
                self.parser.add_instantiator(_RecordingInstantiator(self, key), base, subclasses=subclasses)

    def _config_dump(self) -> dict[str, Any]:
        """The parsed config as plain data (once), the subcommand's part where there is one."""
        if self._dumped is None:
            text = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml")
            dumped = yaml.safe_load(text)
            self._dumped = dumped.get(self.subcommand, dumped) if self.subcommand else dumped
        return self._dumped

    def _trainer_type(self) -> type:
        trainer_class = self.trainer_class
        return trainer_class if isinstance(trainer_class, type) else class_from_function(trainer_class)

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    # ------------------------------------------------------------------------------------------------- instantiation
    def before_instantiate_classes(self) -> None:
        """Implement to run code after parsing, before the classes are built."""

    def instantiate_classes(self) -> None:
        """Build the classes of the parsed config: ``self.config_init``, ``self.datamodule``, ``self.model``,
        ``self.trainer``."""
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Implement to run code after the classes are built, before the subcommand runs."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer from its parsed arguments (``kwargs`` override them), with the callbacks of the
        callback groups, of ``trainer_defaults`` and the config-saving callback added."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(config, extra)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if "callbacks" not in config:
            name = getattr(self.trainer_class, "__qualname__", repr(self.trainer_class))
            rank_zero_warn(
                f"The `{name}` class does not expose the `callbacks` argument: the CLI's callbacks (callback groups, "
                "trainer_defaults' callbacks, the config saving) are not included"
            )
            return self.trainer_class(**config)
        given = config["callbacks"]
        config["callbacks"] = [] if given is None else list(given) if isinstance(given, list) else [given]
        config["callbacks"] += callbacks
        defaults = self.trainer_defaults.get("callbacks")
        if defaults is not None:
            for callback in defaults if isinstance(defaults, list) else [defaults]:
                # a default given as a config ({"class_path": ..., "init_args": ...}) is built like a parsed one
                config["callbacks"].append(
                    instantiate_class((), callback) if _is_class_config(callback) else callback
                )
        if self.save_config_callback is not None and not config.get("fast_dev_run", False):
            saved = self.config.get(str(self.subcommand), self.config)
            config["callbacks"].append(
                self.save_config_callback(self._parser(self.subcommand), saved, **self.save_config_kwargs)
            )
        return self.trainer_class(**config)

    @staticmethod
    def configure_optimizers(
        lightning_module: Module, optimizer: Optimizer, lr_scheduler: LRSchedulerTypeUnion | None = None
    ) -> Any:
        """What the model's ``configure_optimizers`` returns when the CLI builds the optimizer (and scheduler);
        override to return something else."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor},
            }
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """Give the model a ``configure_optimizers`` that builds the ``AUTOMATIC`` optimizer (and scheduler) groups'
        choice, when the user chose an optimizer."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizers = _automatic_keys(parser._optimizers, (Optimizer,))
        schedulers = _automatic_keys(parser._lr_schedulers, LRSchedulerTypeTuple)
        if not optimizers:
            return
        if len(optimizers) > 1 or len(schedulers) > 1:
            raise MisconfigurationError(
                f"{type(self).__name__} builds at most one optimizer and one lr_scheduler group linked 'AUTOMATIC', "
                f"but found {optimizers + schedulers}: give the others a link_to (a model argument) and implement "
                "configure_optimizers in the model"
            )
        optimizer_config = self._group_config(parser._optimizers, optimizers[0])
        if not optimizer_config:
            return  # the group exists, but no optimizer was chosen: the model's own configure_optimizers stays
        scheduler_config = self._group_config(parser._lr_schedulers, schedulers[0]) if schedulers else None
        model = self.model
        if _overrides_configure_optimizers(model):
            rank_zero_warn(
                f"`{type(model).__name__}.configure_optimizers` will be overridden by "
                f"`{type(self).__name__}.configure_optimizers`."
            )
        optimizer = instantiate_class(model.parameters(), optimizer_config)
        lr_scheduler = instantiate_class(optimizer, scheduler_config) if scheduler_config else None
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not isinstance(
            lr_scheduler, ReduceLROnPlateau
        ):
            raise MisconfigurationError(
                f"lr_scheduler={scheduler_config.get('class_path')!r}: torch's ReduceLROnPlateau does not say which "
                "logged value it follows; use torchplug.cli.ReduceLROnPlateau, which takes a monitor "
                "(--lr_scheduler=ReduceLROnPlateau --lr_scheduler.monitor=val_loss), or implement "
                "configure_optimizers in the model"
            )
        method = partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=lr_scheduler)
        update_wrapper(method, self.configure_optimizers)
        model.configure_optimizers = MethodType(method, model)

    def _group_config(self, register: dict[str, tuple[Any, str]], key: str) -> dict[str, Any] | None:
        value = self._get(self.config_init, key)
        classes = register[key][0]
        if isinstance(classes, tuple):  # subclass mode: None, or already {class_path, init_args}
            return value
        return _class_config(classes, value)

    def _get(self, config: Namespace, key: str, default: Any = None) -> Any:
        """A config value, read inside the subcommand's part of the config when there is one."""
        return config.get(str(self.subcommand), config).get(key, default)

    # ------------------------------------------------------------------------------------------------------ running
    def _set_seed(self) -> None:
        key = "seed_everything" if self.subcommand is None else f"{self.subcommand}.seed_everything"
        seed = self.config.get(key)
        if seed is False or seed is None:
            return
        if (
            seed is True
        ):  # the seed already set (by seed_everything) or a random one, written back into the config
            current = os.environ.get("PL_GLOBAL_SEED")
            seed = int(current) if current is not None else random.randint(0, 2**32 - 1)
        self.config[key] = seed_everything(seed, workers=True)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run ``before_<subcommand>``, the subcommand (a method of this class by that name, else the Trainer's),
        then ``after_<subcommand>``."""
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        method = getattr(self, subcommand, None) or getattr(self.trainer, subcommand)
        method(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """The subcommand method's keyword arguments: its parsed options, the model and the datamodule."""
        wanted = self._subcommand_method_arguments[subcommand]
        kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in wanted}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs


class _RecordingInstantiator:
    """jsonargparse's instantiator for the model or the datamodule: builds the class while recording its parsed
    config as the hyperparameters ``save_hyperparameters()`` saves."""

    def __init__(self, cli: LightningCLI, key: str) -> None:
        self.cli, self.key = cli, key

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        hparams = dict(self.cli._config_dump().get(self.key) or {})
        if "class_path" in hparams:  # subclass mode: the arguments flat, the class named apart
            hparams = {
                "_class_path": hparams["class_path"],
                **(hparams.get("init_args") or {}),
                **(hparams.get("dict_kwargs") or {}),
            }
        prefix = f"{self.key}."
        for target, value in applied_instantiation_links.items():  # values linked at instantiation
            if target.startswith(prefix):
                path = target[len(prefix) :].removeprefix("init_args.").split(".")
                _set_nested(hparams, path, value)
        with given_hyperparameters(class_type, hparams, _INSTANTIATOR):
            return class_type(*args, **kwargs)


def _return_type(function: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(function).get("return")
    except Exception:  # an annotation that does not resolve: no hyperparameters recorded for it
        return None


def _set_nested(data: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def instantiate_module(class_type: type, config: dict[str, Any]) -> Any:
    """Rebuild a model or datamodule from the hyperparameters LightningCLI recorded (``load_from_checkpoint`` calls
    this for a checkpoint whose hyperparameters name it): its nested class configs are instantiated as when parsed."""
    parser = ArgumentParser(exit_on_error=False)
    config = dict(config)
    class_path = config.pop("_class_path", None)
    if class_path is not None:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {"class_path": class_path, "dict_kwargs": config}
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({"module": config})).module


def instantiate_class(args: Any | tuple[Any, ...], init: dict[str, Any] | Namespace) -> Any:
    """Build ``init["class_path"]`` (a dotted import path) with the positional ``args`` (one value or a tuple) and
    the keyword arguments ``init["init_args"]``: ``instantiate_class(model.parameters(), optimizer_config)``."""
    class_path = init.get("class_path") if isinstance(init, (dict, Namespace)) else None
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(
            f"instantiate_class(init={init!r}): expected a dict with a dotted 'class_path' (and optional "
            "'init_args'), like {'class_path': 'torch.optim.SGD', 'init_args': {'lr': 0.1}}"
        )
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    kwargs = init.get("init_args") or {}
    positional = args if isinstance(args, tuple) else (args,)
    return cls(*positional, **(vars(kwargs) if isinstance(kwargs, Namespace) else kwargs))


def _class_config(cls: type, init_args: Namespace | dict[str, Any] | None) -> dict[str, Any]:
    """A class group's parsed arguments as the ``{class_path, init_args}`` config :func:`instantiate_class` takes."""
    if isinstance(init_args, Namespace):
        init_args = init_args.as_dict()
    return {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args or {}}


def _is_class_config(value: Any) -> bool:
    return isinstance(value, (dict, Namespace)) and isinstance(value.get("class_path"), str)


def _automatic_keys(register: dict[str, tuple[Any, str]], bases: tuple[type, ...]) -> list[str]:
    found = []
    for key, (classes, link_to) in register.items():
        classes = classes if isinstance(classes, tuple) else (classes,)
        if link_to == _AUTOMATIC and any(issubclass(c, bases) for c in classes):
            found.append(key)
    return found


def _overrides_configure_optimizers(model: Any) -> bool:
    if "configure_optimizers" in vars(model):
        return True
    return getattr(type(model), "configure_optimizers", None) is not Module.configure_optimizers


def _short_description(obj: Any) -> str | None:
    """The first line of ``obj``'s docstring (a subcommand's help)."""
    if obj.__doc__ is None:
        return None
    try:
        return docstring_parser.parse(obj.__doc__).short_description
    except (ValueError, docstring_parser.ParseError) as err:
        rank_zero_warn(f"Could not parse the docstring of {obj}: {err}")
        return None


__all__ = list(_LIGHTNING_CLI_NAMES)  # torchplug.cli forwards exactly these names here

"""Rename-only import shim: Lightning's module names resolve to torchplug's public names.

Put the folder holding this file first on ``PYTHONPATH``; its ``lightning``, ``pytorch_lightning`` and
``lightning_fabric`` packages install :class:`ShimFinder` on first import. Every Lightning module the shim knows is
a module object whose attributes are looked up, by the same name (or a name in ``RENAMES``), in the ``__all__`` of
the torchplug modules listed for it in ``ALIASES``: the objects are torchplug's own, nothing is wrapped or
re-implemented. A name torchplug does not have (every name that starts with ``_``, every name of a Lightning module
the shim does not list) imports as a :class:`Missing` marker that raises :class:`ShimMissingError` on any use, so a
test that needs a Lightning internal fails when it uses it, while the other tests of its file still run.

Three exceptions, all listed here in full and documented in README.md:

* ``lightning.pytorch.demos`` (``BoringModel`` and friends) is Lightning's own demo code, executed from the Lightning
  source tree named by ``LIGHTNING_PARITY_SRC`` with its imports going through this shim, exactly like the test
  helpers in ``tests_pytorch/helpers``.
* ``INFRA``: the few internals that Lightning's ``conftest.py``, ``tests_pytorch/helpers`` and the demos import for
  test isolation and skip conditions. They are generic stand-ins (is the process group up, which signals exist),
  handed out only when the importing file is one of those, or pytest itself resolving conftest's warning filter;
  a test file asking for the same name gets a :class:`Missing` marker.
* Environment flags (``_TENSORBOARD_AVAILABLE``, ``_TORCH_GREATER_EQUAL_2_8``, ``_IS_WINDOWS``, ...): facts about
  this machine, computed here from the installed packages for whoever asks.
"""

import importlib
import importlib.abc
import importlib.util
import os
import re
import signal
import socket
import sys
import types
from pathlib import Path

#: Lightning module -> torchplug modules whose ``__all__`` supply its names, searched in order.
ALIASES = {
    "lightning.pytorch": ["torchplug", "torchplug.callbacks"],
    "lightning.pytorch.core": ["torchplug", "torchplug.module"],
    "lightning.pytorch.core.module": ["torchplug", "torchplug.module"],
    "lightning.pytorch.core.datamodule": ["torchplug", "torchplug.module"],
    "lightning.pytorch.core.hooks": ["torchplug.module"],
    "lightning.pytorch.core.optimizer": ["torchplug"],
    "lightning.pytorch.core.mixins": ["torchplug.module"],
    "lightning.pytorch.core.mixins.hparams_mixin": ["torchplug.module"],
    "lightning.pytorch.core.saving": ["torchplug.loggers.csv_logs"],
    "lightning.pytorch.callbacks": ["torchplug.callbacks"],
    "lightning.pytorch.callbacks.progress": ["torchplug.callbacks", "torchplug.callbacks.progress"],
    "lightning.pytorch.callbacks.progress.progress_bar": ["torchplug.callbacks.progress"],
    "lightning.pytorch.callbacks.progress.tqdm_progress": ["torchplug.callbacks.progress"],
    "lightning.pytorch.callbacks.progress.rich_progress": ["torchplug.callbacks.rich_progress"],
    "lightning.pytorch.cli": ["torchplug.cli"],
    "lightning.pytorch.loggers": ["torchplug.loggers"],
    "lightning.pytorch.loggers.csv_logs": ["torchplug.loggers", "torchplug.loggers.csv_logs"],
    "lightning.pytorch.loggers.tensorboard": ["torchplug.loggers", "torchplug.loggers.tensorboard"],
    "lightning.pytorch.loggers.wandb": ["torchplug.loggers", "torchplug.loggers.wandb"],
    "lightning.pytorch.loggers.litlogger": ["torchplug.loggers", "torchplug.loggers.litlogger"],
    "lightning.pytorch.loggers.comet": ["torchplug.loggers", "torchplug.loggers.comet"],
    "lightning.pytorch.profilers": ["torchplug.profilers"],
    "lightning.pytorch.trainer": ["torchplug"],
    "lightning.pytorch.trainer.trainer": ["torchplug"],
    "lightning.pytorch.trainer.states": ["torchplug"],
    "lightning.pytorch.utilities": ["torchplug.utilities"],
    "lightning.pytorch.utilities.exceptions": ["torchplug"],
    "lightning.pytorch.utilities.model_summary": ["torchplug.utilities.model_summary"],
    "lightning.pytorch.utilities.model_summary.model_summary": ["torchplug.utilities.model_summary"],
    "lightning.pytorch.tuner": ["torchplug.tuner"],
    "lightning.pytorch.tuner.tuning": ["torchplug.tuner"],
    "lightning.pytorch.tuner.lr_finder": ["torchplug.tuner"],
    "lightning.pytorch.tuner.batch_size_scaling": ["torchplug.tuner"],
    "lightning.pytorch.utilities.memory": ["torchplug.utilities", "torchplug.tuner"],
    # torchplug's backends are packages of their own: a port imports DDPStrategy from torchplug_ddp, and so on.
    "lightning.pytorch.accelerators": ["torchplug.accelerators", "torchplug_cuda"],
    "lightning.pytorch.strategies": ["torchplug.strategies", "torchplug_ddp", "torchplug_fsdp", "torchplug_dp"],
    "lightning.pytorch.plugins": ["torchplug.precision", "torchplug.environments", "torchplug_amp"],
    "lightning.pytorch.plugins.precision": ["torchplug.precision", "torchplug_amp"],
    "lightning.pytorch.plugins.environments": ["torchplug.environments"],
    "lightning.fabric": [],
    "lightning.fabric.utilities": ["torchplug.utilities"],
    "lightning.fabric.utilities.exceptions": [],
    "lightning.fabric.plugins.environments": ["torchplug.environments"],
}

#: Lightning modules that are plain file splits of a listed package: each submodule answers as the package does
#: (``lightning.pytorch.callbacks.model_checkpoint`` -> ``torchplug.callbacks``).
SPLIT_PACKAGES = {
    "lightning.pytorch.callbacks",
    "lightning.pytorch.callbacks.progress",
    "lightning.pytorch.loggers",
    "lightning.pytorch.profilers",
    "lightning.pytorch.accelerators",
    "lightning.pytorch.strategies",
    "lightning.pytorch.plugins.precision",
    "lightning.pytorch.plugins.environments",
    "lightning.fabric.plugins.environments",
}
#: Lightning utility modules whose public names torchplug keeps in ``torchplug.utilities``.
UTILITY_MODULES = (
    "rank_zero", "combined_loader", "types", "parsing", "seed", "apply_func", "model_summary", "warnings",
    "grads", "memory", "parameter_tying", "enums",
    "compile",
)

#: Lightning name -> torchplug object ("module:attribute"), where torchplug spells a name differently.
RENAMES = {
    "lightning.pytorch.utilities.exceptions": {"MisconfigurationException": "torchplug:MisconfigurationError"},
    "lightning.fabric.utilities.exceptions": {"MisconfigurationException": "torchplug:MisconfigurationError"},
    "lightning.pytorch.utilities": {"MisconfigurationException": "torchplug:MisconfigurationError"},
    "lightning.fabric.utilities.seed": {"pl_worker_init_function": "torchplug.utilities:worker_init_function"},
    # lightning.fabric re-exports utilities.seed's seed_everything; its other names (Fabric, ...) have no counterpart
    "lightning.fabric": {"seed_everything": "torchplug.utilities:seed_everything"},
}

DEMOS = "lightning.pytorch.demos"


def _infra_find_free_network_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _infra_destroy_dist_connection() -> None:
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _infra_distributed_is_initialized() -> bool:
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _InfraNoXLA:
    """Stands for ``XLAAccelerator`` in conftest's thread check: there is no XLA device here."""

    @staticmethod
    def is_available() -> bool:
        return False


class _InfraSignals:
    """Stands for ``_SignalConnector`` in conftest's signal-handler restore: every valid signal."""

    @staticmethod
    def _valid_signals() -> set:
        return set(signal.valid_signals())


class _InfraNoChildObserver:
    """Stands for ``_ChildProcessObserver`` in conftest's thread check: torchplug starts no such thread."""


class _InfraDeprecationWarning(DeprecationWarning):
    """Stands for ``LightningDeprecationWarning`` in conftest's warning filter: torchplug never emits it."""


def _package_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # a test put a stand-in module without a spec into sys.modules
        return name in sys.modules


def _torch_at_least(version: str) -> bool:
    import torch
    from packaging.version import Version

    return Version(torch.__version__.split("+")[0]) >= Version(version)


#: RunIf conditions that need hardware or a launcher this machine does not have; such tests are out of scope.
_RUNIF_HARDWARE = {
    "min_cuda_gpus", "bf16_cuda", "tpu", "mps", "standalone", "deepspeed", "bitsandbytes",
}
#: RunIf conditions that name an optional package.
_RUNIF_PACKAGES = {
    "sklearn": "sklearn", "onnx": "onnx", "onnxruntime": "onnxruntime", "rich": "rich", "omegaconf": "omegaconf",
    "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet": "comet_ml",
    "neptune": "neptune", "litlogger": "litlogger",
}


def _infra_runif_reasons(**kwargs):
    """Skip reasons for ``RunIf``, computed from this machine: no accelerator, Linux, the installed packages."""
    reasons = []
    for key, value in kwargs.items():
        if key in _RUNIF_HARDWARE:
            if value:
                reasons.append(key)
        elif key in _RUNIF_PACKAGES:
            if value and not _package_available(_RUNIF_PACKAGES[key]):
                reasons.append(key)
        elif key == "min_torch":
            if not _torch_at_least(value):
                reasons.append(f"torch>={value}")
        elif key == "max_torch":
            if _torch_at_least(value):
                reasons.append(f"torch<{value}")
        elif key == "min_python":
            if sys.version_info < tuple(int(p) for p in str(value).split(".")):
                reasons.append(f"python>={value}")
        elif key in ("skip_windows", "linux_only", "dynamo", "psutil"):
            if key == "psutil" and value and not _package_available("psutil"):
                reasons.append(key)
        elif value:
            reasons.append(f"{key} (unknown to the parity harness)")
    return reasons, {}


#: Internals that Lightning's conftest.py, tests_pytorch/helpers and demos import (never handed to a test file).
INFRA = {
    "lightning.fabric.plugins.environments.lightning": {"find_free_network_port": _infra_find_free_network_port},
    "lightning.fabric.strategies.launchers.subprocess_script": {"_ChildProcessObserver": _InfraNoChildObserver},
    "lightning.fabric.utilities.distributed": {
        "_destroy_dist_connection": _infra_destroy_dist_connection,
        "_distributed_is_initialized": _infra_distributed_is_initialized,
    },
    "lightning.fabric.utilities.rank_zero": {"LightningDeprecationWarning": _InfraDeprecationWarning},
    "lightning.pytorch.accelerators": {"XLAAccelerator": _InfraNoXLA},
    "lightning.pytorch.trainer.connectors.signal_connector": {"_SignalConnector": _InfraSignals},
    "lightning.pytorch.utilities.testing": {"_runif_reasons": _infra_runif_reasons},
    "lightning.pytorch.utilities.types": {"STEP_OUTPUT": object},
}


class ShimMissingError(ImportError):
    """A Lightning name with no torchplug counterpart was used."""


class Missing:
    """What a Lightning name torchplug does not have imports as: any use raises :class:`ShimMissingError`."""

    __slots__ = ("_shim_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_shim_name", name)

    def _fail(self, *args, **kwargs):
        raise ShimMissingError(
            f"{object.__getattribute__(self, '_shim_name')}: no torchplug counterpart (rename-only Lightning parity shim)"
        )

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # Python's protocols probe dunders; absence is the honest answer
        self._fail()

    def __repr__(self):
        return f"<missing {object.__getattribute__(self, '_shim_name')}>"

    __call__ = __bool__ = __iter__ = __len__ = __getitem__ = __setattr__ = __eq__ = __hash__ = __mro_entries__ = _fail
    __enter__ = __contains__ = __int__ = __float__ = __index__ = __lt__ = __gt__ = __le__ = __ge__ = __ne__ = _fail


#: Packages whose name is not the lower-cased flag (``_KINETO_AVAILABLE`` is torch's profiler).
_FLAG_PACKAGES = {
    "SKLEARN": "sklearn", "TORCH_TRT": "torch_tensorrt", "XLA": "torch_xla", "TENSORBOARDX": "tensorboardX",
    "COMET": "comet_ml", "HABANA": "habana_frameworks", "TORCHAUDIO": "torchaudio", "LIGHTNING_XPU": "lightning_xpu",
    "JSONARGPARSE_SIGNATURES": "jsonargparse",
}
_FLAG = re.compile(r"^_(?:(?P<package>\w+)_AVAILABLE|(?P<lib>TORCH|TORCHMETRICS|PYTHON)_(?P<op>GREATER_EQUAL|EQUAL|LESS|LESS_EQUAL)_(?P<version>\d+(?:_\d+)*)|(?P<windows>IS_WINDOWS))$")


def environment_flag(name: str):
    """The value of a Lightning environment flag on this machine, or None when ``name`` is not one."""
    match = _FLAG.match(name)
    if not match:
        return None
    if match["windows"]:
        return sys.platform == "win32"
    if match["package"]:
        package = match["package"]
        if package == "KINETO":
            import torch.profiler

            return bool(torch.profiler.kineto_available())
        return _package_available(_FLAG_PACKAGES.get(package, package.lower()))
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from packaging.version import Version

    if match["lib"] == "PYTHON":
        have = Version(".".join(map(str, sys.version_info[:3])))
    else:
        try:
            have = Version(Version(installed(match["lib"].lower())).base_version)
        except PackageNotFoundError:
            return False
    want = Version(match["version"].replace("_", "."))
    if match["op"] == "EQUAL":
        return have.release[: len(want.release)] == want.release
    return {"GREATER_EQUAL": have >= want, "LESS": have < want, "LESS_EQUAL": have <= want}[match["op"]]


def _src_root() -> Path:
    root = os.environ.get("LIGHTNING_PARITY_SRC")
    if not root:
        raise ImportError("LIGHTNING_PARITY_SRC is not set: it names the Lightning source tree (holding src/ and tests/)")
    return Path(root).resolve()


def _lightning_has_module(name: str) -> bool:
    """Whether Lightning's source tree holds module or package ``name`` (canonical, ``lightning.…``)."""
    path = _src_root() / "src" / Path(*name.split("."))
    return (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()


def _importer_file() -> str:
    """The file of the code asking for a name, past importlib's and this module's own frames."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith("<frozen importlib") and path != __file__:
            return frame.f_globals.get("__file__") or path
        frame = frame.f_back
    return ""


def _infra_caller(path: str) -> bool:
    """Whether a file may receive INFRA names: Lightning's conftest.py, its test helpers, its demos, or pytest."""
    if not path:
        return False
    path = str(Path(path).resolve())
    if f"{os.sep}_pytest{os.sep}" in path:
        return True
    try:
        rel = Path(path).relative_to(_src_root()).as_posix()
    except ValueError:
        return False
    return (
        rel == "tests/tests_pytorch/conftest.py"
        or rel.startswith("tests/tests_pytorch/helpers/")
        or rel.startswith("src/lightning/pytorch/demos/")
    )


def canonical(name: str) -> str:
    """``pytorch_lightning.x`` and ``lightning_fabric.x`` are ``lightning.pytorch.x`` and ``lightning.fabric.x``."""
    for standalone, unified in (("pytorch_lightning", "lightning.pytorch"), ("lightning_fabric", "lightning.fabric")):
        if name == standalone or name.startswith(standalone + "."):
            return unified + name[len(standalone):]
    return name


def sources(name: str):
    """The torchplug modules answering for Lightning module ``name`` (canonical), or None when none does."""
    if name in ALIASES:
        return ALIASES[name]
    parent, _, leaf = name.rpartition(".")
    if parent in ("lightning.pytorch.utilities", "lightning.fabric.utilities") and leaf in UTILITY_MODULES:
        return ["torchplug.utilities"]
    for package in SPLIT_PACKAGES:
        if name.startswith(package + "."):
            return ALIASES.get(package) or sources(package)
    return None


class ShimModule(types.ModuleType):
    """A Lightning module whose attributes are torchplug's public names of the same spelling."""

    def __init__(self, name: str, lightning_name: str, targets, is_package: bool):
        super().__init__(name)
        self.__lightning_name__ = lightning_name
        self.__torchplug_targets__ = list(targets)
        if is_package:
            self.__path__ = []

    def __getattr__(self, attr: str):
        lightning_name = self.__dict__["__lightning_name__"]
        if attr == "__version__" and lightning_name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            return importlib.import_module("torchplug").__version__  # `from torchplug import __version__`
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # a protocol probe; ``__private`` names are markers like every ``_name``
        infra = INFRA.get(lightning_name, {})
        if attr in infra and _infra_caller(_importer_file()):
            return infra[attr]
        flag = environment_flag(attr)
        if flag is not None:
            return flag
        if not attr.startswith("_"):
            rename = RENAMES.get(lightning_name, {}).get(attr)
            if rename:
                module, _, obj = rename.partition(":")
                return getattr(importlib.import_module(module), obj)
            for target in self.__dict__["__torchplug_targets__"]:
                module = importlib.import_module(target)
                public = getattr(module, "__all__", None)
                if public is None:
                    public = [n for n in vars(module) if not n.startswith("_")]
                if attr in public:
                    return getattr(module, attr)
            # `import lightning.pytorch as pl; pl.callbacks.X`: Lightning's packages import their subpackages.
            submodule = f"{self.__name__}.{attr}"
            if attr.islower() and sources(canonical(submodule)) is not None and _lightning_has_module(canonical(submodule)):
                return importlib.import_module(submodule)
        return Missing(f"{lightning_name}.{attr}")


class _ShimLoader(importlib.abc.Loader):
    def __init__(self, finder):
        self.finder = finder

    def create_module(self, spec):
        lightning_name = canonical(spec.name)
        targets = sources(lightning_name) or []
        return ShimModule(spec.name, lightning_name, targets, spec.submodule_search_locations is not None)

    def exec_module(self, module):
        pass


class ShimFinder(importlib.abc.MetaPathFinder):
    ROOTS = ("lightning", "pytorch_lightning", "lightning_fabric")

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self.ROOTS or fullname in self.ROOTS:
            return None
        name = canonical(fullname)
        if name == DEMOS or name.startswith(DEMOS + "."):
            return self._demo_spec(fullname, name)
        # A name that is no module of Lightning's (``lightning.pytorch.Trainer``, which jsonargparse tries as a module
        # before it reads it as an attribute) is not found, as on Lightning: were it made a module here, the import
        # system would bind it over the parent's attribute of that name.
        if not _lightning_has_module(name):
            return None
        # Every shim module is a package with no files. One torchplug has no counterpart for holds only Missing
        # markers, so a file importing an internal still loads and the test using it fails when it does.
        return importlib.util.spec_from_loader(fullname, _ShimLoader(self), is_package=True)

    def _demo_spec(self, fullname, name):
        """Lightning's demo modules, run from its source tree with their imports shimmed."""
        rel = name.split(".")[2:]  # ["demos", ...]
        base = _src_root() / "src" / "lightning" / "pytorch"
        folder = base.joinpath(*rel)
        if folder.is_dir():
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )
        file = base.joinpath(*rel[:-1], rel[-1] + ".py")
        if file.is_file():
            return importlib.util.spec_from_file_location(fullname, file)
        return None


def install() -> None:
    if not any(isinstance(finder, ShimFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, ShimFinder())


def populate_root(module: types.ModuleType) -> None:
    """Give a top-level shim package (``lightning``, ``pytorch_lightning``, ``lightning_fabric``) its names."""
    install()
    name = canonical(module.__name__)
    if name in ALIASES:
        proxy = ShimModule(module.__name__, name, ALIASES[name], True)
        module.__getattr__ = proxy.__getattr__

"""``torchplug new-backend KIND NAME``: a backend package that installs and passes the conformance kit as made.

The templates are the worked examples of docs/writing-a-backend.md (tests/test_scaffold.py checks that they are the
same, installs a package of each kind and runs its tests). Tokens: ``__NAME__`` (the name users type),
``__DIST__`` (the distribution), ``__PACKAGE__`` (the import package), ``__CLASS__``, ``__PREFIX__`` (of option
names), ``__ENV__`` (of environment variables), ``__KIND__``, ``__GROUP__`` (the entry-point group).
"""

from __future__ import annotations

import re
from pathlib import Path

from torchplug import registry

KINDS = tuple(registry.GROUPS)
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_SUFFIX = {"accelerator": "Accelerator", "strategy": "Strategy", "precision": "Precision", "environment": "Environment"}

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "The __NAME__ __KIND__ for torchplug"
readme = "README.md"
requires-python = ">=3.10"
# The hook contract is versioned with torchplug: allow the minor series you test against.
dependencies = ["torchplug>=0.1,<0.2"]

[project.optional-dependencies]
test = ["pytest"]

# The entry-point name is the string users type: Trainer(__KIND__="__NAME__").
[project.entry-points."__GROUP__"]
__NAME__ = "__PACKAGE__:__CLASS__"

[tool.setuptools.packages.find]
where = ["src"]
"""

README = """\
# __DIST__

The `__NAME__` __KIND__ for torchplug: __USAGE__

Made with `torchplug new-backend __KIND__ __NAME__`. How backends work, the hooks, and what the conformance kit
checks: torchplug's `docs/writing-a-backend.md` and `docs/hooks.md`.

## Install and test

```
pip install -e '.[test]'
torchplug plugins --check   # listed, imports, meets the hook contract
pytest                      # the conformance kit: tests/test_conformance.py
```

## Publish

Build and upload as any distribution (`python -m build`, `twine upload dist/*`). The entry point in
`pyproject.toml` is what makes torchplug find the backend; keep `torchplug` pinned to the minor series you tested.
"""

USAGE = {
    "accelerator": '`Trainer(accelerator="__NAME__", devices=N)`.',
    "strategy": '`Trainer(strategy="__NAME__", devices=N)` trains in N processes, each on its share of the data.',
    "precision": '`Trainer(precision="__NAME__", __PREFIX___loss_scale=1024.0)`.',
    "environment": "processes started by a scheduler that sets `__ENV___RANK`, `__ENV___LOCAL_RANK` and "
    "`__ENV___WORLD_SIZE` are found by torchplug (`Trainer(devices=N)` in each of them).",
}

TESTS = '''\
"""The conformance kit on this package's __KIND__ (torchplug.testing): every check, one line."""

from torchplug.testing import conformance

TestConformance = conformance("__KIND__", "__NAME__")
'''

ENVIRONMENT_TESTS = '''\
"""The conformance kit on this package's environment (torchplug.testing): every check, one line."""

from torchplug.distributed import find_free_port
from torchplug.testing import conformance


def one_process_job() -> dict[str, str]:
    """What the scheduler sets for a job of one process: the kit runs the environment in such a job."""
    return {"__ENV___RANK": "0", "__ENV___LOCAL_RANK": "0", "__ENV___WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_port())}


TestConformance = conformance("environment", "__NAME__", environ=one_process_job)
'''

ACCELERATOR = '''\
"""The ``__NAME__`` accelerator: ``Trainer(accelerator="__NAME__", devices=N)``.

As made by ``torchplug new-backend`` it computes on the CPU, so it runs (and passes the conformance kit) anywhere;
for a device of your own, change the four places marked "your device".
"""

from __future__ import annotations

import torch

from torchplug import hookimpl
from torchplug.accelerators import Accelerator

__version__ = "0.1.0"


class __CLASS__(Accelerator):
    """Computes on ``trainer.run.device_ids[local_rank]`` of its device type, one process per device."""

    device_type = "cpu"  # your device: the torch device type ("cuda", "xla", "npu"); others accept you on it
    priority = -1  # accelerator="auto" takes the available one with the highest priority (the CPU has 0)

    @classmethod
    def is_available(cls) -> bool:
        # your device: cheap, never raises, imports nothing heavy (accelerator="auto" calls it every time)
        return True

    @classmethod
    def device_count(cls) -> int | None:
        # your device: how many this machine has; None means any number (the CPU: devices=N is N processes)
        return None

    @hookimpl
    def torchplug_root_device(self, trainer) -> torch.device:
        # your device: torch.device(self.device_type, trainer.run.device_ids[trainer.world.local_rank]), made
        # current (torch.npu.set_device) so that no other plugin needs to
        return torch.device("cpu")
'''

STRATEGY = '''\
"""The ``__NAME__`` strategy: ``Trainer(strategy="__NAME__", devices=N)`` trains in N processes.

Built on the core's :class:`torchplug.distributed.ProcessGroupStrategy`, which launches and supervises one process
per device (or finds them started by torchrun or srun), joins them in a process group, gives each process its
share of the data and reduces logged values. What makes it data parallel is added here: every process starts from
rank 0's parameters, and gradients are averaged over the processes before each optimizer step.
"""

from __future__ import annotations

import torch.distributed as dist

from torchplug import hookimpl
from torchplug.distributed import ProcessGroupStrategy

__version__ = "0.1.0"


class __CLASS__(ProcessGroupStrategy):
    """Options (Trainer keywords): ``process_group_backend``, ``timeout``, ``start_method`` of the base class."""

    @hookimpl
    def torchplug_wrap_module(self, trainer, module):
        if trainer.world_size > 1:  # the process group exists by now
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)
        return module

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer):
        ops = yield  # what the accelerator made of the defaults
        prepare_gradients, world_size = ops.prepare_gradients, trainer.world_size

        def averaged_gradients(optimizer):
            if world_size > 1:
                for group in optimizer.param_groups:
                    for parameter in group["params"]:
                        if parameter.grad is not None:
                            dist.all_reduce(parameter.grad)
                            parameter.grad /= world_size
            prepare_gradients(optimizer)

        ops.prepare_gradients = averaged_gradients
        return ops
'''

PRECISION = '''\
"""The ``__NAME__`` precision: ``Trainer(precision="__NAME__", __PREFIX___loss_scale=1024.0)``.

Static loss scaling: the loss is multiplied by ``__PREFIX___loss_scale`` before backward, and the gradients are
divided by it again before clipping and the optimizer step. It also counts, on each rank, the steps it prepared:
state that checkpoints keep per rank.
"""

from __future__ import annotations

from torchplug import MisconfigurationError, hookimpl
from torchplug.precision import Precision

__version__ = "0.1.0"

#: This package's key among each rank's plugin states in a checkpoint.
STATE_KEY = "__PACKAGE__"


class __CLASS__(Precision):
    def __init__(self, __PREFIX___loss_scale: float = 1.0) -> None:  # Trainer(__PREFIX___loss_scale=...) reaches it
        if not __PREFIX___loss_scale > 0:
            raise MisconfigurationError(f"__PREFIX___loss_scale={__PREFIX___loss_scale!r}: expected a number > 0")
        self.loss_scale = float(__PREFIX___loss_scale)
        self.steps = 0

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer):
        ops = yield  # what the accelerator and the strategy made of the defaults
        backward, prepare_gradients, scale = ops.backward, ops.prepare_gradients, self.loss_scale

        def scaled_backward(loss, optimizer):
            backward(loss * scale, optimizer)

        def unscaled_gradients(optimizer):
            prepare_gradients(optimizer)
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        parameter.grad.div_(scale)
            self.steps += 1

        ops.backward, ops.prepare_gradients = scaled_backward, unscaled_gradients
        return ops

    @hookimpl
    def torchplug_state_dict(self, trainer):
        return {STATE_KEY: {"steps": self.steps}}

    @hookimpl
    def torchplug_load_state_dict(self, trainer, states):
        if STATE_KEY in states:  # reading a key claims it; keys nobody reads are named in a warning
            self.steps = states[STATE_KEY]["steps"]
'''

ENVIRONMENT = '''\
"""The ``__NAME__`` cluster environment: processes started by a scheduler that sets ``__ENV___RANK``,
``__ENV___LOCAL_RANK`` and ``__ENV___WORLD_SIZE`` (and ``__ENV___NODE_RANK``, ``__ENV___NUM_NODES`` on several
nodes), with the rendezvous in ``MASTER_ADDR``/``MASTER_PORT``. Rename the variables to your scheduler's.

Found by detection: ``Trainer(devices=N)`` in each process the scheduler started, or named with
``Trainer(plugins=["__NAME__"])``.
"""

from __future__ import annotations

import os

from torchplug import ClusterInfo, MisconfigurationError, hookimpl
from torchplug.environments import ClusterEnvironment

__version__ = "0.1.0"

RANK, LOCAL_RANK, WORLD_SIZE = "__ENV___RANK", "__ENV___LOCAL_RANK", "__ENV___WORLD_SIZE"
NODE_RANK, NUM_NODES = "__ENV___NODE_RANK", "__ENV___NUM_NODES"


class __CLASS__(ClusterEnvironment):
    detect_order = 25  # tried in increasing order; "local" (30) always detects, so come before it

    @classmethod
    def detect(cls) -> bool:
        return RANK in os.environ and WORLD_SIZE in os.environ

    @hookimpl
    def torchplug_cluster_info(self, trainer) -> ClusterInfo:
        missing = [k for k in (RANK, LOCAL_RANK, WORLD_SIZE, "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise MisconfigurationError(
                f"plugins=['__NAME__'] needs the variables the scheduler sets; missing: {', '.join(missing)}"
            )
        return ClusterInfo(
            global_rank=int(os.environ[RANK]),
            local_rank=int(os.environ[LOCAL_RANK]),
            node_rank=int(os.environ.get(NODE_RANK, 0)),
            world_size=int(os.environ[WORLD_SIZE]),
            main_address=os.environ["MASTER_ADDR"],
            main_port=int(os.environ["MASTER_PORT"]),
            creates_processes_externally=True,  # the scheduler started every process: launch none
            num_nodes=int(os.environ.get(NUM_NODES, 1)),
        )

    @hookimpl
    def torchplug_configure(self, trainer) -> None:
        if WORLD_SIZE in os.environ and int(os.environ[WORLD_SIZE]) != trainer.run.world_size:
            raise MisconfigurationError(
                f"devices={trainer.run.devices_arg!r} and num_nodes={trainer.run.num_nodes} make "
                f"{trainer.run.world_size} processes, but the scheduler started {os.environ[WORLD_SIZE]} "
                f"({WORLD_SIZE}): ask it for as many processes as the Trainer's devices times num_nodes"
            )
'''

MODULES = {"accelerator": ACCELERATOR, "strategy": STRATEGY, "precision": PRECISION, "environment": ENVIRONMENT}


def tokens(kind: str, name: str) -> dict[str, str]:
    """The values of the template tokens for a backend ``name`` of ``kind``."""
    prefix = name.replace("-", "_")
    return {
        "__DIST__": f"torchplug-{name.replace('_', '-')}",
        "__PACKAGE__": f"torchplug_{prefix}",
        "__CLASS__": "".join(part.capitalize() for part in re.split(r"[-_]", name)) + _SUFFIX[kind],
        "__PREFIX__": prefix,
        "__ENV__": prefix.upper(),
        "__GROUP__": registry.GROUPS[kind],
        "__KIND__": kind,
        "__NAME__": name,
    }


def render(template: str, values: dict[str, str]) -> str:
    for token, value in values.items():
        template = template.replace(token, value)
    return template


def files(kind: str, name: str) -> dict[str, str]:
    """Every file of the package, by path relative to its directory."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not _NAME.match(name):
        raise ValueError(
            f"name {name!r}: use lowercase letters and digits, words joined by '-' or '_'; it is the name users "
            f"type, Trainer({kind}='my-{kind}')"
        )
    values = tokens(kind, name)
    package = values["__PACKAGE__"]
    return {
        "pyproject.toml": render(PYPROJECT, values),
        "README.md": render(README.replace("__USAGE__", USAGE[kind]), values),
        f"src/{package}/__init__.py": render(MODULES[kind], values),
        "tests/test_conformance.py": render(ENVIRONMENT_TESTS if kind == "environment" else TESTS, values),
    }


def create(kind: str, name: str, parent: Path) -> Path:
    """Write the package ``torchplug-<name>/`` under ``parent``; refuses to overwrite anything."""
    made = files(kind, name)
    root = parent / tokens(kind, name)["__DIST__"]
    if root.exists():
        raise FileExistsError(f"{root} exists already; choose another name or directory")
    for relative, text in made.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root

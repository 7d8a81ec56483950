"""Testing a torchplug backend: the conformance kit, a multi-process runner, and fixtures.

Installing torchplug registers this module as a pytest plugin (the ``pytest11`` entry point), so a backend
package's tests get all of it. One line runs the conformance suite against an installed backend::

    from torchplug.testing import conformance

    TestConformance = conformance("strategy", "localsgd")

:func:`conformance` checks the backend's hooks against the specs, discovery, selection and options, training,
the combinations with every other installed backend, checkpoints and bitwise resume, and, for strategies that run
several processes, what happens when a rank fails; every check that trains runs in a process of its own with a
deadline. :func:`run_processes` runs a function in N processes joined by a gloo process group and returns each
rank's result or traceback. ``BoringModel``, ``regression_loader``, ``QUIET`` and the ``quiet_trainer_kwargs`` and
``clean_env`` fixtures are for a backend's own tests; :func:`subprocess_env` is the environment for a child
interpreter that must import what this process imports, and :func:`processes_mentioning` finds what a job left
running, and :func:`distributed_variable` tells which environment variables a new job must not inherit.
"""

from torchplug.testing._fixtures import (
    QUIET,
    BoringModel,
    clean_env,
    distributed_variable,
    quiet_trainer_kwargs,
    regression_data,
    regression_loader,
    subprocess_env,
)
from torchplug.testing._processes import RankResult, processes_mentioning, run_processes

# This module is the pytest plugin (the pytest11 entry point): pytest finds its hooks and fixtures here.
from torchplug.testing._suite import _torchplug_kit, conformance, pytest_configure, pytest_pycollect_makeitem  # noqa: F401

__all__ = [
    "QUIET",
    "BoringModel",
    "RankResult",
    "clean_env",
    "conformance",
    "distributed_variable",
    "processes_mentioning",
    "quiet_trainer_kwargs",
    "regression_data",
    "regression_loader",
    "run_processes",
    "subprocess_env",
]

"""Cluster environments: who started the processes and where the job's rendezvous is.

Built in: ``torchelastic`` (torchrun), ``slurm`` (srun) and ``local`` (our own launcher, or processes started by hand
with ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``).
"""

from __future__ import annotations

from typing import ClassVar


class ClusterEnvironment:
    """Base for cluster environment plugins; subclasses answer ``torchplug_cluster_info``.

    When no environment is named in ``Trainer(plugins=[...])``, installed environments are tried in increasing
    ``detect_order`` and the first whose ``detect()`` is true is used.
    """

    detect_order: ClassVar[int] = 100

    @classmethod
    def detect(cls) -> bool:
        return False


__all__ = ["ClusterEnvironment", "LocalEnvironment", "SLURMEnvironment", "TorchElasticEnvironment", "expand_nodelist", "first_host"]


_LAZY = {
    "LocalEnvironment": "local",
    "SLURMEnvironment": "slurm",
    "TorchElasticEnvironment": "torchelastic",
    "expand_nodelist": "_nodelist",
    "first_host": "_nodelist",
}


def __getattr__(name: str) -> object:
    # The built-in environments, importable from here without importing them all with the base class.
    # importlib, not ``from torchplug.environments import local``: that form asks this very module for the
    # attribute first (hasattr), which would call this function again, without end.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"torchplug.environments.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'torchplug.environments' has no attribute {name!r}")

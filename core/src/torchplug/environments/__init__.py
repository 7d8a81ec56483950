"""Cluster environments: who started the processes and where the job's rendezvous is.

None is built in; ``torchplug-ddp`` provides ``torchelastic``, ``slurm`` and ``local``.
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


__all__ = ["ClusterEnvironment"]

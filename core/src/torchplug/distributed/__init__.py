"""Building blocks for strategies with several processes: launch with supervision, collectives, samplers.

``ProcessGroupStrategy`` is the base of ``ddp`` and ``fsdp``: subclass it (or ``DDPStrategy``) and add the hooks
where your strategy differs. The functions below are what it is made of, for strategies that launch differently.

* :func:`launch`: ``python train.py`` becomes N processes (this one is local rank 0); a failure anywhere ends the
  job within seconds and is reported once, with the failing rank's traceback (:class:`torchplug.ProcessFailedError`).
* :func:`spawn`: N fresh ``torch.multiprocessing`` processes; global rank 0's answer comes back to the caller.
* :func:`run_started_process`: run a stage in a process someone else started (torchrun, srun, :func:`launch`).
* :func:`capture_run` / :func:`adopt_run`: hand a spawned stage's outcome (weights, counters, metrics, callback
  state) back to the calling process.
* collectives on tensors only (the CPU wheel of torch has no NumPy): :func:`all_reduce`, :func:`all_gather`,
  :func:`broadcast_object`, :func:`gather_objects`, :func:`barrier`.
* :func:`distributed_loader`, :func:`needs_distributed_sampler`, :func:`find_free_port`.
"""

from torchplug._state import adopt_run, capture_run
from torchplug.distributed._collectives import (
    all_gather,
    all_reduce,
    barrier,
    broadcast_object,
    gather_objects,
)
from torchplug.distributed._failures import Failure, root_cause
from torchplug.distributed._hang import DEFAULT_TIMEOUT_S as DEFAULT_HANG_TIMEOUT_S
from torchplug.distributed._launcher import launch, launched_child, rerun_command, supervising
from torchplug.distributed._ports import find_free_port
from torchplug.distributed._spawn import spawn
from torchplug.distributed._strategy import (
    ProcessGroupStrategy,
    as_timedelta,
    available_backends,
    run_started_process,
)
from torchplug.utilities import distributed_loader, needs_distributed_sampler

__all__ = [
    "DEFAULT_HANG_TIMEOUT_S",
    "Failure",
    "ProcessGroupStrategy",
    "adopt_run",
    "all_gather",
    "all_reduce",
    "as_timedelta",
    "available_backends",
    "barrier",
    "broadcast_object",
    "capture_run",
    "distributed_loader",
    "find_free_port",
    "gather_objects",
    "launch",
    "launched_child",
    "needs_distributed_sampler",
    "rerun_command",
    "root_cause",
    "run_started_process",
    "spawn",
    "supervising",
]

"""``python -m torchplug.testing._worker PLAN``: run a batch of conformance checks in this process.

The kit's pytest side writes the plan (a JSON file: the backend, the checks, where to write), starts this module in
a process session of its own, and watches the results file it appends to: one JSON line when a check starts, when
it makes progress, and when it ends. It kills the whole session when a check runs past its deadline, so a backend
that hangs or kills its processes never takes the test session with it.

A multi-process launcher that re-runs the command (``ddp``) starts this module again for the other ranks, with the
same plan: they run the same checks (and the same fits) and report nothing. In a job of several processes a failed
fit ends the job (exit code 3); the kit then starts a new job for the checks that remain.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

STOPPED = 3  # exit code: a fit failed in a job of several processes, whose other ranks are gone with it


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    logging.getLogger("torchplug").setLevel(logging.WARNING)
    from torchplug.testing import _checks

    results = Path(plan["results"])

    def emit(event: dict[str, Any]) -> None:
        if _checks.MAIN:
            with results.open("a") as fh:
                fh.write(json.dumps({**event, "t": time.time()}, default=str) + "\n")

    workdir = Path(plan["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    context = _checks.Context(
        plan["kind"], plan["name"], workdir, plan["trainer_kwargs"],
        progress=lambda what: emit({"event": "progress", "what": what}),
    )  # fmt: skip
    environment = dict(os.environ)
    for check in plan["checks"]:
        if plan["processes"] == 1:
            _fresh_process_state(environment)
        emit({"event": "start", "check": check})
        detail, stop = None, False
        try:
            detail = _checks.run(context, check)
            status, message = "passed", ""
        except _checks.Skipped as skip:
            status, message = "skipped", str(skip)
        except _checks.Failed as failure:
            status, message = "failed", str(failure)
        except BaseException as err:  # noqa: BLE001 - every error of the backend is an outcome of its check
            if not _checks.MAIN:
                raise  # another rank: end as the user's script would, so that its launcher sees the failure
            status = "failed"
            message = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__))
            stop = plan["processes"] > 1
        emit({"event": "end", "check": check, "status": status, "message": message, "detail": detail})
        if stop:
            return STOPPED
    return 0


_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
               "GROUP_RANK")  # fmt: skip


def _fresh_process_state(environment: dict[str, str]) -> None:
    """What a new script would find: the worker's first rendezvous variables, and no process group.

    One-process checks share this worker; a process-group strategy leaves its group and MASTER_PORT behind for
    the next fit of the same script (by design), which would be a different strategy's here (as Lightning's own
    tests do, the state is restored between tests). Jobs of several processes keep both: their ranks' next fit
    reuses them.
    """
    for name in _RENDEZVOUS:  # only these: a backend's own flags (XLA_USE_SPMD) describe the process, not the run
        if name in environment:
            os.environ[name] = environment[name]
        else:
            os.environ.pop(name, None)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

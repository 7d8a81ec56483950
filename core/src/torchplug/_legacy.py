"""Flags of older Lightning releases, accepted with a DeprecationWarning that names the modern equivalent."""

from __future__ import annotations

import warnings
from typing import Any

from torchplug._errors import MisconfigurationError

_GPU_NAMES = ("auto", "gpu", "cuda")
_TPU_NAMES = ("auto", "tpu", "xla")


def _warn(old: str, new: str) -> None:
    warnings.warn(f"Trainer({old}) is deprecated; use Trainer({new})", DeprecationWarning, stacklevel=4)


def _conflict(old: str, new: str) -> MisconfigurationError:
    return MisconfigurationError(f"Trainer({old}) contradicts Trainer({new}); pass only {new}")


def translate(args: dict[str, Any], legacy: dict[str, Any]) -> None:
    """Rewrite ``args`` (the modern flags) in place from the ``legacy`` ones that were given (not None)."""
    given = {k: v for k, v in legacy.items() if v is not None}
    if "gpus" in given:
        gpus = given["gpus"]
        _warn(f"gpus={gpus!r}", f"accelerator='gpu', devices={gpus!r}")
        if args["devices"] != "auto" and args["devices"] != gpus:
            raise _conflict(f"gpus={gpus!r}", f"devices={args['devices']!r}")
        if gpus in (0, "0", [], None):
            if args["accelerator"] not in ("auto", "cpu"):
                raise _conflict(f"gpus={gpus!r}", f"accelerator={args['accelerator']!r}")
            args["accelerator"] = "cpu"
        else:
            if args["accelerator"] not in _GPU_NAMES:
                raise _conflict(f"gpus={gpus!r}", f"accelerator={args['accelerator']!r}")
            args["accelerator"] = "gpu" if args["accelerator"] == "auto" else args["accelerator"]
            args["devices"] = gpus
    if "tpu_cores" in given:
        cores = given["tpu_cores"]
        _warn(f"tpu_cores={cores!r}", f"accelerator='tpu', devices={cores!r}")
        if "gpus" in given:
            raise _conflict(f"tpu_cores={cores!r}", f"gpus={given['gpus']!r}")
        if args["accelerator"] not in _TPU_NAMES:
            raise _conflict(f"tpu_cores={cores!r}", f"accelerator={args['accelerator']!r}")
        if args["devices"] != "auto" and args["devices"] != cores:
            raise _conflict(f"tpu_cores={cores!r}", f"devices={args['devices']!r}")
        args["accelerator"] = "tpu" if args["accelerator"] == "auto" else args["accelerator"]
        args["devices"] = cores
    if "num_processes" in given:
        n = given["num_processes"]
        _warn(f"num_processes={n!r}", f"accelerator='cpu', devices={n!r}")
        if "gpus" in given or "tpu_cores" in given:
            raise _conflict(f"num_processes={n!r}", "gpus/tpu_cores")
        if args["accelerator"] not in ("auto", "cpu"):
            raise _conflict(f"num_processes={n!r}", f"accelerator={args['accelerator']!r}")
        if args["devices"] != "auto" and args["devices"] != n:
            raise _conflict(f"num_processes={n!r}", f"devices={args['devices']!r}")
        args["accelerator"], args["devices"] = "cpu", n
    if "nb_gpu_nodes" in given:
        n = given["nb_gpu_nodes"]
        _warn(f"nb_gpu_nodes={n!r}", f"num_nodes={n!r}")
        if args["num_nodes"] not in (1, n):
            raise _conflict(f"nb_gpu_nodes={n!r}", f"num_nodes={args['num_nodes']!r}")
        args["num_nodes"] = n
    if "distributed_backend" in given:
        name = given["distributed_backend"]
        _warn(f"distributed_backend={name!r}", f"strategy={name!r}")
        if args["strategy"] not in ("auto", name):
            raise _conflict(f"distributed_backend={name!r}", f"strategy={args['strategy']!r}")
        args["strategy"] = name
    if "use_amp" in given and given["use_amp"]:
        _warn("use_amp=True", "precision='16-mixed'")
        if str(args["precision"]) not in ("32-true", "32", "16", "16-mixed"):
            raise _conflict("use_amp=True", f"precision={args['precision']!r}")
        args["precision"] = "16-mixed"
    if "amp_backend" in given:
        backend = given["amp_backend"]
        if backend == "apex":
            _warn("amp_backend='apex'", "precision='apex'")
            if str(args["precision"]) not in ("16", "16-mixed", "32-true", "apex"):
                raise _conflict("amp_backend='apex'", f"precision={args['precision']!r}")
            args["precision"] = "apex"
        elif backend == "native":
            _warn("amp_backend='native'", "precision='16-mixed'")
        else:
            raise MisconfigurationError(f"amp_backend={backend!r}: use 'native' (precision='16-mixed') or 'apex'")
    # apex's opt level is the apex plugin's own option; giving it with precision=16 selects apex (seed docs).
    amp_level = args["backend_options"].get("amp_level")
    if amp_level is not None and str(args["precision"]) in ("16", "16-mixed"):
        args["precision"] = "apex"
    elif amp_level is not None and str(args["precision"]).startswith("bf16"):
        raise MisconfigurationError(
            f"amp_level={amp_level!r} selects NVIDIA apex, which has no bfloat16, but precision={args['precision']!r} "
            "was given: use precision='bf16-mixed' without amp_level, or precision=16 with amp_level"
        )

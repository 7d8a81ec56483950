"""Writing and reading checkpoint files: atomically, and as data rather than code.

A checkpoint is written to a temporary file next to its destination, flushed to disk, then renamed over the
destination with ``os.replace`` (atomic on POSIX and Windows within one filesystem) and the directory entry is
synced. A process killed at any moment therefore leaves either the previous file or the new one at the
destination, never a truncated one. The temporary file is named ``.<name>.tmp.<host>.<pid>.<random>`` so that no
glob for ``*.ckpt`` ever picks it up; a save removes it on error, and the next save to the same destination
removes ones left by processes of this host that no longer exist (a SIGKILL leaves no chance to clean up).

Checkpoints are read with ``torch.load(..., weights_only=True)``: unpickling runs no code from the file. Saving
checks up front that the dictionary holds only what that loader accepts, so a run cannot write a checkpoint that it
will refuse to resume from hours later.
"""

from __future__ import annotations

import collections
import os
import pickle
import secrets
import socket
from pathlib import Path
from typing import IO, Any

import torch

from torchplug._errors import MisconfigurationError

# Types ``torch.load(weights_only=True)`` rebuilds without any registered safe globals (checked on torch 2.4-2.13).
_PLAIN_TYPES: tuple[type, ...] = (
    str, bytes, bytearray, int, float, complex, bool, type(None), torch.Size, torch.dtype, torch.device,
)  # fmt: skip
_CONTAINERS: tuple[type, ...] = (dict, collections.OrderedDict, collections.Counter, list, tuple, set)


def atomic_save(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``checkpoint`` to ``path`` so that ``path`` always holds a complete file.

    Every tensor is moved to the CPU first, so the file loads on a machine without the device it was made on.
    Raises ``TypeError`` naming the offending key when the dictionary holds something ``load_checkpoint`` would
    refuse (an arbitrary object); nothing is written then.
    """
    path = Path(path)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"atomic_save expects a dict, got {type(checkpoint).__name__}")
    _check_weights_only_safe(checkpoint, "checkpoint")
    checkpoint = _to_cpu(checkpoint)

    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    temporary = directory / f"{_temporary_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        # KeyboardInterrupt included: never leave a half-written temporary file behind when we can help it.
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def load_checkpoint(
    path: str | os.PathLike[str] | IO[bytes], map_location: Any = None, weights_only: bool | None = None
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save`, without running code from the file.

    Tensors land on the CPU unless ``map_location`` (as for ``torch.load``) says otherwise. ``weights_only=False``
    unpickles arbitrary objects: only for a file you trust.
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if not path.exists():
            raise MisconfigurationError(f"checkpoint not found: {str(path)!r} does not exist")
        if path.is_dir():
            raise MisconfigurationError(f"checkpoint path {str(path)!r} is a directory; give the path of a .ckpt file")
    try:
        checkpoint = torch.load(
            path, map_location="cpu" if map_location is None else map_location, weights_only=weights_only is not False
        )
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise MisconfigurationError(
                f"{str(path)!r} holds objects other than tensors and plain Python data, and torchplug loads "
                "checkpoints with weights_only=True because a checkpoint is data, not code. If you made this file "
                "and trust it, allow its classes with torch.serialization.add_safe_globals([...]) and load again. "
                f"torch said: {_first_line(err)}"
            ) from err
        raise _not_a_checkpoint(path, err) from err
    except Exception as err:  # a garbage file fails anywhere inside the unpickler (IndexError, KeyError, ...)
        raise _not_a_checkpoint(path, err) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = f"a dict with keys {sorted(map(str, checkpoint))[:10]}" if isinstance(checkpoint, dict) else (
            f"a {type(checkpoint).__name__}"
        )
        raise MisconfigurationError(
            f"{str(path)!r} is not a torchplug checkpoint: expected a dict with a 'state_dict' key, found {found}. "
            "A bare state dict saved with torch.save(model.state_dict()) loads with "
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    return checkpoint


def _not_a_checkpoint(path: Any, err: BaseException) -> MisconfigurationError:
    return MisconfigurationError(
        f"{str(path)!r} is not a torchplug checkpoint: torch.load could not read it ({type(err).__name__}: "
        f"{_first_line(err)}). It may be truncated, or not a file written by torch.save."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_weights_only_safe(obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, _CONTAINERS) and type(obj) in _CONTAINERS:
        if isinstance(obj, dict):
            for key, value in obj.items():
                _check_weights_only_safe(key, f"{where} key {key!r}")
                _check_weights_only_safe(value, f"{where}[{key!r}]")
        else:
            for i, value in enumerate(obj):
                _check_weights_only_safe(value, f"{where}[{i}]")
        return
    if type(obj) in _PLAIN_TYPES or isinstance(obj, torch.dtype):
        return
    if any(isinstance(entry, type) and type(obj) is entry for entry in _registered_safe_globals()):
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a checkpoint cannot hold: checkpoints "
        "hold only tensors and plain Python data (dict, list, tuple, set, str, int, float, bool, None) so that they "
        "load with torch.load(weights_only=True). Convert it (e.g. str(value), value.item(), dataclasses.asdict) "
        "or register its class with torch.serialization.add_safe_globals."
    )


def _registered_safe_globals() -> list[Any]:
    getter = getattr(torch.serialization, "get_safe_globals", None)
    return list(getter()) if getter is not None else []


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        moved = {key: _to_cpu(value) for key, value in obj.items()}
        return moved if type(obj) is dict else type(obj)(moved)  # OrderedDict and Counter keep their type
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


def _temporary_prefix(path: Path) -> str:
    host = socket.gethostname().replace(".", "_") or "host"
    return f".{path.name}.tmp.{host}."


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files of ``path`` left by processes of this host that were killed while saving."""
    prefix = _temporary_prefix(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or we cannot tell: leave its file alone
    return True


def _file_mode() -> int:
    """0o666 minus the umask: a checkpoint gets the permissions any other new file would get."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open directories and needs no such step."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain network mounts) refuse fsync on a directory
    finally:
        os.close(fd)


__all__ = ["atomic_save", "load_checkpoint"]

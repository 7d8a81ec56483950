"""Writing and reading checkpoint files: atomically, and as data rather than code.

A checkpoint is written to a temporary file next to its destination, flushed to disk, then renamed over the
destination with ``os.replace`` (atomic on POSIX and Windows within one filesystem) and the directory entry is
synced. A process killed at any moment therefore leaves either the previous file or the new one at the
destination, never a truncated one. The temporary file is named ``.<name>.tmp.<host>.<pid>.<random>`` so that no
glob for ``*.ckpt`` ever picks it up; a save removes it on error, and the next save to the same destination
removes ones left by processes of this host that no longer exist (a SIGKILL leaves no chance to clean up).
A write that fails (the disk is full, no permission, a read-only filesystem) raises :class:`CheckpointWriteError`,
an ``OSError`` with the cause's ``errno`` whose message names the file and the cause, after removing the temporary
file; the destination keeps what it held.

Checkpoints are read with ``torch.load(..., weights_only=True)``: unpickling runs no code from the file. Saving
checks up front that the dictionary holds only what that loader accepts, so a run cannot write a checkpoint that it
will refuse to resume from hours later.
"""

from __future__ import annotations

import collections
import errno
import os
import pickle
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import IO, Any

import torch

from torchplug._errors import CheckpointWriteError, MisconfigurationError

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
    check_weights_only_safe(checkpoint, "checkpoint")
    checkpoint = _to_cpu(checkpoint)

    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err) from err
    if path.is_dir() and not path.is_symlink():
        raise CheckpointWriteError(
            errno.EISDIR,
            f"could not write the checkpoint {str(path)!r}: a directory of that name is in the way; remove it or save "
            "under another name",
        )
    temporary = temporary_path(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        # Described before the cleanup, while the disk is still as full as the write found it.
        translated = write_error(path, err, _size(temporary)) if isinstance(err, Exception) else None
        # KeyboardInterrupt included: never leave a half-written temporary file behind when we can help it.
        try:
            temporary.unlink()
        except OSError:
            pass
        if translated is not None:
            raise translated from err
        raise
    _fsync_directory(directory)


def write_error(path: str | os.PathLike[str], err: BaseException, written: int = 0) -> CheckpointWriteError | None:
    """What a failed checkpoint write means for the user: the file and the cause, as an ``OSError``.

    torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, with the
    ``OSError`` from the file object chained as its context; the cause is taken from there, or, when nothing in the
    chain has an ``errno``, from the free space left on the filesystem. ``None`` for an error that is not about
    writing (a bug in a plugin's state, for example): it propagates unchanged.
    """
    path = os.fspath(path)
    cause = _os_error_in(err)
    code = cause.errno if cause is not None else None
    if code is None and isinstance(err, RuntimeError) and "inline_container" in str(err):
        code = errno.ENOSPC if _free_bytes(os.path.dirname(path) or ".") < 1 << 20 else errno.EIO
    if code is None:
        return None
    directory = os.path.dirname(path) or "."
    what = {
        errno.ENOSPC: f"the disk is full (ENOSPC: no space left on the filesystem of {directory!r}; "
                      f"{_format_bytes(written)} of the checkpoint were written, "
                      f"{_format_bytes(_free_bytes(directory))} were free)",
        errno.EDQUOT: f"the disk quota is exhausted (EDQUOT) on the filesystem of {directory!r}",
        errno.EACCES: f"permission denied (EACCES): this user may not create files in {directory!r}",
        errno.EPERM: f"operation not permitted (EPERM) in {directory!r}",
        errno.EROFS: f"the filesystem of {directory!r} is read-only (EROFS)",
        errno.ENOTDIR: f"a part of {directory!r} is a file, not a folder (ENOTDIR)",
        errno.EISDIR: "a directory of that name is in the way (EISDIR)",
    }.get(code, f"{os.strerror(code)} ({errno.errorcode.get(code, code)})")
    return CheckpointWriteError(
        code,
        f"could not write the checkpoint {path!r}: {what}. Nothing was replaced: the checkpoints already there are "
        "kept, and the partly written temporary file was removed",
    )  # fmt: skip


def _os_error_in(err: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _free_bytes(directory: str) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 1 << 62  # cannot tell: not known to be full


def _format_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def load_checkpoint(
    path: str | os.PathLike[str] | IO[bytes], map_location: Any = None, weights_only: bool | None = None
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save`, without running code from the file.

    Tensors land on the CPU unless ``map_location`` (as for ``torch.load``) says otherwise. ``weights_only=False``
    unpickles arbitrary objects: only for a file you trust. An ``http://`` or ``https://`` address is downloaded
    once into torch hub's cache (``$TORCH_HOME/hub/checkpoints``), as Lightning does.
    """
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        return _load_url(path, map_location, weights_only)
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if not path.exists():
            raise MisconfigurationError(f"checkpoint not found: {str(path)!r} does not exist")
        if path.is_dir():
            raise MisconfigurationError(describe_directory(path))
    try:
        checkpoint = torch.load(
            path, map_location="cpu" if map_location is None else map_location, weights_only=weights_only is not False
        )
    except pickle.UnpicklingError as err:
        _raise_if_unsafe(path, err)
        raise _not_a_checkpoint(path, err) from err
    except OSError as err:  # the file is there but cannot be read: say why, it is not the file's content
        if err.errno is None:
            raise _not_a_checkpoint(path, err) from err
        raise MisconfigurationError(
            f"could not read the checkpoint {str(path)!r}: {err.strerror} ({errno.errorcode.get(err.errno, err.errno)})"
        ) from err
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


def _load_url(url: str, map_location: Any, weights_only: bool | None) -> dict[str, Any]:
    try:
        location, safe = "cpu" if map_location is None else map_location, weights_only is not False
        checkpoint = torch.hub.load_state_dict_from_url(url, map_location=location, weights_only=safe)
    except OSError as err:  # urllib's errors (HTTPError, URLError) are OSErrors
        raise MisconfigurationError(f"could not download the checkpoint {url!r}: {err}") from err
    except pickle.UnpicklingError as err:
        _raise_if_unsafe(url, err)
        raise _not_a_checkpoint(url, err) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MisconfigurationError(
            f"{url!r} is not a torchplug checkpoint: expected a dict with a 'state_dict' key"
        )
    return checkpoint


def _raise_if_unsafe(path: str | os.PathLike[str], err: pickle.UnpicklingError) -> None:
    """Say what to do when the safe unpickler refused a class (torch's message names only the class)."""
    if "weights only" in str(err).lower():
        raise MisconfigurationError(
            f"{str(path)!r} holds objects other than tensors and plain Python data, and torchplug loads "
            "checkpoints with weights_only=True because a checkpoint is data, not code. If you made this file "
            "and trust it, allow its classes with torch.serialization.add_safe_globals([...]) and load again. "
            f"torch said: {_first_line(err)}"
        ) from err


#: A checkpoint that is a directory (a sharded strategy's) keeps its dictionary, all but the shards, in this file.
DIRECTORY_META = "meta.ckpt"


def read_header(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A checkpoint's dictionary with its tensors memory-mapped rather than read (cheap even for a big file), or
    ``None`` when ``path`` is not a readable torchplug checkpoint. A directory checkpoint is read through its
    :data:`DIRECTORY_META` file.
    """
    path = Path(path)
    if path.is_dir():
        meta = path / DIRECTORY_META
        return read_header(meta) if meta.is_file() else None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return checkpoint if isinstance(checkpoint, dict) and "state_dict" in checkpoint else None


def describe_directory(path: str | os.PathLike[str]) -> str:
    """Why a directory given as a checkpoint could not be read, and what it holds, for an error message."""
    path = Path(path)
    header = read_header(path)
    if header is not None:
        strategy = header.get("backends", {}).get("strategy", "?")
        return (
            f"{str(path)!r} is a directory checkpoint written by the strategy {strategy!r} (a sharded strategy saves "
            f"each rank's shard in a folder); the strategy of this run cannot read it. Load it with "
            f"Trainer(strategy={strategy!r}), which can also consolidate it into one file"
        )
    try:
        entries = sorted(os.listdir(path))
    except OSError as err:
        return f"{str(path)!r} is a directory that cannot be listed ({err.strerror}), not a checkpoint"
    checkpoints = [name for name in entries if name.endswith(".ckpt")]
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    advice = (
        f"; the checkpoints in it are {', '.join(checkpoints[:8])}: pass one of them, e.g. "
        f"ckpt_path={str(path / checkpoints[-1])!r}"
        if checkpoints
        else "; give the path of a .ckpt file"
    )
    return f"{str(path)!r} is a directory, not a checkpoint: it holds {shown or 'nothing'}{advice}"


def _not_a_checkpoint(path: Any, err: BaseException) -> MisconfigurationError:
    return MisconfigurationError(
        f"{str(path)!r} is not a torchplug checkpoint: torch.load could not read it ({type(err).__name__}: "
        f"{_first_line(err)}). It may be truncated, or not a file written by torch.save."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_weights_only_safe(obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, _CONTAINERS) and type(obj) in _CONTAINERS:
        if isinstance(obj, dict):
            for key, value in obj.items():
                check_weights_only_safe(key, f"{where} key {key!r}")
                check_weights_only_safe(value, f"{where}[{key!r}]")
        else:
            for i, value in enumerate(obj):
                check_weights_only_safe(value, f"{where}[{i}]")
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


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A new hidden name next to ``path``, to write ``path``'s next version under before renaming it into place
    (what :func:`atomic_save` does; a backend that saves a directory, or a link, does the same with this name).

    The name (``.<name>.tmp.<host>.<pid>.<random>``) says which process made it, so the temporaries of ``path`` that
    processes of this host left when they were killed while saving, files or directories, are removed first, and
    :func:`remove_stale_temporaries` finds those of a whole folder. Nothing is created; the folder must exist.
    """
    path = Path(path)
    prefix = _temporary_prefix(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        names = []
    for name in names:
        pid_text = name[len(prefix) :].split(".", 1)[0] if name.startswith(prefix) else ""
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            _remove(path.parent / name)
    return path.parent / f"{prefix}{os.getpid()}.{secrets.token_hex(4)}"


def _temporary_prefix(path: Path) -> str:
    host = socket.gethostname().replace(".", "_") or "host"
    return f".{path.name}.tmp.{host}."


def _remove(path: Path | str) -> None:
    """Remove a file, a link or a directory tree; what cannot be removed is left."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """Remove every temporary file (or a sharded strategy's temporary directory) in ``directory`` that a process
    of this host left when it was killed while saving; returns their names."""
    host = re.escape(socket.gethostname().replace(".", "_") or "host")
    pattern = re.compile(rf"^\..+\.tmp\.{host}\.(\d+)\.[0-9a-f]+(\.old)?$")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.match(name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        target = os.path.join(directory, name)
        _remove(target)
        if not os.path.lexists(target):
            removed.append(name)
    return removed


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

"""A ``ModelCheckpoint``'s folder: which files are its own, and putting the folder in line with a resumed state.

A save event writes the new top-k file, then ``last``, and only then deletes what fell out (the evicted file, a
renamed ``last``); the checkpoints written during the event record those pending deletions. A process killed
during an event therefore leaves at most one stale file: the new top-k file, when the kill came before ``last``
was written, or the files due for deletion, which the resumed state names. :func:`reconcile` puts the folder in
line with the state a run resumed from, touching only files the callback itself wrote: files whose names its own
templates produce and whose checkpoint records its own lineage (an id kept in the callback's state and carried
across resumes).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import warnings
from typing import TYPE_CHECKING, Any

import torch

from torchplug._checkpoint import read_header, remove_stale_temporaries

if TYPE_CHECKING:
    from torchplug.callbacks.model_checkpoint import ModelCheckpoint
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

_FIELD = re.compile(r"\{([^{}:]+)(?::[^{}]*)?\}")


def new_lineage() -> str:
    return secrets.token_hex(8)


def name_pattern(callback: ModelCheckpoint, template: str | None) -> re.Pattern[str]:
    """The file names ``callback.format_checkpoint_name`` gives for ``template``, with any version suffix."""
    template = template or "{epoch}" + callback.CHECKPOINT_JOIN_CHAR + "{step}"
    parts, position = [], 0
    for match in _FIELD.finditer(template):
        parts.append(re.escape(template[position : match.start()]))
        name = match.group(1)
        prefix = re.escape(name + callback.CHECKPOINT_EQUALS_CHAR) if callback.auto_insert_metric_name else ""
        parts.append(prefix + ".*?")
        position = match.end()
    parts.append(re.escape(template[position:]))
    version = re.escape(callback.CHECKPOINT_JOIN_CHAR) + r"v\d+"
    return re.compile("^" + "".join(parts) + f"(?:{version})?" + re.escape(callback.FILE_EXTENSION) + "$")


def own_names(callback: ModelCheckpoint, folder: str) -> list[str]:
    """Paths in ``folder`` named as the callback names its checkpoints (top-k or last)."""
    patterns = [name_pattern(callback, callback.filename), name_pattern(callback, callback.CHECKPOINT_NAME_LAST)]
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names if not n.startswith(".") and any(p.match(n) for p in patterns)]


def last_files(callback: ModelCheckpoint, folder: str) -> list[str]:
    pattern = name_pattern(callback, callback.CHECKPOINT_NAME_LAST)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names if pattern.match(n)]


def remove(path: str) -> None:
    """Delete a checkpoint: a file, a link, or a directory (a sharded strategy's checkpoint is one)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def reconcile(callback: ModelCheckpoint, trainer: Trainer) -> dict[str, Any]:
    """On global rank 0 of a resumed ``fit``: put the folder in line with the restored state.

    Returns the state every rank adopts (``lineage`` and the top-k files that exist). What it does:

    * removes temporary files of killed saves;
    * drops from the state the files that no longer exist;
    * when the run resumes from the callback's newest state (its ``last`` checkpoint, or without ``save_last`` a
      checkpoint at least as recent as every file of its lineage), removes the deletions that were pending, and
      the files of its lineage the state does not know: those of an interrupted save event, which the resumed run
      saves again. Files it cannot prove are its own are never removed;
    * when the run resumes from an older checkpoint of the lineage (going back on purpose), removes nothing and
      starts a new lineage, so that the later files of the old one are never taken for its own; they are named in
      a warning.
    """
    folder = callback.dirpath
    assert folder is not None
    stale = remove_stale_temporaries(folder) if os.path.isdir(folder) else []
    resumed = os.path.realpath(trainer.ckpt_path) if trainer.ckpt_path else ""
    resumed_step = trainer.global_step
    best_k = {path: score for path, score in callback.best_k_models.items() if os.path.lexists(path)}
    gone = sorted(set(callback.best_k_models) - set(best_k))

    referenced = set(best_k) | {callback.best_model_path, callback.last_model_path} - {""}
    own: dict[str, int] = {}  # unreferenced files of this lineage -> their global step
    for path in own_names(callback, folder):
        if path in referenced or os.path.realpath(path) == resumed:
            continue
        header = read_header(path)
        state = (header or {}).get("callbacks", {}).get(callback.state_key, {})
        if state.get("lineage") == callback._lineage:
            own[path] = int(header.get("global_step", -1))  # type: ignore[union-attr]

    last = callback.last_model_path
    if last and os.path.lexists(last):
        newest = os.path.realpath(last) == resumed
    else:
        newest = all(step <= resumed_step for step in own.values())
    removed = []
    lineage = callback._lineage
    if newest:
        pending = [p for p in callback._removals if p not in referenced and os.path.realpath(p) != resumed]
        for path in sorted(set(pending) | set(own)):
            if os.path.lexists(path) and _inside(path, folder):
                remove(path)
                removed.append(path)
    else:
        lineage = new_lineage()
        later = sorted(p for p, step in own.items() if step > resumed_step)
        if later:
            warnings.warn(
                f"ModelCheckpoint(dirpath={folder!r}): resumed from {trainer.ckpt_path!r}, an older state than the "
                f"checkpoints {', '.join(map(repr, later))} this callback wrote later; they are left as they are and "
                "not managed from now on (new checkpoints that would take their names get a -v suffix)",
                UserWarning,
                stacklevel=2,
            )
    if stale or removed or gone:
        log.info(
            "ModelCheckpoint(dirpath=%r): resumed state reconciled with the folder: removed %s; no longer on disk %s",
            folder, [os.path.basename(p) for p in stale + removed] or "nothing", gone or "none",
        )  # fmt: skip
    return {"lineage": lineage, "best_k_models": best_k}


def apply(callback: ModelCheckpoint, update: dict[str, Any]) -> None:
    """Adopt what :func:`reconcile` decided on rank 0 (every rank holds the same bookkeeping)."""
    callback._lineage = update["lineage"]
    callback._removals = []
    best_k = update["best_k_models"]
    if best_k == callback.best_k_models:
        return
    callback.best_k_models = best_k
    worst, best = (max, min) if callback.mode == "min" else (min, max)
    if best_k:
        callback.best_model_path = best(best_k, key=lambda p: float(best_k[p]))
        callback.best_model_score = best_k[callback.best_model_path]
        callback.kth_best_model_path = worst(best_k, key=lambda p: float(best_k[p]))
        callback.kth_value = best_k[callback.kth_best_model_path]
    else:
        callback.best_model_path, callback.best_model_score, callback.kth_best_model_path = "", None, ""
        callback.kth_value = torch.tensor(float("inf") if callback.mode == "min" else float("-inf"))


def _inside(path: str, folder: str) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder) or (
        os.path.islink(path) and os.path.dirname(os.path.abspath(path)) == os.path.abspath(folder)
    )

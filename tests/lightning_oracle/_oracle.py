"""Run one snippet under PyTorch Lightning 2.6.6 (the oracle) and under torchplug, each in a fresh process.

A snippet is Python source written once for both: it uses ``pl`` for the framework (``pl.LightningModule``,
``pl.LightningDataModule``, ``pl.Trainer``, ``pl.Callback``, ``pl.callbacks``, ``pl.loggers``, ``pl.seed_everything``)
and hands its results to ``emit(value)``; tensors become numbers or lists, anything else JSON cannot hold becomes its
``repr``. :func:`run` returns what was emitted (a list when ``emit`` was called several times, in order).

Lightning runs in the oracle environment (``.venv-oracle``, made by ``make test``; another one can be named by
``TORCHPLUG_ORACLE_PYTHON``). It is never a dependency of torchplug. Every test in this folder is skipped, with
the reason, where it is absent (``conftest.py``).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("lightning", "torchplug")
_MARKER = "@@oracle-emit@@"

_PRELUDE = '''
import json, math, sys
import torch

FRAMEWORK = {framework!r}
if FRAMEWORK == "lightning":
    import pytorch_lightning as pl
else:
    import torchplug as pl
    import torchplug.callbacks, torchplug.loggers


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {{str(k): _plain(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return repr(value)


def emit(value):
    sys.stdout.write({marker!r} + json.dumps(_plain(value)) + "\\n")
    sys.stdout.flush()

'''


def oracle_python() -> Path | None:
    """The oracle's interpreter: ``$TORCHPLUG_ORACLE_PYTHON``, else the repository's ``.venv-oracle``."""
    given = os.environ.get("TORCHPLUG_ORACLE_PYTHON")
    path = Path(given) if given else REPO / ".venv-oracle" / "bin" / "python"
    return path if path.exists() else None


@functools.cache
def unavailable_reason() -> str | None:
    """Why the oracle cannot run here (``None`` when it can)."""
    python = oracle_python()
    if python is None:
        return "no Lightning oracle: .venv-oracle is missing (make test creates it) and TORCHPLUG_ORACLE_PYTHON is unset"
    check = subprocess.run(
        [str(python), "-c", "import pytorch_lightning, sys; sys.stdout.write(pytorch_lightning.__version__)"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if check.returncode != 0:
        return f"the oracle at {python} cannot import pytorch_lightning: {check.stderr.strip()[-300:]}"
    if not check.stdout.startswith("2.6."):
        return f"the oracle at {python} has pytorch-lightning {check.stdout}, not 2.6.x"
    return None


class SnippetError(AssertionError):
    """A snippet failed; the message holds its framework and the end of its output."""


def run(snippet: str, framework: str, cwd: str | os.PathLike[str], timeout: float = 240) -> Any:
    """Run ``snippet`` under ``framework`` (``"lightning"`` or ``"torchplug"``) in ``cwd``; what it emitted."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r}: use one of {FRAMEWORKS}")
    if framework == "lightning":
        python = oracle_python()
        if python is None:
            raise RuntimeError(unavailable_reason())
    else:
        python = Path(sys.executable)
    source = _PRELUDE.format(framework=framework, marker=_MARKER) + textwrap.dedent(snippet)
    script = Path(cwd) / f"snippet_{framework}.py"
    script.write_text(source)
    # Nothing from this process's runs (seeds, ranks) reaches the snippet: both frameworks start from the same state.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TORCHPLUG_", "PL_", "LOCAL_RANK", "RANK"))}
    env.update(PYTHONHASHSEED="0", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [str(python), str(script)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode != 0:
        raise SnippetError(f"{framework} snippet failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    emitted = [json.loads(line[len(_MARKER):]) for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    return emitted[0] if len(emitted) == 1 else emitted


def run_both(snippet: str, tmp_path: Path, timeout: float = 240) -> tuple[Any, Any]:
    """``(lightning's, torchplug's)`` results of ``snippet``, each run in its own folder under ``tmp_path``."""
    results = []
    for framework in FRAMEWORKS:
        folder = tmp_path / framework
        folder.mkdir(parents=True, exist_ok=True)
        results.append(run(snippet, framework, folder, timeout))
    return results[0], results[1]

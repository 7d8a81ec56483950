"""Regenerate the reference part of docs/hooks.md from core/src/torchplug/hookspecs.py.

    .venv/bin/python docs/make_hooks_reference.py

tests/test_hooks_documented.py fails when a hook is missing from docs/ or its documented signature differs.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from torchplug import hookspecs

MARKER = "<!-- generated below by docs/make_hooks_reference.py -->"


def signature(function) -> str:
    """The spec's signature exactly as written in hookspecs.py, on one line."""
    source = inspect.getsource(function)
    header = source[source.index("def ") + 4 : source.index(':\n    """')]
    return " ".join(header.split()).replace("( ", "(").replace(", )", ")").replace(" )", ")")


def specs():
    for name, function in vars(hookspecs).items():
        if name.startswith("torchplug_") and callable(function):
            yield function


def marker_text(function) -> str:
    opts = getattr(function, "torchplug_spec", {}) or {}
    flags = [k for k in ("firstresult", "historic") if opts.get(k)]
    return ", ".join(flags) if flags else "every implementation runs; results collected in a list"


def render() -> str:
    source = Path(hookspecs.__file__).read_text()
    out = []
    for banner in re.finditer(r"# -{20,}\n# (.+)\n# -{20,}", source):
        out.append((banner.start(), f"\n## {banner.group(1).strip().capitalize()}\n"))
    for function in specs():
        position = source.index(f"def {function.__name__}(")
        doc = inspect.cleandoc(function.__doc__ or "")
        text = f"\n### `{function.__name__}`\n\n```python\n{signature(function)}\n```\n\n*{marker_text(function)}*\n\n{doc}\n"
        out.append((position, text))
    return "".join(text for _, text in sorted(out))


def main() -> None:
    path = Path(__file__).with_name("hooks.md")
    head = path.read_text().split(MARKER)[0] if path.exists() else ""
    path.write_text(head + MARKER + "\n" + render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

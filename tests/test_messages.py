"""Advice in messages names things that exist: every ``torch.*``/``torchplug.*`` name and every ``self.<method>(``
in a string of the core or a plugin resolves (so an error never sends a user to a function that is not there)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import torchplug

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("core/src/torchplug/**/*.py"), *ROOT.glob("plugins/*/src/**/*.py")])
# Strings that look like dotted names but are not code: logger names, rendezvous tags, entry-point groups; and a
# device module of another torch build that the new-backend scaffold names as an example (torch.npu: Ascend's).
NOT_CODE = {"torchplug.xla", "torchplug.barrier", "torchplug.broadcast", "torchplug.precisions", "torch.npu.set_device"}


def _strings(path: Path) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_dotted_names_in_messages_exist() -> None:
    missing = []
    for path in SOURCES:
        for text in _strings(path):
            for match in re.finditer(r"\b((?:torchplug|torch)(?:\.[A-Za-z_]\w*)+)", text):
                name = match.group(1)
                if name not in NOT_CODE and not _resolves(name):
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, missing


def test_module_methods_named_in_messages_exist() -> None:
    missing = []
    for path in SOURCES:
        for text in _strings(path):
            for match in re.finditer(r"\bself\.(\w+)\(", text):
                if not hasattr(torchplug.Module, match.group(1)):
                    missing.append(f"{path.relative_to(ROOT)}: self.{match.group(1)}(")
    assert not missing, missing

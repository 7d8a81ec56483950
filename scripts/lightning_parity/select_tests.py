"""Which of Lightning's tests (tests/tests_pytorch) are in scope, and which of those use only its public API.

The unit is a test function (``def test_*`` at module level or in a ``Test*`` class), read statically with ``ast`` so
that a file that cannot be imported on torchplug is counted all the same. The rule is in the constants and the two
functions ``out_of_scope`` and ``private_references`` below; README.md says it in words.

    python select_tests.py LIGHTNING_SRC_DIR > selection.tsv

prints one line per test function: ``node_id <TAB> scope <TAB> api <TAB> reason``, where scope is ``in`` or ``out``
and api is ``public`` or ``private`` (``-`` when out of scope), the reason being the first rule that decided.
"""

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

# ---------------------------------------------------------------------------------------------------- scope

#: A path part (folder or file name) containing one of these is hardware- or launcher-specific.
HARDWARE_PATH_WORDS = ("deepspeed", "bitsandbytes", "xla", "tpu", "mps", "hpu", "cuda", "gpu", "transformer_engine")
#: ``RunIf(...)`` keywords that need hardware, a launcher or a package this suite does not run.
HARDWARE_RUNIF = {"min_cuda_gpus", "bf16_cuda", "tpu", "mps", "standalone", "deepspeed", "bitsandbytes"}
#: conftest fixtures that simulate accelerators.
HARDWARE_FIXTURES = {"cuda_count_1", "cuda_count_2", "cuda_count_4", "mps_count_1", "tpu_available", "xla_available"}

# ---------------------------------------------------------------------------------------------------- public API

LIGHTNING_ROOTS = ("lightning", "pytorch_lightning", "lightning_fabric")
#: Lightning modules that are machinery rather than API a LightningModule or Trainer user touches.
PRIVATE_MODULES = (
    "lightning.pytorch.loops",
    "lightning.pytorch.trainer.connectors",
    "lightning.pytorch.trainer.configuration_validator",
    "lightning.pytorch.trainer.call",
    "lightning.pytorch.trainer.setup",
    "lightning.pytorch.strategies.launchers",
    "lightning.pytorch.overrides",
    "lightning.pytorch.utilities.migration",
    "lightning.pytorch.utilities.model_helpers",
    "lightning.pytorch.utilities.signature_utils",
    "lightning.pytorch.utilities.data",
    "lightning.pytorch.utilities.fetching",
    "lightning.pytorch.utilities.testing",
    "lightning.pytorch.core.hooks",  # its mixin classes, not the hook methods users override
)
#: The only lightning.fabric modules whose public names count as public API here; the rest of Fabric is internals.
FABRIC_PUBLIC = (
    "lightning.fabric.utilities.exceptions",
    "lightning.fabric.utilities.seed",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.warnings",
    "lightning.fabric.utilities.imports",  # environment flags only (see ENVIRONMENT_FLAG)
)
#: Attributes that reach Lightning's machinery: the loops, the connectors, the strategy's and precision's insides.
PRIVATE_ATTRIBUTE = re.compile(
    r"^(\w*_loop|\w*_connector|accelerator_connector|precision_plugin|_results|fit_loop|batch_progress|"
    r"epoch_progress|optim_progress|_logger_connector)$"
)
#: Lightning's flags that describe the environment (is a package installed, which torch or Python version): facts
#: about this machine rather than Lightning, computed by the shim for every caller and not counted as internals.
ENVIRONMENT_FLAG = re.compile(
    r"^_(\w+_AVAILABLE|(TORCH|TORCHMETRICS|PYTHON|LIGHTNING)_(GREATER_EQUAL|EQUAL|LESS|LESS_EQUAL)(_\d+)+|IS_WINDOWS)$"
)
#: conftest fixtures that patch Lightning internals.
PRIVATE_FIXTURES = {"cuda_count_0", "mps_count_0", "single_process_pg"}


def canonical(module: str) -> str:
    for standalone, unified in (("pytorch_lightning", "lightning.pytorch"), ("lightning_fabric", "lightning.fabric")):
        if module == standalone or module.startswith(standalone + "."):
            return unified + module[len(standalone):]
    return module


def dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and len(name) > 4


def private_name(name: str) -> bool:
    """``_name`` and ``__name`` are private; ``__dunder__`` names and environment flags are not."""
    return name.startswith("_") and not dunder(name) and not ENVIRONMENT_FLAG.match(name)


def private_module(module: str) -> str:
    """Why a Lightning module is internals, or '' when it is public."""
    module = canonical(module)
    if any(private_name(part) for part in module.split(".")):
        return f"private module {module}"
    if any(module == p or module.startswith(p + ".") for p in PRIVATE_MODULES):
        return f"internal module {module}"
    if module.startswith("lightning.fabric") and module not in FABRIC_PUBLIC and module != "lightning.fabric":
        return f"fabric internals {module}"
    return ""


@lru_cache(maxsize=1)
def lightning_private_names(src: Path) -> frozenset:
    """Every ``_name`` (not dunder) that Lightning's own source defines: functions, classes, attributes."""
    names = set()
    for path in (src / "src" / "lightning").rglob("*.py"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            name = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            if name and name.startswith("_") and not dunder(name):
                names.add(name)
    return frozenset(names)


def _is_lightning(module: str) -> bool:
    return module.split(".")[0] in LIGHTNING_ROOTS


def import_violations(node: ast.AST) -> list:
    """Private Lightning names that an import statement brings in."""
    found = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _is_lightning(node.module):
        why = private_module(node.module)
        if why:
            found.append(why)
        found += [f"private name {node.module}.{a.name}" for a in node.names if private_name(a.name)]
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if _is_lightning(alias.name) and private_module(alias.name):
                found.append(private_module(alias.name))
    return found


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def private_references(code: list, src: Path, strings: bool = True) -> list:
    """Why the given statements reach Lightning internals (empty when they do not).

    ``strings=False`` leaves out dotted Lightning paths in string literals (``mock.patch("lightning...")``): a
    patch target is only resolved when its test runs, so it does not stop the file from importing.
    """
    private_names = lightning_private_names(src)
    found = []
    for stmt in code:
        for node in ast.walk(stmt):
            found += import_violations(node)
            if isinstance(node, ast.Attribute):
                dotted = _dotted(node)
                if dotted and _is_lightning(dotted):
                    why = private_module(dotted)
                    if why:
                        found.append(why)
                if private_name(node.attr) and node.attr in private_names:
                    found.append(f"private attribute .{node.attr}")
                elif PRIVATE_ATTRIBUTE.match(node.attr):
                    found.append(f"internal attribute .{node.attr}")
                elif isinstance(node.value, ast.Attribute) and node.value.attr == "strategy":
                    found.append(f"strategy internals .strategy.{node.attr}")
            elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.match(r"^(lightning|pytorch_lightning|lightning_fabric)\.\w", node.value):
                    found.append(f"names Lightning's module layout {node.value!r}")
    return found


# ---------------------------------------------------------------------------------------------------- reading a file


def _runif_keywords(decorators: list) -> set:
    keys = set()
    for deco in decorators:
        for node in ast.walk(deco):
            if isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] == "RunIf":
                keys |= {kw.arg for kw in node.keywords if _truthy(kw.value)}
    return keys


def _truthy(value: ast.AST) -> bool:
    return not (isinstance(value, ast.Constant) and value.value in (False, None, 0))


def _module_marks(tree: ast.Module) -> list:
    return [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets)
    ]


def _fixture_names(func: ast.FunctionDef) -> set:
    return {a.arg for a in func.args.args + func.args.kwonlyargs}


def _module_definitions(tree: ast.Module) -> dict:
    """Module-level name -> the statements that define it (functions, classes, assignments, imports)."""
    defs = {}
    for stmt in tree.body:
        names = []
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [stmt.name]
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in stmt.names]
        for name in names:
            defs.setdefault(name, []).append(stmt)
    return defs


def reachable_code(start: list, defs: dict) -> list:
    """The statements ``start`` uses, following module-level names (and fixtures by argument name) transitively."""
    seen, todo, code = set(), list(start), []
    while todo:
        stmt = todo.pop()
        if id(stmt) in seen:
            continue
        seen.add(id(stmt))
        code.append(stmt)
        for node in ast.walk(stmt):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = list(_fixture_names(node))
            for name in names:
                todo += defs.get(name, [])
    return code


def executed_parts(stmt: ast.AST) -> list:
    """The parts of a module-level statement that run when the file is imported (not function bodies)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = stmt.args
        return stmt.decorator_list + args.defaults + [d for d in args.kw_defaults if d is not None]
    if isinstance(stmt, ast.ClassDef):
        parts = stmt.decorator_list + stmt.bases + [k.value for k in stmt.keywords]
        for item in stmt.body:
            parts += executed_parts(item)
        return parts
    return [stmt]


def reachable_at_import(tree: ast.Module, defs: dict) -> list:
    """What importing the file runs: module-level code and what it uses, never a function's body."""
    seen, todo, code = set(), [p for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))
                               for p in executed_parts(s)], []
    while todo:
        part = todo.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        code.append(part)
        for node in ast.walk(part):
            if isinstance(node, ast.Name):
                for stmt in defs.get(node.id, []):
                    todo += [stmt] if isinstance(stmt, (ast.Import, ast.ImportFrom)) else executed_parts(stmt)
    return code


def out_of_scope(path: Path, rel: str, tree: ast.Module, func: ast.FunctionDef, cls) -> str:
    """Why a test function is not CPU-runnable here, or '' when it is."""
    for part in rel.split("/"):
        for word in HARDWARE_PATH_WORDS:
            if word in part.lower():
                return f"path names {word}"
    decorators = func.decorator_list + (cls.decorator_list if cls else []) + _module_marks(tree)
    hardware = _runif_keywords(decorators) & HARDWARE_RUNIF
    if hardware:
        return "RunIf(" + ", ".join(sorted(hardware)) + ")"
    fixtures = _fixture_names(func) & HARDWARE_FIXTURES
    if fixtures:
        return "simulated hardware fixture " + ", ".join(sorted(fixtures))
    return ""


def test_functions(tree: ast.Module):
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name.startswith("test"):
            yield None, stmt
        elif isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test"):
            for item in stmt.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    yield stmt, item


def classify(src: Path):
    """Yield (node_id, scope, api, reason) for every test function under tests/tests_pytorch, in path order."""
    tests_root = src / "tests"
    for path in sorted((tests_root / "tests_pytorch").rglob("test_*.py")):
        rel = path.relative_to(tests_root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defs = _module_definitions(tree)
        file_private = private_references(reachable_at_import(tree, defs), src, strings=False)
        for cls, func in test_functions(tree):
            node_id = f"{rel}::{cls.name}::{func.name}" if cls else f"{rel}::{func.name}"
            why = out_of_scope(path, rel, tree, func, cls)
            if why:
                yield node_id, "out", "-", why
                continue
            if file_private:
                yield node_id, "in", "private", "at import the file uses " + file_private[0]
                continue
            fixtures = _fixture_names(func) & PRIVATE_FIXTURES
            if fixtures:
                yield node_id, "in", "private", "fixture patching internals " + ", ".join(sorted(fixtures))
                continue
            members = [m for m in cls.body if m is not func and not getattr(m, "name", "").startswith("test")] if cls else []
            start = [func] + members + _module_marks(tree)
            reasons = private_references(reachable_code(start, defs), src)
            if reasons:
                yield node_id, "in", "private", reasons[0]
            else:
                yield node_id, "in", "public", ""


def main(argv: list) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for row in classify(Path(argv[1]).resolve()):
        print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

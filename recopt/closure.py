"""The project modules a module imports, transitively: what its results can depend on.

Used to key evaluate's checkpoints by the code that computes them (a change to any
module a batch runs invalidates them) and by the test that checks dvc.yaml declares
every module a stage imports.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recopt", "stages")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The project file (under `root`) of a dotted module name (None for third-party modules)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from recopt import features`
    return names


def closure(*entries: str, root: Path = ROOT) -> list[Path]:
    """Project files reachable from the modules `entries` by imports (sorted; packages' __init__ left out)."""
    todo, seen = list(entries), set()
    while todo:
        f = module_file(todo.pop(), root)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo += sorted(imports_of(f))
    return sorted(f for f in seen if f.name != "__init__.py")


@cache
def code_digest(*entries: str, root: Path = ROOT) -> str:
    """sha256 over the bytes of every file of :func:`closure` (names included), once per process."""
    h = hashlib.sha256()
    for f in closure(*entries, root=root):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()

"""dvc.yaml declares, for every stage, every project module its command imports (transitively),
so `dvc repro` can never keep outputs that a code change made stale."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("recopt", "stages")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (None for third-party modules)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = ROOT.joinpath(*name.split("."))
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


def closure(entry: str) -> set[str]:
    """Project files reachable from module `entry` by imports (as repo-relative paths)."""
    todo, seen = [entry], set()
    while todo:
        f = module_file(todo.pop())
        if f is None or f in seen:
            continue
        seen.add(f)
        todo += sorted(imports_of(f))
    return {str(f.relative_to(ROOT)) for f in seen if f.name != "__init__.py"}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_imported_project_module_is_a_declared_dependency(name: str) -> None:
    stage = stages()[name]
    body = stage.get("do", stage)
    module = body["cmd"].split("python -m ", 1)[1].split()[0]
    declared = {d for d in body["deps"] if isinstance(d, str) and d.endswith(".py")}
    missing = closure(module) - declared
    assert not missing, f"dvc.yaml stage {name!r} imports but does not declare: {sorted(missing)}"
    extra = declared - closure(module)
    assert not extra, f"dvc.yaml stage {name!r} declares modules its command never imports: {sorted(extra)}"


def test_the_closure_follows_lazy_and_package_style_imports(tmp_path: Path) -> None:
    # evaluate reaches references (lazy-free) and candidates' features via `from recopt import features`
    found = closure("stages.evaluate")
    assert {"recopt/references.py", "recopt/features.py", "recopt/tracking.py"} <= found
    assert "recopt/synthetic.py" not in found


@pytest.mark.parametrize("name", sorted(stages()))
def test_the_params_an_artifact_records_are_the_params_dvc_tracks(name: str) -> None:
    """What an artifact records as the config it was built with (and a reader checks) is exactly what
    DVC re-runs the stage for, minus paths and engine (which never change a result)."""
    from recopt.artifacts import PARAMS

    body = stages()[name].get("do", stages()[name])
    tracked = {p for p in body["params"] if p.split(".")[0] not in ("paths", "engine")}
    assert tracked == set(PARAMS[name.replace("-", "_")])

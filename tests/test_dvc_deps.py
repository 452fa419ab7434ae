"""dvc.yaml declares, for every stage, every project module its command imports (transitively),
so `dvc repro` can never keep outputs that a code change made stale."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recopt.closure import closure as import_closure
from tests.conftest import ROOT

def closure(entry: str) -> set[str]:
    """Project files reachable from module `entry` by imports (as repo-relative paths)."""
    return {str(f.relative_to(ROOT)) for f in import_closure(entry)}


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

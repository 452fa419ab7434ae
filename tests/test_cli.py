"""The command lines people type first: `--help` says how recopt is used before Hydra's options."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, tool_env


def test_evaluate_help_prints_recopts_usage_before_hydras() -> None:
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "--help"], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    usage = out.index("recopt evaluate: rank, measure and compare")
    for example in ("--params params.yaml --fold tune|test", "-m alpha=0.35,0.5,0.65", "hydra/launcher=joblib",
                    "evaluate.fold=test"):
        assert example in out[usage:], example
    assert usage < out.index("Powered by Hydra") or usage < out.index("== Config ==")

"""Configuration: one source of truth (conf/), both entry paths build the same typed config."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from recopt.config import ConfigError, load_config, read_params
from stages._entry import compose
from tests.conftest import ROOT


def _float_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _float_keys(v, f"{prefix}{k}.")
        elif isinstance(v, float):
            out.append(f"{prefix}{k}")
    return out


FLOAT_KEYS = [k for k in _float_keys(compose([])) if not k.startswith("data.presets")]


def test_every_float_key_is_found() -> None:
    assert {"alpha", "relevance_threshold", "rerank.w_quality", "split.test_frac"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_values_are_rejected_naming_the_key(key: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: must be a finite number, got -?(nan|inf)"):
        load_config(compose([f"{key}={bad}"]))


@pytest.mark.parametrize("override", ["evaluate.alphas=[0.35,0.5,0.35]", "evaluate.ks=[5,10,10]",
                                      "evaluate.baselines=[random,random]", "evaluate.cold_betas=[0.5,0.5]"])
def test_a_grid_listing_a_value_twice_is_rejected(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}\[2\]|{re.escape(key)}\[1\]: .* is listed twice"):
        load_config(compose([override]))


def test_values_that_differ_only_after_two_decimals_are_distinct_runs() -> None:
    cfg = load_config(compose(["evaluate.alphas=[0.12,0.125,0.35,0.351]"]))
    assert cfg.evaluate.alphas == [0.12, 0.125, 0.35, 0.351]


def test_compose_check_detects_a_stale_params_file(tmp_path) -> None:
    assert subprocess.run([sys.executable, "-m", "stages.compose", "--check"], cwd=ROOT, capture_output=True,
                          timeout=120).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "stages.compose", "--check", "alpha=0.77"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "regenerate it with `python -m stages.compose`" in proc.stderr


def test_both_entry_paths_build_the_same_config() -> None:
    assert read_params(ROOT / "params.yaml") == load_config(compose([]))


def test_overrides_reach_the_typed_config() -> None:
    cfg = load_config(compose(["alpha=0.35", "data=movielens", "data.path=/x", "split.strategy=leave_last_n"]))
    assert cfg.alpha == 0.35 and cfg.data.source == "movielens" and cfg.data.path == "/x"
    assert cfg.split.strategy == "leave_last_n"


@pytest.mark.parametrize(("override", "message"), [
    ("split.test_frac=-0.1", r"split.test_frac: -0.1 must be > 0.0"),
    ("split.strategy=random", r"split.strategy: 'random' is not one of temporal_user, temporal_global, leave_last_n"),
    ("alpha=1.5", r"alpha: 1.5 must be <= 1.0"),
    ("embed_load.encoder=bert", r"embed_load.encoder: 'bert' is not one of tfidf, minilm, precomputed"),
    ("rerank.k_final=0", r"rerank.k_final: 0 must be >= 1"),
    ("evaluate.ks=[5,20]", r"evaluate.ks: must contain 10"),
    ("candidates.relax_order=[providers,mood]", r"candidates.relax_order\[1\]: 'mood' is not one of"),
    ("data.preset=huge", r"data.preset: 'huge' is not one of tiny, small, ml32m"),
    ("data=movielens", r"data.path: must not be null|data.path: required"),
    ("cf_load.factors=ten", r"cf_load.factors: expected an integer, got 'ten'"),
])
def test_bad_values_name_the_key_and_the_allowed_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(compose([override]))


def test_every_problem_is_reported_at_once() -> None:
    raw = compose([])
    raw["alpha"] = -1
    raw["split"]["heavy_frac"] = 2
    raw["surprise"] = 1
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    text = str(err.value)
    assert "alpha: -1" in text and "split.heavy_frac: 2" in text and "surprise: unknown key" in text


def test_missing_key_is_named() -> None:
    raw = compose([])
    del raw["rerank"]["mmr_pool"]
    with pytest.raises(ConfigError, match=r"rerank.mmr_pool: missing key"):
        load_config(raw)


def test_missing_params_file_says_how_to_make_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="python -m stages.compose"):
        read_params(tmp_path / "params.yaml")


def test_stage_cli_rejects_bad_override_with_the_key() -> None:
    proc = subprocess.run([sys.executable, "-m", "stages.split", "split.test_frac=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "split.test_frac: 2.0 must be <= 0.9" in proc.stderr
    assert "Traceback" not in proc.stderr

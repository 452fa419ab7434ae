"""Typed, range-checked configuration shared by every stage.

`conf/` (Hydra) is the only hand-written source of values; `params.yaml` is its
composition. Both entry paths -- `dvc repro` reading params.yaml and
`python -m stages.<name> key=value` composing conf/ -- hand a plain mapping to
:func:`load_config`, so both build the same :class:`Config`. Every problem in
the mapping (unknown or missing keys, wrong types, values out of range) is
reported at once in one :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every bad key."""


@dataclass(frozen=True)
class Preset:
    n_users: int
    n_items: int
    n_ratings: int
    n_topics: int


@dataclass(frozen=True)
class DataConfig:
    source: str
    preset: str | None
    path: str | None
    release: str | None
    url: str | None
    md5: str | None
    presets: dict[str, Preset] = field(default_factory=dict)


@dataclass(frozen=True)
class Paths:
    ingest: str
    split: str
    embed_load: str
    cf_load: str
    candidates: str
    evaluate: str
    downloads: str
    mlflow_uri: str
    mlflow_artifacts: str


@dataclass(frozen=True)
class SplitConfig:
    strategy: str
    test_frac: float
    leave_last_n: int
    cold_user_frac: float
    cold_user_train_n: int
    heavy_frac: float


@dataclass(frozen=True)
class EmbedConfig:
    encoder: str
    dim: int
    min_df: int
    mmr_dim: int | None
    minilm_model: str
    batch_size: int
    vectors: str | None
    ids: str | None


@dataclass(frozen=True)
class CFConfig:
    method: str
    factors: int
    regularization: float
    iterations: int
    confidence_scale: float
    min_item_ratings: int
    user_factors: str | None
    user_ids: str | None
    item_factors: str | None
    item_ids: str | None


@dataclass(frozen=True)
class Filters:
    genres: list[str]
    providers: list[str]
    user_providers: bool
    blocklist: list[int]


@dataclass(frozen=True)
class CandidatesConfig:
    n_cf_seed: int
    m_recent: int
    k_neighbours: int
    c_max: int
    min_pool: int
    batch_users: int
    quality_prior: float
    filters: Filters
    relax_order: list[str]


@dataclass(frozen=True)
class RerankConfig:
    w_quality: float
    w_recency: float
    w_provider: float
    mmr_lambda: float
    k_final: int
    mmr_pool: int
    missing_collab: str


@dataclass(frozen=True)
class EvaluateConfig:
    alphas: list[float]
    ks: list[int]
    baselines: list[str]
    time_limit_alpha_s: float
    time_limit_total_s: float
    bootstrap_samples: int
    gate_min_lift: float
    enforce_gates: bool
    experiment: str


@dataclass(frozen=True)
class Config:
    seed: int
    alpha: float
    relevance_threshold: float
    paths: Paths
    data: DataConfig
    split: SplitConfig
    embed_load: EmbedConfig
    cf_load: CFConfig
    candidates: CandidatesConfig
    rerank: RerankConfig
    evaluate: EvaluateConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SOURCES = ("synthetic", "movielens", "download")
SPLIT_STRATEGIES = ("temporal_user", "temporal_global", "leave_last_n")
ENCODERS = ("tfidf", "minilm", "precomputed")
CF_METHODS = ("als", "precomputed")
RELAXABLE = ("providers", "genres", "user_providers")
MISSING_COLLAB = ("user_mean", "content")
BASELINES = ("popularity", "random", "cf_only", "content_only")


def _build(cls: type, raw: Any, key: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from `raw`, appending every problem found."""
    if not isinstance(raw, Mapping):
        problems.append(f"{key or '<root>'}: expected a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for extra in sorted(set(raw) - set(fields)):
        problems.append(f"{_join(key, extra)}: unknown key (allowed: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        full = _join(key, name)
        if name not in raw:
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                values[name] = f.default_factory()  # type: ignore[misc]
                continue
            problems.append(f"{full}: missing key")
            continue
        values[name] = _coerce(hints[name], raw[name], full, problems)
    if len(values) < len(fields) or any(v is None and not _optional(hints[n]) for n, v in values.items()):
        return None
    return cls(**values)


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _coerce(hint: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value == "???":  # Hydra's mandatory-value marker, never filled in
        problems.append(f"{key}: required, no value given (set it, e.g. `{key}=...`)")
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key, problems)
    if value is None:
        problems.append(f"{key}: must not be null")
        return None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, problems)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {value!r}")
            return []
        return [_coerce(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        return {k: _coerce(args[1], v, _join(key, k), problems) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if hint is str and not isinstance(value, str):
        problems.append(f"{key}: expected a string, got {value!r}")
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _check(problems: list[str], key: str, value: Any, *, low: float | None = None,
           high: float | None = None, low_open: bool = False, choices: tuple[str, ...] | None = None) -> None:
    """Append a problem when `value` is outside its allowed range or set."""
    if choices is not None:
        if value not in choices:
            problems.append(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # already reported as a type problem
    if low is not None and (value <= low if low_open else value < low):
        problems.append(f"{key}: {value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        problems.append(f"{key}: {value!r} must be <= {high}")


def _check_ranges(c: Config, problems: list[str]) -> None:
    _check(problems, "alpha", c.alpha, low=0.0, high=1.0)
    _check(problems, "relevance_threshold", c.relevance_threshold, low=0.5, high=5.0)
    _check(problems, "seed", c.seed, low=0)
    d = c.data
    _check(problems, "data.source", d.source, choices=SOURCES)
    if d.source == "synthetic":
        _check(problems, "data.preset", d.preset, choices=tuple(d.presets))
        for name, p in d.presets.items():
            _check(problems, f"data.presets.{name}.n_users", p.n_users, low=2)
            _check(problems, f"data.presets.{name}.n_items", p.n_items, low=10)
            _check(problems, f"data.presets.{name}.n_topics", p.n_topics, low=1)
            if p.n_ratings < 20 * p.n_users or p.n_ratings > p.n_users * p.n_items // 2:
                problems.append(f"data.presets.{name}.n_ratings: {p.n_ratings} must be between "
                                f"20 * n_users and n_users * n_items / 2")
    if d.source == "movielens" and not d.path:
        problems.append("data.path: required for data=movielens (a folder with ratings.csv and movies.csv)")
    if d.source == "download" and not (d.release and d.url):
        problems.append("data.release / data.url: required for data=download (e.g. data.release=ml-25m)")
    s = c.split
    _check(problems, "split.strategy", s.strategy, choices=SPLIT_STRATEGIES)
    _check(problems, "split.test_frac", s.test_frac, low=0.0, low_open=True, high=0.9)
    _check(problems, "split.leave_last_n", s.leave_last_n, low=1)
    _check(problems, "split.cold_user_frac", s.cold_user_frac, low=0.0, high=0.5)
    _check(problems, "split.cold_user_train_n", s.cold_user_train_n, low=1)
    _check(problems, "split.heavy_frac", s.heavy_frac, low=0.0, high=0.5)
    e = c.embed_load
    _check(problems, "embed_load.encoder", e.encoder, choices=ENCODERS)
    _check(problems, "embed_load.dim", e.dim, low=2)
    _check(problems, "embed_load.min_df", e.min_df, low=1)
    if e.mmr_dim is not None:
        _check(problems, "embed_load.mmr_dim", e.mmr_dim, low=2)
    _check(problems, "embed_load.batch_size", e.batch_size, low=1)
    if e.encoder == "precomputed" and not e.vectors:
        problems.append("embed_load.vectors: required for embed_load.encoder=precomputed")
    f = c.cf_load
    _check(problems, "cf_load.method", f.method, choices=CF_METHODS)
    _check(problems, "cf_load.factors", f.factors, low=1)
    _check(problems, "cf_load.regularization", f.regularization, low=0.0)
    _check(problems, "cf_load.iterations", f.iterations, low=1)
    _check(problems, "cf_load.confidence_scale", f.confidence_scale, low=0.0)
    _check(problems, "cf_load.min_item_ratings", f.min_item_ratings, low=1)
    if f.method == "precomputed":
        for name in ("user_factors", "user_ids", "item_factors", "item_ids"):
            if not getattr(f, name):
                problems.append(f"cf_load.{name}: required for cf_load.method=precomputed")
    k = c.candidates
    for name in ("n_cf_seed", "m_recent", "k_neighbours", "c_max", "batch_users"):
        _check(problems, f"candidates.{name}", getattr(k, name), low=1)
    _check(problems, "candidates.min_pool", k.min_pool, low=0)
    _check(problems, "candidates.quality_prior", k.quality_prior, low=0.0)
    for i, step in enumerate(k.relax_order):
        _check(problems, f"candidates.relax_order[{i}]", step, choices=RELAXABLE)
    r = c.rerank
    for name in ("w_quality", "w_recency", "w_provider", "mmr_lambda"):
        _check(problems, f"rerank.{name}", getattr(r, name), low=0.0, high=1.0)
    if r.w_quality + r.w_recency + r.w_provider > 1.0:
        problems.append("rerank.w_quality + w_recency + w_provider: must be <= 1")
    _check(problems, "rerank.k_final", r.k_final, low=1)
    _check(problems, "rerank.mmr_pool", r.mmr_pool, low=r.k_final)
    _check(problems, "rerank.missing_collab", r.missing_collab, choices=MISSING_COLLAB)
    v = c.evaluate
    if not v.alphas:
        problems.append("evaluate.alphas: must list at least one alpha")
    for i, a in enumerate(v.alphas):
        _check(problems, f"evaluate.alphas[{i}]", a, low=0.0, high=1.0)
    if not v.ks:
        problems.append("evaluate.ks: must list at least one cutoff")
    for i, kk in enumerate(v.ks):
        _check(problems, f"evaluate.ks[{i}]", kk, low=1, high=r.k_final)
    if 10 not in v.ks:
        problems.append("evaluate.ks: must contain 10 (Recall@10 drives the gates)")
    for i, b in enumerate(v.baselines):
        _check(problems, f"evaluate.baselines[{i}]", b, choices=BASELINES)
    _check(problems, "evaluate.time_limit_alpha_s", v.time_limit_alpha_s, low=0.0, low_open=True)
    _check(problems, "evaluate.time_limit_total_s", v.time_limit_total_s, low=0.0, low_open=True)
    _check(problems, "evaluate.bootstrap_samples", v.bootstrap_samples, low=10)
    _check(problems, "evaluate.gate_min_lift", v.gate_min_lift, low=0.0)


def load_config(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Build and range-check a :class:`Config` from a composed mapping.

    Raises ConfigError listing every problem, each naming its key.
    """
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if cfg is not None:
        _check_ranges(cfg, problems)
    if problems or cfg is None:
        lines = "\n  ".join(problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s) in the configuration:\n  {lines}\n"
                          "Fix the value in conf/ (or the override) and run `python -m stages.compose`.")
    return cfg


def read_params(path: str | Path = "params.yaml") -> Config:
    """Load the composed params.yaml that `dvc repro` tracks."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; write it with `python -m stages.compose`")
    with path.open() as fh:
        return load_config(yaml.safe_load(fh) or {}, source=str(path))


def preset(cfg: Config) -> Preset:
    """The synthetic preset selected by `data.preset`."""
    return cfg.data.presets[cfg.data.preset or ""]

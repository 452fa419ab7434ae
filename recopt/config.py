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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from recopt.errors import RecoptError
from recopt.typed import build_dataclass, check_unique, check_value


class ConfigError(RecoptError):
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
    runs: str
    checkpoints: str
    metrics: str
    mlflow_uri: str
    mlflow_artifacts: str


@dataclass(frozen=True)
class SplitConfig:
    strategy: str
    test_frac: float
    validation_frac: float
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
    n_popular_cold: int
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
    cold_beta: float
    cold_prior: str
    cold_mmr_lambda: float | None
    cold_alpha: float | None


@dataclass(frozen=True)
class EvaluateConfig:
    fold: str
    alphas: list[float]
    alpha_search_points: int
    cold_betas: list[float]
    cold_priors: list[str]
    cold_mmr_lambdas: list[float]
    ks: list[int]
    baselines: list[str]
    references: list[str]
    ease_lambdas: list[float]
    ease_max_items: int
    knn_ks: list[int]
    reference_tuning_users: int
    time_limit_alpha_s: float
    time_limit_total_s: float
    bootstrap_samples: int
    gate_min_lift: float
    enforce_gates: bool
    enforce_inconclusive: bool
    experiment: str


@dataclass(frozen=True)
class RayConfig:
    address: str | None
    num_cpus_per_task: float
    max_retries: int


@dataclass(frozen=True)
class EngineConfig:
    name: str
    workers: int
    max_in_flight: int
    ray: RayConfig


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
    engine: EngineConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SOURCES = ("synthetic", "movielens", "download")
SPLIT_STRATEGIES = ("temporal_user", "temporal_global", "leave_last_n")
ENCODERS = ("tfidf", "minilm", "precomputed")
CF_METHODS = ("als", "precomputed")
RELAXABLE = ("providers", "genres", "user_providers")
MISSING_COLLAB = ("user_mean", "content")
REFERENCES = ("ease", "itemknn")
COLD_PRIORS = ("popularity", "quality")
FOLDS = ("tune", "test")
HELDOUT = {"tune": "validation", "test": "test"}  # what each fold scores on
SLICES = ("cold", "warm", "heavy")                # per-user slices (recopt.split)
ENGINES = ("local", "ray")


def _check_top(c: Config, problems: list[str]) -> None:
    check_value(problems, "alpha", c.alpha, low=0.0, high=1.0)
    check_value(problems, "relevance_threshold", c.relevance_threshold, low=0.5, high=5.0)
    check_value(problems, "seed", c.seed, low=0)


def _check_data(d: DataConfig, problems: list[str]) -> None:
    check_value(problems, "data.source", d.source, choices=SOURCES)
    if d.source == "synthetic":
        check_value(problems, "data.preset", d.preset, choices=tuple(d.presets))
        for name, p in d.presets.items():
            check_value(problems, f"data.presets.{name}.n_users", p.n_users, low=2)
            check_value(problems, f"data.presets.{name}.n_items", p.n_items, low=10)
            check_value(problems, f"data.presets.{name}.n_topics", p.n_topics, low=1)
            if p.n_ratings < 20 * p.n_users or p.n_ratings > p.n_users * p.n_items // 2:
                problems.append(f"data.presets.{name}.n_ratings: {p.n_ratings} must be between "
                                f"20 * n_users and n_users * n_items / 2")
    if d.source == "movielens" and not d.path:
        problems.append("data.path: required for data=movielens (a folder with ratings.csv and movies.csv)")
    if d.source == "download" and not (d.release and d.url):
        problems.append("data.release / data.url: required for data=download (e.g. data.release=ml-25m)")


def _check_split(s: SplitConfig, problems: list[str]) -> None:
    check_value(problems, "split.strategy", s.strategy, choices=SPLIT_STRATEGIES)
    check_value(problems, "split.test_frac", s.test_frac, low=0.0, low_open=True, high=0.9)
    check_value(problems, "split.validation_frac", s.validation_frac, low=0.0, low_open=True, high=0.9)
    check_value(problems, "split.leave_last_n", s.leave_last_n, low=1)
    check_value(problems, "split.cold_user_frac", s.cold_user_frac, low=0.0, high=0.5)
    check_value(problems, "split.cold_user_train_n", s.cold_user_train_n, low=1)
    check_value(problems, "split.heavy_frac", s.heavy_frac, low=0.0, high=0.5)


def _check_embed(e: EmbedConfig, problems: list[str]) -> None:
    check_value(problems, "embed_load.encoder", e.encoder, choices=ENCODERS)
    check_value(problems, "embed_load.dim", e.dim, low=2)
    check_value(problems, "embed_load.min_df", e.min_df, low=1)
    if e.mmr_dim is not None:
        check_value(problems, "embed_load.mmr_dim", e.mmr_dim, low=2)
    check_value(problems, "embed_load.batch_size", e.batch_size, low=1)
    if e.encoder == "precomputed" and not e.vectors:
        problems.append("embed_load.vectors: required for embed_load.encoder=precomputed")


def _check_cf(f: CFConfig, problems: list[str]) -> None:
    check_value(problems, "cf_load.method", f.method, choices=CF_METHODS)
    check_value(problems, "cf_load.factors", f.factors, low=1)
    check_value(problems, "cf_load.regularization", f.regularization, low=0.0)
    check_value(problems, "cf_load.iterations", f.iterations, low=1)
    check_value(problems, "cf_load.confidence_scale", f.confidence_scale, low=0.0)
    check_value(problems, "cf_load.min_item_ratings", f.min_item_ratings, low=1)
    if f.method == "precomputed":
        for name in ("user_factors", "user_ids", "item_factors", "item_ids"):
            if not getattr(f, name):
                problems.append(f"cf_load.{name}: required for cf_load.method=precomputed")


def _check_candidates(k: CandidatesConfig, problems: list[str]) -> None:
    for name in ("n_cf_seed", "m_recent", "k_neighbours", "c_max", "batch_users"):
        check_value(problems, f"candidates.{name}", getattr(k, name), low=1)
    check_value(problems, "candidates.min_pool", k.min_pool, low=0)
    check_value(problems, "candidates.n_popular_cold", k.n_popular_cold, low=0)
    check_value(problems, "candidates.quality_prior", k.quality_prior, low=0.0)
    for i, step in enumerate(k.relax_order):
        check_value(problems, f"candidates.relax_order[{i}]", step, choices=RELAXABLE)


def _check_rerank(r: RerankConfig, problems: list[str]) -> None:
    for name in ("w_quality", "w_recency", "w_provider", "mmr_lambda"):
        check_value(problems, f"rerank.{name}", getattr(r, name), low=0.0, high=1.0)
    if r.w_quality + r.w_recency + r.w_provider > 1.0:
        problems.append("rerank.w_quality + w_recency + w_provider: must be <= 1")
    check_value(problems, "rerank.k_final", r.k_final, low=1)
    check_value(problems, "rerank.mmr_pool", r.mmr_pool, low=r.k_final)
    check_value(problems, "rerank.missing_collab", r.missing_collab, choices=MISSING_COLLAB)
    check_value(problems, "rerank.cold_beta", r.cold_beta, low=0.0, high=1.0)
    check_value(problems, "rerank.cold_prior", r.cold_prior, choices=COLD_PRIORS)
    for name in ("cold_mmr_lambda", "cold_alpha"):
        if getattr(r, name) is not None:
            check_value(problems, f"rerank.{name}", getattr(r, name), low=0.0, high=1.0)


def _check_evaluate(v: EvaluateConfig, k_final: int, problems: list[str]) -> None:
    check_value(problems, "evaluate.fold", v.fold, choices=FOLDS)
    for key, values, low, high in (("alphas", v.alphas, 0.0, 1.0), ("cold_betas", v.cold_betas, 0.0, 1.0),
                                   ("cold_mmr_lambdas", v.cold_mmr_lambdas, 0.0, 1.0),
                                   ("ks", v.ks, 1, k_final), ("ease_lambdas", v.ease_lambdas, 0.0, None),
                                   ("knn_ks", v.knn_ks, 1, None)):
        if not values:
            problems.append(f"evaluate.{key}: must list at least one value")
        for i, x in enumerate(values):
            check_value(problems, f"evaluate.{key}[{i}]", x, low=low, high=high,
                        low_open=key == "ease_lambdas")
        check_unique(problems, f"evaluate.{key}", values)
    if 10 not in v.ks:
        problems.append("evaluate.ks: must contain 10 (Recall@10 drives the selection and the gates)")
    # evaluate.baselines is checked against recopt.baselines' registry by the evaluate stage (importing it
    # here would make every stage depend on the baselines' code)
    check_unique(problems, "evaluate.baselines", v.baselines)
    for key, values, allowed in (("references", v.references, REFERENCES), ("cold_priors", v.cold_priors, COLD_PRIORS)):
        for i, b in enumerate(values):
            check_value(problems, f"evaluate.{key}[{i}]", b, choices=allowed)
        check_unique(problems, f"evaluate.{key}", values)
    if not v.baselines:
        problems.append("evaluate.baselines: must list at least one baseline (gate 1 compares with the best)")
    if not v.cold_priors:
        problems.append("evaluate.cold_priors: must list at least one prior")
    check_value(problems, "evaluate.alpha_search_points", v.alpha_search_points, low=0)
    check_value(problems, "evaluate.ease_max_items", v.ease_max_items, low=2)
    check_value(problems, "evaluate.reference_tuning_users", v.reference_tuning_users, low=0)
    check_value(problems, "evaluate.time_limit_alpha_s", v.time_limit_alpha_s, low=0.0, low_open=True)
    check_value(problems, "evaluate.time_limit_total_s", v.time_limit_total_s, low=0.0, low_open=True)
    check_value(problems, "evaluate.bootstrap_samples", v.bootstrap_samples, low=10)
    check_value(problems, "evaluate.gate_min_lift", v.gate_min_lift, low=0.0)
    if not v.experiment.strip():
        problems.append("evaluate.experiment: must name an MLflow experiment")


def _check_engine(g: EngineConfig, problems: list[str]) -> None:
    check_value(problems, "engine.name", g.name, choices=ENGINES)
    check_value(problems, "engine.workers", g.workers, low=1)
    check_value(problems, "engine.max_in_flight", g.max_in_flight, low=1)
    check_value(problems, "engine.ray.num_cpus_per_task", g.ray.num_cpus_per_task, low=0.0, low_open=True)
    check_value(problems, "engine.ray.max_retries", g.ray.max_retries, low=0)


def _check_ranges(c: Config, problems: list[str]) -> None:
    """Every section's ranges, each problem naming its key."""
    _check_top(c, problems)
    _check_data(c.data, problems)
    _check_split(c.split, problems)
    _check_embed(c.embed_load, problems)
    _check_cf(c.cf_load, problems)
    _check_candidates(c.candidates, problems)
    _check_rerank(c.rerank, problems)
    _check_evaluate(c.evaluate, c.rerank.k_final, problems)
    _check_engine(c.engine, problems)


def load_config(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Build and range-check a :class:`Config` from a composed mapping.

    Raises ConfigError listing every problem, each naming its key.
    """
    problems: list[str] = []
    cfg = build_dataclass(Config, raw, "", problems)
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

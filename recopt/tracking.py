"""MLflow: one parent run per evaluation (a DVC fold or a Hydra sweep) with a child run per
alpha, baseline and reference. The only module that imports mlflow.

* The store is SQLite under ``paths.mlflow_uri``, checked, created and written under one file
  lock, so concurrent sweeps race neither on the schema nor on writes. A new store is created
  and migrated under a temporary name next to the target and renamed into place, so a kill at
  any moment leaves no store or a complete one. A store left half-migrated by an older recopt
  (alembic's ``_alembic_tmp_*`` tables, a schema revision that is not this MLflow's head, missing
  tables) is rebuilt when it holds no run; otherwise logging stops with one message naming the
  file and the fix. MLflow's and alembic's INFO lines about creating tables are silenced.
* A family is logged parent first, left RUNNING while its children are logged, and marked
  FINISHED after the last one, so a half-logged evaluation never looks finished. Every run is
  tagged with this host and process id; a RUNNING run whose process is gone (killed while
  logging) is marked FAILED the next time anything logs, and a run whose logging raises is
  marked FAILED at once.
* Each run is one ``create_run`` (with the host, pid and parent tags), one ``log_batch`` with all
  its metrics, params and other tags (split only past MLflow's per-call caps), one
  ``log_inputs`` (its input dataset: name, source, digest) and its files through one artifact
  repository, then ``set_terminated``. A child keeps its own start and end; the parent spans
  from its start to the time its last child was logged. Logging many runs prints a progress
  line every few seconds, and :func:`log_family` returns how long it took.
* The experiment carries ``mlflow.experimentKind=custom_model_development``. MLflow 3.17/3.18's UI
  picks the experiment page from the link's ``workflowType`` or else the browser's remembered
  sidebar switch (GenAI by default), not from the store, so every link recopt prints carries
  ``workflowType=machine_learning`` (:func:`ui_url`, :func:`run_url`); MLflow's next UI follows
  the tag when an experiment is opened.
* A saved runs-table view (MLflow >= 3.15 stores them as experiment tags) shows the key
  metrics, alpha, fold and how each row was chosen; :func:`ui_url` opens it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from recopt.config import Config
from recopt.errors import RecoptError
from recopt.metrics import VIEW, mlflow_key, shown_in

log = logging.getLogger("recopt")

SWEEP_TAG = "recopt.sweep"
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
WORKFLOW = "workflowType=machine_learning"  # the UI's training-runs view, whatever the browser last chose
VIEW_TAG = "mlflow.sharedViewState.recopt"  # the UI's saved-view tag prefix + this view's id
VIEW_METRICS = tuple(mlflow_key(m) for m in shown_in(VIEW))  # recopt.metrics' registry, in its order
VIEW_PARAMS = ("alpha", "fold")
VIEW_TAGS = ("recopt.chosen",)
PROGRESS_EVERY_S = 5.0
QUIET_LOGGERS = ("alembic", "mlflow.store.db.utils")  # "Creating initial MLflow database tables...", migrations
EMPTY = "it has no table yet"


@dataclass
class RunRecord:
    """Everything one MLflow run holds, logged in one step; start/end are this run's own times."""

    name: str
    start_ms: int
    end_ms: int
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str
    digest: str


@dataclass(frozen=True)
class LoggedFamily:
    """What :func:`log_family` did: the parent's run id, how many runs it logged, and how long it
    took (`seconds`, of which `lock_seconds` waiting for another process's logging)."""

    experiment_id: str
    parent_id: str
    runs: int
    seconds: float
    lock_seconds: float


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def config_params(cfg: Config) -> dict[str, str]:
    """The flattened config, without the presets table and without the top-level alpha
    (each run logs its own alpha)."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if not k.startswith("data.presets.") and k != "alpha"}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- the store


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


def _store_lock(cfg: Config) -> Any:
    from filelock import FileLock

    uri = cfg.paths.mlflow_uri
    db = _sqlite_path(uri)
    where = db.parent if db is not None else Path(cfg.paths.runs)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecoptError(f"paths.mlflow_uri={uri}: cannot create {where}: {err.strerror or err}") from None
    return FileLock(str(where / ".recopt-mlflow.lock"), timeout=600)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's and alembic's INFO lines while a store is created (news to no one)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _store_problem(path: Path) -> tuple[str | None, int]:
    """What is wrong with the store at `path` (None: complete, at this MLflow's head revision; EMPTY:
    no table yet) and how many runs it holds. Opening it rolls back a transaction a kill left open."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (puts every table on Base.metadata)
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        con = sqlite3.connect(path, timeout=60)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revisions = ([r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
                         if "alembic_version" in tables else [])
            runs = sum(con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
                       for t in ("runs", "_alembic_tmp_runs") if t in tables)
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise RecoptError(f"{path} (paths.mlflow_uri) is not a readable SQLite file ({err}): move it aside "
                          f"(`mv {path} {path}.broken`) and re-run to start a new MLflow store") from None
    if not tables:
        return EMPTY, 0
    head = _get_latest_schema_revision()
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    missing = sorted(set(Base.metadata.tables) - tables)
    if leftovers:
        return f"a schema migration was interrupted (alembic left {', '.join(leftovers)})", runs
    if revisions != [head]:
        return f"its schema revision is {', '.join(revisions) or 'missing'}, this MLflow's is {head}", runs
    if missing:
        return f"it lacks the tables {', '.join(missing)}", runs
    return None, runs


def _create_store(uri: str, path: Path, artifacts: Path) -> None:
    """Create and migrate a store under a temporary name next to `path`, then rename it into
    place (replacing a broken store that holds no run)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for leftover in path.parent.glob(f".{path.name}.creating-*"):  # a creator killed before us (we hold the lock)
        leftover.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        with _quiet():
            store = SqlAlchemyStore(tmp_uri, artifacts.resolve().as_uri())
        store.engine.dispose()
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)  # MLflow caches an engine per URI
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        for p in (tmp, tmp.with_name(tmp.name + "-journal")):
            p.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    stale = getattr(SqlAlchemyStore, "_engine_map", {}).get(uri)
    if stale is not None:  # this process had the replaced file open
        stale.dispose()


def _ensure_store(cfg: Config) -> None:
    """Make paths.mlflow_uri a complete store, or stop with one message (call under the lock)."""
    uri = cfg.paths.mlflow_uri
    path = _sqlite_path(uri)
    if path is None:
        return
    if path.exists():
        problem, runs = _store_problem(path)
        if problem is None:
            return
        if runs:
            raise RecoptError(
                f"MLflow store {path} (paths.mlflow_uri) cannot be used: {problem}, and it holds {runs} runs, "
                f"so recopt will not rebuild it. If an older MLflow wrote it, back it up and run `mlflow db upgrade "
                f"sqlite:///{path}`; otherwise restore it from a backup, or move it aside (`mv {path} {path}.broken`) "
                "and re-run to log into a new store")
        if problem != EMPTY:
            log.warning("MLflow store %s: %s; it holds no run, so it is rebuilt", path, problem)
    _create_store(uri, path, Path(cfg.paths.mlflow_artifacts))


def _client(cfg: Config) -> Any:
    """An MlflowClient on a complete store (call under the lock)."""
    from mlflow.tracking import MlflowClient

    _ensure_store(cfg)
    return MlflowClient(tracking_uri=cfg.paths.mlflow_uri)


# --------------------------------------------------------------------------- runs


def _experiment(client: Any, cfg: Config) -> str:
    name = cfg.evaluate.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = Path(cfg.paths.mlflow_artifacts).resolve()
        location.mkdir(parents=True, exist_ok=True)
        exp_id = client.create_experiment(name, artifact_location=location.as_uri(), tags={KIND_TAG: KIND})
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(KIND_TAG) != KIND:
            client.set_experiment_tag(exp_id, KIND_TAG, KIND)
    return exp_id


def _fail_stale(client: Any, exp_id: str) -> None:
    """Mark FAILED the RUNNING runs of this host whose process no longer exists."""
    import psutil

    host = socket.gethostname()
    for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get("recopt.pid")
        if tags.get("recopt.host") == host and pid and pid.isdigit() and not psutil.pid_exists(int(pid)):
            client.set_terminated(run.info.run_id, status="FAILED")


def _batches(metrics: list[Any], params: list[Any], tags: list[Any]) -> Iterator[tuple[list, list, list]]:
    """One log_batch's worth at a time: everything at once unless MLflow's caps (1000 metrics,
    100 params, 100 tags, 1000 entities per call) need more calls."""
    from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    while metrics or params or tags:
        p, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        t, tags = tags[:MAX_PARAMS_TAGS_PER_BATCH], tags[MAX_PARAMS_TAGS_PER_BATCH:]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


def _now_ms() -> int:
    return int(time.time() * 1000)


def _log_run(client: Any, exp_id: str, rec: RunRecord, inputs: list[Any], tags: dict[str, str],
             extra_tags: dict[str, str], finish: bool) -> str:
    """Create a RUNNING run (tagged so a dead process's run is found), log everything it holds and,
    with `finish`, mark it FINISHED at its own end time; a run whose logging raises is FAILED."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    run = client.create_run(exp_id, start_time=rec.start_ms, run_name=rec.name, tags=tags)
    run_id = run.info.run_id
    try:
        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in sorted(rec.params.items())]
        metrics = [Metric(mlflow_key(k), float(v), rec.end_ms, 0) for k, v in sorted(rec.metrics.items())
                   if v is not None and v == v]
        run_tags = [RunTag(k, str(v)) for k, v in sorted({**extra_tags, **rec.tags}.items()) if k not in tags]
        for m, p, t in _batches(metrics, params, run_tags):
            client.log_batch(run_id, metrics=m, params=p, tags=t)
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
        files = [Path(p) for p in rec.artifacts if Path(p).is_file()]
        if files:  # one repository for all of the run's files (MlflowClient.log_artifact looks the run up per file)
            repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
            for path in files:
                repo.log_artifact(str(path))
        if finish:
            client.set_terminated(run_id, status="FINISHED", end_time=rec.end_ms)
    except BaseException:
        _fail(client, run_id)
        raise
    return run_id


def _fail(client: Any, run_id: str) -> None:
    with contextlib.suppress(Exception):  # the error being raised is the one to report
        client.set_terminated(run_id, status="FAILED", end_time=_now_ms())


def _dataset_inputs(dataset: DatasetInfo | None) -> list[Any]:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if dataset is None:
        return []
    ds = Dataset(name=dataset.name, digest=dataset.digest[:36], source_type="local", source=dataset.source)
    return [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "evaluation")])]


def _save_view(client: Any, exp_id: str) -> None:
    """The saved view: the dataset, key metric, param and tag columns (the UI does not share which
    parents are expanded)."""
    cols = ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in VIEW_METRICS),
            *(f"params.`{p}`" for p in VIEW_PARAMS), *(f"tags.`{t}`" for t in VIEW_TAGS)]
    state = json.dumps({"selectedColumns": cols}, separators=(",", ":"))
    envelope = {"name": "recopt: key metrics", "createdAt": int(time.time() * 1000),
                "state": "deflate;" + base64.b64encode(zlib.compress(state.encode())).decode("ascii")}
    client.set_experiment_tag(exp_id, VIEW_TAG, json.dumps(envelope, separators=(",", ":")))


def ui_url(cfg: Config, host: str = "http://127.0.0.1:5000") -> str:
    """Where `mlflow ui` shows the runs of the experiment in the saved view, on the training-runs page."""
    with _store_lock(cfg):
        exp = _client(cfg).get_experiment_by_name(cfg.evaluate.experiment)
    exp_id = exp.experiment_id if exp is not None else "0"
    return f"{host}/#/experiments/{exp_id}/runs?{WORKFLOW}&viewStateShareKey=recopt"


def run_url(experiment_id: str, run_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """Where `mlflow ui` shows one run, as a training run (not under "Evaluations")."""
    return f"{host}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"


def log_family(cfg: Config, parent: RunRecord, children: list[RunRecord],
               dataset: DatasetInfo | None) -> LoggedFamily:
    """Log a parent run and its children (nested). The parent is RUNNING until its last child is
    logged, then FINISHED, ending at that time; each child keeps its own start and end.

    Args:
        cfg: where the store and the artifacts are (``paths``) and the experiment's name.
        parent: the evaluation's run.
        children: one per run of the evaluation.
        dataset: the input dataset every run records, if any.

    Returns:
        The parent's run id, the number of runs logged and the seconds it took.
    """
    started = time.perf_counter()
    common = {"recopt.host": socket.gethostname(), "recopt.pid": str(os.getpid())}
    extra = {"recopt.git_commit": git_commit()}
    inputs = _dataset_inputs(dataset)
    waiting = time.perf_counter()
    with _store_lock(cfg):
        locked = time.perf_counter()
        client = _client(cfg)
        exp_id = _experiment(client, cfg)
        _fail_stale(client, exp_id)
        parent_id = _log_run(client, exp_id, parent, inputs, common, extra, finish=False)
        try:
            shown = time.perf_counter()
            for i, child in enumerate(children, 1):
                _log_run(client, exp_id, child, inputs, {**common, "mlflow.parentRunId": parent_id}, extra, finish=True)
                if time.perf_counter() - shown >= PROGRESS_EVERY_S and i < len(children):
                    shown = time.perf_counter()
                    log.info("MLflow: %d of %d runs of %r logged (%.1f s)", i, len(children), parent.name,
                             shown - started)
            client.set_terminated(parent_id, status="FINISHED", end_time=max(_now_ms(), parent.start_ms))
        except BaseException:
            _fail(client, parent_id)
            raise
        _save_view(client, exp_id)
    done = LoggedFamily(exp_id, parent_id, 1 + len(children), round(time.perf_counter() - started, 3),
                        round(locked - waiting, 3))
    log.info("MLflow: %r and its %d runs logged in %.1f s", parent.name, len(children), done.seconds)
    return done


@contextlib.contextmanager
def ui_server(uri: str) -> Iterator[str]:
    """`mlflow ui` on the store `uri`, on a free local port, for as long as the block runs; yields its base
    URL once it answers (for screenshots and browser tests)."""
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)

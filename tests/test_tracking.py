"""MLflow logging, on real SQLite stores under tmp_path and real processes for kills: a store whose
creation is killed at any point is absent or whole, a half-migrated store is rebuilt or refused with
one message, a family is FINISHED only when whole (FAILED when its logging died or raised), runs keep
their own times, a run is one log_batch, and the links open the training-runs page."""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recopt import tracking
from recopt.config import Config
from recopt.errors import RecoptError
from tests.conftest import chromium_dom, ROOT, tmp_config, tool_env


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return tmp_config(tmp_path)


def db(cfg: Config) -> Path:
    return Path(cfg.paths.mlflow_uri.removeprefix("sqlite:///"))


def family(n: int = 3, metrics: int = 5, tmp: Path | None = None) -> tuple[tracking.RunRecord, list[tracking.RunRecord]]:
    """A parent and `n` children, child i running from 1000*i+1 to 1000*i+500 (ms since the epoch + 1e12)."""
    base = 1_700_000_000_000
    files = []
    if tmp is not None:
        (tmp / "files").mkdir(exist_ok=True)
        for name in ("slices.csv", "per_user.parquet"):
            files.append(tmp / "files" / name)
            files[-1].write_text(name)
    kids = [tracking.RunRecord(f"child {i}", base + 1000 * i + 1, base + 1000 * i + 500,
                               params={"alpha": i / 10, "fold": "tune"},
                               metrics={f"m{j}@10": i + j / 100 for j in range(metrics)},
                               tags={tracking.SWEEP_TAG: "s", "recopt.run": f"alpha={i}"}, artifacts=files)
            for i in range(n)]
    return tracking.RunRecord("parent", base, base + 1, params={"alpha": 0.5}, metrics={"recall@10": 0.3},
                              tags={tracking.SWEEP_TAG: "s"}, artifacts=files), kids


def runs_of(cfg: Config) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.evaluate.experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)


def assert_family_logged(cfg: Config, parent_id: str, children: int) -> None:
    runs = {r.info.run_id: r for r in runs_of(cfg)}
    kids = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert runs[parent_id].info.status == "FINISHED"
    assert len(kids) == children and {r.info.status for r in kids} == {"FINISHED"}


# --------------------------------------------------------------------------- kills during store creation

# Runs log_family in a real process that SIGKILLs itself at one point of the store's creation:
#   tables    MLflow's initial tables are about to be created (before any migration)
#   migration alembic is about to rename `_alembic_tmp_<table>` into place, inside a batch migration
#             (MLflow 3.17's fourth migration step): the state that broke every later run
#   step      the 20th migration step has run and alembic is about to record it
#   swap      the store is complete under its temporary name, just before it is renamed into place
#   swapped   just after the rename, before the experiment exists
# With `legacy`, the store is created the way recopt did before: MlflowClient straight on the target.
KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.conftest import tmp_config
from recopt import tracking
point, tmp, legacy = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "legacy"
cfg = tmp_config(tmp)
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "tables":
    import mlflow.store.db.utils as u
    u._initialize_tables = lambda engine: die()
elif point == "migration":
    from alembic.ddl.impl import DefaultImpl
    real = DefaultImpl.rename_table
    def rename(self, old, new, *a, **kw):
        if old.startswith("_alembic_tmp_"):
            die()
        return real(self, old, new, *a, **kw)
    DefaultImpl.rename_table = rename
elif point == "step":
    from alembic.runtime.migration import HeadMaintainer
    real, calls = HeadMaintainer.update_to_step, []
    def step(self, s):
        calls.append(s)
        if len(calls) == 20:
            die()
        return real(self, s)
    HeadMaintainer.update_to_step = step
else:
    real = os.replace
    def replace(src, dst):
        if point == "swap" and ".creating-" in str(src):
            die()
        real(src, dst)
        if point == "swapped":
            die()
    tracking.os.replace = replace
if legacy:
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=cfg.paths.mlflow_uri).search_experiments()
else:
    tracking.log_family(cfg, tracking.RunRecord("never", 1, 2), [], None)
print("not killed")
"""


def kill_while_creating(tmp: Path, point: str, legacy: bool = False) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER.format(root=str(ROOT)), point, str(tmp),
                           "legacy" if legacy else "new"], cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("point", ["tables", "migration", "step", "swap", "swapped"])
def test_a_store_creation_killed_anywhere_leaves_no_store_or_a_whole_one_and_the_next_log_logs_everything(
        tmp_path: Path, cfg: Config, point: str) -> None:
    kill_while_creating(tmp_path, point)
    path = db(cfg)
    if point == "swapped":
        assert tracking._store_problem(path) == (None, 0)  # complete, renamed into place before the kill
    else:
        assert not path.exists()
        assert list(path.parent.glob(".mlflow.db.creating-*"))  # the killed creator's file, never the store
    parent, kids = family(3, tmp=tmp_path)
    done = tracking.log_family(cfg, parent, kids, None)
    assert_family_logged(cfg, done.parent_id, 3)
    assert not list(path.parent.glob(".mlflow.db.creating-*"))


@pytest.mark.parametrize("point", ["migration", "step"])
def test_a_store_left_half_migrated_by_an_older_recopt_is_rebuilt_when_it_holds_no_run(
        tmp_path: Path, cfg: Config, point: str, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    kill_while_creating(tmp_path, point, legacy=True)
    problem, runs = tracking._store_problem(db(cfg))
    assert problem is not None and runs == 0
    if point == "migration":  # the reported fault: MLflow itself cannot open it any more
        assert "_alembic_tmp_" in problem
        proc = subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                               "MlflowClient(tracking_uri=sys.argv[1]).search_experiments()", cfg.paths.mlflow_uri],
                              env=tool_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "sqlite3.OperationalError" in proc.stderr
    with caplog.at_level(logging.WARNING, logger="recopt"):
        done = tracking.log_family(cfg, *family(2), None)
    assert "holds no run, so it is rebuilt" in caplog.text
    assert_family_logged(cfg, done.parent_id, 2)
    assert tracking._store_problem(db(cfg)) == (None, 3)
    MlflowClient(tracking_uri=cfg.paths.mlflow_uri).search_experiments()


def test_a_legacy_store_killed_before_its_tables_is_rebuilt_quietly(tmp_path: Path, cfg: Config) -> None:
    kill_while_creating(tmp_path, "tables", legacy=True)
    assert db(cfg).exists() and tracking._store_problem(db(cfg)) == (tracking.EMPTY, 0)
    done = tracking.log_family(cfg, *family(1), None)
    assert_family_logged(cfg, done.parent_id, 1)


@pytest.mark.parametrize(("damage", "sql", "problem"), [
    ("leftover", "CREATE TABLE _alembic_tmp_experiments (x INTEGER)",
     r"a schema migration was interrupted \(alembic left _alembic_tmp_experiments\)"),
    ("old revision", "UPDATE alembic_version SET version_num = '451aebb31d03'",
     r"its schema revision is 451aebb31d03, this MLflow's is \w+"),
    ("dropped table", "DROP TABLE latest_metrics", r"it lacks the tables latest_metrics")])
def test_a_broken_store_holding_runs_stops_with_one_message_and_is_left_as_it_was(
        cfg: Config, damage: str, sql: str, problem: str) -> None:
    tracking.log_family(cfg, *family(2), None)
    con = sqlite3.connect(db(cfg))
    with con:
        con.execute(sql)
    con.close()
    before = db(cfg).read_bytes()
    with pytest.raises(RecoptError, match=rf"^MLflow store \S*mlflow\.db \(paths\.mlflow_uri\) cannot be used: {problem}, "
                                          r"and it holds 3 runs.*`mlflow db upgrade sqlite:///\S*mlflow\.db`.*"
                                          r"\(`mv \S*mlflow\.db \S*mlflow\.db\.broken`\)"):
        tracking.log_family(cfg, *family(1), None)
    assert db(cfg).read_bytes() == before


def test_a_file_that_is_not_a_store_is_refused(cfg: Config) -> None:
    db(cfg).parent.mkdir(parents=True)
    db(cfg).write_text("not sqlite " * 100)
    with pytest.raises(RecoptError, match=r"mlflow\.db \(paths\.mlflow_uri\) is not a readable SQLite file"):
        tracking.log_family(cfg, *family(1), None)


def test_creating_a_store_prints_no_mlflow_or_alembic_chatter(tmp_path: Path, cfg: Config) -> None:
    proc = subprocess.run([sys.executable, "-c", f"import sys, logging; sys.path.insert(0, {str(ROOT)!r}); "
                           "logging.basicConfig(level=logging.INFO); "
                           "from tests.conftest import tmp_config; from recopt import tracking; "
                           f"tracking.log_family(tmp_config(__import__('pathlib').Path({str(tmp_path)!r})), "
                           "tracking.RunRecord('x', 1, 2), [], None)"],
                          cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "MLflow: 'x' and its 0 runs logged" in out  # recopt's own INFO line does show
    assert "Creating initial MLflow database tables" not in out and "Running upgrade" not in out
    assert "Updating database tables" not in out


# --------------------------------------------------------------------------- families


# Logs a family of 5 in a real process that SIGKILLs itself when it is about to create the 4th child.
KILL_MID_FAMILY = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from mlflow.tracking import MlflowClient
from tests.conftest import tmp_config
from tests.test_tracking import family
from recopt import tracking
cfg = tmp_config(Path(sys.argv[1]))
real, made = MlflowClient.create_run, []
def create_run(self, *a, **kw):
    made.append(1)
    if len(made) == 5:  # the parent and 3 children exist
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **kw)
MlflowClient.create_run = create_run
tracking.log_family(cfg, *family(5), None)
"""


def test_a_parent_killed_while_logging_is_never_finished_and_is_failed_by_the_next_log(
        tmp_path: Path, cfg: Config) -> None:
    proc = subprocess.run([sys.executable, "-c", KILL_MID_FAMILY.format(root=str(ROOT)), str(tmp_path)], cwd=ROOT,
                          env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    runs = runs_of(cfg)
    parent = next(r for r in runs if r.info.run_name == "parent")
    assert parent.info.status == "RUNNING"  # half-logged: never FINISHED
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id) == \
        ["child 0", "child 1", "child 2"]
    done = tracking.log_family(cfg, *family(1), None)
    after = {r.info.run_id: r for r in runs_of(cfg)}
    assert after[parent.info.run_id].info.status == "FAILED"
    assert_family_logged(cfg, done.parent_id, 1)


def test_a_child_whose_logging_raises_is_failed_and_so_is_its_parent(cfg: Config) -> None:
    parent, kids = family(3)
    kids[1].params["bad?name"] = "1"  # MLflow rejects '?' in a param name
    with pytest.raises(Exception, match="bad\\?name"):
        tracking.log_family(cfg, parent, kids, None)
    status = {r.info.run_name: r.info.status for r in runs_of(cfg)}
    assert status == {"parent": "FAILED", "child 0": "FINISHED", "child 1": "FAILED"}


def test_a_left_running_run_of_a_dead_process_is_failed_children_too(cfg: Config) -> None:
    from mlflow.tracking import MlflowClient

    tracking.log_family(cfg, tracking.RunRecord("first", 1, 2), [], None)
    client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.evaluate.experiment).experiment_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tags = {"recopt.host": socket.gethostname(), "recopt.pid": str(dead.pid)}
    orphan = client.create_run(exp, run_name="orphan", tags=tags)
    kid = client.create_run(exp, run_name="orphan kid", tags={**tags, "mlflow.parentRunId": orphan.info.run_id})
    tracking.log_family(cfg, tracking.RunRecord("second", 3, 4), [], None)
    assert {client.get_run(r.info.run_id).info.status for r in (orphan, kid)} == {"FAILED"}


def test_each_run_keeps_its_own_times_and_the_parent_spans_to_its_last_child(cfg: Config) -> None:
    parent, kids = family(3)
    before = int(time.time() * 1000)
    done = tracking.log_family(cfg, parent, kids, None)
    after = int(time.time() * 1000)
    runs = {r.info.run_name: r.info for r in runs_of(cfg)}
    for k in kids:
        assert (runs[k.name].start_time, runs[k.name].end_time) == (k.start_ms, k.end_ms)
    assert runs["parent"].start_time == parent.start_ms and before <= runs["parent"].end_time <= after
    assert done.parent_id == runs["parent"].run_id and done.runs == 4 and 0 < done.seconds < 120


def test_a_run_is_one_log_batch_with_every_metric_param_and_tag(cfg: Config, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    calls: list[tuple[int, int, int]] = []
    real = MlflowClient.log_batch

    def spy(self, run_id, metrics=(), params=(), tags=(), **kw):  # type: ignore[no-untyped-def]
        calls.append((len(metrics), len(params), len(tags)))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    parent, kids = family(2, metrics=300, tmp=tmp_path)
    kids[0].params |= {f"p{i}": i for i in range(97)}
    kids[1].params |= {f"p{i}": i for i in range(150)}  # over MLflow's 100 params per call
    kids[1].metrics |= {f"extra{i}": i for i in range(900)}  # 1200 metrics: over 1000 per call
    tracking.log_family(cfg, parent, kids, tracking.DatasetInfo("ds", "data/split", "ab" * 20))
    assert calls[:2] == [(1, 1, 2), (300, 99, 3)]  # parent, child 0: everything at once
    assert len(calls) == 4 and all(m <= 1000 and p <= 100 and t <= 100 and m + p + t <= 1000 for m, p, t in calls)
    got = {r.info.run_name: r for r in runs_of(cfg)}
    assert len(got["child 1"].data.metrics) == 1200 and len(got["child 1"].data.params) == 152
    assert got["child 0"].data.metrics["m3_at_10"] == pytest.approx(0.03)
    assert got["child 0"].data.tags["recopt.run"] == "alpha=0" and "recopt.git_commit" in got["child 0"].data.tags
    assert [i.dataset.name for i in got["child 1"].inputs.dataset_inputs] == ["ds"]
    client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    for name in ("parent", "child 1"):
        assert sorted(a.path for a in client.list_artifacts(got[name].info.run_id)) == ["per_user.parquet", "slices.csv"]


def test_batches_respect_mlflows_caps() -> None:
    batches = list(tracking._batches(list(range(2500)), list(range(230)), list(range(5))))
    assert [(len(m), len(p), len(t)) for m, p, t in batches] == [(895, 100, 5), (900, 100, 0), (705, 30, 0)]
    assert [x for m, _, _ in batches for x in m] == list(range(2500))


def test_logging_many_runs_says_how_far_it_got(cfg: Config, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tracking, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="recopt"):
        tracking.log_family(cfg, *family(3), None)
    lines = [r.getMessage() for r in caplog.records if r.name == "recopt"]
    assert lines[0].startswith("MLflow: 1 of 3 runs of 'parent' logged (")
    assert lines[1].startswith("MLflow: 2 of 3 runs") and lines[2].startswith("MLflow: 'parent' and its 3 runs logged in")


# --------------------------------------------------------------------------- the UI


def test_the_experiment_and_every_printed_link_ask_for_the_training_runs_view(cfg: Config) -> None:
    from mlflow.tracking import MlflowClient

    done = tracking.log_family(cfg, *family(1), None)
    exp = MlflowClient(tracking_uri=cfg.paths.mlflow_uri).get_experiment_by_name(cfg.evaluate.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # what MLflow's UI maps to machine_learning
    assert tracking.ui_url(cfg) == (f"http://127.0.0.1:5000/#/experiments/{done.experiment_id}/runs"
                                    "?workflowType=machine_learning&viewStateShareKey=recopt")
    assert tracking.run_url(done.experiment_id, done.parent_id).endswith(
        f"/#/experiments/{done.experiment_id}/runs/{done.parent_id}?workflowType=machine_learning")


def test_the_printed_links_open_the_training_runs_page_in_a_browser(tmp_path: Path, cfg: Config) -> None:
    """The links recopt prints open the training-runs page and a run as a training run. A bare
    experiment link opens on the GenAI overview in MLflow <= 3.18's UI whatever the store says (it
    goes by the browser's remembered sidebar switch); MLflow's next UI follows the experiment's kind tag."""
    import mlflow
    from packaging.version import Version

    parent, kids = family(2)
    done = tracking.log_family(cfg, parent, kids, None)
    with tracking.ui_server(cfg.paths.mlflow_uri) as host:
        page = chromium_dom(tracking.ui_url(cfg, host))
        assert f'href="#/experiments/{done.experiment_id}/runs/{done.parent_id}"' in page  # the runs table
        assert ">Runs<" in page and "Evaluation runs" not in page
        run = chromium_dom(tracking.run_url(done.experiment_id, done.parent_id, host))
        assert 'data-testid="experiment-observatory-link-runs"' in run
        assert ">Runs<" in run and ">Evaluations<" not in run
        bare = chromium_dom(f"{host}/#/experiments/{done.experiment_id}")
        follows_tag = Version(mlflow.__version__) > Version("3.18.0")
        assert ("Evaluation runs" not in bare) == follows_tag, "MLflow's UI changed how it picks the experiment page"

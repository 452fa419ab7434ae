"""The bad-input catalogue: every case a user can hit stops with one clean message naming the file,
the column or line (or the key) and the fix, exits with status 2, and changes nothing under data/.

Cases run the real stage entry points (`python -m stages.<name> --params ...`) in-process, so the
catalogue stays fast; test_clean_errors_in_real_processes checks the same path as real processes,
`dvc repro` included."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import runpy
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml

from stages._entry import compose
from tests.conftest import ML_SMALL, ROOT, STAGE_DIRS, copy_repo, tool_env

ROWS = [[str(u), str(m), "4.0" if (u + m) % 3 else "2.5", str(1_000_000_000 + 1000 * (u * 50 + m))]
        for u in range(1, 41) for m in range(1, 31) if (u * 7 + m) % 4]
RATINGS = "userId,movieId,rating,timestamp\n" + "".join(",".join(r) + "\n" for r in ROWS)


def ratings_with(line: int, column: int, value: str, extra: bool = False) -> str:
    """RATINGS with one field of file line `line` (header = line 1) replaced (or a field added)."""
    rows = [list(r) for r in ROWS]
    row = rows[line - 2]
    if extra:
        row.append(value)
    else:
        row[column] = value
    return "userId,movieId,rating,timestamp\n" + "".join(",".join(r) + "\n" for r in rows)
def ratings_of(pairs: list[tuple[int, int]]) -> str:
    """A ratings file of these (user, movie) pairs, each rated 4.0, in order of time."""
    return "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},4.0,{1_000_000_000 + i}\n"
                                                          for i, (u, m) in enumerate(pairs))


def zipped(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, text)
    return buf.getvalue()


MOVIES = "movieId,title,genres\n" + "".join(f"{m},Movie {m} (19{50 + m}),Drama|Comedy\n" for m in range(1, 31))
TAGS = "userId,movieId,tag,timestamp\n1,1,funny,1000000100\n2,3,dark,1000000200\n"


def ml_folder(root: Path, **files: str | bytes | None) -> Path:
    """A small valid MovieLens folder, with some files replaced (None deletes one)."""
    folder = root / "ml"
    folder.mkdir(parents=True, exist_ok=True)
    contents: dict[str, str | bytes | None] = {"ratings.csv": RATINGS, "movies.csv": MOVIES, "tags.csv": TAGS}
    contents |= {k.replace("_", "."): v for k, v in files.items()}
    for name, content in contents.items():
        if content is None:
            continue
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def path_overrides(root: Path) -> list[str]:
    """Every path under `root` (the stages' folders under root/data), as overrides."""
    return [*(f"paths.{k}={root}/data/{k}" for k in STAGE_DIRS), f"paths.mlflow_uri=sqlite:///{root}/mlruns/mlflow.db",
            f"paths.mlflow_artifacts={root}/mlruns/artifacts"]


def params_file(root: Path, *overrides: str, edit: Callable[[dict], None] | None = None) -> Path:
    raw = compose([*path_overrides(root), "candidates.batch_users=64", *overrides])
    if edit is not None:
        edit(raw)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def snapshot(root: Path) -> dict[str, str]:
    data = root / "data"
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and "runs" not in p.relative_to(data).parts[:1]} \
        if data.exists() else {}


def run_stage(stage: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`python -m stages.<stage> <argv>` in this process: (exit code, stderr)."""
    old = sys.argv
    sys.argv = [f"stages/{stage}.py", *argv]
    code = 0
    try:
        runpy.run_module(f"stages.{stage}", run_name="__main__", alter_sys=False)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def _mix(text: str, every: int, times: int) -> str:
    lines = text.splitlines()
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        f = line.split(",")
        if i % every == 0:
            f[-1] = str(int(f[-1]) * times)
        out.append(",".join(f))
    return "\n".join(out) + "\n"


@dataclass
class Case:
    id: str
    stage: str
    expect: list[str]                     # regexes the message must match (file, column/line/key, fix)
    files: dict[str, str | bytes | None] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    edit: Callable[[dict], None] | None = None
    prepare: str | None = None            # a built state: "split" (ingest + split) or "built" (up to candidates)
    mutate: Callable[[Path], None] | None = None
    argv: tuple[str, ...] = ()
    own_path: bool = False                # data.path is given by the case, not the generated folder
    run_first: tuple[str, ...] = ()       # stages to run (successfully) before the one under test


def _set(path: str, value: object) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        *parents, last = path.split(".")
        d = raw
        for p in parents:
            d = d[p]
        d[last] = value
    return edit


def _first_bytes_flip(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        p = root / "data" / rel
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))
    return mutate


def _remove(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        target = root / "data" / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return mutate


def _add_file(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / "data" / rel).write_bytes(b"left over")
    return mutate


ML = "data=movielens"
CASES = [
    # ---- the MovieLens folder
    Case("missing-ratings", "ingest", [r"ratings\.csv: required file is missing", r"fix: point to a MovieLens"],
         {"ratings_csv": None}, (ML,)),
    Case("missing-movies", "ingest", [r"movies\.csv: required file is missing"], {"movies_csv": None}, (ML,)),
    Case("empty-ratings", "ingest", [r"ratings\.csv: file is empty", r"header line 'userId,movieId,rating,timestamp'"],
         {"ratings_csv": ""}, (ML,)),
    Case("header-only", "ingest", [r"ratings\.csv.*has no rows", r"provide at least one ratings row"],
         {"ratings_csv": "userId,movieId,rating,timestamp\n"}, (ML,)),
    Case("renamed-column", "ingest", [r"column 'userId'.*found 'user_id'", r"rename column 'user_id' to 'userId'"],
         {"ratings_csv": RATINGS.replace("userId", "user_id", 1)}, (ML,)),
    Case("missing-column", "ingest", [r"column 'timestamp': is missing", r"add column 'timestamp'"],
         {"ratings_csv": "\n".join(",".join(l.split(",")[:3]) for l in RATINGS.splitlines()) + "\n"}, (ML,)),
    Case("word-rating", "ingest", [r"column 'rating'.*'four' \(line 3\)", r"fix:"],
         {"ratings_csv": ratings_with(3, 2, "four")}, (ML,)),
    Case("rating-out-of-range", "ingest", [r"column 'rating'.*outside \[0\.5, 5\.0\].*line", r"keep 'rating' within"],
         {"ratings_csv": ratings_with(5, 2, "7.0")}, (ML,)),
    Case("ten-point-scale", "ingest", [r"column 'rating'.*0-10|column 'rating'.*10-point|column 'rating'.*outside"],
         {"ratings_csv": RATINGS.replace(",4.0,", ",8.0,").replace(",2.5,", ",6.0,")}, (ML,)),
    Case("negative-timestamp", "ingest", [r"column 'timestamp': 1 negative value\(s\) at line\(s\) 9", r"fix:"],
         {"ratings_csv": ratings_with(9, 3, "-5")}, (ML,)),
    Case("mixed-seconds-ms", "ingest", [r"ratings\.csv: column 'timestamp': mixes units", r"milliseconds",
                                        r"fix: write every timestamp as unix seconds"],
         {"ratings_csv": _mix(RATINGS, 50, 1000)}, (ML,)),
    Case("tags-mixed-units", "ingest", [r"tags\.csv: column 'timestamp': mixes units"],
         {"tags_csv": "userId,movieId,tag,timestamp\n1,1,a,1000000100\n2,3,b,1000000200000\n"}, (ML,)),
    Case("semicolons", "ingest", [r"ratings\.csv: the file is separated by ';', not ','", r"re-save it comma-separated"],
         {"ratings_csv": RATINGS.replace(",", ";")}, (ML,)),
    Case("tabs", "ingest", [r"ratings\.csv: the file is separated by (TAB|'\\t'|tabs)", r"comma-separated"],
         {"ratings_csv": RATINGS.replace(",", "\t")}, (ML,)),
    Case("latin1", "ingest", [r"movies\.csv: is not UTF-8: line 3", r"iconv -f latin1 -t utf-8"],
         {"movies_csv": MOVIES.replace("Movie 2 ", "Amélie 2 ").encode("latin-1")}, (ML,)),
    Case("extra-field", "ingest", [r"ratings\.csv: cannot be parsed: .*line 4 has 5", r"fix: make every line hold"],
         {"ratings_csv": ratings_with(4, 0, "9", extra=True)}, (ML,)),
    Case("open-quote", "ingest", [r"movies\.csv: cannot be parsed.*quote.*line", r"fix:"],
         {"movies_csv": MOVIES.replace("Movie 5 (1955)", '"Movie 5 (1955)', 1)}, (ML,)),
    Case("repeated-header", "ingest", [r"ratings\.csv: the header line is repeated at line\(s\) 6", r"fix:"],
         {"ratings_csv": "\n".join(RATINGS.splitlines()[:5] + [RATINGS.splitlines()[0]] + RATINGS.splitlines()[5:])
          + "\n"}, (ML,)),
    Case("empty-user", "ingest", [r"column 'userId': 1 missing value\(s\) at line\(s\) 3", r"fill in 'userId'"],
         {"ratings_csv": ratings_with(3, 0, "")}, (ML,)),
    Case("duplicate-movie", "ingest", [r"movies\.csv: column 'movieId': 2 row\(s\) share a key", r"keep one row"],
         {"movies_csv": MOVIES + "3,Again (1999),Drama\n"}, (ML,)),
    Case("fractional-user", "ingest", [r"column 'userId'.*1\.5", r"valid Int32"],
         {"ratings_csv": ratings_with(3, 0, "1.5")}, (ML,)),
    Case("missing-title-column", "ingest", [r"movies\.csv: column 'title': is missing", r"add column 'title'"],
         {"movies_csv": "movieId,genres\n1,Drama\n"}, (ML,)),
    Case("utf16", "ingest", [r"ratings\.csv.*UTF-16", r"fix:"], {"ratings_csv": RATINGS.encode("utf-16")}, (ML,)),
    Case("bare-cr", "ingest", [r"ratings\.csv.*(CR|carriage)", r"fix:"],
         {"ratings_csv": RATINGS.replace("\n", "\r")}, (ML,)),
    Case("no-folder", "ingest", [r"/nowhere: is not a folder", r"fix: point to a MovieLens folder"],
         overrides=("data=movielens", "data.path=/nowhere"), own_path=True),
    Case("dat-with-commas", "ingest", [r"ratings\.dat", r"'::'"],
         {"ratings_csv": None, "movies_csv": None, "tags_csv": None,
          "ratings_dat": "1,1,4,100\n", "movies_dat": "1::A (1999)::Drama\n"}, (ML,)),
    Case("providers-duplicate", "ingest", [r"providers\.csv: 2 row\(s\) share a key \(movieId, provider\)",
                                           r"keep one row"],
         {"providers_csv": "movieId,provider\n1,netflix\n1,netflix\n"}, (ML,)),
    Case("providers-missing-column", "ingest", [r"providers\.csv: column 'provider': is missing"],
         {"providers_csv": "movieId\n1\n"}, (ML,)),
    Case("bad-release", "ingest", [r"data\.release: must be a plain name"],
         overrides=("data=download", "data.release=../../etc")),
    # ---- the configuration
    Case("alpha-nan", "evaluate", [r"alpha: must be a finite number, got nan", r"Fix the value"],
         edit=_set("alpha", float("nan")), argv=("--fold", "tune")),
    Case("weight-nan", "evaluate", [r"rerank\.w_quality: must be a finite number"],
         edit=_set("rerank.w_quality", float("nan")), argv=("--fold", "tune")),
    Case("threshold-nan", "split", [r"relevance_threshold: must be a finite number"],
         edit=_set("relevance_threshold", float("nan"))),
    Case("threshold-inf", "split", [r"relevance_threshold: must be a finite number, got inf"],
         edit=_set("relevance_threshold", float("inf"))),
    Case("grid-duplicate", "evaluate", [r"evaluate\.alphas\[2\]: 0\.35 is listed twice"],
         edit=_set("evaluate.alphas", [0.35, 0.5, 0.35]), argv=("--fold", "tune")),
    Case("alpha-out-of-range", "evaluate", [r"alpha: 1\.5 must be <= 1\.0"], edit=_set("alpha", 1.5),
         argv=("--fold", "tune")),
    Case("unknown-key", "split", [r"surprise: unknown key"], edit=_set("surprise", 1)),
    Case("zero-test-frac", "split", [r"split\.test_frac: 0\.0 must be > 0\.0"], edit=_set("split.test_frac", 0.0)),
    Case("weights-over-one", "evaluate", [r"rerank\.w_quality \+ w_recency \+ w_provider: must be <= 1"],
         edit=_set("rerank.w_quality", 0.99), argv=("--fold", "tune")),
    Case("ks-without-10", "evaluate", [r"evaluate\.ks: must contain 10"], edit=_set("evaluate.ks", [5, 20]),
         argv=("--fold", "tune")),
    Case("string-for-int", "cf_load", [r"cf_load\.factors: expected an integer, got 'ten'"],
         edit=_set("cf_load.factors", "ten"), argv=("--fold", "test")),
    Case("bad-fold", "candidates", [r"--fold: expected one of tune, test"], argv=("--fold", "validation")),
    # ---- the pipeline's own artifacts
    Case("nothing-relevant", "split", [r"relevance_threshold: no test rating is >= 4\.0 \(its ratings range 2\.5 \.\. "
                                       r"3\.0\)", r"lower relevance_threshold"],
         {"ratings_csv": RATINGS.replace(",4.0,", ",3.0,")}, (ML,), run_first=("ingest",)),
    Case("split-missing", "embed_load", [r"embed_load@test: its input split@test .* does not exist",
                                         r"dvc repro split"], overrides=("data.preset=tiny",), prepare="ingest",
         argv=("--fold", "test")),
    Case("changed-embedding", "candidates", [r"candidates@test: its input embed_load@test .* does not match its "
                                             r"manifest: embeddings\.npy was changed", r"dvc repro embed-load@test"],
         overrides=("data.preset=tiny",), prepare="built", mutate=_first_bytes_flip("embed_load/test/embeddings.npy"),
         argv=("--fold", "test")),
    Case("interrupted-cf", "candidates", [r"cf_load@tune .* is incomplete: no manifest\.json",
                                          r"dvc repro cf-load@tune"],
         overrides=("data.preset=tiny",), prepare="built", mutate=_remove("cf_load/tune/manifest.json"),
         argv=("--fold", "tune")),
    Case("leftover-pool", "evaluate", [r"candidates@tune .* unlisted file\(s\) pools/part-00099\.parquet",
                                       r"dvc repro candidates@tune"],
         overrides=("data.preset=tiny",), prepare="built", mutate=_add_file("candidates/tune/pools/part-00099.parquet"),
         argv=("--fold", "tune")),
    Case("test-before-tune", "evaluate", [r"evaluate@test: its input evaluate@tune .* does not exist",
                                          r"dvc repro evaluate@tune"],
         overrides=("data.preset=tiny",), prepare="built", argv=("--fold", "test")),
    Case("truncated-users", "evaluate", [r"candidates@tune .* users\.parquet has \d+ bytes, the manifest says",
                                         r"dvc repro candidates@tune"],
         overrides=("data.preset=tiny",), prepare="built",
         mutate=lambda root: (root / "data/candidates/tune/users.parquet").write_bytes(
             (root / "data/candidates/tune/users.parquet").read_bytes()[:-10]), argv=("--fold", "tune")),
    Case("unwritable-output", "split", [r"paths\.split=.*/data/split/test: .*/data/split is an existing file",
                                        r"fix: set paths\.split to a new or empty folder"],
         overrides=("data.preset=tiny",), prepare="ingest",  # (root ignores chmod: a file where the folder goes)
         mutate=lambda root: (root / "data/split").write_text("not a folder")),
    Case("built-with-other-params", "evaluate",
         [r"evaluate@tune: its input candidates@tune was built with candidates\.c_max=\d+ \(the config now has 300\)",
          r"dvc repro candidates@tune"],
         overrides=("data.preset=tiny", "candidates.c_max=300"), prepare="built", argv=("--fold", "tune")),
    Case("seed-changed-upstream", "candidates", [r"candidates@test: its input \w+ was built with seed=42 \(the "
                                                 r"config now has 7\)", r"re-run `dvc repro"],
         overrides=("data.preset=tiny", "seed=7"), prepare="built", argv=("--fold", "test")),
    Case("precomputed-missing", "embed_load", [r"vectors\.npy: does not exist", r"fix embed_load\.vectors"],
         overrides=("data.preset=tiny", "embed_load.encoder=precomputed", "embed_load.vectors=/nope/vectors.npy"),
         prepare="split", argv=("--fold", "test")),
    # ---- the real cause: compressed files, a missing header line, data sets too degenerate to split
    Case("gzip-named-csv", "ingest", [r"ratings\.csv: is gzip-compressed, not text", r"rename it to ratings\.csv\.gz, "
                                      r"which is read as it is, or decompress it: gunzip -c < ratings\.csv"],
         {"ratings_csv": gzip.compress(RATINGS.encode())}, (ML,)),
    Case("bzip2-named-csv", "ingest", [r"movies\.csv: is bzip2-compressed, not text", r"fix: decompress it: bunzip2"],
         {"movies_csv": bz2.compress(MOVIES.encode())}, (ML,)),
    Case("xz-named-csv", "ingest", [r"ratings\.csv: is xz-compressed, not text", r"fix: decompress it: unxz"],
         {"ratings_csv": lzma.compress(RATINGS.encode())}, (ML,)),
    Case("zip-named-csv", "ingest", [r"tags\.csv: is zip-compressed, not text", r"fix: decompress it: unzip -p"],
         {"tags_csv": zipped("tags.csv", TAGS)}, (ML,)),
    Case("gz-name-on-text", "ingest", [r"ratings\.csv\.gz: is named \.gz but is not gzip-compressed",
                                       r"rename it without \.gz"],
         {"ratings_csv": None, "ratings_csv_gz": RATINGS}, (ML,)),
    Case("gz-cut-short", "ingest", [r"ratings\.csv\.gz: is a damaged gzip file", r"fix: download or compress it again"],
         {"ratings_csv": None, "ratings_csv_gz": gzip.compress(RATINGS.encode())[:-40]}, (ML,)),
    Case("no-header-line", "ingest", [r"ratings\.csv: line 1 is not the header line 'userId,movieId,rating,timestamp': it "
                                      rf"reads '{','.join(ROWS[0])}', a row of values",
                                      r"fix: add the header line userId,movieId,rating,timestamp as line 1"],
         {"ratings_csv": RATINGS.split("\n", 1)[1]}, (ML,)),
    Case("movies-no-header-line", "ingest", [r"movies\.csv: line 1 is not the header line 'movieId,title,genres'"],
         {"movies_csv": MOVIES.split("\n", 1)[1]}, (ML,)),
    Case("one-movie-only", "split", [r"no user has a rating to hold out for test: each of the 40 users has a single "
                                     r"rating, and a user needs >= 2", r"fix: use data in which users have rated"],
         {"ratings_csv": ratings_of([(u, 1) for u in range(1, 41)])}, (ML,), run_first=("ingest",)),
    Case("one-rating-each", "split", [r"no user has a rating to hold out for test: each of the 40 users has a single"],
         {"ratings_csv": ratings_of([(u, u % 30 + 1) for u in range(1, 41)])}, (ML,), run_first=("ingest",)),
    Case("two-ratings-each", "split", [r"no user has a rating to hold out for validation: each of the 40 users has a "
                                       r"single train rating \(of the test fold\)", r"split\.test_frac"],
         {"ratings_csv": ratings_of([(u, m) for u in range(1, 41) for m in (1, 2)])}, (ML,), run_first=("ingest",)),
    Case("no-rating-after-the-cutoff", "split", [r"the test fold is empty: split\.strategy=temporal_global holds out "
                                                 rf"none of the {len(ROWS):,} ratings \(40 of 40 users have >= 2\)",
                                                 r"fix: use split\.strategy=temporal_user"],
         {"ratings_csv": "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},1000000000\n" for u, m, r, _ in ROWS)},
         (ML, "split.strategy=temporal_global", "split.cold_user_frac=0"), run_first=("ingest",)),
]


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built data folders to copy per case: after ingest, after split, up to candidates."""
    from recopt.config import read_params
    from recopt.ingest import ingest
    from recopt.split import run_split
    from tests.conftest import build_folds

    out = {}
    root = tmp_path_factory.mktemp("state")
    cfg = read_params(params_file(root, "data.preset=tiny"))
    ingest(cfg)
    out["ingest"] = root / "after-ingest"
    shutil.copytree(root / "data", out["ingest"])
    run_split(cfg)
    out["split"] = root / "after-split"
    shutil.copytree(root / "data", out["split"])
    build_folds(cfg)
    out["built"] = root / "data"
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_cleanly_and_changes_nothing(case: Case, tmp_path: Path, states: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    overrides = list(case.overrides)
    if ML in overrides and not case.own_path:
        overrides.append(f"data.path={ml_folder(tmp_path, **case.files)}")
    params = params_file(tmp_path, *overrides, edit=case.edit)
    if case.prepare:
        shutil.copytree(states[case.prepare], tmp_path / "data")
    for stage in case.run_first:
        assert run_stage(stage, ["--params", str(params)], capsys)[0] == 0
    if case.mutate:
        case.mutate(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_stage(case.stage, ["--params", str(params), *case.argv], capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    for pattern in case.expect:
        assert re.search(pattern, err, re.S), f"{pattern!r} not in:\n{err}"
    assert snapshot(tmp_path) == before, "the failed stage changed files under data/"
    leftovers = [p for p in (tmp_path / "data").rglob(".*staging*")] if (tmp_path / "data").exists() else []
    assert not leftovers


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def test_clean_errors_in_real_processes(tmp_path: Path) -> None:
    """The same one-message exit from real `python -m` processes, from Hydra mode and through `dvc repro`."""
    folder = ml_folder(tmp_path, ratings_csv=RATINGS.replace(",", ";"))
    params = params_file(tmp_path, ML, f"data.path={folder}")
    env = tool_env()
    proc = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(params)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "separated by ';'" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "alpha=nan"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "alpha: must be a finite number" in proc.stderr
    assert "Traceback" not in proc.stderr
    repo = copy_repo(tmp_path / "repo")
    proc = subprocess.run(["dvc", "exp", "run", "-S", "data=movielens", "-S", f"data.path={folder}"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "separated by ';'" in text and "Traceback" not in text
    proc = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(params)], cwd=ROOT,
                          env={**env, "RECOPT_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr  # the debug switch shows it
    for override, message in (("evaluate.alphaz=1", r"Could not override 'evaluate\.alphaz'"),
                              ("data=nosuch", r"Could not find 'data/nosuch'"), ("alpha=[", r"alpha=\[: ")):
        proc = subprocess.run([sys.executable, "-m", "stages.compose", override], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and re.search(message, proc.stderr) and "Traceback" not in proc.stderr


def test_ml_latest_small_reads_after_each_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real release passes every check (the catalogue's rules do not reject real data)."""
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip("ml-latest-small not available")
    params = params_file(tmp_path, ML, f"data.path={ML_SMALL}")
    code, err = run_stage("ingest", ["--params", str(params)], capsys)
    assert code == 0, err
    assert pl.read_parquet(tmp_path / "data/ingest/ratings.parquet").height == 100_836


# ---- where recopt writes: a stage replaces only nothing, an empty folder or its own artifact; no output is
# equal to, inside or around an input or another output; with --params every output is inside the repository.
# Each case is a real process; every file under the case's folder (the user's files, the repository, the built
# artifacts) and next to it must be byte-identical afterwards, and nothing may be added.


def tree(root: Path) -> dict[str, str]:
    """Every file (sha256), folder and link under `root`."""
    found = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        found[rel] = ("link:" + str(p.readlink()) if p.is_symlink() else "dir" if p.is_dir()
                      else hashlib.sha256(p.read_bytes()).hexdigest())
    return found


def user_files(root: Path) -> None:
    """A user's things next to the pipeline: a MovieLens folder, a folder of notes, a file, a link."""
    ml_folder(root)
    (root / "user" / "sub").mkdir(parents=True)
    (root / "user" / "notes.txt").write_text("my notes\n")
    (root / "user" / "sub" / "more.txt").write_text("more\n")
    (root / "file.txt").write_text("a file\n")
    (root / "link").symlink_to(root / "user")
    (root / "conf").mkdir()  # the repository's own folder (params mode: the folder of the params file)
    (root / "conf" / "config.yaml").write_text("seed: 1\n")


@dataclass
class Where:
    id: str
    stage: str
    expect: list[str]
    overrides: Callable[[Path], list[str]]   # given the case's folder
    hydra: bool = False                       # Hydra mode (`key=value` on the command line), else --params
    argv: tuple[str, ...] = ()
    prepare: str | None = None                # a built state copied to data/ first
    setup: Callable[[Path], None] | None = None


def _ml(root: Path) -> list[str]:
    return [ML, f"data.path={root}/ml"]


WHERE = [
    Where("ingest-over-its-input", "ingest", [r"paths\.ingest=\S*/ml is the same path as data\.path=\S*/ml",
                                              r"paths\.ingest=\S*/ml is a folder recopt did not write \(it holds "
                                              r"movies\.csv, ratings\.csv, tags\.csv and no ingest manifest\.json\)",
                                              r"fix: set paths\.ingest to a new or empty folder"],
          lambda r: [*_ml(r), f"paths.ingest={r}/ml"]),
    Where("ingest-over-a-user-folder", "ingest", [r"paths\.ingest=\S*/user is a folder recopt did not write \(it "
                                                  r"holds notes\.txt, sub/ and no ingest manifest\.json\)",
                                                  r"fix: set paths\.ingest to a new or empty folder, or move"],
          lambda r: [f"paths.ingest={r}/user", "data.preset=tiny"]),
    Where("ingest-onto-a-file", "ingest", [r"paths\.ingest=\S*/file\.txt is an existing file",
                                           r"fix: set paths\.ingest to a new or empty folder"],
          lambda r: [f"paths.ingest={r}/file.txt", "data.preset=tiny"]),
    Where("ingest-onto-a-link", "ingest", [r"paths\.ingest=\S*/link \(\S*/user\) is a symbolic link",
                                           r"fix: set paths\.ingest to a new or empty folder"],
          lambda r: [f"paths.ingest={r}/link", "data.preset=tiny"]),
    Where("ingest-inside-its-input", "ingest", [r"paths\.ingest=\S*/ml/out is inside data\.path=\S*/ml — fix: set "
                                                r"paths\.ingest to a folder of its own"],
          lambda r: [*_ml(r), f"paths.ingest={r}/ml/out"]),
    Where("ingest-around-its-input", "ingest", [r"paths\.ingest=\S*/box contains data\.path=\S*/box/ml"],
          lambda r: [ML, f"data.path={r}/box/ml", f"paths.ingest={r}/box"],
          setup=lambda r: shutil.copytree(r / "ml", r / "box" / "ml")),
    Where("ingest-over-downloads", "ingest", [r"paths\.ingest=\S*/data/downloads is the same path as "
                                              r"paths\.downloads"],
          lambda r: ["data=download", "data.release=ml-latest-small", f"paths.ingest={r}/data/downloads"]),
    Where("ingest-inside-the-repository-conf", "ingest", [r"paths\.ingest=\S*/conf/ingest is inside the "
                                                          r"repository's \S*/conf"],
          lambda r: [f"paths.ingest={r}/conf/ingest", "data.preset=tiny"]),
    Where("ingest-around-the-params-file", "ingest", [r"paths\.ingest=\S+ contains the repository's \S*/params\.yaml"],
          lambda r: [f"paths.ingest={r}", "data.preset=tiny"]),
    Where("ingest-outside-the-repository", "ingest", [r"paths\.ingest=\S*-outside/ingest is outside the repository",
                                                      r"fix: set paths\.ingest to a folder inside the repository"],
          lambda r: [f"paths.ingest={r}-outside/ingest", "data.preset=tiny"]),
    Where("runs-over-the-input", "ingest", [r"paths\.runs=\S*/ml is the same path as data\.path"],
          lambda r: [*_ml(r), f"paths.runs={r}/ml"]),
    Where("runs-onto-a-file", "ingest", [r"paths\.runs=\S*/file\.txt is an existing file"],
          lambda r: [f"paths.runs={r}/file.txt", "data.preset=tiny"]),
    Where("split-inside-ingest", "split", [r"paths\.split=\S*/data/ingest/test is inside paths\.ingest=\S*/data/ingest"],
          lambda r: [f"paths.split={r}/data/ingest", "data.preset=tiny"], prepare="ingest"),
    Where("own-artifact-with-a-user-file", "ingest", [r"paths\.ingest=\S*/data/ingest holds files its ingest manifest "
                                                      r"does not list, which recopt did not write: notes\.txt"],
          lambda r: ["data.preset=tiny"], prepare="ingest",
          setup=lambda r: (r / "data/ingest/notes.txt").write_text("mine\n")),
    Where("cf-load-over-embeddings", "cf_load", [r"paths\.cf_load=\S*/data/embed_load/test holds the artifact of "
                                                 r"embed_load@test, not of cf_load@test",
                                                 r"paths\.cf_load=\S*/data/embed_load/test is the same path as "
                                                 r"paths\.embed_load"],
          lambda r: [f"paths.cf_load={r}/data/embed_load", "data.preset=tiny"], argv=("--fold", "test"),
          prepare="built"),
    Where("precomputed-vectors-in-the-output", "embed_load",
          [r"paths\.embed_load=\S*/data/embed_load/test contains embed_load\.vectors=\S*/embeddings\.npy"],
          lambda r: ["data.preset=tiny", "embed_load.encoder=precomputed",
                     f"embed_load.vectors={r}/data/embed_load/test/embeddings.npy"], argv=("--fold", "test"),
          prepare="built"),
    Where("metrics-inside-the-input", "evaluate", [r"paths\.metrics=\S*/ml/metrics is inside data\.path"],
          lambda r: [*_ml(r), f"paths.metrics={r}/ml/metrics"], argv=("--fold", "tune")),
    Where("checkpoints-in-an-artifact", "evaluate", [r"paths\.checkpoints=\S*/data/candidates/tune is the same path "
                                                     r"as paths\.candidates"],
          lambda r: [f"paths.checkpoints={r}/data/candidates/tune", "data.preset=tiny"], argv=("--fold", "tune"),
          prepare="built"),
    Where("mlflow-artifacts-over-the-input", "evaluate", [r"paths\.mlflow_artifacts=\S*/ml is the same path as "
                                                          r"data\.path"],
          lambda r: [*_ml(r), f"paths.mlflow_artifacts={r}/ml"], argv=("--fold", "tune")),
    Where("mlflow-store-in-the-input", "evaluate", [r"paths\.mlflow_uri=\S*/ml is the same path as data\.path"],
          lambda r: [*_ml(r), f"paths.mlflow_uri=sqlite:///{r}/ml/mlflow.db"], argv=("--fold", "tune")),
    Where("hydra-ingest-over-its-input", "ingest", [r"paths\.ingest=\S*/ml is the same path as data\.path"],
          lambda r: [*_ml(r), f"paths.ingest={r}/ml"], hydra=True),
    Where("hydra-run-dir-in-the-input", "ingest", [r"hydra\.run\.dir=\S*/ml/run is inside data\.path=\S*/ml"],
          lambda r: [*_ml(r), f"hydra.run.dir={r}/ml/run"], hydra=True),
    Where("hydra-sweep-dir-in-an-artifact", "evaluate", [r"hydra\.sweep\.dir=\S*/data/evaluate/tune is the same "
                                                         r"path as paths\.evaluate"],
          lambda r: ["alpha=0.3,0.4", "data.preset=tiny", f"hydra.sweep.dir={r}/data/evaluate/tune"],
          hydra=True, argv=("-m",)),
    Where("hydra-metrics-onto-a-file", "evaluate", [r"paths\.metrics=\S*/file\.txt is an existing file"],
          lambda r: ["alpha=0.5", f"paths.metrics={r}/file.txt", "data.preset=tiny"], hydra=True),
]


@pytest.mark.parametrize("case", WHERE, ids=[c.id for c in WHERE])
def test_an_output_recopt_may_not_write_is_refused_before_any_work(case: Where, tmp_path: Path,
                                                                   states: dict[str, Path]) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    user_files(root)
    if case.prepare:
        shutil.copytree(states[case.prepare], root / "data")
    if case.setup:
        case.setup(root)
    overrides = case.overrides(root)
    if case.hydra:
        args = [*case.argv, *path_overrides(root), f"hydra.run.dir={root}/hydra-run", *overrides]
    else:
        args = ["--params", str(params_file(root, *overrides)), *case.argv]
    before = tree(tmp_path)
    proc = subprocess.run([sys.executable, "-m", f"stages.{case.stage}", *args], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for pattern in case.expect:
        assert re.search(pattern, proc.stderr), f"{pattern!r} not in:\n{proc.stderr}"
    assert tree(tmp_path) == before, "the refused stage changed, added or removed files"


def test_an_empty_folder_is_written_and_a_users_leftover_lookalikes_are_kept(tmp_path: Path,
                                                                              states: dict[str, Path]) -> None:
    """Rules (b) and (d): an empty folder is an output; the leftover staging folder of a dead run is removed,
    and nothing else whose name merely resembles one (a file, another pattern, a live process's folder)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ingest").mkdir()
    leftover = tmp_path / "data" / f".ingest.staging-{dead}-0123abcd"
    leftover.mkdir()
    (leftover / "ratings.parquet").write_bytes(b"half")
    kept = [tmp_path / "data" / f".ingest.old-{dead}-notes", tmp_path / "data" / f".ingest.staging-{dead}-0123abcd.d",
            tmp_path / "data" / f".ingest.old-{os.getpid()}-0123abcd", tmp_path / "data" / f".ingest.old-{dead}-89abcdef"]
    for p in kept[:3]:
        p.mkdir()
        (p / "x").write_text("mine\n")
    kept[3].write_text("mine\n")
    params = params_file(tmp_path, "data.preset=tiny")
    proc = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(params)], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "data/ingest/manifest.json").is_file()
    assert not leftover.exists()
    assert all(p.exists() for p in kept) and all((p / "x").read_text() == "mine\n" for p in kept[:3])


def test_dvc_refuses_an_output_outside_the_repository_before_the_stage_runs(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    outside = tmp_path / "outside"
    proc = subprocess.run(["dvc", "exp", "run", "-S", "data.preset=tiny", "-S", f"paths.ingest={outside}/ingest",
                           "ingest"], cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text[-3000:]
    assert re.search(r"paths\.ingest=\S*/outside/ingest is outside the repository", text), text[-3000:]
    assert not outside.exists(), "the stage wrote outside the repository"


def test_a_stage_called_in_process_refuses_a_users_folder_before_reading_its_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's own entry (recopt.ingest.ingest, as tests and notebooks call it) checks its output first too."""
    from recopt import ingest as ingest_module
    from recopt.config import ConfigError, read_params

    user_files(tmp_path)
    before = tree(tmp_path)
    cfg = read_params(params_file(tmp_path, "data.preset=tiny", f"paths.ingest={tmp_path}/user"))
    read = []
    monkeypatch.setattr(ingest_module, "load_source", lambda c: read.append(c))
    with pytest.raises(ConfigError, match=r"ingest: refuses to replace its output folder:\n  paths\.ingest=\S*/user is "
                                          r"a folder recopt did not write"):
        ingest_module.ingest(cfg)
    assert not read, "the stage read its input before checking its output"
    assert {k: v for k, v in tree(tmp_path).items() if k != "params.yaml"} == before


def test_a_gzipped_file_is_read_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ratings.csv.gz (and movies.csv.gz) give exactly the tables ratings.csv and movies.csv give."""
    tables = {}
    for kind, files in (("plain", {}), ("gz", {"ratings_csv": None, "ratings_csv_gz": gzip.compress(RATINGS.encode()),
                                               "movies_csv": None, "movies_csv_gz": gzip.compress(MOVIES.encode())})):
        root = tmp_path / kind
        params = params_file(root, ML, f"data.path={ml_folder(root, **files)}")
        code, err = run_stage("ingest", ["--params", str(params)], capsys)
        assert code == 0, err
        tables[kind] = {n: pl.read_parquet(root / f"data/ingest/{n}.parquet") for n in ("ratings", "movies")}
    assert all(tables["gz"][n].equals(tables["plain"][n]) for n in ("ratings", "movies"))
    assert tables["gz"]["ratings"].height == len(ROWS)


def run_real(stage: str, params: Path) -> str:
    """`python -m stages.<stage> --params <params>` in a real process, which must succeed: its stderr."""
    proc = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--params", str(params)], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_implausible_input_is_counted_and_warned(tmp_path: Path) -> None:
    """Valid but implausible values are kept, counted in the manifest and printed as warnings: 2 ratings in the
    year 2100, 3 off the half-star grid, a NUL byte in a title and in a tag; a split leaving train a small share."""
    rows = [list(r) for r in ROWS]
    for r in rows[:2]:
        r[3] = "4102444800"
    for r in rows[5:8]:
        r[2] = "3.7"
    ratings = "userId,movieId,rating,timestamp\n" + "".join(",".join(r) + "\n" for r in rows)
    folder = ml_folder(tmp_path, ratings_csv=ratings, movies_csv=MOVIES.replace("Movie 3 ", "Mov\0ie 3 "),
                       tags_csv=TAGS.replace("dark", "da\0rk"))
    params = params_file(tmp_path, ML, f"data.path={folder}", "split.strategy=leave_last_n", "split.leave_last_n=15",
                         "split.cold_user_frac=0")
    err = run_real("ingest", params)
    summary = json.loads((tmp_path / "data/ingest/manifest.json").read_text())["summary"]
    assert summary["implausible"] == {"future_timestamps": 2, "ratings_off_half_star_grid": 3, "nul_bytes_in_text": 2}
    for line in ("2 timestamp(s) more than a day in the future", "3 rating(s) off the half-star grid",
                 "2 text value(s) holding a NUL byte"):
        assert f"WARNING ingest: {line}" in err and line in "\n".join(summary["warnings"])
    assert ((pl.read_parquet(tmp_path / "data/ingest/ratings.parquet")["rating"] - 3.7).abs() < 1e-5).sum() == 3
    err = run_real("split", params)
    test = json.loads((tmp_path / "data/split/test/manifest.json").read_text())["summary"]
    n_train = sum(n - min(15, n - 1) for n in Counter(r[0] for r in ROWS).values())  # by hand: each user's first
    share = n_train / len(ROWS)
    assert test["counts"]["train_share"] == round(share, 4) and share < 0.5
    warning = (f"split@test: train keeps only {share:.1%} of the {len(ROWS):,} ratings ({len(ROWS) - n_train:,} held "
               "out for test, split.strategy=leave_last_n)")
    assert f"WARNING {warning}" in err and test["warnings"][0].startswith(warning)
    assert "lower split.leave_last_n" in test["warnings"][0]


def test_plausible_input_warns_of_nothing(tmp_path: Path) -> None:
    params = params_file(tmp_path, ML, f"data.path={ml_folder(tmp_path)}")
    for stage in ("ingest", "split"):
        err = run_real(stage, params)
        assert "WARNING" not in err, err
    summary = json.loads((tmp_path / "data/ingest/manifest.json").read_text())["summary"]
    assert summary["implausible"] == dict.fromkeys(summary["implausible"], 0) and summary["warnings"] == []


OVERRIDE_ERRORS = [("alpa=0.5", r"Could not override 'alpa'"), ("alpha=[", r"alpha=\[: no viable alternative"),
                   ("data=nosuch", r"Could not find 'data/nosuch'"),
                   ("data.path=/tmp/a\nb", r"the override 'data\.path=/tmp/a\\nb' holds a newline"),
                   ("alpha=abc", r"alpha: expected a number, got 'abc'"),
                   ("alpha=${nope}", r"Interpolation key 'nope' not found")]


@pytest.mark.parametrize("stage", ["ingest", "split", "embed_load", "cf_load", "candidates", "evaluate"])
def test_every_override_error_is_one_message_for_every_stage(stage: str, tmp_path: Path) -> None:
    """An unknown key, bad syntax, an unknown group option, a newline, a bad value: one message, exit 2, nothing
    written (not even Hydra's run folder)."""
    for override, message in OVERRIDE_ERRORS:
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}", f"hydra.run.dir={tmp_path}/run", override],
                              cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (override, proc.stderr[-3000:])
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, (override, proc.stderr[-3000:])
        assert re.search(message, proc.stderr), (override, proc.stderr)
        lines = proc.stderr.splitlines()  # one message: recopt's, none of Hydra's
        assert sum(line.startswith("error: ") for line in lines) == 1 and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not list(tmp_path.iterdir())

"""Artifact I/O shared by the stages: parquet/npy writes, manifests, timings, memory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

log = logging.getLogger("recopt")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed(label: str, timings: dict[str, float]) -> Iterator[None]:
    """Record the wall seconds of a block into `timings[label]` and log it with peak memory."""
    start = time.perf_counter()
    yield
    timings[label] = round(time.perf_counter() - start, 3)
    log.info("%s: %.2f s (peak RSS %.0f MiB)", label, timings[label], peak_rss_mb())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON atomically (tmp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path, compression="zstd", statistics=True)


def file_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of `paths` (in the given order): a content fingerprint."""
    h = hashlib.sha256()
    for p in paths:
        with Path(p).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def run_stats(timings: dict[str, float], started: float) -> dict[str, Any]:
    """The timing/memory block every manifest carries."""
    return {"wall_s": round(time.perf_counter() - started, 3), "steps_s": timings,
            "peak_rss_mb": round(peak_rss_mb(), 1)}

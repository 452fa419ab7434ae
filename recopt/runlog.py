"""Run facts: the logger, step timings and peak memory (never part of an artifact's content)."""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager
from typing import Iterator

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

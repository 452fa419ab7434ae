"""Run facts: the logger, step timings and peak memory (never part of an artifact's content)."""

from __future__ import annotations

import logging
import resource
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

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


class Progress:
    """Progress of `total` steps: a bar on a terminal (left on screen when done, so a log line never
    follows it on the same line); elsewhere (a log file, a pipe) a log line at most every `every` seconds
    and one at the end, so no phase is silent and no line is glued to a bar."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done, self.started, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, mininterval=1)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            self._line()

    def _line(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        log.info("%s: %d%s %s, %.1f s", self.desc, self.done, of, self.unit, time.perf_counter() - self.started)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

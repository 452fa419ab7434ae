"""Per-stage random generators, all derived from the one root `seed`."""

from __future__ import annotations

import zlib

import numpy as np


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """An independent generator for `stage`; the same (seed, stage) gives the same stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stage.encode())]))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_integers(seed: int, stage: str, keys: np.ndarray, width: int, high: int) -> np.ndarray:
    """(len(keys), width) integers in [0, high), a pure function of (seed, stage, key, column).

    Counter-based (splitmix64), so a user's draws do not depend on which batch or worker
    draws them.
    """
    base = np.uint64(np.random.SeedSequence([seed, zlib.crc32(stage.encode())]).generate_state(1, np.uint64)[0])
    with np.errstate(over="ignore"):
        counters = (np.asarray(keys, dtype=np.uint64)[:, None] << np.uint64(24)) | np.arange(width, dtype=np.uint64)
        bits = _splitmix64(counters ^ base)
    return ((bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53) * high).astype(np.int64)

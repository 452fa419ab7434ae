"""Per-stage random generators, all derived from the one root `seed`."""

from __future__ import annotations

import zlib

import numpy as np


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """An independent generator for `stage`; the same (seed, stage) gives the same stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stage.encode())]))

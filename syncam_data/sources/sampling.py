"""Choosing frame sets from one posed sequence: overlapping views that are not near-duplicates.

SynCamMaster samples n frames of one static scene whose frame indices are at
most 100 apart so the views overlap. A set here is chosen by:

1. an anchor frame drawn uniformly (it becomes the set's first view);
2. the candidate window: frames after the anchor whose *gap position* is at
   most ``max_gap`` beyond it, so the set's span (last minus first) never
   exceeds ``max_gap``;
3. candidates visited in random order, each kept when it is distinct from
   every view kept so far: relative angle (between optical axes) at least
   ``min_angle_deg``, or, when ``min_baseline`` is set, camera centres at least
   that far apart (in the source's pose units);
4. repeated until ``sets_per_sequence`` different sets are found or the
   attempt budget runs out.

The gap position is what ``max_gap`` is measured in; the readers supply it
(RealEstate10K: video frame number from the timestamp, or the pose-line index;
DL3DV: the frame file number). The random generator is seeded from
``(seed, sequence id)``, so a sequence gets the same sets whatever the order,
the worker or the engine that processes it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """Frame-set selection settings (see the module docstring)."""

    views: int = 4
    max_gap: int = 100
    sets_per_sequence: int = 1
    min_angle_deg: float = 2.0
    min_baseline: float | None = None
    seed: int = 0
    attempts_per_set: int = 200

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views must be at least 1, got {self.views}")
        if self.max_gap < 0:
            raise ValueError(f"max gap must be >= 0, got {self.max_gap}")
        if self.sets_per_sequence < 1:
            raise ValueError(f"sets per sequence must be at least 1, got {self.sets_per_sequence}")
        if not 0 <= self.min_angle_deg <= 180:
            raise ValueError(f"min angle must be in [0, 180] degrees, got {self.min_angle_deg}")
        if self.min_baseline is not None and self.min_baseline < 0:
            raise ValueError(f"min baseline must be >= 0, got {self.min_baseline}")
        if self.attempts_per_set < 1:
            raise ValueError("attempts per set must be at least 1")


class TooShortError(ValueError):
    """The sequence has fewer usable frames than views requested."""


def sequence_rng(seed: int, sequence_id: str) -> np.random.Generator:
    """A generator that depends only on the seed and the sequence id (not on run order)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(sequence_id.encode("utf-8"))])


def pairwise_distinct(c2w: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """(N, N) bool: frames i and j are far enough apart in angle or baseline to both be in a set."""
    z = c2w[:, :, 2] / np.linalg.norm(c2w[:, :, 2], axis=1, keepdims=True)
    cos = np.clip(z @ z.T, -1.0, 1.0)
    ok = cos <= math.cos(math.radians(cfg.min_angle_deg)) + 1e-12
    if cfg.min_baseline is not None:
        t = c2w[:, :, 3]
        dist = np.linalg.norm(t[:, None, :] - t[None, :, :], axis=-1)
        ok |= dist >= cfg.min_baseline
    np.fill_diagonal(ok, False)
    return ok


def choose_frame_sets(
    gap_positions: np.ndarray, c2w: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """Up to ``cfg.sets_per_sequence`` distinct sets of ``cfg.views`` entry indices (each sorted).

    ``gap_positions`` (N,) must be strictly increasing; ``c2w`` is (N, 3, 4).
    Raises TooShortError when N < views. Returns fewer sets (possibly none)
    when the rules cannot be met often enough.
    """
    pos = np.asarray(gap_positions, dtype=np.int64)
    n = len(pos)
    if n < cfg.views:
        raise TooShortError(f"{n} frame(s) for {cfg.views} view(s)")
    if np.any(np.diff(pos) <= 0):
        raise ValueError("gap positions must be strictly increasing")
    # Window ends: the last entry each anchor may reach without exceeding max_gap.
    window_end = np.searchsorted(pos, pos + cfg.max_gap, side="right")
    distinct = pairwise_distinct(np.asarray(c2w, dtype=np.float64), cfg) if cfg.views > 1 else None
    found: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    budget = cfg.attempts_per_set * cfg.sets_per_sequence
    for _ in range(budget):
        if len(found) >= cfg.sets_per_sequence:
            break
        anchor = int(rng.integers(n))
        chosen = _grow_set(anchor, int(window_end[anchor]), distinct, cfg.views, rng)
        if chosen is not None and chosen not in seen:
            seen.add(chosen)
            found.append(chosen)
    return found


def _grow_set(
    anchor: int, end: int, distinct: np.ndarray | None, views: int, rng: np.random.Generator
) -> tuple[int, ...] | None:
    if views == 1:
        return (anchor,)
    candidates = np.arange(anchor + 1, end)
    if len(candidates) < views - 1:
        return None
    chosen = [anchor]
    for j in rng.permutation(candidates):
        if all(distinct[j, k] for k in chosen):
            chosen.append(int(j))
            if len(chosen) == views:
                return tuple(sorted(chosen))
    return None


def check_frame_set(gap_positions: np.ndarray, c2w: np.ndarray, chosen: tuple[int, ...], cfg: SamplingConfig) -> None:
    """Raise ValueError unless ``chosen`` obeys the span and distinctness rules (used by tests and --check)."""
    pos = np.asarray(gap_positions)[list(chosen)]
    if pos.max() - pos.min() > cfg.max_gap:
        raise ValueError(f"set spans {pos.max() - pos.min()} > max gap {cfg.max_gap}")
    if len(chosen) > 1:
        sub = pairwise_distinct(np.asarray(c2w, dtype=np.float64)[list(chosen)], cfg)
        np.fill_diagonal(sub, True)
        if not sub.all():
            raise ValueError("set holds near-duplicate views (below min angle and min baseline)")

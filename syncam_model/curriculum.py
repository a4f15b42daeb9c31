"""Relative-angle curriculum and view selection (DESIGN.md Contract 1 and 4).

The window of allowed angles between each chosen view and view 0 widens as
training goes on (paper: 0-60 deg for steps 0-10k, 30-90 deg for 10k-20k,
60-120 deg after). Selection works on poses from the shard index only, so a
step's views are planned without reading any media.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from syncam_model.config import CurriculumConfig


@dataclass(frozen=True)
class Window:
    lo: float
    hi: float

    def contains(self, angle: np.ndarray | float) -> np.ndarray | bool:
        return (angle >= self.lo - 1e-6) & (angle <= self.hi + 1e-6)


class AngleSchedule:
    """Step -> angle window, piecewise constant over the configured stages."""

    def __init__(self, cfg: CurriculumConfig) -> None:
        self.starts = [s.start_step for s in cfg.schedule]
        self.windows = [Window(s.min_angle, s.max_angle) for s in cfg.schedule]

    def stage(self, step: int) -> int:
        return int(np.searchsorted(self.starts, step, side="right") - 1)

    def window(self, step: int) -> Window:
        return self.windows[self.stage(step)]


def optical_axes(c2ws: np.ndarray) -> np.ndarray:
    """(n, 12) row-major c2w -> (n, 3) unit optical axes (camera +z in world)."""
    z = np.asarray(c2ws, dtype=np.float64).reshape(-1, 3, 4)[:, :, 2]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def angle_matrix(c2ws: np.ndarray) -> np.ndarray:
    """Pairwise angles (degrees) between optical axes; same as ``syncam_data.cameras.relative_angle``."""
    z = optical_axes(c2ws)
    return np.degrees(np.arccos(np.clip(z @ z.T, -1.0, 1.0)))


def partners(angles: np.ndarray, ref: int, window: Window) -> np.ndarray:
    """Views (other than ``ref``) whose angle to ``ref`` lies in the window."""
    ok = window.contains(angles[ref])
    ok[ref] = False
    return np.flatnonzero(ok)


def feasible(angles: np.ndarray, n: int, window: Window) -> bool:
    """Can some view 0 find ``n - 1`` partners in the window?"""
    if n <= 1:
        return angles.shape[0] >= 1
    counts = (window.contains(angles) & ~np.eye(angles.shape[0], dtype=bool)).sum(axis=1)
    return bool((counts >= n - 1).any())


def select_views(angles: np.ndarray, n: int, window: Window | None, rng: np.random.Generator) -> list[int] | None:
    """Pick ``n`` distinct views: a random view 0, then ``n - 1`` random views whose angle to it lies in ``window``.

    ``window=None`` picks any ``n`` distinct views. Returns None when no view 0
    has enough partners (the caller skips the group for this step).
    """
    m = angles.shape[0]
    if n > m:
        return None
    if window is None:
        return [int(i) for i in rng.permutation(m)[:n]]
    for ref in rng.permutation(m):
        cand = partners(angles, int(ref), window)
        if len(cand) >= n - 1:
            rest = rng.choice(cand, size=n - 1, replace=False) if n > 1 else np.empty(0, int)
            return [int(ref)] + [int(i) for i in rest]
    return None


def pairs_in_window(angles: np.ndarray, views: Sequence[int], window: Window) -> bool:
    """Every chosen view's angle to view 0 lies in the window (used by tests and sanity checks)."""
    a = angles[views[0], list(views[1:])]
    return bool(np.all(window.contains(a)))

"""Relative-angle curriculum and view selection (docs/cameras.md and docs/train.md: Contracts 1 and 4).

The window of allowed angles between each chosen view and view 0 widens as
training goes on (paper: 0-60 deg for steps 0-10k, 30-90 deg for 10k-20k,
60-120 deg after). By default only the angles to view 0 are constrained, so two
other views may differ by up to twice the window's maximum; ``pairwise`` puts
every pair of chosen views in the window (the official Wan trainer samples two
views, where both readings agree). Selection works on poses from the shard
index only, so a step's views are planned without reading any media.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# Bound on the search for n mutually compatible views (pairwise mode): groups have tens of cameras and n is small,
# so the bound is reached only by groups that have (almost) no such set; they are skipped like infeasible ones.
MAX_SEARCH_NODES = 20_000


def feasible(angles: np.ndarray, n: int, window: Window, pairwise: bool = False) -> bool:
    """Can some view 0 find ``n - 1`` partners in the window (with ``pairwise``: partners also in the window of each other)?"""
    if n <= 1:
        return angles.shape[0] >= 1
    ok = window.contains(angles) & ~np.eye(angles.shape[0], dtype=bool)
    if not pairwise:
        return bool((ok.sum(axis=1) >= n - 1).any())
    return _compatible_set(ok, n, order=np.arange(angles.shape[0]), rng=None) is not None


def select_views(
    angles: np.ndarray, n: int, window: Window | None, rng: np.random.Generator, pairwise: bool = False
) -> list[int] | None:
    """Pick ``n`` distinct views: a random view 0, then ``n - 1`` random views whose angle to it lies in ``window``.

    With ``pairwise`` every pair of the chosen views lies in the window, not only
    the pairs with view 0 (``curriculum.pairwise``). ``window=None`` picks any
    ``n`` distinct views. Returns None when no such set exists (the caller skips
    the group for this step).
    """
    m = angles.shape[0]
    if n > m:
        return None
    if window is None:
        return [int(i) for i in rng.permutation(m)[:n]]
    if pairwise and n > 2:
        ok = window.contains(angles) & ~np.eye(m, dtype=bool)
        return _compatible_set(ok, n, order=rng.permutation(m), rng=rng)
    for ref in rng.permutation(m):
        cand = partners(angles, int(ref), window)
        if len(cand) >= n - 1:
            rest = rng.choice(cand, size=n - 1, replace=False) if n > 1 else np.empty(0, int)
            return [int(ref)] + [int(i) for i in rest]
    return None


def _compatible_set(ok: np.ndarray, n: int, order: np.ndarray, rng: np.random.Generator | None) -> list[int] | None:
    """``n`` views, every pair marked ``ok`` (a clique), found by depth-first search in random order; view 0 first.

    Candidates are visited in ``rng``'s order at each level, so every such set can
    come out; ``rng=None`` gives a deterministic existence check.
    """
    nodes = 0

    def extend(chosen: list[int], cand: np.ndarray) -> list[int] | None:
        nonlocal nodes
        if len(chosen) == n:
            return chosen
        if len(chosen) + len(cand) < n:
            return None
        for v in cand if rng is None else rng.permutation(cand):
            nodes += 1
            if nodes > MAX_SEARCH_NODES:
                return None
            rest = cand[ok[v, cand]]
            found = extend(chosen + [int(v)], rest)
            if found is not None:
                return found
        return None

    for ref in order:
        ref = int(ref)
        found = extend([ref], np.flatnonzero(ok[ref]))
        if found is not None:
            return found
        if nodes > MAX_SEARCH_NODES:
            return None
    return None

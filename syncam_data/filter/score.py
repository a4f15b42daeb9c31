"""Camera motion vs subject motion from point tracks, and the keep/reject decision.

For every pair of consecutive sampled frames, a RANSAC homography fitted on
background tracks is the camera's motion; its size is the mean displacement
it induces over a grid covering the frame. A track's residual is how far it
lands from where the homography sends it: motion of the subject itself.

Both are expressed in **frame diagonals per second** (pixels / diagonal x
sampled fps), so a score does not depend on resolution or frame rate:

- ``camera_motion``: mean over frame pairs of the homography displacement.
- ``subject_motion``: the ``subject_percentile`` percentile of per-track mean
  residual speeds over the foreground: candidate tracks (inside subject masks
  with SAM, all tracks with the grid) that are outliers with residual speed
  above ``foreground_min_speed``; when fewer than ``min_foreground_tracks``
  such tracks exist, over all candidates (so a handful of noisy tracks cannot
  make a still scene look alive).

The raw per-pair camera values and per-track speeds are stored, so decisions
can be recomputed with new thresholds (``--rescore``) without tracking again.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from syncam_data.filter.settings import FilterSettings

MIN_HOMOGRAPHY_POINTS = 8


@dataclass
class MotionScores:
    camera_per_pair: np.ndarray  # (T-1,) float32 diagonals/s, NaN where no homography could be fitted
    track_speed: np.ndarray  # (N,) float32 mean residual diagonals/s per track, NaN if never tracked over a pair
    track_candidate: np.ndarray  # (N,) bool: may belong to a subject (inside a mask, or any track without masks)
    inlier_fraction: float  # share of visible background tracks that fit the homographies

    @property
    def num_tracks(self) -> int:
        return int(np.isfinite(self.track_speed).sum())


def _frame_grid(w: int, h: int, n: int = 8) -> np.ndarray:
    xs = (np.arange(n) + 0.5) * w / n
    ys = (np.arange(n) + 0.5) * h / n
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64).reshape(-1, 1, 2)


def _apply(hmat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(pts.reshape(-1, 1, 2).astype(np.float64), hmat).reshape(-1, 2)


def score_tracks(
    tracks: np.ndarray,
    visible: np.ndarray,
    labels: np.ndarray,
    fps: float,
    width: int,
    height: int,
    ransac_threshold_px: float = 1.0,
) -> MotionScores:
    """Per-pair camera motion and per-track residual speed; see the module docstring."""
    t_len, n = visible.shape
    diag = float(np.hypot(width, height))
    to_speed = fps / diag  # pixels per sampled pair -> diagonals per second
    grid = _frame_grid(width, height)
    camera = np.full(max(0, t_len - 1), np.nan, np.float32)
    resid_sum = np.zeros(n, np.float64)
    resid_cnt = np.zeros(n, np.int64)
    inliers = tested = 0
    background = labels == 0
    for t in range(t_len - 1):
        both = visible[t] & visible[t + 1]
        fit = both & background
        if fit.sum() < MIN_HOMOGRAPHY_POINTS:
            fit = both  # too little background (SAM masks cover it): fall back to every track
        if fit.sum() < MIN_HOMOGRAPHY_POINTS:
            continue
        p0, p1 = tracks[t, fit].astype(np.float64), tracks[t + 1, fit].astype(np.float64)
        hmat, mask = cv2.findHomography(p0, p1, cv2.RANSAC, ransac_threshold_px, maxIters=500, confidence=0.995)
        if hmat is None or not np.isfinite(hmat).all():
            continue
        inliers += int(mask.sum())
        tested += len(mask)
        moved = _apply(hmat, grid) - grid.reshape(-1, 2)
        camera[t] = float(np.linalg.norm(moved, axis=1).mean() * to_speed)
        idx = np.nonzero(both)[0]
        pred = _apply(hmat, tracks[t, idx])
        resid = np.linalg.norm(tracks[t + 1, idx] - pred, axis=1)
        resid_sum[idx] += resid
        resid_cnt[idx] += 1
    speed = np.full(n, np.nan, np.float32)
    has = resid_cnt > 0
    speed[has] = (resid_sum[has] / resid_cnt[has] * to_speed).astype(np.float32)
    candidate = labels > 0 if (labels > 0).any() else np.ones(n, bool)
    return MotionScores(camera, speed, candidate, inliers / tested if tested else 0.0)


def camera_motion(camera_per_pair: np.ndarray) -> float | None:
    vals = np.asarray(camera_per_pair, np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if len(vals) else None


def subject_motion(
    track_speed: np.ndarray, track_candidate: np.ndarray, percentile: float, foreground_min_speed: float, min_foreground_tracks: int
) -> float | None:
    speed = np.asarray(track_speed, np.float64)
    cand = np.asarray(track_candidate, bool) & np.isfinite(speed)
    if not cand.any():
        return None
    pool = speed[cand]
    foreground = pool[pool > foreground_min_speed]
    if len(foreground) >= min_foreground_tracks:
        pool = foreground
    return float(np.percentile(pool, percentile))


@dataclass
class Decision:
    status: str  # kept | rejected
    reason: str  # "" when kept
    camera_motion: float | None
    subject_motion: float | None


def decide(
    s: FilterSettings,
    width: int,
    height: int,
    duration_s: float,
    scene_cut_score: float | None,
    camera_per_pair: np.ndarray,
    track_speed: np.ndarray,
    track_candidate: np.ndarray,
) -> Decision:
    """Keep/reject from raw measurements; the checks run cheapest and most certain first."""
    cam = camera_motion(camera_per_pair)
    subj = subject_motion(track_speed, track_candidate, s.subject_percentile, s.foreground_min_speed, s.min_foreground_tracks)

    def reject(reason: str) -> Decision:
        return Decision("rejected", reason, cam, subj)

    if min(width, height) < s.min_short_side:
        return reject("too_small")
    if duration_s < s.min_duration_s:
        return reject("too_short")
    if scene_cut_score is not None and scene_cut_score > s.scene_cut_threshold:
        return reject("scene_cut")
    if cam is None or subj is None:
        return reject("no_tracks")
    if cam > s.camera_threshold:
        return reject("camera_moves")
    if subj < s.threshold:
        return reject("static")
    return Decision("kept", "", cam, subj)

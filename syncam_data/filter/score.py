"""Camera motion vs subject motion from point tracks, and the keep/reject decision.

For every pair of consecutive sampled frames, a RANSAC homography fitted on
the *background* tracks (every track without SAM masks; the tracks outside
subject masks with them, including every re-seeded track) is the camera's
motion; its size is the mean displacement it induces over a grid covering the
frame. The pair's **support** is the number of background tracks that agree
with it (RANSAC inliers). A pair is **measured** when its support reaches
``FilterConfig.min_support_points`` (a share of the tracking grid, at least
8): a homography that a handful of surviving points happen to fit is noise,
not a camera estimate.

Both scores are in **frame diagonals per second** (pixels / diagonal x
sampled fps), so a score does not depend on resolution or frame rate:

- ``camera_motion``: a weighted trimmed mean of the measured pairs' values,
  each weighted by its support; ``camera_trim`` of the weight is cut from
  each end (0.25: the interquartile mean), so a few bad pairs cannot move it.
- ``measured_fraction``: measured pairs / all pairs of the analysed clip.
- ``subject_motion``: computed only on the **subject points** — the tracks
  inside SAM subject masks, or every track with the grid segmenter (which
  marks nothing). A subject point's residual is how far it lands from where
  the pair's background homography sends it, averaged over the measured
  pairs in which it is visible. The score is the ``subject_percentile``
  percentile of those speeds over the moving candidates (residual above
  ``foreground_min_speed``) or, when fewer than ``min_foreground_tracks``
  move, over all candidates (so a handful of noisy tracks cannot make a still
  scene look alive).

What the subject score means when the camera moves: the residual is motion
relative to the background's homography. A homography explains camera
rotation and zoom exactly, so those leave no residual; camera *translation*
leaves parallax on anything not at the background's depth: a still object at
depth Z_o in front of a background at depth Z_b moves by about
camera_motion x |Z_b / Z_o - 1| relative to it. With the default camera
threshold (0.01) an object at half the background's distance can therefore
add up to about 0.01 of parallax; one at a fifth, up to 0.04. docs/filter-videos.md
gives the numbers.

The raw per-pair camera values, their support and the per-track speeds are
stored, so decisions can be recomputed with new thresholds (``--rescore``)
without tracking again.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from syncam_data.filter.settings import MIN_HOMOGRAPHY_POINTS, FilterConfig


@dataclass
class MotionScores:
    camera_per_pair: np.ndarray  # (T-1,) float32 diagonals/s, NaN where no homography could be fitted
    support_per_pair: np.ndarray  # (T-1,) int32 background inliers of that pair's homography (0 when none)
    track_speed: np.ndarray  # (N,) float32 mean residual diagonals/s over measured pairs, NaN if none
    track_candidate: np.ndarray  # (N,) bool: a subject point (inside a mask, or any track without masks)
    inlier_fraction: float  # share of visible background tracks that fit the measured pairs' homographies

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


def subject_points(labels: np.ndarray) -> np.ndarray:
    """The tracks whose residual is subject motion: inside subject masks, or all of them when nothing was segmented."""
    labels = np.asarray(labels)
    return labels > 0 if (labels > 0).any() else np.ones(len(labels), bool)


def score_tracks(
    tracks: np.ndarray,
    visible: np.ndarray,
    labels: np.ndarray,
    fps: float,
    width: int,
    height: int,
    ransac_threshold_px: float = 1.0,
    min_support_points: int = MIN_HOMOGRAPHY_POINTS,
) -> MotionScores:
    """Per-pair camera motion and support, per-track residual speed; see the module docstring.

    ``labels``: 0 = background or unknown (grid points, re-seeded points), k >= 1 = inside subject mask k.
    """
    t_len, n = visible.shape
    diag = float(np.hypot(width, height))
    to_speed = fps / diag  # pixels per sampled pair -> diagonals per second
    grid = _frame_grid(width, height)
    camera = np.full(max(0, t_len - 1), np.nan, np.float32)
    support = np.zeros(max(0, t_len - 1), np.int32)
    resid_sum = np.zeros(n, np.float64)
    resid_cnt = np.zeros(n, np.int64)
    inliers = tested = 0
    labels = np.asarray(labels)
    background = labels == 0
    subjects = subject_points(labels)
    for t in range(t_len - 1):
        both = visible[t] & visible[t + 1]
        # The homography is the background's: subject points never enter the fit (their motion is what we measure).
        fit = both & background
        if fit.sum() < MIN_HOMOGRAPHY_POINTS:
            continue
        p0, p1 = tracks[t, fit].astype(np.float64), tracks[t + 1, fit].astype(np.float64)
        # OpenCV's USAC framework with its fast preset (LO-RANSAC with early exits): the same fits as plain RANSAC
        # within ~0.06 px on our tracks, in under half the time.
        hmat, mask = cv2.findHomography(p0, p1, cv2.USAC_FAST, ransac_threshold_px, maxIters=500, confidence=0.995)
        if hmat is None or not np.isfinite(hmat).all():
            continue
        support[t] = int(mask.sum())
        moved = _apply(hmat, grid) - grid.reshape(-1, 2)
        camera[t] = float(np.linalg.norm(moved, axis=1).mean() * to_speed)
        if support[t] < min_support_points:
            continue  # kept in the raw series, but too weakly supported to judge anything by
        inliers += support[t]
        tested += len(mask)
        idx = np.nonzero(both & subjects)[0]
        if len(idx):
            pred = _apply(hmat, tracks[t, idx])
            resid_sum[idx] += np.linalg.norm(tracks[t + 1, idx] - pred, axis=1)
            resid_cnt[idx] += 1
    speed = np.full(n, np.nan, np.float32)
    has = resid_cnt > 0
    speed[has] = (resid_sum[has] / resid_cnt[has] * to_speed).astype(np.float32)
    return MotionScores(camera, support, speed, subjects, inliers / tested if tested else 0.0)


def measured_pairs(
    camera_per_pair: np.ndarray, support_per_pair: np.ndarray | None, min_support_points: int
) -> np.ndarray:
    """Bool per pair: a homography was fitted and enough background points support it.

    ``support_per_pair`` is None for rows written before supports were stored: every fitted pair counts.
    """
    vals = np.asarray(camera_per_pair, np.float64)
    ok = np.isfinite(vals)
    if support_per_pair is not None:
        ok &= np.asarray(support_per_pair, np.int64) >= min_support_points
    return ok


def weighted_trimmed_mean(values: np.ndarray, weights: np.ndarray, trim: float) -> float:
    """Mean of the values after cutting ``trim`` of the total weight from each end (0.5: the weighted median).

    Each value owns an interval of the cumulative weight; the result averages
    the values over the central part [trim, 1 - trim] of the total weight.
    """
    v = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    hi_edge = np.cumsum(w)
    total = hi_edge[-1]
    lo_edge = hi_edge - w
    lo, hi = trim * total, (1.0 - trim) * total
    if hi - lo <= 1e-12 * total:  # trim = 0.5: the value at the middle of the weight
        return float(v[min(np.searchsorted(hi_edge, 0.5 * total), len(v) - 1)])
    overlap = np.clip(np.minimum(hi_edge, hi) - np.maximum(lo_edge, lo), 0.0, None)
    return float((v * overlap).sum() / overlap.sum())


def camera_motion(
    camera_per_pair: np.ndarray, support_per_pair: np.ndarray | None, min_support_points: int, trim: float
) -> tuple[float | None, float]:
    """(clip camera motion, measured_fraction). The motion is None when no pair is measured."""
    vals = np.asarray(camera_per_pair, np.float64)
    ok = measured_pairs(vals, support_per_pair, min_support_points)
    fraction = float(ok.mean()) if len(ok) else 0.0
    if not ok.any():
        return None, fraction
    weights = np.asarray(support_per_pair, np.float64)[ok] if support_per_pair is not None else np.ones(int(ok.sum()))
    return weighted_trimmed_mean(vals[ok], weights, trim), fraction


def subject_motion(
    track_speed: np.ndarray,
    track_candidate: np.ndarray,
    percentile: float,
    foreground_min_speed: float,
    min_foreground_tracks: int,
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
    measured_fraction: float


def decide(
    s: FilterConfig,
    width: int,
    height: int,
    duration_s: float,
    scene_cut_score: float | None,
    camera_per_pair: np.ndarray,
    camera_support: np.ndarray | None,
    track_speed: np.ndarray,
    track_candidate: np.ndarray,
) -> Decision:
    """Keep/reject from raw measurements; the checks run cheapest and most certain first."""
    cam, fraction = camera_motion(camera_per_pair, camera_support, s.min_support_points, s.camera_trim)
    subj = subject_motion(
        track_speed, track_candidate, s.subject_percentile, s.foreground_min_speed, s.min_foreground_tracks
    )

    def reject(reason: str) -> Decision:
        return Decision("rejected", reason, cam, subj, fraction)

    if min(width, height) < s.min_short_side:
        return reject("too_small")
    if duration_s < s.min_duration_s:
        return reject("too_short")
    if scene_cut_score is not None and scene_cut_score > s.scene_cut_threshold:
        return reject("scene_cut")
    if cam is None or subj is None:
        return reject("no_tracks")
    if fraction < s.min_coverage:
        return reject("unmeasured")
    if cam > s.camera_threshold:
        return reject("camera_moves")
    if subj < s.threshold:
        return reject("static")
    return Decision("kept", "", cam, subj, fraction)

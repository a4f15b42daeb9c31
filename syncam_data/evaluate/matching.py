"""Cross-view feature matching: OpenCV SIFT + Lowe's ratio test + RANSAC on the fundamental matrix.

Features are detected once per view and frame and reused for every pair the
view takes part in. Points are returned in OpenCV pixel coordinates (pixel
centres at integers); :mod:`syncam_data.evaluate.epipolar` converts them
before applying stated cameras.

``--matcher loftr`` (kornia's LoFTR, with local weights) lives in
:mod:`syncam_data.evaluate.loftr`, the only module importing kornia (an
optional extra); :mod:`syncam_data.evaluate.matchers` picks one by name.
``MATCHERS`` lists what ``--matcher`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MATCHERS = ("sift", "loftr")


@dataclass(frozen=True)
class MatchConfig:
    """Settings of the SIFT path; each is a CLI option of `syncam-data eval`."""

    max_features: int = 4000  # SIFT keypoints kept per image (strongest first); 0 = all
    contrast_threshold: float = (
        0.04  # SIFT's contrastThreshold; lower finds more keypoints in flat, low-texture renders
    )
    ratio: float = 0.8  # Lowe's ratio test threshold
    ransac_px: float = 1.0  # RANSAC reprojection threshold for the fundamental matrix, pixels
    ransac_confidence: float = 0.999
    ransac_iters: int = 5000
    min_matches: int = 8  # fewer ratio-test matches than this: no RANSAC, zero inliers
    seed: int = 0  # OpenCV's RNG seed, so RANSAC is reproducible

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.ransac_px <= 0:
            raise ValueError(f"ransac_px must be positive, got {self.ransac_px}")
        if self.min_matches < 8:
            raise ValueError("min_matches must be at least 8 (the fundamental matrix needs 8 points)")


@dataclass
class Features:
    points: np.ndarray  # (N, 2) float32, OpenCV pixel coordinates
    descriptors: np.ndarray  # (N, 128) float32


@dataclass
class MatchResult:
    pts_a: np.ndarray  # (M, 2) ratio-test matches, OpenCV coordinates
    pts_b: np.ndarray
    inliers: np.ndarray  # (M,) bool, RANSAC inliers of the estimated F
    F_est: np.ndarray | None  # fundamental matrix estimated from the pixels (OpenCV coordinates)

    @property
    def num_matches(self) -> int:
        return int(len(self.pts_a))

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


class SiftMatcher:
    name = "sift"

    def __init__(self, config: MatchConfig | None = None) -> None:
        self.config = config or MatchConfig()
        self._sift = cv2.SIFT_create(
            nfeatures=self.config.max_features, contrastThreshold=self.config.contrast_threshold
        )
        # Exact nearest neighbours: at a few thousand features brute force is
        # as fast as FLANN and gives reproducible results.
        self._bf = cv2.BFMatcher(cv2.NORM_L2)

    def detect(self, image: np.ndarray) -> Features:
        kps, desc = self._sift.detectAndCompute(to_gray(image), None)
        if desc is None or not kps:
            return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
        pts = np.array([k.pt for k in kps], dtype=np.float32)
        return Features(pts, desc.astype(np.float32))

    def match(self, fa: Features, fb: Features) -> MatchResult:
        cfg = self.config
        empty = MatchResult(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, bool), None)
        if len(fa.points) < 2 or len(fb.points) < 2:
            return empty
        knn = self._bf.knnMatch(fa.descriptors, fb.descriptors, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < cfg.ratio * m[1].distance]
        good = _mutual_unique(good)
        if not good:
            return empty
        pa = fa.points[[m.queryIdx for m in good]].astype(np.float64)
        pb = fb.points[[m.trainIdx for m in good]].astype(np.float64)
        return ransac_fundamental(pa, pb, cfg)


def ransac_fundamental(pa: np.ndarray, pb: np.ndarray, cfg: MatchConfig) -> MatchResult:
    """RANSAC on the fundamental matrix of putative matches; fewer than ``min_matches`` give no inliers."""
    n = len(pa)
    if n < cfg.min_matches:
        return MatchResult(pa, pb, np.zeros(n, bool), None)
    cv2.setRNGSeed(cfg.seed)
    F, mask = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, cfg.ransac_px, cfg.ransac_confidence, cfg.ransac_iters)
    if F is None or mask is None:
        return MatchResult(pa, pb, np.zeros(n, bool), None)
    return MatchResult(pa, pb, mask.ravel().astype(bool), F[:3])


def _mutual_unique(matches: list) -> list:
    """Keep one match per target keypoint (the closest): several query points on one target are ambiguous."""
    best: dict[int, object] = {}
    for m in matches:
        cur = best.get(m.trainIdx)
        if cur is None or m.distance < cur.distance:
            best[m.trainIdx] = m
    return sorted(best.values(), key=lambda m: m.queryIdx)

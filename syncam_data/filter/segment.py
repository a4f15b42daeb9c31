"""First-frame segmentation and the choice of points to track.

Two segmenters:

- ``grid`` (default, no weights): no masks; a uniform grid of points. The
  scorer then separates background (homography inliers) from foreground
  (outliers with significant residual motion).
- ``sam``: segment-anything's automatic mask generator. Points are sampled
  inside each mask and on the uncovered background; masks larger than
  ``BACKGROUND_MASK_FRACTION`` of the frame (sky, floor, walls) count as
  background. This is the only module that imports ``segment_anything``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

# A mask covering more than this share of the frame is scenery, not a subject.
BACKGROUND_MASK_FRACTION = 0.4


class Segmenter(Protocol):
    name: str

    def segment(self, frame: np.ndarray) -> list[np.ndarray]:
        """Boolean (H, W) masks of the RGB uint8 ``frame``, largest first."""


class GridSegmenter:
    """No segmentation: every point is a candidate for background and foreground."""

    name = "grid"

    def segment(self, frame: np.ndarray) -> list[np.ndarray]:
        return []


@dataclass
class SamSegmenter:
    """segment-anything automatic masks. ``checkpoint=None`` builds random weights (tests only)."""

    model_type: str = "vit_b"
    checkpoint: str | None = None
    device: str = "cpu"
    points_per_side: int = 16
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_fraction: float = 0.001
    name: str = "sam"

    def __post_init__(self) -> None:
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as e:  # the optional dependency group
            raise RuntimeError(
                "--segmenter sam needs segment-anything: pip install -e '.[filter]' in the SynCam checkout"
            ) from e
        if self.model_type not in sam_model_registry:
            raise ValueError(f"unknown SAM model {self.model_type!r}; choose one of {sorted(sam_model_registry)}")
        try:
            sam = sam_model_registry[self.model_type](checkpoint=self.checkpoint)
        except FileNotFoundError:
            raise FileNotFoundError(f"SAM checkpoint not found: {self.checkpoint}") from None
        except RuntimeError as e:  # wrong model type for the checkpoint: state_dict key/shape mismatch
            raise RuntimeError(
                f"{self.checkpoint}: not a SAM {self.model_type} checkpoint ({str(e).splitlines()[0]})"
            ) from None
        sam.to(self.device).eval()
        self._generator = SamAutomaticMaskGenerator(
            sam,
            points_per_side=self.points_per_side,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
        )

    def segment(self, frame: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            records = self._generator.generate(np.ascontiguousarray(frame))
        min_area = self.min_mask_fraction * frame.shape[0] * frame.shape[1]
        masks = [
            np.asarray(r["segmentation"], bool)
            for r in sorted(records, key=lambda r: -r["area"])
            if r["area"] >= min_area
        ]
        return masks


def grid_points(h: int, w: int, n: int, inset: float | None = None) -> np.ndarray:
    """``n`` x ``n`` points spread evenly inside a border of ``inset`` pixels, (n*n, 2) float32 as (x, y).

    Points right at the border track badly (the tracking window leaves the
    image), so the grid stays ``inset`` (default 4 % of the short side) away.
    """
    m = max(4.0, 0.04 * min(h, w)) if inset is None else inset
    xs = m + (np.arange(n) + 0.5) * (w - 2 * m) / n
    ys = m + (np.arange(n) + 0.5) * (h - 2 * m) / n
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)


def _points_in_mask(mask: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` points spread evenly over the mask's pixels (deterministic)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((0, 2), np.float32)
    pick = np.unique(np.linspace(0, len(xs) - 1, min(k, len(xs))).round().astype(int))
    return np.stack([xs[pick] + 0.5, ys[pick] + 0.5], 1).astype(np.float32)


def query_points(
    masks: list[np.ndarray], h: int, w: int, grid_size: int, points_per_mask: int
) -> tuple[np.ndarray, np.ndarray]:
    """Points to track and their labels: 0 = background/unknown, k >= 1 = inside subject mask k.

    Without masks: the uniform grid, all labelled 0. With masks: grid points
    not covered by any subject mask (background), plus ``points_per_mask``
    points inside each subject mask.
    """
    grid = grid_points(h, w, grid_size)
    subjects = [m for m in masks if m.mean() <= BACKGROUND_MASK_FRACTION]
    if not subjects:
        return grid, np.zeros(len(grid), np.int32)
    covered = np.zeros((h, w), bool)
    for m in subjects:
        covered |= m
    gi = np.clip(grid.astype(int), 0, [w - 1, h - 1])
    background = grid[~covered[gi[:, 1], gi[:, 0]]]
    pts, labels = [background], [np.zeros(len(background), np.int32)]
    for k, m in enumerate(subjects, start=1):
        p = _points_in_mask(m, points_per_mask)
        pts.append(p)
        labels.append(np.full(len(p), k, np.int32))
    return np.concatenate(pts), np.concatenate(labels)

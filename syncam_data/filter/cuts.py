"""Cheap scene-cut detection on the downsampled frames.

A cut changes the colour distribution of the whole frame at once, while
camera or subject motion changes it little. We compare HSV histograms of
consecutive sampled frames (Bhattacharyya distance, 0 = identical, 1 =
disjoint): a hue-saturation histogram and a value histogram, averaged.
Histograms describe the whole frame's colours, so they are counted on every
k-th pixel of every k-th row, k chosen so that about ``HIST_SHORT_SIDE``
rows remain (the same distribution, a sixteenth of the pixels at the default
analysis size).
"""

from __future__ import annotations

import cv2
import numpy as np

HIST_SHORT_SIDE = 64


def _hists(frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = max(1, min(frame_rgb.shape[:2]) // HIST_SHORT_SIDE)
    hsv = cv2.cvtColor(np.ascontiguousarray(frame_rgb[::k, ::k]), cv2.COLOR_RGB2HSV)
    hs = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
    v = cv2.calcHist([hsv], [2], None, [16], [0, 256])
    return cv2.normalize(hs, hs, norm_type=cv2.NORM_L1), cv2.normalize(v, v, norm_type=cv2.NORM_L1)


def cut_scores(frames: np.ndarray) -> np.ndarray:
    """Distance in [0, 1] between each pair of consecutive frames, shape (T-1,)."""
    hists = [_hists(f) for f in frames]
    out = np.zeros(max(0, len(frames) - 1), np.float32)
    for i in range(len(frames) - 1):
        (a_hs, a_v), (b_hs, b_v) = hists[i], hists[i + 1]
        d_hs = cv2.compareHist(a_hs, b_hs, cv2.HISTCMP_BHATTACHARYYA)
        d_v = cv2.compareHist(a_v, b_v, cv2.HISTCMP_BHATTACHARYYA)
        out[i] = 0.5 * (d_hs + d_v)
    return out


def first_shot_length(scores: np.ndarray, threshold: float) -> int:
    """Number of frames before the first cut (all frames when there is none)."""
    above = np.nonzero(scores > threshold)[0]
    return int(above[0]) + 1 if len(above) else len(scores) + 1

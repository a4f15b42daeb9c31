"""Cheap scene-cut detection on the downsampled frames.

A cut changes the colour distribution of the whole frame at once, while
camera or subject motion changes it little. We compare HSV histograms of
consecutive sampled frames (Bhattacharyya distance, 0 = identical, 1 =
disjoint): a hue-saturation histogram and a value histogram, averaged.
"""

from __future__ import annotations

import cv2
import numpy as np


def _hists(frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hsv = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2HSV)
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

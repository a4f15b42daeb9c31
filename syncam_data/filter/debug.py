"""Debug image per video: first frame, subject masks, and tracks coloured by residual motion.

Blue tracks follow the camera (background); red tracks move on their own
(subject motion at or above the keep threshold). The header gives the
decision and both scores.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from syncam_data.video import atomic_write_bytes


def render_debug(
    frame: np.ndarray,
    masks: list[np.ndarray],
    tracks: np.ndarray,
    visible: np.ndarray,
    track_speed: np.ndarray,
    threshold: float,
    title: str,
    scale: int = 2,
) -> np.ndarray:
    """BGR uint8 image (for cv2.imencode)."""
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR).astype(np.float32)
    rng = np.random.default_rng(0)
    for m in masks:
        color = rng.uniform(60, 255, 3).astype(np.float32)
        img[m] = 0.55 * img[m] + 0.45 * color
    img = cv2.resize(img.clip(0, 255).astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    # 0 -> blue (moves with the camera), >= 2x threshold -> red.
    level = np.nan_to_num(np.asarray(track_speed, np.float64) / max(2 * threshold, 1e-9), nan=0.0).clip(0, 1)
    colors = cv2.applyColorMap((level * 255).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)
    for i in range(tracks.shape[1]):
        pts = (tracks[visible[:, i], i] * scale).round().astype(np.int32)
        if len(pts) == 0:
            continue
        c = tuple(int(v) for v in colors[i])
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, c, 1, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in pts[-1]), 2, c, -1)
    header = np.zeros((22, img.shape[1], 3), np.uint8)
    cv2.putText(header, title, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, min(0.4, img.shape[1] / (len(title) * 20.0)), (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([header, img])


def write_debug_png(path: Path, image_bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())

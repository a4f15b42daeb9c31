"""``--debug`` output: one image per analysed video, and a histogram of the run's scores.

Per video, ``debug/<file stem>-<content hash>.png``: the first frame, subject
masks, and the tracks coloured by residual motion (blue: moves with the
camera; red: moves on its own at or above twice the keep threshold), under a
header with the source file name, the decision, both scores and the measured
share of frame pairs.

Per run, ``debug/score_histogram.png``: the camera and subject scores of every
measured video in the output folder, with the thresholds drawn, to choose
thresholds before a ``--rescore``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from syncam_data import fsio
from syncam_data.ids import sanitize_id

HISTOGRAM_FILE = "score_histogram.png"


def debug_png_name(path: str, content_hash: str) -> str:
    """``<safe file stem>-<first 12 hex of the hash>.png``: readable, and distinct for different contents."""
    return f"{sanitize_id(Path(path).stem)[:80]}-{(content_hash or 'nohash')[:12]}.png"


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")  # OpenCV's Hershey fonts draw ASCII only


def render_debug(
    frame: np.ndarray,
    masks: list[np.ndarray],
    tracks: np.ndarray,
    visible: np.ndarray,
    track_speed: np.ndarray,
    threshold: float,
    title: str | Sequence[str],
    scale: int = 2,
) -> np.ndarray:
    """BGR uint8 image (for cv2.imencode); ``title`` is one line or several (e.g. file name, decision)."""
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR).astype(np.float32)
    rng = np.random.default_rng(0)
    for m in masks:
        color = rng.uniform(60, 255, 3).astype(np.float32)
        img[m] = 0.55 * img[m] + 0.45 * color
    img = cv2.resize(img.clip(0, 255).astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    # 0 -> blue (moves with the camera), >= 2x threshold -> red.
    level = np.nan_to_num(np.asarray(track_speed, np.float64) / max(2 * threshold, 1e-9), nan=0.0).clip(0, 1)
    colors = (
        cv2.applyColorMap((level * 255).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)
        if len(level)
        else []
    )
    for i in range(tracks.shape[1]):
        pts = (tracks[visible[:, i], i] * scale).round().astype(np.int32)
        if len(pts) == 0:
            continue
        c = tuple(int(v) for v in colors[i])
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, c, 1, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in pts[-1]), 2, c, -1)
    lines = [title] if isinstance(title, str) else list(title)
    header = np.zeros((20 * len(lines) + 4, img.shape[1], 3), np.uint8)
    for k, line in enumerate(lines):
        text = _ascii(line)
        size = min(0.45, img.shape[1] / (max(len(text), 1) * 9.0))
        cv2.putText(header, text, (4, 16 + 20 * k), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([header, img])


def write_debug_png(path: Path, image_bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    fsio.write_bytes(path, buf.tobytes())


def write_score_histogram(rows: list[dict[str, Any]], settings: Any, path: Path) -> None:
    """Histograms of camera and subject motion over ``rows`` (log scale), thresholds as vertical lines.

    Duplicates are counted once (they copy another row); videos without a
    score (errors, rejected before tracking) are left out and counted in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if not r.get("duplicate_of")]
    floor = 1e-5  # still scenes score ~0: shown in the first bin of the log axis
    panels = (
        ("camera_motion", "camera motion", settings.camera_threshold, "camera threshold", "reject above"),
        ("subject_motion", "subject motion", settings.threshold, "subject threshold", "keep above"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, label, thr, thr_name, rule) in zip(axes, panels):
        vals = np.array([r[key] for r in scored if r.get(key) is not None], np.float64)
        kept = np.array([r[key] for r in scored if r.get(key) is not None and r["status"] == "kept"], np.float64)
        bins = np.logspace(np.log10(floor), 0.5, 41)
        ax.hist(np.clip(vals, floor, None), bins=bins, color="0.6", label=f"all measured ({len(vals)})")
        if len(kept):
            ax.hist(np.clip(kept, floor, None), bins=bins, color="tab:green", alpha=0.8, label=f"kept ({len(kept)})")
        ax.axvline(max(thr, floor), color="tab:red", linestyle="--", label=f"{thr_name} {thr:g} ({rule})")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (frame diagonals per second; values below {floor:g} drawn at {floor:g})")
        ax.set_ylabel("videos")
        ax.legend(fontsize=8)
    unscored = sum(1 for r in scored if r.get("camera_motion") is None and r.get("subject_motion") is None)
    fig.suptitle(
        f"filter-videos scores: {len(scored)} videos ({unscored} without scores: errors or rejected before tracking)"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    fsio.write_bytes(path, buf.getvalue())

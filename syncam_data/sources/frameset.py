"""Frame-set group folders and the `sample-frames` run report.

One folder per sampled frame set (docs/data-format.md, Contract 2 applied to posed videos):

```
<out>/<group_id>/            group_id = <sequence_id>_s000, _s001, ...
  v00.jpg v01.jpg ...        views in increasing frame order (.png with --image-format png)
  cameras.json               {"source", "sequence", "source_uri", "frame_indices", "cameras": [
                               {"id": "v00", "image": "v00.jpg", "width", "height", "fx", "fy",
                                "cx", "cy", "c2w": [12], "frame_index", "timestamp_us" (RE10K),
                                "raw": {the source's own pose}}, ...]}
<out>/sample_report.json     per sequence: sets written / already present, or skipped and why
```

A group folder is written under a hidden temporary name and renamed when
complete, so a folder named ``<group_id>`` is always whole; hidden
``.<group_id>.tmp-*`` folders are leftovers of a killed run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from syncam_data import fsio
from syncam_data.cameras import CAMERAS_JSON, Camera
from syncam_data.ids import check_id

log = logging.getLogger(__name__)

REPORT_JSON = "sample_report.json"
IMAGE_FORMATS = ("jpg", "png")
TMP_MARK = ".tmp-"


class SourceError(ValueError):
    """A sequence that cannot be used; the message names the file (and line) and the problem."""


@dataclass
class SourceFrame:
    """One frame chosen for a set: the decoded image and its canonical camera (for that image's size)."""

    frame_index: int
    image: np.ndarray  # RGB uint8 (H, W, 3)
    camera: Camera
    raw: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. timestamp_us, video_frame


@dataclass(frozen=True)
class OutputConfig:
    """How images are stored in a group folder."""

    image_format: str = "jpg"
    jpeg_quality: int = 95
    max_size: int | None = None  # longest side in pixels; None keeps the source size

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if self.max_size is not None and self.max_size < 8:
            raise ValueError(f"max size must be at least 8 pixels, got {self.max_size}")


def view_id(i: int) -> str:
    return f"v{i:02d}"


def group_id_for(sequence_id: str, set_index: int) -> str:
    return check_id(f"{sequence_id}_s{set_index:03d}", "group id")


def fit_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """Size with the longest side at most ``max_size`` (aspect kept; never upscales)."""
    if not max_size or max(width, height) <= max_size:
        return width, height
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def resize_frame(image: np.ndarray, camera: Camera, max_size: int | None) -> tuple[np.ndarray, Camera]:
    """Downscale so the longest side fits ``max_size``; intrinsics follow the actual new size."""
    h, w = image.shape[:2]
    nw, nh = fit_size(w, h, max_size)
    if (nw, nh) == (w, h):
        return image, camera
    # INTER_AREA maps pixel centres as (x + 0.5) * s - 0.5, i.e. continuous coordinates scale by s,
    # which is exactly what Camera.resized assumes.
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), camera.resized(nw, nh)


def encode_image(image: np.ndarray, fmt: str, jpeg_quality: int) -> bytes:
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise OSError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


def build_cameras_json(
    header: dict[str, Any], frames: list[SourceFrame], image_names: list[str], cameras: list[Camera]
) -> dict[str, Any]:
    entries = []
    for i, (fr, name, cam) in enumerate(zip(frames, image_names, cameras)):
        entry: dict[str, Any] = cam.to_dict(id=view_id(i), image=name)
        entry["frame_index"] = int(fr.frame_index)
        entry.update(fr.extra)
        entry["raw"] = fr.raw
        entries.append(entry)
    return {**header, "frame_indices": [int(f.frame_index) for f in frames], "cameras": entries}


def write_frame_set(
    out_dir: Path, group_id: str, header: dict[str, Any], frames: list[SourceFrame], options: OutputConfig
) -> Path:
    """Write one group folder atomically: a hidden temporary folder, renamed when complete.

    ``header`` holds the top-level keys (source, sequence, source_uri, ...);
    frames must be in increasing frame order (they become v00, v01, ...).
    """
    check_id(group_id, "group id")
    out_dir = Path(out_dir)
    final = out_dir / group_id
    tmp = out_dir / f".{group_id}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        names, cams = [], []
        for i, fr in enumerate(frames):
            img, cam = resize_frame(fr.image, fr.camera, options.max_size)
            name = f"{view_id(i)}.{options.image_format}"
            (tmp / name).write_bytes(encode_image(img, options.image_format, options.jpeg_quality))
            names.append(name)
            cams.append(cam)
        (tmp / CAMERAS_JSON).write_text(json.dumps(build_cameras_json(header, frames, names, cams), indent=2))
        # Every file fsynced, then one rename (which fails if another writer finished the same group first: keep theirs).
        fsio.publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def existing_frame_indices(folder: Path) -> list[int] | None:
    """The frame indices of a finished group folder, or None when it does not exist or is unreadable."""
    path = Path(folder) / CAMERAS_JSON
    try:
        data = json.loads(path.read_text())
        return [int(i) for i in data["frame_indices"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete hidden temporary group folders left by a killed run (one run per --out at a time)."""
    n = 0
    if not Path(out_dir).is_dir():
        return 0
    with os.scandir(out_dir) as it:
        for e in it:
            if e.name.startswith(".") and TMP_MARK in e.name and e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
                n += 1
    if n:
        log.info("removed %d unfinished group folder(s) left in %s by an interrupted run", n, out_dir)
    return n


# --- run report ------------------------------------------------------------------


@dataclass
class SequenceOutcome:
    """What happened to one sequence: sets written or already present, or why it was skipped."""

    sequence: str
    source_uri: str
    status: str = "ok"  # ok | skipped | error
    sets_written: list[str] = field(default_factory=list)
    sets_existing: list[str] = field(default_factory=list)
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "sequence": self.sequence,
            "source_uri": self.source_uri,
            "status": self.status,
            "sets_written": self.sets_written,
            "sets_existing": self.sets_existing,
        }
        if self.reason:
            d["reason"] = self.reason
        if self.warnings:
            d["warnings"] = self.warnings
        d["seconds"] = round(self.seconds, 3)
        return d


class RunReport:
    """Accumulates per-sequence outcomes and rewrites ``sample_report.json`` atomically."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        self.path = Path(out_dir) / REPORT_JSON
        self.settings = settings
        self.started = time.time()
        self.sequences: list[dict[str, Any]] = []
        self.totals = {"sequences": 0, "ok": 0, "skipped": 0, "error": 0, "sets_written": 0, "sets_existing": 0}

    def add(self, outcome: SequenceOutcome) -> None:
        self.sequences.append(outcome.to_dict())
        self.totals["sequences"] += 1
        self.totals[outcome.status] = self.totals.get(outcome.status, 0) + 1
        self.totals["sets_written"] += len(outcome.sets_written)
        self.totals["sets_existing"] += len(outcome.sets_existing)

    def write(self, finished: bool = False) -> None:
        fsio.write_json(
            self.path,
            {
                "settings": self.settings,
                "started": _iso(self.started),
                "finished": _iso(time.time()) if finished else None,
                "totals": self.totals,
                "sequences": self.sequences,
            },
        )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

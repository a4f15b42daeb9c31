"""What every adapter shares: the group reference/plan types, options, content hashing, media probing.

An adapter turns one intermediate output (a render scene folder, a frame-set
folder, a kept row of a filter ``scores.parquet``, a SynCamVideo scene) into
the view records of one *group* (Contract 3). It works in three steps so the
build driver can deduplicate and plan shards before anything is written:

1. ``discover(path, options)``: cheap listing on the driver -> ``GroupRef``s;
2. ``scan(ref, options)``: reads metadata and hashes the source media (a task)
   -> ``GroupPlan`` with the group's id, content hash and views;
3. ``convert(plan, options)``: builds the ``ViewRecord``s (a task, inside the
   shard-writing task).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class AdapterError(ValueError):
    """An input that cannot become a group; the message names the file and the problem."""


@dataclass(frozen=True)
class ConvertConfig:
    """Settings of every adapter (all picklable: they travel to worker processes and Ray tasks)."""

    # SynCamVideo intrinsics: explicit (fx, fy, cx, cy) in pixels > horizontal FOV > lens/filmback.
    intrinsics: tuple[float, float, float, float] | None = None
    fov_deg: float | None = None
    focal_mm: float | None = None  # None: the lens named by the fNN_apertureM subset, else 24 mm
    sensor_mm: float = 23.76
    # A camera whose pose moves more than this between frames is not static (cm and unitless rotation).
    static_tol_cm: float = 0.01
    static_tol_rot: float = 1e-5
    # Web videos: copy the original stream only when it is H.264 mp4 within these limits.
    max_frames: int = 1000
    max_size: int = 128 << 20
    crf: int = 20


@dataclass
class GroupRef:
    """A group found by ``discover``: which adapter, where, plus adapter-specific data (small, picklable)."""

    source: str
    path: str
    data: dict[str, Any] = field(default_factory=dict)
    # The group's key when discovery can tell it cheaply, so known groups are skipped before any hashing.
    dataset: str | None = None
    group_id: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source}:{self.path}" + (f"#{self.data['row']}" if "row" in self.data else "")


@dataclass
class ViewPlan:
    view_id: str
    source_uri: str


@dataclass
class GroupPlan:
    """A scanned group: everything the driver needs to dedup, caption and place it in a shard."""

    ref: GroupRef
    dataset: str
    group_id: str
    group_hash: str
    views: list[ViewPlan]
    nbytes: int
    caption: str = ""
    # Captions resolved by the driver, per view id (from the captions file or the source).
    view_captions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.group_id)


def read_json_object(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object; AdapterError names the file otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{path}: cannot read{' ' + what if what else ''} ({e})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return data


def read_bytes(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AdapterError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if not data:
        raise AdapterError(f"{path}: {what} is empty")
    return data


def image_format(data: bytes, name: str) -> str:
    """``jpeg`` or ``png`` from the magic bytes (file extensions lie)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    raise AdapterError(f"{name}: not a JPEG or PNG image (magic bytes {data[:4]!r})")


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError) as e:
        raise AdapterError(f"{name}: unreadable image ({e})") from None


def npz_array_shape(data: bytes, key: str, name: str) -> tuple[int, ...]:
    """Shape of array ``key`` in an npz, read from the .npy header only (no decompression of the data)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            member = f"{key}.npy"
            if member not in zf.namelist():
                raise AdapterError(f"{name}: npz has no array {key!r} (has {sorted(zf.namelist())})")
            with zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(f)
                return tuple(int(s) for s in shape)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, AdapterError):
            raise
        raise AdapterError(f"{name}: not a valid npz ({e})") from None


def probe_clip(data: bytes, name: str, pixel_format: bool = True):
    """VideoInfo of an mp4 held in memory, frames counted exactly (what validate will decode).

    ``pixel_format=False``: ``pix_fmt`` stays None and no frame is decoded (5x faster; for clips
    that are copied as they are, whose pixel format nothing checks here).
    """
    from syncam_data.video import VideoError, probe

    try:
        return probe(data, count_frames=True, pixel_format=pixel_format)
    except VideoError as e:
        raise AdapterError(f"{name}: {str(e).replace('<in-memory video>: ', '')}") from None

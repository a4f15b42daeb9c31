"""Cameras for generation: presets such as ``azimuth:0,30,60`` or a ``cameras.json``, to canonical cameras and model input.

A preset is one or more ``key:v1,v2,...`` parts separated by ``;`` (or
spaces), with keys ``azimuth``, ``elevation`` and ``distance`` (degrees,
degrees, metres). The number of views ``n`` is the longest list; every other
list has ``n`` values or a single value that all views share. Unspecified keys
take the defaults below. Each camera sits on the sphere around ``center`` and
looks at it (``syncam_data.cameras.look_at``), like the paper's training rig:

    azimuth:0,30,60                      three views 30 degrees apart
    azimuth:0,90;elevation:10,30         two views, different heights
    azimuth:0,45;distance:4,8

A ``cameras.json`` (render output form, Contract 2) is taken as given; its
intrinsics are rescaled (resize + centre crop) to the generation resolution.
The model sees poses relative to view 0 (Contract 1), translations scaled by
the adapter's camera rule (``syncam_model.camera_input``), as in training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.cameras import Camera, intrinsics_from_hfov, look_at, spherical_position
from syncam_model.camera_input import CameraRule

DEFAULT_AZIMUTH = 0.0
DEFAULT_ELEVATION = 15.0
DEFAULT_DISTANCE = 6.0
DEFAULT_HFOV = 60.0
_KEYS = {
    "azimuth": "azimuth",
    "az": "azimuth",
    "elevation": "elevation",
    "el": "elevation",
    "distance": "distance",
    "dist": "distance",
}


class RigError(ValueError):
    """A camera preset or cameras file that cannot be used."""


@dataclass
class Rig:
    """The cameras of one generation: ids, canonical cameras (view 0 first)."""

    ids: list[str]
    cameras: list[Camera]

    def __len__(self) -> int:
        return len(self.cameras)

    def relative(self, rule: CameraRule | None = None) -> np.ndarray:
        """``(n, 12)`` model input: each pose relative to view 0, translations by ``rule`` (default: max_distance)."""
        return (rule or CameraRule()).apply([c.c2w for c in self.cameras])

    def to_json(self) -> dict[str, Any]:
        """``{"cameras": [{"id", "width", "height", "fx", "fy", "cx", "cy", "c2w"}]}`` like render output."""
        return {"cameras": [cam.to_dict(id=cid) for cid, cam in zip(self.ids, self.cameras)]}


def parse_preset(spec: str) -> dict[str, list[float]]:
    """``"azimuth:0,30;elevation:10"`` -> ``{"azimuth": [0, 30], "elevation": [10]}``."""
    out: dict[str, list[float]] = {}
    parts = [p for p in re.split(r"[;\s]+", spec.strip()) if p]
    if not parts:
        raise RigError("empty camera preset")
    for part in parts:
        key, sep, values = part.partition(":")
        name = _KEYS.get(key.strip().lower())
        if not sep or name is None:
            raise RigError(f"camera preset part {part!r}: expected 'azimuth|elevation|distance:v1,v2,...'")
        if name in out:
            raise RigError(f"camera preset gives {name} twice")
        try:
            out[name] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise RigError(f"camera preset part {part!r}: values must be numbers") from None
        if not out[name]:
            raise RigError(f"camera preset part {part!r}: no values")
    return out


def preset_rig(
    spec: str,
    width: int,
    height: int,
    hfov_deg: float = DEFAULT_HFOV,
    center: Sequence[float] = (0.0, 0.0, 0.0),
) -> Rig:
    """Cameras on a sphere around ``center`` from a preset string (see the module docstring)."""
    values = parse_preset(spec)
    n = max(len(v) for v in values.values())
    defaults = {"azimuth": DEFAULT_AZIMUTH, "elevation": DEFAULT_ELEVATION, "distance": DEFAULT_DISTANCE}
    cols: dict[str, list[float]] = {}
    for key, default in defaults.items():
        v = values.get(key, [default])
        if len(v) not in (1, n):
            raise RigError(f"camera preset: {key} has {len(v)} values, expected 1 or {n}")
        cols[key] = v * n if len(v) == 1 else v
    if any(d <= 0 for d in cols["distance"]):
        raise RigError("camera preset: distances must be positive")
    if any(abs(e) >= 90 for e in cols["elevation"]):
        raise RigError("camera preset: elevation must lie strictly between -90 and 90 degrees")
    fx, fy, cx, cy = intrinsics_from_hfov(width, height, hfov_deg)
    cams = []
    for az, el, d in zip(cols["azimuth"], cols["elevation"], cols["distance"]):
        eye = spherical_position(center, d, el, az)
        cams.append(Camera(width, height, fx, fy, cx, cy, look_at(eye, center)))
    return Rig(ids=[f"view{i:02d}" for i in range(n)], cameras=cams)


def load_rig(path: str | Path, width: int, height: int, views: Sequence[str] | None = None) -> Rig:
    """Cameras from a ``cameras.json`` (optionally a subset, in the given order), intrinsics fitted to ``width x height``."""
    from syncam_data.cameras import read_cameras_json

    path = Path(path)
    entries = read_cameras_json(path)
    if not entries:
        raise RigError(f"{path}: no cameras")
    by_id = {cid: cam for cid, cam, _ in entries}
    ids = list(views) if views else [cid for cid, _, _ in entries]
    unknown = [v for v in ids if v not in by_id]
    if unknown:
        raise RigError(f"{path}: no camera(s) {unknown} (have {sorted(by_id)})")
    return Rig(ids=ids, cameras=[by_id[v].resize_center_crop(width, height) for v in ids])


def resolve_rig(
    cameras: str, width: int, height: int, hfov_deg: float = DEFAULT_HFOV, views: Sequence[str] | None = None
) -> Rig:
    """A preset string or the path of a ``cameras.json``."""
    p = Path(cameras)
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise RigError(f"{p}: cameras file not found")
        return load_rig(p, width, height, views)
    if views:
        raise RigError("view selection applies to a cameras.json only")
    return preset_rig(cameras, width, height, hfov_deg)


def write_rig(rig: Rig, path: Path) -> None:
    """Write ``cameras.json`` atomically."""
    from syncam_data import fsio

    fsio.write_json(Path(path), rig.to_json())

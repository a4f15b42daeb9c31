"""Writing and reading one rendered scene folder (DESIGN.md, Contract 2), shared by every backend.

```
<out>/<scene_id>/
  scene.json          the SceneSpec, backend, versions, timings
  cameras.json        {"cameras": [{"id", "width", "height", "fx", "fy", "cx", "cy", "c2w", "raw"}, ...]}
  videos/<cam>.mp4    H.264, every camera the same frames and fps
  depth/<cam>.npz     "depth" (frames, H, W) metric z-depth, inf where empty
  masks/<cam>.npz     "ids" (frames, H, W) subject instance id, 0 = background
```

Backends render into a temporary folder through ``SceneOutput`` and the job
runner renames it to ``<scene_id>`` when the scene is complete.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.cameras import Camera
from syncam_data.ids import check_id
from syncam_data.video import atomic_write_bytes, encode

SCENE_JSON = "scene.json"
CAMERAS_JSON = "cameras.json"


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_npz_array(path_or_bytes: Path | bytes, key: str) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    with np.load(src, allow_pickle=False) as z:
        if key not in z:
            raise ValueError(f"{path_or_bytes if not isinstance(path_or_bytes, bytes) else '<npz>'}: no array {key!r}")
        return z[key]


@dataclass
class _CamBuffer:
    camera: Camera
    raw: dict[str, Any] | None
    rgb: list[np.ndarray] = field(default_factory=list)
    depth: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)


class SceneOutput:
    """Collects per-camera frames of one scene and writes the Contract 2 folder.

    Usage: ``add_camera`` for each camera, then ``add_frame`` per camera per
    frame (frames in order), then ``finish(scene_json)``.
    """

    def __init__(self, folder: Path, fps: float, depth_dtype: str = "float16", crf: int = 18) -> None:
        self.folder = Path(folder)
        self.fps = fps
        self.depth_dtype = np.dtype(depth_dtype)
        self.crf = crf
        self.cams: dict[str, _CamBuffer] = {}

    def add_camera(self, cam_id: str, camera: Camera, raw: dict[str, Any] | None = None) -> None:
        check_id(cam_id, "camera id")
        self.cams[cam_id] = _CamBuffer(camera, raw)

    def add_frame(self, cam_id: str, rgb: np.ndarray, depth: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        b = self.cams[cam_id]
        h, w = b.camera.height, b.camera.width
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"camera {cam_id}: expected uint8 RGB {h}x{w}x3, got {rgb.dtype} {rgb.shape}")
        b.rgb.append(rgb)
        if depth is not None:
            if depth.shape != (h, w):
                raise ValueError(f"camera {cam_id}: depth shape {depth.shape} != {(h, w)}")
            b.depth.append(depth.astype(np.float32))
        if ids is not None:
            if ids.shape != (h, w):
                raise ValueError(f"camera {cam_id}: mask shape {ids.shape} != {(h, w)}")
            b.ids.append(ids.astype(np.uint8))

    def finish(self, scene_json: dict[str, Any]) -> None:
        counts = {k: len(b.rgb) for k, b in self.cams.items()}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise ValueError(f"cameras have different frame counts (not synchronized): {counts}")
        self.folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for cam_id, b in self.cams.items():
            encode(np.stack(b.rgb), self.folder / "videos" / f"{cam_id}.mp4", fps=self.fps, crf=self.crf)
            if b.depth:
                d = np.stack(b.depth)
                if self.depth_dtype == np.float16:
                    d = np.where(d > 65000, np.inf, d)
                atomic_write_bytes(self.folder / "depth" / f"{cam_id}.npz", npz_bytes(depth=d.astype(self.depth_dtype)))
            if b.ids:
                atomic_write_bytes(self.folder / "masks" / f"{cam_id}.npz", npz_bytes(ids=np.stack(b.ids)))
            entries.append(b.camera.to_dict(id=cam_id, raw=b.raw or {}))
        write_json(self.folder / CAMERAS_JSON, {"cameras": entries})
        write_json(self.folder / SCENE_JSON, scene_json)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, sort_keys=False).encode())


def read_cameras_json(path: Path) -> list[tuple[str, Camera, dict[str, Any]]]:
    """[(id, Camera, full entry)] from a cameras.json (render output or frame set)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read cameras.json ({e})") from None
    out = []
    for i, e in enumerate(data.get("cameras", [])):
        try:
            out.append((check_id(e["id"], "camera id", str(path)), Camera.from_dict(e), e))
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: camera entry {i}: {err}") from None
    return out


def is_complete_scene(folder: Path) -> bool:
    """A finished scene folder: scene.json and cameras.json present and every camera's video written."""
    folder = Path(folder)
    if not (folder / SCENE_JSON).is_file() or not (folder / CAMERAS_JSON).is_file():
        return False
    try:
        cams = read_cameras_json(folder / CAMERAS_JSON)
    except ValueError:
        return False
    return bool(cams) and all((folder / "videos" / f"{cid}.mp4").is_file() for cid, _, _ in cams)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

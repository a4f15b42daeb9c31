"""Writing and reading one rendered scene folder (docs/data-format.md, Contract 2), shared by every backend.

```
<out>/<scene_id>/
  scene.json          the SceneSpec, backend, versions, timings
  cameras.json        {"cameras": [{"id", "width", "height", "fx", "fy", "cx", "cy", "c2w", "raw"}, ...]}
  videos/<cam>.mp4    H.264, every camera the same frames and fps
  depth/<cam>.npz     "depth" (frames, H, W) metric z-depth, inf where empty
  masks/<cam>.npz     "ids" (frames, H, W) subject instance id, 0 = background
```

Backends render into a temporary folder through ``SceneOutput`` and the job
runner renames it to ``<scene_id>`` when the scene is complete, after an fsync
of every file and folder in it (``render/jobs.publish``).
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data import fsio
from syncam_data.cameras import CAMERAS_JSON, Camera, read_cameras_json
from syncam_data.ids import check_id
from syncam_data.video import VideoWriter

SCENE_JSON = "scene.json"


def load_npz_array(path_or_bytes: Path | bytes, key: str) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    with np.load(src, allow_pickle=False) as z:
        if key not in z:
            raise ValueError(f"{path_or_bytes if not isinstance(path_or_bytes, bytes) else '<npz>'}: no array {key!r}")
        return z[key]


class _CamStream:
    """One camera's outputs while its scene renders: an open H.264 encoder plus raw depth/id files.

    Frames go to disk as they arrive, so a 36-camera, 100-frame scene never
    sits in RAM; ``finish`` turns the raw files into the Contract 2 npz arrays.
    """

    def __init__(
        self,
        cam_id: str,
        camera: Camera,
        raw: dict[str, Any] | None,
        work: Path,
        fps: float,
        crf: int,
        depth_dtype: np.dtype,
    ) -> None:
        self.cam_id, self.camera, self.raw = cam_id, camera, raw
        self.frames = 0
        self.depth_frames = 0
        self.ids_frames = 0
        self.depth_dtype = depth_dtype
        self.video_tmp = work / f"{cam_id}.mp4"
        self.depth_raw = work / f"{cam_id}.depth.raw"
        self.ids_raw = work / f"{cam_id}.ids.raw"
        self._depth_f: Any = None
        self._ids_f: Any = None
        # A short lookahead bounds memory: 36 open encoders with x264's default 40-frame lookahead hold ~2 GB at 480x720.
        self._video: VideoWriter | None = VideoWriter(
            self.video_tmp, camera.width, camera.height, fps=fps, crf=crf, lookahead=10
        )

    def write(self, rgb: np.ndarray, depth: np.ndarray | None, ids: np.ndarray | None) -> None:
        assert self._video is not None, "camera stream already closed"
        self._video.write(rgb)
        if depth is not None:
            d = depth.astype(np.float32)
            if self.depth_dtype == np.float16:
                d = np.where(d > 65000, np.inf, d)  # beyond float16 range means "empty", not "far"
            self._depth_f = self._depth_f or open(self.depth_raw, "wb")
            self._depth_f.write(np.ascontiguousarray(d.astype(self.depth_dtype)).tobytes())
            self.depth_frames += 1
        if ids is not None:
            self._ids_f = self._ids_f or open(self.ids_raw, "wb")
            self._ids_f.write(np.ascontiguousarray(ids.astype(np.uint8)).tobytes())
            self.ids_frames += 1
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and the raw files (idempotent)."""
        if self._video is not None:
            try:
                self._video.close()
            finally:
                self._video = None
        for f in (self._depth_f, self._ids_f):
            if f is not None:
                f.close()
        self._depth_f = self._ids_f = None

    def abort(self) -> None:
        try:
            self.close()
        except Exception:  # a half-written stream is discarded anyway
            pass

    def raw_array(self, path: Path, dtype: np.dtype, frames: int) -> np.ndarray:
        h, w = self.camera.height, self.camera.width
        return np.memmap(path, dtype=dtype, mode="r", shape=(frames, h, w))


class SceneOutput:
    """Streams per-camera frames of one scene to disk and writes the Contract 2 folder.

    Usage: ``add_camera`` for each camera, then ``add_frame`` per camera per
    frame (frames in order), then ``finish(scene_json)``; ``abort()`` releases
    the encoders of a scene that failed. Videos are encoded while frames
    arrive (one open encoder per camera); depth and ids go to raw files in
    ``<folder>/.work`` and become npz files in ``finish``.
    """

    WORK = ".work"

    def __init__(self, folder: Path, fps: float, depth_dtype: str = "float16", crf: int = 18) -> None:
        self.folder = Path(folder)
        self.fps = fps
        self.depth_dtype = np.dtype(depth_dtype)
        self.crf = crf
        self.cams: dict[str, _CamStream] = {}
        self._work = self.folder / self.WORK

    def add_camera(self, cam_id: str, camera: Camera, raw: dict[str, Any] | None = None) -> None:
        check_id(cam_id, "camera id")
        if cam_id in self.cams:
            raise ValueError(f"camera {cam_id} added twice")
        self._work.mkdir(parents=True, exist_ok=True)
        self.cams[cam_id] = _CamStream(cam_id, camera, raw, self._work, self.fps, self.crf, self.depth_dtype)

    def add_frame(
        self, cam_id: str, rgb: np.ndarray, depth: np.ndarray | None = None, ids: np.ndarray | None = None
    ) -> None:
        try:
            b = self.cams[cam_id]
        except KeyError:
            raise ValueError(f"camera {cam_id} was not added (add_camera first)") from None
        h, w = b.camera.height, b.camera.width
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"camera {cam_id}: expected uint8 RGB {h}x{w}x3, got {rgb.dtype} {rgb.shape}")
        if depth is not None and depth.shape != (h, w):
            raise ValueError(f"camera {cam_id}: depth shape {depth.shape} != {(h, w)}")
        if ids is not None and ids.shape != (h, w):
            raise ValueError(f"camera {cam_id}: mask shape {ids.shape} != {(h, w)}")
        b.write(rgb, depth, ids)

    def abort(self) -> None:
        """Close every encoder and raw file without writing the scene (the caller removes the folder)."""
        for b in self.cams.values():
            b.abort()

    def finish(self, scene_json: dict[str, Any]) -> None:
        counts = {k: b.frames for k, b in self.cams.items()}
        if not counts:
            raise ValueError("no cameras were added")
        if len(set(counts.values())) != 1 or 0 in counts.values():
            self.abort()
            raise ValueError(f"cameras have different frame counts (not synchronized): {counts}")
        n = next(iter(counts.values()))
        for cam_id, b in self.cams.items():
            if b.depth_frames not in (0, n) or b.ids_frames not in (0, n):
                self.abort()
                raise ValueError(
                    f"camera {cam_id}: {b.depth_frames} depth and {b.ids_frames} mask frames for {n} video frames"
                )
        entries = []
        for cam_id, b in self.cams.items():
            b.close()
            (self.folder / "videos").mkdir(parents=True, exist_ok=True)
            os.replace(b.video_tmp, self.folder / "videos" / f"{cam_id}.mp4")
            if b.depth_frames:
                _write_npz_streaming(
                    self.folder / "depth" / f"{cam_id}.npz", "depth", b.raw_array(b.depth_raw, self.depth_dtype, n)
                )
            if b.ids_frames:
                _write_npz_streaming(
                    self.folder / "masks" / f"{cam_id}.npz", "ids", b.raw_array(b.ids_raw, np.dtype(np.uint8), n)
                )
            entries.append(b.camera.to_dict(id=cam_id, raw=b.raw or {}))
        shutil.rmtree(self._work, ignore_errors=True)
        fsio.write_json(self.folder / CAMERAS_JSON, {"cameras": entries}, allow_nan=True)
        # scene.json last: together with cameras.json it marks the folder complete.
        fsio.write_json(self.folder / SCENE_JSON, scene_json, allow_nan=True)


def _write_npz_streaming(path: Path, key: str, arr: np.ndarray) -> None:
    """``np.savez_compressed`` equivalent that streams a (memory-mapped) array in chunks, atomically."""
    with fsio.atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with zf.open(f"{key}.npy", mode="w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


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


# --- consistency check ----------------------------------------------------------------------------


def reprojection_check(
    folder: Path,
    frames: list[int] | None = None,
    depth_tol_rel: float = 0.03,
    depth_tol_abs: float = 0.05,
    cameras: list[tuple[str, Camera]] | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Check that a scene's cameras agree with its pixels, for every ordered pair of cameras (A, B).

    Pixels of A with finite depth are unprojected to world points and
    projected into B. A point that lands inside B is *consistent* when B's
    depth there matches its projected depth, *occluded* when B sees something
    nearer (legitimate), and a *violation* when B sees something farther (B
    would be looking through a surface: wrong axes, handedness, intrinsics or
    depth). Returns per pair: ``inside`` (points landing in B), ``agree``
    (consistent / (consistent + violations)), ``colour_err`` (mean absolute
    RGB difference, 0-255, over consistent points), ``depth_err`` (median
    relative difference between B's depth at the nearest pixel and the
    projected depth, over consistent points) and ``consistent`` (count).
    ``cameras`` overrides cameras.json (to test the check itself).
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    from syncam_data.video import decode

    folder = Path(folder)
    cams = cameras if cameras is not None else [(cid, cam) for cid, cam, _ in read_cameras_json(folder / CAMERAS_JSON)]
    rgb = {
        cid: decode(folder / "videos" / f"{cid}.mp4")[:, : cam.height, : cam.width].astype(np.float32)
        for cid, cam in cams
    }
    depth = {cid: load_npz_array(folder / "depth" / f"{cid}.npz", "depth").astype(np.float32) for cid, _ in cams}
    n = min(len(v) for v in rgb.values())
    frames = list(range(n)) if frames is None else frames
    dmin = {cid: minimum_filter(d, size=(1, 3, 3), mode="nearest") for cid, d in depth.items()}
    dmax = {cid: maximum_filter(d, size=(1, 3, 3), mode="nearest") for cid, d in depth.items()}
    out: dict[tuple[str, str], dict[str, float]] = {}
    for ia, (a, cam_a) in enumerate(cams):
        uv_a = cam_a.pixel_grid().reshape(-1, 2)
        for b, cam_b in cams[:ia] + cams[ia + 1 :]:
            agree = viol = inside_n = 0
            col_err: list[float] = []
            rel_err: list[np.ndarray] = []
            for k in frames:
                d_a = depth[a][k].reshape(-1)
                ok = np.isfinite(d_a)
                pts = cam_a.unproject(uv_a[ok], d_a[ok])
                uv_b, z_b = cam_b.project(pts)
                ub, vb = np.floor(uv_b[:, 0]).astype(np.int64), np.floor(uv_b[:, 1]).astype(np.int64)
                inside = (z_b > 0) & (ub >= 0) & (ub < cam_b.width) & (vb >= 0) & (vb < cam_b.height)
                zb, ub, vb = z_b[inside], ub[inside], vb[inside]
                # Compare with the 3x3 neighbourhood in B: a point between two pixels at a depth edge
                # (or near the horizon) matches one of them; only "every neighbour is farther" is a violation.
                lo, hi = dmin[b][k][vb, ub], dmax[b][k][vb, ub]
                tol = depth_tol_abs + depth_tol_rel * zb
                good = (zb >= lo - tol) & (zb <= hi + tol)
                bad = lo > zb + tol  # includes inf: B sees sky where A saw a surface
                if good.any():
                    rel_err.append(np.abs(depth[b][k][vb[good], ub[good]] - zb[good]) / zb[good])
                agree += int(good.sum())
                viol += int(bad.sum())
                inside_n += int(inside.sum())
                exact = good & (np.abs(depth[b][k][vb, ub] - zb) <= tol)  # colour: only where B's own pixel matches
                if exact.any():
                    ca = rgb[a][k].reshape(-1, 3)[ok][inside][exact]
                    cb = rgb[b][k][vb[exact], ub[exact]]
                    col_err.append(float(np.abs(ca - cb).mean()))
            out[(a, b)] = {
                "inside": float(inside_n),
                "agree": agree / max(agree + viol, 1),
                "consistent": float(agree),
                "colour_err": float(np.mean(col_err)) if col_err else float("nan"),
                "depth_err": float(np.median(np.concatenate(rel_err))) if rel_err else float("nan"),
            }
    return out

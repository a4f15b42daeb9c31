"""Write posed frames (canonical Cameras + RGB) in the RealEstate10K and DL3DV-10K on-disk formats.

Used by the end-to-end demo (a rendered moving-camera sequence becomes both
datasets) and by the tests (fixtures from known cameras). The files match
what the readers in this package, and the datasets' own tools, expect:

RealEstate10K (``export_realestate10k``)::

    <out>/<seq>.txt              URL line, then "timestamp fx fy cx cy 0 0 <w2c 3x4>" per pose line
    <out>/<seq>/<timestamp>.png  frames as images (frames_as="images"), or
    <out>/<seq>.mp4              the whole video (frames_as="video")

Every video frame i has the timestamp round(i · 1e6 / fps) µs, so the nearest
frame to a timestamp is frame i again. The original dataset files list every
frame (``pose_stride=1``); subsampled copies, such as CameraCtrl's, only every
8th-9th (``pose_stride`` > 1).

DL3DV-10K (``export_dl3dv``)::

    <out>/<scene>/[nerfstudio/]transforms.json   OpenGL c2w, w h fl_x fl_y cx cy [k1 k2 p1 p2], frames[]
    <out>/<scene>/[nerfstudio/]images/frame_00001.png, images_2/, images_4/, images_8/

Both writers build the output under a hidden temporary name and rename it
when complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from syncam_data import fsio
from syncam_data.cameras import Camera, c2w_to_opengl, format_realestate10k_line
from syncam_data.ids import check_id
from syncam_data.sources.frameset import encode_image
from syncam_data.video import encode

DL3DV_DOWNSCALES = (1, 2, 4, 8)
DIST_KEYS = ("k1", "k2", "p1", "p2")


def _check_frames(cameras: Sequence[Camera], frames: Sequence[np.ndarray]) -> None:
    if len(cameras) != len(frames) or not cameras:
        raise ValueError(f"need one camera per frame, got {len(cameras)} cameras and {len(frames)} frames")
    for i, (cam, img) in enumerate(zip(cameras, frames)):
        if img.dtype != np.uint8 or img.shape != (cam.height, cam.width, 3):
            raise ValueError(
                f"frame {i}: expected uint8 {cam.height}x{cam.width}x3 for its camera, got {img.dtype} {img.shape}"
            )


def realestate10k_timestamps(num_frames: int, fps: float) -> np.ndarray:
    """Timestamp (µs) of each video frame, as the dataset derives them from the YouTube video."""
    return np.rint(np.arange(num_frames) * 1e6 / fps).astype(np.int64)


def export_realestate10k(
    out_dir: str | Path,
    sequence_id: str,
    cameras: Sequence[Camera],
    frames: Sequence[np.ndarray],
    fps: float = 30000 / 1001,
    frames_as: str = "images",
    pose_stride: int = 1,
    url: str | None = None,
    image_ext: str = "png",
    crf: int = 18,
) -> Path:
    """Write one RealEstate10K sequence; ``cameras[i]``/``frames[i]`` are video frame i. Returns the .txt path.

    The camera file is written last (atomically): its presence means the
    frames are complete.
    """
    check_id(sequence_id, "sequence id")
    _check_frames(cameras, frames)
    if frames_as not in ("images", "video"):
        raise ValueError(f"frames_as must be 'images' or 'video', got {frames_as!r}")
    if pose_stride < 1:
        raise ValueError("pose_stride must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ts = realestate10k_timestamps(len(frames), fps)
    kept = list(range(0, len(frames), pose_stride))
    if frames_as == "video":
        encode(np.stack(frames), out / f"{sequence_id}.mp4", fps=fps, crf=crf)
    else:
        _write_folder_atomically(
            out / sequence_id, {f"{int(ts[i])}.{image_ext}": encode_image(frames[i], _fmt(image_ext), 95) for i in kept}
        )
    lines = [url or f"https://www.youtube.com/watch?v={sequence_id}"]
    lines += [format_realestate10k_line(int(ts[i]), cameras[i]) for i in kept]
    txt = out / f"{sequence_id}.txt"
    fsio.write_bytes(txt, ("\n".join(lines) + "\n").encode())
    return txt


def _fmt(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    if ext in ("jpg", "jpeg"):
        return "jpg"
    if ext == "png":
        return "png"
    raise ValueError(f"image extension must be png or jpg, got {ext!r}")


def _write_folder_atomically(final: Path, files: dict[str, bytes]) -> None:
    """The folder built under a temporary name and published durably, replacing an earlier export (``fsio``)."""
    with fsio.atomic_dir(final, replace=True) as tmp:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


# --- DL3DV ----------------------------------------------------------------------------------


def _cv_matrix(cam: Camera) -> np.ndarray:
    K = cam.K.copy()
    K[0, 2] -= 0.5  # OpenCV pixel centres sit at integers, ours at +0.5
    K[1, 2] -= 0.5
    return K


def distortion_maps(camera: Camera, distortion: dict[str, float]) -> np.ndarray:
    """(H, W, 2) float32: for each distorted pixel, where it lies in the pinhole image of ``camera``.

    Found with ``cv2.undistortPointsIter`` (iterative inversion of the OpenCV
    k1 k2 p1 p2 model): the inverse of what the reader's undistortion does.
    """
    K = _cv_matrix(camera)
    dist = np.array([float(distortion.get(k, 0.0)) for k in DIST_KEYS], np.float64)
    w, h = camera.width, camera.height
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
    return cv2.undistortPointsIter(grid, K, dist, None, K, criteria).reshape(h, w, 2).astype(np.float32)


def distort_image(
    image: np.ndarray, camera: Camera, distortion: dict[str, float], maps: np.ndarray | None = None
) -> np.ndarray:
    """Resample a pinhole image of ``camera`` as the OpenCV-model lens (k1 k2 p1 p2) would have seen it."""
    m = distortion_maps(camera, distortion) if maps is None else maps
    return cv2.remap(image, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _dl3dv_size(width: int, height: int, factor: int) -> tuple[int, int]:
    return max(1, width // factor), max(1, height // factor)


def export_dl3dv(
    out_dir: str | Path,
    scene_id: str,
    cameras: Sequence[Camera],
    frames: Sequence[np.ndarray],
    downscales: Sequence[int] = DL3DV_DOWNSCALES,
    distortion: dict[str, float] | None = None,
    applied_transform: np.ndarray | None = None,
    nerfstudio_subfolder: bool = False,
    image_ext: str = "png",
) -> Path:
    """Write one DL3DV-10K scene folder; returns the folder that holds transforms.json.

    All cameras must share one size and intrinsics (one physical camera, as in
    DL3DV). With ``distortion`` the pinhole frames are distorted by it before
    writing, so images and coefficients agree. ``applied_transform`` (3×4 or
    4×4, rigid) is pre-multiplied into every pose and recorded, as nerfstudio does.
    """
    check_id(scene_id, "scene id")
    _check_frames(cameras, frames)
    c0 = cameras[0]
    for i, c in enumerate(cameras):
        if (c.width, c.height) != (c0.width, c0.height) or not np.allclose(c.intrinsics, c0.intrinsics):
            raise ValueError(f"camera {i}: DL3DV scenes use one camera; size/intrinsics differ from camera 0")
    A = np.eye(4)
    if applied_transform is not None:
        a = np.asarray(applied_transform, np.float64)
        A[: a.shape[0], :] = a[:3] if a.shape == (4, 4) else a
    meta: dict[str, Any] = {
        "w": c0.width,
        "h": c0.height,
        "fl_x": c0.fx,
        "fl_y": c0.fy,
        "cx": c0.cx,
        "cy": c0.cy,
        "camera_model": "OPENCV",
    }
    for k in DIST_KEYS:
        meta[k] = float((distortion or {}).get(k, 0.0))
    names = [f"frame_{i + 1:05d}.{image_ext}" for i in range(len(frames))]
    meta["frames"] = [
        {"file_path": f"images/{n}", "transform_matrix": (A @ _gl4(cam)).tolist(), "colmap_im_id": i + 1}
        for i, (n, cam) in enumerate(zip(names, cameras))
    ]
    if applied_transform is not None:
        meta["applied_transform"] = A[:3].tolist()
    fmt = _fmt(image_ext)
    files: dict[str, bytes] = {}
    maps = distortion_maps(c0, distortion) if distortion else None  # one camera: one map for all frames
    for name, img in zip(names, frames):
        if distortion:
            img = distort_image(img, c0, distortion, maps)
        for f in downscales:
            folder = "images" if f == 1 else f"images_{f}"
            small = (
                img if f == 1 else cv2.resize(img, _dl3dv_size(c0.width, c0.height, f), interpolation=cv2.INTER_AREA)
            )
            files[f"{folder}/{name}"] = encode_image(small, fmt, 95)
    files["transforms.json"] = json.dumps(meta, indent=2).encode()
    scene = Path(out_dir) / scene_id
    if nerfstudio_subfolder:
        files = {f"nerfstudio/{k}": v for k, v in files.items()}
    _write_folder_atomically(scene, files)
    return scene / "nerfstudio" if nerfstudio_subfolder else scene


def _gl4(cam: Camera) -> np.ndarray:
    m = np.eye(4)
    m[:3] = c2w_to_opengl(cam.c2w)
    return m


# --- a rendered camera path as a posed video --------------------------------------------------


def read_render_sequence(scene_dir: str | Path) -> tuple[list[str], list[Camera], list[np.ndarray], float]:
    """A render scene folder read as one moving camera: (camera ids, cameras, frames, fps).

    The cameras of ``cameras.json``, in order, are the positions of the moving camera at video frames
    0, 1, ...: frame i is camera i's frame 0 when the scene has one frame (a frozen scene), else camera
    i's frame i (a camera moving through an animated scene, which needs at least as many frames as cameras).
    """
    from syncam_data.cameras import read_cameras_json
    from syncam_data.video import decode, probe

    folder = Path(scene_dir)
    entries = read_cameras_json(folder / "cameras.json")
    if not entries:
        raise ValueError(f"{folder / 'cameras.json'}: no cameras")
    videos = [folder / "videos" / f"{cid}.mp4" for cid, _, _ in entries]
    for v in videos:
        if not v.is_file():
            raise ValueError(f"{v}: missing (not a complete render scene folder)")
    info = probe(videos[0], count_frames=True)
    if info.num_frames != 1 and info.num_frames < len(entries):
        raise ValueError(
            f"{folder}: {len(entries)} cameras but {info.num_frames} frames per video: a camera path needs one frame "
            "(a frozen scene) or at least one frame per camera"
        )
    frames = [decode(v, [0 if info.num_frames == 1 else i])[0] for i, v in enumerate(videos)]
    return [cid for cid, _, _ in entries], [cam for _, cam, _ in entries], frames, float(info.fps)

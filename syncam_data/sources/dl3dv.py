"""DL3DV-10K reader: nerfstudio ``transforms.json`` scenes with images, images_2/4/8.

On-disk format (REFERENCE.md): per scene ``<hash>/`` (under subset folders
such as ``1K/``, ``2K/``), either directly or in a ``nerfstudio/`` sub-folder
(the benchmark release):

```
<hash>/[nerfstudio/]transforms.json   w, h, fl_x, fl_y, cx, cy, [k1 k2 p1 p2 (k3)], frames[]
<hash>/[nerfstudio/]images/frame_00001.png ...   full size (1-based numbering)
<hash>/[nerfstudio/]images_2/ images_4/ images_8/  downscaled copies
```

``frames[i].transform_matrix`` is an OpenGL camera-to-world (camera +y up,
looking along -z); the canonical pose is ``c2w_from_opengl`` of it. The
intrinsics refer to ``w``×``h`` and are rescaled to the size of the image
actually read from the chosen folder (so a rounded ``images_8`` size stays
exact). Per-frame intrinsics in a frame entry override the global ones.

``applied_transform`` (3×4, written by nerfstudio when it permutes the
world axes of the COLMAP reconstruction) is already contained in every
``transform_matrix``. ``keep`` (default) uses the poses as stored;
``undo`` left-multiplies them by its inverse and so returns to the COLMAP
world. It is a rigid change of world, so poses relative to view 0 (what the
model sees) are the same either way.

Frame index: the number in the file name (``frame_00001.png`` -> 1), which
is also what ``--max-gap`` is measured in.

Distortion (``camera_model`` OPENCV with k1 k2 p1 p2 [k3]): by default each
image is undistorted with OpenCV onto the same pinhole intrinsics, so the
canonical camera describes the stored pixels exactly. With
``--no-undistort`` the images are kept as they are and the coefficients are
recorded in each camera entry under ``"distortion"``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from syncam_data.cameras import Camera, CameraError, c2w_from_opengl, check_rotation, orthonormalize
from syncam_data.ids import UnsafeIdError, check_id, sanitize_id
from syncam_data.sources.frameset import SourceError, SourceFrame, read_image_rgb

log = logging.getLogger(__name__)

SOURCE = "dl3dv"
TRANSFORMS = "transforms.json"
IMAGE_FOLDERS = ("images", "images_2", "images_4", "images_8")
# "auto" prefers images_4 (960x540 in DL3DV-10K): at least the training size, and 16x fewer
# pixels to decode than the 4K originals.
AUTO_ORDER = ("images_4", "images_2", "images", "images_8")
APPLIED_TRANSFORM = ("keep", "undo")
LAYOUT = "scene folders with transforms.json (or nerfstudio/transforms.json) beside images/ or images_N/, anywhere under it"
DIST_KEYS = ("k1", "k2", "p1", "p2", "k3")
_PER_FRAME_KEYS = frozenset(("w", "h", "fl_x", "fl_y", "cx", "cy", "camera_model") + DIST_KEYS)
_FRAME_NUM = re.compile(r"(\d+)(?=\.[A-Za-z0-9]+$)")


@dataclass(frozen=True)
class Dl3dvOptions:
    image_folder: str = "auto"
    undistort: bool = True
    applied_transform: str = "keep"

    def __post_init__(self) -> None:
        if self.image_folder not in ("auto",) + IMAGE_FOLDERS:
            raise ValueError(f"image folder must be auto or one of {IMAGE_FOLDERS}, got {self.image_folder!r}")
        if self.applied_transform not in APPLIED_TRANSFORM:
            raise ValueError(f"applied-transform must be one of {APPLIED_TRANSFORM}, got {self.applied_transform!r}")


@dataclass(frozen=True)
class SceneRef:
    sequence_id: str
    path: str  # the folder holding transforms.json (the scene or its nerfstudio/ sub-folder)

    @property
    def uri(self) -> str:
        return self.path


# --- discovery ---------------------------------------------------------------------


def iter_scene_refs(root: str | Path, exclude: Iterable[Path] = ()) -> Iterator[SceneRef]:
    """Yield every scene folder under ``root`` (sorted), never descending into a scene."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: DL3DV root is not a directory")
    yield from _walk(root, frozenset(Path(p).resolve() for p in exclude))


def _walk(folder: Path, exclude: frozenset[Path]) -> Iterator[SceneRef]:
    if (folder / TRANSFORMS).is_file():
        name = folder.parent.name if folder.name == "nerfstudio" else folder.name
        yield SceneRef(_scene_id(name), str(folder))
        return
    if (folder / "nerfstudio" / TRANSFORMS).is_file():
        yield SceneRef(_scene_id(folder.name), str(folder / "nerfstudio"))
        return
    try:
        with os.scandir(folder) as it:
            subs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        log.warning("cannot list %s: %s", folder, e)
        return
    for name in subs:
        if name in IMAGE_FOLDERS or name == "colmap":
            continue
        sub = folder / name
        if exclude and sub.resolve() in exclude:
            continue
        yield from _walk(sub, exclude)


def _scene_id(name: str) -> str:
    try:
        return check_id(name, "scene id")
    except UnsafeIdError:
        return sanitize_id(name)


# --- transforms.json ----------------------------------------------------------------


@dataclass
class Intrinsics:
    w: int
    h: int
    fl_x: float
    fl_y: float
    cx: float
    cy: float
    dist: tuple[float, ...]  # k1 k2 p1 p2 k3 (zeros when absent)
    model: str

    @property
    def has_distortion(self) -> bool:
        return any(abs(v) > 0 for v in self.dist)

    def camera(self, width: int, height: int, c2w: np.ndarray) -> Camera:
        sx, sy = width / self.w, height / self.h
        return Camera(width, height, self.fl_x * sx, self.fl_y * sy, self.cx * sx, self.cy * sy, c2w)


@dataclass
class Transforms:
    path: Path
    frame_numbers: np.ndarray  # (N,) from the file names, increasing
    files: list[str]  # file names (basename) per frame
    c2w: np.ndarray  # (N, 3, 4) canonical
    raw_matrices: list[list[float]]  # transform_matrix as stored (16 numbers)
    intrinsics: list[Intrinsics]
    applied_transform: list[float] | None


def _intrinsics(d: dict[str, Any], base: Intrinsics | None, where: str) -> Intrinsics:
    def get(key: str, default: Any = None) -> Any:
        if key in d:
            return d[key]
        if base is not None:
            return getattr(base, key) if key != "camera_model" else base.model
        return default

    try:
        w, h = int(get("w")), int(get("h"))
        fl_x, fl_y = float(get("fl_x")), float(get("fl_y", get("fl_x")))
        cx, cy = float(get("cx", w / 2)), float(get("cy", h / 2))
    except (TypeError, ValueError):
        raise SourceError(f"{where}: needs numeric w, h, fl_x (and fl_y, cx, cy)") from None
    base_dist = dict(zip(DIST_KEYS, base.dist)) if base is not None else {}
    try:
        dist = tuple(float(d.get(k, base_dist.get(k, 0.0))) for k in DIST_KEYS)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: distortion coefficients must be numbers") from None
    model = str(d.get("camera_model", base.model if base else "OPENCV"))
    if w <= 0 or h <= 0 or fl_x <= 0 or fl_y <= 0:
        raise SourceError(f"{where}: invalid intrinsics w={w} h={h} fl_x={fl_x} fl_y={fl_y}")
    return Intrinsics(w, h, fl_x, fl_y, cx, cy, dist, model)


def frame_number(file_path: str, fallback: int) -> int:
    m = _FRAME_NUM.search(os.path.basename(file_path))
    return int(m.group(1)) if m else fallback


def read_transforms(path: str | Path, applied_transform: str = "keep") -> Transforms:
    """Parse a nerfstudio transforms.json; SourceError names the file and the frame entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read transforms.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise SourceError(f"{path}: no 'frames' list")
    has_global = "fl_x" in data
    global_intr = _intrinsics(data, None, str(path)) if has_global else None
    applied = _applied(data.get("applied_transform"), path) if "applied_transform" in data else None
    undo = np.linalg.inv(applied) if (applied is not None and applied_transform == "undo") else None
    rows = []
    for i, fr in enumerate(data["frames"]):
        where = f"{path}: frames[{i}]"
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise SourceError(f"{where}: needs file_path and transform_matrix")
        intr = _intrinsics(fr, global_intr, where) if (global_intr is None or _PER_FRAME_KEYS.intersection(fr)) else global_intr
        c2w_gl = _matrix(fr["transform_matrix"], where)
        if undo is not None:
            c2w_gl = undo @ c2w_gl
        try:
            check_rotation(c2w_gl[:3, :3], tol=1e-3, what="transform_matrix rotation")
        except CameraError as e:
            raise SourceError(f"{where}: {e}") from None
        c2w_gl[:3, :3] = orthonormalize(c2w_gl[:3, :3])
        fp = str(fr["file_path"])
        rows.append((frame_number(fp, i), os.path.basename(fp), c2w_from_opengl(c2w_gl), [float(v) for v in np.asarray(fr["transform_matrix"], float).reshape(-1)], intr))
    rows.sort(key=lambda r: r[0])
    nums = np.array([r[0] for r in rows], np.int64)
    if np.any(np.diff(nums) <= 0):
        dup = int(nums[int(np.argmax(np.diff(nums) <= 0)) + 1])
        raise SourceError(f"{path}: two frames share frame number {dup}")
    return Transforms(
        path,
        nums,
        [r[1] for r in rows],
        np.stack([r[2] for r in rows]),
        [r[3] for r in rows],
        [r[4] for r in rows],
        [float(v) for v in applied[:3].reshape(-1)] if applied is not None else None,
    )


def _matrix(m: Any, where: str) -> np.ndarray:
    try:
        a = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: transform_matrix is not numeric") from None
    if a.shape == (3, 4):
        a = np.vstack([a, [0, 0, 0, 1]])
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise SourceError(f"{where}: transform_matrix must be a finite 4x4 (or 3x4), got shape {a.shape}")
    return a


def _applied(m: Any, path: Path) -> np.ndarray:
    a = _matrix(m, f"{path}: applied_transform")
    try:
        check_rotation(a[:3, :3], tol=1e-3, what="applied_transform rotation")
    except CameraError as e:
        raise SourceError(f"{path}: applied_transform: {e} (only rigid world changes are supported)") from None
    return a


# --- undistortion ------------------------------------------------------------------------


def _cv_matrix(cam: Camera) -> np.ndarray:
    # OpenCV puts pixel centres at integer coordinates; our (and COLMAP's) continuous
    # convention puts them at +0.5, so the principal point shifts by half a pixel.
    K = cam.K.copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def undistort_maps(cam: Camera, dist: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Remap tables that resample a distorted image onto the pinhole camera ``cam``."""
    K = _cv_matrix(cam)
    # Fixed-point maps (1/32 pixel) make remap about twice as fast as float maps.
    return cv2.initUndistortRectifyMap(K, np.asarray(dist, np.float64), None, K, (cam.width, cam.height), cv2.CV_16SC2)


# --- the opened scene ---------------------------------------------------------------------


@dataclass
class Dl3dvScene:
    ref: SceneRef
    transforms: Transforms
    image_dir: Path
    opts: Dl3dvOptions
    warnings: list[str] = field(default_factory=list)
    _maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    source = SOURCE

    @property
    def sequence_id(self) -> str:
        return self.ref.sequence_id

    @property
    def source_uri(self) -> str:
        return self.ref.path

    @property
    def c2w(self) -> np.ndarray:
        return self.transforms.c2w

    @property
    def frame_indices(self) -> np.ndarray:
        return self.transforms.frame_numbers

    @property
    def gap_positions(self) -> np.ndarray:
        return self.transforms.frame_numbers

    def header(self) -> dict[str, Any]:
        h: dict[str, Any] = {"image_folder": self.image_dir.name, "undistorted": self.opts.undistort}
        if self.transforms.applied_transform is not None:
            h["applied_transform"] = {"matrix": self.transforms.applied_transform, "mode": self.opts.applied_transform}
        return h

    def load_frames(self, entries: list[int]) -> dict[int, SourceFrame]:
        return {i: self._frame(i) for i in entries}

    def _frame(self, i: int) -> SourceFrame:
        t = self.transforms
        path = self.image_dir / t.files[i]
        img = read_image_rgb(path)
        h, w = img.shape[:2]
        intr = t.intrinsics[i]
        cam = intr.camera(w, h, t.c2w[i])
        raw: dict[str, Any] = {"convention": "opengl_c2w", "transform_matrix": t.raw_matrices[i], "file_path": t.files[i]}
        extra: dict[str, Any] = {"source_uri": str(path)}
        if intr.has_distortion:
            if intr.model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
                raise SourceError(f"{t.path}: camera_model {intr.model} is not supported (only OPENCV distortion)")
            if self.opts.undistort:
                key = (w, h, cam.intrinsics, intr.dist)
                if key not in self._maps:
                    self._maps[key] = undistort_maps(cam, intr.dist)
                mx, my = self._maps[key]
                img = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            else:
                extra["distortion"] = {"model": intr.model, **dict(zip(DIST_KEYS, intr.dist))}
        return SourceFrame(int(t.frame_numbers[i]), img, cam, raw, extra)


def _choose_image_dir(base: Path, opts: Dl3dvOptions, transforms_path: Path) -> Path:
    order = AUTO_ORDER if opts.image_folder == "auto" else (opts.image_folder,)
    for name in order:
        if (base / name).is_dir():
            return base / name
    raise SourceError(f"{transforms_path}: no image folder ({', '.join(order)}) beside it")


def open_scene(ref: SceneRef, opts: Dl3dvOptions) -> Dl3dvScene:
    base = Path(ref.path)
    tr = read_transforms(base / TRANSFORMS, opts.applied_transform)
    image_dir = _choose_image_dir(base, opts, base / TRANSFORMS)
    _check_images(tr, image_dir)
    scene = Dl3dvScene(ref, tr, image_dir, opts)
    if not opts.undistort and any(i.has_distortion for i in tr.intrinsics):
        scene.warnings.append("images kept distorted (--no-undistort): coefficients recorded per camera under 'distortion'")
    return scene


def _check_images(tr: Transforms, image_dir: Path) -> None:
    """Every frame needs its image; one directory listing instead of a stat per frame."""
    try:
        with os.scandir(image_dir) as it:
            names = {e.name for e in it}
    except OSError as e:
        raise SourceError(f"{image_dir}: cannot list image folder ({e})") from None
    for i, name in enumerate(tr.files):
        if name not in names:
            raise SourceError(f"{image_dir / name}: image file is missing (frame {int(tr.frame_numbers[i])} of {tr.path})")

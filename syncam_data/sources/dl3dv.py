"""DL3DV-10K reader: nerfstudio ``transforms.json`` scenes with images, images_2/4/8.

On-disk format (docs/sample-frames.md): per scene ``<hash>/`` (under subset folders
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
exact); an image of another aspect is refused unless ``frame_resize`` says
how it was made, and EXIF orientation is never applied (``sources/framing.py``).

nerfstudio variants read as nerfstudio's own ``nerfstudio_dataparser`` does:
intrinsics keys (``w h fl_x fl_y cx cy``, distortion, ``camera_model``) may be
global, per frame, or both, a frame's own value overriding the global one
(e.g. global ``w``/``h`` with per-frame ``fl_x``/``cx``/``cy``); ``file_path``
is relative to the folder of ``transforms.json`` and may hold sub-folders
(``./images/robot/000001-color.png``): for ``images_N`` it is looked up with
its sub-folders inside ``images_N``, then, as nerfstudio's loader does, by
its file name alone; a path without an extension gets ``.png``/``.jpg``/
``.jpeg``. Only pinhole models are read: ``PINHOLE``, ``SIMPLE_PINHOLE`` and
``OPENCV`` (k1 k2 p1 p2 k3); fisheye (``OPENCV_FISHEYE``, ``is_fisheye``),
``EQUIRECTANGULAR`` and a non-zero ``k4`` are refused with that reason.

``applied_transform`` (3×4, written by nerfstudio when it permutes the
world axes of the COLMAP reconstruction) is already contained in every
``transform_matrix``. ``keep`` (default) uses the poses as stored;
``undo`` left-multiplies them by its inverse and so returns to the COLMAP
world. It is a rigid change of world, so poses relative to view 0 (what the
model sees) are the same either way.

Frame index (also what ``--max-gap`` is measured in): the last run of digits
in the file name's stem (``frame_00026.png`` and ``frame_00026`` -> 26,
``000026-color.png`` -> 26), never the frame's position in the list (which
COLMAP exports in image-id order). When names carry no number (UUIDs) or
their numbers repeat (one per sub-folder camera), ``colmap_im_id`` is used
if every frame has a distinct one, else the position in the sorted file
names, with a warning in the report.

Distortion (``camera_model`` OPENCV with k1 k2 p1 p2 [k3]): by default each
image is undistorted with OpenCV onto the same pinhole intrinsics, so the
canonical camera describes the stored pixels exactly. With
``--no-undistort`` the images are kept as they are and the coefficients are
recorded in each camera entry under ``"distortion"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from syncam_data.cameras import Camera, CameraError, c2w_from_opengl, check_rotation, orthonormalize
from syncam_data.ids import UnsafeIdError, check_id, sanitize_id
from syncam_data.sources.frameset import SourceError, SourceFrame
from syncam_data.sources.framing import FRAME_RESIZE, frame_camera, read_image

log = logging.getLogger(__name__)

SOURCE = "dl3dv"
TRANSFORMS = "transforms.json"
IMAGE_FOLDERS = ("images", "images_2", "images_4", "images_8")
# "auto" prefers images_4 (960x540 in DL3DV-10K): at least the training size, and 16x fewer
# pixels to decode than the 4K originals.
AUTO_ORDER = ("images_4", "images_2", "images", "images_8")
APPLIED_TRANSFORM = ("keep", "undo")
LAYOUT = (
    "scene folders with transforms.json (or nerfstudio/transforms.json) beside images/ or images_N/, anywhere under it"
)
DIST_KEYS = ("k1", "k2", "p1", "p2", "k3")
INTRINSIC_KEYS = (
    "w",
    "h",
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "camera_model",
    "camera_angle_x",
    "camera_angle_y",
    "is_fisheye",
    "k4",
) + DIST_KEYS
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_DIGITS = re.compile(r"\d+")
_OTHER_IMAGE_EXTS = (".webp", ".bmp", ".tif", ".tiff", ".exr")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Dl3dvConfig:
    image_folder: str = "auto"
    undistort: bool = True
    applied_transform: str = "keep"
    frame_resize: str = "none"  # how stored images of another aspect were made (sources/framing.py)

    def __post_init__(self) -> None:
        if self.image_folder not in ("auto",) + IMAGE_FOLDERS:
            raise ValueError(f"image folder must be auto or one of {IMAGE_FOLDERS}, got {self.image_folder!r}")
        if self.applied_transform not in APPLIED_TRANSFORM:
            raise ValueError(f"applied-transform must be one of {APPLIED_TRANSFORM}, got {self.applied_transform!r}")
        if self.frame_resize not in FRAME_RESIZE:
            raise ValueError(f"frame-resize must be one of {FRAME_RESIZE}, got {self.frame_resize!r}")


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

    @property
    def values(self) -> tuple[float, float, float, float]:
        return (self.fl_x, self.fl_y, self.cx, self.cy)

    def camera(self, width: int, height: int, c2w: np.ndarray) -> Camera:
        """The camera for the whole ``w`` x ``h`` frame stored at width x height (each axis scaled)."""
        sx, sy = width / self.w, height / self.h
        return Camera(width, height, self.fl_x * sx, self.fl_y * sy, self.cx * sx, self.cy * sy, c2w)


@dataclass
class Transforms:
    path: Path
    frame_numbers: np.ndarray  # (N,) increasing (see the module docstring for where they come from)
    files: list[str]  # file_path per frame, as written in transforms.json
    c2w: np.ndarray  # (N, 3, 4) canonical
    raw_matrices: list[list[float]]  # transform_matrix as stored (16 numbers)
    intrinsics: list[Intrinsics]
    applied_transform: list[float] | None
    numbering: str = "file name"  # file name | colmap_im_id | sorted file names
    warnings: list[str] = field(default_factory=list)


def _intrinsics(d: dict[str, Any], where: str) -> Intrinsics:
    """Intrinsics from one frame's keys merged over the global ones (nerfstudio: a frame's own value wins)."""
    model = str(d.get("camera_model", "OPENCV")).upper()
    if model not in PINHOLE_MODELS:
        raise SourceError(
            f"{where}: camera_model {model} is not a pinhole model (supported: {', '.join(PINHOLE_MODELS)})"
        )
    if d.get("is_fisheye") is True:
        raise SourceError(f"{where}: is_fisheye is true: fisheye cameras are not supported (pinhole models only)")
    try:
        w, h = round(float(d["w"])), round(float(d["h"]))
        if "fl_x" in d:
            fl_x = float(d["fl_x"])
        else:  # instant-ngp style: a field of view instead of a focal length
            fl_x = 0.5 * w / math.tan(0.5 * float(d["camera_angle_x"]))
        if "fl_y" in d:
            fl_y = float(d["fl_y"])
        elif "camera_angle_y" in d:
            fl_y = 0.5 * h / math.tan(0.5 * float(d["camera_angle_y"]))
        else:
            fl_y = fl_x
        cx, cy = float(d.get("cx", w / 2)), float(d.get("cy", h / 2))
    except (KeyError, TypeError, ValueError):
        raise SourceError(f"{where}: needs numeric w, h and fl_x (or camera_angle_x), globally or per frame") from None
    try:
        dist = tuple(float(d.get(k, 0.0)) for k in DIST_KEYS)
        k4 = float(d.get("k4", 0.0))
    except (TypeError, ValueError):
        raise SourceError(f"{where}: distortion coefficients must be numbers") from None
    if k4 != 0.0:
        raise SourceError(f"{where}: k4 = {k4:g}: only the OPENCV model (k1 k2 p1 p2 k3) is supported")
    if any(dist) and model != "OPENCV":
        raise SourceError(f"{where}: camera_model {model} with distortion coefficients (only OPENCV has them)")
    if w <= 0 or h <= 0 or not (fl_x > 0 and fl_y > 0):
        raise SourceError(f"{where}: invalid intrinsics w={w} h={h} fl_x={fl_x} fl_y={fl_y}")
    return Intrinsics(w, h, fl_x, fl_y, cx, cy, dist, model)


def frame_number(file_path: str) -> int | None:
    """The last run of digits in the file name's stem, with or without an extension; None when it has none (or is a UUID)."""
    name = PurePosixPath(str(file_path).replace("\\", "/")).name
    stem = (
        name[: -len(PurePosixPath(name).suffix)]
        if PurePosixPath(name).suffix.lower() in IMAGE_EXTS + _OTHER_IMAGE_EXTS
        else name
    )
    if _UUID.search(stem):
        return None  # the digits of a random name are no frame number
    runs = _DIGITS.findall(stem)
    return int(runs[-1]) if runs else None


def _numbering(paths: list[str], frames: list[dict[str, Any]], path: Path) -> tuple[list[int], str, list[str]]:
    """Frame numbers: from the names, else colmap_im_id, else the sorted file-name order (with a warning)."""
    nums = [frame_number(p) for p in paths]
    if all(n is not None for n in nums) and len(set(nums)) == len(nums):
        return nums, "file name", []  # type: ignore[return-value]
    ids = [fr.get("colmap_im_id") for fr in frames]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids):
        return ids, "colmap_im_id", []  # type: ignore[return-value]
    why = "carry no frame number" if any(n is None for n in nums) else "repeat frame numbers"
    rank = {p: k + 1 for k, p in enumerate(sorted(range(len(paths)), key=lambda i: (paths[i], i)))}
    warn = f"{path}: file names {why} and there is no distinct colmap_im_id: frames numbered in sorted file-name order (--max-gap counts that order)"
    return [rank[i] for i in range(len(paths))], "sorted file names", [warn]


def read_transforms(path: str | Path, applied_transform: str = "keep") -> Transforms:
    """Parse a nerfstudio transforms.json; SourceError names the file and the frame entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is tolerated, as for RealEstate10K files
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read transforms.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise SourceError(f"{path}: no 'frames' list")
    common = {k: data[k] for k in INTRINSIC_KEYS if k in data}
    applied = _applied(data.get("applied_transform"), path) if "applied_transform" in data else None
    undo = np.linalg.inv(applied) if (applied is not None and applied_transform == "undo") else None
    cache: dict[str, Intrinsics] = {}
    rows = []
    for i, fr in enumerate(data["frames"]):
        where = f"{path}: frames[{i}]"
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise SourceError(f"{where}: needs file_path and transform_matrix")
        merged = {**common, **{k: fr[k] for k in INTRINSIC_KEYS if k in fr}}
        key = json.dumps(merged, sort_keys=True, default=str)
        intr = cache.get(key)
        if intr is None:
            intr = cache[key] = _intrinsics(merged, where if any(k in fr for k in INTRINSIC_KEYS) else str(path))
        c2w_gl = _matrix(fr["transform_matrix"], where)
        if undo is not None:
            c2w_gl = undo @ c2w_gl
        try:
            check_rotation(c2w_gl[:3, :3], tol=1e-3, what="transform_matrix rotation")
        except CameraError as e:
            raise SourceError(f"{where}: {e}") from None
        c2w_gl[:3, :3] = orthonormalize(c2w_gl[:3, :3])
        rows.append(
            (
                str(fr["file_path"]),
                c2w_from_opengl(c2w_gl),
                [float(v) for v in np.asarray(fr["transform_matrix"], float).reshape(-1)],
                intr,
            )
        )
    nums, numbering, warnings = _numbering([r[0] for r in rows], data["frames"], path)
    order = sorted(range(len(rows)), key=lambda k: nums[k])
    return Transforms(
        path,
        np.array([nums[k] for k in order], np.int64),
        [rows[k][0] for k in order],
        np.stack([rows[k][1] for k in order]),
        [rows[k][2] for k in order],
        [rows[k][3] for k in order],
        [float(v) for v in applied[:3].reshape(-1)] if applied is not None else None,
        numbering,
        warnings,
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
    image_dir: Path | None  # the chosen images/images_N folder; None: file paths used as listed
    opts: Dl3dvConfig
    image_paths: list[Path] = field(default_factory=list)  # per frame, resolved at open
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
        h: dict[str, Any] = {
            "image_folder": self.image_dir.name if self.image_dir else "as listed",
            "undistorted": self.opts.undistort,
        }
        if self.transforms.numbering != "file name":
            h["frame_numbers_from"] = self.transforms.numbering
        if self.opts.frame_resize != "none":
            h["frame_resize"] = self.opts.frame_resize
        if self.transforms.applied_transform is not None:
            h["applied_transform"] = {"matrix": self.transforms.applied_transform, "mode": self.opts.applied_transform}
        return h

    def load_frames(self, entries: list[int]) -> dict[int, SourceFrame]:
        return {i: self._frame(i) for i in entries}

    def _frame(self, i: int) -> SourceFrame:
        t = self.transforms
        path = self.image_paths[i]
        img, orientation = read_image(path)
        h, w = img.shape[:2]
        intr = t.intrinsics[i]
        desc = f"w x h = {intr.w}x{intr.h} in {t.path}"
        cam = frame_camera(
            intr.values, (intr.w, intr.h), (w, h), t.c2w[i], self.opts.frame_resize, str(path), desc, orientation
        )
        raw: dict[str, Any] = {
            "convention": "opengl_c2w",
            "transform_matrix": t.raw_matrices[i],
            "file_path": t.files[i],
        }
        extra: dict[str, Any] = {"source_uri": str(path)}
        if intr.has_distortion:
            # The coefficients act on normalized coordinates, which a resize or crop (with K updated) leaves as they are.
            if self.opts.undistort:
                key = (w, h, cam.intrinsics, intr.dist)
                if key not in self._maps:
                    self._maps[key] = undistort_maps(cam, intr.dist)
                mx, my = self._maps[key]
                img = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            else:
                extra["distortion"] = {"model": intr.model, **dict(zip(DIST_KEYS, intr.dist))}
        return SourceFrame(int(t.frame_numbers[i]), img, cam, raw, extra)


def _path_parts(file_path: str) -> list[str]:
    return [p for p in PurePosixPath(str(file_path).replace("\\", "/")).parts if p not in (".", "/")]


def _under_image_folders(tr: Transforms) -> bool:
    return all((parts := _path_parts(f)) and parts[0] in IMAGE_FOLDERS for f in tr.files)


def _choose_image_dir(base: Path, opts: Dl3dvConfig, tr: Transforms) -> Path | None:
    order = AUTO_ORDER if opts.image_folder == "auto" else (opts.image_folder,)
    for name in order:
        if (base / name).is_dir():
            return base / name
    if opts.image_folder in ("auto", "images") and not _under_image_folders(tr):
        return None  # e.g. "rgb/0001.png": full-size images where file_path says (as nerfstudio reads them)
    raise SourceError(f"{tr.path}: no image folder ({', '.join(order)}) beside it")


def _candidates(base: Path, image_dir: Path | None, file_path: str) -> list[Path]:
    """Where a frame's image may be, best first: its sub-folders inside the chosen folder, then nerfstudio's flat lookup."""
    parts = _path_parts(file_path)
    if not parts:
        return []
    if image_dir is None:
        paths = [base.joinpath(*parts)]
    else:
        sub = parts[1:] if parts[0] in IMAGE_FOLDERS and len(parts) > 1 else parts
        paths = [image_dir.joinpath(*sub)]
        if len(sub) > 1:
            # nerfstudio_dataparser._get_fname looks images_N/<file name> up without the sub-folders.
            paths.append(image_dir / sub[-1])
    out = []
    for p in paths:
        out.append(p)
        if p.suffix.lower() not in IMAGE_EXTS + _OTHER_IMAGE_EXTS:  # no extension (NeRF-synthetic style "./train/r_0")
            out.extend(p.with_name(p.name + ext) for ext in IMAGE_EXTS)
    return out


def open_scene(ref: SceneRef, opts: Dl3dvConfig) -> Dl3dvScene:
    base = Path(ref.path)
    tr = read_transforms(base / TRANSFORMS, opts.applied_transform)
    image_dir = _choose_image_dir(base, opts, tr)
    paths = _resolve_images(tr, base, image_dir)
    scene = Dl3dvScene(ref, tr, image_dir, opts, paths, list(tr.warnings))
    if not opts.undistort and any(i.has_distortion for i in tr.intrinsics):
        scene.warnings.append(
            "images kept distorted (--no-undistort): coefficients recorded per camera under 'distortion'"
        )
    return scene


def _resolve_images(tr: Transforms, base: Path, image_dir: Path | None) -> list[Path]:
    """Every frame's image, found with one directory listing per folder (not a stat per frame)."""
    listings: dict[Path, set[str]] = {}

    def exists(p: Path) -> bool:
        if p.parent not in listings:
            try:
                with os.scandir(p.parent) as it:
                    listings[p.parent] = {e.name for e in it}
            except OSError:
                listings[p.parent] = set()
        return p.name in listings[p.parent]

    out = []
    for i, fp in enumerate(tr.files):
        cands = _candidates(base, image_dir, fp)
        hit = next((c for c in cands if exists(c)), None)
        if hit is None:
            first = cands[0] if cands else base / str(fp)
            if first.suffix.lower() not in IMAGE_EXTS + _OTHER_IMAGE_EXTS:
                first = first.with_name(first.name + _usual_ext(listings.get(first.parent, set())))
            raise SourceError(f"{first}: image file is missing (frame {int(tr.frame_numbers[i])} of {tr.path})")
        out.append(hit)
    return out


def _usual_ext(names: set[str]) -> str:
    counts = {e: sum(1 for n in names if n.lower().endswith(e)) for e in IMAGE_EXTS}
    return max(IMAGE_EXTS, key=lambda e: counts[e]) if any(counts.values()) else IMAGE_EXTS[0]

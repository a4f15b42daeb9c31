"""The released SynCamVideo / MultiCamVideo layout -> ``multiview_video`` groups (dataset ``syncamvideo``).

The archives unpack as (README of KwaiVGI/SynCamMaster)::

    SynCamVideo-Dataset/train/f24_aperture5/sceneN/videos/camXX.mp4
    SynCamVideo-Dataset/train/f24_aperture5/sceneN/cameras/camera_extrinsics.json
    SynCamVideo-Dataset/val/basic/{videos, cameras}        (a scene without the sceneN level)
    MultiCamVideo-Dataset/train/fNN_apertureM/sceneN/...   (several subsets)

``camera_extrinsics.json`` holds a UE row-vector 4x4 in cm per ``frameN`` and
``camXX``. A *scene* is any folder with ``videos/*.mp4`` and
``cameras/camera_extrinsics.json``; ``--syncamvideo`` may point at an archive
root, a split, a subset or one scene, and scenes are found at any depth below
it (never inside a scene). The group id is the scene's path from its archive,
``<archive>-<split>-<subset>-<scene>`` (``SynCamVideo-Dataset-val-basic`` for
the scene without a ``sceneN`` level), taken from the folders above the scene
whichever level was given, so it is stable and unique across archives, splits
and subsets. The split is the nearest of the two folders above the scene
named ``train``/``val``/``validation``/``test``; without one the id is
``<subset>-<scene>`` (the scene folder's parent and name). ``extra`` keeps
``archive``, ``split``, ``subset`` and ``scene``.

Cameras: the first frame's extrinsics converted with
``cameras.c2w_from_ue_row_matrix`` (canonical, metres). The released cameras
are static; when a camera moves anyway, a warning is logged and its
per-frame canonical poses are kept in ``extra.c2w_per_frame``. Intrinsics
(none are shipped): explicit ``intrinsics`` > horizontal ``fov_deg`` > the
lens/filmback (``focal_mm`` on a ``sensor_mm``-wide sensor), always for the
actual video size. Without ``focal_mm`` the lens is read from the subset name
(``f18_aperture10`` -> 18 mm): the MultiCamVideo README (KwaiVGI/ReCamMaster,
"Camera Configurations") lists four lenses, 18/24/35/50 mm, on a 23.76 mm square
sensor, one per ``fNN_apertureM`` subset; a scene with no such subset (the
``val/basic`` scene, a renamed folder) uses SynCamVideo's 24 mm.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.cameras import (
    CameraError,
    c2w_from_ue_row_matrix,
    intrinsics_from_filmback,
    intrinsics_from_hfov,
    parse_ue_row_matrix,
)
from syncam_data.fsio import sha256_file
from syncam_data.ids import sanitize_id
from syncam_data.shards.adapters.base import (
    AdapterError,
    ConvertConfig,
    GroupPlan,
    GroupRef,
    ViewPlan,
    probe_clip,
    read_bytes,
)
from syncam_data.shards.schema import ViewRecord, group_hash

log = logging.getLogger(__name__)

SOURCE = "syncamvideo"
KIND = "multiview_video"
DATASET = "syncamvideo"
EXTRINSICS = Path("cameras") / "camera_extrinsics.json"
_FRAME_RE = re.compile(r"^frame(\d+)$")


LAYOUT = (
    "scene folders with videos/camXX.mp4 and cameras/camera_extrinsics.json at any depth, "
    "as released: <archive>/train/<fNN_apertureM>/sceneN/ or <archive>/val/basic/"
)
SPLITS = ("train", "val", "validation", "test")


def is_scene(folder: Path) -> bool:
    return (folder / EXTRINSICS).is_file() and (folder / "videos").is_dir() and any((folder / "videos").glob("*.mp4"))


def discover(path: Path, options: ConvertConfig) -> list[GroupRef]:
    """Every scene at or below ``path`` (sorted; a scene's own folders are not searched)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: --syncamvideo must be a folder (archive root, split, subset or scene)")
    scenes: list[Path] = []
    _walk(path.resolve(), scenes, set())
    refs = []
    for s in scenes:
        parts = scene_parts(s)
        refs.append(GroupRef(SOURCE, str(s), {"parts": parts}, dataset=DATASET, group_id=group_id_from(parts)))
    return refs


def _walk(folder: Path, out: list[Path], seen: set[Path]) -> None:
    if folder in seen:  # a symlink loop
        return
    seen.add(folder)
    if is_scene(folder):
        out.append(folder)
        return
    try:
        kids = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        log.warning("cannot list %s: %s", folder, e)
        return
    for k in kids:
        _walk(k.resolve(), out, seen)


def scene_parts(scene: Path) -> dict[str, str | None]:
    """archive / split / subset / scene names of a scene folder, from the folders above it."""
    scene = Path(scene).resolve()
    for up, split_dir in enumerate((scene.parent, scene.parent.parent)):
        if split_dir.name.lower() in SPLITS:
            subset = scene.name if up == 0 else scene.parent.name  # val/basic: the scene is the subset
            return {
                "archive": split_dir.parent.name or None,
                "split": split_dir.name,
                "subset": subset,
                "scene": scene.name,
            }
    return {"archive": None, "split": None, "subset": scene.parent.name, "scene": scene.name}


def group_id_from(parts: dict[str, str | None]) -> str:
    names = [parts["archive"], parts["split"], parts["subset"]] if parts["split"] else [parts["subset"]]
    if parts["scene"] != parts["subset"] or not parts["split"]:
        names.append(parts["scene"])
    return sanitize_id("-".join(n for n in names if n))


def group_id_for(scene: Path) -> str:
    return group_id_from(scene_parts(scene))


def load_extrinsics(scene: Path) -> dict[int, dict[str, str]]:
    """frame number -> {cam: UE row-matrix text}, frames sorted."""
    p = scene / EXTRINSICS
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{p}: cannot read ({e})") from None
    if not isinstance(data, dict) or not data:
        raise AdapterError(f"{p}: expected an object keyed frameN -> camXX -> matrix text")
    out: dict[int, dict[str, str]] = {}
    for key, cams in data.items():
        m = _FRAME_RE.match(key)
        if not m or not isinstance(cams, dict):
            raise AdapterError(f"{p}: unexpected entry {key!r} (expected frameN -> {{camXX: matrix}})")
        out[int(m.group(1))] = cams
    return dict(sorted(out.items()))


def _views(scene: Path, extr: dict[int, dict[str, str]]) -> list[str]:
    first = extr[next(iter(extr))]
    videos = {p.stem for p in (scene / "videos").glob("*.mp4")}
    no_pose = sorted(videos - set(first))
    if no_pose:
        log.warning("%s: videos without extrinsics skipped: %s", scene, no_pose)
    no_video = sorted(set(first) - videos)
    if no_video:
        log.warning("%s: cameras without a video skipped: %s", scene, no_video)
    views = sorted(videos & set(first))
    if not views:
        raise AdapterError(f"{scene}: no camera has both a video and extrinsics")
    return views


def scan(ref: GroupRef, options: ConvertConfig) -> GroupPlan:
    scene = Path(ref.path)
    extr = load_extrinsics(scene)
    views = _views(scene, extr)
    digests = [sha256_file(scene / "videos" / f"{v}.mp4") for v in views]
    digests.append(sha256_file(scene / EXTRINSICS))
    nbytes = sum((scene / "videos" / f"{v}.mp4").stat().st_size for v in views)
    plans = [ViewPlan(v, str(scene / "videos" / f"{v}.mp4")) for v in views]
    return GroupPlan(ref, DATASET, group_id_for(scene), group_hash(KIND, digests), plans, nbytes)


# The released subsets are named for their lens: f18_aperture10, f24_aperture5, f35_aperture2.4, f50_aperture2.4.
_SUBSET_LENS_RE = re.compile(r"^f(\d+(?:\.\d+)?)_aperture\d+(?:\.\d+)?$", re.IGNORECASE)
DEFAULT_FOCAL_MM = 24.0  # SynCamVideo (2025): 24 mm on a 23.76 mm sensor


def lens_from_subset(subset: str | None) -> float | None:
    """Focal length in mm named by a released ``fNN_apertureM`` subset folder, else None."""
    m = _SUBSET_LENS_RE.match(subset or "")
    return float(m.group(1)) if m else None


def intrinsics_for(
    width: int, height: int, options: ConvertConfig, subset: str | None = None
) -> tuple[tuple[float, float, float, float], str]:
    if options.intrinsics is not None:
        return tuple(float(v) for v in options.intrinsics), "given"  # type: ignore[return-value]
    if options.fov_deg is not None:
        return intrinsics_from_hfov(width, height, options.fov_deg), f"hfov {options.fov_deg} deg"
    if options.focal_mm is not None:
        focal, where = options.focal_mm, "given"
    elif (named := lens_from_subset(subset)) is not None:
        focal, where = named, f"from subset {subset}"
    else:
        focal, where = DEFAULT_FOCAL_MM, "SynCamVideo default"
    return intrinsics_from_filmback(
        width, height, focal, options.sensor_mm
    ), f"lens {focal:g} mm ({where}) on {options.sensor_mm:g} mm filmback"


def camera_track(
    scene: Path, extr: dict[int, dict[str, str]], cam: str, options: ConvertConfig
) -> tuple[np.ndarray, list[list[float]] | None]:
    """(first-frame canonical c2w, per-frame c2w list when the camera moves else None)."""
    where = scene / EXTRINSICS
    try:
        mats = [parse_ue_row_matrix(frames[cam]) for frames in extr.values()]
    except KeyError:
        raise AdapterError(f"{where}: camera {cam} is missing in some frames") from None
    except CameraError as e:
        raise AdapterError(f"{where}: camera {cam}: {e}") from None
    stack = np.stack(mats)
    dt = np.abs(stack[:, 3, :3] - stack[0, 3, :3]).max()
    dr = np.abs(stack[:, :3, :3] - stack[0, :3, :3]).max()
    c2w0 = c2w_from_ue_row_matrix(mats[0])
    if dt <= options.static_tol_cm and dr <= options.static_tol_rot:
        return c2w0, None
    log.warning(
        "%s: camera %s moves (up to %.3g cm, %.3g rotation) — storing per-frame poses in extra.c2w_per_frame",
        where,
        cam,
        dt,
        dr,
    )
    return c2w0, [[float(v) for v in c2w_from_ue_row_matrix(m).reshape(-1)] for m in mats]


def convert(plan: GroupPlan, options: ConvertConfig) -> list[ViewRecord]:
    scene = Path(plan.ref.path)
    extr = load_extrinsics(scene)
    first_key = next(iter(extr))
    records = []
    counts: dict[str, int] = {}
    for cam in [v.view_id for v in plan.views]:
        video = scene / "videos" / f"{cam}.mp4"
        media = read_bytes(video, "video")
        info = probe_clip(media, str(video), pixel_format=False)
        counts[cam] = info.num_frames
        c2w, per_frame = camera_track(scene, extr, cam, options)
        parts = scene_parts(scene)
        K, how = intrinsics_for(info.width, info.height, options, parts["subset"])
        extra: dict[str, Any] = {
            **parts,
            "intrinsics_from": how,
            "raw": {"convention": "ue_row_matrix_cm", "frame": f"frame{first_key}", "matrix": extr[first_key][cam]},
        }
        if per_frame is not None:
            extra["c2w_per_frame"] = per_frame
        if len(extr) != info.num_frames:
            extra["extrinsics_frames"] = len(extr)
        records.append(
            ViewRecord(
                dataset=DATASET,
                kind=KIND,
                group_id=plan.group_id,
                view_id=cam,
                media=media,
                media_format="mp4",
                num_frames=info.num_frames,
                height=info.height,
                width=info.width,
                fps=info.fps,
                caption=plan.view_captions.get(cam, plan.caption),
                frame_indices=list(range(info.num_frames)),
                K=list(K),
                c2w=[float(v) for v in c2w.reshape(-1)],
                source_uri=str(video),
                extra=extra,
                group_hash=plan.group_hash,
            )
        )
    if len(set(counts.values())) > 1:
        raise AdapterError(f"{scene}: videos have different frame counts (not synchronized): {counts}")
    n = next(iter(counts.values()))
    if len(extr) != n:
        log.warning("%s: %d extrinsics frames for %d video frames", scene / EXTRINSICS, len(extr), n)
    return records

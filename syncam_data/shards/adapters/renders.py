"""Render scene folders (Contract 2) -> ``multiview_video`` groups, one row per camera.

The dataset is ``syncam-blender`` or ``syncam-unreal`` by the backend recorded
in ``scene.json``; the group id is the scene folder's name (the scene id);
depth blobs are the ``depth/<cam>.npz`` files as they are; the caption comes
from ``scene.json``. Dot-prefixed folders (a renderer's temporary folders) are
skipped with a warning: a render job may still be writing them. Every other
folder is a scene; one that cannot be read is an error of the build.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from syncam_data.cameras import CAMERAS_JSON, read_cameras_json
from syncam_data.fsio import sha256_file
from syncam_data.ids import UnsafeIdError, check_id
from syncam_data.render.output import SCENE_JSON
from syncam_data.shards.adapters.base import (
    AdapterError,
    ConvertConfig,
    GroupPlan,
    GroupRef,
    ViewPlan,
    npz_array_shape,
    probe_clip,
    read_bytes,
    read_json_object,
)
from syncam_data.shards.schema import ViewRecord, group_hash

log = logging.getLogger(__name__)

SOURCE = "renders"
KIND = "multiview_video"
# scene.json "backend" -> dataset name (Contract 3).
BACKEND_DATASETS = {"blender": "syncam-blender", "unrealcv": "syncam-unreal", "unreal": "syncam-unreal"}
LAYOUT = "complete render scene folders <scene_id>/ with scene.json, cameras.json and videos/<cam>.mp4 (dot-prefixed folders are renders still running)"


def discover(path: Path, options: ConvertConfig) -> list[GroupRef]:
    """Every complete scene folder under ``path`` (or ``path`` itself when it is a scene folder)."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: --renders must be a folder of scene folders")
    if (path / SCENE_JSON).exists():
        candidates = [path]
    else:
        candidates = sorted(p for p in path.iterdir() if p.is_dir())
    refs = []
    for folder in candidates:
        if folder.name.startswith("."):
            log.warning("%s: skipped (temporary folder of a running or interrupted render)", folder)
            continue
        # Renders publish a scene by renaming its finished temporary folder: any other folder is a scene,
        # and one that cannot be read (no or broken scene.json / cameras.json, a missing video) is an
        # error row of the build, naming the file and the problem (``scan``), never silently dropped.
        refs.append(GroupRef(SOURCE, str(folder.resolve()), dataset=_cheap_dataset(folder), group_id=folder.name))
    return refs


def _cheap_dataset(folder: Path) -> str | None:
    try:
        return dataset_for_backend(_read_scene_json(folder), folder)
    except AdapterError:
        return None  # scan reports the problem as this group's error


def _read_scene_json(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / SCENE_JSON, "scene.json")


def dataset_for_backend(scene: dict[str, Any], where: Path) -> str:
    backend = str(scene.get("backend") or (scene.get("spec") or {}).get("backend") or "").lower()
    ds = BACKEND_DATASETS.get(backend)
    if ds is None:
        raise AdapterError(
            f"{where / SCENE_JSON}: unknown backend {backend!r} (expected one of {sorted(BACKEND_DATASETS)})"
        )
    return ds


def scene_caption(scene: dict[str, Any]) -> str:
    cap = scene.get("caption")
    if not cap and isinstance(scene.get("spec"), dict):
        cap = scene["spec"].get("caption")
    return str(cap or "")


def scan(ref: GroupRef, options: ConvertConfig) -> GroupPlan:
    folder = Path(ref.path)
    scene = _read_scene_json(folder)
    try:
        gid = check_id(folder.name, "scene id", str(folder))
        cams = read_cameras_json(folder / CAMERAS_JSON)
    except (UnsafeIdError, ValueError) as e:
        raise AdapterError(str(e)) from None
    if not cams:
        raise AdapterError(f"{folder / CAMERAS_JSON}: no cameras")
    digests, views, nbytes = [], [], 0
    for cid, _, _ in cams:
        video = folder / "videos" / f"{cid}.mp4"
        if not video.is_file():
            raise AdapterError(f"{video}: missing video of camera {cid}")
        digests.append(sha256_file(video))
        nbytes += video.stat().st_size
        depth = folder / "depth" / f"{cid}.npz"
        if depth.is_file():
            nbytes += depth.stat().st_size
        views.append(ViewPlan(cid, str(video)))
    return GroupPlan(
        ref,
        dataset_for_backend(scene, folder),
        gid,
        group_hash(KIND, digests),
        views,
        nbytes,
        caption=scene_caption(scene),
    )


def convert(plan: GroupPlan, options: ConvertConfig) -> list[ViewRecord]:
    folder = Path(plan.ref.path)
    scene = _read_scene_json(folder)
    try:
        cams = read_cameras_json(folder / CAMERAS_JSON)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    records = []
    frames_seen: dict[str, int] = {}
    for cid, cam, entry in cams:
        video = folder / "videos" / f"{cid}.mp4"
        media = read_bytes(video, "video")
        info = probe_clip(media, str(video), pixel_format=False)
        if (info.width, info.height) != (cam.width, cam.height):
            # Intrinsics are in pixels of the stored media: a mismatch means the cameras are wrong for it.
            raise AdapterError(
                f"{video}: video is {info.width}x{info.height} but cameras.json says {cam.width}x{cam.height} for {cid}"
            )
        frames_seen[cid] = info.num_frames
        depth_blob = None
        depth_path = folder / "depth" / f"{cid}.npz"
        if depth_path.is_file():
            depth_blob = read_bytes(depth_path, "depth")
            shape = npz_array_shape(depth_blob, "depth", str(depth_path))
            if shape != (info.num_frames, info.height, info.width):
                raise AdapterError(
                    f"{depth_path}: depth shape {shape} != (frames, H, W) {(info.num_frames, info.height, info.width)} of the video"
                )
        extra: dict[str, Any] = {"raw": entry.get("raw") or {}, "scene_folder": str(folder)}
        if (folder / "masks" / f"{cid}.npz").is_file():
            extra["mask_path"] = str(folder / "masks" / f"{cid}.npz")
        records.append(
            ViewRecord(
                dataset=plan.dataset,
                kind=KIND,
                group_id=plan.group_id,
                view_id=cid,
                media=media,
                media_format="mp4",
                num_frames=info.num_frames,
                height=info.height,
                width=info.width,
                fps=info.fps,
                caption=plan.view_captions.get(cid, plan.caption),
                frame_indices=list(range(info.num_frames)),
                K=list(cam.intrinsics),
                c2w=cam.c2w12(),
                depth=depth_blob,
                source_uri=str(video),
                extra=extra,
                group_hash=plan.group_hash,
            )
        )
    if len(set(frames_seen.values())) > 1:
        raise AdapterError(f"{folder}: cameras have different frame counts (not synchronized): {frames_seen}")
    if "seed" in (scene.get("spec") or {}):
        for r in records:
            r.extra["seed"] = scene["spec"]["seed"]
    return records

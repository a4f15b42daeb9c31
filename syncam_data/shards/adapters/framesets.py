"""Frame-set folders from ``sample-frames`` -> ``multiview_image`` groups, one row per image.

``<DIR>/<group_id>/cameras.json`` = ``{"source": "realestate10k"|"dl3dv",
"sequence", "source_uri", "frame_indices", "cameras": [{"id", "image",
"width", "height", "fx", "fy", "cx", "cy", "c2w", "frame_index",
"timestamp_us" (RealEstate10K), "raw"}]}`` plus the images. The dataset is
the ``source``; media are the image bytes as they are (JPEG or PNG, told by
their magic bytes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from syncam_data.cameras import CAMERAS_JSON, read_cameras_json
from syncam_data.fsio import sha256_file
from syncam_data.ids import UnsafeIdError, check_id
from syncam_data.shards.adapters.base import (
    AdapterError,
    ConvertConfig,
    GroupPlan,
    GroupRef,
    ViewPlan,
    image_format,
    image_size,
    read_bytes,
    read_json_object,
)
from syncam_data.shards.schema import ViewRecord, group_hash

log = logging.getLogger(__name__)

SOURCE = "frames"
KIND = "multiview_image"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LAYOUT = "frame-set folders <group_id>/ with cameras.json and its images, as sample-frames writes them"


def discover(path: Path, options: ConvertConfig) -> list[GroupRef]:
    """Every frame-set folder (one with a cameras.json) under ``path``, or ``path`` itself."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: --frames must be a folder of frame-set folders")
    candidates = [path] if (path / CAMERAS_JSON).is_file() else sorted(p for p in path.iterdir() if p.is_dir())
    refs = []
    for folder in candidates:
        if folder.name.startswith("."):
            log.warning("%s: skipped (temporary folder of a running or interrupted sample-frames)", folder)
            continue
        # sample-frames publishes a frame set by renaming its finished temporary folder, so a folder
        # holding images is a frame set: one without a readable cameras.json is an error row naming
        # the file (``scan``), never silently dropped. A folder with neither is not a frame set.
        if not (folder / CAMERAS_JSON).is_file() and not _has_images(folder):
            log.debug("%s: not a frame set (no %s, no images)", folder, CAMERAS_JSON)
            continue
        refs.append(GroupRef(SOURCE, str(folder.resolve()), dataset=_cheap_dataset(folder), group_id=folder.name))
    return refs


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _cheap_dataset(folder: Path) -> str | None:
    try:
        return str(_top(folder).get("source") or "") or None
    except AdapterError:
        return None  # scan reports the problem as this group's error


def _top(folder: Path) -> dict[str, Any]:
    p = folder / CAMERAS_JSON
    data = read_json_object(p)
    if not data.get("cameras"):
        raise AdapterError(f"{p}: expected an object with a non-empty 'cameras' list")
    return data


def _image_path(folder: Path, cid: str, entry: dict[str, Any]) -> Path:
    if entry.get("image"):
        name = str(entry["image"])
        p = (folder / name).resolve()
        if folder.resolve() not in p.parents:
            raise AdapterError(
                f"{folder / CAMERAS_JSON}: image {name!r} of camera {cid} points outside the frame-set folder"
            )
        return p
    for ext in IMAGE_EXTS:
        if (folder / f"{cid}{ext}").is_file():
            return folder / f"{cid}{ext}"
    raise AdapterError(f"{folder}: no image for camera {cid} (looked for {cid}.jpg/.png)")


def _cameras(folder: Path):
    try:
        return read_cameras_json(folder / CAMERAS_JSON)
    except ValueError as e:
        raise AdapterError(str(e)) from None


def scan(ref: GroupRef, options: ConvertConfig) -> GroupPlan:
    folder = Path(ref.path)
    top = _top(folder)
    try:
        dataset = check_id(str(top.get("source") or ""), "frame-set source", str(folder / CAMERAS_JSON))
        gid = check_id(folder.name, "group id", str(folder))
    except UnsafeIdError as e:
        raise AdapterError(str(e)) from None
    digests, views, nbytes = [], [], 0
    for cid, _, entry in _cameras(folder):
        img = _image_path(folder, cid, entry)
        if not img.is_file():
            raise AdapterError(f"{img}: missing image of camera {cid}")
        digests.append(sha256_file(img))
        nbytes += img.stat().st_size
        views.append(ViewPlan(cid, str(img)))
    return GroupPlan(ref, dataset, gid, group_hash(KIND, digests), views, nbytes, caption=str(top.get("caption") or ""))


def convert(plan: GroupPlan, options: ConvertConfig) -> list[ViewRecord]:
    folder = Path(plan.ref.path)
    top = _top(folder)
    records = []
    for cid, cam, entry in _cameras(folder):
        img = _image_path(folder, cid, entry)
        data = read_bytes(img, "image")
        fmt = image_format(data, str(img))
        w, h = image_size(data, str(img))
        if (w, h) != (cam.width, cam.height):
            raise AdapterError(f"{img}: image is {w}x{h} but cameras.json says {cam.width}x{cam.height} for {cid}")
        if "frame_index" not in entry:
            raise AdapterError(f"{folder / CAMERAS_JSON}: camera {cid} has no frame_index")
        extra: dict[str, Any] = {"raw": entry.get("raw") or {}, "sequence": top.get("sequence"), "image": str(img)}
        if entry.get("timestamp_us") is not None:
            extra["timestamp_us"] = int(entry["timestamp_us"])
        records.append(
            ViewRecord(
                dataset=plan.dataset,
                kind=KIND,
                group_id=plan.group_id,
                view_id=cid,
                media=data,
                media_format=fmt,
                num_frames=1,
                height=h,
                width=w,
                fps=None,
                caption=plan.view_captions.get(cid, plan.caption),
                frame_indices=[int(entry["frame_index"])],
                K=list(cam.intrinsics),
                c2w=cam.c2w12(),
                source_uri=str(top.get("source_uri") or img),
                extra=extra,
                group_hash=plan.group_hash,
            )
        )
    return records

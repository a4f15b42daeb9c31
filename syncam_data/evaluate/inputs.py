"""Find groups of synchronized views (with their stated cameras) in every input `eval` accepts.

Input kinds, detected from the files present:

- ``shards``: a shard dataset (``dataset.json``); groups are ``(dataset, group_id)``.
- ``render``: a Contract 2 scene folder (``cameras.json`` + ``videos/<cam>.mp4``).
- ``frameset``: a frame set from ``sample-frames`` (``cameras.json`` whose
  entries name an ``"image"`` file; top level ``"source"`` and ``"sequence"``).
- ``generate``: a ``syncam-generate`` output (``videos/<view>.mp4``,
  ``cameras.json``, ``generation.json`` with ``"prompt"``).

INPUT may be one such folder or a folder of them (one level down); a shard
dataset is always a whole input. ``GroupRef``s are small and picklable:
workers (processes or Ray tasks) load the pixels themselves.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.cameras import CAMERAS_JSON, Camera, read_cameras_json
from syncam_data.images import decode_rgb

log = logging.getLogger(__name__)

GENERATION_JSON = "generation.json"
INPUT_KINDS = ("shards", "render", "frameset", "generate")


class InputError(ValueError):
    """An INPUT that is not one of the accepted layouts; the message names the path."""


@dataclass
class ViewRef:
    view_id: str
    camera: Camera | None
    media: str  # "video" or "image"
    path: str | None = None  # file for folder inputs
    shard_row: int | None = None  # index row for shard inputs
    media_format: str | None = None  # shards: mp4 / jpeg / png


@dataclass
class GroupRef:
    input_kind: str
    root: str  # the folder the group came from (the dataset root for shards)
    dataset: str
    group_id: str
    kind: str  # multiview_video or multiview_image
    views: list[ViewRef]
    num_frames: int | None  # frames every view has; None = not known yet (see group_num_frames)
    text: str = ""  # caption or prompt (CLIP-T)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.group_id}"


# --- detection --------------------------------------------------------------


def classify_folder(folder: Path) -> str | None:
    """The input kind of one folder, or None if it is none of them."""
    if (folder / "dataset.json").is_file():
        return "shards"
    cams = folder / CAMERAS_JSON
    if not cams.is_file():
        return None
    if (folder / GENERATION_JSON).is_file():
        return "generate"
    try:
        entries = json.loads(cams.read_text()).get("cameras", [])
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise InputError(f"{cams}: cannot read cameras.json ({e})") from None
    if entries and all(isinstance(e, dict) and "image" in e for e in entries):
        return "frameset"
    if (folder / "videos").is_dir():
        return "render"
    return None


def find_groups(root: str | Path, cameras_override: Path | None = None) -> tuple[list[GroupRef], dict[str, str]]:
    """(every group in INPUT sorted by key, {folder: error} for sub-folders that could not be read).

    Raises InputError when INPUT itself is unusable or holds no group at all.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise InputError(
            f"{root}: INPUT must be a folder (a shard dataset, scene folder(s), frame set(s) or a generate output)"
        )
    errors: dict[str, str] = {}
    kind = classify_folder(root)
    if kind is not None:
        groups = _groups_of(root, kind)
    else:
        groups = []
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            # One unreadable folder among many is recorded and skipped, like a failing group.
            try:
                ck = classify_folder(child)
                if ck is None:
                    log.debug("%s: not an eval input, skipped", child)
                    continue
                groups.extend(_groups_of(child, ck))
            except (InputError, ValueError, OSError) as e:
                log.warning("%s: skipped: %s", child, e)
                errors[str(child)] = str(e)
    if not groups and not errors:
        raise InputError(
            f"{root}: found no shard dataset (dataset.json), scene folder (cameras.json + videos/), "
            f"frame set (cameras.json with images) or generate output (generation.json) here or one level down"
        )
    if cameras_override is not None:
        override = {cid: cam for cid, cam, _ in read_cameras_json(cameras_override)}
        groups = [_override_cameras(g, override) for g in groups]
    return sorted(groups, key=lambda g: g.key), errors


def _override_cameras(g: GroupRef, override: dict[str, Camera]) -> GroupRef:
    views = [replace(v, camera=override.get(v.view_id, v.camera)) for v in g.views]
    return replace(g, views=views)


def _groups_of(folder: Path, kind: str) -> list[GroupRef]:
    if kind == "shards":
        return _shard_groups(folder)
    if kind == "frameset":
        return [_frameset_group(folder)]
    return [_video_folder_group(folder, kind)]


# --- folder inputs ------------------------------------------------------------


def _video_folder_group(folder: Path, kind: str) -> GroupRef:
    cams = read_cameras_json(folder / CAMERAS_JSON)
    views = []
    for cid, cam, _ in cams:
        path = folder / "videos" / f"{cid}.mp4"
        if not path.is_file():
            raise InputError(f"{folder}: camera {cid!r} has no video {path}")
        views.append(ViewRef(cid, cam, "video", path=str(path)))
    text = ""
    if kind == "generate":
        try:
            text = str(json.loads((folder / GENERATION_JSON).read_text()).get("prompt", ""))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{folder / GENERATION_JSON}: cannot read ({e})") from None
    else:
        text = _scene_caption(folder)
    dataset = "generate" if kind == "generate" else "render"
    # Frame counts are probed by the worker (num_frames None): listing stays cheap and a corrupt video fails only its group.
    return GroupRef(kind, str(folder), dataset, folder.name, "multiview_video", views, None, text)


def _scene_caption(folder: Path) -> str:
    """A render scene's caption if scene.json carries one (optional)."""
    p = folder / "scene.json"
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    for key in ("caption", "prompt"):
        if isinstance(d.get(key), str):
            return d[key]
        spec = d.get("spec") if isinstance(d.get("spec"), dict) else None
        if spec and isinstance(spec.get(key), str):
            return spec[key]
    return ""


def _frameset_group(folder: Path) -> GroupRef:
    path = folder / CAMERAS_JSON
    top = json.loads(path.read_text())
    views = []
    for cid, cam, entry in read_cameras_json(path):
        img = folder / str(entry["image"])
        if not img.resolve().is_relative_to(folder.resolve()):
            raise InputError(f"{path}: camera {cid!r} image {entry['image']!r} points outside the frame set")
        if not img.is_file():
            raise InputError(f"{path}: camera {cid!r} image {img} is missing")
        views.append(ViewRef(cid, cam, "image", path=str(img)))
    dataset = str(top.get("source") or "frameset")
    extra = {"sequence": top.get("sequence")}
    return GroupRef(
        "frameset", str(folder), dataset, folder.name, "multiview_image", views, 1, str(top.get("caption", "")), extra
    )


# --- shard inputs ---------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def open_reader(root: str):
    """One ShardReader per process and dataset (workers reuse it across groups)."""
    from syncam_data.shards.reader import ShardReader

    return ShardReader(root)


def _shard_groups(root: Path) -> list[GroupRef]:
    from syncam_data.shards.reader import ShardDatasetError

    try:
        reader = open_reader(str(root))
    except ShardDatasetError as e:
        raise InputError(str(e)) from None
    if len(reader) == 0:
        raise InputError(
            f"{root}: the shard dataset has no rows (dataset.json lists {len(reader.manifest.get('shards', []))} shard(s))"
        )
    cols = [
        "dataset",
        "kind",
        "group_id",
        "view_id",
        "K",
        "c2w",
        "num_frames",
        "width",
        "height",
        "media_format",
        "caption",
    ]
    rows = reader.index.select(cols).to_pylist()
    groups: list[GroupRef] = []
    for (ds, gid), idx in reader.groups().items():
        kind = rows[idx[0]]["kind"]
        views = []
        for i in idx:
            r = rows[i]
            cam = None
            if r["K"] is not None and r["c2w"] is not None:
                fx, fy, cx, cy = r["K"]
                cam = Camera(r["width"], r["height"], fx, fy, cx, cy, r["c2w"])
            media = "video" if r["media_format"] == "mp4" else "image"
            views.append(ViewRef(r["view_id"], cam, media, shard_row=i, media_format=r["media_format"]))
        n = 1 if kind == "multiview_image" else min(int(rows[i]["num_frames"]) for i in idx)
        caption = next((rows[i]["caption"] for i in idx if rows[i]["caption"]), "")
        groups.append(GroupRef("shards", str(root), ds, gid, kind, views, n, caption))
    return groups


def group_num_frames(group: GroupRef) -> int:
    """Frames that every view of the group has (probing the videos when the listing did not)."""
    if group.num_frames is not None:
        return group.num_frames
    from syncam_data.video import probe

    return min(probe(v.path).num_frames for v in group.views) if group.views else 0


# --- pixels -------------------------------------------------------------------------


def frame_indices(num_frames: int, n: int) -> list[int]:
    """``n`` evenly spaced frame numbers in [0, num_frames): first and last included; one frame = the middle one."""
    if num_frames <= 0:
        return []
    if n <= 1 or num_frames == 1:
        return [num_frames // 2]
    return sorted(set(int(round(x)) for x in np.linspace(0, num_frames - 1, min(n, num_frames))))


def _decode_image(data: bytes, name: str) -> np.ndarray:
    img = decode_rgb(data)  # the stored pixels, never turned by EXIF: the cameras describe them
    if img is None:
        raise InputError(f"{name}: not a decodable image")
    return img


def load_view_frames(group: GroupRef, view: ViewRef, indices: list[int]) -> np.ndarray:
    """RGB uint8 frames (len(indices), H, W, 3); an image view gives its one image for every index."""
    from syncam_data.video import decode

    if group.input_kind == "shards":
        blob = open_reader(group.root).read_blob(view.shard_row)
        name = f"{group.root} row {view.shard_row} ({group.key}/{view.view_id})"
        if view.media == "video":
            return decode(blob, indices)
        return np.stack([_decode_image(blob, name)] * len(indices))
    if view.media == "video":
        return decode(view.path, indices)
    return np.stack([_decode_image(Path(view.path).read_bytes(), view.path)] * len(indices))

"""Kept rows of a filter ``scores.parquet`` -> ``single_video`` groups (dataset ``web``, one view ``v0``).

The group id is derived from the row's ``content_hash`` (sanitized, so a
hostile value cannot escape the output folder), which also makes the same
clip found under two paths one group. Cameras are unknown (``K``/``c2w``
null); the filter's scores are copied.

Media: the original bytes are copied when the clip already is an H.264 mp4
(yuv420p, even size) with at most ``max_frames`` frames and ``max_size``
bytes; otherwise it is decoded and re-encoded to H.264 (``crf``), keeping
its first ``max_frames`` frames. ``extra.transcoded`` says which happened
and why.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

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

SOURCE = "videos"
KIND = "single_video"
DATASET = "web"
VIEW_ID = "v0"
REQUIRED_COLUMNS = ("path", "status")
LAYOUT = "a filter-videos scores.parquet with at least one row of status 'kept'"
# Columns copied into `extra` when present (scores themselves go to their own columns).
EXTRA_COLUMNS = ("reason", "duration_s", "fps", "width", "height", "num_frames", "codec", "settings")


def _float_or_none(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _resolve(path_text: str, scores_file: Path) -> Path:
    """Absolute paths as they are; relative ones against the scores file's folder, then the working directory."""
    p = Path(path_text)
    if p.is_absolute():
        return p
    beside = scores_file.parent / p
    return beside if beside.exists() or not p.exists() else p.resolve()


def discover(path: Path, options: ConvertConfig) -> list[GroupRef]:
    """One ref per ``status == "kept"`` row of the scores file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: --videos must be a filter scores.parquet file")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise AdapterError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise AdapterError(f"{path}: missing columns {missing} (is this a filter-videos scores.parquet?)")
    refs = []
    skipped = 0
    for i, row in enumerate(table.to_pylist()):
        if row.get("status") != "kept":
            skipped += 1
            continue
        if not row.get("path"):
            log.warning("%s: row %d has no path; skipped", path, i)
            continue
        data = {k: row[k] for k in ("content_hash", "subject_motion", "camera_motion", *EXTRA_COLUMNS) if k in row}
        data["row"] = i
        data["scores_file"] = str(path.resolve())
        gid = group_id_for(str(row["content_hash"])) if row.get("content_hash") else None
        refs.append(
            GroupRef(SOURCE, str(_resolve(str(row["path"]), path.resolve())), data, dataset=DATASET, group_id=gid)
        )
    log.info("%s: %d kept rows (%d rejected or failed rows ignored)", path, len(refs), skipped)
    return refs


def group_id_for(content_hash: str) -> str:
    return sanitize_id(f"web-{content_hash}")


def scan(ref: GroupRef, options: ConvertConfig) -> GroupPlan:
    video = Path(ref.path)
    if not video.is_file():
        raise AdapterError(
            f"{video}: kept video from {ref.data.get('scores_file')} (row {ref.data.get('row')}) does not exist"
        )
    digest = sha256_file(video)
    content_hash = str(ref.data.get("content_hash") or digest)
    if ref.data.get("content_hash") and content_hash != digest:
        log.warning(
            "%s: file changed since it was filtered (content_hash %s..., now %s...)",
            video,
            content_hash[:12],
            digest[:12],
        )
    return GroupPlan(
        ref,
        DATASET,
        group_id_for(content_hash),
        group_hash(KIND, [digest]),
        [ViewPlan(VIEW_ID, str(video))],
        video.stat().st_size,
    )


def copy_decision(data: bytes, info, options: ConvertConfig) -> str | None:
    """None when the original bytes can be stored as they are, else why it must be re-encoded."""
    if data[4:8] != b"ftyp":
        return "container is not mp4"
    if info.codec != "h264":
        return f"codec {info.codec} is not h264"
    if info.pix_fmt not in ("yuv420p", "yuvj420p"):
        return f"pixel format {info.pix_fmt} is not yuv420p"
    if info.width % 2 or info.height % 2:
        return f"odd size {info.width}x{info.height}"
    if info.num_frames > options.max_frames:
        return f"{info.num_frames} frames > max_frames {options.max_frames}"
    if len(data) > options.max_size:
        return f"{len(data)} bytes > max_size {options.max_size}"
    return None


def reencode(video: Path, info, options: ConvertConfig) -> tuple[bytes, int]:
    """Decode up to ``max_frames`` frames and encode H.264 (memory: max_frames x H x W x 3 bytes)."""
    import numpy as np

    from syncam_data.video import VideoError, encode, iter_frames

    frames = []
    try:
        for i, frame in iter_frames(video):
            if i >= options.max_frames:
                break
            frames.append(frame)
    except VideoError as e:
        raise AdapterError(str(e)) from None
    if not frames:
        raise AdapterError(f"{video}: no decodable frames")
    blob = encode(np.stack(frames), fps=info.fps or 24.0, crf=options.crf)
    if len(blob) > options.max_size:
        raise AdapterError(f"{video}: re-encoded clip is {len(blob)} bytes, over max_size {options.max_size}")
    return blob, len(frames)


def convert(plan: GroupPlan, options: ConvertConfig) -> list[ViewRecord]:
    video = Path(plan.ref.path)
    d = plan.ref.data
    original = read_bytes(video, "video")
    info = probe_clip(original, str(video))
    why = copy_decision(original, info, options)
    if why is None:
        media = original
    else:
        log.info("%s: re-encoding (%s)", video, why)
        media = reencode(video, info, options)[0]
        info = probe_clip(media, f"re-encoded {video}")
    extra: dict[str, Any] = {k: d[k] for k in EXTRA_COLUMNS if d.get(k) is not None}
    extra.update(transcoded=why is not None, content_hash=d.get("content_hash"), scores_file=d.get("scores_file"))
    if why is not None:
        extra["transcode_reason"] = why
    return [
        ViewRecord(
            dataset=DATASET,
            kind=KIND,
            group_id=plan.group_id,
            view_id=VIEW_ID,
            media=media,
            media_format="mp4",
            num_frames=info.num_frames,
            height=info.height,
            width=info.width,
            fps=info.fps,
            caption=plan.view_captions.get(VIEW_ID, plan.caption),
            frame_indices=list(range(info.num_frames)),
            K=None,
            c2w=None,
            subject_motion=_float_or_none(d.get("subject_motion")),
            camera_motion=_float_or_none(d.get("camera_motion")),
            source_uri=str(video),
            extra=extra,
            group_hash=plan.group_hash,
        )
    ]

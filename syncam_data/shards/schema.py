"""Contract 3: the Arrow schema of a shard row, the record type that fills it, and a dataset folder's layout.

Column names are the contract: add columns, never rename. A dataset folder holds
``dataset.json`` (the manifest: the one commit point, listing every shard),
``index.parquet`` (every column but the blobs, derivable from the shards) and the
shard files. Everything here only reads: writers (``writer.py``) and readers
(``reader.py``, ``validate.py``) share it, so a reader never imports the writer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from syncam_data.ids import check_id
from syncam_data.ids import sample_id as make_sample_id

SCHEMA_VERSION = 1
# The dataset folder: the manifest (written last: the commit point) and the index of every shard row.
DATASET_JSON = "dataset.json"
INDEX_FILE = "index.parquet"
KINDS = ("multiview_video", "multiview_image", "single_video")
MEDIA_FORMATS = ("mp4", "jpeg", "png")
BLOB_COLUMNS = ("media", "depth")

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("view_id", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("fps", pa.float32()),
        pa.field("frame_indices", pa.list_(pa.int32())),
        # K (4 numbers) and c2w (12) are stored as variable-size lists whose length the
        # writer and validate check: pyarrow <= 25 (pinned: numpy < 2) cannot read a
        # fixed_size_list column holding a null back from Parquet (apache/arrow#35692),
        # and web clips have null cameras. Readers see the same Python values.
        pa.field("K", pa.list_(pa.float32())),
        pa.field("c2w", pa.list_(pa.float32())),
        pa.field("media", pa.binary(), nullable=False),
        pa.field("media_format", pa.string(), nullable=False),
        pa.field("depth", pa.binary()),
        pa.field("subject_motion", pa.float32()),
        pa.field("camera_motion", pa.float32()),
        pa.field("source_uri", pa.string()),
        pa.field("extra", pa.string()),
        # Added columns (allowed by the contract): content hash of the view's
        # group, used to skip duplicate groups on incremental builds.
        pa.field("group_hash", pa.string()),
    ],
    metadata={"syncam_schema_version": str(SCHEMA_VERSION)},
)

# Types older datasets may carry for a column (readable while they hold no null).
LEGACY_TYPES = {"K": pa.list_(pa.float32(), 4), "c2w": pa.list_(pa.float32(), 12)}

INDEX_EXTRA = [
    pa.field("shard", pa.string(), nullable=False),
    pa.field("row_group", pa.int32(), nullable=False),
    pa.field("row_in_group", pa.int32(), nullable=False),
    pa.field("media_bytes", pa.int64(), nullable=False),
]
INDEX_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in BLOB_COLUMNS] + INDEX_EXTRA)
SMALL_COLUMNS = [f.name for f in SCHEMA if f.name not in BLOB_COLUMNS]
SMALL_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in BLOB_COLUMNS])

# Columns added after schema version 1: SynCam writes them, but a dataset written to the contract
# by another tool may lack them, so readers and validate treat them as optional (shards/derive.py
# derives them when needed).
ADDED_SHARD_COLUMNS = ("group_hash",)
ADDED_INDEX_COLUMNS = ("group_hash", "row_in_group", "media_bytes")
V1_SHARD_COLUMNS = [n for n in SCHEMA.names if n not in ADDED_SHARD_COLUMNS]
V1_INDEX_COLUMNS = [n for n in INDEX_SCHEMA.names if n not in ADDED_INDEX_COLUMNS]


class RecordError(ValueError):
    pass


@dataclass
class ViewRecord:
    """One shard row: a camera's clip, or one image, with everything Contract 3 names."""

    dataset: str
    kind: str
    group_id: str
    view_id: str
    media: bytes
    media_format: str
    num_frames: int
    height: int
    width: int
    fps: float | None = None
    caption: str = ""
    frame_indices: Sequence[int] | None = None
    K: Sequence[float] | None = None
    c2w: Sequence[float] | None = None
    depth: bytes | None = None
    subject_motion: float | None = None
    camera_motion: float | None = None
    source_uri: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    group_hash: str | None = None

    @property
    def sample_id(self) -> str:
        return make_sample_id(self.dataset, self.group_id, self.view_id)

    def validate(self) -> None:
        check_id(self.dataset, "dataset")
        check_id(self.group_id, "group_id")
        check_id(self.view_id, "view_id")
        if self.kind not in KINDS:
            raise RecordError(f"{self.sample_id}: kind {self.kind!r} is not one of {KINDS}")
        if self.media_format not in MEDIA_FORMATS:
            raise RecordError(f"{self.sample_id}: media_format {self.media_format!r} is not one of {MEDIA_FORMATS}")
        if not self.media:
            raise RecordError(f"{self.sample_id}: empty media")
        if self.K is not None and len(self.K) != 4:
            raise RecordError(f"{self.sample_id}: K must have 4 numbers (fx, fy, cx, cy)")
        if self.c2w is not None and len(self.c2w) != 12:
            raise RecordError(f"{self.sample_id}: c2w must have 12 numbers")
        if self.num_frames < 1 or self.height < 1 or self.width < 1:
            raise RecordError(f"{self.sample_id}: num_frames/height/width must be positive")

    def to_row(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "dataset": self.dataset,
            "kind": self.kind,
            "group_id": self.group_id,
            "view_id": self.view_id,
            "caption": self.caption or "",
            "num_frames": int(self.num_frames),
            "height": int(self.height),
            "width": int(self.width),
            "fps": None if self.fps is None else float(self.fps),
            "frame_indices": None if self.frame_indices is None else [int(i) for i in self.frame_indices],
            "K": None if self.K is None else [float(v) for v in self.K],
            "c2w": None if self.c2w is None else [float(v) for v in self.c2w],
            "media": bytes(self.media),
            "media_format": self.media_format,
            "depth": None if self.depth is None else bytes(self.depth),
            "subject_motion": self.subject_motion,
            "camera_motion": self.camera_motion,
            "source_uri": self.source_uri or "",
            "extra": json.dumps(self.extra, sort_keys=True) if self.extra else "{}",
            "group_hash": self.group_hash,
        }

    def nbytes(self) -> int:
        return len(self.media) + (len(self.depth) if self.depth else 0) + 512


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a SCHEMA table; blob columns wrap the rows' bytes without copying them (one chunk per value)."""
    small = pa.Table.from_pylist([{c: r[c] for c in SMALL_COLUMNS} for r in rows], schema=SMALL_SCHEMA)
    cols = [_blob_column([r[f.name] for r in rows]) if f.name in BLOB_COLUMNS else small.column(f.name) for f in SCHEMA]
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _blob_column(values: list[Any]) -> pa.ChunkedArray:
    """A binary column over the values' own memory: copying a shard's blobs into one Arrow buffer costs
    as much as writing them (docs/benchmarks/build_shards.md)."""
    chunks = []
    for v in values:
        if v is None:
            chunks.append(pa.nulls(1, pa.binary()))
        else:
            offsets = pa.array([0, len(v)], pa.int32()).buffers()[1]
            chunks.append(pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(v)]))
    return pa.chunked_array(chunks, pa.binary())


def group_hash(kind: str, digests: list[str]) -> str:
    """Content hash of a group: its kind plus the sorted digests of its views' source media.

    View names and folder names are left out on purpose: the same scene copied
    under another name is a duplicate.
    """
    h = hashlib.sha256(kind.encode())
    for d in sorted(digests):
        h.update(b"\n" + d.encode())
    return h.hexdigest()


def load_manifest(out_dir: Path) -> dict[str, Any] | None:
    """``dataset.json`` as a dict (None when there is none); ``ValueError`` naming the file when it is unusable."""
    p = Path(out_dir) / DATASET_JSON
    if not p.exists():
        return None
    if not p.is_file():
        raise ValueError(f"{p}: is not a file")
    try:
        manifest = json.loads(p.read_text())
    except OSError as e:
        raise ValueError(f"{p}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{p}: expected a JSON object, got {type(manifest).__name__}")
    shards = manifest.get("shards", [])
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str) for s in shards):
        raise ValueError(f"{p}: 'shards' must be a list of objects with a 'file' name")
    for s in shards:
        try:
            check_id(s["file"], "shard file name", str(p))  # a manifest never points outside its folder
        except ValueError as e:
            raise ValueError(str(e)) from None
    return manifest

"""The filter's output folder: scores.parquet, kept.txt, and crash-safe incremental parts.

Every finished video is written at once as a one-row Parquet file in
``<out>/parts/`` (temporary name, then rename), so a killed run loses at most
the videos in flight. ``merge`` folds the parts into ``scores.parquet``
(atomically), rewrites ``kept.txt``, and only then deletes the merged parts.
Readers (resume, rescore) always read ``scores.parquet`` plus any parts, the
newest row per path winning.

``scores.parquet`` columns (the format ``build-shards`` reads): path
(absolute), content_hash (sha256 of the file bytes), status
(kept/rejected/error), reason ("" when kept), subject_motion and
camera_motion (diagonals per second, null when not measured), duration_s,
fps, width, height, num_frames, codec (0 / "" when the file could not be
probed), error (message for error rows, else null), settings (JSON of the
settings used), measured_fraction (share of frame pairs with a valid camera
estimate), duplicate_of (the path whose row this content copies, else null),
plus the raw measurements for ``--rescore``.

``kept.txt`` lists each kept *content* once: the row that was processed,
not its duplicates.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from syncam_data.fsio import atomic_path, write_text

log = logging.getLogger(__name__)

SCORES_FILE = "scores.parquet"
KEPT_FILE = "kept.txt"
PARTS_DIR = "parts"
DEBUG_DIR = "debug"

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("subject_motion", pa.float32()),
        ("camera_motion", pa.float32()),
        ("duration_s", pa.float32()),
        ("fps", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_frames", pa.int32()),
        ("codec", pa.string()),
        ("error", pa.string()),
        ("settings", pa.string()),
        ("measured_fraction", pa.float32()),
        ("duplicate_of", pa.string()),
        # Extra columns: provenance and raw measurements for --rescore.
        ("file_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sampled_fps", pa.float32()),
        ("analyzed_frames", pa.int32()),
        ("analyzed_width", pa.int32()),
        ("analyzed_height", pa.int32()),
        ("num_masks", pa.int32()),
        ("num_tracks", pa.int32()),
        ("seeded_tracks", pa.int32()),
        ("inlier_fraction", pa.float32()),
        ("scene_cut_score", pa.float32()),
        ("camera_motion_per_pair", pa.list_(pa.float32())),
        ("camera_support_per_pair", pa.list_(pa.int32())),
        ("track_speed", pa.list_(pa.float32())),
        ("track_candidate", pa.list_(pa.bool_())),
        ("seconds", pa.float32()),
        ("finished_at", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def kept_paths(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Kept paths, one per content hash (the processed row rather than a duplicate), sorted."""
    chosen: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: (r.get("duplicate_of") is not None, r["path"])):
        if r["status"] == "kept":
            chosen.setdefault(r.get("content_hash") or r["path"], r["path"])
    return sorted(chosen.values())


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    data = {name: [r.get(name) for r in rows] for name in COLUMNS}
    return pa.Table.from_pydict(data, schema=SCHEMA)


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:  # fsync, rename, fsync the folder: a part or table survives a power loss
        pq.write_table(table, tmp, compression="zstd")


class ScoresStore:
    """Reads and writes one filter output folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.parts = self.out / PARTS_DIR
        self.scores = self.out / SCORES_FILE
        self.kept = self.out / KEPT_FILE
        self.debug = self.out / DEBUG_DIR

    def append(self, row: dict[str, Any]) -> Path:
        """Persist one finished row immediately (survives a kill right after)."""
        name = f"{row.get('content_hash') or 'nohash'}-{uuid.uuid4().hex[:12]}.parquet"
        path = self.parts / name
        _atomic_parquet(rows_to_table([row]), path)
        return path

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(p for p in self.parts.glob("*.parquet") if not p.name.startswith("."))

    def _read(self, path: Path) -> list[dict[str, Any]]:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:  # a part cut short by a disk failure: rerun that video
            log.warning("ignoring unreadable results file %s (%s)", path, e)
            return []
        missing = [c for c in COLUMNS if c not in table.column_names]
        for c in missing:  # older outputs: add the columns they lack as nulls
            table = table.append_column(c, pa.nulls(len(table), SCHEMA.field(c).type))
        return table.select(list(COLUMNS)).cast(SCHEMA).to_pylist()

    def load(self) -> dict[str, dict[str, Any]]:
        """Every stored row, newest per path (scores.parquet first, then parts by finish time)."""
        rows: dict[str, dict[str, Any]] = {}
        if self.scores.exists():
            for r in self._read(self.scores):
                rows[r["path"]] = r
        part_rows = [r for p in self._part_files() for r in self._read(p)]
        for r in sorted(part_rows, key=lambda r: r.get("finished_at") or ""):
            rows[r["path"]] = r
        return rows

    def write_all(self, rows: dict[str, dict[str, Any]] | None = None) -> pa.Table:
        """Fold parts into scores.parquet and rewrite kept.txt; delete the merged parts last."""
        parts = self._part_files()
        if rows is None:
            rows = self.load()
        ordered = sorted(rows.values(), key=lambda r: r["path"])
        table = rows_to_table(ordered)
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_parquet(table, self.scores)
        write_text(self.kept, "".join(p + "\n" for p in kept_paths(ordered)))
        for p in parts:
            p.unlink(missing_ok=True)
        return table

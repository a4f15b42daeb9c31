"""Check a shard dataset against Contract 3: manifest, checksums, schema, index, every row's media and cameras.

Every index row is compared with the shard row it points at (ids, cameras,
sizes, every small column): the loader plans batches and takes poses from the
index, so damage there must not pass unseen.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syncam_data.cameras import CameraError, check_rotation
from syncam_data.engine import run_tasks
from syncam_data.fsio import sha256_file
from syncam_data.ids import UnsafeIdError, check_id
from syncam_data.images import decode_rgb
from syncam_data.shards.schema import (
    DATASET_JSON,
    INDEX_FILE,
    KINDS,
    LEGACY_TYPES,
    MEDIA_FORMATS,
    SCHEMA,
    SCHEMA_VERSION,
    SMALL_COLUMNS,
    V1_INDEX_COLUMNS,
    V1_SHARD_COLUMNS,
    load_manifest,
)

log = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    root: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows_checked: int = 0
    shards_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "rows_checked": self.rows_checked,
            "shards_checked": self.shards_checked,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def validate_dataset(
    root: str | Path, decode_media: bool = True, workers: int = 1, max_problems: int = 200
) -> ValidationReport:
    root = Path(root)
    rep = ValidationReport(str(root))
    mpath = root / DATASET_JSON
    if not mpath.exists():
        rep.problems.append(f"{mpath}: missing (no committed build)")
        return rep
    try:
        manifest = load_manifest(root) or {}
    except ValueError as e:
        rep.problems.append(str(e))
        return rep
    if manifest.get("schema_version") != SCHEMA_VERSION:
        rep.problems.append(f"{mpath}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    shards = manifest.get("shards", [])
    listed = {s.get("file") for s in shards}
    for p in sorted(root.glob("*.parquet")):
        if p.name != INDEX_FILE and p.name not in listed:
            rep.warnings.append(f"{p}: not listed in dataset.json (left by an interrupted build; ignored)")
    for p in sorted(root.glob(".*.tmp*")):
        rep.warnings.append(f"{p}: temporary file of an interrupted build (ignored)")

    total = sum(int(s.get("num_rows", 0)) for s in shards)
    if manifest.get("num_rows") != total:
        rep.problems.append(f"{mpath}: num_rows {manifest.get('num_rows')} != sum over shards {total}")

    index = None
    ipath = root / INDEX_FILE
    if not ipath.is_file():
        rep.problems.append(f"{ipath}: missing")
    else:
        try:
            index = pq.read_table(ipath)
        except Exception as e:
            rep.problems.append(f"{ipath}: unreadable ({e})")
        want = manifest.get("index_sha256")
        if want and sha256_file(ipath) != want:
            # The rows are also compared with the shards below, which says what differs.
            rep.problems.append(
                f"{ipath}: sha256 differs from the one dataset.json records (damaged, or left by an interrupted build; re-running build-shards rebuilds it)"
            )
    if index is not None and not _check_index(index, shards, ipath, rep):
        index = None

    tasks = [(str(root / s["file"]), s, decode_media, _index_part(index, s["file"])) for s in shards]
    for r in run_tasks(_check_shard, tasks, workers=workers, desc="validate", unit="shard"):
        if not r.ok:
            rep.problems.append(f"{r.item[0]}: {r.error}")
            continue
        probs, nrows = r.value
        rep.problems.extend(probs)
        rep.rows_checked += nrows
        rep.shards_checked += 1
    if len(rep.problems) > max_problems:
        n = len(rep.problems)
        rep.problems = rep.problems[:max_problems] + [f"... and {n - max_problems} more problems"]
    return rep


def _index_part(index, file: str):
    """The index rows of one shard (an Arrow table: cheap to send to a worker), or None without a usable index."""
    if index is None:
        return None
    return index.filter(pc.equal(index.column("shard"), pa.scalar(file, pa.string())))


def _check_index(index, shards, ipath: Path, rep: ValidationReport) -> bool:
    """Index-wide checks; False when the index lacks columns, so it cannot be compared with the shards."""
    # Columns added after schema version 1 (group_hash, row_in_group, media_bytes) are optional.
    missing = set(V1_INDEX_COLUMNS) - set(index.column_names)
    if missing:
        rep.problems.append(f"{ipath}: missing columns {sorted(missing)}")
        return False
    total = sum(int(s.get("num_rows", 0)) for s in shards)
    if index.num_rows != total:
        rep.problems.append(f"{ipath}: {index.num_rows} rows, dataset.json lists {total}")
    ids = index.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        rep.problems.append(f"{ipath}: duplicate sample_id values")
    listed = {s["file"] for s in shards}
    unknown = set(index.column("shard").to_pylist()) - listed
    if unknown:
        rep.problems.append(f"{ipath}: rows point at shards not in dataset.json: {sorted(unknown)[:5]}")
    # A group is one scene: its views must agree on kind and (for video groups) frame count.
    groups: dict[tuple[str, str], set] = {}
    for d, g, k, n in zip(
        index.column("dataset").to_pylist(),
        index.column("group_id").to_pylist(),
        index.column("kind").to_pylist(),
        index.column("num_frames").to_pylist(),
    ):
        groups.setdefault((d, g), set()).add((k, n if k == "multiview_video" else 0))
    for (d, g), kinds in groups.items():
        if len(kinds) > 1:
            rep.problems.append(f"{ipath}: group {d}/{g} mixes kinds or frame counts {sorted(kinds)}")
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN scores on both sides
    return a == b


def _compare_with_index(path: Path, rg: int, k: int, row: dict[str, Any], idx: dict[str, Any] | None) -> list[str]:
    """An index row must repeat its shard row exactly (the loader plans and takes poses from the index)."""
    where = f"{path}: row group {rg} row {k} ({row.get('sample_id')})"
    if idx is None:
        return [f"{where}: not in index.parquet"]
    diff = [c for c in SMALL_COLUMNS if c in idx and c in row and not _same(idx[c], row[c])]
    if "media_bytes" in idx and idx["media_bytes"] != len(row.get("media") or b""):
        diff.append("media_bytes")
    return [f"{where}: index.parquet differs from the shard in {', '.join(diff)}"] if diff else []


def _check_shard(task: tuple[str, dict, bool, Any]) -> tuple[list[str], int]:
    path_s, info, decode_media, index_part = task
    path = Path(path_s)
    probs: list[str] = []
    if not path.is_file():
        return [f"{path}: listed in dataset.json but missing"], 0
    digest = sha256_file(path)
    if info.get("sha256") and digest != info["sha256"]:
        probs.append(f"{path}: sha256 mismatch (file changed or truncated)")
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as e:
        return probs + [f"{path}: not a readable Parquet file ({e})"], 0
    names = set(pf.schema_arrow.names)
    missing = set(V1_SHARD_COLUMNS) - names  # added columns (group_hash) are optional
    if missing:
        probs.append(f"{path}: missing columns {sorted(missing)}")
        return probs, 0
    for f in SCHEMA:
        if f.name not in names:
            continue
        got = pf.schema_arrow.field(f.name).type
        if not got.equals(f.type) and not (f.name in LEGACY_TYPES and got.equals(LEGACY_TYPES[f.name])):
            probs.append(f"{path}: column {f.name} has type {pf.schema_arrow.field(f.name).type}, expected {f.type}")
    if pf.metadata.num_rows != info.get("num_rows"):
        probs.append(f"{path}: {pf.metadata.num_rows} rows, dataset.json says {info.get('num_rows')}")
    index_rows = None
    if index_part is not None:
        # Rows are found by their position; an index without row_in_group (another tool's) by sample id.
        by_pos = "row_in_group" in index_part.column_names
        index_rows = {
            (r["row_group"], r["row_in_group"] if by_pos else r["sample_id"]): r for r in index_part.to_pylist()
        }
        if len(index_rows) != index_part.num_rows:
            probs.append(f"{path}: index.parquet lists some rows of this shard twice")
    n = 0
    for rg in range(pf.num_row_groups):
        for k, row in enumerate(pf.read_row_group(rg).to_pylist()):
            n += 1
            probs.extend(f"{path}: {row.get('sample_id')}: {p}" for p in check_row(row, decode_media))
            if index_rows is not None:
                probs.extend(
                    _compare_with_index(
                        path, rg, k, row, index_rows.pop((rg, k if by_pos else row.get("sample_id")), None)
                    )
                )
    if index_rows:
        probs.append(
            f"{path}: index.parquet has {len(index_rows)} row(s) that are not in this shard, e.g. {sorted(index_rows)[0]}"
        )
    return probs, n


def check_row(row: dict[str, Any], decode_media: bool = True) -> list[str]:
    """Problems with one shard row (empty list when it is valid)."""
    p: list[str] = []
    try:
        for key in ("dataset", "group_id", "view_id"):
            check_id(row[key], key)
        if row["sample_id"] != f"{row['dataset']}/{row['group_id']}/{row['view_id']}":
            p.append("sample_id is not <dataset>/<group_id>/<view_id>")
    except UnsafeIdError as e:
        p.append(str(e))
    if row["kind"] not in KINDS:
        p.append(f"unknown kind {row['kind']!r}")
    if row["media_format"] not in MEDIA_FORMATS:
        p.append(f"unknown media_format {row['media_format']!r}")
    fi = row.get("frame_indices")
    if fi is not None and len(fi) != row["num_frames"]:
        p.append(f"frame_indices has {len(fi)} entries, num_frames is {row['num_frames']}")
    K = row.get("K")
    if K is not None and len(K) != 4:
        p.append(f"K has {len(K)} numbers, expected 4 (fx, fy, cx, cy)")
    elif K is not None and not (K[0] > 0 and K[1] > 0 and all(np.isfinite(K))):
        p.append(f"invalid intrinsics {K}")
    c2w = row.get("c2w")
    if c2w is not None and len(c2w) != 12:
        p.append(f"c2w has {len(c2w)} numbers, expected 12")
    elif c2w is not None:
        m = np.asarray(c2w, dtype=np.float64).reshape(3, 4)
        if not np.all(np.isfinite(m)):
            p.append("c2w contains NaN or infinity")
        else:
            try:
                check_rotation(m[:, :3], tol=1e-3, what="c2w rotation")
            except CameraError as e:
                p.append(str(e))
    try:
        json.loads(row.get("extra") or "{}")
    except json.JSONDecodeError:
        p.append("extra is not valid JSON")
    if decode_media:
        p.extend(_check_media(row))
        if row.get("depth") is not None:
            p.extend(_check_depth(row))
    return p


def check_group_rows(rows: list[dict[str, Any]]) -> list[str]:
    """validate's rules for one group's rows, media not decoded (what build-shards checks before writing)."""
    probs = [f"{r.get('sample_id')}: {p}" for r in rows for p in check_row(r, decode_media=False)]
    kinds = {(r["kind"], r["num_frames"] if r["kind"] == "multiview_video" else 0) for r in rows}
    if len(kinds) > 1:
        probs.append(
            f"group {rows[0].get('dataset')}/{rows[0].get('group_id')} mixes kinds or frame counts {sorted(kinds)}"
        )
    return probs


def _check_media(row: dict[str, Any]) -> list[str]:
    from syncam_data.video import VideoError, count_decoded

    fmt, blob = row["media_format"], row["media"]
    if not blob:
        return ["empty media"]
    if fmt == "mp4":
        try:
            # Every frame decoded, none kept: memory stays at one frame whatever the file claims.
            n, w, h = count_decoded(blob)
        except VideoError as e:
            return [f"media does not decode: {e}"]
    else:
        img = decode_rgb(blob)  # stored pixels: the row's width/height and K describe them, not EXIF's turn
        if img is None:
            return [f"{fmt} media does not decode"]
        if fmt == "jpeg" and not blob.startswith(b"\xff\xd8"):
            return ["media_format says jpeg but the blob is not a JPEG"]
        if fmt == "png" and not blob.startswith(b"\x89PNG"):
            return ["media_format says png but the blob is not a PNG"]
        n, (h, w) = 1, img.shape[:2]
    probs = []
    if (n, h, w) != (row["num_frames"], row["height"], row["width"]):
        probs.append(f"media is {n} frames of {w}x{h}, row says {row['num_frames']} of {row['width']}x{row['height']}")
    return probs


def _check_depth(row: dict[str, Any]) -> list[str]:
    try:
        with np.load(io.BytesIO(row["depth"]), allow_pickle=False) as z:
            d = z["depth"]
    except Exception as e:
        return [f"depth is not an npz with array 'depth' ({e})"]
    if d.shape != (row["num_frames"], row["height"], row["width"]):
        return [f"depth shape {d.shape} != (frames, H, W) = {(row['num_frames'], row['height'], row['width'])}"]
    return []

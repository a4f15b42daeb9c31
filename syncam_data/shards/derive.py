"""Columns added after schema version 1: optional for every reader, derived when a dataset lacks them.

Contract 3 lets other tools write shard datasets with the schema-version-1 columns only
(docs/data-format.md). SynCam added three columns since, which such a dataset may not have:

| column | in | what it is | derived from |
|---|---|---|---|
| ``row_in_group`` | index | the row's position in its Parquet row group | each shard's ``sample_id`` column (cheap) |
| ``media_bytes`` | index | length of the ``media`` blob | the blobs (one read of every shard) |
| ``group_hash`` | index, shards | content hash of the view's group (deduplication) | the blobs: ``schema.group_hash`` of the group's kind and the SHA-256 of each view's stored media |

``group_hash`` derived this way equals the one ``build-shards`` computes for groups whose media
are stored as the source files are (render videos, frame-set images, web clips copied as they
are), so appending the same inputs to such a dataset finds them as duplicates.

Positions are found by ``sample_id`` inside the row group the index names, never by the index's
row order, which the contract does not fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syncam_data.fsio import sha256_file
from syncam_data.shards.schema import ADDED_INDEX_COLUMNS, INDEX_FILE, INDEX_SCHEMA, SMALL_COLUMNS, group_hash

# Derived from the blobs: one read of every shard's media column.
COSTLY = frozenset(("media_bytes", "group_hash"))


class DeriveError(ValueError):
    """The index and the shards disagree, so a missing column cannot be derived; names the file and row."""


def missing_index_columns(index: pa.Table, wanted: Iterable[str] = ADDED_INDEX_COLUMNS) -> list[str]:
    return [c for c in wanted if c in ADDED_INDEX_COLUMNS and c not in index.column_names]


def complete_index(root: str | Path, index: pa.Table, wanted: Iterable[str] = ADDED_INDEX_COLUMNS) -> pa.Table:
    """``index`` plus the wanted added columns it lacks, derived from the shards (row order kept).

    Columns already present are left as they are. Raises DeriveError when a row is not where the
    index says (a shard that does not hold its sample id in the named row group).
    """
    root = Path(root)
    missing = missing_index_columns(index, wanted)
    if not missing:
        return index
    types = {f.name: f.type for f in INDEX_SCHEMA}
    if index.num_rows == 0:
        for c in missing:
            index = index.append_column(pa.field(c, types[c]), pa.array([], types[c]))
        return index
    need_media = bool(COSTLY.intersection(missing))
    found = _locate(root, index, need_media, hashes="group_hash" in missing)
    shards = index.column("shard").to_pylist()
    sids = index.column("sample_id").to_pylist()
    rgs = index.column("row_group").to_pylist()
    rows = []
    for shard, sid, rg in zip(shards, sids, rgs):
        hit = found.get((shard, sid))
        if hit is None:
            raise DeriveError(f"{root / shard}: holds no row {sid!r}, which index.parquet lists in it")
        if hit[0] != rg:
            raise DeriveError(f"{root / shard}: row {sid!r} is in row group {hit[0]}, index.parquet says {rg}")
        rows.append(hit)
    values = {"row_in_group": [h[1] for h in rows]}
    if need_media:
        values["media_bytes"] = [h[2] for h in rows]
    if "group_hash" in missing:
        values["group_hash"] = _group_hashes(index, [h[3] for h in rows])
    for c in missing:
        index = index.append_column(pa.field(c, types[c]), pa.array(values[c], types[c]))
    return index


def _locate(root: Path, index: pa.Table, need_media: bool, hashes: bool) -> dict[tuple[str, str], tuple]:
    """(shard, sample_id) -> (row group, position, media bytes, media sha256) for every row of every listed shard."""
    out: dict[tuple[str, str], tuple] = {}
    for shard in sorted(set(index.column("shard").to_pylist())):
        path = root / shard
        if not path.is_file():
            raise DeriveError(f"{path}: shard listed in index.parquet is missing")
        pf = pq.ParquetFile(str(path))
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["sample_id", "media"] if need_media else ["sample_id"])
            ids = t.column("sample_id").to_pylist()
            sizes = pc.binary_length(t.column("media")).to_pylist() if need_media else [None] * len(ids)
            digests = (
                [hashlib.sha256(v.as_py() or b"").hexdigest() for v in t.column("media")]
                if hashes
                else [None] * len(ids)
            )
            for pos, (sid, n, d) in enumerate(zip(ids, sizes, digests)):
                out[(shard, sid)] = (rg, pos, n, d)
    return out


def _group_hashes(index: pa.Table, digests: list[str]) -> list[str]:
    # The formula build-shards uses for the groups it writes (kind + sorted view digests).
    groups: dict[tuple[str, str], tuple[str, list[str]]] = {}
    keys = list(zip(index.column("dataset").to_pylist(), index.column("group_id").to_pylist()))
    for key, kind, d in zip(keys, index.column("kind").to_pylist(), digests):
        groups.setdefault(key, (kind, []))[1].append(d)
    per_group = {k: group_hash(kind, ds) for k, (kind, ds) in groups.items()}
    return [per_group[k] for k in keys]


def index_from_shards(root: Path, shards: list[dict[str, Any]]) -> pa.Table:
    """The index rows of the listed shards, read back from the shard files (one row group at a time).

    Blob sizes come from the blob column itself, so this reads every shard
    once; it is the repair path, taken only when ``index.parquet`` does not
    match ``dataset.json``.
    """
    parts = []
    absent: set[str] = set()
    for s in shards:
        path = Path(root) / s["file"]
        try:
            pf = pq.ParquetFile(str(path))
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{path}: cannot rebuild the index from this shard ({e})") from None
        have = set(pf.schema_arrow.names)
        absent |= set(SMALL_COLUMNS) - have
        cols = [c for c in SMALL_COLUMNS if c in have] + ["media"]
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=cols)
            n = t.num_rows
            data = {c: (t.column(c) if c in have else pa.nulls(n, INDEX_SCHEMA.field(c).type)) for c in SMALL_COLUMNS}
            data.update(
                shard=pa.array([s["file"]] * n, pa.string()),
                row_group=pa.array([rg] * n, pa.int32()),
                row_in_group=pa.array(range(n), pa.int32()),
                media_bytes=pc.binary_length(t.column("media")).cast(pa.int64()),
            )
            parts.append(pa.table(data).cast(INDEX_SCHEMA))
    index = pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table()
    # Columns added after schema version 1 that some shard lacks (another tool's) are left out, so
    # ``derive.complete_index`` derives them instead of keeping nulls.
    return index.drop_columns(sorted(absent & set(ADDED_INDEX_COLUMNS)))


def read_index(root: Path, manifest: dict[str, Any]) -> tuple[pa.Table, str]:
    """The index of exactly the shards ``manifest`` lists, and how it was obtained.

    ``"ok"``: ``index.parquet`` has the sha256 the manifest records. ``"filtered"``:
    a manifest without ``index_sha256`` (older or foreign writers), whose index
    rows of listed shards match the listed row counts. ``"rebuilt"``: anything
    else (a kill between the index and the manifest renames, a damaged or
    missing index): rebuilt from the shards themselves.
    """
    root = Path(root)
    shards = list(manifest.get("shards", []))
    ipath = root / INDEX_FILE
    if not shards:
        return INDEX_SCHEMA.empty_table(), "ok" if manifest.get("index_sha256") else "filtered"
    want = manifest.get("index_sha256")
    if ipath.is_file():
        try:
            if want:
                if sha256_file(ipath) == want:
                    return pq.read_table(ipath), "ok"
            else:
                index = pq.read_table(ipath)
                listed = {s["file"]: int(s.get("num_rows", -1)) for s in shards}
                if index.num_rows:
                    index = index.filter(
                        pc.is_in(index.column("shard"), value_set=pa.array(sorted(listed), pa.string()))
                    )
                counts: dict[str, int] = {}
                if index.num_rows:
                    agg = index.group_by("shard").aggregate([("shard", "count")])
                    counts = dict(zip(agg.column("shard").to_pylist(), agg.column("shard_count").to_pylist()))
                if all(counts.get(f, 0) == n for f, n in listed.items()):
                    return index, "filtered"
        except (OSError, pa.ArrowException, KeyError):
            pass  # unreadable: rebuilt below
    return index_from_shards(root, shards), "rebuilt"

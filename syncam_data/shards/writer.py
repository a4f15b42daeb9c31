"""Size-bounded, crash-safe Parquet shard writer (Contract 3).

Groups are the unit of commit: a group's rows always land in one shard, and
a shard becomes part of the dataset only when it is complete, fsynced, renamed
from its temporary name, and listed in ``dataset.json`` -- the one commit
point (see ``ShardWriter``). ``index.parquet`` is derivable: on open it is
checked against the sha256 ``dataset.json`` records and rebuilt from the
listed shards when it differs. A killed build therefore leaves a valid dataset
holding every shard that was committed; its open shard is a temporary file
and an uncommitted shard a file the next run deletes.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from syncam_data import fsio
from syncam_data.fsio import sha256_file
from syncam_data.ids import check_id
from syncam_data.shards.derive import complete_index, read_index
from syncam_data.shards.schema import (
    BLOB_COLUMNS,
    DATASET_JSON,
    INDEX_FILE,
    INDEX_SCHEMA,
    SCHEMA,
    SCHEMA_VERSION,
    SMALL_COLUMNS,
    RecordError,
    ViewRecord,
    load_manifest,
    rows_to_table,
)

log = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'512MB', '1G', '64KiB', 1000 -> bytes (binary multiples)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"cannot parse size {text!r}: use e.g. 512MB, 1GB, 64KB")
    num, unit = float(m.group(1)), (m.group(2) or "").upper().rstrip("B").rstrip("I")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return int(num * mult)


def parquet_writer(path: Path, schema: pa.Schema = SCHEMA) -> pq.ParquetWriter:
    """Blob columns PLAIN, uncompressed, no dictionary; small columns zstd + dictionary; page index on."""
    small = [f.name for f in schema if f.name not in BLOB_COLUMNS]
    compression = {f.name: ("NONE" if f.name in BLOB_COLUMNS else "ZSTD") for f in schema}
    encodings = {c: "PLAIN" for c in BLOB_COLUMNS if c in schema.names}
    return pq.ParquetWriter(
        str(path),
        schema,
        compression=compression,
        use_dictionary=small,
        column_encoding=encodings or None,
        write_page_index=True,
        write_statistics=small,
        # Parquet checks the page size only after each batch of this many values. With the default
        # (1024) a whole row group of blobs -- ~100 MB -- lands in one data page whose buffer grows by
        # doubling; checking after every value keeps one blob per page and writes 2.5x faster
        # (docs/benchmarks/build_shards.md). Small columns still fill pages of data_page_size.
        write_batch_size=1,
    )


def shard_sha256(path: str | os.PathLike) -> str:
    """sha256 of a shard this process has just written, hashed through a memory map.

    Reading a 512 MB shard back into Python buffers copies every byte once
    more; hashing the mapped page cache does not (``hashlib`` releases the GIL
    on large buffers). Only for our own finished temporary file: a file that
    another process could truncate must not be mapped (SIGBUS).
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.sha256(m).hexdigest()


class AppendHash:
    """sha256 of a file that is being appended to, hashed in a helper thread as it grows.

    Call ``catch_up()`` after each row group is written (Parquet files are
    written strictly front to back, so bytes on disk never change again) and
    ``hexdigest()`` after the writer has closed the file. Reading and hashing
    release the GIL in large chunks, so hashing a row group overlaps the
    conversion and encoding of the next one on a second core.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._h = hashlib.sha256()
        self._done = 0
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-sha256")
        self._last: cf.Future | None = None

    def catch_up(self) -> None:
        end = os.fstat(self._fd).st_size
        self._last = self._pool.submit(self._hash_to, end)  # one thread: ranges are hashed in order

    def _hash_to(self, end: int) -> None:
        if end <= self._done:
            return
        if os.fstat(self._fd).st_size < end:
            raise OSError(
                f"file shrank while it was being hashed (now {os.fstat(self._fd).st_size} bytes, hashed up to {end})"
            )
        # Hash the new range through a memory map (no copy into Python buffers). The file is this
        # process's own temporary shard, written front to back and never truncated while open.
        start = self._done - self._done % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self._fd, end - start, offset=start, access=mmap.ACCESS_READ) as m:
            with memoryview(m) as view:
                self._h.update(view[self._done - start :])
        self._done = end

    def hexdigest(self) -> str:
        self.catch_up()
        self._last.result()
        self.close()
        return self._h.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class ShardInfo:
    file: str
    num_rows: int
    sha256: str
    num_bytes: int
    num_groups: int


@dataclass
class _OpenShard:
    file: str
    tmp_path: Path
    writer: pq.ParquetWriter
    rows: int = 0
    row_groups: int = 0
    groups: int = 0
    index_rows: list[dict[str, Any]] = field(default_factory=list)


class ShardWriter:
    """Write view records, group by group, into ``<out>/<name>-NNNNN.parquet``.

    Use as a context manager; ``close()`` finishes the open shard and commits.
    Opening an existing dataset appends new shards after the committed ones
    (incremental builds).

    The commit protocol (``dataset.json`` is the one commit point):

    1. a shard is written under a temporary name, fsynced, renamed to a name
       reserved earlier, and the folder fsynced;
    2. ``index.parquet`` is rewritten (temporary name, fsync, rename);
    3. ``dataset.json`` is rewritten listing the shard and the index's sha256.

    On open, everything but ``dataset.json`` is treated as derivable: shard
    files it does not list are deleted, and the index is rebuilt from the
    listed shards unless its sha256 is the one the manifest records. Shard
    numbers are reserved in ``dataset.json`` (``next_shard``) before any file
    gets the name, so a name is never reused for other contents, even after a
    crash deleted the file that first had it.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        name: str = "syncam",
        shard_size: int | str = "512MB",
        row_group_size: int | str = "96MB",
        build_args: dict[str, Any] | None = None,
        shard_prefix_suffix: str = "",
        check_records: bool = True,
    ) -> None:
        self.out = Path(out_dir)
        self.name = check_id(name, "dataset name")
        self.shard_size = parse_size(shard_size)
        self.row_group_size = parse_size(row_group_size)
        if self.row_group_size > self.shard_size:
            self.row_group_size = self.shard_size
        self.build_args = build_args or {}
        self.suffix = shard_prefix_suffix
        # Records are checked with validate's rules before they are written (a bad group is refused whole).
        self.check_records = check_records
        self.out.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()
        self.manifest = load_manifest(self.out) or {}
        self.shards: list[dict[str, Any]] = list(self.manifest.get("shards", []))
        self._remove_unlisted_shards()
        index, state = read_index(self.out, self.manifest)
        if state == "rebuilt":
            log.warning(
                "%s: did not match %s (an interrupted commit or damage); rebuilt from the %d listed shard(s)",
                self.out / INDEX_FILE,
                DATASET_JSON,
                len(self.shards),
            )
        # The on-disk index is rewritten at the next commit unless it is exactly the manifest's.
        self._index_sha: str | None = self.manifest.get("index_sha256") if state == "ok" else None
        # A dataset written by another tool may lack the columns added after schema version 1: derive them.
        index = complete_index(self.out, index).select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
        self._index_tables: list[pa.Table] = [index] if index.num_rows else []
        self.known_groups: set[tuple[str, str]] = set()
        self.known_hashes: set[str] = set()
        for t in self._index_tables:
            self.known_groups.update(zip(t.column("dataset").to_pylist(), t.column("group_id").to_pylist()))
            self.known_hashes.update(h for h in t.column("group_hash").to_pylist() if h)
        self._open: _OpenShard | None = None
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self._next_number = max(int(self.manifest.get("next_shard", 0)), self._first_free_number())
        self.stats = {"groups_written": 0, "rows_written": 0, "groups_skipped_duplicate": 0}

    # --- public -----------------------------------------------------------
    def has_group(self, dataset: str, group_id: str) -> bool:
        return (dataset, group_id) in self.known_groups

    def has_hash(self, group_hash: str) -> bool:
        return group_hash in self.known_hashes

    def write_group(self, records: list[ViewRecord]) -> bool:
        """Write one group's views (all in the same shard). Returns False if skipped as duplicate.

        Raises ``RecordError`` (nothing written) when a record breaks Contract 3.
        """
        if not records:
            return False
        for r in records:
            r.validate()
        ds, gid = records[0].dataset, records[0].group_id
        if any((r.dataset, r.group_id) != (ds, gid) for r in records):
            raise ValueError("write_group: records belong to different groups")
        if len({r.view_id for r in records}) != len(records):
            raise ValueError(f"write_group: duplicate view ids in group {ds}/{gid}")
        ghash = records[0].group_hash
        if (ds, gid) in self.known_groups or (ghash and ghash in self.known_hashes):
            self.stats["groups_skipped_duplicate"] += 1
            return False
        rows = [r.to_row() for r in records]
        if self.check_records:
            check_group_before_write(rows)
        nbytes = sum(r.nbytes() for r in records)
        shard = self._ensure_shard()
        self._buffer.extend(rows)
        self._buffer_bytes += nbytes
        shard.groups += 1
        self.known_groups.add((ds, gid))
        if ghash:
            self.known_hashes.add(ghash)
        self.stats["groups_written"] += 1
        self.stats["rows_written"] += len(rows)
        if self._buffer_bytes >= self.row_group_size:
            self._flush_row_group()
        if self._open_bytes() >= self.shard_size:
            self._finish_shard()
        return True

    def reserve_shard_names(self, n: int) -> list[str]:
        """The next ``n`` shard file names, for shards written elsewhere (worker processes, Ray tasks).

        The reservation is committed to ``dataset.json`` before it returns, so
        these names are never handed out again, whatever happens to the files.
        """
        names = [self._shard_name(self._next_number + k) for k in range(n)]
        if n:
            self._next_number += n
            self._write_manifest(None, index_changed=False)
        return names

    def adopt_shard(
        self, tmp_path: str | os.PathLike, file: str, index: pa.Table, num_groups: int, sha256: str | None = None
    ) -> ShardInfo:
        """Commit a complete shard written elsewhere under a temporary name in this folder.

        The file is fsynced and renamed to ``file`` (a reserved name), listed in
        ``dataset.json`` (shards kept sorted by name, so the manifest does not
        depend on which task finished first) and its ``index`` rows
        (INDEX_SCHEMA) added; the manifest is rewritten at once, as for shards
        this writer writes itself.
        """
        tmp = Path(tmp_path)
        final = self.out / file
        if final.exists() or any(s["file"] == file for s in self.shards):
            raise FileExistsError(f"{final}: shard name already used")
        fsio.publish_file(tmp, final)
        info = ShardInfo(file, index.num_rows, sha256 or sha256_file(final), final.stat().st_size, num_groups)
        pos = sum(1 for s in self.shards if s["file"] < file)
        self.shards.insert(pos, info.__dict__)
        self._index_tables.append(index.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA))
        self.known_groups.update(zip(index.column("dataset").to_pylist(), index.column("group_id").to_pylist()))
        self.known_hashes.update(h for h in index.column("group_hash").to_pylist() if h)
        self.stats["groups_written"] += num_groups
        self.stats["rows_written"] += index.num_rows
        log.info("committed shard %s (%d rows, %.1f MB)", file, info.num_rows, info.num_bytes / 1e6)
        self._write_manifest(None)
        return info

    def close(self, stats: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._open is not None:
            self._finish_shard()
        self._write_manifest(stats)
        return self.manifest

    def abort(self) -> None:
        """Drop the open shard (its groups were never committed)."""
        if self._open is not None:
            self._open.writer.close()
            self._open.tmp_path.unlink(missing_ok=True)
            self._open = None
        self._buffer.clear()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # Keep what is complete; the partial shard is dropped and its groups redone next run.
            self.abort()
            self._write_manifest(None)

    # --- internals --------------------------------------------------------
    def _clean_stale_tmp(self) -> None:
        for p in self.out.glob(".*.tmp*"):
            log.info("removing incomplete file from an interrupted run: %s", p)
            p.unlink(missing_ok=True)

    def _shard_name(self, number: int) -> str:
        return f"{self.name}{self.suffix}-{number:05d}.parquet"

    def _shard_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.name)}{re.escape(self.suffix)}-(\d{{5}})\.parquet$")

    def _remove_unlisted_shards(self) -> None:
        """Delete shard files a killed build renamed but never listed in dataset.json (their groups are redone)."""
        listed = {s["file"] for s in self.shards}
        pat = self._shard_pattern()
        for p in sorted(self.out.iterdir()):
            if pat.match(p.name) and p.name not in listed:
                log.warning("%s: removing a shard an interrupted build never committed (its groups will be rebuilt)", p)
                p.unlink()

    def _first_free_number(self) -> int:
        pat = self._shard_pattern()
        names = [p.name for p in self.out.iterdir()] + [s["file"] for s in self.shards]
        used = [int(m.group(1)) for n in names if (m := pat.match(n))]
        return max(used, default=-1) + 1

    def _ensure_shard(self) -> _OpenShard:
        if self._open is None:
            (fname,) = self.reserve_shard_names(1)
            tmp = fsio.tmp_name(self.out / fname)
            self._open = _OpenShard(fname, tmp, parquet_writer(tmp))
        return self._open

    def _open_bytes(self) -> int:
        if self._open is None:
            return 0
        return (self._open.tmp_path.stat().st_size if self._open.tmp_path.exists() else 0) + self._buffer_bytes

    def _flush_row_group(self) -> None:
        if not self._buffer:
            return
        shard = self._open
        assert shard is not None
        table = rows_to_table(self._buffer)
        shard.writer.write_table(table, row_group_size=len(self._buffer))
        for i, row in enumerate(self._buffer):
            idx = {c: row[c] for c in SMALL_COLUMNS}
            idx.update(shard=shard.file, row_group=shard.row_groups, row_in_group=i, media_bytes=len(row["media"]))
            shard.index_rows.append(idx)
        shard.rows += len(self._buffer)
        shard.row_groups += 1
        self._buffer = []
        self._buffer_bytes = 0

    def _finish_shard(self) -> None:
        shard = self._open
        assert shard is not None
        self._flush_row_group()
        shard.writer.close()
        self._open = None
        if shard.rows == 0:
            shard.tmp_path.unlink(missing_ok=True)
            return
        final = self.out / shard.file
        fsio.publish_file(shard.tmp_path, final)
        info = ShardInfo(shard.file, shard.rows, shard_sha256(final), final.stat().st_size, shard.groups)
        self.shards.append(info.__dict__)
        self._index_tables.append(pa.Table.from_pylist(shard.index_rows, schema=INDEX_SCHEMA))
        log.info("committed shard %s (%d rows, %.1f MB)", shard.file, shard.rows, info.num_bytes / 1e6)
        # Commit after every shard so a kill loses at most the shard being written.
        self._write_manifest(None)

    def index_table(self) -> pa.Table:
        """The index of every committed shard (what index.parquet holds after the next commit)."""
        return pa.concat_tables(self._index_tables) if self._index_tables else INDEX_SCHEMA.empty_table()

    def _write_manifest(self, stats: dict[str, Any] | None, index_changed: bool = True) -> None:
        """Commit: the index (when it changed) and then dataset.json, each durably renamed into place."""
        index = self.index_table()
        if index_changed or self._index_sha is None or not (self.out / INDEX_FILE).is_file():
            with fsio.atomic_path(self.out / INDEX_FILE) as tmp:
                pq.write_table(index, tmp, compression="zstd")
                self._index_sha = sha256_file(tmp)
        prev_stats = self.manifest.get("stats", {})
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "num_rows": int(sum(s["num_rows"] for s in self.shards)),
            "num_groups": len(set(zip(index.column("dataset").to_pylist(), index.column("group_id").to_pylist()))),
            "shards": self.shards,
            # Optional (added after schema_version 1): readers without it fall back to the index as it is.
            "index_sha256": self._index_sha,
            "next_shard": self._next_number,
            "build_args": {**self.manifest.get("build_args", {}), **self.build_args},
            "stats": {**prev_stats, **(stats or {})},
            "summary": summarize_index(index),
        }
        fsio.write_json(self.out / DATASET_JSON, manifest, indent=2, sort_keys=True)
        self.manifest = manifest


def check_group_before_write(rows: list[dict[str, Any]]) -> None:
    """Refuse a group whose rows break validate's rules (ids, kinds, cameras, lengths): ``RecordError``.

    Media are not decoded here; the adapters probe every clip's frame count
    and size, and ``validate`` decodes.
    """
    from syncam_data.shards.validate import check_group_rows

    problems = check_group_rows(rows)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RecordError("; ".join(problems[:3]) + more)


def summarize_index(index: pa.Table) -> dict[str, Any]:
    """Counts per dataset and kind, for dataset.json."""
    out: dict[str, Any] = {}
    if index.num_rows == 0:
        return out
    t = index.group_by(["dataset", "kind"]).aggregate([("group_id", "count_distinct"), ("sample_id", "count")])
    for row in t.to_pylist():
        out[f"{row['dataset']}/{row['kind']}"] = {
            "groups": row["group_id_count_distinct"],
            "views": row["sample_id_count"],
        }
    return out

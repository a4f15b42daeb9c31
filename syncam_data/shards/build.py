"""The build-shards driver: sources -> deduplicated plan -> shard-writing tasks -> committed dataset.

One mechanism for every engine, so ``--engine local`` (any ``--workers``) and
``--engine ray`` produce the same shard files:

1. **discover** (driver, cheap): list the groups of every source; groups whose
   ``(dataset, group_id)`` is already in the dataset are skipped here.
2. **scan** (tasks): read metadata and hash each group's source media.
3. **plan** (driver): sort by ``(dataset, group_id)``, drop groups already in
   the dataset or repeated in this run (same key or same content hash; the
   first in sort order wins), resolve captions, and pack groups in order into
   batches of about ``shard_size`` bytes; batch ``k`` gets the shard name
   ``<name>-NNNNN.parquet`` reserved for it. The plan depends only on the
   inputs, the dataset and ``shard_size`` -- never on the engine or workers.
4. **write** (tasks): each batch converts its groups to view records and
   writes one shard under a temporary name in the output folder (a group
   that fails is recorded and left out whole).
5. **commit** (driver, as tasks finish): rename the shard to its reserved
   name, rewrite ``index.parquet``, then ``dataset.json`` -- the commit point
   (see ``ShardWriter``).

Every record is checked with ``validate``'s rules before it is written; a
group that fails is recorded as an error and left out whole. A killed build
leaves the committed shards valid; temporary files and renamed-but-uncommitted
shards are removed by the next run (which rebuilds an index that does not
match ``dataset.json``) and their groups redone under new shard names. On Ray the output folder (and the inputs) must be on storage that
every node sees at the same path.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from syncam_data import fsio
from syncam_data.engine import TaskResult, run_tasks
from syncam_data.shards import adapters
from syncam_data.shards.adapters import AdapterError, ConvertConfig, GroupPlan, GroupRef
from syncam_data.shards.captions import Captions, load_captions
from syncam_data.shards.schema import INDEX_SCHEMA, SMALL_COLUMNS, rows_to_table
from syncam_data.shards.writer import AppendHash, ShardWriter, check_group_before_write, parquet_writer, parse_size

log = logging.getLogger(__name__)

LOCK_FILE = ".build.lock"
MAX_ERRORS_KEPT = 200


class BuildError(RuntimeError):
    """The build cannot start (bad inputs, a locked output); nothing was written."""


@dataclass
class BuildConfig:
    out: Path
    renders: list[Path] = field(default_factory=list)
    frames: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    syncamvideo: list[Path] = field(default_factory=list)
    captions: Path | None = None
    name: str = "syncam"
    shard_size: int = 512 << 20
    row_group_size: int = 96 << 20
    engine: str = "local"
    workers: int = 1
    ray_address: str | None = None
    options: ConvertConfig = field(default_factory=ConvertConfig)
    max_groups: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.shard_size = parse_size(self.shard_size)
        self.row_group_size = min(parse_size(self.row_group_size), self.shard_size)
        if self.engine not in ("local", "ray"):
            raise BuildError(f"--engine {self.engine!r}: use 'local' or 'ray'")
        if self.workers < 1:
            raise BuildError("--workers must be at least 1")

    def sources(self) -> list[tuple[str, Path]]:
        return (
            [("renders", Path(p)) for p in self.renders]
            + [("frames", Path(p)) for p in self.frames]
            + [("videos", Path(p)) for p in self.videos]
            + [("syncamvideo", Path(p)) for p in self.syncamvideo]
        )

    def build_args(self) -> dict[str, Any]:
        """What goes into dataset.json: the settings that shape the dataset (not the engine)."""
        args = {
            "shard_size": self.shard_size,
            "row_group_size": self.row_group_size,
            "adapter_options": {k: v for k, v in asdict(self.options).items()},
        }
        return args


@dataclass
class Batch:
    """One shard-writing task: groups in order, the shard name reserved for them."""

    index: int
    file: str
    out: str
    plans: list[GroupPlan]
    options: ConvertConfig
    row_group_size: int


@dataclass
class BatchResult:
    file: str
    tmp_path: str | None
    index_rows: list[dict[str, Any]]
    num_groups: int
    sha256: str | None
    errors: list[dict[str, str]]
    bytes_written: int = 0
    seconds: float = 0.0


@dataclass
class BuildSummary:
    out: str
    discovered: int = 0
    skipped_existing: int = 0
    skipped_duplicate: int = 0
    scanned: int = 0
    groups_written: int = 0
    views_written: int = 0
    bytes_written: int = 0
    shards_written: list[str] = field(default_factory=list)
    captions: dict[str, int] = field(default_factory=lambda: {"from_file": 0, "from_source": 0, "missing": 0})
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "local"
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_errors"] = len(self.errors)
        d["errors"] = self.errors[:MAX_ERRORS_KEPT]
        return d


# --- tasks (top-level functions: they run in worker processes and on Ray) -------


def scan_task(item: tuple[GroupRef, ConvertConfig]) -> GroupPlan:
    ref, options = item
    return adapters.scan(ref, options)


class _PartWriter:
    """Rows of one batch into one Parquet file, row groups of about ``row_group_size`` bytes."""

    def __init__(self, tmp: Path, file: str, row_group_size: int) -> None:
        self.tmp, self.file, self.row_group_size = tmp, file, row_group_size
        self.writer = None
        self.hasher: AppendHash | None = None
        self.sha256: str | None = None
        self.buffer: list[dict[str, Any]] = []
        self.buffer_bytes = 0
        self.row_groups = 0
        self.index_rows: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]], nbytes: int) -> None:
        self.buffer.extend(rows)
        self.buffer_bytes += nbytes
        if self.buffer_bytes >= self.row_group_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = parquet_writer(self.tmp)
            self.hasher = AppendHash(self.tmp)
        self.writer.write_table(rows_to_table(self.buffer), row_group_size=len(self.buffer))
        self.hasher.catch_up()
        for i, row in enumerate(self.buffer):
            idx = {c: row[c] for c in SMALL_COLUMNS}
            idx.update(shard=self.file, row_group=self.row_groups, row_in_group=i, media_bytes=len(row["media"]))
            self.index_rows.append(idx)
        self.row_groups += 1
        self.buffer, self.buffer_bytes = [], 0

    def close(self) -> bool:
        """Finish the file; False (and no file) when no row was written."""
        self.flush()
        if self.writer is None:
            return False
        self.writer.close()
        fsio.fsync_file(self.tmp)  # on disk before the driver publishes it
        self.sha256 = self.hasher.hexdigest()
        return True

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.hasher.close()


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 << 10


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (mallopt and malloc_trim are glibc's), else None."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextmanager
def reused_blob_memory(limit: int = 256 << 20) -> Iterator[None]:
    """While writing shards, let malloc reuse freed blob memory instead of handing it back to the kernel.

    Each input file is read into a fresh ``bytes`` (a depth npz is tens of MB). glibc serves
    allocations above its mmap threshold (128 KB, adjusted up to at most 32 MB) with new mappings
    and unmaps them on free, so every file costs page faults and the kernel zero-filling its pages:
    1.0 CPU-s per GB read, against 0.25 when the blocks freed after a row group is written are
    reused (docs/benchmarks/build_shards.md). Blocks up to ``limit`` come from the heap here, and
    the heap keeps freed memory; glibc's defaults (and a trimmed heap) are restored afterwards.
    Nothing changes where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, limit)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * limit)
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


def write_batch(batch: Batch) -> BatchResult:
    """Convert a batch's groups and write them into one temporary shard file (committed by the driver)."""
    with reused_blob_memory():
        return _write_batch(batch)


def _write_batch(batch: Batch) -> BatchResult:
    t0 = time.perf_counter()
    tmp = Path(batch.out) / f".{batch.file}.tmp{os.getpid()}"
    part = _PartWriter(tmp, batch.file, batch.row_group_size)
    errors, groups = [], 0
    try:
        for plan in batch.plans:
            try:
                records = adapters.convert(plan, batch.options)
                for r in records:
                    r.validate()
                rows = [r.to_row() for r in records]
                # validate's rules, before anything is written: committed shards are never rewritten.
                check_group_before_write(rows)
            except Exception as e:  # one bad group is recorded and left out whole; the batch goes on
                errors.append(
                    {
                        "group": f"{plan.dataset}/{plan.group_id}",
                        "input": plan.ref.label,
                        "error": f"{type(e).__name__}: {e}",
                    }
                )
                log.warning("%s: %s", plan.ref.label, e)
                continue
            part.add(rows, sum(r.nbytes() for r in records))
            groups += 1
        wrote = part.close()
    except BaseException:
        part.abort()
        tmp.unlink(missing_ok=True)
        raise
    if not wrote:
        return BatchResult(batch.file, None, [], 0, None, errors, seconds=time.perf_counter() - t0)
    return BatchResult(
        batch.file, str(tmp), part.index_rows, groups, part.sha256, errors, tmp.stat().st_size, time.perf_counter() - t0
    )


# --- driver -----------------------------------------------------------------------


class BuildLock:
    """``<out>/.build.lock``: one build per output folder at a time (a stale lock of a dead local process is taken over)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE

    def __enter__(self) -> BuildLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    log.warning("%s: removing the lock of a build that is no longer running", self.path)
                    self.path.unlink(missing_ok=True)
                    continue
                raise BuildError(
                    f"{self.path}: another build is writing this dataset ({self.path.read_text().strip()}); delete the lock file if it is not running"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise BuildError(f"{self.path}: could not take the build lock")

    def _stale(self) -> bool:
        try:
            other = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return True  # a lock torn by a crash while it was being written
        if other.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another machine is alive
        try:
            os.kill(int(other["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            return False
        return False

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def discover_all(cfg: BuildConfig) -> list[GroupRef]:
    refs: list[GroupRef] = []
    for source, path in cfg.sources():
        if not path.exists():
            raise BuildError(f"{path}: input given with --{source} does not exist")
        try:
            found = adapters.discover(source, path, cfg.options)
        except AdapterError as e:
            raise BuildError(str(e)) from None
        log.info("%s %s: %d group(s)", source, path, len(found))
        if not found:  # a job that found nothing must never look like success
            raise BuildError(f"{path}: --{source} found nothing: expected {adapters.adapter(source).LAYOUT}")
        refs.extend(found)
    return refs


def select_plans(
    plans: list[GroupPlan], writer: ShardWriter, summary: BuildSummary, max_groups: int | None
) -> list[GroupPlan]:
    """Deterministic dedup: sorted by key; skip groups already committed or repeated (key or content hash)."""
    keys: set[tuple[str, str]] = set()
    hashes: set[str] = set()
    chosen = []
    for p in sorted(plans, key=lambda p: (p.dataset, p.group_id, p.ref.path)):
        if writer.has_group(p.dataset, p.group_id):
            summary.skipped_existing += 1
            continue
        if p.key in keys or writer.has_hash(p.group_hash) or p.group_hash in hashes:
            log.info("%s: duplicate of a group already in the dataset or earlier in this build; skipped", p.ref.label)
            summary.skipped_duplicate += 1
            continue
        keys.add(p.key)
        hashes.add(p.group_hash)
        chosen.append(p)
    if max_groups is not None and len(chosen) > max_groups:
        log.info("--max-groups %d: leaving %d group(s) for a later run", max_groups, len(chosen) - max_groups)
        chosen = chosen[:max_groups]
    return chosen


def attach_captions(plans: Iterable[GroupPlan], captions: Captions | None, summary: BuildSummary) -> None:
    """Per-view captions: the captions file first, then the source's own caption; never invented."""
    for p in plans:
        for v in p.views:
            hit = captions.lookup(p.dataset, p.group_id, v.view_id, v.source_uri, p.ref.path) if captions else None
            if hit is not None:
                p.view_captions[v.view_id] = hit[0]
                summary.captions["from_file"] += 1
            elif p.caption:
                p.view_captions[v.view_id] = p.caption
                summary.captions["from_source"] += 1
            else:
                p.view_captions[v.view_id] = ""
                summary.captions["missing"] += 1


def pack_batches(plans: list[GroupPlan], shard_size: int) -> list[list[GroupPlan]]:
    """Groups in order into batches of at most ``shard_size`` source bytes (a bigger group gets a batch alone)."""
    batches: list[list[GroupPlan]] = []
    cur: list[GroupPlan] = []
    size = 0
    for p in plans:
        if cur and size + p.nbytes > shard_size:
            batches.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.nbytes
    if cur:
        batches.append(cur)
    return batches


def scan_all(refs: list[GroupRef], cfg: BuildConfig, run_kw: dict[str, Any]) -> Iterable[TaskResult]:
    """Scan groups: Ray tasks on Ray; threads locally (hashing and file reads release the GIL, and
    threads spare a second process-pool start-up, which costs more than small scans)."""
    items = [(r, cfg.options) for r in refs]
    if cfg.engine == "ray" or cfg.workers <= 1:
        yield from run_tasks(scan_task, items, desc="scan", unit="group", **run_kw)
        return
    with (
        cf.ThreadPoolExecutor(max_workers=cfg.workers) as pool,
        tqdm(total=len(items), desc="scan", unit="group", disable=not cfg.progress or not items) as bar,
    ):
        for res in pool.map(_scan_one, items):
            bar.update(1)
            yield res


def _scan_one(item: tuple[GroupRef, ConvertConfig]) -> TaskResult:
    t0 = time.perf_counter()
    try:
        return TaskResult(item, scan_task(item), seconds=time.perf_counter() - t0)
    except Exception as e:  # per-group failure: recorded by the driver, the build goes on
        return TaskResult(item, error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)


def build_shards(cfg: BuildConfig) -> BuildSummary:
    """Run one (incremental) build into ``cfg.out``; see the module docstring."""
    t0 = time.perf_counter()
    if not cfg.sources():
        raise BuildError("nothing to build: give at least one of --renders, --frames, --videos, --syncamvideo")
    captions = load_captions(cfg.captions) if cfg.captions else None
    refs = discover_all(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    summary = BuildSummary(str(cfg.out), discovered=len(refs), engine=cfg.engine, workers=cfg.workers)
    run_kw = dict(engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address, progress=cfg.progress)
    with BuildLock(cfg.out):
        # Opening the writer deletes uncommitted shards and rebuilds an index that does not match dataset.json.
        writer = ShardWriter(
            cfg.out,
            name=cfg.name,
            shard_size=cfg.shard_size,
            row_group_size=cfg.row_group_size,
            build_args=cfg.build_args(),
        )
        todo = [r for r in refs if not (r.dataset and r.group_id and writer.has_group(r.dataset, r.group_id))]
        summary.skipped_existing += len(refs) - len(todo)

        plans: list[GroupPlan] = []
        for res in scan_all(todo, cfg, run_kw):
            if res.ok:
                plans.append(res.value)
            else:
                summary.errors.append({"group": "", "input": res.item[0].label, "error": res.error or ""})
                log.warning("%s: %s", res.item[0].label, res.error)
        summary.scanned = len(plans)

        chosen = select_plans(plans, writer, summary, cfg.max_groups)
        attach_captions(chosen, captions, summary)
        groups = pack_batches(chosen, cfg.shard_size)
        names = writer.reserve_shard_names(len(groups))
        batches = [
            Batch(i, n, str(cfg.out), g, cfg.options, cfg.row_group_size) for i, (n, g) in enumerate(zip(names, groups))
        ]
        log.info(
            "%d new group(s) in %d shard(s); %d already in the dataset, %d duplicate(s)",
            len(chosen),
            len(batches),
            summary.skipped_existing,
            summary.skipped_duplicate,
        )

        # No more processes than shards: a process pool costs seconds of start-up (imports) per worker.
        write_kw = {**run_kw, "workers": max(1, min(cfg.workers, len(batches)))}
        for res in run_tasks(write_batch, batches, desc="write shards", unit="shard", **write_kw):
            if not res.ok:
                for p in res.item.plans:
                    summary.errors.append(
                        {
                            "group": f"{p.dataset}/{p.group_id}",
                            "input": p.ref.label,
                            "error": f"shard task failed: {res.error}",
                        }
                    )
                log.error("shard %s failed: %s", res.item.file, res.error)
                continue
            commit_batch(writer, res.value, summary)
        summary.seconds = time.perf_counter() - t0
        finish(writer, summary, cfg)
    return summary


def commit_batch(writer: ShardWriter, r: BatchResult, summary: BuildSummary) -> None:
    summary.errors.extend(r.errors)
    if r.tmp_path is None:
        return
    index = pa.Table.from_pylist(r.index_rows, schema=INDEX_SCHEMA)
    writer.adopt_shard(r.tmp_path, r.file, index, r.num_groups, r.sha256)
    summary.groups_written += r.num_groups
    summary.views_written += index.num_rows
    summary.bytes_written += r.bytes_written
    summary.shards_written.append(r.file)


def finish(writer: ShardWriter, summary: BuildSummary, cfg: BuildConfig) -> None:
    """Record this build in dataset.json stats: the per-build summary (with its settings: groups of
    different builds may have been made with different options) and dataset-wide caption coverage."""
    prev = writer.manifest.get("stats", {})
    builds = list(prev.get("builds", [])) + [
        {**summary.to_dict(), "build_args": cfg.build_args(), "sources": [f"{k}:{p}" for k, p in cfg.sources()]}
    ]
    caps = writer.index_table().column("caption").to_pylist()
    stats = {"builds": builds, "views": len(caps), "views_without_caption": sum(1 for c in caps if not c)}
    writer.close(stats)

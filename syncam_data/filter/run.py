"""The filter-videos job: plan (resume and de-duplicate by content hash), run the videos, record rows.

One video goes through ``decode_stage`` (probe, container completeness,
cheap checks, downsampled decode, scene-cut scores; CPU) then
``analyze_stage`` (segment the first frame, track points, score, decide; the
GPU part with SAM/CoTracker), both in ``filter/stages.py``. Any failure
becomes an error row; nothing stops the run. Locally, one worker decodes the next video in a thread while it
analyses the current one (the two stages use different cores);
``--workers N`` runs N such processes. On Ray, decoding runs as Ray Data CPU
tasks and analysis in a pool of (GPU) actors.

Each distinct content (sha256 of the bytes) is processed once: a copy found
in an earlier run reuses that row, a copy within this run waits for the first
one; both get their own row, marked ``duplicate_of`` the path that was
processed.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.engine import run_tasks
from syncam_data.filter.decode import Clip
from syncam_data.filter.score import decide
from syncam_data.filter.settings import FilterConfig
from syncam_data.filter.stages import (
    VideoItem,
    VideoTimeout,
    analyze_stage,
    base_row,
    decode_stage,
    error_row,
    filter_video,
    time_limit,
)
from syncam_data.filter.store import ScoresStore
from syncam_data.fsio import sha256_file, utc_now
from syncam_data.video import VideoError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
LIST_EXTENSIONS = {".txt", ".csv", ".lst"}


class NoVideosError(ValueError):
    """An input (folder or list) that names no video at all: the job would do nothing."""


@dataclass
class RunSummary:
    total: int = 0
    processed: int = 0
    reused: int = 0
    duplicates: int = 0  # inputs whose content another input of this run (or an earlier one) already has
    counts: dict[str, int] = field(default_factory=dict)  # status -> rows in the final table
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> rows


class _Prefetch:
    """``decode_stage`` of one video in a daemon thread, started now.

    The thread only has the cooperative deadline checks (signals reach the
    main thread only); a decode stuck inside one library call is abandoned
    when ``get`` times out, and being a daemon it cannot keep the process alive.
    """

    def __init__(self, item: VideoItem, s: FilterConfig) -> None:
        self.item, self.settings = item, s
        self.result: tuple[dict[str, Any], Clip | None, float, float, float] | None = None
        self.thread = threading.Thread(target=self._run, name=f"decode {Path(item.path).name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        s, item = self.settings, self.item
        started = time.monotonic()
        row = base_row(item, s)

        def check() -> None:
            if time.monotonic() - started > s.timeout_s:
                raise VideoTimeout(f"{item.path}: exceeded the per-video time limit of {s.timeout_s:g}s")

        try:
            row, clip, cut = decode_stage(item, s, check, row)
        except Exception as e:  # per-video failure
            log.debug("error on %s", item.path, exc_info=True)
            row, clip, cut = error_row(row, e), None, 0.0
        self.result = (row, clip, cut or 0.0, started, time.monotonic() - started)

    def get(self) -> tuple[dict[str, Any], Clip | None, float, float, float]:
        self.thread.join(self.settings.timeout_s + 5.0)
        if self.result is None:  # still inside one call of the decoder after the time limit
            row = error_row(
                base_row(self.item, self.settings),
                VideoTimeout(f"{self.item.path}: exceeded the per-video time limit of {self.settings.timeout_s:g}s"),
            )
            return row, None, 0.0, time.monotonic(), self.settings.timeout_s
        return self.result


@contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV's own thread pool off while this worker analyses: its second core is busy decoding the next video.

    (Splitting Lucas-Kanade's few hundred points over threads costs more CPU than it saves time here.)
    """
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _pipelined_rows(
    todo: list[VideoItem], s: FilterConfig, debug_dir: str | None, progress: bool
) -> Iterator[dict[str, Any]]:
    """One worker: decode video i+1 in a thread while video i is analysed here (decode and tracking overlap)."""
    from tqdm import tqdm

    debug = Path(debug_dir) if debug_dir else None
    nxt = _Prefetch(todo[0], s) if todo else None
    with (
        one_opencv_thread(),
        tqdm(
            total=len(todo), desc="filter-videos", unit="video", disable=not progress or not todo, dynamic_ncols=True
        ) as bar,
    ):
        for i, item in enumerate(todo):
            row, clip, cut, started, decode_s = nxt.get()  # type: ignore[union-attr]
            nxt = _Prefetch(todo[i + 1], s) if i + 1 < len(todo) else None
            t0 = time.perf_counter()
            if clip is not None:
                try:
                    left = s.timeout_s - (time.monotonic() - started)
                    if left <= 0:
                        raise VideoTimeout(f"{item.path}: exceeded the per-video time limit of {s.timeout_s:g}s")
                    with time_limit(left, item.path) as check:
                        row = analyze_stage(row, clip, cut, s, check, debug)
                except Exception as e:  # per-video failure
                    log.debug("error on %s", item.path, exc_info=True)
                    row = error_row(row, e)
            row["seconds"] = decode_s + time.perf_counter() - t0
            bar.update(1)
            yield row


# ---------------------------------------------------------------- inputs and planning


def _read_list(path: Path) -> list[str]:
    """Paths from a .txt (one per line, # comments) or .csv (a 'path' column, else the first column)."""
    text = path.read_text(encoding="utf-8")
    base = path.parent
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text))
        rows = [r for r in reader if r]
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        col = header.index("path") if "path" in header else 0
        body = rows[1:] if "path" in header else rows
        entries = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [str(Path(e) if Path(e).is_absolute() else base / e) for e in entries]


def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Absolute video paths from files, folders (recursive, by extension) and list files; order kept, no duplicates.

    An input that yields no video (a missing path, a folder without videos, an empty list) is a
    mistake (``NoVideosError`` naming it); a file becomes one item, and a path named in a list one
    item even when it is missing, so bad files get error rows.
    """
    out: dict[str, None] = {}
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS]
            if not found:
                raise NoVideosError(
                    f"{p}: no video files in this folder (searched recursively for "
                    f"{' '.join(sorted(VIDEO_EXTENSIONS))})"
                )
            for f in found:
                out[str(f.resolve())] = None
        elif p.suffix.lower() in LIST_EXTENSIONS and p.is_file():
            try:
                entries = _read_list(p)
            except (OSError, UnicodeDecodeError) as e:
                raise NoVideosError(f"{p}: cannot read this list of videos ({e})") from None
            if not entries:
                raise NoVideosError(
                    f"{p}: the list names no videos (expected one path per line, or a 'path' column in a .csv)"
                )
            for e in entries:
                out[str(Path(e).resolve())] = None
        elif not p.exists() and not p.is_symlink():
            # Given on the command line, a path that does not exist is a typo, not a bad video: nothing to do.
            raise NoVideosError(
                f"{p}: no such file or folder (expected a video file, a folder of videos, "
                f"or a {'/'.join(sorted(LIST_EXTENSIONS))} list of paths)"
            )
        else:
            out[str(p.resolve())] = None  # an unreadable or non-video file becomes an error row, not a crash
    return list(out)


@dataclass
class Plan:
    todo: list[VideoItem]
    ready: list[dict[str, Any]]  # rows produced without processing (reused by hash, missing or non-regular files)
    skipped: int  # paths already done and unchanged
    # Same content as an item of ``todo``: (the copy, the path of the item that is processed); rows copied when it finishes.
    waiting: list[tuple[VideoItem, str]] = field(default_factory=list)


def _hash_all(paths: list[str], progress: bool) -> dict[str, str | OSError]:
    """sha256 of each file, read by a few threads (hashing is I/O bound and releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def one(path: str) -> str | OSError:
        try:
            return sha256_file(path)
        except OSError as e:
            return e

    out: dict[str, str | OSError] = {}
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        bar = tqdm(
            total=len(paths), desc="hashing", unit="file", disable=not progress or len(paths) < 100, dynamic_ncols=True
        )
        for path, digest in zip(paths, pool.map(one, paths)):
            out[path] = digest
            bar.update(1)
        bar.close()
    return out


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def duplicate_row(source: dict[str, Any], item: VideoItem) -> dict[str, Any]:
    """The row of ``item``, a copy of the content that ``source`` scored (nothing is recomputed)."""
    first = source.get("duplicate_of") or source["path"]
    return dict(
        source,
        path=item.path,
        file_size=item.file_size,
        mtime_ns=item.mtime_ns,
        seconds=0.0,
        duplicate_of=None if first == item.path else first,
        finished_at=utc_now("microseconds"),
    )


def plan_work(
    paths: list[str],
    done: dict[str, dict[str, Any]],
    s: FilterConfig,
    force: bool,
    retry_errors: bool,
    progress: bool = False,
) -> Plan:
    """Skip what is done (same path, size and mtime) and process each content hash once.

    Content already scored under another path (an earlier run) is reused; a
    content that appears twice in this run is processed for its first path
    only, the others wait for that row (``Plan.waiting``).
    """
    by_hash: dict[str, dict[str, Any]] = {}
    for r in sorted(done.values(), key=lambda r: (r.get("duplicate_of") is not None, r["path"])):
        if r.get("content_hash") and r["status"] != "error":
            by_hash.setdefault(r["content_hash"], r)
    ready: list[dict[str, Any]] = []
    skipped = 0
    to_hash: list[tuple[str, os.stat_result]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            row = base_row(VideoItem(path, "", 0, 0), s)
            ready.append(error_row(row, VideoError(f"{path}: no such file ({e.strerror})")))
            continue
        if not stat.S_ISREG(st.st_mode):
            # Never read it: /dev/zero or a FIFO would block the hashing forever, before any time limit applies.
            row = base_row(VideoItem(path, "", 0, int(st.st_mtime_ns)), s)
            ready.append(error_row(row, VideoError(f"{path}: not a regular file ({_file_kind(st.st_mode)})")))
            continue
        prev = done.get(path)
        redo = force or (prev is not None and prev["status"] == "error" and retry_errors)
        if (
            prev is not None
            and not redo
            and prev.get("file_size") == st.st_size
            and prev.get("mtime_ns") == st.st_mtime_ns
        ):
            skipped += 1  # unchanged since it was scored: no need to read it again
            continue
        to_hash.append((path, st))
    digests = _hash_all([p for p, _ in to_hash], progress)
    todo: list[VideoItem] = []
    first_path: dict[str, str] = {}
    waiting: list[tuple[VideoItem, str]] = []
    for path, st in to_hash:
        digest = digests[path]
        if isinstance(digest, OSError):
            row = base_row(VideoItem(path, "", int(st.st_size), int(st.st_mtime_ns)), s)
            ready.append(error_row(row, VideoError(f"{path}: cannot read the file ({digest.strerror or digest})")))
            continue
        item = VideoItem(path, digest, int(st.st_size), int(st.st_mtime_ns))
        same = by_hash.get(digest)
        if same is not None and not force:
            ready.append(duplicate_row(same, item))
        elif digest in first_path:
            waiting.append((item, first_path[digest]))
        else:
            first_path[digest] = path
            todo.append(item)
    return Plan(todo, ready, skipped, waiting)


def check_model_files(s: FilterConfig) -> None:
    """Fail before any video is touched when SAM/CoTracker weights or code are missing."""
    if s.segmenter == "sam" and s.sam_checkpoint and not Path(s.sam_checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"--sam-checkpoint {s.sam_checkpoint}: no such file")
    if s.tracker == "cotracker":
        from syncam_data.filter.track import resolve_cotracker

        resolve_cotracker(s.cotracker_repo, s.cotracker_checkpoint, s.cotracker_entry)


def _warn_if_settings_changed(done: dict[str, dict[str, Any]], s: FilterConfig) -> None:
    for r in done.values():
        if r.get("settings") and r["status"] != "error":
            try:
                old = FilterConfig.from_json(r["settings"])
            except (ValueError, TypeError):
                return
            if old.compute_key() != s.compute_key():
                log.warning(
                    "existing rows in this output were computed with other decoding/tracking settings; "
                    "they are kept as they are (use --force to recompute, --rescore to change thresholds)"
                )
            return


# ---------------------------------------------------------------- run


def _local_rows(
    todo: list[VideoItem], s: FilterConfig, workers: int, debug_dir: str | None, progress: bool
) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        yield from _pipelined_rows(todo, s, debug_dir, progress)
        return
    fn = partial(filter_video, settings=s, debug_dir=debug_dir)
    for res in run_tasks(
        fn, todo, engine="local", workers=workers, desc="filter-videos", unit="video", progress=progress
    ):
        if res.ok:
            yield res.value
        else:  # the worker process died (e.g. out of memory): still one row for the video
            yield error_row(base_row(res.item, s), RuntimeError(res.error or "worker failed"))


def run_filter(
    inputs: Iterable[str | Path],
    out: str | Path,
    settings: FilterConfig,
    workers: int = 1,
    engine: str = "local",
    ray_address: str | None = None,
    debug: bool = False,
    force: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Filter ``inputs`` into ``out``; resumable (rows are saved as each video finishes).

    Raises ``NoVideosError`` (before anything is written) when an input folder or list names no video.
    """
    paths = expand_inputs(inputs)
    store = ScoresStore(out)
    store.out.mkdir(parents=True, exist_ok=True)
    done = store.load()
    _warn_if_settings_changed(done, settings)
    plan = plan_work(paths, done, settings, force, retry_errors, progress)
    if plan.todo:
        check_model_files(settings)
    log.info(
        "%d inputs: %d to process, %d already done, %d reused by content hash or failed early, %d copies of "
        "content processed in this run",
        len(paths),
        len(plan.todo),
        plan.skipped,
        len(plan.ready),
        len(plan.waiting),
    )
    for row in plan.ready:
        store.append(row)
    waiting: dict[str, list[VideoItem]] = {}
    for item, first in plan.waiting:
        waiting.setdefault(first, []).append(item)
    debug_dir = str(store.debug) if debug else None
    if engine == "ray":
        from syncam_data.filter.ray_engine import ray_rows

        rows = ray_rows(plan.todo, settings, workers, ray_address, debug_dir, progress)
    elif engine == "local":
        rows = _local_rows(plan.todo, settings, workers, debug_dir, progress)
    else:
        raise ValueError(f"unknown engine {engine!r}: use 'local' or 'ray'")
    for row in rows:
        store.append(row)
        if row["status"] == "error":
            log.warning("%s: %s (%s)", row["path"], row["reason"], row["error"])
        for copy in waiting.pop(row["path"], []):
            store.append(duplicate_row(row, copy))
    table = store.write_all()
    if debug:
        _write_histogram(store, table.to_pylist(), settings)
    duplicates = len(plan.waiting) + sum(1 for r in plan.ready if r.get("duplicate_of"))
    return _summary(table.to_pylist(), len(paths), len(plan.todo), len(plan.ready), duplicates)


def _write_histogram(store: ScoresStore, rows: list[dict[str, Any]], s: FilterConfig) -> None:
    from syncam_data.filter.debug import write_score_histogram

    path = store.debug / "score_histogram.png"
    write_score_histogram(rows, s, path)
    log.info("wrote %s", path)


def _summary(rows: list[dict[str, Any]], total: int, processed: int, reused: int, duplicates: int = 0) -> RunSummary:
    s = RunSummary(total=total, processed=processed, reused=reused, duplicates=duplicates)
    for r in rows:
        s.counts[r["status"]] = s.counts.get(r["status"], 0) + 1
        if r["reason"]:
            s.reasons[r["reason"]] = s.reasons.get(r["reason"], 0) + 1
    return s


def rescore(out: str | Path, debug: bool = False, **changes: Any) -> RunSummary:
    """Apply new decision settings to stored raw scores; no decoding or tracking."""
    store = ScoresStore(out)
    rows = store.load()
    if not rows:
        raise FileNotFoundError(f"{store.scores}: no scores to rescore (run filter-videos first)")
    stale = 0
    last: FilterConfig | None = None
    for r in rows.values():
        if r["status"] == "error" or not r.get("settings"):
            continue
        s = FilterConfig.from_json(r["settings"]).with_decisions(**changes)
        last = s
        r["settings"] = s.to_json()
        if r.get("track_speed") is None:
            # Rejected before tracking (too short/small): re-check what can be checked, else keep.
            if min(r["width"], r["height"]) < s.min_short_side:
                r.update(status="rejected", reason="too_small")
            elif r["duration_s"] < s.min_duration_s:
                r.update(status="rejected", reason="too_short")
            else:
                stale += 1
            continue
        support = r.get("camera_support_per_pair")
        d = decide(
            s,
            r["width"],
            r["height"],
            r["duration_s"],
            r["scene_cut_score"],
            np.asarray(r["camera_motion_per_pair"], np.float32),
            None if support is None else np.asarray(support, np.int64),
            np.asarray(r["track_speed"], np.float32),
            np.asarray(r["track_candidate"], bool),
        )
        r.update(
            status=d.status,
            reason=d.reason,
            subject_motion=d.subject_motion,
            camera_motion=d.camera_motion,
            measured_fraction=d.measured_fraction,
        )
    if stale:
        log.warning(
            "%d video(s) were rejected before tracking and now pass the size/duration checks: "
            "rerun filter-videos with --force on them to measure their motion",
            stale,
        )
    table = store.write_all(rows)
    if debug:
        _write_histogram(store, table.to_pylist(), last or FilterConfig().with_decisions(**changes))
    return _summary(table.to_pylist(), len(rows), 0, 0, sum(1 for r in rows.values() if r.get("duplicate_of")))


def summary_text(s: RunSummary) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items()))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items()))
    dup = f", {s.duplicates} duplicate(s) of other inputs" if s.duplicates else ""
    return f"{s.total} inputs ({s.processed} processed now{dup}): {counts}" + (
        f"; reasons: {reasons}" if reasons else ""
    )

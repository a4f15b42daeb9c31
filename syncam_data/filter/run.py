"""The filter-videos job: plan (resume and de-duplicate by content hash), process each video, record rows.

One video goes through ``decode_stage`` (probe, container completeness,
cheap checks, downsampled decode, scene-cut scores; CPU) then
``analyze_stage`` (segment the first frame, track points, score, decide; the
GPU part with SAM/CoTracker). Any failure becomes an error row; nothing stops
the run. Locally, one worker decodes the next video in a thread while it
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
import signal
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from syncam_data.engine import run_tasks
from syncam_data.filter.cuts import cut_scores, first_shot_length
from syncam_data.filter.decode import Clip, RejectedInput, TruncatedVideo, decode_clip, sha256_of
from syncam_data.filter.isobmff import truncation
from syncam_data.filter.score import decide, score_tracks
from syncam_data.filter.settings import FilterSettings
from syncam_data.filter.store import ScoresStore
from syncam_data.video import VideoError, VideoInfo, probe

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
LIST_EXTENSIONS = {".txt", ".csv", ".lst"}


class VideoTimeout(Exception):
    """The per-video time limit ran out (not an OSError, so no I/O handler swallows it)."""


class ModelError(RuntimeError):
    """SAM or CoTracker could not be built (a setup problem, not a bad video)."""


class NoVideosError(ValueError):
    """An input (folder or list) that names no video at all: the job would do nothing."""


@dataclass(frozen=True)
class VideoItem:
    path: str
    content_hash: str
    file_size: int
    mtime_ns: int


@dataclass
class RunSummary:
    total: int = 0
    processed: int = 0
    reused: int = 0
    duplicates: int = 0  # inputs whose content another input of this run (or an earlier one) already has
    counts: dict[str, int] = field(default_factory=dict)  # status -> rows in the final table
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> rows


# ---------------------------------------------------------------- time limit


@contextmanager
def time_limit(seconds: float, name: str) -> Iterator[Callable[[], None]]:
    """Yield a ``check()`` that raises VideoTimeout after ``seconds``.

    In a main thread a SIGALRM also interrupts long single calls (SAM,
    CoTracker); elsewhere (threads) only the cooperative checks apply.
    """
    deadline = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > deadline:
            raise VideoTimeout(f"{name}: exceeded the per-video time limit of {seconds:g}s")

    def on_alarm(signum, frame) -> None:  # noqa: ARG001
        raise VideoTimeout(f"{name}: exceeded the per-video time limit of {seconds:g}s")

    use_signal = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    old = None
    if use_signal:
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield check
    finally:
        if use_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- models (one per process)

_MODELS: dict[tuple, tuple[Any, Any]] = {}


def get_models(s: FilterSettings) -> tuple[Any, Any]:
    """Segmenter and tracker for ``s``, built once per process (weights load once per worker)."""
    from syncam_data.filter.segment import GridSegmenter, SamSegmenter
    from syncam_data.filter.track import CoTrackerTracker, LKTracker, load_cotracker

    key = (s.segmenter, s.sam_model, s.sam_checkpoint, s.sam_points_per_side, s.tracker, s.cotracker_repo,
           s.cotracker_checkpoint, s.cotracker_entry, s.cotracker_query_every, s.grid_size, s.device, s.lk_window,
           s.lk_levels, s.fb_threshold_px, s.reseed_fraction)
    if key not in _MODELS:
        if s.segmenter == "sam":
            seg: Any = SamSegmenter(s.sam_model, s.sam_checkpoint, s.device, s.sam_points_per_side)
        else:
            seg = GridSegmenter()
        if s.tracker == "cotracker":
            model = load_cotracker(s.cotracker_repo, s.cotracker_checkpoint, s.cotracker_entry, s.device)
            trk: Any = CoTrackerTracker(model, s.device, s.cotracker_query_every, s.grid_size)
        else:
            trk = LKTracker(s.lk_window, s.lk_levels, s.fb_threshold_px, s.reseed_fraction)
        _MODELS[key] = (seg, trk)
    return _MODELS[key]


# ---------------------------------------------------------------- rows


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def base_row(item: VideoItem, s: FilterSettings) -> dict[str, Any]:
    return {
        "path": item.path, "content_hash": item.content_hash, "status": "error", "reason": "", "subject_motion": None,
        "camera_motion": None, "duration_s": 0.0, "fps": 0.0, "width": 0, "height": 0, "num_frames": 0, "codec": "",
        "error": None, "settings": s.to_json(), "file_size": item.file_size, "mtime_ns": item.mtime_ns,
        "camera_motion_per_pair": None, "camera_support_per_pair": None, "measured_fraction": None, "track_speed": None,
        "track_candidate": None, "duplicate_of": None, "finished_at": _now(),
    }


def _fill_info(row: dict[str, Any], info: VideoInfo | None) -> None:
    if info is None:
        return
    row.update(duration_s=float(info.duration_s), fps=float(info.fps), width=int(info.width), height=int(info.height),
               num_frames=int(info.num_frames), codec=info.codec)


def _error_reason(e: BaseException, path: str) -> str:
    if isinstance(e, VideoTimeout):
        return "timeout"
    if isinstance(e, ModelError):
        return "model_error"
    if isinstance(e, TruncatedVideo):
        return "truncated"
    if isinstance(e, VideoError):
        # Messages are "<file>: <problem>"; match the problem only (a file may be called "empty.mp4").
        msg = str(e)
        problem = msg[len(path) + 2 :] if path and msg.startswith(path + ": ") else msg
        if problem.startswith(("file is empty", "empty byte string")):
            return "empty_file"
        if problem.startswith("no such file"):
            return "missing_file"
        if problem.startswith("not a regular file"):
            return "not_regular_file"
        if problem.startswith("cannot read the file"):
            return "unreadable_file"
        if problem.startswith("contains no video stream"):
            return "no_video_stream"
        return "decode_error"
    return "internal_error"


def error_row(row: dict[str, Any], e: BaseException) -> dict[str, Any]:
    row.update(status="error", reason=_error_reason(e, row["path"]), error=str(e)
               if isinstance(e, (VideoError, VideoTimeout, ModelError)) else f"{type(e).__name__}: {e}", finished_at=_now())
    return row


# ---------------------------------------------------------------- the two stages


def decode_stage(
    item: VideoItem, s: FilterSettings, check: Callable[[], None], row: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Clip | None, float | None]:
    """(row, clip, scene-cut score). ``clip`` is None when the row is already final.

    ``row`` (filled in place) lets a caller keep what was learnt (the probed size) when a later step fails.
    """
    row = base_row(item, s) if row is None else row
    # A download cut short is "truncated" however the decoder would fail on it (ISO BMFF structure; None for other formats).
    cut_short = truncation(item.path)
    try:
        info = probe(item.path)
    except VideoError:
        if cut_short:
            raise TruncatedVideo(f"{item.path}: truncated: {cut_short}") from None
        raise
    _fill_info(row, info)  # kept on the row even if decoding fails below
    if cut_short:
        raise TruncatedVideo(f"{item.path}: truncated: {cut_short}")
    try:
        clip = decode_clip(item.path, s.short_side, s.sample_fps, s.max_seconds, s.min_duration_s, s.min_short_side, check, info)
    except RejectedInput as e:
        _fill_info(row, e.info)
        row.update(status="rejected", reason=e.reason, error=None)
        return row, None, None
    _fill_info(row, clip.info)
    if not row["duration_s"]:
        row["duration_s"] = len(clip.frames) / clip.fps
    cuts = cut_scores(clip.frames)
    check()
    return row, clip, float(cuts.max()) if len(cuts) else 0.0


def analyze_stage(
    row: dict[str, Any],
    clip: Clip,
    cut_score: float,
    s: FilterSettings,
    check: Callable[[], None],
    debug_dir: Path | None,
    models: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Segment, track, score and decide. ``models`` = (segmenter, tracker) overrides the per-process cache."""
    from syncam_data.filter.segment import query_points
    from syncam_data.filter.track import Tracks

    try:
        segmenter, tracker = models if models is not None else get_models(s)
    except Exception as e:  # the same for every video: say so instead of blaming the file
        raise ModelError(f"cannot build the {s.segmenter} segmenter / {s.tracker} tracker: {type(e).__name__}: {e}") from e
    frames = clip.frames
    if cut_score > s.scene_cut_threshold:
        # Measure motion on the first shot only: tracks cannot cross a cut.
        frames = frames[: first_shot_length(cut_scores(frames), s.scene_cut_threshold)]
    h, w = frames.shape[1:3]
    masks = segmenter.segment(frames[0])
    check()
    points, labels = query_points(masks, h, w, s.grid_size, s.points_per_mask)
    if len(frames) >= 2:
        tracks = tracker.track(frames, points)
    else:  # a cut right after the first frame: nothing to track
        tracks = Tracks(points[None].astype(np.float32), np.ones((1, len(points)), bool), np.zeros(len(points), np.int32))
    # Points seeded after frame 0 are background/unknown (label 0): subject masks exist for frame 0 only.
    labels = np.concatenate([labels, np.zeros(tracks.xy.shape[1] - len(labels), labels.dtype)])
    check()
    ms = score_tracks(tracks.xy, tracks.visible, labels, clip.fps, w, h, s.ransac_threshold_px, s.min_support_points)
    d = decide(s, row["width"], row["height"], row["duration_s"], cut_score, ms.camera_per_pair, ms.support_per_pair,
               ms.track_speed, ms.track_candidate)
    row.update(
        status=d.status, reason=d.reason, subject_motion=d.subject_motion, camera_motion=d.camera_motion, error=None,
        measured_fraction=d.measured_fraction, sampled_fps=float(clip.fps), analyzed_frames=int(len(frames)),
        analyzed_width=int(w), analyzed_height=int(h), num_masks=len(masks), num_tracks=ms.num_tracks,
        seeded_tracks=tracks.num_seeded, inlier_fraction=float(ms.inlier_fraction), scene_cut_score=cut_score,
        camera_motion_per_pair=[float(v) for v in ms.camera_per_pair],
        camera_support_per_pair=[int(v) for v in ms.support_per_pair], track_speed=[float(v) for v in ms.track_speed],
        track_candidate=[bool(v) for v in ms.track_candidate], finished_at=_now(),
    )
    if debug_dir is not None:
        from syncam_data.filter.debug import debug_png_name, render_debug, write_debug_png

        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        title = (Path(row["path"]).name, f"{d.status} {d.reason} subj={fmt(d.subject_motion)} cam={fmt(d.camera_motion)} "
                 f"measured={d.measured_fraction:.0%}")
        img = render_debug(frames[0], masks, tracks.xy, tracks.visible, ms.track_speed, s.threshold, title)
        write_debug_png(debug_dir / debug_png_name(row["path"], row["content_hash"]), img)
    return row


def filter_video(item: VideoItem, settings: FilterSettings, debug_dir: str | None = None) -> dict[str, Any]:
    """Process one video into one row; never raises for a bad video (returns an error row)."""
    t0 = time.perf_counter()
    row = base_row(item, settings)
    try:
        with time_limit(settings.timeout_s, item.path) as check:
            row, clip, cut = decode_stage(item, settings, check, row)
            if clip is not None:
                row = analyze_stage(row, clip, cut, settings, check, Path(debug_dir) if debug_dir else None)
    except Exception as e:  # per-video failure: recorded as an error row, the run goes on
        log.debug("error on %s", item.path, exc_info=True)
        row = error_row(row, e)
    row["seconds"] = time.perf_counter() - t0
    return row


class _Prefetch:
    """``decode_stage`` of one video in a daemon thread, started now.

    The thread only has the cooperative deadline checks (signals reach the
    main thread only); a decode stuck inside one library call is abandoned
    when ``get`` times out, and being a daemon it cannot keep the process alive.
    """

    def __init__(self, item: VideoItem, s: FilterSettings) -> None:
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
            row = error_row(base_row(self.item, self.settings),
                            VideoTimeout(f"{self.item.path}: exceeded the per-video time limit of {self.settings.timeout_s:g}s"))
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


def _pipelined_rows(todo: list[VideoItem], s: FilterSettings, debug_dir: str | None, progress: bool) -> Iterator[dict[str, Any]]:
    """One worker: decode video i+1 in a thread while video i is analysed here (decode and tracking overlap)."""
    from tqdm import tqdm

    debug = Path(debug_dir) if debug_dir else None
    nxt = _Prefetch(todo[0], s) if todo else None
    with one_opencv_thread(), tqdm(total=len(todo), desc="filter-videos", unit="video", disable=not progress or not todo, dynamic_ncols=True) as bar:
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
                raise NoVideosError(f"{p}: no video files in this folder (searched recursively for "
                                    f"{' '.join(sorted(VIDEO_EXTENSIONS))})")
            for f in found:
                out[str(f.resolve())] = None
        elif p.suffix.lower() in LIST_EXTENSIONS and p.is_file():
            try:
                entries = _read_list(p)
            except (OSError, UnicodeDecodeError) as e:
                raise NoVideosError(f"{p}: cannot read this list of videos ({e})") from None
            if not entries:
                raise NoVideosError(f"{p}: the list names no videos (expected one path per line, "
                                    "or a 'path' column in a .csv)")
            for e in entries:
                out[str(Path(e).resolve())] = None
        elif not p.exists() and not p.is_symlink():
            # Given on the command line, a path that does not exist is a typo, not a bad video: nothing to do.
            raise NoVideosError(f"{p}: no such file or folder (expected a video file, a folder of videos, "
                                f"or a {'/'.join(sorted(LIST_EXTENSIONS))} list of paths)")
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
            return sha256_of(path)
        except OSError as e:
            return e

    out: dict[str, str | OSError] = {}
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        bar = tqdm(total=len(paths), desc="hashing", unit="file", disable=not progress or len(paths) < 100, dynamic_ncols=True)
        for path, digest in zip(paths, pool.map(one, paths)):
            out[path] = digest
            bar.update(1)
        bar.close()
    return out


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def duplicate_row(source: dict[str, Any], item: VideoItem) -> dict[str, Any]:
    """The row of ``item``, a copy of the content that ``source`` scored (nothing is recomputed)."""
    first = source.get("duplicate_of") or source["path"]
    return dict(source, path=item.path, file_size=item.file_size, mtime_ns=item.mtime_ns, seconds=0.0,
                duplicate_of=None if first == item.path else first, finished_at=_now())


def plan_work(
    paths: list[str], done: dict[str, dict[str, Any]], s: FilterSettings, force: bool, retry_errors: bool, progress: bool = False
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
        if prev is not None and not redo and prev.get("file_size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns:
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


def check_model_files(s: FilterSettings) -> None:
    """Fail before any video is touched when SAM/CoTracker weights or code are missing."""
    if s.segmenter == "sam" and s.sam_checkpoint and not Path(s.sam_checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"--sam-checkpoint {s.sam_checkpoint}: no such file")
    if s.tracker == "cotracker":
        from syncam_data.filter.track import resolve_cotracker

        resolve_cotracker(s.cotracker_repo, s.cotracker_checkpoint, s.cotracker_entry)


def _warn_if_settings_changed(done: dict[str, dict[str, Any]], s: FilterSettings) -> None:
    for r in done.values():
        if r.get("settings") and r["status"] != "error":
            try:
                old = FilterSettings.from_json(r["settings"])
            except (ValueError, TypeError):
                return
            if old.compute_key() != s.compute_key():
                log.warning("existing rows in this output were computed with other decoding/tracking settings; "
                            "they are kept as they are (use --force to recompute, --rescore to change thresholds)")
            return


# ---------------------------------------------------------------- run


def _local_rows(todo: list[VideoItem], s: FilterSettings, workers: int, debug_dir: str | None, progress: bool) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        yield from _pipelined_rows(todo, s, debug_dir, progress)
        return
    fn = partial(filter_video, settings=s, debug_dir=debug_dir)
    for res in run_tasks(fn, todo, engine="local", workers=workers, desc="filter-videos", unit="video", progress=progress):
        if res.ok:
            yield res.value
        else:  # the worker process died (e.g. out of memory): still one row for the video
            yield error_row(base_row(res.item, s), RuntimeError(res.error or "worker failed"))


def run_filter(
    inputs: Iterable[str | Path],
    out: str | Path,
    settings: FilterSettings,
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
    log.info("%d inputs: %d to process, %d already done, %d reused by content hash or failed early, %d copies of "
             "content processed in this run", len(paths), len(plan.todo), plan.skipped, len(plan.ready), len(plan.waiting))
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


def _write_histogram(store: ScoresStore, rows: list[dict[str, Any]], s: FilterSettings) -> None:
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
    last: FilterSettings | None = None
    for r in rows.values():
        if r["status"] == "error" or not r.get("settings"):
            continue
        s = FilterSettings.from_json(r["settings"]).with_decisions(**changes)
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
        d = decide(s, r["width"], r["height"], r["duration_s"], r["scene_cut_score"],
                   np.asarray(r["camera_motion_per_pair"], np.float32), None if support is None else np.asarray(support, np.int64),
                   np.asarray(r["track_speed"], np.float32), np.asarray(r["track_candidate"], bool))
        r.update(status=d.status, reason=d.reason, subject_motion=d.subject_motion, camera_motion=d.camera_motion,
                 measured_fraction=d.measured_fraction)
    if stale:
        log.warning("%d video(s) were rejected before tracking and now pass the size/duration checks: "
                    "rerun filter-videos with --force on them to measure their motion", stale)
    table = store.write_all(rows)
    if debug:
        _write_histogram(store, table.to_pylist(), last or FilterSettings().with_decisions(**changes))
    return _summary(table.to_pylist(), len(rows), 0, 0, sum(1 for r in rows.values() if r.get("duplicate_of")))


def summary_text(s: RunSummary) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items()))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items()))
    dup = f", {s.duplicates} duplicate(s) of other inputs" if s.duplicates else ""
    return f"{s.total} inputs ({s.processed} processed now{dup}): {counts}" + (f"; reasons: {reasons}" if reasons else "")

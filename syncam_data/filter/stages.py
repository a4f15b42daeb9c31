"""The work done on one video: ``decode_stage`` (CPU) then ``analyze_stage`` (segment, track, score, decide).

``decode_stage`` probes the file, checks the container is complete, applies
the cheap checks, decodes a downsampled clip and scores scene cuts;
``analyze_stage`` segments the first frame, tracks points, scores camera vs
subject motion and decides (the GPU part with SAM/CoTracker). Any failure of
one video becomes an error row (``error_row``), never an exception of the run.

The drivers build on these pieces: ``filter/run.py`` (planning, the local
pipelined worker, rescoring) and ``filter/ray_engine.py`` (Ray Data). Neither
is imported here, so the drivers depend on the stages and not the other way round.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from syncam_data.filter.cuts import cut_scores, first_shot_length
from syncam_data.filter.decode import Clip, RejectedInput, TruncatedVideo, decode_clip
from syncam_data.filter.isobmff import truncation
from syncam_data.filter.score import decide, score_tracks
from syncam_data.filter.settings import FilterConfig
from syncam_data.fsio import utc_now
from syncam_data.video import VideoError, VideoInfo, probe

if TYPE_CHECKING:  # imported lazily at run time (SAM, CoTracker and torch load only when used)
    from syncam_data.filter.segment import Segmenter
    from syncam_data.filter.track import Tracker

log = logging.getLogger(__name__)


class VideoTimeout(Exception):
    """The per-video time limit ran out (not an OSError, so no I/O handler swallows it)."""


class ModelError(RuntimeError):
    """SAM or CoTracker could not be built (a setup problem, not a bad video)."""


@dataclass(frozen=True)
class VideoItem:
    path: str
    content_hash: str
    file_size: int
    mtime_ns: int


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

_MODELS: dict[tuple, tuple[Segmenter, Tracker]] = {}


def get_models(s: FilterConfig) -> tuple[Segmenter, Tracker]:
    """Segmenter and tracker for ``s``, built once per process (weights load once per worker)."""
    from syncam_data.filter.segment import GridSegmenter, SamSegmenter
    from syncam_data.filter.track import CoTrackerTracker, LKTracker, load_cotracker

    key = (
        s.segmenter,
        s.sam_model,
        s.sam_checkpoint,
        s.sam_points_per_side,
        s.tracker,
        s.cotracker_repo,
        s.cotracker_checkpoint,
        s.cotracker_entry,
        s.cotracker_query_every,
        s.grid_size,
        s.device,
        s.lk_window,
        s.lk_levels,
        s.fb_threshold_px,
        s.reseed_fraction,
    )
    if key not in _MODELS:
        if s.segmenter == "sam":
            seg: Segmenter = SamSegmenter(s.sam_model, s.sam_checkpoint, s.device, s.sam_points_per_side)
        else:
            seg = GridSegmenter()
        if s.tracker == "cotracker":
            model = load_cotracker(s.cotracker_repo, s.cotracker_checkpoint, s.cotracker_entry, s.device)
            trk: Tracker = CoTrackerTracker(model, s.device, s.cotracker_query_every, s.grid_size)
        else:
            trk = LKTracker(s.lk_window, s.lk_levels, s.fb_threshold_px, s.reseed_fraction)
        _MODELS[key] = (seg, trk)
    return _MODELS[key]


# ---------------------------------------------------------------- rows


def base_row(item: VideoItem, s: FilterConfig) -> dict[str, Any]:
    return {
        "path": item.path,
        "content_hash": item.content_hash,
        "status": "error",
        "reason": "",
        "subject_motion": None,
        "camera_motion": None,
        "duration_s": 0.0,
        "fps": 0.0,
        "width": 0,
        "height": 0,
        "num_frames": 0,
        "codec": "",
        "error": None,
        "settings": s.to_json(),
        "file_size": item.file_size,
        "mtime_ns": item.mtime_ns,
        "camera_motion_per_pair": None,
        "camera_support_per_pair": None,
        "measured_fraction": None,
        "track_speed": None,
        "track_candidate": None,
        "duplicate_of": None,
        "finished_at": utc_now("microseconds"),
    }


def _fill_info(row: dict[str, Any], info: VideoInfo | None) -> None:
    if info is None:
        return
    row.update(
        duration_s=float(info.duration_s),
        fps=float(info.fps),
        width=int(info.width),
        height=int(info.height),
        num_frames=int(info.num_frames),
        codec=info.codec,
    )


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
    row.update(
        status="error",
        reason=_error_reason(e, row["path"]),
        error=str(e) if isinstance(e, (VideoError, VideoTimeout, ModelError)) else f"{type(e).__name__}: {e}",
        finished_at=utc_now("microseconds"),
    )
    return row


# ---------------------------------------------------------------- the two stages


def decode_stage(
    item: VideoItem, s: FilterConfig, check: Callable[[], None], row: dict[str, Any] | None = None
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
        clip = decode_clip(
            item.path, s.short_side, s.sample_fps, s.max_seconds, s.min_duration_s, s.min_short_side, check, info
        )
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
    s: FilterConfig,
    check: Callable[[], None],
    debug_dir: Path | None,
    models: tuple[Segmenter, Tracker] | None = None,
) -> dict[str, Any]:
    """Segment, track, score and decide. ``models`` = (segmenter, tracker) overrides the per-process cache."""
    from syncam_data.filter.segment import query_points
    from syncam_data.filter.track import Tracks

    try:
        segmenter, tracker = models if models is not None else get_models(s)
    except Exception as e:  # the same for every video: say so instead of blaming the file
        raise ModelError(
            f"cannot build the {s.segmenter} segmenter / {s.tracker} tracker: {type(e).__name__}: {e}"
        ) from e
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
        tracks = Tracks(
            points[None].astype(np.float32), np.ones((1, len(points)), bool), np.zeros(len(points), np.int32)
        )
    # Points seeded after frame 0 are background/unknown (label 0): subject masks exist for frame 0 only.
    labels = np.concatenate([labels, np.zeros(tracks.xy.shape[1] - len(labels), labels.dtype)])
    check()
    ms = score_tracks(tracks.xy, tracks.visible, labels, clip.fps, w, h, s.ransac_threshold_px, s.min_support_points)
    d = decide(
        s,
        row["width"],
        row["height"],
        row["duration_s"],
        cut_score,
        ms.camera_per_pair,
        ms.support_per_pair,
        ms.track_speed,
        ms.track_candidate,
    )
    row.update(
        status=d.status,
        reason=d.reason,
        subject_motion=d.subject_motion,
        camera_motion=d.camera_motion,
        error=None,
        measured_fraction=d.measured_fraction,
        sampled_fps=float(clip.fps),
        analyzed_frames=int(len(frames)),
        analyzed_width=int(w),
        analyzed_height=int(h),
        num_masks=len(masks),
        num_tracks=ms.num_tracks,
        seeded_tracks=tracks.num_seeded,
        inlier_fraction=float(ms.inlier_fraction),
        scene_cut_score=cut_score,
        camera_motion_per_pair=[float(v) for v in ms.camera_per_pair],
        camera_support_per_pair=[int(v) for v in ms.support_per_pair],
        track_speed=[float(v) for v in ms.track_speed],
        track_candidate=[bool(v) for v in ms.track_candidate],
        finished_at=utc_now("microseconds"),
    )
    if debug_dir is not None:
        from syncam_data.filter.debug import (
            debug_png_name,
            render_debug,
            write_debug_png,
        )

        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        title = (
            Path(row["path"]).name,
            f"{d.status} {d.reason} subj={fmt(d.subject_motion)} cam={fmt(d.camera_motion)} "
            f"measured={d.measured_fraction:.0%}",
        )
        img = render_debug(frames[0], masks, tracks.xy, tracks.visible, ms.track_speed, s.threshold, title)
        write_debug_png(debug_dir / debug_png_name(row["path"], row["content_hash"]), img)
    return row


def filter_video(item: VideoItem, settings: FilterConfig, debug_dir: str | None = None) -> dict[str, Any]:
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

"""RealEstate10K reader: per-sequence camera files, frames from images or from the video.

On-disk format (docs/sample-frames.md): one ``<sequence>.txt`` per sequence, anywhere
under the root (``train/``, ``test/`` split folders included). Line 1 is the
YouTube URL; every further line is one frame: timestamp (µs), fx fy cx cy
normalized by the image width/height, two zeros, then a row-major 3×4
world-to-camera in OpenCV axes.

Frames are found by timestamp, in one of two common layouts:

- images ``<sequence>/<timestamp>.png|jpg`` beside the ``.txt`` or under
  ``--frames-dir`` (``<frames-dir>/<split>/<sequence>/`` or
  ``<frames-dir>/<sequence>/``);
- the video ``<sequence>.mp4`` beside the ``.txt`` or under ``--videos-dir``
  (also ``<youtube id>.mp4``), decoded by seeking to the frame nearest the
  timestamp. Timestamps are times in the YouTube video; a video cut to the
  sequence starts at the first timestamp instead (``--video-time``).

Frame index: the position of the pose line in the ``.txt`` (0-based, the
first pose line is index 0). Each frame also has a *video frame number*,
round(timestamp · fps): the original files list every frame of the clip (one
frame period apart), subsampled copies (e.g. CameraCtrl's, every 8th–9th
frame) a subset. The fps is the video's own when frames are decoded from it;
for image frames it is ``--fps`` when given, else inferred from the timestamps
(``infer_fps``): regular steps give it directly (the median step is one frame
period at a standard rate), steps of whole numbers of frames (a subsampled
copy) put the timestamps on one standard rate's frame grid; 29.97 (with a
warning in the report) when neither holds.

Frame size: the normalized intrinsics describe a frame of aspect
``fy_n / fx_n`` (square pixels). Frames stored at another aspect are refused
unless ``frame_resize`` says how they were made (``sources/framing.py``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.cameras import Camera, CameraError, parse_realestate10k_line
from syncam_data.ids import UnsafeIdError, check_id, sanitize_id
from syncam_data.sources.frameset import SourceError, SourceFrame
from syncam_data.sources.framing import FRAME_RESIZE, frame_camera, read_image
from syncam_data.video import VideoError, decode, probe

log = logging.getLogger(__name__)

SOURCE = "realestate10k"
DEFAULT_FPS = 30000 / 1001
# Frame rates of the videos the timestamps may come from (NTSC 23.976/29.97/59.94, film, PAL, ...).
STANDARD_FPS = (24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 48.0, 50.0, 60000 / 1001, 60.0)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov")
FRAMES_FROM = ("auto", "images", "video")
VIDEO_TIME = ("auto", "absolute", "relative")
GAP_UNITS = ("video-frames", "index")
LAYOUT = "<sequence>.txt camera files anywhere under it (line 1 the YouTube URL, then 19 numbers per frame)"


@dataclass(frozen=True)
class Re10kConfig:
    """Where frames live and how timestamps map to them."""

    frames_dir: str | None = None
    videos_dir: str | None = None
    frames_from: str = "auto"  # auto: an image folder when one exists, else the video
    video_time: str = "auto"  # absolute: YouTube time; relative: video starts at the first timestamp
    fps: float | None = None  # for video frame numbers when frames come as images; None: from the timestamps
    gap_unit: str = "video-frames"
    frame_resize: str = "none"  # how stored frames of another aspect were made (sources/framing.py)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("frames_from", FRAMES_FROM),
            ("video_time", VIDEO_TIME),
            ("gap_unit", GAP_UNITS),
            ("frame_resize", FRAME_RESIZE),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name.replace('_', '-')} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


@dataclass(frozen=True)
class SequenceRef:
    """A camera file found under the root: cheap to create, to pickle and to keep in a queue."""

    sequence_id: str
    path: str  # the .txt
    rel_dir: str  # its folder relative to the root ("" or e.g. "train")

    @property
    def uri(self) -> str:
        return self.path


# --- discovery ---------------------------------------------------------------------


def iter_sequence_refs(root: str | Path, exclude: Iterable[Path] = ()) -> Iterator[SequenceRef]:
    """Yield every ``*.txt`` under ``root`` in sorted order, one directory listing at a time.

    Frame folders (a sub-folder named like a camera file beside it) are not
    descended into: they hold images, and listing them would dominate the scan.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: RealEstate10K root is not a directory")
    yield from _walk(root, root, frozenset(Path(p).resolve() for p in exclude))


def _walk(folder: Path, root: Path, exclude: frozenset[Path]) -> Iterator[SequenceRef]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        log.warning("cannot list %s: %s", folder, e)
        return
    stems = {e.name[:-4] for e in entries if e.name.endswith(".txt") and e.is_file()}
    rel = os.path.relpath(folder, root)
    rel = "" if rel == "." else rel
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_file() and e.name.endswith(".txt"):
            yield SequenceRef(_sequence_id(e.name[:-4]), e.path, rel)
        elif e.is_dir() and e.name not in stems:
            sub = Path(e.path)
            if exclude and sub.resolve() in exclude:
                continue
            yield from _walk(sub, root, exclude)


def _sequence_id(stem: str) -> str:
    try:
        return check_id(stem, "sequence id")
    except UnsafeIdError:
        return sanitize_id(stem)


# --- the camera file ----------------------------------------------------------------


@dataclass
class CameraFile:
    """A parsed ``.txt``: per pose line its timestamp, normalized intrinsics and canonical pose."""

    path: Path
    url: str
    timestamps_us: np.ndarray  # (N,) int64
    intrinsics_norm: np.ndarray  # (N, 4) fx/W fy/H cx/W cy/H
    c2w: np.ndarray  # (N, 3, 4) canonical OpenCV camera-to-world
    w2c: np.ndarray  # (N, 3, 4) as in the file
    line_numbers: np.ndarray  # (N,) 1-based line in the file

    def __len__(self) -> int:
        return len(self.timestamps_us)

    def camera(self, i: int, width: int, height: int) -> Camera:
        """The camera of line ``i`` for the whole source frame stored at width x height (aspect kept or squashed)."""
        fx, fy, cx, cy = self.intrinsics_norm[i]
        return Camera(width, height, fx * width, fy * height, cx * width, cy * height, self.c2w[i])

    def source_frame(self, i: int) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
        """(intrinsics, size) of line ``i``'s source frame at height 1: square pixels give width fy_n / fx_n."""
        fx, fy, cx, cy = (float(v) for v in self.intrinsics_norm[i])
        aspect = fy / fx
        return (fx * aspect, fy, cx * aspect, cy), (aspect, 1.0)

    def stored_camera(self, i: int, width: int, height: int, mode: str, where: str, orientation: int = 1) -> Camera:
        """The camera of line ``i`` for a stored width x height frame made by ``mode`` (``framing.frame_camera``)."""
        intr, size = self.source_frame(i)
        desc = f"fy/fx of the normalized intrinsics on line {int(self.line_numbers[i])} of {self.path}, square pixels"
        return frame_camera(intr, size, (width, height), self.c2w[i], mode, where, desc, orientation)

    def raw(self, i: int) -> dict[str, Any]:
        return {
            "convention": "realestate10k_w2c",
            "w2c": [float(v) for v in self.w2c[i].reshape(-1)],
            "intrinsics_normalized": [float(v) for v in self.intrinsics_norm[i]],
            "line": int(self.line_numbers[i]),
        }


def read_camera_file(path: str | Path) -> CameraFile:
    """Parse a RealEstate10K camera file; SourceError names the file and line of any bad pose."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (files saved by Windows editors) is not part of the URL
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read camera file ({e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip().lower().startswith(("http://", "https://")):
        raise SourceError(f"{path}: line 1: not a RealEstate10K camera file (first line must be the video URL)")
    ts, intr, c2w, w2c, nums = [], [], [], [], []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t, cam = parse_realestate10k_line(line, 1, 1)
        except CameraError as e:
            raise SourceError(f"{path}: line {n}: bad pose line: {e}") from None
        parts = line.split()
        if ts and t <= ts[-1]:
            raise SourceError(f"{path}: line {n}: timestamp {t} does not increase (previous {ts[-1]})")
        ts.append(t)
        intr.append([cam.fx, cam.fy, cam.cx, cam.cy])
        c2w.append(cam.c2w)
        w2c.append(np.array([float(v) for v in parts[7:19]]).reshape(3, 4))
        nums.append(n)
    if not ts:
        raise SourceError(f"{path}: no pose lines")
    return CameraFile(
        path, lines[0].strip(), np.array(ts, np.int64), np.array(intr), np.stack(c2w), np.stack(w2c), np.array(nums)
    )


def youtube_id(url: str) -> str | None:
    m = re.search(r"(?:v=|youtu\.be/|/embed/|/shorts/)([A-Za-z0-9_-]{6,})", url)
    return m.group(1) if m else None


# --- frames ----------------------------------------------------------------------------


def _image_dirs(ref: SequenceRef, opts: Re10kConfig) -> list[Path]:
    txt = Path(ref.path)
    dirs = [txt.parent / txt.stem]
    if opts.frames_dir:
        fd = Path(opts.frames_dir)
        if ref.rel_dir:
            dirs.append(fd / ref.rel_dir / txt.stem)
        dirs.append(fd / txt.stem)
    return dirs


def _video_candidates(ref: SequenceRef, url: str, opts: Re10kConfig) -> list[Path]:
    txt = Path(ref.path)
    names = [txt.stem]
    yid = youtube_id(url)
    if yid and yid != txt.stem:
        names.append(yid)
    folders = [txt.parent]
    if opts.videos_dir:
        vd = Path(opts.videos_dir)
        if ref.rel_dir:
            folders.append(vd / ref.rel_dir)
        folders.append(vd)
    return [f / (n + ext) for f in folders for n in names for ext in VIDEO_EXTS]


def infer_fps(ts_us: np.ndarray) -> tuple[float | None, str]:
    """(frame rate of the video the timestamps come from, how it was found), or (None, why not).

    The original files list every frame of a clip: their steps are one frame
    period (a dropped frame now and then, timestamps off by up to a
    millisecond), so the median step snaps to a standard rate. Subsampled
    copies (CameraCtrl's keep every 8th-9th frame) sit on the frame grid of
    one: the lowest standard rate on whose grid the times after the first
    lie (within 0.05 frame) is it (29.97 and 30 stay apart over a few dozen
    frames; of two rates 1 % apart the better fit wins).
    """
    t = np.asarray(ts_us, dtype=np.float64)
    d = np.diff(t)
    if len(d) < 2 or np.any(d <= 0):
        return None, "too few or unordered timestamps"
    med = float(np.median(d))
    regular = bool(np.mean(np.abs(d - med) <= max(2.0, 0.01 * med)) >= 0.8)
    raw = 1e6 / med
    if regular:
        snap = min(STANDARD_FPS, key=lambda f: abs(f - raw) / f)
        if abs(snap - raw) / snap <= 0.002:
            return snap, f"timestamps: median step {med:.0f} us"
    rel = t - t[0]
    fits = []
    for f in STANDARD_FPS:
        k = rel * f / 1e6
        r = np.abs(k - np.rint(k))
        if np.mean(r <= 0.05) >= 0.9 and np.all(np.diff(np.rint(k)) >= 1):
            fits.append((f, float(np.mean(r))))
    if fits:
        lowest = min(f for f, _ in fits)
        f = min((x for x in fits if x[0] <= lowest * 1.011), key=lambda x: x[1])[0]
        return f, f"timestamps: frame grid of {f:.3f} fps (steps of whole frames, a subsampled file)"
    if regular:
        return raw, f"timestamps: median step {med:.0f} us (not a standard rate)"
    return None, "irregular timestamps (neither one frame period apart nor on a standard rate's frame grid)"


def timestamps_to_video_frames(
    ts_us: np.ndarray, fps: float, num_frames: int, mode: str, name: str
) -> tuple[np.ndarray, str]:
    """Nearest video frame for each timestamp; ``auto`` picks absolute time when it fits the video."""
    tried = ("absolute", "relative") if mode == "auto" else (mode,)
    for m in tried:
        exact = (ts_us - (ts_us[0] if m == "relative" else 0)) * fps / 1e6
        idx = np.rint(exact).astype(np.int64)
        # A time in the second half of the last frame's display interval rounds one past the end.
        idx[(idx == num_frames) & (exact < num_frames)] = num_frames - 1
        if idx.min() >= 0 and idx.max() < num_frames:
            return idx, m
    last = ts_us[-1] / 1e6
    raise SourceError(
        f"{name}: timestamps (up to {last:.2f} s, {(ts_us[-1] - ts_us[0]) / 1e6:.2f} s after the first) "
        f"do not fit the video ({num_frames} frames at {fps:.3f} fps, --video-time {mode})"
    )


@dataclass
class Re10kSequence:
    """One opened sequence: poses, how frames are fetched, and the positions --max-gap is measured in."""

    ref: SequenceRef
    cameras: CameraFile
    frames_kind: str  # images | video
    frames_path: Path  # the image folder or the video file
    video_frames: np.ndarray | None  # (N,) video frame number per pose line (None: images closer than a frame at --fps)
    gap_positions: np.ndarray
    video_fps: float | None = None
    video_time: str | None = None  # absolute | relative: how timestamps were matched to the video
    warnings: list[str] = field(default_factory=list)
    fps: float | None = None  # image frames: the rate video_frames were computed with
    fps_from: str | None = None  # and where it came from (--fps, the timestamps, the default)
    frame_resize: str = "none"
    image_ext: str = ".png"  # image frames: the extension the folder's frames use

    source = SOURCE

    @property
    def sequence_id(self) -> str:
        return self.ref.sequence_id

    @property
    def source_uri(self) -> str:
        return self.ref.path

    @property
    def c2w(self) -> np.ndarray:
        return self.cameras.c2w

    @property
    def frame_indices(self) -> np.ndarray:
        return np.arange(len(self.cameras))

    def header(self) -> dict[str, Any]:
        h: dict[str, Any] = {
            "url": self.cameras.url,
            "frames_from": self.frames_kind,
            "frames_uri": str(self.frames_path),
        }
        if self.video_fps:
            h["video_fps"] = self.video_fps
            h["video_time"] = self.video_time
        if self.fps:
            h["fps"] = self.fps
            h["fps_from"] = self.fps_from
        if self.frame_resize != "none":
            h["frame_resize"] = self.frame_resize
        return h

    def describe_entry(self, i: int) -> str:
        return f"line {int(self.cameras.line_numbers[i])} of {self.cameras.path}"

    def load_frames(self, entries: list[int]) -> dict[int, SourceFrame]:
        if self.frames_kind == "images":
            return {i: self._frame_from_image(i) for i in entries}
        return self._frames_from_video(entries)

    def _extra(self, i: int, uri: str) -> dict[str, Any]:
        ex: dict[str, Any] = {"timestamp_us": int(self.cameras.timestamps_us[i])}
        if self.video_frames is not None:
            ex["video_frame"] = int(self.video_frames[i])
        ex["source_uri"] = uri
        return ex

    def _frame_from_image(self, i: int) -> SourceFrame:
        ts = int(self.cameras.timestamps_us[i])
        path = next(
            (self.frames_path / f"{ts}{ext}" for ext in IMAGE_EXTS if (self.frames_path / f"{ts}{ext}").is_file()), None
        )
        if path is None:
            raise SourceError(
                f"{self.frames_path}/{ts}{self.image_ext}: image file is missing (frame {i}, {self.describe_entry(i)})"
            )
        img, orientation = read_image(path)
        h, w = img.shape[:2]
        cam = self.cameras.stored_camera(i, w, h, self.frame_resize, str(path), orientation)
        return SourceFrame(i, img, cam, self.cameras.raw(i), self._extra(i, str(path)))

    def _frames_from_video(self, entries: list[int]) -> dict[int, SourceFrame]:
        if self.video_frames is None:
            raise SourceError(f"{self.frames_path}: no video frame numbers for {self.cameras.path}")
        wanted = [int(self.video_frames[i]) for i in entries]
        imgs = decode(self.frames_path, wanted)
        h, w = imgs.shape[1:3]
        out = {}
        for i, k, img in zip(entries, wanted, imgs):
            uri = f"{self.frames_path}#frame={k}"
            out[i] = SourceFrame(
                i,
                img,
                self.cameras.stored_camera(i, w, h, self.frame_resize, uri),
                self.cameras.raw(i),
                self._extra(i, uri),
            )
        return out


def open_sequence(ref: SequenceRef, opts: Re10kConfig) -> Re10kSequence:
    """Parse the camera file and locate its frames; SourceError / VideoError name what is wrong."""
    cf = read_camera_file(ref.path)
    kind, path = _locate_frames(ref, cf.url, opts)
    video_frames, fps, time_mode = None, None, None
    warnings: list[str] = []
    if kind == "video":
        info = probe(path)
        fps = info.fps
        if not fps > 0:
            raise SourceError(f"{path}: video has no frame rate")
        video_frames, used = timestamps_to_video_frames(
            cf.timestamps_us, fps, info.num_frames, opts.video_time, str(path)
        )
        time_mode = used
        if np.any(np.diff(video_frames) <= 0):
            dup = int(np.argmax(np.diff(video_frames) <= 0)) + 1
            raise SourceError(
                f"{ref.path}: line {int(cf.line_numbers[dup])}: timestamp maps to the same video frame as the previous line in {path}"
            )
    image_fps, fps_from, image_ext = None, None, ".png"
    if kind == "images":
        fps = None
        if opts.fps is not None:
            image_fps, fps_from = opts.fps, "--fps"
        else:
            image_fps, fps_from = infer_fps(cf.timestamps_us)
            if image_fps is None:
                warnings.append(f"{fps_from}: video frame numbers assume {DEFAULT_FPS:.3f} fps (set --fps)")
                image_fps, fps_from = DEFAULT_FPS, f"default ({fps_from})"
        video_frames = np.rint(cf.timestamps_us * image_fps / 1e6).astype(np.int64)
        if np.any(np.diff(video_frames) <= 0):
            video_frames = None  # timestamps closer than one frame at that rate: no usable video frame numbers
            if opts.gap_unit == "video-frames":
                raise SourceError(
                    f"{ref.path}: timestamps are closer than one frame at {image_fps:g} fps ({fps_from}); use --gap-unit index or --fps"
                )
        image_ext = _check_images(cf, path)
    gap = video_frames if opts.gap_unit == "video-frames" else np.arange(len(cf))
    assert gap is not None
    return Re10kSequence(
        ref,
        cf,
        kind,
        path,
        video_frames,
        np.asarray(gap, np.int64),
        fps,
        time_mode,
        warnings,
        image_fps,
        fps_from,
        opts.frame_resize,
        image_ext,
    )


def _check_images(cf: CameraFile, folder: Path) -> str:
    """Every pose line needs its image (one directory listing, not a stat per frame); returns the extension in use."""
    try:
        with os.scandir(folder) as it:
            names = {e.name for e in it}
    except OSError as e:
        raise SourceError(f"{folder}: cannot list frame folder ({e})") from None
    # The missing-image message names the file as this folder would hold it (e.g. .jpg frames).
    counts = {ext: sum(1 for n in names if n.lower().endswith(ext)) for ext in IMAGE_EXTS}
    ext = max(IMAGE_EXTS, key=lambda e: counts[e]) if any(counts.values()) else IMAGE_EXTS[0]
    for i, ts in enumerate(cf.timestamps_us):
        if not any(f"{int(ts)}{e}" in names for e in IMAGE_EXTS):
            raise SourceError(
                f"{folder}/{int(ts)}{ext}: image file is missing (frame {i}, line {int(cf.line_numbers[i])} of {cf.path})"
            )
    return ext


def _locate_frames(ref: SequenceRef, url: str, opts: Re10kConfig) -> tuple[str, Path]:
    if opts.frames_from in ("auto", "images"):
        for d in _image_dirs(ref, opts):
            if d.is_dir():
                return "images", d
    if opts.frames_from in ("auto", "video"):
        for v in _video_candidates(ref, url, opts):
            if v.is_file():
                return "video", v
    looked = [str(d) for d in _image_dirs(ref, opts)] if opts.frames_from != "video" else []
    if opts.frames_from != "images":
        looked.append(f"{Path(ref.path).with_suffix('.mp4')}" + (f" and {opts.videos_dir}/" if opts.videos_dir else ""))
    raise SourceError(f"{ref.path}: no frames found (looked for {', '.join(looked)})")


__all__ = [
    "SOURCE",
    "Re10kConfig",
    "SequenceRef",
    "CameraFile",
    "Re10kSequence",
    "iter_sequence_refs",
    "read_camera_file",
    "open_sequence",
    "timestamps_to_video_frames",
    "infer_fps",
    "youtube_id",
    "VideoError",
]

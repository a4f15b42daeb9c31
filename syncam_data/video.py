"""Video I/O with PyAV: H.264 encoding, fast decoding of chosen frames, probing, limits.

Every function that reads untrusted media checks ``VideoLimits`` so a crafted
file cannot exhaust memory, and raises ``VideoError`` naming the file.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from syncam_data import fsio

log = logging.getLogger(__name__)

Source = str | os.PathLike | bytes | BinaryIO


class VideoError(RuntimeError):
    """A video that cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class VideoLimits:
    """Upper bounds for untrusted media (configurable per call)."""

    max_pixels: int = 4096 * 4096
    max_frames: int = 100_000
    max_duration_s: float = 4 * 3600.0
    max_decoded_bytes: int = 8 << 30

    def check(self, info: VideoInfo, name: str) -> None:
        if info.width * info.height > self.max_pixels:
            raise VideoError(f"{name}: {info.width}x{info.height} exceeds the pixel limit {self.max_pixels}")
        if info.num_frames > self.max_frames:
            raise VideoError(f"{name}: {info.num_frames} frames exceed the limit {self.max_frames}")
        if info.duration_s > self.max_duration_s:
            raise VideoError(f"{name}: duration {info.duration_s:.0f}s exceeds the limit {self.max_duration_s:.0f}s")


DEFAULT_LIMITS = VideoLimits()


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration_s: float
    pix_fmt: str | None = None


def _name(src: Source) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return "<in-memory video>"


# FFmpeg's stream probing (avformat_find_stream_info) decodes the first frames of an H.264 stream
# (up to 7 or more) to learn its pixel format and reorder delay: ~15 ms for a 672x384 clip, 5x the
# cost of reading its header. With the probing decoder told to skip every frame, the header gives
# size, frame count, rate and duration all the same; only the pixel format stays unknown until a
# frame is decoded. Options given here apply to that probing decoder only (PyAV builds the
# decoding context afresh from the stream parameters), and threads=1 is what FFmpeg uses there
# by default.
_PROBE_NO_DECODE = {"skip_frame": "all", "threads": "1"}


def _open(src: Source, decode_probe: bool = True):
    """Open a container; ``decode_probe=False`` skips the frames stream probing would decode (pix_fmt is then None)."""
    name = _name(src)
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise VideoError(f"{name}: no such file")
        if p.stat().st_size == 0:
            raise VideoError(f"{name}: file is empty")
        target: object = os.fspath(p)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise VideoError(f"{name}: empty byte string")
        target = io.BytesIO(bytes(src))
    else:
        target = src
    try:
        if decode_probe:
            container = av.open(target, mode="r")
        else:
            try:
                container = av.open(target, mode="r", stream_options=[_PROBE_NO_DECODE])
            except ValueError:  # a format whose streams appear only while probing (MPEG-TS): probe as usual
                if hasattr(target, "seek"):
                    target.seek(0)
                container = av.open(target, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{name}: not a readable video ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: contains no video stream")
    return container


def _info_from(container, name: str) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    n = int(stream.frames or 0)
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1e6
    if n <= 0 and fps > 0 and duration > 0:
        n = int(round(duration * fps))
    if duration <= 0 and fps > 0:
        duration = n / fps
    ctx = stream.codec_context
    return VideoInfo(
        num_frames=n,
        fps=fps,
        width=int(ctx.width),
        height=int(ctx.height),
        codec=str(ctx.name),
        duration_s=duration,
        pix_fmt=getattr(ctx, "pix_fmt", None),
    )


def probe(
    src: Source, limits: VideoLimits | None = DEFAULT_LIMITS, count_frames: bool = False, pixel_format: bool = True
) -> VideoInfo:
    """Frames, fps, size and codec. ``count_frames`` demuxes packets to count exactly.

    ``pixel_format=False`` leaves ``pix_fmt`` None and opens the file 5x faster (no frame is decoded).
    """
    name = _name(src)
    container = _open(src, decode_probe=pixel_format)
    try:
        info = _info_from(container, name)
        if count_frames or info.num_frames <= 0:
            stream = container.streams.video[0]
            n = sum(1 for pkt in container.demux(stream) if pkt.size)
            info = VideoInfo(
                n,
                info.fps,
                info.width,
                info.height,
                info.codec,
                info.duration_s or (n / info.fps if info.fps else 0.0),
                info.pix_fmt,
            )
        if info.width <= 0 or info.height <= 0:
            raise VideoError(f"{name}: video stream has no size")
        if limits is not None:
            limits.check(info, name)
        return info
    except av.error.FFmpegError as e:
        raise VideoError(f"{name}: corrupt video ({e})") from None
    finally:
        container.close()


def _checked_stream(container, name: str, limits: VideoLimits | None):
    """(info, first video stream set up for threaded decoding), after the limits check."""
    info = _info_from(container, name)
    if limits is not None:
        limits.check(info, name)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return info, stream


class _Budget:
    """Bytes of decoded frames kept so far, checked against ``max_decoded_bytes`` as frames arrive.

    Headers can lie or say nothing (a Matroska file written to a pipe has no
    duration and no frame count), so the limit is enforced on what is
    actually decoded, inside the decode loop, not on what the header promises.
    """

    def __init__(self, limits: VideoLimits | None, name: str) -> None:
        self.limit = limits.max_decoded_bytes if limits is not None else None
        self.name = name
        self.used = 0

    def take(self, nbytes: int, frames: int) -> None:
        self.used += nbytes
        if self.limit is not None and self.used > self.limit:
            raise VideoError(
                f"{self.name}: decoding stopped after {frames} frame(s): they take {self.used / 2**20:.1f} MiB, "
                f"over the memory limit of {self.limit / 2**20:.1f} MiB (VideoLimits.max_decoded_bytes)"
            )


def decode(
    src: Source,
    indices: Sequence[int] | None = None,
    limits: VideoLimits | None = DEFAULT_LIMITS,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode RGB frames as uint8 (N, H, W, 3).

    ``indices=None`` decodes every frame. Otherwise only the requested frame
    numbers, in the requested order (duplicates allowed): the decoder seeks
    backward to the keyframe before the first wanted frame and decodes forward,
    seeking again only across large gaps. ``size=(W, H)`` rescales while
    converting (cheaper than resizing afterwards). The frames kept may not
    exceed ``limits.max_decoded_bytes`` (checked before decoding from the
    header, and again on every frame kept).
    """
    name = _name(src)
    container = _open(src)
    try:
        info, stream = _checked_stream(container, name, limits)
        out_w, out_h = size if size else (info.width, info.height)
        frame_bytes = out_w * out_h * 3
        frames_needed = info.num_frames if indices is None else len(indices)
        if limits is not None and frames_needed * frame_bytes > limits.max_decoded_bytes:
            raise VideoError(f"{name}: decoding {frames_needed} frames at {out_w}x{out_h} exceeds the memory limit")
        budget = _Budget(limits, name)

        # One scaler context for every frame: frame.to_ndarray(format=...) builds one per frame (see decode_into).
        scaler = VideoReformatter()

        def rgb(frame) -> np.ndarray:
            return scaler.reformat(frame, width=out_w, height=out_h, format="rgb24").to_ndarray()

        if indices is None:
            frames = []
            for frame in container.decode(stream):
                budget.take(frame_bytes, len(frames) + 1)
                frames.append(rgb(frame))
                if limits is not None and len(frames) > limits.max_frames:
                    raise VideoError(f"{name}: more than {limits.max_frames} frames")
            if not frames:
                raise VideoError(f"{name}: no decodable frames")
            return np.stack(frames)

        wanted = sorted(set(int(i) for i in indices))
        if wanted and wanted[0] < 0:
            raise VideoError(f"{name}: negative frame index {wanted[0]}")
        # Duplicated indices are copies of kept frames: the output's size counts against the limit too.
        budget.take(frame_bytes * (len(indices) - len(wanted)), 0)
        got: dict[int, np.ndarray] = {}
        max_frames = limits.max_frames if limits is not None else None
        for idx, frame in _wanted_frames(container, stream, info, wanted, max_frames, name):
            budget.take(frame_bytes, len(got) + 1)
            got[idx] = rgb(frame)
        missing = [i for i in wanted if i not in got]
        if missing:
            raise VideoError(f"{name}: frame(s) {missing[:5]} not in video ({info.num_frames} frames)")
        return np.stack([got[int(i)] for i in indices])
    except av.error.FFmpegError as e:
        raise VideoError(f"{name}: corrupt video ({e})") from None
    finally:
        container.close()


def count_decoded(src: Source, limits: VideoLimits | None = DEFAULT_LIMITS) -> tuple[int, int, int]:
    """(frames, width, height) found by decoding every frame and keeping none (checks a clip in constant memory)."""
    name = _name(src)
    container = _open(src)
    try:
        info, stream = _checked_stream(container, name, limits)
        n = 0
        for frame in container.decode(stream):
            n += 1
            if (frame.width, frame.height) != (info.width, info.height):
                raise VideoError(
                    f"{name}: frame {n - 1} is {frame.width}x{frame.height}, the stream says {info.width}x{info.height}"
                )
            if limits is not None and n > limits.max_frames:
                raise VideoError(f"{name}: more than {limits.max_frames} frames")
        if not n:
            raise VideoError(f"{name}: no decodable frames")
        return n, info.width, info.height
    except av.error.FFmpegError as e:
        raise VideoError(f"{name}: corrupt video ({e})") from None
    finally:
        container.close()


def decode_into(
    src: Source,
    indices: Sequence[int],
    out: np.ndarray,
    size: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
    limits: VideoLimits | None = DEFAULT_LIMITS,
    threads: int = 0,
) -> None:
    """Decode frames ``indices`` (any order, duplicates allowed) straight into ``out``.

    ``out`` is uint8 (len(indices), 3, H, W), planar RGB (channels first). Each
    needed frame goes through swscale once: colour conversion and scaling to
    ``size=(W', H')`` (default: the stored size) in one pass, into planar
    ``gbrp``; the ``H x W`` window at ``offset=(x0, y0)`` of that is copied into
    its slot. One scaler context serves every frame (PyAV's
    ``frame.to_ndarray(format=...)`` builds a new one per frame, which costs
    about as much as the conversion), and nothing but the current frame is
    held, so memory is ``out`` plus the decoder's own. ``threads`` is the
    decoder's thread count (0: FFmpeg picks one per core).
    """
    name = _name(src)
    n, c, H, W = out.shape
    if c != 3 or out.dtype != np.uint8 or n != len(indices):
        raise ValueError(f"decode_into expects uint8 ({len(indices)}, 3, H, W), got {out.dtype} {out.shape}")
    x0, y0 = offset
    container = _open(src, decode_probe=False)
    try:
        info, stream = _checked_stream(container, name, limits)
        stream.codec_context.thread_count = threads
        sw, sh = size if size else (info.width, info.height)
        if x0 < 0 or y0 < 0 or x0 + W > sw or y0 + H > sh:
            raise ValueError(f"{name}: crop {W}x{H} at ({x0}, {y0}) does not fit the {sw}x{sh} frame")
        slots: dict[int, list[int]] = {}
        for j, i in enumerate(indices):
            slots.setdefault(int(i), []).append(j)
        wanted = sorted(slots)
        if wanted and wanted[0] < 0:
            raise VideoError(f"{name}: negative frame index {wanted[0]}")
        scaler = VideoReformatter()
        got: set[int] = set()
        for idx, frame in _wanted_frames(
            container, stream, info, wanted, limits.max_frames if limits is not None else None, name
        ):
            # threads=1: the conversion overlaps the decoder's own threads; swscale's pool only adds hand-offs.
            planes = scaler.reformat(frame, width=sw, height=sh, format="gbrp", threads=1).planes
            first, *dups = slots[idx]
            for ch, p in enumerate((2, 0, 1)):  # gbrp stores G, B, R planes
                plane = planes[p]
                rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                out[first, ch] = rows[y0 : y0 + H, x0 : x0 + W]
            for j in dups:
                out[j] = out[first]
            got.add(idx)
        if len(got) < len(wanted):
            missing = [i for i in wanted if i not in got]
            raise VideoError(f"{name}: frame(s) {missing[:5]} not in video ({info.num_frames} frames)")
    except av.error.FFmpegError as e:
        raise VideoError(f"{name}: corrupt video ({e})") from None
    finally:
        container.close()


def _wanted_frames(container, stream, info: VideoInfo, wanted: list[int], max_frames: int | None, name: str):
    """Yield (index, frame) for the sorted frame numbers ``wanted`` that the stream has, in order.

    Seeks backward to the keyframe before a wanted frame only when it is far
    ahead (nearby frames decode faster forward); a fresh container already
    sits at the start, so frames near it need no seek. Stops with VideoError
    after ``max_frames`` decoded frames (headers can understate the length).
    """
    fps = info.fps or 1.0
    start = float(stream.start_time * stream.time_base) if (stream.start_time is not None and stream.time_base) else 0.0
    seek_gap = 32
    pos, current, decoded = 0, -1, 0
    while pos < len(wanted):
        target = wanted[pos]
        if target - max(current, 0) > seek_gap:
            ts = int((target / fps + start) / stream.time_base) if stream.time_base else 0
            container.seek(max(ts, 0), stream=stream, backward=True, any_frame=False)
        progressed = False
        for frame in container.decode(stream):
            decoded += 1
            if max_frames is not None and decoded > max_frames:
                raise VideoError(f"{name}: more than {max_frames} frames decoded")
            t = frame.time
            current = -1 if t is None else int(round((t - start) * fps))
            progressed = True
            if current < target:
                continue
            while pos < len(wanted) and wanted[pos] < current:
                pos += 1  # a frame the stream skipped: reported missing by the caller
            if pos < len(wanted) and wanted[pos] == current:
                yield current, frame
                pos += 1
            if pos >= len(wanted) or wanted[pos] - current > seek_gap:
                break
        else:
            return  # end of stream
        if not progressed:
            return


def iter_frames(
    src: Source, limits: VideoLimits | None = DEFAULT_LIMITS, size: tuple[int, int] | None = None, every: int = 1
):
    """Yield (index, RGB uint8 frame) lazily; ``every=k`` keeps every k-th frame."""
    name = _name(src)
    container = _open(src)
    try:
        info, stream = _checked_stream(container, name, limits)
        w, h = size if size else (info.width, info.height)
        for i, frame in enumerate(container.decode(stream)):
            if limits is not None and i >= limits.max_frames:
                raise VideoError(f"{name}: more than {limits.max_frames} frames")
            if i % every == 0:
                yield i, frame.to_ndarray(format="rgb24", width=w, height=h)
    except av.error.FFmpegError as e:
        raise VideoError(f"{name}: corrupt video ({e})") from None
    finally:
        container.close()


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 yuv420p needs even sizes: pad the last row/column by edge replication."""
    h, w = frames.shape[1:3]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


class VideoWriter:
    """Streaming H.264 mp4 writer (yuv420p): frames are encoded as they arrive.

    ``target`` is a file path or a binary buffer. Odd sizes are padded by one
    row/column (H.264 4:2:0 needs even sizes). ``gop`` sets the keyframe
    interval (short GOPs make random access cheaper at some size cost);
    ``lookahead`` bounds x264's frame lookahead, i.e. its memory. One encoder
    thread keeps the output bit-reproducible (x264's threaded lookahead is not).
    """

    def __init__(
        self,
        target: str | os.PathLike | BinaryIO,
        width: int,
        height: int,
        fps: float = 24.0,
        crf: int = 18,
        preset: str = "medium",
        gop: int | None = None,
        lookahead: int | None = None,
    ) -> None:
        self.width, self.height = int(width), int(height)
        self.frames = 0
        self._container = av.open(target if hasattr(target, "write") else os.fspath(target), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = self.width + self.width % 2, self.height + self.height % 2
        self._stream.pix_fmt = "yuv420p"
        opts = {"crf": str(crf), "preset": preset}
        if gop:
            opts["g"] = str(gop)
        if lookahead is not None:
            opts["rc-lookahead"] = str(lookahead)
        self._stream.options = opts
        self._stream.codec_context.thread_count = 1

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise VideoError(f"expected a uint8 {self.height}x{self.width}x3 frame, got {rgb.dtype} {rgb.shape}")
        img = np.ascontiguousarray(_even(rgb[None])[0])
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode(
    frames: np.ndarray | Iterable[np.ndarray],
    dst: str | os.PathLike | None = None,
    fps: float = 24.0,
    crf: int = 18,
    preset: str = "medium",
    gop: int | None = None,
) -> bytes | Path:
    """Encode RGB uint8 frames (N, H, W, 3) to H.264 mp4 (see ``VideoWriter``).

    Returns the bytes when ``dst`` is None, else writes ``dst`` atomically
    (temporary name, then rename) and returns its path.
    """
    arr = np.asarray(frames if isinstance(frames, np.ndarray) else np.stack(list(frames)))
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise VideoError(f"encode expects (N, H, W, 3) frames, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise VideoError(f"encode expects uint8 frames, got {arr.dtype}")
    buf = io.BytesIO()
    with VideoWriter(buf, arr.shape[2], arr.shape[1], fps=fps, crf=crf, preset=preset, gop=gop) as writer:
        for img in arr:
            writer.write(img)
    data = buf.getvalue()
    if dst is None:
        return data
    path = Path(dst)
    fsio.write_bytes(path, data)
    return path

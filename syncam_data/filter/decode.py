"""Decode a downsampled, temporally subsampled copy of a video for motion analysis.

Motion is measured on a small copy (short side ``short_side`` pixels, about
``sample_fps`` frames per second, at most ``max_seconds``): tracking cost
grows with pixels and frames, while camera/subject motion in diagonals per
second does not depend on either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from syncam_data.video import VideoError, VideoInfo, iter_frames, probe

log = logging.getLogger(__name__)

TRUNCATION_RATIO = 0.75


class RejectedInput(Exception):
    """The file is a readable video that fails a cheap precondition (too short, too small)."""

    def __init__(self, reason: str, message: str, info: VideoInfo | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.info = info


class TruncatedVideo(VideoError):
    """The file holds fewer frames than its header promises (e.g. an interrupted download)."""


@dataclass
class Clip:
    """The downsampled frames of one video and what we know about the original."""

    frames: np.ndarray  # (T, h, w, 3) uint8 RGB
    fps: float  # frame rate of the sampled frames
    stride: int  # every stride-th source frame was kept
    info: VideoInfo  # the original stream


def downsampled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side at most ``short_side`` (never upscales), aspect kept."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale))), max(2, int(round(height * scale)))


def sample_stride(fps: float, sample_fps: float) -> int:
    return max(1, int(round(fps / sample_fps))) if fps > 0 else 1


def decode_clip(
    path: str | Path,
    short_side: int,
    sample_fps: float,
    max_seconds: float,
    min_duration_s: float = 0.0,
    min_short_side: int = 1,
    check: Callable[[], None] | None = None,
    info: VideoInfo | None = None,
) -> Clip:
    """Probe (unless ``info`` is given), check the cheap preconditions, then decode the sampled frames.

    Raises ``RejectedInput`` (too_short / too_small) and ``VideoError`` (not a
    readable video). ``check`` is called between frames (deadline checks).
    """
    if info is None:
        info = probe(path)
    if min(info.width, info.height) < min_short_side:
        raise RejectedInput(
            "too_small", f"{path}: {info.width}x{info.height} is below the minimum short side {min_short_side}", info
        )
    if info.duration_s and info.duration_s < min_duration_s:
        raise RejectedInput("too_short", f"{path}: {info.duration_s:.2f}s is shorter than {min_duration_s}s", info)
    stride = sample_stride(info.fps, sample_fps)
    last = int(max_seconds * info.fps) if info.fps > 0 else 10_000
    size = downsampled_size(info.width, info.height, short_side)
    frames: list[np.ndarray] = []
    with closing(iter_frames(path, size=size, every=stride)) as it:
        for idx, frame in it:
            if idx >= last:
                break
            frames.append(frame)
            if check is not None:
                check()
    # The header promises more frames than the file holds: cut short (e.g. an interrupted download).
    # The margin tolerates containers whose frame count is only estimated from the duration.
    expected = -(-min(info.num_frames, last) // stride) if info.num_frames > 0 else 0
    if expected and len(frames) < TRUNCATION_RATIO * expected - 1:
        raise TruncatedVideo(
            f"{path}: truncated or corrupt: decoded {len(frames)} of {expected} expected sampled frames"
        )
    if len(frames) < 2:
        if not frames:
            raise VideoError(f"{path}: no decodable frames")
        raise RejectedInput("too_short", f"{path}: only {len(frames)} frame(s) at {sample_fps} fps sampling", info)
    fps = info.fps / stride if info.fps > 0 else sample_fps
    return Clip(np.stack(frames), fps, stride, info)

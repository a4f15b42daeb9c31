"""Upper bounds on every size, count and length a user can ask for (options, spec files, configs).

An absurd value (``--resolution 100000x100000``, ``num_frames: 1e9`` in a spec,
``data.height=100000``) is refused at once with one line naming the option or
key, the maximum and how to raise it, instead of running until memory runs
out. Each bound can be raised by an environment variable for those who really
mean it, e.g. ``SYNCAM_MAX_FRAMES=50000 syncam-data render ...``.

The table of bounds is in docs/architecture.md ("Input limits"); keep it in
step with ``LIMITS``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


class LimitError(ValueError):
    """A value above its documented maximum (or a malformed override); the message names both."""


@dataclass(frozen=True)
class Limit:
    key: str
    default: int
    what: str

    @property
    def env(self) -> str:
        return f"SYNCAM_MAX_{self.key.upper()}"

    @property
    def max(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None or not raw.strip():
            return self.default
        try:
            value = int(float(raw))
        except ValueError:
            raise LimitError(f"{self.env}={raw!r}: expected a whole number") from None
        if value < 1:
            raise LimitError(f"{self.env}={raw!r}: must be at least 1")
        return value

    def over(self, value: float) -> str | None:
        """Why ``value`` is refused ("N is over the maximum of M ... (set SYNCAM_MAX_... to raise it)"), or None."""
        top = self.max
        if value > top:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            return f"{shown} is over the maximum of {top} {self.what} (set {self.env} to raise it)"
        return None

    def check(self, value: float, name: str) -> float:
        """``value`` when it is at most the maximum; LimitError naming ``name`` otherwise."""
        if isinstance(value, float) and not math.isfinite(value):
            raise LimitError(f"{name}: {value} is not a finite number")
        problem = self.over(value)
        if problem:
            raise LimitError(f"{name} {problem}")
        return value


FRAMES = Limit("frames", 10_000, "frames per scene or clip")
SIDE = Limit("side", 8192, "pixels per image side")
CAMERAS = Limit("cameras", 1_000, "cameras per scene")
SCENES = Limit("scenes", 100_000, "scenes per render command")
VIEWS = Limit("views", 256, "views per sample, frame set or generation")
MODEL_SIDE = Limit("model_side", 2048, "pixels per side of model input or output")
MODEL_FRAMES = Limit("model_frames", 1024, "frames of model input or output")
STEPS = Limit("steps", 10_000_000, "training steps")
SAMPLING_STEPS = Limit("sampling_steps", 1_000, "denoising steps")
BATCH = Limit("batch", 65_536, "samples per batch")
WORKERS = Limit("workers", 1_024, "worker processes or actors")
BYTES = Limit("bytes", 64 << 30, "bytes per shard, row group or stored clip")
FPS = Limit("fps", 1_000, "frames per second")
SAMPLES = Limit("samples", 65_536, "render samples per pixel")

LIMITS = (
    FRAMES,
    SIDE,
    CAMERAS,
    SCENES,
    VIEWS,
    MODEL_SIDE,
    MODEL_FRAMES,
    STEPS,
    SAMPLING_STEPS,
    BATCH,
    WORKERS,
    BYTES,
    FPS,
    SAMPLES,
)

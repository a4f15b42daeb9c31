"""Settings of the web-video motion filter, validated on construction.

Two groups: *compute* settings change the raw measurements (decoding,
segmentation, tracking) and need a recomputation; *decision* settings only
turn stored raw scores into keep/reject and can be changed with ``--rescore``.

Motion units: **frame diagonals per second**. A displacement of d pixels
between two sampled frames that are 1/f seconds apart, in a frame whose
diagonal is D pixels, is d / D * f. 0.1 means that something crosses a tenth of
the diagonal every second, whatever the resolution or frame rate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

SEGMENTERS = ("grid", "sam")
TRACKERS = ("lk", "cotracker")
SAM_MODELS = ("vit_b", "vit_l", "vit_h")

# Settings that only change decisions, not raw measurements (what --rescore may change).
DECISION_KEYS = (
    "threshold",
    "camera_threshold",
    "subject_percentile",
    "foreground_min_speed",
    "min_foreground_tracks",
    "scene_cut_threshold",
    "min_duration_s",
    "min_short_side",
)


@dataclass(frozen=True)
class FilterSettings:
    # Decisions (units: frame diagonals per second; see the module docstring).
    threshold: float = 0.02
    camera_threshold: float = 0.01
    subject_percentile: float = 90.0
    foreground_min_speed: float = 0.01
    min_foreground_tracks: int = 5
    scene_cut_threshold: float = 0.5
    min_duration_s: float = 1.0
    min_short_side: int = 128
    # Decoding.
    short_side: int = 256
    sample_fps: float = 8.0
    max_seconds: float = 10.0
    # Segmentation.
    segmenter: str = "grid"
    grid_size: int = 24
    points_per_mask: int = 24
    sam_model: str = "vit_b"
    sam_checkpoint: str | None = None
    sam_points_per_side: int = 16
    # Tracking.
    tracker: str = "lk"
    lk_window: int = 15
    lk_levels: int = 3
    fb_threshold_px: float = 1.0
    cotracker_repo: str | None = None
    cotracker_checkpoint: str | None = None
    cotracker_entry: str = "cotracker3_offline"
    device: str = "cpu"
    # Scoring.
    ransac_threshold_px: float = 1.0
    # Robustness.
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        def need(cond: bool, setting: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"filter setting {setting}: {msg}")

        need(self.threshold >= 0, "--threshold", f"must be >= 0, got {self.threshold}")
        need(self.camera_threshold >= 0, "--camera-threshold", f"must be >= 0, got {self.camera_threshold}")
        need(0 < self.subject_percentile <= 100, "--subject-percentile", f"must be in (0, 100], got {self.subject_percentile}")
        need(self.foreground_min_speed >= 0, "--foreground-min-speed", "must be >= 0")
        need(self.min_foreground_tracks >= 1, "--min-foreground-tracks", "must be >= 1")
        need(0 < self.scene_cut_threshold <= 1, "--scene-cut-threshold", f"must be in (0, 1], got {self.scene_cut_threshold}")
        need(self.min_duration_s >= 0, "--min-duration", "must be >= 0")
        need(self.min_short_side >= 1, "--min-short-side", "must be >= 1")
        need(self.short_side >= 32, "--short-side", f"must be >= 32 pixels, got {self.short_side}")
        need(self.sample_fps > 0, "--sample-fps", f"must be > 0, got {self.sample_fps}")
        need(self.max_seconds > 0, "--max-seconds", "must be > 0")
        need(self.segmenter in SEGMENTERS, "--segmenter", f"choose one of {', '.join(SEGMENTERS)}, got {self.segmenter!r}")
        need(self.tracker in TRACKERS, "--tracker", f"choose one of {', '.join(TRACKERS)}, got {self.tracker!r}")
        need(self.sam_model in SAM_MODELS, "--sam-model", f"choose one of {', '.join(SAM_MODELS)}, got {self.sam_model!r}")
        need(self.grid_size >= 4, "--grid-size", "must be >= 4")
        need(self.points_per_mask >= 1, "--points-per-mask", "must be >= 1")
        need(self.lk_window >= 5 and self.lk_levels >= 0, "--lk-window/--lk-levels", "window >= 5, levels >= 0")
        need(self.fb_threshold_px > 0, "--fb-threshold", "must be > 0")
        need(self.ransac_threshold_px > 0, "--ransac-threshold", "must be > 0")
        need(self.timeout_s > 0, "--timeout", f"must be > 0 seconds, got {self.timeout_s}")
        if self.segmenter == "sam":
            need(self.sam_checkpoint is not None, "--sam-checkpoint", "is required with --segmenter sam (a local SAM .pth file)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def compute_key(self) -> dict[str, Any]:
        """The settings that change raw measurements (resume warns when they differ)."""
        skip = set(DECISION_KEYS) | {"timeout_s", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    @classmethod
    def from_json(cls, text: str) -> "FilterSettings":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_decisions(self, **changes: Any) -> "FilterSettings":
        bad = [k for k in changes if k not in DECISION_KEYS]
        if bad:
            raise ValueError(f"--rescore can only change decision settings ({', '.join(DECISION_KEYS)}), not {bad}")
        data = asdict(self)
        data.update(changes)
        return FilterSettings(**data)

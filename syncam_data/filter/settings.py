"""Settings of the web-video motion filter, validated on construction.

Two groups: *compute* settings change the raw measurements (decoding,
segmentation, tracking, which frame pairs are measured) and need a
recomputation; *decision* settings only turn stored raw measurements into
keep/reject and can be changed with ``--rescore``.

Motion units: **frame diagonals per second**. A displacement of d pixels
between two sampled frames that are 1/f seconds apart, in a frame whose
diagonal is D pixels, is d / D * f. 0.1 means that something crosses a tenth of
the diagonal every second, whatever the resolution or frame rate.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SEGMENTERS = ("grid", "sam")
TRACKERS = ("lk", "cotracker")
SAM_MODELS = ("vit_b", "vit_l", "vit_h")
# findHomography needs 4 points; below 8 a RANSAC fit has no redundancy at all.
MIN_HOMOGRAPHY_POINTS = 8

# Settings that only change decisions, not raw measurements (what --rescore may change).
DECISION_KEYS = (
    "threshold",
    "camera_threshold",
    "camera_trim",
    "min_coverage",
    "subject_percentile",
    "foreground_min_speed",
    "min_foreground_tracks",
    "scene_cut_threshold",
    "min_duration_s",
    "min_short_side",
)

# The command-line option of each setting, so every error names what the user typed.
OPTIONS = {
    "threshold": "--threshold",
    "camera_threshold": "--camera-threshold",
    "camera_trim": "--camera-trim",
    "min_coverage": "--min-coverage",
    "subject_percentile": "--subject-percentile",
    "foreground_min_speed": "--foreground-min-speed",
    "min_foreground_tracks": "--min-foreground-tracks",
    "scene_cut_threshold": "--scene-cut-threshold",
    "min_duration_s": "--min-duration",
    "min_short_side": "--min-short-side",
    "short_side": "--short-side",
    "sample_fps": "--sample-fps",
    "max_seconds": "--max-seconds",
    "segmenter": "--segmenter",
    "grid_size": "--grid-size",
    "points_per_mask": "--points-per-mask",
    "sam_model": "--sam-model",
    "sam_checkpoint": "--sam-checkpoint",
    "sam_points_per_side": "--sam-points-per-side",
    "tracker": "--tracker",
    "lk_window": "--lk-window",
    "lk_levels": "--lk-levels",
    "fb_threshold_px": "--fb-threshold",
    "reseed_fraction": "--reseed-fraction",
    "cotracker_query_every": "--cotracker-query-every",
    "cotracker_repo": "--cotracker-repo",
    "cotracker_checkpoint": "--cotracker-checkpoint",
    "cotracker_entry": "--cotracker-entry",
    "device": "--device",
    "ransac_threshold_px": "--ransac-threshold",
    "min_support": "--min-support",
    "timeout_s": "--timeout",
}


class SettingsError(ValueError):
    """A filter setting out of range; the message names the command-line option."""


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Decisions (units: frame diagonals per second; see the module docstring).
    threshold: float = Field(
        0.02, description="Keep a video only if its subject motion is at least this (diagonals/s)."
    )
    camera_threshold: float = Field(0.01, description="Reject a video whose camera motion exceeds this (diagonals/s).")
    camera_trim: float = Field(
        0.25,
        description="Share of the support weight trimmed from each end of the per-pair camera motions before "
        "averaging them: 0.25 is the weighted interquartile mean, 0.5 the weighted median, 0 the weighted mean.",
    )
    min_coverage: float = Field(
        0.8,
        description="Reject (reason 'unmeasured') a video whose share of frame pairs with a valid camera "
        "estimate (measured_fraction) is below this.",
    )
    subject_percentile: float = Field(
        90.0, description="Percentile of the subject tracks' residual speeds taken as subject motion."
    )
    foreground_min_speed: float = Field(
        0.01, description="Residual speed (diagonals/s) above which a subject candidate counts as moving."
    )
    min_foreground_tracks: int = Field(
        5,
        description="Fewer moving candidates than this are treated as noise (the percentile is then taken over all candidates).",
    )
    scene_cut_threshold: float = Field(
        0.5, description="Histogram distance (0..1) between consecutive sampled frames that counts as a cut."
    )
    min_duration_s: float = Field(1.0, description="Reject videos shorter than this many seconds.")
    min_short_side: int = Field(128, description="Reject videos whose short side is below this many pixels.")
    # Decoding.
    short_side: int = Field(256, description="Analyse a copy downscaled to this short side in pixels (never upscaled).")
    sample_fps: float = Field(8.0, description="Analyse about this many frames per second.")
    max_seconds: float = Field(10.0, description="Analyse at most this many seconds from the start.")
    # Segmentation.
    segmenter: str = Field(
        "grid",
        description="'grid' (no weights: uniform points, every track a subject candidate) or 'sam' (segment-anything masks).",
    )
    grid_size: int = Field(24, description="Points per side of the tracking grid.")
    points_per_mask: int = Field(24, description="Points tracked inside each SAM subject mask.")
    sam_model: str = Field("vit_b", description="SAM architecture matching the checkpoint.")
    sam_checkpoint: str | None = Field(None, description="Local SAM checkpoint (.pth); required with segmenter 'sam'.")
    sam_points_per_side: int = Field(16, description="Prompt grid of SAM's automatic mask generator.")
    # Tracking.
    tracker: str = Field("lk", description="'lk' (OpenCV pyramidal Lucas-Kanade, CPU) or 'cotracker' (torch.hub).")
    lk_window: int = Field(11, description="Lucas-Kanade window size in analysed pixels.")
    lk_levels: int = Field(3, description="Lucas-Kanade pyramid levels above the base image.")
    fb_threshold_px: float = Field(
        1.0, description="Lucas-Kanade forward-backward error (pixels) above which a point is lost."
    )
    reseed_fraction: float = Field(
        0.5,
        description="Lucas-Kanade: when fewer than this share of the initial points are still tracked, detect "
        "new points in the uncovered areas (0 = never re-seed).",
    )
    cotracker_query_every: int = Field(
        16, description="CoTracker: add a query grid every this many sampled frames (0 = first frame only)."
    )
    cotracker_repo: str | None = Field(
        None, description="Local clone of facebookresearch/co-tracker (default: the torch hub cache)."
    )
    cotracker_checkpoint: str | None = Field(
        None, description="CoTracker weights file (default: <hub dir>/checkpoints/scaled_offline.pth)."
    )
    cotracker_entry: str = Field("cotracker3_offline", description="CoTracker hubconf entry point.")
    device: str = Field("cpu", description="Torch device for SAM and CoTracker.")
    # Scoring.
    ransac_threshold_px: float = Field(1.0, description="RANSAC reprojection threshold in analysed pixels.")
    min_support: float = Field(
        0.05,
        description="A frame pair counts as measured only when at least this share of the grid's points "
        f"(grid_size squared, and at least {MIN_HOMOGRAPHY_POINTS}) support its background homography.",
    )
    # Robustness.
    timeout_s: float = Field(300.0, description="Per-video time limit in seconds.")

    @model_validator(mode="after")
    def _check(self) -> FilterConfig:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{OPTIONS[key]}: {msg}")

        finite = {k: v for k, v in self.__dict__.items() if isinstance(v, float)}
        for k, v in finite.items():
            need(math.isfinite(v), k, f"must be a finite number, got {v}")
        need(self.threshold >= 0, "threshold", f"must be >= 0, got {self.threshold}")
        need(self.camera_threshold >= 0, "camera_threshold", f"must be >= 0, got {self.camera_threshold}")
        need(0 <= self.camera_trim <= 0.5, "camera_trim", f"must be in [0, 0.5], got {self.camera_trim}")
        need(0 <= self.min_coverage <= 1, "min_coverage", f"must be in [0, 1], got {self.min_coverage}")
        need(
            0 < self.subject_percentile <= 100,
            "subject_percentile",
            f"must be in (0, 100], got {self.subject_percentile}",
        )
        need(self.foreground_min_speed >= 0, "foreground_min_speed", "must be >= 0")
        need(self.min_foreground_tracks >= 1, "min_foreground_tracks", "must be >= 1")
        need(
            0 < self.scene_cut_threshold <= 1,
            "scene_cut_threshold",
            f"must be in (0, 1], got {self.scene_cut_threshold}",
        )
        need(self.min_duration_s >= 0, "min_duration_s", "must be >= 0")
        need(self.min_short_side >= 1, "min_short_side", "must be >= 1")
        need(self.short_side >= 32, "short_side", f"must be >= 32 pixels, got {self.short_side}")
        need(self.sample_fps > 0, "sample_fps", f"must be > 0, got {self.sample_fps}")
        need(self.max_seconds > 0, "max_seconds", "must be > 0")
        need(
            self.segmenter in SEGMENTERS, "segmenter", f"choose one of {', '.join(SEGMENTERS)}, got {self.segmenter!r}"
        )
        need(self.tracker in TRACKERS, "tracker", f"choose one of {', '.join(TRACKERS)}, got {self.tracker!r}")
        need(
            self.sam_model in SAM_MODELS, "sam_model", f"choose one of {', '.join(SAM_MODELS)}, got {self.sam_model!r}"
        )
        need(4 <= self.grid_size <= 256, "grid_size", f"must be in [4, 256], got {self.grid_size}")
        need(self.points_per_mask >= 1, "points_per_mask", "must be >= 1")
        need(self.sam_points_per_side >= 1, "sam_points_per_side", "must be >= 1")
        need(self.lk_window >= 5, "lk_window", f"must be >= 5, got {self.lk_window}")
        need(self.lk_levels >= 0, "lk_levels", f"must be >= 0, got {self.lk_levels}")
        need(self.fb_threshold_px > 0, "fb_threshold_px", "must be > 0")
        need(0 <= self.reseed_fraction <= 1, "reseed_fraction", f"must be in [0, 1], got {self.reseed_fraction}")
        need(
            self.cotracker_query_every >= 0, "cotracker_query_every", f"must be >= 0, got {self.cotracker_query_every}"
        )
        need(self.ransac_threshold_px > 0, "ransac_threshold_px", "must be > 0")
        need(0 <= self.min_support <= 1, "min_support", f"must be in [0, 1], got {self.min_support}")
        need(self.timeout_s > 0, "timeout_s", f"must be > 0 seconds, got {self.timeout_s}")
        if self.segmenter == "sam":
            need(
                self.sam_checkpoint is not None,
                "sam_checkpoint",
                "is required with --segmenter sam (a local SAM .pth file)",
            )
        return self

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:  # one line naming the option(s), not pydantic's report
            raise SettingsError(_one_line(e)) from None

    @property
    def min_support_points(self) -> int:
        """Background homography inliers a frame pair needs to count as measured."""
        return max(MIN_HOMOGRAPHY_POINTS, math.ceil(self.min_support * self.grid_size**2))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    def compute_key(self) -> dict[str, Any]:
        """The settings that change raw measurements (resume warns when they differ)."""
        skip = set(DECISION_KEYS) | {"timeout_s", "device"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}

    @classmethod
    def from_json(cls, text: str) -> FilterConfig:
        """Settings stored in a row; keys of other versions are dropped, missing ones take today's defaults."""
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    def with_decisions(self, **changes: Any) -> FilterConfig:
        bad = [k for k in changes if k not in DECISION_KEYS]
        if bad:
            raise SettingsError(f"--rescore can only change decision settings ({', '.join(DECISION_KEYS)}), not {bad}")
        return FilterConfig(**{**self.model_dump(), **changes})


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        key = str(e["loc"][0]) if e["loc"] else ""
        parts.append(f"{OPTIONS.get(key, key)}: {msg}" if key else msg)
    return "filter setting " + "; ".join(parts)

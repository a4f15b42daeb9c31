"""`syncam-data filter-videos`."""

from __future__ import annotations

from pathlib import Path

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded, check_out_path, fail

_UNITS = "Units: frame diagonals per second."


@app.command("filter-videos")
def filter_videos(
    inputs: list[Path] | None = typer.Argument(
        None, help="Video files, folders (searched recursively) or .txt/.csv lists of paths. Not needed with --rescore."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: scores.parquet, kept.txt, parts/ while running, debug/ with --debug."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help=f"Keep only videos whose subject motion is at least this (default 0.02). {_UNITS}"
    ),
    camera_threshold: float | None = typer.Option(
        None, "--camera-threshold", help=f"Reject videos whose camera motion exceeds this (default 0.01). {_UNITS}"
    ),
    camera_trim: float | None = typer.Option(
        None,
        "--camera-trim",
        help="Share of the support weight cut from each end of the per-pair camera motions before averaging (default 0.25: the weighted interquartile mean; 0.5: the weighted median).",
    ),
    min_coverage: float | None = typer.Option(
        None,
        "--min-coverage",
        help="Reject as 'unmeasured' a video whose share of frame pairs with a valid camera estimate is below this (default 0.8).",
    ),
    subject_percentile: float | None = typer.Option(
        None,
        "--subject-percentile",
        help="Percentile of per-track residual speeds taken as subject motion (default 90).",
    ),
    foreground_min_speed: float | None = typer.Option(
        None,
        "--foreground-min-speed",
        help=f"Residual speed above which a track counts as foreground (default 0.01). {_UNITS}",
    ),
    min_foreground_tracks: int | None = typer.Option(
        None, "--min-foreground-tracks", help="Fewer foreground tracks than this are treated as noise (default 5)."
    ),
    scene_cut_threshold: float | None = typer.Option(
        None,
        "--scene-cut-threshold",
        help="Histogram distance (0..1) between consecutive sampled frames that counts as a cut (default 0.5).",
    ),
    min_duration: float | None = typer.Option(
        None, "--min-duration", help="Reject videos shorter than this many seconds (default 1.0)."
    ),
    min_short_side: int | None = typer.Option(
        None, "--min-short-side", help="Reject videos whose short side is below this many pixels (default 128)."
    ),
    short_side: int | None = typer.Option(
        None,
        "--short-side",
        help="Analyse a copy downscaled to this short side in pixels (default 256; never upscales).",
    ),
    sample_fps: float | None = typer.Option(
        None, "--sample-fps", help="Analyse about this many frames per second (default 8)."
    ),
    max_seconds: float | None = typer.Option(
        None, "--max-seconds", help="Analyse at most this many seconds from the start (default 10)."
    ),
    segmenter: str | None = typer.Option(
        None,
        "--segmenter",
        help="'grid' (default, no weights: uniform points) or 'sam' (segment-anything masks on the first frame).",
    ),
    grid_size: int | None = typer.Option(
        None, "--grid-size", help="Points per side of the tracking grid (default 24)."
    ),
    points_per_mask: int | None = typer.Option(
        None, "--points-per-mask", help="Points tracked inside each SAM mask (default 24)."
    ),
    sam_checkpoint: str | None = typer.Option(
        None, "--sam-checkpoint", help="Local SAM checkpoint (.pth), required with --segmenter sam."
    ),
    sam_model: str | None = typer.Option(
        None, "--sam-model", help="SAM architecture matching the checkpoint: vit_b (default), vit_l or vit_h."
    ),
    sam_points_per_side: int | None = typer.Option(
        None, "--sam-points-per-side", help="Prompt grid of SAM's automatic mask generator (default 16)."
    ),
    tracker: str | None = typer.Option(
        None, "--tracker", help="'lk' (default: OpenCV pyramidal Lucas-Kanade, CPU) or 'cotracker' (torch.hub)."
    ),
    cotracker_repo: str | None = typer.Option(
        None, "--cotracker-repo", help="Local clone of facebookresearch/co-tracker (default: the torch hub cache)."
    ),
    cotracker_checkpoint: str | None = typer.Option(
        None,
        "--cotracker-checkpoint",
        help="CoTracker weights file (default: <hub dir>/checkpoints/scaled_offline.pth).",
    ),
    cotracker_entry: str | None = typer.Option(
        None, "--cotracker-entry", help="hubconf entry point (default cotracker3_offline)."
    ),
    device: str | None = typer.Option(
        None, "--device", help="Torch device for SAM/CoTracker, e.g. cpu (default) or cuda."
    ),
    lk_window: int | None = typer.Option(
        None, "--lk-window", help="Lucas-Kanade window size in analysed pixels (default 11)."
    ),
    lk_levels: int | None = typer.Option(
        None, "--lk-levels", help="Lucas-Kanade pyramid levels above the base image (default 3)."
    ),
    fb_threshold: float | None = typer.Option(
        None, "--fb-threshold", help="LK forward-backward error in pixels above which a point is lost (default 1.0)."
    ),
    reseed_fraction: float | None = typer.Option(
        None,
        "--reseed-fraction",
        help="Lucas-Kanade: when fewer than this share of the initial points are still tracked, detect new points in uncovered areas (default 0.5; 0 = never).",
    ),
    cotracker_query_every: int | None = typer.Option(
        None,
        "--cotracker-query-every",
        help="CoTracker: add a query grid every this many sampled frames (default 16; 0 = first frame only).",
    ),
    ransac_threshold: float | None = typer.Option(
        None, "--ransac-threshold", help="RANSAC reprojection threshold in analysed pixels (default 1.0)."
    ),
    min_support: float | None = typer.Option(
        None,
        "--min-support",
        help="A frame pair counts as measured only when at least this share of the grid's points (and at least 8) support its background homography (default 0.05).",
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Per-video time limit in seconds; a video over it becomes an error row (default 300)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        min=1,
        callback=bounded(limits.WORKERS),
        help="Local processes, or Ray analysis actors with --engine ray.",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="'local' (processes on this machine) or 'ray' (Ray Data: CPU decode tasks, GPU analysis actors).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster address (default: start a local Ray)."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Write debug/<file stem>-<hash>.png per video (first frame, masks, tracks coloured by motion, file name and scores) and debug/score_histogram.png (the run's scores with the thresholds); with --rescore, the histogram only.",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute every input, even those already scored."),
    retry_errors: bool = typer.Option(
        False, "--retry-errors", help="Recompute inputs whose earlier run ended in an error row."
    ),
    rescore: bool = typer.Option(
        False,
        "--rescore",
        help="Only re-apply decision options (thresholds, camera trim, min coverage, percentile, cut, min duration/size) to stored raw scores; nothing is decoded.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score web videos for a static camera and moving subjects; keep the good ones.

    Camera motion (RANSAC homography of background tracks, a robust average
    over frame pairs) and subject motion (the subject points' residual after
    removing it) are measured in frame diagonals per second; a video whose
    frame pairs are mostly unmeasured is rejected as 'unmeasured'. Re-running
    resumes: unchanged inputs and known content hashes are skipped, and each
    content is processed once per run.
    """
    from syncam_data.filter.run import NoVideosError, run_filter, summary_text
    from syncam_data.filter.run import rescore as do_rescore
    from syncam_data.filter.settings import DECISION_KEYS, FilterConfig

    given = {
        "threshold": threshold,
        "camera_threshold": camera_threshold,
        "camera_trim": camera_trim,
        "min_coverage": min_coverage,
        "subject_percentile": subject_percentile,
        "foreground_min_speed": foreground_min_speed,
        "min_foreground_tracks": min_foreground_tracks,
        "scene_cut_threshold": scene_cut_threshold,
        "min_duration_s": min_duration,
        "min_short_side": min_short_side,
        "short_side": short_side,
        "sample_fps": sample_fps,
        "max_seconds": max_seconds,
        "segmenter": segmenter,
        "grid_size": grid_size,
        "points_per_mask": points_per_mask,
        "sam_checkpoint": sam_checkpoint,
        "sam_model": sam_model,
        "sam_points_per_side": sam_points_per_side,
        "tracker": tracker,
        "cotracker_repo": cotracker_repo,
        "cotracker_checkpoint": cotracker_checkpoint,
        "cotracker_entry": cotracker_entry,
        "device": device,
        "lk_window": lk_window,
        "lk_levels": lk_levels,
        "fb_threshold_px": fb_threshold,
        "reseed_fraction": reseed_fraction,
        "cotracker_query_every": cotracker_query_every,
        "ransac_threshold_px": ransac_threshold,
        "min_support": min_support,
        "timeout_s": timeout,
    }
    given = {k: v for k, v in given.items() if v is not None}
    check_out_path(out)
    if rescore:
        other = sorted(k for k in given if k not in DECISION_KEYS)
        if other:
            raise fail(
                f"--rescore only re-applies decision options; {', '.join(other)} need a recomputation (--force)", 2
            )
        try:
            summary = do_rescore(out, debug=debug, **given)
        except (FileNotFoundError, ValueError) as e:
            raise fail(str(e), 2) from None
        typer.echo(f"rescored {out}: {summary_text(summary)}")
        return
    if not inputs:
        raise fail("give at least one INPUT (file, folder or list), or --rescore", 2)
    try:
        settings = FilterConfig(**given)
    except ValueError as e:
        raise fail(str(e), 2) from None
    if engine not in ("local", "ray"):
        raise fail(f"--engine {engine!r}: use 'local' or 'ray'", 2)
    try:
        summary = run_filter(
            inputs,
            out,
            settings,
            workers=workers,
            engine=engine,
            ray_address=ray_address,
            debug=debug,
            force=force,
            retry_errors=retry_errors,
            progress=progress,
        )
    except NoVideosError as e:  # a folder or list with no video: doing nothing must not look like success
        raise fail(str(e), 1) from None
    except (FileNotFoundError, RuntimeError) as e:  # e.g. a missing SAM/CoTracker checkpoint
        raise fail(str(e), 1) from None
    typer.echo(f"{out}: {summary_text(summary)}")

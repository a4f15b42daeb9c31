"""`syncam-data sample-frames`: multi-view frame sets from RealEstate10K or DL3DV-10K (see docs/sample-frames.md)."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded, check_out_path, fail, float_in

log = logging.getLogger(__name__)


class SourceName(str, Enum):
    realestate10k = "realestate10k"
    dl3dv = "dl3dv"


class FrameResize(str, Enum):
    none = "none"
    squash = "squash"
    center_crop = "center-crop"


class GapUnit(str, Enum):
    auto = "auto"
    video_frames = "video-frames"
    index = "index"


@app.command(
    "sample-frames",
    help="Sample multi-view frame sets (n overlapping views of one static scene, with canonical cameras) from RealEstate10K or DL3DV-10K.",
)
def sample_frames(
    source: SourceName = typer.Option(
        ...,
        "--source",
        help="Dataset format of --root: realestate10k (camera .txt files) or dl3dv (transforms.json scenes).",
    ),
    root: Path = typer.Option(
        ...,
        "--root",
        help="Dataset root; searched recursively (split folders like train/ or subset folders like 1K/ included).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: one <sequence>_sNNN/ group per frame set, plus sample_report.json."
    ),
    views: int = typer.Option(
        4, "--views", "-n", min=1, callback=bounded(limits.VIEWS), help="Views (frames) per set."
    ),
    max_gap: int = typer.Option(
        100, "--max-gap", min=0, help="Largest allowed span of a set (last minus first), in --gap-unit."
    ),
    gap_unit: GapUnit = typer.Option(
        GapUnit.auto,
        "--gap-unit",
        help="What --max-gap counts. video-frames (RealEstate10K default): frames of the source video, from the timestamps (as in the paper). "
        "index: RealEstate10K pose-line index (the original files list every video frame; subsampled copies such as CameraCtrl's every 8th-9th). "
        "DL3DV always uses the frame number from the file name.",
    ),
    sets_per_sequence: int = typer.Option(
        1,
        "--sets-per-sequence",
        "-k",
        min=1,
        max=10_000,
        help="Frame sets to sample from each sequence (at most 10000).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; a sequence's sets depend only on the seed and the sequence id."
    ),
    min_angle: float = typer.Option(
        2.0,
        "--min-angle",
        callback=float_in(0.0, 180.0),
        help="Two views must differ by at least this angle between optical axes (degrees)...",
    ),
    min_baseline: float | None = typer.Option(
        None,
        "--min-baseline",
        callback=float_in(0.0),
        help="...or have camera centres at least this far apart (source pose units; off by default).",
    ),
    max_size: int | None = typer.Option(
        None,
        "--max-size",
        min=8,
        callback=bounded(limits.SIDE),
        help="Downscale images so the longest side is at most this many pixels (intrinsics updated).",
    ),
    image_format: str = typer.Option("jpg", "--image-format", help="Stored image format: jpg or png."),
    jpeg_quality: int = typer.Option(95, "--jpeg-quality", min=1, max=100, help="JPEG quality for --image-format jpg."),
    frames_dir: Path | None = typer.Option(
        None,
        "--frames-dir",
        help="RealEstate10K: folder with <sequence>/<timestamp>.png|jpg frame folders (default: beside each .txt).",
    ),
    videos_dir: Path | None = typer.Option(
        None,
        "--videos-dir",
        help="RealEstate10K: folder with <sequence>.mp4 (or <youtube id>.mp4) videos (default: beside each .txt).",
    ),
    frames_from: str = typer.Option(
        "auto", "--frames-from", help="RealEstate10K: auto (image folder if present, else video), images or video."
    ),
    video_time: str = typer.Option(
        "auto",
        "--video-time",
        help="RealEstate10K videos: absolute (timestamps are YouTube times), relative (video starts at the first timestamp) or auto.",
    ),
    fps: float | None = typer.Option(
        None,
        "--fps",
        callback=float_in(0.001, limits.FPS),
        show_default="from the timestamps",
        help="RealEstate10K image frames: video frame rate that turns timestamps into video frame numbers (--gap-unit video-frames). "
        "Default: inferred per sequence from the timestamps (their median step, or the standard rate whose frame grid they sit on), else 29.97 with a warning.",
    ),
    frame_resize: FrameResize = typer.Option(
        FrameResize.none,
        "--frame-resize",
        help="How stored frames whose aspect differs (>1%) from the camera's were made: squash (whole frame resized to the stored size) or "
        "center-crop (resized to cover, centre cropped; the principal point moves). none: refuse such sequences. "
        "Camera aspect: RealEstate10K fy/fx of the normalized intrinsics (square pixels), DL3DV w/h of transforms.json.",
    ),
    image_folder: str = typer.Option(
        "auto",
        "--image-folder",
        help="DL3DV: images, images_2, images_4, images_8 or auto (images_4, else images_2, images, images_8).",
    ),
    undistort: bool = typer.Option(
        True,
        "--undistort/--no-undistort",
        help="DL3DV: undistort images with OpenCV when transforms.json has k1 k2 p1 p2 (else record them per camera).",
    ),
    applied_transform: str = typer.Option(
        "keep",
        "--applied-transform",
        help="DL3DV: keep poses in the transforms.json world, or undo its applied_transform (COLMAP world). Relative poses are the same.",
    ),
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, callback=bounded(limits.WORKERS), help="Local worker processes (engine local)."
    ),
    workers_j: int | None = typer.Option(
        None, "-j", min=1, hidden=True, callback=bounded(limits.WORKERS), help="Old spelling of --workers."
    ),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or ray."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster address for --engine ray (default: start a local Ray)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Process at most this many sequences (for a trial run)."
    ),
    chunk_size: int = typer.Option(
        256,
        "--chunk-size",
        min=1,
        max=100_000,
        help="Sequences handed to the workers at a time (memory stays bounded by this).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    from syncam_data.sources import dl3dv, realestate10k
    from syncam_data.sources.frameset import REPORT_JSON, OutputConfig, SourceError
    from syncam_data.sources.runner import SampleFramesJob, run_sample_frames
    from syncam_data.sources.sampling import SamplingConfig

    if workers_j is not None:
        workers = workers_j
    if not root.is_dir():
        raise fail(f"--root {root}: not a directory")
    check_out_path(out)
    if engine not in ("local", "ray"):
        raise fail(f"--engine must be local or ray, got {engine!r}")
    unit = gap_unit.value
    if source is SourceName.dl3dv and unit == "video-frames":
        raise fail(
            "--gap-unit video-frames needs timestamps; DL3DV frames are counted by file number (use auto or index)"
        )
    try:
        job = SampleFramesJob(
            source=source.value,
            root=str(root),
            out=str(out),
            sampling=SamplingConfig(views, max_gap, sets_per_sequence, min_angle, min_baseline, seed),
            output=OutputConfig(image_format.lower().replace("jpeg", "jpg"), jpeg_quality, max_size),
            re10k=realestate10k.Re10kConfig(
                str(frames_dir) if frames_dir else None,
                str(videos_dir) if videos_dir else None,
                frames_from,
                video_time,
                fps,
                "video-frames" if unit == "auto" else unit,
                frame_resize.value,
            ),
            dl3dv=dl3dv.Dl3dvConfig(image_folder, undistort, applied_transform, frame_resize.value),
        )
    except ValueError as e:
        raise fail(str(e)) from None
    try:
        report = run_sample_frames(
            job,
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            limit=limit,
            chunk_size=chunk_size,
            progress=progress,
        )
    except SourceError as e:  # --root holds no sequence at all
        raise fail(f"--root {e}") from None
    t = report.totals
    log.info(
        "%d sequence(s): %d ok, %d skipped, %d failed; %d set(s) written, %d already present; report: %s",
        t["sequences"],
        t["ok"],
        t["skipped"],
        t["error"],
        t["sets_written"],
        t["sets_existing"],
        Path(out) / REPORT_JSON,
    )
    if t["sets_written"] + t["sets_existing"] == 0:
        raise fail(
            f"--root {root}: no frame set from {t['sequences']} {source.value} sequence(s): every one was skipped (reasons in {Path(out) / REPORT_JSON})"
        )

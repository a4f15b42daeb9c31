"""`syncam-data build-shards`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded, check_out_path, fail, float_in


def parse_intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise fail(f"--intrinsics {text!r}: expected four numbers fx,fy,cx,cy") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals) or vals[0] <= 0 or vals[1] <= 0:
        raise fail(f"--intrinsics {text!r}: expected four numbers fx,fy,cx,cy with fx, fy > 0")
    return vals  # type: ignore[return-value]


_SIZE_WITH_UNIT = re.compile(r"\s*\d+(\.\d+)?\s*[KMGT]i?B?\s*", re.IGNORECASE)


@app.command("build-shards")
def build_shards(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Dataset folder to create or extend (dataset.json, index.parquet, shards). On Ray it must be on storage every node sees.",
    ),
    renders: list[Path] = typer.Option(
        [],
        "--renders",
        help="Folder of render scene folders (Contract 2) -> multiview_video rows (syncam-blender / syncam-unreal). Repeatable.",
    ),
    frames: list[Path] = typer.Option(
        [],
        "--frames",
        help="Folder of sample-frames group folders -> multiview_image rows (realestate10k / dl3dv). Repeatable.",
    ),
    videos: list[Path] = typer.Option(
        [], "--videos", help="A filter-videos scores.parquet; its kept rows -> single_video rows (web). Repeatable."
    ),
    syncamvideo: list[Path] = typer.Option(
        [],
        "--syncamvideo",
        help="Released SynCamVideo/MultiCamVideo archive (root, split, subset or one scene; scenes = folders with videos/*.mp4 and cameras/camera_extrinsics.json, found at any depth) -> multiview_video rows (syncamvideo), group id <archive>-<split>-<subset>-<scene>. Repeatable.",
    ),
    captions: Path | None = typer.Option(
        None,
        "--captions",
        help="JSONL or CSV mapping sample_id, group_id or source path to a caption (see docs/build-shards.md). Missing captions are counted, never invented.",
    ),
    name: str = typer.Option("syncam", "--name", help="Shard file prefix: <name>-00000.parquet, ..."),
    shard_size: str = typer.Option(
        "512MB",
        "--shard-size",
        help="Target shard size with its unit (e.g. 512MB, 1GB); also the unit of parallel work.",
    ),
    row_group_size: str = typer.Option(
        "96MB",
        "--row-group-size",
        help="Target row-group size inside a shard, with its unit (64MB-128MB suits random access).",
    ),
    engine: str = typer.Option(
        "local", "--engine", help="local (processes on this machine) or ray (Ray tasks on a cluster)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        min=1,
        callback=bounded(limits.WORKERS),
        help="Local engine: parallel processes (1 = in this process).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster address (e.g. auto or ray://head:10001); default starts a local Ray."
    ),
    fov: float | None = typer.Option(
        None,
        "--fov",
        callback=float_in(0.0, 180.0, lo_open=True),
        help="SynCamVideo: horizontal field of view in degrees (instead of the lens/filmback).",
    ),
    intrinsics: str | None = typer.Option(
        None, "--intrinsics", help="SynCamVideo: fx,fy,cx,cy in pixels of the videos (overrides --fov and the lens)."
    ),
    focal_mm: float | None = typer.Option(
        None,
        "--focal-mm",
        callback=float_in(0.0, lo_open=True),
        help="SynCamVideo: lens focal length in mm. Default: the lens its fNN_apertureM subset names (MultiCamVideo: 18, 24, 35 or 50), else 24 (SynCamVideo 2025).",
    ),
    sensor_mm: float = typer.Option(
        23.76,
        "--sensor-mm",
        callback=float_in(0.0, lo_open=True),
        help="SynCamVideo: filmback (sensor) width in mm (SynCamVideo 2025: 23.76); scaled to the video width.",
    ),
    max_frames: int = typer.Option(
        1000,
        "--max-frames",
        min=1,
        callback=bounded(limits.FRAMES),
        help="Web videos: clips longer than this are re-encoded keeping their first MAX_FRAMES frames.",
    ),
    max_size: str = typer.Option(
        "128MB", "--max-size", help="Web videos: clips bigger than this are re-encoded (and refused if still bigger)."
    ),
    crf: int = typer.Option(
        20, "--crf", min=0, max=51, help="Web videos: x264 quality when re-encoding (lower = better, bigger)."
    ),
    max_groups: int | None = typer.Option(
        None, "--max-groups", min=1, help="Write at most this many new groups this run (the rest on a later run)."
    ),
    fail_on_error: bool = typer.Option(
        False, "--fail-on-error", help="Exit 1 when any group failed (they are always recorded and skipped)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write this build's summary as JSON to this file."),
) -> None:
    """Pack renders, frame sets, filtered web videos and SynCamVideo data into one Parquet shard dataset (Contract 3).

    Incremental: a re-run adds only groups that are not in the dataset yet and skips duplicate groups (same content hash). Crash-safe: a killed build leaves a valid dataset of the shards it committed, and the next run redoes the rest. --engine local (any --workers) and --engine ray write the same shard files. See docs/build-shards.md.
    """
    from syncam_data.shards.adapters import ConvertConfig
    from syncam_data.shards.build import BuildConfig, BuildError
    from syncam_data.shards.build import build_shards as run_build
    from syncam_data.shards.captions import CaptionsError
    from syncam_data.shards.writer import parse_size

    check_out_path(out)
    sizes = {}
    for option, text in (("--shard-size", shard_size), ("--row-group-size", row_group_size), ("--max-size", max_size)):
        if not _SIZE_WITH_UNIT.fullmatch(text):  # a bare number would be bytes: `--shard-size 8` is never meant
            raise fail(f"{option} {text!r}: give a size with its unit, e.g. 512MB, 1GB or 64KB", 2)
        try:
            n = parse_size(text)
        except ValueError as e:
            raise fail(f"{option}: {e}", 2) from None
        if n < 1:
            raise fail(f"{option} {text!r}: must be at least 1 byte", 2)
        try:
            limits.BYTES.check(n, option)
        except limits.LimitError as e:
            raise fail(str(e), 2) from None
        sizes[option] = n
    try:
        options = ConvertConfig(
            intrinsics=parse_intrinsics(intrinsics),
            fov_deg=fov,
            focal_mm=focal_mm,
            sensor_mm=sensor_mm,
            max_frames=max_frames,
            max_size=sizes["--max-size"],
            crf=crf,
        )
        cfg = BuildConfig(
            out=out,
            renders=list(renders),
            frames=list(frames),
            videos=list(videos),
            syncamvideo=list(syncamvideo),
            captions=captions,
            name=name,
            shard_size=sizes["--shard-size"],
            row_group_size=sizes["--row-group-size"],
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            options=options,
            max_groups=max_groups,
        )
        summary = run_build(cfg)
    except (BuildError, CaptionsError, ValueError) as e:
        raise fail(str(e)) from None
    d = summary.to_dict()
    if json_out:
        from syncam_data import fsio

        fsio.write_text(json_out, json.dumps(d, indent=2, default=str))
    typer.echo(
        f"{out}: wrote {summary.groups_written} group(s), {summary.views_written} view(s), "
        f"{summary.bytes_written / 1e6:.1f} MB in {len(summary.shards_written)} shard(s) in {summary.seconds:.1f}s; "
        f"skipped {summary.skipped_existing} already present, {summary.skipped_duplicate} duplicate(s)"
    )
    c = summary.captions
    typer.echo(
        f"captions: {c['from_file']} from --captions, {c['from_source']} from the source, {c['missing']} missing"
    )
    for e in summary.errors[:20]:
        typer.echo(f"error: {e['input']}: {e['error']}", err=True)
    if len(summary.errors) > 20:
        typer.echo(f"... and {len(summary.errors) - 20} more errors (see dataset.json stats.builds)", err=True)
    if (
        summary.errors and summary.groups_written == 0
    ):  # a build that wrote nothing and failed must not look like success
        raise fail(
            f"{out}: no group written: {len(summary.errors)} failed (errors above and in dataset.json stats.builds)"
        )
    if summary.errors and fail_on_error:
        raise typer.Exit(1)

"""`syncam-data export-posed`: a rendered camera path written as a RealEstate10K sequence, a DL3DV-10K scene or a plain video."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from syncam_data.cli.app import app, fail


class PosedFormat(str, Enum):
    realestate10k = "realestate10k"
    dl3dv = "dl3dv"
    video = "video"


class FramesAs(str, Enum):
    video = "video"
    images = "images"


@app.command("export-posed")
def export_posed(
    scene: Path = typer.Argument(
        ...,
        help="A render scene folder (cameras.json + videos/) whose cameras, in order, are the positions of one moving camera.",
    ),
    fmt: PosedFormat = typer.Option(
        ...,
        "--format",
        help="realestate10k (<id>.txt + frames), dl3dv (<id>/transforms.json + images*/) or video (<id>.mp4, no cameras: a panning clip).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Dataset folder to add the sequence to, e.g. a RealEstate10K split folder (train/) or a DL3DV subset folder (1K/).",
    ),
    sequence_id: str | None = typer.Option(
        None, "--id", help="Sequence (or scene) id, i.e. the file or folder name (default: the scene folder's name)."
    ),
    frames_as: FramesAs = typer.Option(
        FramesAs.video,
        "--frames-as",
        help="RealEstate10K: the frames as one video <id>.mp4, or as images <id>/<timestamp>.png.",
    ),
    fps: float | None = typer.Option(
        None,
        "--fps",
        min=0.001,
        help="Frame rate of the written video and of the RealEstate10K timestamps (default: the scene's).",
    ),
) -> None:
    """Write a rendered camera path in the on-disk format of RealEstate10K or DL3DV-10K (or as a plain video).

    Frame i of the sequence is camera i of cameras.json: its only frame for a frozen scene (num_frames 1), else its frame i. The files are those the datasets ship and that sample-frames reads (docs/sample-frames.md), so a render with known cameras can exercise the whole multi-view-image path. See docs/quickstart.md.
    """
    from syncam_data.ids import check_id
    from syncam_data.sources.export import export_dl3dv, export_realestate10k, read_render_sequence
    from syncam_data.video import encode

    if not (scene / "cameras.json").is_file():
        raise fail(f"{scene}: not a render scene folder (no cameras.json)")
    sid = sequence_id or scene.name
    try:
        check_id(sid, "--id")
        _, cameras, frames, scene_fps = read_render_sequence(scene)
        rate = fps or scene_fps
        if fmt is PosedFormat.realestate10k:
            written = export_realestate10k(out, sid, cameras, frames, fps=rate, frames_as=frames_as.value)
        elif fmt is PosedFormat.dl3dv:
            written = export_dl3dv(out, sid, cameras, frames) / "transforms.json"
        else:
            import numpy as np

            written = out / f"{sid}.mp4"
            out.mkdir(parents=True, exist_ok=True)
            encode(np.stack(frames), written, fps=rate)
    except ValueError as e:  # an unsafe id, an incomplete scene folder, cameras that are not one camera (DL3DV)
        raise fail(str(e)) from None
    typer.echo(f"{written}: {len(frames)} frames ({fmt.value})")

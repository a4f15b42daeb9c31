"""`syncam-data demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded, check_out_path


@app.command("demo")
def demo(
    out: Path = typer.Option(
        Path("demo-out"),
        "--out",
        "-o",
        help="Output folder for every stage's outputs, commands.sh, report.html and report.md.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of scene sampling, frame-set sampling and training."),
    scenes: int = typer.Option(
        3, "--scenes", min=1, callback=bounded(limits.SCENES), help="Multi-camera scenes to render."
    ),
    cameras: int = typer.Option(
        4, "--cameras", min=2, callback=bounded(limits.CAMERAS), help="Cameras per rendered scene."
    ),
    frames: int = typer.Option(
        9, "--frames", min=2, callback=bounded(limits.FRAMES), help="Frames per rendered scene."
    ),
    resolution: str = typer.Option(
        "128x224",
        "--resolution",
        help="Render size HxW of the multi-camera scenes (small: Cycles runs on the CPU); the shipped camera-path specs are 128x224.",
    ),
    samples: int = typer.Option(
        8, "--samples", min=1, callback=bounded(limits.SAMPLES), help="Cycles samples per pixel."
    ),
    train_steps: int = typer.Option(
        30,
        "--train-steps",
        min=2,
        callback=bounded(limits.STEPS),
        help="Steps of the first training job (it stops there, then resumes).",
    ),
    resume_steps: int = typer.Option(
        10, "--resume-steps", min=1, callback=bounded(limits.STEPS), help="Steps the resumed training job adds."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, callback=bounded(limits.WORKERS), help="Render worker processes."
    ),
) -> None:
    """Run the whole system on built-in defaults: render -> RealEstate10K/DL3DV export -> sample-frames -> filter-videos -> build-shards -> validate -> inspect -> eval -> syncam-train (tiny, stop + resume) -> syncam-generate -> report.html. Every stage is the public command a user would run; commands.sh lists them."""
    from syncam_data.cli.options import parse_resolution
    from syncam_data.demo import DemoConfig, run_demo

    h, w = parse_resolution(resolution)
    check_out_path(out)
    cfg = DemoConfig(
        out=out,
        seed=seed,
        scenes=scenes,
        cameras=cameras,
        frames=frames,
        height=h,
        width=w,
        samples=samples,
        train_steps=train_steps,
        resume_steps=resume_steps,
        workers=workers,
    )
    stages = run_demo(cfg)
    failed = [s for s in stages if not s.ok]
    for s in stages:
        typer.echo(
            f"{'ok ' if s.ok else 'FAIL'} {s.seconds:7.1f}s  {s.title}"
            + (f"  ({s.error.splitlines()[0]})" if s.error else "")
        )
    typer.echo(f"report: {(out / 'report.html').resolve()}")
    if failed:
        raise typer.Exit(1)

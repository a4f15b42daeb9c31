"""`syncam-data render`: sample or read scene specs and render them (Blender or Unreal Engine), resumably."""

from __future__ import annotations

import logging
import re
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded, check_out_path, fail, float_in
from syncam_data.cli.options import parse_resolution
from syncam_data.render.base import BackendConfig
from syncam_data.render.blender_config import BlenderConfig
from syncam_data.render.unrealcv_config import UnrealCVConfig

log = logging.getLogger(__name__)


class Backend(str, Enum):
    blender = "blender"
    unrealcv = "unrealcv"


class EngineKind(str, Enum):
    local = "local"
    ray = "ray"


# The choices of the backends' options, as Typer enums (declared once, in the backends' configs).
UnrealLens = Enum("UnrealLens", {c: c for c in UnrealCVConfig.choices("lens")}, type=str)
Illumination = Enum("Illumination", {c: c for c in UnrealCVConfig.choices("illumination")}, type=str)
Device = Enum("Device", {c: c for c in BlenderConfig.choices("device")}, type=str)


def backend_option(config: type[BackendConfig], label: str, name: str, choices: type[Enum] | None = None) -> Any:
    """The ``render`` option that sets ``config``'s field ``name``: its flag, default and help come from the config."""
    default = config.default(name)
    if choices is not None and default is not None:
        default = choices(default)
    return typer.Option(default, config.flag(name), help=f"{label}: {config.help(name)}")


# The backends' options, declared once in their configs (render/blender.py, render/unrealcv.py).
SAMPLES = backend_option(BlenderConfig, "Blender", "samples")
DEVICE = backend_option(BlenderConfig, "Blender", "device", Device)
HOST = backend_option(UnrealCVConfig, "UnrealCV", "host")
PORT = backend_option(UnrealCVConfig, "UnrealCV", "port")
UNIX_SOCKET = backend_option(UnrealCVConfig, "UnrealCV", "unix_socket")
LAUNCH = backend_option(UnrealCVConfig, "UnrealCV", "launch")
LENS = backend_option(UnrealCVConfig, "UnrealCV", "lens", UnrealLens)
ILLUMINATION = backend_option(UnrealCVConfig, "UnrealCV", "illumination", Illumination)


def parse_range(text: str, what: str) -> tuple[float, float]:
    """'3.5-9' or '3.5,9' -> (3.5, 9.0); a single number means a fixed value."""
    parts = [p for p in re.split(r"[,:]|(?<=\d)-", text.strip()) if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"{what}: expected MIN-MAX like 3.5-9, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or vals[0] > vals[1]:
        raise typer.BadParameter(f"{what}: expected MIN-MAX with MIN <= MAX, got {text!r}")
    return vals[0], vals[1]


def resolve_catalog(value: str | None) -> tuple[Path | None, str]:
    """``--catalog``: an existing file, else the name of a built-in catalog. Returns (path or None, what to record)."""
    from syncam_data.scenes import BUILTIN_CATALOG, builtin_catalog_path

    if value is None:
        return None, f"builtin:{BUILTIN_CATALOG}"
    p = Path(value).expanduser()
    if p.is_file():
        return p, str(p)
    builtin = builtin_catalog_path(value) if "/" not in value and "\\" not in value else None
    if builtin is not None and builtin.is_file():
        return builtin, f"builtin:{value}"
    names = sorted(q.stem for q in builtin_catalog_path().parent.glob("*.yaml"))
    what = "is not a file" if p.exists() else "no such file"
    raise fail(f"--catalog {value}: {what}, and not the name of a built-in catalog ({', '.join(names)})", 2)


@app.command("render")
def render(
    scenes: str = typer.Option(
        ...,
        "--scenes",
        "-n",
        help="N (sample N scene specs from the catalog) or a FILE.jsonl of explicit SceneSpecs, one per line.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output folder: one Contract 2 folder per scene, plus specs.jsonl and render_report.json.",
    ),
    catalog: str | None = typer.Option(
        None,
        "--catalog",
        help="Catalog YAML file of backgrounds, subjects and animations, or the name of a built-in catalog (demo: procedural, needs no assets; the default).",
    ),
    backend: Backend = typer.Option(
        Backend.blender,
        "--backend",
        help="Renderer: blender (bpy + Cycles, needs no engine) or unrealcv (running Unreal Engine instances).",
    ),
    cameras: int = typer.Option(
        36,
        "--cameras",
        min=1,
        callback=bounded(limits.CAMERAS),
        help=f"Cameras per sampled scene (at most {limits.CAMERAS.default}; {limits.CAMERAS.env} raises it).",
    ),
    frames: int = typer.Option(
        100,
        "--frames",
        min=1,
        callback=bounded(limits.FRAMES),
        help=f"Frames per sampled scene (at most {limits.FRAMES.default}; {limits.FRAMES.env} raises it).",
    ),
    fps: float = typer.Option(
        24.0,
        "--fps",
        callback=float_in(0.001, limits.FPS),
        help=f"Frames per second of sampled scenes (0.001 to {limits.FPS.default}).",
    ),
    resolution: str = typer.Option(
        "480x720",
        "--resolution",
        help=f"Image size HxW of sampled scenes (each side at most {limits.SIDE.default}; {limits.SIDE.env} raises it).",
    ),
    hfov: float | None = typer.Option(
        None,
        "--hfov",
        callback=float_in(1.0, 179.0),
        help="Horizontal field of view in degrees, 1 to 179 (default 66.8, SynCamVideo's fx=545.45 at 720 px).",
    ),
    distance: str = typer.Option(
        "3.5-9", "--distance", help="Camera distance range from the scene centre in metres, MIN-MAX."
    ),
    elevation: str = typer.Option("0-45", "--elevation", help="Camera elevation range in degrees, MIN-MAX."),
    subjects: str = typer.Option("1-2", "--subjects", help="Number of subjects per scene, MIN-MAX."),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Sampling seed: scene i is drawn from (seed, i), so more scenes later keep earlier ones identical.",
    ),
    start: int = typer.Option(
        0, "--start", min=0, help="Index of the first sampled scene (scene ids scene_<start>...)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        min=1,
        callback=bounded(limits.WORKERS),
        help="Worker processes (or Ray actors), each owning one renderer instance for many scenes.",
    ),
    engine: EngineKind = typer.Option(
        EngineKind.local, "--engine", help="local: worker processes on this machine; ray: one Ray actor per worker."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster address (default: start a local Ray). The --out folder must be visible to every node.",
    ),
    retries: int = typer.Option(
        1,
        "--retries",
        min=0,
        max=100,
        help="Extra attempts for a failing scene before it is recorded as failed (at most 100).",
    ),
    samples: int = SAMPLES,
    device: Device = DEVICE,
    host: str = HOST,
    port: list[int] = PORT,
    unix_socket: str | None = UNIX_SOCKET,
    launch: str | None = LAUNCH,
    lens: UnrealLens = LENS,
    illumination: Illumination | None = ILLUMINATION,
    depth_dtype: str = typer.Option(
        "float16", "--depth-dtype", help="Depth arrays: float16 (half the size) or float32."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop when the catalog has invalid entries instead of skipping them."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars for scenes and frames."),
) -> None:
    """Render multi-camera scenes (Blender or Unreal Engine through UnrealCV) into Contract 2 scene folders.

    Each scene is written to a temporary folder and renamed when complete; re-running the same command skips
    finished scenes and redoes unfinished ones. Failing scenes are retried, then recorded in
    <out>/render_report.json; the exit code is 1 when any scene failed.
    """
    from syncam_data.config import ConfigError
    from syncam_data.render.jobs import SPECS_JSONL, RenderJobConfig, run_render_job
    from syncam_data.scenes import (
        SamplerConfig,
        SceneSpec,
        SpecError,
        load_catalog,
        read_specs_jsonl,
        sample_scenes,
        short_validation_error,
        write_specs_jsonl,
    )

    if depth_dtype not in ("float16", "float32"):
        raise fail(f"--depth-dtype must be float16 or float32, got {depth_dtype!r}", 2)
    # Only the chosen backend's options: each backend refuses options it does not have.
    if backend == Backend.blender:
        options: dict = {"samples": samples, "device": device.value}
    else:
        options = {
            "host": host,
            "port": list(port),
            "unix_socket": unix_socket,
            "launch": launch,
            "retries": retries,
            "lens": lens.value,
            "illumination": illumination.value if illumination else None,
        }
    try:  # checked before any work starts
        cfg = RenderJobConfig(
            out=out,
            backend=backend.value,
            backend_config=options,
            workers=workers,
            engine=engine.value,
            ray_address=ray_address,
            retries=retries,
            progress=progress,
            depth_dtype=depth_dtype,
        )
    except ConfigError as e:
        raise fail(str(e), 2) from None
    check_out_path(out)
    catalog_path, catalog_name = resolve_catalog(catalog)
    problems: list[str] = []
    try:
        if scenes.strip().isdigit():
            limits.SCENES.check(int(scenes), "--scenes")
            height, width = parse_resolution(resolution)
            lo, hi = parse_range(subjects, "--subjects")
            cat = load_catalog(catalog_path, strict=strict)
            problems = cat.problems
            opts = SamplerConfig(
                num_cameras=cameras,
                num_frames=frames,
                fps=fps,
                width=width,
                height=height,
                distance=parse_range(distance, "--distance"),
                elevation=parse_range(elevation, "--elevation"),
                subjects=(int(lo), int(hi)),
                **({"hfov_deg": hfov} if hfov else {}),
            )
            items: list[SceneSpec | SpecError] = list(sample_scenes(cat, int(scenes), seed, opts, start=start))
        else:
            items = read_specs_jsonl(Path(scenes))
    except SpecError as e:
        raise fail(str(e), 2) from None
    except ValueError as e:  # option values that SamplerConfig rejects
        raise fail(short_validation_error(e), 2) from None
    out.mkdir(parents=True, exist_ok=True)
    write_specs_jsonl([s for s in items if isinstance(s, SceneSpec)], out / SPECS_JSONL)
    args = {
        "scenes": scenes,
        "catalog": catalog_name,
        "backend": backend.value,
        "seed": seed,
        "cameras": cameras,
        "frames": frames,
        "fps": fps,
        "resolution": resolution,
        "workers": workers,
        "engine": engine.value,
        **options,
    }
    report = run_render_job(items, cfg, args=args, catalog_problems=problems)
    typer.echo(
        f"{out}: {len(report.done)} rendered, {len(report.skipped)} already complete, {len(report.failed)} failed"
    )
    for f in report.failed:
        typer.echo(f"failed: {f['scene_id']}: {f['error']}", err=True)
    if report.failed:
        raise typer.Exit(1)

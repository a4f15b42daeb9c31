"""`syncam-generate`: Generate synchronized multi-view videos from text (or re-render an input video from new cameras).

    syncam-generate --pretrained /models/CogVideoX-2b --checkpoint run/adapter.safetensors \\
        --prompt "a corgi runs on the beach" --cameras azimuth:0,30,60 --out out/corgi

    syncam-generate --pretrained /models/CogVideoX-2b --checkpoint run/adapter.safetensors \\
        --prompt "a corgi runs on the beach" --cameras azimuth:0,45,90 --input-video corgi.mp4 --out out/rerender

Writes ``<out>/videos/<view>.mp4``, ``<out>/grid.mp4`` (views side by side),
``<out>/cameras.json`` (render-output form, absolute canonical cameras) and
``<out>/generation.json`` (prompt, settings, checkpoint, base model). The
folder is assembled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from syncam_data.cli.options import SafeCommand, check_out_path, float_in, parse_resolution
from syncam_data.limits import FPS
from syncam_model.generate import GenerationConfig

log = logging.getLogger("syncam_model.generate")

app = typer.Typer(
    name="syncam-generate",
    help="Generate synchronized multi-view videos from text (or re-render an input video from new cameras).",
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def _help(name: str) -> str:
    return GenerationConfig.help(name)


@app.command(cls=SafeCommand)
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help=_help("prompt")),
    pretrained: str = typer.Option(
        ...,
        "--pretrained",
        help="Local diffusers CogVideoX folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/), or 'tiny' for a tiny random model.",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="Multi-view adapter weights: an adapter.safetensors from syncam-train, or a checkpoint folder holding one (e.g. RUN/checkpoints/latest). Without it the modules are at their identity initialization (views are independent).",
    ),
    cameras: str = typer.Option(
        "azimuth:0,30,60",
        "--cameras",
        help="Camera preset ('azimuth:0,30,60', 'elevation:...', 'distance:...', parts joined by ';') or a cameras.json; view 0 is the reference (and the input video's camera).",
    ),
    views: str | None = typer.Option(
        None, "--views", help="Comma-separated camera ids to use from a cameras.json, in order (default: all)."
    ),
    frames: int = typer.Option(GenerationConfig.default("num_frames"), "--frames", help=_help("num_frames")),
    resolution: str = typer.Option(
        f"{GenerationConfig.default('height')}x{GenerationConfig.default('width')}",
        "--resolution",
        help="Output size HxW, multiples of 16.",
    ),
    steps: int = typer.Option(GenerationConfig.default("steps"), "--steps", help=_help("steps")),
    guidance: float = typer.Option(GenerationConfig.default("guidance"), "--guidance", help=_help("guidance")),
    dynamic_cfg: bool = typer.Option(
        GenerationConfig.default("use_dynamic_cfg"), "--dynamic-cfg/--no-dynamic-cfg", help=_help("use_dynamic_cfg")
    ),
    negative_prompt: str = typer.Option(
        GenerationConfig.default("negative_prompt"), "--negative-prompt", help=_help("negative_prompt")
    ),
    input_video: Path | None = typer.Option(
        None, "--input-video", help="Re-render this video (view 0's camera) from the other cameras."
    ),
    text_guidance: float = typer.Option(
        GenerationConfig.default("text_guidance"), "--text-guidance", help=_help("text_guidance")
    ),
    video_guidance: float = typer.Option(
        GenerationConfig.default("video_guidance"), "--video-guidance", help=_help("video_guidance")
    ),
    sampler: str = typer.Option(GenerationConfig.default("sampler"), "--sampler", help=_help("sampler")),
    seed: int = typer.Option(GenerationConfig.default("seed"), "--seed", help=_help("seed")),
    batch_passes: bool = typer.Option(
        GenerationConfig.default("batch_passes"), "--batch-passes/--sequential-passes", help=_help("batch_passes")
    ),
    vae_tiling: bool = typer.Option(
        False,
        "--vae-tiling/--no-vae-tiling",
        help="Decode/encode with the VAE in tiles (less GPU memory at full resolution; diffusers' enable_tiling).",
    ),
    translation_normalization: str | None = typer.Option(
        None,
        "--translation-normalization",
        help="Camera translation rule: 'max_distance' (farthest camera centre from view 0 at distance 1) or 'fixed' (divided by --translation-scale). Default: the checkpoint's; a checkpoint trained with another rule is refused.",
    ),
    translation_scale: float | None = typer.Option(
        None,
        "--translation-scale",
        callback=float_in(0.0, lo_open=True),
        help="Metres per unit with --translation-normalization fixed (default: the checkpoint's, else 1.0).",
    ),
    hfov: float = typer.Option(
        60.0,
        "--hfov",
        callback=float_in(0.0, 180.0, lo_open=True),
        help="Horizontal field of view (degrees) of preset cameras, for cameras.json.",
    ),
    fps: float = typer.Option(
        8.0, "--fps", callback=float_in(0.0, FPS, lo_open=True), help="Frame rate of the written videos (CogVideoX: 8)."
    ),
    dtype: str = typer.Option(
        "bfloat16",
        "--dtype",
        help="Weight dtype: bfloat16, float32 (float16 gives NaNs with CogVideoX). 'tiny' always uses float32.",
    ),
    device: str = typer.Option("cuda", "--device", help="Torch device; falls back to cpu when CUDA is unavailable."),
    tiny_variant: str | None = typer.Option(
        None, "--tiny-variant", help="With --pretrained tiny: '2b', '5b' or '1.5' (default: the checkpoint's, else 2b)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output folder (videos/, grid.mp4, cameras.json, generation.json); an existing non-empty folder is refused unless --overwrite, which replaces it.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty output folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate synchronized multi-view videos from text (or re-render an input video from new cameras)."""
    import torch

    from syncam_data.config import ConfigError
    from syncam_data.limits import VIEWS
    from syncam_model.adapter_io import AdapterFileError, adapter_spec_of, load_adapter, read_adapter_meta
    from syncam_model.components import load_components
    from syncam_model.generate import generate as run_generation
    from syncam_model.inference import (
        InputError,
        camera_rule,
        generation_record,
        load_input_video,
        resolve_checkpoint,
        write_outputs,
    )
    from syncam_model.rig import RigError, resolve_rig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # 1. check every input before any model loads (the settings: GenerationConfig, in one place)
    height, width = parse_resolution(resolution, limit=None)
    try:
        config = GenerationConfig.parse(
            dict(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_frames=frames,
                height=height,
                width=width,
                steps=steps,
                guidance=guidance,
                use_dynamic_cfg=dynamic_cfg,
                text_guidance=text_guidance,
                video_guidance=video_guidance,
                sampler=sampler,
                seed=seed,
                batch_passes=batch_passes,
            )
        )
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    if pretrained != "tiny" and not Path(pretrained).is_dir():
        raise typer.BadParameter(
            f"{pretrained}: no such folder (a local diffusers CogVideoX folder with transformer/, vae/, text_encoder/, tokenizer/, scheduler/; or 'tiny')",
            param_hint="'--pretrained'",
        )
    check_out_path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise typer.BadParameter(f"{out}: exists and is not empty (use --overwrite)", param_hint="--out")
    if dtype not in _DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {sorted(set(_DTYPES.values()))}, got {dtype!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    try:
        meta = read_adapter_meta(checkpoint) if checkpoint else {}
        spec = adapter_spec_of(meta, str(checkpoint)) if checkpoint else None
    except (AdapterFileError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--checkpoint") from None
    try:
        rule = camera_rule(meta, translation_normalization, translation_scale)
        rig = resolve_rig(cameras, width, height, hfov, views.split(",") if views else None)
        VIEWS.check(len(rig), "--cameras: views")
        video = load_input_video(input_video, frames, height, width) if input_video else None
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    except (RigError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--cameras") from None
    if video is not None and checkpoint is not None and "train_config" in meta:
        if not meta["train_config"].get("diffusion", {}).get("novel_view", False):
            log.warning(
                "%s was not trained with --novel-view: in re-rendering mode its views are unlikely to follow the input video "
                "(train with syncam-train --novel-view for --input-video)",
                checkpoint,
            )

    # 2. the model and its adapter
    tiny_config = None
    torch_dtype = getattr(torch, _DTYPES[dtype])
    if pretrained == "tiny":
        saved_tiny = meta.get("base_id", {}).get("tiny", {})
        tiny_config = {"variant": tiny_variant or saved_tiny.get("variant", "2b"), "seed": saved_tiny.get("seed", 0)}
        torch_dtype = torch.float32
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("CUDA is not available; running on cpu")
        device = "cpu"
    start = time.time()
    try:
        components = load_components(
            pretrained, dtype=torch_dtype, device=device, tiny_config=tiny_config, adapter=spec
        )
    except FileNotFoundError as exc:  # a folder that is not a complete diffusers CogVideoX folder
        raise typer.BadParameter(str(exc), param_hint="'--pretrained'") from None
    if checkpoint:
        try:
            load_adapter(components.transformer, checkpoint, components.base_id, camera_rule=rule)
        except AdapterFileError as exc:
            raise typer.BadParameter(str(exc), param_hint="--checkpoint") from None
    else:
        log.warning("no --checkpoint: multi-view modules are at initialization, views will not be synchronized")
    if vae_tiling:
        components.vae.enable_tiling()

    # 3. sample, 4. write the folder with its record
    model_cameras = rig.relative(rule)  # the same rule as in training (syncam_model.camera_input)
    videos = run_generation(components, config, model_cameras, input_video=video, progress=progress)
    record = generation_record(
        config,
        components,
        rig,
        model_cameras,
        rule,
        cameras=cameras,
        input_video=input_video,
        checkpoint=checkpoint,
        checkpoint_meta=meta,
        pretrained=pretrained,
        fps=fps,
        vae_tiling=vae_tiling,
        seconds=time.time() - start,
    )
    write_outputs(out, videos, rig, record, fps)
    log.info("wrote %d views (%s) to %s", len(rig), "x".join(map(str, videos.shape[1:])), out)


def main() -> None:
    app()

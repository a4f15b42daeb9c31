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
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, get_args

import typer

from syncam_data import fsio, limits
from syncam_data.cli.options import SafeCommand, bounded, check_out_path, float_in, parse_resolution
from syncam_model.frames import decodable_error

log = logging.getLogger("syncam_model.generate")

app = typer.Typer(
    name="syncam-generate",
    help="Generate synchronized multi-view videos from text (or re-render an input video from new cameras).",
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def load_input_video(path: Path, num_frames: int, height: int, width: int):
    """The first ``num_frames`` frames of ``path``, resized and centre-cropped to ``height x width``, as ``[F, 3, H, W]`` in [-1, 1]."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from syncam_data.video import VideoError, decode, probe

    try:
        info = probe(path, count_frames=True)
        if info.num_frames < num_frames:
            raise typer.BadParameter(f"{path}: has {info.num_frames} frames, --frames asks for {num_frames}", param_hint="'--input-video'")
        frames = decode(path, indices=list(range(num_frames)))
    except VideoError as e:
        raise typer.BadParameter(str(e), param_hint="'--input-video'") from None
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    scale = max(height / video.shape[2], width / video.shape[3])
    rh, rw = max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale))
    video = F.interpolate(video, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    return video[:, :, top : top + height, left : left + width].clamp(-1, 1).contiguous()


def to_uint8(video) -> "np.ndarray":  # noqa: F821
    """``[F, 3, H, W]`` in [-1, 1] -> ``(F, H, W, 3)`` uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def write_outputs(out: Path, videos, rig, generation: dict, fps: float) -> None:
    """Write the output folder atomically: build it under a temporary name, then rename."""
    import numpy as np

    from syncam_data.render.output import write_json
    from syncam_data.video import encode

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should look like a plain mkdir
    try:
        frames = [to_uint8(v) for v in videos]
        for cid, f in zip(rig.ids, frames):
            encode(f, tmp / "videos" / f"{cid}.mp4", fps=fps)
        encode(np.concatenate(frames, axis=2), tmp / "grid.mp4", fps=fps)
        write_json(tmp / "cameras.json", rig.to_json())
        write_json(tmp / "generation.json", generation)
        fsio.fsync_tree(tmp)  # on disk before the rename publishes it
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsio.fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _camera_rule(meta: dict, normalization: str | None, scale: float | None):
    """The camera rule to apply: the adapter's, unless the options ask for another (then the adapter is refused)."""
    from syncam_model.camera_input import CameraRule, CameraRuleError, check_rule, rule_of

    rules = get_args(CameraRule.model_fields["translation_normalization"].annotation)
    if normalization is not None and normalization not in rules:
        raise ValueError(f"--translation-normalization must be one of {list(rules)}, got {normalization!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"--translation-scale must be positive, got {scale}")
    if not meta:
        return CameraRule(translation_normalization=normalization or "max_distance", translation_scale=1.0 if scale is None else scale)
    try:
        have = rule_of(meta, "--checkpoint")
        if normalization is None and scale is None:
            return have
        norm = normalization or have.translation_normalization
        if scale is None:
            scale = have.translation_scale if norm == have.translation_normalization else 1.0
        return check_rule(meta, CameraRule(translation_normalization=norm, translation_scale=scale), "--checkpoint")
    except CameraRuleError as exc:
        raise ValueError(str(exc)) from None


@app.command(cls=SafeCommand)
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text prompt shared by all views."),
    pretrained: str = typer.Option(..., "--pretrained", help="Local diffusers CogVideoX folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/), or 'tiny' for a tiny random model."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Multi-view adapter weights: an adapter.safetensors from syncam-train, or a checkpoint folder holding one (e.g. RUN/checkpoints/latest). Without it the modules are at their identity initialization (views are independent)."),
    cameras: str = typer.Option("azimuth:0,30,60", "--cameras", help="Camera preset ('azimuth:0,30,60', 'elevation:...', 'distance:...', parts joined by ';') or a cameras.json; view 0 is the reference (and the input video's camera)."),
    views: Optional[str] = typer.Option(None, "--views", help="Comma-separated camera ids to use from a cameras.json, in order (default: all)."),
    frames: int = typer.Option(49, "--frames", callback=bounded(limits.MODEL_FRAMES), help="Frames per video: 8N+1 (9, 17, ..., 49), which CogVideoX's VAE decodes exactly; CogVideoX is trained on 49."),
    resolution: str = typer.Option("480x720", "--resolution", help="Output size HxW, multiples of 16."),
    steps: int = typer.Option(50, "--steps", min=1, callback=bounded(limits.SAMPLING_STEPS), help=f"Denoising steps (1 to {limits.SAMPLING_STEPS.default})."),
    guidance: float = typer.Option(6.0, "--guidance", callback=float_in(0.0), help="Text classifier-free guidance scale for text-to-views (1 disables it)."),
    dynamic_cfg: bool = typer.Option(True, "--dynamic-cfg/--no-dynamic-cfg", help="CogVideoX's cosine guidance schedule (use_dynamic_cfg); on by default, as the official SynCamMaster inference."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="Unconditional prompt for guidance."),
    input_video: Optional[Path] = typer.Option(None, "--input-video", help="Re-render this video (view 0's camera) from the other cameras."),
    text_guidance: float = typer.Option(7.5, "--text-guidance", callback=float_in(0.0), help="Text guidance scale in re-rendering mode."),
    video_guidance: float = typer.Option(1.8, "--video-guidance", callback=float_in(0.0), help="Video guidance scale in re-rendering mode."),
    sampler: str = typer.Option("auto", "--sampler", help="'auto' (DDIM for CogVideoX-2B, DPM for 5B and 1.5, as the official inference), 'ddim' (CogVideoXDDIMScheduler) or 'dpm' (CogVideoXDPMScheduler)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise."),
    batch_passes: bool = typer.Option(True, "--batch-passes/--sequential-passes", help="Run the guidance passes as one batch (faster) or one after another (less GPU memory)."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling/--no-vae-tiling", help="Decode/encode with the VAE in tiles (less GPU memory at full resolution; diffusers' enable_tiling)."),
    translation_normalization: Optional[str] = typer.Option(None, "--translation-normalization", help="Camera translation rule: 'max_distance' (farthest camera centre from view 0 at distance 1) or 'fixed' (divided by --translation-scale). Default: the checkpoint's; a checkpoint trained with another rule is refused."),
    translation_scale: Optional[float] = typer.Option(None, "--translation-scale", callback=float_in(0.0, lo_open=True), help="Metres per unit with --translation-normalization fixed (default: the checkpoint's, else 1.0)."),
    hfov: float = typer.Option(60.0, "--hfov", callback=float_in(0.0, 180.0, lo_open=True), help="Horizontal field of view (degrees) of preset cameras, for cameras.json."),
    fps: float = typer.Option(8.0, "--fps", callback=float_in(0.0, limits.FPS, lo_open=True), help="Frame rate of the written videos (CogVideoX: 8)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Weight dtype: bfloat16, float32 (float16 gives NaNs with CogVideoX). 'tiny' always uses float32."),
    device: str = typer.Option("cuda", "--device", help="Torch device; falls back to cpu when CUDA is unavailable."),
    tiny_variant: Optional[str] = typer.Option(None, "--tiny-variant", help="With --pretrained tiny: '2b', '5b' or '1.5' (default: the checkpoint's, else 2b)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (videos/, grid.mp4, cameras.json, generation.json); an existing non-empty folder is refused unless --overwrite, which replaces it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty output folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate synchronized multi-view videos from text (or re-render an input video from new cameras)."""
    import torch

    from syncam_model.generate import generate as run_generation
    from syncam_model.generate import resolve_sampler
    from syncam_model.adapter_io import AdapterFileError, adapter_spec_of, load_adapter, read_adapter_meta
    from syncam_model.components import load_components
    from syncam_model.rig import RigError, resolve_rig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    height, width = parse_resolution(resolution, limit=limits.MODEL_SIDE, multiple=16)
    if pretrained != "tiny" and not Path(pretrained).is_dir():
        raise typer.BadParameter(f"{pretrained}: no such folder (a local diffusers CogVideoX folder with transformer/, vae/, text_encoder/, tokenizer/, scheduler/; or 'tiny')", param_hint="'--pretrained'")
    if decodable_error(frames):
        raise typer.BadParameter(decodable_error(frames), param_hint="--frames")
    check_out_path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise typer.BadParameter(f"{out}: exists and is not empty (use --overwrite)", param_hint="--out")
    if dtype not in _DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {sorted(set(_DTYPES.values()))}, got {dtype!r}")
    if checkpoint is not None and checkpoint.is_dir():
        checkpoint = checkpoint / "adapter.safetensors"
    try:
        meta = read_adapter_meta(checkpoint) if checkpoint else {}
    except (AdapterFileError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--checkpoint") from None
    tiny_config = None
    torch_dtype = getattr(torch, _DTYPES[dtype])
    if pretrained == "tiny":
        saved_tiny = meta.get("base_id", {}).get("tiny", {})
        tiny_config = {"variant": tiny_variant or saved_tiny.get("variant", "2b"), "seed": saved_tiny.get("seed", 0)}
        torch_dtype = torch.float32
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("CUDA is not available; running on cpu")
        device = "cpu"
    try:
        rule = _camera_rule(meta, translation_normalization, translation_scale)
        spec = adapter_spec_of(meta, str(checkpoint)) if checkpoint else None
    except (AdapterFileError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--checkpoint" if checkpoint else "--translation-normalization") from None
    try:
        rig = resolve_rig(cameras, width, height, hfov, views.split(",") if views else None)
        limits.VIEWS.check(len(rig), "--cameras: views")
    except (RigError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--cameras") from None
    if input_video is not None and not input_video.is_file():
        raise typer.BadParameter(f"{input_video}: no such file", param_hint="'--input-video'")
    # The input video is read (and checked) before the model is loaded.
    video = load_input_video(input_video, frames, height, width) if input_video else None

    if input_video is not None and checkpoint is not None and "train_config" in meta:
        if not meta["train_config"].get("diffusion", {}).get("novel_view", False):
            log.warning("%s was not trained with --novel-view: in re-rendering mode its views are unlikely to follow the input video "
                        "(train with syncam-train --novel-view for --input-video)", checkpoint)

    start = time.time()
    try:
        components = load_components(pretrained, dtype=torch_dtype, device=device, tiny_config=tiny_config, adapter=spec)
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
    model_cameras = rig.relative(rule)  # the same rule as in training (syncam_model.camera_input)
    videos = run_generation(
        components,
        prompt,
        model_cameras,
        num_frames=frames,
        height=height,
        width=width,
        steps=steps,
        guidance=guidance,
        seed=seed,
        input_video=video,
        text_guidance=text_guidance,
        video_guidance=video_guidance,
        negative_prompt=negative_prompt,
        use_dynamic_cfg=dynamic_cfg,
        sampler=sampler,
        batch_passes=batch_passes,
        progress=progress,
    )
    generation = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "mode": "rerender" if input_video else "text",
        "input_video": str(input_video) if input_video else None,
        "views": rig.ids,
        "camera_input": [[round(float(v), 6) for v in row] for row in model_cameras],
        "settings": {
            "frames": frames, "height": height, "width": width, "steps": steps, "guidance": guidance,
            "dynamic_cfg": dynamic_cfg, "text_guidance": text_guidance, "video_guidance": video_guidance,
            "sampler": resolve_sampler(components, sampler), "seed": seed, "batch_passes": batch_passes, "vae_tiling": vae_tiling,
            "camera_rule": rule.model_dump(), "cameras": cameras, "fps": fps,
            "dtype": str(torch_dtype).removeprefix("torch."), "device": str(components.device),
        },
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_meta": {k: v for k, v in meta.items() if k != "base_id"},
        "pretrained": pretrained,
        "base_id": components.base_id,
        "seconds": round(time.time() - start, 2),
    }
    write_outputs(out, videos, rig, generation, fps)
    log.info("wrote %d views (%s) to %s", len(rig), "x".join(map(str, videos.shape[1:])), out)


def main() -> None:
    app()

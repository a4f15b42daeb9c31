"""Sampling n synchronized views with the adapted CogVideoX transformer.

Two modes, one loop (numbered like diffusers' CogVideoX pipeline):

- **text -> n views**: classifier-free guidance exactly as ``CogVideoXPipeline``
  does it: one batched pass on ``[negative, prompt]``,
  ``v = v_uncond + guidance * (v_text - v_uncond)`` (optionally with its
  "dynamic CFG" schedule), DDIM steps of ``CogVideoXDDIMScheduler``.
- **novel-view re-rendering** (``input_video``): view 0 is the clean latent of
  the input video (its camera is view 0); the other views are generated.
  InstructPix2Pix-style guidance with three passes, batched together::

      v = v(none, none) + s_video * (v(video, none) - v(none, none))
                        + s_text  * (v(video, text) - v(video, none))

  for views 1..n-1. "none" text is the negative (empty) prompt; "none" video
  means view 0 is not replaced and is denoised along with the others (the
  training dropout case, 10 %). With the video, view 0's latent is the clean
  latent and its timestep is 0 (``video_cond_mask``, see
  ``MultiViewTransformer.forward``); the model's outputs there were never
  trained (view 0 is out of the loss), so view 0 of the no-video pass is
  stepped with its own unguided prediction ``v(none, none)[0]``, not with the
  combination.

Defaults follow the official SynCamMaster + CogVideoX inference
(``inference/syncammaster_inference.py`` of the first release): 50 steps,
guidance 6 with dynamic CFG (``use_dynamic_cfg=True``), DDIM with trailing
timesteps for CogVideoX-2B and the DPM scheduler for the other models.

All views share the initial noise generator, the schedule and the timestep.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import field_validator
from tqdm.auto import tqdm

from syncam_data import limits
from syncam_data.config import Config, setting
from syncam_model.components import Components, check_video_size, decode_latents, encode_video
from syncam_model.frames import check_decodable, decodable_error, encodable_error, temporal_padding
from syncam_model.text import encode_prompts

log = logging.getLogger(__name__)


@dataclass
class SamplingPlan:
    """Shapes of one generation: latent frames (after 1.5 padding), padding frames and latent size."""

    latent_frames: int
    padding_frames: int
    channels: int
    height: int
    width: int


def plan_latents(components: Components, num_frames: int, height: int, width: int) -> SamplingPlan:
    """Latent shape for ``num_frames x height x width``; CogVideoX 1.5 pads latent frames to a multiple of ``patch_size_t``."""
    f, c, h, w = components.latent_shape(num_frames, height, width)
    pad = temporal_padding(f, components.transformer.config.patch_size_t)
    return SamplingPlan(latent_frames=f + pad, padding_frames=pad, channels=c, height=h, width=w)


def _check_inputs(
    components: Components, config: GenerationConfig, cameras: torch.Tensor, input_video: torch.Tensor | None
) -> None:
    """What depends on the model and the inputs (the settings themselves are checked by ``GenerationConfig``)."""
    num_frames, height, width = config.num_frames, config.height, config.width
    if cameras.ndim != 2 or cameras.shape[1] != 12 or cameras.shape[0] < 1:
        raise ValueError(f"cameras must be (n, 12) relative poses, got shape {tuple(cameras.shape)}")
    if not torch.isfinite(cameras).all():
        raise ValueError("cameras contain NaN or Inf")
    check_video_size(
        num_frames, height, width, components.vae_scale_factor_spatial, components.vae_scale_factor_temporal
    )
    check_decodable(num_frames, components.vae_scale_factor_temporal)
    if input_video is not None:
        if tuple(input_video.shape) != (num_frames, 3, height, width):
            raise ValueError(
                f"input video must be ({num_frames}, 3, {height}, {width}), got {tuple(input_video.shape)}"
            )
        if cameras.shape[0] < 2:
            raise ValueError("re-rendering needs the input view plus at least one new camera")


SAMPLERS = ("auto", "ddim", "dpm")
# CogVideoX's VAE: 8x in space, and the transformer's 2x2 patches: sides are multiples of 16.
SIDE_MULTIPLE = 16


class GenerationConfig(Config):
    """What to generate and how to sample it: ``generate``'s settings, ``syncam-generate``'s options
    (each field names its flag), recorded in ``generation.json``. Checked here, once, for every caller;
    what depends on the loaded model (its VAE's factors, the cameras, the input video) is checked by
    ``generate``."""

    label: ClassVar[str] = "generation"

    prompt: str = setting(..., "Text prompt shared by all views.", "--prompt")
    negative_prompt: str = setting("", "Unconditional prompt for guidance.", "--negative-prompt")
    num_frames: int = setting(
        49,
        "Frames per video: 8N+1 (9, 17, ..., 49), which CogVideoX's VAE decodes exactly; CogVideoX is trained on 49.",
        "--frames",
    )
    height: int = setting(480, "Output height, a multiple of 16.", "--resolution")
    width: int = setting(720, "Output width, a multiple of 16.", "--resolution")
    steps: int = setting(50, f"Denoising steps (1 to {limits.SAMPLING_STEPS.default}).", "--steps", ge=1)
    guidance: float = setting(
        6.0, "Text classifier-free guidance scale for text-to-views (1 disables it).", "--guidance", ge=0
    )
    use_dynamic_cfg: bool = setting(
        True,
        "CogVideoX's cosine guidance schedule (use_dynamic_cfg); on by default, as the official SynCamMaster inference.",
        "--dynamic-cfg",
    )
    text_guidance: float = setting(7.5, "Text guidance scale in re-rendering mode.", "--text-guidance", ge=0)
    video_guidance: float = setting(1.8, "Video guidance scale in re-rendering mode.", "--video-guidance", ge=0)
    sampler: Literal["auto", "ddim", "dpm"] = setting(
        "auto",
        "'auto' (DDIM for CogVideoX-2B, DPM for 5B and 1.5, as the official inference), 'ddim' (CogVideoXDDIMScheduler) "
        "or 'dpm' (CogVideoXDPMScheduler).",
        "--sampler",
    )
    seed: int = setting(0, "Seed of the initial noise (drawn on the CPU, so results match across devices).", "--seed")
    batch_passes: bool = setting(
        True,
        "Run the guidance passes as one batch (faster) or one after another (less GPU memory; the same "
        "result up to float rounding).",
        "--batch-passes",
    )

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, v: int) -> int:
        # Encodable first (4k+1: the VAE's own rule), then decodable back to exactly that many (8N+1).
        msg = encodable_error(v) or decodable_error(v)
        if msg:
            raise ValueError(msg)
        return _at_most(v, limits.MODEL_FRAMES)

    @field_validator("height", "width")
    @classmethod
    def _side(cls, v: int) -> int:
        if v < SIDE_MULTIPLE or v % SIDE_MULTIPLE:
            raise ValueError(f"height and width must be positive multiples of {SIDE_MULTIPLE}")
        return _at_most(v, limits.MODEL_SIDE)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        return _at_most(v, limits.SAMPLING_STEPS)


def _at_most(value: int, limit: limits.Limit) -> int:
    problem = limit.over(value)
    if problem:
        raise ValueError(problem)
    return value


def resolve_sampler(components: Components, sampler: str) -> str:
    """``auto`` -> the official inference's choice: DDIM for CogVideoX-2B (sin-cos positions), DPM for RoPE models (5B, 1.5).

    The official script keys it on the model path (``"2b" in cogvideo_model_path``); the
    position embedding is what distinguishes 2B from the others in the configs.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if sampler != "auto":
        return sampler
    return "dpm" if components.transformer.config.use_rotary_positional_embeddings else "ddim"


def make_scheduler(components: Components, sampler: str) -> Any:
    """A fresh scheduler of the requested kind with the base model's scheduler config (schedulers keep state).

    ``timestep_spacing`` comes from that config ("trailing" in the released CogVideoX folders,
    which is what the official inference sets explicitly).
    """
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    kinds = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
    return kinds[resolve_sampler(components, sampler)].from_config(components.scheduler.config)


def combine_rerender(
    v_none: torch.Tensor, v_video: torch.Tensor, v_full: torch.Tensor, video_guidance: float, text_guidance: float
) -> torch.Tensor:
    """InstructPix2Pix-style text + video guidance for views 1..n-1; view 0 keeps the no-video pass's own prediction.

    Tensors are ``[1, n, F', C, h, w]``. In the video passes view 0 is the clean input (timestep 0),
    whose outputs were never trained; in the no-video pass it is a noisy view being denoised,
    which its unguided prediction steps.
    """
    v = v_none + video_guidance * (v_video - v_none) + text_guidance * (v_full - v_video)
    v[:, 0] = v_none[:, 0]
    return v


def _cfg_scale(guidance: float, dynamic: bool, t: int, steps: int) -> float:
    """The pipeline's guidance weight; with ``dynamic`` its cosine schedule (``use_dynamic_cfg``)."""
    if not dynamic:
        return guidance
    return 1 + guidance * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


@torch.no_grad()
def generate(
    components: Components,
    config: GenerationConfig,
    cameras: torch.Tensor | np.ndarray,
    input_video: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Generate ``n`` synchronized videos ``[n, F, 3, H, W]`` in [-1, 1] (float32, CPU).

    Args:
        components: from :func:`syncam_model.components.load_components` (adapter loaded).
        config: the prompt and every sampling setting (``GenerationConfig``; see its fields).
        cameras: ``(n, 12)`` relative poses (view 0 = identity, Contract 1).
        input_video: ``[F, 3, H, W]`` in [-1, 1]: re-render it from cameras 1..n-1
            (``config.text_guidance`` and ``config.video_guidance`` weigh the two conditions).
        progress: show a progress bar over the denoising steps.
    """
    c = GenerationConfig.parse(config)
    device, dtype = components.device, components.dtype
    cams = torch.as_tensor(
        np.asarray(cameras, dtype=np.float32) if not torch.is_tensor(cameras) else cameras, dtype=torch.float32
    )
    # 1. check inputs
    _check_inputs(components, c, cams, input_video)
    n = cams.shape[0]
    rerender = input_video is not None

    # 2. encode prompts
    text = encode_prompts(components, [c.negative_prompt, c.prompt])
    neg_text, pos_text = text[:1], text[1:]

    # 3. timesteps (a private copy: schedulers keep state)
    scheduler = make_scheduler(components, c.sampler)
    scheduler.set_timesteps(c.steps, device=device)
    timesteps = scheduler.timesteps

    # 4. latents: one generator for all views, drawn on the CPU for reproducibility
    plan = plan_latents(components, c.num_frames, c.height, c.width)
    gen = torch.Generator("cpu").manual_seed(int(c.seed))
    shape = (1, n, plan.latent_frames, plan.channels, plan.height, plan.width)
    latents = (torch.randn(shape, generator=gen, dtype=torch.float32) * scheduler.init_noise_sigma).to(
        device=device, dtype=dtype
    )
    cond = None
    if rerender:
        cond = encode_video(components, input_video[None], sample=False).to(dtype)  # posterior mean: deterministic
        if plan.padding_frames:
            # The 1.5 pipeline drops the first latent frames after sampling; pad the condition the same way.
            cond = torch.cat([cond[:, :1].expand(-1, plan.padding_frames, -1, -1, -1), cond], dim=1)

    # 5. batch layout of the guidance passes
    cams_b = cams.to(device=device, dtype=dtype)[None]
    do_cfg = (not rerender) and c.guidance > 1.0
    if rerender:
        batch_text = torch.cat([neg_text, neg_text, pos_text])  # (none,none), (video,none), (video,text)
        cond_mask = torch.zeros(3, n, dtype=torch.bool, device=device)
        cond_mask[1:, 0] = True
    elif do_cfg:
        batch_text, cond_mask = torch.cat([neg_text, pos_text]), None
    else:
        batch_text, cond_mask = pos_text, None

    # 6. denoising loop (eval mode for the loop, the caller's mode restored after)
    model = components.transformer
    was_training = model.training
    model.eval()
    try:
        latents = _denoise(
            model,
            scheduler,
            timesteps,
            latents,
            cond,
            batch_text,
            cams_b,
            cond_mask,
            gen,
            progress,
            c.batch_passes,
            guidance=c.guidance,
            do_cfg=do_cfg,
            dynamic=c.use_dynamic_cfg,
            text_guidance=c.text_guidance,
            video_guidance=c.video_guidance,
        )
    finally:
        model.train(was_training)

    # 7. decode, one view at a time (the VAE is the memory peak at real sizes)
    if rerender:
        latents[:, 0] = cond[0]
    latents = latents[:, :, plan.padding_frames :]
    videos = [decode_latents(components, latents[:, j]).float().cpu()[0] for j in range(n)]
    return torch.stack(videos)


def _denoise(
    model,
    scheduler,
    timesteps,
    latents,
    cond,
    batch_text,
    cams_b,
    cond_mask,
    gen,
    progress: bool,
    batch_passes: bool,
    *,
    guidance: float,
    do_cfg: bool,
    dynamic: bool,
    text_guidance: float,
    video_guidance: float,
) -> torch.Tensor:
    """The sampling loop: guided v for all views, then one scheduler step, for every timestep."""
    rerender = cond is not None
    passes, dtype, steps = batch_text.shape[0], latents.dtype, len(timesteps)
    old_pred = None
    for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
        x = latents.expand(passes, -1, -1, -1, -1, -1).clone()
        if rerender:
            x[1:, 0] = cond[0]
        x = scheduler.scale_model_input(x, t)
        v = _predict(model, x, batch_text, t, cams_b, cond_mask, batch_passes)
        if rerender:
            v = combine_rerender(*v.chunk(3), video_guidance=video_guidance, text_guidance=text_guidance)
        elif do_cfg:
            v_uncond, v_text = v.chunk(2)
            v = v_uncond + _cfg_scale(guidance, dynamic, int(t), steps) * (v_text - v_uncond)
        latents, old_pred = _step(scheduler, v, t, latents, i, timesteps, old_pred, gen)
        latents = latents.to(dtype)
    return latents


def _predict(
    model, x: torch.Tensor, text: torch.Tensor, t: torch.Tensor, cams: torch.Tensor, cond_mask, batch_passes: bool
) -> torch.Tensor:
    """The model's v for every guidance pass (rows of ``x``), in one batch or pass by pass."""
    passes = x.shape[0]
    timestep = t.reshape(1).expand(passes).to(x.device)
    cams = cams.expand(passes, -1, -1)
    if batch_passes or passes == 1:
        return model(x, text, timestep, cams, cond_mask).float()
    outs = [
        model(
            x[i : i + 1],
            text[i : i + 1],
            timestep[i : i + 1],
            cams[i : i + 1],
            None if cond_mask is None else cond_mask[i : i + 1],
        ).float()
        for i in range(passes)
    ]
    return torch.cat(outs)


def _step(
    scheduler: Any, v: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, i: int, timesteps, old_pred, gen
) -> tuple[torch.Tensor, Any]:
    """One scheduler step: CogVideoX's DDIM (deterministic), or its DPM-solver when a caller swaps that in."""
    from diffusers import CogVideoXDPMScheduler

    sample = latents.float()
    if isinstance(scheduler, CogVideoXDPMScheduler):
        prev_t = timesteps[i - 1] if i > 0 else None
        # diffusers' randn_tensor draws on the CPU generator and moves the noise to the sample's device.
        return scheduler.step(v, old_pred, t, prev_t, sample, generator=gen, return_dict=False)
    return scheduler.step(v, t, sample, return_dict=False)[0], None

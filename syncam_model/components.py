"""The base model's components: a local diffusers CogVideoX folder or tiny random models, and the VAE in CogVideoX's layout.

- :func:`load_components` -- a local diffusers CogVideoX folder (``transformer/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or ``"tiny"``
  (tiny random models, deterministic, for tests and benchmarks), with the
  transformer wrapped as a :class:`~syncam_model.transformer.MultiViewTransformer`;
- :func:`encode_video` / :func:`encode_video_dist` / :func:`sample_latents` /
  :func:`decode_latents` -- the VAE in CogVideoX's ``[B, F, C, h, w]`` layout.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from syncam_model.adapter_io import base_identity
from syncam_model.config import AdapterSpec
from syncam_model.frames import check_encodable, latent_frames
from syncam_model.transformer import MultiViewTransformer

log = logging.getLogger(__name__)

TINY = "tiny"

# Tiny random models: 2 layers, 2 heads x 16, 4 latent channels, a 4-level VAE with
# 8 channels, a 2-layer 32-d T5. Text length stays 226 so the sin-cos joint
# positional table has the real layout.
TINY_TRANSFORMER: dict[str, Any] = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=32,
    text_embed_dim=32,
    num_layers=2,
    sample_width=12,
    sample_height=8,
    sample_frames=9,
    patch_size=2,
    max_text_seq_length=226,
)
# What distinguishes the variants in the real configs (2B / 5B / 1.5-5B).
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "2b": dict(use_rotary_positional_embeddings=False),
    "5b": dict(use_rotary_positional_embeddings=True),
    "1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False),
}
# The transformer shapes of the released CogVideoX-2b and -5b (their diffusers configs on the Hub): overrides of the
# tiny config, for benchmarks at the real shapes with random weights (the variant adds RoPE etc.: TINY_VARIANTS).
RELEASED_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "2b": dict(
        num_layers=30,
        num_attention_heads=30,
        attention_head_dim=64,
        time_embed_dim=512,
        text_embed_dim=4096,
        in_channels=16,
        out_channels=16,
        sample_frames=49,
        sample_height=60,
        sample_width=90,
    ),
    "5b": dict(
        num_layers=42,
        num_attention_heads=48,
        attention_head_dim=64,
        time_embed_dim=512,
        text_embed_dim=4096,
        in_channels=16,
        out_channels=16,
        sample_frames=49,
        sample_height=60,
        sample_width=90,
    ),
}
TINY_VAE: dict[str, Any] = dict(
    block_out_channels=(8, 8, 8, 8),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=2,
    temporal_compression_ratio=4,
    scaling_factor=1.15258426,
)
TINY_T5: dict[str, Any] = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
# CogVideoX's released scheduler config (v-prediction, zero-terminal-SNR, SNR shift).
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    rescale_betas_zero_snr=True,
    snr_shift_scale=3.0,
)


@dataclass
class Components:
    """Everything a training step or a generation needs, loaded once.

    Attributes:
        transformer: the adapted transformer.
        vae: ``AutoencoderKLCogVideoX``.
        text_encoder: ``T5EncoderModel``.
        tokenizer: the T5 tokenizer.
        scheduler: ``CogVideoXDDIMScheduler`` (v-prediction).
        base_id: identity of the base model, recorded with adapters (see :func:`base_identity`).
        vae_scaling_factor: latents = VAE latents x this.
        vae_scale_factor_spatial / vae_scale_factor_temporal: pixel-to-latent compression (8, 4).
        max_text_length: text tokens the transformer expects (226).
        dtype, device: where the weights live.
    """

    transformer: MultiViewTransformer
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any
    base_id: dict[str, Any]
    vae_scaling_factor: float
    vae_scale_factor_spatial: int = 8
    vae_scale_factor_temporal: int = 4
    max_text_length: int = 226
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(F', C, h, w)`` of the latents of a ``num_frames x height x width`` video (``num_frames`` = 4k+1)."""
        check_video_size(num_frames, height, width, self.vae_scale_factor_spatial, self.vae_scale_factor_temporal)
        f = latent_frames(num_frames, self.vae_scale_factor_temporal)
        s = self.vae_scale_factor_spatial
        return f, int(self.transformer.config.in_channels), height // s, width // s


def check_video_size(num_frames: int, height: int, width: int, spatial: int = 8, temporal: int = 4) -> None:
    """Raise ValueError unless the VAE encodes ``num_frames`` (``syncam_model.frames``) and H, W are multiples of 2*spatial (one patch)."""
    check_encodable(num_frames, temporal)
    if height % (2 * spatial) or width % (2 * spatial) or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of {2 * spatial}, got {height}x{width}")


def tiny_transformer_config(variant: str = "2b", **overrides: Any) -> dict[str, Any]:
    """Config of a tiny ``CogVideoXTransformer3DModel``: ``variant`` is "2b" (sin-cos), "5b" (RoPE) or "1.5" (RoPE, temporal patches)."""
    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {sorted(TINY_VARIANTS)}")
    return {**TINY_TRANSFORMER, **TINY_VARIANTS[variant], **overrides}


def tiny_tokenizer():
    """A T5 tokenizer (the real ``T5Tokenizer`` class, Unigram model) over a tiny vocabulary built in memory."""
    from transformers import T5Tokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,-'"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + ch, -3.0) for ch in chars] + [(ch, -4.0) for ch in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _build_tiny(tiny_config: dict[str, Any] | None) -> tuple[nn.Module, nn.Module, nn.Module, Any, dict[str, Any]]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    cfg = dict(tiny_config or {})
    seed = int(cfg.pop("seed", 0))
    variant = str(cfg.pop("variant", "2b"))
    tcfg = tiny_transformer_config(variant, **cfg.pop("transformer", {}))
    vcfg = {**TINY_VAE, "latent_channels": tcfg["in_channels"], **cfg.pop("vae", {})}
    if cfg:
        raise ValueError(f"unknown tiny_config keys: {sorted(cfg)} (allowed: seed, variant, transformer, vae)")
    tokenizer = tiny_tokenizer()
    # A private RNG stream: "tiny" is the same model in every process, so adapters
    # trained on it load again in syncam-generate.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**tcfg)
        vae = AutoencoderKLCogVideoX(**vcfg)
        t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **{**TINY_T5, "d_model": tcfg["text_embed_dim"]}))
    return transformer, vae, t5, tokenizer, {"seed": seed, "variant": variant}


def _load_pretrained(path: Path, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, nn.Module, Any]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    missing = [
        sub for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / sub).is_dir()
    ]
    if missing:
        raise FileNotFoundError(
            f"{path}: not a diffusers CogVideoX folder, missing {', '.join(m + '/' for m in missing)}"
        )
    transformer = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
    vae = AutoencoderKLCogVideoX.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
    text_encoder = T5EncoderModel.from_pretrained(path / "text_encoder", torch_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    return transformer, vae, text_encoder, tokenizer


def write_tiny_pretrained(folder: str | os.PathLike, tiny_config: dict[str, Any] | None = None) -> Path:
    """Write the tiny random models as a diffusers CogVideoX folder (for tests of the ``--pretrained PATH`` path).

    The folder has the real layout (``transformer/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``, ``model_index.json``), so ``load_components(folder)``
    and diffusers' ``CogVideoXPipeline.from_pretrained(folder)`` both read it.
    """
    from diffusers import CogVideoXDDIMScheduler

    folder = Path(folder)
    transformer, vae, text_encoder, tokenizer, _ = _build_tiny(tiny_config)
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    CogVideoXDDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "CogVideoXPipeline",
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def load_components(
    pretrained: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tiny_config: dict[str, Any] | None = None,
    adapter: AdapterSpec | None = None,
) -> Components:
    """Load the base model and wrap its transformer with fresh (identity) multi-view modules.

    Args:
        pretrained: a local diffusers CogVideoX folder, or ``"tiny"`` for tiny
            random models (same weights in every process for a given ``tiny_config``).
        dtype: weight dtype (float32 or bfloat16; fp16 is known to give NaNs with CogVideoX).
        device: where to put the models.
        tiny_config: for ``"tiny"`` only: ``{"variant": "2b"|"5b"|"1.5", "seed": int,
            "transformer": {...overrides}, "vae": {...overrides}}``.
        adapter: the structure of the multi-view modules (default ``AdapterSpec()``; an
            adapter file's own is ``adapter_spec_of(read_adapter_meta(path))``).

    The VAE and text encoder are frozen and in eval mode; the transformer's
    base weights are frozen, its new modules trainable (see ``set_trainable``).
    """
    from diffusers import CogVideoXDDIMScheduler

    device = torch.device(device)
    if str(pretrained) == TINY:
        transformer, vae, text_encoder, tokenizer, tiny_meta = _build_tiny(tiny_config)
        scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
        name: str = TINY
    else:
        if tiny_config:
            raise ValueError("tiny_config is only for pretrained='tiny'")
        path = Path(pretrained).expanduser()
        transformer, vae, text_encoder, tokenizer = _load_pretrained(path, dtype)
        scheduler = CogVideoXDDIMScheduler.from_pretrained(path, subfolder="scheduler")
        name, tiny_meta = str(path.resolve()), None
    for module in (transformer, vae, text_encoder):
        # from_pretrained already applied dtype; casting a diffusers model again only logs warnings.
        if module.dtype != dtype:
            module.to(dtype=dtype)
        module.to(device=device)
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    base_id = base_identity(transformer, name, tiny_meta)
    mv = MultiViewTransformer(transformer, adapter)
    temporal = int(getattr(vae.config, "temporal_compression_ratio", 4))
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    return Components(
        transformer=mv,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        base_id=base_id,
        vae_scaling_factor=float(vae.config.scaling_factor),
        vae_scale_factor_spatial=spatial,
        vae_scale_factor_temporal=temporal,
        max_text_length=int(transformer.config.max_text_seq_length),
        dtype=dtype,
        device=device,
    )


# --------------------------------------------------------------------------- VAE


def _vae_input(components: Components, video: torch.Tensor) -> torch.Tensor:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B, F, 3, H, W] in [-1, 1], got shape {tuple(video.shape)}")
    _, f, _, h, w = video.shape
    check_video_size(f, h, w, components.vae_scale_factor_spatial, components.vae_scale_factor_temporal)
    return video.to(device=components.device, dtype=components.vae.dtype).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def encode_video_dist(components: Components, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mean, logvar)`` of the VAE, each ``[B, F', C, h, w]``, unscaled.

    For a latent cache: store these and draw training latents with
    :func:`sample_latents` (``(mean + exp(logvar / 2) * eps) * vae_scaling_factor``),
    which is what :func:`encode_video` computes in one go.
    """
    dist = components.vae.encode(_vae_input(components, video)).latent_dist
    return dist.mean.permute(0, 2, 1, 3, 4).contiguous(), dist.logvar.permute(0, 2, 1, 3, 4).contiguous()


def sample_latents(
    mean: torch.Tensor, logvar: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A scaled latent drawn from a cached posterior (same math as diffusers' DiagonalGaussianDistribution.sample)."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps) * scaling_factor


@torch.no_grad()
def encode_video(
    components: Components, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
) -> torch.Tensor:
    """Scaled latents ``[B, F', C, h, w]`` of a video ``[B, F, 3, H, W]`` in [-1, 1] (a posterior sample, or its mean)."""
    mean, logvar = encode_video_dist(components, video)
    if not sample:
        return mean * components.vae_scaling_factor
    return sample_latents(mean, logvar, components.vae_scaling_factor, generator)


@torch.no_grad()
def decode_latents(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """Video ``[B, F, 3, H, W]`` in [-1, 1] from scaled latents ``[B, F', C, h, w]``."""
    z = (
        latents.to(device=components.device, dtype=components.vae.dtype).permute(0, 2, 1, 3, 4)
        / components.vae_scaling_factor
    )
    video = components.vae.decode(z).sample
    return video.clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)

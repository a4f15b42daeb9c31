"""Build or load CogVideoX components, wrap the transformer for n views, save and load adapter weights.

Entry points (the API the trainer and ``syncam-generate`` use):

- :func:`load_components` -- a local diffusers CogVideoX folder (``transformer/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or ``"tiny"``
  (tiny random models, deterministic, for tests and benchmarks);
- :class:`MultiViewTransformer` -- the base transformer with a
  :class:`~syncam_model.modules.MultiViewModule` in every block;
- :func:`encode_video` / :func:`encode_video_dist` / :func:`sample_latents` /
  :func:`decode_latents` -- the VAE in CogVideoX's ``[B, F, C, h, w]`` layout;
- :func:`save_adapter` / :func:`load_adapter` -- only the new modules, as
  safetensors with the base model's identity in the header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from syncam_model.camera_input import META_KEY as CAMERA_RULE_KEY
from syncam_model.camera_input import CameraRule, CameraRuleError, check_rule, rule_of
from syncam_model.config import AdapterSpec
from syncam_model.frames import check_encodable, latent_frames, patched_frames, temporal_padding
from syncam_model.modules import CAMERA_DIM, MULTIVIEW_KEY, MultiViewContext, adapt_block, multiview_modules

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "syncam-multiview-adapter"
# 2: camera embedding after the norm (was before), projector / attention_text / position in adapter_config, camera_rule.
ADAPTER_FORMAT_VERSION = 2
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


class AdapterError(ValueError):
    """An adapter file that cannot be loaded into this transformer."""


# --------------------------------------------------------------------------- transformer


class MultiViewTransformer(nn.Module):
    """A diffusers ``CogVideoXTransformer3DModel`` with SynCamMaster's multi-view module in every block.

    ``forward`` takes n views per sample and runs the base model on all views
    as one batch of ``B * n``; the blocks couple the views frame by frame. At
    initialization the result equals the base model applied to each view alone.
    """

    def __init__(self, base: nn.Module, spec: AdapterSpec | None = None) -> None:
        super().__init__()
        self.base = base
        self.spec = spec or AdapterSpec()
        for block in base.transformer_blocks:
            adapt_block(block, self.spec)
        self.set_trainable(base=False)

    # ---- configuration ------------------------------------------------------
    @property
    def config(self) -> Any:
        """The base transformer's diffusers config."""
        return self.base.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def adapter_config(self) -> dict[str, Any]:
        """Shapes of the new modules, recorded with saved adapters."""
        c = self.base.config
        return {
            "camera_dim": CAMERA_DIM,
            "num_layers": int(c.num_layers),
            "dim": int(c.num_attention_heads * c.attention_head_dim),
            "heads": int(c.num_attention_heads),
            "time_embed_dim": int(c.time_embed_dim),
            "rope": bool(c.use_rotary_positional_embeddings),
            # Since format 2 the camera embedding is added after the norm and modulation (both official releases).
            "camera_input": "after_norm",
            **self.spec.model_dump(),
        }

    # ---- parameters -----------------------------------------------------------
    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the new multi-view modules only."""
        for _, module in multiview_modules(self.base):
            yield from module.parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The new modules' tensors, keyed by their name inside the base transformer."""
        return {k: v for k, v in self.base.state_dict().items() if ".multiview." in k}

    def set_trainable(self, base: bool = False) -> None:
        """Make the new modules trainable; the base weights too only when ``base`` is True."""
        self.base.requires_grad_(base)
        for p in self.adapter_parameters():
            p.requires_grad_(True)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block (with its multi-view module) in backward instead of storing activations."""
        self.base.enable_gradient_checkpointing()

    # ---- forward -------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        timestep: torch.Tensor,
        cameras: torch.Tensor,
        video_cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model prediction (v for CogVideoX) for every view.

        Args:
            latents: ``[B, n, F, C, h, w]`` scaled VAE latents (CogVideoX layout per view).
            text: ``[B, L, D]`` T5 embeddings, shared by the n views.
            timestep: ``[B]`` integer timesteps, shared by the n views.
            cameras: ``[B, n, 12]`` relative poses (view 0 = identity, Contract 1).
            video_cond_mask: optional ``[B, n]`` bool; True marks a view whose
                latent is a clean conditioning video (novel-view re-rendering).
                Such a view is given timestep 0, the base model's "clean" input;
                the others keep ``timestep``.

        Returns:
            ``[B, n, F, C, h, w]``.
        """
        b, n, f, c, h, w = self._check_inputs(latents, text, timestep, cameras)
        flat = latents.reshape(b * n, f, c, h, w)
        text_views = text.repeat_interleave(n, dim=0)
        t = timestep.to(latents.device).reshape(b).repeat_interleave(n)
        if video_cond_mask is not None:
            mask = video_cond_mask.to(device=latents.device, dtype=torch.bool).reshape(b * n)
            t = torch.where(mask, torch.zeros_like(t), t)
        cfg = self.base.config
        p = cfg.patch_size
        ctx = MultiViewContext(
            num_views=n,
            cameras=cameras.reshape(b, n, CAMERA_DIM),
            tokens_per_frame=(h // p) * (w // p),
            rotary_emb=self.view_rotary_emb(n, h, w) if cfg.use_rotary_positional_embeddings else None,
        )
        out = self.base(
            hidden_states=flat,
            encoder_hidden_states=text_views,
            timestep=t,
            image_rotary_emb=self.base_rotary_emb(f, h, w) if cfg.use_rotary_positional_embeddings else None,
            attention_kwargs={MULTIVIEW_KEY: ctx},
            return_dict=False,
            **self._ofs_kwargs(b * n, latents),
        )[0]
        if ctx.calls < len(self.base.transformer_blocks):
            # e.g. a diffusers version whose checkpointing call drops attention_kwargs: fail loudly, never train silently without the modules
            raise RuntimeError(
                f"multi-view context reached {ctx.calls} of {len(self.base.transformer_blocks)} blocks; "
                "this diffusers version does not pass attention_kwargs to every block"
            )
        return out.reshape(b, n, *out.shape[1:])

    def forward_base(self, latents: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The unadapted base model on one view's ``[B, F, C, h, w]`` latents (the new modules are skipped)."""
        cfg = self.base.config
        _, f, _, h, w = latents.shape
        return self.base(
            hidden_states=latents,
            encoder_hidden_states=text,
            timestep=timestep,
            image_rotary_emb=self.base_rotary_emb(f, h, w) if cfg.use_rotary_positional_embeddings else None,
            return_dict=False,
            **self._ofs_kwargs(latents.shape[0], latents),
        )[0]

    def _ofs_kwargs(self, batch: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """CogVideoX 1.5 I2V's offset embedding input; its pipeline always passes 2.0."""
        if getattr(self.base, "ofs_embedding", None) is None:
            return {}
        return {"ofs": torch.full((batch,), 2.0, device=like.device, dtype=like.dtype)}

    def _check_inputs(self, latents, text, timestep, cameras) -> tuple[int, ...]:
        if latents.ndim != 6:
            raise ValueError(f"latents must be [B, n, F, C, h, w], got shape {tuple(latents.shape)}")
        b, n, f, c, h, w = latents.shape
        cfg = self.base.config
        if c != cfg.in_channels:
            raise ValueError(f"latents have {c} channels, the transformer expects {cfg.in_channels}")
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {cfg.patch_size}")
        if temporal_padding(f, cfg.patch_size_t):
            raise ValueError(
                f"{f} latent frames is not divisible by patch_size_t={cfg.patch_size_t} (CogVideoX 1.5); "
                "pad the latents as the CogVideoX 1.5 pipeline does"
            )
        if cfg.use_learned_positional_embeddings and (h != cfg.sample_height or w != cfg.sample_width):
            raise ValueError(
                f"this base model has learned positional embeddings for {cfg.sample_height}x{cfg.sample_width} latents; got {h}x{w}"
            )
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_embed_dim:
            raise ValueError(f"text must be [{b}, L, {cfg.text_embed_dim}], got {tuple(text.shape)}")
        if not cfg.use_rotary_positional_embeddings and text.shape[1] != cfg.max_text_seq_length:
            raise ValueError(
                f"sin-cos CogVideoX models need exactly {cfg.max_text_seq_length} text tokens (the positional table's layout), got {text.shape[1]}"
            )
        if timestep.numel() != b:
            raise ValueError(f"timestep must have {b} entries (one per sample), got shape {tuple(timestep.shape)}")
        if tuple(cameras.shape) not in ((b, n, CAMERA_DIM), (b, n, 3, 4)):
            raise ValueError(f"cameras must be [{b}, {n}, 12], got {tuple(cameras.shape)}")
        return b, n, f, c, h, w

    # ---- rotary embeddings ----------------------------------------------------
    def _rotary(self, temporal: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CogVideoX's 3-D RoPE over ``temporal x (h/p) x (w/p)``, computed exactly as its pipelines do."""
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        cfg = self.base.config
        p = cfg.patch_size
        grid_h, grid_w = h // p, w // p
        base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
        if cfg.patch_size_t is None:
            crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
            cos, sin = get_3d_rotary_pos_embed(
                embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=(grid_h, grid_w), temporal_size=temporal, device=self.device
            )
        else:
            cos, sin = get_3d_rotary_pos_embed(
                embed_dim=cfg.attention_head_dim,
                crops_coords=None,
                grid_size=(grid_h, grid_w),
                temporal_size=temporal,
                grid_type="slice",
                max_size=(base_h, base_w),
                device=self.device,
            )
        return cos.to(self.dtype), sin.to(self.dtype)

    def base_rotary_emb(self, frames: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's RoPE for one view of ``frames`` latent frames."""
        return self._rotary(patched_frames(frames, self.base.config.patch_size_t), h, w)

    def view_rotary_emb(self, num_views: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE for the cross-view sequence of one frame: the view index takes the temporal slot."""
        return self._rotary(num_views, h, w)


# --------------------------------------------------------------------------- components


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

    missing = [sub for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"{path}: not a diffusers CogVideoX folder, missing {', '.join(m + '/' for m in missing)}")
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


# --------------------------------------------------------------------------- base identity

# Tensors whose statistics fingerprint the base weights (present in every CogVideoX transformer).
_FINGERPRINT_KEYS = ("patch_embed.text_proj.weight", "transformer_blocks.0.attn1.to_q.weight", "proj_out.weight")


def _config_for_hash(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def base_identity(transformer: nn.Module, pretrained: str, tiny: dict[str, Any] | None = None) -> dict[str, Any]:
    """Identify a base transformer: where it came from, a hash of its config and statistics of a few weights.

    The statistics (mean and std in float64) survive a dtype change of the
    weights only approximately, so :func:`check_base` compares them with a tolerance.
    """
    config = _config_for_hash(transformer.config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    state = transformer.state_dict()
    stats = {}
    for key in _FINGERPRINT_KEYS:
        t = state[key].detach().to(device="cpu", dtype=torch.float64)
        stats[key] = [float(t.mean()), float(t.std())]
    out = {
        "pretrained": pretrained,
        "model_class": type(transformer).__name__,
        "config_sha256": hashlib.sha256(blob).hexdigest(),
        "config": json.loads(json.dumps(config, default=str)),
        "weight_stats": stats,
    }
    if tiny is not None:
        out["tiny"] = tiny
    return out


def check_base(saved: dict[str, Any], current: dict[str, Any], source: str = "adapter") -> None:
    """Raise AdapterError if the adapter's recorded base is not ``current`` (different config or different weights)."""
    if saved.get("config_sha256") != current.get("config_sha256"):
        diff = _config_diff(saved.get("config", {}), current.get("config", {}))
        raise AdapterError(
            f"{source}: trained on a different base model ({saved.get('pretrained')!r}, config differs: {diff}); "
            f"the loaded base is {current.get('pretrained')!r}"
        )
    for key, (mean, std) in saved.get("weight_stats", {}).items():
        cur = current.get("weight_stats", {}).get(key)
        if cur is None or abs(cur[0] - mean) > 1e-3 * abs(std) + 1e-6 or abs(cur[1] - std) > 1e-2 * abs(std) + 1e-6:
            raise AdapterError(
                f"{source}: trained on base {saved.get('pretrained')!r} whose weights differ from the loaded base "
                f"{current.get('pretrained')!r} (same config, different {key})"
            )
    if saved.get("pretrained") != current.get("pretrained"):
        log.info("%s: base model path differs (%s vs %s) but config and weights match", source, saved.get("pretrained"), current.get("pretrained"))


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:6]) or "unknown"


# --------------------------------------------------------------------------- adapter I/O


def save_adapter(transformer: MultiViewTransformer, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write the multi-view modules' weights to ``path`` (safetensors), atomically.

    ``meta`` must hold ``"base_id"`` (``Components.base_id``) and the camera rule
    (``CameraRule(...).to_meta()``); everything in it is stored as JSON in the
    safetensors header under ``"syncam"``, together with the adapter config, so a
    checkpoint says which base it belongs to and what its camera input means.
    """
    from safetensors.torch import save_file

    if "base_id" not in meta:
        raise ValueError("save_adapter: meta must contain 'base_id' (Components.base_id)")
    if CAMERA_RULE_KEY not in meta:
        raise ValueError(f"save_adapter: meta must contain {CAMERA_RULE_KEY!r} (CameraRule(...).to_meta()): what the camera input means")
    CameraRule.model_validate(meta[CAMERA_RULE_KEY])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in transformer.adapter_state_dict().items()}
    header = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "adapter_config": transformer.adapter_config(),
        **meta,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"syncam": json.dumps(header, default=str)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_adapter_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata stored in an adapter file's header."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("syncam")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise AdapterError(f"{path}: no 'syncam' metadata in the safetensors header; not a SynCam adapter")
    meta = json.loads(raw)
    if meta.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path}: header format is {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
    version = meta.get("format_version")
    if version != ADAPTER_FORMAT_VERSION:
        why = " (format 1 added the camera embedding before the norm; retrain the adapter)" if version == 1 else ""
        raise AdapterError(f"{path}: adapter format_version {version!r}, this SynCam reads {ADAPTER_FORMAT_VERSION}{why}")
    return meta


def adapter_spec_of(meta: dict[str, Any], source: str = "adapter") -> AdapterSpec:
    """The module structure recorded in an adapter's metadata (build the transformer with it before loading)."""
    cfg = meta.get("adapter_config", {})
    try:
        return AdapterSpec.model_validate({k: cfg[k] for k in AdapterSpec.model_fields if k in cfg})
    except ValueError as exc:
        raise AdapterError(f"{source}: unreadable adapter_config {cfg!r} ({exc})") from None


def load_adapter(
    transformer: MultiViewTransformer,
    path: str | os.PathLike,
    base_id: dict[str, Any],
    *,
    camera_rule: CameraRule | None = None,
    allow_base_mismatch: bool = False,
) -> dict[str, Any]:
    """Load multi-view weights saved by :func:`save_adapter` into ``transformer``; returns the stored metadata.

    Raises AdapterError when the file was trained on another base model
    (config hash or weight fingerprint differ; ``allow_base_mismatch`` turns that
    into a warning), with another module structure (``adapter_config``: projector,
    attention_text, position), with a camera rule other than ``camera_rule`` (when
    given), or when its tensors do not match the modules' names and shapes.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_adapter_meta(path)
    spec = adapter_spec_of(meta, str(path))
    if spec != transformer.spec:
        diff = ", ".join(f"{k}: file {getattr(spec, k)!r}, model {getattr(transformer.spec, k)!r}"
                         for k in AdapterSpec.model_fields if getattr(spec, k) != getattr(transformer.spec, k))
        raise AdapterError(f"{path}: built with another module structure ({diff}); build the transformer with the file's adapter_config")
    try:
        if camera_rule is not None:
            check_rule(meta, camera_rule, str(path))
        else:
            rule_of(meta, str(path))
    except CameraRuleError as exc:
        raise AdapterError(str(exc)) from None
    try:
        check_base(meta.get("base_id", {}), base_id, source=str(path))
    except AdapterError as exc:
        if not allow_base_mismatch:
            raise
        log.warning("%s (loading anyway: allow_base_mismatch)", exc)
    tensors = load_file(str(path))
    own = transformer.adapter_state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise AdapterError(f"{path}: tensor names do not match this transformer (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = [k for k in own if own[k].shape != tensors[k].shape]
    if bad:
        raise AdapterError(f"{path}: shape mismatch for {bad[0]}: file {tuple(tensors[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}")
    result = transformer.base.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise AdapterError(f"{path}: unexpected tensors {result.unexpected_keys[:3]}")
    return meta


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
    z = latents.to(device=components.device, dtype=components.vae.dtype).permute(0, 2, 1, 3, 4) / components.vae_scaling_factor
    video = components.vae.decode(z).sample
    return video.clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)

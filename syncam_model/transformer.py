"""SynCamMaster's multi-view transformer: a diffusers CogVideoX transformer with a multi-view module in every block.

``MultiViewTransformer.forward`` takes n views per sample and runs the base
model on all views as one batch; the blocks (``syncam_model.modules``) couple
the views frame by frame. Loading the base model is ``syncam_model.components``;
saving and loading the new modules' weights is ``syncam_model.adapter_io``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from syncam_model.config import AdapterSpec
from syncam_model.frames import patched_frames, temporal_padding
from syncam_model.modules import CAMERA_DIM, MULTIVIEW_KEY, MultiViewContext, adapt_block, multiview_modules

log = logging.getLogger(__name__)


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
                embed_dim=cfg.attention_head_dim,
                crops_coords=crops,
                grid_size=(grid_h, grid_w),
                temporal_size=temporal,
                device=self.device,
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

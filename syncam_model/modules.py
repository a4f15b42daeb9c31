"""SynCamMaster's multi-view synchronization module and the CogVideoX block that hosts it.

Each ``CogVideoXBlock`` of a diffusers ``CogVideoXTransformer3DModel`` gets one
:class:`MultiViewModule`. By default it runs after the block's own attention
residual and before its feed-forward (``position="after_attention"``, where the
official Wan2.1 release puts it: ``diffsynth/models/wan_video_dit.py``,
``DiTBlock.forward``, between self-attention and cross-attention)::

    x = x + gate_msa * attn1(norm1(x, text))              # the block, unchanged
    y = norm(x) * (1 + scale(t)) + shift(t)                # like norm1's video half, from temb
    y = y + camera_encoder(rel_pose[view])                 # every token of the view
    a = attn(y over the n*h*w tokens of one frame)         # copy of attn1 (+ all views' text: attention_text)
    x = x + gate(t) * proj(a)                              # proj = Linear(0) (or ReLU -> Linear(0))
    x = x + gate_ff * ff(norm2(x, text))                   # the block, unchanged

The camera embedding is added **after** the norm and the modulation, as both
official releases do (CogVideoX release: ``syncammaster/transformer_3d.py``,
``CogVideoXBlock.forward``: ``norm_hidden_states + pose_embedding`` after
``norm_syncam``; Wan release: ``input_x = modulate(norm_mvs(x), ...) + cam_emb``).
Added before the norm, the camera signal would be divided by each token's
standard deviation and lose its mean (CogVideoX's hidden states are large).

``position="block_input"`` runs the module first in the block, before ``norm1``
(the official CogVideoX release's placement), and ``attention_text="all_views"``
lets the cross-view attention also attend to the text tokens of all n views
(normalized and modulated like ``CogVideoXLayerNormZero``'s text half), as that
release does; the text outputs of that attention are discarded there and here.

``camera_encoder`` and the projector's Linear start at zero, so a freshly
adapted model computes exactly what the base model computes on each view alone.
Both official releases use a plain zero-initialized ``Linear`` as projector
(``projector = nn.Linear(dim, dim)``); ``projector="relu_linear"`` puts a ReLU
before it (an earlier SynCam default, from the paper's "Linear + ReLU" wording;
the ReLU discards the negative half of the attention output).

The module runs in its own parameters' dtype (float32 master weights while the
frozen base is bfloat16) and returns the block's dtype.

Per-view inputs reach the blocks through ``attention_kwargs[MULTIVIEW_KEY]``:
the diffusers transformer passes ``attention_kwargs`` to every block, also
positionally under gradient checkpointing, so the block and its module are
checkpointed (and recomputed) together. The key is removed before the block's
own ``Attention`` sees the kwargs (it would drop unknown keys with a warning).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from syncam_model.config import AdapterSpec

MULTIVIEW_KEY = "syncam_multiview"
CAMERA_DIM = 12


@dataclass
class MultiViewContext:
    """What every adapted block needs to know about the current multi-view batch.

    Attributes:
        num_views: n; the block's batch is ``B * n`` with views innermost.
        cameras: ``[B, n, 12]`` relative poses (Contract 1).
        tokens_per_frame: ``h' * w'`` patch tokens in one (latent) frame.
        rotary_emb: ``(cos, sin)`` of shape ``[n * h' * w', head_dim]`` for RoPE
            models (view index in the temporal slot), ``None`` for sin-cos models.
    """

    num_views: int
    cameras: torch.Tensor
    tokens_per_frame: int
    rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None
    # Incremented by every module that runs, so the caller can verify the context reached all blocks.
    calls: int = 0


class MultiViewModule(nn.Module):
    """Camera encoder + cross-view attention + zero-initialized projector for one block.

    Build it with :meth:`from_block` so its attention and norm start as copies
    of the host block's own (the Wan release's initialization: ``mvs_attn``
    loads ``self_attn``'s weights, ``modulation_mvs`` the first three chunks of
    the block's modulation; ``train_syncammaster.py``, ``LightningModelForTrain``).
    """

    def __init__(
        self,
        dim: int,
        time_embed_dim: int,
        attention: nn.Module,
        spec: AdapterSpec | None = None,
        norm_eps: float = 1e-5,
        norm_elementwise_affine: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.spec = spec or AdapterSpec()
        self.camera_encoder = nn.Linear(CAMERA_DIM, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        # shift, scale, gate from the timestep embedding, like CogVideoXLayerNormZero's video half.
        self.modulation = nn.Linear(time_embed_dim, 3 * dim)
        # enc_shift, enc_scale for the text tokens, like CogVideoXLayerNormZero's text half (its enc_gate is
        # unused: the attention's text outputs are discarded, as in the official CogVideoX release).
        self.text_modulation = nn.Linear(time_embed_dim, 2 * dim) if self.spec.attention_text == "all_views" else None
        self.attn = attention
        linear = nn.Linear(dim, dim)
        self.proj = linear if self.spec.projector == "linear" else nn.Sequential(nn.ReLU(), linear)
        for layer in (self.camera_encoder, linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def projector_linear(self) -> nn.Linear:
        """The zero-initialized Linear of the projector (whatever its form)."""
        return self.proj if isinstance(self.proj, nn.Linear) else self.proj[-1]

    @classmethod
    def from_block(cls, block: nn.Module, spec: AdapterSpec | None = None) -> MultiViewModule:
        """A module whose attention, qk-norms and modulated norm are copies of ``block``'s."""
        norm1 = block.norm1
        dim = norm1.norm.normalized_shape[0]
        time_embed_dim = norm1.linear.in_features
        attention = copy.deepcopy(block.attn1)
        module = cls(
            dim=dim,
            time_embed_dim=time_embed_dim,
            attention=attention,
            spec=spec,
            norm_eps=norm1.norm.eps,
            norm_elementwise_affine=norm1.norm.elementwise_affine,
        )
        ref = block.attn1.to_q.weight
        module.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            # norm1.linear's output is (shift, scale, gate, enc_shift, enc_scale, enc_gate) (CogVideoXLayerNormZero.forward).
            weight, bias = norm1.linear.weight, norm1.linear.bias
            for lin, rows in (
                (module.modulation, slice(0, 3 * dim)),
                (module.text_modulation, slice(3 * dim, 5 * dim)),
            ):
                if lin is None:
                    continue
                lin.weight.copy_(weight[rows])
                if bias is not None:
                    lin.bias.copy_(bias[rows])
                else:
                    lin.bias.zero_()
            if norm1.norm.elementwise_affine:
                module.norm.weight.copy_(norm1.norm.weight)
                if norm1.norm.bias is not None:
                    module.norm.bias.copy_(norm1.norm.bias)
        return module

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        ctx: MultiViewContext,
    ) -> torch.Tensor:
        """``hidden_states [B*n, F*hw, d]``, text ``[B*n, L, d]``, ``temb [B*n, T]`` -> video tokens, views coupled per frame."""
        ctx.calls += 1
        bn, seq, dim = hidden_states.shape
        n, hw = ctx.num_views, ctx.tokens_per_frame
        if bn % n or seq % hw:
            raise ValueError(
                f"multi-view block got {bn} samples x {seq} tokens, not divisible by {n} views x {hw} tokens per frame"
            )
        b, frames = bn // n, seq // hw
        # Compute in the module's own dtype (float32 master weights next to a bfloat16 base).
        dtype = self.modulation.weight.dtype
        x = hidden_states.to(dtype).view(b, n, frames, hw, dim)
        emb = F.silu(temb.to(dtype))

        shift, scale, gate = self.modulation(emb).view(b, n, 1, 1, 3 * dim).chunk(3, dim=-1)
        cams = ctx.cameras.to(device=x.device, dtype=dtype).reshape(b, n, CAMERA_DIM)
        y = self.norm(x) * (1 + scale) + shift + self.camera_encoder(cams)[:, :, None, None, :]
        # One attention sequence per (sample, frame): the n views' tokens of that frame.
        y = y.permute(0, 2, 1, 3, 4).reshape(b * frames, n * hw, dim)
        text = self._text_tokens(encoder_hidden_states, emb, b, n, frames, dtype)
        # The copied diffusers Attention with its CogVideoXAttnProcessor2_0: [text, video] jointly, RoPE on video only.
        a, _ = self.attn(hidden_states=y, encoder_hidden_states=text, image_rotary_emb=ctx.rotary_emb)
        a = a.view(b, frames, n, hw, dim).permute(0, 2, 1, 3, 4)

        out = gate * self.proj(a)
        return hidden_states + out.reshape(bn, seq, dim).to(hidden_states.dtype)

    def _text_tokens(
        self, text: torch.Tensor, emb: torch.Tensor, b: int, n: int, frames: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """``[b*frames, n*L, d]``: all views' normalized, modulated text tokens for every frame (or none)."""
        if self.text_modulation is None:
            return emb.new_zeros(b * frames, 0, self.dim)
        length = text.shape[1]
        enc_shift, enc_scale = self.text_modulation(emb).view(b, n, 1, 2 * self.dim).chunk(2, dim=-1)
        t = self.norm(text.to(dtype).view(b, n, length, self.dim)) * (1 + enc_scale) + enc_shift
        # The official release: rearrange "(b v) n d -> b (v n) d", then repeat per frame.
        t = t.reshape(b, 1, n * length, self.dim).expand(b, frames, n * length, self.dim)
        return t.reshape(b * frames, n * length, self.dim)


def _block_class():
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    return CogVideoXBlock


def _multiview_block_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``CogVideoXBlock.forward`` (diffusers 0.42) with the multi-view module at its ``spec.position``.

    Same signature and positional order as the original, so the transformer's
    loop and its gradient-checkpointing call need no change. Without a
    :class:`MultiViewContext` in ``attention_kwargs`` it is the original block
    (``tests/test_model.py`` compares it with an unpatched diffusers block).
    """
    attention_kwargs = dict(attention_kwargs or {})
    ctx: MultiViewContext | None = attention_kwargs.pop(MULTIVIEW_KEY, None)
    position = self.multiview.spec.position if ctx is not None else None
    text_seq_length = encoder_hidden_states.size(1)

    if position == "block_input":
        hidden_states = self.multiview(hidden_states, encoder_hidden_states, temb, ctx)

    norm_hidden_states, norm_encoder_hidden_states, gate_msa, enc_gate_msa = self.norm1(
        hidden_states, encoder_hidden_states, temb
    )
    attn_hidden_states, attn_encoder_hidden_states = self.attn1(
        hidden_states=norm_hidden_states,
        encoder_hidden_states=norm_encoder_hidden_states,
        image_rotary_emb=image_rotary_emb,
        **attention_kwargs,
    )
    hidden_states = hidden_states + gate_msa * attn_hidden_states
    encoder_hidden_states = encoder_hidden_states + enc_gate_msa * attn_encoder_hidden_states

    if position == "after_attention":
        hidden_states = self.multiview(hidden_states, encoder_hidden_states, temb, ctx)

    norm_hidden_states, norm_encoder_hidden_states, gate_ff, enc_gate_ff = self.norm2(
        hidden_states, encoder_hidden_states, temb
    )
    norm_hidden_states = torch.cat([norm_encoder_hidden_states, norm_hidden_states], dim=1)
    ff_output = self.ff(norm_hidden_states)
    hidden_states = hidden_states + gate_ff * ff_output[:, text_seq_length:]
    encoder_hidden_states = encoder_hidden_states + enc_gate_ff * ff_output[:, :text_seq_length]
    return hidden_states, encoder_hidden_states


_MV_CLASSES: dict[type, type] = {}


def _multiview_class(base_cls: type) -> type:
    """A subclass of the block's class whose forward runs the multi-view module (cached per base class)."""
    if base_cls not in _MV_CLASSES:
        _MV_CLASSES[base_cls] = type(
            "MultiView" + base_cls.__name__, (base_cls,), {"forward": _multiview_block_forward}
        )
    return _MV_CLASSES[base_cls]


def adapt_block(block: nn.Module, spec: AdapterSpec | None = None) -> nn.Module:
    """Add a :class:`MultiViewModule` to ``block`` in place (as ``block.multiview``).

    The block keeps its own parameters and their names, so the base model's
    state dict is unchanged and the new weights all live under ``*.multiview.*``.
    Its class becomes a subclass with the multi-view forward (instead of a
    wrapper module) for the same reason.
    """
    if hasattr(block, "multiview"):
        return block
    if not isinstance(block, _block_class()):
        raise TypeError(f"expected a diffusers CogVideoXBlock, got {type(block).__name__}")
    block.multiview = MultiViewModule.from_block(block, spec)
    block.__class__ = _multiview_class(type(block))
    return block


def multiview_modules(model: nn.Module) -> Iterator[tuple[str, MultiViewModule]]:
    """``(qualified name, module)`` of every multi-view module inside ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, MultiViewModule):
            yield name, module

"""SynCamMaster's multi-view synchronization module and the CogVideoX block that hosts it.

Each ``CogVideoXBlock`` of a diffusers ``CogVideoXTransformer3DModel`` gets one
:class:`MultiViewModule`, run after the block's own attention residual and
before its feed-forward::

    x = x + gate_msa * attn1(norm1(x, text))            # the block, unchanged
    y = x + camera_encoder(rel_pose[view])               # every token of the view
    y = norm(y) * (1 + scale(t)) + shift(t)              # like norm1, from temb
    a = attn(y over the n*h*w tokens of one frame)       # copy of attn1, no text
    x = x + gate(t) * proj(a)                            # proj = ReLU -> Linear(0)
    x = x + gate_ff * ff(norm2(x, text))                 # the block, unchanged

``camera_encoder`` and the last Linear of ``proj`` start at zero, so a freshly
adapted model computes exactly what the base model computes on each view alone.
The paper's projector is "Linear + ReLU, zero-initialized"; a ReLU placed after
a zero Linear has zero derivative at its input (ReLU'(0) = 0 in PyTorch), so
neither layer would ever receive a gradient. We put the ReLU first: the zero
Linear then sees ReLU(a) != 0 and its weight gradient is non-zero on step one.

Per-view inputs reach the blocks through ``attention_kwargs[MULTIVIEW_KEY]``:
the diffusers transformer passes ``attention_kwargs`` to every block, also
positionally under gradient checkpointing, so the block and its module are
checkpointed (and recomputed) together. The key is removed before the block's
own ``Attention`` sees the kwargs (it would drop unknown keys with a warning).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

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
    """Camera encoder + cross-view attention + zero-initialized projection for one block.

    Build it with :meth:`from_block` so its attention and norm start as copies
    of the host block's own (the paper's initialization).
    """

    def __init__(
        self,
        dim: int,
        time_embed_dim: int,
        attention: nn.Module,
        norm_eps: float = 1e-5,
        norm_elementwise_affine: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.camera_encoder = nn.Linear(CAMERA_DIM, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        # shift, scale, gate from the timestep embedding, like CogVideoXLayerNormZero's video half.
        self.modulation = nn.Linear(time_embed_dim, 3 * dim)
        self.attn = attention
        # ReLU before the zero Linear (see the module docstring for why not after).
        self.proj = nn.Sequential(nn.ReLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.camera_encoder.weight)
        nn.init.zeros_(self.camera_encoder.bias)
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    @classmethod
    def from_block(cls, block: nn.Module) -> "MultiViewModule":
        """A module whose attention, qk-norms and modulated norm are copies of ``block``'s."""
        norm1 = block.norm1
        dim = norm1.norm.normalized_shape[0]
        time_embed_dim = norm1.linear.in_features
        attention = copy.deepcopy(block.attn1)
        module = cls(
            dim=dim,
            time_embed_dim=time_embed_dim,
            attention=attention,
            norm_eps=norm1.norm.eps,
            norm_elementwise_affine=norm1.norm.elementwise_affine,
        )
        ref = block.attn1.to_q.weight
        module.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            # norm1.linear's output is (shift, scale, gate, enc_shift, enc_scale, enc_gate).
            module.modulation.weight.copy_(norm1.linear.weight[: 3 * dim])
            if norm1.linear.bias is not None:
                module.modulation.bias.copy_(norm1.linear.bias[: 3 * dim])
            else:
                module.modulation.bias.zero_()
            if norm1.norm.elementwise_affine:
                module.norm.weight.copy_(norm1.norm.weight)
                if norm1.norm.bias is not None:
                    module.norm.bias.copy_(norm1.norm.bias)
        return module

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, ctx: MultiViewContext) -> torch.Tensor:
        """``hidden_states [B*n, F*hw, d]``, ``temb [B*n, T]`` -> same shape, views coupled per frame."""
        ctx.calls += 1
        bn, seq, dim = hidden_states.shape
        n, hw = ctx.num_views, ctx.tokens_per_frame
        if bn % n or seq % hw:
            raise ValueError(f"multi-view block got {bn} samples x {seq} tokens, not divisible by {n} views x {hw} tokens per frame")
        b, frames = bn // n, seq // hw
        x = hidden_states.view(b, n, frames, hw, dim)

        cams = ctx.cameras.to(device=x.device, dtype=x.dtype).reshape(b, n, CAMERA_DIM)
        y = x + self.camera_encoder(cams)[:, :, None, None, :]
        mod = self.modulation(F.silu(temb)).view(b, n, 1, 1, 3 * dim)
        shift, scale, gate = mod.chunk(3, dim=-1)
        y = self.norm(y) * (1 + scale) + shift

        # One attention sequence per (sample, frame): the n views' tokens of that frame.
        y = y.permute(0, 2, 1, 3, 4).reshape(b * frames, n * hw, dim)
        y = self._attention(y, ctx.rotary_emb)
        y = y.view(b, frames, n, hw, dim).permute(0, 2, 1, 3, 4)

        out = gate * self.proj(y)
        return hidden_states + out.reshape(bn, seq, dim)

    def _attention(self, x: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Self-attention with the copied diffusers ``Attention`` weights (same math as CogVideoXAttnProcessor2_0, no text)."""
        attn = self.attn
        batch, length, _ = x.shape
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = k.shape[-1] // attn.heads
        q = q.view(batch, length, attn.heads, head_dim).transpose(1, 2)
        k = k.view(batch, length, attn.heads, head_dim).transpose(1, 2)
        v = v.view(batch, length, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q = apply_rotary_emb(q, rotary_emb)
            k = apply_rotary_emb(k, rotary_emb)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, length, attn.heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


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
    """``CogVideoXBlock.forward`` (diffusers 0.42) with the multi-view module between attention and feed-forward.

    Same signature and positional order as the original, so the transformer's
    loop and its gradient-checkpointing call need no change. Without a
    :class:`MultiViewContext` in ``attention_kwargs`` it is the original block.
    """
    attention_kwargs = dict(attention_kwargs or {})
    ctx: MultiViewContext | None = attention_kwargs.pop(MULTIVIEW_KEY, None)
    text_seq_length = encoder_hidden_states.size(1)

    norm_hidden_states, norm_encoder_hidden_states, gate_msa, enc_gate_msa = self.norm1(hidden_states, encoder_hidden_states, temb)
    attn_hidden_states, attn_encoder_hidden_states = self.attn1(
        hidden_states=norm_hidden_states,
        encoder_hidden_states=norm_encoder_hidden_states,
        image_rotary_emb=image_rotary_emb,
        **attention_kwargs,
    )
    hidden_states = hidden_states + gate_msa * attn_hidden_states
    encoder_hidden_states = encoder_hidden_states + enc_gate_msa * attn_encoder_hidden_states

    if ctx is not None:
        hidden_states = self.multiview(hidden_states, temb, ctx)

    norm_hidden_states, norm_encoder_hidden_states, gate_ff, enc_gate_ff = self.norm2(hidden_states, encoder_hidden_states, temb)
    norm_hidden_states = torch.cat([norm_encoder_hidden_states, norm_hidden_states], dim=1)
    ff_output = self.ff(norm_hidden_states)
    hidden_states = hidden_states + gate_ff * ff_output[:, text_seq_length:]
    encoder_hidden_states = encoder_hidden_states + enc_gate_ff * ff_output[:, :text_seq_length]
    return hidden_states, encoder_hidden_states


_MV_CLASSES: dict[type, type] = {}


def _multiview_class(base_cls: type) -> type:
    """A subclass of the block's class whose forward runs the multi-view module (cached per base class)."""
    if base_cls not in _MV_CLASSES:
        _MV_CLASSES[base_cls] = type("MultiView" + base_cls.__name__, (base_cls,), {"forward": _multiview_block_forward})
    return _MV_CLASSES[base_cls]


def adapt_block(block: nn.Module) -> nn.Module:
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
    block.multiview = MultiViewModule.from_block(block)
    block.__class__ = _multiview_class(type(block))
    return block


def multiview_modules(model: nn.Module) -> Iterator[tuple[str, MultiViewModule]]:
    """``(qualified name, module)`` of every multi-view module inside ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, MultiViewModule):
            yield name, module

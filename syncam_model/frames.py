"""The frame-count rules of CogVideoX's VAE and of CogVideoX 1.5's temporal patches, in one place.

Every other module asks these functions; none repeats the arithmetic.

* **Encoding** (``AutoencoderKLCogVideoX.encode``): the VAE keeps the first
  frame and compresses the rest by ``temporal`` (4), so a clip of
  ``temporal*k + 1`` frames gives ``k + 1`` latent frames (49 -> 13).
* **Decoding** (``AutoencoderKLCogVideoX.decode``): the decoder's temporal
  upsampling keeps the first latent frame apart only when the number of latent
  frames is odd; an even count decodes to ``temporal * F'`` frames instead of
  ``temporal * (F' - 1) + 1``. So a generated video decodes back to exactly its
  length only for ``2*temporal*N + 1`` frames: 8N+1 (9, 17, ..., 49).
* **CogVideoX 1.5** (``patch_size_t = 2``) patches latent frames in pairs, so
  the transformer needs a multiple of ``patch_size_t`` latent frames. Its
  pipeline (diffusers ``CogVideoXPipeline.__call__``, step 5) adds
  ``patch_size_t - F' % patch_size_t`` frames in front and drops them before
  decoding (``latents[:, additional_frames:]``); CogVideo's own fine-tuning
  scripts (``finetune/models/cogvideox_t2v/lora_trainer.py``, ``compute_loss``)
  pad training latents in front with copies of the first latent frame.
  :func:`pad_latent_frames` does the latter; generation pads with noise.
"""

from __future__ import annotations

from typing import Any

# CogVideoX's VAE (every released checkpoint): 4x in time.
TEMPORAL_COMPRESSION = 4


def latent_frames(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> int:
    """Latent frames of a ``temporal*k + 1``-frame clip (49 -> 13)."""
    check_encodable(num_frames, temporal)
    return (num_frames - 1) // temporal + 1


def encodable_error(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> str | None:
    """Why the VAE cannot encode ``num_frames`` frames, or None."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        return (
            f"{num_frames} is not {temporal}k+1 (CogVideoX's VAE keeps the first frame and compresses the rest "
            f"by {temporal}), e.g. {temporal * 2 + 1}, {temporal * 3 + 1}, {temporal * 12 + 1}"
        )
    return None


def decodable_error(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> str | None:
    """Why the VAE cannot decode latents of ``num_frames`` frames back to exactly that many, or None."""
    step = 2 * temporal
    if num_frames < 1 or (num_frames - 1) % step:
        examples = ", ".join(str(step * k + 1) for k in (1, 2, 3, 6))
        return (
            f"{num_frames} frames is not {step}N+1: CogVideoX's VAE decodes an odd number of latent frames "
            f"back to {temporal}(F'-1)+1 frames but an even number to {temporal}F' frames; use {examples}, ..."
        )
    return None


def check_encodable(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> None:
    """Raise ValueError unless the VAE can encode a ``num_frames``-frame clip."""
    msg = encodable_error(num_frames, temporal)
    if msg:
        raise ValueError(msg)


def check_decodable(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> None:
    """Raise ValueError unless generated latents of ``num_frames`` frames decode back to exactly that many."""
    msg = decodable_error(num_frames, temporal)
    if msg:
        raise ValueError(msg)


def round_up_decodable(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> int:
    """The smallest decodable frame count (8N+1) >= ``num_frames``."""
    step = 2 * temporal
    return max(1, (num_frames - 1 + step - 1) // step * step + 1)


def temporal_padding(num_latent_frames: int, patch_size_t: int | None) -> int:
    """Latent frames to add in front so the count is a multiple of ``patch_size_t`` (0 without temporal patches)."""
    if not patch_size_t:
        return 0
    return (patch_size_t - num_latent_frames % patch_size_t) % patch_size_t


def patched_frames(num_latent_frames: int, patch_size_t: int | None) -> int:
    """Temporal positions the transformer sees (its RoPE length): latent frames / ``patch_size_t``, rounded up."""
    if not patch_size_t:
        return num_latent_frames
    return (num_latent_frames + patch_size_t - 1) // patch_size_t


def pad_latent_frames(latents: Any, patch_size_t: int | None, dim: int) -> tuple[Any, int]:
    """``(latents padded in front with copies of the first latent frame along dim, padding)`` (a torch tensor)."""
    import torch

    pad = temporal_padding(latents.shape[dim], patch_size_t)
    if pad == 0:
        return latents, 0
    first = latents.narrow(dim, 0, 1)
    reps = [1] * latents.ndim
    reps[dim] = pad
    return torch.cat([first.repeat(*reps), latents], dim=dim), pad

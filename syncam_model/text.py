"""Prompt encoding with the base model's T5 encoder, exactly as the CogVideoX pipeline does it.

Prompts are tokenized with padding to ``max_length`` (226 for CogVideoX) and
truncation, and the whole padded sequence is encoded (no attention mask), so
padding tokens carry T5 outputs just as in diffusers' ``_get_t5_prompt_embeds``.
With ``load_components("tiny")`` the same code runs on a tiny T5 and tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from syncam_model.components import Components

log = logging.getLogger(__name__)


def tokenize(tokenizer, prompts: Sequence[str], max_length: int) -> torch.Tensor:
    """Token ids ``[B, max_length]``; warns (like the pipeline) when a prompt is truncated."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    full = tokenizer(list(prompts), padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        removed = tokenizer.batch_decode(full[:, max_length - 1 : -1])
        log.warning("prompt truncated to %d tokens; removed: %s", max_length, removed)
    return ids


@torch.no_grad()
def encode_prompts(components: Components, prompts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """T5 embeddings ``[B, L, D]`` (``L = max_length``, default the transformer's 226) in the components' dtype and device.

    An empty string is the unconditional prompt used for classifier-free guidance.
    """
    if isinstance(prompts, str):
        raise TypeError("encode_prompts takes a list of prompts, not a single string")
    length = int(max_length or components.max_text_length)
    ids = tokenize(components.tokenizer, prompts, length).to(components.device)
    embeds = components.text_encoder(ids)[0]
    return embeds.to(dtype=components.dtype, device=components.device)

"""CLIP-T (text-frame) and CLIP-F (frame-frame across synchronized views) with `transformers`' CLIP.

Weights come only from a local folder the user names (``--clip PATH``, a
``save_pretrained`` folder holding the model and its processor, e.g. a copy of
``openai/clip-vit-large-patch14``); nothing is downloaded. Without it the
scores are reported as skipped, never estimated.

Scores follow the convention of the papers that report them: 100 x the
cosine similarity of the L2-normalized CLIP embeddings. CLIP-T averages over
every sampled frame of every view; CLIP-F is computed per view pair and frame
(the two views' frames at the same time).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ClipWeightsError(ValueError):
    pass


@functools.lru_cache(maxsize=2)
def load_clip(path: str, device: str = "cpu") -> tuple[Any, Any]:
    """(model, processor) from a local folder; cached per process so workers load it once."""
    from transformers import CLIPModel, CLIPProcessor

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ClipWeightsError(
            f"{p}: not a CLIP model folder (no config.json); pass a save_pretrained folder of a CLIP model"
        )
    model = CLIPModel.from_pretrained(str(p), local_files_only=True).eval().to(device)
    processor = CLIPProcessor.from_pretrained(str(p), local_files_only=True)
    return model, processor


def _projected(out: Any) -> Any:
    # transformers < 5 returns the projected embeddings as a tensor; 5.x wraps
    # them in a model output whose pooler_output holds them.
    return out if hasattr(out, "norm") else out.pooler_output


def image_embeddings(model: Any, processor: Any, images: list[np.ndarray], device: str, batch: int = 16) -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            px = processor(images=list(images[i : i + batch]), return_tensors="pt")["pixel_values"].to(device)
            e = _projected(model.get_image_features(pixel_values=px)).float()
            outs.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
    return np.concatenate(outs)


def text_embedding(model: Any, processor: Any, text: str, device: str) -> np.ndarray:
    import torch

    tok = processor(text=[text], return_tensors="pt", padding=True, truncation=True)
    with torch.inference_mode():
        e = _projected(
            model.get_text_features(
                input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
            )
        ).float()
    return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()[0]


def clip_group_scores(
    frames: dict[str, np.ndarray], text: str, pairs: list[tuple[str, str]], weights: str, device: str = "cpu"
) -> dict[str, Any]:
    """{"clip_t": float | None, "clip_t_skipped": reason | None, "clip_f": {(a, b, k): float}}.

    ``frames[view]`` is (F, H, W, 3) for the group's sampled frames; ``k`` in
    the CLIP-F keys is the position in that frame list.
    """
    model, processor = load_clip(weights, device)
    views = list(frames)
    flat = [img for v in views for img in frames[v]]
    emb = image_embeddings(model, processor, flat, device)
    nf = len(next(iter(frames.values())))
    per_view = {v: emb[i * nf : (i + 1) * nf] for i, v in enumerate(views)}
    clip_f = {}
    for a, b in pairs:
        sims = np.einsum("fd,fd->f", per_view[a], per_view[b]) * 100.0
        for k, s in enumerate(sims):
            clip_f[(a, b, k)] = float(s)
    if text.strip():
        t = text_embedding(model, processor, text, device)
        return {"clip_t": float(np.mean(emb @ t) * 100.0), "clip_t_skipped": None, "clip_f": clip_f}
    return {"clip_t": None, "clip_t_skipped": "no caption or prompt", "clip_f": clip_f}

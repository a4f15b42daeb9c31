"""FVD (Frechet Video Distance) with a user-supplied I3D TorchScript checkpoint.

The detector is the TorchScript I3D most FVD implementations share
(``i3d_torchscript.pt`` of StyleGAN-V / universome's fvd-comparison, 400-d
logits used as features). It is called as those implementations do:
``detector(x, rescale=False, resize=False, return_features=True)`` with ``x``
a float tensor (B, 3, T, 224, 224) in [-1, 1], after scaling the shorter
side to 224 and centre-cropping. Nothing is downloaded: the user passes the
file with ``--i3d``, and a reference input with ``--fvd-reference``.

FVD compares two *sets* of clips; with fewer clips than feature dimensions the
covariances are rank-deficient and FVD is biased upwards (the papers use
thousands of clips). ``summary.json`` records how many clips each side had.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FVD_RESOLUTION = 224
DETECTOR_KWARGS = dict(rescale=False, resize=False, return_features=True)


@functools.lru_cache(maxsize=2)
def load_i3d(path: str, device: str = "cpu") -> Any:
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: I3D checkpoint not found")
    try:
        return torch.jit.load(str(p), map_location=device).eval()
    except RuntimeError as e:
        raise ValueError(f"{p}: not a TorchScript I3D checkpoint ({e})") from None


def preprocess(clip: np.ndarray, resolution: int = FVD_RESOLUTION) -> Any:
    """uint8 (T, H, W, 3) -> float (3, T, R, R) in [-1, 1]: shorter side to R, centre crop."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 255.0  # T,3,H,W
    h, w = x.shape[-2:]
    s = resolution / min(h, w)
    size = (max(resolution, math.ceil(h * s)), max(resolution, math.ceil(w * s)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return ((x - 0.5) * 2.0).permute(1, 0, 2, 3).contiguous()


def i3d_features(clips: list[np.ndarray], weights: str, device: str = "cpu", batch: int = 4) -> np.ndarray:
    """One feature vector per clip (all clips must have the same length)."""
    import torch

    det = load_i3d(weights, device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            x = torch.stack([preprocess(c) for c in clips[i : i + batch]]).to(device)
            out.append(det(x, **DETECTOR_KWARGS).float().cpu().numpy())
    return np.concatenate(out).reshape(len(clips), -1)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError(f"FVD needs at least 2 clips on each side, got {len(feats_a)} and {len(feats_b)}")
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if isinstance(covmean, tuple):  # SciPy < 1.12 style return
        covmean = covmean[0]
    covmean = np.real(covmean)
    return float(np.square(mu_a - mu_b).sum() + np.trace(s_a + s_b - 2.0 * covmean))

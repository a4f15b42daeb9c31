"""Shared pytest fixtures and helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Real files in external formats, shipped with the repository (tests/fixtures/README.md says where each came from).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine two threads make matmuls wait on each other.

    Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``.
    """
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def smooth_frames(n: int = 8, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients with a bright square: survives H.264 and makes frames distinguishable."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.zeros((h, w, 3), np.float64)
        img[..., 0] = base[0] + 40 * np.sin((xx + 3 * i) / 9.0)
        img[..., 1] = base[1] + 40 * np.cos((yy + 2 * i) / 7.0)
        img[..., 2] = base[2]
        x0 = (4 * i) % max(1, w - 12)
        img[8:20, x0 : x0 + 12] = 255
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out

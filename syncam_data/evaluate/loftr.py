"""kornia's LoFTR as the `eval` matcher (``--matcher loftr``), with weights from a local file only.

kornia is an optional dependency (``pip install -e '.[eval]'`` in the SynCam checkout; ``scripts/setup.sh`` installs it); this is the
only module that imports it. LoFTR is detector-free: it matches a pair of
images jointly, so ``detect`` only prepares each image (grayscale tensor, padded
to a multiple of 8) and ``match`` runs the network on the pair, then the same
RANSAC on the fundamental matrix as the SIFT path.

Weights: the official checkpoints (``loftr_outdoor.ckpt``, a Lightning
checkpoint whose ``state_dict`` holds the weights; read with
``torch.load(weights_only=True)``) or a ``.safetensors`` state dict.
``--matcher-config`` (a JSON file) overrides entries of kornia's default LoFTR
configuration, for weights trained with another one (e.g.
``{"coarse": {"temp_bug_fix": true}}`` for the newer indoor weights).

Coordinates: LoFTR returns keypoints on the grid of the input tensor, with pixel
centres at integers like OpenCV; the epipolar check adds 0.5 as for SIFT.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from syncam_data.evaluate.matching import MatchConfig, MatchResult, ransac_fundamental, to_gray


class MatcherWeightsError(ValueError):
    pass


def _import_kornia():
    try:
        import kornia.feature as KF
    except ImportError as e:
        raise MatcherWeightsError(
            "--matcher loftr needs kornia: pip install -e '.[eval]' in the SynCam checkout (or pip install kornia)"
        ) from e
    return KF


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_state_dict(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MatcherWeightsError(f"{path}: matcher weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or not a checkpoint at all
        raise MatcherWeightsError(
            f"{path}: cannot read as a weights-only checkpoint ({type(e).__name__}: {e})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise MatcherWeightsError(f"{path}: holds no state dict")
    # Lightning checkpoints prefix the module name ("matcher.").
    return {k.removeprefix("matcher."): v for k, v in obj.items()}


@functools.lru_cache(maxsize=2)
def load_loftr(weights: str, config_json: str | None, device: str) -> Any:
    """The LoFTR module with the given weights; cached per process so workers load it once."""
    KF = _import_kornia()
    from kornia.feature.loftr.loftr import default_cfg

    cfg = default_cfg
    if config_json:
        try:
            cfg = deep_update(default_cfg, json.loads(Path(config_json).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise MatcherWeightsError(f"{config_json}: cannot read the LoFTR config ({e})") from None
    model = KF.LoFTR(pretrained=None, config=cfg)
    sd = read_state_dict(Path(weights))
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise MatcherWeightsError(
            f"{weights}: weights do not fit LoFTR (wrong file or --matcher-config?): {str(e)[:300]}"
        ) from None
    if missing or unexpected:
        raise MatcherWeightsError(
            f"{weights}: weights do not fit LoFTR ({len(missing)} missing keys, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}); wrong file or --matcher-config?"
        )
    return model.eval().to(device)


class LoftrMatcher:
    name = "loftr"

    def __init__(self, config: MatchConfig, weights: str, config_json: str | None = None, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.model = load_loftr(weights, config_json, device)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Grayscale float image in [0, 1], zero-padded right/bottom to a multiple of 8 (coordinates unchanged)."""
        g = to_gray(image).astype(np.float32) / 255.0
        h, w = g.shape
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            g = cv2.copyMakeBorder(g, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
        return g

    def match(self, fa: np.ndarray, fb: np.ndarray) -> MatchResult:
        import torch

        with torch.inference_mode():
            t0 = torch.from_numpy(fa)[None, None].to(self.device)
            t1 = torch.from_numpy(fb)[None, None].to(self.device)
            out = self.model({"image0": t0, "image1": t1})
        pa = out["keypoints0"].cpu().numpy().astype(np.float64)
        pb = out["keypoints1"].cpu().numpy().astype(np.float64)
        return ransac_fundamental(pa, pb, self.config)

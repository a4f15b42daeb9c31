"""Adapter files: the multi-view modules' weights as safetensors, with the base model's identity in the header.

``save_adapter`` writes only the new modules (durably, ``syncam_data.fsio``);
``load_adapter`` refuses, with an ``AdapterFileError`` naming the file and the
difference, a file trained on another base model (``base_identity``: config
hash and weight statistics), with another module structure or camera rule, or
whose tensors do not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from syncam_data import fsio
from syncam_model.camera_input import META_KEY as CAMERA_RULE_KEY
from syncam_model.camera_input import CameraRule, CameraRuleError, check_rule, rule_of
from syncam_model.config import AdapterSpec

if TYPE_CHECKING:
    from syncam_model.transformer import MultiViewTransformer

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "syncam-multiview-adapter"
# 2: camera embedding after the norm (was before), projector / attention_text / position in adapter_config, camera_rule.
ADAPTER_FORMAT_VERSION = 2


class AdapterFileError(ValueError):
    """An adapter file that cannot be loaded into this transformer (not ``shards.adapters.AdapterError``: a source folder)."""


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
    """Raise AdapterFileError if the adapter's recorded base is not ``current`` (different config or different weights)."""
    if saved.get("config_sha256") != current.get("config_sha256"):
        diff = _config_diff(saved.get("config", {}), current.get("config", {}))
        raise AdapterFileError(
            f"{source}: trained on a different base model ({saved.get('pretrained')!r}, config differs: {diff}); "
            f"the loaded base is {current.get('pretrained')!r}"
        )
    for key, (mean, std) in saved.get("weight_stats", {}).items():
        cur = current.get("weight_stats", {}).get(key)
        if cur is None or abs(cur[0] - mean) > 1e-3 * abs(std) + 1e-6 or abs(cur[1] - std) > 1e-2 * abs(std) + 1e-6:
            raise AdapterFileError(
                f"{source}: trained on base {saved.get('pretrained')!r} whose weights differ from the loaded base "
                f"{current.get('pretrained')!r} (same config, different {key})"
            )
    if saved.get("pretrained") != current.get("pretrained"):
        log.info(
            "%s: base model path differs (%s vs %s) but config and weights match",
            source,
            saved.get("pretrained"),
            current.get("pretrained"),
        )


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:6]) or "unknown"


# --------------------------------------------------------------------------- save and load


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
        raise ValueError(
            f"save_adapter: meta must contain {CAMERA_RULE_KEY!r} (CameraRule(...).to_meta()): what the camera input means"
        )
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
    with fsio.atomic_path(path) as tmp:  # fsync, rename, fsync the folder
        save_file(tensors, str(tmp), metadata={"syncam": json.dumps(header, default=str)})
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
        raise AdapterFileError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise AdapterFileError(f"{path}: no 'syncam' metadata in the safetensors header; not a SynCam adapter")
    meta = json.loads(raw)
    if meta.get("format") != ADAPTER_FORMAT:
        raise AdapterFileError(f"{path}: header format is {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
    version = meta.get("format_version")
    if version != ADAPTER_FORMAT_VERSION:
        why = " (format 1 added the camera embedding before the norm; retrain the adapter)" if version == 1 else ""
        raise AdapterFileError(
            f"{path}: adapter format_version {version!r}, this SynCam reads {ADAPTER_FORMAT_VERSION}{why}"
        )
    return meta


def adapter_spec_of(meta: dict[str, Any], source: str = "adapter") -> AdapterSpec:
    """The module structure recorded in an adapter's metadata (build the transformer with it before loading)."""
    cfg = meta.get("adapter_config", {})
    try:
        return AdapterSpec.model_validate({k: cfg[k] for k in AdapterSpec.model_fields if k in cfg})
    except ValueError as exc:
        raise AdapterFileError(f"{source}: unreadable adapter_config {cfg!r} ({exc})") from None


def load_adapter(
    transformer: MultiViewTransformer,
    path: str | os.PathLike,
    base_id: dict[str, Any],
    *,
    camera_rule: CameraRule | None = None,
    allow_base_mismatch: bool = False,
) -> dict[str, Any]:
    """Load multi-view weights saved by :func:`save_adapter` into ``transformer``; returns the stored metadata.

    Raises AdapterFileError when the file was trained on another base model
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
        diff = ", ".join(
            f"{k}: file {getattr(spec, k)!r}, model {getattr(transformer.spec, k)!r}"
            for k in AdapterSpec.model_fields
            if getattr(spec, k) != getattr(transformer.spec, k)
        )
        raise AdapterFileError(
            f"{path}: built with another module structure ({diff}); build the transformer with the file's adapter_config"
        )
    try:
        if camera_rule is not None:
            check_rule(meta, camera_rule, str(path))
        else:
            rule_of(meta, str(path))
    except CameraRuleError as exc:
        raise AdapterFileError(str(exc)) from None
    try:
        check_base(meta.get("base_id", {}), base_id, source=str(path))
    except AdapterFileError as exc:
        if not allow_base_mismatch:
            raise
        log.warning("%s (loading anyway: allow_base_mismatch)", exc)
    tensors = load_file(str(path))
    own = transformer.adapter_state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise AdapterFileError(
            f"{path}: tensor names do not match this transformer (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    bad = [k for k in own if own[k].shape != tensors[k].shape]
    if bad:
        raise AdapterFileError(
            f"{path}: shape mismatch for {bad[0]}: file {tuple(tensors[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}"
        )
    result = transformer.base.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise AdapterFileError(f"{path}: unexpected tensors {result.unexpected_keys[:3]}")
    return meta

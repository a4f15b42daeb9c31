"""The camera input the model sees: each view's pose relative to view 0, with one translation rule.

Contract 1: ``rel_i = inv(c2w_0) @ c2w_i`` flattened to 12 numbers. Rotations
are unitless; translations are not, and the three data sources disagree on
their unit: renders are metric, RealEstate10K and DL3DV poses come from SfM and
have an arbitrary scale per sequence. A :class:`CameraRule` fixes what the
translation part means, the same way in training (``syncam_model.data``) and in
generation (``syncam_model.rig``, ``syncam-generate`` presets and
``--cameras FILE``):

* ``max_distance`` (default): each sample's relative translations are divided
  by the largest camera-centre distance from view 0, so the farthest view is at
  distance 1 whatever the source's unit (a rig whose cameras all share one
  centre keeps zero translations).
* ``fixed``: translations divided by ``translation_scale`` (metres per unit).
  The official releases do this with metric renders only: their loaders divide
  Unreal centimetres by 200 (``train_syncammaster.py``,
  ``TensorDataset.__getitem__``: ``c2w[:3, 3] /= 200``; the CogVideoX release's
  ``inference/syncammaster_inference.py``: ``train_pose_scale = 200``), i.e.
  ``fixed`` with 2 m per unit. Neither release ships a loader for posed image
  sets, and neither states a rule for them.

The rule is recorded in every adapter (``camera_rule`` in its metadata);
loading an adapter under another rule is refused (:func:`check_rule`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from syncam_data.cameras import relative_poses

META_KEY = "camera_rule"
# Below this camera-centre distance (in the source's unit) the views share one centre: nothing to normalize.
_MIN_DISTANCE = 1e-8


class CameraRuleError(ValueError):
    """An adapter whose camera rule differs from the one asked for (or records none)."""


class CameraRule(BaseModel):
    """How relative translations are scaled before the camera encoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    translation_normalization: Literal["max_distance", "fixed"] = Field(
        "max_distance",
        description="max_distance: farthest camera centre from view 0 at distance 1; fixed: divide by translation_scale",
    )
    translation_scale: float = Field(1.0, gt=0, description="metres per unit, for translation_normalization=fixed")

    @model_validator(mode="after")
    def _scale_used(self) -> CameraRule:
        if self.translation_normalization != "fixed" and self.translation_scale != 1.0:
            raise ValueError(
                f"translation_scale={self.translation_scale} is only used with translation_normalization=fixed"
            )
        return self

    @classmethod
    def from_data_config(cls, data: Any) -> CameraRule:
        """The rule of a ``DataConfig`` (``data.translation_normalization``, ``data.translation_scale``)."""
        return cls(translation_normalization=data.translation_normalization, translation_scale=data.translation_scale)

    def describe(self) -> str:
        if self.translation_normalization == "fixed":
            return f"fixed (translations / {self.translation_scale:g})"
        return "max_distance (farthest camera centre from view 0 at distance 1)"

    def to_meta(self) -> dict[str, Any]:
        return {META_KEY: self.model_dump()}

    def apply(self, c2ws: Iterable[np.ndarray]) -> np.ndarray:
        """``(n, 12)`` float32 model input for cameras ``c2ws`` (view 0 first)."""
        rel = relative_poses(list(c2ws)).reshape(-1, 3, 4)
        t = rel[:, :, 3]
        if self.translation_normalization == "fixed":
            t /= self.translation_scale
        else:
            far = float(np.linalg.norm(t, axis=1).max())
            if far > _MIN_DISTANCE:
                t /= far
        return rel.reshape(-1, 12).astype(np.float32)


def rule_of(meta: dict[str, Any], source: str = "adapter") -> CameraRule:
    """The camera rule recorded in adapter metadata."""
    raw = meta.get(META_KEY)
    if raw is None:
        raise CameraRuleError(
            f"{source}: records no camera rule ({META_KEY}); it was not saved by this version of syncam-train"
        )
    try:
        return CameraRule.model_validate(raw)
    except ValueError as exc:
        raise CameraRuleError(f"{source}: unreadable camera rule {raw!r} ({exc})") from None


def check_rule(meta: dict[str, Any], wanted: CameraRule, source: str = "adapter") -> CameraRule:
    """Raise CameraRuleError unless the adapter was trained with ``wanted``; returns its rule."""
    have = rule_of(meta, source)
    if have != wanted:
        raise CameraRuleError(
            f"{source}: trained with camera translation rule {have.describe()}, but {wanted.describe()} was asked for; "
            "the camera encoder only understands the rule it was trained with"
        )
    return have

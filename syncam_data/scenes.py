"""Scene specs (DESIGN.md, Contract 2): a JSON-serializable, seeded, backend-independent description
of one scene, and the data types a catalog is made of.

A ``SceneSpec`` fully determines a scene: background, subjects (asset,
animation, trajectory, scale), the scene centre, cameras (intrinsics + pose in
the canonical convention), frames, fps, resolution and seed. The same spec
renders on Blender or Unreal Engine; each backend converts the canonical
world (right-handed, Z up, metres) into its own.

The catalog loader and the spec sampler live in this module too (see
``load_catalog`` and ``sample_scene``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from syncam_data.cameras import Camera, CameraError
from syncam_data.ids import UnsafeIdError, check_id


class SpecError(ValueError):
    """An invalid scene spec or catalog entry; the message names it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class BackgroundSpec(_Model):
    """Where the scene happens.

    ``kind``: ``procedural`` (built in code by the Blender backend; ``asset``
    names the built-in generator), ``blend`` (a .blend file), ``gltf``
    (.glb/.gltf), ``fbx``, ``hdri`` / ``image`` (an environment image), or
    ``unreal_level`` (an Unreal map path such as ``/Game/Maps/Forest``).
    """

    id: str
    kind: Literal["procedural", "blend", "gltf", "fbx", "hdri", "image", "unreal_level"]
    asset: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        return _checked(v, "background id")


class AnimationSpec(_Model):
    """An animation clip of a subject asset; ``clip`` is the action / animation-sequence name or path."""

    id: str
    clip: str = ""
    description: str = ""
    speed: float = 1.0
    loop: bool = True
    # Metres per second the clip moves the subject along its trajectory (0 = in place).
    travel_speed: float = 0.0

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        return _checked(v, "animation id")


class TrajectorySpec(_Model):
    """Ground-plane path of a subject in world metres, sampled per frame.

    ``line``: from ``start`` to ``end`` over the clip; ``circle``: around
    ``center`` with ``radius`` starting at ``phase_deg``, ``turns`` times;
    ``static``: stays at ``start``. The subject faces its direction of motion
    (``yaw_deg`` fixes it for ``static``). Heights come from ``z``.
    """

    type: Literal["static", "line", "circle"] = "static"
    start: tuple[float, float] = (0.0, 0.0)
    end: tuple[float, float] = (0.0, 0.0)
    center: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.0
    phase_deg: float = 0.0
    turns: float = 0.0
    yaw_deg: float = 0.0
    z: float = 0.0

    def pose(self, frame: int, num_frames: int) -> tuple[np.ndarray, float]:
        """(location xyz in metres, yaw in degrees, CCW from +X seen from above) at ``frame``."""
        s = 0.0 if num_frames <= 1 else frame / (num_frames - 1)
        if self.type == "line":
            a, b = np.array(self.start), np.array(self.end)
            xy = a + s * (b - a)
            d = b - a
            yaw = math.degrees(math.atan2(d[1], d[0])) if np.linalg.norm(d) > 1e-9 else self.yaw_deg
        elif self.type == "circle":
            ang = math.radians(self.phase_deg) + s * self.turns * 2 * math.pi
            xy = np.array(self.center) + self.radius * np.array([math.cos(ang), math.sin(ang)])
            yaw = math.degrees(ang) + (90.0 if self.turns >= 0 else -90.0)
        else:
            xy, yaw = np.array(self.start), self.yaw_deg
        return np.array([xy[0], xy[1], self.z]), yaw

    def extent(self, num_frames: int) -> np.ndarray:
        """Ground-plane points the subject passes through (for overlap checks)."""
        return np.array([self.pose(f, num_frames)[0][:2] for f in np.linspace(0, max(num_frames - 1, 0), 16).astype(int)])


class SubjectSpec(_Model):
    """One animated subject; ``instance_id`` (1, 2, ...) is its value in the instance masks."""

    instance_id: int = Field(ge=1, le=255)
    asset_id: str
    kind: Literal["procedural", "gltf", "fbx", "blend", "unreal"]
    asset: str
    description: str = ""
    animation: AnimationSpec
    trajectory: TrajectorySpec = Field(default_factory=TrajectorySpec)
    scale: float = 1.0
    # Radius (m) of the subject's footprint at scale 1, used to keep subjects apart.
    radius: float = 0.5
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("asset_id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        return _checked(v, "subject asset id")

    def animation_time(self, frame: int, fps: float) -> float:
        """Seconds into the animation clip at ``frame`` (what every backend sets explicitly)."""
        return frame / fps * self.animation.speed


class CameraSpec(_Model):
    """A camera in the canonical convention (Contract 1) plus how it was placed."""

    id: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    c2w: list[float] = Field(min_length=12, max_length=12)
    placement: dict[str, float] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        return _checked(v, "camera id")

    @model_validator(mode="after")
    def _valid_pose(self) -> "CameraSpec":
        try:
            self.camera().validate(tol=1e-3)
        except CameraError as e:
            raise ValueError(f"camera {self.id}: {e}") from None
        return self

    def camera(self) -> Camera:
        return Camera(self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.c2w)

    @classmethod
    def from_camera(cls, cam_id: str, cam: Camera, placement: dict[str, float] | None = None) -> "CameraSpec":
        return cls(id=cam_id, width=cam.width, height=cam.height, fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy, c2w=cam.c2w12(), placement=placement or {})


class SceneSpec(_Model):
    """Everything that determines one scene; see the module docstring."""

    scene_id: str
    seed: int
    background: BackgroundSpec
    subjects: list[SubjectSpec] = Field(min_length=0, max_length=8)
    center: tuple[float, float, float] = (0.0, 0.0, 1.0)
    cameras: list[CameraSpec] = Field(min_length=1)
    num_frames: int = Field(default=100, ge=1)
    fps: float = Field(default=24.0, gt=0)
    width: int = Field(default=720, ge=2)
    height: int = Field(default=480, ge=2)
    hfov_deg: float | None = None
    caption: str = ""
    catalog: str | None = None

    @field_validator("scene_id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        return _checked(v, "scene id")

    @model_validator(mode="after")
    def _consistent(self) -> "SceneSpec":
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"scene {self.scene_id}: duplicate camera ids")
        inst = [s.instance_id for s in self.subjects]
        if len(set(inst)) != len(inst):
            raise ValueError(f"scene {self.scene_id}: duplicate subject instance ids")
        for c in self.cameras:
            if (c.width, c.height) != (self.width, self.height):
                raise ValueError(f"scene {self.scene_id}: camera {c.id} is {c.width}x{c.height}, scene is {self.width}x{self.height}")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, source: str = "<spec>") -> "SceneSpec":
        try:
            return cls.model_validate_json(text)
        except Exception as e:  # pydantic's ValidationError lists every bad field
            raise SpecError(f"{source}: invalid scene spec: {e}") from None


def _checked(v: str, what: str) -> str:
    try:
        return check_id(v, what)
    except UnsafeIdError as e:
        raise ValueError(str(e)) from None

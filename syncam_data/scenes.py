"""Scene specs (docs/render.md; Contract 2 in docs/data-format.md): a JSON-serializable, seeded, backend-independent description
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

import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from syncam_data import limits
from syncam_data.cameras import Camera, CameraError, RigSpec, sample_rig
from syncam_data.ids import UnsafeIdError, check_id

log = logging.getLogger(__name__)


class SpecError(ValueError):
    """An invalid scene spec or catalog entry; the message names it.

    ``source`` is where it came from (``file.jsonl:12``) and ``detail`` the
    problem alone, for reports that already show the source.
    """

    def __init__(self, message: str, source: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.detail = detail or message


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

    @field_validator("width", "height")
    @classmethod
    def _bounded_size(cls, v: int, info: ValidationInfo) -> int:
        return int(limits.SIDE.check(v, info.field_name))

    @model_validator(mode="after")
    def _valid_pose(self) -> CameraSpec:
        try:
            self.camera().validate(tol=1e-3)
        except CameraError as e:
            raise ValueError(f"camera {self.id}: {e}") from None
        return self

    def camera(self) -> Camera:
        return Camera(self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.c2w)

    @classmethod
    def from_camera(cls, cam_id: str, cam: Camera, placement: dict[str, float] | None = None) -> CameraSpec:
        return cls(
            id=cam_id,
            width=cam.width,
            height=cam.height,
            fx=cam.fx,
            fy=cam.fy,
            cx=cam.cx,
            cy=cam.cy,
            c2w=cam.c2w12(),
            placement=placement or {},
        )


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

    @field_validator("num_frames", "width", "height", "fps", "cameras")
    @classmethod
    def _bounded(cls, v: Any, info: ValidationInfo) -> Any:
        return _bounded_field(v, info.field_name)

    @model_validator(mode="after")
    def _consistent(self) -> SceneSpec:
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"scene {self.scene_id}: duplicate camera ids")
        inst = [s.instance_id for s in self.subjects]
        if len(set(inst)) != len(inst):
            raise ValueError(f"scene {self.scene_id}: duplicate subject instance ids")
        for c in self.cameras:
            if (c.width, c.height) != (self.width, self.height):
                raise ValueError(
                    f"scene {self.scene_id}: camera {c.id} is {c.width}x{c.height}, scene is {self.width}x{self.height}"
                )
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, source: str = "<spec>") -> SceneSpec:
        try:
            return cls.model_validate_json(text)
        except Exception as e:  # pydantic's ValidationError lists every bad field
            detail = f"invalid scene spec: {short_validation_error(e)}"
            raise SpecError(f"{source}: {detail}", source=source, detail=detail) from None


def _checked(v: str, what: str) -> str:
    try:
        return check_id(v, what)
    except UnsafeIdError as e:
        raise ValueError(str(e)) from None


# Spec and sampler fields with a documented maximum (syncam_data/limits.py).
_FIELD_LIMITS = {
    "num_frames": limits.FRAMES,
    "width": limits.SIDE,
    "height": limits.SIDE,
    "fps": limits.FPS,
    "cameras": limits.CAMERAS,
    "num_cameras": limits.CAMERAS,
}


def _bounded_field(v: Any, name: str) -> Any:
    limit = _FIELD_LIMITS[name]
    limit.check(len(v) if isinstance(v, list) else v, name)
    return v


# --- catalog -------------------------------------------------------------------------------------

# Asset kinds whose ``asset`` is a file path (resolved relative to the catalog file).
FILE_KINDS = frozenset({"blend", "gltf", "fbx", "hdri", "image"})
BUILTIN_CATALOG = "demo"


class CatalogSubject(_Model):
    """A subject asset in a catalog: what it is, where it lives and which animations it can play.

    ``animations`` lists ids of the catalog's top-level ``animations`` or
    inline animation entries (clip names are usually asset-specific).
    ``scale`` is a (min, max) range sampled per scene.
    """

    id: str
    kind: Literal["procedural", "gltf", "fbx", "blend", "unreal"]
    asset: str
    description: str
    animations: list[str | AnimationSpec] = Field(min_length=1)
    scale: tuple[float, float] = (1.0, 1.0)
    radius: float = Field(default=0.5, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        return _checked(v, "subject id")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {v}")
        return v


class Catalog(_Model):
    """Backgrounds, subject assets and animations that specs are sampled from (docs/render.md, "The catalog").

    ``problems`` lists entries that were dropped because they are invalid
    (each message names the catalog file, the entry and the problem).
    """

    name: str = "catalog"
    source: str = "<memory>"
    backgrounds: list[BackgroundSpec]
    subjects: list[CatalogSubject]
    animations: list[AnimationSpec] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    def subject_animations(self, subject: CatalogSubject) -> list[AnimationSpec]:
        by_id = {a.id: a for a in self.animations}
        return [by_id[a] if isinstance(a, str) else a for a in subject.animations]


def builtin_catalog_path(name: str = BUILTIN_CATALOG) -> Path:
    return Path(__file__).resolve().parent / "catalog" / f"{name}.yaml"


def load_catalog(path: str | Path | None = None, strict: bool = False) -> Catalog:
    """Read and validate a YAML catalog (``None`` = the built-in procedural demo catalog).

    Invalid entries are dropped and described in ``Catalog.problems`` (or
    raise ``SpecError`` when ``strict``), so one bad entry does not stop a
    render job. File assets are resolved relative to the catalog file; a
    missing file is only warned about here (a cluster node may see paths the
    driver does not) and fails its scene at render time with a clear error.
    """
    path = builtin_catalog_path() if path is None else Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot read catalog ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a catalog must be a mapping with 'backgrounds' and 'subjects'")
    unknown = set(data) - {"name", "backgrounds", "subjects", "animations", "description"}
    if unknown:
        raise SpecError(f"{path}: unknown top-level keys {sorted(unknown)}")
    problems: list[str] = []
    animations = _parse_entries(path, data, "animations", AnimationSpec, problems)
    anim_ids = {a.id for a in animations}
    backgrounds = _parse_entries(path, data, "backgrounds", BackgroundSpec, problems)
    subjects = _parse_entries(path, data, "subjects", CatalogSubject, problems)
    subjects = [s for s in subjects if _subject_refs_ok(path, s, anim_ids, problems)]
    for entry in [*backgrounds, *subjects]:
        _resolve_asset(path, entry)
    if strict and problems:
        raise SpecError("\n".join(problems))
    for p in problems:
        log.error("%s", p)
    if not backgrounds:
        raise SpecError(
            f"{path}: no valid backgrounds"
            + (f" ({len(problems)} invalid entries: {problems[0]} ...)" if problems else "")
        )
    if not subjects:
        raise SpecError(
            f"{path}: no valid subjects"
            + (f" ({len(problems)} invalid entries: {problems[0]} ...)" if problems else "")
        )
    return Catalog(
        name=str(data.get("name", path.stem)),
        source=str(path),
        backgrounds=backgrounds,
        subjects=subjects,
        animations=animations,
        problems=problems,
    )


def _parse_entries(path: Path, data: dict[str, Any], key: str, model: type[_Model], problems: list[str]) -> list[Any]:
    raw = data.get(key) or []
    if not isinstance(raw, list):
        problems.append(f"{path}: '{key}' must be a list")
        return []
    out, seen = [], set()
    for i, entry in enumerate(raw):
        name = entry.get("id", "?") if isinstance(entry, dict) else "?"
        where = f"{path}: {key}[{i}] (id {name!r})"
        try:
            obj = model.model_validate(entry)
        except Exception as e:  # pydantic lists every bad field
            problems.append(f"{where}: invalid entry: {short_validation_error(e)}")
            continue
        if obj.id in seen:
            problems.append(f"{where}: duplicate id")
            continue
        seen.add(obj.id)
        out.append(obj)
    return out


def short_validation_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in errors())
    return str(e)


def _subject_refs_ok(path: Path, s: CatalogSubject, anim_ids: set[str], problems: list[str]) -> bool:
    missing = [a for a in s.animations if isinstance(a, str) and a not in anim_ids]
    if missing:
        problems.append(f"{path}: subject {s.id!r}: unknown animation id(s) {missing}; define them under 'animations'")
        return False
    return True


def _resolve_asset(path: Path, entry: BackgroundSpec | CatalogSubject) -> None:
    if entry.kind not in FILE_KINDS:
        return
    p = Path(entry.asset).expanduser()
    if not p.is_absolute():
        p = (path.parent / p).resolve()
    entry.asset = str(p)
    if not p.is_file():
        log.warning(
            "%s: %s %r: asset file %s does not exist (scenes using it will fail)",
            path,
            "background" if isinstance(entry, BackgroundSpec) else "subject",
            entry.id,
            p,
        )


# --- sampler -----------------------------------------------------------------------------------

# Horizontal FOV of SynCamVideo's 480x720 release (fx = 545.45 at W = 720).
DEFAULT_HFOV_DEG = math.degrees(2 * math.atan(360 / 545.45))


class SamplerConfig(_Model):
    """Knobs of ``sample_scene``; the defaults are the paper's recipe (docs/render.md)."""

    num_cameras: int = Field(default=36, ge=1)
    distance: tuple[float, float] = (3.5, 9.0)
    elevation: tuple[float, float] = (0.0, 45.0)
    azimuth: tuple[float, float] = (0.0, 360.0)
    num_frames: int = Field(default=100, ge=1)
    fps: float = Field(default=24.0, gt=0)
    width: int = Field(default=720, ge=2)
    height: int = Field(default=480, ge=2)
    hfov_deg: float = Field(default=DEFAULT_HFOV_DEG, gt=0, lt=180)
    subjects: tuple[int, int] = (1, 2)
    # Scene centre height above the ground (m): roughly the subjects' mid-height.
    center_height: tuple[float, float] = (0.7, 1.0)
    # Subjects stay within this radius (m) of the scene centre's ground point.
    area_radius: float = Field(default=2.0, gt=0)

    @field_validator("num_cameras", "num_frames", "fps", "width", "height")
    @classmethod
    def _bounded(cls, v: Any, info: ValidationInfo) -> Any:
        return _bounded_field(v, info.field_name)


def scene_id_for(index: int) -> str:
    return f"scene_{index:05d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Per-scene generator from (seed, index): adding scenes later leaves earlier ones unchanged."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_scene(catalog: Catalog, index: int, seed: int = 0, options: SamplerConfig | None = None) -> SceneSpec:
    """The ``index``-th scene of a seeded sequence: background, 1-2 animated subjects, camera rig, caption."""
    opt = options or SamplerConfig()
    rng = scene_rng(seed, index)
    background = catalog.backgrounds[int(rng.integers(len(catalog.backgrounds)))]
    cz = float(rng.uniform(*opt.center_height))
    center = (0.0, 0.0, cz)
    n_subj = int(rng.integers(opt.subjects[0], opt.subjects[1] + 1))
    subjects = _sample_subjects(catalog, n_subj, opt, rng)
    rig = RigSpec(num_cameras=opt.num_cameras, distance=opt.distance, elevation=opt.elevation, azimuth=opt.azimuth)
    cams = sample_rig(rig, center, opt.width, opt.height, opt.hfov_deg, rng)
    cameras = [CameraSpec.from_camera(f"cam{i:02d}", cam, placement) for i, (cam, placement) in enumerate(cams)]
    spec = SceneSpec(
        scene_id=scene_id_for(index),
        seed=int(rng.integers(2**31 - 1)),
        background=background.model_copy(deep=True),
        subjects=subjects,
        center=center,
        cameras=cameras,
        num_frames=opt.num_frames,
        fps=opt.fps,
        width=opt.width,
        height=opt.height,
        hfov_deg=opt.hfov_deg,
        catalog=catalog.source,
    )
    spec.caption = build_caption(spec)
    return spec


def sample_scenes(
    catalog: Catalog, count: int, seed: int = 0, options: SamplerConfig | None = None, start: int = 0
) -> list[SceneSpec]:
    return [sample_scene(catalog, i, seed, options) for i in range(start, start + count)]


def _sample_subjects(catalog: Catalog, n: int, opt: SamplerConfig, rng: np.random.Generator) -> list[SubjectSpec]:
    placed: list[SubjectSpec] = []
    for inst in range(1, n + 1):
        # Prefer a different asset for each subject while the catalog has enough of them.
        used = {p.asset_id for p in placed}
        pool = [s for s in catalog.subjects if s.id not in used] or catalog.subjects
        for _attempt in range(50):
            cand = _sample_subject(catalog, pool, inst, opt, rng)
            if all(not _overlap(cand, other, opt.num_frames) for other in placed):
                placed.append(cand)
                break
        else:
            log.debug("could not place subject %d without overlap; scene keeps %d subject(s)", inst, len(placed))
    return placed


def _sample_subject(
    catalog: Catalog, pool: list[CatalogSubject], instance_id: int, opt: SamplerConfig, rng: np.random.Generator
) -> SubjectSpec:
    entry = pool[int(rng.integers(len(pool)))]
    anims = catalog.subject_animations(entry)
    anim = anims[int(rng.integers(len(anims)))].model_copy(deep=True)
    scale = float(rng.uniform(*entry.scale))
    radius = entry.radius * scale
    duration = opt.num_frames / opt.fps * anim.speed
    travel = anim.travel_speed * scale * duration
    traj = _sample_trajectory(travel, max(opt.area_radius - radius, 0.1), rng)
    return SubjectSpec(
        instance_id=instance_id,
        asset_id=entry.id,
        kind=entry.kind,
        asset=entry.asset,
        description=entry.description,
        animation=anim,
        trajectory=traj,
        scale=scale,
        radius=entry.radius,
        params=dict(entry.params),
    )


def _sample_trajectory(travel: float, area: float, rng: np.random.Generator) -> TrajectorySpec:
    """A ground path of length ``travel`` that stays within ``area`` metres of the centre."""
    if travel < 1e-6:
        r = area * math.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * math.pi)
        return TrajectorySpec(
            type="static", start=(r * math.cos(a), r * math.sin(a)), yaw_deg=float(rng.uniform(-180, 180))
        )
    if travel <= 1.6 * area:
        # A straight walk through the area: a midpoint within (area - travel/2) of the centre keeps
        # both ends, and everything between, inside the area (triangle inequality).
        a = rng.uniform(0, 2 * math.pi)
        d = np.array([math.cos(a), math.sin(a)])
        slack = max(area - travel / 2, 0.0)
        r, b = slack * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        m = np.array([r * math.cos(b), r * math.sin(b)])
        s, e = m - d * travel / 2, m + d * travel / 2
        return TrajectorySpec(type="line", start=(float(s[0]), float(s[1])), end=(float(e[0]), float(e[1])))
    # Longer walks go around a circle inside the area.
    radius = float(rng.uniform(0.5, 1.0) * area)
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    return TrajectorySpec(
        type="circle",
        center=(0.0, 0.0),
        radius=radius,
        phase_deg=float(rng.uniform(0, 360)),
        turns=sign * travel / (2 * math.pi * radius),
    )


def _overlap(a: SubjectSpec, b: SubjectSpec, num_frames: int) -> bool:
    """Do two subjects' footprints intersect at any frame?"""
    frames = np.linspace(0, max(num_frames - 1, 0), min(num_frames, 50)).round().astype(int)
    pa = np.array([a.trajectory.pose(int(f), num_frames)[0][:2] for f in frames])
    pb = np.array([b.trajectory.pose(int(f), num_frames)[0][:2] for f in frames])
    gap = np.linalg.norm(pa - pb, axis=1).min()
    return bool(gap < a.radius * a.scale + b.radius * b.scale)


# --- captions ------------------------------------------------------------------------------------


def build_caption(spec: SceneSpec) -> str:
    """ "a robot walks and a fox jumps, in a snowy forest" from the catalog descriptions."""
    parts = []
    for s in spec.subjects:
        who = s.description.strip() or s.asset_id.replace("_", " ")
        what = s.animation.description.strip() or s.animation.id.replace("_", " ")
        parts.append(f"{who} {what}")
    if not parts:
        subject_text = ""
    elif len(parts) == 1:
        subject_text = parts[0]
    else:
        subject_text = ", ".join(parts[:-1]) + " and " + parts[-1]
    where = spec.background.description.strip()
    text = ", ".join(p for p in (subject_text, where) if p)
    return text[:1].lower() + text[1:] if text else ""


# --- explicit spec files -------------------------------------------------------------------------


def read_specs_jsonl(path: str | Path) -> list[SceneSpec | SpecError]:
    """One SceneSpec per line; an invalid line becomes a ``SpecError`` naming file and line (the job records it)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec file ({e.strerror or e})") from None
    out: list[SceneSpec | SpecError] = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append(SceneSpec.from_json(line, source=f"{path}:{n}"))
        except SpecError as e:
            out.append(e)
    return out


def write_specs_jsonl(specs: list[SceneSpec], path: str | Path) -> None:
    from syncam_data import fsio

    fsio.write_text(Path(path), "".join(s.to_json() + "\n" for s in specs))

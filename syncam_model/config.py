"""Typed training configuration, validated on construction.

A ``TrainConfig`` is built from a YAML file (``syncam_model/configs/paper.yaml``
holds the paper's defaults) plus command-line overrides. Every error names the
dotted key to change (``data.frames``, ``curriculum.schedule[1].max_angle``),
and the resolved config is saved in every checkpoint so a run records what
made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from syncam_data import limits
from syncam_model.frames import decodable_error, encodable_error

KINDS = ("multiview_video", "multiview_image", "single_video")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _at_most(limit: limits.Limit):
    """A field validator: the value (a number, or each end of a [min, max] pair) within ``limit``."""

    def check(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            for x in v if isinstance(v, (list, tuple)) else [v]:
                limit.check(x, info.field_name)
        return v

    return classmethod(check)


class CurriculumStage(_Strict):
    """From ``start_step`` on, multi-view-video views lie within [min_angle, max_angle] degrees of view 0."""

    start_step: int = Field(ge=0)
    min_angle: float = Field(ge=0, le=180)
    max_angle: float = Field(ge=0, le=180)

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumStage:
        if self.min_angle > self.max_angle:
            raise ValueError(f"min_angle {self.min_angle} is larger than max_angle {self.max_angle}")
        return self


class CurriculumConfig(_Strict):
    schedule: list[CurriculumStage] = Field(
        default_factory=lambda: [
            CurriculumStage(start_step=0, min_angle=0, max_angle=60),
            CurriculumStage(start_step=10_000, min_angle=30, max_angle=90),
            CurriculumStage(start_step=20_000, min_angle=60, max_angle=120),
        ]
    )
    # Multi-view image sets come from one posed video whose frames overlap; the
    # paper applies the angle curriculum to the rendered multi-camera video only.
    apply_to_images: bool = False
    pairwise: bool = Field(
        False,
        description="false: each view's angle to view 0 lies in the window (pairs among the other views may differ by up to twice "
        "its maximum); true: every pair of chosen views lies in the window",
    )

    @field_validator("schedule")
    @classmethod
    def _sorted(cls, v: list[CurriculumStage]) -> list[CurriculumStage]:
        if not v:
            raise ValueError("needs at least one stage")
        if v[0].start_step != 0:
            raise ValueError("the first stage must start at step 0")
        starts = [s.start_step for s in v]
        if starts != sorted(set(starts)):
            raise ValueError(f"start_step values must increase strictly, got {starts}")
        return v


class DataConfig(_Strict):
    height: int = Field(384, ge=8, description="training height in pixels (after resize + centre crop)")
    width: int = Field(672, ge=8, description="training width in pixels")
    frames: int = Field(49, ge=1, description="frames per video clip; CogVideoX's VAE needs 4k+1")
    frame_stride: int = Field(1, ge=1, description="step between sampled source frames (reduced for short clips)")
    frame_sampling: Literal["random", "first"] = "random"
    num_views: int | tuple[int, int] = Field(4, description="views per multi-view sample: a number or [min, max]")
    mix: dict[str, float] = Field(
        default_factory=lambda: {"multiview_video": 0.6, "multiview_image": 0.2, "single_video": 0.2}
    )
    translation_normalization: Literal["max_distance", "fixed"] = Field(
        "max_distance",
        description="relative translations of each sample: max_distance = divided by the largest camera-centre distance from view 0 "
        "(posed image sets have an arbitrary scale per sequence); fixed = divided by translation_scale",
    )
    translation_scale: float = Field(
        1.0, gt=0, description="with translation_normalization=fixed: metres per unit of the camera input"
    )
    micro_batch_size: int = Field(1, ge=1)
    num_workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    max_decode_retries: int = Field(8, ge=0, le=1000, description="replacement draws after a view fails to decode")

    # Documented maxima (syncam_data/limits.py; SYNCAM_MAX_* raises them): refused here, not by running out of memory.
    _side = field_validator("height", "width")(_at_most(limits.MODEL_SIDE))
    _length = field_validator("frames")(_at_most(limits.MODEL_FRAMES))
    _count = field_validator("num_views")(_at_most(limits.VIEWS))
    _batch = field_validator("micro_batch_size")(_at_most(limits.BATCH))
    _workers = field_validator("num_workers", "prefetch_factor")(_at_most(limits.WORKERS))

    @field_validator("frames")
    @classmethod
    def _vae_frames(cls, v: int) -> int:
        if encodable_error(v):
            raise ValueError(encodable_error(v))
        return v

    @field_validator("num_views")
    @classmethod
    def _views(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or hi < lo:
            raise ValueError(f"needs 1 <= min <= max, got {v}")
        return v

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(KINDS))
        if bad:
            raise ValueError(f"unknown kind(s) {bad}; kinds are {list(KINDS)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return v

    @model_validator(mode="after")
    def _scale_used(self) -> DataConfig:
        if self.translation_normalization != "fixed" and self.translation_scale != 1.0:
            raise ValueError(
                f"translation_scale={self.translation_scale} is only used with translation_normalization=fixed"
            )
        return self

    @model_validator(mode="after")
    def _multiple_of_16(self) -> DataConfig:
        # 8x VAE downsampling then 2x2 patches.
        for key in ("height", "width"):
            if getattr(self, key) % 16:
                raise ValueError(f"{key}={getattr(self, key)} must be a multiple of 16 (VAE 8x then 2x2 patches)")
        return self

    @property
    def views_range(self) -> tuple[int, int]:
        return (self.num_views, self.num_views) if isinstance(self.num_views, int) else tuple(self.num_views)  # type: ignore[return-value]


class CacheConfig(_Strict):
    use: Literal["auto", "never", "require"] = Field(
        "auto", description="auto: use a matching latent cache if one exists"
    )
    dir: str | None = Field(None, description="cache folder; default <shards>/latent_cache")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


Projector = Literal["linear", "relu_linear"]
AttentionText = Literal["none", "all_views"]
Position = Literal["after_attention", "block_input"]


class AdapterSpec(_Strict):
    """The structure of the multi-view modules (recorded in every adapter file; docs/model.md compares the choices)."""

    projector: Projector = Field(
        "linear",
        description="after the cross-view attention: a zero-initialized Linear (both official releases) or ReLU then that Linear",
    )
    attention_text: AttentionText = Field(
        "none",
        description="cross-view attention over the views' video tokens only (Wan release), or also all views' text tokens (CogVideoX release)",
    )
    position: Position = Field(
        "after_attention",
        description="where the module runs in each block: after the block's attention (Wan release) or at the block input (CogVideoX release)",
    )


class ModelConfig(_Strict):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weights of the frozen base; auto = bfloat16 on a GPU that supports it, else float32 (trained weights stay float32)",
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="accelerate's autocast; auto = bf16 where the weights are bfloat16 on a GPU, else no"
    )
    gradient_checkpointing: bool = True
    train_base: bool = False
    tiny_config: dict[str, Any] | None = Field(None, description="overrides for --pretrained tiny")
    projector: Projector = Field("linear", description=AdapterSpec.model_fields["projector"].description)
    mv_attention_text: AttentionText = Field("none", description=AdapterSpec.model_fields["attention_text"].description)
    mv_position: Position = Field("after_attention", description=AdapterSpec.model_fields["position"].description)

    def adapter_spec(self) -> AdapterSpec:
        return AdapterSpec(projector=self.projector, attention_text=self.mv_attention_text, position=self.mv_position)

    @model_validator(mode="after")
    def _precision(self) -> ModelConfig:
        # Autocast computes in one 16-bit type while the weights are stored in the other: ops autocast leaves
        # alone (LayerNorm with its weights) then see two dtypes and fail (measured on CPU: "mixed dtype").
        clash = {("float16", "bf16"), ("bfloat16", "fp16")}
        if (self.dtype, self.mixed_precision) in clash:
            raise ValueError(
                f"dtype={self.dtype} with mixed_precision={self.mixed_precision} mixes the two 16-bit types; "
                f"use mixed_precision={'bf16' if self.dtype == 'bfloat16' else 'fp16'} or no"
            )
        return self


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(1e-4, ge=0)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(200, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    max_grad_norm: float = Field(1.0, gt=0)
    global_batch_size: int = Field(
        32, ge=1, description="samples per optimizer step over all ranks (gradient accumulation fills it)"
    )

    _batch = field_validator("global_batch_size")(_at_most(limits.BATCH))
    _steps = field_validator("warmup_steps")(_at_most(limits.STEPS))


class DiffusionConfig(_Strict):
    text_dropout: float = Field(0.1, ge=0, le=1, description="probability of training a sample on the empty prompt")
    novel_view: bool = Field(
        False, description="novel-view training: view 0 is the clean input latent, not in the loss"
    )
    novel_view_prob: float = Field(0.9, ge=0, le=1)
    latents: Literal["sample", "mean"] = Field(
        "sample",
        description="training latents: a fresh draw from the VAE posterior, or its mean (decoded and cached runs alike)",
    )
    timestep_buckets: int = Field(4, ge=1, description="log the loss in this many equal timestep ranges")


class CheckpointConfig(_Strict):
    every: int = Field(1000, ge=1)
    keep: int = Field(3, ge=1, le=10_000)


class ValidationConfig(_Strict):
    every: int = Field(0, ge=0, description="0 = never")
    prompts: list[str] = Field(default_factory=lambda: ["A person walking in a park, sunny day."])
    cameras: str = Field("azimuth:0,30,60,90", description="camera preset understood by syncam-generate")
    frames: int | None = Field(
        None, description="frames of the validation videos (8N+1; default: data.frames rounded up to 8N+1)"
    )
    steps: int = Field(25, ge=1)
    dynamic_cfg: bool = Field(
        True, description="CogVideoX's cosine guidance schedule, as the official SynCamMaster inference"
    )

    _steps = field_validator("steps")(_at_most(limits.SAMPLING_STEPS))
    _length = field_validator("frames")(_at_most(limits.MODEL_FRAMES))

    @field_validator("frames")
    @classmethod
    def _decodable(cls, v: int | None) -> int | None:
        if v is not None and decodable_error(v):
            raise ValueError(decodable_error(v))
        return v

    guidance: float = Field(6.0, ge=1)


class LogConfig(_Strict):
    every: int = Field(10, ge=1)
    tensorboard: bool = False


class TrainConfig(_Strict):
    seed: int = 0
    steps: int = Field(50_000, ge=1)

    _steps = field_validator("steps")(_at_most(limits.STEPS))
    data: DataConfig = Field(default_factory=DataConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    def grad_accumulation(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that micro_batch x accumulation x ranks = global batch."""
        per_step = self.data.micro_batch_size * world_size
        if self.optim.global_batch_size % per_step:
            raise ConfigError(
                f"optim.global_batch_size={self.optim.global_batch_size} is not a multiple of "
                f"data.micro_batch_size x ranks = {self.data.micro_batch_size} x {world_size}"
            )
        return self.optim.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{_loc(tuple(e['loc']))}: {msg}")
    return f"{source}: invalid training config: " + "; ".join(lines)


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 1e-4)``; creates intermediate sections."""
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: {p} is not a section")
    d[parts[-1]] = value


def build_config(data: dict[str, Any] | None = None, source: str = "<config>") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a bundled config (``paper``, ``tiny``).

    A file must exist and be a file: a folder that happens to be called ``tiny`` in the current directory
    does not hide the bundled ``tiny`` config.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.is_file() and str(name_or_path) == Path(name_or_path).name:
        return bundled
    what = "is not a file" if p.exists() else "no such config file"
    raise ConfigError(
        f"{name_or_path}: {what}, and not the name of a bundled config ({', '.join(sorted(q.stem for q in CONFIG_DIR.glob('*.yaml')))})"
    )


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (default: the bundled paper config) and apply dotted-key overrides."""
    src = resolve_config_path(path or "paper")
    try:
        raw = yaml.safe_load(src.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: the top level must be a mapping of sections")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return build_config(raw, str(src))

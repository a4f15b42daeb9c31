"""The Blender backend's options (``render/blender.py``): ``BlenderConfig``.

In a module of its own, beside the backend, so that ``syncam-data --help`` reads the
descriptions and defaults without importing the renderer (numpy, and bpy when it renders).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import field_validator

from syncam_data import limits
from syncam_data.config import setting
from syncam_data.render.base import BackendConfig


class BlenderConfig(BackendConfig):
    """Options of the ``blender`` backend (``get_backend("blender", **options)``; ``render --backend blender``)."""

    backend: ClassVar[str] = "blender"
    label: ClassVar[str] = "blender backend"

    samples: int = setting(16, "Cycles samples per pixel.", "--samples", ge=1)
    device: Literal["cpu", "gpu"] = setting(
        "cpu", "Render on the CPU or a GPU (CUDA/OptiX/HIP/oneAPI/Metal).", "--device"
    )
    threads: int = setting(0, "CPU threads Cycles uses (0: all cores).", ge=0)
    max_bounces: int = setting(4, "Cycles max_bounces (diffuse, glossy and transmission bounces are at most 2).", ge=0)
    tmp_dir: str | None = setting(
        None, "Folder for the render passes Blender writes and we read back (default: the system's temporary folder)."
    )
    blender_log: bool = setting(False, "Show Blender's own output (it is silenced by default).")

    @field_validator("device", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("samples")
    @classmethod
    def _at_most(cls, v: int) -> int:
        problem = limits.SAMPLES.over(v)
        if problem:
            raise ValueError(problem)
        return v

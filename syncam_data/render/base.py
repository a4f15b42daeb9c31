"""The renderer interface every backend implements, and the backend registry.

A backend turns one ``SceneSpec`` into the frames of a Contract 2 scene
folder. The job runner (``render/jobs.py``) owns everything around it:
temporary folders, renames, skipping finished scenes, retries, the run
report, worker processes and Ray actors. One backend instance lives in one
worker for many scenes (one Blender per process, one Unreal connection per
engine instance), so expensive start-up happens once per worker.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from syncam_data.render.output import SceneOutput
from syncam_data.scenes import SceneSpec

FrameCallback = Callable[[int], None]


@dataclass
class WorkerSlot:
    """Which worker a backend instance belongs to (0..workers-1), so each can own one engine instance."""

    index: int = 0
    count: int = 1


@dataclass
class RenderResult:
    """What a backend reports about one rendered scene (recorded in scene.json)."""

    backend: str
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class RenderBackend(ABC):
    """Renders scene specs; subclasses register in ``BACKENDS``."""

    name: str = "base"

    def __init__(self, slot: WorkerSlot | None = None, **options: Any) -> None:
        self.slot = slot or WorkerSlot()
        self.options = options

    def open(self) -> None:
        """Start or connect to the engine (called once per worker before the first scene)."""

    def close(self) -> None:
        """Release the engine (called once per worker)."""

    @abstractmethod
    def render_scene(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None = None) -> RenderResult:
        """Render every camera of every frame of ``spec`` into ``out`` (cameras added, frames added in order).

        Frames must be synchronized: frame k of every camera shows the same
        world state. Call ``on_frame(k)`` after frame k is captured on all
        cameras. Do not call ``out.finish``: the job runner does.
        """

    def __enter__(self) -> "RenderBackend":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# name -> "module:Class"; imported lazily so `bpy`/`unrealcv` load only when used.
BACKENDS: dict[str, str] = {
    "blender": "syncam_data.render.blender:BlenderBackend",
    "unrealcv": "syncam_data.render.unrealcv:UnrealCVBackend",
}


def get_backend(name: str, slot: WorkerSlot | None = None, **options: Any) -> RenderBackend:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown render backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(slot=slot, **options)

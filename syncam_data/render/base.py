"""The renderer interface every backend implements, its typed config, and the backend registry.

A backend turns one ``SceneSpec`` into the frames of a Contract 2 scene
folder. Each backend declares its options next to it (``BlenderConfig`` in
``render/blender_config.py``, ``UnrealCVConfig`` in ``render/unrealcv_config.py``): a
``BackendConfig`` (``syncam_data.config.Config``) that refuses unknown keys,
describes every field (the ``render`` command's ``--help`` shows those
descriptions) and names the command-line flag in its errors. ``get_backend``
builds it, and ``scene.json`` records it in full (under ``backend_options``). The job runner (``render/jobs.py``) owns everything around it:
temporary folders, renames, skipping finished scenes, retries, the run
report, worker processes and Ray actors. One backend instance lives in one
worker for many scenes (one Blender per process, one Unreal connection per
engine instance), so expensive start-up happens once per worker.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from syncam_data.config import Config

if TYPE_CHECKING:  # type hints only: `syncam-data --help` imports the options without the scene and video stack
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


class BackendConfig(Config):
    """Base of every backend's config; ``backend`` names it in messages ("blender backend: unknown option 'port'")."""

    backend: ClassVar[str] = "base"
    label: ClassVar[str] = "base backend"


class RenderBackend(ABC):
    """Renders scene specs; subclasses register in ``BACKENDS`` and declare their ``config_class``."""

    name: str = "base"
    config_class: ClassVar[type[BackendConfig]] = BackendConfig

    def __init__(self, slot: WorkerSlot | None = None, config: BackendConfig | Mapping[str, Any] | None = None) -> None:
        self.slot = slot or WorkerSlot()
        self.config = self.config_class.parse(config or {})

    def open(self) -> None:  # noqa: B027 (an optional hook: a backend without an engine to start keeps it empty)
        """Start or connect to the engine (called once per worker before the first scene)."""

    def close(self) -> None:  # noqa: B027 (an optional hook, like open)
        """Release the engine (called once per worker)."""

    @abstractmethod
    def render_scene(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None = None) -> RenderResult:
        """Render every camera of every frame of ``spec`` into ``out`` (cameras added, frames added in order).

        Frames must be synchronized: frame k of every camera shows the same
        world state. Call ``on_frame(k)`` after frame k is captured on all
        cameras. Do not call ``out.finish``: the job runner does.
        """

    def __enter__(self) -> RenderBackend:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# name -> "module:Class"; imported lazily so `bpy`/`unrealcv` load only when used.
BACKENDS: dict[str, str] = {
    "blender": "syncam_data.render.blender:BlenderBackend",
    "unrealcv": "syncam_data.render.unrealcv:UnrealCVBackend",
}


def backend_class(name: str) -> type[RenderBackend]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown render backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def backend_config(name: str, **options: Any) -> BackendConfig:
    """The backend's config built from ``options`` (``ConfigError`` names each bad one, by its flag where it has one)."""
    return backend_class(name).config_class.parse(options)


def get_backend(name: str, slot: WorkerSlot | None = None, **options: Any) -> RenderBackend:
    """A backend instance; ``options`` are validated by the backend's config (unknown keys refused)."""
    cls = backend_class(name)
    return cls(slot=slot, config=cls.config_class.parse(options))

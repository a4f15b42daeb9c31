"""The renderer interface every backend implements, its typed options, and the backend registry.

A backend turns one ``SceneSpec`` into the frames of a Contract 2 scene
folder. Each backend declares its options next to it (``BlenderOptions`` in
``render/blender.py``, ``UnrealCVOptions`` in ``render/unrealcv.py``): a
``BackendOptions`` model that refuses unknown keys, describes every field (the
``render`` command's ``--help`` shows those descriptions) and names the
command-line flag in its errors. ``get_backend`` builds them, and ``scene.json``
records them in full. The job runner (``render/jobs.py``) owns everything around it:
temporary folders, renames, skipping finished scenes, retries, the run
report, worker processes and Ray actors. One backend instance lives in one
worker for many scenes (one Blender per process, one Unreal connection per
engine instance), so expensive start-up happens once per worker.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class BackendOptionsError(ValueError):
    """Backend options that do not validate; one line per problem, naming the option's flag."""


def option(default: Any, description: str, flag: str | None = None, **constraints: Any) -> Any:
    """A backend option: its default, the help text, and the ``render`` flag that sets it (if any)."""
    return Field(default, description=description, json_schema_extra={"flag": flag} if flag else None, **constraints)


class BackendOptions(BaseModel):
    """Base of every backend's options: unknown keys and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    backend: ClassVar[str] = "base"

    @classmethod
    def parse(cls, options: Mapping[str, Any] | "BackendOptions") -> "BackendOptions":
        """Validated options; ``BackendOptionsError`` naming each bad option (its flag where it has one)."""
        if isinstance(options, cls):
            return options
        if isinstance(options, BackendOptions):
            raise BackendOptionsError(f"{cls.backend} backend: got the options of the {options.backend} backend")
        try:
            return cls.model_validate(dict(options))
        except ValidationError as e:
            raise BackendOptionsError("; ".join(cls._problem(err) for err in e.errors())) from None

    @classmethod
    def _problem(cls, err: Any) -> str:
        name = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            return f"{cls.backend} backend: unknown option {name!r} (its options: {', '.join(cls.model_fields)})"
        msg = err["msg"].removeprefix("Value error, ")
        return f"{cls.flag(name) or f'{cls.backend} option {name}'}: {msg} (got {err.get('input')!r})"

    @classmethod
    def flag(cls, name: str) -> str | None:
        """The ``render`` flag that sets option ``name`` (None for options the command line does not set)."""
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("flag") if isinstance(extra, dict) else None

    @classmethod
    def help(cls, name: str) -> str:
        """The option's description, for ``--help``."""
        return str(cls.model_fields[name].description)

    @classmethod
    def choices(cls, name: str) -> tuple[Any, ...]:
        """The values a ``Literal`` option accepts (None left out), for the command line's choices."""
        out: list[Any] = []
        todo = [cls.model_fields[name].annotation]
        while todo:
            t = todo.pop(0)
            if get_origin(t) is Literal:
                out += [v for v in get_args(t) if v is not None]
            else:
                todo += list(get_args(t))
        return tuple(out)

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.model_fields[name].get_default(call_default_factory=True)

    def record(self) -> dict[str, Any]:
        """Every option, defaults included, as JSON (recorded in scene.json)."""
        return self.model_dump(mode="json")


class RenderBackend(ABC):
    """Renders scene specs; subclasses register in ``BACKENDS`` and declare ``Options``."""

    name: str = "base"
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, slot: WorkerSlot | None = None, options: BackendOptions | Mapping[str, Any] | None = None) -> None:
        self.slot = slot or WorkerSlot()
        self.options = self.Options.parse(options or {})

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


def backend_class(name: str) -> type[RenderBackend]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown render backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def backend_options(name: str, **options: Any) -> BackendOptions:
    """The backend's ``Options`` built from ``options`` (``BackendOptionsError`` names each bad one)."""
    return backend_class(name).Options.parse(options)


def get_backend(name: str, slot: WorkerSlot | None = None, **options: Any) -> RenderBackend:
    """A backend instance; ``options`` are validated by the backend's ``Options`` (unknown keys refused)."""
    cls = backend_class(name)
    return cls(slot=slot, options=cls.Options.parse(options))

"""The UnrealCV backend's options (``render/unrealcv.py``): ``UnrealCVConfig``.

In a module of its own, beside the backend, so that ``syncam-data --help`` reads the
descriptions and defaults without importing the renderer and its client.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import field_validator

from syncam_data.config import setting
from syncam_data.render.base import BackendConfig

# UnrealCV's own default (FServerConfig: Port = 9000).
DEFAULT_PORT = 9000


class UnrealCVConfig(BackendConfig):
    """Options of the ``unrealcv`` backend (``get_backend("unrealcv", slot, **options)``; ``render --backend unrealcv``)."""

    backend: ClassVar[str] = "unrealcv"
    label: ClassVar[str] = "unrealcv backend"

    host: str = setting("127.0.0.1", "Host of the Unreal Engine instances.", "--host")
    port: list[int] = setting(
        [DEFAULT_PORT],
        "UnrealCV server port; repeat once per engine instance (worker i uses the i-th port; "
        "when launching more instances than ports, the first port plus i).",
        "--port",
        min_length=1,
    )
    unix_socket: str | None = setting(
        None,
        "Connect through this Unix socket instead of TCP (Linux); {port} is replaced, "
        "'auto' means /tmp/unrealcv_{port}.socket.",
        "--unix-socket",
    )
    launch: str | None = setting(
        None,
        "Command template that starts an engine instance, with {port} (and {slot}), e.g. "
        "'./Game.sh -cvport {port} -RenderOffscreen' (-cvport PORT is the option UnrealCV's server reads).",
        "--launch",
    )
    connect_timeout: float | None = setting(
        None, "Seconds to wait for the server to answer (default: 300 when launching, else 15).", gt=0
    )
    timeout: float = setting(120.0, "Seconds to wait for any one reply.", gt=0)
    level_timeout: float = setting(60.0, "Seconds to wait for a level to load.", gt=0)
    retries: int = setting(
        2,
        "Reconnections per scene (a dropped or timed-out connection) before the scene fails.",
        "--retries",
        ge=0,
        le=100,
    )
    recaptures: int = setting(
        3, "Captures of a frame in which something moved, after the first, before the scene fails.", ge=0, le=100
    )
    image_format: Literal["bmp", "png"] = setting("bmp", "Format of the lit images on the wire.")
    lens: Literal["auto", "fov", "cine"] = setting(
        "auto",
        "auto uses the cine camera where the server has it (UnrealZoo v1.1), else the "
        "horizontal FOV; fov or cine force one (cine fails on servers without it).",
        "--lens",
    )
    sensor_width_mm: float = setting(36.0, "Filmback width of the cine camera, mm.", gt=0)
    depth_kind: Literal["plane", "point"] = setting(
        "plane", "What the server's depth is: plane (z) depth, or point (ray) depth to convert."
    )
    illumination: Literal["lumen", "screen_space", "none"] | None = setting(
        None,
        "Global illumination of every camera's captures (UE 5.5+ scene captures disable Lumen unless asked: lumen); "
        "sent where the server has 'vset /camera/N/illumination', default: the server's.",
        "--illumination",
    )
    require_plugin: bool = setting(
        False, "Fail instead of rendering with approximate animation sync when the SynCam plugin is missing."
    )

    @field_validator("port", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, (int, str)) else v

    @field_validator("port")
    @classmethod
    def _valid_ports(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports must be 1 to 65535, got {bad}")
        return v

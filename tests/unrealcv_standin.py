"""A local stand-in for an Unreal Engine game running an UnrealCV server, for tests and benchmarks.

Unreal Engine cannot run on the test machines, so the UnrealCV backend is
tested against this server. It must be at least as strict as the servers
users run, so it follows their C++ sources (unrealcv/unrealcv, branch ``5.2``,
``UnrealCV.uplugin`` version 1.0.1) rather than our idea of them. Two
flavours, chosen by ``flavour=``:

``oss-5.2`` (the default): the open-source plugin built from the 5.2 branch.

- ``vget /unrealcv/version`` replies ``1.0.1`` (``FPluginHandler::GetVersion``
  returns the descriptor's VersionName); there is NO ``vget /unrealcv/commands``
  (only ``vget /unrealcv/help``), so it replies "error ... handler ...".
- Unknown commands: ``error Can not find a handler for URI '...'`` (builds before
  commit 1f64480, 2026-03-04) or ``error No handler found for URI '...'``
  (``revision="head"``), from ``FCommandDispatcher::Exec``. Commands are matched
  with the dispatcher's regular expressions: ``[str]`` = ``([^ ]*)``, ``[uint]`` =
  ``(\\d*)``, ``[float]`` = ``([-+]?\\d*[.]?\\d+)`` (no exponents), then ``[ ]*$``.
- ``vbatch N`` (``FUnrealcvServer::ProcessPendingRequest``) is handled in the
  server loop, never listed. Before 1f64480 every other request resets the batch
  counter to 1, so a vbatch batches nothing; ``revision="head"`` collects the N
  requests (over several ticks, at most 32 dequeued per tick) and runs them in one tick.
- ``vget /cameras`` (``FCameraHandler::GetCameraList``) lists SENSOR component
  names with a trailing space: ``PawnSensor FusionCameraSensor ...``; ``vset
  /cameras/spawn`` replies the new ACTOR name (``FusionCameraActor_3``) that never
  appears there. Camera ``N`` is the N-th entry of that list
  (``USensorBPLib::GetFusionSensorList``: the pawn's sensor first); moving camera 0
  moves the pawn.
- Spawning: only ``vset /objects/spawn UCLASSNAME [NAME]``
  (``FObjectHandler::Spawn``: ``FindFirstObjectSafe<UClass>``, so the class must
  already be loaded: referenced by the current level), at the world origin.
  ``spawn_from_path`` does not exist. No cine camera commands.
  ``vset /camera/N/illumination`` exists.
- ``vbp OBJECT FUNCTION args`` (``FAliasHandler::VExecWithOutput``): the argument
  parser SKIPS parameters flagged out or reference (``const FString&`` is a
  reference parameter), a bad argument means the function is not called but the
  reply is still a JSON object of outputs; numeric outputs are read from the
  start of the parameter block (the first parameter's bytes), bools come back as
  empty strings. The SynCam plugin's functions here are declared by parsing the
  plugin's C++ header (``unreal_plugin/.../SynCamFrameSync.h``), so a function
  declared against these rules fails here as it would in Unreal.
- Depth and object masks include only annotated meshes (``UDepthCamSensor::
  CaptureDepth`` renders a show-only list of annotation components): UnrealCV
  annotates every mesh actor at world start (``FObjectAnnotator::AnnotateWorld``)
  and an actor spawned later only when its colour is set (``vset /object/X/color``
  creates the components; an actor without a mesh component gets none). A
  Landscape ground is never annotated: it reads as sky.
- ``vset /action/game/level`` replies ``ok`` at once and takes effect on the next
  tick (``UGameplayStatics::OpenLevel``); an unknown map falls back to the default map.
- One client at a time: the listener thread serves its client inline
  (``UUnixTcpServer::StartMessageServiceINet``), so a second client is accepted and
  greeted only after the first disconnects.

``unrealzoo-1.1``: the UnrealZoo "UnrealCV Dev" build (v1.1): ``vget
/unrealcv/commands`` lists the registered templates (never ``vbatch``), ``vget
/cameras`` lists ``CID-...`` ids, ``vset /objects/spawn_from_path ASSET [NAME]``
loads and spawns (and annotates) an asset path, and the cine camera needs
``vset /camera/N/cine/enabled 1`` before ``cine/filmback W H OFFX OFFY`` and
``cine/lens FOCAL APERTURE``.

The world: a left-handed X-forward, Y-right, Z-up world in centimetres,
rotators (pitch, yaw, roll) whose FRotationMatrix rows are the forward, right
and up axes, a horizontal field of view. Images are ray-cast through every
pixel centre with this module's own projection code (it does not use
``syncam_data.cameras``): a ground plane at z = 0, the level's marker spheres
at known points, one sphere plus a "nose" sphere per spawned actor. Lit images
are BMP (32-bpp top-down BGRA, as ``FImageUtil::ConvertToBmp`` writes) or PNG;
depth is plane depth in cm as npy, quantized through float16 as Unreal's
half-float target is (sky 65504); masks are flat per-object colours.

A game thread ticks the world (``tick_s``: engine frame time; 0 = tick as soon
as requests are waiting): world time advances only while not paused, queued
requests run in the tick, replies go out as each request runs.

Cost and failure simulation: ``capture_delay`` makes every captured image take
at least that long (the render/read-back cost of a real engine); ``drop_after=N``
closes the connection without a reply at the N-th request; ``silent`` accepts
but never greets; ``fault_anim_offset`` / ``fault_camera_offset_cm`` make the
engine not hold exactly what was set; ``fault_nudge_after=N`` moves the first
subject by 5 cm right after the N-th capture (game logic moving something during
a frame), ``fault_unpause_after=N`` resumes the world (and lets 0.5 s of
world time pass) after the N-th capture.

Run it by hand: ``python tests/unrealcv_standin.py -cvport 9000 [--flavour unrealzoo-1.1]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import queue
import re
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger("unrealcv_standin")

MAGIC = 0x9E2B83C1
PLUGIN_ACTOR = "SynCamFrameSync"
PLUGIN_HEADER = (
    Path(__file__).resolve().parent.parent
    / "unreal_plugin"
    / "SynCamUnreal"
    / "Source"
    / "SynCamUnreal"
    / "Public"
    / "SynCamFrameSync.h"
)
SKY_DEPTH_CM = 65504.0  # the largest float16: what Unreal's half-float depth target holds for the sky
GROUND_MASK = (60, 60, 60)
SKY_RGB = (135, 180, 235)
SUBJECT_RADIUS_CM = 30.0
DEFAULT_MAP = "/Game/Maps/Default"
FLAVOURS = ("oss-5.2", "unrealzoo-1.1")
MAX_REQUESTS_PER_TICK = 32  # FUnrealcvServer::ProcessPendingRequest at head


# --- Unreal math, written out independently of syncam_data.cameras -----------------


def rotator_axes(pitch: float, yaw: float, roll: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of FRotationMatrix(pitch, yaw, roll): forward (X), right (Y), up (Z) in the left-handed world."""
    sp, cp = math.sin(math.radians(pitch)), math.cos(math.radians(pitch))
    sy, cy = math.sin(math.radians(yaw)), math.cos(math.radians(yaw))
    sr, cr = math.sin(math.radians(roll)), math.cos(math.radians(roll))
    x_axis = np.array([cp * cy, cp * sy, sp])
    y_axis = np.array([sr * sp * cy - cr * sy, sr * sp * sy + cr * cy, -sr * cp])
    z_axis = np.array([-(cr * sp * cy + sr * sy), cy * sr - cr * sp * sy, cr * cp])
    return x_axis, y_axis, z_axis


def normalize_axis(a: float) -> float:
    """FRotator::NormalizeAxis: (-180, 180]."""
    a = math.fmod(a, 360.0)
    if a > 180.0:
        a -= 360.0
    elif a <= -180.0:
        a += 360.0
    return a


def fmt(*vals: float) -> str:
    """FStrFormatter: vectors and rotators as '%.3f %.3f %.3f'."""
    return " ".join(f"{v:.3f}" for v in vals)


def float32(v: float) -> float:
    """UnrealCV parses command arguments with FCString::Atof into float."""
    return float(np.float32(v))


# --- project content -------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    """An asset of the simulated project: a spawnable Blueprint class or an animation sequence."""

    path: str
    kind: str  # "class" or "animation"
    has_mesh: bool = True  # classes: does the actor have a mesh component UnrealCV can annotate?


# The assets the tests, the docs' examples and the benchmark use; a test may pass its own.
DEFAULT_CONTENT: tuple[Asset, ...] = (
    Asset("/Game/Characters/Walker/BP_Walker.BP_Walker_C", "class"),
    Asset("/Game/Animals/Dog/BP_Dog.BP_Dog_C", "class"),
    Asset("/Game/Characters/BP_Hiker.BP_Hiker_C", "class"),
    Asset("/Game/Animals/BP_Dog.BP_Dog_C", "class"),
    Asset("/Game/Bench/BP_Subject.BP_Subject_C", "class"),
    Asset("/Game/Logic/BP_Trigger.BP_Trigger_C", "class", has_mesh=False),
    Asset("/Game/Characters/Walker/Anim_Walk.Anim_Walk", "animation"),
    Asset("/Game/Animals/Dog/Anim_Trot.Anim_Trot", "animation"),
    Asset("/Game/Characters/Anim/Walk.Walk", "animation"),
    Asset("/Game/Characters/Anim/Wave.Wave", "animation"),
    Asset("/Game/Characters/Anim/Sit.Sit", "animation"),
    Asset("/Game/Bench/Walk.Walk", "animation"),
)


def class_short_name(path: str) -> str:
    """'/Game/X/BP_A.BP_A_C' -> 'BP_A_C' (the UClass's object name)."""
    return path.rsplit(".", 1)[-1] if "." in path else path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class LevelConfig:
    """What a map holds at world start."""

    ground: str = "static_mesh"  # "static_mesh" (annotated at world start) or "landscape" (never annotated)
    references: tuple[str, ...] = ()  # class asset paths the level references (loaded with it)
    placed_cameras: int = 0  # FusionCameraActors placed in the level (listed after the pawn's sensor)


# --- world state -----------------------------------------------------------------------


@dataclass
class Marker:
    """A static sphere of the level: the points the tests check reprojection against."""

    name: str
    location: tuple[float, float, float]  # cm, Unreal world
    radius: float
    color: tuple[int, int, int]  # lit colour
    mask: tuple[int, int, int]  # object-mask colour


@dataclass
class Actor:
    """A spawned actor (a subject): rendered as a sphere standing on its location plus a nose sphere."""

    name: str
    asset: str
    has_mesh: bool = True
    location: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    rotation: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    mask: tuple[int, int, int] | None = None  # annotation colour; None = not annotated (absent from depth and masks)
    animation: str = ""
    anim_time: float | None = None  # set and frozen by the plugin; None = plays with world time
    spawn_time: float = 0.0

    def spheres(self) -> list[tuple[np.ndarray, float]]:
        r = SUBJECT_RADIUS_CM * self.scale[2]
        centre = np.array(self.location) + np.array([0.0, 0.0, r])
        fwd = rotator_axes(*self.rotation)[0]
        return [(centre, r), (centre + fwd * r, 0.35 * r)]


@dataclass
class StandinCamera:
    name: str  # what `vget /cameras` lists for it
    actor: str
    location: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    rotation: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    fov: float = 90.0
    width: int = 640
    height: int = 480
    cine_enabled: bool = False
    filmback: tuple[float, float] = (36.0, 24.0)  # sensor width, height (mm)
    focal_mm: float = 35.0
    illumination: str = "default"

    def hfov(self) -> float:
        if self.cine_enabled:
            return math.degrees(2 * math.atan(self.filmback[0] / (2 * self.focal_mm)))
        return self.fov


def clip_length(clip: str) -> float:
    """A made-up but fixed length (s) per animation asset path."""
    return 1.0 + (zlib.crc32(clip.encode()) % 200) / 100.0


def level_markers(map_path: str) -> list[Marker]:
    """The level's markers: a deterministic ring plus a centre pole, placed from the map name."""
    seed = zlib.crc32(map_path.encode())
    rng = np.random.default_rng(seed)
    out = []
    for i in range(8):
        ang = 2 * math.pi * i / 8 + rng.uniform(-0.2, 0.2)
        rad = rng.uniform(120, 260)
        z = rng.uniform(20, 180)
        color = tuple(int(c) for c in rng.integers(60, 250, size=3))
        out.append(
            Marker(f"Marker_{i}", (rad * math.cos(ang), rad * math.sin(ang), z), 14.0, color, (10 + 20 * i, 200, 40))
        )
    out.append(Marker("Marker_Centre", (0.0, 0.0, 100.0), 12.0, (250, 250, 250), (200, 10, 200)))
    return out


class World:
    """The simulated game world: level, actors, cameras, pause state and world time."""

    def __init__(self, flavour: str, levels: dict[str, LevelConfig], content: dict[str, Asset], plugin: bool) -> None:
        self.flavour = flavour
        self.levels = levels
        self.content = content
        self.plugin = plugin
        self.level = ""
        self.level_config = LevelConfig()
        self.markers: list[Marker] = []
        self.actors: dict[str, Actor] = {}
        self.cameras: list[StandinCamera] = []
        self.loaded_classes: set[str] = set()
        self.paused = False
        self.slomo = 1.0
        self._time = 0.0
        self._last_wall = time.monotonic()
        self.tick_count = 0
        self._serial = 0
        self._cid = 0
        # Lit, depth and mask of a camera in one world state share one render (keyed by that state).
        self.render_cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.static_cache: dict[tuple, list[np.ndarray]] = {}
        self.load_level(DEFAULT_MAP)

    def advance(self) -> None:
        """Start an engine tick: world time follows the wall clock while the game runs."""
        now = time.monotonic()
        if not self.paused:
            self._time += (now - self._last_wall) * self.slomo
        self._last_wall = now
        self.tick_count += 1

    @property
    def time(self) -> float:
        return self._time

    def map_exists(self, path: str) -> bool:
        return path in self.levels or path.startswith("/Game/Maps/")

    def load_level(self, path: str) -> None:
        """A new world: what was spawned is gone, the pause is lifted, classes not referenced are unloaded."""
        if not self.map_exists(path):
            log.warning("travel to %s failed (no such map); loading the default map", path)
            path = DEFAULT_MAP
        self.level = path
        self.level_config = self.levels.get(path, LevelConfig())
        self.markers = level_markers(path)
        self.actors.clear()
        self.loaded_classes = {p for p in self.level_config.references if p in self.content}
        self.cameras = [StandinCamera(self._camera_name("PawnSensor"), "DefaultPawn_0")]
        for i in range(self.level_config.placed_cameras):
            self.cameras.append(StandinCamera(self._camera_name("FusionCameraSensor"), f"PlacedCamera_{i}"))
        self.paused = False
        self.render_cache.clear()

    def _camera_name(self, sensor: str) -> str:
        if self.flavour == "unrealzoo-1.1":
            self._cid += 1
            return f"CID-{self._cid:04d}"
        return sensor

    def spawn_camera(self) -> StandinCamera:
        self._serial += 1
        cam = StandinCamera(self._camera_name("FusionCameraSensor"), f"FusionCameraActor_{self._serial}")
        self.cameras.append(cam)
        return cam

    def spawn_actor(self, asset: Asset, name: str | None, annotate_colour: tuple[int, int, int] | None = None) -> Actor:
        """SpawnActor at the origin (FActorSpawnParameters: AlwaysSpawn); a requested name that exists is made unique."""
        self._serial += 1
        base = name or f"{class_short_name(asset.path)}_{self._serial}"
        actor_name = base
        while actor_name in self.actors or actor_name in (m.name for m in self.markers):
            self._serial += 1
            actor_name = f"{base}_{self._serial}"
        a = Actor(actor_name, asset.path, has_mesh=asset.has_mesh, spawn_time=self.time)
        if annotate_colour is not None and a.has_mesh:
            a.mask = annotate_colour
        self.actors[actor_name] = a
        return a

    def anim_time(self, a: Actor) -> float:
        return a.anim_time if a.anim_time is not None else self.time - a.spawn_time

    def state_key(self, cam: StandinCamera) -> tuple:
        """Everything a render of ``cam`` depends on."""
        return (
            self.level,
            tuple(cam.location),
            tuple(cam.rotation),
            cam.hfov(),
            cam.width,
            cam.height,
            tuple(
                (n, tuple(a.location), tuple(a.rotation), tuple(a.scale), a.mask, self.anim_time(a))
                for n, a in self.actors.items()
            ),
        )

    # --- rendering -----------------------------------------------------------------
    def render(self, cam: StandinCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ray-cast every pixel centre: (rgb uint8 HxWx3, plane depth cm float32 HxW, mask uint8 HxWx3, lit depth cm).

        ``depth`` (quantized through float16 like Unreal's half-float target, sky
        65504) and the mask hold only annotated meshes; the lit image shows
        everything. The level's static part (ground, markers) is cast once per
        camera pose; each render adds the actors inside their screen boxes.
        """
        w, h = cam.width, cam.height
        f = w / (2.0 * math.tan(math.radians(cam.hfov()) / 2.0))
        axes = rotator_axes(*cam.rotation)
        o = np.array(cam.location, dtype=np.float64)
        key = (self.level, self.level_config.ground, tuple(cam.location), tuple(cam.rotation), cam.hfov(), w, h)
        static = self.static_cache.get(key)
        if static is None:  # (kept across level loads: its key holds the level)
            while len(self.static_cache) >= 4 * max(1, len(self.cameras)):
                self.static_cache.pop(next(iter(self.static_cache)))
            static = self.static_cache[key] = self._render_static(o, axes, f, w, h)
        buffers = [a.copy() for a in static]
        for a in self.actors.values():
            phase = self.anim_time(a)
            # The animation is visible: the body colour pulses with the animation time.
            body = np.array([200.0, 128 + 100 * math.sin(2 * math.pi * phase), 60.0])
            for i, (c, r) in enumerate(a.spheres()):
                colour = body if i == 0 else np.array([30.0, 30.0, 220.0])
                _cast_sphere(c, r, colour, a.mask if a.has_mesh else None, o, axes, f, *buffers)
        rgb, lit_depth, ann_depth, depth, mask = buffers
        return rgb, depth, mask, lit_depth

    def _render_static(self, o: np.ndarray, axes: tuple[np.ndarray, ...], f: float, w: int, h: int) -> list[np.ndarray]:
        """The level alone: the ground plane z = 0 and the markers (all annotated at world start, except a Landscape)."""
        lit_depth = np.full((h, w), np.inf, np.float32)
        rgb = np.empty((h, w, 3), np.uint8)
        rgb[:] = SKY_RGB
        mask = np.zeros((h, w, 3), np.uint8)
        ann_depth = lit_depth.copy()
        if o[2] > 0:  # the ground plane, seen from above
            d = _rays(axes, f, w, h, 0, h, 0, w)
            hit = d[..., 2] < 0
            t = np.where(hit, -o[2] / np.where(hit, d[..., 2], -1.0), np.inf)
            p = o + np.where(hit, t, 0.0)[..., None] * d
            checker = (np.floor(p[..., 0] / 100.0) + np.floor(p[..., 1] / 100.0)) % 2 == 0
            lit_depth = np.where(hit, t, np.inf).astype(np.float32)
            shade = np.where(
                checker[..., None], np.array([170, 160, 140], np.uint8), np.array([110, 105, 95], np.uint8)
            )
            rgb = np.where(hit[..., None], shade, rgb).astype(np.uint8)
            if self.level_config.ground == "static_mesh":
                ann_depth = lit_depth.copy()
                mask[hit] = GROUND_MASK
        depth = _half_depth(ann_depth)
        buffers = [rgb, lit_depth, ann_depth, depth, mask]
        for m in self.markers:
            _cast_sphere(np.array(m.location), m.radius, np.array(m.color, float), m.mask, o, axes, f, *buffers)
        return buffers


def _half_depth(cm: np.ndarray) -> np.ndarray:
    """What UnrealCV's depth npy holds: plane depth in cm through a float16 target, 65504 for the sky."""
    return np.minimum(np.where(np.isfinite(cm), cm, SKY_DEPTH_CM), SKY_DEPTH_CM).astype(np.float16).astype(np.float32)


def _rays(axes: tuple[np.ndarray, ...], f: float, w: int, h: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Ray directions through pixel centres [y0:y1, x0:x1], with a unit forward component (so a hit's t is its plane depth)."""
    fwd, right, up = axes
    u = (np.arange(x0, x1) + 0.5 - w / 2.0) / f
    v = (np.arange(y0, y1) + 0.5 - h / 2.0) / f
    return fwd[None, None, :] + u[None, :, None] * right[None, None, :] - v[:, None, None] * up[None, None, :]


_LIGHT = np.array([0.3, -0.4, 0.87])


def _cast_sphere(
    c: np.ndarray,
    r: float,
    colour: np.ndarray,
    mcol: tuple[int, int, int] | None,
    o: np.ndarray,
    axes: tuple[np.ndarray, ...],
    f: float,
    rgb: np.ndarray,
    lit_depth: np.ndarray,
    ann_depth: np.ndarray,
    depth: np.ndarray,
    mask: np.ndarray,
) -> None:
    """Draw one sphere into the buffers where it is nearer than what they hold (only pixels of its screen box)."""
    h, w = lit_depth.shape
    fwd, right, up = axes
    box = _screen_box(c, r, o, fwd, right, up, f, w, h)
    if box is None:
        return
    y0, y1, x0, x1 = box
    dd = _rays(axes, f, w, h, y0, y1, x0, x1)
    oc = o - c
    a2 = np.einsum("ijk,ijk->ij", dd, dd)
    b = 2.0 * (dd @ oc)
    disc = b * b - 4 * a2 * (float(oc @ oc) - r * r)
    inside = disc >= 0
    if not inside.any():
        return
    t = np.where(inside, (-b - np.sqrt(np.where(inside, disc, 0.0))) / (2 * a2), np.inf)
    t = np.where(t > 0, t, np.inf)
    n = (o + np.where(np.isfinite(t), t, 0.0)[..., None] * dd - c) / r
    shade = 0.35 + 0.65 * np.clip(n @ _LIGHT, 0, 1)
    win = np.s_[y0:y1, x0:x1]
    near = t < lit_depth[win]
    lit_depth[win] = np.where(near, t, lit_depth[win])
    rgb[win] = np.where(near[..., None], np.clip(colour * shade[..., None], 0, 255).astype(np.uint8), rgb[win])
    if mcol is not None:  # an annotated mesh: in the depth and mask show-only list
        near_a = t < ann_depth[win]
        ann_depth[win] = np.where(near_a, t, ann_depth[win])
        depth[win] = np.where(near_a, _half_depth(t), depth[win])
        mask[win] = np.where(near_a[..., None], np.array(mcol, np.uint8), mask[win])


def _screen_box(
    c: np.ndarray, r: float, o: np.ndarray, fwd: np.ndarray, right: np.ndarray, up: np.ndarray, f: float, w: int, h: int
) -> tuple[int, int, int, int] | None:
    """Pixel rows/columns a sphere can cover (a conservative bound), or None when it is behind the camera."""
    rel = c - o
    z = float(rel @ fwd)
    if z + r <= 0:
        return None
    if z - r <= 1e-6:  # the camera is inside or next to the sphere: test every pixel
        return 0, h, 0, w
    x, y = float(rel @ right), -float(rel @ up)
    # Half-angle of the sphere's silhouette cone, widened so the bound holds off-axis too.
    spread = r / math.sqrt(max(z * z - r * r, 1e-9))
    lo_x = (x / z - spread * (1 + abs(x / z))) * f + w / 2.0
    hi_x = (x / z + spread * (1 + abs(x / z))) * f + w / 2.0
    lo_y = (y / z - spread * (1 + abs(y / z))) * f + h / 2.0
    hi_y = (y / z + spread * (1 + abs(y / z))) * f + h / 2.0
    x0, x1 = max(0, int(math.floor(lo_x)) - 1), min(w, int(math.ceil(hi_x)) + 1)
    y0, y1 = max(0, int(math.floor(lo_y)) - 1), min(h, int(math.ceil(hi_y)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


# --- encoding ----------------------------------------------------------------------------


def encode_bmp(rgb: np.ndarray) -> bytes:
    """FImageUtil::ConvertToBmp: a 54-byte header, 32 bits per pixel BGRA, top-down (negative height)."""
    h, w = rgb.shape[:2]
    out = bytearray(54 + w * h * 4)
    struct.pack_into("<2sIHHI", out, 0, b"BM", 54 + w * h * 4, 0, 0, 54)
    struct.pack_into("<IiiHHIIiiII", out, 14, 40, w, -h, 1, 32, 0, 0, 1024, 1024, 0, 0)
    bgra = np.frombuffer(out, np.uint8, offset=54).reshape(h, w, 4)
    cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGRA, dst=bgra)  # alpha 255
    return bytes(out)


def encode_image(rgb: np.ndarray, fmt_name: str) -> bytes:
    """BMP as UnrealCV writes it; PNG with an alpha channel (UnrealCV's PNG is RGBA)."""
    if fmt_name == "bmp":
        return encode_bmp(rgb)
    if fmt_name == "png":
        bgra = np.dstack([np.ascontiguousarray(rgb[..., ::-1]), np.full(rgb.shape[:2], 255, np.uint8)])
        ok, buf = cv2.imencode(".png", bgra)
        if not ok:
            raise RuntimeError("cannot encode png")
        return buf.tobytes()
    raise ValueError(f"unsupported image format {fmt_name!r}")


def encode_npy(a: np.ndarray) -> bytes:
    """FSerializationUtils::Array2Npy: float32, shape (H, W)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


# --- the vbp argument parser and the plugin's UFUNCTIONs ---------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # FString, double, float, int32, bool
    ref: bool = False  # CPF_ReferenceParm (declared with &)
    out: bool = False  # CPF_OutParm (a non-const reference, or the return value)


@dataclass(frozen=True)
class UFunction:
    name: str
    params: tuple[Param, ...]  # in declaration order, the return value last as "ReturnValue"


_UFUNCTION = re.compile(r"UFUNCTION\s*\([^)]*\)\s*([\w:<>]+)\s+(\w+)\s*\(([^)]*)\)\s*(?:const)?\s*;", re.S)


def parse_ufunctions(header_text: str) -> dict[str, UFunction]:
    """The UFUNCTIONs of a C++ header, with the parameter flags UnrealHeaderTool gives them."""
    out = {}
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", header_text, flags=re.S)
    for ret, name, args in _UFUNCTION.findall(text):
        params = []
        for raw in (a.strip() for a in args.split(",") if a.strip()):
            raw = raw.split("=")[0].strip()  # default values
            ref = "&" in raw
            const = raw.startswith("const ")
            decl = raw.replace("const ", "").replace("&", " ").split()
            params.append(Param(decl[-1], decl[0], ref=ref, out=ref and not const))
        if ret != "void":
            params.append(Param("ReturnValue", ret, out=True))
        out[name] = UFunction(name, tuple(params))
    return out


_NUMERIC = {"double", "float", "int32", "int64", "uint8", "int"}


def _import_text(p: Param, token: str) -> Any:
    """FProperty::ImportText_Direct for the types the plugin uses; None when the import fails."""
    if p.type == "FString":
        return token
    if p.type in _NUMERIC:
        if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", token):
            return None
        return float(token) if p.type in ("double", "float") else int(float(token))
    if p.type == "bool":
        low = token.lower()
        return True if low in ("true", "1", "yes") else False if low in ("false", "0", "no") else None
    return None


def vbp_call(fn: UFunction, tokens: list[str], impl: Callable[..., Any] | None) -> str:
    """FAliasHandler::VExecWithOutput: parse ``tokens`` into ``fn``'s parameters, call, report the outputs."""
    values: dict[str, Any] = {p.name: ("" if p.type == "FString" else 0) for p in fn.params}
    args = list(tokens)
    failed = False
    inputs = [p for p in fn.params if p.name != "ReturnValue"]
    last = inputs[-1] if inputs else None
    for p in inputs:
        if p.out or p.ref:
            continue  # "Skip return parameters": out AND reference parameters are never parsed
        token = args.pop(0) if args else ""
        if p is last and p.type == "FString" and args:
            token = " ".join([token, *args])  # the last string parameter takes the rest of the line
            args = []
        value = _import_text(p, token)
        if value is None:
            failed = True  # "Bad or missing property": logged to the console, the function is not called
            break
        values[p.name] = value
    if not failed and impl is not None:
        result = impl(**{p.name: values[p.name] for p in inputs})
        outputs = result if isinstance(result, dict) else {"ReturnValue": result}
        values.update(outputs)
    first = fn.params[0] if fn.params else None
    report = {}
    for p in fn.params:
        if not (p.out or p.ref):
            continue
        if p.type == "FString":
            report[p.name] = str(values[p.name])
        elif p.type in _NUMERIC:
            # GetNumericPropertyValueToString(Parms): the container, not the property's offset, is read.
            raw = values[first.name] if first is not None and first.type in _NUMERIC else 0
            report[p.name] = f"{float(raw):f}" if p.type in ("double", "float") else str(int(raw))
        else:
            report[p.name] = ""  # neither a string nor a numeric property: "Unrecognized type", empty
    # FJsonObjectBP(TMap<FString, FString>).ToString(): UE's default (pretty) JSON writer.
    return "{\n" + ",\n".join(f"\t{json.dumps(k)}: {json.dumps(v)}" for k, v in report.items()) + "\n}"


# --- command table ------------------------------------------------------------------------


class CommandError(Exception):
    pass


_TYPE_RE = {"str": r"([^ ]*)", "uint": r"(\d*)", "float": r"([-+]?\d*[.]?\d+)"}


def _template_regex(template: str) -> re.Pattern:
    """FCommandDispatcher::FormatUri: each [type] becomes its regex, then '[ ]*$' (a search, not anchored at the start)."""
    out = re.sub(r"\[(\w+)\]", lambda m: "\0" + m.group(1) + "\0", template)
    parts = out.split("\0")
    rx = "".join(re.escape(p) if i % 2 == 0 else _TYPE_RE[p] for i, p in enumerate(parts))
    return re.compile(rx + r"[ ]*$")


@dataclass
class CaptureRecord:
    """What one capture saw: for tests to check synchronization and poses."""

    tick: int
    camera: int
    mode: str
    world_time: float
    paused: bool
    camera_location: tuple[float, ...]
    camera_rotation: tuple[float, ...]
    actors: dict[str, dict[str, object]]


class Handler:
    """Executes one command string against the world, on the game thread."""

    def __init__(self, server: StandinServer) -> None:
        self.server = server
        self.table: list[tuple[str, re.Pattern, Callable[[list[str]], bytes | str]]] = []
        self._register()

    @property
    def world(self) -> World:
        return self.server.world

    # --- dispatch -----------------------------------------------------------------------
    def bind(self, template: str, fn: Callable[[list[str]], bytes | str]) -> None:
        if template in self.server.without:
            return
        self.table.append((template, _template_regex(template), fn))

    def templates(self) -> list[str]:
        return [t for t, _, _ in self.table]

    def execute(self, cmd: str) -> bytes | str:
        verb = cmd.split(" ", 1)[0]
        for template, rx, fn in reversed(self.table):
            if template.split(" ", 1)[0] != verb:
                continue
            m = rx.search(cmd)
            if m is None:
                continue
            try:
                return fn(list(m.groups()))
            except CommandError as e:
                return f"error {e}"
            except (ValueError, IndexError):
                return "error Argument Invalid"
        if self.server.revision == "head" and self.server.flavour == "oss-5.2":
            return f"error No handler found for URI '{cmd}'"
        return f"error Can not find a handler for URI '{cmd}'"

    def _register(self) -> None:
        s, zoo = self.server, self.server.flavour == "unrealzoo-1.1"
        b = self.bind
        b("vget /unrealcv/status", lambda a: f"Is Listening\nClient Connected\n{s.port}\nConfiguration\n")
        b("vget /unrealcv/help", lambda a: "".join(f"{t}\n{t}\n" for t in self.templates()))
        b("vget /unrealcv/version", lambda a: s.version)
        if zoo:
            b("vget /unrealcv/commands", lambda a: "\n".join(self.templates()))
        b("vget /level/name", lambda a: self.world.level.rsplit("/", 1)[-1])
        b("vset /action/game/pause", lambda a: self._pause(True))
        b("vset /action/game/resume", lambda a: self._pause(False))
        b("vset /action/game/level [str]", self._open_level)
        b("vget /action/game/is_paused", lambda a: "true" if self.world.paused else "false")
        b(
            "vget /objects",
            lambda a: "".join(f"{n} " for n in [m.name for m in self.world.markers] + list(self.world.actors)),
        )
        b("vset /objects/spawn_cube", lambda a: self._spawn_cube(None))
        b("vset /objects/spawn_cube [str]", lambda a: self._spawn_cube(a[0]))
        b("vset /objects/spawn [str]", lambda a: self._spawn_class(a[0], None))
        b("vset /objects/spawn [str] [str]", lambda a: self._spawn_class(a[0], a[1]))
        if zoo:
            b("vset /objects/spawn_from_path [str]", lambda a: self._spawn_path(a[0], None))
            b("vset /objects/spawn_from_path [str] [str]", lambda a: self._spawn_path(a[0], a[1]))
        for prop in ("location", "rotation", "scale"):
            b(f"vget /object/[str]/{prop}", lambda a, p=prop: self._get_actor(a, p))
            b(f"vset /object/[str]/{prop} [float] [float] [float]", lambda a, p=prop: self._set_actor(a, p))
        b("vget /object/[str]/color", self._get_colour)
        b("vset /object/[str]/color [uint] [uint] [uint]", self._set_colour)
        b("vset /object/[str]/destroy", lambda a: self._destroy(a[0]))
        b("vget /cameras", lambda a: "".join(f"{c.name} " for c in self.world.cameras))
        b("vset /cameras/spawn", lambda a: self.world.spawn_camera().actor)
        b("vget /camera/[uint]/location", lambda a: fmt(*self._camera(a[0]).location))
        b("vset /camera/[uint]/location [float] [float] [float]", self._set_cam_location)
        b("vget /camera/[uint]/rotation", lambda a: fmt(*(normalize_axis(v) for v in self._camera(a[0]).rotation)))
        b("vset /camera/[uint]/rotation [float] [float] [float]", self._set_cam_rotation)
        b("vget /camera/[uint]/fov", lambda a: f"{self._camera(a[0]).hfov():f}")
        b("vset /camera/[uint]/fov [float]", self._set_fov)
        b("vget /camera/[uint]/size", lambda a: f"{self._camera(a[0]).width} {self._camera(a[0]).height}")
        b("vset /camera/[uint]/size [uint] [uint]", self._set_size)
        b("vset /camera/[uint]/illumination [str]", self._set_illumination)
        if zoo:
            b("vget /camera/[uint]/cine/enabled", lambda a: "1" if self._camera(a[0]).cine_enabled else "0")
            b("vset /camera/[uint]/cine/enabled [uint]", self._cine_enabled)
            b("vset /camera/[uint]/cine/filmback [float] [float] [float] [float]", self._cine_filmback)
            b("vset /camera/[uint]/cine/lens [float] [float]", self._cine_lens)
        for mode in ("lit", "depth", "object_mask"):
            b(f"vget /camera/[uint]/{mode} [str]", lambda a, m=mode: self._capture(a[0], m, a[1]))
        b("vrun [str]", self._vrun)
        b("vrun [str] [str]", self._vrun)
        for k in range(0, 10):  # FAliasHandler: "vbp [str] [str]" ... with up to 9 arguments
            b("vbp [str] [str]" + " [str]" * k, self._vbp)

    # --- helpers ------------------------------------------------------------------------
    def _camera(self, tok: str) -> StandinCamera:
        try:
            return self.world.cameras[int(tok)]
        except (ValueError, IndexError):
            raise CommandError("Invalid sensor id") from None

    def _actor(self, name: str) -> Actor:
        if name not in self.world.actors:
            raise CommandError("Cannot find object")
        return self.world.actors[name]

    def _pause(self, paused: bool) -> str:
        self.world.paused = paused
        return "ok"

    def _open_level(self, a: list[str]) -> str:
        self.server.pending_travel = a[0]  # OpenLevel: the travel happens on the next tick
        return "ok"

    def _vrun(self, a: list[str]) -> str:
        if a[0] == "slomo" and len(a) > 1:
            self.world.slomo = float(a[1])
        return "ok"

    def _spawn_cube(self, name: str | None) -> str:
        return self.world.spawn_actor(Asset("/Engine/BasicShapes/Cube.Cube", "class"), name).name

    def _spawn_class(self, class_name: str, name: str | None) -> str:
        w = self.world
        if name is not None and (name in w.actors):
            raise CommandError(f"Failed to spawn {name}, object exists.")
        loaded = {class_short_name(p): p for p in w.loaded_classes}
        if class_name not in loaded:
            raise CommandError(f"Can not find a class with name '{class_name}'")
        return w.spawn_actor(w.content[loaded[class_name]], name).name

    def _spawn_path(self, path: str, name: str | None) -> str:
        w = self.world
        asset = (
            w.content.get(path) or w.content.get(path + "_C") or w.content.get(f"{path}.{path.rsplit('/', 1)[-1]}_C")
        )
        if asset is None or asset.kind != "class":
            raise CommandError(f"Failed to load class from path '{path}'")
        w.loaded_classes.add(asset.path)
        # The UnrealZoo command annotates what it spawns (the "_wo_annotation" variant does not).
        colour = (int(zlib.crc32(path.encode()) % 200) + 30, 90, 140)
        return w.spawn_actor(asset, name, annotate_colour=colour).name

    def _get_actor(self, a: list[str], prop: str) -> str:
        vals = getattr(self._actor(a[0]), prop)
        # GetActorRotation comes back through a quaternion: each axis normalized to (-180, 180].
        return fmt(*(normalize_axis(v) for v in vals)) if prop == "rotation" else fmt(*vals)

    def _set_actor(self, a: list[str], prop: str) -> str:
        actor = self._actor(a[0])
        setattr(actor, prop, [float32(x) for x in a[1:4]])
        return "ok"

    def _get_colour(self, a: list[str]) -> str:
        actor = self._actor(a[0])
        c = actor.mask
        return f"(R={c[0]},G={c[1]},B={c[2]},A=255)" if c is not None else "(R=0,G=0,B=0,A=0)"

    def _set_colour(self, a: list[str]) -> str:
        actor = self._actor(a[0])
        if actor.has_mesh:  # FObjectAnnotator::CreateAnnotationComponent: one per mesh component
            actor.mask = (int(a[1]) & 255, int(a[2]) & 255, int(a[3]) & 255)
        return "ok"

    def _destroy(self, name: str) -> str:
        self._actor(name)
        del self.world.actors[name]
        return "ok"

    def _set_cam_location(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        cam.location = [float32(x) for x in a[1:4]]
        cam.location[0] += self.server.fault_camera_offset_cm
        return "ok"

    def _set_cam_rotation(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        # The sensor's rotation is stored as given; `vget` reports it normalized to (-180, 180].
        cam.rotation = [float32(x) for x in a[1:4]]
        return "ok"

    def _set_fov(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        cam.fov = float32(a[1])
        return "ok"

    def _set_size(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        cam.width, cam.height = int(a[1]), int(a[2])
        return "ok"

    def _set_illumination(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        if a[1].lower() not in ("none", "lumen", "screen_space", "plugin"):
            raise CommandError(
                f"Can not support global illumination method {a[1]}, available options are none, lumen, screen_space, plugin."
            )
        cam.illumination = a[1].lower()
        return "ok"

    def _cine_enabled(self, a: list[str]) -> str:
        self._camera(a[0]).cine_enabled = int(a[1]) != 0
        return "ok"

    def _cine_filmback(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        if not cam.cine_enabled:
            raise CommandError("The cine camera is not enabled (vset /camera/N/cine/enabled 1)")
        cam.filmback = (float32(a[1]), float32(a[2]))
        return "ok"

    def _cine_lens(self, a: list[str]) -> str:
        cam = self._camera(a[0])
        if not cam.cine_enabled:
            raise CommandError("The cine camera is not enabled (vset /camera/N/cine/enabled 1)")
        cam.focal_mm = float32(a[1])
        return "ok"

    def _capture(self, tok: str, mode: str, fmt_name: str) -> bytes | str:
        cid = int(tok)
        cam = self._camera(tok)
        srv, w = self.server, self.world
        t0 = time.perf_counter()
        key = w.state_key(cam)
        if key not in w.render_cache:
            while len(w.render_cache) >= 2 * max(1, len(w.cameras)):  # the current state of every camera, and some
                w.render_cache.pop(next(iter(w.render_cache)))
            w.render_cache[key] = w.render(cam)[:3]
        rgb, depth, mask = w.render_cache[key]
        srv.captures.append(
            CaptureRecord(
                w.tick_count,
                cid,
                mode,
                w.time,
                w.paused,
                tuple(cam.location),
                tuple(cam.rotation),
                {
                    n: {
                        "location": tuple(a.location),
                        "rotation": tuple(a.rotation),
                        "scale": tuple(a.scale),
                        "animation": a.animation,
                        "anim_time": w.anim_time(a),
                    }
                    for n, a in w.actors.items()
                },
            )
        )
        if mode == "depth":
            if fmt_name != "npy":
                raise CommandError(f"Invalid filename type, filename {fmt_name}")
            data: bytes = encode_npy(depth)
        else:
            if fmt_name not in ("bmp", "png"):
                raise CommandError(f"Invalid filename type, filename {fmt_name}")
            data = encode_image(rgb if mode == "lit" else mask, fmt_name)
        left = srv.capture_delay - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)  # the simulated render cost of one image
        srv.capture_s += time.perf_counter() - t0
        srv.after_capture()
        return data

    # --- the SynCam plugin through vbp --------------------------------------------------
    def _vbp(self, a: list[str]) -> str:
        obj, func, args = a[0], a[1], [x for x in a[2:] if x != ""]
        w = self.world
        if not (w.plugin and obj == PLUGIN_ACTOR):
            raise CommandError(f"Can not find actor with id '{obj}'")
        fn = self.server.ufunctions.get(func)
        if fn is None:
            return "error Argument Invalid"  # Obj->FindFunction failed
        return vbp_call(fn, args, getattr(self, f"_plugin_{func}", None))

    # The plugin's behaviour (what unreal_plugin/.../SynCamFrameSync.cpp does); the signatures come from its header.
    def _plugin_GetSynCamVersion(self) -> str:
        return self.server.plugin_version

    def _plugin_GetWorldClock(self) -> str:
        w = self.world
        return json.dumps({"ok": True, "time": round(w.time, 6), "frame": w.tick_count, "paused": w.paused})

    def _plugin_SetActorTransformCm(
        self, ActorName: str, X: float, Y: float, Z: float, Pitch: float, Yaw: float, Roll: float, Scale: float
    ) -> str:
        a = self.world.actors.get(ActorName)
        if a is None:
            return json.dumps({"ok": False, "error": f"no actor named '{ActorName}'"})
        a.location, a.rotation, a.scale = [X, Y, Z], [Pitch, Yaw, Roll], [Scale] * 3
        rot = [normalize_axis(v) for v in a.rotation]
        return json.dumps({"ok": True, "actor": ActorName, "location": a.location, "rotation": rot, "scale": a.scale})

    def _plugin_SetAnimationPose(self, ActorName: str, AnimationPath: str, Time: float, Loop: int) -> str:
        a = self.world.actors.get(ActorName)
        if a is None:
            return json.dumps({"ok": False, "error": f"no actor named '{ActorName}'"})
        if AnimationPath not in ("", "None"):
            asset = self.world.content.get(AnimationPath)
            if asset is None or asset.kind != "animation":
                return json.dumps({"ok": False, "error": f"cannot load animation '{AnimationPath}'"})
            a.animation = AnimationPath
        if not a.animation:
            return json.dumps({"ok": False, "error": f"actor '{ActorName}' plays no single-node animation"})
        length = clip_length(a.animation)
        t = max(float(Time), 0.0)
        # Frozen at that time (play rate 0); a looping clip reports the unwrapped time, a one-shot clip its clamp.
        shown = t if Loop else min(t, length)
        a.anim_time = shown + self.server.fault_anim_offset
        return json.dumps(
            {"ok": True, "time": round(a.anim_time, 6), "clip_length": round(length, 6), "animation": a.animation}
        )

    def _plugin_SpawnActorFromPath(self, AssetPath: str, ActorName: str) -> str:
        w = self.world
        asset = w.content.get(AssetPath) or w.content.get(AssetPath + "_C")
        if asset is None or asset.kind != "class":
            return json.dumps({"ok": False, "error": f"cannot load an actor class from '{AssetPath}'"})
        w.loaded_classes.add(asset.path)
        a = w.spawn_actor(asset, ActorName or None)
        return json.dumps({"ok": True, "actor": a.name, "class": class_short_name(asset.path)})


# --- the server -----------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        c = sock.recv(left)
        if not c:
            return None
        chunks.append(c)
        left -= len(c)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> bytes | None:
    head = _recv_exact(sock, 8)
    if head is None:
        return None
    magic, size = struct.unpack("<II", head)
    if magic != MAGIC:
        raise ConnectionError(f"bad magic 0x{magic:08x}")
    return _recv_exact(sock, size)


def send_message(sock: socket.socket, payload: bytes, prefix: bytes = b"") -> None:
    """One framed message: magic, length, ``prefix + payload`` (sent without joining large payloads)."""
    sock.sendall(struct.pack("<II", MAGIC, len(prefix) + len(payload)) + prefix)
    sock.sendall(payload)


@dataclass
class _Request:
    conn: socket.socket
    rid: bytes
    message: str


class StandinServer:
    """The UnrealCV stand-in; ``start()`` listens (port 0 picks a free port), ``stop()`` closes."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        unix_socket: str | None = None,
        project: str = "SynCamStandin",
        plugin: bool = True,
        flavour: str = "oss-5.2",
        revision: str = "2024",
        plugin_header: str | None = None,
        plugin_version: str = "",
        content: tuple[Asset, ...] = DEFAULT_CONTENT,
        levels: dict[str, LevelConfig] | None = None,
        capture_delay: float = 0.0,
        tick_s: float = 0.0,
        drop_after: int | None = None,
        silent: bool = False,
        fault_anim_offset: float = 0.0,
        fault_camera_offset_cm: float = 0.0,
        fault_nudge_after: int | None = None,
        fault_unpause_after: int | None = None,
        without: tuple[str, ...] = (),
        stats_file: str | None = None,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
        if revision not in ("2024", "head"):
            raise ValueError(f"revision must be '2024' or 'head', got {revision!r}")
        self.host, self.port, self.unix_socket, self.project = host, port, unix_socket, project
        self.flavour, self.revision = flavour, revision
        self.version = "1.0.1" if flavour == "oss-5.2" else "1.1.0"
        header = plugin_header if plugin_header is not None else PLUGIN_HEADER.read_text()
        self.ufunctions = parse_ufunctions(header)
        self.plugin_version = plugin_version or _header_version(header)
        self.world = World(flavour, dict(levels or {}), {a.path: a for a in content}, plugin)
        self.capture_delay = capture_delay
        self.tick_s = tick_s
        self.drop_after = drop_after
        self.silent = silent  # accept connections but never greet (an engine still loading)
        # Faults an engine or plugin could have, to prove the backend's reply checks catch them.
        self.fault_anim_offset = fault_anim_offset
        self.fault_camera_offset_cm = fault_camera_offset_cm
        self.fault_nudge_after = fault_nudge_after
        self.fault_unpause_after = fault_unpause_after
        self.stats_file = stats_file
        self.without = set(without)  # command templates this server lacks (older or trimmed builds)
        self.pending_travel: str | None = None
        self.requests = 0
        self.connections = 0
        self.drops = 0
        self.captures: list[CaptureRecord] = []
        self.busy_s = 0.0  # time the game thread spent running requests, replies included
        self.capture_s = 0.0  # of which rendering and encoding captured images (the engine's own capture time)
        self.send_s = 0.0  # of which sending replies (waits while the client does not read)
        self.handler = Handler(self)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending: list[_Request] = []
        self._batch: list[_Request] = []
        self._batch_left = 0
        self._serve_lock = threading.Lock()  # one client at a time, across TCP and the Unix socket
        self._listeners: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> StandinServer:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, self.port))
        tcp.listen(8)
        self.port = tcp.getsockname()[1]
        self._listeners.append(tcp)
        if self.unix_socket:
            self.unix_socket = self.unix_socket.format(port=self.port)
            if os.path.exists(self.unix_socket):
                os.unlink(self.unix_socket)
            us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            us.bind(self.unix_socket)
            us.listen(8)
            self._listeners.append(us)
        for ls in self._listeners:
            self._spawn(self._accept_loop, ls)
        self._spawn(self._game_loop)
        log.info(
            "UnrealCV stand-in (%s) listening on %s:%d%s",
            self.flavour,
            self.host,
            self.port,
            f" and {self.unix_socket}" if self.unix_socket else "",
        )
        return self

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        th = threading.Thread(target=fn, args=args, daemon=True)
        th.start()
        self._threads.append(th)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for ls in self._listeners:
            try:
                ls.close()
            except OSError:
                pass
        if self.unix_socket and os.path.exists(self.unix_socket):
            os.unlink(self.unix_socket)

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults fired by captures --------------------------------------------------------
    def after_capture(self) -> None:
        n = len(self.captures)
        if self.fault_nudge_after is not None and n == self.fault_nudge_after and self.world.actors:
            a = next(iter(self.world.actors.values()))
            a.location = [a.location[0] + 5.0, a.location[1], a.location[2]]
            log.warning("fault: moved %s by 5 cm after capture %d", a.name, n)
        if self.fault_unpause_after is not None and n == self.fault_unpause_after:
            # Something resumed the game and a few ticks ran before anyone noticed.
            self.world.paused = False
            self.world._time += 0.5
            log.warning("fault: resumed the world after capture %d", n)

    # --- the game thread --------------------------------------------------------------------
    def _game_loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self.tick_s > 0:  # a fixed engine frame rate: tick on every boundary, busy or not
                now = time.monotonic()
                if now < next_tick:
                    time.sleep(next_tick - now)
                next_tick = max(next_tick + self.tick_s, time.monotonic())
                self._collect(wait=0.0)
            elif not (self._pending or self.pending_travel):  # tick as soon as there is work
                self._collect(wait=0.05)
                if not (self._pending or self.pending_travel):
                    continue
            else:
                self._collect(wait=0.0)
            self._tick()

    def _collect(self, wait: float) -> None:
        """Move what the connection thread received into the game thread's pending list."""
        try:
            item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            while item is not None:
                self._pending.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            pass

    def _tick(self) -> None:
        t0 = time.perf_counter()
        if self.pending_travel is not None:
            path, self.pending_travel = self.pending_travel, None
            self.world.load_level(path)
        self.world.advance()
        if self.revision == "head":
            self._process_head()
        else:
            self._process_2024()
        self.busy_s += time.perf_counter() - t0

    def _process_2024(self) -> None:
        """Before 1f64480: every request runs as it is dequeued (vbatch's counter is reset to 1 by the next one)."""
        while self._pending:
            r = self._pending.pop(0)
            if r.message.startswith("vbatch"):
                self._reply(r, "ok")
                continue
            self._run(r)

    def _process_head(self) -> None:
        """At head: at most 32 requests per tick; 'vbatch N' holds the next N until all arrived, then runs them together."""
        for _ in range(MAX_REQUESTS_PER_TICK):
            if not self._pending:
                return
            r = self._pending.pop(0)
            if r.message.startswith("vbatch"):
                try:
                    self._batch_left = int(r.message[len("vbatch") :].strip() or 0)
                except ValueError:
                    self._batch_left = 0
                self._reply(r, "ok")
                continue
            if self._batch_left <= 0:
                self._batch_left = 1
            self._batch.append(r)
            self._batch_left -= 1
            if self._batch_left == 0:
                batch, self._batch = self._batch, []
                for b in batch:
                    self._run(b)

    def _run(self, r: _Request) -> None:
        self._reply(r, self.handler.execute(r.message))

    def _reply(self, r: _Request, reply: bytes | str) -> None:
        data = reply.encode() if isinstance(reply, str) else reply
        t0 = time.perf_counter()
        try:
            send_message(r.conn, data, prefix=r.rid + b":")
        except OSError as e:
            log.info("reply to a closed connection dropped: %s", e)
        self.send_s += time.perf_counter() - t0

    # --- connections -------------------------------------------------------------------
    def _accept_loop(self, ls: socket.socket) -> None:
        ls.settimeout(0.2)
        while not self._stop.is_set():
            # The listener serves one client inline: the next one waits, un-greeted, in the backlog.
            with self._serve_lock:
                try:
                    conn, _ = ls.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                if self.silent:
                    self._spawn(self._hold_silently, conn)
                    continue
                self._serve(conn)

    def _hold_silently(self, conn: socket.socket) -> None:
        """Keep the connection open without the greeting until the server stops."""
        self._stop.wait()
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        self._batch_left, self._batch = 0, []
        try:
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            send_message(conn, f"connected to {self.project}".encode())
            while not self._stop.is_set():
                msg = recv_message(conn)
                if msg is None:
                    return
                self.requests += 1
                if self.drop_after is not None and self.requests == self.drop_after:
                    log.warning("simulating a dropped connection at request %d", self.requests)
                    self.drops += 1
                    return
                m = re.match(rb"(\d{1,}):(.*)", msg, re.S)  # FUnrealcvServer::HandleRawMessage
                if m is None:
                    log.warning("malformed raw message %r", msg[:40])
                    continue
                self._queue.put(_Request(conn, m.group(1), m.group(2).decode("utf-8", errors="replace")))
        except (ConnectionError, OSError) as e:
            log.info("client connection ended: %s", e)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
            self._write_stats()

    def _write_stats(self) -> None:
        if self.stats_file:
            tmp = f"{self.stats_file}.tmp"
            with open(tmp, "w") as f:
                json.dump(
                    {
                        "busy_s": self.busy_s,
                        "capture_s": self.capture_s,
                        "send_s": self.send_s,
                        "captures": len(self.captures),
                        "requests": self.requests,
                        "ticks": self.world.tick_count,
                    },
                    f,
                )
            os.replace(tmp, self.stats_file)


def _header_version(header: str) -> str:
    m = re.search(r'SYNCAM_PLUGIN_VERSION\s+TEXT\("([^"]+)"\)', header)
    return m.group(1) if m else "1.0.0"


def main() -> None:
    ap = argparse.ArgumentParser(description="A local UnrealCV stand-in server (see the module docstring).")
    # `-cvport PORT` is what the real server reads from the command line (FServerConfig::ParseCmdArgs).
    ap.add_argument("--port", "-cvport", type=int, default=9000, help="TCP port (0 picks a free one)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--unix-socket", default=None, help="also listen on this Unix socket path ({port} is replaced)")
    ap.add_argument("--flavour", choices=FLAVOURS, default="oss-5.2", help="which server family to behave like")
    ap.add_argument(
        "--revision", choices=("2024", "head"), default="2024", help="oss-5.2: vbatch before 1f64480 (2024) or at head"
    )
    ap.add_argument("--no-plugin", action="store_true", help="run without the SynCam plugin's actor")
    ap.add_argument("--capture-delay", type=float, default=0.0, help="simulated render cost per captured image (s)")
    ap.add_argument("--tick-ms", type=float, default=0.0, help="engine frame time (0: tick whenever requests wait)")
    ap.add_argument("--drop-after", type=int, default=None, help="close the connection once at this request number")
    ap.add_argument("--project", default="SynCamStandin", help="project name sent in the connect greeting")
    ap.add_argument(
        "--stats-file", default=None, help="write the game thread's busy time here when a client disconnects"
    )
    ap.add_argument(
        "--level",
        action="append",
        default=[],
        metavar="MAP=ASSET[,ASSET]",
        help="a map and the class asset paths it references (what `vset /objects/spawn CLASS` can spawn there); repeatable",
    )
    ap.add_argument(
        "--landscape",
        action="append",
        default=[],
        metavar="MAP",
        help="this map's ground is a Landscape (sky in depth and masks)",
    )
    a, unknown = ap.parse_known_args()  # an engine's other options (-RenderOffscreen, -nosound, ...) are not ours
    levels: dict[str, LevelConfig] = {}
    for spec in a.level:
        name, _, assets = spec.partition("=")
        levels[name] = LevelConfig(references=tuple(x for x in assets.split(",") if x))
    for name in a.landscape:
        levels[name] = LevelConfig(ground="landscape", references=levels.get(name, LevelConfig()).references)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    srv = StandinServer(
        a.port,
        a.host,
        a.unix_socket,
        a.project,
        plugin=not a.no_plugin,
        flavour=a.flavour,
        revision=a.revision,
        levels=levels,
        capture_delay=a.capture_delay,
        tick_s=a.tick_ms / 1000.0,
        drop_after=a.drop_after,
        stats_file=a.stats_file,
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()

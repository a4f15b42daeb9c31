"""A local stand-in for an Unreal Engine game running the UnrealCV server, for tests and benchmarks.

Unreal Engine cannot run on the test machines, so the UnrealCV backend is
tested against this server instead. It is faithful where the backend depends
on Unreal's behaviour:

- the wire protocol: uint32 magic 0x9E2B83C1, uint32 payload length, payload
  ``"<id>:<command>"``; on connect it sends ``connected to <project>``; one
  client at a time (a second one is closed without the greeting); TCP and,
  like UnrealCV on Linux, a Unix socket;
- the command subset the backend uses (listed by ``vget /unrealcv/commands``
  as UnrealCV >= 1.1 does), with replies ``ok`` / ``error ...`` / values;
- Unreal's world and camera semantics: a left-handed X-forward, Y-right, Z-up
  world in centimetres, rotators (pitch, yaw, roll) in degrees whose
  FRotationMatrix rows are the forward, right and up axes, and a *horizontal*
  field of view (or a cine filmback + focal length);
- ``vbatch N`` (the next N requests run in the same engine tick), pause and
  resume (world time only advances while the game runs), loading a level
  destroys what was spawned;
- the SynCam UE plugin's Blueprint functions reached through ``vbp`` on the
  ``SynCamFrameSync`` actor (``plugin=False`` runs without them, as an
  engine without the plugin would).

It renders simple but geometrically exact images: a ground plane at z = 0,
the level's marker spheres at known points, and one sphere (plus a "nose"
sphere along the actor's forward axis) per spawned actor, by ray casting
through every pixel centre with its own projection code (it does not use
``syncam_data.cameras``). Lit images are BMP or PNG, depth is plane depth in
cm as npy (quantized through float16 as Unreal's half-float target is, sky =
65504), object masks are flat per-object colours.

Failure and cost simulation: ``drop_after=N`` closes the connection once,
without a reply, when the N-th request arrives; ``capture_delay`` adds a
render cost per captured image (seconds); ``tick_s`` makes every request
outside a ``vbatch`` wait for the next engine tick; ``silent`` accepts
connections but never greets; ``fault_anim_offset`` / ``fault_camera_offset_cm``
make the "engine" not do exactly what was set.

Run it by hand: ``python tests/unrealcv_standin.py --port 9000``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import signal
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

log = logging.getLogger("unrealcv_standin")

MAGIC = 0x9E2B83C1
PLUGIN_ACTOR = "SynCamFrameSync"
PLUGIN_VERSION = "1.0.0"
SERVER_VERSION = "1.1.2"
SKY_DEPTH_CM = 65504.0  # the largest float16: what Unreal's half-float depth target holds for the sky
GROUND_MASK = (60, 60, 60)
SKY_RGB = (135, 180, 235)
SUBJECT_RADIUS_CM = 30.0


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
    return " ".join(f"{v:.3f}" for v in vals)


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
    location: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    rotation: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    mask: tuple[int, int, int] = (128, 128, 128)
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
    name: str
    location: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    rotation: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    fov: float = 90.0
    width: int = 640
    height: int = 480
    filmback: tuple[float, float] | None = None  # sensor width, height (mm)
    focal_mm: float | None = None

    def hfov(self) -> float:
        if self.filmback is not None and self.focal_mm is not None:
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
        out.append(Marker(f"Marker_{i}", (rad * math.cos(ang), rad * math.sin(ang), z), 14.0, color, (10 + 20 * i, 200, 40)))
    out.append(Marker("Marker_Centre", (0.0, 0.0, 100.0), 12.0, (250, 250, 250), (200, 10, 200)))
    return out


class World:
    """The simulated game: level, actors, cameras, pause state and world time."""

    def __init__(self, plugin: bool = True) -> None:
        self.plugin = plugin
        self.level = "/Game/Maps/Default"
        self.markers: list[Marker] = level_markers(self.level)
        self.actors: dict[str, Actor] = {}
        self.cameras: list[StandinCamera] = [StandinCamera("PlayerCameraManager_0")]
        self.paused = False
        self.slomo = 1.0
        self._time = 0.0
        self._last_wall = time.monotonic()
        self.tick_count = 0
        self._spawned = 0
        # Lit, depth and mask of a camera in one world state share one render (keyed by that state).
        self.render_cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

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

    def load_level(self, path: str) -> None:
        self.level = path
        self.markers = level_markers(path)
        self.actors.clear()
        self.cameras = [StandinCamera("PlayerCameraManager_0")]
        self.paused = False

    def state_key(self, cam: StandinCamera) -> tuple:
        """Everything a render of ``cam`` depends on."""
        return (
            self.level, tuple(cam.location), tuple(cam.rotation), cam.hfov(), cam.width, cam.height,
            tuple((n, tuple(a.location), tuple(a.rotation), tuple(a.scale), a.mask, self.anim_time(a)) for n, a in self.actors.items()),
        )

    def anim_time(self, a: Actor) -> float:
        return a.anim_time if a.anim_time is not None else self.time - a.spawn_time

    # --- rendering -----------------------------------------------------------------
    def render(self, cam: StandinCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray-cast every pixel centre: (rgb uint8 HxWx3, plane depth cm float32 HxW, mask uint8 HxWx3)."""
        w, h = cam.width, cam.height
        f = w / (2.0 * math.tan(math.radians(cam.hfov()) / 2.0))
        fwd, right, up = rotator_axes(*cam.rotation)
        u = (np.arange(w) + 0.5 - w / 2.0) / f
        v = (np.arange(h) + 0.5 - h / 2.0) / f
        # Ray directions (one row per pixel, row-major) with a unit forward component, so the
        # ray parameter of a hit is its plane depth.
        d = (fwd[None, None, :] + u[None, :, None] * right[None, None, :] - v[:, None, None] * up[None, None, :]).reshape(-1, 3)
        o = np.array(cam.location, dtype=np.float64)
        n_px = d.shape[0]
        depth = np.full(n_px, np.inf)
        rgb = np.empty((n_px, 3), np.float64)
        rgb[:] = SKY_RGB
        mask = np.zeros((n_px, 3), np.uint8)
        if o[2] > 0:  # the ground plane z = 0, seen from above
            hit = np.flatnonzero(d[:, 2] < 0)
            t = -o[2] / d[hit, 2]
            p = o + t[:, None] * d[hit]
            checker = (np.floor(p[:, 0] / 100.0) + np.floor(p[:, 1] / 100.0)) % 2 == 0
            depth[hit] = t
            rgb[hit] = np.where(checker[:, None], np.array([170.0, 160.0, 140.0]), np.array([110.0, 105.0, 95.0]))
            mask[hit] = GROUND_MASK
        light = np.array([0.3, -0.4, 0.87])
        spheres: list[tuple[np.ndarray, float, np.ndarray, tuple[int, int, int]]] = []
        for m in self.markers:
            spheres.append((np.array(m.location), m.radius, np.array(m.color, float), m.mask))
        for a in self.actors.values():
            phase = self.anim_time(a)
            # The animation is visible: the body colour pulses with the animation time.
            body = np.array([200.0, 128 + 100 * math.sin(2 * math.pi * phase), 60.0])
            for i, (c, r) in enumerate(a.spheres()):
                spheres.append((c, r, body if i == 0 else np.array([30.0, 30.0, 220.0]), a.mask))
        a2 = np.einsum("nk,nk->n", d, d)
        for c, r, colour, mcol in spheres:
            oc = o - c
            b = 2.0 * (d @ oc)
            disc = b * b - 4 * a2 * (float(oc @ oc) - r * r)
            cand = np.flatnonzero(disc >= 0)
            if cand.size == 0:
                continue
            t = (-b[cand] - np.sqrt(disc[cand])) / (2 * a2[cand])
            keep = (t > 0) & (t < depth[cand])
            idx, t = cand[keep], t[keep]
            if idx.size == 0:
                continue
            n = (o + t[:, None] * d[idx] - c) / r
            shade = 0.35 + 0.65 * np.clip(n @ light, 0, 1)
            depth[idx] = t
            rgb[idx] = colour * shade[:, None]
            mask[idx] = mcol
        depth = np.where(np.isfinite(depth), depth, SKY_DEPTH_CM)
        depth = np.minimum(depth, SKY_DEPTH_CM).astype(np.float16).astype(np.float32)
        return (
            np.clip(rgb, 0, 255).astype(np.uint8).reshape(h, w, 3),
            depth.reshape(h, w),
            mask.reshape(h, w, 3),
        )


# --- encoding ----------------------------------------------------------------------------

def encode_image(rgb: np.ndarray, fmt_name: str) -> bytes:
    """BMP as UnrealCV sends it (BGR), PNG with an alpha channel (UnrealCV's PNG is RGBA)."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if fmt_name == "bmp":
        ok, buf = cv2.imencode(".bmp", bgr)
    elif fmt_name == "png":
        bgra = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
        ok, buf = cv2.imencode(".png", bgra)
    else:
        raise ValueError(f"unsupported image format {fmt_name!r}")
    if not ok:
        raise RuntimeError(f"cannot encode {fmt_name}")
    return buf.tobytes()


def encode_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


# --- command handling ---------------------------------------------------------------------

COMMAND_TEMPLATES = [
    "vget /unrealcv/commands",
    "vget /unrealcv/version",
    "vget /unrealcv/status",
    "vset /action/game/level [str]",
    "vset /action/game/pause",
    "vset /action/game/resume",
    "vget /action/game/is_paused",
    "vrun [str]",
    "vrun [str] [str]",
    "vbatch [uint]",
    "vget /objects",
    "vset /objects/spawn_from_path [str]",
    "vset /objects/spawn_from_path [str] [str]",
    "vget /object/[str]/location",
    "vset /object/[str]/location [float] [float] [float]",
    "vget /object/[str]/rotation",
    "vset /object/[str]/rotation [float] [float] [float]",
    "vget /object/[str]/scale",
    "vset /object/[str]/scale [float] [float] [float]",
    "vget /object/[str]/color",
    "vset /object/[str]/color [uint] [uint] [uint]",
    "vset /object/[str]/destroy",
    "vget /cameras",
    "vset /cameras/spawn",
    "vget /camera/[uint]/location",
    "vset /camera/[uint]/location [float] [float] [float]",
    "vget /camera/[uint]/rotation",
    "vset /camera/[uint]/rotation [float] [float] [float]",
    "vget /camera/[uint]/fov",
    "vset /camera/[uint]/fov [float]",
    "vget /camera/[uint]/size",
    "vset /camera/[uint]/size [uint] [uint]",
    "vset /camera/[uint]/cine/filmback [float] [float]",
    "vset /camera/[uint]/cine/lens [float] [float]",
    "vget /camera/[uint]/cine/intrinsics",
    "vget /camera/[uint]/lit [str]",
    "vget /camera/[uint]/depth [str]",
    "vget /camera/[uint]/object_mask [str]",
] + ["vbp [str] [str]" + " [str]" * k for k in range(0, 10)]


class CommandError(Exception):
    pass


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
    """Executes one command string against the world (the game thread)."""

    def __init__(self, server: "StandinServer") -> None:
        self.server = server
        self.world = server.world

    def execute(self, cmd: str) -> bytes | str:
        try:
            return self._dispatch(cmd.split())
        except CommandError as e:
            return f"error {e}"
        except (ValueError, IndexError) as e:
            return f"error Invalid arguments for '{cmd}': {e}"

    def _camera(self, tok: str) -> StandinCamera:
        try:
            return self.world.cameras[int(tok)]
        except (ValueError, IndexError):
            raise CommandError(f"Camera {tok} can not be found.") from None

    def _actor(self, name: str) -> Actor:
        if name not in self.world.actors:
            raise CommandError(f"Can not find object '{name}'")
        return self.world.actors[name]

    def _dispatch(self, t: list[str]) -> bytes | str:  # noqa: C901 - a flat command table reads best
        w = self.world
        if not t:
            raise CommandError("empty command")
        verb, path, args = t[0], (t[1] if len(t) > 1 else ""), t[2:]
        if verb == "vbp":
            return self._vbp(t[1:])
        if verb == "vrun":
            if path == "slomo" and args:
                w.slomo = float(args[0])
            return "ok"
        parts = path.strip("/").split("/")
        key = (verb, parts[0])
        if key == ("vget", "unrealcv"):
            if parts[1] == "commands":
                return "\n".join(COMMAND_TEMPLATES)
            if parts[1] == "version":
                return SERVER_VERSION
            if parts[1] == "status":
                return f"Is Listening\nClient Connected\n{self.server.port}\n"
        if key == ("vset", "action") and parts[1] == "game":
            if parts[2] == "level":
                w.load_level(args[0])
                return "ok"
            if parts[2] == "pause":
                w.paused = True
                return "ok"
            if parts[2] == "resume":
                w.paused = False
                return "ok"
        if key == ("vget", "action") and parts[2] == "is_paused":
            return "true" if w.paused else "false"
        if key == ("vget", "objects"):
            return " ".join([m.name for m in w.markers] + list(w.actors))
        if key == ("vset", "objects") and parts[1] == "spawn_from_path":
            if not args[0].startswith("/"):
                raise CommandError(f"Invalid asset path {args[0]}")
            w._spawned += 1
            name = args[1] if len(args) > 1 else f"{args[0].rsplit('.', 1)[-1].rsplit('/', 1)[-1]}_C_{w._spawned}"
            if name in w.actors:
                raise CommandError(f"Object {name} already exists")
            w.actors[name] = Actor(name, args[0], spawn_time=w.time, mask=(255, (w._spawned * 71) % 256, 0))
            return name
        if key[1] == "object":
            return self._object(verb, parts[1], parts[2], args)
        if key == ("vget", "cameras"):
            return " ".join(c.name for c in w.cameras)
        if key == ("vset", "cameras") and parts[1] == "spawn":
            cam = StandinCamera(f"FusionCameraActor_{len(w.cameras)}")
            w.cameras.append(cam)
            return cam.name
        if key[1] == "camera":
            return self._camera_cmd(verb, self._camera(parts[1]), int(parts[1]), parts[2:], args)
        raise CommandError(f"Can not find a handler for URI '{' '.join(t)}'")

    def _object(self, verb: str, name: str, prop: str, args: list[str]) -> str:
        a = self._actor(name)
        if prop in ("location", "rotation", "scale"):
            if verb == "vget":
                return fmt(*getattr(a, prop))
            vals = [float(x) for x in args[:3]]
            setattr(a, prop, vals)
            return "ok"
        if prop == "color":
            if verb == "vget":
                return f"(R={a.mask[0]},G={a.mask[1]},B={a.mask[2]},A=255)"
            a.mask = tuple(int(x) for x in args[:3])  # type: ignore[assignment]
            return "ok"
        if prop == "destroy":
            del self.world.actors[name]
            return "ok"
        raise CommandError(f"Unknown object property {prop}")

    def _camera_cmd(self, verb: str, cam: StandinCamera, cid: int, prop: list[str], args: list[str]) -> bytes | str:
        p = "/".join(prop)
        if p == "location":
            if verb == "vget":
                return fmt(*cam.location)
            cam.location = [float(x) for x in args[:3]]
            cam.location[0] += self.server.fault_camera_offset_cm
            return "ok"
        if p == "rotation":
            if verb == "vget":
                # Unreal normalizes rotator axes to (-180, 180].
                return fmt(*(normalize_axis(a) for a in cam.rotation))
            cam.rotation = [float(x) for x in args[:3]]
            return "ok"
        if p == "fov":
            if verb == "vget":
                return f"{cam.hfov():.6f}"
            fov = float(args[0])
            if not 0 < fov < 180:
                raise CommandError(f"Invalid fov {fov}")
            cam.fov, cam.filmback, cam.focal_mm = fov, None, None
            return "ok"
        if p == "size":
            if verb == "vget":
                return f"{cam.width} {cam.height}"
            cam.width, cam.height = int(args[0]), int(args[1])
            if cam.width < 1 or cam.height < 1:
                raise CommandError("Invalid size")
            return "ok"
        if p == "cine/filmback":
            cam.filmback = (float(args[0]), float(args[1]))
            return "ok"
        if p == "cine/lens":
            cam.focal_mm = float(args[0])
            return "ok"
        if p == "cine/intrinsics":
            f = cam.width / (2 * math.tan(math.radians(cam.hfov()) / 2))
            return json.dumps({"fx": f, "fy": f, "cx": cam.width / 2, "cy": cam.height / 2, "width": cam.width, "height": cam.height})
        if verb == "vget" and p in ("lit", "depth", "object_mask"):
            return self._capture(cam, cid, p, args[0] if args else "png")
        raise CommandError(f"Unknown camera command {p}")

    def _capture(self, cam: StandinCamera, cid: int, mode: str, fmt_name: str) -> bytes:
        w = self.world
        if self.server.capture_delay > 0:
            time.sleep(self.server.capture_delay)  # the simulated render cost
        key = w.state_key(cam)
        if key not in w.render_cache:
            if len(w.render_cache) > 64:
                w.render_cache.clear()
            w.render_cache[key] = w.render(cam)
        rgb, depth, mask = w.render_cache[key]
        self.server.captures.append(
            CaptureRecord(
                w.tick_count, cid, mode, w.time, w.paused, tuple(cam.location), tuple(cam.rotation),
                {n: {"location": tuple(a.location), "rotation": tuple(a.rotation), "scale": tuple(a.scale),
                     "animation": a.animation, "anim_time": w.anim_time(a)} for n, a in w.actors.items()},
            )
        )
        if mode == "depth":
            if fmt_name != "npy":
                raise CommandError(f"depth supports npy only, got {fmt_name}")
            return encode_npy(depth)
        if fmt_name not in ("bmp", "png"):
            raise CommandError(f"Unsupported format {fmt_name}")
        return encode_image(rgb if mode == "lit" else mask, fmt_name)

    def _vbp(self, t: list[str]) -> str:
        """The plugin's Blueprint functions on the SynCamFrameSync actor; outputs as JSON like UnrealCV's vbp."""
        if len(t) < 2:
            raise CommandError("vbp needs an object and a function name")
        obj, func, args = t[0], t[1], t[2:]
        if not (self.world.plugin and obj == PLUGIN_ACTOR):
            raise CommandError(f"Can not find object '{obj}'")
        w = self.world
        if func == "GetSynCamVersion":
            return json.dumps({"ReturnValue": PLUGIN_VERSION})
        if func == "GetWorldTime":
            return json.dumps({"ReturnValue": f"{w.time:.6f}"})
        if func == "SetActorTransformCm":
            a = self._actor(args[0])
            vals = [float(x) for x in args[1:8]]
            a.location, a.rotation, a.scale = vals[0:3], vals[3:6], [vals[6]] * 3
            return json.dumps({"ReturnValue": "true"})
        if func == "SetAnimationPose":
            # SetAnimationPose(ActorName, AnimationPath, Time, bLoop, out ClipLength) -> time now shown
            a = self._actor(args[0])
            clip, t_set, loop = args[1], float(args[2]), args[3].lower() in ("true", "1")
            if clip != "None":
                a.animation = clip
            length = clip_length(a.animation)
            # Frozen at that time (the plugin sets the play rate to 0); a looping clip reports the
            # unwrapped time, a one-shot clip holds its last pose.
            a.anim_time = (t_set if loop else min(t_set, length)) + self.server.fault_anim_offset
            return json.dumps({"OutClipLength": f"{length:.6f}", "ReturnValue": f"{a.anim_time:.6f}"})
        raise CommandError(f"Failed to call function '{func}' of {obj}")


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


def send_message(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("<II", MAGIC, len(payload)) + payload)


class StandinServer:
    """The UnrealCV stand-in; ``start()`` listens (port 0 picks a free port), ``stop()`` closes."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        unix_socket: str | None = None,
        project: str = "SynCamStandin",
        plugin: bool = True,
        capture_delay: float = 0.0,
        drop_after: int | None = None,
        fault_anim_offset: float = 0.0,
        fault_camera_offset_cm: float = 0.0,
        silent: bool = False,
        tick_s: float = 0.0,
    ) -> None:
        self.host, self.port, self.unix_socket, self.project = host, port, unix_socket, project
        self.world = World(plugin=plugin)
        self.capture_delay = capture_delay
        self.drop_after = drop_after
        # Faults an engine or plugin could have, to prove the backend's reply checks catch them.
        self.fault_anim_offset = fault_anim_offset
        self.fault_camera_offset_cm = fault_camera_offset_cm
        self.silent = silent  # accept connections but never greet (an engine still loading)
        # Engine frame time: UnrealCV runs queued requests during the game thread's tick, so a
        # request that is not part of a vbatch waits for the next tick boundary.
        self.tick_s = tick_s
        self.requests = 0
        self.connections = 0
        self.drops = 0
        self.captures: list[CaptureRecord] = []
        self._busy = threading.Lock()  # one client at a time
        self._game = threading.Lock()  # the game thread: one request (or batch) at a time
        self._listeners: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "StandinServer":
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, self.port))
        tcp.listen(4)
        self.port = tcp.getsockname()[1]
        self._listeners.append(tcp)
        if self.unix_socket:
            self.unix_socket = self.unix_socket.format(port=self.port)
            if os.path.exists(self.unix_socket):
                os.unlink(self.unix_socket)
            us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            us.bind(self.unix_socket)
            us.listen(4)
            self._listeners.append(us)
        for ls in self._listeners:
            th = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True)
            th.start()
            self._threads.append(th)
        log.info("UnrealCV stand-in listening on %s:%d%s", self.host, self.port, f" and {self.unix_socket}" if self.unix_socket else "")
        return self

    def stop(self) -> None:
        self._stop.set()
        for ls in self._listeners:
            try:
                ls.close()
            except OSError:
                pass
        if self.unix_socket and os.path.exists(self.unix_socket):
            os.unlink(self.unix_socket)

    def __enter__(self) -> "StandinServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- connections -------------------------------------------------------------------
    def _accept_loop(self, ls: socket.socket) -> None:
        ls.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.silent:
                threading.Thread(target=self._hold_silently, args=(conn,), daemon=True).start()
                continue
            if not self._busy.acquire(blocking=False):
                log.warning("rejecting a second client: only one client at a time")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _wait_for_tick(self) -> None:
        if self.tick_s > 0:
            now = time.monotonic()
            time.sleep(math.ceil(now / self.tick_s) * self.tick_s - now)

    def _hold_silently(self, conn: socket.socket) -> None:
        """Keep the connection open without the greeting until the server stops."""
        self._stop.wait()
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        try:
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            send_message(conn, f"connected to {self.project}".encode())
            handler = Handler(self)
            batch_left = 0
            while not self._stop.is_set():
                msg = recv_message(conn)
                if msg is None:
                    return
                self.requests += 1
                if self.drop_after is not None and self.requests == self.drop_after:
                    log.warning("simulating a dropped connection at request %d", self.requests)
                    self.drops += 1
                    return
                rid, _, body = msg.partition(b":")
                cmd = body.decode("utf-8", errors="replace")
                with self._game:
                    if batch_left == 0:
                        self._wait_for_tick()
                        self.world.advance()  # a new engine tick unless this request belongs to a vbatch
                    else:
                        batch_left -= 1
                    if cmd.split()[:1] == ["vbatch"]:
                        try:
                            batch_left = int(cmd.split()[1])
                            reply: bytes | str = "ok"
                        except (IndexError, ValueError):
                            reply = "error vbatch needs a count"
                    else:
                        reply = handler.execute(cmd)
                data = reply.encode() if isinstance(reply, str) else reply
                send_message(conn, rid + b":" + data)
        except (ConnectionError, OSError) as e:
            log.info("client connection ended: %s", e)
        finally:
            try:
                conn.close()
            finally:
                self._busy.release()


def main() -> None:
    ap = argparse.ArgumentParser(description="A local UnrealCV stand-in server (see the module docstring).")
    ap.add_argument("--port", type=int, default=9000, help="TCP port (0 picks a free one)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--unix-socket", default=None, help="also listen on this Unix socket path ({port} is replaced)")
    ap.add_argument("--no-plugin", action="store_true", help="run without the SynCam plugin's vbp functions")
    ap.add_argument("--capture-delay", type=float, default=0.0, help="simulated render cost per captured image (s)")
    ap.add_argument("--drop-after", type=int, default=None, help="close the connection once at this request number")
    ap.add_argument("--project", default="SynCamStandin", help="project name sent in the connect greeting")
    ap.add_argument("--tick-ms", type=float, default=0.0, help="engine frame time: requests outside a vbatch wait for the next tick")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    srv = StandinServer(a.port, a.host, a.unix_socket, a.project, not a.no_plugin, a.capture_delay, a.drop_after, tick_s=a.tick_ms / 1000.0).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()

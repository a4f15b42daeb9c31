"""The Unreal Engine render backend over UnrealCV: the frame-barrier renderer and its options.

It works with the UnrealCV servers users run: the open-source plugin built from
unrealcv/unrealcv branch ``5.2`` (version 1.0.1) and the UnrealZoo v1.1 build.
One backend instance drives one engine instance (one worker slot) through an
``UnrealCVServer`` (``unrealcv_server.py``: launching the engine, the
connection, the feature probes; the only module importing ``unrealcv``); reply
parsing lives in ``unrealcv_protocol.py``. Its options are ``UnrealCVConfig``,
declared beside it in ``unrealcv_config.py``.

Per scene it

1. loads the level (``vset /action/game/level`` takes effect on the next tick:
   the backend waits until a marker cube it spawned in the old world is gone and
   ``vget /level/name`` names the new map) and pauses the world;
2. detects the SynCam plugin (``vbp SynCamFrameSync GetSynCamVersion``, then a
   dry call of each of its functions: vbp silently skips arguments it cannot
   pass, so a plugin built the old way looks present but does nothing);
3. spawns the subjects, in this order of preference: the plugin's
   ``SpawnActorFromPath``, UnrealZoo's ``vset /objects/spawn_from_path``, or the
   open-source ``vset /objects/spawn CLASSNAME NAME`` (only for classes the level
   already loaded); gives each a mask colour, which makes UnrealCV annotate it
   (without annotation a subject is missing from depth and masks), and reads the
   colour back;
4. spawns one camera per spec camera: its id is the number of entries in ``vget
   /cameras`` before the spawn (what the official client does: that list holds
   sensor names or CID ids, never the actor name ``vset /cameras/spawn`` replies),
   checking that the count grew by one; sets size, lens (the cine camera where
   the server has it, else the horizontal FOV), optional illumination, pose, and
   reads them back;
5. captures every frame: with the plugin it sets each subject's transform and
   exact animation time, without it ``vset /object`` poses them; then lit, depth
   and mask of every camera; then reads the subjects', the cameras' and (plugin)
   the world clock's state again. The world is paused, and the read-back proves
   nothing moved during the captures; a frame whose check fails is captured
   again. ``vbatch`` wraps the frame where the server accepts it, but
   correctness never depends on it.

Replies stream back as the server produces them: each image is decoded while
the engine captures the next, and H.264 encoding of a finished frame runs in a
writer thread while the engine captures the next frame.

Exported cameras are built from the pose and FOV the engine *reports*,
converted with ``syncam_data.cameras`` (Contract 1); ``cameras.json`` keeps
the raw UE pose. UnrealCV's depth is plane depth in cm from a half-float
target whose sky value is 65504; it is converted to metres with the sky as
``inf``. Depth and masks only show annotated meshes: ``scene.json`` records per
camera the fraction of sky pixels, and the backend warns when the ground reads
as sky (a Landscape, or World Partition streaming).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from syncam_data.cameras import Camera, c2w_from_ue, focal_from_hfov, hfov_from_focal, ue_from_c2w, ue_raw_pose
from syncam_data.render.base import FrameCallback, RenderBackend, RenderResult, WorkerSlot
from syncam_data.render.unrealcv_config import UnrealCVConfig
from syncam_data.render.unrealcv_protocol import (
    PluginCallError,
    ProtocolError,
    as_bytes,
    as_text,
    camera_count,
    class_name_from_asset,
    decode_depth,
    decode_image,
    decode_mask,
    fnum,
    fnums,
    image_size,
    is_error,
    mask_colour,
    parse_colour,
    parse_floats,
    parse_version,
    plugin_call,
    plugin_reply,
    plugin_version,
    rotation_gap,
)
from syncam_data.render.unrealcv_server import (
    PROBE_ACTOR,
    PROBE_ASSET,
    CapabilityError,
    Connection,
    EngineLostError,
    Pending,
    ServerInfo,
    UnrealCVError,
    UnrealCVServer,
    client_version,
)

if TYPE_CHECKING:  # type hints only: `syncam-data --help` imports UnrealCVConfig without the scene and video stack
    from syncam_data.render.output import SceneOutput
    from syncam_data.scenes import SceneSpec, SubjectSpec

log = logging.getLogger(__name__)

PLUGIN_ACTOR = "SynCamFrameSync"
PLUGIN_MIN_VERSION = (2, 0, 0)  # 1.0.0 declared parameters vbp cannot pass
POSE_TOL_CM = 0.05
AXIS_TOL = 1e-3
TIME_TOL_S = 1e-3
FOV_TOL_DEG = 1e-2
# Rays at least this far below the horizon should meet a level's ground.
GROUND_RAY_DEG = 10.0
GROUND_SKY_WARN = 0.5


class SpawnError(UnrealCVError):
    """A subject could not be spawned or annotated; the message names the fix."""


class FrameSyncError(UnrealCVError):
    """The engine's reply does not match what was set for a frame (pose, time, image size)."""


# --- conversions between the spec and Unreal -------------------------------------------------


def subject_ue_transform(subject: SubjectSpec, frame: int, num_frames: int) -> tuple[list[float], list[float], float]:
    """(location cm, rotator pitch/yaw/roll, uniform scale) of a subject at ``frame`` in Unreal's world."""
    xyz, yaw = subject.trajectory.pose(frame, num_frames)
    loc = [float(xyz[0]) * 100.0, -float(xyz[1]) * 100.0, float(xyz[2]) * 100.0]  # mirror Y, m -> cm
    # Canonical yaw turns counter-clockwise (right-handed); Unreal's yaw turns clockwise. Many
    # skeletal meshes face +Y in their own frame: ``params.ue_yaw_offset_deg`` corrects that.
    ue_yaw = -float(yaw) + float(subject.params.get("ue_yaw_offset_deg", 0.0))
    return loc, [0.0, _wrap(ue_yaw), 0.0], float(subject.scale)


def _wrap(a: float) -> float:
    a = math.fmod(a, 360.0)
    return a - 360.0 if a > 180.0 else a + 360.0 if a <= -180.0 else a


def level_short_name(path: str) -> str:
    """'/Game/Maps/Forest' or '/Game/Maps/Forest.Forest' -> 'Forest' (what `vget /level/name` reports)."""
    return path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]


def ground_ray_mask(cam: Camera, below_deg: float = GROUND_RAY_DEG) -> np.ndarray:
    """Pixels whose ray points at least ``below_deg`` below the horizon (canonical world: Z up)."""
    x = ((np.arange(cam.width) + 0.5 - cam.cx) / cam.fx)[None, :]
    y = ((np.arange(cam.height) + 0.5 - cam.cy) / cam.fy)[:, None]
    r = np.asarray(cam.c2w)[2, :3]  # the world z row of the rotation
    z = (r[0] * x + r[1] * y + r[2]) / np.sqrt(x * x + y * y + 1.0)
    return z < -math.sin(math.radians(below_deg))


# --- per-scene state --------------------------------------------------------------------------


@dataclass
class _Cam:
    spec_id: str
    ue_id: int
    actor: str
    camera: Camera
    location: list[float]
    rotation: list[float]
    ground: np.ndarray | None = None  # ground_ray_mask, for the ground-as-sky check
    sky: list[float] = field(default_factory=list)  # per accepted frame: fraction of depth pixels that are sky
    ground_sky: float | None = None  # frame 0: fraction of the ground rays that are sky


@dataclass
class _Subject:
    spec: SubjectSpec
    actor: str
    colour: tuple[int, int, int]


@dataclass
class _Step:
    """One command of a frame and how to read its reply."""

    command: str
    kind: str
    data: Any = None


class _FrameWriter:
    """Writes accepted frames into the SceneOutput on a thread (H.264 encoding overlaps the next capture)."""

    def __init__(self, out: SceneOutput) -> None:
        self.out = out
        # One frame waiting while one is encoded: with 36 cameras at 480x720 a decoded frame is about 100 MB.
        self.q: queue.Queue[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="unrealcv-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            frame = self.q.get()
            if frame is None:
                return
            if self.error is not None:
                continue
            try:
                for cam_id, rgb, depth, ids in frame:
                    self.out.add_frame(cam_id, rgb, depth=depth, ids=ids)
            except BaseException as e:  # reported to the render thread
                self.error = e

    def put(self, frame: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self._raise()
        self.q.put(frame)

    def close(self, report: bool = True) -> None:
        """Wait for every queued frame; re-raise a writing error (unless the scene already failed)."""
        self.q.put(None)
        self.thread.join()
        if report:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


class UnrealCVBackend(RenderBackend):
    """Renders scene specs on an Unreal Engine instance through UnrealCV (see the module docstring)."""

    name = "unrealcv"

    config_class = UnrealCVConfig
    config: UnrealCVConfig

    def __init__(self, slot: WorkerSlot | None = None, config: UnrealCVConfig | dict[str, Any] | None = None) -> None:
        super().__init__(slot, config)
        o = self.config
        if o.launch and len(o.port) < self.slot.count:
            # One launched engine per worker: consecutive ports from the first one.
            port = o.port[0] + self.slot.index
        else:
            port = o.port[self.slot.index % len(o.port)]
        sock = "/tmp/unrealcv_{port}.socket" if o.unix_socket == "auto" else o.unix_socket
        self.engine = UnrealCVServer(
            o.host,
            port,
            sock.format(port=port, slot=self.slot.index) if sock else None,
            o.launch,
            self.slot.index,
            o.connect_timeout or (300.0 if o.launch else 15.0),
            o.timeout,
        )
        self.plugin_version: str | None = None
        self._warned: set[str] = set()
        self._levels_loaded = 0
        self._plugin_seen = False

    @property
    def conn(self) -> Connection | None:
        return self.engine.conn

    @property
    def server(self) -> ServerInfo:
        """What the connected server can do (probed on every connection)."""
        return self.engine.info

    @property
    def endpoint(self) -> str:
        return self.engine.endpoint

    def open(self) -> None:
        self.engine.open()

    def close(self) -> None:
        self.engine.close()

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def _lens(self) -> str:
        cine = self.server.has("cine") and self.server.has("cine_filmback") and self.server.has("cine_lens")
        if self.config.lens == "cine" and not cine:
            raise CapabilityError(
                f"UnrealCV server at {self.endpoint} (version {self.server.version}) has no cine camera commands "
                "(vset /camera/N/cine/enabled|filmback|lens: UnrealZoo v1.1 builds only); use lens 'fov' or 'auto'"
            )
        if self.config.lens == "fov" or (self.config.lens == "auto" and not cine):
            if not self.server.has("fov"):
                raise CapabilityError(
                    f"UnrealCV server at {self.endpoint}: cannot set the camera field of view (vset /camera/N/fov)"
                )
            return "fov"
        return "cine"

    # --- rendering ----------------------------------------------------------------------
    def render_scene(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None = None) -> RenderResult:
        self._check_spec(spec)
        attempts = 0
        while True:
            try:
                if self.conn is None:
                    self.engine.reconnect()
                return self._render_once(spec, out, on_frame, attempts)
            except (ConnectionError, TimeoutError, OSError) as e:
                attempts += 1
                if attempts > self.config.retries:
                    raise EngineLostError(
                        f"scene {spec.scene_id}: lost the UnrealCV server at {self.endpoint} {attempts} times; last: {e}"
                    ) from None
                log.warning(
                    "scene %s: %s; reconnecting and retrying the scene (%d/%d)",
                    spec.scene_id,
                    e,
                    attempts,
                    self.config.retries,
                )
                self.engine.disconnect()

    def _check_spec(self, spec: SceneSpec) -> None:
        if spec.background.kind != "unreal_level":
            raise ValueError(
                f"scene {spec.scene_id}: background {spec.background.id!r} is a {spec.background.kind!r}; "
                "the unrealcv backend loads Unreal levels (kind 'unreal_level', asset = map path)"
            )
        for s in spec.subjects:
            if s.kind != "unreal":
                raise ValueError(
                    f"scene {spec.scene_id}: subject {s.asset_id!r} is a {s.kind!r} asset; the unrealcv backend spawns kind 'unreal'"
                )
            for path in (s.asset, s.animation.clip or ""):
                if any(ch.isspace() for ch in path):
                    raise ValueError(
                        f"scene {spec.scene_id}: subject {s.asset_id!r}: {path!r} contains whitespace, which UnrealCV commands cannot carry"
                    )
        if any(ch.isspace() for ch in spec.background.asset):
            raise ValueError(f"scene {spec.scene_id}: level path {spec.background.asset!r} contains whitespace")
        for c in spec.cameras:
            # UnrealCV cameras are ideal pinholes with square pixels and a centred principal point.
            if abs(c.cx - c.width / 2) > 0.5 or abs(c.cy - c.height / 2) > 0.5 or abs(c.fx - c.fy) > 1e-4 * c.fx:
                raise ValueError(
                    f"scene {spec.scene_id}: camera {c.id} has fx={c.fx} fy={c.fy} cx={c.cx} cy={c.cy}; "
                    "Unreal renders only square pixels with a centred principal point"
                )

    def _render_once(
        self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None, attempt: int
    ) -> RenderResult:
        t0 = time.perf_counter()
        self._load_level(spec.background.asset)
        self._pause()
        self._detect_plugin()
        subjects, spawn_method = self._spawn_subjects(spec)
        lens = self._lens()
        cams, illumination = self._setup_cameras(spec, lens)
        if out.cams:
            # An earlier attempt was interrupted: drop its streams (their files are reopened for writing).
            out.abort()
            out.cams.clear()
        for c in cams:
            out.add_camera(
                c.spec_id,
                c.camera,
                raw=ue_raw_pose(
                    c.location,
                    c.rotation,
                    camera_id=c.ue_id,
                    actor=c.actor,
                    hfov_deg=c.camera.field_of_view()[0],
                    lens=lens,
                ),
            )
        t_setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        writer = _FrameWriter(out)
        stats = {"recaptured_frames": 0, "single_tick_frames": 0}
        try:
            self._capture_frames(spec, subjects, cams, writer, stats, on_frame)
        except BaseException:
            writer.close(report=False)
            raise
        writer.close()
        t_frames = time.perf_counter() - t1
        depth_info = self._depth_coverage(spec, cams)
        return RenderResult(
            backend=self.name,
            versions={
                "unrealcv_client": client_version(),
                "unrealcv_server": self.server.version,
                "syncam_plugin": self.plugin_version or "absent",
            },
            timings={"setup_s": t_setup, "frames_s": t_frames, "per_frame_s": t_frames / max(1, spec.num_frames)},
            info={
                "endpoint": self.endpoint,
                "server": self.server.record(),
                "animation_sync": "exact" if self.plugin_version else "approximate",
                "spawn_method": spawn_method,
                "lens": lens,
                "illumination": illumination,
                "retries": attempt,
                "recaptured_frames": stats["recaptured_frames"],
                **({"single_tick_frames": stats["single_tick_frames"]} if self.plugin_version else {}),
                "cameras": {c.spec_id: c.ue_id for c in cams},
                "subjects": {s.spec.instance_id: s.actor for s in subjects},
                "image_format": self.config.image_format,
                "depth": depth_info,
            },
        )

    # --- scene setup ------------------------------------------------------------------
    def _load_level(self, path: str) -> None:
        """Open the level and wait for the new world (the travel happens on a later tick)."""
        conn = self.conn
        assert conn is not None
        self._levels_loaded += 1
        # A marker actor in the old world: when it is gone, the travel happened. Poll the name the server
        # gave it (FObjectHandler::SpawnBox keeps its own name when the requested one is taken).
        reply = conn.request(f"vset /objects/spawn_cube SynCamLevelToken_{os.getpid()}_{self._levels_loaded}")
        has_token = not is_error(reply) and bool(as_text(reply).strip())
        token = as_text(reply).strip()
        conn.check(f"vset /action/game/level {path}")
        if not has_token:  # no marker: give the travel (on a later tick) time to start before trusting the name
            time.sleep(1.0)
        want = level_short_name(path).lower()
        deadline = time.monotonic() + self.config.level_timeout
        name = ""
        while True:
            gone, name_reply = conn.batch([f"vget /object/{token}/location", "vget /level/name"])
            name = as_text(name_reply).strip()
            if (not has_token or is_error(gone)) and name.lower() == want:
                return
            if time.monotonic() > deadline:
                if not has_token or is_error(gone):
                    raise UnrealCVError(
                        f"UnrealCV server at {self.endpoint}: level {path!r} did not load: the engine is on {name!r} "
                        "(a map that does not exist makes Unreal fall back to the default map; check the background's asset path)"
                    )
                raise UnrealCVError(
                    f"UnrealCV server at {self.endpoint}: level {path!r} did not load within {self.config.level_timeout:.0f} s"
                )
            time.sleep(0.02)

    def _pause(self, wait_s: float = 5.0) -> None:
        """Pause the world and check it (a world that just loaded may need a few ticks for its player controller)."""
        conn = self.conn
        assert conn is not None
        deadline = time.monotonic() + wait_s
        while True:
            _, paused = conn.batch(["vset /action/game/pause", "vget /action/game/is_paused"])
            if as_text(paused).strip().lower() == "true":
                return
            if time.monotonic() > deadline:
                raise UnrealCVError(
                    f"UnrealCV server at {self.endpoint}: the world did not pause ('vget /action/game/is_paused' = {as_text(paused)[:40]!r})"
                )
            time.sleep(0.05)

    def _detect_plugin(self) -> None:
        """Is the SynCam plugin's actor in this world, and can vbp call its functions? (after each level load)."""
        conn = self.conn
        assert conn is not None
        self.plugin_version = None
        problem = f"the SynCam UE plugin ({PLUGIN_ACTOR} actor, see unreal_plugin/README.md) is not available"
        if self.server.has("vbp"):
            # The plugin's world subsystem spawns its actor at BeginPlay: where it was seen before, give a
            # freshly loaded world a moment before concluding it is absent.
            deadline = time.monotonic() + (2.0 if self._plugin_seen else 0.0)
            while True:
                version = plugin_version(conn.request(f"vbp {PLUGIN_ACTOR} GetSynCamVersion"))
                if version is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if version is not None and parse_version(version) < PLUGIN_MIN_VERSION:
                problem = (
                    f"the SynCam UE plugin {version} is too old: vbp cannot pass its functions' arguments "
                    "(rebuild unreal_plugin/ from this release, 2.0.0 or newer)"
                )
            elif version is not None:
                bad = self._plugin_selftest()
                if bad:
                    problem = f"the SynCam UE plugin {version} is present but vbp cannot call {'; '.join(bad)}"
                else:
                    self.plugin_version = version
                    self._plugin_seen = True
        if self.plugin_version is not None:
            return
        msg = f"UnrealCV server at {self.endpoint}: {problem}"
        if self.config.require_plugin:
            raise CapabilityError(msg + " and require_plugin is set")
        self._warn_once(
            "plugin",
            "%s: animation sync is APPROXIMATE - subjects are posed with vset /object, but their animation "
            "plays on engine time (stepped by wall-clock between frames) instead of being set per frame",
            msg,
        )

    def _plugin_selftest(self) -> list[str]:
        """Dry-call each plugin function: each must run (and report that the probe actor or asset does not exist)."""
        assert self.conn is not None
        calls = {
            "GetWorldClock": f"vbp {PLUGIN_ACTOR} GetWorldClock",
            "SetActorTransformCm": f"vbp {PLUGIN_ACTOR} SetActorTransformCm {PROBE_ACTOR} 0 0 0 0 0 0 1",
            "SetAnimationPose": f"vbp {PLUGIN_ACTOR} SetAnimationPose {PROBE_ACTOR} None 0 1",
            "SpawnActorFromPath": f"vbp {PLUGIN_ACTOR} SpawnActorFromPath {PROBE_ASSET} {PROBE_ACTOR}",
        }
        bad = []
        for fn, reply in zip(calls, self.conn.batch(list(calls.values()))):
            try:
                data = plugin_call(reply, fn)
            except PluginCallError as e:
                bad.append(str(e))
                continue
            if fn == "GetWorldClock" and not (data.get("ok") and "time" in data):
                bad.append(f"{fn} (replied {data})")
            elif fn != "GetWorldClock" and data.get("ok") is not False:
                bad.append(f"{fn} (it accepted a probe for an actor or asset that does not exist: {data})")
        return bad

    def _spawn_subjects(self, spec: SceneSpec) -> tuple[list[_Subject], str]:
        conn = self.conn
        assert conn is not None
        if self.plugin_version is not None:
            method = "plugin"
        elif self.server.has("spawn_from_path"):
            method = "spawn_from_path"
        elif self.server.has("spawn_class"):
            method = "class_name"
        else:
            raise CapabilityError(
                f"UnrealCV server at {self.endpoint}: no way to spawn {spec.subjects[0].asset!r} without the SynCam plugin"
            )
        out = []
        for s in spec.subjects:
            name = f"SynCamSubject_{s.instance_id}"
            where = f"scene {spec.scene_id}: subject {s.asset_id!r} ({s.asset})"
            if method == "plugin":
                try:
                    actor = str(
                        plugin_reply(
                            conn.request(f"vbp {PLUGIN_ACTOR} SpawnActorFromPath {s.asset} {name}"),
                            "SpawnActorFromPath",
                        )["actor"]
                    )
                except (PluginCallError, KeyError) as e:
                    raise SpawnError(f"{where}: the SynCam plugin cannot spawn it: {e}") from None
            elif method == "spawn_from_path":
                reply = conn.request(f"vset /objects/spawn_from_path {s.asset} {name}")
                if is_error(reply):
                    raise SpawnError(f"{where}: 'vset /objects/spawn_from_path' failed: {as_text(reply).strip()}")
                actor = as_text(reply).strip() or name
            else:
                cls = class_name_from_asset(s.asset)
                reply = conn.request(f"vset /objects/spawn {cls} {name}")
                if is_error(reply):
                    raise SpawnError(
                        f"{where}: this UnrealCV server (version {self.server.version}) spawns only classes that are already "
                        f"loaded ('vset /objects/spawn {cls}' replied: {as_text(reply).strip()}); reference {cls} from the level "
                        f"{spec.background.asset} or install the SynCam plugin (unreal_plugin/README.md)"
                    )
                actor = as_text(reply).strip() or name
            colour = mask_colour(s.instance_id)
            # Setting the colour makes UnrealCV annotate the actor's meshes (FObjectAnnotator::SetAnnotationColor):
            # an actor spawned after world start is otherwise missing from depth and masks.
            _, got = conn.batch(
                [f"vset /object/{actor}/color {colour[0]} {colour[1]} {colour[2]}", f"vget /object/{actor}/color"]
            )
            if parse_colour(got) != colour:
                raise SpawnError(
                    f"{where}: UnrealCV did not annotate {actor} (mask colour reads {as_text(got).strip()[:40]!r}, set {colour}): "
                    "it has no mesh component UnrealCV can annotate, so it would be missing from depth and masks"
                )
            out.append(_Subject(s, actor, colour))
        return out, method

    def _setup_cameras(self, spec: SceneSpec, lens: str) -> tuple[list[_Cam], str]:
        conn = self.conn
        assert conn is not None
        w, h = spec.width, spec.height
        # A new camera's id is the number of cameras before its spawn (as the official client's
        # UnrealCv_API.set_new_camera does): `vget /cameras` lists sensors (USensorBPLib::
        # GetFusionSensorList: the pawn's first), never the actor name the spawn replies.
        cmds = [c for _ in spec.cameras for c in ("vget /cameras", "vset /cameras/spawn")] + ["vget /cameras"]
        replies = conn.batch(cmds)
        placed: list[tuple[int, str, list[float], list[float]]] = []
        for i, c in enumerate(spec.cameras):
            before, actor, after = (
                camera_count(replies[2 * i]),
                as_text(replies[2 * i + 1]),
                camera_count(replies[2 * i + 2]),
            )
            if is_error(actor):
                raise UnrealCVError(
                    f"UnrealCV server at {self.endpoint}: 'vset /cameras/spawn' failed: {actor.strip()}"
                )
            if after != before + 1:
                raise UnrealCVError(
                    f"UnrealCV server at {self.endpoint}: spawning camera {c.id} changed 'vget /cameras' from {before} to "
                    f"{after} entries (expected {before + 1}); cannot tell which id the new camera has"
                )
            loc, rot = ue_from_c2w(np.asarray(c.c2w))
            placed.append((before, actor.strip(), [float(v) for v in loc], [float(v) for v in rot]))
        illumination = "server default"
        if self.config.illumination is not None:
            if self.server.has("illumination"):
                illumination = self.config.illumination
            else:
                self._warn_once(
                    "illumination",
                    "UnrealCV server at %s (version %s) cannot set a camera's illumination; "
                    "captures use the server default (on UE 5.5+ scene captures disable Lumen)",
                    self.endpoint,
                    self.server.version,
                )
        cmds = []
        for (cid, _, loc, rot), c in zip(placed, spec.cameras):
            cmds.append(f"vset /camera/{cid}/size {w} {h}")
            if lens == "cine":
                focal_mm = c.fx * self.config.sensor_width_mm / w
                # UnrealZoo v1.1: the cine path must be enabled first; filmback is width, height, offsets.
                cmds += [
                    f"vset /camera/{cid}/cine/enabled 1",
                    f"vset /camera/{cid}/cine/filmback {fnum(self.config.sensor_width_mm, 6)} {fnum(self.config.sensor_width_mm * h / w, 6)} 0 0",
                    f"vset /camera/{cid}/cine/lens {fnum(focal_mm, 6)} 2.8",
                ]
            else:
                cmds.append(f"vset /camera/{cid}/fov {fnum(hfov_from_focal(w, c.fx), 6)}")
            if illumination != "server default":
                cmds.append(f"vset /camera/{cid}/illumination {illumination}")
            cmds += [f"vset /camera/{cid}/location {fnums(loc)}", f"vset /camera/{cid}/rotation {fnums(rot)}"]
        for r, cmd in zip(conn.batch(cmds), cmds):
            if is_error(r):
                raise UnrealCVError(f"UnrealCV server at {self.endpoint}: '{cmd}' failed: {as_text(r).strip()}")
        reads = [f"vget /camera/{cid}/{p}" for cid, _, _, _ in placed for p in ("location", "rotation", "fov", "size")]
        replies = conn.batch(reads)
        cams = []
        for i, ((cid, actor, loc, rot), c) in enumerate(zip(placed, spec.cameras)):
            what = f"camera {c.id} (UE camera {cid})"
            rloc = parse_floats(replies[4 * i], 3, f"{what} location")
            rrot = parse_floats(replies[4 * i + 1], 3, f"{what} rotation")
            fov = parse_floats(replies[4 * i + 2], 1, f"{what} fov")[0]
            size = parse_floats(replies[4 * i + 3], 2, f"{what} size")
            if [int(size[0]), int(size[1])] != [w, h]:
                raise FrameSyncError(f"{what}: engine reports size {int(size[0])}x{int(size[1])}, set {w}x{h}")
            want_fov = hfov_from_focal(w, c.fx)
            if abs(fov - want_fov) > FOV_TOL_DEG:
                raise FrameSyncError(f"{what}: engine reports FOV {fov:.4f}°, set {want_fov:.4f}° ({lens})")
            self._check_pose(what, loc, rot, rloc, rrot)
            f = focal_from_hfov(w, fov)
            # The exported camera is what the engine reports, through the foundation's UE conversion.
            cam = Camera(w, h, f, f, w / 2.0, h / 2.0, c2w_from_ue(rloc, rrot))
            cams.append(_Cam(c.id, cid, actor, cam, rloc, rrot, ground=ground_ray_mask(cam)))
        return cams, illumination

    def _step_world(self, dt: float) -> None:
        """Without the plugin: let engine time run for about one frame interval (approximate)."""
        assert self.conn is not None
        self.conn.check("vset /action/game/resume")
        time.sleep(dt)
        self._pause()

    # --- frames -------------------------------------------------------------------------
    def _capture_frames(
        self,
        spec: SceneSpec,
        subjects: list[_Subject],
        cams: list[_Cam],
        writer: _FrameWriter,
        stats: dict[str, int],
        on_frame: FrameCallback | None,
    ) -> None:
        """Capture every frame on every camera, in order; a frame in which something moved is captured again.

        With the plugin every frame sets the whole state it shows, so the next
        frame's commands are sent while this one's replies are still coming in:
        the engine never waits for the client between frames. Without it the
        world is stepped in between, so frames go one at a time.
        """
        depth = 2 if self.plugin_version is not None else 1
        inflight: deque[tuple[int, list[_Step], Pending]] = deque()
        sent = done = attempts = 0
        try:
            while done < spec.num_frames:
                while len(inflight) < depth and sent < spec.num_frames:
                    if self.plugin_version is None and sent > 0:
                        self._step_world(1.0 / spec.fps)
                    steps = self._frame_steps(spec, sent, subjects, cams, repose=attempts > 0 and sent == done)
                    inflight.append((sent, steps, self._send_frame(steps)))
                    sent += 1
                k, steps, pending = inflight.popleft()
                images, moved, single_tick = self._read_frame(k, steps, pending, subjects, cams)
                if moved is None:
                    self._accept_frame(k, images, cams, writer)
                    stats["single_tick_frames"] += int(single_tick)
                    done, attempts = done + 1, 0
                    if on_frame is not None:
                        on_frame(k)
                    continue
                attempts += 1
                if attempts > self.config.recaptures:
                    raise FrameSyncError(
                        f"frame {k}: {moved} in {self.config.recaptures + 1} captures in a row; the world does not hold still"
                    )
                log.warning("scene %s frame %d: %s; capturing the frame again", spec.scene_id, k, moved)
                stats["recaptured_frames"] += 1
                for _, _, later in inflight:  # frames sent after it are captured again too, in order
                    for _ in later.replies():
                        pass
                inflight.clear()
                sent = done
                self._pause()
        except BaseException:
            if inflight:  # replies of frames in flight are still coming: this connection is out of step
                self.engine.disconnect()
            raise

    def _accept_frame(self, k: int, images: dict[str, tuple], cams: list[_Cam], writer: _FrameWriter) -> None:
        for c in cams:
            sky = np.isinf(images[c.spec_id][1])
            c.sky.append(float(sky.mean()))
            if k == 0 and c.ground is not None and c.ground.any():
                c.ground_sky = float(sky[c.ground].mean())
        writer.put([(c.spec_id, *images[c.spec_id]) for c in cams])

    def _frame_steps(
        self, spec: SceneSpec, k: int, subjects: list[_Subject], cams: list[_Cam], repose: bool
    ) -> list[_Step]:
        plugin = self.plugin_version is not None
        steps: list[_Step] = []
        add = lambda cmd, kind, data=None: steps.append(_Step(cmd, kind, data))  # noqa: E731
        if plugin:
            add(f"vbp {PLUGIN_ACTOR} GetWorldClock", "clock0")
        for s in subjects:
            loc, rot, scale = subject_ue_transform(s.spec, k, spec.num_frames)
            label = f"subject {s.actor}"
            if plugin:
                add(
                    f"vbp {PLUGIN_ACTOR} SetActorTransformCm {s.actor} {fnums(loc + rot + [scale])}",
                    "xform",
                    (label, loc, rot, scale),
                )
                clip = s.spec.animation.clip or "None"
                t_anim = s.spec.animation_time(k, spec.fps)
                add(
                    f"vbp {PLUGIN_ACTOR} SetAnimationPose {s.actor} {clip} {fnum(t_anim, 6)} {int(s.spec.animation.loop)}",
                    "anim",
                    (s.actor, t_anim, s.spec.animation.loop),
                )
            else:
                add(f"vset /object/{s.actor}/location {fnums(loc)}", "ok")
                add(f"vset /object/{s.actor}/rotation {fnums(rot)}", "ok")
                add(f"vset /object/{s.actor}/scale {fnums([scale] * 3)}", "ok")
                add(f"vget /object/{s.actor}/location", "pre_loc", label)
                add(f"vget /object/{s.actor}/rotation", "pre_rot", (label, loc, rot))
        if repose:  # after something moved: put the cameras back where they belong
            for c in cams:
                add(f"vset /camera/{c.ue_id}/location {fnums(c.location)}", "ok")
                add(f"vset /camera/{c.ue_id}/rotation {fnums(c.rotation)}", "ok")
        for c in cams:
            add(f"vget /camera/{c.ue_id}/lit {self.config.image_format}", "lit", c)
            add(f"vget /camera/{c.ue_id}/depth npy", "depth", c)
            add(f"vget /camera/{c.ue_id}/object_mask bmp", "mask", c)
        # The state after the captures must equal the state before them: nothing moved meanwhile.
        for s in subjects:
            add(f"vget /object/{s.actor}/location", "post_loc", f"subject {s.actor}")
            add(f"vget /object/{s.actor}/rotation", "post_rot", f"subject {s.actor}")
        for c in cams:
            add(f"vget /camera/{c.ue_id}/location", "cam_loc", c)
            add(f"vget /camera/{c.ue_id}/rotation", "cam_rot", c)
        add("vget /action/game/is_paused", "paused")
        if plugin:
            add(f"vbp {PLUGIN_ACTOR} GetWorldClock", "clock1")
        return steps

    def _send_frame(self, steps: list[_Step]) -> Pending:
        assert self.conn is not None
        cmds = [s.command for s in steps]
        if self.server.vbatch:
            cmds = [f"vbatch {len(steps)}", *cmds]
        return self.conn.send(cmds)

    def _read_frame(
        self, k: int, steps: list[_Step], pending: Pending, subjects: list[_Subject], cams: list[_Cam]
    ) -> tuple[dict[str, tuple], str | None, bool]:
        """Read and check one frame's replies as they arrive; (images per camera, what moved or None, one tick?)."""
        colours = {s.spec.instance_id: s.colour for s in subjects}
        images: dict[str, dict[str, np.ndarray]] = {c.spec_id: {} for c in cams}
        pre: dict[str, tuple[list[float], list[float]]] = {}
        post: dict[str, list[float]] = {}
        clocks: dict[str, dict[str, Any]] = {}
        moved: list[str] = []
        error: Exception | None = None
        replies = pending.replies()
        if self.server.vbatch:
            first = next(replies)
            if is_error(first):
                error = FrameSyncError(f"frame {k}: 'vbatch {len(steps)}' failed: {as_text(first).strip()}")
        # Every reply is read even after a problem, so the connection stays in step.
        for step, reply in zip(steps, replies):
            if error is not None:
                continue
            try:
                self._read_step(k, step, reply, colours, images, pre, post, clocks, moved)
            except FrameSyncError as e:
                error = e
            except (ProtocolError, KeyError, TypeError, ValueError) as e:  # a reply without the promised form
                error = FrameSyncError(f"frame {k}: '{step.command[:80]}': {type(e).__name__}: {e}")
        if error is not None:
            raise error
        single_tick = False
        if "clock0" in clocks:
            t0, t1 = float(clocks["clock0"]["time"]), float(clocks["clock1"]["time"])
            if abs(t1 - t0) > 1e-6:
                moved.append(
                    f"world time moved from {t0:.6f} to {t1:.6f} s during the captures (the world was not paused)"
                )
            single_tick = clocks["clock0"].get("frame") == clocks["clock1"].get("frame")
        return (
            {c: (b["lit"], b["depth"], b["mask"]) for c, b in images.items()},
            ("; ".join(moved) or None),
            single_tick,
        )

    def _read_step(
        self,
        k: int,
        step: _Step,
        reply: str | bytes,
        colours: dict[int, tuple[int, int, int]],
        images: dict[str, dict[str, np.ndarray]],
        pre: dict[str, tuple[list[float], list[float]]],
        post: dict[str, list[float]],
        clocks: dict[str, dict[str, Any]],
        moved: list[str],
    ) -> None:
        where = f"frame {k}: '{step.command[:80]}'"
        kind, data = step.kind, step.data
        if kind in ("lit", "depth", "mask"):
            cam = data.camera
            raw = as_bytes(reply)
            if is_error(reply):
                raise FrameSyncError(f"{where} failed: {as_text(reply).strip()[:200]}")
            if kind == "depth":
                arr = decode_depth(raw, cam, self.config.depth_kind, where)
                shape = arr.shape
            else:
                size = image_size(raw)
                if size is not None and size != (cam.width, cam.height):
                    raise FrameSyncError(
                        f"{where}: image is {size[0]}x{size[1]}, camera {data.spec_id} is {cam.width}x{cam.height}"
                    )
                arr = decode_mask(raw, colours, where) if kind == "mask" else decode_image(raw, where)
                shape = arr.shape[:2]
            if shape != (cam.height, cam.width):
                raise FrameSyncError(
                    f"{where}: image is {shape[1]}x{shape[0]}, camera {data.spec_id} is {cam.width}x{cam.height}"
                )
            images[data.spec_id][kind] = arr
        elif is_error(reply):
            raise FrameSyncError(f"{where} failed: {as_text(reply).strip()[:200]}")
        elif kind == "paused":
            if as_text(reply).strip().lower() != "true":
                moved.append("the world was resumed during the captures")
        elif kind in ("clock0", "clock1"):
            clocks[kind] = plugin_reply(reply, where)
        elif kind == "xform":
            label, loc, rot, scale = data
            got = plugin_reply(reply, where)
            self._check_pose(f"{where} {label}", loc, rot, got["location"], got["rotation"])
            if max(abs(float(v) - scale) for v in got["scale"]) > 1e-4:
                raise FrameSyncError(f"{where}: {label} scale is {got['scale']}, set {scale}")
            pre[label] = ([float(v) for v in got["location"]], [float(v) for v in got["rotation"]])
        elif kind == "anim":
            actor, t_set, loop = data
            got = plugin_reply(reply, where)
            # A one-shot clip holds its last pose: the plugin reports the clip length beside the time.
            want = t_set if loop else min(t_set, float(got["clip_length"]))
            if abs(float(got["time"]) - want) > TIME_TOL_S:
                raise FrameSyncError(
                    f"{where}: {actor} animation time is {float(got['time']):.6f} s, expected {want:.6f} s"
                )
        elif kind == "pre_loc":
            pre[data] = (parse_floats(reply, 3, where), [])
        elif kind == "pre_rot":
            label, loc, rot = data
            got_rot = parse_floats(reply, 3, where)
            self._check_pose(f"{where} {label}", loc, rot, pre[label][0], got_rot)
            pre[label] = (pre[label][0], got_rot)
        elif kind == "post_loc":
            post[data] = parse_floats(reply, 3, where)
        elif kind == "post_rot":
            got_loc, got_rot = post[data], parse_floats(reply, 3, where)
            p_loc, p_rot = pre[data]
            if _loc_gap(p_loc, got_loc) > POSE_TOL_CM or rotation_gap(p_rot, got_rot) > AXIS_TOL:
                moved.append(
                    f"{data} moved during the captures (location {p_loc} -> {got_loc}, rotation {p_rot} -> {got_rot})"
                )
        elif kind == "cam_loc":
            post[f"camera {data.spec_id}"] = parse_floats(reply, 3, where)
        elif kind == "cam_rot":
            got_loc, got_rot = post[f"camera {data.spec_id}"], parse_floats(reply, 3, where)
            if _loc_gap(data.location, got_loc) > POSE_TOL_CM or rotation_gap(data.rotation, got_rot) > AXIS_TOL:
                moved.append(f"camera {data.spec_id} (UE camera {data.ue_id}) moved to {got_loc} {got_rot}")

    def _check_pose(
        self, what: str, loc: Sequence[float], rot: Sequence[float], got_loc: Sequence[float], got_rot: Sequence[float]
    ) -> None:
        dl = _loc_gap(loc, got_loc)
        if dl > POSE_TOL_CM:
            raise FrameSyncError(
                f"{what}: engine reports location {list(got_loc)} cm, set {list(loc)} ({dl:.3f} cm off)"
            )
        if rotation_gap(rot, [float(v) for v in got_rot]) > AXIS_TOL:
            raise FrameSyncError(f"{what}: engine reports rotation {list(got_rot)}, set {list(rot)}")

    def _depth_coverage(self, spec: SceneSpec, cams: list[_Cam]) -> dict[str, Any]:
        """Per camera: the mean fraction of sky (inf) depth pixels, and of the ground rays on frame 0; warn on a sky ground."""
        sky = {c.spec_id: round(float(np.mean(c.sky)), 4) for c in cams if c.sky}
        ground = {c.spec_id: round(c.ground_sky, 4) for c in cams if c.ground_sky is not None}
        bad = sorted(cid for cid, f in ground.items() if f > GROUND_SKY_WARN)
        if ground and len(bad) * 2 >= len(ground):
            log.warning(
                "scene %s: the ground reads as sky in %d of %d cameras (depth inf on rays %.0f° below the horizon; level %s). "
                "UnrealCV's depth and masks show only meshes annotated at world start: Landscape terrain and actors "
                "streamed in by World Partition come back as sky. Use a static-mesh ground or disable streaming for "
                "capture (docs/unreal.md).",
                spec.scene_id,
                len(bad),
                len(ground),
                GROUND_RAY_DEG,
                spec.background.asset,
            )
        return {
            "sky_fraction": sky,
            "ground_sky_fraction": ground,
            "ground_reads_as_sky": bool(ground) and len(bad) * 2 >= len(ground),
        }


def _loc_gap(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())

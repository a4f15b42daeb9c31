"""The Unreal Engine render backend, over UnrealCV (the only module that imports ``unrealcv``).

One backend instance drives one engine instance (one worker slot): it
connects to ``host:port`` (or a Unix socket), optionally starting the engine
itself from a ``launch`` command template. Per scene it

1. loads the background level (``vset /action/game/level``) and pauses the world;
2. spawns the subjects from their asset paths and gives each a known
   object-mask colour (its instance id is recovered from that colour);
3. spawns one UnrealCV camera per spec camera and sets its resolution,
   horizontal FOV (or cine filmback + focal length) and pose;
4. for every frame runs a **frame barrier** in one ``vbatch``: every subject's
   transform and animation time are set explicitly (through the SynCam UE
   plugin's ``vbp`` functions; without the plugin transforms go through
   ``vset /object`` and animation time is only approximate), every camera is
   posed, the poses are read back, and every camera is captured (lit BMP or
   PNG, depth npy, object mask). The replies are checked against what was set
   before the frame is accepted.

Exported cameras are built from the pose and FOV the engine *reports*,
converted with ``syncam_data.cameras`` (Contract 1); ``cameras.json`` keeps
the raw UE pose. UnrealCV's depth is plane depth (distance to the image plane,
i.e. z-depth) in centimetres, read from a half-float target whose sky value
is 65504; it is converted to metres with the sky as ``inf``
(``depth_kind="point"`` converts ray distance for servers that return it).

A lost connection is reconnected (a launched engine that died is restarted)
and the scene is retried from the start; a server that lacks a command the
backend needs fails with an error naming the capability.

Options (from ``get_backend("unrealcv", slot, **options)``; others ignored):
``host``, ``port`` (int or list; slot i uses ``port[i % len]``, or
``port[0] + i`` when launching more instances than ports), ``unix_socket``
(path, ``{port}`` is replaced; ``"auto"`` = ``/tmp/unrealcv_{port}.socket``),
``launch`` (command template with ``{port}`` and ``{slot}``),
``connect_timeout``, ``timeout`` (seconds per request batch), ``retries``,
``image_format`` (``bmp``/``png``), ``lens`` (``fov``/``cine``),
``sensor_width_mm``, ``depth_kind`` (``plane``/``point``),
``require_plugin``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import multiprocessing.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from syncam_data.cameras import (
    Camera,
    c2w_from_ue,
    focal_from_hfov,
    hfov_from_focal,
    ue_from_c2w,
    ue_raw_pose,
    ue_rotator_axes,
)
from syncam_data.render.base import FrameCallback, RenderBackend, RenderResult, WorkerSlot
from syncam_data.render.output import SceneOutput
from syncam_data.scenes import SceneSpec, SubjectSpec

log = logging.getLogger(__name__)

PLUGIN_ACTOR = "SynCamFrameSync"
DEFAULT_PORT = 9000
# Unreal's depth target is half float: the sky reads as 65504 cm; anything this far is "empty".
SKY_DEPTH_CM = 65000.0
MASK_TOLERANCE = 3
POSE_TOL_CM = 0.05
AXIS_TOL = 1e-3
TIME_TOL_S = 1e-3
FOV_TOL_DEG = 1e-2
GREETING_TIMEOUT_S = 10.0

# capability -> an example command the server's templates must match
REQUIRED_COMMANDS: dict[str, str] = {
    "load a level": "vset /action/game/level /Game/Map",
    "pause the world": "vset /action/game/pause",
    "resume the world": "vset /action/game/resume",
    "batch requests into one tick": "vbatch 2",
    "spawn actors from asset paths": "vset /objects/spawn_from_path /Game/Asset Name",
    "set object-mask colours": "vset /object/Name/color 1 2 3",
    "set object locations": "vset /object/Name/location 0 0 0",
    "read object locations": "vget /object/Name/location",
    "set object rotations": "vset /object/Name/rotation 0 0 0",
    "read object rotations": "vget /object/Name/rotation",
    "spawn cameras": "vset /cameras/spawn",
    "list cameras": "vget /cameras",
    "set camera resolution": "vset /camera/1/size 64 48",
    "set camera locations": "vset /camera/1/location 0 0 0",
    "read camera locations": "vget /camera/1/location",
    "set camera rotations": "vset /camera/1/rotation 0 0 0",
    "read camera rotations": "vget /camera/1/rotation",
    "read the camera field of view": "vget /camera/1/fov",
    "capture lit images": "vget /camera/1/lit bmp",
    "capture depth as npy": "vget /camera/1/depth npy",
    "capture object masks": "vget /camera/1/object_mask bmp",
}
FOV_COMMANDS = {"set the horizontal field of view": "vset /camera/1/fov 90"}
CINE_COMMANDS = {
    "set a cine filmback": "vset /camera/1/cine/filmback 36 24",
    "set a cine lens": "vset /camera/1/cine/lens 50 2.8",
}
PLUGIN_COMMAND = "vbp SynCamFrameSync SetActorTransformCm Name 0 0 0 0 0 0 1"  # the longest vbp call


class UnrealCVError(RuntimeError):
    """A problem with the Unreal engine or its UnrealCV server; the message names the endpoint."""


class CapabilityError(UnrealCVError):
    """The server lacks a command the backend needs."""


class FrameSyncError(UnrealCVError):
    """The engine's reply does not match what was set for a frame (pose, time, image size)."""


class EngineLostError(UnrealCVError, ConnectionError):
    """The connection dropped more often than ``retries`` allows."""


# --- wire: a thin, timed layer over unrealcv.Client ---------------------------------------------

def _as_bytes(reply: str | bytes) -> bytes:
    # unrealcv.Client hands back str when a payload happens to decode as UTF-8 (possible for
    # small flat images); the decoding is lossless, so encoding restores the original bytes.
    return reply if isinstance(reply, bytes) else reply.encode("utf-8")


def _is_error(reply: str | bytes) -> bool:
    return isinstance(reply, str) and reply.lstrip().lower().startswith("error")


class Connection:
    """One UnrealCV client connection with per-request timeouts and clear errors."""

    def __init__(self, endpoint: str, client: Any, timeout: float) -> None:
        self.endpoint = endpoint
        self.client = client
        self.timeout = timeout

    @classmethod
    def open(cls, host: str, port: int, unix_socket: str | None, timeout: float, deadline: float) -> "Connection":
        """Connect (retrying until ``deadline``, monotonic seconds): the server takes one client at a time."""
        # The client logs every connect at INFO on its own handler; keep our logs readable.
        logging.getLogger("unrealcv").setLevel(logging.WARNING)
        endpoint = unix_socket if unix_socket else f"{host}:{port}"
        last = "no answer"
        while True:
            if _probe(host, port, unix_socket):
                client_cls = _client_class()
                client = client_cls(unix_socket, "unix") if unix_socket else client_cls((host, port), "inet")
                # The client's default on a dead socket is 10 re-reads with back-off (about a minute);
                # we reconnect ourselves, so fail fast.
                client.RECONNECT_ATTEMPTS = 1
                client.RECONNECT_BASE_DELAY = 0.05
                # Client.connect blocks without a timeout until the greeting arrives; a server that
                # accepts but never greets (an engine still loading) must not hang the worker.
                greet = threading.Timer(min(GREETING_TIMEOUT_S, max(0.5, deadline - time.monotonic())), lambda c=client: _quiet_disconnect(c))
                greet.daemon = True
                greet.start()
                try:
                    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ok = client.connect(timeout=max(1, int(timeout)))
                finally:
                    greet.cancel()
                if ok:
                    return cls(endpoint, client, timeout)
                last = "the server did not send its 'connected' greeting (busy with another client?)"
            if time.monotonic() > deadline:
                raise ConnectionError(f"UnrealCV server at {endpoint}: cannot connect ({last})")
            time.sleep(0.2)

    def close(self) -> None:
        self.client.disconnect()

    def batch(self, commands: Sequence[str], timeout: float | None = None) -> list[str | bytes]:
        """Send ``commands`` and return their replies; raises ConnectionError on a drop or timeout."""
        if not self.client.isconnected():
            raise ConnectionError(f"UnrealCV server at {self.endpoint}: not connected")
        limit = timeout or self.timeout
        fired = threading.Event()

        def _expire() -> None:
            fired.set()
            _quiet_disconnect(self.client)  # unblocks the client's receive thread, which fails the batch

        timer = threading.Timer(limit, _expire)
        timer.daemon = True
        timer.start()
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # We check the server's command list ourselves (check_capabilities).
                warnings.simplefilter("ignore")
                replies = self.client.request(list(commands))
        except (ConnectionError, OSError, AssertionError) as e:
            if fired.is_set():
                raise TimeoutError(f"UnrealCV server at {self.endpoint}: no reply within {limit:g} s") from None
            raise ConnectionError(f"UnrealCV server at {self.endpoint}: connection lost ({e})") from None
        finally:
            timer.cancel()
        if fired.is_set():
            raise TimeoutError(f"UnrealCV server at {self.endpoint}: no reply within {limit:g} s")
        if replies is None or any(r is None for r in replies):  # the client's receive loop saw the socket close
            raise ConnectionError(f"UnrealCV server at {self.endpoint}: connection lost while waiting for replies")
        return replies

    def request(self, command: str) -> str | bytes:
        return self.batch([command])[0]

    def check(self, command: str) -> str:
        """Run one command that must succeed; returns its text reply."""
        reply = self.request(command)
        if _is_error(reply):
            raise UnrealCVError(f"UnrealCV server at {self.endpoint}: '{command}' failed: {reply}")
        return reply if isinstance(reply, str) else reply.decode("utf-8", "replace")

    def frame_batch(self, commands: Sequence[str]) -> list[str | bytes]:
        """Run ``commands`` in one engine tick (``vbatch N`` then the N commands)."""
        replies = self.batch([f"vbatch {len(commands)}", *commands])
        if _is_error(replies[0]):
            raise UnrealCVError(f"UnrealCV server at {self.endpoint}: 'vbatch {len(commands)}' failed: {replies[0]}")
        return replies[1:]


_CLIENT_CLASS: Any = None


def _client_class() -> Any:
    """unrealcv.Client whose receive thread ends quietly on a dropped connection.

    The stock client hands the ConnectionError to the waiting request (through its reply queue)
    and then re-raises it in its receive thread, which prints a thread traceback on every drop;
    the request side is where we handle it.
    """
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        import unrealcv

        class _Client(unrealcv.Client):
            def receive_loop_queue(self) -> None:
                try:
                    super().receive_loop_queue()
                except ConnectionError as e:
                    log.debug("UnrealCV receive loop ended: %s", e)

        _CLIENT_CLASS = _Client
    return _CLIENT_CLASS


def _quiet_disconnect(client: Any) -> None:
    # Called from timer threads: no redirect_stdout here (it swaps the process-wide sys.stdout and
    # interleaved swaps from two threads can leave it pointing at a dead buffer).
    client.disconnect()


def _probe(host: str, port: int, unix_socket: str | None) -> bool:
    """Does anything listen there? (cheap check before the client logs a failed connect)."""
    try:
        if unix_socket:
            if not os.path.exists(unix_socket):
                return False
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            s.connect(unix_socket)
            s.close()
        else:
            socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    # The server now spends a moment closing the probe; it takes one client at a time.
    time.sleep(0.05)
    return True


def command_templates(conn: Connection) -> tuple[str, ...] | None:
    """The server's command templates, or None when it cannot list them (UnrealCV < 1.1)."""
    from unrealcv import ApiVersionManager

    reply = conn.request(ApiVersionManager.COMMANDS_QUERY)
    if _is_error(reply) or not isinstance(reply, str):
        return None
    templates = tuple(ApiVersionManager.normalize_command(line) for line in reply.splitlines() if line.strip())
    return templates if ApiVersionManager.COMMANDS_QUERY in templates else None


def missing_capabilities(templates: Sequence[str], needed: dict[str, str]) -> list[str]:
    from unrealcv import ApiVersionManager

    return [
        f"{what} ('{example}')"
        for what, example in needed.items()
        if not any(ApiVersionManager.matches_command_template(example, t) for t in templates)
    ]


# --- conversions between the spec and Unreal -------------------------------------------------

def mask_colour(instance_id: int) -> tuple[int, int, int]:
    """A saturated, distinct object-mask colour per subject instance id."""
    return (255, (instance_id * 67) % 256, (255 - instance_id * 29) % 256)


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


def _floats(reply: str | bytes, n: int, what: str) -> list[float]:
    text = reply if isinstance(reply, str) else reply.decode("utf-8", "replace")
    try:
        vals = [float(v) for v in text.split()[:n]]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise FrameSyncError(f"{what}: expected {n} numbers, got {text[:80]!r}")
    return vals


def bp_value(reply: str | bytes, what: str, key: str = "ReturnValue") -> str:
    """Output ``key`` of a ``vbp`` reply (UnrealCV returns the function's outputs as JSON)."""
    text = reply if isinstance(reply, str) else reply.decode("utf-8", "replace")
    if _is_error(text):
        raise FrameSyncError(f"{what}: {text}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    if isinstance(data, dict):
        if key in data:
            return str(data[key])
        if len(data) == 1 and key == "ReturnValue":
            return str(next(iter(data.values())))
        raise FrameSyncError(f"{what}: no output {key!r} in {text[:120]!r}")
    return str(data)


def rotation_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Largest axis difference between two rotators (angles may differ by 360° or at gimbal lock)."""
    return max(float(np.abs(x - y).max()) for x, y in zip(ue_rotator_axes(*a), ue_rotator_axes(*b)))


def decode_image(data: bytes, what: str) -> np.ndarray:
    """BMP/PNG bytes -> RGB uint8 (UnrealCV sends BGR(A), as OpenCV reads it)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FrameSyncError(f"{what}: cannot decode the image ({len(data)} bytes, starts {data[:8]!r})")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3][..., ::-1])


def decode_depth(data: bytes, cam: Camera, kind: str, what: str) -> np.ndarray:
    """UnrealCV depth npy (cm) -> z-depth in metres, inf where empty."""
    try:
        d = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float64)
    except ValueError as e:
        raise FrameSyncError(f"{what}: not an npy array ({e})") from None
    if d.ndim == 3:
        d = d[..., 0]
    d = np.where(d >= SKY_DEPTH_CM, np.inf, d / 100.0)
    if kind == "point":  # distance along the ray -> distance along the optical axis
        g = cam.pixel_grid()
        d = d / np.sqrt(1.0 + ((g[..., 0] - cam.cx) / cam.fx) ** 2 + ((g[..., 1] - cam.cy) / cam.fy) ** 2)
    return d.astype(np.float32)


def decode_ids(mask_rgb: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    ids = np.zeros(mask_rgb.shape[:2], np.uint8)
    m = mask_rgb.astype(np.int16)
    for iid, c in colours.items():
        ids[np.all(np.abs(m - np.array(c, np.int16)) <= MASK_TOLERANCE, axis=-1)] = iid
    return ids


# --- per-scene state --------------------------------------------------------------------------

@dataclass
class _Cam:
    spec_id: str
    ue_id: int
    actor: str
    camera: Camera
    location: list[float]
    rotation: list[float]


@dataclass
class _Subject:
    spec: SubjectSpec
    actor: str
    colour: tuple[int, int, int]


class UnrealCVBackend(RenderBackend):
    """Renders scene specs on an Unreal Engine instance through UnrealCV (see the module docstring)."""

    name = "unrealcv"

    def __init__(self, slot: WorkerSlot | None = None, **options: Any) -> None:
        super().__init__(slot, **options)
        o = options
        self.host = str(o.get("host") or "127.0.0.1")
        ports = o.get("port") or [DEFAULT_PORT]
        ports = [int(p) for p in (ports if isinstance(ports, (list, tuple)) else [ports])]
        self.launch = o.get("launch") or None
        if self.launch and len(ports) < self.slot.count:
            # One launched engine per worker: consecutive ports from the first one.
            self.port = ports[0] + self.slot.index
        else:
            self.port = ports[self.slot.index % len(ports)]
        sock = o.get("unix_socket") or None
        if sock == "auto":
            sock = "/tmp/unrealcv_{port}.socket"
        self.unix_socket = sock.format(port=self.port, slot=self.slot.index) if sock else None
        self.connect_timeout = float(o.get("connect_timeout") or (300.0 if self.launch else 15.0))
        self.timeout = float(o.get("timeout") or 120.0)
        self.retries = int(o.get("retries", 2))
        self.image_format = str(o.get("image_format") or "bmp")
        self.lens = str(o.get("lens") or "fov")
        self.sensor_width_mm = float(o.get("sensor_width_mm") or 36.0)
        self.depth_kind = str(o.get("depth_kind") or "plane")
        self.require_plugin = bool(o.get("require_plugin", False))
        if self.image_format not in ("bmp", "png"):
            raise ValueError(f"unrealcv backend: image_format must be 'bmp' or 'png', got {self.image_format!r}")
        if self.lens not in ("fov", "cine"):
            raise ValueError(f"unrealcv backend: lens must be 'fov' or 'cine', got {self.lens!r}")
        if self.depth_kind not in ("plane", "point"):
            raise ValueError(f"unrealcv backend: depth_kind must be 'plane' or 'point', got {self.depth_kind!r}")
        self.conn: Connection | None = None
        self.proc: subprocess.Popen | None = None
        self.launch_log: str | None = None
        self.server_version = ""
        self.plugin_version: str | None = None
        self._has_vbp = True  # until the server's command list says otherwise
        self._plugin_warned = False
        self._finalizer: Any = None

    @property
    def endpoint(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"

    # --- engine lifecycle ---------------------------------------------------------------
    def open(self) -> None:
        try:
            if self.launch:
                self._start_engine()
            self._connect()
        except BaseException:
            self.close()  # never leave a launched engine behind
            raise

    def close(self) -> None:
        self._disconnect()
        self._stop_engine()

    def _start_engine(self) -> None:
        cmd = self.launch.format(port=self.port, slot=self.slot.index)
        fd, self.launch_log = tempfile.mkstemp(prefix=f"unrealcv-{self.port}-", suffix=".log")
        log.info("worker %d: starting engine: %s (log: %s)", self.slot.index, cmd, self.launch_log)
        with os.fdopen(fd, "wb") as logf:
            # Its own session, so close() can stop the engine and anything it started.
            self.proc = subprocess.Popen(
                shlex.split(cmd), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent_fn(),
            )
        if self._finalizer is None:
            # Worker processes of a pool exit without calling close(): stop the engine at their exit too.
            self._finalizer = multiprocessing.util.Finalize(self, self._stop_engine, exitpriority=10)

    def _stop_engine(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.proc = None

    def _engine_tail(self) -> str:
        if not self.launch_log or not os.path.exists(self.launch_log):
            return ""
        with open(self.launch_log, "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def _connect(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise UnrealCVError(
                    f"engine for {self.endpoint} exited with code {self.proc.returncode} before answering; "
                    f"its output ({self.launch_log}):\n{self._engine_tail()}"
                )
            try:
                # Short slices so a dead launched engine is noticed while waiting.
                self.conn = Connection.open(self.host, self.port, self.unix_socket, self.timeout, min(deadline, time.monotonic() + 2.0))
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"UnrealCV server at {self.endpoint}: no answer within {self.connect_timeout:.0f} s"
                        + (f" (engine started with: {self.launch})" if self.launch else "")
                    ) from None
        self._check_capabilities()

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _reconnect(self) -> None:
        self._disconnect()
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("engine for %s exited (code %s); starting it again", self.endpoint, self.proc.returncode)
            self.proc = None
            self._start_engine()
        self._connect()

    def _check_capabilities(self) -> None:
        assert self.conn is not None
        reply = self.conn.request("vget /unrealcv/version")
        self.server_version = "" if _is_error(reply) else str(reply).strip()
        templates = command_templates(self.conn)
        if templates is None:
            log.warning(
                "UnrealCV server at %s (version %s) cannot list its commands (needs UnrealCV >= 1.1); "
                "capabilities are not checked", self.endpoint, self.server_version or "unknown",
            )
            self._has_vbp = True
            return
        needed = dict(REQUIRED_COMMANDS)
        needed.update(CINE_COMMANDS if self.lens == "cine" else FOV_COMMANDS)
        missing = missing_capabilities(templates, needed)
        if missing:
            raise CapabilityError(
                f"UnrealCV server at {self.endpoint} (version {self.server_version or 'unknown'}) lacks commands "
                f"the unrealcv backend needs: {'; '.join(missing)}. Use UnrealCV >= 1.1 built for this engine."
            )
        self._has_vbp = not missing_capabilities(templates, {"call Blueprint functions (vbp)": PLUGIN_COMMAND})

    def _detect_plugin(self) -> None:
        """Is the SynCam plugin's actor in this world? (after each level load: the actor lives in the world)."""
        assert self.conn is not None
        self.plugin_version = None
        if self._has_vbp:
            reply = self.conn.request(f"vbp {PLUGIN_ACTOR} GetSynCamVersion")
            if not _is_error(reply):
                self.plugin_version = bp_value(reply, "plugin version")
        if self.plugin_version is None:
            msg = (
                f"UnrealCV server at {self.endpoint}: the SynCam UE plugin ({PLUGIN_ACTOR} actor, see "
                "unreal_plugin/README.md) is not available"
            )
            if self.require_plugin:
                raise CapabilityError(msg + " and require_plugin is set")
            if not self._plugin_warned:
                log.warning(
                    "%s: animation sync is APPROXIMATE - subjects are posed with vset /object, but their animation "
                    "plays on engine time (stepped by wall-clock between frames) instead of being set per frame", msg,
                )
                self._plugin_warned = True

    # --- rendering ----------------------------------------------------------------------
    def render_scene(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None = None) -> RenderResult:
        self._check_spec(spec)
        attempts = 0
        while True:
            try:
                if self.conn is None:
                    self._reconnect()
                return self._render_once(spec, out, on_frame, attempts)
            except (ConnectionError, TimeoutError, OSError) as e:
                attempts += 1
                if attempts > self.retries:
                    raise EngineLostError(
                        f"scene {spec.scene_id}: lost the UnrealCV server at {self.endpoint} {attempts} times; last: {e}"
                    ) from None
                log.warning("scene %s: %s; reconnecting and retrying the scene (%d/%d)", spec.scene_id, e, attempts, self.retries)
                self._disconnect()

    def _check_spec(self, spec: SceneSpec) -> None:
        if spec.background.kind != "unreal_level":
            raise ValueError(
                f"scene {spec.scene_id}: background {spec.background.id!r} is a {spec.background.kind!r}; "
                "the unrealcv backend loads Unreal levels (kind 'unreal_level', asset = map path)"
            )
        for s in spec.subjects:
            if s.kind != "unreal":
                raise ValueError(f"scene {spec.scene_id}: subject {s.asset_id!r} is a {s.kind!r} asset; the unrealcv backend spawns kind 'unreal'")
        for c in spec.cameras:
            # UnrealCV cameras are ideal pinholes with square pixels and a centred principal point.
            if abs(c.cx - c.width / 2) > 0.5 or abs(c.cy - c.height / 2) > 0.5 or abs(c.fx - c.fy) > 1e-4 * c.fx:
                raise ValueError(
                    f"scene {spec.scene_id}: camera {c.id} has fx={c.fx} fy={c.fy} cx={c.cx} cy={c.cy}; "
                    "Unreal renders only square pixels with a centred principal point"
                )

    def _render_once(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None, attempt: int) -> RenderResult:
        conn = self.conn
        assert conn is not None
        t0 = time.perf_counter()
        conn.check(f"vset /action/game/level {spec.background.asset}")
        conn.check("vset /action/game/pause")
        self._detect_plugin()
        subjects = self._spawn_subjects(spec)
        cams = self._setup_cameras(spec)
        if out.cams:
            # An earlier attempt was interrupted: drop its streams (their files are reopened for writing).
            out.abort()
            out.cams.clear()
        for c in cams:
            out.add_camera(c.spec_id, c.camera, raw=ue_raw_pose(
                c.location, c.rotation, camera_id=c.ue_id, actor=c.actor, hfov_deg=c.camera.field_of_view()[0], lens=self.lens,
            ))
        t_setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        for k in range(spec.num_frames):
            if self.plugin_version is None and k > 0:
                self._step_world(1.0 / spec.fps)
            self._frame(spec, k, subjects, cams, out)
            if on_frame is not None:
                on_frame(k)
        t_frames = time.perf_counter() - t1
        return RenderResult(
            backend=self.name,
            versions={"unrealcv_client": _client_version(), "unrealcv_server": self.server_version, "syncam_plugin": self.plugin_version or "absent"},
            timings={"setup_s": t_setup, "frames_s": t_frames, "per_frame_s": t_frames / max(1, spec.num_frames)},
            info={
                "endpoint": self.endpoint,
                "animation_sync": "exact" if self.plugin_version else "approximate",
                "retries": attempt,
                "cameras": {c.spec_id: c.ue_id for c in cams},
                "subjects": {s.spec.instance_id: s.actor for s in subjects},
                "image_format": self.image_format,
            },
        )

    def _spawn_subjects(self, spec: SceneSpec) -> list[_Subject]:
        assert self.conn is not None
        out = []
        for s in spec.subjects:
            name = f"SynCamSubject_{s.instance_id}"
            actor = self.conn.check(f"vset /objects/spawn_from_path {s.asset} {name}").strip() or name
            colour = mask_colour(s.instance_id)
            self.conn.check(f"vset /object/{actor}/color {colour[0]} {colour[1]} {colour[2]}")
            out.append(_Subject(s, actor, colour))
        return out

    def _setup_cameras(self, spec: SceneSpec) -> list[_Cam]:
        assert self.conn is not None
        conn = self.conn
        w, h = spec.width, spec.height
        placed: list[tuple[str, int, str, list[float], list[float]]] = []
        for c in spec.cameras:
            actor = conn.check("vset /cameras/spawn").strip()
            names = conn.check("vget /cameras").split()
            if actor not in names:
                raise UnrealCVError(f"UnrealCV server at {self.endpoint}: spawned camera {actor!r} is not in 'vget /cameras' ({names})")
            loc, rot = ue_from_c2w(np.asarray(c.c2w))
            placed.append((c.id, names.index(actor), actor, [float(v) for v in loc], [float(v) for v in rot]))
        cmds: list[str] = []
        for (sid, cid, _, loc, rot), c in zip(placed, spec.cameras):
            cmds.append(f"vset /camera/{cid}/size {w} {h}")
            if self.lens == "cine":
                focal_mm = c.fx * self.sensor_width_mm / w
                cmds += [f"vset /camera/{cid}/cine/filmback {self.sensor_width_mm:.6f} {self.sensor_width_mm * h / w:.6f}",
                         f"vset /camera/{cid}/cine/lens {focal_mm:.6f} 2.8"]
            else:
                cmds.append(f"vset /camera/{cid}/fov {hfov_from_focal(w, c.fx):.6f}")
            cmds += [_cmd_loc(f"/camera/{cid}", loc), _cmd_rot(f"/camera/{cid}", rot)]
        for r, cmd in zip(conn.batch(cmds), cmds):
            if _is_error(r):
                raise UnrealCVError(f"UnrealCV server at {self.endpoint}: '{cmd}' failed: {r}")
        reads = [f"vget /camera/{cid}/{p}" for _, cid, _, _, _ in placed for p in ("location", "rotation", "fov")]
        replies = conn.batch(reads)
        cams = []
        for i, ((sid, cid, actor, loc, rot), c) in enumerate(zip(placed, spec.cameras)):
            rloc = _floats(replies[3 * i], 3, f"camera {cid} location")
            rrot = _floats(replies[3 * i + 1], 3, f"camera {cid} rotation")
            fov = _floats(replies[3 * i + 2], 1, f"camera {cid} fov")[0]
            want_fov = hfov_from_focal(w, c.fx)
            if abs(fov - want_fov) > FOV_TOL_DEG:
                raise FrameSyncError(f"camera {sid} (UE camera {cid}): engine reports FOV {fov:.4f}°, set {want_fov:.4f}°")
            self._check_pose(f"camera {sid} (UE camera {cid})", loc, rot, rloc, rrot)
            f = focal_from_hfov(w, fov)
            # The exported camera is what the engine reports, through the foundation's UE conversion.
            cam = Camera(w, h, f, f, w / 2.0, h / 2.0, c2w_from_ue(rloc, rrot))
            cams.append(_Cam(sid, cid, actor, cam, rloc, rrot))
        return cams

    def _step_world(self, dt: float) -> None:
        """Without the plugin: let engine time run for about one frame interval (approximate)."""
        assert self.conn is not None
        self.conn.check("vset /action/game/resume")
        time.sleep(dt)
        self.conn.check("vset /action/game/pause")

    def _frame(self, spec: SceneSpec, k: int, subjects: list[_Subject], cams: list[_Cam], out: SceneOutput) -> None:
        """One frame barrier: set everything, read it back, capture every camera, in one vbatch."""
        assert self.conn is not None
        plugin = self.plugin_version is not None
        cmds: list[str] = []
        expect: list[tuple[str, Any]] = []  # (kind, data) per command, to check replies in order

        def add(cmd: str, kind: str, data: Any = None) -> None:
            cmds.append(cmd)
            expect.append((kind, data))

        if plugin:
            add(f"vbp {PLUGIN_ACTOR} GetWorldTime", "time0")
        for s in subjects:
            loc, rot, scale = subject_ue_transform(s.spec, k, spec.num_frames)
            t_anim = s.spec.animation_time(k, spec.fps)
            if plugin:
                add(f"vbp {PLUGIN_ACTOR} SetActorTransformCm {s.actor} {_nums(loc + rot + [scale])}", "bp_ok", s.actor)
                clip = s.spec.animation.clip or "None"
                loop = "true" if s.spec.animation.loop else "false"
                add(f"vbp {PLUGIN_ACTOR} SetAnimationPose {s.actor} {clip} {t_anim:.6f} {loop}", "anim", (s.actor, t_anim, s.spec.animation.loop))
            else:
                add(_cmd_loc(f"/object/{s.actor}", loc), "ok")
                add(_cmd_rot(f"/object/{s.actor}", rot), "ok")
                add(f"vset /object/{s.actor}/scale {_nums([scale] * 3)}", "ok")
            add(f"vget /object/{s.actor}/location", "loc", (f"subject {s.actor}", loc))
            add(f"vget /object/{s.actor}/rotation", "rot", (f"subject {s.actor}", rot))
        for c in cams:
            add(_cmd_loc(f"/camera/{c.ue_id}", c.location), "ok")
            add(_cmd_rot(f"/camera/{c.ue_id}", c.rotation), "ok")
            add(f"vget /camera/{c.ue_id}/location", "loc", (f"camera {c.spec_id}", c.location))
            add(f"vget /camera/{c.ue_id}/rotation", "rot", (f"camera {c.spec_id}", c.rotation))
        for c in cams:
            add(f"vget /camera/{c.ue_id}/lit {self.image_format}", "lit", c)
            add(f"vget /camera/{c.ue_id}/depth npy", "depth", c)
            add(f"vget /camera/{c.ue_id}/object_mask bmp", "mask", c)
        if plugin:
            add(f"vbp {PLUGIN_ACTOR} GetWorldTime", "time1")
        replies = self.conn.frame_batch(cmds)
        self._check_frame(k, cmds, expect, replies, subjects, out)

    def _check_frame(self, k: int, cmds: list[str], expect: list[tuple[str, Any]], replies: list[str | bytes], subjects: list[_Subject], out: SceneOutput) -> None:
        colours = {s.spec.instance_id: s.colour for s in subjects}
        frames: dict[str, dict[str, np.ndarray]] = {}
        times: dict[str, float] = {}
        pending_loc: dict[str, tuple[list[float], list[float]]] = {}  # label -> (set, reported)
        for cmd, (kind, data), r in zip(cmds, expect, replies):
            where = f"frame {k}: '{cmd[:80]}'"
            if _is_error(r):
                raise FrameSyncError(f"UnrealCV server at {self.endpoint}: {where} failed: {r}")
            if kind in ("time0", "time1"):
                times[kind] = float(bp_value(r, where))
            elif kind == "anim":
                got = float(bp_value(r, where))
                actor, t_set, loop = data
                # A one-shot clip holds its last pose: the plugin reports the clip length beside the time.
                want = t_set if loop else min(t_set, float(bp_value(r, where, key="OutClipLength")))
                if abs(got - want) > TIME_TOL_S:
                    raise FrameSyncError(f"{where}: {actor} animation time is {got:.6f} s, expected {want:.6f} s")
            elif kind == "loc":
                pending_loc[data[0]] = (data[1], _floats(r, 3, where))
            elif kind == "rot":
                set_loc, got_loc = pending_loc[data[0]]
                self._check_pose(f"{where} {data[0]}", set_loc, data[1], got_loc, _floats(r, 3, where))
            elif kind in ("lit", "depth", "mask"):
                cam = data.camera
                buf = frames.setdefault(data.spec_id, {})
                raw = _as_bytes(r)
                if kind == "depth":
                    arr = decode_depth(raw, cam, self.depth_kind, where)
                    shape = arr.shape
                else:
                    arr = decode_image(raw, where)
                    shape = arr.shape[:2]
                    if kind == "mask":
                        arr = decode_ids(arr, colours)
                if shape != (cam.height, cam.width):
                    raise FrameSyncError(f"{where}: image is {shape[1]}x{shape[0]}, camera {data.spec_id} is {cam.width}x{cam.height}")
                buf[kind] = arr
        if "time0" in times and abs(times["time0"] - times.get("time1", times["time0"])) > 1e-6:
            raise FrameSyncError(
                f"frame {k}: world time moved from {times['time0']:.6f} to {times['time1']:.6f} s during the capture "
                "(the world is not paused?)"
            )
        for cam_id, b in frames.items():
            out.add_frame(cam_id, b["lit"], depth=b["depth"], ids=b["mask"])

    def _check_pose(self, what: str, loc: Sequence[float], rot: Sequence[float], got_loc: Sequence[float], got_rot: Sequence[float]) -> None:
        dl = float(np.abs(np.asarray(loc) - np.asarray(got_loc)).max())
        if dl > POSE_TOL_CM:
            raise FrameSyncError(f"{what}: engine reports location {list(got_loc)} cm, set {list(loc)} ({dl:.3f} cm off)")
        if rotation_gap(rot, got_rot) > AXIS_TOL:
            raise FrameSyncError(f"{what}: engine reports rotation {list(got_rot)}, set {list(rot)}")


def _nums(vals: Sequence[float]) -> str:
    return " ".join(f"{v:.4f}" for v in vals)


def _cmd_loc(path: str, loc: Sequence[float]) -> str:
    return f"vset {path}/location {_nums(loc)}"


def _cmd_rot(path: str, rot: Sequence[float]) -> str:
    return f"vset {path}/rotation {_nums(rot)}"


def _die_with_parent_fn() -> Any:
    """A preexec_fn that makes a launched engine get SIGTERM when its worker process dies (Linux).

    Covers crashed workers, which never run close(). libc is resolved here, in the parent, so the
    forked child only makes one C call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def _set() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return _set


def _client_version() -> str:
    import unrealcv

    return str(getattr(unrealcv, "__version__", "unknown"))

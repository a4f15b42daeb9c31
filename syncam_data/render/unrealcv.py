"""The Unreal Engine render backend, over UnrealCV (the only module that imports ``unrealcv``).

It works with the UnrealCV servers users run: the open-source plugin built from
unrealcv/unrealcv branch ``5.2`` (version 1.0.1) and the UnrealZoo v1.1 build.
Reply parsing lives in ``unrealcv_protocol``; this module holds the connection,
engine launching, capability probing and the renderer.

One backend instance drives one engine instance (one worker slot): it
connects to ``host:port`` (or a Unix socket), optionally starting the engine
itself from a ``launch`` command template (``-cvport {port}``: the option
``FServerConfig::ParseCmdArgs`` reads). Per connection it probes, with one
harmless call per feature (a command on a camera or actor that does not exist
proves the handler exists without changing anything), what the server can do:
the 5.2 branch has no ``vget /unrealcv/commands``, and ``vbatch`` (handled in
the server loop) is never listed anywhere. It also measures whether ``vbatch``
really batches (builds before 2026-03 reset its counter on every request).

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

Options (from ``get_backend("unrealcv", slot, **options)``; others ignored):
``host``, ``port`` (int or list; slot i uses ``port[i % len]``, or
``port[0] + i`` when launching more instances than ports), ``unix_socket``
(path, ``{port}`` is replaced; ``"auto"`` = ``/tmp/unrealcv_{port}.socket``),
``launch`` (command template with ``{port}`` and ``{slot}``),
``connect_timeout``, ``timeout`` (seconds to wait for any one reply),
``retries``, ``image_format`` (``bmp``/``png``), ``lens``
(``auto``/``fov``/``cine``), ``sensor_width_mm``, ``depth_kind``
(``plane``/``point``), ``illumination`` (``lumen``/``screen_space``/``none``;
default: leave the server's), ``require_plugin``, ``recaptures``,
``level_timeout``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import multiprocessing.util
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from syncam_data.cameras import Camera, c2w_from_ue, focal_from_hfov, hfov_from_focal, ue_from_c2w, ue_raw_pose
from syncam_data.render.base import FrameCallback, RenderBackend, RenderResult, WorkerSlot
from syncam_data.render.output import SceneOutput
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
    is_binary_payload,
    is_error,
    is_missing_handler,
    mask_colour,
    parse_colour,
    parse_floats,
    parse_version,
    plugin_call,
    plugin_reply,
    plugin_version,
    rotation_gap,
)
from syncam_data.scenes import SceneSpec, SubjectSpec

log = logging.getLogger(__name__)

PLUGIN_ACTOR = "SynCamFrameSync"
PLUGIN_MIN_VERSION = (2, 0, 0)  # 1.0.0 declared parameters vbp cannot pass
DEFAULT_PORT = 9000
POSE_TOL_CM = 0.05
AXIS_TOL = 1e-3
TIME_TOL_S = 1e-3
FOV_TOL_DEG = 1e-2
GREETING_TIMEOUT_S = 10.0
# Probes address a camera and an actor that do not exist: the reply proves the handler exists
# ("Invalid sensor id", "Cannot find object") without changing the world.
PROBE_CAM = 65535
PROBE_ACTOR = "SynCamProbeNoSuchActor"
PROBE_ASSET = "/Game/SynCamProbe/NoSuchAsset.NoSuchAsset_C"
# Rays at least this far below the horizon should meet a level's ground.
GROUND_RAY_DEG = 10.0
GROUND_SKY_WARN = 0.5

# feature -> a harmless probe; the backend cannot render without these
REQUIRED_FEATURES: dict[str, str] = {
    "list cameras": "vget /cameras",
    "read the level name": "vget /level/name",
    "check the pause": "vget /action/game/is_paused",
    "set object locations": f"vset /object/{PROBE_ACTOR}/location 0 0 0",
    "read object locations": f"vget /object/{PROBE_ACTOR}/location",
    "set object rotations": f"vset /object/{PROBE_ACTOR}/rotation 0 0 0",
    "read object rotations": f"vget /object/{PROBE_ACTOR}/rotation",
    "set object scales": f"vset /object/{PROBE_ACTOR}/scale 1 1 1",
    "set object-mask colours": f"vset /object/{PROBE_ACTOR}/color 1 2 3",
    "read object-mask colours": f"vget /object/{PROBE_ACTOR}/color",
    "set camera resolution": f"vset /camera/{PROBE_CAM}/size 64 48",
    "read camera resolution": f"vget /camera/{PROBE_CAM}/size",
    "set camera locations": f"vset /camera/{PROBE_CAM}/location 0 0 0",
    "read camera locations": f"vget /camera/{PROBE_CAM}/location",
    "set camera rotations": f"vset /camera/{PROBE_CAM}/rotation 0 0 0",
    "read camera rotations": f"vget /camera/{PROBE_CAM}/rotation",
    "read the camera field of view": f"vget /camera/{PROBE_CAM}/fov",
    "capture lit images": f"vget /camera/{PROBE_CAM}/lit bmp",
    "capture depth as npy": f"vget /camera/{PROBE_CAM}/depth npy",
    "capture object masks": f"vget /camera/{PROBE_CAM}/object_mask bmp",
}
# feature -> probe; used where present
OPTIONAL_FEATURES: dict[str, str] = {
    "fov": f"vset /camera/{PROBE_CAM}/fov 90",
    "cine": f"vset /camera/{PROBE_CAM}/cine/enabled 1",
    "cine_filmback": f"vset /camera/{PROBE_CAM}/cine/filmback 36 24 0 0",
    "cine_lens": f"vset /camera/{PROBE_CAM}/cine/lens 50 2.8",
    "illumination": f"vset /camera/{PROBE_CAM}/illumination lumen",
    "spawn_from_path": f"vset /objects/spawn_from_path {PROBE_ASSET} {PROBE_ACTOR}",
    "spawn_class": f"vset /objects/spawn SynCamProbeNoSuchClass_C {PROBE_ACTOR}",
    "spawn_cube": "vset /objects/spawn_cube",
    "vbp": f"vbp {PROBE_ACTOR} SynCamProbe",
}
# (the spawn_cube probe above is never sent: spawning is not harmless; see _probe_features)


class UnrealCVError(RuntimeError):
    """A problem with the Unreal engine or its UnrealCV server; the message names the endpoint."""


class CapabilityError(UnrealCVError):
    """The server lacks a command the backend needs."""


class SpawnError(UnrealCVError):
    """A subject could not be spawned or annotated; the message names the fix."""


class FrameSyncError(UnrealCVError):
    """The engine's reply does not match what was set for a frame (pose, time, image size)."""


class EngineLostError(UnrealCVError, ConnectionError):
    """The connection dropped more often than ``retries`` allows."""


# --- the wire: a thin layer over unrealcv.Client ---------------------------------------------

class Connection:
    """One UnrealCV client connection: replies streamed as they arrive, a timeout per reply, clear errors."""

    def __init__(self, endpoint: str, client: Any, timeout: float) -> None:
        self.endpoint = endpoint
        self.client = client
        self.timeout = timeout

    @classmethod
    def open(cls, host: str, port: int, unix_socket: str | None, timeout: float, deadline: float) -> "Connection":
        """Connect (retrying until ``deadline``, monotonic seconds): the server takes one client at a time."""
        # The client logs every connect at INFO, and a greeting that does not come at ERROR; we report
        # connection problems ourselves, once, with the endpoint.
        logging.getLogger("unrealcv").setLevel(logging.CRITICAL)
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
                # accepts but never greets (an engine still loading, or busy with another client: the
                # listener serves one client at a time) must not hang the worker.
                greet = threading.Timer(min(GREETING_TIMEOUT_S, max(0.5, deadline - time.monotonic())), lambda c=client: c.disconnect())
                greet.daemon = True
                greet.start()
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # the client prints its socket type
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

    def send(self, commands: Sequence[str], timeout: float | None = None) -> "Pending":
        """Send ``commands`` now; read their replies later, in order, from the returned ``Pending``.

        Several batches may be in flight: the server runs requests in the order
        they arrive and the client hands replies back in that order.
        """
        if not self.client.isconnected():
            raise ConnectionError(f"UnrealCV server at {self.endpoint}: not connected")
        try:
            self.client.send_requests(list(commands))
        except (ConnectionError, OSError) as e:
            self.client.disconnect()
            raise ConnectionError(f"UnrealCV server at {self.endpoint}: connection lost ({e})") from None
        return Pending(self, len(commands), timeout or self.timeout)

    def stream(self, commands: Sequence[str], timeout: float | None = None) -> Iterator[str | bytes]:
        """Send ``commands`` at once and yield their replies in order as each arrives.

        Raises ConnectionError on a drop and TimeoutError when no reply comes
        within ``timeout`` (then the connection is closed: it is out of step).
        """
        return self.send(commands, timeout).replies()

    def batch(self, commands: Sequence[str], timeout: float | None = None) -> list[str | bytes]:
        return list(self.stream(commands, timeout))

    def request(self, command: str, timeout: float | None = None) -> str | bytes:
        return self.batch([command], timeout)[0]

    def check(self, command: str) -> str:
        """Run one command that must succeed; returns its text reply."""
        reply = self.request(command)
        if is_error(reply):
            raise UnrealCVError(f"UnrealCV server at {self.endpoint}: '{command}' failed: {as_text(reply).strip()}")
        return as_text(reply)

    def vbatch_batches(self) -> bool:
        """Does ``vbatch 2`` hold the reply to the next request until the second one arrives?

        At unrealcv head (``FUnrealcvServer::ProcessPendingRequest`` after commit
        1f64480) it does; before, the next request resets the batch counter, runs
        at once and its reply comes back alone.
        """
        t0 = time.perf_counter()
        self.request("vget /unrealcv/version")
        wait = max(0.25, 5 * (time.perf_counter() - t0))
        c = self.client
        try:
            c.send_requests(["vbatch 2", "vget /unrealcv/version"])
            first = c.next_reply(self.timeout)
            if is_error(first):
                c.next_reply(self.timeout)
                return False
            try:
                c.next_reply(wait)
                return False  # answered alone: nothing was held back
            except TimeoutError:
                c.send_requests(["vget /unrealcv/version"])
                c.next_reply(self.timeout)  # the held reply
                c.next_reply(self.timeout)
                return True
        except TimeoutError:
            c.disconnect()
            raise TimeoutError(f"UnrealCV server at {self.endpoint}: no reply within {self.timeout:g} s") from None
        except (ConnectionError, OSError, AssertionError) as e:
            c.disconnect()
            raise ConnectionError(f"UnrealCV server at {self.endpoint}: connection lost ({e})") from None


class Pending:
    """The replies still to come for one sent batch."""

    def __init__(self, conn: Connection, count: int, timeout: float) -> None:
        self.conn, self.left, self.timeout = conn, count, timeout

    def replies(self) -> Iterator[str | bytes]:
        """Yield each reply as it arrives (a timeout per reply); a drop or a timeout closes the connection."""
        client, endpoint = self.conn.client, self.conn.endpoint
        while self.left > 0:
            try:
                reply = client.next_reply(self.timeout)
            except TimeoutError:
                client.disconnect()
                raise TimeoutError(f"UnrealCV server at {endpoint}: no reply within {self.timeout:g} s") from None
            except (ConnectionError, OSError, AssertionError) as e:
                client.disconnect()
                raise ConnectionError(f"UnrealCV server at {endpoint}: connection lost ({e})") from None
            self.left -= 1
            yield reply


_CLIENT_CLASS: Any = None


def _client_class() -> Any:
    """unrealcv.Client with a streaming request and a receive thread that ends quietly on a dropped connection.

    Built on the client's own framing and queues (``Client.request_batch`` sends every
    message, queues ``-n`` for its receive thread and collects ``n`` replies; here the
    replies are handed out one by one as they arrive). The stock receive thread
    hands a ConnectionError to the waiting request and then re-raises it, printing a
    thread traceback on every drop; the request side is where we handle it. The stock
    ``raw_message_handler`` matches every reply with a regular expression and tries
    to decode it as UTF-8: about 3 ms per 480x720 image, in the receive thread, with
    the GIL held; ours reads the id up to the colon and keeps UnrealCV's binary
    payloads (BMP, PNG, npy, recognized by their headers) as bytes without trying.
    """
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        import unrealcv

        if not all(hasattr(unrealcv.Client, a) for a in ("RECONNECT_ATTEMPTS", "RECONNECT_BASE_DELAY")) or not hasattr(unrealcv, "ApiVersionManager"):
            raise CapabilityError(
                f"the installed unrealcv client ({getattr(unrealcv, '__version__', 'unknown')}) is too old: "
                "SynCam needs unrealcv>=1.3,<2 (pip install 'unrealcv>=1.3,<2')"
            )

        class _Client(unrealcv.Client):
            def _load_command_capabilities(self) -> None:
                # Client.connect asks for `vget /unrealcv/commands` right after the greeting (to warn about
                # unlisted commands); the 5.2 branch has no such command and the backend probes features
                # itself, so connect returns at the greeting.
                self._command_capabilities_checked = True

            def receive_loop_queue(self) -> None:
                try:
                    super().receive_loop_queue()
                except ConnectionError as e:
                    log.debug("UnrealCV receive loop ended: %s", e)

            def raw_message_handler(self, raw_message: bytes) -> str | bytes | None:
                colon = raw_message.find(b":", 0, 12)
                if colon <= 0 or not raw_message[:colon].isdigit():
                    return super().raw_message_handler(raw_message)
                message_id = int(raw_message[:colon])
                if message_id != self.recv_message_id:
                    raise AssertionError(f"Message ID mismatch: got {message_id}, expected {self.recv_message_id}")
                body = raw_message[colon + 1 :]
                if is_binary_payload(body):
                    return body
                try:
                    return body.decode("utf-8")
                except UnicodeDecodeError:
                    return body

            def send_requests(self, batch: Sequence[str]) -> None:
                for message in batch:
                    raw = b"%d:%s" % (self.send_message_id, message.encode("utf-8"))
                    if not self.send(raw):
                        raise ConnectionError("failed to send: the socket is closed")
                    self.send_message_id += 1
                self.recv_num_q.put(-len(batch))

            def next_reply(self, timeout: float) -> str | bytes:
                try:
                    reply = self.recv_data_q.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no reply within {timeout:g} s") from None
                if isinstance(reply, Exception):
                    raise reply
                if reply is None:  # the receive loop saw the socket close
                    raise ConnectionError("connection closed while waiting for a reply")
                return reply


        _CLIENT_CLASS = _Client
    return _CLIENT_CLASS


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
    # The server now spends a moment greeting and closing the probe; it takes one client at a time.
    time.sleep(0.05)
    return True


# --- what the server can do ----------------------------------------------------------------------

@dataclass
class ServerInfo:
    """What one connection's probes found (recorded in scene.json)."""

    version: str = ""
    lists_commands: bool = False
    features: dict[str, bool] = field(default_factory=dict)
    vbatch: bool = False  # the server accepts `vbatch N`
    vbatch_batches: bool | None = None  # measured: does it hold a batch until complete?

    def has(self, feature: str) -> bool:
        return self.features.get(feature, False)

    def record(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "lists_commands": self.lists_commands,
            "features": {k: v for k, v in sorted(self.features.items())},
            "vbatch": {"accepted": self.vbatch, "batches": self.vbatch_batches},
        }


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
        self.q: "queue.Queue[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None]" = queue.Queue(maxsize=1)
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
        self.level_timeout = float(o.get("level_timeout") or 60.0)
        self.retries = int(o.get("retries", 2))
        self.recaptures = int(o.get("recaptures", 3))
        self.image_format = str(o.get("image_format") or "bmp")
        self.lens_option = str(o.get("lens") or "auto")
        self.sensor_width_mm = float(o.get("sensor_width_mm") or 36.0)
        self.depth_kind = str(o.get("depth_kind") or "plane")
        self.illumination = o.get("illumination") or None
        self.require_plugin = bool(o.get("require_plugin", False))
        if self.image_format not in ("bmp", "png"):
            raise ValueError(f"unrealcv backend: image_format must be 'bmp' or 'png', got {self.image_format!r}")
        if self.lens_option not in ("auto", "fov", "cine"):
            raise ValueError(f"unrealcv backend: lens must be 'auto', 'fov' or 'cine', got {self.lens_option!r}")
        if self.depth_kind not in ("plane", "point"):
            raise ValueError(f"unrealcv backend: depth_kind must be 'plane' or 'point', got {self.depth_kind!r}")
        if self.illumination is not None and self.illumination not in ("lumen", "screen_space", "none"):
            raise ValueError(f"unrealcv backend: illumination must be 'lumen', 'screen_space' or 'none', got {self.illumination!r}")
        self.conn: Connection | None = None
        self.server = ServerInfo()
        self.proc: subprocess.Popen | None = None
        self.launch_log: str | None = None
        self.plugin_version: str | None = None
        self._warned: set[str] = set()
        self._levels_loaded = 0
        self._plugin_seen = False
        self._finalizer: Any = None

    @property
    def endpoint(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

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
        self.server = self._probe_server()

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

    # --- capabilities --------------------------------------------------------------------
    def _probe_server(self) -> ServerInfo:
        """Probe each feature with a harmless call (the command listing, where there is one, is only recorded)."""
        conn = self.conn
        assert conn is not None
        info = ServerInfo()
        version, listing = conn.batch(["vget /unrealcv/version", "vget /unrealcv/commands"])
        if is_error(version) or parse_version(as_text(version)) is None:
            raise CapabilityError(f"UnrealCV server at {self.endpoint}: 'vget /unrealcv/version' replied {as_text(version)[:80]!r}")
        info.version = as_text(version).strip()
        info.lists_commands = not is_error(listing)
        probes = {**REQUIRED_FEATURES, **{k: v for k, v in OPTIONAL_FEATURES.items() if k != "spawn_cube"}}
        replies = conn.batch(list(probes.values()))
        info.features = {name: not is_missing_handler(r) for name, r in zip(probes, replies)}
        missing = [f"{name} ('{probes[name]}')" for name in REQUIRED_FEATURES if not info.features[name]]
        if missing:
            raise CapabilityError(
                f"UnrealCV server at {self.endpoint} (version {info.version}) lacks commands the unrealcv backend "
                f"needs: {'; '.join(missing)}. Use the UnrealCV plugin from unrealcv/unrealcv branch 5.2 (1.0.1) or the UnrealZoo v1.1 build."
            )
        if not (info.has("spawn_class") or info.has("spawn_from_path") or info.has("vbp")):
            raise CapabilityError(f"UnrealCV server at {self.endpoint}: no way to spawn subjects (vset /objects/spawn, spawn_from_path or vbp)")
        # vbatch lives in the server loop: it is never listed, but any server that has it answers 'ok'.
        vb = conn.batch(["vbatch 1", "vget /unrealcv/version"])
        info.vbatch = not is_error(vb[0]) and not is_error(vb[1])
        if info.vbatch:
            info.vbatch_batches = conn.vbatch_batches()
        log.info(
            "UnrealCV server at %s: version %s, %s; vbatch %s", self.endpoint, info.version,
            ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info.features.items() if k in OPTIONAL_FEATURES),
            "batches" if info.vbatch_batches else "accepted but does not batch (synchronization is checked instead)" if info.vbatch else "absent",
        )
        return info

    def _lens(self) -> str:
        cine = self.server.has("cine") and self.server.has("cine_filmback") and self.server.has("cine_lens")
        if self.lens_option == "cine" and not cine:
            raise CapabilityError(
                f"UnrealCV server at {self.endpoint} (version {self.server.version}) has no cine camera commands "
                "(vset /camera/N/cine/enabled|filmback|lens: UnrealZoo v1.1 builds only); use lens 'fov' or 'auto'"
            )
        if self.lens_option == "fov" or (self.lens_option == "auto" and not cine):
            if not self.server.has("fov"):
                raise CapabilityError(f"UnrealCV server at {self.endpoint}: cannot set the camera field of view (vset /camera/N/fov)")
            return "fov"
        return "cine"

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
            for path in (s.asset, s.animation.clip or ""):
                if any(ch.isspace() for ch in path):
                    raise ValueError(f"scene {spec.scene_id}: subject {s.asset_id!r}: {path!r} contains whitespace, which UnrealCV commands cannot carry")
        if any(ch.isspace() for ch in spec.background.asset):
            raise ValueError(f"scene {spec.scene_id}: level path {spec.background.asset!r} contains whitespace")
        for c in spec.cameras:
            # UnrealCV cameras are ideal pinholes with square pixels and a centred principal point.
            if abs(c.cx - c.width / 2) > 0.5 or abs(c.cy - c.height / 2) > 0.5 or abs(c.fx - c.fy) > 1e-4 * c.fx:
                raise ValueError(
                    f"scene {spec.scene_id}: camera {c.id} has fx={c.fx} fy={c.fy} cx={c.cx} cy={c.cy}; "
                    "Unreal renders only square pixels with a centred principal point"
                )

    def _render_once(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None, attempt: int) -> RenderResult:
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
            out.add_camera(c.spec_id, c.camera, raw=ue_raw_pose(
                c.location, c.rotation, camera_id=c.ue_id, actor=c.actor, hfov_deg=c.camera.field_of_view()[0], lens=lens,
            ))
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
            versions={"unrealcv_client": _client_version(), "unrealcv_server": self.server.version, "syncam_plugin": self.plugin_version or "absent"},
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
                "image_format": self.image_format,
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
        deadline = time.monotonic() + self.level_timeout
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
                raise UnrealCVError(f"UnrealCV server at {self.endpoint}: level {path!r} did not load within {self.level_timeout:.0f} s")
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
                raise UnrealCVError(f"UnrealCV server at {self.endpoint}: the world did not pause ('vget /action/game/is_paused' = {as_text(paused)[:40]!r})")
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
                problem = (f"the SynCam UE plugin {version} is too old: vbp cannot pass its functions' arguments "
                           "(rebuild unreal_plugin/ from this release, 2.0.0 or newer)")
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
        if self.require_plugin:
            raise CapabilityError(msg + " and require_plugin is set")
        self._warn_once(
            "plugin", "%s: animation sync is APPROXIMATE - subjects are posed with vset /object, but their animation "
            "plays on engine time (stepped by wall-clock between frames) instead of being set per frame", msg,
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
        for (fn, cmd), reply in zip(calls.items(), self.conn.batch(list(calls.values()))):
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
            raise CapabilityError(f"UnrealCV server at {self.endpoint}: no way to spawn {spec.subjects[0].asset!r} without the SynCam plugin")
        out = []
        for s in spec.subjects:
            name = f"SynCamSubject_{s.instance_id}"
            where = f"scene {spec.scene_id}: subject {s.asset_id!r} ({s.asset})"
            if method == "plugin":
                try:
                    actor = str(plugin_reply(conn.request(f"vbp {PLUGIN_ACTOR} SpawnActorFromPath {s.asset} {name}"), "SpawnActorFromPath")["actor"])
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
            _, got = conn.batch([f"vset /object/{actor}/color {colour[0]} {colour[1]} {colour[2]}", f"vget /object/{actor}/color"])
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
            before, actor, after = camera_count(replies[2 * i]), as_text(replies[2 * i + 1]), camera_count(replies[2 * i + 2])
            if is_error(actor):
                raise UnrealCVError(f"UnrealCV server at {self.endpoint}: 'vset /cameras/spawn' failed: {actor.strip()}")
            if after != before + 1:
                raise UnrealCVError(
                    f"UnrealCV server at {self.endpoint}: spawning camera {c.id} changed 'vget /cameras' from {before} to "
                    f"{after} entries (expected {before + 1}); cannot tell which id the new camera has"
                )
            loc, rot = ue_from_c2w(np.asarray(c.c2w))
            placed.append((before, actor.strip(), [float(v) for v in loc], [float(v) for v in rot]))
        illumination = "server default"
        if self.illumination is not None:
            if self.server.has("illumination"):
                illumination = self.illumination
            else:
                self._warn_once("illumination", "UnrealCV server at %s (version %s) cannot set a camera's illumination; "
                                "captures use the server default (on UE 5.5+ scene captures disable Lumen)", self.endpoint, self.server.version)
        cmds = []
        for (cid, _, loc, rot), c in zip(placed, spec.cameras):
            cmds.append(f"vset /camera/{cid}/size {w} {h}")
            if lens == "cine":
                focal_mm = c.fx * self.sensor_width_mm / w
                # UnrealZoo v1.1: the cine path must be enabled first; filmback is width, height, offsets.
                cmds += [f"vset /camera/{cid}/cine/enabled 1",
                         f"vset /camera/{cid}/cine/filmback {fnum(self.sensor_width_mm, 6)} {fnum(self.sensor_width_mm * h / w, 6)} 0 0",
                         f"vset /camera/{cid}/cine/lens {fnum(focal_mm, 6)} 2.8"]
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
    def _capture_frames(self, spec: SceneSpec, subjects: list[_Subject], cams: list[_Cam], writer: _FrameWriter,
                        stats: dict[str, int], on_frame: FrameCallback | None) -> None:
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
                if attempts > self.recaptures:
                    raise FrameSyncError(f"frame {k}: {moved} in {self.recaptures + 1} captures in a row; the world does not hold still")
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
                self._disconnect()
            raise

    def _accept_frame(self, k: int, images: dict[str, tuple], cams: list[_Cam], writer: _FrameWriter) -> None:
        for c in cams:
            sky = np.isinf(images[c.spec_id][1])
            c.sky.append(float(sky.mean()))
            if k == 0 and c.ground is not None and c.ground.any():
                c.ground_sky = float(sky[c.ground].mean())
        writer.put([(c.spec_id, *images[c.spec_id]) for c in cams])

    def _frame_steps(self, spec: SceneSpec, k: int, subjects: list[_Subject], cams: list[_Cam], repose: bool) -> list[_Step]:
        plugin = self.plugin_version is not None
        steps: list[_Step] = []
        add = lambda cmd, kind, data=None: steps.append(_Step(cmd, kind, data))  # noqa: E731
        if plugin:
            add(f"vbp {PLUGIN_ACTOR} GetWorldClock", "clock0")
        for s in subjects:
            loc, rot, scale = subject_ue_transform(s.spec, k, spec.num_frames)
            label = f"subject {s.actor}"
            if plugin:
                add(f"vbp {PLUGIN_ACTOR} SetActorTransformCm {s.actor} {fnums(loc + rot + [scale])}", "xform", (label, loc, rot, scale))
                clip = s.spec.animation.clip or "None"
                t_anim = s.spec.animation_time(k, spec.fps)
                add(f"vbp {PLUGIN_ACTOR} SetAnimationPose {s.actor} {clip} {fnum(t_anim, 6)} {int(s.spec.animation.loop)}", "anim", (s.actor, t_anim, s.spec.animation.loop))
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
            add(f"vget /camera/{c.ue_id}/lit {self.image_format}", "lit", c)
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

    def _read_frame(self, k: int, steps: list[_Step], pending: Pending, subjects: list[_Subject], cams: list[_Cam]) -> tuple[dict[str, tuple], str | None, bool]:
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
                moved.append(f"world time moved from {t0:.6f} to {t1:.6f} s during the captures (the world was not paused)")
            single_tick = clocks["clock0"].get("frame") == clocks["clock1"].get("frame")
        return {c: (b["lit"], b["depth"], b["mask"]) for c, b in images.items()}, ("; ".join(moved) or None), single_tick

    def _read_step(self, k: int, step: _Step, reply: str | bytes, colours: dict[int, tuple[int, int, int]], images: dict[str, dict[str, np.ndarray]],
                   pre: dict[str, tuple[list[float], list[float]]], post: dict[str, list[float]], clocks: dict[str, dict[str, Any]], moved: list[str]) -> None:
        where = f"frame {k}: '{step.command[:80]}'"
        kind, data = step.kind, step.data
        if kind in ("lit", "depth", "mask"):
            cam = data.camera
            raw = as_bytes(reply)
            if is_error(reply):
                raise FrameSyncError(f"{where} failed: {as_text(reply).strip()[:200]}")
            if kind == "depth":
                arr = decode_depth(raw, cam, self.depth_kind, where)
                shape = arr.shape
            else:
                size = image_size(raw)
                if size is not None and size != (cam.width, cam.height):
                    raise FrameSyncError(f"{where}: image is {size[0]}x{size[1]}, camera {data.spec_id} is {cam.width}x{cam.height}")
                arr = decode_mask(raw, colours, where) if kind == "mask" else decode_image(raw, where)
                shape = arr.shape[:2]
            if shape != (cam.height, cam.width):
                raise FrameSyncError(f"{where}: image is {shape[1]}x{shape[0]}, camera {data.spec_id} is {cam.width}x{cam.height}")
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
                raise FrameSyncError(f"{where}: {actor} animation time is {float(got['time']):.6f} s, expected {want:.6f} s")
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
                moved.append(f"{data} moved during the captures (location {p_loc} -> {got_loc}, rotation {p_rot} -> {got_rot})")
        elif kind == "cam_loc":
            post[f"camera {data.spec_id}"] = parse_floats(reply, 3, where)
        elif kind == "cam_rot":
            got_loc, got_rot = post[f"camera {data.spec_id}"], parse_floats(reply, 3, where)
            if _loc_gap(data.location, got_loc) > POSE_TOL_CM or rotation_gap(data.rotation, got_rot) > AXIS_TOL:
                moved.append(f"camera {data.spec_id} (UE camera {data.ue_id}) moved to {got_loc} {got_rot}")

    def _check_pose(self, what: str, loc: Sequence[float], rot: Sequence[float], got_loc: Sequence[float], got_rot: Sequence[float]) -> None:
        dl = _loc_gap(loc, got_loc)
        if dl > POSE_TOL_CM:
            raise FrameSyncError(f"{what}: engine reports location {list(got_loc)} cm, set {list(loc)} ({dl:.3f} cm off)")
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
                "capture (docs/unreal.md).", spec.scene_id, len(bad), len(ground), GROUND_RAY_DEG, spec.background.asset,
            )
        return {"sky_fraction": sky, "ground_sky_fraction": ground, "ground_reads_as_sky": bool(ground) and len(bad) * 2 >= len(ground)}


def _loc_gap(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())


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

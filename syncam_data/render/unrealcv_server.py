"""One Unreal Engine instance's UnrealCV server: launching the engine, the connection, what the server can do.

This is the only module that imports ``unrealcv`` (lazily, in ``_client_class``).
The render backend (``render/unrealcv.py``) drives scenes through an
``UnrealCVServer``; pure reply parsing lives in ``unrealcv_protocol``.

- ``Connection``: one client connection over ``unrealcv.Client``'s framing, with
  replies streamed as they arrive, a timeout per reply and errors naming the endpoint.
- ``probe_server``: one harmless call per feature (a command on a camera or actor
  that does not exist proves the handler exists without changing anything): the
  5.2 branch has no ``vget /unrealcv/commands``, and ``vbatch`` (handled in the
  server loop) is never listed anywhere. It also measures whether ``vbatch``
  really batches (builds before 2026-03 reset its counter on every request).
- ``UnrealCVServer``: connects to ``host:port`` (or a Unix socket), optionally
  starting the engine from a ``launch`` command template (``-cvport {port}``:
  the option ``FServerConfig::ParseCmdArgs`` reads) in its own session, stopped
  with the worker (also when the worker dies: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import io
import logging
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncam_data.render.unrealcv_protocol import as_text, is_binary_payload, is_error, is_missing_handler, parse_version

log = logging.getLogger(__name__)

GREETING_TIMEOUT_S = 10.0
# Probes address a camera and an actor that do not exist: the reply proves the handler exists
# ("Invalid sensor id", "Cannot find object") without changing the world.
PROBE_CAM = 65535
PROBE_ACTOR = "SynCamProbeNoSuchActor"
PROBE_ASSET = "/Game/SynCamProbe/NoSuchAsset.NoSuchAsset_C"

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
    def open(cls, host: str, port: int, unix_socket: str | None, timeout: float, deadline: float) -> Connection:
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
                greet = threading.Timer(
                    min(GREETING_TIMEOUT_S, max(0.5, deadline - time.monotonic())), lambda c=client: c.disconnect()
                )
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

    def send(self, commands: Sequence[str], timeout: float | None = None) -> Pending:
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

        if not all(hasattr(unrealcv.Client, a) for a in ("RECONNECT_ATTEMPTS", "RECONNECT_BASE_DELAY")) or not hasattr(
            unrealcv, "ApiVersionManager"
        ):
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


def probe_server(conn: Connection) -> ServerInfo:
    """Probe each feature with a harmless call (the command listing, where there is one, is only recorded)."""
    info = ServerInfo()
    version, listing = conn.batch(["vget /unrealcv/version", "vget /unrealcv/commands"])
    if is_error(version) or parse_version(as_text(version)) is None:
        raise CapabilityError(
            f"UnrealCV server at {conn.endpoint}: 'vget /unrealcv/version' replied {as_text(version)[:80]!r}"
        )
    info.version = as_text(version).strip()
    info.lists_commands = not is_error(listing)
    probes = {**REQUIRED_FEATURES, **{k: v for k, v in OPTIONAL_FEATURES.items() if k != "spawn_cube"}}
    replies = conn.batch(list(probes.values()))
    info.features = {name: not is_missing_handler(r) for name, r in zip(probes, replies)}
    missing = [f"{name} ('{probes[name]}')" for name in REQUIRED_FEATURES if not info.features[name]]
    if missing:
        raise CapabilityError(
            f"UnrealCV server at {conn.endpoint} (version {info.version}) lacks commands the unrealcv backend "
            f"needs: {'; '.join(missing)}. Use the UnrealCV plugin from unrealcv/unrealcv branch 5.2 (1.0.1) or the UnrealZoo v1.1 build."
        )
    if not (info.has("spawn_class") or info.has("spawn_from_path") or info.has("vbp")):
        raise CapabilityError(
            f"UnrealCV server at {conn.endpoint}: no way to spawn subjects (vset /objects/spawn, spawn_from_path or vbp)"
        )
    # vbatch lives in the server loop: it is never listed, but any server that has it answers 'ok'.
    vb = conn.batch(["vbatch 1", "vget /unrealcv/version"])
    info.vbatch = not is_error(vb[0]) and not is_error(vb[1])
    if info.vbatch:
        info.vbatch_batches = conn.vbatch_batches()
    log.info(
        "UnrealCV server at %s: version %s, %s; vbatch %s",
        conn.endpoint,
        info.version,
        ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info.features.items() if k in OPTIONAL_FEATURES),
        "batches"
        if info.vbatch_batches
        else "accepted but does not batch (synchronization is checked instead)"
        if info.vbatch
        else "absent",
    )
    return info


# --- the engine instance -----------------------------------------------------------------------


class UnrealCVServer:
    """One engine instance's UnrealCV server: started from a ``launch`` command or already running; connected,
    probed (``info``) and reconnected, restarting a launched engine that died.

    ``slot`` is the worker's index (``{slot}`` in ``launch``); ``timeout`` is the wait for any one reply.
    """

    def __init__(
        self,
        host: str,
        port: int,
        unix_socket: str | None = None,
        launch: str | None = None,
        slot: int = 0,
        connect_timeout: float = 15.0,
        timeout: float = 120.0,
    ) -> None:
        self.host, self.port, self.unix_socket, self.launch, self.slot = host, port, unix_socket, launch, slot
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.conn: Connection | None = None
        self.info = ServerInfo()
        self.proc: subprocess.Popen | None = None
        self.launch_log: str | None = None
        self._finalizer: Any = None

    @property
    def endpoint(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"

    def open(self) -> None:
        try:
            if self.launch:
                self.start_engine()
            self.connect()
        except BaseException:
            self.close()  # never leave a launched engine behind
            raise

    def close(self) -> None:
        self.disconnect()
        self.stop_engine()

    def start_engine(self) -> None:
        cmd = self.launch.format(port=self.port, slot=self.slot)
        fd, self.launch_log = tempfile.mkstemp(prefix=f"unrealcv-{self.port}-", suffix=".log")
        log.info("worker %d: starting engine: %s (log: %s)", self.slot, cmd, self.launch_log)
        with os.fdopen(fd, "wb") as logf:
            # Its own session, so close() can stop the engine and anything it started.
            self.proc = subprocess.Popen(
                shlex.split(cmd),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent_fn(),
            )
        if self._finalizer is None:
            # Worker processes of a pool exit without calling close(): stop the engine at their exit too.
            self._finalizer = multiprocessing.util.Finalize(self, self.stop_engine, exitpriority=10)

    def stop_engine(self) -> None:
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

    def engine_tail(self) -> str:
        if not self.launch_log or not os.path.exists(self.launch_log):
            return ""
        with open(self.launch_log, "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def connect(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise UnrealCVError(
                    f"engine for {self.endpoint} exited with code {self.proc.returncode} before answering; "
                    f"its output ({self.launch_log}):\n{self.engine_tail()}"
                )
            try:
                # Short slices so a dead launched engine is noticed while waiting.
                self.conn = Connection.open(
                    self.host, self.port, self.unix_socket, self.timeout, min(deadline, time.monotonic() + 2.0)
                )
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"UnrealCV server at {self.endpoint}: no answer within {self.connect_timeout:.0f} s"
                        + (f" (engine started with: {self.launch})" if self.launch else "")
                    ) from None
        self.info = probe_server(self.conn)

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def reconnect(self) -> None:
        self.disconnect()
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("engine for %s exited (code %s); starting it again", self.endpoint, self.proc.returncode)
            self.proc = None
            self.start_engine()
        self.connect()


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


def client_version() -> str:
    import unrealcv

    return str(getattr(unrealcv, "__version__", "unknown"))

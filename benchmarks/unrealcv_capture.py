"""Capture throughput through the UnrealCV client against the local stand-in server.

Unreal Engine cannot run here, so the server is ``tests/unrealcv_standin.py``
in its own process with a simulated render cost per captured image
(``--capture-delay``). The script measures, per configuration:

- image format: BMP (raw, what the backend uses) vs PNG (encoded on the
  server's game thread, decoded by the client);
- request pattern: one ``vbatch`` per frame (pose + capture of every camera in
  one round trip and one engine tick, the backend's frame barrier) vs one
  request per command (the naive client loop: set pose, wait, capture, wait,
  ...), where every request waits for the next engine tick (``--tick-ms``)
  as UnrealCV's server does;
- transport: TCP vs the Unix socket;

and reports wall time per frame, frames per second, megabytes per second,
and the client's own CPU time per frame (``time.process_time`` of this
process: socket I/O in the client's threads plus decoding BMP/PNG, npy depth
and the object mask), which is the overhead SynCam adds on top of the engine.
The last configuration runs the full backend (``UnrealCVBackend.render_scene``
into a ``SceneOutput``, H.264 encode included) for the end-to-end figure.

Usage:
    .venv/bin/python benchmarks/unrealcv_capture.py --cameras 8 --frames 10 \
        --width 320 --height 240 --capture-delay 0.005 --out docs/benchmarks/unrealcv.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from syncam_data.render.unrealcv_protocol import decode_depth, decode_ids, decode_image  # noqa: E402

log = logging.getLogger("bench.unrealcv")


@dataclass
class Result:
    name: str
    fmt: str
    pattern: str
    transport: str
    s_per_frame: float
    cpu_ms_per_frame: float
    mb_per_frame: float

    def row(self) -> str:
        fps = 1.0 / self.s_per_frame
        mbs = "-" if math.isnan(self.mb_per_frame) else f"{self.mb_per_frame / self.s_per_frame:.1f}"
        return (
            f"| {self.name} | {self.fmt} | {self.pattern} | {self.transport} | {self.s_per_frame * 1000:.1f} | "
            f"{fps:.2f} | {mbs} | {self.cpu_ms_per_frame:.1f} |"
        )


def median(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.s_per_frame)[len(runs) // 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standin(capture_delay: float, tick_ms: float):
    port = free_port()
    sock = os.path.join(tempfile.gettempdir(), f"unrealcv_bench_{port}.socket")
    cmd = [sys.executable, str(REPO / "tests" / "unrealcv_standin.py"), "--port", str(port), "--unix-socket", sock, "--capture-delay", str(capture_delay), "--tick-ms", str(tick_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"stand-in did not start: {' '.join(cmd)}")
            time.sleep(0.1)
        yield port, sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def connect(port: int, sock: str, transport: str):
    import unrealcv

    logging.getLogger("unrealcv").setLevel(logging.WARNING)
    for _ in range(50):
        c = unrealcv.Client(sock, "unix") if transport == "unix" else unrealcv.Client(("127.0.0.1", port))
        with contextlib.redirect_stdout(io.StringIO()):
            if c.connect():
                return c
        time.sleep(0.1)
    raise RuntimeError("cannot connect to the stand-in")


def setup_scene(c, cams: int, w: int, h: int) -> list[tuple[list[float], list[float]]]:
    c.request("vset /action/game/level /Game/Maps/Bench")
    c.request("vset /action/game/pause")
    c.request("vset /objects/spawn_from_path /Game/Bench/BP_Subject.BP_Subject_C SynCamSubject_1")
    c.request("vset /object/SynCamSubject_1/color 255 67 226")
    poses = []
    for i in range(cams):
        c.request("vset /cameras/spawn")
        az = 2 * math.pi * i / cams
        loc = [500 * math.cos(az), 500 * math.sin(az), 150.0]
        rot = [-10.0, math.degrees(az) + 180.0, 0.0]
        poses.append((loc, rot))
        c.request(f"vset /camera/{i + 1}/size {w} {h}")
        c.request(f"vset /camera/{i + 1}/fov 70")
    return poses


def frame_commands(k: int, poses, fmt: str) -> list[str]:
    # The world state repeats, so the stand-in renders each camera once and later frames cost only
    # the simulated render delay, encoding and transport: what this benchmark is about.
    cmds = ["vset /object/SynCamSubject_1/location 20 0 0"]
    for i, (loc, rot) in enumerate(poses):
        cid = i + 1
        cmds += [f"vset /camera/{cid}/location {loc[0]:.3f} {loc[1]:.3f} {loc[2]:.3f}", f"vset /camera/{cid}/rotation {rot[0]:.3f} {rot[1]:.3f} {rot[2]:.3f}"]
    for i in range(len(poses)):
        cid = i + 1
        cmds += [f"vget /camera/{cid}/lit {fmt}", f"vget /camera/{cid}/depth npy", f"vget /camera/{cid}/object_mask bmp"]
    return cmds


def decode_frame(cmds: list[str], replies, w: int, h: int) -> int:
    """Decode what the backend decodes; returns the bytes received."""
    from syncam_data.cameras import Camera

    cam = Camera(w, h, 100.0, 100.0, w / 2, h / 2)
    total = 0
    for cmd, r in zip(cmds, replies):
        if not cmd.startswith("vget"):
            continue
        data = r if isinstance(r, bytes) else r.encode("utf-8")
        total += len(data)
        if "/depth" in cmd:
            decode_depth(data, cam, "plane", cmd)
        elif "/object_mask" in cmd:
            decode_ids(decode_image(data, cmd), {1: (255, 67, 226)})
        else:
            decode_image(data, cmd)
    return total


def run_client(port: int, sock: str, fmt: str, pattern: str, transport: str, cams: int, frames: int, w: int, h: int) -> Result:
    c = connect(port, sock, transport)
    try:
        poses = setup_scene(c, cams, w, h)
        nbytes = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for k in tqdm(range(frames), desc=f"{fmt}/{pattern}/{transport}", leave=False):
            cmds = frame_commands(k, poses, fmt)
            if pattern == "vbatch":
                replies = c.request([f"vbatch {len(cmds)}", *cmds])[1:]
            else:
                replies = [c.request(cmd, timeout=60) for cmd in cmds]
            nbytes += decode_frame(cmds, replies, w, h)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            c.disconnect()
    return Result("client loop", fmt, "one vbatch per frame" if pattern == "vbatch" else "one request per command", transport, wall / frames, cpu / frames * 1000, nbytes / frames / 1e6)


def run_backend(port: int, cams: int, frames: int, w: int, h: int) -> Result:
    from syncam_data.cameras import Camera, look_at, spherical_position
    from syncam_data.render.base import WorkerSlot, get_backend
    from syncam_data.render.output import SceneOutput
    from syncam_data.scenes import AnimationSpec, BackgroundSpec, CameraSpec, SceneSpec, SubjectSpec, TrajectorySpec

    f = w / (2 * math.tan(math.radians(35)))
    cam_specs = [
        CameraSpec.from_camera(f"cam{i:02d}", Camera(w, h, f, f, w / 2, h / 2, look_at(spherical_position((0, 0, 1), 5.0, 15.0, 360.0 * i / cams), (0, 0, 1))))
        for i in range(cams)
    ]
    spec = SceneSpec(
        scene_id="bench", seed=0, background=BackgroundSpec(id="bench", kind="unreal_level", asset="/Game/Maps/Bench"),
        subjects=[SubjectSpec(instance_id=1, asset_id="s", kind="unreal", asset="/Game/Bench/BP_Subject.BP_Subject_C",
                              animation=AnimationSpec(id="walk", clip="/Game/Bench/Walk.Walk"), trajectory=TrajectorySpec(type="line", start=(-1, 0), end=(1, 0)))],
        cameras=cam_specs, num_frames=frames, fps=24.0, width=w, height=h,
    )
    backend = get_backend("unrealcv", WorkerSlot(), port=[port], connect_timeout=30)
    backend.open()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = SceneOutput(Path(tmp) / "bench", fps=spec.fps)
            cpu0 = time.process_time()
            res = backend.render_scene(spec, out)
            cpu = time.process_time() - cpu0
            out.finish({"bench": True})
    finally:
        backend.close()
    per = res.timings["per_frame_s"]
    return Result("backend render_scene (+H.264)", "bmp", "one vbatch per frame", "tcp", per, cpu / frames * 1000, float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=8, help="cameras per frame")
    ap.add_argument("--frames", type=int, default=10, help="frames per configuration")
    ap.add_argument("--width", type=int, default=320, help="image width")
    ap.add_argument("--height", type=int, default=240, help="image height")
    ap.add_argument("--capture-delay", type=float, default=0.005, help="simulated render cost per captured image (s)")
    ap.add_argument("--tick-ms", type=float, default=1000.0 / 60.0, help="simulated engine frame time: requests outside a vbatch wait for the next tick")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the table shows the median")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results: list[Result] = []
    load0 = os.getloadavg()[0]
    with standin(a.capture_delay, a.tick_ms) as (port, sock):
        for fmt in ("bmp", "png"):
            for pattern in ("vbatch", "per-request"):
                for transport in ("tcp", "unix"):
                    runs = [run_client(port, sock, fmt, pattern, transport, a.cameras, a.frames, a.width, a.height) for _ in range(a.repeat)]
                    results.append(median(runs))
                    log.info("%s", results[-1].row())
        results.append(median([run_backend(port, a.cameras, a.frames, a.width, a.height) for _ in range(a.repeat)]))
    floor = 3 * a.cameras * a.capture_delay
    lines = [
        f"Machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU, Python {platform.python_version()}; "
        f"server = tests/unrealcv_standin.py in its own process.",
        f"Setup: {a.cameras} cameras x {a.frames} frames, {a.width}x{a.height}, lit + depth npy + object mask per camera, "
        f"simulated render cost {a.capture_delay * 1000:.1f} ms per image (floor {floor * 1000:.0f} ms per frame), "
        f"engine tick {a.tick_ms:.1f} ms (a request outside a vbatch waits for the next tick); "
        f"median of {a.repeat} runs; load average during the run {load0:.1f} -> {os.getloadavg()[0]:.1f}.",
        "",
        "| run | lit format | requests | transport | ms / frame | frames / s | MB/s received | client CPU ms / frame |",
        "|---|---|---|---|---|---|---|---|",
        *[r.row() for r in results],
    ]
    text = "\n".join(lines)
    log.info("\n%s", text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""UnrealCV capture: how close a frame comes to the engine's own capture time, and batching vs one request per command.

Unreal Engine cannot run here, so the server is ``tests/unrealcv_standin.py``
(the open-source ``oss-5.2`` flavour, with the SynCam plugin) in its own
process, with a simulated capture cost per image (``--capture-delay``: every
lit, depth and mask image takes at least that long on the server's game
thread) and an engine frame time (``--tick-ms``: requests run on tick
boundaries, as UnrealCV's server runs them in the game thread's tick).

Two ways to produce the same synchronized frames (36 cameras x lit + depth +
mask, decoded, checked, H.264-encoded into a scene folder):

- **backend**: ``UnrealCVBackend.render_scene`` - one batch of commands per
  frame, replies decoded as they stream in while the engine captures the next
  image, encoding on a writer thread while the engine captures the next frame;
- **one request per command**: the usual UnrealCV client loop with the plain
  ``unrealcv`` client - per camera set the pose, request lit, depth and mask one
  at a time, decode each, encode the camera's frame - the same decoding and
  encoding, done in turn.

The limit, measured in the same run: the server's own capture time per frame
(the time its game thread spent producing the frame's images, reported by the
stand-in; sending replies not included). ``ratio`` = wall time per frame /
that limit: 1.0 means every bit of client work (parsing, checks, decoding,
H.264) was hidden behind the engine's capture. The client's CPU time per
camera (``time.process_time`` of this process: receiving, decoding, checks,
encoding) is reported beside it.

Usage (a few minutes; the paper's 36 cameras at 480x720):
    python benchmarks/unrealcv_capture.py --cameras 36 --width 720 --height 480 --capture-delay 0.02 \\
        --frames 5 --baseline-frames 2 --tick-ms 16.7 --out /tmp/unrealcv.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from syncam_data.cameras import Camera, look_at, spherical_position, ue_from_c2w  # noqa: E402
from syncam_data.render.output import SceneOutput  # noqa: E402
from syncam_data.render.unrealcv_protocol import (  # noqa: E402
    as_bytes,
    decode_depth,
    decode_ids,
    decode_image,
    fnum,
    fnums,
    mask_colour,
)
from syncam_data.scenes import AnimationSpec, BackgroundSpec, CameraSpec, SceneSpec, SubjectSpec, TrajectorySpec  # noqa: E402

log = logging.getLogger("bench.unrealcv")
SUBJECT = "/Game/Bench/BP_Subject.BP_Subject_C"
CLIP = "/Game/Bench/Walk.Walk"
MAP = "/Game/Maps/Bench"


@dataclass
class Result:
    run: str
    frames: int
    s_per_frame: float  # wall time from the first frame's start to the last frame written, per frame
    steady_s_per_frame: float  # median interval between consecutive finished frames
    capture_s_per_frame: float  # the server producing the frame's images
    send_s_per_frame: float  # the server sending the replies (it waits while the client does not read)
    cpu_ms_per_camera: float

    @property
    def ratio(self) -> float:
        return self.s_per_frame / self.capture_s_per_frame

    @property
    def steady_ratio(self) -> float:
        return self.steady_s_per_frame / self.capture_s_per_frame

    def row(self) -> str:
        return (
            f"| {self.run} | {self.frames} | {self.s_per_frame * 1000:.0f} | {self.steady_s_per_frame * 1000:.0f} | "
            f"{self.capture_s_per_frame * 1000:.0f} | {self.send_s_per_frame * 1000:.0f} | {self.ratio:.3f} | {self.steady_ratio:.3f} | "
            f"{self.cpu_ms_per_camera:.1f} |"
        )


def deltas(stats: dict, before: dict, frames: int) -> tuple[float, float]:
    return (stats["capture_s"] - before["capture_s"]) / frames, (stats["send_s"] - before["send_s"]) / frames


def make_spec(cams: int, frames: int, w: int, h: int) -> SceneSpec:
    f = w / (2 * math.tan(math.radians(35)))
    cam_specs = [
        CameraSpec.from_camera(
            f"cam{i:02d}",
            Camera(
                w, h, f, f, w / 2, h / 2, look_at(spherical_position((0, 0, 1), 5.0, 15.0, 360.0 * i / cams), (0, 0, 1))
            ),
        )
        for i in range(cams)
    ]
    return SceneSpec(
        scene_id="bench",
        seed=0,
        background=BackgroundSpec(id="bench", kind="unreal_level", asset=MAP),
        subjects=[
            SubjectSpec(
                instance_id=1,
                asset_id="s",
                kind="unreal",
                asset=SUBJECT,
                animation=AnimationSpec(id="walk", clip=CLIP),
                trajectory=TrajectorySpec(type="line", start=(-1, 0), end=(1, 0)),
            )
        ],
        cameras=cam_specs,
        num_frames=frames,
        fps=24.0,
        width=w,
        height=h,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standin(capture_delay: float, tick_ms: float, revision: str):
    """The stand-in in its own process; yields (port, read_stats)."""
    port = free_port()
    stats = Path(tempfile.gettempdir()) / f"unrealcv_bench_{port}.json"
    cmd = [
        sys.executable,
        str(REPO / "tests" / "unrealcv_standin.py"),
        "-cvport",
        str(port),
        "--capture-delay",
        str(capture_delay),
        "--tick-ms",
        str(tick_ms),
        "--revision",
        revision,
        "--stats-file",
        str(stats),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def read_stats(captures: int) -> dict:
        """The stand-in's counters, once it wrote them after the client with ``captures`` captures disconnected."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if stats.exists():
                data = json.loads(stats.read_text())
                if data["captures"] >= captures:
                    return data
            time.sleep(0.05)
        raise RuntimeError("the stand-in wrote no statistics")

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"stand-in did not start: {' '.join(cmd)}") from None
                time.sleep(0.1)
        time.sleep(0.3)  # the probe connection above is served and closed first
        yield port, read_stats
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        stats.unlink(missing_ok=True)


def render_with_backend(port: int, spec: SceneSpec) -> tuple[Any, float, list[float]]:
    from syncam_data.render.base import WorkerSlot, get_backend

    backend = get_backend("unrealcv", WorkerSlot(), port=[port], connect_timeout=30, timeout=60)
    backend.open()
    finished: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = SceneOutput(Path(tmp) / "bench", fps=spec.fps)
            cpu0 = time.process_time()
            res = backend.render_scene(spec, out, on_frame=lambda k: finished.append(time.perf_counter()))
            cpu = time.process_time() - cpu0
            out.finish({"bench": True})
    finally:
        backend.close()
    return res, cpu, finished


def steady(finished: list[float]) -> float:
    return float(np.median(np.diff(finished))) if len(finished) > 1 else float("nan")


def warm_up(port: int, read_stats, spec: SceneSpec) -> dict:
    """One frame of the scene, unmeasured: the stand-in ray-casts each camera's static level once, on its first capture."""
    res, _, _ = render_with_backend(port, spec.model_copy(update={"num_frames": 1}))
    return read_stats(3 * len(spec.cameras) * (1 + res.info["recaptured_frames"]))


def run_backend(port: int, read_stats, spec: SceneSpec, before: dict) -> tuple[Result, dict]:
    res, cpu, finished = render_with_backend(port, spec)
    frames = spec.num_frames
    captured = frames + res.info["recaptured_frames"]
    stats = read_stats(before["captures"] + 3 * len(spec.cameras) * captured)
    if res.info["recaptured_frames"]:
        log.warning("%d frames were captured again", res.info["recaptured_frames"])
    # per_frame_s runs until the writer finished the last frame's H.264 (nothing to overlap it with).
    return Result(
        "backend (one batch per frame, streamed)",
        frames,
        res.timings["per_frame_s"],
        steady(finished),
        *deltas(stats, before, captured),
        cpu / frames / len(spec.cameras) * 1000,
    ), stats


def run_per_request(port: int, read_stats, spec: SceneSpec, before: dict) -> Result:
    """The usual client loop: one request at a time, each reply decoded and each camera encoded in turn."""
    import unrealcv

    logging.getLogger("unrealcv").setLevel(logging.CRITICAL)
    c = unrealcv.Client(("127.0.0.1", port))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the client warns that the 5.2 branch cannot list its commands
        assert c.connect(), "cannot connect to the stand-in"
    req = lambda cmd: c.request(cmd, timeout=60)  # noqa: E731
    try:
        req(f"vset /action/game/level {MAP}")
        while req("vget /level/name").strip() != MAP.rsplit("/", 1)[-1]:
            time.sleep(0.05)
        req("vset /action/game/pause")
        actor = json.loads(
            json.loads(req(f"vbp SynCamFrameSync SpawnActorFromPath {SUBJECT} SynCamSubject_1"))["ReturnValue"]
        )["actor"]
        colour = mask_colour(1)
        req(f"vset /object/{actor}/color {colour[0]} {colour[1]} {colour[2]}")
        w, h = spec.width, spec.height
        poses = []
        for cs in spec.cameras:
            cid = len(req("vget /cameras").split())
            req("vset /cameras/spawn")
            req(f"vset /camera/{cid}/size {w} {h}")
            req(f"vset /camera/{cid}/fov {fnum(2 * math.degrees(math.atan(w / (2 * cs.fx))), 6)}")
            loc, rot = ue_from_c2w(np.asarray(cs.c2w))
            poses.append((cid, cs.id, list(loc), list(rot)))
        cam = Camera(w, h, spec.cameras[0].fx, spec.cameras[0].fy, w / 2, h / 2)
        with tempfile.TemporaryDirectory() as tmp:
            out = SceneOutput(Path(tmp) / "bench", fps=spec.fps)
            for _, sid, _, _ in poses:
                out.add_camera(sid, cam)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            finished = []
            for k in tqdm(range(spec.num_frames), desc="one request per command", leave=False):
                s = spec.subjects[0]
                xyz, yaw = s.trajectory.pose(k, spec.num_frames)
                req(
                    f"vbp SynCamFrameSync SetActorTransformCm {actor} {fnums([xyz[0] * 100, -xyz[1] * 100, xyz[2] * 100, 0, -yaw, 0, 1])}"
                )
                req(f"vbp SynCamFrameSync SetAnimationPose {actor} {CLIP} {fnum(s.animation_time(k, spec.fps), 6)} 1")
                for cid, sid, loc, rot in poses:
                    req(f"vset /camera/{cid}/location {fnums(loc)}")
                    req(f"vset /camera/{cid}/rotation {fnums(rot)}")
                    rgb = decode_image(as_bytes(req(f"vget /camera/{cid}/lit bmp")), "lit")
                    depth = decode_depth(as_bytes(req(f"vget /camera/{cid}/depth npy")), cam, "plane", "depth")
                    ids = decode_ids(
                        decode_image(as_bytes(req(f"vget /camera/{cid}/object_mask bmp")), "mask"), {1: colour}
                    )
                    out.add_frame(sid, rgb, depth=depth, ids=ids)
                finished.append(time.perf_counter())
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            out.finish({"bench": True})
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            c.disconnect()
    frames = spec.num_frames
    stats = read_stats(before["captures"] + 3 * len(spec.cameras) * frames)
    return Result(
        "one request per command",
        frames,
        wall / frames,
        steady([wall0, *finished]),
        *deltas(stats, before, frames),
        cpu / frames / len(spec.cameras) * 1000,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=36, help="cameras per frame")
    ap.add_argument("--width", type=int, default=720, help="image width")
    ap.add_argument("--height", type=int, default=480, help="image height")
    ap.add_argument("--frames", type=int, default=5, help="frames rendered by the backend")
    ap.add_argument("--baseline-frames", type=int, default=2, help="frames of the one-request-per-command loop")
    ap.add_argument("--capture-delay", type=float, default=0.02, help="simulated server capture cost per image (s)")
    ap.add_argument(
        "--tick-ms", type=float, default=1000.0 / 60.0, help="engine frame time: requests run on tick boundaries"
    )
    ap.add_argument(
        "--revision",
        choices=("2024", "head"),
        default="2024",
        help="stand-in's vbatch: before commit 1f64480 (2024) or at head",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    load0 = os.getloadavg()
    spec = make_spec(a.cameras, a.frames, a.width, a.height)
    with standin(a.capture_delay, a.tick_ms, a.revision) as (port, read_stats):
        stats = warm_up(port, read_stats, spec)
        batched, stats = run_backend(port, read_stats, spec, stats)
        log.info("%s", batched.row())
        serial = run_per_request(port, read_stats, make_spec(a.cameras, a.baseline_frames, a.width, a.height), stats)
        log.info("%s", serial.row())
    load1 = os.getloadavg()
    lines = [
        f"Machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU, Python {platform.python_version()}; "
        f"server = tests/unrealcv_standin.py (oss-5.2, vbatch {a.revision}, SynCam plugin) in its own process. "
        f"Load average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after: the CPU is shared with other jobs.",
        f"Setup: {a.cameras} cameras, {a.width}x{a.height}, lit BMP + depth npy + object mask per camera, "
        f"simulated capture cost {a.capture_delay * 1000:.0f} ms per image (at least {3 * a.cameras * a.capture_delay * 1000:.0f} ms "
        f"per frame), engine tick {a.tick_ms:.1f} ms, H.264 (x264 medium, crf 18) into a scene folder; one unmeasured "
        f"frame first (the stand-in casts each camera's static level on its first capture).",
        "",
        "| run | frames | ms / frame | steady ms / frame | server capture ms / frame | server send ms / frame | ratio | steady ratio | client CPU ms / camera |",
        "|---|---|---|---|---|---|---|---|---|",
        batched.row(),
        serial.row(),
        "",
        f"Batched frame vs one request per command: {serial.s_per_frame / batched.s_per_frame:.2f}x faster "
        f"({serial.steady_s_per_frame / batched.steady_s_per_frame:.2f}x in the steady state).",
    ]
    text = "\n".join(lines)
    log.info("\n%s", text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

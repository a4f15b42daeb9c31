"""The end-to-end demo: every stage is the public command a user would run, on built-in defaults.

render (Blender) -> a moving-camera sequence exported as RealEstate10K and DL3DV ->
sample-frames -> rendered "web videos" -> filter-videos -> build-shards ->
validate -> inspect -> eval -> syncam-train (tiny model) -> resume ->
syncam-generate -> report.html / report.md.

Each command runs in its own process (as a user would run it) and is recorded
in ``<out>/commands.sh`` so the demo doubles as a walkthrough
(docs/quickstart.md). Its inputs are shipped (the scene specs of the camera path
and the single-view clips: syncam_data/catalog/demo_sequences.jsonl); the demo
itself only copies two rendered clips and a truncated one into a "web videos"
folder, as the quick start does with cp and head -c, and writes the report.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from syncam_data import fsio
from syncam_data.cameras import read_cameras_json
from syncam_data.scenes import builtin_catalog_path

log = logging.getLogger(__name__)

PROMPT = "a person in a red shirt walks on a city plaza"
# Bytes of a good clip kept as the corrupt "web video" (no moov atom: unreadable), as docs/quickstart.md does with head -c.
CORRUPT_BYTES = 4096


def sequence_specs_path() -> Path:
    """The shipped scene specs of the quick start's camera path and single-view clips (one SceneSpec JSON per line)."""
    return builtin_catalog_path().parent / "demo_sequences.jsonl"


@dataclass
class DemoConfig:
    out: Path
    seed: int = 0
    scenes: int = 3
    cameras: int = 4
    frames: int = 9
    height: int = 128
    width: int = 224
    samples: int = 8
    train_steps: int = 30
    resume_steps: int = 10
    workers: int = 1


@dataclass
class Stage:
    name: str
    title: str
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ok: bool = True
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)


class DemoError(RuntimeError):
    pass


def _tee(stream, keep: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read1(4096), b""):
        keep.append(chunk)
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()


class Demo:
    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out).resolve()
        self.bin = Path(sys.executable).parent
        self.stages: list[Stage] = []
        self.commands_file = self.out / "commands.sh"

    # --- running public commands -------------------------------------------
    def run(
        self, stage: Stage, args: list[str], check: bool = True, allowed_codes: tuple[int, ...] = (0,)
    ) -> subprocess.CompletedProcess:
        """Run ``args`` (first item a console script) as a user would; record it."""
        exe = self.bin / args[0]
        cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
        shown = " ".join(shlex.quote(a) for a in args).replace(str(self.out), "$OUT")
        stage.commands.append(shown)
        with open(self.commands_file, "a") as f:
            f.write(shown + "\n")
        log.info("$ %s", shown)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        # stderr (progress bars, logs) streams to the terminal and is kept for the log and error messages
        err_chunks: list[bytes] = []
        pump = threading.Thread(target=_tee, args=(proc.stderr, err_chunks), daemon=True)
        pump.start()
        stdout = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        proc.wait()
        pump.join()
        stderr = b"".join(err_chunks).decode(errors="replace")
        (self.out / "logs").mkdir(exist_ok=True)
        with open(self.out / "logs" / f"{stage.name}.log", "a") as f:
            f.write(f"$ {shown}\n{stdout}\n{stderr}\n")
        if check and proc.returncode not in allowed_codes:
            last = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()][-5:]
            raise DemoError(f"`{shown}` exited with {proc.returncode}: " + " | ".join(last))
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    def stage(self, name: str, title: str, fn: Callable[[Stage], None]) -> Stage:
        st = Stage(name, title)
        t0 = time.perf_counter()
        try:
            fn(st)
        except Exception as e:
            st.ok, st.error = False, f"{type(e).__name__}: {e}"
            log.error("stage %s failed: %s", name, st.error)
        st.seconds = time.perf_counter() - t0
        self.stages.append(st)
        self._save_state()
        return st

    def _save_state(self) -> None:
        data = [{k: v for k, v in s.__dict__.items()} for s in self.stages]
        fsio.write_text(self.out / "demo_stages.json", json.dumps(data, indent=2, default=str))

    # --- stages ------------------------------------------------------------
    def render_scenes(self, st: Stage) -> None:
        c = self.cfg
        self.run(
            st,
            [
                "syncam-data",
                "render",
                "--scenes",
                str(c.scenes),
                "--backend",
                "blender",
                "--cameras",
                str(c.cameras),
                "--frames",
                str(c.frames),
                "--fps",
                "8",
                "--resolution",
                f"{c.height}x{c.width}",
                "--samples",
                str(c.samples),
                "--seed",
                str(c.seed),
                "--workers",
                str(c.workers),
                "--out",
                str(self.out / "renders"),
            ],
        )
        st.outputs["scenes"] = sorted(
            p.name for p in (self.out / "renders").iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def render_sequences(self, st: Stage) -> None:
        """The shipped explicit specs (syncam_data/catalog/demo_sequences.jsonl): a camera moving along an arc around a
        frozen scene (one camera per video frame), a static camera watching a walking subject, and a static camera on a
        scene without subjects."""
        path = sequence_specs_path()
        self.run(
            st,
            [
                "syncam-data",
                "render",
                "--scenes",
                str(path),
                "--backend",
                "blender",
                "--samples",
                str(self.cfg.samples),
                "--workers",
                str(self.cfg.workers),
                "--out",
                str(self.out / "sequences"),
            ],
        )
        st.outputs["specs"] = [json.loads(line)["scene_id"] for line in path.read_text().splitlines() if line.strip()]

    def export_posed(self, st: Stage) -> None:
        """The rendered arc as a RealEstate10K sequence (video and image-folder layouts), a DL3DV scene and a panning web video."""
        arc = str(self.out / "sequences" / "sequence_arc")
        posed = self.out / "posed"
        for args in (
            [
                "--format",
                "realestate10k",
                "--frames-as",
                "video",
                "--id",
                "demo_arc_video",
                "--out",
                str(posed / "realestate10k" / "train"),
            ],
            [
                "--format",
                "realestate10k",
                "--frames-as",
                "images",
                "--id",
                "demo_arc_frames",
                "--out",
                str(posed / "realestate10k" / "test"),
            ],
            ["--format", "dl3dv", "--id", "demo_arc", "--out", str(posed / "dl3dv" / "1K")],
            ["--format", "video", "--id", "pan_static_scene", "--out", str(self.out / "web")],
        ):
            self.run(st, ["syncam-data", "export-posed", arc, *args])
        st.outputs["frames"] = len(read_cameras_json(Path(arc) / "cameras.json"))

    def sample_frames(self, st: Stage) -> None:
        for source, root in (("realestate10k", "posed/realestate10k"), ("dl3dv", "posed/dl3dv")):
            self.run(
                st,
                [
                    "syncam-data",
                    "sample-frames",
                    "--source",
                    source,
                    "--root",
                    str(self.out / root),
                    "--out",
                    str(self.out / "frames" / source),
                    "--views",
                    "3",
                    "--sets-per-sequence",
                    "2",
                    "--max-gap",
                    "100",
                    "--min-angle",
                    "5",
                    "--seed",
                    str(self.cfg.seed),
                ]
                + (["--image-folder", "images"] if source == "dl3dv" else []),
            )
        st.outputs["groups"] = {
            s: sorted(p.name for p in (self.out / "frames" / s).iterdir() if p.is_dir())
            for s in ("realestate10k", "dl3dv")
        }

    def web_videos(self, st: Stage) -> None:
        web = self.out / "web"
        web.mkdir(parents=True, exist_ok=True)
        seqs = self.out / "sequences"
        shutil.copyfile(
            seqs / "web_static_camera_moving_subject" / "videos" / "cam00.mp4", web / "static_camera_moving_subject.mp4"
        )
        shutil.copyfile(seqs / "web_static_scene" / "videos" / "cam00.mp4", web / "static_scene.mp4")
        good = (web / "static_camera_moving_subject.mp4").read_bytes()
        (web / "corrupt.mp4").write_bytes(good[:CORRUPT_BYTES])
        st.outputs["videos"] = sorted(p.name for p in web.glob("*.mp4"))
        self.run(
            st,
            [
                "syncam-data",
                "filter-videos",
                str(web),
                "--out",
                str(self.out / "filter"),
                "--min-short-side",
                "64",
                "--debug",
            ],
        )
        import pyarrow.parquet as pq

        t = pq.read_table(self.out / "filter" / "scores.parquet").to_pylist()
        st.outputs["decisions"] = [
            {k: r.get(k) for k in ("path", "status", "reason", "subject_motion", "camera_motion", "error")} for r in t
        ]

    def build_shards(self, st: Stage) -> None:
        shards = self.out / "shards"
        self.run(
            st,
            [
                "syncam-data",
                "build-shards",
                "--out",
                str(shards),
                "--renders",
                str(self.out / "renders"),
                "--frames",
                str(self.out / "frames" / "realestate10k"),
                "--frames",
                str(self.out / "frames" / "dl3dv"),
                "--videos",
                str(self.out / "filter" / "scores.parquet"),
                "--shard-size",
                "8MB",
                "--row-group-size",
                "2MB",
            ],
        )
        self.run(st, ["syncam-data", "validate", str(shards)])
        self.run(
            st,
            [
                "syncam-data",
                "inspect",
                str(shards),
                "--json",
                str(self.out / "inspect.json"),
                "--plot",
                str(self.out / "cameras.png"),
            ],
        )
        st.outputs["inspect"] = json.loads((self.out / "inspect.json").read_text())

    def evaluate(self, st: Stage) -> None:
        self.run(
            st,
            [
                "syncam-data",
                "eval",
                str(self.out / "shards"),
                "--out",
                str(self.out / "eval"),
                "--frames",
                "2",
                "--sift-contrast",
                "0.02",
            ],
        )
        st.outputs["summary"] = json.loads((self.out / "eval" / "summary.json").read_text())

    def train(self, st: Stage) -> None:
        c = self.cfg
        run = self.out / "train"
        common = [
            "--shards",
            str(self.out / "shards"),
            "--pretrained",
            "tiny",
            "--out",
            str(run),
            "--config",
            "tiny",
            "--seed",
            str(c.seed),
            "--set",
            f"checkpoint.every={c.train_steps}",
            "--set",
            "checkpoint.keep=2",
            "--set",
            "data.num_views=2",
            "--set",
            "curriculum.schedule=" + json.dumps(self._curriculum()),
        ]
        # a first job that stops part-way (as a time-boxed cluster job would) right after a checkpoint,
        # then the same command resumed
        self.run(
            st,
            [
                "syncam-train",
                *common,
                "--steps",
                str(c.train_steps + c.resume_steps),
                "--stop-after",
                str(c.train_steps),
            ],
        )
        self.run(st, ["syncam-train", *common, "--steps", str(c.train_steps + c.resume_steps), "--resume", "latest"])
        st.outputs["log"] = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        st.outputs["checkpoint"] = str((run / "checkpoints" / "latest").resolve())

    def _curriculum(self) -> list[dict[str, float]]:
        """The paper's three windows, compressed onto the demo's few steps."""
        n = self.cfg.train_steps + self.cfg.resume_steps
        return [
            {"start_step": 0, "min_angle": 0, "max_angle": 60},
            {"start_step": n // 3, "min_angle": 30, "max_angle": 90},
            {"start_step": 2 * n // 3, "min_angle": 60, "max_angle": 120},
        ]

    def generate(self, st: Stage) -> None:
        ck = self.out / "train" / "checkpoints" / "latest" / "adapter.safetensors"
        self.run(
            st,
            [
                "syncam-generate",
                "--pretrained",
                "tiny",
                "--checkpoint",
                str(ck),
                "--prompt",
                PROMPT,
                "--cameras",
                "azimuth:0,40,80",
                "--frames",
                "9",
                "--resolution",
                "32x48",
                "--steps",
                "10",
                "--device",
                "cpu",
                "--seed",
                str(self.cfg.seed),
                "--out",
                str(self.out / "generate"),
                "--overwrite",
            ],
        )
        st.outputs["files"] = sorted(
            str(p.relative_to(self.out)) for p in (self.out / "generate").rglob("*") if p.is_file()
        )

    def report(self, st: Stage) -> None:
        from syncam_data.demo_report import write_report

        paths = write_report(self.out, self.stages)
        st.outputs.update({k: str(v) for k, v in paths.items()})

    # --- driver --------------------------------------------------------------
    def plan(self) -> list[tuple[str, str, Callable[[Stage], None]]]:
        return [
            ("render", "Render multi-camera scenes (Blender)", self.render_scenes),
            ("sequences", "Render a moving-camera sequence and single-view clips", self.render_sequences),
            ("posed", "Export the sequence as RealEstate10K and DL3DV", self.export_posed),
            ("sample_frames", "Sample multi-view frame sets", self.sample_frames),
            ("filter", "Filter web videos", self.web_videos),
            ("shards", "Build, validate and inspect shards", self.build_shards),
            ("eval", "Cross-view matching and camera accuracy of the shards", self.evaluate),
            ("train", "Train a tiny model, stop, resume", self.train),
            ("generate", "Generate synchronized views from the checkpoint", self.generate),
        ]

    def run_all(self) -> list[Stage]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.commands_file.write_text(
            "#!/usr/bin/env bash\n# Commands the SynCam demo ran ($OUT is the demo's output folder).\nset -e\n"
        )
        plan = self.plan()
        bar = tqdm(plan, desc="demo", unit="stage", dynamic_ncols=True)
        for name, title, fn in bar:
            bar.set_postfix_str(title)
            st = self.stage(name, title, fn)
            if not st.ok:
                log.error("demo stops at stage %r: %s", name, st.error)
                break
        bar.close()
        # The report is written whatever happened, so a failed stage is visible in it.
        self.stage("report", "Write report.html and report.md", self.report)
        return self.stages


def run_demo(cfg: DemoConfig) -> list[Stage]:
    return Demo(cfg).run_all()

"""`syncam-data render` end to end with the Blender backend: outputs, resume, kill + re-run, per-scene errors, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("bpy", reason="the Blender backend needs bpy (pip install -e '.[blender]')")

from syncam_data.cameras import read_cameras_json  # noqa: E402
from syncam_data.cli import app  # noqa: E402
from syncam_data.render.blender_config import BlenderConfig  # noqa: E402
from syncam_data.render.jobs import REPORT_JSON, SPECS_JSONL, publish  # noqa: E402
from syncam_data.render.output import is_complete_scene, reprojection_check  # noqa: E402
from syncam_data.scenes import SamplerConfig, load_catalog, read_specs_jsonl, sample_scene  # noqa: E402
from syncam_data.video import probe  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY = ["--cameras", "2", "--frames", "2", "--resolution", "48x64", "--samples", "2", "--no-progress"]


def _run(*args: str):
    return CliRunner().invoke(app, ["render", *args], catch_exceptions=False)


def _report(out: Path) -> dict:
    return json.loads((out / REPORT_JSON).read_text())


def test_render_command_outputs_and_rerun_does_nothing(tmp_path):
    out = tmp_path / "r"
    res = _run("--scenes", "2", "--backend", "blender", "--out", str(out), "--seed", "5", *TINY)
    assert res.exit_code == 0, res.output
    specs = read_specs_jsonl(out / SPECS_JSONL)
    assert [s.scene_id for s in specs] == ["scene_00000", "scene_00001"]
    demo = load_catalog()
    opt = SamplerConfig(num_cameras=2, num_frames=2, width=64, height=48)
    for spec in specs:
        assert (
            spec.to_json() == sample_scene(demo, int(spec.scene_id[-5:]), 5, opt).to_json()
        )  # reproducible from the seed
        folder = out / spec.scene_id
        assert is_complete_scene(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["cameras.json", "depth", "masks", "scene.json", "videos"]
        for c in spec.cameras:
            info = probe(folder / "videos" / f"{c.id}.mp4", count_frames=True)
            assert (info.num_frames, info.width, info.height, info.fps) == (2, 64, 48, 24.0)
        sj = json.loads((folder / "scene.json").read_text())
        assert sj["spec"] == spec.model_dump(mode="json")
        assert sj["caption"] == spec.caption and spec.caption
        assert sj["backend"] == "blender" and sj["versions"]["blender"].startswith("5.")
        assert sj["timings"]["render_s"] > 0 and sj["backend_options"]["samples"] == 2
        assert sj["backend_options"] == BlenderConfig(samples=2).record()  # every option, defaults included
        cams = read_cameras_json(folder / "cameras.json")
        assert [cid for cid, _, _ in cams] == [c.id for c in spec.cameras]
        assert all(r["agree"] > 0.9 for r in reprojection_check(folder).values())
    rep = _report(out)
    assert sorted(rep["done"]) == ["scene_00000", "scene_00001"] and not rep["failed"]
    assert not list(out.glob(".tmp-*"))

    before = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in (REPORT_JSON, SPECS_JSONL)
    }
    res = _run("--scenes", "2", "--backend", "blender", "--out", str(out), "--seed", "5", *TINY)
    assert res.exit_code == 0 and "0 rendered, 2 already complete" in res.output
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sorted(_report(out)["skipped"]) == ["scene_00000", "scene_00001"]


def test_killed_render_resumes_only_missing_scenes(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "syncam_data.cli", "render", "--scenes", "3", "--out", str(out), *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from syncam_data.cli import main; main()", *cmd[3:]],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not is_complete_scene(out / "scene_00000"):
            assert proc.poll() is None, "render exited before the first scene was complete"
            assert time.monotonic() < deadline, "first scene took too long"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not is_complete_scene(out / "scene_00002")
    first = out / "scene_00000" / "scene.json"
    stamp = first.stat().st_mtime_ns
    # what a crash can also leave: a temporary folder and an incomplete folder under a final name
    (out / ".tmp-scene_00002-1-dead").mkdir(parents=True)
    (out / ".tmp-scene_00002-1-dead" / "junk").write_text("x")
    if not (out / "scene_00001").exists():
        (out / "scene_00001" / "videos").mkdir(parents=True)
    res = _run("--scenes", "3", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    rep = _report(out)
    assert "scene_00000" in rep["skipped"] and "scene_00002" in rep["done"]
    assert set(rep["done"]) | set(rep["skipped"]) == {"scene_00000", "scene_00001", "scene_00002"}
    assert first.stat().st_mtime_ns == stamp, "a finished scene was rendered again"
    assert all(is_complete_scene(out / f"scene_{i:05d}") for i in range(3))
    assert not list(out.glob(".tmp-*"))


BROKEN_CATALOG = """
name: broken
animations:
  - {id: wave, clip: wave, description: waves}
backgrounds:
  - {id: field, kind: procedural, asset: outdoor, description: in a field, params: {num_props: 4}}
  - {id: lava, kind: magma, asset: x, description: on lava}
subjects:
  - {id: bot, kind: procedural, asset: biped, description: a robot, animations: [wave]}
  - {id: statue, kind: gltf, asset: assets/statue.glb, description: a statue, animations: [wave]}
"""


def test_broken_asset_and_invalid_entry_are_reported_and_other_scenes_render(tmp_path):
    cat_path = tmp_path / "cat.yaml"
    cat_path.write_text(BROKEN_CATALOG)
    cat = load_catalog(cat_path)
    opt = SamplerConfig(num_cameras=2, num_frames=2, width=64, height=48, subjects=(1, 1))
    # a seed whose two scenes use one good and one broken subject
    seed = next(
        sd
        for sd in range(100)
        if sorted(sample_scene(cat, i, sd, opt).subjects[0].asset_id for i in range(2)) == ["bot", "statue"]
    )
    uses = [sample_scene(cat, i, seed, opt).subjects[0].asset_id for i in range(2)]
    out = tmp_path / "r"
    res = _run(
        "--scenes",
        "2",
        "--catalog",
        str(cat_path),
        "--subjects",
        "1-1",
        "--seed",
        str(seed),
        "--retries",
        "1",
        "--out",
        str(out),
        *TINY,
    )
    assert res.exit_code == 1
    rep = _report(out)
    broken = f"scene_{uses.index('statue'):05d}"
    good = f"scene_{uses.index('bot'):05d}"
    assert rep["done"] == [good] and is_complete_scene(out / good)
    assert [f["scene_id"] for f in rep["failed"]] == [broken] and not (out / broken).exists()
    failure = rep["failed"][0]
    assert (
        "statue" in failure["error"]
        and str(tmp_path / "assets" / "statue.glb") in failure["error"]
        and "does not exist" in failure["error"]
    )
    assert failure["attempts"] == 2 and "Traceback" in failure["traceback"]
    assert (
        len(rep["catalog_problems"]) == 1
        and "lava" in rep["catalog_problems"][0]
        and str(cat_path) in rep["catalog_problems"][0]
    )
    assert f"failed: {broken}" in res.output
    assert not list(out.glob(".tmp-*"))
    # --strict refuses the catalog, naming the bad entry
    res = _run("--scenes", "1", "--catalog", str(cat_path), "--strict", "--out", str(tmp_path / "s"), *TINY)
    assert res.exit_code == 2 and "lava" in res.output


def test_bad_spec_lines_fail_alone(tmp_path):
    spec = sample_scene(load_catalog(), 0, 0, SamplerConfig(num_cameras=2, num_frames=2, width=64, height=48))
    specs = tmp_path / "specs.jsonl"
    specs.write_text('{"scene_id": "x"}\n' + spec.to_json() + "\n" + spec.to_json() + "\n")
    out = tmp_path / "r"
    res = _run("--scenes", str(specs), "--out", str(out), "--no-progress")
    assert res.exit_code == 1
    rep = _report(out)
    assert rep["done"] == [spec.scene_id]
    errors = {f["scene_id"]: f["error"] for f in rep["failed"]}
    assert f"{specs}:1" in errors and "invalid scene spec" in errors[f"{specs}:1"]
    assert "duplicate scene id" in errors[spec.scene_id]


def test_publish_replaces_incomplete_target_only(tmp_path):
    final = tmp_path / "scene_00000"
    (final / "videos").mkdir(parents=True)
    tmp = tmp_path / ".tmp-scene_00000-1-x"
    tmp.mkdir()
    (tmp / "marker").write_text("new")
    publish(tmp, final)
    assert (final / "marker").read_text() == "new" and not tmp.exists()


def test_worker_processes_each_own_a_slot(tmp_path):
    out = tmp_path / "r"
    res = _run("--scenes", "2", "--workers", "2", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    workers = sorted(
        json.loads((out / f"scene_{i:05d}" / "scene.json").read_text())["render"]["worker"] for i in range(2)
    )
    pids = {json.loads((out / f"scene_{i:05d}" / "scene.json").read_text())["render"]["pid"] for i in range(2)}
    assert all(0 <= w < 2 for w in workers) and os.getpid() not in pids
    assert sorted(_report(out)["done"]) == ["scene_00000", "scene_00001"]
    assert np.all([is_complete_scene(out / f"scene_{i:05d}") for i in range(2)])


def test_ray_engine_one_actor_per_slot(tmp_path):
    pytest.importorskip("ray")
    import ray

    out = tmp_path / "r"
    try:
        res = _run("--scenes", "2", "--engine", "ray", "--workers", "2", "--out", str(out), *TINY)
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    renders = [json.loads((out / f"scene_{i:05d}" / "scene.json").read_text())["render"] for i in range(2)]
    assert all(r["workers"] == 2 and 0 <= r["worker"] < 2 for r in renders)
    assert os.getpid() not in {r["pid"] for r in renders}  # rendered inside Ray actors
    assert all(is_complete_scene(out / f"scene_{i:05d}") for i in range(2))

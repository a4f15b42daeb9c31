"""Issue 18, render: exact temp-folder cleanup, durable scene publishing, input limits, clear option errors.

No engine runs here: the checks happen before one would start, or on a scene
folder written by the real ``SceneOutput``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncam_data import limits
from syncam_data.cli import app
from syncam_data.render.jobs import REPORT_JSON, publish, remove_stale_temps, temp_folder_name
from syncam_data.render.output import is_complete_scene
from syncam_data.scenes import SamplerConfig, SceneSpec, SpecError, load_catalog, sample_scene
from tests.durability import FsEvents
from tests.test_build_shards_inputs import make_render_scene

runner = CliRunner()


def test_temp_cleanup_matches_the_exact_scene_id(tmp_path):
    mine = tmp_path / temp_folder_name("scene_1")
    other = tmp_path / temp_folder_name(
        "scene_1-2"
    )  # another scene whose id starts with "scene_1-", maybe rendering now
    other_old = tmp_path / ".tmp-scene_1-2-77-0123abcd"
    for p in (mine, other, other_old):
        p.mkdir()
        (p / "scene.json").write_text("{}")
    remove_stale_temps(tmp_path, "scene_1")
    assert not mine.exists() and other.exists() and other_old.exists()
    remove_stale_temps(tmp_path, "scene_1-2")
    assert not other.exists() and not other_old.exists()


def test_a_scene_folder_is_fsynced_before_and_after_its_publishing_rename(tmp_path, monkeypatch):
    ev = FsEvents(monkeypatch)
    tmp = make_render_scene(tmp_path, temp_folder_name("scene_00003"), seed=3)
    final = tmp_path / "scene_00003"
    publish(tmp, final)
    assert is_complete_scene(final)
    ev.assert_published(final)
    # Inside the temporary folder, the JSON files and npz arrays were themselves written durably.
    renamed = {Path(e[2]).name for e in ev.events if e[0] == "rename"}
    assert {"cameras.json", "scene.json", "cam00.npz", "cam00.mp4"} <= renamed


# --- input limits -------------------------------------------------------------------------------


def test_render_refuses_absurd_sizes_before_any_work(tmp_path):
    out = tmp_path / "r"
    for args, option in [
        (["--resolution", "100000x100000"], "--resolution"),
        (["--frames", "1000000000"], "--frames"),
        (["--cameras", "5000"], "--cameras"),
        (["--fps", "1e12"], "--fps"),
    ]:
        res = runner.invoke(app, ["render", "--scenes", "1", "--out", str(out), *args])
        assert res.exit_code == 2, (args, res.output)
        assert option in res.output and any(w in res.output for w in ("maximum", "at most", "<=")), res.output
        assert "Traceback" not in res.output and not out.exists()
    res = runner.invoke(app, ["render", "--scenes", "100000000", "--out", str(out)])
    assert res.exit_code == 2 and "--scenes" in res.output and "SYNCAM_MAX_SCENES" in res.output


def test_a_spec_over_the_limits_fails_alone_with_its_file_and_line_once(tmp_path):
    good = sample_scene(load_catalog(), 0, 0, SamplerConfig(num_cameras=2, num_frames=2, width=64, height=48))
    huge = json.loads(good.to_json())
    huge["num_frames"] = 1e9
    huge["scene_id"] = "huge"
    specs = tmp_path / "specs.jsonl"
    specs.write_text(json.dumps(huge) + "\n")
    out = tmp_path / "r"
    res = runner.invoke(app, ["render", "--scenes", str(specs), "--out", str(out), "--no-progress"])
    assert res.exit_code == 1, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("failed:"))
    assert line.count(f"{specs}:1") == 1, line  # file:line once, not twice
    assert "num_frames" in line and "maximum of 10000" in line and "SYNCAM_MAX_FRAMES" in line
    failed = json.loads((out / REPORT_JSON).read_text())["failed"]
    assert failed[0]["scene_id"] == f"{specs}:1" and not failed[0]["error"].startswith(str(specs))


def test_spec_and_sampler_models_enforce_the_limits_and_the_override(monkeypatch):
    spec = json.loads(
        sample_scene(load_catalog(), 0, 0, SamplerConfig(num_cameras=2, num_frames=2, width=64, height=48)).to_json()
    )
    for key, value in [("num_frames", 10_001), ("width", 100_000), ("fps", 1e6)]:
        bad = dict(spec, **{key: value})
        with pytest.raises(SpecError, match=key):
            SceneSpec.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="SYNCAM_MAX_FRAMES"):
        SamplerConfig(num_frames=20_000)
    monkeypatch.setenv("SYNCAM_MAX_FRAMES", "20000")
    assert SamplerConfig(num_frames=20_000).num_frames == 20_000
    assert limits.FRAMES.max == 20_000
    monkeypatch.setenv("SYNCAM_MAX_FRAMES", "lots")
    with pytest.raises(limits.LimitError, match="SYNCAM_MAX_FRAMES"):
        limits.FRAMES.check(1, "--frames")


# --- small ones -----------------------------------------------------------------------------------


def test_hfov_nan_is_refused_as_not_finite(tmp_path):
    res = runner.invoke(app, ["render", "--scenes", "1", "--out", str(tmp_path / "r"), "--hfov", "nan"])
    assert res.exit_code == 2 and "not a finite number" in res.output and "179" not in res.output
    res = runner.invoke(app, ["render", "--scenes", "1", "--out", str(tmp_path / "r"), "--hfov", "200"])
    assert res.exit_code == 2 and "must be <= 179" in res.output

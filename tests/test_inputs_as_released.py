"""Inputs as users have them: the released SynCamVideo / MultiCamVideo archives, and inputs that yield nothing.

The archives unpack as (README of KwaiVGI/SynCamMaster)::

    SynCamVideo-Dataset/train/f24_aperture5/sceneN/{videos/camXX.mp4, cameras/camera_extrinsics.json}
    SynCamVideo-Dataset/val/basic/{videos, cameras}          (a scene without the sceneN level)
    MultiCamVideo-Dataset/train/fNN_apertureM/sceneN/...     (several subsets)

and users point ``build-shards --syncamvideo`` at the archive root. Every command that finds
nothing in an input must exit non-zero with one line naming the path and the layout it expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.shards.reader import ShardReader, extra
from syncam_data.shards.schema import ViewRecord
from syncam_data.shards.writer import ShardWriter
from syncam_data.video import encode
from tests.conftest import FIXTURES, smooth_frames
from tests.test_build_shards_inputs import H, W, make_frameset, make_render_scene, make_syncamvideo, make_web_videos

runner = CliRunner()
EXTRINSICS = FIXTURES / "syncamvideo" / "camera_extrinsics.json"


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("released")
    scv = root / "SynCamVideo-Dataset"
    make_syncamvideo(scv, EXTRINSICS, "train/f24_aperture5", "scene1", cams=2, seed=1)
    make_syncamvideo(scv, EXTRINSICS, "train/f24_aperture5", "scene2", cams=2, seed=2)
    make_syncamvideo(scv, EXTRINSICS, "val/basic", "", cams=2, seed=3)
    mcv = root / "MultiCamVideo-Dataset"
    make_syncamvideo(mcv, EXTRINSICS, "train/f18_aperture10", "scene1", cams=2, seed=4)
    make_syncamvideo(
        mcv, EXTRINSICS, "train/f24_aperture5", "scene1", cams=2, seed=5
    )  # same subset/scene names as in SynCamVideo
    return root


def test_released_archives_found_at_any_depth_with_unique_ids(archives, tmp_path):
    out = tmp_path / "ds"
    res = runner.invoke(
        app,
        [
            "build-shards",
            "--out",
            str(out),
            "--syncamvideo",
            str(archives / "SynCamVideo-Dataset"),
            "--syncamvideo",
            str(archives / "MultiCamVideo-Dataset"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "wrote 5 group(s)" in res.output
    r = ShardReader(out)
    groups = {g: extra(r.row(rows[0])) for (_, g), rows in r.groups().items()}
    assert set(groups) == {
        "SynCamVideo-Dataset-train-f24_aperture5-scene1",
        "SynCamVideo-Dataset-train-f24_aperture5-scene2",
        "SynCamVideo-Dataset-val-basic",
        "MultiCamVideo-Dataset-train-f18_aperture10-scene1",
        "MultiCamVideo-Dataset-train-f24_aperture5-scene1",
    }
    assert groups["SynCamVideo-Dataset-val-basic"]["split"] == "val"
    assert groups["SynCamVideo-Dataset-val-basic"]["subset"] == "basic"
    e = groups["MultiCamVideo-Dataset-train-f18_aperture10-scene1"]
    assert (e["archive"], e["split"], e["subset"], e["scene"]) == (
        "MultiCamVideo-Dataset",
        "train",
        "f18_aperture10",
        "scene1",
    )


def test_each_subset_gets_the_lens_its_name_says(archives, tmp_path):
    """MultiCamVideo's fNN_apertureM subsets were shot with an NN mm lens on a 23.76 mm sensor (ReCamMaster README)."""
    out = tmp_path / "ds"
    res = runner.invoke(app, ["build-shards", "--out", str(out), "--syncamvideo", str(archives)])
    assert res.exit_code == 0, res.output
    r = ShardReader(out)
    fx = {g: r.row(rows[0])["K"][0] for (_, g), rows in r.groups().items()}
    assert fx["MultiCamVideo-Dataset-train-f18_aperture10-scene1"] == pytest.approx(18 * W / 23.76, rel=1e-5)
    assert fx["MultiCamVideo-Dataset-train-f24_aperture5-scene1"] == pytest.approx(24 * W / 23.76, rel=1e-5)
    assert fx["SynCamVideo-Dataset-val-basic"] == pytest.approx(
        24 * W / 23.76, rel=1e-5
    )  # no lens in the name: SynCamVideo's 24 mm
    # An explicit --focal-mm wins over the subset name.
    out2 = tmp_path / "ds2"
    res = runner.invoke(
        app,
        [
            "build-shards",
            "--out",
            str(out2),
            "--syncamvideo",
            str(archives / "MultiCamVideo-Dataset"),
            "--focal-mm",
            "50",
        ],
    )
    assert res.exit_code == 0, res.output
    r2 = ShardReader(out2)
    assert {round(r2.row(rows[0])["K"][0], 3) for rows in r2.groups().values()} == {round(50 * W / 23.76, 3)}


def test_group_ids_do_not_depend_on_where_the_user_points(archives, tmp_path):
    out = tmp_path / "ds"
    res = runner.invoke(
        app,
        [
            "build-shards",
            "--out",
            str(out),
            "--syncamvideo",
            str(archives / "SynCamVideo-Dataset" / "train" / "f24_aperture5"),
        ],
    )
    assert res.exit_code == 0 and "wrote 2 group(s)" in res.output, res.output
    res = runner.invoke(
        app, ["build-shards", "--out", str(out), "--syncamvideo", str(archives / "SynCamVideo-Dataset")]
    )
    assert res.exit_code == 0 and "wrote 1 group(s)" in res.output and "skipped 2 already present" in res.output, (
        res.output
    )
    res = runner.invoke(
        app,
        [
            "build-shards",
            "--out",
            str(tmp_path / "one"),
            "--syncamvideo",
            str(archives / "SynCamVideo-Dataset" / "val" / "basic"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert {g for _, g in ShardReader(tmp_path / "one").groups()} == {"SynCamVideo-Dataset-val-basic"}


@pytest.mark.parametrize("source", ["renders", "frames", "videos", "syncamvideo"])
def test_a_build_input_that_yields_nothing_is_an_error(source, tmp_path):
    path = tmp_path / "in"
    if source == "renders":
        (path / ".scene0.tmp-1").mkdir(parents=True)  # only a render still running
        (path / "render_report.json").write_text("{}")
        layout = "scene.json"
    elif source == "frames":
        (path / "notes").mkdir(parents=True)
        layout = "cameras.json"
    elif source == "videos":
        path = make_web_videos(tmp_path / "web", [("a", 4, "rejected"), ("b", 4, "error")])
        layout = "status"
    else:
        scene = make_syncamvideo(path, EXTRINSICS, "train/f24_aperture5", "scene1", cams=1)
        (scene / "cameras" / "camera_extrinsics.json").unlink()  # videos without their cameras
        layout = "camera_extrinsics.json"
    out = tmp_path / "ds"
    res = runner.invoke(app, ["build-shards", "--out", str(out), f"--{source}", str(path)])
    assert res.exit_code == 1, res.output
    (line,) = error_lines(res.output)
    assert str(path) in line and f"--{source}" in line and "found nothing" in line and layout in line
    assert not (out / "dataset.json").exists()


def test_one_empty_input_among_good_ones_stops_the_build_before_writing(tmp_path):
    good = tmp_path / "frames"
    make_frameset(good, "seq_s000")
    (tmp_path / "renders").mkdir()
    out = tmp_path / "ds"
    res = runner.invoke(
        app, ["build-shards", "--out", str(out), "--frames", str(good), "--renders", str(tmp_path / "renders")]
    )
    assert res.exit_code == 1 and str(tmp_path / "renders") in res.output
    assert not (out / "dataset.json").exists()


def test_a_build_where_every_group_fails_is_an_error(tmp_path):
    renders = tmp_path / "renders"
    scene = make_render_scene(renders, "sceneA")
    (scene / "videos" / "cam00.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)
    res = runner.invoke(app, ["build-shards", "--out", str(tmp_path / "ds"), "--renders", str(renders)])
    assert res.exit_code == 1, res.output
    assert any("no group written" in line and "1 failed" in line for line in error_lines(res.output))


@pytest.mark.parametrize("source", ["realestate10k", "dl3dv"])
def test_sample_frames_root_without_sequences_is_an_error(source, tmp_path):
    root = tmp_path / "root"
    (root / "train" / "empty").mkdir(parents=True)
    out = tmp_path / "out"
    res = runner.invoke(app, ["sample-frames", "--source", source, "--root", str(root), "--out", str(out)])
    assert res.exit_code == 1, res.output
    (line,) = error_lines(res.output)
    assert str(root) in line and f"no {source} sequences found" in line
    assert ("<sequence>.txt" in line) if source == "realestate10k" else ("transforms.json" in line)
    assert not out.exists()  # nothing was started


def test_sample_frames_where_every_sequence_is_skipped_is_an_error(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "README.txt").write_text("download notes\n")  # found as a camera file, refused as one
    out = tmp_path / "out"
    res = runner.invoke(app, ["sample-frames", "--source", "realestate10k", "--root", str(root), "--out", str(out)])
    assert res.exit_code == 1, res.output
    (line,) = error_lines(res.output)
    assert str(root) in line and "no frame set" in line and "sample_report.json" in line
    assert json.loads((out / "sample_report.json").read_text())["totals"]["skipped"] == 1


def test_eval_inputs_that_yield_nothing(tmp_path):
    empty = tmp_path / "empty_shards"
    ShardWriter(empty, name="x").close()  # a committed dataset with no rows
    res = runner.invoke(app, ["eval", str(empty), "--out", str(tmp_path / "o1")])
    assert res.exit_code == 1
    (line,) = error_lines(res.output)
    assert str(empty) in line and "no rows" in line
    # only single-view clips and no FVD: nothing can be measured
    single = tmp_path / "single"
    with ShardWriter(single, name="x") as w:
        w.write_group(
            [
                ViewRecord(
                    "web", "single_video", "c0", "v0", encode(smooth_frames(3, H, W), fps=8), "mp4", 3, H, W, fps=8.0
                )
            ]
        )
    res = runner.invoke(app, ["eval", str(single), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 1, res.output
    assert any(str(single) in line and "nothing to evaluate" in line for line in error_lines(res.output))
    assert pq.read_table(tmp_path / "o2" / "eval.parquet").num_rows == 0  # the (empty) outputs are still written

"""The end-to-end demo through its CLI, on reduced settings: every stage runs and the report shows real output."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from syncam_data.cli import app


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(
        app,
        [
            "demo",
            "--out",
            str(out),
            "--scenes",
            "2",
            "--cameras",
            "4",
            "--frames",
            "5",
            "--resolution",
            "96x160",
            "--samples",
            "4",
            "--train-steps",
            "6",
            "--resume-steps",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    stages = {s["name"]: s for s in json.loads((out / "demo_stages.json").read_text())}
    assert all(s["ok"] for s in stages.values()), {k: s["error"] for k, s in stages.items() if not s["ok"]}
    assert list(stages) == [
        "render",
        "sequences",
        "posed",
        "sample_frames",
        "filter",
        "shards",
        "eval",
        "train",
        "generate",
        "report",
    ]

    # the filter separates the rendered clips as a user would expect
    decisions = {
        d["path"].rsplit("/", 1)[-1]: (d["status"], d["reason"]) for d in stages["filter"]["outputs"]["decisions"]
    }
    assert decisions["static_camera_moving_subject.mp4"] == ("kept", "")
    assert decisions["pan_static_scene.mp4"] == ("rejected", "camera_moves")
    assert decisions["static_scene.mp4"] == ("rejected", "static")
    assert decisions["corrupt.mp4"][0] == "error"

    # every source reached the shards
    by_source = stages["shards"]["outputs"]["inspect"]["by_source"]
    assert {
        "syncam-blender/multiview_video",
        "realestate10k/multiview_image",
        "dl3dv/multiview_image",
        "web/single_video",
    } <= set(by_source)

    # training stopped part-way and resumed to the end; generation wrote one video per camera plus the grid
    log = stages["train"]["outputs"]["log"]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0, 6]
    assert max(r["step"] for r in log if "loss" in r) == 9
    files = stages["generate"]["outputs"]["files"]
    assert sum(f.startswith("generate/videos/") for f in files) == 3 and "generate/grid.mp4" in files

    html = (out / "report.html").read_text()
    for section in (
        "Stages",
        "Dataset",
        "Frames from each source",
        "Web-video filter decisions",
        "Cross-view consistency",
        "Training",
        "Generated multi-view grid",
    ):
        assert f"<h2>{section}</h2>" in html or f"<h2>{section} " in html, section
    assert (out / "report.md").exists() and (out / "cameras.png").exists()
    assert (out / "commands.sh").read_text().count("syncam-data render") == 2

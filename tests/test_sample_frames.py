"""`syncam-data sample-frames` end to end: bad inputs in the report, resume, reproducibility, workers, atomic groups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.sources import frameset
from syncam_data.sources.export import export_dl3dv, export_realestate10k
from syncam_data.sources.frameset import OutputConfig, SourceFrame, write_frame_set
from tests.test_sources_realestate10k import groups, run_cli
from tests.test_sources_scene import render, trajectory

FPS = 30000 / 1001


@pytest.fixture(scope="module")
def scene():
    cams = trajectory(24, deg_per_frame=2.0)
    return cams, [render(c) for c in cams]


def _edit_line(txt: Path, line_no: int, fn) -> None:
    lines = txt.read_text().splitlines()
    lines[line_no - 1] = fn(lines[line_no - 1].split())
    txt.write_text("\n".join(lines) + "\n")


@pytest.fixture
def messy_root(tmp_path, scene) -> Path:
    """One good sequence and one of each kind of bad input (RealEstate10K layout)."""
    cams, frames = scene
    root = tmp_path / "re10k"
    for name in ("good", "malformed", "notrot", "missing", "short"):
        export_realestate10k(
            root / "train",
            name,
            cams if name != "short" else cams[:2],
            frames if name != "short" else frames[:2],
            fps=FPS,
            pose_stride=2,
        )
    _edit_line(root / "train" / "malformed.txt", 4, lambda p: " ".join(p[:-1]))  # 18 numbers
    # Scale the rotation part of line 3: not a rotation any more.
    _edit_line(
        root / "train" / "notrot.txt",
        3,
        lambda p: " ".join(p[:7] + [f"{float(v) * 1.1:.9f}" if k % 4 != 3 else v for k, v in enumerate(p[7:])]),
    )
    missing_ts = (root / "train" / "missing.txt").read_text().splitlines()[5].split()[0]
    (root / "train" / "missing" / f"{missing_ts}.png").unlink()
    # A video that is not a video, beside a valid camera file.
    (root / "train" / "badvideo.txt").write_text((root / "train" / "good.txt").read_text())
    (root / "train" / "badvideo.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not h264" * 10)
    (root / "README.txt").write_text("RealEstate10K download notes\n")
    return root


def test_bad_inputs_are_named_in_the_report_and_the_run_continues(tmp_path, messy_root):
    out = tmp_path / "out"
    run_cli(
        "--source",
        "realestate10k",
        "--root",
        str(messy_root),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "20",
        "--sets-per-sequence",
        "2",
    )
    report = json.loads((out / "sample_report.json").read_text())
    by = {s["sequence"]: s for s in report["sequences"]}
    assert set(by) == {"README", "good", "malformed", "notrot", "missing", "short", "badvideo"}
    assert by["good"]["status"] == "ok" and by["good"]["sets_written"] == ["good_s000", "good_s001"]
    t = str(messy_root / "train")
    reasons = {k: v.get("reason", "") for k, v in by.items()}
    assert reasons["malformed"].startswith(f"{t}/malformed.txt: line 4: bad pose line: expected 19 numbers, got 18")
    assert reasons["notrot"].startswith(
        f"{t}/notrot.txt: line 3: bad pose line: world-to-camera rotation is not orthonormal"
    )
    assert (
        "image file is missing" in reasons["missing"]
        and "line 6 of" in reasons["missing"]
        and f"{t}/missing/" in reasons["missing"]
    )
    assert reasons["badvideo"].startswith(f"{t}/badvideo.mp4: not a readable video")
    assert "too short: 1 frame(s) for 3 view(s)" in reasons["short"]
    assert "not a RealEstate10K camera file" in reasons["README"]
    for k in ("malformed", "notrot", "missing", "short", "badvideo", "README"):
        assert by[k]["status"] == "skipped" and by[k]["sets_written"] == []
    assert report["totals"] == {
        "sequences": 7,
        "ok": 1,
        "skipped": 6,
        "error": 0,
        "sets_written": 2,
        "sets_existing": 0,
    }
    assert report["finished"] is not None and report["settings"]["sampling"]["views"] == 3
    # Only the good sequence produced groups; nothing half-written is left behind.
    assert sorted(p.name for p in out.iterdir()) == ["good_s000", "good_s001", "sample_report.json"]


def test_missing_dl3dv_image_skips_the_scene(tmp_path, scene):
    cams, frames = scene
    export_dl3dv(tmp_path / "root", "ok", cams[:8], frames[:8], downscales=(4,))
    folder = export_dl3dv(tmp_path / "root", "hole", cams[:8], frames[:8], downscales=(4,))
    (folder / "images_4" / "frame_00005.png").unlink()
    out = tmp_path / "out"
    run_cli("--source", "dl3dv", "--root", str(tmp_path / "root"), "--out", str(out), "--views", "2")
    by = {s["sequence"]: s for s in json.loads((out / "sample_report.json").read_text())["sequences"]}
    assert by["ok"]["status"] == "ok"
    assert by["hole"]["status"] == "skipped"
    assert by["hole"]["reason"].startswith(f"{folder}/images_4/frame_00005.png: image file is missing (frame 5 of")


def test_rerun_skips_written_sets_and_rewrites_only_missing(tmp_path, scene):
    cams, frames = scene
    export_realestate10k(tmp_path / "root", "seq", cams, frames, fps=FPS, pose_stride=2)
    out = tmp_path / "out"
    args = (
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "root"),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "20",
        "--sets-per-sequence",
        "3",
    )
    run_cli(*args)
    first = {g["group_id"]: g for g in groups(out)}
    assert sorted(first) == ["seq_s000", "seq_s001", "seq_s002"]
    kept_mtime = (out / "seq_s000" / "v00.jpg").stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "seq_s001")
    (out / ".seq_s002.tmp-123-deadbeef").mkdir()  # left by a killed run
    run_cli(*args)
    report = json.loads((out / "sample_report.json").read_text())
    (seq,) = report["sequences"]
    assert seq["sets_written"] == ["seq_s001"] and seq["sets_existing"] == ["seq_s000", "seq_s002"]
    assert (out / "seq_s000" / "v00.jpg").stat().st_mtime_ns == kept_mtime
    assert {g["group_id"]: g["frame_indices"] for g in groups(out)} == {k: v["frame_indices"] for k, v in first.items()}
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_same_seed_same_sets_through_the_cli_and_with_workers(tmp_path, scene):
    cams, frames = scene
    for name in ("a", "b", "c"):
        export_realestate10k(tmp_path / "root", name, cams, frames, fps=FPS, pose_stride=2)
    common = (
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "root"),
        "--views",
        "3",
        "--max-gap",
        "20",
        "--sets-per-sequence",
        "2",
        "--seed",
        "3",
    )
    run_cli(*common, "--out", str(tmp_path / "o1"))
    run_cli(*common, "--out", str(tmp_path / "o2"), "--workers", "2", "--chunk-size", "2")
    run_cli(*common[:-1], "4", "--out", str(tmp_path / "o3"))

    def sets(out: Path) -> dict[str, list[int]]:
        return {g["group_id"]: g["frame_indices"] for g in groups(out)}

    s1, s2, s3 = sets(tmp_path / "o1"), sets(tmp_path / "o2"), sets(tmp_path / "o3")
    assert len(s1) == 6
    assert s1 == s2  # processes and chunking do not change the sets
    assert s1 != s3  # a different seed does
    for fi in s1.values():
        assert (fi[-1] - fi[0]) * 2 <= 20


def test_group_folder_is_complete_or_absent(tmp_path, scene, monkeypatch):
    cams, frames = scene
    fr = [SourceFrame(i, frames[i], cams[i], {"convention": "test"}) for i in range(3)]
    calls = {"n": 0}
    real = frameset.encode_image

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(frameset, "encode_image", failing)
    with pytest.raises(OSError, match="disk full"):
        write_frame_set(tmp_path, "seq_s000", {"source": "test"}, fr, OutputConfig())
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(frameset, "encode_image", real)
    folder = write_frame_set(tmp_path, "seq_s000", {"source": "test"}, fr, OutputConfig(image_format="png"))
    data = json.loads((folder / "cameras.json").read_text())
    assert data["frame_indices"] == [0, 1, 2] and [c["image"] for c in data["cameras"]] == [
        "v00.png",
        "v01.png",
        "v02.png",
    ]


def test_cli_rejects_bad_options(tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "sample-frames",
            "--source",
            "dl3dv",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--gap-unit",
            "video-frames",
        ],
    )
    assert r.exit_code != 0 and "video-frames needs timestamps" in r.output
    r = CliRunner().invoke(
        app,
        ["sample-frames", "--source", "realestate10k", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
    )
    assert r.exit_code != 0 and "not a directory" in r.output
    r = CliRunner().invoke(
        app,
        [
            "sample-frames",
            "--source",
            "realestate10k",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--image-format",
            "gif",
        ],
    )
    assert r.exit_code != 0 and "image format" in r.output
    r = CliRunner().invoke(
        app, ["sample-frames", "--source", "realestate10k", "--root", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code != 0 and "no realestate10k sequences found" in r.output


def test_help_documents_every_option():
    r = CliRunner().invoke(app, ["sample-frames", "--help"], env={"COLUMNS": "250", "TERM": "dumb"})
    assert r.exit_code == 0
    for opt in (
        "--max-gap",
        "--gap-unit",
        "--min-angle",
        "--min-baseline",
        "--frames-dir",
        "--videos-dir",
        "--image-folder",
        "--undistort",
        "--applied-transform",
        "--engine",
        "--workers",
        "--frame-resize",
        "--fps",
    ):
        assert opt in r.output


def test_frame_sets_feed_build_shards(tmp_path, scene):
    """Done-when: the groups become multiview_image rows whose K and c2w are the ground truth."""
    import pyarrow.parquet as pq

    cams, frames = scene
    export_realestate10k(tmp_path / "re", "seqv", cams, frames, fps=FPS, pose_stride=2, frames_as="video")
    export_dl3dv(tmp_path / "dl" / "1K", "scn", cams, frames, downscales=(2,))
    sets = tmp_path / "sets"
    run_cli(
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "re"),
        "--out",
        str(sets),
        "--views",
        "3",
        "--max-gap",
        "20",
    )
    run_cli(
        "--source",
        "dl3dv",
        "--root",
        str(tmp_path / "dl"),
        "--out",
        str(sets),
        "--views",
        "3",
        "--max-gap",
        "8",
        "--image-folder",
        "images_2",
    )
    r = CliRunner().invoke(
        app, ["build-shards", "--out", str(tmp_path / "shards"), "--frames", str(sets)], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    rows = pq.read_table(
        sorted((tmp_path / "shards").glob("*-00000.parquet"))[0],
        columns=["dataset", "kind", "group_id", "view_id", "frame_indices", "K", "c2w", "width"],
    ).to_pylist()
    assert sorted({(x["dataset"], x["group_id"]) for x in rows}) == [
        ("dl3dv", "scn_s000"),
        ("realestate10k", "seqv_s000"),
    ]
    assert len(rows) == 6 and {x["kind"] for x in rows} == {"multiview_image"}
    for x in rows:
        (fi,) = x["frame_indices"]
        truth = cams[fi * 2] if x["dataset"] == "realestate10k" else cams[fi - 1].resized(32, 24)
        np.testing.assert_allclose(x["c2w"], truth.c2w12(), atol=1e-5)  # float32 in the shard
        np.testing.assert_allclose(x["K"], truth.intrinsics, rtol=1e-6)


@pytest.mark.slow
def test_ray_engine_writes_the_same_sets(tmp_path, scene):
    """--engine ray (a local Ray started on demand), in a subprocess so Ray shuts down with it."""
    import subprocess
    import sys

    cams, frames = scene
    export_realestate10k(tmp_path / "root", "r1", cams, frames, fps=FPS, pose_stride=2)
    common = [
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "root"),
        "--views",
        "3",
        "--max-gap",
        "20",
        "--sets-per-sequence",
        "2",
        "--no-progress",
    ]
    run_cli(*common, "--out", str(tmp_path / "local"))
    cmd = [
        sys.executable,
        "-c",
        "from syncam_data.cli import main; main()",
        "sample-frames",
        *common,
        "--out",
        str(tmp_path / "ray"),
        "--engine",
        "ray",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    local = {g["group_id"]: g["frame_indices"] for g in groups(tmp_path / "local")}
    ray = {g["group_id"]: g["frame_indices"] for g in groups(tmp_path / "ray")}
    assert local == ray and len(ray) == 2


def test_output_write_failure_is_an_error_not_bad_input(tmp_path, scene, monkeypatch):
    cams, frames = scene
    export_realestate10k(tmp_path / "root", "seq", cams, frames, fps=FPS, pose_stride=2)
    real = frameset.encode_image

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frameset, "encode_image", disk_full)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "sample-frames",
            "--no-progress",
            "--source",
            "realestate10k",
            "--root",
            str(tmp_path / "root"),
            "--out",
            str(out),
            "--views",
            "2",
        ],
    )
    assert res.exit_code == 1 and "no frame set" in res.output  # a run that wrote nothing is not a success
    (seq,) = json.loads((out / "sample_report.json").read_text())["sequences"]
    assert seq["status"] == "error" and "cannot write frame set" in seq["reason"] and "No space left" in seq["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["sample_report.json"]
    monkeypatch.setattr(frameset, "encode_image", real)
    run_cli("--source", "realestate10k", "--root", str(tmp_path / "root"), "--out", str(out), "--views", "2")
    assert [g["group_id"] for g in groups(out)] == ["seq_s000"]


def test_limit_stops_after_n_sequences(tmp_path, scene):
    cams, frames = scene
    for name in ("a", "b", "c"):
        export_realestate10k(tmp_path / "root", name, cams[:10], frames[:10], fps=FPS, pose_stride=2)
    out = tmp_path / "out"
    run_cli(
        "--source", "realestate10k", "--root", str(tmp_path / "root"), "--out", str(out), "--views", "2", "--limit", "2"
    )
    report = json.loads((out / "sample_report.json").read_text())
    assert [s["sequence"] for s in report["sequences"]] == ["a", "b"]
    assert report["settings"]["source"] == "realestate10k" and report["totals"]["sets_written"] == 2

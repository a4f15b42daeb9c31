"""filter-videos: synthetic cases, units, bad files, resume, rescore, CLI (grid + LK defaults, for real)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.filter.cuts import cut_scores, first_shot_length
from syncam_data.filter.debug import debug_png_name
from syncam_data.filter.decode import decode_clip
from syncam_data.filter.run import expand_inputs, rescore, run_filter
from syncam_data.filter.score import score_tracks
from syncam_data.filter.segment import query_points
from syncam_data.filter.settings import FilterConfig
from syncam_data.filter.store import COLUMNS, ScoresStore
from syncam_data.filter.synthetic import (
    EXPECTED_REASON,
    KINDS,
    SyntheticSpec,
    synthesize_frames,
    write_synthetic_set,
    write_synthetic_video,
)
from syncam_data.fsio import sha256_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """One tiny (160x128, 2 s, 24 fps) synthetic video per kind."""
    return write_synthetic_set(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def scored(videos, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("scored")
    run_filter(list(videos.values()), out, FilterConfig(), progress=False)
    rows = {Path(r["path"]).stem: r for r in pq.read_table(out / "scores.parquet").to_pylist()}
    return out, rows


def _rows(out: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in pq.read_table(out / "scores.parquet").to_pylist()}


# ---------------------------------------------------------------- decisions on the synthetic cases


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_case_decision(scored, kind):
    _, rows = scored
    r = rows[kind]
    expected = EXPECTED_REASON[kind]
    assert r["reason"] == expected, f"{kind}: subject {r['subject_motion']}, camera {r['camera_motion']}"
    assert r["status"] == ("kept" if expected == "" else "rejected")


def test_scores_format_for_build_shards(scored, videos):
    out, rows = scored
    table = pq.read_table(out / "scores.parquet")
    for name, typ in [
        ("path", "string"),
        ("content_hash", "string"),
        ("status", "string"),
        ("reason", "string"),
        ("subject_motion", "float"),
        ("camera_motion", "float"),
        ("duration_s", "float"),
        ("fps", "float"),
        ("width", "int32"),
        ("height", "int32"),
        ("num_frames", "int32"),
        ("codec", "string"),
        ("error", "string"),
        ("settings", "string"),
    ]:
        assert str(table.schema.field(name).type) == typ, name
    assert tuple(table.column_names) == COLUMNS
    r = rows["static_subject"]
    assert r["path"] == str(videos["static_subject"].resolve()) and os.path.isabs(r["path"])
    assert r["content_hash"] == sha256_file(videos["static_subject"])
    assert (r["width"], r["height"], r["num_frames"], r["codec"]) == (160, 128, 48, "h264")
    assert r["fps"] == pytest.approx(24.0) and r["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert r["error"] is None and json.loads(r["settings"])["threshold"] == FilterConfig().threshold
    assert (out / "kept.txt").read_text().splitlines() == [r["path"]]
    assert not list((out / "parts").glob("*.parquet")), "parts must be folded into scores.parquet"


def test_camera_motion_units_match_the_pan(scored):
    """Pan of (1.5, 0.45) px/frame at 24 fps in a 160x128 frame: |v| * fps / diagonal."""
    _, rows = scored
    expected = np.hypot(1.5, 0.45) * 24 / np.hypot(160, 128)
    assert rows["pan"]["camera_motion"] == pytest.approx(expected, rel=0.05)
    assert rows["static_subject"]["camera_motion"] < 0.1 * FilterConfig().camera_threshold


def test_scores_do_not_depend_on_resolution_or_frame_rate(tmp_path):
    """Same motion in diagonals/s at 2x the size (1.5x the px/frame... scaled) and at 30 fps gives the same scores."""
    small = write_synthetic_video(tmp_path / "a.mp4", "pan_subject", seed=3)
    # Twice the resolution and 30 fps: pixel speeds scaled so the world moves equally fast per second.
    f = 2 * 24 / 30
    big = write_synthetic_video(
        tmp_path / "b.mp4",
        "pan_subject",
        seed=3,
        width=320,
        height=256,
        fps=30,
        pan_speed=1.5 * f,
        subject_speed=2.0 * f,
    )
    out = tmp_path / "out"
    run_filter([small, big], out, FilterConfig(), progress=False)
    rows = _rows(out)
    a, b = rows["a.mp4"], rows["b.mp4"]
    assert b["width"] == 320 and b["fps"] == pytest.approx(30)
    assert b["camera_motion"] == pytest.approx(a["camera_motion"], rel=0.1)
    assert b["subject_motion"] == pytest.approx(a["subject_motion"], rel=0.25)


def test_score_tracks_known_motion():
    """Exact tracks: 100 background points shifted by (2, 1) px, 20 subject points moving (+3, 0) more."""
    rng = np.random.default_rng(0)
    t_len, fps, w, h = 5, 10.0, 300, 400
    bg = rng.uniform(20, 280, (100, 2))
    fg = rng.uniform(100, 200, (20, 2))
    tracks = np.zeros((t_len, 120, 2), np.float32)
    for t in range(t_len):
        tracks[t, :100] = bg + t * np.array([2.0, 1.0])
        tracks[t, 100:] = fg + t * np.array([5.0, 1.0])
    visible = np.ones((t_len, 120), bool)
    ms = score_tracks(tracks, visible, np.zeros(120, np.int32), fps, w, h)
    diag = np.hypot(w, h)
    assert np.allclose(ms.camera_per_pair, np.hypot(2, 1) * fps / diag, rtol=1e-4)
    assert np.allclose(ms.track_speed[100:], 3 * fps / diag, rtol=1e-3)
    assert np.allclose(ms.track_speed[:100], 0, atol=1e-4)
    assert ms.inlier_fraction == pytest.approx(100 / 120)
    # With masks the subject points are the candidates and background points fit the homography.
    labels = np.r_[np.zeros(100), np.ones(20)].astype(np.int32)
    ms2 = score_tracks(tracks, visible, labels, fps, w, h)
    assert ms2.track_candidate.sum() == 20 and ms2.inlier_fraction == pytest.approx(1.0)


def test_rescore_thresholds_apply_to_raw_scores(scored):
    _, rows = scored
    base = FilterConfig()
    from syncam_data.filter.score import decide

    r = rows["static_subject"]
    args = (
        r["width"],
        r["height"],
        r["duration_s"],
        r["scene_cut_score"],
        np.array(r["camera_motion_per_pair"]),
        np.array(r["camera_support_per_pair"]),
        np.array(r["track_speed"]),
        np.array(r["track_candidate"]),
    )
    assert decide(base, *args).status == "kept"
    assert decide(base.with_decisions(threshold=r["subject_motion"] * 1.01), *args).reason == "static"
    assert decide(base.with_decisions(camera_threshold=r["camera_motion"] * 0.5), *args).reason == "camera_moves"
    with pytest.raises(ValueError, match="decision settings"):
        base.with_decisions(short_side=128)


# ---------------------------------------------------------------- pieces


def test_scene_cut_scores_peak_at_the_cut(videos):
    clip = decode_clip(videos["scene_cut"], 256, 8, 10)
    s = cut_scores(clip.frames)
    assert len(s) == len(clip.frames) - 1
    cut = int(np.argmax(s))
    assert s[cut] > 0.5 and np.delete(s, cut).max() < 0.15
    assert first_shot_length(s, 0.5) == cut + 1
    pan = cut_scores(decode_clip(videos["pan"], 256, 8, 10).frames)
    assert pan.max() < 0.2, "camera motion must not look like a cut"


def test_decode_downsamples_and_subsamples(videos, tmp_path):
    big = write_synthetic_video(tmp_path / "big.mp4", "static", width=320, height=240, fps=30, seconds=3)
    clip = decode_clip(big, short_side=120, sample_fps=10, max_seconds=2)
    assert clip.frames.shape[1:] == (120, 160, 3)
    assert clip.stride == 3 and clip.fps == pytest.approx(10)
    assert len(clip.frames) == 20  # 2 s at 10 fps


def test_query_points_with_masks():
    h, w = 64, 80
    subject = np.zeros((h, w), bool)
    subject[10:30, 20:50] = True
    scenery = np.zeros((h, w), bool)
    scenery[:, :60] = True  # 75 % of the frame: background, not a subject
    pts, labels = query_points([scenery, subject], h, w, grid_size=8, points_per_mask=10)
    assert (labels == 1).sum() == 10
    inside = pts[labels == 1].astype(int)
    assert subject[inside[:, 1], inside[:, 0]].all()
    bg = pts[labels == 0].astype(int)
    assert not subject[bg[:, 1], bg[:, 0]].any() and len(bg) > 0
    grid, glabels = query_points([], h, w, grid_size=8, points_per_mask=10)
    assert grid.shape == (64, 2) and not glabels.any()


def test_expand_inputs_folders_and_lists(videos, tmp_path):
    folder = videos["pan"].parent
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\n{videos['pan']}\n\n{videos['zoom']}\n")
    csv = tmp_path / "list.csv"
    csv.write_text(f"id,path\n1,{videos['static']}\n")
    got = expand_inputs([lst, csv, folder])
    assert got[:3] == [str(videos[k].resolve()) for k in ("pan", "zoom", "static")]
    assert sorted(got) == sorted(str(p.resolve()) for p in videos.values())  # no duplicates


def test_settings_errors_name_the_option():
    with pytest.raises(ValueError, match="--sam-checkpoint"):
        FilterConfig(segmenter="sam")
    with pytest.raises(ValueError, match="--tracker"):
        FilterConfig(tracker="raft")
    s = FilterConfig(threshold=0.05)
    assert FilterConfig.from_json(s.to_json()) == s


# ---------------------------------------------------------------- robustness and resume


def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {
        "zero.mp4": b"",
        "noise.mp4": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "truncated.mp4": data[: len(data) // 3],
        "notes.mp4": b"this is not a video\n",
    }
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return {k: folder / k for k in files}


def test_bad_files_become_error_rows_and_the_run_completes(videos, tmp_path):
    bad = _bad_files(tmp_path / "in", videos["static_subject"])
    out = tmp_path / "out"
    listed = tmp_path / "more.txt"  # a path named in a list may be missing: that is an error row
    listed.write_text(f"{tmp_path / 'missing.mp4'}\n")
    inputs = list(bad.values()) + [videos["static_subject"], listed]
    summary = run_filter(inputs, out, FilterConfig(), progress=False)
    rows = _rows(out)
    assert len(rows) == 6 and summary.total == 6
    assert rows["zero.mp4"]["reason"] == "empty_file"
    assert rows["missing.mp4"]["reason"] == "missing_file" and rows["missing.mp4"]["content_hash"] == ""
    for name in ("zero.mp4", "noise.mp4", "truncated.mp4", "notes.mp4", "missing.mp4"):
        r = rows[name]
        assert r["status"] == "error" and r["error"] and r["subject_motion"] is None, name
        assert name in r["error"] or "missing.mp4" in r["error"], f"the message must name the file: {r['error']}"
    for name in ("noise.mp4", "notes.mp4"):
        assert rows[name]["reason"] == "decode_error", name
    # An index-at-end mp4 cut before its index is an interrupted download, not a corrupt file (issue 16.4).
    assert rows["truncated.mp4"]["reason"] == "truncated"
    assert rows["static_subject.mp4"]["status"] == "kept"


def test_too_short_and_too_small(tmp_path):
    short = write_synthetic_video(tmp_path / "short.mp4", "static_subject", seconds=0.5)
    small = write_synthetic_video(tmp_path / "small.mp4", "static_subject", width=96, height=64)
    out = tmp_path / "out"
    run_filter([short, small], out, FilterConfig(), progress=False)
    rows = _rows(out)
    assert (rows["short.mp4"]["status"], rows["short.mp4"]["reason"]) == ("rejected", "too_short")
    assert (rows["small.mp4"]["status"], rows["small.mp4"]["reason"]) == ("rejected", "too_small")
    assert rows["small.mp4"]["width"] == 96  # probed facts are kept even for rejects
    # Lowering the limit on rescore cannot invent motion scores: the row stays rejected.
    rescore(out, min_short_side=64)
    assert _rows(out)["small.mp4"]["reason"] == "too_small"


def test_timeout_becomes_an_error_row(videos, tmp_path):
    out = tmp_path / "out"
    run_filter([videos["pan"]], out, FilterConfig(timeout_s=1e-4), progress=False)
    r = _rows(out)["pan.mp4"]
    assert (r["status"], r["reason"]) == ("error", "timeout") and "time limit" in r["error"]
    # --retry-errors recomputes it with a sensible limit; a plain rerun does not.
    assert run_filter([videos["pan"]], out, FilterConfig(), progress=False).processed == 0
    run_filter([videos["pan"]], out, FilterConfig(), retry_errors=True, progress=False)
    assert _rows(out)["pan.mp4"]["reason"] == "camera_moves"


def test_rerun_skips_done_and_reuses_content_hash(videos, tmp_path):
    out = tmp_path / "out"
    first = run_filter([videos["static"], videos["zoom"]], out, FilterConfig(), progress=False)
    assert first.processed == 2
    before = _rows(out)
    copy = tmp_path / "copy_of_zoom.mp4"
    shutil.copy(videos["zoom"], copy)
    again = run_filter([videos["static"], videos["zoom"], copy], out, FilterConfig(), progress=False)
    assert again.processed == 0 and again.total == 3
    after = _rows(out)
    assert after["static.mp4"]["finished_at"] == before["static.mp4"]["finished_at"], "done rows must not be recomputed"
    assert after["copy_of_zoom.mp4"]["content_hash"] == after["zoom.mp4"]["content_hash"]
    assert after["copy_of_zoom.mp4"]["reason"] == "camera_moves"
    # A changed file (new content at the same path) is recomputed.
    shutil.copy(videos["static_subject"], copy)
    third = run_filter([copy], out, FilterConfig(), progress=False)
    assert third.processed == 1 and _rows(out)["copy_of_zoom.mp4"]["status"] == "kept"


def test_resume_reads_parts_left_by_a_killed_run(videos, tmp_path):
    """Rows saved as parts (scores.parquet never written) count as done on the next run."""
    out = tmp_path / "out"
    store = ScoresStore(out)
    from syncam_data.filter.stages import VideoItem, filter_video

    st = os.stat(videos["pan"])
    item = VideoItem(str(videos["pan"].resolve()), sha256_file(videos["pan"]), st.st_size, st.st_mtime_ns)
    row = filter_video(item, FilterConfig())
    store.append(row)
    assert not (out / "scores.parquet").exists()
    summary = run_filter([videos["pan"], videos["static"]], out, FilterConfig(), progress=False)
    assert summary.processed == 1
    rows = _rows(out)
    assert rows["pan.mp4"]["finished_at"] == row["finished_at"] and rows["static.mp4"]["reason"] == "static"


def test_kill_midway_then_resume_gives_the_complete_table(tmp_path):
    """SIGKILL a CLI run after its first saved row; the resumed run completes without redoing it."""
    folder = tmp_path / "in"
    paths = [write_synthetic_video(folder / f"v{i}.mp4", KINDS[i % 5], seed=i, seconds=2) for i in range(8)]
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        "from syncam_data.cli import main; main()",
        "filter-videos",
        str(folder),
        "--out",
        str(out),
        "--no-progress",
        "--debug",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    parts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        parts = list((out / "parts").glob("*.parquet")) if (out / "parts").exists() else []
        if parts:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = ScoresStore(out).load()
    assert 1 <= len(saved) < len(paths), "the kill must land midway (after at least one row, before the end)"
    assert not (out / "scores.parquet").exists()
    result = CliRunner().invoke(app, ["filter-videos", str(folder), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "scores.parquet").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(str(p.resolve()) for p in paths)
    by_path = {r["path"]: r for r in rows}
    for path, r in saved.items():
        assert by_path[path]["finished_at"] == r["finished_at"], "rows saved before the kill are not recomputed"
    assert "processed now" in result.output and f"({len(paths) - len(saved)} processed now)" in result.output


# ---------------------------------------------------------------- CLI end to end


def test_cli_end_to_end_debug_and_rescore(videos, tmp_path):
    bad = _bad_files(tmp_path / "bad", videos["static"])
    lst = tmp_path / "inputs.txt"
    lst.write_text("\n".join(str(p) for p in [*videos.values(), bad["zero.mp4"], bad["noise.mp4"]]) + "\n")
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["filter-videos", str(lst), "--out", str(out), "--debug", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "kept 1" in res.output and "error 2" in res.output
    rows = _rows(out)
    assert len(rows) == len(videos) + 2
    for r in rows.values():
        png = out / "debug" / debug_png_name(r["path"], r["content_hash"])
        assert png.exists() == (r["status"] != "error" and r["track_speed"] is not None), r["path"]
    assert (out / "debug" / "score_histogram.png").stat().st_size > 1000
    assert (out / "kept.txt").read_text().splitlines() == [str(videos["static_subject"].resolve())]

    # Rescore: a higher subject threshold rejects the kept video as static, without recomputing anything.
    finished = {k: r["finished_at"] for k, r in rows.items()}
    subject = rows["static_subject.mp4"]["subject_motion"]
    res = runner.invoke(app, ["filter-videos", "--out", str(out), "--rescore", "--threshold", str(subject * 2)])
    assert res.exit_code == 0, res.output
    rows2 = _rows(out)
    assert rows2["static_subject.mp4"]["reason"] == "static"
    assert json.loads(rows2["static_subject.mp4"]["settings"])["threshold"] == pytest.approx(subject * 2)
    assert {k: r["finished_at"] for k, r in rows2.items()} == finished
    assert rows2["zero.mp4"]["status"] == "error"
    assert (out / "kept.txt").read_text() == ""
    # Rescore with a camera threshold above the pan's motion keeps the pan + subject video.
    res = runner.invoke(
        app, ["filter-videos", "--out", str(out), "--rescore", "--camera-threshold", "1.0", "--threshold", "0.02"]
    )
    assert res.exit_code == 0, res.output
    rows3 = _rows(out)
    assert rows3["pan_subject.mp4"]["status"] == "kept" and rows3["static_subject.mp4"]["status"] == "kept"
    assert rows3["pan.mp4"]["reason"] == "static"

    res = runner.invoke(app, ["filter-videos", "--out", str(out), "--rescore", "--short-side", "128"])
    assert res.exit_code == 2 and "short_side" in res.output


def test_cli_rejects_bad_options(tmp_path, videos):
    runner = CliRunner()
    res = runner.invoke(app, ["filter-videos", str(videos["pan"]), "--out", str(tmp_path), "--segmenter", "sam"])
    assert res.exit_code == 2 and "--sam-checkpoint" in res.output
    res = runner.invoke(app, ["filter-videos", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "INPUT" in res.output
    res = runner.invoke(app, ["filter-videos", "--help"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "--camera-threshold" in res.output and "diagonals per second" in res.output


def test_workers_give_the_same_rows(videos, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    inputs = [videos[k] for k in ("static_subject", "pan", "static")]
    run_filter(inputs, one, FilterConfig(), workers=1, progress=False)
    run_filter(inputs, two, FilterConfig(), workers=2, progress=False)
    a, b = _rows(one), _rows(two)
    for k in a:
        assert (a[k]["status"], a[k]["reason"]) == (b[k]["status"], b[k]["reason"])
        assert a[k]["subject_motion"] == pytest.approx(b[k]["subject_motion"], rel=1e-5)


def test_synthetic_generator_is_deterministic_and_moves():
    a = synthesize_frames(SyntheticSpec("static_subject", seed=4))
    b = synthesize_frames(SyntheticSpec("static_subject", seed=4))
    assert np.array_equal(a, b) and a.shape == (48, 128, 160, 3)
    still = synthesize_frames(SyntheticSpec("static", seed=4, noise=0))
    assert np.array_equal(still[0], still[-1])
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1
    with pytest.raises(ValueError, match="unknown synthetic"):
        SyntheticSpec("dolly")


def test_scores_feed_build_shards_as_single_video_groups(scored, tmp_path):
    """The kept rows of scores.parquet become single_video rows with the filter's scores."""
    from syncam_data.shards.reader import ShardReader

    out, rows = scored
    res = CliRunner().invoke(
        app, ["build-shards", "--out", str(tmp_path / "shards"), "--videos", str(out / "scores.parquet")]
    )
    assert res.exit_code == 0, res.output
    table = ShardReader(tmp_path / "shards").filter(dataset="web").to_pylist()
    assert len(table) == 1
    row = table[0]
    kept = rows["static_subject"]
    assert row["kind"] == "single_video" and row["source_uri"] == kept["path"]
    assert row["subject_motion"] == pytest.approx(kept["subject_motion"])
    assert row["camera_motion"] == pytest.approx(kept["camera_motion"])


@pytest.mark.slow
def test_ray_engine_gives_the_same_rows(videos, tmp_path):
    """--engine ray (Ray Data: decode tasks, analysis actors) writes the same decisions, bad files included."""
    ray = pytest.importorskip("ray")
    bad = _bad_files(tmp_path / "bad", videos["static"])
    inputs = [videos["static_subject"], videos["pan"], bad["noise.mp4"], bad["zero.mp4"]]
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_filter(inputs, local, FilterConfig(), progress=False)
    try:
        from syncam_data.engine import ray_init

        ray_init(num_cpus=2)
        run_filter(inputs, remote, FilterConfig(), engine="ray", workers=1, progress=False, debug=True)
    finally:
        ray.shutdown()
    a, b = _rows(local), _rows(remote)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k]["status"], a[k]["reason"]) == (b[k]["status"], b[k]["reason"]), k
        if a[k]["subject_motion"] is not None:
            assert b[k]["subject_motion"] == pytest.approx(a[k]["subject_motion"], rel=1e-5)
    assert (remote / "debug" / debug_png_name(b["pan.mp4"]["path"], b["pan.mp4"]["content_hash"])).exists()


def _faststart_mp4(path: Path, frames: np.ndarray, fps: int = 24) -> bytes:
    """An mp4 with its index first (as streamed web video is), so a cut-off copy still opens."""
    import av

    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in stream.encode():
            c.mux(pkt)
    return path.read_bytes()


def test_truncated_download_is_an_error_not_a_short_video(tmp_path):
    data = _faststart_mp4(tmp_path / "full.mp4", synthesize_frames(SyntheticSpec("static_subject")))
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    run_filter([tmp_path / "full.mp4", tmp_path / "cut.mp4"], out, FilterConfig(), progress=False)
    rows = _rows(out)
    assert rows["full.mp4"]["status"] == "kept"
    cut = rows["cut.mp4"]
    assert (cut["status"], cut["reason"]) == ("error", "truncated") and "cut.mp4" in cut["error"]
    assert (cut["width"], cut["height"], cut["num_frames"]) == (160, 128, 48), "probed facts stay on the error row"

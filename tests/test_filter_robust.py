"""filter-videos on footage shaped like real failures (issue 16): robust camera score, re-seeded tracks,
measured coverage, duplicates in one run, truncated downloads, --debug output, subject motion under camera
motion, non-regular files and inputs that name no video."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.filter.debug import HISTOGRAM_FILE, debug_png_name, render_debug
from syncam_data.filter.decode import decode_clip
from syncam_data.filter.isobmff import truncation
from syncam_data.filter.run import run_filter
from syncam_data.filter.score import camera_motion, decide, score_tracks, subject_motion, weighted_trimmed_mean
from syncam_data.filter.segment import query_points
from syncam_data.filter.settings import FilterConfig
from syncam_data.filter.synthetic import SyntheticSpec, synthesize_frames, write_synthetic_video
from syncam_data.filter.track import LKTracker
from syncam_data.video import encode

REPO = Path(__file__).resolve().parents[1]
FAST_PAN = dict(seconds=3.0, pan_speed=4.0)  # 160x128 view panning 288 px in 3 s: every first-frame point leaves


def _rows(out: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in pq.read_table(out / "scores.parquet").to_pylist()}


def _cli(*args: str):
    return CliRunner().invoke(app, ["filter-videos", *args, "--no-progress"])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        # static camera + moving subjects; the scenery fades to flat in the last 15 %: few background points late
        "bgfade": write_synthetic_video(d / "bgfade.mp4", "static_subject", seed=1, seconds=3.0, fade_at=0.85),
        # static camera + moving subjects; everything fades to flat after 40 %: tracks lost midway, nothing to re-seed
        "picfade": write_synthetic_video(
            d / "picfade.mp4", "static_subject", seed=2, seconds=3.0, fade_at=0.4, fade="picture"
        ),
        "fastpan": write_synthetic_video(d / "fastpan.mp4", "pan", seed=3, **FAST_PAN),
        "subject": write_synthetic_video(d / "subject.mp4", "static_subject", seed=4),
        "pan": write_synthetic_video(d / "pan.mp4", "pan", seed=5),
    }


# ---------------------------------------------------------------- 1. robust camera score


def _drift_tracks(t_len=21, n=300, drift=(0.2, 0.0), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(20, 280, (n, 2))
    tracks = np.stack([base + t * np.asarray(drift) for t in range(t_len)]).astype(np.float32)
    return tracks, np.ones((t_len, n), bool)


def test_camera_score_ignores_pairs_fitted_on_a_few_points():
    """Two pairs where only 9 points survive, moving absurdly, and one glitch pair: the clip score stays the drift."""
    fps, w, h = 8.0, 300, 300
    tracks, visible = _drift_tracks()
    visible[18, 9:] = False  # only 9 tracks in frame 18 (pairs 17 and 18), and they jump 25 px there and back
    tracks[18, :9] += np.float32([25.0, 0.0])
    tracks[10 + 1 :] += np.float32(
        [0.0, 12.0]
    )  # one frame pair where everything jumps (a decoder glitch), well supported
    s = FilterConfig()
    ms = score_tracks(tracks, visible, np.zeros(300, np.int32), fps, w, h, s.ransac_threshold_px, s.min_support_points)
    drift = 0.2 * fps / np.hypot(w, h)
    assert ms.support_per_pair[17] == 9 and ms.support_per_pair[0] == 300
    assert ms.camera_per_pair[17] > 100 * drift, "the raw per-pair series keeps what was measured"
    d = decide(s, 640, 360, 3.0, 0.0, ms.camera_per_pair, ms.support_per_pair, ms.track_speed, ms.track_candidate)
    assert d.camera_motion == pytest.approx(drift, rel=0.02)
    assert d.measured_fraction == pytest.approx(18 / 20)
    # The plain mean over pairs (the old score) would have been several times the drift.
    assert np.nanmean(ms.camera_per_pair) > 5 * drift


def test_weighted_trimmed_mean():
    v, w = np.array([1.0, 2.0, 3.0, 100.0]), np.array([1.0, 1.0, 1.0, 1.0])
    assert weighted_trimmed_mean(v, w, 0.0) == pytest.approx(26.5)
    assert weighted_trimmed_mean(v, w, 0.25) == pytest.approx(2.5)
    assert weighted_trimmed_mean(v, w, 0.5) == pytest.approx(2.0)
    # Weights: a heavily supported value dominates, a weakly supported outlier is trimmed away.
    assert weighted_trimmed_mean(np.array([0.1, 9.0]), np.array([100.0, 5.0]), 0.25) == pytest.approx(0.1)
    cam, frac = camera_motion(np.array([np.nan, 0.5, 0.5]), np.array([0, 50, 3]), 8, 0.25)
    assert cam == pytest.approx(0.5) and frac == pytest.approx(1 / 3)


def test_few_background_points_late_in_the_clip_do_not_move_the_camera_score(clips, tmp_path):
    out = tmp_path / "out"
    run_filter([clips["bgfade"], clips["subject"]], out, FilterConfig(), progress=False)
    r = _rows(out)["bgfade.mp4"]
    assert (r["status"], r["reason"]) == ("kept", ""), (r["camera_motion"], r["measured_fraction"])
    assert r["camera_motion"] < 0.1 * FilterConfig().camera_threshold
    assert len(r["camera_motion_per_pair"]) == len(r["camera_support_per_pair"]) == r["analyzed_frames"] - 1
    assert r["measured_fraction"] >= 0.8


# ---------------------------------------------------------------- 2. re-seeding and coverage


def test_lk_reseeds_tracks_lost_midway(clips):
    clip = decode_clip(clips["fastpan"], 256, 8, 10)
    pts = query_points([], *clip.frames.shape[1:3], 24, 1)[0]
    lost = LKTracker(reseed_fraction=0).track(clip.frames, pts)
    assert lost.visible[-1].sum() < 8, "the failure: without re-seeding nothing is left at the end"
    kept = LKTracker(reseed_fraction=0.5).track(clip.frames, pts)
    live = kept.visible.sum(1)
    assert live.min() >= 0.4 * len(pts) and kept.num_seeded > 0
    assert kept.xy.shape[1] == len(pts) + kept.num_seeded and (kept.start[: len(pts)] == 0).all()
    for i in np.nonzero(kept.start)[0][:50]:  # a new track is not visible before the frame it was seeded on
        assert not kept.visible[: kept.start[i], i].any() and kept.visible[kept.start[i], i]


def test_reseeding_measures_the_whole_pan_and_min_coverage_rejects_what_is_not(clips, tmp_path):
    out = tmp_path / "out"
    res = _cli(str(clips["fastpan"]), "--out", str(out))
    assert res.exit_code == 0, res.output
    r = _rows(out)["fastpan.mp4"]
    expected = 4.0 * np.hypot(1.0, 0.3) * 24 / np.hypot(160, 128)  # pan speed in diagonals/s
    assert r["reason"] == "camera_moves" and r["measured_fraction"] == 1.0 and r["seeded_tracks"] > 0
    assert r["camera_motion"] == pytest.approx(expected, rel=0.03)
    # Without re-seeding, most pairs are unmeasured, and the row says so instead of deciding on the first second.
    res = _cli(str(clips["fastpan"]), "--out", str(tmp_path / "nors"), "--reseed-fraction", "0")
    assert res.exit_code == 0, res.output
    r = _rows(tmp_path / "nors")["fastpan.mp4"]
    assert r["reason"] == "unmeasured" and r["measured_fraction"] < 0.8 and r["seeded_tracks"] == 0


def test_clip_that_loses_its_texture_is_unmeasured_not_kept(clips, tmp_path):
    out = tmp_path / "out"
    res = _cli(str(clips["picfade"]), str(clips["subject"]), "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    r = rows["picfade.mp4"]
    assert (r["status"], r["reason"]) == ("rejected", "unmeasured") and 0.3 < r["measured_fraction"] < 0.6
    assert rows["subject.mp4"]["status"] == "kept" and rows["subject.mp4"]["measured_fraction"] == 1.0
    # --min-coverage is a decision: --rescore applies it to the stored measurements.
    res = CliRunner().invoke(app, ["filter-videos", "--out", str(out), "--rescore", "--min-coverage", "0.3"])
    assert res.exit_code == 0, res.output
    assert _rows(out)["picfade.mp4"]["status"] == "kept"
    assert json.loads(_rows(out)["picfade.mp4"]["settings"])["min_coverage"] == 0.3
    res = CliRunner().invoke(app, ["filter-videos", "--out", str(out), "--rescore", "--min-coverage", "1.5"])
    assert res.exit_code == 2 and "--min-coverage" in res.output


# ---------------------------------------------------------------- 3. duplicates inside one run


def test_identical_files_in_one_run_are_processed_once(clips, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(clips["subject"], folder / "a.mp4")
    shutil.copy(clips["subject"], folder / "sub" / "b_copy.mp4")
    shutil.copy(clips["pan"], folder / "pan.mp4")
    out = tmp_path / "out"
    res = _cli(str(folder), "--out", str(out), "--debug")
    assert res.exit_code == 0, res.output
    assert "(2 processed now, 1 duplicate(s) of other inputs)" in res.output
    rows = _rows(out)
    first, copy = rows["a.mp4"], rows["b_copy.mp4"]
    assert first["duplicate_of"] is None and copy["duplicate_of"] == first["path"]
    assert copy["content_hash"] == first["content_hash"] and copy["seconds"] == 0.0
    for k in ("status", "reason", "subject_motion", "camera_motion", "measured_fraction", "camera_motion_per_pair"):
        assert copy[k] == first[k], k
    assert (out / "kept.txt").read_text().splitlines() == [first["path"]]
    pngs = sorted(p.name for p in (out / "debug").glob("*.png") if p.name != HISTOGRAM_FILE)
    assert len(pngs) == 2, pngs  # analysed once: one image for the content, one for the pan
    # A later run with a third copy reuses the row, also marked as a duplicate; kept.txt still lists the content once.
    shutil.copy(clips["subject"], folder / "c.mp4")
    res = _cli(str(folder), "--out", str(out))
    assert res.exit_code == 0 and "(0 processed now" in res.output, res.output
    rows = _rows(out)
    assert rows["c.mp4"]["duplicate_of"] == first["path"]
    assert (out / "kept.txt").read_text().splitlines() == [first["path"]]


# ---------------------------------------------------------------- 4. truncated downloads


def _faststart(path: Path, frames: np.ndarray, fps: int = 24) -> bytes:
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in stream.encode():
            c.mux(pkt)
    return path.read_bytes()


def _top_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        out.append((kind, pos, size))
        pos += size
    return out


def test_index_at_end_mp4_cut_before_its_index_is_truncated(tmp_path):
    frames = synthesize_frames(SyntheticSpec("static_subject"))
    full = Path(encode(frames, tmp_path / "full.mp4", fps=24))  # our writer: index ('moov') after the media data
    data = full.read_bytes()
    boxes = {k: (pos, size) for k, pos, size in _top_boxes(data)}
    assert boxes[b"moov"][0] > boxes[b"mdat"][0], "the usual layout: index at the end"
    (tmp_path / "cut_in_mdat.mp4").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "cut_at_moov.mp4").write_bytes(data[: boxes[b"moov"][0]])  # every frame there, no index
    fast = _faststart(tmp_path / "fast.mp4", frames)
    fboxes = {k: (pos, size) for k, pos, size in _top_boxes(fast)}
    (tmp_path / "fast_cut_after_index.mp4").write_bytes(fast[: fboxes[b"mdat"][0]])
    out = tmp_path / "out"
    inputs = [
        tmp_path / n for n in ("full.mp4", "cut_in_mdat.mp4", "cut_at_moov.mp4", "fast.mp4", "fast_cut_after_index.mp4")
    ]
    run_filter(inputs, out, FilterConfig(), progress=False)
    rows = _rows(out)
    assert rows["full.mp4"]["status"] == rows["fast.mp4"]["status"] == "kept"
    for name, words in (
        ("cut_in_mdat.mp4", "inside the 'mdat' box"),
        ("cut_at_moov.mp4", "no index ('moov')"),
        ("fast_cut_after_index.mp4", "past the end of the file"),
    ):
        r = rows[name]
        assert (r["status"], r["reason"]) == ("error", "truncated"), (name, r["error"])
        assert name in r["error"] and words in r["error"], r["error"]
    assert rows["fast_cut_after_index.mp4"]["width"] == 160, "what the header says is kept on the row"


def test_truncation_reads_the_box_structure(tmp_path):
    data = Path(
        encode(synthesize_frames(SyntheticSpec("static", seconds=0.5)), tmp_path / "v.mp4", fps=24)
    ).read_bytes()
    p = tmp_path / "x.mp4"
    for blob, verdict in (
        (data, None),
        (data + b"\0" * 3, None),
        (data + b"\0" * 16, None),
        (data[:-1], "inside the 'moov' box"),
        (data + b"\0\0\0\x20mo", "inside a box header"),
        (b"this is not a video at all\n", None),
    ):
        p.write_bytes(blob)
        got = truncation(p)
        assert (got is None) if verdict is None else (verdict in got), (verdict, got)
    # A 64-bit box size (size field 1, then largesize): followed correctly.
    big = data[:0] + (1).to_bytes(4, "big") + b"free" + (16 + 4).to_bytes(8, "big") + b"\0" * 4
    p.write_bytes(big + data)
    assert truncation(p) is None
    p.write_bytes(big[:-2])
    assert "inside the 'free' box" in truncation(p)
    # Matroska (not ISO BMFF): nothing to say here, the decoder's frame count check covers it.
    mkv = tmp_path / "v.mkv"
    with av.open(str(mkv), "w", format="matroska") as c:
        st = c.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for f in np.zeros((3, 48, 64, 3), np.uint8):
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    assert truncation(mkv) is None


# ---------------------------------------------------------------- 5. --debug


def test_debug_pngs_carry_the_file_name_and_the_run_gets_a_histogram(clips, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clips["subject"], folder / "my clip (1).mp4")
    shutil.copy(clips["pan"], folder / "pan.mp4")
    out = tmp_path / "out"
    res = _cli(str(folder), "--out", str(out), "--debug")
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    r = rows["my clip (1).mp4"]
    png = out / "debug" / debug_png_name(r["path"], r["content_hash"])
    assert png.name.startswith("my_clip_1-") and png.exists()
    img = cv2.imread(str(png))
    # The first header line is the source file name: render it alone and compare that band of pixels.
    name_only = render_debug(
        np.zeros((r["analyzed_height"], r["analyzed_width"], 3), np.uint8),
        [],
        np.zeros((1, 0, 2)),
        np.zeros((1, 0), bool),
        np.zeros(0),
        0.02,
        ("my clip (1).mp4", ""),
    )
    assert img.shape[1] == name_only.shape[1]
    assert np.array_equal(img[:20], name_only[:20]), "the PNG's title must start with the source file name"
    assert img[20:42].max() > 0, "second header line: the decision and scores"
    hist = out / "debug" / HISTOGRAM_FILE
    before = hist.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(hist)).shape[1] > 600
    # --rescore --debug redraws it with the new thresholds.
    res = CliRunner().invoke(app, ["filter-videos", "--out", str(out), "--rescore", "--threshold", "0.1", "--debug"])
    assert res.exit_code == 0, res.output
    assert hist.read_bytes() != before


# ---------------------------------------------------------------- 6. subject motion under camera motion


def _project(points3d: np.ndarray, cam_x: float, f: float, c: tuple[float, float], yaw: float = 0.0) -> np.ndarray:
    """Pinhole projection of world points for a camera at (cam_x, 0, 0), turned by ``yaw`` about its y axis."""
    cy_, sy_ = np.cos(yaw), np.sin(yaw)
    rel = points3d - np.array([cam_x, 0.0, 0.0])
    x = cy_ * rel[:, 0] - sy_ * rel[:, 2]
    z = sy_ * rel[:, 0] + cy_ * rel[:, 2]
    return np.stack([f * x / z + c[0], f * rel[:, 1] / z + c[1]], 1)


def test_subject_score_is_the_subject_points_residual_and_parallax_follows_the_documented_formula():
    """A still object in front of the background, filmed by a sideways-moving (and turning) camera."""
    rng = np.random.default_rng(0)
    w, h, f, fps, t_len = 400, 300, 300.0, 8.0, 12
    zb, zo = 10.0, 4.0
    bg = np.c_[rng.uniform(-18, 18, 400), rng.uniform(-12, 12, 400), np.full(400, zb)]
    obj = np.c_[rng.uniform(-1, 1, 40), rng.uniform(-1, 1, 40), np.full(40, zo)]
    step = 0.02  # metres of sideways motion per sampled frame
    tracks = np.stack(
        [_project(np.r_[bg, obj], step * t, f, (w / 2, h / 2), yaw=0.004 * np.sin(t)) for t in range(t_len)]
    )
    tracks = tracks.astype(np.float32)
    # A flag waving in the background (outside every mask): 30 background points that move on their own.
    tracks[:, :30] += rng.normal(0, 1.5, (t_len, 30, 2)).astype(np.float32)
    visible = np.ones(tracks.shape[:2], bool)
    labels = np.r_[np.zeros(400), np.ones(40)].astype(np.int32)  # the segmenter marked the object as subject 1
    s = FilterConfig()
    ms = score_tracks(tracks, visible, labels, fps, w, h, s.ransac_threshold_px, s.min_support_points)
    assert ms.track_candidate.sum() == 40 and not ms.track_candidate[:400].any()
    assert np.isnan(ms.track_speed[:400]).all(), "background points are not measured as subject motion"
    d = decide(s, 640, 360, 2.0, 0.0, ms.camera_per_pair, ms.support_per_pair, ms.track_speed, ms.track_candidate)
    # Translation-only part of the camera motion: the background's image speed f * step / zb per frame.
    translation = f * step / zb * fps / np.hypot(w, h)
    assert d.subject_motion == pytest.approx(translation * (zb / zo - 1), rel=0.1), (
        "docs/filter-videos.md's parallax formula"
    )
    # Without masks (grid segmenter) every track is a candidate, so the waving flag counts as subject motion too.
    grid = score_tracks(
        tracks, visible, np.zeros(440, np.int32), fps, w, h, s.ransac_threshold_px, s.min_support_points
    )
    flag = subject_motion(grid.track_speed[:30], grid.track_candidate[:30], 50, 0.0, 1)
    assert flag > translation
    # Points seeded later (label 0, here 20 more on the object) never count as subject points when masks exist.
    more = np.concatenate([tracks, tracks[:, 400:420]], 1)
    ms2 = score_tracks(more, np.ones(more.shape[:2], bool), np.r_[labels, np.zeros(20, np.int32)], fps, w, h)
    assert ms2.track_candidate.sum() == 40 and not ms2.track_candidate[440:].any()


# ---------------------------------------------------------------- inputs: non-regular files, nothing to do


def test_fifo_and_device_inputs_become_error_rows_instead_of_hanging(clips, tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"{fifo}\n/dev/zero\n{clips['subject']}\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        "from syncam_data.cli import main; main()",
        "filter-videos",
        str(lst),
        "--out",
        str(out),
        "--no-progress",
        "--timeout",
        "60",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    assert (rows["pipe.mp4"]["status"], rows["pipe.mp4"]["reason"]) == ("error", "not_regular_file")
    assert "a FIFO" in rows["pipe.mp4"]["error"] and str(fifo) in rows["pipe.mp4"]["error"]
    assert rows["zero"]["reason"] == "not_regular_file" and "character device" in rows["zero"]["error"]
    assert rows["subject.mp4"]["status"] == "kept"


@pytest.mark.parametrize("layout", ["empty_folder", "no_videos_in_folder", "empty_list", "missing_path"])
def test_an_input_that_names_no_video_is_an_error(tmp_path, layout):
    if layout == "empty_folder":
        target = tmp_path / "web"
        target.mkdir()
    elif layout == "no_videos_in_folder":
        target = tmp_path / "web"
        target.mkdir()
        (target / "readme.txt").write_text("clips go here\n")
        (target / "frame.jpg").write_bytes(b"\xff\xd8")
    elif layout == "empty_list":
        target = tmp_path / "list.txt"
        target.write_text("# nothing yet\n\n")
    else:
        target = tmp_path / "web_vidoes"  # a typo
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["filter-videos", str(target), "--out", str(out), "--no-progress"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {target}: "), res.output
    expected = {"empty_list": "one path per line", "missing_path": "no such file or folder"}.get(layout, ".mp4")
    assert expected in lines[0], lines[0]
    assert not (out / "scores.parquet").exists()

"""filter-videos model adapters: CoTracker through torch.hub (local stand-in hub dir) and SAM plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.filter.debug import debug_png_name
from syncam_data.filter.decode import decode_clip
from syncam_data.filter.run import run_filter
from syncam_data.filter.segment import query_points
from syncam_data.filter.settings import FilterConfig
from syncam_data.filter.synthetic import EXPECTED_REASON, write_synthetic_set
from syncam_data.filter.track import CoTrackerTracker, LKTracker, load_cotracker

HUB = Path(__file__).resolve().parent / "cotracker_hub"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    return write_synthetic_set(
        tmp_path_factory.mktemp("synthetic"), kinds=("static_subject", "pan", "static", "pan_subject")
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A weights file for the stand-in: a 21 px window (the default is 15) proves it was loaded."""
    model = torch.hub.load(str(HUB), "cotracker3_offline", source="local", pretrained=False)
    state = model.model.state_dict()
    state["window"] = torch.tensor(21.0)
    path = tmp_path_factory.mktemp("ckpt") / "scaled_offline.pth"
    torch.save(state, path)
    return path


def test_load_cotracker_loads_the_checkpoint_into_model_model(checkpoint):
    model = load_cotracker(str(HUB), str(checkpoint))
    assert float(model.model.window) == 21.0
    assert not model.training


def test_load_cotracker_accepts_wrapped_training_checkpoints(checkpoint, tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": torch.load(checkpoint, weights_only=True), "step": 3}, wrapped)
    assert float(load_cotracker(str(HUB), str(wrapped)).model.window) == 21.0


def test_load_cotracker_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no hubconf.py"):
        load_cotracker(str(tmp_path), str(checkpoint))
    with pytest.raises(FileNotFoundError, match="--cotracker-checkpoint"):
        load_cotracker(str(HUB), str(tmp_path / "nope.pth"))
    bad = tmp_path / "other.pth"
    torch.save({"something_else": torch.zeros(2)}, bad)
    with pytest.raises(RuntimeError, match="does not match CoTracker entry"):
        load_cotracker(str(HUB), str(bad))


def test_cotracker_call_signature_and_shapes(videos, checkpoint):
    model = load_cotracker(str(HUB), str(checkpoint))
    clip = decode_clip(videos["pan"], 256, 8, 10)
    video = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)[None].float()
    tracks, vis = model(video, queries=None, segm_mask=None, grid_size=5, grid_query_frame=0, backward_tracking=False)
    t = len(clip.frames)
    assert tracks.shape == (1, t, 25, 2) and vis.shape == (1, t, 25) and vis.dtype == torch.bool
    pts = query_points([], *clip.frames.shape[1:3], grid_size=6, points_per_mask=1)[0]
    got = CoTrackerTracker(model, query_every=0).track(clip.frames, pts)
    out_tracks, out_vis = got.xy, got.visible
    assert out_tracks.shape == (t, 36, 2) and out_vis.shape == (t, 36) and out_vis.dtype == bool
    assert not got.start.any()
    assert np.allclose(out_tracks[0], pts)
    # The pan moves the scene left by 1.5 px per source frame (x3 stride): tracks must follow it.
    moved = out_tracks[1, out_vis[1]] - out_tracks[0, out_vis[1]]
    assert np.median(moved[:, 0]) == pytest.approx(-4.5, abs=0.3)


def test_cotracker_adapter_matches_lk_decisions(videos, checkpoint, tmp_path):
    """Same decisions (and close scores) whichever tracker produced the tracks."""
    lk_out, co_out = tmp_path / "lk", tmp_path / "co"
    inputs = list(videos.values())
    run_filter(inputs, lk_out, FilterConfig(), progress=False)
    s = FilterConfig(tracker="cotracker", cotracker_repo=str(HUB), cotracker_checkpoint=str(checkpoint))
    run_filter(inputs, co_out, s, progress=False)
    lk = {Path(r["path"]).stem: r for r in pq.read_table(lk_out / "scores.parquet").to_pylist()}
    co = {Path(r["path"]).stem: r for r in pq.read_table(co_out / "scores.parquet").to_pylist()}
    for kind in videos:
        assert co[kind]["reason"] == EXPECTED_REASON[kind] == lk[kind]["reason"], kind
        assert co[kind]["camera_motion"] == pytest.approx(lk[kind]["camera_motion"], rel=0.1, abs=1e-3)


def test_cli_with_cotracker(videos, checkpoint, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "filter-videos",
            str(videos["static_subject"]),
            "--out",
            str(out),
            "--tracker",
            "cotracker",
            "--cotracker-repo",
            str(HUB),
            "--cotracker-checkpoint",
            str(checkpoint),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "kept 1" in res.output
    # A misconfigured tracker stops the run before any video is touched, naming the problem.
    res = CliRunner().invoke(
        app,
        [
            "filter-videos",
            str(videos["pan"]),
            "--out",
            str(tmp_path / "o2"),
            "--tracker",
            "cotracker",
            "--cotracker-repo",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert res.exit_code == 1 and "hubconf.py" in res.output
    assert not (tmp_path / "o2" / "scores.parquet").exists()


@pytest.mark.slow
def test_unloadable_sam_checkpoint_gives_model_error_rows(videos, tmp_path):
    """A checkpoint file that is not SAM weights: every video is an error row that blames the model, not the video."""
    bad = tmp_path / "sam_vit_b.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "filter-videos",
            str(videos["static"]),
            "--out",
            str(out),
            "--segmenter",
            "sam",
            "--sam-checkpoint",
            str(bad),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    row = pq.read_table(out / "scores.parquet").to_pylist()[0]
    assert (row["status"], row["reason"]) == ("error", "model_error")
    assert "sam segmenter" in row["error"]


def test_lk_tracker_follows_a_translation():
    rng = np.random.default_rng(0)
    import cv2

    tex = cv2.GaussianBlur(rng.uniform(0, 255, (120, 160)).astype(np.float32), (0, 0), 2)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    frames = np.stack([np.repeat(np.roll(tex, 2 * i, axis=1)[..., None], 3, 2) for i in range(4)])
    pts = query_points([], 120, 160, 6, 1)[0]
    got = LKTracker().track(frames, pts)
    tracks, vis = got.xy, got.visible
    ok = vis[3]
    assert ok.sum() > 20
    assert np.allclose(tracks[3, ok] - pts[ok], [6.0, 0.0], atol=0.2)


@pytest.mark.slow
def test_sam_plumbing_vit_b_random_weights(videos, tmp_path):
    """SAM vit_b with random weights (checkpoint=None) through the real analysis path.

    Random weights give arbitrary masks: this checks the plumbing (mask types,
    point sampling inside masks, labels reaching the scorer, debug image), not quality.
    """
    from syncam_data.filter.segment import SamSegmenter
    from syncam_data.filter.stages import VideoItem, analyze_stage, base_row

    seg = SamSegmenter("vit_b", None, "cpu", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    calls = []

    class Recording:  # the real SAM segmenter; keeps what it returned for the assertions
        name = "sam"

        def segment(self, frame):
            masks = seg.segment(frame)
            calls.append((frame.shape, masks))
            return masks

    s = FilterConfig(segmenter="sam", sam_checkpoint="random-vit_b", grid_size=8, points_per_mask=6)
    clip = decode_clip(videos["static_subject"], 64, 8, 1.0)  # 80x64 frames, 8 of them
    item = VideoItem(str(videos["static_subject"]), "f" * 64, 1, 1)
    row = analyze_stage(base_row(item, s), clip, 0.0, s, lambda: None, tmp_path, models=(Recording(), LKTracker()))
    ((shape, masks),) = calls
    assert shape == clip.frames[0].shape
    for m in masks:
        assert m.shape == shape[:2] and m.dtype == bool
    assert [m.sum() for m in masks] == sorted((m.sum() for m in masks), reverse=True)
    subjects = [m for m in masks if m.mean() <= 0.4]
    assert row["num_masks"] == len(masks)
    assert len(row["track_speed"]) == len(row["track_candidate"]) > 0
    if subjects:  # points sampled inside subject masks are the subject candidates
        assert 0 < sum(row["track_candidate"]) <= 6 * len(subjects)
    else:
        assert all(row["track_candidate"])
    assert row["status"] in ("kept", "rejected") and (tmp_path / debug_png_name(item.path, item.content_hash)).exists()


def test_sam_missing_checkpoint_is_a_clear_error(tmp_path):
    from syncam_data.filter.segment import SamSegmenter

    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        SamSegmenter("vit_b", str(tmp_path / "sam_vit_b.pth"))
    with pytest.raises(ValueError, match="unknown SAM model"):
        SamSegmenter("vit_x", None)


def test_cotracker_from_the_torch_hub_cache(checkpoint, tmp_path):
    """No --cotracker-repo/--cotracker-checkpoint: the hub cache layout torch.hub itself uses."""
    import shutil

    old = torch.hub.get_dir()
    hub = tmp_path / "hub"
    shutil.copytree(HUB, hub / "facebookresearch_co-tracker_main")
    (hub / "checkpoints").mkdir()
    shutil.copy(checkpoint, hub / "checkpoints" / "scaled_offline.pth")
    torch.hub.set_dir(str(hub))
    try:
        assert float(load_cotracker(None, None).model.window) == 21.0
        (hub / "checkpoints" / "scaled_offline.pth").unlink()
        with pytest.raises(FileNotFoundError, match="--cotracker-checkpoint"):
            load_cotracker(None, None)
    finally:
        torch.hub.set_dir(old)


def test_cotracker_query_grids_keep_a_long_pan_measured(checkpoint, tmp_path):
    """Tracks lost midway (a fast pan): later query grids, as CoTracker is used on long clips, keep every pair measured."""
    from syncam_data.filter.synthetic import write_synthetic_video

    video = write_synthetic_video(tmp_path / "fastpan.mp4", "pan", seed=3, seconds=3.0, pan_speed=4.0)
    model = load_cotracker(str(HUB), str(checkpoint))
    clip = decode_clip(video, 256, 8, 10)
    pts = query_points([], *clip.frames.shape[1:3], grid_size=8, points_per_mask=1)[0]
    tracker = CoTrackerTracker(model, query_every=4, grid_size=8)
    got = tracker.track(clip.frames, pts)
    assert tracker.query_frames(len(clip.frames)) == [4, 8, 12, 16, 20]
    assert got.xy.shape[1] == 64 * 6 and sorted(set(got.start.tolist())) == [0, 4, 8, 12, 16, 20]
    for i in range(
        got.xy.shape[1]
    ):  # the stand-in, like CoTracker, returns something before a query's frame: not a track
        k = got.start[i]
        assert not got.visible[:k, i].any() and got.visible[k, i]
        assert np.allclose(got.xy[:k, i], got.xy[k, i])
    assert got.visible[:4, :64].any() and not got.visible[-1, :64].any(), "the first grid is lost by the end"

    expected = 4.0 * np.hypot(1.0, 0.3) * 24 / np.hypot(160, 128)
    base = dict(tracker="cotracker", cotracker_repo=str(HUB), cotracker_checkpoint=str(checkpoint))
    run_filter([video], tmp_path / "grids", FilterConfig(**base, cotracker_query_every=4), progress=False)
    run_filter([video], tmp_path / "first", FilterConfig(**base, cotracker_query_every=0), progress=False)
    grids = pq.read_table(tmp_path / "grids" / "scores.parquet").to_pylist()[0]
    first = pq.read_table(tmp_path / "first" / "scores.parquet").to_pylist()[0]
    assert grids["reason"] == "camera_moves" and grids["measured_fraction"] >= 0.9 and grids["seeded_tracks"] > 0
    assert grids["camera_motion"] == pytest.approx(expected, rel=0.05)
    assert first["reason"] == "unmeasured" and first["measured_fraction"] < 0.8

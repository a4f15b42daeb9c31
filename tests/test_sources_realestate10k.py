"""RealEstate10K: the real camera file, exported fixtures (images and video), sample-frames end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from syncam_data.cameras import Camera
from syncam_data.cli import app
from syncam_data.sources.export import export_realestate10k, realestate10k_timestamps
from syncam_data.sources.frameset import SourceError
from syncam_data.sources.realestate10k import (
    Re10kConfig,
    iter_sequence_refs,
    open_sequence,
    read_camera_file,
    timestamps_to_video_frames,
    youtube_id,
)
from tests.test_sources_scene import colour_at, image_error, luma, render, trajectory

FPS = 30000 / 1001
STRIDE = 3  # pose lines every 3rd video frame, like a subsampled copy (CameraCtrl's keep every 8th-9th; the original files every frame)
N_FRAMES = 40


@pytest.fixture(scope="module")
def scene() -> tuple[list[Camera], list[np.ndarray]]:
    cams = trajectory(N_FRAMES)
    return cams, [render(c) for c in cams]


def _export(root: Path, scene, seq: str, frames_as: str, **kw) -> Path:
    cams, frames = scene
    return export_realestate10k(root, seq, cams, frames, fps=FPS, frames_as=frames_as, pose_stride=STRIDE, **kw)


def run_cli(*args: str) -> None:
    res = CliRunner().invoke(app, ["sample-frames", "--no-progress", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def groups(out: Path) -> list[dict]:
    return [
        json.loads((p / "cameras.json").read_text())
        for p in sorted(out.iterdir())
        if p.is_dir() and not p.name.startswith(".")
    ]


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def assert_camera_equal(entry: dict, truth: Camera, tol: float = 1e-6) -> None:
    got = Camera.from_dict(entry)
    assert (got.width, got.height) == (truth.width, truth.height)
    np.testing.assert_allclose(got.intrinsics, truth.intrinsics, rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(got.c2w, truth.c2w, atol=tol)


def triangulate(a: Camera, b: Camera, ua: np.ndarray, ub: np.ndarray) -> np.ndarray:
    Pa, Pb = a.K @ a.w2c(), b.K @ b.w2c()
    X = cv2.triangulatePoints(Pa, Pb, ua.T.astype(np.float64), ub.T.astype(np.float64))
    return (X[:3] / X[3]).T


def check_two_view_consistency(out_group: Path, entries: list[dict]) -> None:
    """A scene point seen in two stored views: same colour in both images and triangulates back to itself."""
    a, b = Camera.from_dict(entries[0]), Camera.from_dict(entries[-1])
    img_a, img_b = read_rgb(out_group / entries[0]["image"]), read_rgb(out_group / entries[-1]["image"])
    pts = np.array([[0.3, 0.2, 0.0], [-0.2, 0.5, 0.0], [0.6, -0.1, 0.0], [0.0, 0.0, 0.0]])
    ua, za = a.project(pts)
    ub, zb = b.project(pts)
    assert (za > 0).all() and (zb > 0).all()
    np.testing.assert_allclose(triangulate(a, b, ua, ub), pts, atol=1e-6)
    # Luma at the two projections agrees, and matches the scene's texture at that point.
    la, lb, truth = sample_luma(img_a, ua), sample_luma(img_b, ub), luma(colour_at(pts))
    assert np.abs(la - lb).max() < 20, (la, lb)
    assert np.abs(la - truth).max() < 20, (la, truth)


def sample_luma(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear luma at continuous pixel coordinates (OpenCV samples at integer centres: shift by 0.5)."""
    m = (uv - 0.5).astype(np.float32).reshape(-1, 1, 2)
    y = luma(image).astype(np.float32)
    return cv2.remap(y, m[..., 0], m[..., 1], cv2.INTER_LINEAR).reshape(-1).astype(np.float64)


# --- the real file ------------------------------------------------------------------------


def test_real_camera_file_is_read_correctly(fixtures_dir):
    path = fixtures_dir / "realestate10k" / "0bf152ef84195293.txt"
    cf = read_camera_file(path)
    assert cf.url == "https://www.youtube.com/watch?v=QShWPZxTDoE"
    assert youtube_id(cf.url) == "QShWPZxTDoE"
    assert len(cf) == 16
    assert cf.timestamps_us[0] == 158692025 and cf.timestamps_us[1] == 158958959
    assert np.all(np.diff(cf.timestamps_us) > 0)
    # CameraCtrl's copy is subsampled: lines are 8-9 video frames apart at 29.97 fps.
    steps = np.diff(cf.timestamps_us) * FPS / 1e6
    assert np.all((steps > 7.5) & (steps < 9.5))
    cam = cf.camera(0, 640, 360)
    np.testing.assert_allclose(cam.intrinsics, (0.474812461 * 640, 0.844111024 * 360, 320.0, 180.0))
    np.testing.assert_allclose(cam.field_of_view()[0], 92.99, atol=0.05)  # a wide real-estate lens
    w2c0 = np.array(
        [
            0.780003667,
            0.059620168,
            -0.622928321,
            0.726968666,
            -0.062449891,
            0.997897983,
            0.017311305,
            0.217967188,
            0.622651041,
            0.025398925,
            0.782087326,
            -1.002211444,
        ]
    ).reshape(3, 4)
    np.testing.assert_allclose(cf.w2c[0], w2c0)
    for i in range(len(cf)):
        c = cf.camera(i, 640, 360)
        c.validate(tol=1e-9)
        assert np.linalg.det(c.R) == pytest.approx(1.0, abs=1e-9)
        # c2w is the inverse of the file's world-to-camera.
        m = np.vstack([cf.w2c[i], [0, 0, 0, 1]]) @ c.c2w_4x4()
        np.testing.assert_allclose(m, np.eye(4), atol=2e-6)
    assert cf.raw(3)["line"] == 5


def test_real_file_through_sampler_with_video_frame_gap(fixtures_dir, tmp_path):
    """The real file with images named by its timestamps: sets obey the gap in video frames."""
    cf = read_camera_file(fixtures_dir / "realestate10k" / "0bf152ef84195293.txt")
    root = tmp_path / "re10k" / "test"
    root.mkdir(parents=True)
    (root / "0bf152ef84195293.txt").write_text((fixtures_dir / "realestate10k" / "0bf152ef84195293.txt").read_text())
    (root / "0bf152ef84195293").mkdir()
    for ts in cf.timestamps_us:
        cv2.imwrite(str(root / "0bf152ef84195293" / f"{ts}.jpg"), np.full((36, 64, 3), 128, np.uint8))
    out = tmp_path / "out"
    run_cli(
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "re10k"),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "40",
        "--sets-per-sequence",
        "3",
        "--min-angle",
        "3",
    )
    gs = groups(out)
    assert len(gs) == 3
    for g in gs:
        ts = [c["timestamp_us"] for c in g["cameras"]]
        assert (ts[-1] - ts[0]) * FPS / 1e6 <= 40.5
        vf = [c["video_frame"] for c in g["cameras"]]
        assert vf == [round(t * FPS / 1e6) for t in ts] and vf[-1] - vf[0] <= 40
        assert [c["timestamp_us"] for c in g["cameras"]] == [int(cf.timestamps_us[i]) for i in g["frame_indices"]]
        assert_camera_equal(g["cameras"][0], cf.camera(g["frame_indices"][0], 64, 36))


# --- exported fixtures -------------------------------------------------------------------------


def test_export_round_trip(tmp_path, scene):
    cams, _ = scene
    txt = _export(tmp_path, scene, "seqA", "images")
    cf = read_camera_file(txt)
    ts = realestate10k_timestamps(N_FRAMES, FPS)
    assert len(cf) == len(range(0, N_FRAMES, STRIDE))
    for p in range(len(cf)):
        assert cf.timestamps_us[p] == ts[p * STRIDE]
        assert (tmp_path / "seqA" / f"{ts[p * STRIDE]}.png").is_file()
        c = cf.camera(p, 64, 48)
        np.testing.assert_allclose(c.c2w, cams[p * STRIDE].c2w, atol=1e-8)
        np.testing.assert_allclose(c.intrinsics, cams[p * STRIDE].intrinsics, atol=1e-6)


@pytest.mark.parametrize("frames_as", ["images", "video"])
def test_sample_frames_cameras_equal_ground_truth(tmp_path, scene, frames_as):
    cams, _ = scene
    root = tmp_path / "RealEstate10K" / "train"
    _export(root, scene, "seq00", frames_as)
    out = tmp_path / "sets"
    run_cli(
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "RealEstate10K"),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "24",
        "--sets-per-sequence",
        "3",
        "--min-angle",
        "4",
        "--image-format",
        "png",
        "--seed",
        "7",
    )
    report = json.loads((out / "sample_report.json").read_text())
    assert report["totals"]["sets_written"] == 3, report
    ts = realestate10k_timestamps(N_FRAMES, FPS)
    gs = groups(out)
    assert [g["group_id"] for g in gs] == ["seq00_s000", "seq00_s001", "seq00_s002"]
    for g in gs:
        assert g["source"] == "realestate10k" and g["sequence"] == "seq00"
        assert g["source_uri"].endswith("train/seq00.txt")
        assert g["frames_from"] == frames_as
        fi = g["frame_indices"]
        assert fi == sorted(fi) and len(set(fi)) == 3
        assert (fi[-1] - fi[0]) * STRIDE <= 24  # max gap counted in video frames
        folder = out / g["group_id"]
        assert sorted(p.name for p in folder.iterdir()) == ["cameras.json", "v00.png", "v01.png", "v02.png"]
        for k, entry in enumerate(g["cameras"]):
            video_frame = fi[k] * STRIDE
            assert entry["id"] == f"v{k:02d}" and entry["image"] == f"v{k:02d}.png"
            assert entry["frame_index"] == fi[k]
            assert entry["timestamp_us"] == ts[video_frame]
            assert entry["video_frame"] == video_frame
            assert entry["raw"]["convention"] == "realestate10k_w2c" and len(entry["raw"]["w2c"]) == 12
            assert_camera_equal(entry, cams[video_frame])
            # The stored image is the view of the stored camera (H.264 costs a few grey levels).
            err = image_error(read_rgb(folder / entry["image"]), cams[video_frame])
            assert err < (6.0 if frames_as == "video" else 1.0), (entry["id"], err)
            # ...and not the neighbouring video frame's view: frame matching by timestamp is exact.
            assert (
                image_error(
                    read_rgb(folder / entry["image"]),
                    cams[video_frame + 1 if video_frame + 1 < N_FRAMES else video_frame - 1],
                )
                > err + 4
            )
        check_two_view_consistency(folder, g["cameras"])


def test_max_size_resizes_images_and_intrinsics(tmp_path, scene):
    cams, _ = scene
    _export(tmp_path / "root", scene, "seqS", "images")
    out = tmp_path / "out"
    run_cli(
        "--source",
        "realestate10k",
        "--root",
        str(tmp_path / "root"),
        "--out",
        str(out),
        "--views",
        "2",
        "--max-size",
        "32",
        "--image-format",
        "png",
    )
    (g,) = groups(out)
    for entry in g["cameras"]:
        img = read_rgb(out / g["group_id"] / entry["image"])
        assert img.shape == (24, 32, 3)
        truth = cams[entry["frame_index"] * STRIDE].resized(32, 24)
        assert_camera_equal(entry, truth)
        assert image_error(img, truth) < 4.0


def test_relative_video_time_and_gap_unit_index(tmp_path, scene):
    """A video cut to the sequence (starts at the first timestamp) and --gap-unit index."""
    cams, frames = scene
    root = tmp_path / "root"
    export_realestate10k(root, "cut", cams[9:], frames[9:], fps=FPS, frames_as="video", pose_stride=STRIDE)
    # Shift the camera file's timestamps as if the clip started 100 s into the YouTube video.
    txt = root / "cut.txt"
    lines = txt.read_text().splitlines()
    shifted = [lines[0]] + [" ".join([str(int(ln.split()[0]) + 100_000_000)] + ln.split()[1:]) for ln in lines[1:]]
    txt.write_text("\n".join(shifted) + "\n")
    out = tmp_path / "out"
    run_cli(
        "--source",
        "realestate10k",
        "--root",
        str(root),
        "--out",
        str(out),
        "--views",
        "3",
        "--gap-unit",
        "index",
        "--max-gap",
        "3",
        "--sets-per-sequence",
        "2",
        "--image-format",
        "png",
    )
    gs = groups(out)
    assert len(gs) == 2
    for g in gs:
        assert g["frame_indices"][-1] - g["frame_indices"][0] <= 3
        assert g["sampling"]["gap_unit"] == "index"
        for entry in g["cameras"]:
            truth = cams[9 + entry["frame_index"] * STRIDE]
            assert_camera_equal(entry, truth)
            assert image_error(read_rgb(out / g["group_id"] / entry["image"]), truth) < 6.0


def test_timestamps_to_video_frames_modes():
    ts = np.array([1_000_000, 1_300_000, 1_600_000])
    idx, mode = timestamps_to_video_frames(ts, 10.0, 20, "auto", "v.mp4")
    assert mode == "absolute" and idx.tolist() == [10, 13, 16]
    idx, mode = timestamps_to_video_frames(ts, 10.0, 12, "auto", "v.mp4")
    assert mode == "relative" and idx.tolist() == [0, 3, 6]
    with pytest.raises(SourceError, match="do not fit the video"):
        timestamps_to_video_frames(ts, 10.0, 5, "auto", "v.mp4")
    # Half a frame past the last frame's start still is the last frame.
    idx, _ = timestamps_to_video_frames(np.array([0, 1_960_000]), 10.0, 20, "absolute", "v.mp4")
    assert idx.tolist() == [0, 19]


def test_discovery_streams_and_skips_frame_folders(tmp_path, scene):
    for split in ("train", "test"):
        _export(tmp_path / split, scene, f"s_{split}", "images")
    refs = iter_sequence_refs(tmp_path)
    assert not isinstance(refs, list)  # a generator: nothing is read until asked
    got = [(r.sequence_id, r.rel_dir) for r in refs]
    assert got == [("s_test", "test"), ("s_train", "train")]


def test_frames_dir_and_videos_dir_layouts(tmp_path, scene):
    cams, _ = scene
    _export(tmp_path / "frames" / "train", scene, "seqF", "images")
    _export(tmp_path / "videos", scene, "seqV", "video")
    cams_root = tmp_path / "cams" / "train"
    cams_root.mkdir(parents=True)
    for name, src in (("seqF", tmp_path / "frames" / "train"), ("seqV", tmp_path / "videos")):
        (cams_root / f"{name}.txt").write_text((src / f"{name}.txt").read_text())
    opts = Re10kConfig(frames_dir=str(tmp_path / "frames"), videos_dir=str(tmp_path / "videos"))
    refs = {r.sequence_id: r for r in iter_sequence_refs(tmp_path / "cams")}
    f = open_sequence(refs["seqF"], opts)
    v = open_sequence(refs["seqV"], opts)
    assert f.frames_kind == "images" and f.frames_path == tmp_path / "frames" / "train" / "seqF"
    assert v.frames_kind == "video" and v.frames_path == tmp_path / "videos" / "seqV.mp4"
    assert v.video_frames.tolist() == list(range(0, N_FRAMES, STRIDE))
    frames = v.load_frames([2])
    assert image_error(frames[2].image, cams[6]) < 6.0

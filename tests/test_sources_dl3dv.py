"""DL3DV-10K: exported scenes (images_N, nerfstudio/ sub-folder, distortion, applied_transform) through sample-frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from syncam_data.cameras import Camera, relative_poses
from syncam_data.sources.dl3dv import Dl3dvConfig, iter_scene_refs, open_scene, read_transforms
from syncam_data.sources.export import export_dl3dv
from syncam_data.sources.frameset import SourceError
from tests.test_sources_realestate10k import assert_camera_equal, check_two_view_consistency, groups, read_rgb, run_cli
from tests.test_sources_scene import image_error, render, trajectory

N = 16
W, H = 128, 96
DIST = {"k1": -0.25, "k2": 0.06, "p1": 0.002, "p2": -0.001}
# nerfstudio's COLMAP import: world axes permuted (x, z, -y), a rotation.
APPLIED = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]])


@pytest.fixture(scope="module")
def scene() -> tuple[list[Camera], list[np.ndarray]]:
    cams = trajectory(N, W, H, deg_per_frame=2.0)
    return cams, [render(c) for c in cams]


def test_export_layout_and_rescaled_intrinsics(tmp_path, scene):
    cams, frames = scene
    folder = export_dl3dv(tmp_path / "1K", "a" * 64, cams, frames, nerfstudio_subfolder=True)
    assert folder == tmp_path / "1K" / ("a" * 64) / "nerfstudio"
    meta = json.loads((folder / "transforms.json").read_text())
    assert (meta["w"], meta["h"]) == (W, H) and meta["frames"][0]["file_path"] == "images/frame_00001.png"
    for sub, size in (("images", (96, 128)), ("images_2", (48, 64)), ("images_4", (24, 32)), ("images_8", (12, 16))):
        assert read_rgb(folder / sub / "frame_00016.png").shape[:2] == size
    # The stored pose is the OpenGL c2w: camera -z is the canonical optical axis.
    gl = np.array(meta["frames"][3]["transform_matrix"])
    np.testing.assert_allclose(-gl[:3, 2], cams[3].forward, atol=1e-12)
    tr = read_transforms(folder / "transforms.json")
    assert tr.frame_numbers.tolist() == list(range(1, N + 1))
    np.testing.assert_allclose(tr.c2w[5], cams[5].c2w, atol=1e-12)
    assert_camera_equal(tr.intrinsics[0].camera(16, 12, tr.c2w[0]).to_dict(), cams[0].resized(16, 12))


@pytest.mark.parametrize("folder,size", [("images_2", (64, 48)), ("images_4", (32, 24))])
def test_sample_frames_cameras_equal_ground_truth(tmp_path, scene, folder, size):
    cams, frames = scene
    export_dl3dv(tmp_path / "DL3DV-10K" / "1K", "scene01", cams, frames, nerfstudio_subfolder=True)
    export_dl3dv(tmp_path / "DL3DV-10K" / "2K", "scene02", cams[:8], frames[:8])
    out = tmp_path / "sets"
    run_cli(
        "--source",
        "dl3dv",
        "--root",
        str(tmp_path / "DL3DV-10K"),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "6",
        "--sets-per-sequence",
        "2",
        "--min-angle",
        "3",
        "--image-folder",
        folder,
        "--image-format",
        "png",
    )
    gs = groups(out)
    assert {g["sequence"] for g in gs} == {"scene01", "scene02"}
    assert len(gs) == 4
    for g in gs:
        assert g["source"] == "dl3dv" and g["image_folder"] == folder
        assert (
            g["source_uri"].endswith("1K/scene01/nerfstudio")
            if g["sequence"] == "scene01"
            else g["source_uri"].endswith("2K/scene02")
        )
        fi = g["frame_indices"]
        assert fi[-1] - fi[0] <= 6 and min(fi) >= 1  # 1-based frame file numbers
        for k, entry in enumerate(g["cameras"]):
            assert entry["frame_index"] == fi[k] and "timestamp_us" not in entry
            assert (
                entry["raw"]["convention"] == "opengl_c2w"
                and entry["raw"]["file_path"] == f"images/frame_{fi[k]:05d}.png"
            )  # as written in transforms.json
            truth = cams[fi[k] - 1].resized(*size)
            assert_camera_equal(entry, truth)
            assert image_error(read_rgb(out / g["group_id"] / entry["image"]), truth) < 4.0
        check_two_view_consistency(out / g["group_id"], g["cameras"])


def test_distortion_is_undistorted_onto_the_pinhole_camera(tmp_path, scene):
    cams, frames = scene
    export_dl3dv(tmp_path / "root", "dist", cams, frames, distortion=DIST)
    meta = json.loads((tmp_path / "root" / "dist" / "transforms.json").read_text())
    assert meta["k1"] == DIST["k1"] and meta["p2"] == DIST["p2"]
    out_u, out_d = tmp_path / "undistorted", tmp_path / "distorted"
    common = [
        "--source",
        "dl3dv",
        "--root",
        str(tmp_path / "root"),
        "--views",
        "2",
        "--image-folder",
        "images_2",
        "--image-format",
        "png",
    ]
    run_cli(*common, "--out", str(out_u))
    run_cli(*common, "--out", str(out_d), "--no-undistort")
    (gu,), (gd,) = groups(out_u), groups(out_d)
    assert gu["frame_indices"] == gd["frame_indices"]  # same seed, same sets
    assert gu["undistorted"] is True and gd["undistorted"] is False
    (rep,) = json.loads((out_d / "sample_report.json").read_text())["sequences"]
    assert "kept distorted" in rep["warnings"][0]
    for eu, ed in zip(gu["cameras"], gd["cameras"]):
        truth = cams[eu["frame_index"] - 1].resized(64, 48)
        assert_camera_equal(eu, truth)
        assert "distortion" not in eu and ed["distortion"]["k1"] == DIST["k1"]
        err_u = image_error(read_rgb(out_u / gu["group_id"] / eu["image"]), truth, border=4)
        err_d = image_error(read_rgb(out_d / gd["group_id"] / ed["image"]), truth, border=4)
        assert err_u < 4.0, err_u
        assert err_d > err_u + 3.0, (err_d, err_u)  # the distortion is real and undistortion removes it


def test_applied_transform_keep_and_undo(tmp_path, scene):
    cams, frames = scene
    export_dl3dv(tmp_path / "root", "applied", cams, frames, applied_transform=APPLIED)
    ref = next(iter_scene_refs(tmp_path / "root"))
    keep = open_scene(ref, Dl3dvConfig(applied_transform="keep"))
    undo = open_scene(ref, Dl3dvConfig(applied_transform="undo"))
    truth = np.stack([c.c2w for c in cams])
    np.testing.assert_allclose(undo.c2w, truth, atol=1e-12)
    A = np.vstack([APPLIED, [0, 0, 0, 1]])
    np.testing.assert_allclose(keep.c2w[4], (A @ cams[4].c2w_4x4())[:3], atol=1e-12)
    assert not np.allclose(keep.c2w, truth, atol=1e-3)
    # A rigid change of world: poses relative to view 0 are identical either way.
    np.testing.assert_allclose(relative_poses(keep.c2w), relative_poses(truth), atol=1e-12)
    assert keep.header()["applied_transform"]["mode"] == "keep"


def test_discovery_finds_subsets_and_nerfstudio_folders(tmp_path, scene):
    cams, frames = scene
    export_dl3dv(tmp_path / "1K", "s1", cams[:4], frames[:4], downscales=(8,))
    export_dl3dv(tmp_path / "2K", "s2", cams[:4], frames[:4], downscales=(8,), nerfstudio_subfolder=True)
    (tmp_path / "notes").mkdir()
    refs = list(iter_scene_refs(tmp_path))
    assert [(r.sequence_id, Path(r.path).relative_to(tmp_path).as_posix()) for r in refs] == [
        ("s1", "1K/s1"),
        ("s2", "2K/s2/nerfstudio"),
    ]
    # Only images_8 exists: auto falls back to it; asking for a missing folder names the file.
    assert open_scene(refs[0], Dl3dvConfig()).image_dir.name == "images_8"
    with pytest.raises(SourceError, match="transforms.json: no image folder"):
        open_scene(refs[0], Dl3dvConfig(image_folder="images_2"))


def test_bad_transforms_name_file_and_frame(tmp_path, scene):
    cams, frames = scene
    folder = export_dl3dv(tmp_path, "bad", cams[:4], frames[:4], downscales=(8,))
    meta = json.loads((folder / "transforms.json").read_text())
    m = np.array(meta["frames"][2]["transform_matrix"])
    m[:3, :3] *= 1.2  # scaled, not a rotation
    meta["frames"][2]["transform_matrix"] = m.tolist()
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(
        SourceError, match=r"transforms.json: frames\[2\]: transform_matrix rotation is not orthonormal"
    ):
        read_transforms(folder / "transforms.json")

"""SceneOutput (Contract 2 scene folders): streaming writes, validation, completeness and the reprojection check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from syncam_data.cameras import Camera, look_at, read_cameras_json
from syncam_data.render.output import SceneOutput, is_complete_scene, load_npz_array, reprojection_check
from syncam_data.video import decode, probe
from tests.conftest import smooth_frames


def _cam(w: int = 33, h: int = 21) -> Camera:
    return Camera(w, h, 30.0, 30.0, w / 2, h / 2, look_at((4.0, 0.0, 1.0), (0.0, 0.0, 1.0)))


def test_streams_frames_to_contract2_folder(tmp_path):
    frames = smooth_frames(6, 21, 33)
    out = SceneOutput(tmp_path / "s", fps=12.0)
    for cid in ("cam00", "cam01"):
        out.add_camera(cid, _cam(), raw={"convention": "test"})
    for k in range(6):
        for i, cid in enumerate(("cam00", "cam01")):
            depth = np.full((21, 33), 2.0 + k + i, np.float32)
            depth[0, 0] = np.inf
            depth[0, 1] = 1e6  # beyond float16: stored as inf ("empty"), never as a finite wrong value
            out.add_frame(cid, frames[k], depth, np.full((21, 33), i + 1, np.uint8))
    # nothing final is visible before finish: only the work folder
    assert not is_complete_scene(tmp_path / "s") and not (tmp_path / "s" / "videos").exists()
    out.finish({"scene_id": "s", "caption": "c"})
    root = tmp_path / "s"
    assert is_complete_scene(root) and not (root / SceneOutput.WORK).exists()
    info = probe(root / "videos" / "cam01.mp4", count_frames=True)
    assert (info.num_frames, info.fps, info.codec) == (6, 12.0, "h264")
    video = decode(root / "videos" / "cam00.mp4")[:, :21, :33].astype(int)
    assert np.abs(video - frames).mean() < 4  # H.264 at crf 18
    d = load_npz_array(root / "depth" / "cam01.npz", "depth")
    assert d.dtype == np.float16 and d.shape == (6, 21, 33)
    assert np.isinf(d[:, 0, :2]).all() and np.allclose(d[:, 5, 5], 3.0 + np.arange(6))
    ids = load_npz_array(root / "masks" / "cam00.npz", "ids")
    assert ids.dtype == np.uint8 and ids.shape == (6, 21, 33) and (ids == 1).all()
    cams = read_cameras_json(root / "cameras.json")
    assert [c[0] for c in cams] == ["cam00", "cam01"] and cams[0][2]["raw"] == {"convention": "test"}
    assert np.allclose(cams[0][1].c2w, _cam().c2w)
    assert json.loads((root / "scene.json").read_text())["caption"] == "c"


def test_rejects_unsynchronized_and_malformed_frames(tmp_path):
    out = SceneOutput(tmp_path / "s", fps=24.0, depth_dtype="float32")
    out.add_camera("a", _cam())
    out.add_camera("b", _cam())
    with pytest.raises(ValueError, match="expected uint8 RGB 21x33x3"):
        out.add_frame("a", np.zeros((20, 33, 3), np.uint8))
    with pytest.raises(ValueError, match="depth shape"):
        out.add_frame("a", np.zeros((21, 33, 3), np.uint8), depth=np.zeros((21, 32)))
    with pytest.raises(ValueError, match="not added"):
        out.add_frame("c", np.zeros((21, 33, 3), np.uint8))
    with pytest.raises(ValueError, match="added twice"):
        out.add_camera("a", _cam())
    out.add_frame("a", np.zeros((21, 33, 3), np.uint8))
    out.add_frame("a", np.zeros((21, 33, 3), np.uint8))
    out.add_frame("b", np.zeros((21, 33, 3), np.uint8))
    with pytest.raises(ValueError, match="not synchronized"):
        out.finish({})
    assert not is_complete_scene(tmp_path / "s")


def test_incomplete_folders_are_not_complete(tmp_path):
    root = tmp_path / "s"
    out = SceneOutput(root, fps=24.0)
    out.add_camera("a", _cam())
    out.add_frame("a", np.zeros((21, 33, 3), np.uint8))
    out.finish({})
    assert is_complete_scene(root)
    (root / "videos" / "a.mp4").unlink()
    assert not is_complete_scene(root)
    (root / "cameras.json").write_text("{broken")
    assert not is_complete_scene(root)


def _synthetic_scene(tmp_path, cams):
    """A textured ground plane z=0 and a sphere, ray-cast analytically (exact z-depth and colour) for each camera."""
    centre, radius = np.array([0.0, 0.0, 0.8]), 0.8
    out = SceneOutput(tmp_path / "syn", fps=24.0, depth_dtype="float32")
    for cid, cam in cams:
        out.add_camera(cid, cam)
        uv = cam.pixel_grid().reshape(-1, 2)
        # rays scaled so that their camera-z component is 1: the ray parameter is the z-depth
        rays = np.stack([(uv[:, 0] - cam.cx) / cam.fx, (uv[:, 1] - cam.cy) / cam.fy, np.ones(len(uv))], -1) @ cam.R.T
        t_ground = np.where(-cam.t[2] / rays[:, 2] > 0, -cam.t[2] / rays[:, 2], np.inf)
        oc = cam.t - centre
        a, b, c = (rays * rays).sum(1), 2 * rays @ oc, oc @ oc - radius**2
        disc = b * b - 4 * a * c
        t_sphere = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
        t_sphere = np.where(t_sphere > 0, t_sphere, np.inf)
        z = np.minimum(t_ground, t_sphere)
        hit = np.isfinite(z)
        pts = cam.t + np.where(hit, z, 0)[:, None] * rays
        col = np.zeros((len(uv), 3))
        col[hit] = 128 + 100 * np.stack(
            [np.sin(pts[hit, 0] * 0.7), np.cos(pts[hit, 1] * 0.7), np.sin(2 * pts[hit, 2])], -1
        )
        out.add_frame(cid, col.reshape(cam.height, cam.width, 3).astype(np.uint8), z.reshape(cam.height, cam.width))
    out.finish({})
    return tmp_path / "syn"


def test_reprojection_check_accepts_true_cameras_and_rejects_wrong_ones(tmp_path):
    w, h = 96, 64
    cams = [
        (f"c{i}", Camera(w, h, 70.0, 70.0, 48.0, 32.0, look_at((5 * np.cos(a), 5 * np.sin(a), 2.5), (0, 0, 0))))
        for i, a in enumerate([0.0, 0.5, 1.2])
    ]
    folder = _synthetic_scene(tmp_path, cams)
    good = reprojection_check(folder)
    assert len(good) == 6
    assert min(v["agree"] for v in good.values()) > 0.99
    assert max(v["colour_err"] for v in good.values()) < 8
    assert max(v["depth_err"] for v in good.values()) < 0.01
    shifted = [(cid, Camera(w, h, c.fx, c.fy, c.cx + 4, c.cy, c.c2w)) for cid, c in cams]
    assert min(v["agree"] for v in reprojection_check(folder, cameras=shifted).values()) < 0.95
    flipped = [
        (cid, Camera(w, h, c.fx, c.fy, c.cx, c.cy, np.hstack([c.R @ np.diag([1.0, -1.0, -1.0]), c.t[:, None]])))
        for cid, c in cams
    ]
    assert min(v["agree"] for v in reprojection_check(folder, cameras=flipped).values()) < 0.5

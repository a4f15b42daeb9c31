"""Contract 1: the canonical camera and every conversion, against known vectors and real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from syncam_data import cameras as C

S = np.diag([1.0, -1.0, 1.0])


def ue_point_to_world(p_cm):
    """A UE world point (left-handed, cm) in our world (right-handed, metres)."""
    return S @ np.asarray(p_cm, float) / 100.0


def assert_rotation(R):
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)


# --- Unreal Engine ----------------------------------------------------------


@pytest.mark.parametrize("pyr", [(0, 0, 0), (10, 30, 0), (-35, 170, 12), (60, -90, -45), (5, 359, 179)])
def test_ue_rotation_is_proper_and_round_trips(pyr):
    c2w = C.c2w_from_ue([120.0, -340.0, 55.0], pyr)
    assert_rotation(c2w[:, :3])
    loc, rot = C.ue_from_c2w(c2w)
    assert np.allclose(loc, [120.0, -340.0, 55.0])
    assert np.allclose(C.c2w_from_ue(loc, rot), c2w, atol=1e-9)


def test_ue_rotator_rows_match_reference_formulas():
    # yaw 90 turns the forward axis from +X to +Y (turn right, seen from above in UE's left-handed world)
    f, r, u = C.ue_rotator_axes(0, 90, 0)
    assert np.allclose(f, [0, 1, 0], atol=1e-12)
    assert np.allclose(r, [-1, 0, 0], atol=1e-12)
    assert np.allclose(u, [0, 0, 1], atol=1e-12)
    # pitch up raises the forward axis
    f, _, _ = C.ue_rotator_axes(30, 0, 0)
    assert f[2] == pytest.approx(math.sin(math.radians(30)))


@pytest.mark.parametrize("pyr", [(0, 0, 0), (-20, 45, 0), (15, -120, 30)])
def test_ue_known_vectors_project_where_ue_would_draw_them(pyr):
    """In front -> principal point; UE-right -> right of it; UE-up -> above it."""
    W, H = 320, 200
    loc = np.array([100.0, 250.0, 80.0])
    cam = C.camera_from_ue(loc, pyr, W, H, hfov_deg=90)
    f, r, u = C.ue_rotator_axes(*pyr)
    ahead = loc + 500 * f
    (uv,), (z,) = cam.project(ue_point_to_world(ahead)[None])
    assert z == pytest.approx(5.0)
    assert uv == pytest.approx([W / 2, H / 2], abs=1e-9)
    (uv_r,), _ = cam.project(ue_point_to_world(ahead + 100 * r)[None])
    assert uv_r[0] > W / 2 and uv_r[1] == pytest.approx(H / 2, abs=1e-9)
    # hfov 90: fx = W/2, so 100 cm right at 500 cm depth lands W/2 * 0.2 pixels right
    assert uv_r[0] - W / 2 == pytest.approx(W / 2 * 0.2)
    (uv_u,), _ = cam.project(ue_point_to_world(ahead + 100 * u)[None])
    assert uv_u[1] < H / 2 and uv_u[0] == pytest.approx(W / 2, abs=1e-9)


def test_ue_raw_pose_kept():
    raw = C.ue_raw_pose([1, 2, 3], [4, 5, 6], hfov_deg=70)
    assert raw["convention"] == "unreal" and raw["location_cm"] == [1, 2, 3] and raw["hfov_deg"] == 70


def official_syncamvideo_c2w(text: str) -> np.ndarray:
    """What the official SynCamMaster loader does (docs/cameras.md): transpose, permute columns
    to (right, up, forward), negate the up column, divide translations by 200. Left-handed world."""
    m = C.parse_ue_row_matrix(text).T
    m = m[:, [1, 2, 0, 3]]
    m[:3, 1] *= -1
    m[:3, 3] /= 200.0
    return m


def test_syncamvideo_fixture_relative_poses_equal_official_loader_times_two(fixtures_dir):
    data = json.loads((fixtures_dir / "syncamvideo" / "camera_extrinsics.json").read_text())
    assert len(data) == 81
    for frame in ("frame0", "frame40", "frame80"):
        cams = data[frame]
        assert len(cams) == 10
        ids = sorted(cams)
        ours = [C.c2w_from_ue_row_matrix(cams[c]) for c in ids]
        for c in ours:
            assert_rotation(c[:, :3])
        official = [official_syncamvideo_c2w(cams[c]) for c in ids]
        ref = np.linalg.inv(official[0])
        for i, cid in enumerate(ids):
            rel_off = ref @ official[i]
            rel_ours = C.relative_pose(ours[0], ours[i])
            assert np.allclose(rel_ours[:, :3], rel_off[:3, :3], atol=2e-5), cid
            assert np.allclose(rel_ours[:, 3], 2.0 * rel_off[:3, 3], atol=1e-4), cid


def test_syncamvideo_fixture_cameras_face_a_common_centre(fixtures_dir):
    """A rig that looks at one centre: our optical axes must converge (a flipped axis would not)."""
    data = json.loads((fixtures_dir / "syncamvideo" / "camera_extrinsics.json").read_text())
    cams = [C.c2w_from_ue_row_matrix(t) for t in data["frame0"].values()]
    # cam01..cam05 sit on an arc at the same height and yaw towards each other
    pos = np.array([c[:, 3] for c in cams[:5]])
    fwd = np.array([c[:, 2] for c in cams[:5]])
    # closest point to all axes
    A = sum(np.eye(3) - np.outer(d, d) for d in fwd)
    b = sum((np.eye(3) - np.outer(d, d)) @ p for d, p in zip(fwd, pos))
    centre = np.linalg.solve(A, b)
    for p, d in zip(pos, fwd):
        assert np.dot(centre - p, d) > 0  # the centre is in front of every camera
        miss = np.linalg.norm(np.cross(centre - p, d))
        assert miss < 0.05


def test_ue_row_matrix_parser_rejects_garbage():
    with pytest.raises(C.CameraError):
        C.parse_ue_row_matrix("[1 0 0] [0 1 0]")
    with pytest.raises(C.CameraError):
        C.parse_ue_row_matrix("[a b c d] [0 1 0 0] [0 0 1 0] [0 0 0 1]")


# --- OpenGL / Blender / nerfstudio --------------------------------------------


def test_opengl_conversion_known_vector_and_round_trip():
    # An OpenGL camera at the origin looking down -Z of the world with +Y up.
    gl = np.hstack([np.eye(3), np.zeros((3, 1))])
    cv = C.c2w_from_opengl(gl)
    assert np.allclose(cv[:, 2], [0, 0, -1])  # optical axis is GL's -z
    assert np.allclose(cv[:, 1], [0, -1, 0])  # image down is GL's -y
    assert_rotation(cv[:, :3])
    R = C.look_at([1, 2, 3], [0, 0, 0])
    assert np.allclose(C.c2w_from_opengl(C.c2w_to_opengl(R)), R)
    # a point in front of the GL camera has positive z-depth in ours
    cam = C.Camera(64, 48, 50, 50, 32, 24, cv)
    (uv,), (z,) = cam.project(np.array([[0.0, 0.0, -2.0]]))
    assert z == pytest.approx(2.0) and uv == pytest.approx([32, 24])


# --- RealEstate10K ---------------------------------------------------------------


def test_realestate10k_fixture_parses(fixtures_dir):
    lines = (fixtures_dir / "realestate10k" / "0bf152ef84195293.txt").read_text().splitlines()
    assert lines[0].startswith("https://www.youtube.com/")
    stamps = []
    for line in lines[1:]:
        ts, cam = C.parse_realestate10k_line(line, 640, 360)
        stamps.append(ts)
        assert_rotation(cam.R)
        assert cam.fx == pytest.approx(0.474812461 * 640)
        assert cam.fy == pytest.approx(0.844111024 * 360)
        assert (cam.cx, cam.cy) == pytest.approx((320, 180))
    assert stamps[0] == 158692025
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    # successive frames ~ 8-9 video frames apart at 29.97 fps
    steps = np.diff(stamps) / (1e6 / 29.97)
    assert np.all((steps > 7) & (steps < 10))


def test_realestate10k_world_to_camera_inverted_correctly(fixtures_dir):
    line = (fixtures_dir / "realestate10k" / "0bf152ef84195293.txt").read_text().splitlines()[1]
    _, cam = C.parse_realestate10k_line(line, 640, 360)
    vals = np.array(line.split()[7:], float).reshape(3, 4)
    p_world = np.array([0.3, -0.2, 1.5])
    p_cam = vals[:, :3] @ p_world + vals[:, 3]
    assert np.allclose(cam.world_to_camera(p_world[None])[0], p_cam, atol=1e-5)
    ts, back = C.parse_realestate10k_line(C.format_realestate10k_line(12345, cam), 640, 360)
    assert ts == 12345 and np.allclose(back.c2w, cam.c2w, atol=1e-8) and back.fx == pytest.approx(cam.fx)


def test_realestate10k_bad_lines():
    with pytest.raises(C.CameraError, match="19 numbers"):
        C.parse_realestate10k_line("1 2 3", 10, 10)
    bad = "0 0.5 0.5 0.5 0.5 0 0 " + " ".join(["2"] * 12)
    with pytest.raises(C.CameraError, match="orthonormal"):
        C.parse_realestate10k_line(bad, 10, 10)
    mirrored = "0 0.5 0.5 0.5 0.5 0 0 -1 0 0 0 0 1 0 0 0 0 1 0"
    with pytest.raises(C.CameraError, match="determinant"):
        C.parse_realestate10k_line(mirrored, 10, 10)


# --- intrinsics and media edits --------------------------------------------------


def test_intrinsics_from_fov_and_filmback():
    assert C.focal_from_hfov(720, 90) == pytest.approx(360)
    assert C.hfov_from_focal(720, C.focal_from_hfov(720, 63.0)) == pytest.approx(63.0)
    # SynCamVideo 2025: 24 mm lens on a 23.76 mm square sensor, 1280 px wide
    assert C.focal_from_filmback(1280, 24, 23.76) == pytest.approx(1292.93, rel=1e-4)
    fx, fy, cx, cy = C.intrinsics_from_filmback(1280, 1280, 24, 23.76)
    assert fx == fy and (cx, cy) == (640, 640)
    with pytest.raises(C.CameraError):
        C.focal_from_hfov(100, 180)


def test_resize_and_crop_keep_projection_consistent():
    cam = C.Camera(720, 480, 545.45, 545.45, 360, 240, C.look_at([4, 1, 2], [0, 0, 1]))
    pts = np.random.default_rng(0).uniform(-1, 1, (20, 3)) + [0, 0, 1]
    uv, _ = cam.project(pts)
    small = cam.resized(360, 240)
    uv2, _ = small.project(pts)
    assert np.allclose(uv2, uv * 0.5)
    crop = cam.cropped(100, 40, 400, 300)
    uv3, _ = crop.project(pts)
    assert np.allclose(uv3, uv - [100, 40])
    cc = cam.resize_center_crop(672, 384)
    assert (cc.width, cc.height) == (672, 384)
    # 720x480 -> scale 0.9333 (covers 672 wide, 448 high) -> crop 32 rows top
    s = 672 / 720
    assert cc.fx == pytest.approx(545.45 * s) and cc.cy == pytest.approx(240 * s - 32)


def test_unproject_inverts_project():
    cam = C.Camera(64, 48, 40, 42, 31, 25, C.look_at([3, -2, 1.5], [0, 0, 0.5]))
    pts = np.random.default_rng(1).uniform(-0.5, 0.5, (10, 3))
    uv, z = cam.project(pts)
    assert np.allclose(cam.unproject(uv, z), pts)


# --- look-at, rigs, relative poses ---------------------------------------------


def test_look_at_axes():
    c2w = C.look_at([5, 0, 0], [0, 0, 0])
    assert_rotation(c2w[:, :3])
    assert np.allclose(c2w[:, 2], [-1, 0, 0])  # looks at the origin
    assert np.allclose(c2w[:, 1], [0, 0, -1])  # image down is world down
    assert np.allclose(c2w[:, 0], [0, 1, 0])  # looking -X with Z up, right is +Y (right-handed)
    straight_down = C.look_at([0, 0, 5], [0, 0, 0])
    assert_rotation(straight_down[:, :3])


def test_rig_sampler_ranges_seed_and_centre():
    rig = C.RigSpec(num_cameras=36, distance=(3.5, 9), elevation=(0, 45), azimuth=(0, 360))
    centre = np.array([0.5, -1.0, 1.0])
    a = C.sample_rig(rig, centre, 720, 480, 60, rng=7)
    b = C.sample_rig(rig, centre, 720, 480, 60, rng=7)
    assert len(a) == 36
    for (ca, pa), (cb, _) in zip(a, b):
        assert np.array_equal(ca.c2w, cb.c2w)
        assert_rotation(ca.R)
        d = ca.t - centre
        assert 3.5 <= np.linalg.norm(d) <= 9
        el = math.degrees(math.asin(d[2] / np.linalg.norm(d)))
        assert 0 <= el <= 45 and el == pytest.approx(pa["elevation"])
        (uv,), _ = ca.project(centre[None])
        assert uv == pytest.approx([360, 240])  # every camera looks at the centre
    c = C.sample_rig(rig, centre, 720, 480, 60, rng=8)
    assert not np.array_equal(a[0][0].c2w, c[0][0].c2w)


def test_relative_poses_and_angles():
    centre = np.zeros(3)
    c0 = C.look_at(C.spherical_position(centre, 5, 0, 0), centre)
    c1 = C.look_at(C.spherical_position(centre, 7, 0, 70), centre)
    rel = C.relative_poses([c0, c1], translation_scale=2.0)
    assert rel.shape == (2, 12)
    assert np.allclose(rel[0], np.hstack([np.eye(3), np.zeros((3, 1))]).reshape(-1))
    # relative angle between optical axes = angle subtended at the common centre
    assert C.relative_angle(c0, c1) == pytest.approx(70)
    # the relative pose maps camera-1 points into camera-0 coordinates
    R01 = rel[1].reshape(3, 4)[:, :3]
    t01 = rel[1].reshape(3, 4)[:, 3] * 2.0
    p = np.array([0.2, 0.1, 0.3])
    p_cam1 = (p - c1[:, 3]) @ c1[:, :3]
    p_cam0 = (p - c0[:, 3]) @ c0[:, :3]
    assert np.allclose(R01 @ p_cam1 + t01, p_cam0)
    # invariant to a global rigid motion of the world
    T = np.eye(4)
    T[:3, :3] = C.look_at([1, 2, 3], [0, 1, 0])[:, :3]
    T[:3, 3] = [4, -5, 6]
    moved = [(T @ np.vstack([c, [0, 0, 0, 1]]))[:3] for c in (c0, c1)]
    assert np.allclose(C.relative_poses(moved), C.relative_poses([c0, c1]), atol=1e-9)


def test_camera_validation_and_serialization():
    cam = C.Camera(64, 48, 40, 40, 32, 24, C.look_at([1, 1, 1], [0, 0, 0]))
    back = C.Camera.from_dict(json.loads(json.dumps(cam.to_dict(id="cam00"))))
    assert np.allclose(back.c2w, cam.c2w) and back.K.tolist() == cam.K.tolist()
    bad = cam.c2w.copy()
    bad[:, 0] *= -1  # mirrored: determinant -1
    with pytest.raises(C.CameraError, match="determinant"):
        C.Camera(64, 48, 40, 40, 32, 24, bad).validate()
    with pytest.raises(C.CameraError):
        C.Camera(0, 48, 40, 40, 32, 24)
    with pytest.raises(C.CameraError, match="missing key"):
        C.Camera.from_dict({"width": 1})

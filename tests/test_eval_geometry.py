"""Epipolar geometry of stated cameras (syncam_data.evaluate.epipolar) against points projected through both cameras."""

from __future__ import annotations

import numpy as np
import pytest

from syncam_data.cameras import Camera, look_at
from syncam_data.evaluate import epipolar
from syncam_data.evaluate.matching import MatchResult
from syncam_data.evaluate.run import EvalConfig, pair_metrics


def _cams() -> tuple[Camera, Camera]:
    a = Camera(320, 240, 300.0, 310.0, 160.0, 120.0, look_at((4.0, -1.0, 1.5), (0.0, 0.0, 0.5)))
    b = Camera(400, 300, 350.0, 340.0, 205.0, 148.0, look_at((1.0, -4.5, 2.5), (0.2, 0.1, 0.4)))
    return a, b


def _points(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-1.0, -1.0, 0.0], [1.0, 1.0, 1.5], size=(n, 3))


def test_fundamental_annihilates_projected_points() -> None:
    a, b = _cams()
    X = _points()
    xa, za = a.project(X)
    xb, zb = b.project(X)
    assert (za > 0).all() and (zb > 0).all()
    F = epipolar.fundamental_from_cameras(a, b)
    ha = np.hstack([xa, np.ones((len(xa), 1))])
    hb = np.hstack([xb, np.ones((len(xb), 1))])
    algebraic = np.abs(np.einsum("ij,jk,ik->i", hb, F, ha))
    assert algebraic.max() < 1e-9
    assert epipolar.sampson_distance(F, xa, xb).max() < 1e-6
    assert epipolar.symmetric_epipolar_distance(F, xa, xb).max() < 1e-6
    # The transpose (wrong direction) does not annihilate them: the test can fail.
    assert epipolar.symmetric_epipolar_distance(F.T, xa, xb).max() > 1.0


def test_relative_pose_maps_camera_a_points_to_camera_b() -> None:
    a, b = _cams()
    X = _points(20)
    R, t = epipolar.relative_pose(a, b)
    np.testing.assert_allclose(a.world_to_camera(X) @ R.T + t, b.world_to_camera(X), atol=1e-12)


def test_rectified_stereo_distances_have_known_values() -> None:
    # Camera b is camera a moved 0.5 m along its own x axis: epipolar lines are image rows.
    c2w_a = np.hstack([np.eye(3), np.zeros((3, 1))])
    c2w_b = np.hstack([np.eye(3), np.array([[0.5], [0.0], [0.0]])])
    a = Camera(100, 80, 90.0, 90.0, 50.0, 40.0, c2w_a)
    b = Camera(100, 80, 90.0, 90.0, 50.0, 40.0, c2w_b)
    F = epipolar.fundamental_from_cameras(a, b)
    pa = np.array([[30.0, 20.0], [70.0, 60.0]])
    pb = pa + np.array([[-12.0, 3.0], [-5.0, -1.5]])  # vertical offsets 3 and 1.5 px
    np.testing.assert_allclose(epipolar.symmetric_epipolar_distance(F, pa, pb), [3.0, 1.5], rtol=1e-9)
    np.testing.assert_allclose(epipolar.sampson_distance(F, pa, pb), [3.0 / np.sqrt(2), 1.5 / np.sqrt(2)], rtol=1e-9)
    lines = epipolar.epipolar_lines(F, pa)
    np.testing.assert_allclose(np.abs(lines[:, 1]), 1.0, atol=1e-12)  # horizontal lines y = const


def test_zero_baseline_is_an_error_not_a_zero() -> None:
    a, _ = _cams()
    with pytest.raises(ValueError, match="baseline"):
        epipolar.fundamental_from_cameras(a, a.resized(640, 480))


def test_relative_angle() -> None:
    a = Camera(10, 10, 10, 10, 5, 5, look_at((3, 0, 0), (0, 0, 0)))
    b = Camera(10, 10, 10, 10, 5, 5, look_at((0, 3, 0), (0, 0, 0)))
    assert epipolar.relative_angle_deg(a, b) == pytest.approx(90.0)


def test_pair_metrics_shift_opencv_keypoints_to_continuous_pixels() -> None:
    """OpenCV keypoints have pixel centres at integers; the stated cameras at +0.5. pair_metrics must convert."""
    a, b = _cams()
    # Points near the image corners, where a half-pixel shift is not parallel to the epipolar lines.
    X = _points(300, seed=3)
    xa, _ = a.project(X)
    xb, _ = b.project(X)
    opencv_a, opencv_b = xa - 0.5, xb - 0.5
    m = MatchResult(opencv_a, opencv_b, np.ones(len(xa), bool), None)
    out = pair_metrics(m, a, b, EvalConfig())
    assert out["epi_symmetric_median"] < 1e-6
    assert out["within_1px"] == 1.0 and out["camera_flagged"] is False
    # The same points without the conversion are measurably off: the check above is sensitive to it.
    F = epipolar.fundamental_from_cameras(a, b)
    assert np.median(epipolar.symmetric_epipolar_distance(F, opencv_a, opencv_b)) > 0.05


def test_pair_metrics_without_cameras_or_with_too_few_inliers() -> None:
    a, b = _cams()
    X = _points(10)
    xa, _ = a.project(X)
    xb, _ = b.project(X)
    m = MatchResult(xa - 0.5, xb - 0.5 + 5.0, np.ones(10, bool), None)
    no_cam = pair_metrics(m, None, b, EvalConfig())
    assert no_cam["has_cameras"] is False and no_cam["epi_symmetric_median"] is None
    few = pair_metrics(m, a, b, EvalConfig(min_inliers=15))
    assert few["epi_symmetric_median"] > 1.0  # measured ...
    assert few["camera_flagged"] is None  # ... but 10 inliers give no verdict

"""Epipolar geometry from stated cameras, and the error of point matches against it.

Coordinates: cameras (Contract 1) use *continuous* pixel coordinates, where
pixel (i, j) covers [i, i+1) x [j, j+1) and its centre is (i + 0.5, j + 0.5).
OpenCV keypoints put pixel centres at integers, so keypoints are shifted by
``OPENCV_TO_CONTINUOUS`` (+0.5) before any stated-camera geometry is applied.
Forgetting it biases every error by up to ~0.7 px, which matters when the
question is whether cameras are sub-pixel accurate.
"""

from __future__ import annotations

import math

import numpy as np

from syncam_data.cameras import Camera

OPENCV_TO_CONTINUOUS = 0.5


def to_continuous(pts_opencv: np.ndarray) -> np.ndarray:
    """OpenCV pixel coordinates (centres at integers) -> continuous (centres at +0.5)."""
    return np.asarray(pts_opencv, dtype=np.float64) + OPENCV_TO_CONTINUOUS


def relative_pose(cam_a: Camera, cam_b: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) with ``x_b = R x_a + t`` for a point in camera a's / camera b's frame.

    From X = R_a x_a + t_a (c2w of a) and x_b = R_b^T (X - t_b):
    R = R_b^T R_a and t = R_b^T (t_a - t_b).
    """
    R = cam_b.R.T @ cam_a.R
    t = cam_b.R.T @ (cam_a.t - cam_b.t)
    return R, t


def skew(v: np.ndarray) -> np.ndarray:
    x, y, z = (float(c) for c in v)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def fundamental_from_cameras(cam_a: Camera, cam_b: Camera) -> np.ndarray:
    """F with ``x_b^T F x_a = 0`` for homogeneous continuous pixel coordinates; scaled to unit norm.

    F = K_b^-T [t]_x R K_a^-1 with (R, t) from :func:`relative_pose`. Two
    cameras at the same position have no epipolar geometry (F = 0): the
    caller gets a ValueError rather than a meaningless zero error.
    """
    R, t = relative_pose(cam_a, cam_b)
    baseline = float(np.linalg.norm(t))
    if baseline < 1e-9:
        raise ValueError("cameras share their position (zero baseline): no epipolar geometry")
    E = skew(t / baseline) @ R
    F = np.linalg.inv(cam_b.K).T @ E @ np.linalg.inv(cam_a.K)
    return F / np.linalg.norm(F)


def _homogeneous(pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return np.hstack([pts, np.ones((len(pts), 1))])


def sampson_distance(F: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """Sampson distance in pixels (the square root of Sampson's first-order geometric error).

    It approximates the smallest total displacement of (x_a, x_b) that makes
    the pair satisfy x_b^T F x_a = 0.
    """
    xa, xb = _homogeneous(pts_a), _homogeneous(pts_b)
    Fxa = xa @ F.T  # rows: F x_a (epipolar lines in b)
    Ftxb = xb @ F  # rows: F^T x_b (epipolar lines in a)
    num = np.einsum("ij,ij->i", xb, Fxa)
    den = Fxa[:, 0] ** 2 + Fxa[:, 1] ** 2 + Ftxb[:, 0] ** 2 + Ftxb[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(num) / np.sqrt(den)


def symmetric_epipolar_distance(F: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """Mean of the point-to-epipolar-line distances in both images, in pixels."""
    xa, xb = _homogeneous(pts_a), _homogeneous(pts_b)
    Fxa = xa @ F.T
    Ftxb = xb @ F
    num = np.abs(np.einsum("ij,ij->i", xb, Fxa))
    with np.errstate(divide="ignore", invalid="ignore"):
        d_b = num / np.hypot(Fxa[:, 0], Fxa[:, 1])
        d_a = num / np.hypot(Ftxb[:, 0], Ftxb[:, 1])
    return 0.5 * (d_a + d_b)


def epipolar_lines(F: np.ndarray, pts_a: np.ndarray) -> np.ndarray:
    """Lines (a, b, c) in image b, normalized so a^2 + b^2 = 1, for points of image a."""
    lines = _homogeneous(pts_a) @ F.T
    n = np.hypot(lines[:, 0], lines[:, 1])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return lines / n


def relative_angle_deg(cam_a: Camera, cam_b: Camera) -> float:
    """Angle between the optical axes (Contract 1's relative angle)."""
    c = float(
        np.clip(
            np.dot(cam_a.forward, cam_b.forward) / (np.linalg.norm(cam_a.forward) * np.linalg.norm(cam_b.forward)),
            -1.0,
            1.0,
        )
    )
    return math.degrees(math.acos(c))

"""A tiny textured 3-D scene and a numpy ray-caster: ground-truth images for known cameras.

The scene is a floor (z = 0) and two walls (y = 3 and x = 3), each with a
smooth colour texture of its in-plane coordinates. ``render(cam)`` ray-casts
it (2×2 supersampled) for any canonical Camera, so a test can check that a
stored image really is the view of the camera stored beside it. The other
source tests import these helpers; the tests below check the renderer itself.
"""

from __future__ import annotations

import math

import numpy as np

from syncam_data.cameras import Camera, look_at

CENTER = np.array([0.0, 0.0, 0.6])
# (normal, offset, in-plane axes): points p with normal . p == offset
PLANES = (
    (np.array([0.0, 0.0, 1.0]), 0.0, (0, 1)),  # floor, textured by (x, y)
    (np.array([0.0, 1.0, 0.0]), 3.0, (0, 2)),  # wall y = 3, by (x, z)
    (np.array([1.0, 0.0, 0.0]), 3.0, (1, 2)),  # wall x = 3, by (y, z)
)
BACKGROUND = 40.0


def texture(plane: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB in [0, 255] for in-plane coordinates (periods of ~0.5-1 m: visible, yet smooth at 64 px)."""
    ph = 1.3 * plane
    r = 128 + 80 * np.sin(7.0 * u + ph) * np.cos(5.0 * v)
    g = 128 + 80 * np.cos(6.0 * v - 4.0 * u + ph)
    b = 128 + 60 * np.sin(5.0 * (u + v) + 2 * ph)
    return np.stack([r, g, b], axis=-1)


def colour_at(points: np.ndarray) -> np.ndarray:
    """Texture colour of world points lying on one of the planes (nearest plane by residual)."""
    pts = np.atleast_2d(points)
    res = np.stack([np.abs(pts @ n - d) for n, d, _ in PLANES], axis=-1)
    which = np.argmin(res, axis=-1)
    out = np.empty((len(pts), 3))
    for k, (_, _, (a, b)) in enumerate(PLANES):
        m = which == k
        out[m] = texture(k, pts[m, a], pts[m, b])
    return out


def render(cam: Camera, supersample: int = 2) -> np.ndarray:
    """uint8 RGB (H, W, 3) image of the scene seen by ``cam``."""
    hi = cam.resized(cam.width * supersample, cam.height * supersample)
    uv = hi.pixel_grid().reshape(-1, 2)
    d_cam = np.stack([(uv[:, 0] - hi.cx) / hi.fx, (uv[:, 1] - hi.cy) / hi.fy, np.ones(len(uv))], -1)
    dirs = d_cam @ hi.R.T
    o = hi.t
    best = np.full(len(uv), np.inf)
    col = np.full((len(uv), 3), BACKGROUND)
    for k, (n, off, (a, b)) in enumerate(PLANES):
        denom = dirs @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (off - o @ n) / denom
        hit = (t > 1e-6) & (t < best) & np.isfinite(t)
        p = o + t[hit, None] * dirs[hit]
        col[hit] = texture(k, p[:, a], p[:, b])
        best[hit] = t[hit]
    img = col.reshape(hi.height, hi.width, 3)
    img = img.reshape(cam.height, supersample, cam.width, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def trajectory(
    num_frames: int, width: int = 64, height: int = 48, hfov_deg: float = 60.0, deg_per_frame: float = 1.5
) -> list[Camera]:
    """A camera orbiting the scene centre (azimuth 200°+, gently rising) looking at it."""
    f = width / (2 * math.tan(math.radians(hfov_deg) / 2))
    cams = []
    for i in range(num_frames):
        az = math.radians(200 + deg_per_frame * i)
        eye = CENTER + np.array([3.0 * math.cos(az), 3.0 * math.sin(az), 0.6 + 0.01 * i])
        cams.append(Camera(width, height, f, f, width / 2, height / 2, look_at(eye, CENTER)))
    return cams


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def image_error(image: np.ndarray, cam: Camera, border: int = 0) -> float:
    """Mean absolute luma difference between ``image`` and the ray-cast view of ``cam`` (optionally ignoring a border).

    Luma, because H.264 (yuv420p) halves the colour resolution: at 64 px that alone
    costs ~13 levels of RGB error, while luma stays within ~3 of the truth.
    """
    ref = luma(render(cam))
    img = luma(image)
    if border:
        ref, img = ref[border:-border, border:-border], img[border:-border, border:-border]
    return float(np.abs(ref - img).mean())


def test_render_matches_texture_at_projected_points():
    cam = trajectory(1, 128, 96)[0]
    img = render(cam, supersample=1)
    # Points on the floor in front of the camera project to pixels showing their texture colour.
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.5, 1.0, 20), rng.uniform(-0.5, 1.0, 20), np.zeros(20)])
    uv, z = cam.project(pts)
    inside = (z > 0) & (uv[:, 0] > 2) & (uv[:, 0] < 126) & (uv[:, 1] > 2) & (uv[:, 1] < 94)
    assert inside.sum() >= 10
    px = np.floor(uv[inside]).astype(int)
    got = img[px[:, 1], px[:, 0]].astype(float)
    want = colour_at(pts[inside])
    # Nearest-pixel sampling: at most half a pixel off, the texture changes little over that.
    assert np.median(np.abs(got - want)) < 12


def test_neighbouring_frames_are_distinguishable():
    """The scene must tell consecutive frames apart, or the frame-matching tests could not fail."""
    cams = trajectory(3)
    same = image_error(render(cams[1]), cams[1])
    other = image_error(render(cams[1]), cams[2])
    assert same == 0.0
    assert other > 6.0

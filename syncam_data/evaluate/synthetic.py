"""A textured synthetic scene with exactly known cameras, rendered by a small numpy ray caster.

Used by the eval tests and benchmark (and handy to check the eval pipeline on
a new machine): axis-aligned textured rectangles (a floor, three walls and two
boxes) give depth variation, so the fundamental matrix of any two views is
well determined, and blob-like textures give SIFT plenty to match. Pixels are
rendered in continuous coordinates (pixel centres at +0.5, Contract 1) with
supersampling, so the stated cameras are exact to well below a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from syncam_data.cameras import Camera, intrinsics_from_hfov, look_at


@dataclass
class Rect:
    origin: np.ndarray  # a corner, world metres
    e1: np.ndarray  # edge vectors spanning the rectangle
    e2: np.ndarray
    texture: np.ndarray  # (th, tw, 3) uint8


def blob_texture(rng: np.random.Generator, size: int = 512, cells: int = 48) -> np.ndarray:
    """Random colour blobs at two scales (upsampled noise): corner- and blob-rich for SIFT."""
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    fine = rng.uniform(0, 255, (cells * 2, cells * 2, 3)).astype(np.float32)
    t = 0.7 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) + 0.3 * cv2.resize(
        fine, (size, size), interpolation=cv2.INTER_CUBIC
    )
    return np.clip(t, 0, 255).astype(np.uint8)


def _box(rng: np.random.Generator, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> list[Rect]:
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    dx, dy, dz = np.array([x1 - x0, 0, 0.0]), np.array([0, y1 - y0, 0.0]), np.array([0, 0, z1 - z0])
    faces = [
        (np.array([x0, y0, z1]), dx, dy),  # top
        (np.array([x0, y0, z0]), dx, dz),  # y = y0
        (np.array([x0, y1, z0]), dx, dz),  # y = y1
        (np.array([x0, y0, z0]), dy, dz),  # x = x0
        (np.array([x1, y0, z0]), dy, dz),  # x = x1
    ]
    return [Rect(o, a, b, blob_texture(rng, 256, 8)) for o, a, b in faces]


def textured_scene(seed: int = 0, half: float = 4.0, wall_h: float = 3.0) -> list[Rect]:
    """Floor, three walls and two boxes of different heights; every surface textured differently."""
    rng = np.random.default_rng(seed)
    rects = [
        Rect(
            np.array([-half, -half, 0.0]),
            np.array([2 * half, 0, 0]),
            np.array([0, 2 * half, 0.0]),
            blob_texture(rng, 1024, 40),
        ),
        Rect(
            np.array([-half, half, 0.0]),
            np.array([2 * half, 0, 0]),
            np.array([0, 0, wall_h]),
            blob_texture(rng, 1024, 40),
        ),
        Rect(
            np.array([-half, -half, 0.0]),
            np.array([0, 2 * half, 0]),
            np.array([0, 0, wall_h]),
            blob_texture(rng, 1024, 40),
        ),
        Rect(
            np.array([half, -half, 0.0]),
            np.array([0, 2 * half, 0]),
            np.array([0, 0, wall_h]),
            blob_texture(rng, 1024, 40),
        ),
        Rect(
            np.array([-half, -half, 0.0]),
            np.array([2 * half, 0, 0]),
            np.array([0, 0, wall_h]),
            blob_texture(rng, 1024, 40),
        ),
    ]
    rects += _box(rng, (-0.6, -0.5, 0.0), (0.4, 0.5, 1.2))
    rects += _box(rng, (0.8, 0.6, 0.0), (1.5, 1.3, 0.6))
    return rects


def render(scene: list[Rect], camera: Camera, supersample: int = 2) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the scene seen by ``camera`` (nearest texel, box-filtered supersampling)."""
    cam = camera.resized(camera.width * supersample, camera.height * supersample)
    uv = cam.pixel_grid().reshape(-1, 2)
    dirs_c = np.stack([(uv[:, 0] - cam.cx) / cam.fx, (uv[:, 1] - cam.cy) / cam.fy, np.ones(len(uv))], axis=1)
    dirs = dirs_c @ cam.R.T
    o = cam.t
    best_t = np.full(len(uv), np.inf)
    rgb = np.zeros((len(uv), 3), np.uint8)
    for r in scene:
        n = np.cross(r.e1, r.e2)
        denom = dirs @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (r.origin - o) @ n / denom
        p = o + dirs * t[:, None] - r.origin
        s = p @ r.e1 / (r.e1 @ r.e1)
        q = p @ r.e2 / (r.e2 @ r.e2)
        hit = (t > 1e-6) & (t < best_t) & (s >= 0) & (s <= 1) & (q >= 0) & (q <= 1)
        if not hit.any():
            continue
        th, tw = r.texture.shape[:2]
        ti = np.clip((q[hit] * th).astype(int), 0, th - 1)
        tj = np.clip((s[hit] * tw).astype(int), 0, tw - 1)
        rgb[hit] = r.texture[ti, tj]
        best_t[hit] = t[hit]
    img = rgb.reshape(cam.height, cam.width, 3)
    if supersample > 1:
        img = cv2.resize(img, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    return img


def ring_cameras(
    n: int,
    width: int,
    height: int,
    radius: float = 3.2,
    height_m: float = 1.6,
    start_deg: float = -60.0,
    step_deg: float = 20.0,
    hfov_deg: float = 70.0,
    target: tuple[float, float, float] = (0.3, 0.3, 0.5),
    height_jitter: float = 0.9,
) -> list[Camera]:
    """``n`` cameras on an arc around ``target``, ``step_deg`` apart, looking at it (Contract 1 c2w).

    Heights vary by up to ``height_jitter`` metres (deterministically): with
    every camera at one height all epipolar lines are nearly horizontal, and
    some wrong cameras (a mirrored x axis, two swapped cameras) would hardly
    move them.
    """
    fx, fy, cx, cy = intrinsics_from_hfov(width, height, hfov_deg)
    cams = []
    for i in range(n):
        a = math.radians(start_deg + i * step_deg)
        eye = (
            target[0] + radius * math.sin(a),
            target[1] - radius * math.cos(a),
            height_m + height_jitter * math.sin(2.3 * i),
        )
        cams.append(Camera(width, height, fx, fy, cx, cy, look_at(eye, target)))
    return cams


def render_views(
    n: int, width: int, height: int, seed: int = 0, **ring: float
) -> tuple[list[Camera], list[np.ndarray]]:
    """``n`` cameras on an arc (see :func:`ring_cameras`) and their renders of ``textured_scene(seed)``."""
    scene = textured_scene(seed)
    cams = ring_cameras(n, width, height, **ring)
    return cams, [render(scene, c) for c in cams]

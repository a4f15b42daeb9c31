"""Synthetic test videos with known camera and subject motion.

A textured world canvas (smoothed multi-scale noise, so H.264 keeps the
texture and Lucas-Kanade finds corners everywhere) holds textured shapes that
move in world coordinates; a virtual camera views the canvas through a
similarity transform (pan = translation, zoom = scale about the centre).
Tests, benchmarks and the end-to-end demo use these to check that the filter
separates camera motion from subject motion.

Kinds:

- ``static_subject``: static camera, moving subjects (the filter keeps it)
- ``pan``: camera pans over a static scene (``camera_moves``)
- ``zoom``: camera zooms into a static scene (``camera_moves``)
- ``static``: static camera, static scene (``static``)
- ``pan_subject``: camera pans and subjects move (``camera_moves``)
- ``scene_cut``: static camera + moving subject, then a cut to a different scene (``scene_cut``)

Any kind can lose its texture midway (``fade_at``/``fade``): the background
only (the subjects stay trackable, few background points remain late in the
clip) or the whole picture (nothing left to track).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from syncam_data.video import encode

FADE_FRAMES = 6
KINDS = ("static_subject", "pan", "zoom", "static", "pan_subject", "scene_cut")
# What the filter must decide for each kind with its default thresholds.
EXPECTED_REASON = {
    "static_subject": "",
    "pan": "camera_moves",
    "zoom": "camera_moves",
    "static": "static",
    "pan_subject": "camera_moves",
    "scene_cut": "scene_cut",
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Motion parameters in output pixels per frame (or scale per frame for zoom)."""

    kind: str
    width: int = 160
    height: int = 128
    fps: float = 24.0
    seconds: float = 2.0
    seed: int = 0
    subject_speed: float = 2.0  # px/frame
    pan_speed: float = 1.5  # px/frame
    zoom_rate: float = 0.008  # relative scale change per frame
    num_subjects: int = 2
    noise: float = 2.0  # std of per-frame sensor noise (grey levels): real cameras are never bit-exact
    # Lose the texture midway, as real footage does (focus pull, lights out, lens covered): from this fraction of
    # the clip on, ``fade`` ("background": the scenery only, the subjects stay textured; "picture": everything)
    # fades within ``FADE_FRAMES`` frames to a flat colour. 1.0 = never.
    fade_at: float = 1.0
    fade: str = "background"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown synthetic video kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.fade not in ("background", "picture") or not 0 <= self.fade_at <= 1:
            raise ValueError(
                f"synthetic video: fade must be 'background' or 'picture' and fade_at in [0, 1], got {self.fade!r}, {self.fade_at}"
            )
        if self.width < 16 or self.height < 16 or self.seconds <= 0 or self.fps <= 0:
            raise ValueError(f"synthetic video needs width/height >= 16 and positive seconds/fps, got {self}")


def _texture(rng: np.random.Generator, h: int, w: int, tint: np.ndarray, contrast: float) -> np.ndarray:
    """Sum of smoothed noise at three scales: trackable at every scale, survives compression."""
    acc = np.zeros((h, w), np.float32)
    for sigma, weight in ((1.2, 0.5), (3.0, 0.3), (8.0, 0.2)):
        noise = rng.standard_normal((h, w)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
        acc += weight * blurred / (blurred.std() + 1e-6)
    img = tint[None, None, :] + contrast * acc[..., None] * np.array([1.0, 0.9, 0.8], np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


class _Subject:
    def __init__(self, rng: np.random.Generator, world_w: int, world_h: int, size: int, speed: float) -> None:
        self.size = size
        self.tex = _texture(rng, size, size, rng.uniform(60, 220, 3).astype(np.float32), 60.0)
        self.mask = np.zeros((size, size), np.uint8)
        if rng.random() < 0.5:
            cv2.ellipse(self.mask, (size // 2, size // 2), (size // 2 - 1, int(size * 0.35)), 0, 0, 360, 1, -1)
        else:
            self.mask[size // 8 : size - size // 8, :] = 1
        angle = rng.uniform(0, 2 * np.pi)
        self.vel = speed * np.array([np.cos(angle), np.sin(angle)])
        self.pos = np.array([rng.uniform(0.3, 0.6) * world_w, rng.uniform(0.3, 0.6) * world_h])
        self.bounds = (world_w - size, world_h - size)

    def step(self) -> None:
        self.pos = self.pos + self.vel
        for k in range(2):  # bounce inside the world so subjects stay in view
            if self.pos[k] < 0 or self.pos[k] > self.bounds[k]:
                self.vel[k] = -self.vel[k]
                self.pos[k] = float(np.clip(self.pos[k], 0, self.bounds[k]))

    def paint(self, canvas: np.ndarray) -> None:
        x, y = int(round(self.pos[0])), int(round(self.pos[1]))
        region = canvas[y : y + self.size, x : x + self.size]
        m = self.mask[: region.shape[0], : region.shape[1], None].astype(bool)
        np.copyto(region, self.tex[: region.shape[0], : region.shape[1]], where=m)


def _render(spec: SyntheticSpec, n: int, seed: int, subjects_move: bool, camera: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = spec.width, spec.height
    # The world is larger than the view so a pan never leaves it.
    margin = int(np.ceil(spec.pan_speed * n)) + 8 if camera == "pan" else 8
    world_w, world_h = w + 2 * margin, h + 2 * margin
    background = _texture(rng, world_h, world_w, rng.uniform(70, 180, 3).astype(np.float32), 45.0)
    size = max(8, min(w, h) // 3)
    speed = spec.subject_speed if subjects_move else 0.0
    subjects = [_Subject(rng, world_w, world_h, size, speed) for _ in range(spec.num_subjects)]
    out = np.empty((n, h, w, 3), np.uint8)
    flat = background.mean(axis=(0, 1))
    fade_start = spec.fade_at * n if spec.fade_at < 1 else np.inf
    for i in range(n):
        fade = float(np.clip((i - fade_start) / FADE_FRAMES, 0.0, 1.0))
        canvas = background.copy() if fade == 0 or spec.fade != "background" else (1 - fade) * background + fade * flat
        for s in subjects:
            s.paint(canvas)
            s.step()
        scale, tx, ty = 1.0, float(margin), float(margin)
        if camera == "pan":
            tx = margin - spec.pan_speed * n / 2 + spec.pan_speed * i
            ty = margin - 0.3 * spec.pan_speed * n / 2 + 0.3 * spec.pan_speed * i
        elif camera == "zoom":
            scale = (1.0 + spec.zoom_rate) ** i
        # Output pixel (u, v) shows world point centre + ((u, v) - view centre) / scale.
        cx_w, cy_w = tx + w / 2, ty + h / 2
        m = np.array([[scale, 0, w / 2 - scale * cx_w], [0, scale, h / 2 - scale * cy_w]], np.float64)
        frame = cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if fade > 0 and spec.fade == "picture":
            frame = (1 - fade) * frame + fade * flat
        if spec.noise > 0:
            frame = frame + rng.normal(0.0, spec.noise, frame.shape).astype(np.float32)
        out[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def synthesize_frames(spec: SyntheticSpec) -> np.ndarray:
    """RGB uint8 frames (N, H, W, 3) for ``spec``."""
    n = max(2, int(round(spec.seconds * spec.fps)))
    if spec.kind == "scene_cut":
        first = _render(spec, n // 2, spec.seed, subjects_move=True, camera="static")
        second = _render(spec, n - n // 2, spec.seed + 1000, subjects_move=True, camera="static")
        # A different colour grade makes the second shot look like another place, as real cuts do.
        second = np.clip(second.astype(np.int16)[..., ::-1] * 0.6 + 20, 0, 255).astype(np.uint8)
        return np.concatenate([first, second])
    camera = {"pan": "pan", "pan_subject": "pan", "zoom": "zoom"}.get(spec.kind, "static")
    moving = spec.kind in ("static_subject", "pan_subject")
    return _render(spec, n, spec.seed, subjects_move=moving, camera=camera)


def write_synthetic_video(path: str | Path, kind: str, **kwargs) -> Path:
    """Render and encode one synthetic video (H.264 mp4) to ``path``; returns the path."""
    spec = SyntheticSpec(kind=kind, **kwargs)
    frames = synthesize_frames(spec)
    return Path(encode(frames, path, fps=spec.fps, crf=18, preset="veryfast"))


def write_synthetic_set(folder: str | Path, kinds: tuple[str, ...] = KINDS, **kwargs) -> dict[str, Path]:
    """One video per kind in ``folder`` named ``<kind>.mp4``; returns kind -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {k: write_synthetic_video(folder / f"{k}.mp4", k, seed=i, **kwargs) for i, k in enumerate(kinds)}

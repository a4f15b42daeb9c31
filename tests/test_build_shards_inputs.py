"""Tiny inputs in the exact formats build-shards reads (render scenes, frame sets, scores.parquet, SynCamVideo)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from syncam_data.cameras import Camera, RigSpec, look_at, sample_rig
from syncam_data.fsio import write_json
from syncam_data.render.output import SceneOutput
from syncam_data.video import encode
from tests.conftest import smooth_frames

W, H, FRAMES = 64, 48, 4


def make_render_scene(
    root: Path,
    scene_id: str,
    backend: str = "blender",
    cams: int = 3,
    frames: int = FRAMES,
    caption: str = "a dog runs",
    seed: int = 0,
    smooth_depth: bool = False,
) -> Path:
    """A Contract 2 scene folder written by the real SceneOutput (videos, depth, masks, cameras.json, scene.json).

    ``smooth_depth`` gives a ramp (compresses like real depth) instead of noise (small but incompressible).
    """
    folder = root / scene_id
    out = SceneOutput(folder, fps=8.0)
    rig = sample_rig(RigSpec(num_cameras=cams), (0, 0, 1), W, H, 60.0, seed)
    rng = np.random.default_rng(seed)
    for i, (cam, placement) in enumerate(rig):
        out.add_camera(f"cam{i:02d}", cam, raw={"placement": placement})
    for i in range(cams):
        clip = smooth_frames(frames, H, W, seed=seed * 100 + i)
        for f in range(frames):
            depth = (
                (2.0 + np.linspace(0, 6, H)[:, None] * np.ones((1, W)) + 0.01 * f)
                if smooth_depth
                else rng.uniform(1, 9, (H, W))
            )
            depth = depth.astype(np.float32)
            ids = (rng.uniform(size=(H, W)) > 0.8).astype(np.uint8)
            out.add_frame(f"cam{i:02d}", clip[f], depth, ids)
    out.finish(
        {"scene_id": scene_id, "backend": backend, "caption": caption, "spec": {"seed": seed, "caption": caption}}
    )
    return folder


def make_frameset(
    root: Path, group_id: str, source: str = "realestate10k", views: int = 3, fmt: str = "jpg", seed: int = 0
) -> Path:
    """A sample-frames group folder: images + cameras.json with frame_index (and timestamp_us for RE10K)."""
    folder = root / group_id
    folder.mkdir(parents=True)
    imgs = smooth_frames(views, H, W, seed=seed)
    entries = []
    for i in range(views):
        name = f"v{i:02d}.{fmt}"
        ok, buf = cv2.imencode("." + fmt, cv2.cvtColor(imgs[i], cv2.COLOR_RGB2BGR))
        assert ok
        (folder / name).write_bytes(buf.tobytes())
        cam = Camera(W, H, 50.0 + i, 51.0 + i, W / 2, H / 2, look_at((3 + 0.2 * i, 0.5 * i, 1.5), (0, 0, 1)))
        e: dict[str, Any] = cam.to_dict(id=f"v{i:02d}", image=name)
        e["frame_index"] = 10 * i + seed
        if source == "realestate10k":
            e["timestamp_us"] = 1000 * (10 * i + seed)
        e["raw"] = {"w2c": cam.w2c().reshape(-1).tolist()}
        entries.append(e)
    write_json(
        folder / "cameras.json",
        {
            "source": source,
            "sequence": f"seq{seed}",
            "source_uri": f"https://example.com/{seed}",
            "frame_indices": [e["frame_index"] for e in entries],
            "cameras": entries,
        },
    )
    return folder


def make_web_videos(root: Path, specs: list[tuple[str, int, str]]) -> Path:
    """mp4s and a filter scores.parquet; specs = [(name, frames, status)]. Returns the scores file."""
    import hashlib

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, frames, status) in enumerate(specs):
        path = root / f"{name}.mp4"
        encode(smooth_frames(frames, H, W, seed=50 + k), path, fps=10.0)
        data = path.read_bytes()
        rows.append(
            {
                "path": str(path.resolve()),
                "content_hash": hashlib.sha256(data).hexdigest(),
                "status": status,
                "reason": "" if status == "kept" else "camera moves",
                "subject_motion": 0.1 + k,
                "camera_motion": 0.001 * (k + 1),
                "duration_s": frames / 10.0,
                "fps": 10.0,
                "width": W,
                "height": H,
                "num_frames": frames,
                "codec": "h264",
                "error": None,
                "settings": json.dumps({"threshold": 0.5}),
            }
        )
    scores = root / "scores.parquet"
    pq.write_table(pa.Table.from_pylist(rows), scores)
    return scores


def make_syncamvideo(
    root: Path,
    extrinsics: Path,
    subset: str = "f24_aperture5",
    scene: str = "scene1",
    cams: int = 4,
    frames: int = FRAMES,
    seed: int = 0,
) -> Path:
    """``<root>/<subset>/<scene>/videos/camXX.mp4`` + the real camera_extrinsics.json (videos for the first ``cams`` cameras).

    ``subset`` may hold several levels (``train/f24_aperture5``) and ``scene`` may be empty (the
    released ``val/basic`` has no ``sceneN`` level).
    """
    folder = root / subset / scene if scene else root / subset
    (folder / "cameras").mkdir(parents=True)
    shutil.copy(extrinsics, folder / "cameras" / "camera_extrinsics.json")
    names = sorted(json.loads(extrinsics.read_text())["frame0"])[:cams]
    for i, cam in enumerate(names):
        encode(
            smooth_frames(frames, H, W, seed=200 + i + 17 * len(scene) + 1000 * seed),
            folder / "videos" / f"{cam}.mp4",
            fps=15.0,
        )
    return folder

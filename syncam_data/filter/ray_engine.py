"""filter-videos on Ray Data: CPU tasks decode, a pool of actors segments/tracks/scores.

Decoding is CPU-bound and embarrassingly parallel; SAM and CoTracker want a
GPU and should load their weights once. So the pipeline is two stages:
``map`` (one CPU per video: probe, downsampled decode, scene-cut scores) and
``map_batches`` over an actor pool of ``--workers`` actors (one GPU each when
``--device`` is CUDA) that keep the models loaded. Rows stream back to the
driver, which saves each as soon as it arrives, so a killed job resumes.
Clips travel between stages as ``.npz`` bytes (no pickles).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm import tqdm

from syncam_data.filter.decode import Clip
from syncam_data.filter.settings import FilterConfig
from syncam_data.filter.stages import VideoItem, analyze_stage, base_row, decode_stage, error_row, time_limit
from syncam_data.video import VideoInfo

log = logging.getLogger(__name__)
# Input blocks: one per video for small jobs; bounded so millions of videos do not mean millions of blocks.
MAX_BLOCKS = 20_000


def _pack(frames: np.ndarray, fps: float) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, frames=frames, fps=np.float64(fps))
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[np.ndarray, float]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["frames"], float(z["fps"])


def _decode_task(record: dict[str, Any], settings_json: str) -> dict[str, Any]:
    s = FilterConfig.from_json(settings_json)
    item = VideoItem(**json.loads(record["item"]))
    row = base_row(item, s)
    try:
        with time_limit(s.timeout_s, item.path) as check:
            row, clip, cut = decode_stage(item, s, check, row)
    except Exception as e:  # recorded as an error row; the dataset goes on
        return {"row": json.dumps(error_row(row, e)), "clip": b"", "cut": 0.0}
    if clip is None:
        return {"row": json.dumps(row), "clip": b"", "cut": 0.0}
    return {"row": json.dumps(row), "clip": _pack(clip.frames, clip.fps), "cut": float(cut)}


class _Analyzer:
    """Actor: models load once in the constructor, then one clip per call."""

    def __init__(self, settings_json: str, debug_dir: str | None) -> None:
        from pathlib import Path

        from syncam_data.filter.stages import get_models

        self.settings = FilterConfig.from_json(settings_json)
        self.debug_dir = Path(debug_dir) if debug_dir else None
        get_models(self.settings)

    def _one(self, row_json: str, clip_bytes: bytes, cut: float) -> str:
        row = json.loads(row_json)
        if not clip_bytes:
            return row_json
        s = self.settings
        try:
            frames, fps = _unpack(clip_bytes)
            info = VideoInfo(
                row["num_frames"], row["fps"], row["width"], row["height"], row["codec"], row["duration_s"]
            )
            with time_limit(s.timeout_s, row["path"]) as check:
                row = analyze_stage(row, Clip(frames, fps, 1, info), cut, s, check, self.debug_dir)
        except Exception as e:  # per-video failure
            row = error_row(row, e)
        return json.dumps(row)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [self._one(r, c, float(k)) for r, c, k in zip(batch["row"], batch["clip"], batch["cut"])]
        return {"row": np.array(out, dtype=object)}


def ray_rows(
    todo: list[VideoItem], s: FilterConfig, workers: int, address: str | None, debug_dir: str | None, progress: bool
) -> Iterator[dict[str, Any]]:
    """Yield one finished row per item, in completion order."""
    if not todo:
        return
    from syncam_data.engine import ray_init

    ray = ray_init(address)
    settings_json = s.to_json()
    gpus = 1 if s.device.startswith("cuda") else 0
    ds = ray.data.from_items(
        [{"item": json.dumps(asdict(it))} for it in todo], override_num_blocks=min(len(todo), MAX_BLOCKS)
    )
    ds = ds.map(_decode_task, fn_kwargs={"settings_json": settings_json}, num_cpus=1)
    ds = ds.map_batches(
        _Analyzer,
        fn_constructor_kwargs={"settings_json": settings_json, "debug_dir": debug_dir},
        batch_size=1,
        batch_format="numpy",
        concurrency=max(1, workers),
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
    )
    with tqdm(
        total=len(todo), desc="filter-videos (ray)", unit="video", disable=not progress, dynamic_ncols=True
    ) as bar:
        for rec in ds.iter_rows():
            bar.update(1)
            yield json.loads(rec["row"])

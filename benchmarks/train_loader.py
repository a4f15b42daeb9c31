"""Loader throughput (mp4 shards vs latent cache) against the training step time of the tiny model.

    python benchmarks/train_loader.py --out docs/benchmarks/train.md

Builds a synthetic shard dataset in a temporary folder (multi-view video
groups, smooth moving patterns encoded as H.264), then measures:

1. loader samples/s decoding mp4 at the tiny training size and at the paper's
   384x672x49 (multi-view video micro-batches of ``--views`` views), with 0
   and ``--workers`` dataloader workers;
2. ``syncam-train cache`` build time and loader samples/s from the cache;
3. one optimizer step of the tiny model (decode path and cache path).

The question it answers: does the loader keep up with the model step?
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from syncam_data import video
from syncam_data.cameras import look_at, spherical_position
from syncam_data.shards.schema import ViewRecord
from syncam_data.shards.writer import ShardWriter
from syncam_model.config import load_config
from syncam_model.data import build_loader

log = logging.getLogger("bench.train_loader")


def frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = np.clip(base[0] + 40 * np.sin((xx + 3 * i) / 17.0), 0, 255)
        out[i, ..., 1] = np.clip(base[1] + 40 * np.cos((yy + 2 * i) / 13.0), 0, 255)
        out[i, ..., 2] = base[2]
    return out


def make_dataset(root: Path, groups: int, views: int, nframes: int, h: int, w: int) -> Path:
    with ShardWriter(root, name="bench", shard_size="256MB", row_group_size="32MB") as wr:
        for g in range(groups):
            recs = []
            for v in range(views):
                eye = spherical_position((0, 0, 1), 5.0, 10.0, 15.0 * v)
                c2w = [float(x) for x in look_at(eye, (0, 0, 1)).reshape(-1)]
                blob = video.encode(frames(nframes, h, w, 10 * g + v), fps=8, preset="veryfast", gop=8)
                recs.append(ViewRecord("bench", "multiview_video", f"g{g}", f"c{v}", blob, "mp4", nframes, h, w, fps=8.0,
                                       caption=f"scene {g}", K=[w / 2, w / 2, w / 2, h / 2], c2w=c2w))
            wr.write_group(recs)
    return root


def loader_rate(shards: Path, cfg: Any, batches: int, cache: Any = None) -> float:
    loader = build_loader(str(shards), cfg, total_micro=batches + 1, cache=cache)
    it = iter(loader.dataloader())
    next(it)  # worker start-up and first decode are not throughput
    t = time.perf_counter()
    n = 0
    for b in it:
        n += len(b["sample_ids"])
    return n / (time.perf_counter() - t)


def bench_cfg(h: int, w: int, f: int, views: int, workers: int, **extra: Any) -> Any:
    over = {"data.height": h, "data.width": w, "data.frames": f, "data.num_views": views, "data.num_workers": workers,
            "data.mix": {"multiview_video": 1.0}, "optim.global_batch_size": 1, "data.frame_sampling": "first",
            "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 180}]}
    over.update(extra)
    return load_config("tiny", over)


def synthetic_2b_cache(shards: Path, cfg: Any, comps: Any) -> Any:
    """A finished cache for ``cfg`` whose tensors have CogVideoX-2B's shapes (random values)."""
    from syncam_data.shards.reader import ShardReader
    from syncam_model.cache import LatentCache, _atomic_save, _commit_part, cache_key, cache_root, cache_settings, finalize
    from syncam_model.data import caption_key

    settings = cache_settings(cfg, comps)
    path = cache_root(shards, cfg) / cache_key(settings)
    path.mkdir(parents=True, exist_ok=True)
    rows = ShardReader(shards).rows(["sample_id", "group_id", "caption"])
    g = torch.Generator().manual_seed(0)
    for gid in sorted({r["group_id"] for r in rows}):
        tensors: dict[str, torch.Tensor] = {}
        for r in (r for r in rows if r["group_id"] == gid):
            sid = r["sample_id"]
            tensors[f"{sid}|mean"] = torch.randn(13, 16, 48, 84, generator=g).bfloat16()
            tensors[f"{sid}|logvar"] = torch.randn(13, 16, 48, 84, generator=g).bfloat16()
            tensors[f"{sid}|frames"] = torch.arange(49, dtype=torch.int32)
            tensors[f"text|{caption_key(r['caption'])}"] = torch.randn(226, 4096, generator=g).bfloat16()
        _commit_part(path, 0, len(list(path.glob("part-*"))), tensors, [f"bench/{gid}"], path / "parts-r0.jsonl")
    _atomic_save({"text": torch.zeros(226, 4096).bfloat16()}, path / "text_empty.safetensors")
    finalize(path, settings, 1)
    return LatentCache(path)


def step_time(shards: Path, cfg: Any, run: Path, steps: int) -> dict[str, float]:
    from syncam_model.train import Trainer

    tr = Trainer(str(shards), "tiny", run, cfg)
    it = iter(tr.loader.dataloader())
    tr.train_step(it)  # warm-up
    times, waits = [], []
    for _ in range(steps):
        rec = tr.train_step(it)
        times.append(rec["step_time_s"])
        waits.append(rec["data_wait_s"])
    return {"step_s": float(np.median(times)), "data_wait_s": float(np.median(waits)), "cache": tr.cache is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    ap.add_argument("--views", type=int, default=4, help="views per multi-view sample")
    ap.add_argument("--workers", type=int, default=2, help="dataloader workers for the parallel measurement")
    ap.add_argument("--batches", type=int, default=12, help="micro-batches timed per measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the main process")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="syncam-bench-"))
    rows: list[tuple[str, str]] = []

    def add(what: str, result: str) -> None:
        rows.append((what, result))
        log.warning("%s: %s", what, result)  # partial results survive an interrupted run
    try:
        t = time.perf_counter()
        tiny = make_dataset(tmp / "tiny", groups=6, views=6, nframes=17, h=40, w=56)
        paper = make_dataset(tmp / "paper", groups=3, views=args.views, nframes=49, h=384, w=672)
        add("synthetic shards built (6x6 clips 40x56x17, 3x4 clips 384x672x49)", f"{time.perf_counter() - t:.1f} s")
        for name, shards, (h, w, f) in (("tiny 32x48x9", tiny, (32, 48, 9)), ("paper 384x672x49", paper, (384, 672, 49))):
            for workers in (0, args.workers):
                r = loader_rate(shards, bench_cfg(h, w, f, args.views, workers), args.batches)
                add(f"loader, mp4, {name}, {args.views} views, {workers} workers", f"{r:.2f} samples/s ({r * args.views * f:.0f} frames/s)")
        # the latent cache: built with the tiny VAE at the tiny size; at the paper size the tiny VAE is far too
        # slow on this CPU, so a cache of random tensors with CogVideoX-2B's latent and T5 shapes is written in
        # the same format (reading is what is measured)
        from syncam_model.cache import build_cache, open_matching
        from syncam_model.model import load_components

        comps = load_components("tiny", dtype=torch.float32, device="cpu", tiny_config={"variant": "2b", "seed": 0})
        cfg = bench_cfg(32, 48, 9, args.views, 0)
        t = time.perf_counter()
        build_cache(str(tiny), cfg, comps, view_batch=1, progress=False)
        add(f"cache build (tiny VAE + tiny T5), tiny 32x48x9, {6 * 6} view clips", f"{36 / (time.perf_counter() - t):.2f} view clips/s")
        cache = open_matching(str(tiny), cfg, comps)
        for workers in (0, args.workers):
            r = loader_rate(tiny, bench_cfg(32, 48, 9, args.views, workers), args.batches, cache=cache)
            add(f"loader, latent cache, tiny 32x48x9, {args.views} views, {workers} workers", f"{r:.2f} samples/s")
        cfg = bench_cfg(384, 672, 49, args.views, 0, **{"cache.dtype": "bfloat16"})
        cache = synthetic_2b_cache(paper, cfg, comps)
        for workers in (0, args.workers):
            r = loader_rate(paper, bench_cfg(384, 672, 49, args.views, workers, **{"cache.dtype": "bfloat16"}), args.batches, cache=cache)
            add(f"loader, latent cache (2B shapes: 13x16x48x84 + 226x4096, bf16), {args.views} views, {workers} workers", f"{r:.2f} samples/s")
        # tiny model steps at the tiny size: decode vs cache
        for use in ("never", "require"):
            cfg = bench_cfg(32, 48, 9, args.views, 0, **{"cache.use": use, "model.gradient_checkpointing": False})
            st = step_time(tiny, cfg, tmp / f"run-{use}", steps=5)
            label = "latent cache" if st["cache"] else "mp4 decode + VAE/T5 encode"
            add(f"tiny model optimizer step (1 sample, {args.views} views, 32x48x9), {label}", f"{st['step_s']:.3f} s (data wait {st['data_wait_s']:.3f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, no GPU"
    table = "\n".join(["| measurement | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    report = f"Machine: {machine}.\n\n{table}\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()

"""Training loader speed against its limit (PyAV decoding the same blobs), worker scaling, cache and tiny steps.

    python benchmarks/train_loader.py --out /tmp/train_loader.md
    python benchmarks/train_loader.py --sections loader,stages --repeats 3

Builds a synthetic shard dataset in a temporary folder (multi-view video
groups of 4 views x 49 frames at 384x672, smooth moving patterns encoded as
H.264 with a GOP of 8), then measures, in this one process:

``loader``  the headline. One 0-worker micro-batch (1 sample of ``--views``
            views) through the real dataloader (planning, blob fetch, decode,
            resize/crop, batch assembly), alternating round by round with the
            limit it is held against: PyAV decoding the same blobs from memory
            (threaded, ``to_ndarray(format="rgb24")`` of the same frames at the
            same cover size, the same crop taken as a view). Also alternating:
            the decoder alone (frames decoded, never converted: the floor no
            loader can beat) and the previous loader path (per-frame arrays,
            stacked and transposed; kept here as a same-run "before").
            Printed: medians and the ratio loader / decode.
``stages``  where one sample's time goes: each stage is a longer prefix of the
            loader's pipeline, timed alternating; the differences are the
            stage costs.
``workers`` samples/s with ``data.num_workers`` = 0, 1, 2 (and ``--workers``).
``cache``   ``syncam-train cache`` build rate at the tiny size and reading the
            latent cache (also at CogVideoX-2B's shapes).
``steps``   one optimizer step of the tiny model, decode path vs cache path.

The machine may be shared: every ratio is taken within one run, alternating;
``--repeats`` repeats the sections and the report gives medians and the
1-minute load average before and after each repeat.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from syncam_data import video
from syncam_data.cameras import look_at, spherical_position
from syncam_data.shards.schema import ViewRecord
from syncam_data.shards.writer import ShardWriter
from syncam_model.config import load_config
from syncam_model.data import BatchBuffers, build_loader, crop_box, decode_view

log = logging.getLogger("bench.train_loader")

SECTIONS = ("loader", "stages", "workers", "cache", "steps")


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
                recs.append(
                    ViewRecord(
                        "bench",
                        "multiview_video",
                        f"g{g}",
                        f"c{v}",
                        blob,
                        "mp4",
                        nframes,
                        h,
                        w,
                        fps=8.0,
                        caption=f"scene {g}",
                        K=[w / 2, w / 2, w / 2, h / 2],
                        c2w=c2w,
                    )
                )
            wr.write_group(recs)
    return root


def bench_cfg(h: int, w: int, f: int, views: int, workers: int, **extra: Any) -> Any:
    over = {
        "data.height": h,
        "data.width": w,
        "data.frames": f,
        "data.num_views": views,
        "data.num_workers": workers,
        "data.mix": {"multiview_video": 1.0},
        "optim.global_batch_size": 1,
        "data.frame_sampling": "first",
        "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 180}],
    }
    over.update(extra)
    return load_config("tiny", over)


# --- the limit and the loader, same process, alternating ----------------------------------------------


def reference_decode(
    blobs: list[bytes], wanted: list[int], src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> list[np.ndarray]:
    """The limit: PyAV as its documentation shows it, from memory, threaded, rgb24 at the cover size, same crop."""
    rw, rh, x0, y0 = crop_box(src_hw, dst_hw)
    (H, W), keep, last = dst_hw, set(wanted), max(wanted)
    out = []
    for blob in blobs:
        with av.open(io.BytesIO(blob)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, fr in enumerate(c.decode(s)):
                if i in keep:
                    out.append(fr.to_ndarray(format="rgb24", width=rw, height=rh)[y0 : y0 + H, x0 : x0 + W])
                if i >= last:
                    break
    return out


def tuned_decode(blobs: list[bytes], wanted: list[int], src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> list[Any]:
    """PyAV tuned: one scaler per clip (``VideoReformatter``) to planar RGB at the cover size, frames kept, no copies."""
    from av.video.reformatter import VideoReformatter

    rw, rh, _, _ = crop_box(src_hw, dst_hw)
    keep, last = set(wanted), max(wanted)
    out = []
    for blob in blobs:
        scaler = VideoReformatter()
        with av.open(io.BytesIO(blob)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, fr in enumerate(c.decode(s)):
                if i in keep:
                    out.append(scaler.reformat(fr, width=rw, height=rh, format="gbrp", threads=1))
                if i >= last:
                    break
    return out


def decode_floor(blobs: list[bytes], wanted: list[int]) -> int:
    """The decoder alone: the same packets decoded to YUV frames, nothing converted or kept."""
    last, n = max(wanted), 0
    for blob in blobs:
        with av.open(io.BytesIO(blob)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, _ in enumerate(c.decode(s)):
                n += 1
                if i >= last:
                    break
    return n


def previous_path(
    blobs: list[bytes], wanted: list[int], src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> torch.Tensor:
    """The loader before issue 20: per-frame arrays, stack, crop copy, stack again, transpose.

    It goes through today's ``video.decode``, which since then shares one scaler across frames, so
    it is somewhat faster than the loader it stands for (the docs' "before" figures predate that).
    """
    rw, rh, x0, y0 = crop_box(src_hw, dst_hw)
    (H, W) = dst_hw
    clips = [np.ascontiguousarray(video.decode(b, wanted, size=(rw, rh))[:, y0 : y0 + H, x0 : x0 + W]) for b in blobs]
    return torch.stack([torch.as_tensor(np.stack(clips).transpose(0, 1, 4, 2, 3))])


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def loader_vs_decode(
    shards: Path, views: int, rounds: int, dst_hw: tuple[int, int] = (384, 672), nframes: int = 49
) -> dict[str, list[float]]:
    """Per round: one loader micro-batch, then the same blobs through the limit, the floor and the old path (order rotates)."""
    cfg = bench_cfg(*dst_hw, nframes, views, 0)
    loader = build_loader(str(shards), cfg, total_micro=rounds + 2)
    reader = loader.reader
    sids = reader.index.column("sample_id").to_pylist()
    blob_of = {s: reader.read_blob(i) for i, s in enumerate(sids)}
    hw_of = {s: (int(loader.dataset.stored_hw[i, 0]), int(loader.dataset.stored_hw[i, 1])) for i, s in enumerate(sids)}
    it = iter(loader.dataloader())
    next(it)  # first batch: imports and lazy set-up are not throughput
    times: dict[str, list[float]] = {"loader": [], "reference": [], "tuned": [], "floor": [], "previous": []}
    for r in range(rounds):
        t = time.perf_counter()
        batch = next(it)
        t_loader = time.perf_counter() - t
        sample = batch["sample_ids"][0]
        blobs, wanted, src_hw = [blob_of[s] for s in sample], list(batch["frames"][0]), hw_of[sample[0]]
        del batch
        others = [
            ("reference", partial(reference_decode, blobs, wanted, src_hw, dst_hw)),
            ("tuned", partial(tuned_decode, blobs, wanted, src_hw, dst_hw)),
            ("floor", partial(decode_floor, blobs, wanted)),
            ("previous", partial(previous_path, blobs, wanted, src_hw, dst_hw)),
        ]
        others = others[r % len(others) :] + others[: r % len(others)]
        times["loader"].append(t_loader)
        for name, fn in others:
            times[name].append(_timed(fn))
    return times


def stage_times(
    shards: Path, views: int, rounds: int, dst_hw: tuple[int, int] = (384, 672), nframes: int = 49
) -> dict[str, list[float]]:
    """Cumulative prefixes of one sample's pipeline (4 views), alternating; differences are stage costs."""
    from av.video.reformatter import VideoReformatter

    cfg = bench_cfg(*dst_hw, nframes, views, 0)
    loader = build_loader(str(shards), cfg, total_micro=10_000)
    ds, reader, sampler = loader.dataset, loader.reader, loader.sampler
    H, W = dst_hw

    def slot_inputs():
        plan = sampler.plan()
        g = ds.by_key[plan.slots[0].group]
        rows = [g.rows[v] for v in plan.slots[0].views]
        return plan, rows

    def plan_only():
        sampler.plan()

    def fetch():
        _, rows = slot_inputs()
        return [reader.read_blob(r) for r in rows]

    def open_streams():
        for b in fetch():
            with av.open(io.BytesIO(b)) as c:
                c.streams.video[0].thread_type = "AUTO"

    def decode_only():
        plan, rows = slot_inputs()
        decode_floor([reader.read_blob(r) for r in rows], plan.slots[0].frames)

    def decode_convert():
        plan, rows = slot_inputs()
        rw, rh, _, _ = crop_box(tuple(ds.stored_hw[rows[0]]), dst_hw)
        last = max(plan.slots[0].frames)
        for r in rows:
            scaler = VideoReformatter()
            with av.open(io.BytesIO(reader.read_blob(r))) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for i, fr in enumerate(c.decode(s)):
                    scaler.reformat(fr, width=rw, height=rh, format="gbrp", threads=1)
                    if i >= last:
                        break

    warm = np.empty((views, nframes, 3, H, W), np.uint8)
    warm[:] = 0

    def decode_into_warm():
        plan, rows = slot_inputs()
        for v, r in enumerate(rows):
            decode_view(
                reader.read_blob(r),
                ds.media_format[r],
                plan.slots[0].frames,
                dst_hw,
                "",
                tuple(ds.stored_hw[r]),
                out=warm[v],
            )

    def decode_into_fresh():
        plan, rows = slot_inputs()
        out = BatchBuffers(keep=0).take((1, views, nframes, 3, H, W)).numpy()
        for v, r in enumerate(rows):
            decode_view(
                reader.read_blob(r),
                ds.media_format[r],
                plan.slots[0].frames,
                dst_hw,
                "",
                tuple(ds.stored_hw[r]),
                out=out[0, v],
            )

    def full_sample():
        ds[sampler.plan()]

    stages = [
        ("plan", plan_only),
        ("+ blob fetch", fetch),
        ("+ container open", open_streams),
        ("+ decode (YUV, no conversion)", decode_only),
        ("+ swscale to planar RGB at the cover size", decode_convert),
        ("+ crop copy into a reused batch array", decode_into_warm),
        ("+ cameras, K, batch dict (the loader's sample)", full_sample),
        (FRESH, decode_into_fresh),
    ]
    full_sample()
    times: dict[str, list[float]] = {name: [] for name, _ in stages}
    for r in range(rounds):
        order = stages if r % 2 == 0 else stages[::-1]
        for name, fn in order:
            times[name].append(_timed(fn))
    return times


FRESH = "for comparison: the copy into a fresh batch array each time (page faults)"


def loader_rate(shards: Path, cfg: Any, batches: int, cache: Any = None) -> float:
    return loader_rate_cpu(shards, cfg, batches, cache)[0]


def loader_rate_cpu(shards: Path, cfg: Any, batches: int, cache: Any = None) -> tuple[float, float]:
    """(samples/s after the first batch, CPU seconds per sample of this process and its workers, start-up included)."""
    cpu0 = _cpu()
    loader = build_loader(str(shards), cfg, total_micro=batches + 1, cache=cache)
    it = iter(loader.dataloader())
    n0 = len(next(it)["sample_ids"])  # worker start-up and first decode are not throughput
    t = time.perf_counter()
    n = 0
    for b in it:
        n += len(b["sample_ids"])
    rate = n / (time.perf_counter() - t)
    del it  # joins the workers, so their CPU time is counted
    return rate, (_cpu() - cpu0) / (n + n0)


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def synthetic_2b_cache(shards: Path, cfg: Any, comps: Any) -> Any:
    """A finished cache for ``cfg`` whose tensors have CogVideoX-2B's shapes (random values)."""
    from syncam_data.shards.reader import ShardReader
    from syncam_model.cache import (
        LatentCache,
        _atomic_save,
        _commit_part,
        cache_key,
        cache_root,
        cache_settings,
        finalize,
    )
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


# --- report -----------------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--views", type=int, default=4, help="views per multi-view sample")
    ap.add_argument("--workers", type=int, default=2, help="largest dataloader worker count measured (0, 1, ... this)")
    ap.add_argument(
        "--rounds", type=int, default=9, help="alternating rounds per repeat for the loader and stage sections"
    )
    ap.add_argument("--batches", type=int, default=8, help="micro-batches timed per worker/cache measurement")
    ap.add_argument("--repeats", type=int, default=1, help="repeat the sections; medians over all rounds are reported")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the main process")
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := sorted(set(sections) - set(SECTIONS)):
        ap.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="syncam-bench-"))
    parts: list[str] = []
    loads: list[str] = []
    try:
        t = time.perf_counter()
        paper = make_dataset(tmp / "paper", groups=3, views=args.views, nframes=49, h=384, w=672)
        tiny = (
            make_dataset(tmp / "tiny", groups=6, views=6, nframes=17, h=40, w=56)
            if {"workers", "cache", "steps"} & set(sections)
            else None
        )
        log.warning("synthetic shards built in %.1f s", time.perf_counter() - t)
        head: dict[str, list[float]] = {}
        stages: dict[str, list[float]] = {}
        rates: dict[int, list[float]] = {}
        cpus: dict[int, list[float]] = {}
        for rep in range(args.repeats):
            before = load()
            if "loader" in sections:
                for k, v in loader_vs_decode(paper, args.views, args.rounds).items():
                    head.setdefault(k, []).extend(v)
                log.warning(
                    "repeat %d: loader %.0f ms, reference decode %.0f ms",
                    rep,
                    1e3 * med(head["loader"]),
                    1e3 * med(head["reference"]),
                )
            if "stages" in sections:
                for k, v in stage_times(paper, args.views, args.rounds).items():
                    stages.setdefault(k, []).extend(v)
            if "workers" in sections:
                order = list(range(args.workers + 1))
                for workers in order if rep % 2 == 0 else order[::-1]:
                    r, cpu = loader_rate_cpu(paper, bench_cfg(384, 672, 49, args.views, workers), args.batches)
                    rates.setdefault(workers, []).append(r)
                    cpus.setdefault(workers, []).append(cpu)
                    log.warning("repeat %d: %d workers: %.2f samples/s, %.2f CPU-s per sample", rep, workers, r, cpu)
            loads.append(f"{before} -> {load()}")
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, PyAV {av.__version__}, no GPU"
        )
        parts.append(f"Machine: {machine}. 1-minute load average per repeat (start -> end): {', '.join(loads)}.\n")
        if head:
            ratio = med(head["loader"]) / med(head["reference"])
            pair = med([a / b for a, b in zip(head["loader"], head["reference"])])
            n = len(head["loader"])
            parts.append(
                f"## Loader vs decode (1 sample = {args.views} views x 49 frames, 384x672, 0 workers; {n} alternating rounds)\n\n"
                f"**loader / decode = {ratio:.2f}** (ratio of medians; median of per-round ratios {pair:.2f}; goal <= 1.25)\n\n"
                "| path | median ms per sample | min ms | x decode |\n|---|---:|---:|---:|\n"
                + "\n".join(
                    f"| {label} | {1e3 * med(head[k]):.0f} | {1e3 * min(head[k]):.0f} | {med(head[k]) / med(head['reference']):.2f} |"
                    for k, label in (
                        ("loader", "training loader (plan, fetch, decode, resize/crop, batch)"),
                        ("reference", "limit: PyAV decode from memory, threaded, rgb24, same frames and crop"),
                        ("tuned", "PyAV tuned: one scaler per clip, planar RGB at the cover size, no copies"),
                        ("floor", "decoder alone (YUV frames, no conversion)"),
                        ("previous", "previous loader path (per-frame arrays, stack, transpose)"),
                    )
                )
                + "\n"
            )
        if stages:
            # Stage cost: the median over rounds of the difference to the previous prefix timed in the same round.
            rows, prev = [], None
            for k, v in stages.items():
                if k == FRESH:
                    ref = stages["+ crop copy into a reused batch array"]
                    rows.append(
                        f"| {k} | {1e3 * med(v):.1f} | {1e3 * med([a - b for a, b in zip(v, ref)]):+.1f} vs reused |"
                    )
                    continue
                cost = med(v) if prev is None else med([a - b for a, b in zip(v, prev)])
                rows.append(f"| {k} | {1e3 * med(v):.1f} | {1e3 * cost:+.1f} |")
                prev = v
            parts.append(
                "## Where one sample's time goes (cumulative prefixes of the pipeline, alternating)\n\n"
                "Stage cost = median over rounds of (this prefix - the previous one), both timed in the same round.\n\n"
                "| pipeline up to | median ms | stage cost ms |\n|---|---:|---:|\n" + "\n".join(rows) + "\n"
            )
        if rates:
            base = med(rates.get(1, [float("nan")]))
            parts.append(
                f"## Dataloader workers (paper size, {args.views} views x 49 frames, {args.batches} micro-batches per run)\n\n"
                "| workers | samples/s (median) | runs | x 1 worker | CPU-s per sample (all processes) |\n|---:|---:|---|---:|---:|\n"
                + "\n".join(
                    f"| {k} | {med(rates[k]):.2f} | {', '.join(f'{x:.2f}' for x in rates[k])} | {med(rates[k]) / base:.2f} | {med(cpus[k]):.2f} |"
                    for k in sorted(rates)
                )
                + "\n"
            )
        rows2: list[tuple[str, str]] = []
        if "cache" in sections:
            from syncam_model.cache import build_cache, open_matching
            from syncam_model.model import load_components

            comps = load_components("tiny", dtype=torch.float32, device="cpu", tiny_config={"variant": "2b", "seed": 0})
            cfg = bench_cfg(32, 48, 9, args.views, 0)
            t = time.perf_counter()
            build_cache(str(tiny), cfg, comps, view_batch=1, progress=False)
            rows2.append(
                (
                    f"cache build (tiny VAE + tiny T5), tiny 32x48x9, {6 * 6} view clips",
                    f"{36 / (time.perf_counter() - t):.2f} view clips/s",
                )
            )
            cache = open_matching(str(tiny), cfg, comps)
            for workers in (0, args.workers):
                r = loader_rate(tiny, bench_cfg(32, 48, 9, args.views, workers), args.batches, cache=cache)
                rows2.append(
                    (f"loader, latent cache, tiny 32x48x9, {args.views} views, {workers} workers", f"{r:.2f} samples/s")
                )
            cfg = bench_cfg(384, 672, 49, args.views, 0, **{"cache.dtype": "bfloat16"})
            cache = synthetic_2b_cache(paper, cfg, comps)
            for workers in (0, args.workers):
                r = loader_rate(
                    paper,
                    bench_cfg(384, 672, 49, args.views, workers, **{"cache.dtype": "bfloat16"}),
                    args.batches,
                    cache=cache,
                )
                rows2.append(
                    (
                        f"loader, latent cache (2B shapes: 13x16x48x84 + 226x4096, bf16), {args.views} views, {workers} workers",
                        f"{r:.2f} samples/s",
                    )
                )
        if "steps" in sections:
            for use in ("never", "require"):
                cfg = bench_cfg(32, 48, 9, args.views, 0, **{"cache.use": use, "model.gradient_checkpointing": False})
                st = step_time(tiny, cfg, tmp / f"run-{use}", steps=5)
                label = "latent cache" if st["cache"] else "mp4 decode + VAE/T5 encode"
                rows2.append(
                    (
                        f"tiny model optimizer step (1 sample, {args.views} views, 32x48x9), {label}",
                        f"{st['step_s']:.3f} s (data wait {st['data_wait_s']:.3f} s)",
                    )
                )
        if rows2:
            parts.append(
                "## Latent cache and tiny model steps\n\n| measurement | result |\n|---|---|\n"
                + "\n".join(f"| {a} | {b} |" for a, b in rows2)
                + "\n"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = "\n".join(parts)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()

"""GPU check: training step, generation and the latent-cache loader at CogVideoX's real shapes, random weights.

    .venv/bin/python benchmarks/gpu_check.py --out gpu_check.md      # on a CUDA machine; under 8 minutes on H100/H200
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny     # the same code at tiny shapes (the tests run this)

Nothing is downloaded: every model is built by ``syncam_model.model.load_components``
(``--pretrained tiny`` with the real CogVideoX transformer / VAE shapes as overrides),
so the check runs the code users run, with random weights. It prints one table:

(a) one training step of the CogVideoX-2B-shaped transformer, bf16 weights + bf16
    autocast, gradient checkpointing, fp32 master weights for what trains, AdamW
    (as ``syncam-train`` does), one sample of 2 and 4 views x 13 latent frames x
    60x90 latents (49 frames at 480x720), three ways: ``base`` (the unadapted
    transformer on the views as a batch, all base weights trained: CogVideoX full
    fine-tuning), ``adapted`` (SynCamMaster's modules trained, base frozen: the
    default) and ``adapted+base`` (``model.train_base: true``). Step time, peak
    memory, model TFLOP/s, MFU and HFU. Goals: adapted <= 1.3x base per view,
    MFU >= 40 %.
(b) the same for the CogVideoX-5B shape (RoPE, 42 layers, 48 heads); a case that
    does not fit in memory is reported as such.
(c) ``syncam-generate``'s denoising loop (``syncam_model.generate.generate``) for
    4 views x 49 frames at 480x720 with ``--sequential-passes`` and VAE tiling:
    time per denoising step, peak memory during denoising and with the VAE decode.
(d) ``syncam-train``'s Trainer fed by the latent-cache loader (a cache built by
    ``syncam-train cache``'s code from synthetic 480x720 clips): step time and
    the time the step waited for data (goal < 5 %).

FLOPs are counted, not estimated by hand: ``torch.utils.flop_counter`` runs the
same model on the meta device (shapes only, no memory) for 1 and 2 layers, and the
count is extended linearly to the real layer count (every layer after the first
costs the same). Model FLOPs = forward + backward of the step without
recomputation; hardware FLOPs add gradient checkpointing's recomputed forward.
TFLOP/s = model FLOPs / step time; MFU = that / the device's peak dense bf16
rate (table ``PEAK_BF16_TFLOPS``, from NVIDIA's data sheets; ``--peak-tflops``
overrides); HFU uses hardware FLOPs.

Attention must run on a fused SDPA kernel (flash, memory-efficient or cuDNN on
CUDA; the CPU flash kernel with ``--device cpu``): every timed step runs under
``torch.nn.attention.sdpa_kernel`` restricted to those backends (a fallback to
the math path raises), and the first step of every case counts the attention
operators dispatched: fewer fused calls than attention layers, or any softmax
(a hand-written or math-path attention), stops the check with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from syncam_model.components import RELEASED_TRANSFORMERS  # noqa: E402

log = logging.getLogger("gpu_check")

# CogVideoX's VAE (diffusers AutoencoderKLCogVideoX defaults = the released 2B/5B VAE), undoing the tiny overrides.
REAL_VAE: dict[str, Any] = dict(
    block_out_channels=(128, 256, 256, 512),
    latent_channels=16,
    layers_per_block=3,
    norm_num_groups=32,
    temporal_compression_ratio=4,
    scaling_factor=1.15258426,
)
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; first match on the device name wins.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("A6000", 154.8),
    ("L4", 121.0),
]
FUSED_ATTENTION = {
    "cuda": (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ),
    "cpu": ("_scaled_dot_product_flash_attention_for_cpu",),
}
SOFTMAX_OPS = ("_softmax", "_safe_softmax", "softmax")
MODES = ("base", "adapted", "adapted+base")
GOAL_ADAPTED_PER_VIEW = 1.3
GOAL_MFU = 0.40
GOAL_DATA_WAIT = 0.05
GOAL_TOTAL_S = 8 * 60


class KernelCheckError(RuntimeError):
    """An attention layer did not run on a fused SDPA kernel."""


# --- shapes -----------------------------------------------------------------------------------------


class Shapes:
    """Video size and model configs of one check run: the real ones, or tiny ones with the same code path."""

    def __init__(self, tiny: bool) -> None:
        self.tiny = tiny
        self.frames, self.height, self.width = (9, 32, 48) if tiny else (49, 480, 720)

    def transformer(self, model: str) -> dict[str, Any]:
        """``tiny_config`` for ``load_components("tiny", ...)``: variant plus transformer overrides."""
        return (
            {"variant": model} if self.tiny else {"variant": model, "transformer": dict(RELEASED_TRANSFORMERS[model])}
        )

    def with_vae(self, model: str) -> dict[str, Any]:
        cfg = self.transformer(model)
        if not self.tiny:
            cfg["vae"] = dict(REAL_VAE)
        return cfg

    def latent(self, config: Any) -> tuple[int, int, int, int]:
        return (self.frames - 1) // 4 + 1, int(config.in_channels), self.height // 8, self.width // 8


# --- FLOPs --------------------------------------------------------------------------------------------


def adapter_spec(config: str = "paper") -> Any:
    """The multi-view modules' structure a training config asks for (``model.projector``, ``mv_attention_text``, ``mv_position``)."""
    from syncam_model.config import load_config

    return load_config(config).model.adapter_spec()


def _meta_model(tiny_config: dict[str, Any], layers: int, spec: Any = None):
    """The adapted transformer ``load_components`` builds, on the meta device (shapes only), with ``layers`` layers."""
    from diffusers import CogVideoXTransformer3DModel

    from syncam_model.model import MultiViewTransformer, tiny_transformer_config

    cfg = tiny_transformer_config(
        tiny_config["variant"], **{**tiny_config.get("transformer", {}), "num_layers": layers}
    )
    with torch.device("meta"):
        return MultiViewTransformer(CogVideoXTransformer3DModel(**cfg), spec)


def count_flops(
    tiny_config: dict[str, Any],
    layers: int,
    views: int,
    latent: tuple[int, int, int, int],
    mode: str,
    *,
    train: bool = True,
    checkpointing: bool = False,
    spec: Any = None,
) -> int:
    """FLOPs of one step (forward + backward, or forward only) as counted by torch's flop counter on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _meta_model(tiny_config, layers, spec)
    set_mode(model, mode)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train(train)
    inputs = make_inputs(model, views, latent, "meta", torch.float32)
    counter = FlopCounterMode(display=False)
    with counter:
        if train:
            step_loss(model, mode, inputs).backward()
        else:
            with torch.no_grad():
                forward(model, mode, inputs)
    return int(counter.get_total_flops())


def flops_at(tiny_config: dict[str, Any], layers: int, *args: Any, **kw: Any) -> int:
    """``count_flops`` at ``layers`` layers, from counts at 1 and 2 layers.

    Every layer after the first costs the same (the first differs in backward:
    with a frozen base nothing before its multi-view module needs gradients),
    so the count is exactly linear in the layers from the second on.
    """
    f1 = count_flops(tiny_config, 1, *args, **kw)
    if layers == 1:
        return f1
    f2 = count_flops(tiny_config, 2, *args, **kw)
    return f1 + (layers - 1) * (f2 - f1)


# --- one training step, as syncam-train runs it ----------------------------------------------------


def set_mode(model: Any, mode: str) -> None:
    """base: plain fine-tuning of the unadapted model; adapted: the new modules only; adapted+base: both."""
    model.set_trainable(base=mode != "adapted")
    if mode == "base":
        for p in model.adapter_parameters():  # unused by forward_base
            p.requires_grad_(False)


def make_inputs(
    model: Any, views: int, latent: tuple[int, int, int, int], device: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    f, c, h, w = latent
    g = torch.Generator().manual_seed(0)
    cfg = model.config

    def rnd(*shape: int) -> torch.Tensor:
        return (
            torch.empty(shape, device=device, dtype=dtype)
            if device == "meta"
            else torch.randn(shape, generator=g).to(device, dtype)
        )

    return {
        "latents": rnd(1, views, f, c, h, w),
        "text": rnd(1, int(cfg.max_text_seq_length), int(cfg.text_embed_dim)),
        "timestep": torch.tensor([500], device=device),
        "cameras": rnd(1, views, 12),
        "target": rnd(1, views, f, c, h, w).float(),
    }


def forward(model: Any, mode: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    if mode == "base":
        n = x["latents"].shape[1]
        out = model.forward_base(x["latents"].flatten(0, 1), x["text"].expand(n, -1, -1), x["timestep"].expand(n))
        return out.unflatten(0, (1, n))
    return model(x["latents"], x["text"], x["timestep"], x["cameras"])


def step_loss(model: Any, mode: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """syncam-train's objective: MSE between the predicted and the true v (the target is random here)."""
    return (forward(model, mode, x).float() - x["target"]).pow(2).mean()


def autocast(device: str) -> contextlib.AbstractContextManager:
    # syncam-train's accelerate mixed_precision "bf16" on a GPU; "no" on the CPU
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def fused_attention_only(device: str) -> contextlib.AbstractContextManager:
    """SDPA may only use its fused kernels: a fallback to the math path raises instead of running slowly."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device == "cuda":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


class AttentionOps:
    """Counts attention and softmax operators as dispatched (after SDPA picked its kernel)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counts: Counter[str] = Counter()

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                name = func.overloadpacket.__name__
                if "attention" in name or "softmax" in name:
                    counts[name] += 1
                return func(*args, **(kwargs or {}))

        self.counts = counts
        self.mode = _Mode()

    def __enter__(self) -> AttentionOps:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def check_attention(counts: Counter, device: str, expected: int, what: str) -> str:
    """Raise KernelCheckError unless at least ``expected`` fused attention calls ran and no softmax did; returns a summary."""
    fused = {k: v for k, v in counts.items() if k in FUSED_ATTENTION[device]}
    softmax = sum(v for k, v in counts.items() if k in SOFTMAX_OPS or k.endswith("softmax"))
    if sum(fused.values()) < expected or softmax:
        raise KernelCheckError(
            f"{what}: {sum(fused.values())} of {expected} attention calls ran on a fused SDPA kernel {FUSED_ATTENTION[device]}, "
            f"{softmax} softmax operator(s) ran (math-path or hand-written attention); operators seen: {dict(counts)}"
        )
    return ", ".join(f"{k.lstrip('_')} x{v}" for k, v in sorted(fused.items()))


def attention_layers(model: Any, mode: str) -> int:
    """Attention calls in one forward: each block's own, plus its multi-view module's when adapted."""
    n = len(model.base.transformer_blocks)
    return n if mode == "base" else 2 * n


class Device:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cuda = name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB: the process's RSS peak

    def free(self) -> None:
        if self.cuda:  # give the memory of the case just measured back before the next one
            gc.collect()
            torch.cuda.empty_cache()

    def label(self) -> str:
        if self.cuda:
            p = torch.cuda.get_device_properties(0)
            return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, torch {torch.__version__}"
        return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"

    def memory_label(self) -> str:
        return "peak GiB" if self.cuda else "process RSS peak GiB"


def peak_tflops(dev: Device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    if not dev.cuda:
        return None, "none (CPU: MFU not defined)"
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"{tflops:g} TFLOP/s dense bf16 ({key}, NVIDIA data sheet)"
    return None, f"unknown for {name!r}: pass --peak-tflops for MFU"


def load(shapes: Shapes, dev: Device, tiny_config: dict[str, Any], spec: Any) -> Any:
    """Components built where they will run (``torch.device`` context: no CPU copy of the real-size weights)."""
    from syncam_model.model import load_components

    dtype = torch.bfloat16 if dev.cuda else torch.float32
    with torch.device(dev.name):
        return load_components("tiny", dtype=dtype, device=dev.name, tiny_config=tiny_config, adapter=spec)


def train_case(
    model: Any, mode: str, views: int, latent: tuple[int, int, int, int], dev: Device, steps: int
) -> dict[str, Any]:
    """Warm-up (with the kernel check) plus ``steps`` timed optimizer steps of one (mode, views) case."""
    dtype = torch.bfloat16 if dev.cuda else torch.float32
    set_mode(model, mode)
    for p in model.parameters():  # fp32 master weights for what trains, like syncam-train
        want = torch.float32 if p.requires_grad else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
    x = make_inputs(model, views, latent, dev.name, dtype)

    def step() -> float:
        with autocast(dev.name):
            loss = step_loss(model, mode, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    model.train()
    with AttentionOps() as ops:
        loss = step()
    kernels = check_attention(ops.counts, dev.name, attention_layers(model, mode), f"{mode}, {views} views")
    dev.sync()
    dev.reset_peak()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = step()
        dev.sync()
        times.append(time.perf_counter() - t)
    out = {
        "mode": mode,
        "views": views,
        "step_s": statistics.median(times),
        "peak_gib": dev.peak_gib(),
        "kernels": kernels,
        "trainable": sum(p.numel() for p in params),
        "loss_finite": bool(np.isfinite(loss)),
    }
    opt = params = x = None  # released before the next case (the closures above are done with them)
    dev.free()
    return out


def section_train(
    model_name: str, shapes: Shapes, dev: Device, args: argparse.Namespace, peak: float | None
) -> list[dict[str, Any]]:
    tiny_config = shapes.transformer(model_name)
    spec = adapter_spec(args.config)
    comps = load(shapes, dev, tiny_config, spec)
    model = comps.transformer
    del comps  # the VAE and T5 are not part of a step with cached latents
    dev.free()
    model.enable_gradient_checkpointing()
    latent = shapes.latent(model.config)
    layers = int(model.config.num_layers)
    rows = []
    modes = args.modes_5b if model_name == "5b" else args.modes
    for views in args.views:
        for mode in modes:
            t0 = time.perf_counter()
            try:
                r = train_case(model, mode, views, latent, dev, args.steps)
            except torch.OutOfMemoryError as e:  # "if memory allows": reported, not skipped
                dev.free()
                r = {"mode": mode, "views": views, "oom": str(e).splitlines()[0][:160]}
            r["model"] = model_name
            r["flops"] = flops_at(tiny_config, layers, views, latent, mode, spec=spec)
            r["hw_flops"] = flops_at(tiny_config, layers, views, latent, mode, checkpointing=True, spec=spec)
            if "step_s" in r:
                r["tflops_s"] = r["flops"] / r["step_s"] / 1e12
                r["mfu"] = r["tflops_s"] / peak if peak else None
                r["hfu"] = r["hw_flops"] / r["step_s"] / 1e12 / peak if peak else None
            log.warning(
                "%s %s %d views: %s (%.0f s)",
                model_name,
                mode,
                views,
                r.get("step_s", r.get("oom")),
                time.perf_counter() - t0,
            )
            rows.append(r)
    del model
    dev.free()
    return rows


# --- (c) generation -------------------------------------------------------------------------------


def section_generate(shapes: Shapes, dev: Device, args: argparse.Namespace, peak: float | None) -> dict[str, Any]:
    from syncam_model.generate import GenerationConfig, generate
    from syncam_model.rig import resolve_rig

    tiny_config = shapes.with_vae("2b")
    spec = adapter_spec(args.config)
    comps = load(shapes, dev, tiny_config, spec)
    comps.vae.enable_tiling()  # syncam-generate --vae-tiling
    views = 4
    cams = resolve_rig("azimuth:0,30,60,90", shapes.width, shapes.height).relative()
    model = comps.transformer
    marks: list[tuple[str, float]] = []
    state: dict[str, Any] = {"ops": None}

    def pre(_m: Any, _a: Any) -> None:
        dev.sync()
        marks.append(("pre", time.perf_counter()))
        if state["ops"] is None:  # the first pass: count its attention kernels
            state["ops"] = AttentionOps()
            state["ops"].__enter__()

    def post(_m: Any, _a: Any, _o: Any) -> None:
        if state["ops"] is not None and not state.get("checked"):
            state["ops"].__exit__(None, None, None)
            state["kernels"] = check_attention(
                state["ops"].counts, dev.name, attention_layers(model, "adapted"), "generation"
            )
            state["checked"] = True
        dev.sync()
        marks.append(("post", time.perf_counter()))
        state["denoise_peak"] = dev.peak_gib()

    h1, h2 = model.register_forward_pre_hook(pre), model.register_forward_hook(post)
    dev.sync()
    dev.reset_peak()
    t0 = time.perf_counter()
    try:
        config = GenerationConfig(
            prompt="a red car drives around a fountain",
            num_frames=shapes.frames,
            height=shapes.height,
            width=shapes.width,
            steps=args.gen_steps,
            guidance=6.0,
            batch_passes=False,
        )  # syncam-generate --sequential-passes
        video = generate(comps, config, cams, progress=False)
    except torch.OutOfMemoryError as e:
        h1.remove(), h2.remove()
        comps = model = None  # released before freeing the device memory
        dev.free()
        return {"oom": str(e).splitlines()[0][:160]}
    dev.sync()
    t_end = time.perf_counter()
    h1.remove(), h2.remove()
    pres = [t for k, t in marks if k == "pre"]
    passes = len(pres) // args.gen_steps
    step_starts = pres[::passes]
    last_post = [t for k, t in marks if k == "post"][-1]
    step_times = [b - a for a, b in zip(step_starts, step_starts[1:])] or [last_post - step_starts[0]]
    fwd = flops_at(
        tiny_config, int(model.config.num_layers), views, shapes.latent(model.config), "adapted", train=False, spec=spec
    )
    out = {
        "views": views,
        "passes": passes,
        "step_s": statistics.median(step_times),
        "denoise_peak_gib": state["denoise_peak"],
        "total_peak_gib": dev.peak_gib(),
        "vae_decode_s": t_end - last_post,
        "total_s": t_end - t0,
        "kernels": state["kernels"],
        "flops_step": passes * fwd,
        "shape": tuple(video.shape),
    }
    out["tflops_s"] = out["flops_step"] / out["step_s"] / 1e12
    out["mfu"] = out["tflops_s"] / peak if peak else None
    comps = model = video = None  # released before freeing the device memory
    dev.free()
    return out


# --- (d) the latent-cache loader feeding the training step ---------------------------------------


def make_shards(root: Path, shapes: Shapes, groups: int, views: int) -> Path:
    """Synthetic multi-view clips at the training size (smooth moving patterns), ring cameras 20 degrees apart."""
    from syncam_data import video
    from syncam_data.cameras import look_at, spherical_position
    from syncam_data.shards.schema import ViewRecord
    from syncam_data.shards.writer import ShardWriter

    h, w, n = shapes.height, shapes.width, shapes.frames
    yy, xx = np.mgrid[0:h, 0:w]
    with ShardWriter(root, name="gpucheck", shard_size="512MB", row_group_size="64MB") as wr:
        for g in range(groups):
            recs = []
            for v in range(views):
                frames = np.empty((n, h, w, 3), np.uint8)
                for i in range(n):
                    frames[i, ..., 0] = 128 + 60 * np.sin((xx + 4 * i + 9 * v) / 23.0)
                    frames[i, ..., 1] = 128 + 60 * np.cos((yy + 3 * i + 5 * g) / 19.0)
                    frames[i, ..., 2] = 90
                eye = spherical_position((0, 0, 1), 5.0, 10.0, 20.0 * v)
                c2w = [float(x) for x in look_at(eye, (0, 0, 1)).reshape(-1)]
                blob = video.encode(frames, fps=8, preset="ultrafast")
                recs.append(
                    ViewRecord(
                        "gpucheck",
                        "multiview_video",
                        f"g{g}",
                        f"cam{v}",
                        blob,
                        "mp4",
                        n,
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


def section_loader(shapes: Shapes, dev: Device, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from syncam_model.cache import build_cache, open_matching
    from syncam_model.config import load_config
    from syncam_model.data import build_loader
    from syncam_model.train import Trainer

    views = 4
    shards = make_shards(work / "shards", shapes, groups=2, views=views)
    over = {
        "data.height": shapes.height,
        "data.width": shapes.width,
        "data.frames": shapes.frames,
        "data.num_views": views,
        "data.mix": {"multiview_video": 1.0},
        "data.num_workers": args.workers,
        "optim.global_batch_size": 1,
        "steps": 1000,
        "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 180}],
        "log.tensorboard": False,
        "model.tiny_config": shapes.transformer("2b"),
        "cache.dtype": "bfloat16",
    }
    cfg = load_config(args.config, over)
    tr = Trainer(str(shards), "tiny", work / "run", cfg)
    # The cache is keyed by the VAE and T5 weights, which the Trainer built: encode it with its components
    # (syncam-train cache's code), then give the Trainer the loader it builds when a cache exists at start.
    build_cache(str(shards), cfg, tr.components, progress=False)
    tr.cache = open_matching(str(shards), cfg, tr.components)
    if tr.cache is None:
        raise RuntimeError("the latent cache just built does not match the Trainer's settings")
    tr.loader = build_loader(
        str(shards),
        cfg,
        rank=tr.rank,
        world_size=tr.world,
        micro_per_step=tr.accum,
        total_micro=cfg.steps * tr.accum,
        cache=tr.cache,
    )
    it = iter(tr.loader.dataloader())
    with fused_attention_only(dev.name):
        tr.train_step(it)  # warm-up: worker start, first batch, CUDA kernels
        dev.reset_peak()
        recs = [tr.train_step(it) for _ in range(args.train_steps)]
    steps = [r["step_time_s"] for r in recs]
    waits = [r["data_wait_s"] for r in recs]
    out = {
        "views": views,
        "step_s": statistics.median(steps),
        "wait_s": statistics.median(waits),
        "wait_frac": sum(waits) / sum(steps),
        "peak_gib": dev.peak_gib(),
        "workers": args.workers,
        "loss_finite": all(np.isfinite(r["loss"]) for r in recs),
    }
    del it, tr
    dev.free()
    return out


# --- report -----------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def report(
    args: argparse.Namespace,
    dev: Device,
    shapes: Shapes,
    peak_label: str,
    train: list[dict[str, Any]],
    gen: dict[str, Any] | None,
    loader: dict[str, Any] | None,
    elapsed: float,
    sections_s: dict[str, float],
) -> str:
    lines = [
        f"# GPU check ({'tiny shapes' if shapes.tiny else 'real CogVideoX shapes'}, random weights)",
        "",
        f"Device: {dev.label()}. Peak used for MFU: {peak_label}.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`. Video {shapes.frames} frames at {shapes.height}x{shapes.width}"
        f" (latents {(shapes.frames - 1) // 4 + 1} frames x {shapes.height // 8}x{shapes.width // 8}); one sample per step.",
        "",
        "## (a, b) one training step: bf16, gradient checkpointing, AdamW",
        "",
        f"| model | views | mode | step s | s per view | x base (per view) | {dev.memory_label()} | model TFLOP/step | TFLOP/s | MFU | HFU | attention kernel |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {(r["model"], r["views"]): r for r in train if r["mode"] == "base" and "step_s" in r}
    goals: list[tuple[str, str, str]] = []
    for r in train:
        b = base.get((r["model"], r["views"]))
        if "oom" in r:
            lines.append(
                f"| {r['model']} | {r['views']} | {r['mode']} | does not fit: {r['oom']} | | | | {r['flops'] / 1e12:.3g} | | | | |"
            )
            continue
        ratio = r["step_s"] / b["step_s"] if b else None
        r["ratio"] = ratio
        lines.append(
            f"| {r['model']} | {r['views']} | {r['mode']} | {r['step_s']:.3f} | {r['step_s'] / r['views']:.3f} | {fmt(ratio)} | {r['peak_gib']:.1f} | "
            f"{r['flops'] / 1e12:.3g} | {r['tflops_s']:.3g} | {fmt(r['mfu'] and 100 * r['mfu'], '.0f', ' %')} | "
            f"{fmt(r['hfu'] and 100 * r['hfu'], '.0f', ' %')} | {r['kernels']} |"
        )
        if r["mode"] == "adapted":
            goals.append(
                (
                    f"{r['model']} {r['views']} views: adapted / base step per view <= {GOAL_ADAPTED_PER_VIEW}",
                    fmt(ratio),
                    verdict(None if ratio is None else ratio <= GOAL_ADAPTED_PER_VIEW),
                )
            )
            goals.append(
                (
                    f"{r['model']} {r['views']} views: MFU of the adapted step >= {GOAL_MFU:.0%}",
                    fmt(r["mfu"] and 100 * r["mfu"], ".0f", " %"),
                    verdict(None if r["mfu"] is None else r["mfu"] >= GOAL_MFU),
                )
            )
    if gen:
        lines += ["", "## (c) generation: 4 views, --sequential-passes, VAE tiling", ""]
        if "oom" in gen:
            lines.append(f"Does not fit: {gen['oom']}")
        else:
            lines += [
                f"| guidance passes per step | denoising step s | TFLOP/step | TFLOP/s | MFU | {dev.memory_label()} while denoising | with the tiled VAE decode | VAE decode s | attention kernel |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                f"| {gen['passes']} | {gen['step_s']:.3f} | {gen['flops_step'] / 1e12:.3g} | {gen['tflops_s']:.3g} | {fmt(gen['mfu'] and 100 * gen['mfu'], '.0f', ' %')} | "
                f"{gen['denoise_peak_gib']:.1f} | {gen['total_peak_gib']:.1f} | {gen['vae_decode_s']:.1f} | {gen['kernels']} |",
            ]
    if loader:
        lines += [
            "",
            "## (d) syncam-train's step fed by the latent-cache loader (2B shapes, 4 views)",
            "",
            f"| dataloader workers | step s | data wait s | data wait share | {dev.memory_label()} |",
            "|---:|---:|---:|---:|---:|",
            f"| {loader['workers']} | {loader['step_s']:.3f} | {loader['wait_s']:.4f} | {100 * loader['wait_frac']:.1f} % | {loader['peak_gib']:.1f} |",
        ]
        goals.append(
            (
                f"data wait < {GOAL_DATA_WAIT:.0%} of the step",
                f"{100 * loader['wait_frac']:.1f} %",
                verdict(loader["wait_frac"] < GOAL_DATA_WAIT),
            )
        )
    goals.append(
        (f"whole check < {GOAL_TOTAL_S // 60} minutes", f"{elapsed / 60:.1f} min", verdict(elapsed < GOAL_TOTAL_S))
    )
    lines += ["", "## Goals", "", "| goal | measured | |", "|---|---:|---|"] + [
        f"| {a} | {b} | {c} |" for a, b, c in goals
    ]
    lines += ["", "Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in sections_s.items()) + "."]
    nonfinite = [f"{r['model']} {r['mode']} {r['views']}" for r in train if r.get("loss_finite") is False]
    if nonfinite:
        lines.append(
            f"Non-finite loss with random weights in: {', '.join(nonfinite)} (timing is still valid; weights are random)."
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where to run (default cuda)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny shapes (2 layers, 9 frames at 32x48): the same code path, for CPU tests",
    )
    p.add_argument("--models", default="2b,5b", help="comma-separated transformer shapes for (a, b): 2b, 5b")
    p.add_argument("--views", default="2,4", help="comma-separated views per sample for (a, b)")
    p.add_argument("--modes", default=",".join(MODES), help=f"training modes for the 2B shape, from {','.join(MODES)}")
    p.add_argument(
        "--modes-5b", default="base,adapted", help="training modes for the 5B shape (time and memory are larger)"
    )
    p.add_argument("--steps", type=int, default=2, help="timed training steps per case, after one warm-up step")
    p.add_argument("--gen-steps", type=int, default=3, help="denoising steps for (c)")
    p.add_argument("--train-steps", type=int, default=3, help="timed Trainer steps for (d), after one warm-up step")
    p.add_argument("--workers", type=int, default=4, help="dataloader workers for (d) (data.num_workers)")
    p.add_argument(
        "--sections", default="train,generate,loader", help="comma-separated subset of train,generate,loader"
    )
    p.add_argument(
        "--config",
        default="paper",
        help="training config whose model settings (multi-view module structure) are measured; a name or a YAML path",
    )
    p.add_argument(
        "--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the device (default: from the device name)"
    )
    p.add_argument(
        "--out", type=Path, help="also write the report (markdown) here, and the raw results next to it as .json"
    )
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.views = [int(v) for v in args.views.split(",") if v]
    args.modes = [m for m in args.modes.split(",") if m]
    args.modes_5b = [m for m in args.modes_5b.split(",") if m]
    args.sections = [s for s in args.sections.split(",") if s]
    for name, values, allowed in (
        ("--models", args.models, RELEASED_TRANSFORMERS),
        ("--modes", args.modes + args.modes_5b, MODES),
        ("--sections", args.sections, ("train", "generate", "loader")),
    ):
        bad = sorted(set(values) - set(allowed))
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {sorted(allowed)}")
    if any(v < 1 for v in args.views) or min(args.steps, args.gen_steps, args.train_steps) < 1:
        p.error("--views, --steps, --gen-steps and --train-steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(
            "--device cuda: no CUDA device is visible to torch (use --device cpu --tiny to check the code path on a CPU)"
        )
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu runs the tiny shapes only (add --tiny): the real shapes take hours on a CPU")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not args.tiny:
        logging.getLogger("syncam_model").setLevel(logging.WARNING)
    torch.manual_seed(0)
    dev = Device(args.device)
    if not dev.cuda:
        torch.set_num_threads(1)  # tiny CPU shapes: intra-op threads only contend (and other jobs share the cores)
    shapes = Shapes(args.tiny)
    peak, peak_label = peak_tflops(dev, args.peak_tflops)
    t_start = time.perf_counter()
    sections_s: dict[str, float] = {}
    train: list[dict[str, Any]] = []
    gen = loader = None
    try:
        with tempfile.TemporaryDirectory(prefix="syncam-gpu-check-") as tmp, fused_attention_only(dev.name):
            if "train" in args.sections:
                for m in args.models:
                    t = time.perf_counter()
                    train += section_train(m, shapes, dev, args, peak)
                    sections_s[f"train {m}"] = time.perf_counter() - t
            if "generate" in args.sections:
                t = time.perf_counter()
                gen = section_generate(shapes, dev, args, peak)
                sections_s["generate"] = time.perf_counter() - t
            if "loader" in args.sections:
                t = time.perf_counter()
                loader = section_loader(shapes, dev, args, Path(tmp))
                sections_s["loader"] = time.perf_counter() - t
    except KernelCheckError as e:
        print(f"gpu_check: FAILED: {e}", file=sys.stderr)
        return 2
    text = report(args, dev, shapes, peak_label, train, gen, loader, time.perf_counter() - t_start, sections_s)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        raw = {
            "device": dev.label(),
            "peak": peak_label,
            "train": train,
            "generate": gen,
            "loader": loader,
            "sections_s": sections_s,
        }
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

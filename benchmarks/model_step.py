"""Forward+backward time and peak memory of one training step: the adapted model vs the base model.

    python benchmarks/model_step.py --out docs/benchmarks/model.md  # tiny configs on CPU; without --out it only prints
    python benchmarks/model_step.py --preset 2b-real --device cuda --dtype bfloat16 \\
        --frames 49 --height 384 --width 672 --views 2 --views 4 --checkpointing --out docs/benchmarks/model-gpu.md

For each (model config, number of views n) it measures, on random weights and
random inputs of one sample with n views:

- ``base``: the unadapted CogVideoX transformer on the n views as a batch of n
  independent videos, all base weights trainable (plain fine-tuning);
- ``adapted``: the multi-view model, only the new modules trainable (the default);
- ``adapted+base``: the multi-view model with the base unfrozen too.

Time is the median of forward + backward (after warm-up), as wall time and,
on CPU, as process CPU time (with one torch thread the CPU time is the compute
cost, and is far less disturbed than wall time by other jobs on a shared
machine); the optimizer is not included. Memory: on CUDA the peak allocated bytes during the
timed steps (weights included); on CPU each case runs in a fresh subprocess and
reports the growth of the peak RSS over the RSS after building the model and
inputs (activations and gradients of a step, weights excluded).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from syncam_model.components import RELEASED_TRANSFORMERS, TINY_VARIANTS  # noqa: E402

PRESETS = {
    # the tests' tiny model
    "tiny": dict(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        time_embed_dim=32,
        text_embed_dim=32,
        in_channels=4,
        out_channels=4,
    ),
    # a slightly larger one where attention and MLP costs have realistic proportions
    "small": dict(
        num_layers=4,
        num_attention_heads=4,
        attention_head_dim=32,
        time_embed_dim=64,
        text_embed_dim=64,
        in_channels=16,
        out_channels=16,
    ),
    # CogVideoX-2B's and -5B's transformer shapes (random weights); 2B's positions follow --rope
    "2b-real": dict(RELEASED_TRANSFORMERS["2b"]),
    "5b-real": {**RELEASED_TRANSFORMERS["5b"], **TINY_VARIANTS["5b"]},
}
MODES = ("base", "adapted", "adapted+base")


def build(preset: str, rope: bool, dtype: torch.dtype, device: str):
    from diffusers import CogVideoXTransformer3DModel

    from syncam_model.model import MultiViewTransformer

    cfg = dict(PRESETS[preset])
    cfg.setdefault("use_rotary_positional_embeddings", rope)
    torch.manual_seed(0)
    base = CogVideoXTransformer3DModel(**cfg).to(device=device)
    if dtype != torch.float32:
        base = base.to(dtype=dtype)
    return MultiViewTransformer(base)


def run_case(args: argparse.Namespace, mode: str, views: int, rope: bool) -> dict:
    """One measurement in this process."""
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = build(args.preset, rope, dtype, args.device).train()
    model.set_trainable(base=mode != "adapted")
    if mode == "base":
        for prm in model.adapter_parameters():  # unused by the base forward; keep them out of the count
            prm.requires_grad_(False)
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    cfg = model.config
    f = (args.frames - 1) // 4 + 1
    h, w = args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, views, f, cfg.in_channels, h, w, generator=g).to(args.device, dtype)
    text = torch.randn(1, 226, cfg.text_embed_dim, generator=g).to(args.device, dtype)
    t = torch.tensor([500], device=args.device)
    cams = torch.randn(1, views, 12, generator=g).to(args.device, dtype)

    def step() -> None:
        if mode == "base":
            out = model.forward_base(latents.flatten(0, 1), text.expand(views, -1, -1), t.expand(views))
        else:
            out = model(latents, text, t, cams)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    rss_before = _rss_bytes()  # weights and inputs; the step's activations and gradients come on top
    for _ in range(args.warmup):
        step()
    sync()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "mode": mode,
        "views": views,
        "rope": rope,
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu_times),
        "peak_bytes": peak,
        "trainable_params": trainable,
        "tokens_per_view": f * (h // 2) * (w // 2),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def run_all(args: argparse.Namespace) -> list[dict]:
    results = []
    for rope in args.rope:
        for views in args.views:
            for mode in MODES:
                if args.device == "cpu":
                    # a fresh process per case so that the peak RSS belongs to this case alone
                    cmd = [sys.executable, __file__, "--single", mode, str(views), str(int(rope)), *args.passthrough]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    res = json.loads(out.strip().splitlines()[-1])
                else:
                    res = run_case(args, mode, views, rope)
                print(json.dumps(res), file=sys.stderr)
                results.append(res)
    return results


def to_markdown(args: argparse.Namespace, results: list[dict]) -> str:
    device = args.device
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch thread(s), shared 2-core machine, no GPU"
    lines = [
        "# Multi-view model: one training step",
        "",
        f"Device: {device_name}. dtype {args.dtype}; preset `{args.preset}` ({json.dumps(PRESETS[args.preset])}); "
        f"one sample, {args.frames} frames at {args.height}x{args.width} (latent {(args.frames - 1) // 4 + 1}x{args.height // 8}x{args.width // 8}); "
        f"gradient checkpointing {'on' if args.checkpointing else 'off'}; median of {args.repeats} steps after {args.warmup} warm-up.",
        "",
        "Reproduce: `python benchmarks/model_step.py " + " ".join(args.passthrough) + "`",
        "",
        "| positions | views | model | trainable params | fwd+bwd wall (s) | fwd+bwd CPU (s) | CPU vs base | peak memory (MiB) | memory vs base |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["rope"], r["views"]): r for r in results if r["mode"] == "base"}
    for r in results:
        b = base[(r["rope"], r["views"])]
        lines.append(
            f"| {'RoPE' if r['rope'] else 'sin-cos'} | {r['views']} | {r['mode']} | {r['trainable_params']:,} | {r['seconds']:.3f} | "
            f"{r['cpu_seconds']:.3f} | {r['cpu_seconds'] / b['cpu_seconds']:.2f}x | {r['peak_bytes'] / 2**20:.1f} | "
            f"{r['peak_bytes'] / max(b['peak_bytes'], 1):.2f}x |"
        )
    lines += [
        "",
        "How to read it: `base` trains every base weight on n independent videos (plain fine-tuning); `adapted` trains",
        "only the multi-view modules (the default); `adapted+base` unfreezes the base as well. The adapted forward adds,",
        "per block, one attention over the n·h'·w' tokens of each frame, which is small next to the block's own",
        "attention over 226 + F'·h'·w' tokens; its backward still has to propagate through the frozen base.",
        "CPU memory is the growth of the process's peak RSS during a step (activations and gradients, not weights),",
        "so it is coarse (allocator caching); on CUDA it is `torch.cuda.max_memory_allocated` including weights.",
        "",
        "GPU (not measured here; no GPU on this machine): the real 2B shapes at 384x672, 49 frames, bf16, checkpointing:",
        "`python benchmarks/model_step.py --preset 2b-real --rope 0 --device cuda --dtype bfloat16 "
        "--frames 49 --height 384 --width 672 --checkpointing --out docs/benchmarks/model-gpu.md`",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="Transformer shapes.")
    p.add_argument(
        "--rope", type=int, nargs="+", default=[0, 1], help="Position variants to measure: 0 sin-cos (2B), 1 RoPE (5B)."
    )
    p.add_argument("--views", type=int, action="append", help="Numbers of views (repeatable; default 2 and 4).")
    p.add_argument("--frames", type=int, default=49, help="Video frames (4k+1).")
    p.add_argument("--height", type=int, default=128, help="Video height in pixels (multiple of 16).")
    p.add_argument("--width", type=int, default=192, help="Video width in pixels (multiple of 16).")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16.")
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--checkpointing", action="store_true", help="Enable gradient checkpointing.")
    p.add_argument("--warmup", type=int, default=1, help="Warm-up steps.")
    p.add_argument("--repeats", type=int, default=3, help="Timed steps.")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Also write the markdown table to this file (e.g. docs/benchmarks/model.md); default: print only.",
    )
    p.add_argument(
        "--results",
        type=Path,
        help="Render the table from a previous run's JSON lines (its stderr) instead of measuring.",
    )
    p.add_argument("--single", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.views = args.views or [2, 4]
    args.rope = [bool(r) for r in args.rope]
    args.passthrough = [a for a in argv if a]
    for flag, count in (("--single", 3), ("--results", 1)):
        # neither is inherited by child processes nor part of the "Reproduce" command
        if flag in args.passthrough:
            i = args.passthrough.index(flag)
            args.passthrough = args.passthrough[:i] + args.passthrough[i + 1 + count :]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.single:
        mode, views, rope = args.single
        print(json.dumps(run_case(args, mode, int(views), bool(int(rope)))))
        return
    if args.results:
        # re-render a table from the JSON lines a previous run printed on stderr
        results = [json.loads(line) for line in args.results.read_text().splitlines() if line.startswith("{")]
    else:
        results = run_all(args)
    text = to_markdown(args, results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Benchmark the Blender backend: images per second per worker, and where the time goes.

Renders a few demo-catalog scenes through the real job runner (one worker, the
same code path as ``syncam-data render``) at each resolution and reports:

- images/s per worker: camera images (one camera, one frame) rendered per second of wall time;
- scene frames/s: synchronized frames of the whole rig per second (= images/s / cameras);
- the share of wall time spent inside Blender's render call (``bpy.ops.render.render``) and
  outside it (scene building, pass read-back, H.264 encoding, npz writing, folder rename).

Usage (results for this machine are in docs/benchmarks/render_blender.md):

    python benchmarks/render_blender.py --resolutions 96x168 480x720 --cameras 4 --frames 4 \
        --out docs/benchmarks/render_blender.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from syncam_data.render.jobs import RenderJobConfig, run_render_job
from syncam_data.scenes import SamplerConfig, load_catalog, sample_scenes

log = logging.getLogger("bench")


def bench_resolution(height: int, width: int, args: argparse.Namespace, root: Path) -> dict:
    catalog = load_catalog()
    opt = SamplerConfig(num_cameras=args.cameras, num_frames=args.frames, width=width, height=height)
    specs = sample_scenes(catalog, args.scenes, seed=args.seed, options=opt)
    out = root / f"{height}x{width}"
    cfg = RenderJobConfig(
        out=out,
        backend="blender",
        backend_config={"samples": args.samples, "device": args.device},
        workers=1,
        retries=0,
        progress=False,
    )
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = run_render_job(specs, cfg)
    wall = time.perf_counter() - t0
    if report.failed:
        raise RuntimeError(f"benchmark scenes failed: {report.failed}")
    timings = [json.loads((out / s.scene_id / "scene.json").read_text())["timings"] for s in specs]
    render_s = sum(t["render_s"] for t in timings)
    images = args.scenes * args.cameras * args.frames
    return {
        "resolution": f"{height}x{width}",
        "samples": args.samples,
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall,
        "scene_frames_per_s": images / wall / args.cameras,
        "s_per_image": wall / images,
        "render_share": render_s / wall,
        "outside_share": 1 - render_s / wall,
        "setup_s": sum(t["setup_s"] for t in timings),
        "readback_s": sum(t["readback_s"] for t in timings),
        "output_s": sum(t["output_s"] for t in timings),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
    }


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| resolution (HxW) | samples | images | wall s | images/s per worker | scene frames/s | s per image | inside render call | outside (setup, read-back, encode, I/O) | load avg (1 min) before/after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['samples']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.3f} | {r['scene_frames_per_s']:.3f} | "
            f"{r['s_per_image']:.2f} | {100 * r['render_share']:.1f} % | {100 * r['outside_share']:.1f} % "
            f"(setup {r['setup_s']:.1f} s, read-back {r['readback_s']:.1f} s, output {r['output_s']:.1f} s) | {r['load_avg_before']:.1f} / {r['load_avg_after']:.1f} |"
        )
    head = (
        f"Command: `python benchmarks/render_blender.py --resolutions {' '.join(args.resolutions)} "
        f"--cameras {args.cameras} --frames {args.frames} --scenes {args.scenes} --samples {args.samples}`\n\n"
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, no GPU (`--device {args.device}`), Python {platform.python_version()}.\n"
    )
    return head + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", nargs="+", default=["96x168", "480x720"], help="HxW sizes to measure")
    p.add_argument("--cameras", type=int, default=4, help="cameras per scene")
    p.add_argument("--frames", type=int, default=4, help="frames per scene")
    p.add_argument("--scenes", type=int, default=1, help="scenes per resolution")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples (the CLI default is 16)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        "--md",
        dest="md",
        type=Path,
        help="also write the results table to this markdown file (replaced); default: print only",
    )
    p.add_argument("--json", type=Path, help="also write raw results as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="syncam-bench-"))
    rows = []
    try:
        for res in args.resolutions:
            h, w = (int(v) for v in res.lower().split("x"))
            rows.append(bench_resolution(h, w, args, root))
            log.info("%s", rows[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = to_markdown(rows, args)
    log.info("\n%s", table)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

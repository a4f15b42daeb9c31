"""`syncam-data eval`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded, check_out_path, fail

log = logging.getLogger(__name__)


@app.command("eval")
def eval(  # noqa: A001  (the command's name)
    input_path: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help="A shard dataset (dataset.json), render scene folder(s) (cameras.json + videos/), frame-set folder(s) from sample-frames, "
        "or a syncam-generate output (generation.json); a folder of scene/frame-set/generate folders is searched one level down.",
    ),
    out: Path = typer.Option(
        Path("eval_out"), "--out", "-o", help="Output folder: eval.parquet, summary.json, report.html."
    ),
    cameras: Path | None = typer.Option(
        None,
        "--cameras",
        help="A cameras.json whose entries (matched by camera id) replace the cameras stated by INPUT, e.g. the cameras a generation "
        "was asked to follow when its output folder lacks them. Without it INPUT's own cameras are checked where it has them.",
    ),
    check_cameras: bool = typer.Option(
        True,
        "--check-cameras/--no-check-cameras",
        help="Measure the epipolar error of the matches under the stated cameras.",
    ),
    frames: int = typer.Option(
        3,
        "--frames",
        min=1,
        callback=bounded(limits.FRAMES),
        help="Frames evaluated per video group, evenly spaced; all views use the same frame numbers.",
    ),
    matcher: str = typer.Option(
        "sift",
        "--matcher",
        help="'sift': OpenCV SIFT + ratio test + RANSAC on the fundamental matrix (default). 'loftr': kornia's LoFTR with local "
        "weights (--matcher-weights), then the same RANSAC; needs the optional kornia dependency (installed by scripts/setup.sh; else pip install -e '.[eval]' in the SynCam checkout).",
    ),
    matcher_weights: Path | None = typer.Option(
        None,
        "--matcher-weights",
        help="Local weights of the learned matcher: LoFTR's .ckpt (e.g. loftr_outdoor.ckpt, read weights-only) or a .safetensors state dict.",
    ),
    matcher_config: Path | None = typer.Option(
        None,
        "--matcher-config",
        help="JSON overriding entries of kornia's default LoFTR config, for weights trained with another one.",
    ),
    max_features: int = typer.Option(
        4000, "--max-features", min=0, help="SIFT keypoints kept per image (strongest first); 0 keeps all."
    ),
    sift_contrast: float = typer.Option(
        0.04,
        "--sift-contrast",
        min=0.001,
        max=0.5,
        help="SIFT contrast threshold (OpenCV's default 0.04); lower, e.g. 0.02, finds more keypoints in flat, low-texture renders.",
    ),
    ratio: float = typer.Option(0.8, "--ratio", min=0.01, max=0.99, help="Lowe's ratio-test threshold."),
    ransac_px: float = typer.Option(
        1.0,
        "--ransac-px",
        min=0.01,
        help="RANSAC threshold (pixels) for the fundamental matrix estimated from the pixels.",
    ),
    max_pairs: int = typer.Option(
        0,
        "--max-pairs",
        min=0,
        help="View pairs evaluated per group, sampled reproducibly; 0 evaluates every pair (n(n-1)/2).",
    ),
    max_side: int = typer.Option(
        0,
        "--max-side",
        min=0,
        callback=bounded(limits.SIDE),
        help="Downscale frames so the longer side is at most this many pixels (intrinsics follow); 0 keeps native size.",
    ),
    flag_px: float = typer.Option(
        2.0,
        "--flag-px",
        min=0.01,
        help="Flag a view, and its group, whose median symmetric epipolar error over its pairs exceeds this (pixels) in at least two of its pair-frames.",
    ),
    min_inliers: int = typer.Option(
        20,
        "--min-inliers",
        min=8,
        help="Pairs with fewer RANSAC inliers give no camera verdict (too few matches to trust).",
    ),
    clip: Path | None = typer.Option(
        None,
        "--clip",
        help="Local CLIP folder (transformers save_pretrained: model + processor) for CLIP-T and CLIP-F; skipped without it.",
    ),
    i3d: Path | None = typer.Option(
        None, "--i3d", help="Local I3D TorchScript checkpoint (i3d_torchscript.pt) for FVD; skipped without it."
    ),
    fvd_reference: Path | None = typer.Option(
        None,
        "--fvd-reference",
        help="Reference videos for FVD, any INPUT layout (e.g. the real dataset a generator is compared with).",
    ),
    fvd_frames: int = typer.Option(
        16,
        "--fvd-frames",
        min=9,
        callback=bounded(limits.FRAMES),
        help="Frames per clip fed to I3D (from the start of each view's video).",
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device for CLIP and I3D, e.g. cpu or cuda."),
    report_groups: int = typer.Option(
        5, "--report-groups", min=0, help="Worst groups drawn in report.html (matches and epipolar lines)."
    ),
    limit: int = typer.Option(0, "--limit", min=0, help="Evaluate only the first N groups (sorted by key); 0 = all."),
    seed: int = typer.Option(0, "--seed", help="Seed for RANSAC and pair sampling (results are reproducible)."),
    engine: str = typer.Option(
        "local", "--engine", help="'local' (processes on this machine) or 'ray' (one Ray task per group)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        min=1,
        callback=bounded(limits.WORKERS),
        help="Local processes evaluating groups in parallel (--engine local).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster address (--engine ray); a local Ray starts when omitted."
    ),
    fail_on_flag: bool = typer.Option(
        False, "--fail-on-flag", help="Exit with code 2 when any group is flagged (for CI checks of a dataset)."
    ),
) -> None:
    """Cross-view consistency and camera accuracy of a dataset or of generated videos.

    For every group of synchronized views and a few frames, matches every pair of views (SIFT, ratio test, RANSAC on F) and reports the matched pixels (RANSAC inliers). Where cameras are known, it measures how far the matches lie from the epipolar lines of the stated K and c2w (median px, share within 1 and 2 px) and flags groups whose cameras disagree with their pixels.

    CLIP-T/CLIP-F and FVD run only with local weights (--clip, --i3d); otherwise summary.json says they were skipped.
    """
    from syncam_data.evaluate.inputs import InputError
    from syncam_data.evaluate.matching import MATCHERS, MatchConfig
    from syncam_data.evaluate.report import write_outputs
    from syncam_data.evaluate.run import EvalConfig, run_eval

    check_out_path(out)
    if engine not in ("local", "ray"):
        raise fail(f"--engine must be 'local' or 'ray', got {engine!r}")
    if matcher not in MATCHERS:
        raise fail(f"--matcher {matcher!r} is not available: choose from {', '.join(MATCHERS)}")
    if matcher == "loftr" and matcher_weights is None:
        raise fail(
            "--matcher loftr needs local weights (--matcher-weights, e.g. loftr_outdoor.ckpt); nothing is downloaded"
        )
    for opt, p in (
        ("--cameras", cameras),
        ("--i3d", i3d),
        ("--matcher-weights", matcher_weights),
        ("--matcher-config", matcher_config),
    ):
        if p is not None and not p.is_file():
            raise fail(f"{opt} {p}: no such file")
    if clip is not None and not (clip / "config.json").is_file():
        raise fail(f"--clip {clip}: not a CLIP model folder (expected config.json from save_pretrained)")
    if fvd_reference is not None and i3d is None:
        log.warning("--fvd-reference given without --i3d: FVD is skipped")
    try:
        cfg = EvalConfig(
            frames=frames,
            matcher=matcher,
            matcher_weights=str(matcher_weights) if matcher_weights else None,
            matcher_config=str(matcher_config) if matcher_config else None,
            match=MatchConfig(
                max_features=max_features, contrast_threshold=sift_contrast, ratio=ratio, ransac_px=ransac_px, seed=seed
            ),
            max_pairs=max_pairs,
            max_side=max_side,
            check_cameras=check_cameras,
            flag_px=flag_px,
            min_inliers=min_inliers,
            clip=str(clip) if clip else None,
            i3d=str(i3d) if i3d else None,
            fvd_frames=fvd_frames,
            device=device,
            seed=seed,
        )
        run = run_eval(
            input_path,
            cfg,
            cameras,
            fvd_reference,
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            limit=limit,
        )
    except (InputError, ValueError) as e:
        raise fail(str(e)) from None
    extra = {"cameras_override": str(cameras) if cameras else None, "engine": engine, "workers": workers}
    summary = write_outputs(out, run, cfg, input_path, extra, report_groups)
    _echo_summary(summary, out)
    if run.results == {} and run.errors:
        raise fail(f"every group failed ({len(run.errors)}); see {out / 'summary.json'}")
    o = summary["overall"]
    if (
        o["groups_evaluated"] == 0 and summary["scores"]["fvd"].get("fvd") is None
    ):  # a run that measured nothing is not a success
        why = sorted(set(summary.get("skipped_groups", {}).values()))
        raise fail(
            f"{input_path}: nothing to evaluate: {o['groups_skipped']} group(s) skipped ({'; '.join(why) or 'no view pairs'}); see {out / 'summary.json'}"
        )
    if fail_on_flag and summary["overall"]["groups_flagged"]:
        raise typer.Exit(2)


def _echo_summary(summary: dict, out: Path) -> None:
    o, s = summary["overall"], summary["scores"]

    def f(v, nd=2):
        return "n/a" if v is None else f"{v:.{nd}f}"

    typer.echo(
        f"groups: {o['groups_evaluated']} evaluated, {o['groups_failed']} failed, {o['groups_skipped']} skipped; {o['rows']} pair-frames"
    )
    typer.echo(
        f"matched pixels per pair: mean {f(o['matched_pixels_mean'], 1)}, median {f(o['matched_pixels_median'], 1)}"
    )
    typer.echo(
        f"epipolar error (stated cameras): median {f(o['epi_symmetric_median'])} px, within 1 px {f(o['within_1px'])}, within 2 px {f(o['within_2px'])}"
    )
    for k in ("clip_t", "clip_f"):
        typer.echo(f"{k}: {f(s[k]['value'])}" if s[k]["value"] is not None else f"{k}: skipped ({s[k]['skipped']})")
    fv = s["fvd"]
    typer.echo(f"fvd: {f(fv.get('fvd'))}" if fv.get("fvd") is not None else f"fvd: skipped ({fv.get('skipped')})")
    for g in summary["flagged_groups"]:
        typer.echo(
            f"FLAGGED {g['key']}: epipolar median {f(g['epi_symmetric_median'])} px; flagged views {', '.join(g['flagged_views']) or '(none alone)'}; worst view {g['worst_view']}"
        )
    typer.echo(f"wrote {out / 'eval.parquet'}, {out / 'summary.json'}, {out / 'report.html'}")

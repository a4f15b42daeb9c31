"""`syncam-data inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from syncam_data.cli.app import app, check_out_path, fail


@app.command("inspect")
def inspect(
    dataset: Path = typer.Argument(..., help="Shard dataset directory."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="PNG file for the camera-rig plot (default: <dataset name>-cameras.png next to --json, else in the current folder; never inside the dataset).",
    ),
    groups: int = typer.Option(
        4, "--groups", min=1, max=64, help="How many multi-view groups to draw in the camera plot (at most 64)."
    ),
    seed: int = typer.Option(0, "--seed", help="Which groups to draw (random choice seed)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON to this file."),
) -> None:
    """Summarize a shard dataset from its index (views and groups per dataset/kind, resolutions, frame counts, caption coverage) and plot the camera rigs of a few groups."""
    from syncam_data.shards.inspect import format_summary, plot_rigs, summarize
    from syncam_data.shards.reader import ShardDatasetError, ShardReader

    try:
        reader = ShardReader(dataset)
    except ShardDatasetError as e:
        raise fail(str(e)) from None
    # The dataset folder is an input: nothing is written into it (it may be read-only or shared).
    out_png = plot or ((json_out.parent if json_out else Path.cwd()) / f"{dataset.resolve().name}-cameras.png")
    check_out_path(out_png, "--plot", kind="file")
    if json_out:
        check_out_path(json_out, "--json", kind="file")
    s = summarize(reader)
    s["camera_plot"] = str(out_png)
    s["plotted_groups"] = plot_rigs(reader, out_png, max_groups=groups, seed=seed)
    typer.echo(format_summary(s))
    typer.echo(f"camera plot: {out_png} ({len(s['plotted_groups'])} groups)")
    if json_out:
        from syncam_data import fsio

        fsio.write_text(json_out, json.dumps(s, indent=2))

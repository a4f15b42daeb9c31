"""`syncam-data validate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from syncam_data import limits
from syncam_data.cli.app import app, bounded


@app.command("validate")
def validate(
    dataset: Path = typer.Argument(..., help="Shard dataset directory (holds dataset.json and index.parquet)."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Skip decoding every media blob; check manifest, checksums, schema, index and cameras only.",
    ),
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, callback=bounded(limits.WORKERS), help="Processes checking shards in parallel."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON to this file."),
) -> None:
    """Check a shard dataset: schema, row counts, checksums, that every media blob decodes to its stated size, and that cameras are valid. Exits 1 and lists the problems when anything is wrong."""
    from syncam_data.shards.validate import validate_dataset

    rep = validate_dataset(dataset, decode_media=not quick, workers=workers)
    if json_out:
        from syncam_data import fsio

        fsio.write_text(json_out, json.dumps(rep.to_dict(), indent=2))
    for w in rep.warnings:
        typer.echo(f"warning: {w}", err=True)
    if rep.ok:
        typer.echo(f"OK: {dataset}: {rep.rows_checked} rows in {rep.shards_checked} shards valid")
        return
    for p in rep.problems:
        typer.echo(f"problem: {p}", err=True)
    typer.echo(f"INVALID: {dataset}: {len(rep.problems)} problem(s)", err=True)
    raise typer.Exit(1)

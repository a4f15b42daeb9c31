"""`syncam-train`: Train SynCamMaster's multi-view modules on CogVideoX from a shard dataset."""

from __future__ import annotations

import typer

app = typer.Typer(name="syncam-train", help="Train SynCamMaster's multi-view modules on CogVideoX from a shard dataset.", add_completion=False, pretty_exceptions_enable=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train SynCamMaster's multi-view modules on CogVideoX from a shard dataset."""
    typer.echo("syncam-train: not available yet in this version (tracked in issue 9).", err=True)
    raise typer.Exit(3)


def main() -> None:
    app()

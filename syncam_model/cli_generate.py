"""`syncam-generate`: Generate synchronized multi-view videos from text (or re-render an input video from new cameras)."""

from __future__ import annotations

import typer

app = typer.Typer(name="syncam-generate", help="Generate synchronized multi-view videos from text (or re-render an input video from new cameras).", add_completion=False, pretty_exceptions_enable=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def generate() -> None:
    """Generate synchronized multi-view videos from text (or re-render an input video from new cameras)."""
    typer.echo("syncam-generate: not available yet in this version (tracked in issue 8).", err=True)
    raise typer.Exit(3)


def main() -> None:
    app()

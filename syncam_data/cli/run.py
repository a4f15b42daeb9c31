"""`syncam-data run RECIPE`: execute a pipeline recipe (render -> sample-frames -> filter-videos -> build-shards)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from syncam_data.cli.app import app, fail


def parse_vars(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            raise fail(f"--var {it!r}: expected NAME=VALUE")
        out[key.strip()] = val
    return out


@app.command("run")
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. pipelines/paper.yaml (see pipelines/README.md)."),
    var: list[str] = typer.Option([], "--var", help="Override a recipe variable: NAME=VALUE (repeatable)."),
    engine: str | None = typer.Option(
        None, "--engine", help="local or ray: overrides the engine of every stage that has one."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster address (e.g. auto on a cluster node) for every stage that takes one."
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", min=1, help="Overrides --workers of every stage that has one."
    ),
    only: list[str] = typer.Option([], "--only", help="Run only this stage (repeatable)."),
    start_at: str | None = typer.Option(None, "--from", help="Start at this stage (earlier stages are assumed done)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the recipe against the commands and print them; run nothing."
    ),
    keep_going: bool = typer.Option(False, "--keep-going", help="Run the next stages even when one fails."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the run report (per stage: exit code, seconds, message) to this file."
    ),
) -> None:
    """Run a declarative recipe: each stage is a syncam-data command run in order with the recipe's options.

    Every stage is resumable, so re-running a recipe continues where it stopped. With --engine ray (and --ray-address on a cluster) the data stages run as Ray tasks and actors; their folders must be on storage that every node sees. See pipelines/README.md.
    """
    from syncam_data.recipe import RecipeError, load_recipe, plan_recipe, run_recipe

    if engine not in (None, "local", "ray"):
        raise fail(f"--engine {engine!r}: use local or ray")
    try:
        rec = load_recipe(recipe)
        stages = plan_recipe(
            rec,
            recipe,
            parse_vars(var),
            only=list(only) or None,
            start_at=start_at,
            engine=engine,
            ray_address=ray_address,
            workers=workers,
        )
    except RecipeError as e:
        raise fail(str(e)) from None
    if dry_run:
        for st in stages:
            typer.echo(f"# {st.name}\n{st.shell()}")
        return
    report = run_recipe(stages, rec.name, keep_going=keep_going)
    if json_out:
        from syncam_data import fsio

        fsio.write_text(
            json_out,
            json.dumps({"recipe": rec.name, "ok": report.ok, "stages": [asdict(s) for s in report.stages]}, indent=2),
        )
    for s in report.stages:
        status = "ok" if s.exit_code == 0 else f"FAILED (exit {s.exit_code}): {s.message}"
        typer.echo(f"stage {s.name} [{s.command}] {s.seconds:.1f}s {status}", err=s.exit_code != 0)
    skipped = len(stages) - len(report.stages)
    if skipped:
        typer.echo(f"{skipped} later stage(s) not run", err=True)
    if not report.ok:
        raise typer.Exit(1)

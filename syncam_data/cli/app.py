"""The `syncam-data` Typer application; each subcommand lives in its own module in this package."""

from __future__ import annotations

import logging
import sys

import typer

# Option checks live in options.py; re-exported here for the command modules.
from syncam_data.cli.options import (  # noqa: F401
    NAME_MAX,
    SafeCommand,
    SafeGroup,
    bad_option,
    bounded,
    check_out_path,
    describe_os_error,
    finite,
    float_in,
)


class _Group(SafeGroup):
    """The syncam-data group: besides SafeGroup's file-system errors, an engine that cannot run at all (no Ray
    cluster at --ray-address) is one error line.

    Every data command can hit it (render, sample-frames, filter-videos, build-shards, eval, and `run` through them),
    at whatever depth the engine starts, so it is handled once here rather than in each command.
    """

    def invoke(self, ctx):  # type: ignore[override]
        from syncam_data.engine import EngineError

        try:
            return super().invoke(ctx)
        except EngineError as e:
            raise fail(str(e)) from None


app = typer.Typer(
    name="syncam-data",
    cls=_Group,
    help=(
        "SynCam data toolkit: render multi-camera scenes, sample posed frame sets, filter web videos, "
        "pack everything into Parquet shards, and check them."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    setup_logging(verbose, quiet)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (test runners and tqdm swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)

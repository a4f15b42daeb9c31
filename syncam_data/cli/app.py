"""The `syncam-data` Typer application; each subcommand lives in its own module in this package."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
import typer
from typer.core import TyperCommand, TyperGroup

from syncam_data.limits import Limit, LimitError

def describe_os_error(e: OSError) -> str:
    """'<file>: <reason>' for a file-system error (what a user can act on), without errno noise."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


class SafeGroup(TyperGroup):
    """A command group whose commands turn file-system errors (a full disk, a read-only folder, a name
    too long) into one line naming the file and the reason, with exit code 1, instead of a traceback.
    Programming errors still raise."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OSError as e:
            typer.echo(f"error: {describe_os_error(e)}", err=True)
            raise typer.Exit(1) from None


class SafeCommand(TyperCommand):
    """``SafeGroup`` for a single-command Typer app."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OSError as e:
            typer.echo(f"error: {describe_os_error(e)}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=SafeGroup,
    name="syncam-data",
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


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print a one-line error and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)



# --- option checks shared by every command ------------------------------------------------------

# Longest file name most file systems accept (ext4, XFS, btrfs: 255 bytes).
NAME_MAX = 255


def check_out_path(path: Path, option: str = "--out", kind: str = "dir") -> Path:
    """Refuse an output path that cannot work before any work starts: one line naming the option.

    ``kind="dir"``: a folder that exists or can be created; ``kind="file"``:
    a file whose folder exists or can be created (not an existing folder).
    """
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise bad_option(option, f"{str(path)[:80]}...: a name in this path is longer than {NAME_MAX} bytes")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise bad_option(option, f"{path}: exists and is not a folder")
    if kind == "file" and path.is_dir():
        raise bad_option(option, f"{path}: is a folder, expected a file name")
    parent = path if kind == "dir" else path.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise bad_option(option, f"{path}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise bad_option(option, f"{path}: {p} is not writable")
            break
    return path


def bad_option(option: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{option}'")


def finite(value: float | None) -> float | None:
    """Typer callback: refuse NaN and infinity (they pass range checks and end up as invalid JSON)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[Any], Any]:
    """Typer callback: a finite float within [lo, hi] (``lo_open``: > lo)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        finite(value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise typer.BadParameter(f"{value} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and value > hi:
            raise typer.BadParameter(f"{value} must be <= {hi:g}")
        return value

    return check


def bounded(limit: Limit) -> Callable[[Any], Any]:
    """Typer callback: the value (or each value of a list) at most ``limit`` (syncam_data/limits.py)."""

    def check(ctx: typer.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        for v in value if isinstance(value, (list, tuple)) else [value]:
            try:
                limit.check(v, param.opts[0] if param.opts else param.name)
            except LimitError as e:
                raise typer.BadParameter(str(e)) from None
        return value

    return check

"""Option checks shared by every command line (syncam-data, syncam-train, syncam-generate).

A user mistake -- an output path that cannot work, NaN for a number, a size
over its documented maximum (``syncam_data/limits.py``), a full disk -- ends
in one line naming the option or file and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from syncam_data.limits import SIDE, Limit, LimitError


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


def float_in(lo: float | None = None, hi: float | Limit | None = None, lo_open: bool = False) -> Callable[[Any], Any]:
    """Typer callback: a finite float within [lo, hi] (``lo_open``: > lo); ``hi`` may be a ``Limit``."""

    def check(ctx: typer.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return value
        finite(value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise typer.BadParameter(f"{value} must be {'>' if lo_open else '>='} {lo:g}")
        if isinstance(hi, Limit):
            try:
                hi.check(value, param.opts[0] if param.opts else str(param.name))
            except LimitError as e:
                raise typer.BadParameter(str(e)) from None
        elif hi is not None and value > hi:
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


def parse_resolution(
    text: str, option: str = "--resolution", limit: Limit | None = SIDE, multiple: int = 1
) -> tuple[int, int]:
    """``"480x720"`` -> (height, width): each side at least 2, a multiple of ``multiple``, at most ``limit``.

    ``render``/``demo`` take any image size (``limits.SIDE``); ``syncam-generate`` passes
    ``limit=None`` and leaves its sizes to ``GenerationConfig`` (multiples of 16 within
    ``limits.MODEL_SIDE``).
    """
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise bad_option(option, f"expected HxW like 480x720, got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if multiple > 1 and (h < multiple or w < multiple or h % multiple or w % multiple):
        raise bad_option(option, f"{text}: height and width must be positive multiples of {multiple}")
    if h < 2 or w < 2:
        raise bad_option(option, f"{text}: each side must be at least 2 pixels")
    if limit is not None and max(h, w) > limit.max:
        raise bad_option(option, f"{text}: each side must be at most {limit.max} pixels (set {limit.env} to raise it)")
    return h, w

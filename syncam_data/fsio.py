"""Durable writes: every output is published by one rename, after its bytes and its folder are on disk.

The protocol (used by every stage, see docs/architecture.md):

1. write under a temporary name in the destination folder (``.<name>.tmp<pid>.<random>``),
2. ``fsync`` the file (for a folder: every file and sub-folder in it, then the folder),
3. ``rename`` it to its final name (atomic on POSIX file systems),
4. ``fsync`` the parent folder, so the rename itself survives a power loss.

A crash at any point leaves either the old state or the new one, plus a
temporary file or folder that the next run removes. ``fsync`` is what makes
"renamed" mean "on disk": without it a power loss can leave a renamed file
with no (or partial) contents on ext4/XFS (see rename(2) and fsync(2)).

This is the one module that writes files durably; every stage uses it:

- one file: ``atomic_write(path)`` (a file object), ``atomic_path(path)`` (a temporary
  name for writers that want one: Parquet, safetensors, zip), ``write_bytes``,
  ``write_text``, ``write_json``; ``publish_file(tmp, final)`` for a temporary file
  a writer kept open (a shard);
- one folder: ``atomic_dir(final)`` or ``tmp_dir`` + ``publish_dir(tmp, final)``,
  optionally replacing a published folder without ever half-deleting it;
- ``remove_dir`` (a published folder, renamed aside first), ``append_line`` (a log whose
  lines mark commits), ``point_symlink`` (``checkpoints/latest``), ``sha256_file`` and
  ``utc_now`` (the timestamps outputs record).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def tmp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` (hidden, unique per process and call; matches ``.*.tmp*``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}.{uuid.uuid4().hex[:6]}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (creations, renames, deletions inside it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform without directory fds (Windows): nothing to flush
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (deepest first), then ``root`` itself."""
    root = Path(root)
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                fsync_file(p)
        fsync_dir(dirpath)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through (for writers that want a file name).

    On success the file is fsynced, renamed to ``path`` and the folder fsynced;
    on error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.exists():  # (a parent that is a file fails below, naming ``path``)
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is not None and os.fspath(e.filename) == os.fspath(tmp):
            e.filename = os.fspath(path)  # name the file the caller asked for, not its hidden temporary name
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """``with atomic_write(p) as f: f.write(...)``: temporary name, fsync, rename, fsync the folder."""
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode, got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False, allow_nan: bool = False
) -> None:
    """JSON written durably; by default strict (NaN and infinity are not JSON: ``ValueError``)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=str))


def publish_file(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Publish a finished temporary file (written by a writer that keeps it open a while, e.g. a shard):
    fsync it, rename it to ``final`` (replacing a file there), fsync the folder."""
    tmp, final = Path(tmp), Path(final)
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def tmp_dir(final: str | os.PathLike) -> Path:
    """A new, empty temporary sibling folder of ``final`` (hidden, ``.<name>.tmp<pid>.<random>``), permissions as ``mkdir``."""
    tmp = tmp_name(Path(final))
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    return tmp


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike, replace: bool = False) -> None:
    """Publish a finished temporary folder: fsync its contents, rename it to ``final``, fsync the parent.

    Without ``replace``, ``final`` must not exist (``os.rename`` refuses a non-empty folder, so a
    concurrent writer that published first keeps its folder). With ``replace``, an existing
    ``final`` is first renamed aside (``.<name>.old<pid>.<random>``) and deleted only after the new
    folder is in place: a published folder is never half-deleted, and a crash leaves at worst a
    hidden leftover next to a complete folder.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    old = None
    if replace and (final.exists() or final.is_symlink()):
        old = final.with_name(f".{final.name}.old{os.getpid()}.{uuid.uuid4().hex[:6]}")
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp: ...write files into tmp...``: published as ``out`` when the block succeeds
    (``publish_dir``); on error the temporary folder is removed and ``out`` is left as it was."""
    tmp = tmp_dir(final)
    try:
        yield tmp
        publish_dir(tmp, final, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a published folder without ever leaving it half-deleted under its name: renamed aside
    (``.<name>.del<pid>.<random>``, the rename fsynced), then removed."""
    path = Path(path)
    gone = path.with_name(f".{path.name}.del{os.getpid()}.{uuid.uuid4().hex[:6]}")
    os.rename(path, gone)
    fsync_dir(path.parent)
    shutil.rmtree(gone, ignore_errors=True)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log whose every line is a commit record (``line`` without its newline); fsynced."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def point_symlink(link: str | os.PathLike, target: str) -> None:
    """Make ``link`` a symlink to ``target`` (relative, as given), swapped in by one rename; the folder fsynced."""
    link = Path(link)
    tmp = tmp_name(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def sha256_file(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601 (``timespec`` as ``datetime.isoformat``: "microseconds" where rows are ordered by it)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec=timespec)

"""Checks for ids that become file or folder names (scene, group, view, sample ids).

Ids come from catalogs, captions files and foreign datasets; a hostile or
careless id must never escape the output folder.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


class UnsafeIdError(ValueError):
    pass


def check_id(value: str, what: str = "id", source: str | None = None) -> str:
    """Return ``value`` if it is safe as a single path component, else raise UnsafeIdError.

    Allowed: letters, digits and ``. _ = + -``, starting with a letter or
    digit, at most 200 characters; no separators, no ``..``, not absolute.
    """
    where = f" (from {source})" if source else ""
    if not isinstance(value, str) or not value:
        raise UnsafeIdError(f"{what} must be a non-empty string{where}, got {value!r}")
    if "/" in value or "\\" in value or value.startswith(("/", "~")) or ".." in value or "\x00" in value:
        raise UnsafeIdError(f"{what} {value!r}{where} contains a path separator, '..' or is absolute")
    if not _SAFE.match(value):
        raise UnsafeIdError(
            f"{what} {value!r}{where} is not a safe name: use letters, digits and . _ = + - (max 200 characters)"
        )
    return value


def sanitize_id(value: str) -> str:
    """Map arbitrary text (a file stem, a URL) to a safe id deterministically."""
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "_", value).strip("._-+=")
    s = s.replace("..", "_")
    if not s:
        s = "x"
    if not s[0].isalnum():
        s = "x" + s
    return s[:200]


def sample_id(dataset: str, group_id: str, view_id: str) -> str:
    """``<dataset>/<group_id>/<view_id>`` with each part checked (Contract 3)."""
    return "/".join(check_id(p, w) for p, w in ((dataset, "dataset"), (group_id, "group_id"), (view_id, "view_id")))

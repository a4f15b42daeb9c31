"""Captions files for ``build-shards --captions``: JSONL or CSV mapping a sample, a group or a source path to a caption.

Each JSONL line is an object, each CSV row has a header, with a ``caption``
and one key:

- ``sample_id``: ``<dataset>/<group_id>/<view_id>`` (one view);
- ``group_id`` (optionally with ``dataset``): every view of a group;
- ``path`` (or ``source``, ``source_uri``, ``video``): a source file or folder
  (a web video, a render scene folder, a frame-set folder, a SynCamVideo scene
  or camera video); relative paths are taken from the captions file's folder.

A generic ``id``/``key`` column is tried as any of the three. Lookup order
for a view: its sample id, then its group (``dataset/group_id`` then
``group_id``), then its source file, then its group's folder or file, then
the caption the source itself carries (``scene.json``). Nothing is invented:
views with no caption are stored with an empty one and counted.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

KEY_FIELDS = ("sample_id", "group_id", "path", "source", "source_uri", "video", "id", "key")


class CaptionsError(ValueError):
    pass


@dataclass
class Captions:
    """A loaded captions file: key -> caption (keys as written plus absolute forms of paths)."""

    entries: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(
        self, dataset: str, group_id: str, view_id: str, view_source: str, group_source: str
    ) -> tuple[str, str] | None:
        """(caption, origin) for one view, or None."""
        candidates = (
            (f"{dataset}/{group_id}/{view_id}", "sample"),
            (f"{dataset}/{group_id}", "group"),
            (group_id, "group"),
            (_norm(view_source), "path"),
            (_norm(group_source), "path"),
        )
        for key, origin in candidates:
            if key and key in self.entries:
                return self.entries[key], origin
        return None


def _norm(path: str) -> str:
    return os.path.realpath(path) if path else ""


def load_captions(path: str | os.PathLike) -> Captions:
    """Read a JSONL (``.jsonl``/``.json``) or CSV (``.csv``/``.tsv``) captions file."""
    p = Path(path)
    if not p.is_file():
        raise CaptionsError(f"{p}: captions file not found")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = list(_read_jsonl(p))
    elif suffix in (".csv", ".tsv"):
        rows = list(_read_csv(p, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise CaptionsError(f"{p}: unknown captions format {suffix!r} (use .jsonl or .csv)")
    caps = Captions(source=str(p))
    for lineno, row in rows:
        _add(caps, row, p, lineno)
    log.info("%s: %d caption keys", p, len(caps))
    return caps


def _read_jsonl(p: Path):
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CaptionsError(f"{p}:{i}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise CaptionsError(f"{p}:{i}: expected a JSON object with a caption and a key")
            yield i, obj


def _read_csv(p: Path, delimiter: str):
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames or "caption" not in reader.fieldnames:
            raise CaptionsError(f"{p}: the header must have a 'caption' column and one of {KEY_FIELDS}")
        yield from enumerate(reader, 2)


def _add(caps: Captions, row: dict, p: Path, lineno: int) -> None:
    caption = row.get("caption")
    if caption is None or not isinstance(caption, str):
        raise CaptionsError(f"{p}:{lineno}: missing or non-text 'caption'")
    keys = []
    if row.get("sample_id"):
        keys.append(str(row["sample_id"]))
    if row.get("group_id"):
        gid = str(row["group_id"])
        keys.append(f"{row['dataset']}/{gid}" if row.get("dataset") else gid)
    for name in ("path", "source", "source_uri", "video"):
        if row.get(name):
            keys.append(_path_key(str(row[name]), p))
    for name in ("id", "key"):
        if row.get(name):
            v = str(row[name])
            keys.extend([v, _path_key(v, p)])
    if not keys:
        raise CaptionsError(f"{p}:{lineno}: no key: give one of {KEY_FIELDS}")
    for k in dict.fromkeys(keys):
        if k in caps.entries and caps.entries[k] != caption:
            log.warning("%s:%d: key %r given twice with different captions; the later one wins", p, lineno, k)
        caps.entries[k] = caption


def _path_key(text: str, captions_file: Path) -> str:
    q = Path(text)
    if not q.is_absolute():
        q = captions_file.parent / q
    return os.path.realpath(q)

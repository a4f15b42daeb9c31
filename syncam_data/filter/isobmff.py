"""Is an MP4/MOV file complete? Read its box structure instead of guessing from decode errors.

An MP4 (ISO base media file format, ISO/IEC 14496-12 section 4.2 "Object
structure"; QuickTime .mov uses the same "atoms") is a sequence of boxes.
Each box starts with a 32-bit big-endian ``size`` (header included) and a
4-character ``type``; ``size == 1`` means a 64-bit ``largesize`` follows the
type, and ``size == 0`` means the box runs to the end of the file (allowed
for the last box only). The movie's index, the ``moov`` box, holds for every
track the file offsets of its media chunks (``stco`` / ``co64`` inside
``moov/trak/mdia/minf/stbl``, section 8.7.5). Encoders write ``moov`` either
after the media data (the default: they only know the index at the end) or
before it ("faststart", for streaming).

A download that stopped early therefore shows in the structure itself:

- the file ends inside a box (a box declares more bytes than are left);
- there is media data (``mdat``) but no ``moov`` (index at the end, cut
  before it);
- the index points at chunks beyond the end of the file (faststart, cut
  right after its index).

``truncation(path)`` returns a sentence saying which, or None for a complete
file and for files that are not ISO BMFF at all (Matroska, AVI, ...: the
decoder's frame count check covers those).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Box types that may appear at the top level of an MP4/MOV file (14496-12, QuickTime): a file whose
# first box is none of these is not ISO BMFF, and a "box" of another type after a valid one is junk.
TOP_LEVEL = {
    b"ftyp",
    b"styp",
    b"moov",
    b"mdat",
    b"free",
    b"skip",
    b"wide",
    b"pdin",
    b"meta",
    b"moof",
    b"mfra",
    b"sidx",
    b"ssix",
    b"prft",
    b"uuid",
    b"pnot",
    b"emsg",
    b"meco",
    b"jP  ",
    b"junk",
}
# Containers on the way from moov to the chunk offset tables.
_PATH_TO_CHUNKS = (b"trak", b"mdia", b"minf", b"stbl")
# The index is read into memory to find its chunk offsets; larger ones are only checked for completeness.
MAX_MOOV_BYTES = 64 << 20


def _header(f: BinaryIO, offset: int, end: int) -> tuple[bytes, int, int] | None | str:
    """(type, box size, header size) of the box at ``offset``; a message if the file ends inside the header."""
    f.seek(offset)
    head = f.read(8)
    if len(head) < 8:
        if not head.strip(b"\0"):
            return None  # zero padding after the last box, not a cut
        return f"the file ends inside a box header at byte {offset} ({end - offset} of 8 bytes present)"
    size, kind = struct.unpack(">I4s", head)
    if size == 1:
        large = f.read(8)
        if len(large) < 8:
            return f"the file ends inside the 64-bit size of box '{_name(kind)}' at byte {offset}"
        return kind, struct.unpack(">Q", large)[0], 16
    if size == 0:
        return kind, end - offset, 8  # "extends to the end of the file"
    return kind, size, 8


def _printable(kind: bytes) -> bool:
    """Box types are four printable characters (other top-level types exist: 'udta' in some .mov files)."""
    return all(32 <= c < 127 for c in kind)


def _name(kind: bytes) -> str:
    return kind.decode("latin-1")


def _children(data: bytes, start: int, stop: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:stop]`` (a box's payload)."""
    pos = start
    while pos + 8 <= stop:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > stop:
                return
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = stop - pos
        if size < head or pos + size > stop:
            return  # a malformed index: the decoder will say what is wrong with it
        yield kind, pos + head, pos + size
        pos += size


def _max_chunk_end(moov: bytes) -> int:
    """The largest chunk offset any track's index points at (0 when there is none, e.g. fragmented files)."""
    best = 0

    def walk(start: int, stop: int, depth: int) -> None:
        nonlocal best
        for kind, a, b in _children(moov, start, stop):
            if depth < len(_PATH_TO_CHUNKS) and kind == _PATH_TO_CHUNKS[depth]:
                walk(a, b, depth + 1)
            elif depth == len(_PATH_TO_CHUNKS) and kind in (b"stco", b"co64") and b - a >= 8:
                # FullBox: version (1 byte) + flags (3 bytes), then entry_count and the offsets (32 or 64 bit).
                count = struct.unpack_from(">I", moov, a + 4)[0]
                width = 4 if kind == b"stco" else 8
                count = min(count, (b - a - 8) // width)
                if count:
                    fmt = f">{count}{'I' if width == 4 else 'Q'}"
                    best = max(best, max(struct.unpack_from(fmt, moov, a + 8)))

    walk(0, len(moov), 0)
    return best


def truncation(path: str | os.PathLike) -> str | None:
    """Why ``path`` looks like an MP4/MOV that was cut short, or None (complete, or not ISO BMFF)."""
    path = Path(path)
    end = path.stat().st_size
    if end < 8:
        return None
    with open(path, "rb") as f:
        first = _header(f, 0, end)
        if not isinstance(first, tuple) or first[0] not in TOP_LEVEL:
            return None  # not an ISO BMFF file: nothing to say
        seen: set[bytes] = set()
        moov: tuple[int, int] | None = None
        offset = 0
        while offset < end:
            box = _header(f, offset, end)
            if box is None:
                break
            if isinstance(box, str):
                return box
            kind, size, head = box
            if kind not in TOP_LEVEL and not _printable(kind):
                # Bytes that do not form a box (padding some tools leave): nothing more can be said.
                return None
            if size < head:
                return None  # a corrupt header, not a cut: the decoder reports it
            if offset + size > end:
                return (
                    f"the file ends inside the '{_name(kind)}' box: it declares {size} bytes from byte {offset}, "
                    f"but the file has {end - offset} bytes from there ({end} in all)"
                )
            seen.add(kind)
            if kind == b"moov":
                moov = (offset + head, offset + size)
            offset += size
        if b"mdat" in seen and moov is None and b"moof" not in seen:
            return "there is media data ('mdat') but no index ('moov'): the file was cut before its index was written"
        if moov is not None and moov[1] - moov[0] <= MAX_MOOV_BYTES:
            f.seek(moov[0])
            last = _max_chunk_end(f.read(moov[1] - moov[0]))
            if last >= end:
                return f"the index ('moov') points at media data at byte {last}, past the end of the file ({end} bytes)"
    return None

"""Record fsync and rename calls, to check that an output is published durably.

The rule (syncam_data/fsio.py): before the rename that publishes a file or a
folder, every file and folder it contains is fsynced; after it, the folder
holding it. ``FsEvents.assert_published`` checks exactly that for one
published path.
"""

from __future__ import annotations

import os
from pathlib import Path


class FsEvents:
    """Use as ``ev = FsEvents(monkeypatch)``; events are ``("fsync", path)`` and ``("rename", src, dst)``."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple] = []
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd):
            self.events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
            return real_fsync(fd)

        def replace(src, dst, *a, **k):
            self.events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
            return real_replace(src, dst, *a, **k)

        def rename(src, dst, *a, **k):
            self.events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
            return real_rename(src, dst, *a, **k)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)

    def publishing_rename(self, final: Path) -> int:
        final_s = os.path.realpath(final)
        hits = [i for i, e in enumerate(self.events) if e[0] == "rename" and e[2] == final_s]
        assert hits, f"{final} was never renamed into place"
        return hits[-1]

    def assert_published(self, final: Path) -> None:
        """``final`` (a file or a folder) was fsynced, with everything in it, before its rename; its folder after."""
        final = Path(final)
        i = self.publishing_rename(final)
        src = Path(self.events[i][1])
        before = {e[1] for e in self.events[:i] if e[0] == "fsync"}
        # Everything the published path holds now, under the name it had before the rename.
        if final.is_dir():
            items = [p for p in final.rglob("*")] + [final]
            for p in items:
                was = os.path.realpath(src / p.relative_to(final))
                assert was in before or str(p) in before, f"{p} was not fsynced before {final.name} was published"
        else:
            assert str(src) in before, f"{final}: its temporary file {src} was not fsynced before the rename"
        after = {e[1] for e in self.events[i + 1 :] if e[0] == "fsync"}
        assert os.path.realpath(final.parent) in after, (
            f"{final.parent} was not fsynced after {final.name} was renamed into it"
        )

"""syncam_data/fsio.py, the one module that writes outputs durably: each helper fsyncs before and after its rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncam_data import fsio
from tests.durability import FsEvents


def test_files_are_published_durably(tmp_path, monkeypatch):
    ev = FsEvents(monkeypatch)
    fsio.write_json(tmp_path / "a.json", {"x": 1})
    fsio.write_text(tmp_path / "b.txt", "b")
    with fsio.atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"c")
    for name in ("a.json", "b.txt", "c.bin"):
        ev.assert_published(tmp_path / name)
    with pytest.raises(ValueError):
        fsio.write_json(tmp_path / "nan.json", {"x": float("nan")})  # strict JSON unless asked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.bin"]


def test_a_folder_replaces_a_published_one_without_half_deleting_it(tmp_path, monkeypatch):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    ev = FsEvents(monkeypatch)
    with fsio.atomic_dir(final, replace=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.txt").write_text("new")
        assert not (final / "sub").exists() and (final / "old.txt").exists()  # nothing visible before the end
    ev.assert_published(final)
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["sub", "sub/new.txt"]
    # the old folder was renamed aside before the new one took its name, and is gone after
    aside = [e for e in ev.events if e[0] == "rename" and e[1] == os.path.realpath(final)]
    assert aside and ev.events.index(aside[0]) < ev.publishing_rename(final)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_folder_leaves_the_published_one_as_it_was(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError), fsio.atomic_dir(final, replace=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in final.iterdir()] == ["keep.txt"]
    # without replace, a folder someone else published first is kept
    with pytest.raises(OSError), fsio.atomic_dir(final) as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in final.iterdir()] == ["keep.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_remove_dir_symlink_and_log_lines(tmp_path, monkeypatch):
    d = tmp_path / "step_000002"
    (d / "x").mkdir(parents=True)
    ev = FsEvents(monkeypatch)
    fsio.remove_dir(d)
    assert not d.exists() and list(tmp_path.iterdir()) == []
    gone = [e for e in ev.events if e[0] == "rename" and e[1] == os.path.realpath(d)]
    assert gone and Path(gone[0][2]).name.startswith(".step_000002.del")
    assert ("fsync", os.path.realpath(tmp_path)) in ev.events[ev.events.index(gone[0]) :]

    fsio.point_symlink(tmp_path / "latest", "step_000001")
    fsio.point_symlink(tmp_path / "latest", "step_000003")
    assert os.readlink(tmp_path / "latest") == "step_000003" and [p.name for p in tmp_path.iterdir()] == ["latest"]

    log = tmp_path / "parts.jsonl"
    fsio.append_line(log, '{"part": 1}')
    fsio.append_line(log, '{"part": 2}')
    assert log.read_text() == '{"part": 1}\n{"part": 2}\n'
    assert ("fsync", os.path.realpath(log)) in ev.events


def test_sha256_and_utc_now(tmp_path):
    import hashlib

    p = tmp_path / "f"
    p.write_bytes(b"x" * 100_000)
    assert fsio.sha256_file(p, chunk=4096) == hashlib.sha256(b"x" * 100_000).hexdigest()
    assert fsio.utc_now().endswith("+00:00") and len(fsio.utc_now()) == 25
    assert len(fsio.utc_now("microseconds")) == 32


def test_an_error_names_the_file_asked_for_not_its_temporary_name(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        fsio.write_json(tmp_path / "a_file" / "report.json", {})
    assert e.value.filename == str(tmp_path / "a_file" / "report.json")
    fsio.write_json(tmp_path / "new" / "deeper" / "r.json", {})  # missing folders are created
    assert (tmp_path / "new" / "deeper" / "r.json").read_text() == "{}"

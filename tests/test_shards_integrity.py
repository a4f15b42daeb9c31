"""Issue 18, shards: the commit protocol under a kill at every file operation, index damage,
invalid cameras kept out, broken cameras.json reported, and decode memory bounded by what is decoded."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.shards.build import BuildConfig, build_shards
from syncam_data.shards.reader import ShardReader
from syncam_data.shards.schema import RecordError
from syncam_data.shards.validate import validate_dataset
from syncam_data.shards.writer import ShardWriter
from syncam_data.video import VideoError, VideoLimits, count_decoded, decode
from tests.test_build_shards_inputs import make_frameset, make_render_scene

runner = CliRunner()
SHARD_RE = re.compile(r"^\.?(syncam-\d{5}\.parquet)(\.tmp.*)?$")


def frames_input(root: Path, ids: list[str]) -> Path:
    for k, gid in enumerate(ids):
        make_frameset(root, gid, source="realestate10k", seed=k)
    return root


def tree_state(root: Path) -> tuple:
    return tuple(sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in root.iterdir() if p.is_file()))


# --- 1. a kill between any two file operations of a commit -----------------------------------


def snapshots_of_build(monkeypatch, cfg: BuildConfig, snap_root: Path) -> list[Path]:
    """Run a build, copying the output folder before every file operation (what a SIGKILL there would leave).

    A copy is only kept when the folder changed since the previous one. Nothing
    after the 'kill' runs in the copy: it is exactly the disk state at that moment.
    """
    out = cfg.out
    snaps: list[Path] = []
    seen: set[tuple] = set()
    busy = {"on": False}

    def snap() -> None:
        if busy["on"] or not out.exists():
            return
        busy["on"] = True
        try:
            state = tree_state(out)
            if state not in seen:
                seen.add(state)
                dst = snap_root / f"s{len(snaps):03d}"
                shutil.copytree(out, dst)
                snaps.append(dst)
        finally:
            busy["on"] = False

    for name in ("replace", "rename", "unlink", "fsync"):
        real = getattr(os, name)

        def wrapped(*a, _real=real, **k):
            snap()
            return _real(*a, **k)

        monkeypatch.setattr(os, name, wrapped)
    build_shards(cfg)
    monkeypatch.undo()
    snaps.append(Path(shutil.copytree(out, snap_root / "final")))
    return snaps


def test_a_kill_at_every_step_of_a_commit_loses_and_mixes_nothing(tmp_path, monkeypatch):
    frames = frames_input(tmp_path / "frames", ["seqA_s000", "seqB_s000", "seqC_s000"])
    first = tmp_path / "first"
    frames_input(first, ["seqA_s000"])
    out = tmp_path / "ds"
    build_shards(BuildConfig(out=out, frames=[first], shard_size="1KB", progress=False))
    cfg = BuildConfig(out=out, frames=[frames], shard_size="1KB", progress=False)  # two new groups, one shard each
    snaps = snapshots_of_build(monkeypatch, cfg, tmp_path / "snaps")
    assert len(snaps) >= 6, "too few distinct disk states to exercise the commit"

    saw_window = False
    for snap in snaps:
        manifest = json.loads((snap / "dataset.json").read_text())
        listed = {s["file"] for s in manifest["shards"]}
        index_shards = set(pq.read_table(snap / "index.parquet").column("shard").to_pylist())
        saw_window |= bool(index_shards - listed)  # the reported window: the index names a shard the manifest does not
        # Names that existed in this state (committed, renamed-but-uncommitted, or temporary).
        existed = {m.group(1): p for p in snap.iterdir() if (m := SHARD_RE.match(p.name))}

        # A reader of the killed state sees exactly the committed groups, with their own media.
        reader = ShardReader(snap)
        assert set(reader.index.column("shard").to_pylist()) <= listed
        for i in range(len(reader)):
            row = reader.row(i)
            assert reader.read_blob(i) == (frames / row["group_id"] / f"{row['view_id']}.jpg").read_bytes()

        # The next run completes the dataset: every group exactly once, each row's blob its own image.
        work = tmp_path / "resume" / snap.name
        shutil.copytree(snap, work)
        if (work / ".build.lock").exists():  # the killed build's lock: its process is gone
            (work / ".build.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
        build_shards(BuildConfig(out=work, frames=[frames], shard_size="1KB", progress=False))
        rep = validate_dataset(work)
        assert rep.ok, (snap.name, rep.problems)
        reader = ShardReader(work)
        assert sorted(g for _, g in reader.groups()) == ["seqA_s000", "seqB_s000", "seqC_s000"], snap.name
        assert len(reader) == 9 and len(set(reader.index.column("sample_id").to_pylist())) == 9
        for i in range(len(reader)):
            row = reader.row(i)
            assert reader.read_blob(i) == (frames / row["group_id"] / f"{row['view_id']}.jpg").read_bytes(), (
                snap.name,
                row["sample_id"],
            )
        # A shard name is never given to other contents: a name the killed state held is either kept as it was or gone.
        for name, held in existed.items():
            if (work / name).exists() and not held.name.startswith("."):
                assert (work / name).read_bytes() == held.read_bytes(), (snap.name, name)
            elif (work / name).exists():
                pytest.fail(f"{snap.name}: {name} was being written when killed, and the next run reused the name")
    assert saw_window, "no disk state had the index ahead of the manifest: the test missed the reported crash window"


def test_reader_and_writer_rebuild_an_index_ahead_of_the_manifest(tmp_path):
    """The exact state of the report: a shard renamed and indexed, dataset.json not yet rewritten."""
    frames = frames_input(tmp_path / "frames", ["seqA_s000", "seqB_s000"])
    out = tmp_path / "ds"
    build_shards(BuildConfig(out=out, frames=[frames], shard_size="1KB", progress=False))
    manifest = json.loads((out / "dataset.json").read_text())
    old = dict(manifest, shards=manifest["shards"][:1], num_rows=manifest["shards"][0]["num_rows"])
    old["index_sha256"] = hashlib.sha256(b"the index before the second shard").hexdigest()
    (out / "dataset.json").write_text(json.dumps(old))
    reader = ShardReader(out)
    assert len(reader) == 3 and set(reader.index.column("shard").to_pylist()) == {old["shards"][0]["file"]}
    frames_c = frames_input(tmp_path / "more", ["seqC_s000"])
    build_shards(BuildConfig(out=out, frames=[frames, frames_c], shard_size="1KB", progress=False))
    assert validate_dataset(out).ok
    reader = ShardReader(out)
    files = [s["file"] for s in reader.manifest["shards"]]
    assert (
        files[0] == "syncam-00000.parquet" and "syncam-00001.parquet" not in files
    )  # the uncommitted name is not reused
    for i in range(len(reader)):
        row = reader.row(i)
        src = frames if row["group_id"] != "seqC_s000" else frames_c
        assert reader.read_blob(i) == (src / row["group_id"] / f"{row['view_id']}.jpg").read_bytes()


# --- 2. damage to index.parquet -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    frames = frames_input(root / "frames", ["seqA_s000", "seqB_s000"])
    build_shards(BuildConfig(out=root / "ds", frames=[frames], progress=False))
    return root / "ds"


def test_every_bit_flip_in_the_index_is_reported_and_never_reaches_the_loader(small_dataset, tmp_path):
    good = ShardReader(small_dataset).index
    data = (small_dataset / "index.parquet").read_bytes()
    rng = np.random.default_rng(0)
    for trial, pos in enumerate(rng.choice(len(data), 30, replace=False)):
        ds = tmp_path / f"t{trial}"
        shutil.copytree(small_dataset, ds)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        (ds / "index.parquet").write_bytes(bytes(flipped))
        rep = validate_dataset(ds, decode_media=False)
        assert not rep.ok and any("index.parquet" in p for p in rep.problems), (pos, rep.problems)
        # The reader never plans from a damaged index: it rebuilds it from the shards.
        assert ShardReader(ds).index.equals(good), pos


def test_validate_compares_every_index_row_with_its_shard_row(small_dataset, tmp_path):
    """An index rewritten consistently (its sha256 in dataset.json) but with wrong values is still caught."""
    ds = tmp_path / "ds"
    shutil.copytree(small_dataset, ds)
    index = pq.read_table(ds / "index.parquet").to_pylist()
    index[1]["c2w"] = [v + (0.5 if k == 3 else 0.0) for k, v in enumerate(index[1]["c2w"])]
    index[2]["caption"] = "not the caption of the shard"
    index[4]["width"] += 2
    import pyarrow as pa

    from syncam_data.shards.schema import INDEX_SCHEMA

    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), ds / "index.parquet")
    manifest = json.loads((ds / "dataset.json").read_text())
    manifest["index_sha256"] = hashlib.sha256((ds / "index.parquet").read_bytes()).hexdigest()
    (ds / "dataset.json").write_text(json.dumps(manifest))
    rep = validate_dataset(ds, decode_media=False)
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert f"{index[1]['sample_id']}): index.parquet differs from the shard in c2w" in text
    assert f"{index[2]['sample_id']}): index.parquet differs from the shard in caption" in text
    assert f"{index[4]['sample_id']}): index.parquet differs from the shard in width" in text
    assert len([p for p in rep.problems if "differs from the shard" in p]) == 3


def test_manifest_records_the_index_sha256(small_dataset):
    manifest = json.loads((small_dataset / "dataset.json").read_text())
    assert manifest["index_sha256"] == hashlib.sha256((small_dataset / "index.parquet").read_bytes()).hexdigest()
    assert manifest["next_shard"] == len(manifest["shards"])


# --- 3. invalid cameras never reach a shard ------------------------------------------------------


def edit_camera(folder: Path, fn) -> None:
    p = folder / "cameras.json"
    data = json.loads(p.read_text())
    fn(data["cameras"][1])
    p.write_text(json.dumps(data))


def scale_axis(cam: dict, col: int, factor: float) -> None:
    m = np.asarray(cam["c2w"], np.float64).reshape(3, 4)
    m[:, col] *= factor
    cam["c2w"] = m.reshape(-1).tolist()


def test_invalid_cameras_are_error_rows_and_never_written(tmp_path):
    renders = tmp_path / "renders"
    make_render_scene(renders, "good", seed=0)
    edit_camera(make_render_scene(renders, "fx_inf", seed=1), lambda c: c.update(fx=float("inf")))
    edit_camera(make_render_scene(renders, "skewed", seed=2), lambda c: scale_axis(c, 0, 1.2))
    edit_camera(make_render_scene(renders, "mirrored", seed=3), lambda c: scale_axis(c, 0, -1.0))
    out = tmp_path / "ds"
    res = runner.invoke(
        app,
        [
            "-q",
            "build-shards",
            "--out",
            str(out),
            "--renders",
            str(renders),
            "--fail-on-error",
            "--json",
            str(tmp_path / "s.json"),
        ],
    )
    assert res.exit_code == 1, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    errors = {Path(e["input"].split(":", 1)[1]).name: e["error"] for e in summary["errors"]}
    assert set(errors) == {"fx_inf", "skewed", "mirrored"}
    assert (
        "intrinsics" in errors["fx_inf"]
        and "not orthonormal" in errors["skewed"]
        and "determinant" in errors["mirrored"]
    )
    assert validate_dataset(out).ok
    assert {g for _, g in ShardReader(out).groups()} == {"good"}
    # Without --fail-on-error the errors are still recorded and printed, and the exit code is 0.
    res = runner.invoke(app, ["-q", "build-shards", "--out", str(tmp_path / "ds2"), "--renders", str(renders)])
    assert res.exit_code == 0 and res.output.count("error:") == 3


def test_shard_writer_refuses_a_group_with_a_bad_camera(tmp_path):
    from tests.test_shards import video_group

    g = video_group("g0", n_views=2)
    g[1].K = [float("nan"), 50.0, 32.0, 24.0]
    with ShardWriter(tmp_path) as w:
        with pytest.raises(RecordError, match="intrinsics"):
            w.write_group(g)
        w.write_group(video_group("g1", n_views=2, seed=1))
    assert {gid for _, gid in ShardReader(tmp_path).groups()} == {"g1"} and validate_dataset(tmp_path).ok


# --- 4. a broken cameras.json is an error row, not an "incomplete scene" ----------------------


def test_broken_cameras_json_is_an_error_row_naming_file_and_reason(tmp_path):
    renders = tmp_path / "renders"
    make_render_scene(renders, "good", seed=0)
    edit_camera(make_render_scene(renders, "nan_pose", seed=1), lambda c: c["c2w"].__setitem__(3, float("nan")))
    edit_camera(make_render_scene(renders, "unsafe_id", seed=2), lambda c: c.update(id="../../etc"))
    text = (make_render_scene(renders, "truncated", seed=3) / "cameras.json").read_text()
    (renders / "truncated" / "cameras.json").write_text(text[: len(text) // 2])
    (make_render_scene(renders, "empty", seed=4) / "cameras.json").write_text("")
    shutil.copytree(renders / "good", renders / ".tmp-late-123-abcdef12")  # still being written: not an error
    res = runner.invoke(
        app,
        ["build-shards", "--out", str(tmp_path / "ds"), "--renders", str(renders), "--json", str(tmp_path / "s.json")],
    )
    assert res.exit_code == 0, res.output
    errors = {
        Path(e["input"].split(":", 1)[1]).name: e["error"]
        for e in json.loads((tmp_path / "s.json").read_text())["errors"]
    }
    assert set(errors) == {"nan_pose", "unsafe_id", "truncated", "empty"}
    for scene, reason in [
        ("nan_pose", "NaN"),
        ("unsafe_id", "path separator"),
        ("truncated", "cannot read"),
        ("empty", "cannot read"),
    ]:
        assert str(renders / scene / "cameras.json") in errors[scene] and reason in errors[scene], errors[scene]
        assert f"error: renders:{renders / scene}" in res.output
    assert "incomplete" not in res.output
    assert {g for _, g in ShardReader(tmp_path / "ds").groups()} == {"good"}


def test_frame_set_without_cameras_json_is_an_error_row_not_skipped(tmp_path):
    frames = tmp_path / "frames"
    make_frameset(frames, "good", seed=0)
    (make_frameset(frames, "lost_cameras", seed=1) / "cameras.json").unlink()
    shutil.copytree(frames / "good", frames / ".late.tmp-123-abcdef12")  # still being written: not an error
    res = runner.invoke(
        app,
        ["build-shards", "--out", str(tmp_path / "ds"), "--frames", str(frames), "--json", str(tmp_path / "s.json")],
    )
    assert res.exit_code == 0, res.output
    errors = json.loads((tmp_path / "s.json").read_text())["errors"]
    assert len(errors) == 1 and str(frames / "lost_cameras" / "cameras.json") in errors[0]["error"], errors
    assert "incomplete" not in res.output
    assert {g for _, g in ShardReader(tmp_path / "ds").groups()} == {"good"}


def _phone_jpeg(path: Path) -> np.ndarray:
    """Re-save ``path`` as a phone does: the same stored pixels plus EXIF Orientation 6 ("rotate 90 to display")."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    path.write_bytes(buf.getvalue())
    return np.asarray(img)


def test_exif_rotated_frames_are_read_as_stored_by_validate_and_the_loader(tmp_path):
    """The cameras describe the stored pixels (COLMAP and nerfstudio ignore EXIF); every reader must agree."""
    from syncam_model.data import decode_view

    folder = make_frameset(tmp_path / "frames", "phone", seed=0)
    stored = {p.stem: _phone_jpeg(p) for p in folder.glob("*.jpg")}
    h, w = next(iter(stored.values())).shape[:2]
    assert h != w  # a 90-degree turn would show as a size change
    out = tmp_path / "ds"
    res = runner.invoke(app, ["build-shards", "--out", str(out), "--frames", str(tmp_path / "frames")])
    assert res.exit_code == 0, res.output
    rep = validate_dataset(out)
    assert rep.ok, rep.problems  # before: "media is 1 frames of 48x64, row says 1 of 64x48"
    r = ShardReader(out)
    for i in range(len(r)):
        row = r.row(i)
        got = decode_view(r.read_blob(i), row["media_format"], [0], (h, w), row["view_id"])
        assert got.shape == (1, 3, h, w)
        assert np.abs(got[0].transpose(1, 2, 0).astype(int) - stored[row["view_id"]]).mean() < 3.0


# --- 5. decode memory: bounded by what is decoded, not by what the header says ----------------


def headerless_mkv(frames: int = 200, side: int = 256) -> bytes:
    """H.264 in Matroska written to a pipe: no duration, no frame count (what a crafted file can do)."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b) -> int:
            self.buf += bytes(b)
            return len(b)

    sink = Pipe()
    c = av.open(sink, mode="w", format="matroska")
    s = c.add_stream("libx264", rate=24)
    s.width = s.height = side
    s.pix_fmt = "yuv420p"
    black = np.zeros((side, side, 3), np.uint8)
    for _ in range(frames):
        for p in s.encode(av.VideoFrame.from_ndarray(black, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return bytes(sink.buf)


def test_decode_enforces_the_memory_limit_on_frames_actually_decoded():
    data = headerless_mkv()
    assert len(data) < 20_000  # ~40 MB of frames in a few KB
    ct = av.open(io.BytesIO(data))
    assert not ct.streams.video[0].frames and ct.duration is None  # the header promises nothing
    ct.close()
    limits = VideoLimits(max_decoded_bytes=8 << 20)  # 42 frames of 256x256 RGB
    with pytest.raises(VideoError, match="memory limit") as e:
        decode(data, limits=limits)
    assert "after 43 frame(s)" in str(e.value)
    with pytest.raises(VideoError, match="memory limit"):
        decode(data, indices=list(range(100)), limits=limits)
    assert decode(data, indices=[0, 5], limits=limits).shape == (2, 256, 256, 3)  # within the limit: fine
    # validate's check decodes every frame and keeps none.
    assert count_decoded(data, limits=limits) == (200, 256, 256)


# --- 11. durable commits: fsync before the publishing rename, the folder after -------------------


def test_shards_index_and_manifest_are_published_durably(tmp_path, monkeypatch):
    from tests.durability import FsEvents

    frames = frames_input(tmp_path / "frames", ["seqA_s000", "seqB_s000"])
    out = tmp_path / "ds"
    ev = FsEvents(monkeypatch)
    build_shards(BuildConfig(out=out, frames=[frames], shard_size="1KB", progress=False))
    shards = [s["file"] for s in json.loads((out / "dataset.json").read_text())["shards"]]
    assert len(shards) == 2
    for name in [*shards, "index.parquet", "dataset.json"]:
        ev.assert_published(out / name)


def test_a_filter_scores_part_is_published_durably(tmp_path, monkeypatch):
    from syncam_data.filter.store import ScoresStore
    from tests.durability import FsEvents

    ev = FsEvents(monkeypatch)
    store = ScoresStore(tmp_path / "f")
    part = store.append({"path": "/videos/a.mp4", "content_hash": "abc", "status": "kept"})
    ev.assert_published(part)
    store.write_all()
    ev.assert_published(store.scores)
    ev.assert_published(store.kept)

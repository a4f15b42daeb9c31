"""build-shards end to end through the CLI: every adapter, captions, incremental/dedup, crash safety, engines."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cameras import c2w_from_ue_row_matrix, parse_ue_row_matrix, relative_poses
from syncam_data.cli import app
from syncam_data.shards.reader import ShardReader, extra
from syncam_data.shards.validate import validate_dataset
from syncam_data.video import decode
from tests.test_build_shards_inputs import (
    FRAMES,
    H,
    W,
    make_frameset,
    make_render_scene,
    make_syncamvideo,
    make_web_videos,
)

runner = CliRunner()


def build(out: Path, *args: str, ok: bool = True) -> str:
    res = runner.invoke(app, ["-q", "build-shards", "--out", str(out), *args])
    if ok:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def assert_valid(out: Path) -> ShardReader:
    rep = validate_dataset(out)
    assert rep.ok, rep.problems
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    return ShardReader(out)


def rows_by_sample(reader: ShardReader) -> dict[str, dict]:
    return {r["sample_id"]: r for r in reader.rows()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    make_render_scene(root / "renders", "sceneA", backend="blender", caption="a dog runs", seed=0)
    make_render_scene(root / "renders", "sceneB", backend="unrealcv", caption="two people dance", seed=1)
    (root / "renders" / ".sceneC.tmp-123").mkdir()  # a render still running
    (root / "renders" / "sceneD").mkdir()  # an incomplete scene
    make_frameset(root / "frames", "seqA_s000", source="realestate10k", fmt="jpg", seed=0)
    make_frameset(root / "frames", "seqB_s000", source="dl3dv", fmt="png", seed=1)
    scores = make_web_videos(root / "web", [("short", 4, "kept"), ("long", 30, "kept"), ("bad", 4, "rejected")])
    make_syncamvideo(root / "scv", Path(__file__).resolve().parent / "fixtures/syncamvideo/camera_extrinsics.json")
    return {"root": root, "renders": root / "renders", "frames": root / "frames", "scores": scores, "scv": root / "scv"}


@pytest.fixture(scope="module")
def extrinsics_file(inputs) -> Path:
    return inputs["scv"] / "f24_aperture5" / "scene1" / "cameras" / "camera_extrinsics.json"


# --- adapters --------------------------------------------------------------------------


def test_renders_cameras_media_depth_captions_survive(inputs, tmp_path):
    out = tmp_path / "ds"
    build(out, "--renders", str(inputs["renders"]))
    reader = assert_valid(out)
    groups = reader.groups()
    assert set(groups) == {
        ("syncam-blender", "sceneA"),
        ("syncam-unreal", "sceneB"),
    }  # temp and unreadable folders left out
    # The temporary folder of a running render is skipped; a scene folder without scene.json is an error row.
    (err,) = reader.manifest["stats"]["builds"][-1]["errors"]
    assert err["input"].endswith("/sceneD") and "scene.json" in err["error"]
    for (_, scene), idx in groups.items():
        folder = inputs["renders"] / scene
        cams = {c["id"]: c for c in json.loads((folder / "cameras.json").read_text())["cameras"]}
        assert sorted(reader.row(i)["view_id"] for i in idx) == sorted(cams)
        for i in idx:
            row = reader.row(i)
            cam = cams[row["view_id"]]
            np.testing.assert_allclose(row["c2w"], cam["c2w"], atol=1e-5)
            np.testing.assert_allclose(row["K"], [cam["fx"], cam["fy"], cam["cx"], cam["cy"]], rtol=1e-6)
            assert (
                row["kind"] == "multiview_video"
                and row["caption"] == json.loads((folder / "scene.json").read_text())["caption"]
            )
            clip = decode(reader.read_blob(i))
            assert clip.shape == (FRAMES, H, W, 3) and (row["num_frames"], row["height"], row["width"]) == (
                FRAMES,
                H,
                W,
            )
            assert row["frame_indices"] == list(range(FRAMES))
            assert reader.read_blob(i) == (folder / "videos" / f"{row['view_id']}.mp4").read_bytes()
            assert reader.read_blob(i, "depth") == (folder / "depth" / f"{row['view_id']}.npz").read_bytes()
            assert reader.read_depth(i).shape == (FRAMES, H, W)
            assert extra(row)["raw"] == cam["raw"]


def test_framesets_images_stored_as_is_with_poses(inputs, tmp_path):
    out = tmp_path / "ds"
    build(out, "--frames", str(inputs["frames"]))
    reader = assert_valid(out)
    assert set(reader.groups(kind="multiview_image")) == {("realestate10k", "seqA_s000"), ("dl3dv", "seqB_s000")}
    for (ds, gid), idx in reader.groups().items():
        folder = inputs["frames"] / gid
        meta = json.loads((folder / "cameras.json").read_text())
        cams = {c["id"]: c for c in meta["cameras"]}
        for i in idx:
            row = reader.row(i)
            cam = cams[row["view_id"]]
            blob = reader.read_blob(i)
            assert blob == (folder / cam["image"]).read_bytes()
            assert row["media_format"] == ("jpeg" if ds == "realestate10k" else "png")
            img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
            assert img.shape[:2] == (H, W) and row["num_frames"] == 1
            assert row["frame_indices"] == [cam["frame_index"]]
            np.testing.assert_allclose(row["c2w"], cam["c2w"], atol=1e-5)
            np.testing.assert_allclose(row["K"], [cam["fx"], cam["fy"], cam["cx"], cam["cy"]], rtol=1e-6)
            assert row["source_uri"] == meta["source_uri"]
            if ds == "realestate10k":
                assert extra(row)["timestamp_us"] == cam["timestamp_us"]


def test_web_videos_copied_or_reencoded_with_scores(inputs, tmp_path):
    out = tmp_path / "ds"
    build(out, "--videos", str(inputs["scores"]), "--max-frames", "20")
    reader = assert_valid(out)
    scores = {r["path"]: r for r in pq.read_table(inputs["scores"]).to_pylist()}
    rows = reader.rows()
    assert len(rows) == 2  # the rejected row is not built
    for i, row in enumerate(rows):
        src = scores[row["source_uri"]]
        assert src["status"] == "kept"
        assert row["dataset"] == "web" and row["kind"] == "single_video" and row["view_id"] == "v0"
        assert row["group_id"] == f"web-{src['content_hash']}"
        assert row["K"] is None and row["c2w"] is None
        assert row["subject_motion"] == pytest.approx(src["subject_motion"]) and row["camera_motion"] == pytest.approx(
            src["camera_motion"]
        )
        clip = decode(reader.read_blob(i))
        if src["num_frames"] <= 20:
            assert reader.read_blob(i) == Path(src["path"]).read_bytes()  # H.264 mp4 within limits: copied
            assert extra(row)["transcoded"] is False and clip.shape[0] == src["num_frames"]
        else:
            assert extra(row)["transcoded"] is True and "max_frames" in extra(row)["transcode_reason"]
            assert clip.shape == (20, H, W, 3) and row["num_frames"] == 20
            first = decode(Path(src["path"]), indices=[0, 19])
            assert np.abs(clip[[0, 19]].astype(int) - first.astype(int)).mean() < 6  # the clip's first 20 frames


def official_relative_poses(matrices: list[np.ndarray], scale: float) -> np.ndarray:
    """SynCamMaster's loader (docs/cameras.md): transpose, columns (right, up, forward), negate up, translation / scale.

    It stays in UE's left-handed world, so only poses relative to the first camera are comparable.
    """
    c2ws = []
    for m in matrices:
        t = m.T  # column vectors: columns forward, right, up, translation
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = t[:3, 1], -t[:3, 2], t[:3, 0]
        c2w[:3, 3] = t[:3, 3] / scale
        c2ws.append(c2w)
    ref = np.linalg.inv(c2ws[0])
    return np.stack([(ref @ c)[:3].reshape(-1) for c in c2ws])


def test_syncamvideo_relative_poses_equal_the_file(inputs, extrinsics_file, tmp_path):
    out = tmp_path / "ds"
    build(out, "--syncamvideo", str(inputs["scv"]))
    reader = assert_valid(out)
    ((key, idx),) = reader.groups().items()
    assert key == ("syncamvideo", "f24_aperture5-scene1")
    rows = sorted((reader.row(i) for i in idx), key=lambda r: r["view_id"])
    cams = [r["view_id"] for r in rows]
    assert cams == ["cam01", "cam02", "cam03", "cam04"]  # cameras with a video only
    data = json.loads(extrinsics_file.read_text())
    from_shards = relative_poses([np.asarray(r["c2w"], np.float64) for r in rows])
    from_file = relative_poses([c2w_from_ue_row_matrix(data["frame0"][c]) for c in cams])
    np.testing.assert_allclose(from_shards, from_file, atol=2e-5)
    official = official_relative_poses([parse_ue_row_matrix(data["frame0"][c]) for c in cams], scale=100.0)
    np.testing.assert_allclose(from_shards, official, atol=2e-4)
    # The relative poses are not trivial: the rig spans real angles and baselines.
    assert np.abs(from_shards[1:, [3, 7, 11]]).max() > 0.1  # real baselines (metres), not a degenerate rig
    f = 24.0 * W / 23.76
    for i in idx:
        r = reader.row(i)
        np.testing.assert_allclose(r["K"], [f, f, W / 2, H / 2], rtol=1e-6)
        assert r["num_frames"] == FRAMES and "c2w_per_frame" not in extra(r)
        assert decode(reader.read_blob(i)).shape == (FRAMES, H, W, 3)


def test_syncamvideo_scene_folder_fov_and_moving_camera(inputs, extrinsics_file, tmp_path):
    scene = tmp_path / "MultiCamVideo" / "f35_aperture2" / "scene7"
    shutil.copytree(inputs["scv"] / "f24_aperture5" / "scene1", scene)
    data = json.loads(extrinsics_file.read_text())
    m = parse_ue_row_matrix(data["frame40"]["cam02"])
    m[3, 0] += 50.0  # cam02 moves 50 cm at frame 40
    data["frame40"]["cam02"] = " ".join("[" + " ".join(f"{v:g}" for v in row) + "]" for row in m) + " "
    (scene / "cameras" / "camera_extrinsics.json").write_text(json.dumps(data))
    out = tmp_path / "ds"
    build(out, "--syncamvideo", str(scene), "--fov", "90")  # a single scene folder
    reader = assert_valid(out)
    rows = {r["view_id"]: r for r in reader.rows()}
    assert {r["group_id"] for r in rows.values()} == {"f35_aperture2-scene7"}
    np.testing.assert_allclose(rows["cam01"]["K"], [W / 2, W / 2, W / 2, H / 2], rtol=1e-6)  # hfov 90: fx = W/2
    per_frame = extra(rows["cam02"])["c2w_per_frame"]
    assert len(per_frame) == 81
    np.testing.assert_allclose(
        np.asarray(per_frame[40]).reshape(3, 4)[:, 3] - np.asarray(per_frame[0]).reshape(3, 4)[:, 3],
        [0.5, 0, 0],
        atol=1e-5,
    )
    assert "c2w_per_frame" not in extra(rows["cam01"])


# --- captions ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_captions_file_by_sample_group_and_path(inputs, tmp_path, fmt):
    entries = [
        {"sample_id": "realestate10k/seqA_s000/v01", "caption": "a kitchen, seen from the door"},
        {"group_id": "seqA_s000", "caption": "a kitchen"},
        {"path": str(inputs["scores"].parent / "short.mp4"), "caption": "a cat jumps"},
        {"group_id": "sceneA", "dataset": "syncam-blender", "caption": "a dog runs in a park"},
    ]
    cap = tmp_path / f"captions.{fmt}"
    if fmt == "jsonl":
        cap.write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        import csv

        with open(cap, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["sample_id", "group_id", "dataset", "path", "caption"])
            w.writeheader()
            w.writerows(entries)
    out = tmp_path / "ds"
    text = build(
        out,
        "--captions",
        str(cap),
        "--frames",
        str(inputs["frames"]),
        "--videos",
        str(inputs["scores"]),
        "--renders",
        str(inputs["renders"]),
    )
    rows = rows_by_sample(assert_valid(out))
    assert rows["realestate10k/seqA_s000/v01"]["caption"] == "a kitchen, seen from the door"
    assert rows["realestate10k/seqA_s000/v00"]["caption"] == "a kitchen"
    assert rows["syncam-blender/sceneA/cam00"]["caption"] == "a dog runs in a park"  # the file wins over scene.json
    assert rows["syncam-unreal/sceneB/cam00"]["caption"] == "two people dance"  # scene.json
    web = {r["source_uri"]: r["caption"] for r in rows.values() if r["dataset"] == "web"}
    assert web[str(inputs["scores"].parent / "short.mp4")] == "a cat jumps"
    assert web[str(inputs["scores"].parent / "long.mp4")] == ""  # never invented
    assert all(r["caption"] == "" for r in rows.values() if r["dataset"] == "dl3dv")
    stats = json.loads((out / "dataset.json").read_text())["stats"]
    missing = sum(1 for r in rows.values() if not r["caption"])
    assert missing == 4 and stats["views_without_caption"] == missing
    assert stats["builds"][-1]["captions"] == {"from_file": 7, "from_source": 3, "missing": 4}
    assert "4 missing" in text


def test_bad_captions_file_is_a_clear_error(inputs, tmp_path):
    cap = tmp_path / "c.jsonl"
    cap.write_text('{"group_id": "x", "caption": "ok"}\n{"caption": "no key"}\n')
    res = runner.invoke(
        app, ["build-shards", "--out", str(tmp_path / "ds"), "--frames", str(inputs["frames"]), "--captions", str(cap)]
    )
    assert res.exit_code == 1 and f"{cap}:2" in res.output
    assert not (tmp_path / "ds" / "dataset.json").exists()


# --- incremental, dedup, crash safety ----------------------------------------------------


def test_incremental_adds_only_new_groups_and_skips_duplicates(inputs, tmp_path):
    renders = tmp_path / "renders"
    shutil.copytree(inputs["renders"] / "sceneA", renders / "sceneA")
    out = tmp_path / "ds"
    build(out, "--renders", str(renders), "--shard-size", "1KB")
    first = json.loads((out / "dataset.json").read_text())["shards"]
    assert len(first) == 1
    digest = hashlib.sha256((out / first[0]["file"]).read_bytes()).hexdigest()

    shutil.copytree(inputs["renders"] / "sceneB", renders / "sceneB")
    shutil.copytree(inputs["renders"] / "sceneA", renders / "sceneA_copy")  # same content, other name
    text = build(out, "--renders", str(renders), "--shard-size", "1KB", "--json", str(tmp_path / "s.json"))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["groups_written"] == 1 and summary["skipped_existing"] == 1 and summary["skipped_duplicate"] == 1
    assert "skipped 1 already present, 1 duplicate" in text
    reader = assert_valid(out)
    assert set(reader.groups()) == {("syncam-blender", "sceneA"), ("syncam-unreal", "sceneB")}
    manifest = json.loads((out / "dataset.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["syncam-00000.parquet", "syncam-00001.parquet"]
    assert hashlib.sha256((out / first[0]["file"]).read_bytes()).hexdigest() == digest  # committed shards untouched
    assert len(manifest["stats"]["builds"]) == 2

    build(out, "--renders", str(renders))  # nothing new: nothing written, dataset unchanged
    assert json.loads((out / "dataset.json").read_text())["shards"] == manifest["shards"]


def test_duplicates_within_one_build_keep_the_first_by_key(inputs, tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(inputs["frames"] / "seqA_s000", frames / "seqZ_s000")
    shutil.copytree(inputs["frames"] / "seqA_s000", frames / "seqA_s000")
    out = tmp_path / "ds"
    build(out, "--frames", str(frames), "--frames", str(frames))  # the same folder twice, and a copy
    assert set(assert_valid(out).groups()) == {("realestate10k", "seqA_s000")}


def test_killed_build_leaves_a_valid_dataset_and_resumes(inputs, tmp_path, monkeypatch):
    from syncam_data.shards import build as build_mod

    out = tmp_path / "ds"
    real_commit = build_mod.commit_batch
    calls = {"n": 0}

    def commit_then_die(writer, result, summary):
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed after the first shard")
        calls["n"] += 1
        real_commit(writer, result, summary)

    monkeypatch.setattr(build_mod, "commit_batch", commit_then_die)
    cfg = build_mod.BuildConfig(
        out=out, renders=[inputs["renders"]], frames=[inputs["frames"]], shard_size="1KB", progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        build_mod.build_shards(cfg)
    assert list(out.glob(".*.tmp*"))  # the second shard was written but never committed
    reader = assert_valid(out)
    assert len(reader.groups()) == 1 and len(reader.manifest["shards"]) == 1
    assert not (out / ".build.lock").exists()

    monkeypatch.setattr(build_mod, "commit_batch", real_commit)
    build(out, "--renders", str(inputs["renders"]), "--frames", str(inputs["frames"]), "--shard-size", "1KB")
    reader = assert_valid(out)
    assert len(reader.groups()) == 4 and len(reader) == 12
    assert not list(out.glob(".*.tmp*"))
    ids = reader.index.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids))


def test_uncommitted_shard_of_a_killed_build_is_replaced(inputs, tmp_path):
    out = tmp_path / "ds"
    build(out, "--frames", str(inputs["frames"]), "--shard-size", "1KB")
    manifest = json.loads((out / "dataset.json").read_text())
    # Simulate a kill between renaming shard 00001 and committing it.
    manifest["shards"] = manifest["shards"][:1]
    index = pq.read_table(out / "index.parquet")
    pq.write_table(
        index.filter(np.array([s == "syncam-00000.parquet" for s in index.column("shard").to_pylist()])),
        out / "index.parquet",
    )
    manifest["num_rows"] = manifest["shards"][0]["num_rows"]
    manifest["index_sha256"] = hashlib.sha256(
        (out / "index.parquet").read_bytes()
    ).hexdigest()  # as the first commit recorded it
    (out / "dataset.json").write_text(json.dumps(manifest))
    reader = assert_valid(out)
    assert len(reader.groups()) == 1
    build(out, "--frames", str(inputs["frames"]), "--shard-size", "1KB")
    reader = assert_valid(out)
    assert len(reader.groups()) == 2 and len(reader) == 6
    assert sorted(p.name for p in out.glob("syncam-*.parquet")) == [s["file"] for s in reader.manifest["shards"]]


def test_bad_group_is_recorded_and_skipped_whole(inputs, tmp_path):
    renders = tmp_path / "renders"
    shutil.copytree(inputs["renders"], renders)
    shutil.rmtree(renders / "sceneD")  # an unreadable scene folder is an error row of its own (see test_renders_...)
    (renders / "sceneB" / "videos" / "cam01.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 40)
    out = tmp_path / "ds"
    res = runner.invoke(app, ["build-shards", "--out", str(out), "--renders", str(renders), "--fail-on-error"])
    assert res.exit_code == 1 and "sceneB" in res.output
    reader = assert_valid(out)
    assert set(reader.groups()) == {("syncam-blender", "sceneA")}  # no partial sceneB
    errors = reader.manifest["stats"]["builds"][-1]["errors"]
    assert len(errors) == 1 and "cam01.mp4" in errors[0]["error"]


def test_a_running_build_locks_the_output(inputs, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    import os
    import socket

    (out / ".build.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    res = runner.invoke(app, ["build-shards", "--out", str(out), "--frames", str(inputs["frames"])])
    assert res.exit_code == 1 and "another build" in res.output
    (out / ".build.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # dead process
    build(out, "--frames", str(inputs["frames"]))
    assert_valid(out)


def test_missing_input_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["build-shards", "--out", str(tmp_path / "ds"), "--renders", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "nope" in res.output and "does not exist" in res.output


# --- everything at once, engines ---------------------------------------------------------


def test_all_sources_in_one_dataset_validate_and_inspect(inputs, tmp_path):
    out = tmp_path / "ds"
    build(
        out,
        "--renders",
        str(inputs["renders"]),
        "--frames",
        str(inputs["frames"]),
        "--videos",
        str(inputs["scores"]),
        "--syncamvideo",
        str(inputs["scv"]),
    )
    reader = assert_valid(out)
    assert {k for k, _ in reader.groups()} == {
        "syncam-blender",
        "syncam-unreal",
        "realestate10k",
        "dl3dv",
        "web",
        "syncamvideo",
    }
    res = runner.invoke(app, ["inspect", str(out), "--json", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "i.json").read_text())
    assert summary["views"] == 3 + 3 + 3 + 3 + 2 + 4 and summary["groups"] == 7
    # The files load with Hugging Face datasets too (Contract 3).
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in out.glob("syncam-*.parquet")), split="train"
    )
    assert ds.num_rows == 18 and set(ds.column_names) >= {"sample_id", "media", "c2w", "K"}


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("syncam-*.parquet"))}


def index_rows(out: Path) -> list[dict]:
    return sorted(pq.read_table(out / "index.parquet").to_pylist(), key=lambda r: r["sample_id"])


@pytest.mark.slow
def test_local_workers_and_ray_write_the_same_dataset(inputs, tmp_path):
    args = [
        "--renders",
        str(inputs["renders"]),
        "--frames",
        str(inputs["frames"]),
        "--videos",
        str(inputs["scores"]),
        "--syncamvideo",
        str(inputs["scv"]),
        "--shard-size",
        "20KB",
    ]
    build(tmp_path / "one", *args)
    build(tmp_path / "two", *args, "--workers", "2")
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        build(tmp_path / "ray", *args, "--engine", "ray")
        # Contract 3: the shards (null cameras included) load with Ray Data too.
        files = sorted(str(p) for p in (tmp_path / "ray").glob("syncam-*.parquet"))
        rows = ray.data.read_parquet(files).select_columns(["sample_id", "K", "c2w"]).take_all()
        assert len(rows) == 18 and sum(r["K"] is None for r in rows) == 2
    finally:
        ray.shutdown()
    ref = shard_digests(tmp_path / "one")
    assert len(ref) >= 3  # several shard tasks ran
    for other in ("two", "ray"):
        assert_valid(tmp_path / other)
        assert shard_digests(tmp_path / other) == ref  # byte-for-byte the same shard files
        assert index_rows(tmp_path / other) == index_rows(tmp_path / "one")


@pytest.mark.slow
def test_sigkilled_build_process_leaves_a_valid_dataset(tmp_path):
    """A real `kill -9` of a running build: what was committed validates, and a re-run completes it exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from syncam_data.filter.synthetic import write_synthetic_video

    web = tmp_path / "web"
    web.mkdir()
    rows = []
    for k in range(6):  # clips over --max-frames: every group is re-encoded, so the build takes seconds
        p = write_synthetic_video(web / f"c{k}.mp4", "static_subject", seed=k, seconds=3.0, fps=24.0)
        rows.append({"path": str(p), "content_hash": hashlib.sha256(p.read_bytes()).hexdigest(), "status": "kept"})
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), web / "scores.parquet")
    out = tmp_path / "ds"
    cmd = [
        str(Path(sys.executable).parent / "syncam-data"),
        "-q",
        "build-shards",
        "--out",
        str(out),
        "--videos",
        str(web / "scores.parquet"),
        "--max-frames",
        "60",
        "--shard-size",
        "1KB",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        if (out / "dataset.json").exists():
            committed = len(json.loads((out / "dataset.json").read_text())["shards"])
            if committed >= 1:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= committed < 6, "the build was not caught mid-way"
    reader = assert_valid(out)
    assert 1 <= len(reader.groups()) < 6
    build(
        out, "--videos", str(web / "scores.parquet"), "--max-frames", "60", "--shard-size", "1KB"
    )  # the stale lock of the dead process is taken over
    reader = assert_valid(out)
    assert len(reader.groups()) == 6 and len(reader) == 6


# --- the fast paths keep the contract -------------------------------------------------


def test_shard_checksums_hashed_while_writing_match_the_files(inputs, tmp_path):
    """Row groups are hashed as they are written (AppendHash); several row groups per shard here."""
    out = tmp_path / "ds"
    build(out, "--renders", str(inputs["renders"]), "--frames", str(inputs["frames"]), "--row-group-size", "8KB")
    reader = assert_valid(out)
    for s in reader.manifest["shards"]:
        path = out / s["file"]
        assert pq.ParquetFile(path).num_row_groups > 1
        assert s["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_append_hash_follows_a_growing_file_and_refuses_a_shrinking_one(tmp_path):
    from syncam_data.shards.writer import AppendHash

    path = tmp_path / "f.bin"
    data = np.random.default_rng(0).integers(0, 256, 3_000_123, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        h = AppendHash(path)
        for i in range(0, len(data), 100_003):  # ranges that start off the page boundaries
            f.write(data[i : i + 100_003])
            f.flush()
            h.catch_up()
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    h = AppendHash(path)
    h.catch_up()
    h._last.result()
    path.write_bytes(data[:10])  # truncated under the hasher: an error, never a wrong checksum
    with pytest.raises(OSError, match="shrank"):
        h._hash_to(len(data) + 5)
    h.close()


def test_blob_columns_reference_the_rows_bytes():
    """Rows become a table without copying their blobs (the Parquet writer copies them once, into pages)."""
    import pyarrow as pa

    from syncam_data.shards.schema import SCHEMA, ViewRecord, rows_to_table

    recs = [
        ViewRecord(
            "d",
            "multiview_video",
            "g",
            f"v{i}",
            bytes([i]) * (1000 + i),
            "mp4",
            1,
            2,
            2,
            depth=None if i else b"npz" * 9,
        )
        for i in range(3)
    ]
    rows = [r.to_row() for r in recs]
    table = rows_to_table(rows)
    assert table.schema == SCHEMA
    assert table.to_pylist() == pa.Table.from_pylist(rows, schema=SCHEMA).to_pylist()
    for chunk, row in zip(table.column("media").chunks, rows):
        assert chunk.buffers()[2].address == pa.py_buffer(row["media"]).address


def test_reused_blob_memory_keeps_freed_blocks_then_gives_them_back():
    """Inside, a freed 64 MB block stays in the heap for the next file; after, memory goes back to the kernel."""
    import resource

    from syncam_data.shards.build import _glibc, reused_blob_memory

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    assert _glibc() is not None  # the project's platform (Linux, glibc); elsewhere the context does nothing
    base = rss()
    with reused_blob_memory():
        blob = b"\x01" * (64 << 20)  # written, so its pages are resident
        del blob
        assert rss() - base > 48 << 20  # kept for reuse
    assert rss() - base < 16 << 20  # trimmed on the way out
    blob = b"\x01" * (64 << 20)
    del blob
    assert rss() - base < 16 << 20  # default behaviour restored: a big block is unmapped when freed

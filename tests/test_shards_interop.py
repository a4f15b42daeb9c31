"""Contract 3 interop: a dataset written by another tool with only the schema-version-1 columns.

Columns SynCam added after schema version 1 (``group_hash`` in shards and index, ``row_in_group`` and
``media_bytes`` in the index) are optional: validate, ShardReader, the training loader, eval and
``build-shards`` into such a dataset (append) must work without them, deriving what they need.

The foreign dataset here is written with plain pyarrow exactly as docs/data-format.md describes the
contract, the way another tool would: several row groups per shard, and an index whose rows are not
in shard order (so a row's position in its row group can only come from the shard itself).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data import cameras as C
from syncam_data import video as V
from syncam_data.cli import app
from syncam_data.shards.reader import ShardReader
from syncam_data.shards.schema import BLOB_COLUMNS
from syncam_data.shards.validate import validate_dataset
from tests.conftest import smooth_frames

runner = CliRunner()

# Contract 3 as documented for schema version 1 (docs/data-format.md): no group_hash.
V1_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("kind", pa.string()),
        ("group_id", pa.string()),
        ("view_id", pa.string()),
        ("caption", pa.string()),
        ("num_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("fps", pa.float32()),
        ("frame_indices", pa.list_(pa.int32())),
        ("K", pa.list_(pa.float32())),
        ("c2w", pa.list_(pa.float32())),
        ("media", pa.binary()),
        ("media_format", pa.string()),
        ("depth", pa.binary()),
        ("subject_motion", pa.float32()),
        ("camera_motion", pa.float32()),
        ("source_uri", pa.string()),
        ("extra", pa.string()),
    ]
)
H, W = 40, 56
K = [50.0, 50.0, W / 2, H / 2]


def ring(i: int, elevation: float = 0.0) -> list[float]:
    eye = C.spherical_position((0, 0, 1), 5.0, elevation, 20.0 * i)
    return [float(v) for v in C.look_at(eye, (0, 0, 1)).reshape(-1)]


def row(ds, kind, gid, vid, media, fmt, frames, c2w, caption="") -> dict:
    return {
        "sample_id": f"{ds}/{gid}/{vid}",
        "dataset": ds,
        "kind": kind,
        "group_id": gid,
        "view_id": vid,
        "caption": caption,
        "num_frames": frames,
        "height": H,
        "width": W,
        "fps": 8.0 if fmt == "mp4" else None,
        "frame_indices": list(range(frames)),
        "K": K,
        "c2w": c2w,
        "media": media,
        "media_format": fmt,
        "depth": None,
        "subject_motion": None,
        "camera_motion": None,
        "source_uri": f"/elsewhere/{gid}/{vid}",
        "extra": "{}",
    }


def png(seed: int) -> bytes:
    ok, buf = cv2.imencode(".png", smooth_frames(1, H, W, seed=seed)[0][..., ::-1])
    assert ok
    return buf.tobytes()


def foreign_rows() -> list[list[dict]]:
    """Row groups of the foreign shard: two multi-view video groups, then two image sets."""
    vids = [
        [
            row(
                "other",
                "multiview_video",
                f"scene{g}",
                f"cam{v}",
                V.encode(smooth_frames(9, H, W, seed=10 * g + v), fps=8, preset="ultrafast"),
                "mp4",
                9,
                ring(v),
                caption=f"scene {g}",
            )
            for v in range(3)
        ]
        for g in range(2)
    ]
    imgs = [
        [
            row("other", "multiview_image", f"room{g}", f"v{v}", png(100 * g + v), "png", 1, ring(v, 5.0))
            for v in range(3)
        ]
        for g in range(2)
    ]
    return [vids[0] + vids[1], imgs[0] + imgs[1]]


def write_foreign(root: Path) -> list[dict]:
    """A dataset written to the documented contract by plain pyarrow, without the columns SynCam added later."""
    root.mkdir(parents=True)
    groups = foreign_rows()
    shard = root / "part-00000.parquet"
    with pq.ParquetWriter(shard, V1_SCHEMA) as w:
        for rg in groups:
            w.write_table(pa.Table.from_pylist(rg, schema=V1_SCHEMA))
    rows = []
    for rg_i, rg in enumerate(groups):
        for r in rg:
            rows.append(
                {**{k: v for k, v in r.items() if k not in BLOB_COLUMNS}, "shard": shard.name, "row_group": rg_i}
            )
    rows = rows[::-1]  # another tool's index order: nothing says it follows the shard
    index_schema = pa.schema(
        [f for f in V1_SCHEMA if f.name not in BLOB_COLUMNS] + [("shard", pa.string()), ("row_group", pa.int32())]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=index_schema), root / "index.parquet")
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    n = sum(len(g) for g in groups)
    (root / "dataset.json").write_text(
        json.dumps(
            {"schema_version": 1, "num_rows": n, "shards": [{"file": shard.name, "num_rows": n, "sha256": digest}]}
        )
    )
    return [r for g in groups for r in g]


@pytest.fixture
def foreign(tmp_path) -> tuple[Path, list[dict]]:
    root = tmp_path / "foreign"
    return root, write_foreign(root)


def test_validate_accepts_a_dataset_without_added_columns(foreign):
    root, _ = foreign
    rep = validate_dataset(root)
    assert rep.ok, rep.problems
    assert rep.rows_checked == 12
    res = runner.invoke(app, ["validate", str(root)])
    assert res.exit_code == 0, res.output


def test_reader_derives_row_positions_and_reads_every_blob(foreign):
    root, rows = foreign
    r = ShardReader(root)
    assert len(r) == 12
    for i in range(len(r)):
        sid = r.index.column("sample_id")[i].as_py()
        want = next(x for x in rows if x["sample_id"] == sid)
        assert r.read_blob(i) == want["media"], sid
    # the expensive columns are derived on request (one pass over the blobs), matching the stored media
    r.ensure_columns("media_bytes", "group_hash")
    sizes = dict(zip(r.index.column("sample_id").to_pylist(), r.index.column("media_bytes").to_pylist()))
    assert sizes == {x["sample_id"]: len(x["media"]) for x in rows}
    hashes = dict(zip(r.index.column("group_id").to_pylist(), r.index.column("group_hash").to_pylist()))
    assert len(set(hashes.values())) == 4 and all(len(h) == 64 for h in hashes.values())


def test_inspect_reports_sizes_of_a_foreign_dataset(foreign, tmp_path):
    root, rows = foreign
    res = runner.invoke(
        app, ["inspect", str(root), "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "rigs.png")]
    )
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    total = sum(len(x["media"]) for x in rows)
    assert sum(v["media_mb"] for v in s["by_source"].values()) == pytest.approx(total / 1e6)


def test_training_loader_draws_from_a_foreign_dataset(foreign):
    from syncam_model.config import load_config
    from syncam_model.data import build_loader

    root, _ = foreign
    cfg = load_config(
        "tiny",
        {
            "data.num_workers": 0,
            "optim.global_batch_size": 1,
            "data.mix": {"multiview_video": 0.5, "multiview_image": 0.5},
            "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 60}],
        },
    )
    loader = build_loader(str(root), cfg, total_micro=6)
    kinds = set()
    for b in loader.dataloader():
        kinds.add(b["kind"])
        assert b["video"].shape[-2:] == (32, 48) and b["video"].dtype.is_floating_point is False
        assert b["replaced"] == 0
    assert kinds == {"multiview_video", "multiview_image"}


def test_eval_runs_on_a_foreign_dataset(foreign, tmp_path):
    root, _ = foreign
    out = tmp_path / "eval"
    res = runner.invoke(app, ["eval", str(root), "--out", str(out), "--frames", "1", "--no-check-cameras"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["groups_evaluated"] == 4 and summary["errors"] == {}


def test_build_shards_appends_to_a_foreign_dataset(foreign, tmp_path):
    root, rows = foreign
    # one frame set that is new, and one whose images are byte-identical to the foreign group room1
    frames = tmp_path / "frames"
    for name, seeds in (("new_s000", [7, 8]), ("copy_s000", [100, 101, 102])):
        d = frames / name
        d.mkdir(parents=True)
        cams = []
        for v, seed in enumerate(seeds):
            (d / f"v{v:02d}.png").write_bytes(png(seed))
            cams.append(
                {
                    "id": f"v{v:02d}",
                    "image": f"v{v:02d}.png",
                    "width": W,
                    "height": H,
                    "fx": K[0],
                    "fy": K[1],
                    "cx": K[2],
                    "cy": K[3],
                    "c2w": ring(v),
                    "frame_index": v,
                }
            )
        (d / "cameras.json").write_text(json.dumps({"source": "realestate10k", "sequence": name, "cameras": cams}))
    res = runner.invoke(app, ["build-shards", "--out", str(root), "--frames", str(frames)])
    assert res.exit_code == 0, res.output
    assert "1 duplicate" in res.output  # copy_s000 has room1's images: found by the hash derived from the stored media
    idx = pq.read_table(root / "index.parquet")
    assert {"group_hash", "row_in_group", "media_bytes"} <= set(idx.column_names)
    assert idx.num_rows == 14 and idx.column("group_hash").null_count == 0
    rep = validate_dataset(root)
    assert rep.ok, rep.problems
    r = ShardReader(root)
    by_id = dict(zip(r.index.column("sample_id").to_pylist(), range(len(r))))
    for x in rows:
        assert r.read_blob(by_id[x["sample_id"]]) == x["media"]
    assert r.read_blob(by_id["realestate10k/new_s000/v01"]) == png(8)

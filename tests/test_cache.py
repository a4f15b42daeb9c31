"""`syncam-train cache`: the latent cache is complete, resumable, skips bad groups, and trains to the same loss as decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from syncam_data.shards.reader import ShardReader
from syncam_model.cache import LatentCache
from syncam_model.cli_train import app
from syncam_model.config import load_config
from syncam_model.train import Trainer
from tests.test_data_loader import make_shards

SMALL = ["--set", "data.height=16", "--set", "data.width=32", "--set", "data.frames=5"]
OVER = {
    "data.height": 16,
    "data.width": 32,
    "data.frames": 5,
    "data.frame_sampling": "first",
    "optim.global_batch_size": 1,
    "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 60}],
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[Path, Path]:
    root = make_shards(
        tmp_path_factory.mktemp("shards"), mv_groups=2, views=4, img_groups=1, single_groups=2, corrupt="web/sv1/main"
    )
    res = CliRunner().invoke(
        app,
        ["cache", "--shards", str(root), "--pretrained", "tiny", "--config", "tiny", "--groups-per-part", "2", *SMALL],
    )
    assert res.exit_code == 0, res.output
    return root, Path(res.stdout.strip().splitlines()[-1])


def test_cache_holds_every_good_view_and_records_the_bad_one(cached):
    root, path = cached
    meta = json.loads((path / "cache.json").read_text())
    assert meta["complete"] and meta["failed_groups"] == 1
    errors = [json.loads(x) for x in (path / "errors-r0.jsonl").read_text().splitlines()]
    assert errors[0]["group"] == "web/sv1"
    rows = ShardReader(root).rows(["sample_id", "caption"])
    good = {r["sample_id"] for r in rows if not r["sample_id"].startswith("web/sv1/")}
    cache = LatentCache(path)
    assert set(cache.samples) == good
    assert len(list(path.glob("part-r0-*.safetensors"))) == 2  # 4 good groups, 2 per part
    # latents: [F', C, h, w] = 5 frames -> 2 latent frames, 16x32 -> 2x4; images -> 1 latent frame
    out = cache.load_views(["synth/mv0/cam00", "synth/mv0/cam01"], [0, 1, 2, 3, 4], "scene 0")
    assert out["latent_mean"].shape == (2, 2, 4, 2, 4) and out["text"].shape == (226, 32)
    img = cache.load_views(["re10k/im0/f000"], [0], "room 0")
    assert img["latent_mean"].shape == (1, 1, 4, 2, 4)
    with pytest.raises(Exception, match="frames"):
        cache.load_views(["synth/mv0/cam00"], [1, 2, 3, 4, 5], "scene 0")


def test_cache_rerun_resumes_without_redoing_work(cached):
    root, path = cached
    before = {p.name: p.stat().st_mtime_ns for p in path.glob("part-*.safetensors")}
    res = CliRunner().invoke(app, ["cache", "--shards", str(root), "--pretrained", "tiny", "--config", "tiny", *SMALL])
    assert res.exit_code == 0, res.output
    assert {p.name: p.stat().st_mtime_ns for p in path.glob("part-*.safetensors")} == before


def test_cached_training_gives_the_same_loss_as_decoding(cached, tmp_path):
    root, path = cached
    losses = {}
    ids = {}
    for mode in ("require", "never"):
        cfg = load_config("tiny", {**OVER, "cache.use": mode})
        tr = Trainer(str(root), "tiny", tmp_path / mode, cfg)
        assert (tr.cache is not None) == (mode == "require")
        it = iter(tr.loader.dataloader())
        batches = [next(it) for _ in range(6)]
        assert ("latent_mean" in batches[0]) == (mode == "require")
        with torch.no_grad():
            losses[mode] = torch.cat([tr.micro_loss(b)[0] for b in batches])
        ids[mode] = [b["sample_ids"] for b in batches]
    # the decode run sees the bad group too, the cached run never plans it: compare where the plans agree
    same = [i for i, (a, b) in enumerate(zip(ids["require"], ids["never"])) if a == b]
    assert len(same) >= 3
    torch.testing.assert_close(losses["require"][same], losses["never"][same], rtol=1e-4, atol=1e-5)


def test_require_without_a_cache_is_a_clear_error(tmp_path):
    root = make_shards(tmp_path / "s", mv_groups=0, img_groups=0, single_groups=1)
    res = CliRunner().invoke(
        app,
        [
            "--shards",
            str(root),
            "--pretrained",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--config",
            "tiny",
            *SMALL,
            "--set",
            "cache.use=require",
            "--set",
            "optim.global_batch_size=1",
        ],
    )
    assert res.exit_code == 2
    assert "no finished latent cache" in res.output

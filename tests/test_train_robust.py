"""Issue 18, training: checkpoints published durably, replaced without a half-deleted window, and
``--resume latest`` falling back to the newest complete checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from syncam_model import train as train_mod
from syncam_model.config import load_config
from syncam_model.train import CheckpointError, resolve_checkpoint, train
from tests.durability import FsEvents
from tests.test_data_loader import make_shards

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"data.height": 16, "data.width": 32, "data.frames": 5}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), mv_groups=2, views=3, img_groups=1, single_groups=1)


def cfg(**over):
    return load_config(
        "tiny", {"steps": 4, "checkpoint.every": 2, "checkpoint.keep": 3, "optim.global_batch_size": 1, **SMALL, **over}
    )


def losses_in_order(run: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r
    ]


def test_checkpoints_are_published_durably_and_list_their_files(shards, tmp_path, monkeypatch):
    run = tmp_path / "run"
    ev = FsEvents(monkeypatch)
    train(str(shards), "tiny", run, cfg(steps=2))
    ck = run / "checkpoints" / "step_000002"
    ev.assert_published(ck)
    state = json.loads((ck / "trainer_state.json").read_text())
    on_disk = {
        str(p.relative_to(ck)): p.stat().st_size
        for p in ck.rglob("*")
        if p.is_file() and p.name != "trainer_state.json"
    }
    assert state["files"] == on_disk and "adapter.safetensors" in on_disk and "loader_r0.json" in on_disk


def test_resume_latest_falls_back_to_the_newest_complete_checkpoint(shards, tmp_path, caplog):
    run = tmp_path / "run"
    c = cfg()
    train(str(shards), "tiny", run, c)
    ck = run / "checkpoints"
    assert (ck / "latest").resolve().name == "step_000004"
    # The newest checkpoint is damaged (a kill, a full disk): one file short, another truncated.
    (ck / "step_000004" / "adapter.safetensors").unlink()
    opt = ck / "step_000004" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    assert resolve_checkpoint(run, "latest") == ck / "step_000002"
    with caplog.at_level("WARNING"):
        resumed = train(str(shards), "tiny", run, c, resume="latest")
    assert [r["step"] for r in resumed] == [3, 4] and "incomplete" in caplog.text
    log = losses_in_order(run)
    first, again = dict(log[:4]), dict(log[4:])
    assert again == {3: first[3], 4: first[4]}  # exactly the steps of the first pass
    assert train_mod.checkpoint_problem(ck / "step_000004") is None  # rewritten complete


def test_a_kill_while_a_checkpoint_is_replaced_leaves_a_resumable_run(shards, tmp_path, monkeypatch):
    run = tmp_path / "run"
    c = cfg()
    train(str(shards), "tiny", run, c)
    ck = run / "checkpoints"
    first = dict(losses_in_order(run))

    # Redo steps 3-4 from step 2: saving step 4 replaces the existing step_000004. The process is killed
    # while the replaced checkpoint is being deleted (one file gone, then the kill).
    real_rmtree = shutil.rmtree

    def rmtree_then_killed(path, *a, **k):
        if Path(path).name.startswith(".tmp-"):
            return real_rmtree(path, *a, **k)
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if files:
            files[0].unlink()
        raise KeyboardInterrupt(f"killed while deleting {path}")

    monkeypatch.setattr(train_mod.shutil, "rmtree", rmtree_then_killed)
    with pytest.raises(KeyboardInterrupt):
        train(str(shards), "tiny", run, c, resume=str(ck / "step_000002"))
    monkeypatch.setattr(train_mod.shutil, "rmtree", real_rmtree)

    # No published checkpoint is half-deleted: latest resolves to a complete one and resumes.
    for p in ck.glob("step_*"):
        assert train_mod.checkpoint_problem(p) is None, p
    found = resolve_checkpoint(run, "latest")
    assert found is not None and train_mod.checkpoint_problem(found) is None
    c6 = cfg(steps=6)
    train(str(shards), "tiny", run, c6, resume="latest")
    log = losses_in_order(run)
    assert [s for s, _ in log][-2:] == [5, 6]
    assert {s: v for s, v in log if s in (3, 4)} == {3: first[3], 4: first[4]}
    assert not [p for p in ck.iterdir() if p.name.startswith(".")]  # leftovers cleaned by the next save


def test_a_run_whose_only_checkpoint_is_damaged_is_a_clear_error(tmp_path):
    ck = tmp_path / "run" / "checkpoints" / "step_000010"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text('{"step": 10, ')
    (tmp_path / "run" / "checkpoints" / "latest").symlink_to("step_000010")
    with pytest.raises(
        CheckpointError,
        match=r"trainer_state.json: not valid JSON.*no complete checkpoint|no complete checkpoint.*trainer_state.json: not valid JSON",
    ):
        resolve_checkpoint(tmp_path / "run", "latest")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        resolve_checkpoint(tmp_path / "run", str(ck))
    assert resolve_checkpoint(tmp_path / "fresh", "latest") is None  # no checkpoint at all: start from step 0

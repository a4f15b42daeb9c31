"""The training loop on a tiny random CogVideoX and tiny shards: learning, exact resume, checkpoints, NaN steps.

Trainers run in this process (imports and the tiny model build are paid once);
the CLI and multi-process runs are in test_train_cli.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from syncam_model.config import load_config
from syncam_model.train import CheckpointError, Trainer, train
from tests.test_data_loader import make_shards


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), mv_groups=3, views=5, img_groups=1, single_groups=2)


# Smaller than tiny.yaml's clips: these tests run many steps on 2 shared cores.
SMALL = {"data.height": 16, "data.width": 32, "data.frames": 5}


def cfg_for(**over):
    base = {"steps": 4, "checkpoint.every": 2, "checkpoint.keep": 2, "optim.global_batch_size": 2, **SMALL}
    base.update(over)
    return load_config("tiny", base)


def step_losses(run: Path) -> dict[int, float]:
    """The loss of each step in log.jsonl; a step redone after a resume keeps its last value."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


@pytest.mark.slow
def test_interrupted_and_resumed_run_gives_identical_losses(shards, tmp_path):
    cfg = cfg_for()
    full = train(str(shards), "tiny", tmp_path / "a", cfg)
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    # "Crash" after step 3: the last checkpoint is step 2, so step 3 is lost and redone.
    train(str(shards), "tiny", tmp_path / "b", cfg, stop_after=3)
    ck = tmp_path / "b" / "checkpoints"
    assert (ck / "latest").resolve().name == "step_000002"
    resumed = train(str(shards), "tiny", tmp_path / "b", cfg, resume="latest")
    assert [r["step"] for r in resumed] == [3, 4]
    a, b = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert a == b  # bit-identical, not approximately
    assert all(math.isfinite(v) for v in a.values())
    # checkpoint content, pruning and the latest pointer
    final = ck / "latest"
    assert final.resolve().name == "step_000004"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_000002", "step_000004"]
    for name in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json", "rng_r0.safetensors", "loader_r0.json"):
        assert (final / name).exists(), name
    assert not list(ck.glob(".tmp-*"))
    # the same adapter tensors as the uninterrupted run
    from safetensors.torch import load_file

    ta = load_file(str(tmp_path / "a" / "checkpoints" / "latest" / "adapter.safetensors"))
    tb = load_file(str(final / "adapter.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_resume_refuses_a_changed_config(shards, tmp_path):
    train(str(shards), "tiny", tmp_path / "r", cfg_for(steps=2))
    with pytest.raises(CheckpointError, match=r"optim\.lr"):
        train(str(shards), "tiny", tmp_path / "r", cfg_for(steps=4, **{"optim.lr": 5e-4}), resume="latest")
    # more steps is a legal change: the run continues
    more = train(str(shards), "tiny", tmp_path / "r", cfg_for(steps=3), resume="latest")
    assert [r["step"] for r in more] == [3]


def test_checkpoint_of_another_base_is_refused(shards, tmp_path):
    from syncam_model.model import AdapterError

    train(str(shards), "tiny", tmp_path / "r", cfg_for(steps=2))
    other = cfg_for(steps=4, **{"model.tiny_config": {"variant": "2b", "seed": 1}})
    with pytest.raises((AdapterError, CheckpointError), match="different|differ"):
        train(str(shards), "tiny", tmp_path / "r", other, resume="latest")


def test_loss_falls_when_overfitting(tmp_path):
    root = make_shards(tmp_path / "one", mv_groups=1, views=3, img_groups=0, single_groups=0)
    cfg = load_config("tiny", {
        **SMALL, "curriculum.schedule": [{"start_step": 0, "min_angle": 0, "max_angle": 60}],
        "steps": 30, "checkpoint.every": 1000, "optim.global_batch_size": 1, "optim.lr": 3e-3, "optim.warmup_steps": 0,
        "diffusion.text_dropout": 0.0, "data.num_views": 2, "data.frame_sampling": "first", "diffusion.latents": "mean",
    })
    trainer = Trainer(str(root), "tiny", tmp_path / "run", cfg)
    probe = [trainer.loader.dataset[trainer.loader.sampler.plan()] for _ in range(3)]
    trainer.loader.sampler.load_state_dict({"micro_id": 0})

    def probe_loss() -> float:
        with torch.no_grad():
            return float(torch.stack([trainer.micro_loss(b)[0].mean() for b in probe]).mean())

    before = probe_loss()
    records = trainer.run()
    after = probe_loss()
    assert len(records) == 30
    assert after < 0.8 * before, (before, after)
    first, last = sum(r["loss"] for r in records[:5]) / 5, sum(r["loss"] for r in records[-5:]) / 5
    assert last < first


def test_nonfinite_loss_skips_the_update(shards, tmp_path):
    cfg = cfg_for(steps=2, **{"optim.global_batch_size": 1})
    trainer = Trainer(str(shards), "tiny", tmp_path / "nan", cfg)
    real = trainer.micro_loss

    def poisoned(batch):
        loss, t = real(batch)
        return (loss * float("nan"), t) if batch["micro_id"] == 0 else (loss, t)

    trainer.micro_loss = poisoned
    params = [p.detach().clone() for p in trainer.params]
    batches = iter(trainer.loader.dataloader())
    rec1 = trainer.train_step(batches)
    assert rec1["skipped_nonfinite"] is True
    assert all(torch.equal(a, p) for a, p in zip(params, trainer.params))
    rec2 = trainer.train_step(batches)
    assert "skipped_nonfinite" not in rec2 and math.isfinite(rec2["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(params, trainer.params))


def test_log_records_what_monitoring_needs(shards, tmp_path):
    train(str(shards), "tiny", tmp_path / "m", cfg_for(steps=2, **{"checkpoint.every": 100, "log.tensorboard": True}))
    assert list((tmp_path / "m" / "syncam-train").glob("events.out.tfevents.*"))
    recs = [json.loads(x) for x in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert recs[0]["event"] == "start" and len(steps) == 2
    for r in steps:
        for key in ("lr", "grad_norm", "samples_per_s", "data_wait_s", "peak_memory_mb", "window", "skipped_window"):
            assert key in r, key
        assert any(k.startswith("loss/t") for k in r) and any(k in r for k in ("loss/multiview_video", "loss/multiview_image", "loss/single_video"))
        assert r["grad_norm"] > 0
    # warm-up: lr rises over the first steps
    assert steps[0]["lr"] < steps[1]["lr"]
    # the last step is always checkpointed
    assert (tmp_path / "m" / "checkpoints" / "latest" / "adapter.safetensors").exists()


def test_novel_view_excludes_view_0_and_text_dropout_uses_the_empty_prompt(shards, tmp_path):
    base = {"data.mix": {"multiview_video": 1.0}, "data.num_views": 3, "optim.global_batch_size": 1}
    tr = Trainer(str(shards), "tiny", tmp_path / "p", cfg_for(**base, **{"diffusion.text_dropout": 0.0}))
    batch = tr.loader.dataset[tr.loader.sampler.plan()]
    plain_cfg = tr.cfg

    def loss_with(**diffusion):
        # micro_loss reads the diffusion settings from trainer.cfg at each call
        tr.cfg = plain_cfg.model_copy(update={"diffusion": plain_cfg.diffusion.model_copy(update=diffusion)})
        with torch.no_grad():
            return tr.micro_loss(batch)[0], tr.last_view_losses, tr.last_view_weights

    loss_plain, views_plain, _ = loss_with()
    loss_novel, views_novel, weights = loss_with(novel_view=True, novel_view_prob=1.0)
    assert weights[0].tolist() == [0.0, 1.0, 1.0]
    # fresh modules do not couple views: views 1..n-1 are unchanged, view 0 is simply not in the loss
    torch.testing.assert_close(views_novel[:, 1:], views_plain[:, 1:])
    torch.testing.assert_close(loss_novel, views_plain[:, 1:].mean(1))
    assert not torch.allclose(loss_novel, loss_plain)
    # text dropout p=1 == training on the empty caption
    loss_drop, _, _ = loss_with(text_dropout=1.0)
    batch = dict(batch, captions=[""] * len(batch["captions"]))
    loss_empty, _, _ = loss_with()
    torch.testing.assert_close(loss_drop, loss_empty)
    assert not torch.allclose(loss_drop, loss_plain)


def test_validation_writes_a_grid_video(shards, tmp_path):
    from syncam_data.video import probe

    cfg = cfg_for(steps=1, **{"validation.every": 1, "validation.prompts": ["a", "b"], "validation.cameras": "azimuth:0,30,60",
                              "validation.steps": 1, "optim.global_batch_size": 1})
    train(str(shards), "tiny", tmp_path / "v", cfg)
    vids = sorted((tmp_path / "v" / "validation" / "step_000001").glob("*.mp4"))
    assert [v.name for v in vids] == ["prompt00.mp4", "prompt01.mp4"]
    info = probe(vids[0])
    assert (info.height, info.width) == (16, 96) and info.num_frames > 1  # 3 views side by side

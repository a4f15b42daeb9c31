"""`syncam-train` end to end: the CLI, its help, a checkpoint that `syncam-generate` loads, and two processes under accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncam_model.cli_train import app
from tests.test_data_loader import make_shards

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.height=16", "--set", "data.width=32", "--set", "data.frames=5"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), mv_groups=4, views=5, img_groups=2, single_groups=4)


def test_help_explains_every_option():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for opt in (
        "--shards",
        "--pretrained",
        "--out",
        "--config",
        "--steps",
        "--resume",
        "--set",
        "--novel-view",
        "--stop-after",
        "cache",
    ):
        assert opt in res.output, opt
    res = CliRunner().invoke(app, ["cache", "--help"])
    assert res.exit_code == 0 and "--view-batch" in res.output and "--cache-dir" in res.output


def test_missing_options_and_bad_config_are_clear_errors(shards, tmp_path):
    res = CliRunner().invoke(app, ["--shards", str(shards)])
    assert res.exit_code == 2 and "--pretrained" in res.output and "--out" in res.output
    res = CliRunner().invoke(
        app,
        [
            "--shards",
            str(shards),
            "--pretrained",
            "tiny",
            "--out",
            str(tmp_path / "r"),
            "--config",
            "tiny",
            "--set",
            "data.frames=8",
        ],
    )
    assert res.exit_code == 2 and "data.frames" in res.output


@pytest.mark.slow
def test_train_resume_and_generate_from_the_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    args = [
        "--shards",
        str(shards),
        "--pretrained",
        "tiny",
        "--out",
        str(run),
        "--config",
        "tiny",
        *SMALL,
        "--set",
        "optim.global_batch_size=1",
        "--set",
        "checkpoint.every=2",
        "--novel-view",
    ]
    res = CliRunner().invoke(app, [*args, "--steps", "3", "--stop-after", "2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*args, "--steps", "3", "--resume", "latest"])
    assert res.exit_code == 0, res.output
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0, 2]
    assert json.loads((run / "config.json").read_text())["diffusion"]["novel_view"] is True
    adapter = run / "checkpoints" / "latest" / "adapter.safetensors"
    assert adapter.exists()

    from syncam_model.cli_generate import app as gen_app

    out = tmp_path / "gen"
    res = CliRunner().invoke(
        gen_app,
        [
            "--prompt",
            "a dancer",
            "--pretrained",
            "tiny",
            "--checkpoint",
            str(adapter),
            "--cameras",
            "azimuth:0,40",
            "--frames",
            "9",
            "--resolution",
            "16x32",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(list(out.rglob("*.mp4"))) >= 2
    # the adapter the generator loaded is the trained one (non-zero output projections after 3 steps)
    from safetensors.torch import load_file

    tensors = load_file(str(adapter))
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if "proj" in k or "out" in k)


@pytest.mark.slow
def test_two_processes_under_accelerate_see_disjoint_samples(shards, tmp_path):
    run = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    # On a machine without CUDA, `--multi_gpu` starts torchrun-style processes and the trainer joins them over gloo
    # (`--cpu` with several processes would need mpirun).
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "syncam_model.cli_train",
        "--shards",
        str(shards),
        "--pretrained",
        "tiny",
        "--out",
        str(run),
        "--config",
        "tiny",
        *SMALL,
        "--steps",
        "3",
        "--set",
        "optim.global_batch_size=2",
        "--set",
        "checkpoint.every=3",
        "--log-samples",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    groups = []
    for rank in (0, 1):
        lines = [json.loads(x) for x in (run / f"samples_r{rank}.jsonl").read_text().splitlines()]
        assert [x["micro_id"] for x in lines] == [0, 1, 2]
        groups.append({sid.rsplit("/", 1)[0] for x in lines for views in x["sample_ids"] for sid in views})
    assert groups[0] and groups[1] and not (groups[0] & groups[1])
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["world_size"] == 2 and log[0]["accumulation"] == 1
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 3 and all(r["samples_per_s"] > 0 for r in steps)
    ck = run / "checkpoints" / "latest"
    assert (
        (ck / "loader_r0.json").exists() and (ck / "loader_r1.json").exists() and (ck / "rng_r1.safetensors").exists()
    )

"""A new user's path through the commands: documented forms that must give one clear line, never a traceback.

Each test reproduces a report of issue 21 (user path): a Ray cluster address with no cluster behind it in every data
command, sizes without units, old option spellings, config names that are also folder names, syncam-generate's
argument checks, and a two-rank training run where one rank refuses its data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.video import encode
from tests.conftest import FIXTURES, smooth_frames
from tests.test_build_shards_inputs import make_frameset

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process failed with exactly one `error:` line holding every needle, and printed no traceback."""
    err = proc.stderr
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    (root / "re10k").mkdir()
    shutil.copy(FIXTURES / "realestate10k" / "0bf152ef84195293.txt", root / "re10k")
    (root / "web").mkdir()
    encode(smooth_frames(8, 48, 64), root / "web" / "clip.mp4", fps=8)
    make_frameset(root / "frames", "seqA_s000", source="realestate10k", fmt="jpg", seed=0)
    return {"root": root, "re10k": root / "re10k", "web": root / "web", "frames": root / "frames"}


def test_ray_address_without_a_cluster_is_one_line_in_every_data_command(small_inputs, tmp_path):
    """`--engine ray --ray-address auto` (the cluster examples' form) when no cluster answers: one error line, exit 1.

    RAY_ADDRESS is how Ray resolves `auto` (and it overrides --ray-address); pointing it at a port nobody listens on
    makes "no cluster" deterministic on a machine where other Ray instances may be running.
    """
    port = _closed_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(REPO)}
    exe = str(BIN / "syncam-data")
    ray = ["--engine", "ray", "--ray-address", "auto"]
    commands = {
        "render": [
            "render",
            "--scenes",
            "1",
            "--cameras",
            "1",
            "--frames",
            "1",
            "--resolution",
            "16x16",
            "--out",
            str(tmp_path / "r"),
            *ray,
        ],
        "sample-frames": [
            "sample-frames",
            "--source",
            "realestate10k",
            "--root",
            str(small_inputs["re10k"]),
            "--out",
            str(tmp_path / "f"),
            *ray,
        ],
        "filter-videos": [
            "filter-videos",
            str(small_inputs["web"]),
            "--out",
            str(tmp_path / "w"),
            "--min-short-side",
            "32",
            *ray,
        ],
        "build-shards": ["build-shards", "--out", str(tmp_path / "s"), "--frames", str(small_inputs["frames"]), *ray],
        "eval": ["eval", str(small_inputs["frames"]), "--out", str(tmp_path / "e"), *ray],
    }
    for name, args in commands.items():
        proc = subprocess.run([exe, "-q", *args], env=env, capture_output=True, text=True, timeout=300)
        line = _one_error_line(
            proc, f"RAY_ADDRESS=127.0.0.1:{port}", "no Ray cluster answers there", "ray start --head"
        )
        assert proc.returncode == 1, (name, line)
    # The same through a recipe: the stage fails with that line, the run exits 1.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "t",
                "stages": [
                    {
                        "name": "build-shards",
                        "args": {"out": str(tmp_path / "s2"), "frames": [str(small_inputs["frames"])]},
                    }
                ],
            }
        )
    )
    proc = subprocess.run([exe, "-q", "run", str(recipe), *ray], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "no Ray cluster answers there" in proc.stderr
    # An address Ray cannot parse goes through Ray's own check, and still ends in one line.
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [exe, "-q", *commands["eval"][:-1], "not-an-address"], env=env, capture_output=True, text=True, timeout=300
    )
    _one_error_line(proc, "--ray-address not-an-address", "no Ray cluster could be reached")


def test_sizes_need_a_unit_and_mix_is_a_training_setting(small_inputs, tmp_path):
    for opt in ("--shard-size", "--row-group-size", "--max-size"):
        res = runner.invoke(
            app, ["build-shards", "--out", str(tmp_path / "s"), "--frames", str(small_inputs["frames"]), opt, "8"]
        )
        assert res.exit_code == 2 and f"{opt} '8': give a size with its unit" in res.output
    assert not (tmp_path / "s").exists()
    res = runner.invoke(
        app,
        ["build-shards", "--out", str(tmp_path / "s"), "--frames", str(small_inputs["frames"]), "--mix", "image=0.4"],
    )
    assert (
        res.exit_code == 2 and "--mix" in res.output
    )  # no such option: the loader's mix is data.mix of the training config
    res = runner.invoke(
        app,
        [
            "-q",
            "build-shards",
            "--out",
            str(tmp_path / "s"),
            "--frames",
            str(small_inputs["frames"]),
            "--shard-size",
            "1.5kb",
        ],
    )
    assert res.exit_code == 0, res.output


def test_sample_frames_spells_workers_and_progress_like_the_other_commands(small_inputs, tmp_path):
    res = runner.invoke(app, ["sample-frames", "--help"])
    assert (
        "-w" in res.output
        and "--progress" in res.output
        and "--no-progress" in res.output
        and "-j" not in res.output.split()
    )
    root = tmp_path / "re10k"
    from syncam_data.sources.export import export_realestate10k
    from tests.test_sources_scene import render, trajectory

    cams = trajectory(8, deg_per_frame=3.0)
    export_realestate10k(root, "seqr", cams, [render(c) for c in cams], pose_stride=2)
    outs = {}
    for spelling in (["-w", "2", "--no-progress"], ["-j", "2", "--progress"], ["--workers", "1"]):
        out = tmp_path / f"out{len(outs)}"
        res = runner.invoke(
            app,
            [
                "-q",
                "sample-frames",
                "--source",
                "realestate10k",
                "--root",
                str(root),
                "--out",
                str(out),
                "--views",
                "2",
                *spelling,
            ],
        )
        assert res.exit_code == 0, res.output
        outs[spelling[0]] = json.loads((out / "seqr_s000" / "cameras.json").read_text())["frame_indices"]
    assert len(set(map(tuple, outs.values()))) == 1  # the same sets whatever the spelling


def test_bundled_config_names_are_not_hidden_by_folders(tmp_path, monkeypatch):
    from syncam_model.cli_train import app as train_app
    from syncam_model.config import CONFIG_DIR, ConfigError, load_config, resolve_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert resolve_config_path("tiny") == CONFIG_DIR / "tiny.yaml"
    assert load_config("tiny").data.height == load_config(CONFIG_DIR / "tiny.yaml").data.height
    with pytest.raises(ConfigError, match="tiny/: is not a file"):
        resolve_config_path("tiny/")
    with pytest.raises(ConfigError, match="nope.yaml: no such config file.*paper, tiny"):
        resolve_config_path("nope.yaml")
    (tmp_path / "paper").write_text("steps: 7\n")  # a file of that name is the user's file
    assert load_config("paper").steps == 7
    # Through the CLI: the bundled tiny config is read (its path is in the message about the bad override), not the folder.
    res = CliRunner().invoke(
        train_app,
        [
            "--shards",
            str(tmp_path),
            "--pretrained",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--config",
            "tiny",
            "--set",
            "data.frames=8",
        ],
    )
    assert res.exit_code == 2 and "IsADirectoryError" not in res.output and str(CONFIG_DIR / "tiny.yaml") in res.output


def _option_help(typer_app, name: str, subcommand: str | None = None) -> str:
    import typer

    cmd = typer.main.get_command(typer_app)
    if subcommand:
        cmd = cmd.commands[subcommand]
    return next(p.help for p in cmd.params if name in getattr(p, "opts", []))


def test_help_texts_say_what_the_docs_say():
    from syncam_model.cli_generate import app as gen_app
    from syncam_model.cli_train import app as train_app

    assert "pip install -e '.[eval]'" in _option_help(app, "--matcher", "eval")  # there is no `syncam` package on PyPI
    assert "--overwrite" in _option_help(gen_app, "--out")
    for opt in ("--shards", "--pretrained", "--out"):
        assert "(required)" in _option_help(train_app, opt)


def test_generate_refuses_a_missing_model_folder_and_unsupported_sizes_in_one_message(tmp_path):
    from syncam_model.cli_generate import app as gen_app

    def run(*args: str):
        res = CliRunner().invoke(
            gen_app,
            [
                *args,
                "--prompt",
                "a cat",
                "--frames",
                "9",
                "--steps",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path / "o"),
            ],
        )
        # a usage error: exit 2, one message, no exception other than the exit itself
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit) and "Traceback" not in res.output, (
            res.output
        )
        return " ".join(re.sub(r"[\u2500-\u257f]", " ", res.output).split())  # the message, out of its box

    assert f"{tmp_path / 'CogVideoX-2b'}: no such folder" in run("--pretrained", str(tmp_path / "CogVideoX-2b"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "transformer").mkdir()
    assert "missing vae/" in run("--pretrained", str(tmp_path / "partial"))
    for res in ("100x100", "0x0", "480"):
        assert "--resolution" in run("--pretrained", "tiny", "--resolution", res)
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("torch_one_thread")
def test_rerendering_with_a_checkpoint_not_trained_for_it_warns(tmp_path, caplog):
    import logging

    from syncam_model.camera_input import CameraRule
    from syncam_model.cli_generate import app as gen_app
    from syncam_model.model import load_components, save_adapter

    c = load_components("tiny", tiny_config={"variant": "2b"})
    src = tmp_path / "input.mp4"
    encode(smooth_frames(9, 32, 48), src, fps=8)
    args = [
        "--pretrained",
        "tiny",
        "--prompt",
        "a cat",
        "--frames",
        "9",
        "--resolution",
        "32x48",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--cameras",
        "azimuth:0,30",
        "--input-video",
        str(src),
    ]
    for novel, out in ((False, "plain"), (True, "novel")):
        ck = save_adapter(
            c.transformer,
            tmp_path / f"{out}.safetensors",
            {"base_id": c.base_id, **CameraRule().to_meta(), "train_config": {"diffusion": {"novel_view": novel}}},
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            res = CliRunner().invoke(gen_app, [*args, "--checkpoint", str(ck), "--out", str(tmp_path / out)])
        assert res.exit_code == 0, res.output
        warned = [r.getMessage() for r in caplog.records if "--novel-view" in r.getMessage()]
        assert bool(warned) is (not novel), warned


def test_two_ranks_stop_cleanly_when_one_refuses_its_data(tmp_path):
    """Rank 0 cannot use the data (its node does not see the shard dataset), rank 1 can: both print one line and exit 2.

    The two ranks are started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), each with its own
    working folder and its own stderr: `--shards shards` is the dataset in rank 1's folder and an empty folder in
    rank 0's, as on a cluster where one node lacks the mount.
    """
    from tests.test_data_loader import make_shards
    from tests.test_train_cli import SMALL

    make_shards(tmp_path / "dataset", mv_groups=4, views=5, img_groups=2, single_groups=4)
    (tmp_path / "r0" / "shards").mkdir(parents=True)
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "shards").symlink_to(tmp_path / "dataset")
    port = _closed_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [
            sys.executable,
            "-m",
            "syncam_model.cli_train",
            "--shards",
            "shards",
            "--pretrained",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--config",
            "tiny",
            *SMALL,
            "--steps",
            "2",
            "--set",
            "optim.global_batch_size=2",
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=tmp_path / f"r{rank}", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    line0 = _one_error_line(results[0], "[rank 0]", "shards", "dataset.json")
    line1 = _one_error_line(results[1], "[rank 1]", "rank 0 could not use the data")
    assert results[0].returncode == results[1].returncode == 2, (line0, line1)
    assert not any("gloo" in r.stderr.lower() for r in results)


def test_export_posed_writes_a_render_camera_path_in_the_dataset_formats(tmp_path):
    """Camera i of cameras.json is video frame i (its frame i when the scene has frames for every camera)."""
    from syncam_data.cameras import parse_realestate10k_line
    from syncam_data.render.output import read_cameras_json
    from syncam_data.video import decode
    from tests.test_build_shards_inputs import make_render_scene

    scene = make_render_scene(tmp_path / "renders", "path", cams=3, frames=4)
    cams = read_cameras_json(scene / "cameras.json")
    res = runner.invoke(
        app,
        [
            "export-posed",
            str(scene),
            "--format",
            "realestate10k",
            "--frames-as",
            "images",
            "--id",
            "seq",
            "--out",
            str(tmp_path / "re10k"),
            "--fps",
            "10",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "re10k" / "seq.txt").read_text().splitlines()
    assert len(lines) == 1 + len(cams)
    for (_, cam, _), line in zip(cams, lines[1:]):
        ts, got = parse_realestate10k_line(line, cam.width, cam.height)
        assert abs(got.c2w - cam.c2w).max() < 1e-4
    images = sorted((tmp_path / "re10k" / "seq").iterdir(), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in images] == [0, 100_000, 200_000]
    res = runner.invoke(app, ["export-posed", str(scene), "--format", "video", "--out", str(tmp_path / "web")])
    assert res.exit_code == 0, res.output
    got = decode(tmp_path / "web" / "path.mp4")
    want = [decode(scene / "videos" / f"{cid}.mp4", [i])[0] for i, (cid, _, _) in enumerate(cams)]
    assert len(got) == 3 and all(abs(g.astype(int) - w.astype(int)).mean() < 8 for g, w in zip(got, want))
    # more cameras than frames is not a camera path; a folder without cameras.json is not a scene
    short = make_render_scene(tmp_path / "renders", "short", cams=5, frames=4)
    res = runner.invoke(app, ["export-posed", str(short), "--format", "dl3dv", "--out", str(tmp_path / "dl3dv")])
    assert res.exit_code == 1 and "5 cameras but 4 frames" in res.output
    res = runner.invoke(app, ["export-posed", str(tmp_path), "--format", "dl3dv", "--out", str(tmp_path / "dl3dv")])
    assert res.exit_code == 1 and "not a render scene folder" in res.output

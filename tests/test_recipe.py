"""`syncam-data run RECIPE`: shipped recipes match the commands; stages chain through the real commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.recipe import load_recipe, plan_recipe
from syncam_data.shards.reader import ShardReader
from syncam_data.shards.validate import validate_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["paper.yaml", "local_small.yaml"]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["run", *args])


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_match_the_commands(name):
    """Every option a shipped recipe uses exists in its command (catches drift between recipes and CLIs)."""
    path = REPO / "pipelines" / name
    recipe = load_recipe(path)
    stages = plan_recipe(recipe, path, engine="ray", ray_address="auto")
    enabled = [s for s in recipe.stages if s.enabled]
    assert [s.name for s in stages] == [s.name for s in enabled]
    for st in stages:
        assert "${" not in " ".join(st.argv)
        assert st.argv[st.argv.index("--engine") + 1] == "ray" and st.argv[st.argv.index("--ray-address") + 1] == "auto"
    shards = next(s for s in stages if s.command == "build-shards")
    assert "--out" in shards.argv and "--mix" not in shards.argv  # the training mix is a training setting (data.mix)
    res = run(str(path), "--dry-run")
    assert res.exit_code == 0, res.output
    assert res.output.count("syncam-data ") == len(stages)


def test_paper_recipe_has_the_paper_settings():
    path = REPO / "pipelines" / "paper.yaml"
    recipe = load_recipe(path)
    stages = {s.name: s.argv for s in plan_recipe(recipe, path, only=[s.name for s in recipe.stages])}
    render = " ".join(stages["render"])
    for setting in ("--cameras 36", "--frames 100", "--distance 3.5-9", "--elevation 0-45", "--subjects 1-2"):
        assert setting in render
    assert "--max-gap 100" in " ".join(stages["sample-realestate10k"]) and "--max-gap 100" in " ".join(
        stages["sample-dl3dv"]
    )
    assert {
        "render",
        "sample-realestate10k",
        "sample-dl3dv",
        "filter-videos",
        "build-shards",
        "build-shards-renders",
    } <= set(stages)
    # The downloads path of docs/from-downloads.md runs by default: SynCamVideo is packed with the frame sets and web clips.
    default = {s.name: s.argv for s in plan_recipe(recipe, path)}
    assert "render" not in default and "--syncamvideo" in default["build-shards"]
    assert [s.name for s in recipe.stages if s.enabled] == [
        "sample-realestate10k",
        "sample-dl3dv",
        "filter-videos",
        "build-shards",
    ]


def test_paper_recipe_ships_the_files_it_references():
    """Every path a shipped recipe takes from inside the repository exists: its catalog is a valid catalog file."""
    from syncam_data.cli.render import resolve_catalog
    from syncam_data.scenes import load_catalog

    for name in RECIPES:
        path = REPO / "pipelines" / name
        recipe = load_recipe(path)
        for st in plan_recipe(recipe, path, only=[s.name for s in recipe.stages]):
            for arg in st.argv:
                if arg.startswith(str(REPO)):
                    assert Path(arg).exists(), f"{name}: stage {st.name} references {arg}, which is not shipped"
    path = REPO / "pipelines" / "paper.yaml"
    render = plan_recipe(load_recipe(path), path, only=["render"])[0].argv
    catalog = Path(render[render.index("--catalog") + 1])
    assert catalog == REPO / "pipelines" / "catalog" / "paper_unreal.yaml"
    cat = load_catalog(catalog, strict=True)
    assert {b.kind for b in cat.backgrounds} == {"unreal_level"} and {s.kind for s in cat.subjects} == {"unreal"}
    # The documented engine-free route: Blender with the built-in catalog.
    blender = plan_recipe(load_recipe(path), path, {"backend": "blender", "catalog": "demo"}, only=["render"])[0].argv
    assert blender[blender.index("--backend") + 1] == "blender"
    assert resolve_catalog(blender[blender.index("--catalog") + 1])[1] == "builtin:demo"


def test_only_runs_a_disabled_stage_and_misspelt_vars_are_errors(tmp_path):
    rec = {
        "name": "t",
        "vars": {"root": "a"},
        "stages": [
            {"name": "frames", "command": "build-shards", "args": {"out": "${root}/shards", "frames": ["${root}/f"]}},
            {
                "name": "extra",
                "command": "build-shards",
                "enabled": False,
                "args": {"out": "${root}/shards", "renders": ["${extra_renders}"]},
            },
        ],
    }
    path = write_recipe(tmp_path / "r.yaml", rec)
    res = run(str(path), "--dry-run", "--var", "extra_renders=/r")
    assert res.exit_code == 0 and "# frames" in res.output and "# extra" not in res.output
    res = run(str(path), "--dry-run", "--only", "extra", "--var", "extra_renders=/r")
    assert (
        res.exit_code == 0 and "# extra" in res.output and "--renders /r" in res.output and "# frames" not in res.output
    )
    # A variable only used by a stage (not declared under vars:) can be set; a misspelt one cannot.
    res = run(str(path), "--dry-run", "--var", "rot=/data")
    assert res.exit_code == 1 and "--var rot: the recipe has no variable 'rot'" in res.output and "root" in res.output
    # Variables may use other variables and ${recipe_dir}.
    rec["vars"]["root"] = "${recipe_dir}/data"
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)), "--dry-run")
    assert res.exit_code == 0 and f"--out {tmp_path}/data/shards" in res.output
    rec["vars"]["root"] = "${root}/x"
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)), "--dry-run")
    assert res.exit_code == 1 and "refers to itself" in res.output


def test_a_mix_in_a_recipe_says_where_the_mix_belongs(tmp_path):
    rec = {"name": "t", "mix": {"multiview_video": 1.0}, "stages": [{"name": "build-shards", "args": {"out": "x"}}]}
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)), "--dry-run")
    assert res.exit_code == 1 and "r.yaml" in res.output and "data.mix" in res.output


def test_vars_override_and_clear_errors(tmp_path):
    rec = {
        "name": "t",
        "vars": {"root": "a"},
        "stages": [{"name": "build-shards", "args": {"out": "${root}/shards", "frames": ["${root}/f"]}}],
    }
    path = write_recipe(tmp_path / "r.yaml", rec)
    res = run(str(path), "--dry-run", "--var", "root=/data/x")
    assert res.exit_code == 0 and "--out /data/x/shards --frames /data/x/f" in res.output

    rec["stages"][0]["args"]["shard-sise"] = "1GB"
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)), "--dry-run")
    assert res.exit_code == 1 and "stage 'build-shards'" in res.output and "no option 'shard-sise'" in res.output

    rec["stages"][0]["args"] = {"out": "${nowhere}/shards"}
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)), "--dry-run")
    assert res.exit_code == 1 and "unknown variable ${nowhere}" in res.output

    rec["stages"][0]["command"] = "render-everything"
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)), "--dry-run")
    assert res.exit_code == 1 and "unknown command 'render-everything'" in res.output

    (tmp_path / "bad.yaml").write_text("name: x\nstages: [{name: a, bogus: 1}]\n")
    res = run(str(tmp_path / "bad.yaml"), "--dry-run")
    assert res.exit_code == 1 and "bad.yaml" in res.output and "bogus" in res.output


def test_failed_stage_stops_the_run_unless_keep_going(tmp_path):
    rec = {
        "name": "t",
        "stages": [
            {
                "name": "first",
                "command": "build-shards",
                "args": {"out": str(tmp_path / "a"), "frames": [str(tmp_path / "missing")]},
            },
            {
                "name": "second",
                "command": "build-shards",
                "args": {"out": str(tmp_path / "b"), "frames": [str(tmp_path / "empty")]},
            },
        ],
    }
    (tmp_path / "empty").mkdir()
    path = write_recipe(tmp_path / "r.yaml", rec)
    res = run(str(path))
    assert res.exit_code == 1 and "stage first [build-shards]" in res.output and not (tmp_path / "b").exists()
    res = run(str(path), "--keep-going")
    # the second stage ran too, and failed: an input that yields nothing is an error, not an empty dataset
    assert res.exit_code == 1 and "stage second [build-shards]" in res.output and "found nothing" in res.output
    assert not (tmp_path / "b" / "dataset.json").exists()


def _re10k_root(root: Path) -> Path:
    from syncam_data.sources.export import export_realestate10k
    from tests.test_sources_scene import render, trajectory

    cams = trajectory(12, deg_per_frame=3.0)
    export_realestate10k(root, "seqr", cams, [render(c) for c in cams], pose_stride=2)
    return root


def test_recipe_chains_sample_frames_filter_videos_and_build_shards(tmp_path):
    from syncam_data.filter.synthetic import write_synthetic_set

    _re10k_root(tmp_path / "re10k")
    write_synthetic_set(tmp_path / "web", kinds=("static_subject", "pan"), seconds=1.5)
    rec = {
        "name": "chain",
        "vars": {"root": str(tmp_path / "run")},
        "engine": "local",
        "stages": [
            {
                "name": "sample-frames",
                "args": {
                    "source": "realestate10k",
                    "root": str(tmp_path / "re10k"),
                    "out": "${root}/frames",
                    "views": 3,
                    "max-gap": 20,
                    "no-progress": True,
                },
            },
            {
                "name": "filter-videos",
                "args": {"inputs": [str(tmp_path / "web")], "out": "${root}/web", "progress": False},
            },
            {
                "name": "build-shards",
                "args": {
                    "out": "${root}/shards",
                    "frames": ["${root}/frames"],
                    "videos": ["${root}/web/scores.parquet"],
                },
            },
        ],
    }
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)))
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "shards"
    assert validate_dataset(out).ok
    reader = ShardReader(out)
    groups = reader.groups()
    assert {d for d, _ in groups} == {"realestate10k", "web"}
    web = reader.filter(dataset="web").to_pylist()
    assert len(web) == 1 and web[0]["source_uri"].endswith("static_subject.mp4")  # the pan was rejected by the filter
    # Re-running the recipe resumes: every stage finds its work done, nothing is added.
    res = run(str(tmp_path / "r.yaml"))
    assert res.exit_code == 0 and len(ShardReader(out)) == len(reader)


@pytest.mark.slow
@pytest.mark.blender
def test_recipe_renders_with_blender_and_builds_shards(tmp_path):
    pytest.importorskip("bpy")
    rec = {
        "name": "render-chain",
        "stages": [
            {
                "name": "render",
                "args": {
                    "scenes": 1,
                    "out": str(tmp_path / "renders"),
                    "cameras": 2,
                    "frames": 3,
                    "resolution": "48x64",
                    "samples": 1,
                    "progress": False,
                },
            },
            {"name": "build-shards", "args": {"out": str(tmp_path / "shards"), "renders": [str(tmp_path / "renders")]}},
        ],
    }
    res = run(str(write_recipe(tmp_path / "r.yaml", rec)))
    assert res.exit_code == 0, res.output
    rep = validate_dataset(tmp_path / "shards")
    assert rep.ok, rep.problems
    rows = ShardReader(tmp_path / "shards").rows()
    assert len(rows) == 2 and {r["dataset"] for r in rows} == {"syncam-blender"} and all(r["caption"] for r in rows)
    cams = {
        c["id"]: c for c in json.loads(next((tmp_path / "renders").glob("scene_*/cameras.json")).read_text())["cameras"]
    }
    for r in rows:
        assert r["c2w"] == pytest.approx(cams[r["view_id"]]["c2w"], abs=1e-5) and r["num_frames"] == 3


def test_ray_cluster_example_is_a_valid_ray_up_config():
    """pipelines/ray_cluster.yaml passes the same preparation and schema check `ray up` applies."""
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / "pipelines" / "ray_cluster.yaml").read_text()))
    validate_config(cfg)
    assert cfg["provider"]["type"] == "local" and cfg["max_workers"] == len(cfg["provider"]["worker_ips"])

"""Keep the docs honest: every command block of docs/ is checked, and the runnable ones run.

The markers and what they mean are in tests/docs_blocks.py (and CONTRIBUTING.md, "Docs"). Per page, its runnable blocks run
in order in one bash shell (`set -euo pipefail`), in a fresh folder that looks like a SynCam checkout (its
top-level entries are links to this repository), with the commands of this environment first on PATH: what a user
gets after `source .venv/bin/activate` and pasting the blocks into one terminal from the checkout's root. A
marker's variables set the sizes, so pages run tiny. Blocks that need what a test machine lacks (a GPU, real
weights, Unreal Engine, the internet, a cluster) are reported as skipped with that reason; they are still checked
statically (shell syntax, no comment after a backslash, every option exists).

A page whose commands start from files a user downloads (docs/from-downloads.md) gets small files in exactly the
layout the downloads unpack to, made by ``PAGE_INPUTS`` below; the download blocks themselves are the skipped ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_blocks import (
    SKIP_REASONS,
    Block,
    check_invocation,
    commands_in,
    option_values,
    parse_page,
    static_problems,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
# Every page of docs/: its command blocks all carry a marker (pages without command blocks pass trivially).
CHECKED = sorted(p.name for p in DOCS.glob("*.md"))
# Guides that must say at their top how to get the commands (every page with a command block).
GUIDES = [p for p in CHECKED if any(b.is_command for b in parse_page(DOCS / p))]
SETUP_LINE = "source .venv/bin/activate"
PAGE_TIMEOUT_S = 1500


def _blocks(page: str) -> list[Block]:
    return parse_page(DOCS / page)


# --- static checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", CHECKED)
def test_every_command_block_is_marked_and_well_formed(page):
    problems = []
    for b in _blocks(page):
        if b.is_command:
            problems += static_problems(b)
        elif b.lang == "" and any(
            re.match(r"^\s*(syncam-|torchrun|accelerate |python )", ln) for ln in b.text.splitlines()
        ):
            problems.append(f"{b.where}: a block of commands needs a language (```bash) and a marker")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", GUIDES)
def test_each_guide_says_how_to_get_the_commands(page):
    head = "\n".join((DOCS / page).read_text().splitlines()[:12])
    assert SETUP_LINE in head and "pip install -e '.[all]'" in head, (
        f"{page}: say at the top how to get the commands on PATH"
    )


def test_other_command_blocks_are_well_formed():
    """README.md and pipelines/README.md: not run by this test (their commands are those of the guides), but every
    bash block must parse, carry no comment after a backslash and name only options the commands have."""
    problems = []
    for path in (REPO / "README.md", REPO / "pipelines" / "README.md"):
        for b in parse_page(path):
            if b.is_command:
                b.action = b.action or "skip"
                b.reason = b.reason or "cluster"
                problems += static_problems(b)
        text = path.read_text()
        problems += [f"{path.name} mentions {n}" for n in ("DESIGN.md", "REFERENCE.md", "../shared") if n in text]
    assert not problems, "\n".join(problems)


def test_readme_says_how_to_get_the_commands():
    text = (REPO / "README.md").read_text()
    assert SETUP_LINE in text and "pip install -e '.[all]'" in text


@pytest.mark.parametrize("page", CHECKED + sorted(f"benchmarks/{p.name}" for p in (DOCS / "benchmarks").glob("*.md")))
def test_docs_cite_nothing_outside_the_repository(page):
    text = (DOCS / page).read_text()
    for name in ("DESIGN.md", "REFERENCE.md", "../shared", "shared/fixtures"):
        assert name not in text, f"{page} mentions {name}, which users do not have"


def test_the_static_checks_catch_the_mistakes_they_are_for(tmp_path):
    """A comment after a backslash, an option a command lacks, an extra argument, a bad value, a missing marker."""
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- docs-test: run -->\n```bash\nsyncam-data build-shards --out x \\   # the output\n    --frames f\n```\n"
        "<!-- docs-test: run -->\n```bash\nsyncam-data build-shards --out x --shard-sise 8MB\n```\n"
        "<!-- docs-test: skip gpu: 8 GPUs -->\n```bash\ntorchrun --nproc_per_node 8 -m syncam_model.cli_train --shards s extra\n```\n"
        "<!-- docs-test: run -->\n```bash\nsyncam-data render --scenes 1 --out r --backend blendr\n```\n"
        "```bash\nsyncam-data validate x\n```\n"
        "<!-- docs-test: skip maybe: later -->\n```bash\nsyncam-data validate x\n```\n"
    )
    found = [p for b in parse_page(page) for p in static_problems(b)]
    expected = [
        "comment after a line-continuation backslash",
        "no option --shard-sise",
        "unexpected extra argument",
        "--backend 'blendr'",
        "needs a marker",
        "skip reason 'maybe: later'",
    ]
    for e in expected:
        assert any(e in p for p in found), (e, found)
    assert check_invocation(["syncam-data", "-q", "build-shards", "--out", "$OUT/s", "--workers", "$W"]) == []


# --- the paper recipe is the guide's data path -------------------------------------------------------------------


def test_paper_recipe_runs_the_commands_of_from_downloads():
    """Each stage `syncam-data run pipelines/paper.yaml` runs by default is a command of docs/from-downloads.md."""
    from syncam_data.recipe import load_recipe, plan_recipe

    documented = [
        option_values(c) for b in _blocks("from-downloads.md") if b.lang == "bash" for c in commands_in(b.text)
    ]
    documented = [d for d in documented if d is not None]
    path = REPO / "pipelines" / "paper.yaml"
    ignore = {"engine", "ray_address", "workers"}
    for st in plan_recipe(load_recipe(path), path):
        want = option_values(["syncam-data", st.command, *st.argv])
        want = {k: v for k, v in want.items() if k not in ignore}
        assert any({k: v for k, v in d.items() if k not in ignore} == want for d in documented), (
            f"stage {st.name}: {st.shell()} is not in from-downloads.md"
        )


# --- running the pages -------------------------------------------------------------------------------------------


def _checkout_like(cwd: Path) -> None:
    """The working folder looks like a checkout's root (relative paths such as pipelines/... resolve) but is empty otherwise."""
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in ("data", "demo-out"):
            continue
        (cwd / entry.name).symlink_to(entry)


def _downloads(cwd: Path) -> None:
    """Small files in the layouts RealEstate10K, DL3DV-10K and SynCamVideo unpack to, and two web videos."""
    import shutil

    from syncam_data.filter.synthetic import write_synthetic_set
    from syncam_data.sources.export import export_dl3dv, export_realestate10k
    from tests.test_build_shards_inputs import make_syncamvideo
    from tests.test_sources_scene import render, trajectory

    data = cwd / "data"
    cams = trajectory(10, deg_per_frame=3.0)
    frames = [render(c) for c in cams]
    tmp = cwd / "tmp-re10k"
    yt = "QShWPZxTDoE"  # the YouTube id of the real fixture's sequence; the camera file names its video by URL
    export_realestate10k(
        tmp, "0a1b2c3d4e5f6a7b", cams, frames, frames_as="video", url=f"https://www.youtube.com/watch?v={yt}"
    )
    (data / "RealEstate10K" / "train").mkdir(parents=True)
    (data / "RealEstate10K-videos").mkdir()
    shutil.move(tmp / "0a1b2c3d4e5f6a7b.txt", data / "RealEstate10K" / "train")
    shutil.move(tmp / "0a1b2c3d4e5f6a7b.mp4", data / "RealEstate10K-videos" / f"{yt}.mp4")
    shutil.rmtree(tmp)
    export_dl3dv(data / "DL3DV-10K" / "1K", "9f3c" * 16, cams, frames)
    # The released val camera file (real, angles up to 60 deg) and, for a train scene, a ring of 10 cameras written in
    # the released format (angles up to 180 deg, so every window of the training curriculum has views).
    ext = REPO / "tests" / "fixtures" / "syncamvideo" / "camera_extrinsics.json"
    ring = cwd / "tmp-ring.json"
    ring.write_text(json.dumps(_ring_extrinsics(10, frames=12)))
    make_syncamvideo(data / "SynCamVideo-Dataset" / "train", ring, cams=10, frames=12)
    ring.unlink()
    make_syncamvideo(data / "SynCamVideo-Dataset", ext, subset="val", scene="basic", cams=10, frames=12)
    write_synthetic_set(data / "web_videos", kinds=("static_subject", "pan"), seconds=1.5)


def _ring_extrinsics(n: int, frames: int) -> dict[str, dict[str, str]]:
    """camera_extrinsics.json content for n static cameras on a ring around the scene, in SynCamVideo's format:
    per frame and camera a UE row-vector 4x4 (rows forward, right, up, translation in cm) printed as four [..] rows."""
    from syncam_data.cameras import look_at, spherical_position, ue_from_c2w, ue_rotator_axes

    mats = {}
    for i in range(n):
        loc, pyr = ue_from_c2w(look_at(spherical_position((0, 0, 1), 5.0, 20.0, 360.0 * i / n), (0, 0, 1)))
        rows = [*ue_rotator_axes(*pyr), loc]
        mats[f"cam{i + 1:02d}"] = (
            " ".join("[" + " ".join(f"{v:.6f}" for v in r) + f" {1 if k == 3 else 0}]" for k, r in enumerate(rows))
            + " "
        )
    return {f"frame{f}": dict(mats) for f in range(frames)}


def _posed(cwd: Path) -> None:
    """RealEstate10K (a sequence with its frames beside the camera file, one whose video is in videos/) and DL3DV-10K."""
    import shutil

    from syncam_data.sources.export import export_dl3dv, export_realestate10k
    from tests.test_sources_scene import render, trajectory

    cams = trajectory(10, deg_per_frame=3.0)
    frames = [render(c) for c in cams]
    export_realestate10k(cwd / "RealEstate10K" / "train", "5e1f2a3b4c5d6e7f", cams, frames, frames_as="images")
    export_realestate10k(cwd / "tmp", "6f2e3d4c5b6a7f8e", cams, frames, frames_as="video")
    shutil.move(cwd / "tmp" / "6f2e3d4c5b6a7f8e.txt", cwd / "RealEstate10K" / "train")
    (cwd / "videos").mkdir()
    shutil.move(cwd / "tmp" / "6f2e3d4c5b6a7f8e.mp4", cwd / "videos")
    shutil.rmtree(cwd / "tmp")
    export_dl3dv(cwd / "DL3DV-10K" / "1K", "7a" * 32, cams, frames)


def _web_videos(cwd: Path) -> None:
    """Clips as a user gathers them: a folder, a CSV list, another folder, a single file."""
    from syncam_data.filter.synthetic import write_synthetic_set, write_synthetic_video

    write_synthetic_set(cwd / "data" / "web_videos", kinds=("static_subject", "pan"), seconds=1.5)
    write_synthetic_video(cwd / "listed.mp4", "static_subject", seconds=1.5, seed=3)
    (cwd / "urls_downloaded.csv").write_text("path,url\nlisted.mp4,https://example.org/listed\n")
    write_synthetic_video(cwd / "more_clips" / "a.mp4", "static", seconds=1.5, seed=4)
    write_synthetic_video(cwd / "one.mp4", "pan", seconds=1.5, seed=5)


def _build_inputs(cwd: Path) -> None:
    """Every input kind of build-shards, small, in the folders its guide uses."""
    from tests.test_build_shards_inputs import make_frameset, make_render_scene, make_syncamvideo, make_web_videos

    data = cwd / "data"
    make_render_scene(data / "renders", "scene_00000", caption="a dog runs", seed=0)
    make_frameset(data / "frames" / "realestate10k", "seqA_s000", source="realestate10k", seed=1)
    make_frameset(data / "frames" / "dl3dv", "seqB_s000", source="dl3dv", fmt="png", seed=2)
    make_web_videos(data / "web", [("clip_0031", 6, "kept"), ("pan", 6, "rejected")])
    make_syncamvideo(
        data / "MultiCamVideo-Dataset", REPO / "tests" / "fixtures" / "syncamvideo" / "camera_extrinsics.json", cams=3
    )
    (cwd / "captions.jsonl").write_text(
        json.dumps({"group_id": "scene_00000", "caption": "a brown dog runs across a meadow"}) + "\n"
    )


def _shards_at(rel: str):
    def make(cwd: Path) -> None:
        from tests.test_data_loader import make_shards

        make_shards(cwd / rel, mv_groups=4, views=5, img_groups=2, single_groups=4)

    return make


def _eval_inputs(cwd: Path) -> None:
    """A shard dataset and render scene folders whose cameras agree with their pixels (ray-cast views of a textured room)."""
    from syncam_data.evaluate.synthetic import render_views
    from tests.test_eval_cli import H, W, write_scene, write_shards

    views = render_views(3, W, H, seed=0)
    write_shards(cwd / "out" / "demo" / "shards", views)
    cams, imgs = views
    write_scene(cwd / "out" / "renders" / "scene_a", cams, imgs, caption="a textured box in a room")
    write_scene(cwd / "out" / "renders" / "scene_b", cams[::-1], imgs[::-1])


PAGE_INPUTS = {
    "from-downloads.md": _downloads,
    "pipelines.md": _downloads,
    "sample-frames.md": _posed,
    "filter-videos.md": _web_videos,
    "build-shards.md": _build_inputs,
    "data-format.md": _shards_at("shards"),
    "train.md": _shards_at("data/shards"),
    "eval.md": _eval_inputs,
}


def _script(page: str, blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for b in blocks:
        parts.append(f'echo "@@docs-block {b.where}" >&2')
        if b.lang == "python":
            parts.append(f"python - <<'SYNCAM_DOCS_PY'\n{b.runnable_text()}SYNCAM_DOCS_PY")
        else:
            parts.append(b.runnable_text())
    return "\n".join(parts) + "\n"


RUN_PAGES = [p for p in CHECKED if any(b.action == "run" for b in _blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_runnable_blocks_run(page, tmp_path):
    blocks = [b for b in _blocks(page) if b.is_command and b.action == "run"]
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    _checkout_like(cwd)
    if page in PAGE_INPUTS:
        PAGE_INPUTS[page](cwd)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "page.sh").write_text(_script(page, blocks))
    proc = subprocess.run(
        ["bash", str(tmp_path / "page.sh")], cwd=cwd, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S
    )
    if proc.returncode:
        started = re.findall(r"@@docs-block (\S+)", proc.stderr)
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"{page}: the block at {started[-1] if started else '?'} failed (exit {proc.returncode}):\n{tail}")
    assert len(re.findall(r"@@docs-block", proc.stderr)) == len(blocks)


SKIPPED = [pytest.param(b, id=b.where) for p in CHECKED for b in _blocks(p) if b.is_command and b.action == "skip"]


@pytest.mark.parametrize("block", SKIPPED)
def test_blocks_that_need_what_tests_lack(block):
    key, _, detail = block.reason.partition(":")
    pytest.skip(f"{block.where}: {SKIP_REASONS[key.strip()]} ({detail.strip()}); checked statically only")


# --- benchmark scripts leave the tracked pages alone -------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_benchmarks_write_a_docs_page_only_when_asked(script):
    """A benchmark run prints its report; `--out FILE` writes it (docs/benchmarks/*.md are tracked files)."""
    import ast

    tree = ast.parse((REPO / "benchmarks" / script).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            opts = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if "--out" in opts:
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                assert default is None or (isinstance(default, ast.Constant) and default.value is None), (
                    f"{script}: --out has a default"
                )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            assert "docs" not in parts, f"{script}: builds a path into docs/ ({ast.unparse(node)})"

"""Issue 18: ordinary mistakes end in one clear line naming the option or file and a non-zero exit, never a traceback.

Every command line runs over a table of such mistakes. A case fails when the
command raises (what a user would see as a traceback), prints "Traceback",
exits 0, or does not name what is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncam_data.cli import app as data_app
from syncam_model.cli_generate import app as gen_app
from syncam_model.cli_train import app as train_app
from tests.test_build_shards_inputs import make_frameset
from tests.test_data_loader import make_shards

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LONG = "x" * 300  # longer than any file system's name limit (255 bytes)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "a_file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "bad_manifest").mkdir()
    (root / "bad_manifest" / "dataset.json").write_text('{"shards": [')
    (root / "zero_manifest").mkdir()
    (root / "zero_manifest" / "dataset.json").write_text("")
    (root / "folder_manifest" / "dataset.json").mkdir(parents=True)
    (root / "no_shards").mkdir()
    (root / "no_shards" / "dataset.json").write_text(json.dumps({"schema_version": 1, "num_rows": 0, "shards": []}))
    (root / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 20)
    make_frameset(root / "frames", "seqA_s000")
    shards = make_shards(root / "shards", mv_groups=1, views=2, img_groups=0, single_groups=0)
    # A run whose only checkpoint has a malformed trainer_state.json.
    ck = root / "run" / "checkpoints" / "step_000002"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text('{"step": 2, "world_size"')
    (root / "run" / "checkpoints" / "latest").symlink_to("step_000002")
    return {"root": root, "shards": shards}


def data_cases(r: Path) -> list[tuple[str, list[str], str]]:
    """(id, arguments, text the message must contain)."""
    out_file, out_long = str(r / "a_file"), str(r / LONG)
    cases = []
    for bad, why in ((out_file, "not a folder"), (out_long, "longer than 255")):
        cases += [
            (f"render-out-{why}", ["render", "--scenes", "1", "--out", bad], why),
            (f"build-shards-out-{why}", ["build-shards", "--out", bad, "--frames", str(r / "frames")], why),
            (f"filter-videos-out-{why}", ["filter-videos", str(r / "bad.mp4"), "--out", bad], why),
            (
                f"sample-frames-out-{why}",
                ["sample-frames", "--source", "dl3dv", "--root", str(r / "empty"), "--out", bad],
                why,
            ),
            (f"eval-out-{why}", ["eval", str(r / "frames"), "--out", bad], why),
            (f"demo-out-{why}", ["demo", "--out", bad], why),
        ]
    cases += [
        ("inspect-zero-byte-manifest", ["inspect", str(r / "zero_manifest")], "dataset.json: not valid JSON"),
        ("inspect-a-file", ["inspect", str(r / "a_file")], "not a folder"),
        ("validate-manifest-is-a-folder", ["validate", str(r / "folder_manifest")], "dataset.json: is not a file"),
        ("validate-zero-byte-manifest", ["validate", str(r / "zero_manifest")], "not valid JSON"),
        (
            "build-shards-shard-size",
            ["build-shards", "--out", str(r / "ds1"), "--frames", str(r / "frames"), "--shard-size", "lots"],
            "--shard-size",
        ),
        (
            "build-shards-shard-size-huge",
            ["build-shards", "--out", str(r / "ds2"), "--frames", str(r / "frames"), "--shard-size", "100TB"],
            "SYNCAM_MAX_BYTES",
        ),
        (
            "build-shards-intrinsics-nan",
            ["build-shards", "--out", str(r / "ds3"), "--frames", str(r / "frames"), "--intrinsics", "nan,1,2,3"],
            "--intrinsics",
        ),
        (
            "build-shards-fov-nan",
            ["build-shards", "--out", str(r / "ds4"), "--frames", str(r / "frames"), "--fov", "nan"],
            "not a finite number",
        ),
        (
            "render-resolution",
            ["render", "--scenes", "1", "--out", str(r / "r1"), "--resolution", "100000x100000"],
            "SYNCAM_MAX_SIDE",
        ),
        (
            "render-workers",
            ["render", "--scenes", "1", "--out", str(r / "r2"), "--workers", "100000"],
            "SYNCAM_MAX_WORKERS",
        ),
        (
            "sample-frames-views",
            [
                "sample-frames",
                "--source",
                "dl3dv",
                "--root",
                str(r / "empty"),
                "--out",
                str(r / "s1"),
                "--views",
                "100000",
            ],
            "--views",
        ),
        (
            "sample-frames-fps-nan",
            [
                "sample-frames",
                "--source",
                "realestate10k",
                "--root",
                str(r / "empty"),
                "--out",
                str(r / "s2"),
                "--fps",
                "nan",
            ],
            "not a finite number",
        ),
        ("eval-max-side", ["eval", str(r / "frames"), "--out", str(r / "e1"), "--max-side", "100000"], "--max-side"),
    ]
    return cases


def train_cases(r: Path, shards: Path) -> list[tuple[str, list[str], str]]:
    base = ["--pretrained", "tiny", "--config", "tiny"]
    return [
        ("train-out-file", ["--shards", str(shards), "--out", str(r / "a_file"), *base], "not a folder"),
        ("train-out-long", ["--shards", str(shards), "--out", str(r / LONG), *base], "longer than 255"),
        ("train-shards-missing", ["--shards", str(r / "nope"), "--out", str(r / "t1"), *base], "no such folder"),
        ("train-shards-empty-folder", ["--shards", str(r / "empty"), "--out", str(r / "t2"), *base], "no dataset.json"),
        (
            "train-shards-no-shards",
            ["--shards", str(r / "no_shards"), "--out", str(r / "t3"), *base],
            "lists no shards",
        ),
        (
            "train-shards-bad-manifest",
            ["--shards", str(r / "bad_manifest"), "--out", str(r / "t4"), *base],
            "dataset.json: not valid JSON",
        ),
        (
            "train-height",
            ["--shards", str(shards), "--out", str(r / "t5"), *base, "--set", "data.height=100000"],
            "SYNCAM_MAX_MODEL_SIDE",
        ),
        (
            "train-resume-malformed-state",
            ["--shards", str(shards), "--out", str(r / "run"), *base, "--resume", "latest"],
            "trainer_state.json: not valid JSON",
        ),
        (
            "train-cache-shards-missing",
            ["cache", "--shards", str(r / "nope"), "--pretrained", "tiny", "--config", "tiny"],
            "no such folder",
        ),
    ]


def generate_cases(r: Path) -> list[tuple[str, list[str], str]]:
    base = [
        "--prompt",
        "a dog",
        "--pretrained",
        "tiny",
        "--frames",
        "9",
        "--resolution",
        "16x32",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    return [
        ("generate-steps-0", [*base, "--steps", "0", "--out", str(r / "g1")], "--steps"),
        ("generate-guidance-nan", [*base, "--guidance", "nan", "--out", str(r / "g2")], "not a finite number"),
        (
            "generate-text-guidance-inf",
            [*base, "--text-guidance", "inf", "--out", str(r / "g3")],
            "not a finite number",
        ),
        (
            "generate-corrupt-input-video",
            [*base, "--input-video", str(r / "bad.mp4"), "--out", str(r / "g4")],
            "bad.mp4",
        ),
        (
            "generate-missing-input-video",
            [*base, "--input-video", str(r / "nope.mp4"), "--out", str(r / "g5")],
            "nope.mp4",
        ),
        ("generate-out-file", [*base, "--out", str(r / "a_file")], "not a folder"),
        ("generate-out-long", [*base, "--out", str(r / LONG)], "longer than 255"),
        (
            "generate-resolution",
            [*base, "--resolution", "100000x100000", "--out", str(r / "g6")],
            "SYNCAM_MAX_MODEL_SIDE",
        ),
        ("generate-frames", [*base, "--frames", "100001", "--out", str(r / "g7")], "SYNCAM_MAX_MODEL_FRAMES"),
    ]


def check(app, args: list[str], expect: str) -> None:
    res = CliRunner().invoke(app, args)
    # A rich error panel wraps long lines: compare with the box drawing and line breaks removed.
    flat = " ".join(res.output.replace("│", " ").split())
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"raised {type(res.exception).__name__}: {res.exception}\n{res.output}"
    )
    assert "Traceback" not in res.output, res.output
    assert res.exit_code not in (0, None), res.output
    assert " ".join(expect.split()) in flat, f"expected {expect!r} in:\n{res.output}"


def test_data_commands_refuse_ordinary_mistakes_without_a_traceback(env):
    failures = []
    for name, args, expect in data_cases(env["root"]):
        try:
            check(data_app, args, expect)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n\n".join(failures)


def test_train_refuses_ordinary_mistakes_without_a_traceback(env):
    failures = []
    for name, args, expect in train_cases(env["root"], env["shards"]):
        try:
            check(train_app, args, expect)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n\n".join(failures)
    assert not (env["root"] / "t2").exists()  # refused before anything was built or written


def test_generate_refuses_ordinary_mistakes_without_a_traceback(env):
    failures = []
    for name, args, expect in generate_cases(env["root"]):
        try:
            check(gen_app, args, expect)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n\n".join(failures)


def test_a_file_system_error_during_work_is_one_line_from_the_installed_command(env):
    """The console script itself (not the test runner): an OSError met while working names the file, no traceback."""
    report = env["root"] / "a_file" / "report.json"  # its folder is a file
    cmd = [
        sys.executable,
        "-c",
        "from syncam_data.cli import main; main()",
        "-q",
        "validate",
        str(env["root"] / "no_shards"),
        "--json",
        str(report),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {report}: Not a directory", proc.stderr

"""The command-line entry points: installed, documented, and never silently doing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncam_data.cli import app

runner = CliRunner()
BIN = Path(sys.executable).parent
SUBCOMMANDS = [
    "render",
    "sample-frames",
    "filter-videos",
    "build-shards",
    "inspect",
    "validate",
    "demo",
    "eval",
    "export-posed",
    "run",
]


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and len(res.output) > 200


def test_top_level_help_lists_every_subcommand():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in SUBCOMMANDS:
        assert cmd in res.output


@pytest.mark.parametrize("script", ["syncam-data", "syncam-train", "syncam-generate"])
def test_console_scripts_are_installed(script):
    exe = BIN / script
    assert exe.exists(), f"{exe} missing: is the package installed (pip install -e .)?"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


def test_one_cv2_distribution():
    """unrealcv pulls opencv-python; the project must end up with exactly one cv2 provider."""
    from importlib import metadata

    providers = {
        d.metadata["Name"].lower()
        for d in metadata.distributions()
        if (d.read_text("top_level.txt") or "").split().count("cv2") or d.metadata["Name"].lower().startswith("opencv")
    }
    assert len(providers) == 1, providers
    import cv2

    assert cv2.imdecode is not None

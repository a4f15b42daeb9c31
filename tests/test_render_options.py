"""Each render backend's typed config (render/blender.py BlenderConfig, render/unrealcv.py UnrealCVConfig).

Unknown options and bad values are refused with one line naming the option's command-line flag, before any
work starts; defaults come from one place (the model), and the command line's help shows each description.
No renderer runs here: the options are checked before a backend touches bpy or an engine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.config import ConfigError
from syncam_data.render.base import backend_config, get_backend
from syncam_data.render.blender_config import BlenderConfig
from syncam_data.render.unrealcv_config import UnrealCVConfig

runner = CliRunner()


def test_zero_samples_is_refused_not_replaced_by_the_default():
    with pytest.raises(ConfigError, match=r"^--samples: .*greater than or equal to 1 \(got 0\)$"):
        get_backend("blender", samples=0)
    assert get_backend("blender", samples=3).config.samples == 3
    assert get_backend("blender").config.samples == BlenderConfig.default("samples") == 16


def test_zero_bounces_and_threads_are_kept():
    """0 is a value, not 'unset': direct light only, and all cores (the old `or default` turned 0 bounces into 4)."""
    o = backend_config("blender", max_bounces=0, threads=0)
    assert (o.max_bounces, o.threads) == (0, 0)


@pytest.mark.parametrize(
    "backend, options, message",
    [
        ("blender", {"port": [9000]}, r"blender backend: unknown option 'port' \(its options: samples, device, "),
        ("blender", {"device": "tpu"}, r"^--device: Input should be 'cpu' or 'gpu' \(got 'tpu'\)$"),
        ("blender", {"samples": "many"}, r"^--samples: "),
        ("unrealcv", {"samples": 4}, r"unrealcv backend: unknown option 'samples'"),
        (
            "unrealcv",
            {"port": 70000},
            r"^--port: Value error, ports must be 1 to 65535|^--port: ports must be 1 to 65535",
        ),
        ("unrealcv", {"lens": "zoom"}, r"^--lens: "),
        ("unrealcv", {"timeout": 0}, r"^unrealcv backend option timeout: .*greater than 0 \(got 0\)$"),
        ("unrealcv", {"timeout": float("nan")}, r"^unrealcv backend option timeout: nan is not a finite number$"),
        ("unrealcv", {"port": []}, r"^--port: "),
    ],
)
def test_bad_options_name_the_flag_or_option(backend, options, message):
    with pytest.raises(ConfigError, match=message):
        backend_config(backend, **options)


def test_samples_over_the_limit_name_the_variable_that_raises_it(monkeypatch):
    monkeypatch.setenv("SYNCAM_MAX_SAMPLES", "64")
    with pytest.raises(ConfigError, match=r"^--samples: 65 is over the maximum of 64 .*SYNCAM_MAX_SAMPLES"):
        backend_config("blender", samples=65)
    assert backend_config("blender", samples=64).samples == 64


def test_unrealcv_ports_per_worker_from_typed_options():
    from syncam_data.render.base import WorkerSlot

    one = get_backend("unrealcv", WorkerSlot(1, 2), port=9001)  # a single port is a list of one
    assert one.config.port == [9001] and one.engine.port == 9001
    launched = get_backend(
        "unrealcv", WorkerSlot(2, 3), port=[9100], launch="engine -cvport {port}", unix_socket="auto"
    )
    assert launched.engine.port == 9102 and launched.engine.unix_socket == "/tmp/unrealcv_9102.socket"
    assert launched.engine.connect_timeout == 300.0 and one.engine.connect_timeout == 15.0


def test_every_option_is_described_and_records_as_json():
    for cls in (BlenderConfig, UnrealCVConfig):
        for name, f in cls.model_fields.items():
            assert f.description and len(f.description) > 10, f"{cls.__name__}.{name} has no description"
        rec = cls().record()
        assert set(rec) == set(cls.model_fields) and cls.parse(rec) == cls()


def test_render_refuses_bad_backend_options_before_any_work(tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, ["render", "--scenes", "1", "--out", str(out), "--samples", "0", "--no-progress"])
    assert res.exit_code == 2 and "--samples" in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()
    res = runner.invoke(
        app, ["render", "--scenes", "1", "--out", str(out), "--backend", "unrealcv", "--port", "0", "--no-progress"]
    )
    assert res.exit_code == 2 and "--port" in res.output and "65535" in res.output, res.output
    assert not out.exists()


def test_render_help_and_defaults_come_from_the_options():
    import typer.main

    render = typer.main.get_command(app).commands["render"]
    params = {p.opts[0]: p for p in render.params}
    for cls, label, name in (
        (BlenderConfig, "Blender", "samples"),
        (BlenderConfig, "Blender", "device"),
        (UnrealCVConfig, "UnrealCV", "host"),
        (UnrealCVConfig, "UnrealCV", "port"),
        (UnrealCVConfig, "UnrealCV", "lens"),
        (UnrealCVConfig, "UnrealCV", "illumination"),
    ):
        p = params[cls.flag(name)]
        assert p.help == f"{label}: {cls.help(name)}"
        default = p.default.value if hasattr(p.default, "value") else p.default
        assert (
            default == cls.default(name)
            or (default is None and cls.default(name) is None)
            or list(default) == cls.default(name)
        )
    assert UnrealCVConfig.choices("lens") == ("auto", "fov", "cine")
    res = runner.invoke(app, ["render", "--scenes", "1", "--out", "unused", "--backend", "unrealcv", "--lens", "zoom"])
    assert res.exit_code == 2 and all(c in res.output for c in ("'auto'", "'fov'", "'cine'")), res.output


def test_the_command_line_loads_no_heavy_library():
    """`syncam-data --help` stays fast: engines, media and model libraries load only inside the commands."""
    code = (
        "import sys, syncam_data.cli; heavy = ['bpy', 'unrealcv', 'numpy', 'torch', 'av', 'cv2', 'pyarrow', 'ray', 'segment_anything', "
        "'kornia', 'diffusers', 'transformers', 'syncam_data.scenes', 'syncam_data.render.output']; "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert res.stdout.strip() == "[]", res.stdout + res.stderr

"""`syncam-data render --backend unrealcv` end to end against the local UnrealCV stand-in, both server flavours."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from syncam_data.cameras import read_cameras_json
from syncam_data.cli import app
from syncam_data.render.output import is_complete_scene, load_npz_array

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_render_unrealcv import marker_offset, ue_to_canonical  # noqa: E402
from unrealcv_standin import LevelConfig, StandinServer, level_markers  # noqa: E402

H, W = 96, 128

CATALOG = """
name: unreal_test
animations:
  - {id: walk, clip: /Game/Characters/Anim/Walk.Walk, description: walks, travel_speed: 0.8}
  - {id: wave, clip: /Game/Characters/Anim/Wave.Wave, description: waves, travel_speed: 0.0}
backgrounds:
  - {id: forest, kind: unreal_level, asset: /Game/Maps/Forest, description: in a pine forest}
  - {id: plaza, kind: unreal_level, asset: /Game/Maps/Plaza, description: on a city plaza}
subjects:
  - {id: hiker, kind: unreal, asset: /Game/Characters/BP_Hiker.BP_Hiker_C, description: a hiker, animations: [walk, wave]}
  - {id: dog, kind: unreal, asset: /Game/Animals/BP_Dog.BP_Dog_C, description: a dog, animations: [walk]}
"""


HIKER, DOG = "/Game/Characters/BP_Hiker.BP_Hiker_C", "/Game/Animals/BP_Dog.BP_Dog_C"
# Levels that reference the subjects' classes: what the open-source server needs to spawn them by name.
LEVELS = {m: LevelConfig(references=(HIKER, DOG)) for m in ("/Game/Maps/Forest", "/Game/Maps/Plaza")}


def standin(**kw) -> StandinServer:
    return StandinServer(**{"levels": LEVELS, **kw})


def run_render(tmp_path: Path, ports: list[int], *extra: str, scenes: int = 2) -> tuple[object, Path]:
    cat = tmp_path / "unreal.yaml"
    cat.write_text(CATALOG)
    out = tmp_path / "out"
    args = [
        "render",
        "--backend",
        "unrealcv",
        "--catalog",
        str(cat),
        "--out",
        str(out),
        "--scenes",
        str(scenes),
        "--cameras",
        "3",
        "--frames",
        "3",
        "--resolution",
        f"{H}x{W}",
        "--distance",
        "4-6",
        "--no-progress",
    ]
    for p in ports:
        args += ["--port", str(p)]
    result = CliRunner().invoke(app, [*args, *extra])
    return result, out


def check_scene_reprojects(folder: Path) -> int:
    """Every camera of a finished scene projects the level's markers onto the pixels the server drew."""
    spec = json.loads((folder / "scene.json").read_text())["spec"]
    markers = level_markers(spec["background"]["asset"])
    checked = 0
    for cam_id, cam, entry in read_cameras_json(folder / "cameras.json"):
        assert entry["raw"]["convention"] == "unreal"
        depth = load_npz_array(folder / "depth" / f"{cam_id}.npz", "depth")
        assert depth.shape == (spec["num_frames"], H, W)
        for m in markers:
            off = marker_offset(cam, depth[0].astype(np.float64), ue_to_canonical(m.location), m.radius / 100.0)
            if off is not None:
                assert np.abs(off).max() < 1.0, (folder.name, cam_id, m.name, off)
                checked += 1
    return checked


def test_render_cli_reprojects_markers_and_survives_a_dropped_connection(tmp_path):
    with standin(drop_after=120) as srv:
        result, out = run_render(tmp_path, [srv.port])
        assert result.exit_code == 0, result.output
        assert srv.drops == 1
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["scene_00000", "scene_00001"]
    assert sum(check_scene_reprojects(f) for f in folders) >= 6
    report = json.loads((out / "render_report.json").read_text())
    assert not report.get("failed")
    # One of the two scenes was retried inside the backend after the drop.
    infos = [json.loads((f / "scene.json").read_text())["info"] for f in folders]
    assert sorted(i["retries"] for i in infos) == [0, 1]
    assert all(i["animation_sync"] == "exact" for i in infos)


@pytest.mark.slow
def test_render_cli_two_workers_one_engine_each(tmp_path):
    with standin() as a, standin() as b:
        result, out = run_render(tmp_path, [a.port, b.port], "--workers", "2", scenes=2)
        assert result.exit_code == 0, result.output
        # Each worker slot talked to its own engine.
        assert a.captures and b.captures
    for sid in ("scene_00000", "scene_00001"):
        assert is_complete_scene(out / sid)
        assert check_scene_reprojects(out / sid) >= 1
    endpoints = {
        json.loads((out / s / "scene.json").read_text())["info"]["endpoint"] for s in ("scene_00000", "scene_00001")
    }
    assert endpoints == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}


def test_render_cli_records_a_missing_capability_as_a_failed_scene(tmp_path):
    with standin(without=("vget /camera/[uint]/object_mask [str]",)) as srv:
        result, out = run_render(tmp_path, [srv.port], "--retries", "0", scenes=1)
    assert result.exit_code == 1
    assert "capture object masks" in result.output
    assert not (out / "scene_00000").exists()


@pytest.mark.slow
def test_render_cli_ray_engine_one_actor_per_instance(tmp_path):
    """--engine ray: each Ray actor owns one backend (one engine instance, its own port)."""
    pytest.importorskip("ray")
    with standin() as a, standin() as b:
        result, out = run_render(tmp_path, [a.port, b.port], "--engine", "ray", "--workers", "2", scenes=2)
        assert result.exit_code == 0, result.output
        assert a.captures and b.captures
    for sid in ("scene_00000", "scene_00001"):
        assert is_complete_scene(out / sid)
        assert check_scene_reprojects(out / sid) >= 1


@pytest.mark.slow
def test_render_cli_launches_one_engine_per_worker(tmp_path):
    """--launch with --workers 2: each worker starts its own engine (here the stand-in script) and stops it."""
    import socket

    script = Path(__file__).resolve().parent / "unrealcv_standin.py"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
    launch = f"{sys.executable} {script} -cvport {{port}} -RenderOffscreen -nosound"
    result, out = run_render(tmp_path, [base], "--workers", "2", "--launch", launch, scenes=2)
    assert result.exit_code == 0, result.output
    endpoints = set()
    for sid in ("scene_00000", "scene_00001"):
        assert check_scene_reprojects(out / sid) >= 1
        endpoints.add(json.loads((out / sid / "scene.json").read_text())["info"]["endpoint"])
    assert endpoints <= {f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"}
    # The engines were stopped when the workers ended: nothing listens any more.
    for port in (base, base + 1):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_render_cli_over_the_unix_socket(tmp_path):
    template = str(tmp_path / "unrealcv_{port}.socket")
    with standin(unix_socket=template) as srv:
        result, out = run_render(tmp_path, [srv.port], "--unix-socket", template, scenes=1)
        assert result.exit_code == 0, result.output
    info = json.loads((out / "scene_00000" / "scene.json").read_text())["info"]
    assert info["endpoint"] == srv.unix_socket
    assert check_scene_reprojects(out / "scene_00000") >= 1


@pytest.mark.parametrize("flavour", ["oss-5.2", "unrealzoo-1.1"])
@pytest.mark.parametrize("plugin", [True, False], ids=["plugin", "no-plugin"])
def test_render_cli_against_both_server_flavours_with_and_without_the_plugin(flavour, plugin, tmp_path):
    with standin(flavour=flavour, plugin=plugin) as srv:
        result, out = run_render(tmp_path, [srv.port], scenes=1)
        assert result.exit_code == 0, result.output
    folder = out / "scene_00000"
    assert is_complete_scene(folder)
    assert check_scene_reprojects(folder) >= 1
    scene = json.loads((folder / "scene.json").read_text())
    info = scene["info"]
    assert info["animation_sync"] == ("exact" if plugin else "approximate")
    assert info["spawn_method"] == (
        "plugin" if plugin else "spawn_from_path" if flavour == "unrealzoo-1.1" else "class_name"
    )
    assert info["lens"] == ("cine" if flavour == "unrealzoo-1.1" else "fov")
    assert info["server"]["version"] == srv.version
    assert set(info["depth"]["sky_fraction"]) == {"cam00", "cam01", "cam02"}
    # Synchronized: every camera has every frame, and the subjects are in the masks.
    ids = [load_npz_array(folder / "masks" / f"cam0{i}.npz", "ids") for i in range(3)]
    assert all(a.shape == (3, H, W) for a in ids)
    assert sum(int((a > 0).sum()) for a in ids) > 50


def test_new_user_blueprint_class_paths_against_the_open_source_server_without_the_plugin(tmp_path):
    """A catalog of Blueprint class paths (/Game/.../BP_X.BP_X_C), an open-source 5.2 server, no SynCam plugin.

    The server spawns a class by name only when the level has loaded it: with levels that reference the
    subjects it renders; with a level that does not, the scene fails with the fix in its error.
    """
    with standin(plugin=False) as srv:
        result, out = run_render(tmp_path, [srv.port], scenes=2)
        assert result.exit_code == 0, result.output
    for sid in ("scene_00000", "scene_00001"):
        assert check_scene_reprojects(out / sid) >= 1
        assert json.loads((out / sid / "scene.json").read_text())["info"]["spawn_method"] == "class_name"
    (tmp_path / "bare").mkdir()
    with StandinServer(plugin=False) as srv:  # levels that reference nothing
        result, out = run_render(tmp_path / "bare", [srv.port], "--retries", "0", scenes=1)
    assert result.exit_code == 1
    assert (
        "reference BP_" in result.output
        and "from the level /Game/Maps/" in result.output
        and "install the SynCam plugin" in result.output
    )
    assert not (out / "scene_00000").exists()


def test_render_cli_illumination_and_lens_options(tmp_path):
    with standin(flavour="unrealzoo-1.1") as srv:
        result, out = run_render(tmp_path, [srv.port], "--illumination", "lumen", "--lens", "fov", scenes=1)
        assert result.exit_code == 0, result.output
        assert {c.illumination for c in srv.world.cameras[1:]} == {"lumen"}
        assert not any(c.cine_enabled for c in srv.world.cameras)
    info = json.loads((out / "scene_00000" / "scene.json").read_text())["info"]
    assert info["illumination"] == "lumen" and info["lens"] == "fov"
    (tmp_path / "b").mkdir()
    with standin() as srv:
        result, _ = run_render(tmp_path / "b", [srv.port], "--lens", "cine", "--retries", "0", scenes=1)
    assert result.exit_code == 1 and "no cine camera commands" in result.output


def test_render_cli_warns_when_the_ground_reads_as_sky(tmp_path):
    """A Landscape ground is not annotated by UnrealCV: depth reads sky there; render says so and scene.json records it."""
    levels = {m: LevelConfig(ground="landscape", references=(HIKER, DOG)) for m in LEVELS}
    with StandinServer(levels=levels) as srv:
        result, out = run_render(tmp_path, [srv.port], scenes=1)
        assert result.exit_code == 0, result.output
    assert "the ground reads as sky" in result.output and "static-mesh ground" in result.output
    depth = json.loads((out / "scene_00000" / "scene.json").read_text())["info"]["depth"]
    assert depth["ground_reads_as_sky"] is True

"""The UnrealCV backend against the local UnrealCV stand-in (tests/unrealcv_standin.py), over the real wire protocol.

Unreal Engine cannot run here; the stand-in behaves like the servers users run
(``oss-5.2``: the open-source plugin from unrealcv branch 5.2, and
``unrealzoo-1.1``), speaks UnrealCV's framing and renders exact geometry with
its own Unreal projection. The main tests run against both flavours: the
exported canonical cameras reproject the server's markers to where the server
drew them, every frame is synchronized, subjects are spawned, annotated and
masked, and the backend survives a dropped connection and detects missing
capabilities.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from syncam_data.cameras import Camera, look_at, read_cameras_json, spherical_position
from syncam_data.render.base import WorkerSlot, get_backend
from syncam_data.render.output import SceneOutput, load_npz_array
from syncam_data.scenes import AnimationSpec, BackgroundSpec, CameraSpec, SceneSpec, SubjectSpec, TrajectorySpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unrealcv_standin import FLAVOURS, SUBJECT_RADIUS_CM, LevelConfig, StandinServer, level_markers  # noqa: E402

W, H = 128, 96
MAP = "/Game/Maps/TestLevel"
WALKER = "/Game/Characters/Walker/BP_Walker.BP_Walker_C"
DOG = "/Game/Animals/Dog/BP_Dog.BP_Dog_C"
# The open-source server spawns only classes the level has loaded: this level references both subjects.
LEVELS = {MAP: LevelConfig(references=(WALKER, DOG))}


def make_spec(
    scene_id: str = "scene_a",
    num_frames: int = 3,
    num_cameras: int = 3,
    hfov: float = 70.0,
    subjects: int = 2,
    level: str = MAP,
) -> SceneSpec:
    centre = (0.0, 0.0, 1.0)
    f = W / (2 * math.tan(math.radians(hfov) / 2))
    cams = []
    for i in range(num_cameras):
        eye = spherical_position(centre, 4.5 + 0.5 * i, 10.0 + 12.0 * i, 25.0 + 115.0 * i)
        cams.append(CameraSpec.from_camera(f"cam{i:02d}", Camera(W, H, f, f, W / 2, H / 2, look_at(eye, centre))))
    subs = [
        SubjectSpec(
            instance_id=1,
            asset_id="walker",
            kind="unreal",
            asset=WALKER,
            animation=AnimationSpec(id="walk", clip="/Game/Characters/Walker/Anim_Walk.Anim_Walk", speed=1.5),
            trajectory=TrajectorySpec(type="line", start=(-0.8, -0.6), end=(0.6, 0.9)),
        ),
        SubjectSpec(
            instance_id=2,
            asset_id="dog",
            kind="unreal",
            asset=DOG,
            scale=0.8,
            animation=AnimationSpec(id="trot", clip="/Game/Animals/Dog/Anim_Trot.Anim_Trot"),
            trajectory=TrajectorySpec(type="circle", center=(0.2, -0.2), radius=0.9, turns=0.25, phase_deg=30),
        ),
    ][:subjects]
    return SceneSpec(
        scene_id=scene_id,
        seed=0,
        background=BackgroundSpec(id="test_level", kind="unreal_level", asset=level),
        subjects=subs,
        center=centre,
        cameras=cams,
        num_frames=num_frames,
        fps=12.0,
        width=W,
        height=H,
    )


def render(backend, spec: SceneSpec, folder: Path):
    out = SceneOutput(folder, fps=spec.fps, depth_dtype="float32")
    seen: list[int] = []
    result = backend.render_scene(spec, out, on_frame=seen.append)
    out.finish({"spec": spec.model_dump(), "backend": result.backend, "info": result.info})
    return result, seen


def ue_to_canonical(p_cm) -> np.ndarray:
    """The test's own statement of the convention: mirror Y, centimetres to metres."""
    p = np.asarray(p_cm, dtype=np.float64)
    return np.array([p[0], -p[1], p[2]]) / 100.0


def sphere_pixels(cam: Camera, depth: np.ndarray, centre_m: np.ndarray, radius_m: float) -> np.ndarray:
    """Pixels whose unprojected depth lands on the sphere's surface (independent of colours)."""
    g = cam.pixel_grid().reshape(-1, 2)
    d = depth.reshape(-1).astype(np.float64)
    ok = np.isfinite(d)
    pts = cam.unproject(g[ok], d[ok])
    on = np.abs(np.linalg.norm(pts - centre_m, axis=1) - radius_m) < 0.01
    idx = np.flatnonzero(ok)[on]
    return g[idx]


def marker_offset(cam: Camera, depth: np.ndarray, centre_m: np.ndarray, radius_m: float) -> np.ndarray | None:
    """Centroid of the pixels drawn for a marker minus its projected centre, or None when it is not fully seen."""
    (uv,), (z,) = cam.project(centre_m[None])
    if not (z > 0 and 3 <= uv[0] <= cam.width - 3 and 3 <= uv[1] <= cam.height - 3):
        return None
    px = sphere_pixels(cam, depth, centre_m, radius_m)
    expected = math.pi * (cam.fx * radius_m / z) ** 2
    # Partly hidden (behind a subject or another marker) markers have a biased centroid: skip them.
    if len(px) < max(12, 0.85 * expected):
        return None
    return px.mean(axis=0) - uv


def standin(**kw) -> StandinServer:
    return StandinServer(**{"levels": LEVELS, **kw})


@pytest.fixture(params=FLAVOURS)
def flavour(request) -> str:
    return request.param


@pytest.fixture
def server(flavour):
    with standin(flavour=flavour) as srv:
        yield srv


@pytest.fixture
def backend_for(request):
    made = []

    def _make(srv: StandinServer, **opts):
        for other_srv, other in made:
            if other_srv is srv:
                other.close()  # a server takes one client at a time: a new backend replaces the previous one
        b = get_backend(
            "unrealcv", WorkerSlot(0, 1), **{"port": [srv.port], "connect_timeout": 5, "timeout": 20, **opts}
        )
        b.open()
        made.append((srv, b))
        return b

    yield _make
    for _, b in made:
        b.close()


def test_cameras_reproject_server_markers_within_a_pixel(server, backend_for, tmp_path):
    spec = make_spec()
    backend = backend_for(server)
    result, seen = render(backend, spec, tmp_path / "scene_a")
    assert seen == list(range(spec.num_frames))
    assert result.info["animation_sync"] == "exact"
    assert result.info["spawn_method"] == "plugin"
    # The cine lens where the server has it (UnrealZoo), the horizontal FOV otherwise; scene.json says which.
    assert result.info["lens"] == ("cine" if server.flavour == "unrealzoo-1.1" else "fov")
    assert result.info["server"]["version"] == server.version
    assert result.info["server"]["lists_commands"] == (server.flavour == "unrealzoo-1.1")
    # Camera 0 is the pawn's sensor: the spawned cameras are 1..3, whatever `vget /cameras` calls them.
    assert result.info["cameras"] == {"cam00": 1, "cam01": 2, "cam02": 3}
    cams = read_cameras_json(tmp_path / "scene_a" / "cameras.json")
    assert [c[0] for c in cams] == [c.id for c in spec.cameras]
    checked = 0
    for cam_id, cam, entry in cams:
        assert entry["raw"]["convention"] == "unreal"
        # The exported pose equals the spec's (the engine reported what was set).
        np.testing.assert_allclose(
            cam.c2w, np.asarray(next(c for c in spec.cameras if c.id == cam_id).c2w).reshape(3, 4), atol=1e-4
        )
        depth = load_npz_array(tmp_path / "scene_a" / "depth" / f"{cam_id}.npz", "depth")[0]
        for m in level_markers(MAP):
            centre = ue_to_canonical(m.location)
            off = marker_offset(cam, depth, centre, m.radius / 100.0)
            if off is None:
                continue
            # The server drew the marker where our exported camera projects its centre.
            assert np.abs(off).max() < 1.0, (cam_id, m.name, off)
            # And the depth at the projected centre is the marker's front surface, in metres.
            (uv,), (z,) = cam.project(centre[None])
            iu, iv = int(uv[0]), int(uv[1])
            assert depth[iv, iu] == pytest.approx(z - m.radius / 100.0, abs=0.02)
            checked += 1
    assert checked >= 6
    # Sky is inf (UnrealCV's 65504 cm sky), the ground is finite.
    d0 = load_npz_array(tmp_path / "scene_a" / "depth" / "cam00.npz", "depth")
    assert np.isinf(d0).any() and np.isfinite(d0).any()


def test_every_capture_is_synchronized_with_the_spec(server, backend_for, tmp_path):
    spec = make_spec(num_frames=4)
    render(backend_for(server), spec, tmp_path / "s")
    lit = [c for c in server.captures if c.mode == "lit"]
    assert len(lit) == spec.num_frames * len(spec.cameras)
    for i, cap in enumerate(lit):
        k = i // len(spec.cameras)
        assert cap.paused, "captured while the world was running"
        for s in spec.subjects:
            state = cap.actors[f"SynCamSubject_{s.instance_id}"]
            xyz, yaw = s.trajectory.pose(k, spec.num_frames)
            np.testing.assert_allclose(state["location"], [xyz[0] * 100, -xyz[1] * 100, xyz[2] * 100], atol=1e-3)
            assert math.isclose(math.cos(math.radians(state["rotation"][1] + yaw)), 1.0, abs_tol=1e-6)
            assert state["anim_time"] == pytest.approx(s.animation_time(k, spec.fps), abs=1e-5)
            assert state["animation"] == s.animation.clip
    # Every capture of one frame saw one world state: the world was paused and nothing moved.
    caps = [c for c in server.captures]
    per_frame = len(caps) // spec.num_frames
    assert len(caps) == spec.num_frames * 3 * len(spec.cameras)
    for k in range(spec.num_frames):
        frame = caps[k * per_frame : (k + 1) * per_frame]
        assert len({c.world_time for c in frame}) == 1
        assert len({repr(c.actors) for c in frame}) == 1


@pytest.mark.parametrize("revision", ["2024", "head"])
def test_vbatch_is_measured_and_synchronization_does_not_depend_on_it(revision, backend_for, tmp_path):
    """Builds before 2026-03 accept `vbatch` but batch nothing; at head a frame runs in one engine tick."""
    with standin(revision=revision) as srv:
        spec = make_spec(num_frames=3, num_cameras=2)
        result, _ = render(backend_for(srv), spec, tmp_path / "s")
        assert result.info["server"]["vbatch"] == {"accepted": True, "batches": revision == "head"}
        lit = [c for c in srv.captures if c.mode == "lit"]
        assert len(lit) == spec.num_frames * 2 and all(c.paused for c in lit)
        if revision == "head":
            # The plugin's clock (GFrameCounter) proves each frame ran in one tick, and so do the captures.
            assert result.info["single_tick_frames"] == spec.num_frames
            assert all(lit[2 * k].tick == lit[2 * k + 1].tick for k in range(spec.num_frames))


def test_subject_masks_hold_instance_ids_where_the_server_drew_them(server, backend_for, tmp_path):
    spec = make_spec(num_frames=2)
    render(backend_for(server), spec, tmp_path / "s")
    for cam_id, cam, _ in read_cameras_json(tmp_path / "s" / "cameras.json"):
        ids = load_npz_array(tmp_path / "s" / "masks" / f"{cam_id}.npz", "ids")
        assert ids.shape == (2, H, W)
        assert set(np.unique(ids)) <= {0, 1, 2}
        for s in spec.subjects:
            for k in range(2):
                xyz, _ = s.trajectory.pose(k, spec.num_frames)
                r = SUBJECT_RADIUS_CM * s.scale / 100.0
                (uv,), (z,) = cam.project(np.array([[xyz[0], xyz[1], xyz[2] + r]]))
                if z > 0 and 0 <= uv[0] < W and 0 <= uv[1] < H:
                    # The body centre pixel carries the subject's id unless the other subject hides it.
                    assert ids[k, int(uv[1]), int(uv[0])] in (s.instance_id, 3 - s.instance_id)
                    assert (ids[k] == s.instance_id).sum() > 20


def test_dropped_connection_is_reconnected_and_scene_retried(backend_for, tmp_path, caplog):
    with standin(drop_after=80) as srv:
        spec = make_spec(num_frames=3)
        backend = backend_for(srv)
        with caplog.at_level(logging.WARNING):
            result, seen = render(backend, spec, tmp_path / "s")
        assert srv.drops == 1 and srv.connections >= 2
        assert result.info["retries"] == 1
        assert "retrying the scene" in caplog.text
        # The retry discarded the interrupted attempt's frames: every video has exactly num_frames.
        from syncam_data.video import probe

        for c in spec.cameras:
            assert probe(tmp_path / "s" / "videos" / f"{c.id}.mp4").num_frames == spec.num_frames
        assert load_npz_array(tmp_path / "s" / "depth" / "cam00.npz", "depth").shape[0] == spec.num_frames


@pytest.mark.parametrize(
    ("flavour", "spawn_method"),
    [("oss-5.2", "class_name"), ("unrealzoo-1.1", "spawn_from_path")],
)
def test_without_plugin_falls_back_with_a_warning(flavour, spawn_method, backend_for, tmp_path, caplog):
    with standin(flavour=flavour, plugin=False) as srv:
        spec = make_spec(num_frames=2, num_cameras=2)
        with caplog.at_level(logging.WARNING):
            result, _ = render(backend_for(srv), spec, tmp_path / "s")
        assert result.info["animation_sync"] == "approximate"
        assert result.info["spawn_method"] == spawn_method
        assert "animation sync is APPROXIMATE" in caplog.text
        lit = [c for c in srv.captures if c.mode == "lit"]
        # Transforms are still exact; animation time comes from the engine clock.
        s = spec.subjects[0]
        xyz, _ = s.trajectory.pose(1, spec.num_frames)
        np.testing.assert_allclose(
            lit[-1].actors["SynCamSubject_1"]["location"], [xyz[0] * 100, -xyz[1] * 100, xyz[2] * 100], atol=1e-3
        )
        assert lit[-1].actors["SynCamSubject_1"]["anim_time"] > lit[0].actors["SynCamSubject_1"]["anim_time"]
        # Spawned subjects are annotated (mask colour set), so they are in the depth and mask images.
        ids = np.concatenate(
            [load_npz_array(tmp_path / "s" / "masks" / f"{c.id}.npz", "ids").ravel() for c in spec.cameras]
        )
        assert (ids == 1).sum() > 20


def test_open_source_server_without_plugin_names_the_fix_for_unloaded_classes(backend_for, tmp_path):
    """`vset /objects/spawn` finds only loaded classes: a level that does not reference the subject cannot spawn it."""
    from syncam_data.render.unrealcv import SpawnError

    with standin(plugin=False) as srv:
        spec = make_spec(num_frames=1, subjects=1, level="/Game/Maps/Empty")
        with pytest.raises(
            SpawnError,
            match=r"'vset /objects/spawn BP_Walker_C' replied: error Can not find a class with name 'BP_Walker_C'\); "
            r"reference BP_Walker_C from the level /Game/Maps/Empty or install the SynCam plugin",
        ):
            backend_for(srv).render_scene(spec, SceneOutput(tmp_path / "s", fps=12))


def test_plugin_spawns_blueprint_asset_paths_that_no_level_references(backend_for, tmp_path):
    with standin() as srv:
        spec = make_spec(num_frames=1, subjects=1, level="/Game/Maps/Empty")
        sub = spec.subjects[0].model_copy(
            update={"asset": "/Game/Characters/Walker/BP_Walker.BP_Walker"}
        )  # the Blueprint, not its class
        result, _ = render(backend_for(srv), spec.model_copy(update={"subjects": [sub]}), tmp_path / "s")
        assert result.info["spawn_method"] == "plugin"
        assert srv.world.actors["SynCamSubject_1"].asset == WALKER


def test_a_subject_without_a_mesh_is_refused_because_it_would_be_missing_from_depth(backend_for, tmp_path):
    from syncam_data.render.unrealcv import SpawnError

    with standin() as srv:
        spec = make_spec(num_frames=1, subjects=1)
        sub = spec.subjects[0].model_copy(update={"asset": "/Game/Logic/BP_Trigger.BP_Trigger_C"})
        with pytest.raises(SpawnError, match="UnrealCV did not annotate SynCamSubject_1 .* no mesh component"):
            backend_for(srv).render_scene(
                spec.model_copy(update={"subjects": [sub]}), SceneOutput(tmp_path / "s", fps=12)
            )


def test_camera_ids_count_cameras_the_level_already_has(flavour, backend_for, tmp_path):
    """A level with placed cameras: new ids start after them (the count before each spawn), in both naming schemes."""
    with standin(
        flavour=flavour, levels={"/Game/Maps/Placed": LevelConfig(references=(WALKER,), placed_cameras=2)}
    ) as srv:
        spec = make_spec(num_frames=1, num_cameras=2, subjects=1, level="/Game/Maps/Placed")
        result, _ = render(backend_for(srv), spec, tmp_path / "s")
        assert result.info["cameras"] == {"cam00": 3, "cam01": 4}
        assert {c.camera for c in srv.captures} == {3, 4}
        assert srv.world.cameras[1].location == [0.0, 0.0, 0.0]  # the level's own cameras were left alone
        cams = read_cameras_json(tmp_path / "s" / "cameras.json")
        assert [e["raw"]["camera_id"] for _, _, e in cams] == [3, 4]
        assert all(e["raw"]["actor"].startswith("FusionCameraActor") for _, _, e in cams)


def test_require_plugin_fails_clearly_without_it(backend_for, tmp_path):
    with standin(plugin=False) as srv:
        backend = backend_for(srv, require_plugin=True)
        with pytest.raises(Exception, match="SynCam UE plugin"):
            backend.render_scene(make_spec(num_frames=1), SceneOutput(tmp_path / "s", fps=12))


def test_a_plugin_built_the_old_way_is_not_mistaken_for_a_working_one(backend_for, tmp_path, caplog):
    """Declared with `const FString&` and bool/double returns, vbp cannot call it although GetSynCamVersion answers."""
    from test_render_unrealcv_standin import OLD_PLUGIN_HEADER

    from syncam_data.render.unrealcv import CapabilityError

    with standin(plugin_header=OLD_PLUGIN_HEADER) as srv:
        with caplog.at_level(logging.WARNING):
            result, _ = render(backend_for(srv), make_spec(num_frames=2, num_cameras=1), tmp_path / "s")
        assert "SynCam UE plugin 1.0.0 is too old" in caplog.text
        assert result.info["animation_sync"] == "approximate" and result.versions["syncam_plugin"] == "absent"
        with pytest.raises(CapabilityError, match="too old: vbp cannot pass"):
            backend_for(srv, require_plugin=True).render_scene(
                make_spec(num_frames=1), SceneOutput(tmp_path / "t", fps=12)
            )
    # Declared with the new version number but still a by-reference parameter: the dry calls catch it.
    broken = OLD_PLUGIN_HEADER.replace('"1.0.0"', '"2.0.0"').replace(
        "double GetWorldTime() const;", "FString GetWorldClock() const;"
    )
    with standin(plugin_header=broken) as srv:
        with pytest.raises(
            CapabilityError,
            match=r"present but vbp cannot call .*SetActorTransformCm: vbp did not call the function .*\['ActorName'\] were skipped",
        ):
            backend_for(srv, require_plugin=True).render_scene(
                make_spec(num_frames=1), SceneOutput(tmp_path / "u", fps=12)
            )


def test_missing_capability_is_named(tmp_path):
    with standin(without=("vget /camera/[uint]/object_mask [str]",)) as srv:
        backend = get_backend("unrealcv", WorkerSlot(), port=srv.port, connect_timeout=5)
        with pytest.raises(Exception, match=r"capture object masks \('vget /camera/65535/object_mask bmp'\)"):
            backend.open()
        backend.close()


def test_unix_socket_and_cine_lens(tmp_path, backend_for):
    sock = str(tmp_path / "unrealcv_{port}.socket")
    with standin(unix_socket=sock, flavour="unrealzoo-1.1") as srv:
        spec = make_spec(num_frames=1, num_cameras=2, subjects=1)
        backend = backend_for(srv, unix_socket=sock, lens="cine", sensor_width_mm=23.76)
        assert backend.endpoint == srv.unix_socket
        result, _ = render(backend, spec, tmp_path / "s")
        assert result.info["lens"] == "cine"
        cams = read_cameras_json(tmp_path / "s" / "cameras.json")
        for (_, cam, _), c in zip(cams, spec.cameras):
            assert cam.fx == pytest.approx(c.fx, rel=1e-5)
        ue_cam = srv.world.cameras[1]
        assert ue_cam.cine_enabled and ue_cam.filmback == pytest.approx((23.76, 23.76 * H / W), rel=1e-6)
        assert ue_cam.focal_mm == pytest.approx(spec.cameras[0].fx * 23.76 / W, rel=1e-6)


def test_cine_lens_on_a_server_without_it_is_a_capability_error_and_auto_uses_the_fov(backend_for, tmp_path):
    from syncam_data.render.unrealcv import CapabilityError

    with standin() as srv:
        with pytest.raises(CapabilityError, match="no cine camera commands"):
            backend_for(srv, lens="cine").render_scene(make_spec(num_frames=1), SceneOutput(tmp_path / "a", fps=12))
        result, _ = render(backend_for(srv, lens="auto"), make_spec(num_frames=1, num_cameras=1), tmp_path / "b")
        assert result.info["lens"] == "fov" and srv.world.cameras[1].cine_enabled is False


def test_illumination_is_sent_per_camera_where_the_server_has_it(backend_for, tmp_path, caplog):
    with standin() as srv:
        result, _ = render(
            backend_for(srv, illumination="lumen"), make_spec(num_frames=1, num_cameras=2), tmp_path / "a"
        )
        assert result.info["illumination"] == "lumen"
        assert [c.illumination for c in srv.world.cameras[1:]] == ["lumen", "lumen"]
    with standin(without=("vset /camera/[uint]/illumination [str]",)) as srv:
        with caplog.at_level(logging.WARNING):
            result, _ = render(
                backend_for(srv, illumination="lumen"), make_spec(num_frames=1, num_cameras=1), tmp_path / "b"
            )
        assert result.info["illumination"] == "server default"
        assert "cannot set a camera's illumination" in caplog.text


def test_ground_that_reads_as_sky_is_recorded_and_warned(backend_for, tmp_path, caplog):
    """A Landscape ground is never annotated: UnrealCV's depth shows sky there; scene.json and the log say so."""
    with standin(levels={"/Game/Maps/Hills": LevelConfig(ground="landscape", references=(WALKER,))}) as srv:
        with caplog.at_level(logging.WARNING):
            result, _ = render(
                backend_for(srv), make_spec(num_frames=2, subjects=1, level="/Game/Maps/Hills"), tmp_path / "s"
            )
        depth = result.info["depth"]
        assert depth["ground_reads_as_sky"] is True
        assert all(f > 0.9 for f in depth["ground_sky_fraction"].values())
        assert "the ground reads as sky in 3 of 3 cameras" in caplog.text and "static-mesh ground" in caplog.text
    with standin() as srv:
        result, _ = render(backend_for(srv), make_spec(num_frames=1), tmp_path / "t")
        assert result.info["depth"]["ground_reads_as_sky"] is False
        assert set(result.info["depth"]["sky_fraction"]) == {"cam00", "cam01", "cam02"}
        assert all(0.0 <= f < 0.5 for f in result.info["depth"]["sky_fraction"].values())


@pytest.mark.parametrize(
    ("fault", "what"),
    [({"fault_nudge_after": 4}, "moved during the captures"), ({"fault_unpause_after": 4}, "world time moved")],
)
def test_a_frame_where_something_moved_is_captured_again(fault, what, backend_for, tmp_path, caplog):
    with standin(**fault) as srv:
        spec = make_spec(num_frames=3, num_cameras=2)
        with caplog.at_level(logging.WARNING):
            result, _ = render(backend_for(srv), spec, tmp_path / "s")
        assert result.info["recaptured_frames"] == 1
        assert what in caplog.text and "capturing the frame again" in caplog.text
        # The accepted frames show the spec: the first subject where the trajectory puts it at frame 0.
        from syncam_data.video import probe

        assert probe(tmp_path / "s" / "videos" / "cam00.mp4").num_frames == spec.num_frames
        # The last captures of each frame (the accepted ones) show the spec's state, with the world paused.
        lit = [c for c in srv.captures if c.mode == "lit"]
        assert len(lit) > spec.num_frames * 2
        s = spec.subjects[0]
        for k in range(spec.num_frames):
            last = [
                c
                for c in lit
                if c.actors["SynCamSubject_1"]["anim_time"] == pytest.approx(s.animation_time(k, spec.fps))
            ][-2:]
            xyz, _ = s.trajectory.pose(k, spec.num_frames)
            for c in last:
                np.testing.assert_allclose(
                    c.actors["SynCamSubject_1"]["location"], [xyz[0] * 100, -xyz[1] * 100, xyz[2] * 100], atol=1e-3
                )
                assert c.paused


def test_a_map_that_does_not_exist_is_reported(backend_for, tmp_path):
    from syncam_data.render.unrealcv import UnrealCVError

    with standin() as srv:
        backend = backend_for(srv, level_timeout=1)
        with pytest.raises(UnrealCVError, match=r"level '/Levels/Typo' did not load: the engine is on 'Default'"):
            backend.render_scene(make_spec(num_frames=1, level="/Levels/Typo"), SceneOutput(tmp_path / "s", fps=12))


def test_rejects_specs_unreal_cannot_render(server, backend_for, tmp_path):
    backend = backend_for(server)
    spec = make_spec(num_frames=1)
    bad = spec.model_copy(update={"background": BackgroundSpec(id="p", kind="procedural", asset="plane")})
    with pytest.raises(ValueError, match="unreal_level"):
        backend.render_scene(bad, SceneOutput(tmp_path / "a", fps=12))
    cam = spec.cameras[0].model_copy(update={"cx": W / 2 + 5})
    with pytest.raises(ValueError, match="centred principal point"):
        backend.render_scene(spec.model_copy(update={"cameras": [cam]}), SceneOutput(tmp_path / "b", fps=12))


def _free_port_pair() -> int:
    """A base port p with p and p+1 free (for two launched instances)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def test_launch_one_engine_per_worker_and_restart_a_dead_one(tmp_path):
    """--launch with K workers: each slot starts its own instance (the stand-in script as the "engine")."""
    import os
    import signal

    script = Path(__file__).resolve().parent / "unrealcv_standin.py"
    launch = f"{sys.executable} {script} -cvport {{port}}"
    base = _free_port_pair()
    backends = [
        get_backend("unrealcv", WorkerSlot(i, 2), port=[base], launch=launch, connect_timeout=30, timeout=20)
        for i in range(2)
    ]
    try:
        for b in backends:
            b.open()
        assert [b.engine.port for b in backends] == [base, base + 1]
        for i, b in enumerate(backends):
            spec = make_spec(scene_id=f"w{i}", num_frames=2, num_cameras=2, subjects=1)
            render(b, spec, tmp_path / spec.scene_id)
            assert len(read_cameras_json(tmp_path / spec.scene_id / "cameras.json")) == 2
        # The engine of worker 0 dies: the next scene reconnects to a freshly started one.
        dead = backends[0].engine.proc
        os.killpg(dead.pid, signal.SIGKILL)
        dead.wait(timeout=10)
        result, _ = render(
            backends[0], make_spec(scene_id="again", num_frames=1, num_cameras=1, subjects=1), tmp_path / "again"
        )
        assert result.info["retries"] == 1
        assert backends[0].engine.proc is not None and backends[0].engine.proc.pid != dead.pid
    finally:
        procs = [b.engine.proc for b in backends]
        for b in backends:
            b.close()
    assert all(p.poll() is not None for p in procs if p is not None)


def test_one_shot_clip_holds_its_last_pose(backend_for, tmp_path):
    """animation.loop = False: the plugin clamps to the clip length and the backend accepts exactly that."""
    with standin() as server:
        spec = make_spec(num_frames=4, num_cameras=1, subjects=1)
        sub = spec.subjects[0]
        sub = sub.model_copy(update={"animation": sub.animation.model_copy(update={"loop": False, "speed": 12.0})})
        spec = spec.model_copy(update={"subjects": [sub]})
        render(backend_for(server), spec, tmp_path / "s")
        from unrealcv_standin import clip_length

        length = clip_length(sub.animation.clip)
        times = [c.actors["SynCamSubject_1"]["anim_time"] for c in server.captures if c.mode == "lit"]
        want = [min(sub.animation_time(k, spec.fps), length) for k in range(spec.num_frames)]
        assert times == pytest.approx(want, abs=1e-5)
        assert times[-1] == pytest.approx(length, abs=1e-5)  # the test really reaches the clamp


def test_slow_capture_within_timeout_succeeds_and_beyond_it_fails_clearly(backend_for, tmp_path):
    spec = make_spec(num_frames=1, num_cameras=1, subjects=1)
    with standin(capture_delay=0.1) as srv:  # 0.1 s per image, timeout 5 s per reply
        render(backend_for(srv, timeout=5), spec, tmp_path / "ok")
        assert is_complete(tmp_path / "ok")
    with standin(capture_delay=1.0) as srv:  # 1 s per image, timeout 0.6 s per reply
        backend = backend_for(srv, timeout=0.6, retries=1)
        with pytest.raises(
            ConnectionError, match=r"lost the UnrealCV server .* 2 times; last: .*no reply within 0.6 s"
        ):
            backend.render_scene(spec, SceneOutput(tmp_path / "slow", fps=12))


def is_complete(folder: Path) -> bool:
    from syncam_data.render.output import is_complete_scene

    return is_complete_scene(folder)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            {"fault_anim_offset": 0.02},
            r"frame 0: .*SynCamSubject_1 animation time is 0\.020000 s, expected 0\.000000 s",
        ),
        ({"fault_camera_offset_cm": 1.0}, r"camera cam00 \(UE camera 1\): engine reports location .* cm off\)"),
    ],
)
def test_reply_checks_catch_an_engine_that_does_not_do_what_was_set(fault, message, backend_for, tmp_path):
    from syncam_data.render.unrealcv import FrameSyncError

    with standin(**fault) as srv:
        backend = backend_for(srv)
        with pytest.raises(FrameSyncError, match=message):
            backend.render_scene(
                make_spec(num_frames=2, num_cameras=1, subjects=1), SceneOutput(tmp_path / "s", fps=12)
            )


def test_server_that_never_greets_times_out_instead_of_hanging():
    import time

    with StandinServer(silent=True) as srv:
        backend = get_backend("unrealcv", WorkerSlot(), port=srv.port, connect_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="no answer within 1 s"):
            backend.open()
        assert time.monotonic() - t0 < 8


def test_a_second_backend_waits_for_the_first_to_disconnect(backend_for):
    with standin() as srv:
        first = backend_for(srv)
        second = get_backend("unrealcv", WorkerSlot(), port=srv.port, connect_timeout=1.0)
        with pytest.raises(ConnectionError, match="no answer within 1 s"):
            second.open()
        first.close()
        second.connect_timeout = 10
        second.open()
        assert second.server.version == "1.0.1"
        second.close()


def test_png_and_bmp_decode_to_the_same_rgb_and_png_renders(backend_for, tmp_path):
    from unrealcv_standin import World, encode_image

    from syncam_data.render.unrealcv_protocol import decode_image

    world = World("oss-5.2", {}, {}, plugin=False)
    world.load_level(MAP)
    cam = world.cameras[0]
    cam.width, cam.height, cam.location, cam.rotation = W, H, [-400.0, 50.0, 150.0], [-10.0, -5.0, 0.0]
    rgb = world.render(cam)[0]
    np.testing.assert_array_equal(decode_image(encode_image(rgb, "bmp"), "bmp"), rgb)
    np.testing.assert_array_equal(decode_image(encode_image(rgb, "png"), "png"), rgb)  # RGBA PNG, alpha dropped
    with standin() as server:
        result, _ = render(
            backend_for(server, image_format="png"), make_spec(num_frames=1, num_cameras=1, subjects=1), tmp_path / "s"
        )
        assert result.info["image_format"] == "png"
        assert any(c.mode == "lit" for c in server.captures)


def test_point_depth_is_converted_to_plane_depth():
    import io as _io

    from syncam_data.render.unrealcv_protocol import decode_depth

    cam = Camera(W, H, 90.0, 90.0, W / 2, H / 2)
    g = cam.pixel_grid()
    plane_m = np.full((H, W), 5.0)
    ray_cm = plane_m * 100 * np.sqrt(1 + ((g[..., 0] - cam.cx) / cam.fx) ** 2 + ((g[..., 1] - cam.cy) / cam.fy) ** 2)
    ray_cm[0, 0] = 65504.0  # the sky
    buf = _io.BytesIO()
    np.save(buf, ray_cm.astype(np.float32))
    d = decode_depth(buf.getvalue(), cam, "point", "test")
    assert np.isinf(d[0, 0])
    np.testing.assert_allclose(d.ravel()[1:], 5.0, rtol=1e-5)
    d_plane = decode_depth(buf.getvalue(), cam, "plane", "test")
    assert d_plane[H // 2, 0] > 5.1  # read as plane depth, the ray distance at the edge is too far


def test_an_unrealcv_client_older_than_1_3_is_refused(monkeypatch):
    import unrealcv

    import syncam_data.render.unrealcv_server as backend_module

    monkeypatch.setattr(backend_module, "_CLIENT_CLASS", None)
    monkeypatch.delattr(unrealcv.Client, "RECONNECT_ATTEMPTS")  # unrealcv 1.2.0 has no RECONNECT_* attributes
    with pytest.raises(backend_module.CapabilityError, match=r"unrealcv>=1\.3,<2"):
        backend_module._client_class()

"""The Blender backend on tiny scenes: camera/pixel consistency, passes, determinism, user assets, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy", reason="the Blender backend needs bpy (pip install -e '.[blender]')")

from syncam_data.cameras import (  # noqa: E402
    Camera,
    c2w_to_blender,
    read_cameras_json,  # noqa: E402
)
from syncam_data.render.base import get_backend  # noqa: E402
from syncam_data.render.blender_scene import BlenderAssetError  # noqa: E402
from syncam_data.render.output import SceneOutput, load_npz_array, reprojection_check  # noqa: E402
from syncam_data.scenes import (
    AnimationSpec,
    SamplerConfig,
    SceneSpec,
    SubjectSpec,
    TrajectorySpec,
    load_catalog,
    sample_scene,
)  # noqa: E402
from syncam_data.video import decode  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]

W, H = 96, 64


def _tiny_spec(index: int = 0, cameras: int = 3, frames: int = 2, **kw) -> SceneSpec:
    opt = SamplerConfig(
        **{
            "num_cameras": cameras,
            "num_frames": frames,
            "width": W,
            "height": H,
            "subjects": (2, 2),
            "distance": (4.0, 6.0),
            "elevation": (5.0, 35.0),
            **kw,
        }
    )
    return sample_scene(load_catalog(), index, seed=11, options=opt)


def _off_centre(spec: SceneSpec) -> SceneSpec:
    """Move every principal point off the image centre: the backend must honour cx, cy through lens shift."""
    d = spec.model_dump(mode="json")
    for i, c in enumerate(d["cameras"]):
        c["cx"] += 3.0 + i
        c["cy"] -= 2.0 + 0.5 * i
    return SceneSpec.model_validate(d)


def _render(spec: SceneSpec, folder: Path, samples: int = 4) -> dict:
    backend = get_backend("blender", samples=samples)
    out = SceneOutput(folder, spec.fps)
    with backend:
        result = backend.render_scene(spec, out)
    out.finish({"spec": spec.model_dump(mode="json"), "timings": result.timings})
    return result.timings


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    spec = _off_centre(_tiny_spec())
    folder = tmp_path_factory.mktemp("blender") / spec.scene_id
    _render(spec, folder)
    return spec, folder


def test_cameras_are_consistent_with_pixels(scene):
    spec, folder = scene
    res = reprojection_check(folder)
    assert len(res) == 6
    for pair, r in res.items():
        assert r["consistent"] > 300, pair  # the views overlap
        assert r["agree"] > 0.95, (pair, r)
        assert r["depth_err"] < 0.02, (pair, r)
        assert r["colour_err"] < 20, (pair, r)
    # control: the same pixels with the principal point the backend would use if it ignored cx/cy
    centred = [
        (cid, Camera(cam.width, cam.height, cam.fx, cam.fy, W / 2, H / 2, cam.c2w))
        for cid, cam, _ in read_cameras_json(folder / "cameras.json")
    ]
    bad = reprojection_check(folder, cameras=centred)
    assert min(r["agree"] for r in bad.values()) < 0.93 or max(r["depth_err"] for r in bad.values()) > 0.02


def test_cameras_json_matches_spec_and_records_blender_pose(scene):
    spec, folder = scene
    cams = read_cameras_json(folder / "cameras.json")
    assert [c[0] for c in cams] == [c.id for c in spec.cameras]
    for (_, cam, entry), c in zip(cams, spec.cameras):
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((c.fx, c.fy, c.cx, c.cy))
        assert np.allclose(cam.c2w.reshape(-1), c.c2w)
        raw = entry["raw"]
        assert raw["convention"] == "blender"
        assert np.allclose(np.array(raw["matrix_world"]).reshape(4, 4)[:3], c2w_to_blender(cam.c2w), atol=1e-5)
        assert raw["lens_mm"] == pytest.approx(c.fx * raw["sensor_width_mm"] / W)


def test_depth_and_instance_passes(scene):
    spec, folder = scene
    ids_seen: set[int] = set()
    any_sky = False
    centre = np.array(spec.center)
    for c in spec.cameras:
        depth = load_npz_array(folder / "depth" / f"{c.id}.npz", "depth").astype(np.float32)
        ids = load_npz_array(folder / "masks" / f"{c.id}.npz", "ids")
        video = decode(folder / "videos" / f"{c.id}.mp4")
        assert depth.shape == ids.shape == (spec.num_frames, H, W) and video.shape == (spec.num_frames, H, W, 3)
        assert set(np.unique(ids)) <= {0, 1, 2}
        ids_seen |= set(np.unique(ids).tolist())
        any_sky |= bool(np.isinf(depth).any())
        assert np.isfinite(depth[ids > 0]).all()  # subjects are surfaces
        assert (depth[np.isfinite(depth)] > 0).all()
        # subject pixels lie around the scene centre: z-depth within the subjects' area of the centre's depth
        centre_z = c.camera().project(centre[None])[1][0]
        subj = depth[ids > 0]
        if subj.size:
            assert np.abs(np.median(subj) - centre_z) < 3.0
    assert ids_seen == {0, 1, 2}, "both subjects visible with their instance ids"
    assert any_sky, "the sky (empty) has infinite depth"


def test_same_spec_renders_identical_frames(tmp_path):
    spec = _tiny_spec(index=3, cameras=2, frames=2)
    _render(spec, tmp_path / "a", samples=2)
    _render(spec, tmp_path / "b", samples=2)
    for c in spec.cameras:
        assert (tmp_path / "a" / "videos" / f"{c.id}.mp4").read_bytes() == (
            tmp_path / "b" / "videos" / f"{c.id}.mp4"
        ).read_bytes()
        for sub, key in (("depth", "depth"), ("masks", "ids")):
            a = load_npz_array(tmp_path / "a" / sub / f"{c.id}.npz", key)
            b = load_npz_array(tmp_path / "b" / sub / f"{c.id}.npz", key)
            assert np.array_equal(a, b)
    # and the frames do change over time and between cameras (a frozen or duplicated render would pass the above)
    v0 = decode(tmp_path / "a" / "videos" / f"{spec.cameras[0].id}.mp4").astype(int)
    v1 = decode(tmp_path / "a" / "videos" / f"{spec.cameras[1].id}.mp4").astype(int)
    assert np.abs(v0 - v1).mean() > 5


def _export_box(path: Path, kind: str) -> None:
    """A tiny animated asset made with bpy: a box that slides 1 m along +X within 1/6 s, in an action 'slide'."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0, 0, 0.5))
    cube = bpy.context.object
    cube.name = "Box"
    cube.keyframe_insert("location", frame=1)
    cube.location = (1.0, 0, 0.5)
    cube.keyframe_insert("location", frame=5)
    cube.animation_data.action.name = "slide"
    if kind == "gltf":
        bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", export_animations=True)
    elif kind == "fbx":
        bpy.ops.export_scene.fbx(filepath=str(path), bake_anim=True)  # the importer names it "Box|Box|slide"
    else:
        bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)


@pytest.mark.parametrize("kind,ext", [("gltf", "glb"), ("fbx", "fbx"), ("blend", "blend")])
def test_imported_subject_plays_its_clip(tmp_path, kind, ext):
    asset = tmp_path / f"box.{ext}"
    _export_box(asset, kind)
    base = _tiny_spec(index=1, cameras=2, frames=3)
    subj = SubjectSpec(
        instance_id=1,
        asset_id="box",
        kind=kind,
        asset=str(asset),
        description="a box",
        animation=AnimationSpec(id="slide", clip="slide", description="slides", loop=False),
        trajectory=TrajectorySpec(type="static", start=(0.0, 0.0)),
        params={"forward_axis": "+X"},
    )
    spec = base.model_copy(update={"subjects": [subj], "num_frames": 3, "fps": 12.0})
    _render(spec, tmp_path / "s", samples=1)
    ids = load_npz_array(tmp_path / "s" / "masks" / f"{spec.cameras[0].id}.npz", "ids")
    assert set(np.unique(ids)) == {0, 1}, "the imported mesh carries instance id 1"
    # the box's mask moves between the first and the last frame (its clip plays)
    centroids = [np.argwhere(ids[k] == 1).mean(0) for k in (0, 2)]
    assert np.linalg.norm(centroids[0] - centroids[1]) > 1.0, centroids


def test_image_background(tmp_path):
    import cv2

    sky = np.zeros((64, 128, 3), np.uint8)
    sky[:32] = (255, 80, 0)  # BGR: a blue upper half, a dark lower half (equirectangular)
    cv2.imwrite(str(tmp_path / "sky.png"), sky)
    base = _tiny_spec(index=0, cameras=1, frames=1, elevation=(0.0, 0.0))
    bg = base.background.model_copy(
        update={"id": "bluesky", "kind": "image", "asset": str(tmp_path / "sky.png"), "params": {"ground": False}}
    )
    spec = base.model_copy(update={"background": bg, "subjects": []})
    _render(spec, tmp_path / "s", samples=1)
    video = decode(tmp_path / "s" / "videos" / f"{spec.cameras[0].id}.mp4")[0].astype(int)
    depth = load_npz_array(tmp_path / "s" / "depth" / f"{spec.cameras[0].id}.npz", "depth")[0]
    assert np.isinf(depth).all(), "no ground: every pixel sees the environment"
    top = video[:10].reshape(-1, 3).mean(0)
    assert top[2] > top[0] + 50, f"the upper half of the environment image is blue, got {top}"


def test_broken_assets_raise_errors_naming_them(tmp_path):
    spec = _tiny_spec(index=0, cameras=1, frames=1)
    missing = tmp_path / "nowhere" / "hero.glb"
    bad_subject = spec.subjects[0].model_copy(update={"kind": "gltf", "asset": str(missing), "asset_id": "hero"})
    backend = get_backend("blender", samples=1)
    with backend:
        with pytest.raises(BlenderAssetError, match=r"subject 'hero'.*nowhere/hero.glb.*does not exist"):
            backend.render_scene(
                spec.model_copy(update={"subjects": [bad_subject]}), SceneOutput(tmp_path / "o1", spec.fps)
            )
        corrupt = tmp_path / "corrupt.fbx"
        corrupt.write_bytes(b"not an fbx file at all")
        bad_subject = bad_subject.model_copy(update={"kind": "fbx", "asset": str(corrupt)})
        with pytest.raises(BlenderAssetError, match=r"subject 'hero'.*corrupt.fbx"):
            backend.render_scene(
                spec.model_copy(update={"subjects": [bad_subject]}), SceneOutput(tmp_path / "o2", spec.fps)
            )
        bad_bg = spec.background.model_copy(update={"kind": "hdri", "asset": str(tmp_path / "sky.hdr"), "id": "night"})
        with pytest.raises(BlenderAssetError, match=r"background 'night'.*sky.hdr"):
            backend.render_scene(spec.model_copy(update={"background": bad_bg}), SceneOutput(tmp_path / "o3", spec.fps))
        bad_gen = spec.background.model_copy(update={"asset": "moonbase"})
        with pytest.raises(BlenderAssetError, match="moonbase"):
            backend.render_scene(
                spec.model_copy(update={"background": bad_gen}), SceneOutput(tmp_path / "o4", spec.fps)
            )
    assert json.dumps(spec.model_dump(mode="json"))  # the spec itself stays serializable

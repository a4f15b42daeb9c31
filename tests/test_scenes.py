"""Scene catalog loading/validation, the seeded SceneSpec sampler, captions and spec files (no rendering)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from syncam_data.scenes import (
    SamplerConfig,
    SceneSpec,
    SpecError,
    build_caption,
    load_catalog,
    read_specs_jsonl,
    sample_scene,
    sample_scenes,
    write_specs_jsonl,
)

SMALL = SamplerConfig(num_cameras=6, num_frames=20, width=96, height=64)


@pytest.fixture(scope="module")
def demo():
    return load_catalog()


def test_builtin_catalog_is_valid_and_procedural(demo):
    assert demo.name == "demo" and not demo.problems
    assert len(demo.backgrounds) >= 3 and len(demo.subjects) >= 2
    assert all(b.kind == "procedural" for b in demo.backgrounds)
    for s in demo.subjects:
        anims = demo.subject_animations(s)
        assert len(anims) >= 3, f"{s.id} needs several animations"
        assert all(a.description for a in anims)


def test_sampling_is_deterministic_and_prefix_stable(demo):
    a = sample_scenes(demo, 3, seed=7, options=SMALL)
    b = sample_scenes(demo, 5, seed=7, options=SMALL)
    assert [s.to_json() for s in a] == [s.to_json() for s in b[:3]]
    assert [s.scene_id for s in b] == [f"scene_{i:05d}" for i in range(5)]
    # --start continues the same sequence
    assert sample_scenes(demo, 2, seed=7, options=SMALL, start=3)[0].to_json() == b[3].to_json()
    c = sample_scenes(demo, 3, seed=8, options=SMALL)
    assert [s.to_json() for s in a] != [s.to_json() for s in c]


def test_sampled_rig_follows_the_recipe(demo):
    for i in range(8):
        spec = sample_scene(demo, i, seed=1)
        assert len(spec.cameras) == 36 and spec.num_frames == 100 and (spec.height, spec.width) == (480, 720)
        center = np.array(spec.center)
        assert 0.5 < center[2] < 1.2  # slightly above the ground
        for c in spec.cameras:
            cam = c.camera()
            offset = cam.position - center
            dist = np.linalg.norm(offset)
            assert 3.5 - 1e-6 <= dist <= 9.0 + 1e-6
            elev = math.degrees(math.asin(offset[2] / dist))
            assert -1e-6 <= elev <= 45 + 1e-6
            # looks at the centre: optical axis points from the camera to the centre
            assert np.dot(cam.forward, -offset / dist) == pytest.approx(1.0, abs=1e-9)
            assert abs(np.linalg.det(cam.R) - 1) < 1e-9
            # the centre projects to the principal point
            uv, z = cam.project(center[None])
            assert np.allclose(uv[0], [cam.cx, cam.cy]) and z[0] > 0


def test_subjects_stay_near_centre_and_apart(demo):
    opt = SamplerConfig(num_cameras=1, num_frames=100)
    counts = set()
    for i in range(30):
        spec = sample_scene(demo, i, seed=3, options=opt)
        counts.add(len(spec.subjects))
        assert 1 <= len(spec.subjects) <= 2
        assert [s.instance_id for s in spec.subjects] == list(range(1, len(spec.subjects) + 1))
        paths = [np.array([s.trajectory.pose(f, 100)[0][:2] for f in range(100)]) for s in spec.subjects]
        for p in paths:
            assert np.linalg.norm(p, axis=1).max() <= opt.area_radius + 1e-6
        if len(paths) == 2:
            a, b = spec.subjects
            gap = np.linalg.norm(paths[0] - paths[1], axis=1).min()
            assert gap >= a.radius * a.scale + b.radius * b.scale - 1e-6
        for s in spec.subjects:
            travelled = np.linalg.norm(
                np.diff(np.array([s.trajectory.pose(f, 100)[0][:2] for f in range(100)]), axis=0), axis=1
            ).sum()
            expect = s.animation.travel_speed * s.scale * 100 / spec.fps * s.animation.speed
            assert travelled == pytest.approx(expect, rel=0.02, abs=1e-6)
    assert counts == {1, 2}


def test_caption_is_built_from_descriptions(demo):
    spec = sample_scene(demo, 0, seed=0, options=SMALL)
    cap = spec.caption
    assert cap == build_caption(spec)
    assert spec.background.description in cap
    for s in spec.subjects:
        assert f"{s.description} {s.animation.description}" in cap
    two = next(sample_scene(demo, i, 0, SMALL) for i in range(50) if len(sample_scene(demo, i, 0, SMALL).subjects) == 2)
    assert " and " in two.caption and two.caption.endswith(two.background.description)


def _write_catalog(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cat.yaml"
    p.write_text(text)
    return p


BAD_CATALOG = """
name: mixed
animations:
  - {id: walk, clip: walk, description: walks, travel_speed: 1.0}
backgrounds:
  - {id: good_bg, kind: procedural, asset: outdoor, description: in a field}
  - {id: bad_bg, kind: volcano, asset: x, description: nowhere}
  - {id: missing_hdri, kind: hdri, asset: skies/none.hdr, description: under a sky}
subjects:
  - {id: bot, kind: procedural, asset: biped, description: a robot, animations: [walk]}
  - {id: ghost, kind: procedural, asset: biped, description: a ghost, animations: [float]}
  - {id: bot, kind: procedural, asset: biped, description: a twin, animations: [walk]}
  - {id: "../escape", kind: gltf, asset: a.glb, description: bad id, animations: [walk]}
"""


def test_invalid_catalog_entries_are_named_and_skipped(tmp_path, caplog):
    path = _write_catalog(tmp_path, BAD_CATALOG)
    cat = load_catalog(path)
    assert [b.id for b in cat.backgrounds] == ["good_bg", "missing_hdri"]
    assert [s.id for s in cat.subjects] == ["bot"]
    text = "\n".join(cat.problems)
    assert len(cat.problems) == 4
    assert "backgrounds[1] (id 'bad_bg')" in text and "kind" in text
    assert "subject 'ghost'" in text and "float" in text
    assert "subjects[2] (id 'bot'): duplicate id" in text
    assert "../escape" in text
    assert all(str(path) in p for p in cat.problems)
    # a missing file asset is kept (another node may have it) but resolved and warned about
    hdri = cat.backgrounds[1]
    assert hdri.asset == str((tmp_path / "skies/none.hdr").resolve())
    assert "does not exist" in caplog.text and "missing_hdri" in caplog.text
    with pytest.raises(SpecError, match="bad_bg"):
        load_catalog(path, strict=True)


def test_unreadable_catalogs_give_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot read catalog"):
        load_catalog(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_catalog(_write_catalog(tmp_path, "backgrounds: [ {id: x"))
    with pytest.raises(SpecError, match="no valid subjects"):
        load_catalog(
            _write_catalog(tmp_path, "backgrounds:\n  - {id: a, kind: procedural, asset: outdoor}\nsubjects: []\n")
        )
    with pytest.raises(SpecError, match="unknown top-level keys"):
        load_catalog(_write_catalog(tmp_path, "backgroundz: []\n"))


def test_spec_jsonl_round_trip_and_bad_lines(tmp_path, demo):
    specs = sample_scenes(demo, 2, seed=0, options=SMALL)
    path = tmp_path / "specs.jsonl"
    write_specs_jsonl(specs, path)
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["cameras"][0]["c2w"][0] = 5.0  # not a rotation
    path.write_text(lines[0] + "\n# a comment\n\n" + json.dumps(broken) + "\n{not json\n")
    got = read_specs_jsonl(path)
    assert isinstance(got[0], SceneSpec) and got[0].to_json() == specs[0].to_json()
    assert isinstance(got[1], SpecError) and f"{path}:4" in str(got[1]) and "rotation" in str(got[1])
    assert isinstance(got[2], SpecError) and f"{path}:5" in str(got[2])


def test_spec_rejects_inconsistent_cameras(demo):
    spec = sample_scene(demo, 0, seed=0, options=SMALL)
    d = spec.model_dump(mode="json")
    d["cameras"][1]["width"] = 100
    d["cameras"][1]["cx"] = 50
    with pytest.raises(SpecError, match="cam01 is 100x64"):
        SceneSpec.from_json(json.dumps(d))

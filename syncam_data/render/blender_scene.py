"""What a Blender scene holds: background, ground, props, sky and sun, user assets, subjects and their animation.

The content builders of the Blender backend (``render/blender.py`` renders;
this module fills the scene). Every function takes the ``bpy`` module from the
backend, which is the one place ``bpy`` is imported.

- backgrounds: procedural (a ground, props, a gradient sky and a sun), an HDRI
  or image, a ``.blend``, glTF or FBX file;
- subjects: the procedural articulated figures (biped, quadruped) posed per
  frame, or imported assets playing their animation clip; every mesh of
  subject i has ``pass_index = i`` (the instance-id pass).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from syncam_data.scenes import BackgroundSpec, SceneSpec, SubjectSpec

log = logging.getLogger(__name__)

_FORWARD_YAW = {"+X": 0.0, "+Y": -90.0, "-X": 180.0, "-Y": 90.0}


class BlenderAssetError(RuntimeError):
    """A user asset that cannot be loaded; the message names the file and the problem."""


# --- materials -----------------------------------------------------------------------------------


def _material(bpy: Any, name: str, color: Any, roughness: float = 0.6) -> Any:
    m = bpy.data.materials.new(name)
    bsdf = m.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*[float(v) for v in color][:3], 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return m


def _ground_material(bpy: Any, name: str, c1: Any, c2: Any, tiles: bool) -> Any:
    """Two-colour procedural ground: a checker (tiles) or noise pattern, so views have texture to match."""
    m = _material(bpy, name, c1, roughness=0.9)
    nt = m.node_tree
    bsdf = nt.nodes["Principled BSDF"]
    coord = nt.nodes.new("ShaderNodeTexCoord")
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["A"].default_value = (*c1, 1.0)
    mix.inputs["B"].default_value = (*c2, 1.0)
    if tiles:
        tex = nt.nodes.new("ShaderNodeTexChecker")
        tex.inputs["Scale"].default_value = 1.0
        nt.links.new(coord.outputs["Object"], tex.inputs["Vector"])
        nt.links.new(tex.outputs["Fac"], mix.inputs["Factor"])
    else:
        tex = nt.nodes.new("ShaderNodeTexNoise")
        tex.inputs["Scale"].default_value = 0.6
        tex.inputs["Detail"].default_value = 6.0
        nt.links.new(coord.outputs["Object"], tex.inputs["Vector"])
        ramp = nt.nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].position, ramp.color_ramp.elements[1].position = 0.35, 0.65
        nt.links.new(tex.outputs["Fac"], ramp.inputs["Fac"])
        nt.links.new(ramp.outputs["Color"], mix.inputs["Factor"])
    nt.links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    return m


def _mesh_object(
    bpy: Any,
    scene: Any,
    name: str,
    mesh: Any,
    mat: Any | None,
    location: Any = (0, 0, 0),
    parent: Any = None,
    pass_index: int = 0,
) -> Any:
    obj = bpy.data.objects.new(name, mesh)
    if mat is not None and not mesh.materials:
        mesh.materials.append(mat)
    elif mat is not None:
        obj.material_slots[0].link = "OBJECT"
        obj.material_slots[0].material = mat
    obj.location = location
    obj.parent = parent
    obj.pass_index = pass_index
    scene.collection.objects.link(obj)
    return obj


class _Meshes:
    """Unit primitives made once per scene and shared by many objects (linked duplicates)."""

    def __init__(self, bpy: Any) -> None:
        self.bpy = bpy
        self.cache: dict[str, Any] = {}

    def get(self, kind: str) -> Any:
        if kind not in self.cache:
            self.cache[kind] = self._make(kind)
        return self.cache[kind]

    def _make(self, kind: str) -> Any:
        bpy = self.bpy
        ops = {
            "cube": lambda: bpy.ops.mesh.primitive_cube_add(size=1.0),
            "sphere": lambda: bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, segments=16, ring_count=8),
            "cylinder": lambda: bpy.ops.mesh.primitive_cylinder_add(radius=0.5, depth=1.0, vertices=12),
            "cone": lambda: bpy.ops.mesh.primitive_cone_add(radius1=0.5, radius2=0.0, depth=1.0, vertices=12),
            "ico": lambda: bpy.ops.mesh.primitive_ico_sphere_add(radius=0.5, subdivisions=1),
            "plane": lambda: bpy.ops.mesh.primitive_plane_add(size=1.0),
        }
        ops[kind]()
        obj = bpy.context.object
        mesh = obj.data
        mesh.name = f"unit_{kind}"
        mesh.materials.append(None)  # one slot; each object links its own material to it
        bpy.data.objects.remove(obj)
        return mesh


def _scaled(
    bpy: Any,
    scene: Any,
    meshes: _Meshes,
    kind: str,
    name: str,
    size: Any,
    mat: Any,
    location: Any,
    parent: Any = None,
    pass_index: int = 0,
) -> Any:
    obj = _mesh_object(bpy, scene, name, meshes.get(kind), None, location, parent, pass_index)
    obj.scale = size
    obj.material_slots[0].link = "OBJECT"
    obj.material_slots[0].material = mat
    return obj


# --- backgrounds ---------------------------------------------------------------------------------


def build_background(bpy: Any, scene: Any, bg: BackgroundSpec, rng: np.random.Generator) -> None:
    """Ground, props, sky and sun for ``bg``; raises BlenderAssetError naming a broken asset file."""
    p = bg.params
    if bg.kind == "procedural":
        if bg.asset != "outdoor":
            raise BlenderAssetError(
                f"background {bg.id!r}: unknown procedural generator {bg.asset!r} (available: 'outdoor')"
            )
        _gradient_sky(
            bpy,
            scene,
            p.get("sky_horizon", (0.8, 0.85, 0.9)),
            p.get("sky_zenith", (0.3, 0.45, 0.8)),
            float(p.get("sky_strength", 1.0)),
        )
        _sun(
            bpy,
            scene,
            float(p.get("sun_elevation", 45.0)),
            float(rng.uniform(0, 360)),
            float(p.get("sun_strength", 3.0)),
        )
        _ground(
            bpy,
            scene,
            p.get("ground", (0.3, 0.5, 0.2)),
            p.get("ground_alt", (0.4, 0.6, 0.25)),
            bool(p.get("tiles", False)),
            shadow_catcher=False,
        )
        _props(bpy, scene, str(p.get("props", "trees")), rng, int(p.get("num_props", 40)))
    elif bg.kind in ("hdri", "image"):
        _environment_image(bpy, scene, bg, float(p.get("strength", 1.0)))
        if p.get("ground", True):
            _ground(bpy, scene, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False, shadow_catcher=True)
        _sun(
            bpy,
            scene,
            float(p.get("sun_elevation", 45.0)),
            float(rng.uniform(0, 360)),
            float(p.get("sun_strength", 2.0)),
        )
    elif bg.kind in ("blend", "gltf", "fbx"):
        objs = import_asset(bpy, scene, bg.kind, bg.asset, f"background {bg.id!r}", collection=p.get("collection"))
        if not any(o.type == "LIGHT" for o in objs):
            _sun(
                bpy,
                scene,
                float(p.get("sun_elevation", 45.0)),
                float(rng.uniform(0, 360)),
                float(p.get("sun_strength", 3.0)),
            )
        if scene.world is None:
            _gradient_sky(bpy, scene, (0.8, 0.85, 0.9), (0.3, 0.45, 0.8), 1.0)
    else:
        raise BlenderAssetError(
            f"background {bg.id!r}: kind {bg.kind!r} cannot be rendered by Blender (an Unreal level?)"
        )


def _gradient_sky(bpy: Any, scene: Any, horizon: Any, zenith: Any, strength: float) -> None:
    """An HDRI-free sky: colour blends from horizon to zenith with the view direction's height."""
    world = bpy.data.worlds.new("syncam_sky")
    scene.world = world
    nt = world.node_tree
    bg = nt.nodes["Background"]
    coord = nt.nodes.new("ShaderNodeTexCoord")
    sep = nt.nodes.new("ShaderNodeSeparateXYZ")
    rng = nt.nodes.new("ShaderNodeMapRange")
    rng.inputs["From Min"].default_value, rng.inputs["From Max"].default_value = 0.0, 0.6
    rng.clamp = True
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["A"].default_value = (*horizon, 1.0)
    mix.inputs["B"].default_value = (*zenith, 1.0)
    nt.links.new(coord.outputs["Generated"], sep.inputs["Vector"])
    nt.links.new(sep.outputs["Z"], rng.inputs["Value"])
    nt.links.new(rng.outputs["Result"], mix.inputs["Factor"])
    nt.links.new(mix.outputs["Result"], bg.inputs["Color"])
    bg.inputs["Strength"].default_value = strength


def _environment_image(bpy: Any, scene: Any, bg: BackgroundSpec, strength: float) -> None:
    path = Path(bg.asset)
    if not path.is_file():
        raise BlenderAssetError(f"background {bg.id!r}: image file {path} does not exist")
    try:
        img = bpy.data.images.load(str(path), check_existing=True)
        _ = img.size[0]  # force the load so a corrupt file fails here
    except RuntimeError as e:
        raise BlenderAssetError(f"background {bg.id!r}: cannot load image {path}: {e}") from None
    if img.size[0] == 0:
        raise BlenderAssetError(f"background {bg.id!r}: {path} is not a readable image")
    world = bpy.data.worlds.new("syncam_env")
    scene.world = world
    nt = world.node_tree
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    env.image = img
    nt.links.new(env.outputs["Color"], nt.nodes["Background"].inputs["Color"])
    nt.nodes["Background"].inputs["Strength"].default_value = strength


def _sun(bpy: Any, scene: Any, elevation_deg: float, azimuth_deg: float, strength: float) -> None:
    light = bpy.data.lights.new("syncam_sun", "SUN")
    light.energy = strength
    light.angle = math.radians(3.0)
    obj = bpy.data.objects.new("syncam_sun", light)
    # A sun shines along its -Z axis: tilt it down from the zenith by (90 - elevation), towards the azimuth.
    obj.rotation_euler = (0.0, math.radians(90.0 - elevation_deg), math.radians(azimuth_deg + 180.0))
    scene.collection.objects.link(obj)


def _ground(bpy: Any, scene: Any, c1: Any, c2: Any, tiles: bool, shadow_catcher: bool, size: float = 200.0) -> None:
    bpy.ops.mesh.primitive_plane_add(size=size)
    g = bpy.context.object
    g.name = "syncam_ground"
    g.data.materials.append(_ground_material(bpy, "ground", tuple(c1), tuple(c2), tiles))
    g.is_shadow_catcher = shadow_catcher


def _props(bpy: Any, scene: Any, kind: str, rng: np.random.Generator, count: int) -> None:
    """Background objects around the camera ring (10-40 m) plus a few low rocks inside it, for parallax."""
    meshes = _Meshes(bpy)
    builders: dict[str, Callable[..., None]] = {"trees": _tree, "pines": _pine, "rocks": _rock, "buildings": _building}
    if kind not in builders:
        raise BlenderAssetError(f"unknown procedural props {kind!r} (available: {sorted(builders)})")
    for i in range(count):
        r = float(rng.uniform(10.0, 40.0))
        a = float(rng.uniform(0, 2 * math.pi))
        builders[kind](bpy, scene, meshes, f"prop{i}", (r * math.cos(a), r * math.sin(a)), rng)
    stone = _material(bpy, "pebble", (0.4, 0.38, 0.36), 0.8)
    for i in range(8):
        # Low pebbles between the subjects and the cameras: nearby texture, too low to hide a subject.
        r, a = float(rng.uniform(2.8, 9.0)), float(rng.uniform(0, 2 * math.pi))
        s = float(rng.uniform(0.1, 0.25))
        _scaled(
            bpy,
            scene,
            meshes,
            "ico",
            f"pebble{i}",
            (s * 1.4, s, s * 0.6),
            stone,
            (r * math.cos(a), r * math.sin(a), s * 0.2),
        )


def _tree(bpy: Any, scene: Any, meshes: _Meshes, name: str, xy: Any, rng: np.random.Generator) -> None:
    h = float(rng.uniform(3.0, 7.0))
    bark = _material(bpy, f"{name}_bark", (0.3, 0.2, 0.1))
    leaf = _material(bpy, f"{name}_leaf", (0.1 + rng.uniform(0, 0.1), 0.35 + rng.uniform(0, 0.2), 0.08))
    _scaled(bpy, scene, meshes, "cylinder", f"{name}_trunk", (0.35, 0.35, h * 0.5), bark, (xy[0], xy[1], h * 0.25))
    _scaled(
        bpy, scene, meshes, "sphere", f"{name}_crown", (h * 0.45, h * 0.45, h * 0.55), leaf, (xy[0], xy[1], h * 0.7)
    )


def _pine(bpy: Any, scene: Any, meshes: _Meshes, name: str, xy: Any, rng: np.random.Generator) -> None:
    h = float(rng.uniform(4.0, 9.0))
    bark = _material(bpy, f"{name}_bark", (0.25, 0.17, 0.1))
    needles = _material(bpy, f"{name}_needles", (0.05, 0.2 + rng.uniform(0, 0.1), 0.1))
    _scaled(bpy, scene, meshes, "cylinder", f"{name}_trunk", (0.3, 0.3, h * 0.3), bark, (xy[0], xy[1], h * 0.15))
    _scaled(
        bpy, scene, meshes, "cone", f"{name}_cone", (h * 0.35, h * 0.35, h * 0.85), needles, (xy[0], xy[1], h * 0.55)
    )


def _rock(bpy: Any, scene: Any, meshes: _Meshes, name: str, xy: Any, rng: np.random.Generator) -> None:
    s = float(rng.uniform(0.8, 3.5))
    mat = _material(bpy, f"{name}_rock", (0.45 + rng.uniform(-0.1, 0.1), 0.33, 0.22), 0.9)
    obj = _scaled(
        bpy,
        scene,
        meshes,
        "ico",
        f"{name}_rock",
        (s * rng.uniform(1, 1.8), s, s * rng.uniform(0.5, 1.0)),
        mat,
        (xy[0], xy[1], s * 0.25),
    )
    obj.rotation_euler = (0.0, 0.0, float(rng.uniform(0, math.pi)))


def _building(bpy: Any, scene: Any, meshes: _Meshes, name: str, xy: Any, rng: np.random.Generator) -> None:
    w, d, h = (float(v) for v in rng.uniform((3, 3, 4), (8, 8, 18)))
    mat = _material(bpy, f"{name}_wall", tuple(rng.uniform(0.35, 0.8, size=3)), 0.7)
    obj = _scaled(bpy, scene, meshes, "cube", f"{name}_block", (w, d, h), mat, (xy[0], xy[1], h / 2))
    obj.rotation_euler = (0.0, 0.0, math.atan2(xy[1], xy[0]))


# --- asset import ---------------------------------------------------------------------------------


def import_asset(bpy: Any, scene: Any, kind: str, path: str, what: str, collection: str | None = None) -> list[Any]:
    """Import a glTF/GLB, FBX or .blend file; returns the new objects. Errors name ``what`` and the file."""
    p = Path(path)
    if not p.is_file():
        raise BlenderAssetError(f"{what}: asset file {p} does not exist")
    before = set(bpy.data.objects)
    try:
        if kind == "gltf":
            res = bpy.ops.import_scene.gltf(filepath=str(p))
        elif kind == "fbx":
            res = bpy.ops.import_scene.fbx(filepath=str(p), use_anim=True)
        elif kind == "blend":
            res = _append_blend(bpy, scene, p, collection)
        else:
            raise BlenderAssetError(f"{what}: cannot import asset kind {kind!r}")
    except BlenderAssetError:
        raise
    except Exception as e:  # importers raise RuntimeError/ValueError/KeyError with their own messages
        raise BlenderAssetError(f"{what}: cannot import {kind} file {p}: {type(e).__name__}: {e}") from None
    if res != {"FINISHED"}:
        raise BlenderAssetError(f"{what}: importing {p} failed ({res})")
    new = [o for o in bpy.data.objects if o not in before]
    if not new:
        raise BlenderAssetError(f"{what}: {p} contains no objects")
    for o in new:
        if o.name not in scene.collection.all_objects:
            scene.collection.objects.link(o)
    return new


def _append_blend(bpy: Any, scene: Any, p: Path, collection: str | None) -> set[str]:
    with bpy.data.libraries.load(str(p), link=False) as (src, dst):
        if collection:
            if collection not in src.collections:
                raise BlenderAssetError(f"{p}: no collection {collection!r} (has {list(src.collections)[:20]})")
            dst.collections = [collection]
        else:
            dst.objects = [n for n in src.objects]
    if collection:
        for c in dst.collections:
            scene.collection.children.link(c)
    else:
        for o in dst.objects:
            if o is not None:
                scene.collection.objects.link(o)
    return {"FINISHED"}


# --- subjects ---------------------------------------------------------------------------------------


def build_subject(bpy: Any, scene: Any, subj: SubjectSpec, spec: SceneSpec) -> None:
    """A subject whose root follows its trajectory and whose meshes carry its instance id."""
    root = bpy.data.objects.new(f"subject{subj.instance_id}_{subj.asset_id}", None)
    scene.collection.objects.link(root)
    root.scale = (subj.scale,) * 3
    what = f"subject {subj.asset_id!r}"
    if subj.kind == "procedural":
        figure = ProceduralFigure(bpy, scene, subj, root)
        poser: Callable[[int], float] = figure.pose
        yaw_offset = 0.0
    elif subj.kind in ("gltf", "fbx", "blend"):
        objs = import_asset(bpy, scene, subj.kind, subj.asset, what, collection=subj.params.get("collection"))
        for o in objs:
            if o.parent is None:
                o.parent = root
            if o.type == "MESH":
                o.pass_index = subj.instance_id
        _play_clip(bpy, objs, subj, spec, what)
        poser = lambda frame: 0.0  # noqa: E731  (the imported clip animates the body; no extra spin)
        axis = str(subj.params.get("forward_axis", "-Y"))
        if axis not in _FORWARD_YAW:
            raise BlenderAssetError(f"{what}: forward_axis must be one of {sorted(_FORWARD_YAW)}, got {axis!r}")
        yaw_offset = _FORWARD_YAW[axis]
    else:
        raise BlenderAssetError(f"{what}: kind {subj.kind!r} cannot be rendered by Blender")
    for k in range(spec.num_frames):
        spin = poser(k)
        loc, yaw = subj.trajectory.pose(k, spec.num_frames)
        root.location = tuple(float(v) for v in loc)
        root.rotation_euler = (0.0, 0.0, math.radians(yaw + yaw_offset + spin))
        root.keyframe_insert("location", frame=k)
        root.keyframe_insert("rotation_euler", frame=k)


def _play_clip(bpy: Any, objs: list[Any], subj: SubjectSpec, spec: SceneSpec, what: str) -> None:
    """Play the animation clip on the imported armatures (or animated objects), retimed by speed and looped."""
    clip = subj.animation.clip
    animated = [
        o
        for o in objs
        if o.animation_data is not None and (o.animation_data.action is not None or o.type == "ARMATURE")
    ]
    if not clip:
        return  # keep whatever the importer assigned
    action = _find_action(bpy, clip, objs)
    if action is None:
        names = sorted(a.name for a in bpy.data.actions)
        raise BlenderAssetError(f"{what}: {subj.asset}: no animation clip {clip!r} (has {names[:20]})")
    targets = [o for o in objs if o.type == "ARMATURE"] or animated
    if not targets:
        raise BlenderAssetError(f"{what}: {subj.asset}: no armature or animated object to play {clip!r} on")
    start, end = (float(v) for v in action.frame_range)
    length = max(end - start, 1.0)
    for o in targets:
        ad = o.animation_data_create()
        ad.action = None
        track = ad.nla_tracks.new()
        strip = track.strips.new(clip, 0, action)
        slots = [s for s in getattr(action, "slots", []) if getattr(s, "target_id_type", "OBJECT") == "OBJECT"]
        if slots and hasattr(strip, "action_slot"):
            strip.action_slot = slots[0]
        strip.scale = 1.0 / max(subj.animation.speed, 1e-6)
        if subj.animation.loop:
            strip.repeat = max(1.0, math.ceil(spec.num_frames / (length * strip.scale)) + 1)
        strip.extrapolation = "HOLD"


def _find_action(bpy: Any, clip: str, objs: list[Any]) -> Any:
    """The action named ``clip``; importers may prefix names (FBX: ``Armature|Walk``), so a unique
    action whose last ``|`` part is ``clip`` also matches, preferring actions the asset's objects use."""
    exact = bpy.data.actions.get(clip)
    if exact is not None:
        return exact
    cands = [a for a in bpy.data.actions if a.name.split("|")[-1] == clip]
    used = {
        o.animation_data.action for o in objs if o.animation_data is not None and o.animation_data.action is not None
    }
    for pool in ([a for a in cands if a in used], cands):
        if len(pool) == 1:
            return pool[0]
    return None


class ProceduralFigure:
    """An articulated figure made of primitives (``biped`` or ``quadruped``), animated with keyframes.

    Built facing +X. Joints are empties whose rotations are keyed for every
    frame from the clip (``walk``, ``run``, ``wave``, ``jump``, ``turn``,
    ``sit``; anything else idles), so ``frame_set(k)`` gives the pose at k.
    """

    def __init__(self, bpy: Any, scene: Any, subj: SubjectSpec, root: Any) -> None:
        if subj.asset not in ("biped", "quadruped"):
            raise BlenderAssetError(
                f"subject {subj.asset_id!r}: unknown procedural figure {subj.asset!r} (available: biped, quadruped)"
            )
        self.bpy, self.scene, self.subj = bpy, scene, subj
        self.fps = 24.0
        p = subj.params
        self.mats = {
            k: _material(bpy, f"{subj.asset_id}{subj.instance_id}_{k}", p.get(k, d))
            for k, d in (("body", (0.6, 0.6, 0.6)), ("limbs", (0.3, 0.3, 0.3)), ("head", (0.8, 0.6, 0.5)))
        }
        self.meshes = _Meshes(bpy)
        self.body = self._empty("body", root, (0, 0, 0))
        self.joints: dict[str, Any] = {}
        (self._biped if subj.asset == "biped" else self._quadruped)()

    def _empty(self, name: str, parent: Any, loc: Any) -> Any:
        e = self.bpy.data.objects.new(f"{self.subj.asset_id}{self.subj.instance_id}_{name}", None)
        e.parent = parent
        e.location = loc
        self.scene.collection.objects.link(e)
        return e

    def _part(self, kind: str, name: str, size: Any, mat: str, loc: Any, parent: Any) -> Any:
        return _scaled(
            self.bpy,
            self.scene,
            self.meshes,
            kind,
            f"{self.subj.asset_id}{self.subj.instance_id}_{name}",
            size,
            self.mats[mat],
            loc,
            parent,
            self.subj.instance_id,
        )

    def _limb(self, name: str, parent: Any, at: Any, length: float, width: float, mat: str = "limbs") -> None:
        j = self._empty(name, parent, at)
        self._part("cylinder", f"{name}_mesh", (width, width, length), mat, (0, 0, -length / 2), j)
        self._part("sphere", f"{name}_end", (width * 1.3,) * 3, mat, (0, 0, -length), j)
        self.joints[name] = j

    def _biped(self) -> None:
        b = self.body
        self._part("cube", "torso", (0.3, 0.45, 0.6), "body", (0, 0, 1.2), b)
        self._part("sphere", "head", (0.3, 0.3, 0.34), "head", (0, 0, 1.7), b)
        self._part("cube", "nose", (0.08, 0.06, 0.06), "limbs", (0.16, 0, 1.7), b)  # shows which way it faces
        for side, y in (("L", 0.3), ("R", -0.3)):
            self._limb(f"arm_{side}", b, (0, y, 1.45), 0.65, 0.12)
            self._limb(f"leg_{side}", b, (0, y * 0.45, 0.9), 0.85, 0.16)

    def _quadruped(self) -> None:
        b = self.body
        self._part("cube", "torso", (0.9, 0.35, 0.35), "body", (0, 0, 0.65), b)
        self._part("sphere", "head", (0.32, 0.26, 0.26), "head", (0.55, 0, 0.9), b)
        self._part("cube", "snout", (0.16, 0.12, 0.1), "limbs", (0.74, 0, 0.86), b)
        self._part("cylinder", "tail", (0.07, 0.07, 0.4), "body", (-0.55, 0, 0.8), b).rotation_euler = (
            0,
            math.radians(-50),
            0,
        )
        for side, y in (("L", 0.13), ("R", -0.13)):
            self._limb(f"front_{side}", b, (0.35, y, 0.55), 0.55, 0.09)
            self._limb(f"hind_{side}", b, (-0.35, y, 0.55), 0.55, 0.09)

    def pose(self, frame: int) -> float:
        """Key every joint for ``frame``; returns the extra yaw (degrees) the clip adds to the root."""
        t = self.subj.animation_time(frame, self._scene_fps())
        clip = self.subj.animation.clip or self.subj.animation.id
        lift, pitch, spin, angles = _clip_pose(clip, t, self.subj.asset, self.subj.animation.loop)
        self.body.location = (0.0, 0.0, lift)
        self.body.rotation_euler = (0.0, math.radians(pitch), 0.0)
        self.body.keyframe_insert("location", frame=frame)
        self.body.keyframe_insert("rotation_euler", frame=frame)
        for name, j in self.joints.items():
            rx, ry = angles.get(name, (0.0, 0.0))
            j.rotation_euler = (math.radians(rx), math.radians(ry), 0.0)
            j.keyframe_insert("rotation_euler", frame=frame)
        return spin

    def _scene_fps(self) -> float:
        r = self.scene.render
        return r.fps / r.fps_base


def _clip_pose(
    clip: str, t: float, figure: str, loop: bool
) -> tuple[float, float, float, dict[str, tuple[float, float]]]:
    """(body lift m, body pitch deg, extra yaw deg, {joint: (rot_x, rot_y) deg}) of a procedural clip at t seconds.

    rot_y swings a limb forward/back (the figure faces +X); rot_x raises it sideways.
    """
    two_pi = 2 * math.pi
    a: dict[str, tuple[float, float]] = {}
    lift = pitch = spin = 0.0
    if clip in ("walk", "run"):
        f, amp = (0.9, 30.0) if clip == "walk" else (1.5, 50.0)
        s = math.sin(two_pi * f * t)
        if figure == "biped":
            a = {"leg_L": (0, amp * s), "leg_R": (0, -amp * s), "arm_L": (0, -amp * s), "arm_R": (0, amp * s)}
        else:  # trot: diagonal pairs move together
            a = {"front_L": (0, amp * s), "hind_R": (0, amp * s), "front_R": (0, -amp * s), "hind_L": (0, -amp * s)}
        lift = 0.03 * abs(math.cos(two_pi * f * t)) * (2.0 if clip == "run" else 1.0)
    elif clip == "wave":
        w = 20.0 * math.sin(two_pi * 1.5 * t)
        a = (
            {"arm_R": (-150.0 + w, 0.0), "arm_L": (0.0, 5.0 * math.sin(two_pi * 0.5 * t))}
            if figure == "biped"
            else {"front_R": (0.0, -70.0 + w)}
        )
    elif clip == "jump":
        phase = (t * 0.8) % 1.0
        h = max(0.0, math.sin(two_pi * phase))
        lift = 0.45 * h
        tuck = 40.0 * h
        a = (
            {"leg_L": (0, -tuck), "leg_R": (0, -tuck), "arm_L": (-60 * h, 0), "arm_R": (60 * h, 0)}
            if figure == "biped"
            else {"front_L": (0, -tuck), "front_R": (0, -tuck), "hind_L": (0, tuck), "hind_R": (0, tuck)}
        )
    elif clip == "turn":
        spin = 360.0 * t / 3.0
        a = {"leg_L": (0, 10 * math.sin(two_pi * t)), "leg_R": (0, -10 * math.sin(two_pi * t))}
    elif clip == "sit":
        s = min(t / 1.0, 1.0) if not loop else 0.5 - 0.5 * math.cos(two_pi * t / 4.0)
        if figure == "quadruped":
            pitch = -35.0 * s
            lift = -0.12 * s
            a = {"hind_L": (0, -70 * s), "hind_R": (0, -70 * s), "front_L": (0, 35 * s), "front_R": (0, 35 * s)}
        else:
            lift = -0.35 * s
            a = {"leg_L": (0, -80 * s), "leg_R": (0, -80 * s)}
    else:  # idle: breathing sway so even unknown clips are not frozen
        pitch = 2.0 * math.sin(two_pi * 0.3 * t)
    return lift, pitch, spin, a

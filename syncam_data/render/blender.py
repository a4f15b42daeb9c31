"""The Blender backend: builds a ``SceneSpec`` in ``bpy`` and renders every camera with Cycles.

This is the only module that imports ``bpy`` (lazily, in ``BlenderBackend.open``); the
scene content (background, props, assets, subjects, the procedural figure) is built by
``render/blender_scene.py`` with the module it is handed. Its options are ``BlenderConfig``,
declared beside it in ``render/blender_config.py``.

Per scene: factory settings (no user preferences or startup file), then the
background (procedural, HDRI/image, .blend, glTF or FBX), the subjects
(procedural articulated figures or imported assets with their animation),
one camera object per spec camera, and a compositor that writes the
view-layer passes. Frames are rendered world-state first: ``frame_set(k)``
then every camera renders frame k, so all cameras are synchronized by
construction.

Per camera per frame we read back:

- RGB: the colour-managed render ("Standard" view transform, sRGB), 8-bit.
- Depth: Cycles' Z pass, which for a perspective camera is the distance
  along the optical axis (planar z-depth, checked by tests/test_render_blender.py);
  the background (1e10 in Cycles) becomes ``inf``.
- Instance ids: the Object Index pass; every mesh of subject i has
  ``pass_index = i`` and everything else 0. Cycles writes depth and object
  index from the first sample of each pixel, so ids are exact integers.

Camera conversion: the canonical OpenCV c2w becomes Blender's camera matrix
with ``cameras.c2w_to_blender`` (flip y and z). Intrinsics: horizontal sensor
fit, ``lens = fx * sensor_width / W``; the principal point through
``shift_x = (W/2 - cx) / W`` and ``shift_y = (cy - H/2) * (asp_y/asp_x) / W``
(Blender measures both shifts in units of the fitted, horizontal, dimension);
``fy != fx`` through the scene's pixel aspect (``fy / fx = asp_x / asp_y``),
which Blender shares between all cameras of a scene.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from syncam_data.cameras import c2w_to_blender
from syncam_data.render.base import FrameCallback, RenderBackend, RenderResult, WorkerSlot
from syncam_data.render.blender_config import BlenderConfig
from syncam_data.render.blender_scene import build_background, build_subject

if TYPE_CHECKING:  # type hints only: `syncam-data --help` imports BlenderConfig without the scene and video stack
    from syncam_data.render.output import SceneOutput
    from syncam_data.scenes import SceneSpec

log = logging.getLogger(__name__)

SENSOR_WIDTH_MM = 36.0
# Cycles writes this depth for rays that hit nothing.
_EMPTY_DEPTH = 1e9


_BLENDER_SCRIPTS = re.compile(r"[/\\]bpy[/\\][0-9.]+[/\\]scripts([/\\]|$)")


def _import_bpy() -> Any:
    if "bpy" not in sys.modules:
        # multiprocessing's spawn copies the parent's sys.path: after the parent imported bpy it starts
        # with Blender's scripts/modules, whose pure-Python 'bpy' package would shadow the module wheel
        # ("No module named '_bpy'"). bpy adds these paths back itself once imported.
        sys.path[:] = [p for p in sys.path if not _BLENDER_SCRIPTS.search(p)]
    try:
        import bpy  # noqa: PLC0415  (the one place bpy is imported)
    except ImportError as e:
        raise RuntimeError(
            f"the Blender backend needs the bpy module: pip install -e '.[blender]' in the SynCam checkout (bpy 5.0.1, Python 3.11); import failed: {e}"
        ) from e
    return bpy


class BlenderBackend(RenderBackend):
    """Cycles renderer; its options are ``BlenderConfig``."""

    name = "blender"
    config_class = BlenderConfig
    config: BlenderConfig

    def __init__(self, slot: WorkerSlot | None = None, config: BlenderConfig | dict[str, Any] | None = None) -> None:
        super().__init__(slot, config)
        self._tmp: Path | None = None
        self.bpy: Any = None

    # --- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        if self.bpy is None:
            self.bpy = _import_bpy()
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"syncam-blender-{self.slot.index}-", dir=self.config.tmp_dir))

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self.bpy is not None:
            self.bpy.ops.wm.read_factory_settings(use_empty=True)

    # --- rendering -------------------------------------------------------------------------
    def render_scene(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None = None) -> RenderResult:
        self.open()
        # Blender logs every saved pass file and importer step on stdout; keep the job's output readable.
        with _stdout_silenced(not self.config.blender_log):
            return self._render(spec, out, on_frame)

    def _render(self, spec: SceneSpec, out: SceneOutput, on_frame: FrameCallback | None) -> RenderResult:
        bpy = self.bpy
        timings = {"setup_s": 0.0, "render_s": 0.0, "readback_s": 0.0, "output_s": 0.0}
        t0 = time.perf_counter()
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        self._configure(scene, spec)
        rng = np.random.default_rng(spec.seed)
        build_background(bpy, scene, spec.background, rng)
        for subj in spec.subjects:
            build_subject(bpy, scene, subj, spec)
        cams = [(c.id, add_camera(bpy, scene, c.id, c.camera())) for c in spec.cameras]
        _set_pixel_aspect(scene, spec)
        files = _setup_passes(bpy, scene, self._tmp)
        for c, (cid, obj) in zip(spec.cameras, cams):
            out.add_camera(cid, c.camera(), raw=blender_raw_pose(obj))
        timings["setup_s"] = time.perf_counter() - t0

        for k in range(spec.num_frames):
            scene.frame_set(k)
            for cid, obj in cams:
                scene.camera = obj
                t1 = time.perf_counter()
                bpy.ops.render.render(write_still=True)
                t2 = time.perf_counter()
                rgb, depth, ids = _read_passes(bpy, files, spec.width, spec.height)
                t3 = time.perf_counter()
                out.add_frame(cid, rgb, depth, ids)
                timings["render_s"] += t2 - t1
                timings["readback_s"] += t3 - t2
                timings["output_s"] += time.perf_counter() - t3
            if on_frame is not None:
                on_frame(k)
        timings["total_s"] = time.perf_counter() - t0
        return RenderResult(
            backend=self.name,
            versions={"blender": bpy.app.version_string},
            timings=timings,
            info={
                "engine": "CYCLES",
                "samples": self.config.samples,
                "device": self.config.device,
                "max_bounces": self.config.max_bounces,
                "cycles_seed": scene.cycles.seed,
            },
        )

    def _configure(self, scene: Any, spec: SceneSpec) -> None:
        r = scene.render
        r.engine = "CYCLES"
        r.resolution_x, r.resolution_y, r.resolution_percentage = spec.width, spec.height, 100
        r.fps = max(1, round(spec.fps))
        r.fps_base = r.fps / spec.fps
        scene.frame_start, scene.frame_end = 0, max(spec.num_frames - 1, 0)
        r.use_persistent_data = True  # keeps the BVH between the cameras of one frame
        r.use_compositing = True
        r.use_sequencer = False
        r.film_transparent = False
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGB"
        r.image_settings.color_depth = "8"
        r.image_settings.compression = 0  # read back immediately: spend no time compressing
        if self.config.threads > 0:
            r.threads_mode, r.threads = "FIXED", self.config.threads
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        scene.display_settings.display_device = "sRGB"
        c = scene.cycles
        c.samples = self.config.samples
        c.use_adaptive_sampling = False
        c.use_denoising = False
        c.seed = spec.seed % (2**31 - 1)
        c.use_animated_seed = False
        c.max_bounces = self.config.max_bounces
        c.diffuse_bounces = min(2, self.config.max_bounces)
        c.glossy_bounces = min(2, self.config.max_bounces)
        c.transmission_bounces = min(2, self.config.max_bounces)
        c.volume_bounces = 0
        c.transparent_max_bounces = 4
        c.caustics_reflective = c.caustics_refractive = False
        c.device = "GPU" if self.config.device == "gpu" else "CPU"
        if self.config.device == "gpu":
            _enable_gpu(self.bpy)


# --- render plumbing ---------------------------------------------------------------------------


@contextlib.contextmanager
def _stdout_silenced(enabled: bool) -> Iterator[None]:
    """Point file descriptor 1 at /dev/null (Blender's C code writes there directly, bypassing sys.stdout)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _enable_gpu(bpy: Any) -> None:
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for kind in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
        try:
            prefs.compute_device_type = kind
        except TypeError:
            continue
        prefs.get_devices()
        gpus = [d for d in prefs.devices if d.type == kind]
        if gpus:
            for d in prefs.devices:
                d.use = d.type == kind
            log.info("Cycles GPU: %s (%s)", ", ".join(d.name for d in gpus), kind)
            return
    raise RuntimeError("--device gpu: Cycles found no GPU (tried OptiX, CUDA, HIP, oneAPI, Metal); use --device cpu")


def _setup_passes(bpy: Any, scene: Any, tmp: Path) -> dict[str, Path]:
    """Z and Object Index passes written by a compositor File Output node as float EXR; RGB by write_still."""
    vl = scene.view_layers[0]
    vl.use_pass_z = True
    vl.use_pass_object_index = True
    tree = bpy.data.node_groups.new("syncam_passes", "CompositorNodeTree")
    scene.compositing_node_group = tree
    rl = tree.nodes.new("CompositorNodeRLayers")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    group_out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(rl.outputs["Image"], group_out.inputs[0])
    fo = tree.nodes.new("CompositorNodeOutputFile")
    fo.directory = str(tmp) + os.sep
    fo.file_name = "pass_"
    fo.format.media_type = "IMAGE"
    fo.format.file_format = "OPEN_EXR"
    fo.format.color_depth = "32"
    fo.format.exr_codec = "NONE"
    fo.format.color_mode = "BW"
    for name, socket in (("depth", "Depth"), ("index", "Object Index")):
        fo.file_output_items.new("FLOAT", name)
        tree.links.new(rl.outputs[socket], fo.inputs[name])
    scene.render.filepath = str(tmp / "rgb.png")
    return {"rgb": tmp / "rgb.png", "depth": tmp / "pass_depth.exr", "index": tmp / "pass_index.exr"}


def _read_passes(
    bpy: Any, files: dict[str, Path], width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = _load_image(bpy, files["rgb"], width, height)
    rgb8 = np.clip(np.round(rgb[..., :3] * 255.0), 0, 255).astype(np.uint8)
    depth = _load_image(bpy, files["depth"], width, height)[..., 0].astype(np.float32)
    depth[~(depth < _EMPTY_DEPTH)] = np.inf
    ids = np.round(_load_image(bpy, files["index"], width, height)[..., 0]).astype(np.int64)
    if ids.min() < 0 or ids.max() > 255:
        raise RuntimeError(f"object index pass out of range [0, 255]: {ids.min()}..{ids.max()}")
    return rgb8, depth, ids.astype(np.uint8)


def _load_image(bpy: Any, path: Path, width: int, height: int) -> np.ndarray:
    """Pixels of an image file as float32 (H, W, C), top row first (Blender stores bottom-up)."""
    if not path.is_file():
        raise RuntimeError(f"Blender did not write {path} (render or compositor failed)")
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        if (w, h) != (width, height):
            raise RuntimeError(f"{path}: rendered {w}x{h}, expected {width}x{height}")
        buf = np.empty(w * h * img.channels, np.float32)
        img.pixels.foreach_get(buf)
        return buf.reshape(h, w, img.channels)[::-1]
    finally:
        bpy.data.images.remove(img)
        path.unlink(missing_ok=True)


# --- cameras -------------------------------------------------------------------------------------


def add_camera(bpy: Any, scene: Any, cam_id: str, cam: Any) -> Any:
    """A Blender camera object that reproduces the canonical camera exactly (pose and fx, fy, cx, cy)."""
    data = bpy.data.cameras.new(f"cam_{cam_id}")
    data.type = "PERSP"
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = SENSOR_WIDTH_MM
    data.lens = cam.fx * SENSOR_WIDTH_MM / cam.width
    ycor = _pixel_aspect(cam.fx, cam.fy)[1] / _pixel_aspect(cam.fx, cam.fy)[0]
    data.shift_x = (cam.width / 2.0 - cam.cx) / cam.width
    data.shift_y = (cam.cy - cam.height / 2.0) * ycor / cam.width
    data.clip_start = 0.05
    data.clip_end = 10000.0
    obj = bpy.data.objects.new(f"cam_{cam_id}", data)
    scene.collection.objects.link(obj)
    m = np.eye(4)
    m[:3] = c2w_to_blender(cam.c2w)
    import mathutils  # noqa: PLC0415  (ships with bpy; a nested list would be read column by column)

    obj.matrix_world = mathutils.Matrix(m.tolist())
    return obj


def _pixel_aspect(fx: float, fy: float) -> tuple[float, float]:
    """Blender (pixel_aspect_x, pixel_aspect_y), both >= 1, with fy / fx = asp_x / asp_y."""
    r = fy / fx
    return (r, 1.0) if r >= 1 else (1.0, 1.0 / r)


def _set_pixel_aspect(scene: Any, spec: SceneSpec) -> None:
    ratios = {round(c.fy / c.fx, 6) for c in spec.cameras}
    if len(ratios) > 1:
        raise ValueError(
            f"scene {spec.scene_id}: Blender shares one pixel aspect per scene, but cameras have fy/fx ratios {sorted(ratios)}"
        )
    c = spec.cameras[0]
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = _pixel_aspect(c.fx, c.fy)


def blender_raw_pose(obj: Any) -> dict[str, Any]:
    d = obj.data
    return {
        "convention": "blender",
        "matrix_world": [float(v) for row in obj.matrix_world for v in row],
        "lens_mm": float(d.lens),
        "sensor_width_mm": float(d.sensor_width),
        "sensor_fit": d.sensor_fit,
        "shift_x": float(d.shift_x),
        "shift_y": float(d.shift_y),
    }

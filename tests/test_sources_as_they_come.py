"""RealEstate10K and DL3DV / nerfstudio files as they come from public releases and tools.

Each test builds a small input shaped like a real one (from ray-cast views of known cameras, so
every stored camera can be checked against the truth and against its pixels):

- RealEstate10K frames stored at another aspect (the common resize-then-centre-crop to 256x256),
  a UTF-8 BOM, ``.jpg`` frames, every video frame listed at 24/25 fps (the original files) or a
  subsampled copy (CameraCtrl's), ``--fps``;
- nerfstudio ``transforms.json`` variants seen in public repositories: per-frame intrinsics with
  sub-folder file paths listed out of order (``./images/robot/000001-color.png``, as in
  sangminkim-99/COLMAP_multicam), global ``w``/``h`` with per-frame ``fl_x``/``cx``/``cy``, file
  paths without an extension, UUID names with and without ``colmap_im_id``, non-pinhole models
  (``EQUIRECTANGULAR``, as in 3dprevis/LichtFeld_Export01);
- JPEGs carrying an EXIF orientation tag (phone captures).
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from syncam_data.cameras import Camera, c2w_to_opengl
from syncam_data.cli import app
from syncam_data.sources.dl3dv import Dl3dvConfig, iter_scene_refs, open_scene, read_transforms
from syncam_data.sources.export import export_dl3dv, export_realestate10k, realestate10k_timestamps
from syncam_data.sources.frameset import SourceError
from syncam_data.sources.realestate10k import (
    Re10kConfig,
    infer_fps,
    iter_sequence_refs,
    open_sequence,
    read_camera_file,
)
from tests.test_sources_realestate10k import assert_camera_equal, groups, read_rgb, run_cli
from tests.test_sources_scene import image_error, render, trajectory


def report(out: Path) -> dict:
    return {s["sequence"]: s for s in json.loads((out / "sample_report.json").read_text())["sequences"]}


def cli(*args: str):
    return CliRunner().invoke(app, ["sample-frames", "--no-progress", *args])


# --- RealEstate10K ------------------------------------------------------------------------------

FPS = 30000 / 1001


@pytest.fixture(scope="module")
def wide() -> tuple[list[Camera], list[np.ndarray]]:
    """A 16:9 sequence (RealEstate10K videos are 16:9)."""
    cams = trajectory(10, 128, 72, deg_per_frame=3.0)
    return cams, [render(c) for c in cams]


def _rewrite_frames(folder: Path, fn) -> None:
    for p in sorted(folder.glob("*.png")):
        img = cv2.imread(str(p))
        cv2.imwrite(str(p), fn(img))


def test_re10k_frames_of_another_aspect_are_refused_unless_told_how_they_were_made(tmp_path, wide):
    cams, frames = wide
    root = tmp_path / "re10k"
    export_realestate10k(root, "crop", cams, frames, fps=FPS)
    export_realestate10k(root, "squash", cams, frames, fps=FPS)
    # A common preprocessing: resize to cover, then centre-crop to a square (here 96x54 -> 54x54) ...
    _rewrite_frames(root / "crop", lambda im: cv2.resize(im, (96, 54), interpolation=cv2.INTER_AREA)[:, 21:75])
    # ... or squash to a square.
    _rewrite_frames(root / "squash", lambda im: cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA))
    common = [
        "--source",
        "realestate10k",
        "--root",
        str(root),
        "--views",
        "3",
        "--max-gap",
        "9",
        "--image-format",
        "png",
    ]
    res = cli(*common, "--out", str(tmp_path / "none"))
    assert res.exit_code == 1  # nothing could be used
    for seq, size in (("crop", "54x54"), ("squash", "64x64")):
        why = report(tmp_path / "none")[seq]["reason"]
        assert f"stored frame is {size}" in why and "1.778" in why and "--frame-resize" in why, why
    for mode, seq, truth_of in (
        ("center-crop", "crop", lambda c: c.resized(96, 54).cropped(21, 0, 54, 54)),
        ("squash", "squash", lambda c: c.resized(64, 64)),
    ):
        out = tmp_path / mode
        run_cli(*common, "--out", str(out), "--frame-resize", mode)
        (g,) = [g for g in groups(out) if g["sequence"] == seq]
        for entry in g["cameras"]:
            truth = truth_of(cams[entry["frame_index"]])
            assert_camera_equal(entry, truth)
            assert image_error(read_rgb(out / g["group_id"] / entry["image"]), truth) < 5.0
        if mode == "center-crop":  # the crop moves the principal point, and pixels stay square
            assert g["cameras"][0]["cx"] == pytest.approx(27.0) and g["cameras"][0]["fx"] == pytest.approx(
                g["cameras"][0]["fy"]
            )


def test_re10k_bom_jpg_frames_and_the_missing_file_named_as_it_is(tmp_path, fixtures_dir):
    src = (fixtures_dir / "realestate10k" / "0bf152ef84195293.txt").read_text()
    root = tmp_path / "re10k" / "test"
    root.mkdir(parents=True)
    (root / "0bf152ef84195293.txt").write_bytes(b"\xef\xbb\xbf" + src.encode())  # saved by a Windows editor
    cf = read_camera_file(root / "0bf152ef84195293.txt")
    assert cf.url == "https://www.youtube.com/watch?v=QShWPZxTDoE" and len(cf) == 16
    frames = root / "0bf152ef84195293"
    frames.mkdir()
    for ts in cf.timestamps_us[:-1]:
        cv2.imwrite(str(frames / f"{ts}.jpg"), np.full((36, 64, 3), 128, np.uint8))
    with pytest.raises(SourceError) as e:
        open_sequence(next(iter_sequence_refs(tmp_path / "re10k")), Re10kConfig())
    assert f"{frames}/{cf.timestamps_us[-1]}.jpg: image file is missing" in str(e.value)


def test_fps_inferred_from_timestamps():
    for fps in (24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 60.0):
        every = realestate10k_timestamps(120, fps)  # the original files list every video frame
        assert infer_fps(every)[0] == pytest.approx(fps), fps
        # a copy keeping every 8th-9th frame (CameraCtrl's) still sits on that rate's frame grid
        sub = every[np.cumsum([0] + [8, 9] * 7)]
        assert infer_fps(sub)[0] == pytest.approx(fps), fps
    # dropped frames and a millisecond of jitter (timestamps of re-encoded videos) do not matter
    ts = realestate10k_timestamps(90, 25.0)
    ts = np.delete(ts, [10, 40]) + np.random.default_rng(0).integers(-1000, 1000, 88)
    assert infer_fps(ts)[0] == pytest.approx(25.0)
    fps, how = infer_fps(np.array([0, 100_000, 170_000, 420_000, 430_000]))
    assert fps is None and "irregular" in how


def test_re10k_video_frames_follow_the_inferred_rate(tmp_path, fixtures_dir, wide):
    cams, frames = wide
    root = tmp_path / "re10k"
    export_realestate10k(root, "pal", cams, frames, fps=25.0)  # every frame listed, 25 fps
    seq = open_sequence(next(iter_sequence_refs(root)), Re10kConfig())
    assert seq.video_frames.tolist() == list(range(10))
    assert seq.header()["fps"] == 25.0 and "median step" in seq.header()["fps_from"]
    # --fps overrides the timestamps
    forced = open_sequence(next(iter_sequence_refs(root)), Re10kConfig(fps=50.0))
    assert forced.video_frames.tolist() == list(range(0, 20, 2)) and forced.header()["fps_from"] == "--fps"
    # the real (subsampled) file: 29.97 fps, lines 8-9 frames apart
    (root / "0bf152ef84195293.txt").write_text((fixtures_dir / "realestate10k" / "0bf152ef84195293.txt").read_text())
    (root / "0bf152ef84195293").mkdir()
    cf = read_camera_file(root / "0bf152ef84195293.txt")
    for ts in cf.timestamps_us:
        cv2.imwrite(str(root / "0bf152ef84195293" / f"{ts}.png"), np.full((36, 64, 3), 128, np.uint8))
    ref = next(r for r in iter_sequence_refs(root) if r.sequence_id == "0bf152ef84195293")
    real = open_sequence(ref, Re10kConfig())
    assert real.header()["fps"] == pytest.approx(FPS) and "frame grid" in real.header()["fps_from"]
    assert np.diff(real.video_frames).tolist() == [int(round(d * FPS / 1e6)) for d in np.diff(cf.timestamps_us)]
    assert set(np.diff(real.video_frames).tolist()) == {8, 9}


# --- DL3DV / nerfstudio -------------------------------------------------------------------------

W, H = 128, 96


@pytest.fixture(scope="module")
def scene() -> tuple[list[Camera], list[np.ndarray]]:
    cams = trajectory(12, W, H, deg_per_frame=2.0)
    return cams, [render(c) for c in cams]


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def write_nerfstudio(
    folder: Path, cams, frames, names: list[str], order: list[int], top: dict, per_frame, downscales=(1, 2)
) -> Path:
    """A transforms.json + images written the way other tools do: ``names[i]`` is frame i's file_path."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in order:
        e = {"file_path": names[i], "transform_matrix": np.vstack([c2w_to_opengl(cams[i].c2w), [0, 0, 0, 1]]).tolist()}
        e.update(per_frame(i))
        entries.append(e)
        rel = Path(names[i].removeprefix("./"))
        if not rel.suffix:
            rel = rel.with_suffix(".png")
        for f in downscales:
            sub = rel.parts[1:] if rel.parts[0] == "images" else rel.parts
            p = folder.joinpath("images" if f == 1 else f"images_{f}", *sub)
            p.parent.mkdir(parents=True, exist_ok=True)
            img = frames[i] if f == 1 else cv2.resize(frames[i], (W // f, H // f), interpolation=cv2.INTER_AREA)
            p.write_bytes(_png(img))
    (folder / "transforms.json").write_text(json.dumps({**top, "frames": entries}, indent=2))
    return folder


def pinhole(c: Camera) -> dict:
    return {"fl_x": c.fx, "fl_y": c.fy, "cx": c.cx, "cy": c.cy}


SHUFFLED = [7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6]


def test_per_frame_intrinsics_sub_folders_and_numbers_from_the_stem(tmp_path, scene):
    cams, frames = scene
    # colmap2nerf-style multi-camera export: per-frame w/h (as floats) and intrinsics, unsorted frames
    names = [f"./images/robot/{i + 20:06d}-color.png" for i in range(12)]
    folder = write_nerfstudio(
        tmp_path / "root" / "robot_scene",
        cams,
        frames,
        names,
        SHUFFLED,
        {"aabb_scale": 32},
        lambda i: {
            "w": float(W),
            "h": float(H),
            **pinhole(cams[i]),
            "k1": 0,
            "k2": 0,
            "k3": 0,
            "k4": 0,
            "p1": 0,
            "p2": 0,
            "is_fisheye": False,
            "sharpness": 500.0,
        },
    )
    tr = read_transforms(folder / "transforms.json")
    assert tr.frame_numbers.tolist() == list(range(20, 32))  # "000026-color" is frame 26, wherever it is listed
    np.testing.assert_allclose(tr.c2w[6], cams[6].c2w, atol=1e-9)
    out = tmp_path / "out"
    run_cli(
        "--source",
        "dl3dv",
        "--root",
        str(tmp_path / "root"),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "5",
        "--image-folder",
        "images_2",
        "--image-format",
        "png",
    )
    (g,) = groups(out)
    for entry in g["cameras"]:
        truth = cams[entry["frame_index"] - 20].resized(W // 2, H // 2)
        assert_camera_equal(entry, truth)
        assert entry["source_uri"].endswith(f"images_2/robot/{entry['frame_index']:06d}-color.png")
        assert entry["raw"]["file_path"] == f"./images/robot/{entry['frame_index']:06d}-color.png"
        assert image_error(read_rgb(out / g["group_id"] / entry["image"]), truth) < 3.0
    # the missing-image message names the real file, sub-folders and extension included
    (folder / "images_2" / "robot" / "000023-color.png").unlink()
    with pytest.raises(SourceError, match=r"images_2/robot/000023-color\.png: image file is missing"):
        open_scene(next(iter_scene_refs(tmp_path / "root")), Dl3dvConfig(image_folder="images_2"))


def test_global_size_with_per_frame_focal_and_principal_point(tmp_path, scene):
    cams, frames = scene
    # a zooming camera: every frame has its own focal length and principal point; w/h are global
    zoom = [
        Camera(W, H, c.fx * (1 + 0.05 * i), c.fy * (1 + 0.05 * i), c.cx + i, c.cy - i, c.c2w)
        for i, c in enumerate(cams)
    ]
    shots = [render(c) for c in zoom]
    names = [f"images/frame_{i + 1:05d}" for i in range(12)]  # no extension: the loader finds frame_00001.png
    folder = write_nerfstudio(
        tmp_path / "root" / "zoom",
        zoom,
        shots,
        names,
        SHUFFLED,
        {"w": W, "h": H, "camera_model": "PINHOLE"},
        lambda i: pinhole(zoom[i]),
    )
    tr = read_transforms(folder / "transforms.json")
    assert tr.frame_numbers.tolist() == list(range(1, 13))
    for k in range(12):
        got = tr.intrinsics[k]
        assert (got.w, got.h) == (W, H)
        np.testing.assert_allclose([got.fl_x, got.fl_y, got.cx, got.cy], zoom[k].intrinsics)
    sc = open_scene(next(iter_scene_refs(tmp_path / "root")), Dl3dvConfig(image_folder="images"))
    fr = sc.load_frames([4])[4]
    assert_camera_equal(fr.camera.to_dict(), zoom[4])
    assert image_error(fr.image, zoom[4]) < 1.0


def test_names_without_numbers_use_colmap_ids_or_sorted_names_never_list_position(tmp_path, scene):
    cams, frames = scene
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"frame{i}")) for i in range(12)]  # random names, digits inside
    names = [f"images/{u}.png" for u in ids]
    folder = write_nerfstudio(
        tmp_path / "a" / "uuid",
        cams,
        frames,
        names,
        SHUFFLED,
        {"w": W, "h": H, **pinhole(cams[0])},
        lambda i: {"colmap_im_id": 100 + i},
        downscales=(1,),
    )
    tr = read_transforms(folder / "transforms.json")
    assert tr.frame_numbers.tolist() == list(range(100, 112)) and tr.numbering == "colmap_im_id"
    np.testing.assert_allclose(tr.c2w[3], cams[3].c2w, atol=1e-9)
    # without colmap_im_id: the sorted file-name order, with a warning in the report
    meta = json.loads((folder / "transforms.json").read_text())
    for e in meta["frames"]:
        del e["colmap_im_id"]
    (folder / "transforms.json").write_text(json.dumps(meta))
    tr = read_transforms(folder / "transforms.json")
    by_name = sorted(range(12), key=lambda i: names[i])
    assert tr.numbering == "sorted file names" and tr.frame_numbers.tolist() == list(range(1, 13))
    assert [Path(f).name for f in tr.files] == [Path(names[i]).name for i in by_name]
    np.testing.assert_allclose(tr.c2w, np.stack([cams[i].c2w for i in by_name]), atol=1e-9)
    assert any("sorted file-name order" in w for w in tr.warnings)
    out = tmp_path / "out"
    run_cli(
        "--source",
        "dl3dv",
        "--root",
        str(tmp_path / "a"),
        "--out",
        str(out),
        "--views",
        "2",
        "--max-gap",
        "3",
        "--image-format",
        "png",
    )
    assert any("sorted file-name order" in w for w in report(out)["uuid"]["warnings"])


def test_non_pinhole_camera_models_are_refused(tmp_path, scene):
    cams, frames = scene
    names = [f"images/image_360_{i}.jpg" for i in range(12)]
    write_nerfstudio(
        tmp_path / "root" / "pano",
        cams,
        frames,
        names,
        list(range(12)),
        {"camera_model": "EQUIRECTANGULAR"},
        lambda i: {"w": W, "h": H, **pinhole(cams[i])},
        downscales=(1,),
    )
    write_nerfstudio(
        tmp_path / "root" / "fish",
        cams,
        frames,
        [f"images/f_{i:03d}.png" for i in range(12)],
        list(range(12)),
        {"w": W, "h": H, **pinhole(cams[0]), "is_fisheye": True},
        lambda i: {},
        downscales=(1,),
    )
    res = cli("--source", "dl3dv", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"), "--views", "2")
    assert res.exit_code == 1
    rep = report(tmp_path / "out")
    assert "camera_model EQUIRECTANGULAR" in rep["pano"]["reason"] and "pinhole" in rep["pano"]["reason"]
    assert "is_fisheye" in rep["fish"]["reason"]


def _with_exif_orientation(path: Path, orientation: int, rotate: bool = False) -> None:
    img = Image.open(path).convert("RGB")
    if rotate:
        img = img.transpose(Image.Transpose.ROTATE_270)  # pixels stored upright, as some tools re-save them
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    path.write_bytes(buf.getvalue())


def test_exif_orientation_is_not_applied_as_colmap_and_nerfstudio_do(tmp_path, scene):
    cams, frames = scene
    export_dl3dv(tmp_path / "root", "phone", cams, frames, downscales=(2,), image_ext="jpg")
    export_dl3dv(tmp_path / "root", "rotated", cams, frames, downscales=(2,), image_ext="jpg")
    for p in (tmp_path / "root" / "phone" / "images_2").glob("*.jpg"):
        _with_exif_orientation(p, 6)  # a phone JPEG: stored landscape pixels, "rotate 90 deg to display"
    for p in (tmp_path / "root" / "rotated" / "images_2").glob("*.jpg"):
        _with_exif_orientation(p, 6, rotate=True)  # pixels no longer the ones the poses were solved on
    out = tmp_path / "out"
    res = cli(
        "--source",
        "dl3dv",
        "--root",
        str(tmp_path / "root"),
        "--out",
        str(out),
        "--views",
        "3",
        "--max-gap",
        "4",
        "--image-format",
        "png",
    )
    assert res.exit_code == 0, res.output
    (g,) = groups(out)
    assert g["sequence"] == "phone"
    for entry in g["cameras"]:
        truth = cams[entry["frame_index"] - 1].resized(W // 2, H // 2)
        assert_camera_equal(entry, truth)
        assert image_error(read_rgb(out / g["group_id"] / entry["image"]), truth) < 4.0
    why = report(out)["rotated"]["reason"]
    assert "EXIF orientation 6" in why and "48x64" in why and "COLMAP" in why, why


def test_dl3dv_frames_of_another_aspect(tmp_path, scene):
    cams, frames = scene
    folder = export_dl3dv(tmp_path / "root", "sq", cams, frames, downscales=(2,))
    for p in (folder / "images_2").glob("*.png"):
        p.write_bytes(
            _png(
                cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (48, 48), interpolation=cv2.INTER_AREA)
            )
        )
    ref = next(iter_scene_refs(tmp_path / "root"))
    with pytest.raises(SourceError, match=r"stored frame is 48x48 .*w x h = 128x96.*--frame-resize"):
        open_scene(ref, Dl3dvConfig()).load_frames([0])
    fr = open_scene(ref, Dl3dvConfig(frame_resize="squash")).load_frames([3])[3]
    assert_camera_equal(fr.camera.to_dict(), cams[3].resized(48, 48))
    assert image_error(fr.image, cams[3].resized(48, 48)) < 3.0

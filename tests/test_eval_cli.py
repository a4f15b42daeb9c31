"""`syncam-data eval` end to end through the CLI on every INPUT layout, with synthetic views of known cameras."""

from __future__ import annotations

import json
import string
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cameras import Camera
from syncam_data.cli import app
from syncam_data.evaluate.synthetic import render_views
from syncam_data.render.output import SceneOutput
from syncam_data.shards.schema import ViewRecord
from syncam_data.shards.writer import ShardWriter
from syncam_data.video import encode

W, H = 224, 160
N_FRAMES = 9  # enough for a 9-frame FVD clip


@pytest.fixture(scope="module")
def views() -> tuple[list[Camera], list[np.ndarray]]:
    return render_views(3, W, H, seed=0)


def wrong_focal(c: Camera, f: float = 1.3) -> Camera:
    return Camera(c.width, c.height, c.fx * f, c.fy * f, c.cx, c.cy, c.c2w)


def write_scene(folder: Path, cams: list[Camera], imgs: list[np.ndarray], caption: str = "") -> Path:
    out = SceneOutput(folder, fps=8)
    for i, (c, img) in enumerate(zip(cams, imgs)):
        out.add_camera(f"cam{i:02d}", c)
        for _ in range(N_FRAMES):
            out.add_frame(f"cam{i:02d}", img)
    out.finish({"caption": caption})
    return folder


def run_cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["eval", *map(str, args)])
    return r.exit_code, r.output


def load(out: Path) -> tuple[dict, list[dict]]:
    return json.loads((out / "summary.json").read_text()), pq.read_table(out / "eval.parquet").to_pylist()


@pytest.fixture(scope="module")
def render_root(tmp_path_factory, views) -> Path:
    """Two good scenes and one whose cameras.json states a wrong focal length for cam01."""
    cams, imgs = views
    root = tmp_path_factory.mktemp("renders")
    write_scene(root / "scene_a", cams, imgs, caption="a textured box in a room")
    write_scene(root / "scene_b", cams[::-1], imgs[::-1])
    write_scene(root / "scene_bad", [cams[0], wrong_focal(cams[1]), cams[2]], imgs)
    return root


def test_render_folders_end_to_end(tmp_path: Path, render_root: Path) -> None:
    out = tmp_path / "out"
    code, text = run_cli(render_root, "--out", out, "--frames", "2")
    assert code == 0, text
    summary, rows = load(out)
    # One row per group / pair / frame: 3 groups x 3 pairs x 2 frames.
    assert len(rows) == 18
    assert {r["frame_index"] for r in rows} == {0, N_FRAMES - 1}
    groups = {g["key"]: g for g in summary["groups"]}
    assert set(groups) == {"render/scene_a", "render/scene_b", "render/scene_bad"}
    for k in ("render/scene_a", "render/scene_b"):
        assert groups[k]["epi_symmetric_median"] < 0.5 and not groups[k]["flagged"]
        assert groups[k]["matched_pixels_mean"] > 50
    assert groups["render/scene_bad"]["flagged"] and groups["render/scene_bad"]["epi_symmetric_median"] > 2.0
    assert groups["render/scene_bad"]["worst_view"] == "cam01"  # the camera whose focal length is wrong
    assert [g["key"] for g in summary["flagged_groups"]] == ["render/scene_bad"]
    assert "FLAGGED render/scene_bad" in text
    # Model-based scores were not computed: they say so rather than report a number.
    assert summary["scores"]["clip_t"] == {"value": None, "groups": 0, "skipped": "no --clip weights given"}
    assert summary["scores"]["fvd"]["fvd"] is None and "no --i3d" in summary["scores"]["fvd"]["skipped"]
    assert "clip_t: skipped (no --clip weights given)" in text
    assert all(r["clip_f"] is None for r in rows)
    html = (out / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 3  # every group drawn (fewer than --report-groups)
    # The worst group is drawn first.
    assert html.index("render/scene_bad: cam") < html.index("render/scene_a: cam")


def test_single_scene_folder_and_fail_on_flag(tmp_path: Path, render_root: Path) -> None:
    code, _ = run_cli(render_root / "scene_a", "--out", tmp_path / "a", "--frames", "1", "--fail-on-flag")
    assert code == 0
    code, text = run_cli(render_root / "scene_bad", "--out", tmp_path / "bad", "--frames", "1", "--fail-on-flag")
    assert code == 2, text


def test_cameras_override_replaces_stated_cameras(tmp_path: Path, render_root: Path) -> None:
    fixed = json.loads((render_root / "scene_a" / "cameras.json").read_text())
    override = tmp_path / "cams.json"
    override.write_text(json.dumps(fixed))
    code, text = run_cli(render_root / "scene_bad", "--out", tmp_path / "o", "--frames", "1", "--cameras", override)
    assert code == 0, text
    summary, _ = load(tmp_path / "o")
    assert summary["overall"]["groups_flagged"] == 0
    assert summary["overall"]["epi_symmetric_median"] < 0.5


def test_no_check_cameras_reports_matches_only(tmp_path: Path, render_root: Path) -> None:
    code, _ = run_cli(render_root / "scene_bad", "--out", tmp_path / "o", "--frames", "1", "--no-check-cameras")
    assert code == 0
    summary, rows = load(tmp_path / "o")
    assert all(r["epi_symmetric_median"] is None and r["inliers"] > 50 for r in rows)
    assert summary["overall"]["groups_flagged"] == 0


def write_shards(root: Path, views) -> Path:
    cams, imgs = views
    with ShardWriter(root, name="synth") as w:
        for gid, gcams in (("good", cams), ("corrupt", [cams[0], cams[1], wrong_focal(cams[2], 0.75)])):
            recs = []
            for i, (c, img) in enumerate(zip(gcams, imgs)):
                recs.append(
                    ViewRecord(
                        dataset="synth",
                        kind="multiview_video",
                        group_id=gid,
                        view_id=f"cam{i:02d}",
                        media=encode(np.stack([img] * N_FRAMES), fps=8),
                        media_format="mp4",
                        num_frames=N_FRAMES,
                        height=H,
                        width=W,
                        fps=8.0,
                        caption="a textured box",
                        frame_indices=list(range(N_FRAMES)),
                        K=list(c.intrinsics),
                        c2w=c.c2w12(),
                    )
                )
            w.write_group(recs)
        # A multi-view image group (JPEG) and a single-view group (nothing to pair: skipped, not failed).
        jpgs = [
            cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            for im in imgs
        ]
        w.write_group(
            [
                ViewRecord(
                    dataset="synth",
                    kind="multiview_image",
                    group_id="images",
                    view_id=f"v{i:02d}",
                    media=jpg,
                    media_format="jpeg",
                    num_frames=1,
                    height=H,
                    width=W,
                    K=list(c.intrinsics),
                    c2w=c.c2w12(),
                )
                for i, (c, jpg) in enumerate(zip(cams, jpgs))
            ]
        )
        w.write_group(
            [
                ViewRecord(
                    dataset="synth",
                    kind="single_video",
                    group_id="web",
                    view_id="v0",
                    media=encode(np.stack([imgs[0]] * 3), fps=8),
                    media_format="mp4",
                    num_frames=3,
                    height=H,
                    width=W,
                )
            ]
        )
    return root


def test_shard_dataset_end_to_end(tmp_path: Path, views) -> None:
    shards = write_shards(tmp_path / "shards", views)
    out = tmp_path / "out"
    code, text = run_cli(shards, "--out", out, "--frames", "2", "--workers", "2")
    assert code == 0, text
    summary, rows = load(out)
    groups = {g["key"]: g for g in summary["groups"]}
    assert set(groups) == {"synth/good", "synth/corrupt", "synth/images"}
    assert summary["skipped_groups"] == {"synth/web": "1 view(s): cross-view measures need at least 2"}
    assert summary["errors"] == {}
    assert groups["synth/good"]["epi_symmetric_median"] < 0.5 and not groups["synth/good"]["flagged"]
    assert groups["synth/images"]["epi_symmetric_median"] < 0.5 and groups["synth/images"]["rows"] == 3  # one frame
    assert groups["synth/corrupt"]["flagged"] and "cam02" in groups["synth/corrupt"]["flagged_views"]
    assert groups["synth/corrupt"]["worst_view"] == "cam02"
    corrupt = {(r["view_a"], r["view_b"]): r["epi_symmetric_median"] for r in rows if r["group_id"] == "corrupt"}
    assert corrupt[("cam00", "cam01")] < 0.5 and corrupt[("cam00", "cam02")] > 2.0 and corrupt[("cam01", "cam02")] > 2.0
    assert len([r for r in rows if r["group_id"] == "good"]) == 6  # 3 pairs x 2 frames


def test_generate_output_and_frameset(tmp_path: Path, views) -> None:
    cams, imgs = views
    gen = tmp_path / "gen"
    write_scene(gen, cams, imgs)  # videos/ + cameras.json, as syncam-generate writes them ...
    (gen / "scene.json").unlink()
    (gen / "generation.json").write_text(
        json.dumps({"prompt": "a textured box in a room", "seed": 0})
    )  # ... plus generation.json
    code, text = run_cli(gen, "--out", tmp_path / "o", "--frames", "1")
    assert code == 0, text
    summary, rows = load(tmp_path / "o")
    assert [g["key"] for g in summary["groups"]] == ["generate/gen"]
    assert rows[0]["input_kind"] == "generate"
    assert summary["overall"]["epi_symmetric_median"] < 0.5
    # A folder of frame sets (sample-frames layout): images named in cameras.json.
    sets = tmp_path / "sets" / "seq_s000"
    sets.mkdir(parents=True)
    entries = []
    for i, (c, img) in enumerate(zip(cams, imgs)):
        cv2.imwrite(str(sets / f"v{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        entries.append(c.to_dict(id=f"v{i:02d}", image=f"v{i:02d}.png", frame_index=10 * i))
    (sets / "cameras.json").write_text(json.dumps({"source": "realestate10k", "sequence": "seq", "cameras": entries}))
    code, text = run_cli(tmp_path / "sets", "--out", tmp_path / "o2")
    assert code == 0, text
    summary, _ = load(tmp_path / "o2")
    assert [g["key"] for g in summary["groups"]] == ["realestate10k/seq_s000"]
    assert summary["overall"]["within_1px"] > 0.9


def test_bad_inputs_fail_with_clear_messages(tmp_path: Path, render_root: Path) -> None:
    code, text = run_cli(tmp_path / "missing", "--out", tmp_path / "o")
    assert code == 1 and "no such file" in text
    (tmp_path / "empty").mkdir()
    code, text = run_cli(tmp_path / "empty", "--out", tmp_path / "o")
    assert code == 1 and "found no shard dataset" in text
    code, text = run_cli(render_root, "--out", tmp_path / "o", "--matcher", "superglue")
    assert code == 1 and "not available" in text
    code, text = run_cli(render_root, "--out", tmp_path / "o", "--matcher", "loftr")
    assert code == 1 and "needs local weights" in text
    code, text = run_cli(render_root, "--out", tmp_path / "o", "--clip", tmp_path)
    assert code == 1 and "not a CLIP model folder" in text


def test_corrupt_video_is_recorded_and_others_evaluated(tmp_path: Path, render_root: Path) -> None:
    import shutil

    root = tmp_path / "r"
    shutil.copytree(render_root / "scene_a", root / "scene_a")
    shutil.copytree(render_root / "scene_b", root / "scene_b")
    (root / "scene_b" / "videos" / "cam01.mp4").write_bytes(b"not a video at all")
    code, text = run_cli(root, "--out", tmp_path / "o", "--frames", "1")
    assert code == 0, text
    summary, _ = load(tmp_path / "o")
    assert [g["key"] for g in summary["groups"]] == ["render/scene_a"]
    assert "cam01.mp4" in summary["errors"]["render/scene_b"]


# --- model-based scores with tiny random models (the same code path as real weights) -------------


def tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True)
    chars = list(string.ascii_lowercase + string.digits + " .,")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    eos = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    ).save_pretrained(folder)
    return folder


def tiny_i3d(path: Path) -> Path:
    import torch

    class TinyI3D(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 6, kernel_size=3, stride=(2, 8, 8))

        def forward(
            self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
        ) -> torch.Tensor:
            return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))

    torch.manual_seed(0)
    torch.jit.script(TinyI3D()).save(str(path))
    return path


@pytest.mark.slow
def test_clip_and_fvd_with_local_weights(tmp_path: Path, render_root: Path, views) -> None:
    clip = tiny_clip(tmp_path / "clip")
    i3d = tiny_i3d(tmp_path / "i3d.pt")
    out = tmp_path / "o"
    code, text = run_cli(
        render_root,
        "--out",
        out,
        "--frames",
        "1",
        "--clip",
        clip,
        "--i3d",
        i3d,
        "--fvd-reference",
        render_root,
        "--fvd-frames",
        "9",
    )
    assert code == 0, text
    summary, rows = load(out)
    s = summary["scores"]
    groups = {g["key"]: g for g in summary["groups"]}
    # CLIP-T only where a caption exists; CLIP-F for every pair (cosine x 100).
    assert groups["render/scene_a"]["clip_t"] is not None and -100 <= groups["render/scene_a"]["clip_t"] <= 100
    assert groups["render/scene_b"]["clip_t"] is None
    assert s["clip_t"]["groups"] == 1
    assert all(r["clip_f"] is not None and -100.0 <= r["clip_f"] <= 100.001 for r in rows)
    # Identical frames in two views have CLIP-F 100: scene_b's views are scene_a's in reverse, so no pair is identical,
    # but the score must be symmetric in the data: the same pair of images in both scenes gives the same value.
    fa = {(r["view_a"], r["view_b"]): r["clip_f"] for r in rows if r["group_id"] == "scene_a"}
    fb = {(r["view_a"], r["view_b"]): r["clip_f"] for r in rows if r["group_id"] == "scene_b"}
    assert fa[("cam00", "cam02")] == pytest.approx(fb[("cam00", "cam02")], abs=1e-3)
    # FVD of a set against itself is 0; 9 clips on each side.
    assert s["fvd"]["clips"] == 9 and s["fvd"]["reference_clips"] == 9
    assert s["fvd"]["fvd"] == pytest.approx(0.0, abs=1e-3)
    # Against a different reference it is positive.
    ref = tmp_path / "ref"
    rng = np.random.default_rng(1)
    for k in range(2):
        noise = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(2)]
        write_scene(ref / f"noise{k}", views[0][:2], noise)
    code, text = run_cli(
        render_root,
        "--out",
        tmp_path / "o2",
        "--frames",
        "1",
        "--i3d",
        i3d,
        "--fvd-reference",
        ref,
        "--fvd-frames",
        "9",
    )
    assert code == 0, text
    s2, _ = load(tmp_path / "o2")
    assert s2["scores"]["fvd"]["fvd"] > 1e-3
    assert s2["scores"]["clip_t"]["skipped"] == "no --clip weights given"


@pytest.mark.slow
def test_local_workers_and_ray_give_the_same_rows(tmp_path: Path, render_root: Path) -> None:
    """--workers 2 and --engine ray evaluate the same pairs to the same numbers as one process."""
    ray = pytest.importorskip("ray")

    def rows(out: Path) -> list[dict]:
        return sorted(load(out)[1], key=lambda r: (r["group_id"], r["view_a"], r["view_b"], r["frame"]))

    args = (render_root, "--frames", "1", "--report-groups", "0")
    assert run_cli(*args, "--out", tmp_path / "one")[0] == 0
    assert run_cli(*args, "--out", tmp_path / "two", "--workers", "2")[0] == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        code, text = run_cli(*args, "--out", tmp_path / "ray", "--engine", "ray")
    finally:
        ray.shutdown()
    assert code == 0, text
    ref = rows(tmp_path / "one")
    assert len(ref) == 9
    assert rows(tmp_path / "two") == ref
    assert rows(tmp_path / "ray") == ref
    assert load(tmp_path / "ray")[0]["engine"] == "ray"


def test_outputs_are_published_durably(tmp_path: Path, render_root: Path, monkeypatch) -> None:
    """summary.json, eval.parquet and report.html: each fsynced before the rename that publishes it, the folder after
    (they were renamed in without any fsync: a power loss could leave an empty summary.json)."""
    from tests.durability import FsEvents

    ev = FsEvents(monkeypatch)
    out = tmp_path / "out"
    code, text = run_cli(render_root / "scene_a", "--out", out, "--frames", "1", "--workers", "1")
    assert code == 0, text
    for name in ("summary.json", "eval.parquet", "report.html"):
        ev.assert_published(out / name)

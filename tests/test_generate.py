"""Camera rigs, the sampling loop and `syncam-generate` end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from syncam_data.cameras import Camera, look_at
from syncam_data.video import encode, probe
from syncam_model.camera_input import CameraRule
from syncam_model.cli_generate import app
from syncam_model.config import AdapterSpec
from syncam_model.generate import GenerationConfig, combine_rerender, generate, plan_latents
from syncam_model.model import load_components, save_adapter
from syncam_model.modules import multiview_modules
from syncam_model.rig import RigError, load_rig, parse_preset, preset_rig, write_rig

from .conftest import smooth_frames

H, W, FRAMES = 32, 48, 9


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def perturbed_tiny(variant: str = "2b", spec: AdapterSpec | None = None):
    c = load_components("tiny", tiny_config={"variant": variant}, adapter=spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in multiview_modules(c.transformer):
            for lin in (m.camera_encoder, m.projector_linear):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
    return c


# --------------------------------------------------------------------------- rig


def test_preset_broadcast_and_geometry():
    rig = preset_rig("azimuth:0,90,180;elevation:30", W, H)
    assert rig.ids == ["view00", "view01", "view02"]
    rel = rig.relative()
    np.testing.assert_allclose(rel[0], np.eye(3, 4).reshape(-1), atol=1e-6)
    # every camera looks at the centre from distance 6 at 30 degrees elevation
    for cam in rig.cameras:
        assert np.linalg.norm(cam.t) == pytest.approx(6.0)
        assert cam.t[2] == pytest.approx(6.0 * np.sin(np.radians(30)))
        np.testing.assert_allclose(cam.forward, -cam.t / np.linalg.norm(cam.t), atol=1e-9)
    # view 2 is opposite view 0: their optical axes' horizontal parts are opposite
    assert np.dot(rig.cameras[0].forward[:2], rig.cameras[2].forward[:2]) < 0
    # default rule: the farthest camera centre from view 0 is at distance 1 (view 2, opposite view 0, at 2 x 6 cos 30 m)
    far = 2 * 6.0 * np.cos(np.radians(30))
    np.testing.assert_allclose(
        np.linalg.norm(rel[:, [3, 7, 11]], axis=1), [0.0, np.sqrt(2) * 6 * np.cos(np.radians(30)) / far, 1.0], atol=1e-6
    )
    # fixed rule: metric translation divided by the scale
    metric = rig.relative(CameraRule(translation_normalization="fixed"))
    np.testing.assert_allclose(np.linalg.norm(metric[2, [3, 7, 11]]), far, atol=1e-5)
    halved = rig.relative(CameraRule(translation_normalization="fixed", translation_scale=2.0))
    np.testing.assert_allclose(halved[1, [3, 7, 11]], metric[1, [3, 7, 11]] / 2, atol=1e-6)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty"),
        ("azimuth", "expected"),
        ("yaw:1,2", "expected"),
        ("azimuth:0,30;elevation:1,2,3", "azimuth has 2 values"),
        ("distance:0", "positive"),
        ("azimuth:a", "numbers"),
    ],
)
def test_bad_presets(spec, message):
    with pytest.raises(RigError, match=message):
        preset_rig(spec, W, H)


def test_parse_preset_aliases():
    assert parse_preset("az:0,30 el:10") == {"azimuth": [0.0, 30.0], "elevation": [10.0]}


def test_cameras_json_rig_rescales_intrinsics(tmp_path):
    cams = [
        Camera(640, 480, 500, 500, 320, 240, look_at((4, 0, 1), (0, 0, 0))),
        Camera(640, 480, 500, 500, 320, 240, look_at((0, 4, 1), (0, 0, 0))),
    ]
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps({"cameras": [c.to_dict(id=f"cam{i}") for i, c in enumerate(cams)]}))
    rig = load_rig(path, 96, 64, views=["cam1", "cam0"])
    assert rig.ids == ["cam1", "cam0"]
    assert (rig.cameras[0].width, rig.cameras[0].height) == (96, 64)
    np.testing.assert_allclose(rig.cameras[0].c2w, cams[1].c2w)
    assert rig.cameras[0].fy == pytest.approx(500 * 96 / 640)  # resize to cover 96x64, then centre crop
    with pytest.raises(RigError, match="no camera"):
        load_rig(path, 96, 64, views=["nope"])
    write_rig(rig, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["cameras"][0]["id"] == "cam1"


# --------------------------------------------------------------------------- sampling


def test_generate_text_mode_deterministic_and_coupled():
    c = perturbed_tiny()
    cams = preset_rig("azimuth:0,40", W, H).relative()
    kw = dict(num_frames=FRAMES, height=H, width=W, steps=2)
    a = generate(c, GenerationConfig(prompt="a cat", seed=1, **kw), cams, progress=False)
    assert a.shape == (2, FRAMES, 3, H, W) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, generate(c, GenerationConfig(prompt="a cat", seed=1, **kw), cams, progress=False))
    assert not torch.equal(a, generate(c, GenerationConfig(prompt="a cat", seed=2, **kw), cams, progress=False))
    # view 0 depends on view 1's camera: the views are generated jointly
    cams2 = preset_rig("azimuth:0,120", W, H).relative()
    assert not torch.allclose(
        a[0], generate(c, GenerationConfig(prompt="a cat", seed=1, **kw), cams2, progress=False)[0]
    )


def test_generate_guidance_one_is_single_pass_and_differs_from_cfg():
    c = load_components("tiny")
    cams = preset_rig("azimuth:0,30", W, H).relative()
    kw = dict(num_frames=FRAMES, height=H, width=W, steps=2, seed=0)
    assert not torch.allclose(
        generate(c, GenerationConfig(prompt="a dog", guidance=1.0, **kw), cams, progress=False),
        generate(c, GenerationConfig(prompt="a dog", guidance=6.0, **kw), cams, progress=False),
    )


def test_generate_rerender_keeps_input_view():
    c = perturbed_tiny()
    cams = preset_rig("azimuth:0,30,60", W, H).relative()
    video = torch.from_numpy(smooth_frames(FRAMES, H, W)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = generate(
        c,
        GenerationConfig(prompt="a cat", num_frames=FRAMES, height=H, width=W, steps=2),
        cams,
        input_video=video,
        progress=False,
    )
    assert out.shape == (3, FRAMES, 3, H, W)
    from syncam_model.model import decode_latents, encode_video

    recon = decode_latents(c, encode_video(c, video[None], sample=False))[0]
    torch.testing.assert_close(out[0], recon)
    # passes run one by one give the same result as the batched passes
    seq = generate(
        c,
        GenerationConfig(prompt="a cat", num_frames=FRAMES, height=H, width=W, steps=2, batch_passes=False),
        cams,
        input_video=video,
        progress=False,
    )
    torch.testing.assert_close(seq, out, atol=1e-4, rtol=1e-4)
    # the input conditions the new views
    other = -video
    out2 = generate(
        c,
        GenerationConfig(prompt="a cat", num_frames=FRAMES, height=H, width=W, steps=2),
        cams,
        input_video=other,
        progress=False,
    )
    assert not torch.allclose(out[1], out2[1])


def test_generate_rope_15_pads_latent_frames():
    c = load_components("tiny", tiny_config={"variant": "1.5"})
    plan = plan_latents(c, FRAMES, H, W)
    assert (plan.latent_frames, plan.padding_frames) == (4, 1)  # 9 frames -> 3 latents, padded to 4
    cams = np.eye(3, 4).reshape(1, 12).repeat(2, 0)
    out = generate(
        c,
        GenerationConfig(prompt="a cat", num_frames=FRAMES, height=H, width=W, steps=1, sampler="dpm"),
        cams,
        progress=False,
    )
    assert out.shape == (2, FRAMES, 3, H, W)
    # re-rendering pads the condition latent too, and drops the padding before decoding
    from syncam_model.model import decode_latents, encode_video

    video = torch.from_numpy(smooth_frames(FRAMES, H, W)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = generate(
        c,
        GenerationConfig(prompt="a cat", num_frames=FRAMES, height=H, width=W, steps=1),
        cams,
        input_video=video,
        progress=False,
    )
    torch.testing.assert_close(out[0], decode_latents(c, encode_video(c, video[None], sample=False))[0])


def test_generate_rejects_bad_sizes():
    c = load_components("tiny")
    cams = np.eye(3, 4).reshape(1, 12).repeat(2, 0)
    with pytest.raises(ValueError, match="4k\\+1"):
        generate(c, GenerationConfig(prompt="x", num_frames=8, height=H, width=W, steps=1), cams, progress=False)
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(c, GenerationConfig(prompt="x", num_frames=FRAMES, height=40, width=W, steps=1), cams, progress=False)
    with pytest.raises(ValueError, match="\\(n, 12\\)"):
        generate(
            c, GenerationConfig(prompt="x", num_frames=FRAMES, height=H, width=W, steps=1), cams[:, :6], progress=False
        )


def test_generation_config_checks_every_setting_once_and_names_the_flag(monkeypatch):
    """The settings' checks live in GenerationConfig (the CLI and generate() both rely on them)."""
    from syncam_data.config import ConfigError

    with pytest.raises(ConfigError, match=r"^--frames: 8 is not 4k\+1"):
        GenerationConfig.parse({"prompt": "x", "num_frames": 8})
    with pytest.raises(ConfigError, match=r"^--frames: 13 frames is not 8N\+1"):
        GenerationConfig.parse({"prompt": "x", "num_frames": 13})  # encodable (4k+1) but not decodable back to 13
    with pytest.raises(
        ConfigError, match=r"^--resolution: height and width must be positive multiples of 16 \(got 40\)"
    ):
        GenerationConfig.parse({"prompt": "x", "height": 40})
    with pytest.raises(ConfigError, match=r"^--steps: .*greater than or equal to 1"):
        GenerationConfig.parse({"prompt": "x", "steps": 0})
    with pytest.raises(ConfigError, match=r"^--guidance: nan is not a finite number; --sampler: "):
        GenerationConfig.parse({"prompt": "x", "guidance": float("nan"), "sampler": "euler"})
    with pytest.raises(ConfigError, match=r"generation: unknown option 'cfg_scale'"):
        GenerationConfig.parse({"prompt": "x", "cfg_scale": 5.0})
    with pytest.raises(ConfigError, match=r"^--prompt: Field required"):
        GenerationConfig.parse({})
    monkeypatch.setenv("SYNCAM_MAX_SAMPLING_STEPS", "10")
    with pytest.raises(ConfigError, match=r"^--steps: 11 is over the maximum of 10 .*SYNCAM_MAX_SAMPLING_STEPS"):
        GenerationConfig.parse({"prompt": "x", "steps": 11})
    cfg = GenerationConfig.parse({"prompt": "x", "steps": 10})
    assert cfg.record()["steps"] == 10 and GenerationConfig.parse(cfg.record()) == cfg
    assert all(f.description for f in GenerationConfig.model_fields.values())


# --------------------------------------------------------------------------- CLI


def _run(args):
    # A wide terminal: typer's error box would otherwise wrap long messages.
    return CliRunner().invoke(app, args, env={"COLUMNS": "1000"})


def _check_output(out, n, ids=None):
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == n
    for v in videos:
        info = probe(v, count_frames=True)
        assert (info.num_frames, info.height, info.width) == (FRAMES, H, W)
    grid = probe(out / "grid.mp4", count_frames=True)
    assert (grid.num_frames, grid.height, grid.width) == (FRAMES, H, n * W)
    cams = json.loads((out / "cameras.json").read_text())["cameras"]
    assert len(cams) == n and {"id", "width", "height", "fx", "fy", "cx", "cy", "c2w"} <= set(cams[0])
    if ids:
        assert [c["id"] for c in cams] == ids
    gen = json.loads((out / "generation.json").read_text())
    assert gen["base_id"]["pretrained"] == "tiny" and gen["settings"]["frames"] == FRAMES
    return gen, cams


def test_cli_text_to_views_with_checkpoint(tmp_path):
    c = perturbed_tiny()
    fixed = CameraRule(translation_normalization="fixed", translation_scale=2.0)
    ckpt = save_adapter(c.transformer, tmp_path / "adapter.safetensors", {"base_id": c.base_id, **fixed.to_meta()})
    out = tmp_path / "gen"
    common = [
        "--pretrained",
        "tiny",
        "--prompt",
        "a cat",
        "--frames",
        str(FRAMES),
        "--resolution",
        f"{H}x{W}",
        "--steps",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    r = _run([*common, "--checkpoint", str(ckpt), "--cameras", "azimuth:0,30,60", "--out", str(out)])
    assert r.exit_code == 0, r.output
    gen, cams = _check_output(out, 3, ["view00", "view01", "view02"])
    assert gen["mode"] == "text" and gen["checkpoint"] == str(ckpt)
    assert gen["settings"]["camera_rule"] == fixed.model_dump()  # taken from the checkpoint
    # the official inference's defaults: dynamic CFG at guidance 6, DDIM for 2B
    assert (
        gen["settings"]["dynamic_cfg"] is True
        and gen["settings"]["guidance"] == 6.0
        and gen["settings"]["sampler"] == "ddim"
    )
    np.testing.assert_allclose(cams[0]["c2w"], preset_rig("azimuth:0,30,60", W, H).cameras[0].c2w12())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gen")]  # no temporary folder left

    # refuses to overwrite without --overwrite; a 5b checkpoint is refused for a 2b base
    r = _run([*common, "--cameras", "azimuth:0,30", "--out", str(out)])
    assert r.exit_code != 0 and "--overwrite" in r.output
    c5 = load_components("tiny", tiny_config={"variant": "5b"})
    ckpt5 = save_adapter(c5.transformer, tmp_path / "a5.safetensors", {"base_id": c5.base_id, **CameraRule().to_meta()})
    r = _run([*common, "--checkpoint", str(ckpt5), "--tiny-variant", "2b", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "different base model" in r.output
    assert not (tmp_path / "bad").exists()


def test_cli_rerender_from_cameras_json(tmp_path):
    src = tmp_path / "input.mp4"
    encode(smooth_frames(12, 48, 64), src, fps=8)  # larger and longer than the output: cropped and trimmed
    rig = preset_rig("azimuth:10,50", W, H)
    write_rig(rig, tmp_path / "cameras.json")
    out = tmp_path / "rerender"
    r = _run(
        [
            "--pretrained",
            "tiny",
            "--prompt",
            "a cat",
            "--frames",
            str(FRAMES),
            "--resolution",
            f"{H}x{W}",
            "--steps",
            "2",
            "--no-progress",
            "--device",
            "cpu",
            "--cameras",
            str(tmp_path / "cameras.json"),
            "--input-video",
            str(src),
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    gen, cams = _check_output(out, 2, ["view00", "view01"])
    assert (
        gen["mode"] == "rerender"
        and gen["settings"]["text_guidance"] == 7.5
        and gen["settings"]["video_guidance"] == 1.8
    )
    np.testing.assert_allclose(cams[0]["c2w"], rig.cameras[0].c2w12())


def test_cli_bad_arguments(tmp_path):
    r = _run(["--pretrained", "tiny", "--prompt", "x", "--resolution", "32by48", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "HxW" in r.output
    r = _run(["--pretrained", "tiny", "--prompt", "x", "--cameras", "tilt:3", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "azimuth|elevation|distance" in r.output
    (tmp_path / "afile").write_text("x")
    r = _run(["--pretrained", "tiny", "--prompt", "x", "--out", str(tmp_path / "afile")])
    assert r.exit_code == 2 and "not a folder" in r.output
    r = _run(
        [
            "--pretrained",
            "tiny",
            "--prompt",
            "x",
            "--checkpoint",
            str(tmp_path / "none.safetensors"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert r.exit_code == 2 and "adapter file not found" in r.output


def test_frame_counts_the_vae_cannot_decode_are_refused(tmp_path):
    """5 frames -> 2 latent frames, which CogVideoX's VAE decodes to 8 frames: refuse, naming 8N+1."""
    from typer.testing import CliRunner

    from syncam_model.cli_generate import app as gen_app

    res = CliRunner().invoke(
        gen_app,
        [
            "--pretrained",
            "tiny",
            "--prompt",
            "x",
            "--cameras",
            "azimuth:0,30",
            "--frames",
            "5",
            "--resolution",
            "32x48",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code != 0 and "8N+1" in res.output


# --------------------------------------------------------------------------- fidelity to the official inference


def test_rerender_steps_view_0_of_the_no_video_pass_with_its_unguided_prediction():
    """Guidance combines views 1..n-1 only; view 0 (noisy in the no-video pass) follows v(none, none)[0]."""
    from syncam_model.generate import _denoise, make_scheduler
    from syncam_model.text import encode_prompts

    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(1, 3, 2, 4, 4, 6, generator=g) for _ in range(3)]
    v = combine_rerender(*parts, video_guidance=1.8, text_guidance=7.5)
    assert torch.equal(v[:, 0], parts[0][:, 0])
    torch.testing.assert_close(v[:, 1:], (parts[0] + 1.8 * (parts[1] - parts[0]) + 7.5 * (parts[2] - parts[1]))[:, 1:])

    c = perturbed_tiny()
    model = c.transformer.eval()
    n = 3
    cams = torch.from_numpy(preset_rig("azimuth:0,30,60", W, H).relative())[None]
    neg, pos = encode_prompts(c, ["", "a cat"]).split(1)
    text = torch.cat([neg, neg, pos])
    mask = torch.zeros(3, n, dtype=torch.bool)
    mask[1:, 0] = True
    latents = torch.randn(1, n, 3, 4, 4, 6, generator=g)
    cond = torch.randn(1, 3, 4, 4, 6, generator=g)
    sched = make_scheduler(c, "ddim")
    sched.set_timesteps(4)
    t = sched.timesteps[:1]
    with torch.no_grad():
        out = _denoise(
            model,
            sched,
            t,
            latents,
            cond,
            text,
            cams,
            mask,
            g,
            False,
            True,
            guidance=6.0,
            do_cfg=False,
            dynamic=False,
            text_guidance=7.5,
            video_guidance=1.8,
        )
        x = latents.expand(3, -1, -1, -1, -1, -1).clone()
        x[1:, 0] = cond[0]
        pred = model(x, text, t.expand(3), cams.expand(3, -1, -1), mask)
    none, video, full = pred.chunk(3)
    step = lambda vel, sample: sched.step(vel, t[0], sample, return_dict=False)[0]  # noqa: E731 - DDIM is elementwise
    torch.testing.assert_close(out[:, 0], step(none[:, 0], latents[:, 0]), atol=1e-5, rtol=1e-5)
    guided = none + 1.8 * (video - none) + 7.5 * (full - video)
    torch.testing.assert_close(out[:, 1:], step(guided[:, 1:], latents[:, 1:]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, 0], step(guided[:, 0], latents[:, 0]), atol=1e-3)


def test_defaults_follow_the_official_cogvideox_inference():
    """inference/syncammaster_inference.py: 50 steps, guidance 6, use_dynamic_cfg=True, DDIM for 2B, DPM for 5B."""
    from syncam_model.generate import resolve_sampler

    defaults = {k: GenerationConfig.default(k) for k in ("steps", "guidance", "use_dynamic_cfg", "sampler")}
    assert (defaults["steps"], defaults["guidance"], defaults["use_dynamic_cfg"], defaults["sampler"]) == (
        50,
        6.0,
        True,
        "auto",
    )
    c = load_components("tiny")
    assert resolve_sampler(c, "auto") == "ddim"
    assert resolve_sampler(load_components("tiny", tiny_config={"variant": "5b"}), "auto") == "dpm"
    cams = preset_rig("azimuth:0,30", W, H).relative()
    kw = dict(num_frames=FRAMES, height=H, width=W, steps=2, seed=0)
    default = generate(c, GenerationConfig(prompt="a dog", **kw), cams, progress=False)
    assert torch.equal(
        default,
        generate(
            c,
            GenerationConfig(prompt="a dog", guidance=6.0, use_dynamic_cfg=True, sampler="ddim", **kw),
            cams,
            progress=False,
        ),
    )
    assert not torch.allclose(
        default, generate(c, GenerationConfig(prompt="a dog", use_dynamic_cfg=False, **kw), cams, progress=False)
    )


def test_cli_uses_the_adapters_structure_and_camera_rule(tmp_path):
    """The transformer is built as the adapter file says; its camera rule is applied to --cameras FILE; another rule is refused."""
    spec = AdapterSpec(projector="relu_linear", attention_text="all_views", position="block_input")
    c = perturbed_tiny(spec=spec)
    ckpt = save_adapter(
        c.transformer, tmp_path / "adapter.safetensors", {"base_id": c.base_id, **CameraRule().to_meta()}
    )
    rig = preset_rig("azimuth:0,30,90;distance:4", W, H)
    write_rig(rig, tmp_path / "cameras.json")
    common = [
        "--pretrained",
        "tiny",
        "--prompt",
        "a cat",
        "--frames",
        str(FRAMES),
        "--resolution",
        f"{H}x{W}",
        "--steps",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--checkpoint",
        str(ckpt),
        "--cameras",
        str(tmp_path / "cameras.json"),
    ]
    r = _run([*common, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    gen = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert gen["checkpoint_meta"]["adapter_config"]["attention_text"] == "all_views"
    dist = np.linalg.norm(np.asarray(gen["camera_input"])[:, [3, 7, 11]], axis=1)
    np.testing.assert_allclose(
        dist, [0.0, 2 * np.sin(np.radians(15)) / np.sqrt(2), 1.0], atol=1e-5
    )  # farthest view at 1
    r = _run([*common, "--translation-normalization", "fixed", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "trained with camera translation rule max_distance" in r.output
    assert not (tmp_path / "b").exists()
    # without a checkpoint the options choose the rule: fixed, 2 m per unit
    r = _run(
        [
            *common[:-4],
            "--cameras",
            str(tmp_path / "cameras.json"),
            "--translation-normalization",
            "fixed",
            "--translation-scale",
            "2",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    assert r.exit_code == 0, r.output
    rel = np.asarray(json.loads((tmp_path / "c" / "generation.json").read_text())["camera_input"])
    np.testing.assert_allclose(
        np.linalg.norm(rel[2, [3, 7, 11]]), np.linalg.norm(rig.cameras[2].t - rig.cameras[0].t) / 2, atol=1e-5
    )

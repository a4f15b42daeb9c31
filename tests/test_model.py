"""The multi-view adapter on tiny CogVideoX transformers: identity at init, training signal, coupling, weights I/O."""

from __future__ import annotations

import json

import pytest
import torch

from syncam_model.camera_input import CameraRule
from syncam_model.config import AdapterSpec
from syncam_model.model import (
    AdapterFileError,
    MultiViewTransformer,
    decode_latents,
    encode_video,
    encode_video_dist,
    load_adapter,
    load_components,
    read_adapter_meta,
    sample_latents,
    save_adapter,
)
from syncam_model.modules import MultiViewContext, MultiViewModule, multiview_modules
from syncam_model.text import encode_prompts

VARIANTS = ["2b", "5b", "1.5"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(variant: str = "2b", spec: AdapterSpec | None = None, **kw):
    return load_components("tiny", tiny_config={"variant": variant, **kw}, adapter=spec)


RULE = CameraRule().to_meta()


def inputs(c, b=2, n=3, frames=None, h=8, w=12, seed=0):
    """Random latents/text/timesteps/cameras for a tiny model (frames default: 2 for 1.5, else 3)."""
    g = torch.Generator().manual_seed(seed)
    if frames is None:
        frames = 2 if c.transformer.config.patch_size_t else 3
    ch = c.transformer.config.in_channels
    latents = torch.randn(b, n, frames, ch, h, w, generator=g)
    text = torch.randn(b, c.max_text_length, c.transformer.config.text_embed_dim, generator=g)
    timestep = torch.randint(0, 1000, (b,), generator=g)
    cameras = torch.randn(b, n, 12, generator=g)
    return latents, text, timestep, cameras


def perturb(model: MultiViewTransformer, seed: int = 0, std: float = 0.3) -> None:
    """Make the zero-initialized layers non-zero (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in multiview_modules(model):
            for lin in (m.camera_encoder, m.projector_linear):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * std)


# --------------------------------------------------------------------------- identity at init


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init_equals_base_per_view(variant):
    c = tiny(variant)
    model = c.transformer.eval()
    for n, (h, w) in [(1, (8, 12)), (3, (8, 12)), (2, (6, 10))]:  # 6x10 differs from the config's sample size
        latents, text, t, cams = inputs(c, n=n, h=h, w=w)
        with torch.no_grad():
            out = model(latents, text, t, cams)
            assert out.shape == latents.shape
            for i in range(n):
                ref = model.forward_base(latents[:, i], text, t)
                torch.testing.assert_close(out[:, i], ref, atol=2e-5, rtol=1e-5)


SPECS = [
    AdapterSpec(),
    AdapterSpec(projector="relu_linear"),
    AdapterSpec(attention_text="all_views", position="block_input"),
]


def unpatched(c):
    """A plain diffusers CogVideoXTransformer3DModel (unpatched CogVideoXBlock class) with the base weights of ``c``."""
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    plain = CogVideoXTransformer3DModel(**dict(c.transformer.config))
    base = {k: v for k, v in c.transformer.base.state_dict().items() if ".multiview." not in k}
    plain.load_state_dict(base, strict=True)
    assert type(plain.transformer_blocks[0]) is CogVideoXBlock  # diffusers' own forward, not SynCam's copy of it
    return plain.eval()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.projector}-{s.attention_text}-{s.position}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init_equals_an_unpatched_diffusers_model(variant, spec):
    """At init the adapted model on a B*n batch is diffusers' unpatched model, bit for bit, block by block.

    The patched block's forward copies CogVideoXBlock.forward (diffusers 0.42); comparing with diffusers' own
    class (not a copy of ours) makes a diffusers upgrade that changes the block fail here.
    """
    c = tiny(variant, spec)
    plain = unpatched(c)
    latents, text, t, cams = inputs(c, n=2)
    b, n, f, _, h, w = latents.shape
    cfg = c.transformer.config
    rot = c.transformer.base_rotary_emb(f, h, w) if cfg.use_rotary_positional_embeddings else None
    with torch.no_grad():
        out = c.transformer(latents, text, t, cams)
        ref = plain(
            latents.flatten(0, 1),
            text.repeat_interleave(n, 0),
            t.repeat_interleave(n),
            image_rotary_emb=rot,
            return_dict=False,
        )[0]
        assert torch.equal(out.flatten(0, 1), ref)
        # one block: the patched block with a multi-view context against diffusers' CogVideoXBlock
        g = torch.Generator().manual_seed(1)
        d = cfg.num_attention_heads * cfg.attention_head_dim
        hw = (h // cfg.patch_size) * (w // cfg.patch_size)
        frames = f // (cfg.patch_size_t or 1)
        x = torch.randn(b * n, frames * hw, d, generator=g)
        enc = torch.randn(b * n, 7, d, generator=g)
        temb = torch.randn(b * n, cfg.time_embed_dim, generator=g)
        ctx = MultiViewContext(
            n, cams, hw, c.transformer.view_rotary_emb(n, h, w) if cfg.use_rotary_positional_embeddings else None
        )
        rot_b = c.transformer.base_rotary_emb(f, h, w) if cfg.use_rotary_positional_embeddings else None
        got = c.transformer.base.transformer_blocks[0](x, enc, temb, rot_b, {"syncam_multiview": ctx})
        want = plain.transformer_blocks[0](x, enc, temb, rot_b)
    assert ctx.calls == 1
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_identity_with_ofs_embedding():
    """CogVideoX 1.5 I2V-style configs carry an offset embedding; both paths pass it the pipeline's 2.0."""
    c = tiny("1.5", transformer={"ofs_embed_dim": 32})
    latents, text, t, cams = inputs(c, n=2)
    with torch.no_grad():
        out = c.transformer(latents, text, t, cams)
        for i in range(2):
            torch.testing.assert_close(
                out[:, i], c.transformer.forward_base(latents[:, i], text, t), atol=2e-5, rtol=1e-5
            )


def test_base_state_dict_keys_unchanged_and_new_weights_separate():
    c = tiny("5b")
    from diffusers import CogVideoXTransformer3DModel

    plain = CogVideoXTransformer3DModel(**dict(c.transformer.config))
    keys = set(c.transformer.base.state_dict())
    new = {k for k in keys if ".multiview." in k}
    assert keys - new == set(plain.state_dict())
    assert set(c.transformer.adapter_state_dict()) == new
    assert len(list(multiview_modules(c.transformer))) == c.transformer.config.num_layers


def test_module_initialized_from_block():
    c = tiny("2b")
    block = c.transformer.base.transformer_blocks[0]
    m: MultiViewModule = block.multiview
    d = m.dim
    assert torch.equal(m.attn.to_q.weight, block.attn1.to_q.weight)
    assert torch.equal(m.attn.to_out[0].weight, block.attn1.to_out[0].weight)
    assert torch.equal(m.attn.norm_k.weight, block.attn1.norm_k.weight)
    assert torch.equal(m.modulation.weight, block.norm1.linear.weight[: 3 * d])
    assert m.attn.to_q.weight.data_ptr() != block.attn1.to_q.weight.data_ptr()  # a copy, not shared
    assert not m.camera_encoder.weight.any() and not m.projector_linear.weight.any()
    assert isinstance(m.proj, torch.nn.Linear)  # the default projector: a plain zero Linear, as both official releases


# --------------------------------------------------------------------------- training signal


def test_only_adapter_trainable_by_default_and_base_unfreezes():
    c = tiny()
    model = c.transformer
    adapter = {id(p) for p in model.adapter_parameters()}
    for p in model.parameters():
        assert p.requires_grad == (id(p) in adapter)
    model.set_trainable(base=True)
    assert all(p.requires_grad for p in model.parameters())
    model.set_trainable(base=False)
    assert sum(p.requires_grad for p in model.parameters()) == len(adapter)


@pytest.mark.parametrize("variant, projector", [("2b", "linear"), ("5b", "linear"), ("2b", "relu_linear")])
def test_projection_trains_and_gradient_reaches_every_new_parameter(variant, projector):
    c = tiny(variant, AdapterSpec(projector=projector))
    model = c.transformer.train()
    latents, text, t, cams = inputs(c, n=2)
    target = torch.randn_like(latents)
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params.values(), lr=1e-3)

    loss = torch.nn.functional.mse_loss(model(latents, text, t, cams), target)
    loss.backward()
    proj = {n: p for n, p in params.items() if n.endswith("proj.weight" if projector == "linear" else "proj.1.weight")}
    assert len(proj) == c.transformer.config.num_layers
    assert proj and all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.values())
    before = {n: p.detach().clone() for n, p in proj.items()}
    opt.step()
    opt.zero_grad()
    for n, p in proj.items():
        assert not torch.equal(p, before[n]), f"{n} did not change after one optimizer step"

    loss = torch.nn.functional.mse_loss(model(latents, text, t, cams), target)
    loss.backward()
    dead = [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient after one step for {dead}"
    assert all(p.grad is None for p in model.base.parameters() if not p.requires_grad)


def test_gradient_checkpointing_matches_plain_backward():
    c = tiny("5b")
    perturb(c.transformer)
    latents, text, t, cams = inputs(c, n=2)
    model = c.transformer.train()

    def grads():
        model.zero_grad(set_to_none=True)
        out = model(latents, text, t, cams)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    out_plain, g_plain = grads()
    model.enable_gradient_checkpointing()
    assert model.base.gradient_checkpointing
    out_ckpt, g_ckpt = grads()
    torch.testing.assert_close(out_ckpt, out_plain)
    assert g_plain.keys() == g_ckpt.keys()
    for k in g_plain:
        torch.testing.assert_close(g_ckpt[k], g_plain[k], atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- coupling


@pytest.mark.parametrize("variant", ["2b", "1.5"])
def test_views_coupled_once_modules_are_nonzero(variant):
    c = tiny(variant)
    model = c.transformer.eval()
    latents, text, t, cams = inputs(c, b=1, n=3)
    other = latents.clone()
    other[:, 1] = torch.randn_like(other[:, 1])
    other_cams = cams.clone()
    other_cams[:, 1] += 1.0
    with torch.no_grad():
        # fresh modules: view 0 does not see view 1
        assert torch.equal(model(latents, text, t, cams)[:, 0], model(other, text, t, cams)[:, 0])
        perturb(model)
        base0 = model(latents, text, t, cams)[:, 0]
        assert (model(other, text, t, cams)[:, 0] - base0).abs().max() > 1e-4
        assert (model(latents, text, t, other_cams)[:, 0] - base0).abs().max() > 1e-4
        # batch samples stay independent
        two = torch.cat([latents, other]), torch.cat([text, text]), torch.cat([t, t]), torch.cat([cams, cams])
        torch.testing.assert_close(model(*two)[:1, 0], base0, atol=2e-5, rtol=1e-5)


def test_video_cond_mask_gives_the_clean_view_timestep_zero():
    fresh = tiny("2b")
    latents, text, _, cams = inputs(fresh, b=1, n=2)
    t = torch.tensor([700])
    mask = torch.tensor([[True, False]])
    base = fresh.transformer.forward_base
    with torch.no_grad():
        out = fresh.transformer(latents, text, t, cams, mask)
        torch.testing.assert_close(out[:, 0], base(latents[:, 0], text, torch.tensor([0])), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 1], base(latents[:, 1], text, t), atol=2e-5, rtol=1e-5)
        perturb(fresh.transformer)
        # once coupled, the generated view depends on whether view 0 is marked clean
        assert not torch.allclose(
            fresh.transformer(latents, text, t, cams, mask)[:, 1], fresh.transformer(latents, text, t, cams)[:, 1]
        )


def test_bad_inputs_rejected():
    c = tiny("1.5")
    latents, text, t, cams = inputs(c, n=2, frames=3)
    with pytest.raises(ValueError, match="patch_size_t"):
        c.transformer(latents, text, t, cams)
    c2 = tiny("2b")
    latents, text, t, cams = inputs(c2, n=2)
    with pytest.raises(ValueError, match="226 text tokens"):
        c2.transformer(latents, text[:, :10], t, cams)
    with pytest.raises(ValueError, match="cameras"):
        c2.transformer(latents, text, t, cams[:, :, :6])


# --------------------------------------------------------------------------- weights


def test_adapter_file_is_published_durably(tmp_path, monkeypatch):
    """The adapter is fsynced before the rename that publishes it, the folder after (it was renamed in unsynced)."""
    from tests.durability import FsEvents

    c = tiny()
    ev = FsEvents(monkeypatch)
    path = save_adapter(c.transformer, tmp_path / "adapter.safetensors", {"base_id": c.base_id, **RULE})
    ev.assert_published(path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    c = tiny("5b")
    perturb(c.transformer, seed=3)
    path = save_adapter(
        c.transformer, tmp_path / "ckpt" / "adapter.safetensors", {"base_id": c.base_id, "step": 7, **RULE}
    )
    assert not list(path.parent.glob(".*tmp"))
    meta = read_adapter_meta(path)
    assert meta["step"] == 7 and meta["base_id"]["config_sha256"] == c.base_id["config_sha256"]
    assert meta["adapter_config"]["rope"] is True

    fresh = tiny("5b")
    load_adapter(fresh.transformer, path, fresh.base_id)
    saved = c.transformer.adapter_state_dict()
    loaded = fresh.transformer.adapter_state_dict()
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k
    latents, text, t, cams = inputs(c, n=2)
    with torch.no_grad():
        assert torch.equal(c.transformer(latents, text, t, cams), fresh.transformer(latents, text, t, cams))


def test_mismatched_base_refused(tmp_path):
    c = tiny("5b")
    path = save_adapter(c.transformer, tmp_path / "a.safetensors", {"base_id": c.base_id, **RULE})
    other_config = tiny("2b")
    with pytest.raises(AdapterFileError, match="different base model.*use_rotary_positional_embeddings"):
        load_adapter(other_config.transformer, path, other_config.base_id)
    other_weights = tiny("5b", seed=1)
    with pytest.raises(AdapterFileError, match="weights differ"):
        load_adapter(other_weights.transformer, path, other_weights.base_id)
    # explicit override loads anyway (a fine-tuned base of the same architecture)
    load_adapter(other_weights.transformer, path, other_weights.base_id, allow_base_mismatch=True)


def test_non_adapter_file_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    c = tiny()
    with pytest.raises(AdapterFileError, match="not a SynCam adapter"):
        load_adapter(c.transformer, path, c.base_id)
    with pytest.raises(FileNotFoundError):
        load_adapter(c.transformer, tmp_path / "missing.safetensors", c.base_id)
    with pytest.raises(ValueError, match="base_id"):
        save_adapter(c.transformer, tmp_path / "x.safetensors", {})
    with pytest.raises(ValueError, match="camera_rule"):
        save_adapter(c.transformer, tmp_path / "x.safetensors", {"base_id": c.base_id})


def test_tiny_is_deterministic_across_builds():
    a, b = tiny("2b"), tiny("2b")
    assert a.base_id == b.base_id
    sa, sb = a.transformer.state_dict(), b.transformer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.dumps(a.base_id)  # JSON-serializable for the safetensors header


# --------------------------------------------------------------------------- VAE and text


def test_vae_round_trip_shapes_and_cache_sampling():
    c = tiny()
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 9, 3, 32, 48, generator=g) * 2 - 1
    mean, logvar = encode_video_dist(c, video)
    assert mean.shape == logvar.shape == (2, 3, 4, 4, 6)
    z1 = encode_video(c, video, generator=torch.Generator().manual_seed(5))
    z2 = sample_latents(mean, logvar, c.vae_scaling_factor, torch.Generator().manual_seed(5))
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(encode_video(c, video, sample=False), mean * c.vae_scaling_factor)
    out = decode_latents(c, z1)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1
    assert c.latent_shape(9, 32, 48) == (3, 4, 4, 6)
    with pytest.raises(ValueError, match="4k\\+1"):
        encode_video(c, video[:, :8])


def test_encode_prompts_t5_path():
    from transformers import T5Tokenizer

    c = tiny()
    assert isinstance(c.tokenizer, T5Tokenizer)
    emb = encode_prompts(c, ["a red car", "a red car", "a dog", ""])
    assert emb.shape == (4, 226, c.transformer.config.text_embed_dim)
    assert torch.equal(emb[0], emb[1])
    assert not torch.allclose(emb[0], emb[2]) and not torch.allclose(emb[0], emb[3])
    ids = c.tokenizer(["a red car"]).input_ids[0]
    assert ids[-1] == c.tokenizer.eos_token_id and c.tokenizer.pad_token_id == 0
    assert encode_prompts(c, ["x"], max_length=16).shape[1] == 16
    with pytest.raises(TypeError):
        encode_prompts(c, "a string")


def test_load_from_diffusers_folder_matches_tiny(tmp_path):
    """The --pretrained PATH path (from_pretrained of every component) gives the same model as the in-memory tiny build."""
    from syncam_model.model import write_tiny_pretrained

    folder = write_tiny_pretrained(tmp_path / "cogvideox-tiny", {"variant": "5b"})
    c = load_components(folder)
    ref = tiny("5b")
    assert c.base_id["pretrained"] == str(folder.resolve())
    assert c.base_id["config_sha256"] == ref.base_id["config_sha256"]
    assert type(c.tokenizer) is type(ref.tokenizer)
    assert c.tokenizer("a red car").input_ids == ref.tokenizer("a red car").input_ids
    torch.testing.assert_close(encode_prompts(c, ["a red car"]), encode_prompts(ref, ["a red car"]))
    latents, text, t, cams = inputs(c, n=2)
    with torch.no_grad():
        torch.testing.assert_close(c.transformer(latents, text, t, cams), ref.transformer(latents, text, t, cams))
    # an adapter trained on "tiny" loads into the same weights read from disk
    path = save_adapter(ref.transformer, tmp_path / "a.safetensors", {"base_id": ref.base_id, **RULE})
    load_adapter(c.transformer, path, c.base_id)
    with pytest.raises(FileNotFoundError, match="missing vae/"):
        import shutil

        shutil.rmtree(folder / "vae")
        load_components(folder)


def test_cross_view_attention_mixes_views_within_a_frame_only():
    """The module's sequence is the n*h*w tokens of one frame: another view's frame 1 affects frame 1 only."""
    c = tiny("5b")
    perturb(c.transformer)
    block = c.transformer.base.transformer_blocks[0]
    n, frames, hw, d = 2, 3, 6, block.multiview.dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, frames * hw, d, generator=g)
    temb = torch.randn(1, block.norm1.linear.in_features, generator=g).expand(n, -1)
    text = torch.randn(n, 5, d, generator=g)

    def ctx() -> MultiViewContext:
        return MultiViewContext(
            n,
            torch.randn(1, n, 12, generator=torch.Generator().manual_seed(1)),
            hw,
            c.transformer.view_rotary_emb(n, 4, 6),
        )

    y = x.clone()
    y[1, hw : 2 * hw] += torch.randn(hw, d, generator=g)  # view 1, frame 1 (not a constant: LayerNorm would remove it)
    with torch.no_grad():
        a = block.multiview(x, text, temb, ctx()).view(n, frames, hw, d)
        b = block.multiview(y, text, temb, ctx()).view(n, frames, hw, d)
    assert torch.equal(a[0, 0], b[0, 0]) and torch.equal(a[0, 2], b[0, 2])
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-4


# --------------------------------------------------------------------------- fidelity to the official releases


def _module_inputs(c, n=2, frames=2, text_len=5, seed=0):
    """Hidden states, text, temb, cameras and context for block 0's module (latent 4x6 -> 2x3 = 6 tokens per frame)."""
    cfg = c.transformer.config
    m = c.transformer.base.transformer_blocks[0].multiview
    hw = 6
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, frames * hw, m.dim, generator=g)
    text = torch.randn(n, text_len, m.dim, generator=g)
    temb = torch.randn(1, cfg.time_embed_dim, generator=g).expand(n, -1)
    cams = torch.randn(1, n, 12, generator=g)
    rot = c.transformer.view_rotary_emb(n, 4, 6) if cfg.use_rotary_positional_embeddings else None
    return m, x, text, temb, cams, (lambda cameras=cams: MultiViewContext(n, cameras, hw, rot))


def _attention_input(m, x, text, temb, ctx):
    """The hidden states the module's cross-view attention receives."""
    seen = []
    hook = m.attn.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            m(x, text, temb, ctx)
    finally:
        hook.remove()
    return seen[0]


def test_camera_effect_on_the_attention_input_does_not_shrink_when_hidden_states_grow():
    """The camera embedding is added after norm + modulation (both official releases), not before the LayerNorm.

    Added before the norm, its effect on the attention input fell about 100x when the hidden states grew 100x.
    """
    c = tiny("2b")
    perturb(c.transformer)
    m, x, text, temb, cams, ctx = _module_inputs(c)
    other = cams.clone()
    other[:, 1] += 1.0

    def effect(scale: float) -> float:
        a = _attention_input(m, scale * x, text, temb, ctx(cams))
        b = _attention_input(m, scale * x, text, temb, ctx(other))
        return float((a - b).abs().mean())

    small, large = effect(1.0), effect(100.0)
    assert small > 1e-2
    assert large == pytest.approx(small, rel=1e-3)


def test_block_input_with_all_views_text_follows_the_official_cogvideox_release():
    """position=block_input + attention_text=all_views computes the official CogVideoX release's block prologue.

    Written after ``syncammaster/transformer_3d.py`` (CogVideoXBlock.forward, the ``attn_syncam`` branch) with
    diffusers' own CogVideoXLayerNormZero as ``norm_syncam``: norm + modulate video and text, add the camera
    embedding, attend over (all views' text, all views' tokens of one frame), project, gate, residual.
    """
    from diffusers.models.normalization import CogVideoXLayerNormZero

    c = tiny("5b", AdapterSpec(attention_text="all_views", position="block_input"))
    perturb(c.transformer)
    m, x, text, temb, cams, ctx = _module_inputs(c)
    n, d = 2, m.dim
    frames, hw, length = x.shape[1] // 6, 6, text.shape[1]
    norm_syncam = CogVideoXLayerNormZero(temb.shape[1], d, m.norm.elementwise_affine, m.norm.eps, bias=True)
    with torch.no_grad():
        norm_syncam.linear.weight.zero_()
        norm_syncam.linear.bias.zero_()
        norm_syncam.linear.weight[: 3 * d] = m.modulation.weight
        norm_syncam.linear.bias[: 3 * d] = m.modulation.bias
        norm_syncam.linear.weight[3 * d : 5 * d] = m.text_modulation.weight
        norm_syncam.linear.bias[3 * d : 5 * d] = m.text_modulation.bias
        norm_syncam.norm.load_state_dict(m.norm.state_dict())

        hidden, enc, gate, _ = norm_syncam(x, text, temb)
        hidden = hidden + m.camera_encoder(cams.reshape(n, 1, 12))  # "b v d -> (b v) 1 d"
        hidden = (
            hidden.reshape(1, n, frames, hw, d).transpose(1, 2).reshape(frames, n * hw, d)
        )  # "(b v) (f s) d -> (b f) (v s) d"
        enc = enc.reshape(1, n * length, d).repeat_interleave(
            frames, dim=0
        )  # "(b v) n d -> b (v n) d", then "(b f) n d"
        attn, _ = m.attn(hidden_states=hidden, encoder_hidden_states=enc, image_rotary_emb=ctx().rotary_emb)
        attn = m.proj(attn).reshape(1, frames, n, hw, d).transpose(1, 2).reshape(n, frames * hw, d)
        official = x + gate * attn
        ours = m(x, text, temb, ctx())
        torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)
        # in the block it runs before norm1: the rest of the block is diffusers' block applied to its output
        rot = c.transformer.base_rotary_emb(frames, 4, 6)
        plain_block = unpatched(c).transformer_blocks[0]
        got = c.transformer.base.transformer_blocks[0](x, text, temb, rot, {"syncam_multiview": ctx()})
        want = plain_block(ours, text, temb, rot)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("attention_text", ["none", "all_views"])
def test_text_tokens_in_the_cross_view_attention(attention_text):
    """none: the module ignores the text stream (Wan release); all_views: every view attends to all views' text."""
    c = tiny("2b", AdapterSpec(attention_text=attention_text))
    perturb(c.transformer)
    m, x, text, temb, cams, ctx = _module_inputs(c)
    other = text.clone()
    other[1] += torch.randn_like(other[1])  # view 1's text only
    with torch.no_grad():
        a, b = m(x, text, temb, ctx()), m(x, other, temb, ctx())
    view0_changed = bool((a[0] - b[0]).abs().max() > 1e-5)
    assert view0_changed == (attention_text == "all_views")
    assert (m.text_modulation is not None) == (attention_text == "all_views")
    if attention_text == "all_views":  # initialized from the text half of norm1 (enc_shift, enc_scale)
        d = m.dim
        block = c.transformer.base.transformer_blocks[0]
        assert torch.equal(m.text_modulation.weight, block.norm1.linear.weight[3 * d : 5 * d])


def test_float32_adapter_runs_on_a_bfloat16_base():
    """model.dtype=bfloat16 without autocast: the modules keep float32 master weights and compute in them."""
    c = load_components("tiny", dtype=torch.bfloat16)
    for p in c.transformer.adapter_parameters():
        p.data = p.data.float()
    perturb(c.transformer)
    latents, text, t, cams = inputs(c, n=2)
    out = c.transformer(latents.bfloat16(), text.bfloat16(), t, cams.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in c.transformer.adapter_parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


def test_adapter_structure_format_and_camera_rule_are_checked(tmp_path):
    from safetensors.torch import load_file, save_file

    from syncam_model.model import adapter_spec_of

    spec = AdapterSpec(projector="relu_linear")
    fixed = CameraRule(translation_normalization="fixed", translation_scale=2.0)
    c = tiny("2b", spec)
    path = save_adapter(c.transformer, tmp_path / "a.safetensors", {"base_id": c.base_id, **fixed.to_meta()})
    meta = read_adapter_meta(path)
    assert meta["format_version"] == 2 and meta["adapter_config"]["camera_input"] == "after_norm"
    assert adapter_spec_of(meta) == spec and meta["camera_rule"] == {
        "translation_normalization": "fixed",
        "translation_scale": 2.0,
    }
    assert any(k.endswith("multiview.proj.1.weight") for k in load_file(str(path)))

    default = tiny("2b")
    with pytest.raises(AdapterFileError, match="projector: file 'relu_linear', model 'linear'"):
        load_adapter(default.transformer, path, default.base_id)
    same = tiny("2b", spec)
    load_adapter(same.transformer, path, same.base_id, camera_rule=fixed)
    with pytest.raises(AdapterFileError, match="fixed .* but max_distance"):
        load_adapter(same.transformer, path, same.base_id, camera_rule=CameraRule())

    # a format-1 adapter (camera embedding added before the norm) is refused with the reason
    old = dict(meta, format_version=1)
    old_path = tmp_path / "v1.safetensors"
    save_file(load_file(str(path)), str(old_path), metadata={"syncam": json.dumps(old)})
    with pytest.raises(AdapterFileError, match="format_version 1.*before the norm"):
        read_adapter_meta(old_path)


def test_frame_count_rules_match_the_vae():
    """One helper owns the rule; here it is checked against what the tiny CogVideoX VAE really does."""
    from syncam_model.frames import (
        check_decodable,
        decodable_error,
        encodable_error,
        latent_frames,
        pad_latent_frames,
        round_up_decodable,
        temporal_padding,
    )

    assert [latent_frames(f) for f in (1, 5, 9, 49)] == [1, 2, 3, 13]
    assert encodable_error(13) is None and "4k+1" in encodable_error(8)
    assert [decodable_error(f) is None for f in (1, 9, 17, 49, 5, 13, 45)] == [True] * 4 + [False] * 3
    assert [round_up_decodable(f) for f in (1, 5, 9, 10, 45)] == [1, 9, 9, 17, 49]
    assert [temporal_padding(f, 2) for f in (1, 2, 3, 13)] == [1, 0, 1, 1] and temporal_padding(3, None) == 0
    with pytest.raises(ValueError, match="8N\\+1"):
        check_decodable(13)
    z = torch.arange(3.0).reshape(1, 3, 1)
    padded, pad = pad_latent_frames(z, 2, dim=1)
    assert pad == 1 and padded.flatten().tolist() == [0.0, 0.0, 1.0, 2.0]  # copies of the first latent frame, in front

    c = tiny()
    for lat, ok in ((2, False), (3, True)):
        z = torch.randn(1, lat, 4, 4, 6, generator=torch.Generator().manual_seed(0))
        frames = decode_latents(c, z).shape[1]
        assert (decodable_error(frames) is None) == ok and frames == (4 * lat if lat % 2 == 0 else 4 * (lat - 1) + 1)

"""The multi-view adapter on tiny CogVideoX transformers: identity at init, training signal, coupling, weights I/O."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from syncam_model.model import (
    AdapterError,
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
from syncam_model.modules import MultiViewModule, multiview_modules
from syncam_model.text import encode_prompts

VARIANTS = ["2b", "5b", "1.5"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")



def tiny(variant: str = "2b", **kw):
    return load_components("tiny", tiny_config={"variant": variant, **kw})


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
            for lin in (m.camera_encoder, m.proj[1]):
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init_is_bit_exact_on_the_same_batch(variant):
    """Run as one B*n batch, the fresh modules add exactly zero: the result is the base model's, bit for bit."""
    c = tiny(variant)
    pristine = copy.deepcopy(c.transformer.base)  # still a diffusers model; its blocks' forward ignores the context
    latents, text, t, cams = inputs(c, n=2)
    b, n = latents.shape[:2]
    with torch.no_grad():
        out = c.transformer(latents, text, t, cams)
        flat = latents.flatten(0, 1)
        f, h, w = latents.shape[2], latents.shape[4], latents.shape[5]
        rot = c.transformer.base_rotary_emb(f, h, w) if c.transformer.config.use_rotary_positional_embeddings else None
        ref = pristine(flat, text.repeat_interleave(n, 0), t.repeat_interleave(n), image_rotary_emb=rot, return_dict=False)[0]
    assert torch.equal(out.flatten(0, 1), ref)


def test_identity_with_ofs_embedding():
    """CogVideoX 1.5 I2V-style configs carry an offset embedding; both paths pass it the pipeline's 2.0."""
    c = tiny("1.5", transformer={"ofs_embed_dim": 32})
    latents, text, t, cams = inputs(c, n=2)
    with torch.no_grad():
        out = c.transformer(latents, text, t, cams)
        for i in range(2):
            torch.testing.assert_close(out[:, i], c.transformer.forward_base(latents[:, i], text, t), atol=2e-5, rtol=1e-5)


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
    assert not m.camera_encoder.weight.any() and not m.proj[1].weight.any()


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


@pytest.mark.parametrize("variant", ["2b", "5b"])
def test_projection_trains_and_gradient_reaches_every_new_parameter(variant):
    c = tiny(variant)
    model = c.transformer.train()
    latents, text, t, cams = inputs(c, n=2)
    target = torch.randn_like(latents)
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params.values(), lr=1e-3)

    loss = torch.nn.functional.mse_loss(model(latents, text, t, cams), target)
    loss.backward()
    proj = {n: p for n, p in params.items() if n.endswith("proj.1.weight")}
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
        assert not torch.allclose(fresh.transformer(latents, text, t, cams, mask)[:, 1], fresh.transformer(latents, text, t, cams)[:, 1])


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


def test_save_load_round_trip_is_bit_exact(tmp_path):
    c = tiny("5b")
    perturb(c.transformer, seed=3)
    path = save_adapter(c.transformer, tmp_path / "ckpt" / "adapter.safetensors", {"base_id": c.base_id, "step": 7})
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
    path = save_adapter(c.transformer, tmp_path / "a.safetensors", {"base_id": c.base_id})
    other_config = tiny("2b")
    with pytest.raises(AdapterError, match="different base model.*use_rotary_positional_embeddings"):
        load_adapter(other_config.transformer, path, other_config.base_id)
    other_weights = tiny("5b", seed=1)
    with pytest.raises(AdapterError, match="weights differ"):
        load_adapter(other_weights.transformer, path, other_weights.base_id)
    # explicit override loads anyway (a fine-tuned base of the same architecture)
    load_adapter(other_weights.transformer, path, other_weights.base_id, allow_base_mismatch=True)


def test_non_adapter_file_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    c = tiny()
    with pytest.raises(AdapterError, match="not a SynCam adapter"):
        load_adapter(c.transformer, path, c.base_id)
    with pytest.raises(FileNotFoundError):
        load_adapter(c.transformer, tmp_path / "missing.safetensors", c.base_id)
    with pytest.raises(ValueError, match="base_id"):
        save_adapter(c.transformer, tmp_path / "x.safetensors", {})


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
    path = save_adapter(ref.transformer, tmp_path / "a.safetensors", {"base_id": ref.base_id})
    load_adapter(c.transformer, path, c.base_id)
    with pytest.raises(FileNotFoundError, match="missing vae/"):
        import shutil

        shutil.rmtree(folder / "vae")
        load_components(folder)


def test_cross_view_attention_mixes_views_within_a_frame_only():
    """The module's sequence is the n*h*w tokens of one frame: another view's frame 1 affects frame 1 only."""
    from syncam_model.modules import MultiViewContext

    c = tiny("5b")
    perturb(c.transformer)
    block = c.transformer.base.transformer_blocks[0]
    n, frames, hw, d = 2, 3, 6, block.multiview.dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, frames * hw, d, generator=g)
    temb = torch.randn(1, block.norm1.linear.in_features, generator=g).expand(n, -1)
    ctx = lambda: MultiViewContext(n, torch.randn(1, n, 12, generator=torch.Generator().manual_seed(1)), hw, c.transformer.view_rotary_emb(n, 4, 6))  # noqa: E731
    y = x.clone()
    y[1, hw : 2 * hw] += torch.randn(hw, d, generator=g)  # view 1, frame 1 (not a constant: LayerNorm would remove it)
    with torch.no_grad():
        a, b = block.multiview(x, temb, ctx()).view(n, frames, hw, d), block.multiview(y, temb, ctx()).view(n, frames, hw, d)
    assert torch.equal(a[0, 0], b[0, 0]) and torch.equal(a[0, 2], b[0, 2])
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-4

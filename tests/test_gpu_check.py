"""benchmarks/gpu_check.py: runs end to end on the CPU at tiny shapes, fails loudly without fused attention, counts FLOPs right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


FAST = [
    "--device",
    "cpu",
    "--tiny",
    "--views",
    "2",
    "--steps",
    "1",
    "--gen-steps",
    "2",
    "--train-steps",
    "1",
    "--workers",
    "0",
]


def test_runs_end_to_end_on_cpu_with_tiny_shapes(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.md"
    assert gpu_check.main([*FAST, "--modes", "base,adapted", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    for heading in ("(a, b) one training step", "(c) generation", "(d) syncam-train's step", "## Goals"):
        assert heading in text
    raw = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["model"], r["mode"]) for r in raw["train"]}
    assert rows == {("2b", "base"), ("2b", "adapted"), ("5b", "base"), ("5b", "adapted")}
    for r in raw["train"]:
        assert r["step_s"] > 0 and r["flops"] > 0 and r["hw_flops"] > r["flops"]  # checkpointing recomputes the forward
        assert "flash_attention_for_cpu" in r["kernels"] and r["loss_finite"]
    adapted = {r["model"]: r for r in raw["train"] if r["mode"] == "adapted"}
    base = {r["model"]: r for r in raw["train"] if r["mode"] == "base"}
    assert adapted["2b"]["trainable"] < base["2b"]["trainable"]  # base frozen vs full fine-tuning
    gen = raw["generate"]
    assert gen["passes"] == 2 and gen["step_s"] > 0 and gen["shape"] == [4, 9, 3, 32, 48]
    loader = raw["loader"]
    assert 0 <= loader["wait_frac"] < 1 and loader["step_s"] > 0 and loader["loss_finite"]


def _softmax_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """A hand-written attention (what the check must refuse): SDPA's result without SDPA's kernels."""
    w = F.softmax(q @ k.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5), dim=-1)
    return w @ v


def test_fails_loudly_when_attention_is_not_a_fused_kernel(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(F, "scaled_dot_product_attention", _softmax_attention)  # diffusers' processors call F.<name>
    code = gpu_check.main([*FAST, "--sections", "train", "--models", "2b", "--modes", "adapted"])
    err = capsys.readouterr().err
    assert code == 2
    assert "FAILED" in err and "fused SDPA kernel" in err and "softmax" in err


def test_kernel_check_counts_fused_calls(gpu_check):
    from collections import Counter

    with pytest.raises(gpu_check.KernelCheckError, match="1 of 4 attention calls"):
        gpu_check.check_attention(Counter({"_scaled_dot_product_flash_attention_for_cpu": 1}), "cpu", 4, "x")
    assert "x4" in gpu_check.check_attention(Counter({"_scaled_dot_product_flash_attention_for_cpu": 4}), "cpu", 4, "x")


def test_flops_extend_exactly_over_layers(gpu_check):
    tiny, latent = {"variant": "5b"}, (3, 4, 4, 6)  # RoPE, the 5B layout
    for mode, ckpt in (("adapted", True), ("base", False)):
        direct = gpu_check.count_flops(tiny, 4, 2, latent, mode, checkpointing=ckpt)
        assert gpu_check.flops_at(tiny, 4, 2, latent, mode, checkpointing=ckpt) == direct


def test_meta_flop_count_equals_a_real_run(gpu_check):
    """On the CPU with SDPA's math path every matmul is visible to the counter: the meta count must equal it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from syncam_model.model import load_components

    tiny, latent = {"variant": "2b"}, (3, 4, 4, 6)
    model = load_components("tiny", tiny_config=tiny).transformer
    gpu_check.set_mode(model, "adapted")
    x = gpu_check.make_inputs(model, 2, latent, "cpu", torch.float32)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel([SDPBackend.MATH]), counter:
        gpu_check.step_loss(model, "adapted", x).backward()
    assert counter.get_total_flops() == gpu_check.count_flops(tiny, 2, 2, latent, "adapted") > 0

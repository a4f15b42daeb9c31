"""`--matcher loftr`: kornia's LoFTR with local weights (a tiny randomly initialized LoFTR, same code path as real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from syncam_data.cli import app
from syncam_data.evaluate.synthetic import render_views
from syncam_data.render.output import SceneOutput

pytest.importorskip("kornia")

# A small LoFTR architecture (kornia's default config with narrow layers): weights of this shape load only with this
# config, which also exercises --matcher-config. thr 0 keeps every mutual-nearest coarse match of the random network.
TINY = {
    "resnetfpn": {"initial_dim": 16, "block_dims": [16, 24, 32]},
    "coarse": {"d_model": 32, "d_ffn": 32, "nhead": 2, "layer_names": ["self", "cross"]},
    "fine": {"d_model": 16, "d_ffn": 16, "nhead": 2},
    "match_coarse": {"thr": 0.0},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path, Path]:
    import torch
    from kornia.feature import LoFTR
    from kornia.feature.loftr.loftr import default_cfg
    from safetensors.torch import save_file

    from syncam_data.evaluate.loftr import deep_update

    d = tmp_path_factory.mktemp("loftr")
    torch.manual_seed(0)
    model = LoFTR(pretrained=None, config=deep_update(default_cfg, TINY))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(d / "tiny.safetensors"))
    # The official checkpoints are Lightning files: {"state_dict": {"matcher.<name>": tensor}}.
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in sd.items()}}, d / "tiny.ckpt")
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d / "tiny.safetensors", d / "tiny.ckpt", d / "tiny.json"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    cams, imgs = render_views(2, 160, 120, seed=0)
    root = tmp_path_factory.mktemp("scene") / "s0"
    out = SceneOutput(root, fps=8)
    for i, (c, img) in enumerate(zip(cams, imgs)):
        out.add_camera(f"cam{i}", c)
        for _ in range(2):
            out.add_frame(f"cam{i}", img)
    out.finish({})
    return root


def run(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["eval", *map(str, args)])
    return r.exit_code, r.output


@pytest.mark.slow
def test_loftr_matcher_end_to_end(tmp_path: Path, weights, scene: Path) -> None:
    st, ckpt, cfg = weights
    for w in (st, ckpt):
        out = tmp_path / w.suffix.lstrip(".")
        code, text = run(
            scene, "--out", out, "--frames", "2", "--matcher", "loftr", "--matcher-weights", w, "--matcher-config", cfg
        )
        assert code == 0, text
        rows = pq.read_table(out / "eval.parquet").to_pylist()
        assert len(rows) == 2  # one pair x two frames
        assert all(r["keypoints_a"] is None for r in rows)  # detector-free
        assert all(r["matches"] > 0 for r in rows)  # the network ran and returned correspondences
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["matcher"] == "loftr"
    # Both checkpoint forms hold the same weights: identical results.
    a = pq.read_table(tmp_path / "safetensors" / "eval.parquet").to_pylist()
    b = pq.read_table(tmp_path / "ckpt" / "eval.parquet").to_pylist()
    assert [r["matches"] for r in a] == [r["matches"] for r in b]


def test_loftr_weights_that_do_not_fit_are_refused(weights, scene: Path, tmp_path: Path) -> None:
    st, _, _ = weights
    code, text = run(scene, "--out", tmp_path / "o", "--matcher", "loftr", "--matcher-weights", st)  # default config
    assert code == 1 and "do not fit LoFTR" in text
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    code, text = run(scene, "--out", tmp_path / "o", "--matcher", "loftr", "--matcher-weights", bad)
    assert code == 1 and "cannot read as a weights-only checkpoint" in text

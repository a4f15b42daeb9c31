"""The camera input of the model (syncam_model.camera_input): relative poses and the translation rule shared by training and generation."""

from __future__ import annotations

import numpy as np
import pytest

from syncam_data.cameras import look_at, parse_realestate10k_line, relative_poses
from syncam_model.camera_input import CameraRule, CameraRuleError, check_rule, rule_of

from .conftest import FIXTURES


def _re10k_c2ws(stride: int = 5, count: int = 4) -> list[np.ndarray]:
    """Poses of a real RealEstate10K sequence (SfM, arbitrary scale), a few frames apart."""
    lines = (FIXTURES / "realestate10k" / "0bf152ef84195293.txt").read_text().splitlines()[1:]
    return [parse_realestate10k_line(line, 640, 360)[1].c2w for line in lines[::stride][:count]]


def _similarity(c2ws: list[np.ndarray], scale: float, seed: int = 0) -> list[np.ndarray]:
    """The same rig in another world frame and unit: x -> scale * (R x + t)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    t = rng.normal(size=3)
    out = []
    for c in c2ws:
        c = np.asarray(c, np.float64).reshape(3, 4)
        out.append(np.concatenate([q @ c[:, :3], (scale * (q @ c[:, 3] + t))[:, None]], axis=1))
    return out


def test_max_distance_puts_the_farthest_view_at_one_whatever_the_sources_unit():
    c2ws = _re10k_c2ws()
    rule = CameraRule()
    rel = rule.apply(c2ws)
    dist = np.linalg.norm(rel.reshape(-1, 3, 4)[:, :, 3], axis=1)
    assert dist[0] == 0 and dist.max() == pytest.approx(1.0, abs=1e-6)
    # rotations are Contract 1's relative rotations, untouched
    np.testing.assert_allclose(
        rel.reshape(-1, 3, 4)[:, :, :3], relative_poses(c2ws).reshape(-1, 3, 4)[:, :, :3], atol=1e-6
    )
    # an SfM sequence's scale (and world frame) is arbitrary: the model input is the same in any unit
    for scale in (0.01, 37.0):
        np.testing.assert_allclose(rule.apply(_similarity(c2ws, scale)), rel, atol=1e-5)
    # under the fixed rule the unit leaks into the input (what the posed image sets did before)
    fixed = CameraRule(translation_normalization="fixed")
    assert not np.allclose(fixed.apply(_similarity(c2ws, 37.0)), fixed.apply(c2ws), atol=1e-2)


def test_fixed_rule_divides_by_the_scale_and_shared_centres_stay_zero():
    c2ws = [look_at((6, 0, 1), (0, 0, 0)), look_at((0, 6, 1), (0, 0, 0)), look_at((-6, 0, 1), (0, 0, 0))]
    metric = relative_poses(c2ws)
    np.testing.assert_allclose(
        CameraRule(translation_normalization="fixed", translation_scale=2.0).apply(c2ws),
        relative_poses(c2ws, translation_scale=2.0),
        atol=1e-6,
    )
    far = np.linalg.norm(metric.reshape(-1, 3, 4)[:, :, 3], axis=1).max()
    assert far == pytest.approx(12.0)
    np.testing.assert_allclose(
        CameraRule().apply(c2ws).reshape(-1, 3, 4)[:, :, 3], metric.reshape(-1, 3, 4)[:, :, 3] / far, atol=1e-6
    )
    # cameras that only rotate about one centre: no translation to normalize, and no NaN
    same = [look_at((1, 1, 1), (0, 0, 0)), look_at((1, 1, 1), (5, 1, 1))]
    rel = CameraRule().apply(same)
    assert np.isfinite(rel).all() and np.abs(rel.reshape(-1, 3, 4)[:, :, 3]).max() < 1e-6


def test_rule_metadata_round_trip_and_refusal():
    fixed = CameraRule(translation_normalization="fixed", translation_scale=2.0)
    meta = {"base_id": {}, **fixed.to_meta()}
    assert rule_of(meta) == fixed and check_rule(meta, fixed) == fixed
    with pytest.raises(
        CameraRuleError, match=r"trained with camera translation rule fixed \(translations / 2\), but max_distance"
    ):
        check_rule(meta, CameraRule())
    with pytest.raises(CameraRuleError, match="records no camera rule"):
        rule_of({"base_id": {}}, "x.safetensors")
    with pytest.raises(ValueError, match="only used with translation_normalization=fixed"):
        CameraRule(translation_scale=2.0)

"""Frame-set selection: span (max gap), minimum angle / baseline, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from syncam_data.cameras import look_at, relative_angle
from syncam_data.sources.sampling import (
    SamplingConfig,
    TooShortError,
    check_frame_set,
    choose_frame_sets,
    sequence_rng,
)


def orbit(n: int, deg_per_frame: float) -> np.ndarray:
    out = []
    for i in range(n):
        a = math.radians(deg_per_frame * i)
        out.append(look_at([4 * math.cos(a), 4 * math.sin(a), 1.0], [0, 0, 0]))
    return np.stack(out)


def straight_line(n: int, step: float) -> np.ndarray:
    """Pure forward motion: every optical axis identical (angle 0), baseline grows."""
    return np.stack([look_at([0, i * step, 1.0], [0, i * step + 10, 1.0]) for i in range(n)])


@pytest.mark.parametrize("seed", range(8))
def test_sets_respect_max_gap_and_min_angle(seed):
    c2w = orbit(120, 1.2)
    pos = np.arange(120) * 8 + np.array([0, 1] * 60)  # uneven steps, like RealEstate10K's 8-9 frames
    cfg = SamplingConfig(views=4, max_gap=100, sets_per_sequence=5, min_angle_deg=3.0, seed=seed)
    sets = choose_frame_sets(pos, c2w, cfg, sequence_rng(seed, "seq"))
    assert len(sets) == 5 and len(set(sets)) == 5
    for s in sets:
        assert list(s) == sorted(s) and len(set(s)) == 4
        assert pos[s[-1]] - pos[s[0]] <= 100
        for i in s:
            for j in s:
                if i < j:
                    assert relative_angle(c2w[i], c2w[j]) >= 3.0 - 1e-9
        check_frame_set(pos, c2w, s, cfg)


def test_same_seed_same_sets_and_seed_matters():
    c2w, pos = orbit(60, 1.0), np.arange(60) * 9
    cfg = SamplingConfig(views=3, max_gap=100, sets_per_sequence=4, min_angle_deg=2.0)
    a = choose_frame_sets(pos, c2w, cfg, sequence_rng(5, "abc"))
    b = choose_frame_sets(pos, c2w, cfg, sequence_rng(5, "abc"))
    c = choose_frame_sets(pos, c2w, cfg, sequence_rng(6, "abc"))
    d = choose_frame_sets(pos, c2w, cfg, sequence_rng(5, "abd"))
    assert a == b
    assert a != c and a != d


def test_min_angle_rejects_near_duplicates_but_baseline_can_admit_them():
    c2w, pos = straight_line(30, 0.5), np.arange(30)
    strict = SamplingConfig(views=3, max_gap=10, sets_per_sequence=2, min_angle_deg=2.0)
    assert choose_frame_sets(pos, c2w, strict, sequence_rng(0, "s")) == []
    with_baseline = SamplingConfig(views=3, max_gap=10, sets_per_sequence=2, min_angle_deg=2.0, min_baseline=1.2)
    sets = choose_frame_sets(pos, c2w, with_baseline, sequence_rng(0, "s"))
    assert len(sets) == 2
    for s in sets:
        # consecutive views at least 1.2 apart: 0.5 per frame -> index steps of at least 3
        assert min(np.diff(s)) >= 3
        check_frame_set(pos, c2w, s, with_baseline)


def test_too_short_and_impossible_windows():
    c2w = orbit(3, 10.0)
    with pytest.raises(TooShortError):
        choose_frame_sets(np.arange(3), c2w, SamplingConfig(views=4), sequence_rng(0, "x"))
    # Enough frames, but the gap allows only two per window.
    sets = choose_frame_sets(
        np.arange(3) * 50, c2w, SamplingConfig(views=3, max_gap=60, min_angle_deg=0), sequence_rng(0, "x")
    )
    assert sets == []


def test_check_frame_set_catches_violations():
    c2w, pos = orbit(20, 0.5), np.arange(20) * 10
    cfg = SamplingConfig(views=2, max_gap=50, min_angle_deg=2.0)
    with pytest.raises(ValueError, match="spans"):
        check_frame_set(pos, c2w, (0, 6), cfg)
    with pytest.raises(ValueError, match="near-duplicate"):
        check_frame_set(pos, c2w, (0, 1), cfg)
    check_frame_set(pos, c2w, (0, 5), cfg)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="views"):
        SamplingConfig(views=0)
    with pytest.raises(ValueError, match="min angle"):
        SamplingConfig(min_angle_deg=200)

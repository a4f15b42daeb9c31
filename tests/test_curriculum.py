"""The relative-angle curriculum's view selection: to view 0 (default) or on every pair (curriculum.pairwise)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from syncam_data.cameras import look_at, spherical_position
from syncam_model.config import load_config
from syncam_model.curriculum import Window, angle_matrix, feasible, select_views
from syncam_model.data import build_loader
from tests.test_data_loader import make_shards


def pairs_in_window(angles: np.ndarray, views: Sequence[int], window: Window, pairwise: bool = False) -> bool:
    """(The test's own check.) Every chosen view's angle to view 0 (with ``pairwise``: every pair's angle) lies in the window."""
    views = list(views)
    if pairwise:
        a = angles[np.ix_(views, views)][~np.eye(len(views), dtype=bool)]
    else:
        a = angles[views[0], views[1:]]
    return bool(np.all(window.contains(a)))


def ring(count: int, step: float) -> np.ndarray:
    """Angles between cameras on a horizontal ring looking at its centre, ``step`` degrees apart."""
    c2w = [look_at(spherical_position((0, 0, 1), 5.0, 0.0, step * i), (0, 0, 1)).reshape(-1) for i in range(count)]
    return angle_matrix(np.asarray(c2w))


def test_view_0_window_lets_other_pairs_reach_twice_its_maximum_and_pairwise_does_not():
    ang = ring(12, 30.0)  # a full circle, 30 degrees apart
    win = Window(0, 60)
    rng = np.random.default_rng(0)
    wide = 0
    for _ in range(200):
        v = select_views(ang, 3, win, rng)
        assert pairs_in_window(ang, v, win)
        wide += not pairs_in_window(ang, v, win, pairwise=True)
        p = select_views(ang, 3, win, rng, pairwise=True)
        assert p is not None and len(set(p)) == 3 and pairs_in_window(ang, p, win, pairwise=True)
    assert wide > 20  # e.g. views at -60 and +60 degrees of view 0: 120 degrees apart
    # every compatible set can come out, and view 0 is random
    firsts = {tuple(sorted(select_views(ang, 3, win, rng, pairwise=True))) for _ in range(300)}
    assert len(firsts) == 12  # all 12 runs of three neighbours


def test_pairwise_feasibility_is_stricter():
    ang = ring(5, 20.0)  # spans 80 degrees: view 0 at one end has partners at 60 and 80, but they are 20 apart
    win = Window(60, 120)
    assert feasible(ang, 3, win) and select_views(ang, 3, win, np.random.default_rng(0)) is not None
    assert not feasible(ang, 3, win, pairwise=True)
    assert select_views(ang, 3, win, np.random.default_rng(0), pairwise=True) is None
    assert feasible(ang, 2, win, pairwise=True)


def test_loader_applies_the_pairwise_window(tmp_path):
    root = make_shards(tmp_path / "s", mv_groups=2, views=9, img_groups=0, single_groups=0)
    over = {
        "data.height": 16,
        "data.width": 32,
        "data.frames": 5,
        "data.num_views": 3,
        "steps": 40,
        "curriculum.schedule": [{"start_step": 0, "min_angle": 20, "max_angle": 60}],
    }
    for pairwise in (False, True):
        cfg = load_config("tiny", {**over, "curriculum.pairwise": pairwise})
        loader = build_loader(str(root), cfg, total_micro=40)
        groups = {g.key: g for g in loader.index.groups["multiview_video"]}
        outside = 0
        for _ in range(40):
            plan = loader.sampler.plan()
            for slot in plan.slots:
                ang = groups[slot.group].angles
                assert pairs_in_window(ang, slot.views, Window(20, 60))
                outside += not pairs_in_window(ang, slot.views, Window(20, 60), pairwise=True)
        assert (outside == 0) == pairwise, (pairwise, outside)


def test_config_documents_the_default():
    cfg = load_config("paper")
    assert cfg.curriculum.pairwise is False
    assert "every pair" in type(cfg.curriculum).model_fields["pairwise"].description
    with pytest.raises(Exception, match="pairwise"):
        load_config("tiny", {"curriculum.pairwise": "sometimes"})

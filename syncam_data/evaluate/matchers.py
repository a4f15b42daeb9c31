"""The ``--matcher`` choice: SIFT (:mod:`~syncam_data.evaluate.matching`) or LoFTR (:mod:`~syncam_data.evaluate.loftr`).

Its own module so that ``matching`` (the SIFT path and the shared RANSAC step)
and ``loftr`` (which builds on them) do not import each other.
"""

from __future__ import annotations

from typing import Any

from syncam_data.evaluate.matching import MATCHERS, MatchConfig, SiftMatcher


def make_matcher(
    name: str,
    config: MatchConfig | None = None,
    weights: str | None = None,
    config_json: str | None = None,
    device: str = "cpu",
) -> Any:
    """The matcher ``name``: ``sift``, or ``loftr`` (needs kornia and local ``weights``)."""
    config = config or MatchConfig()
    if name == "sift":
        return SiftMatcher(config)
    if name == "loftr":
        if not weights:
            raise ValueError(
                "--matcher loftr needs local weights (--matcher-weights, e.g. loftr_outdoor.ckpt); nothing is downloaded"
            )
        from syncam_data.evaluate.loftr import LoftrMatcher

        return LoftrMatcher(config, weights, config_json, device)
    raise ValueError(f"unknown matcher {name!r}: available {MATCHERS}")

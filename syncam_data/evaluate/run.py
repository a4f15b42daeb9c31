"""`syncam-data eval`: per-group work (match, check cameras, optional model scores) and the whole run.

One task per group of synchronized views, mapped with
:func:`syncam_data.engine.run_tasks` (local processes or Ray). A task loads
the group's sampled frames once, detects SIFT features once per view and
frame, matches every (or a sampled subset of) view pair at every sampled
frame, and measures the RANSAC inliers against the epipolar geometry of the
stated cameras. A failing group is recorded and the run goes on.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from syncam_data.cameras import Camera
from syncam_data.engine import Engine, run_tasks
from syncam_data.evaluate import epipolar
from syncam_data.evaluate.inputs import GroupRef, find_groups, frame_indices, group_num_frames, load_view_frames
from syncam_data.evaluate.matchers import make_matcher
from syncam_data.evaluate.matching import MatchConfig, MatchResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of an eval run; written into summary.json."""

    frames: int = 3  # sampled frames per video group (evenly spaced, shared by all views)
    matcher: str = "sift"
    match: MatchConfig = field(default_factory=MatchConfig)
    matcher_weights: str | None = None  # local weights of a learned matcher (loftr)
    matcher_config: str | None = None  # JSON overrides of the learned matcher's configuration
    max_pairs: int = 0  # view pairs per group, sampled deterministically; 0 = every pair
    max_side: int = 0  # downscale frames so the longer side is at most this (cameras follow); 0 = native
    check_cameras: bool = True
    flag_px: float = 2.0  # a view (and its group) is flagged when its median epipolar error exceeds this
    min_inliers: int = 20  # pairs with fewer inliers give no epipolar verdict (too few to trust)
    clip: str | None = None  # local CLIP folder (save_pretrained)
    i3d: str | None = None  # local I3D TorchScript file
    fvd_frames: int = 16  # clip length fed to I3D
    device: str = "cpu"
    seed: int = 0
    measure_pairs: bool = True  # False: only I3D features (the FVD reference set)

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be at least 1")
        if self.flag_px <= 0:
            raise ValueError("flag_px must be positive")
        if self.min_inliers < 8:
            raise ValueError("min_inliers must be at least 8")


@dataclass
class GroupResult:
    key: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None  # why the group gave no pairs (e.g. a single view)
    clip_t: float | None = None
    clip_t_skipped: str | None = None
    fvd_features: list[list[float]] = field(default_factory=list)
    fvd_skipped: str | None = None
    camera_rescaled: bool = False


# --- one group --------------------------------------------------------------------


def view_pairs(view_ids: list[str], max_pairs: int, seed: int, key: str) -> list[tuple[str, str]]:
    pairs = list(itertools.combinations(view_ids, 2))
    if max_pairs and len(pairs) > max_pairs:
        # Seeded by the group key too, so each group gets its own but reproducible subset.
        rng = random.Random(f"{seed}:{key}")
        pairs = sorted(rng.sample(pairs, max_pairs))
    return pairs


def _fit_frames(frames: np.ndarray, camera: Camera | None, max_side: int) -> tuple[np.ndarray, Camera | None, bool]:
    """Downscale frames to ``max_side`` and make the camera describe the pixels actually evaluated."""
    h, w = frames.shape[1:3]
    rescaled = False
    if camera is not None and (camera.width, camera.height) != (w, h):
        # Stated intrinsics are for the stored media (Contract 1). Media resized
        # without updating them is scaled back here rather than blamed on F; a
        # crop cannot be undone this way, so a changed aspect ratio is reported.
        if abs(camera.width / camera.height - w / h) > 0.01 * (w / h):
            log.warning(
                "camera states %dx%d but the frames are %dx%d (aspect ratio differs): intrinsics scaled anyway",
                camera.width,
                camera.height,
                w,
                h,
            )
        camera = camera.resized(w, h)
        rescaled = True
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in frames])
        if camera is not None:
            camera = camera.resized(nw, nh)
    return frames, camera, rescaled


def pair_metrics(m: MatchResult, cam_a: Camera | None, cam_b: Camera | None, cfg: EvalConfig) -> dict[str, Any]:
    """Matched pixels, and the stated cameras' epipolar error of the RANSAC inliers."""
    out: dict[str, Any] = {
        "matches": m.num_matches,
        "inliers": m.num_inliers,
        "inlier_ratio": float(m.num_inliers / m.num_matches) if m.num_matches else 0.0,
        "has_cameras": cam_a is not None and cam_b is not None,
        "relative_angle_deg": None,
        "epi_sampson_median": None,
        "epi_sampson_mean": None,
        "epi_symmetric_median": None,
        "within_1px": None,
        "within_2px": None,
        "camera_flagged": None,
    }
    if not (cfg.check_cameras and out["has_cameras"]):
        return out
    out["relative_angle_deg"] = epipolar.relative_angle_deg(cam_a, cam_b)
    try:
        F = epipolar.fundamental_from_cameras(cam_a, cam_b)
    except ValueError:
        return out
    if m.num_inliers == 0:
        return out
    pa = epipolar.to_continuous(m.pts_a[m.inliers])
    pb = epipolar.to_continuous(m.pts_b[m.inliers])
    samp = epipolar.sampson_distance(F, pa, pb)
    sym = epipolar.symmetric_epipolar_distance(F, pa, pb)
    out.update(
        epi_sampson_median=float(np.median(samp)),
        epi_sampson_mean=float(np.mean(samp)),
        epi_symmetric_median=float(np.median(sym)),
        within_1px=float(np.mean(sym <= 1.0)),
        within_2px=float(np.mean(sym <= 2.0)),
    )
    if m.num_inliers >= cfg.min_inliers:
        out["camera_flagged"] = bool(out["epi_symmetric_median"] > cfg.flag_px)
    return out


def _load_group(
    group: GroupRef, indices: list[int], cfg: EvalConfig
) -> tuple[dict[str, np.ndarray], dict[str, Camera | None], bool]:
    frames, cams, rescaled_any = {}, {}, False
    for v in group.views:
        f, cam, rescaled = _fit_frames(load_view_frames(group, v, indices), v.camera, cfg.max_side)
        frames[v.view_id], cams[v.view_id] = f, cam
        rescaled_any |= rescaled
    return frames, cams, rescaled_any


def evaluate_group(group: GroupRef, cfg: EvalConfig) -> GroupResult:
    res = GroupResult(group.key)
    if not cfg.measure_pairs:
        res.skipped = "FVD features only"
        res.fvd_features, res.fvd_skipped = _fvd_features(group, cfg)
        return res
    if len(group.views) < 2:
        res.skipped = f"{len(group.views)} view(s): cross-view measures need at least 2"
        res.fvd_features, res.fvd_skipped = _fvd_features(group, cfg)
        return res
    indices = frame_indices(group_num_frames(group), cfg.frames) if group.kind == "multiview_video" else [0]
    frames, cams, res.camera_rescaled = _load_group(group, indices, cfg)
    pairs = view_pairs([v.view_id for v in group.views], cfg.max_pairs, cfg.seed, group.key)
    matcher = build_matcher(cfg)
    for k, fi in enumerate(indices):
        # Frame by frame: each view's features serve all its pairs, then are dropped
        # (36 views x 4000 SIFT descriptors is ~75 MB per frame).
        feats: dict[str, Any] = {}
        for a, b in pairs:
            for v in (a, b):
                if v not in feats:
                    feats[v] = matcher.detect(frames[v][k])
            m = matcher.match(feats[a], feats[b])
            row = {
                "input_kind": group.input_kind,
                "dataset": group.dataset,
                "group_id": group.group_id,
                "kind": group.kind,
                "view_a": a,
                "view_b": b,
                "frame": k,
                "frame_index": int(fi),
                "width": int(frames[a].shape[2]),
                "height": int(frames[a].shape[1]),
                "keypoints_a": _num_keypoints(feats[a]),
                "keypoints_b": _num_keypoints(feats[b]),
            }
            row.update(pair_metrics(m, cams[a], cams[b], cfg))
            row["clip_f"] = None
            res.rows.append(row)

    if cfg.clip:
        _add_clip(res, group, frames, pairs, cfg)
    else:
        res.clip_t_skipped = "no --clip weights given"
    res.fvd_features, res.fvd_skipped = _fvd_features(group, cfg)
    return res


def build_matcher(cfg: EvalConfig):
    return make_matcher(cfg.matcher, cfg.match, cfg.matcher_weights, cfg.matcher_config, cfg.device)


def _num_keypoints(features: Any) -> int | None:
    """Keypoints detected in one view (None for detector-free matchers such as LoFTR)."""
    pts = getattr(features, "points", None)
    return None if pts is None else int(len(pts))


def _add_clip(
    res: GroupResult, group: GroupRef, frames: dict[str, np.ndarray], pairs: list[tuple[str, str]], cfg: EvalConfig
) -> None:
    from syncam_data.evaluate.clip_scores import clip_group_scores

    sc = clip_group_scores(frames, group.text, pairs, cfg.clip, cfg.device)
    res.clip_t, res.clip_t_skipped = sc["clip_t"], sc["clip_t_skipped"]
    for row in res.rows:
        row["clip_f"] = sc["clip_f"].get((row["view_a"], row["view_b"], row["frame"]))


def _fvd_features(group: GroupRef, cfg: EvalConfig) -> tuple[list[list[float]], str | None]:
    if not cfg.i3d:
        return [], "no --i3d checkpoint given"
    if group.kind != "multiview_video":
        return [], "not a video group"
    n = group_num_frames(group)
    if n < cfg.fvd_frames:
        return [], f"{n} frames < --fvd-frames {cfg.fvd_frames}"
    from syncam_data.evaluate.fvd import i3d_features

    idx = list(range(cfg.fvd_frames))
    clips = [load_view_frames(group, v, idx) for v in group.views]
    return i3d_features(clips, cfg.i3d, cfg.device).tolist(), None


def evaluate_group_task(group: GroupRef, cfg: EvalConfig) -> GroupResult:
    """Top-level (picklable) entry for run_tasks."""
    return evaluate_group(group, cfg)


# --- the whole run ------------------------------------------------------------------


@dataclass
class RunResult:
    groups: list[GroupRef]
    results: dict[str, GroupResult]
    errors: dict[str, str]
    fvd: dict[str, Any]
    seconds: float


def run_eval(
    input_path: Path,
    cfg: EvalConfig,
    cameras_override: Path | None = None,
    fvd_reference: Path | None = None,
    engine: Engine = "local",
    workers: int = 1,
    ray_address: str | None = None,
    limit: int = 0,
) -> RunResult:
    t0 = time.perf_counter()
    build_matcher(cfg)  # fail once, here, on a missing dependency or unusable weights (not once per group)
    groups, errors = find_groups(input_path, cameras_override)
    if limit:
        groups = groups[:limit]
    results, group_errors = _map_groups(groups, cfg, engine, workers, ray_address, "eval")
    errors.update(group_errors)
    fvd = _fvd(results, cfg, fvd_reference, engine, workers, ray_address)
    return RunResult(groups, results, errors, fvd, time.perf_counter() - t0)


def _map_groups(groups, cfg, engine, workers, ray_address, desc) -> tuple[dict[str, GroupResult], dict[str, str]]:
    fn = functools.partial(evaluate_group_task, cfg=cfg)
    results, errors = {}, {}
    for r in run_tasks(fn, groups, engine=engine, workers=workers, ray_address=ray_address, desc=desc, unit="group"):
        if r.ok:
            results[r.item.key] = r.value
        else:
            log.warning("group %s failed: %s", r.item.key, r.error)
            errors[r.item.key] = r.error
    return results, errors


def _fvd(
    results: dict[str, GroupResult], cfg: EvalConfig, reference: Path | None, engine, workers, ray_address
) -> dict[str, Any]:
    if not cfg.i3d:
        return {"fvd": None, "skipped": "no --i3d checkpoint given"}
    if reference is None:
        return {"fvd": None, "skipped": "no --fvd-reference input given (FVD compares two sets of videos)"}
    from syncam_data.evaluate.fvd import frechet_distance

    ref_groups, ref_list_errors = find_groups(reference)
    # Only I3D features are needed from the reference: no matching, no CLIP.
    ref_cfg = EvalConfig(**{**_shallow(cfg), "clip": None, "measure_pairs": False})
    ref_results, ref_errors = _map_groups(ref_groups, ref_cfg, engine, workers, ray_address, "fvd reference")
    gen = [f for r in results.values() for f in r.fvd_features]
    ref = [f for r in ref_results.values() for f in r.fvd_features]
    info: dict[str, Any] = {
        "clips": len(gen),
        "reference_clips": len(ref),
        "reference": str(reference),
        "reference_errors": {**ref_list_errors, **ref_errors},
        # Why groups gave no clips (e.g. too few frames), counted per reason on each side.
        "groups_without_clips": _count(r.fvd_skipped for r in results.values()),
        "reference_groups_without_clips": _count(r.fvd_skipped for r in ref_results.values()),
    }
    try:
        info["fvd"] = frechet_distance(np.asarray(gen), np.asarray(ref))
        info["skipped"] = None
    except ValueError as e:
        info.update(fvd=None, skipped=str(e))
    return info


def _count(reasons) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        if r:
            out[r] = out.get(r, 0) + 1
    return out


def _shallow(cfg: EvalConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def config_dict(cfg: EvalConfig) -> dict[str, Any]:
    return asdict(cfg)

"""Point tracking through the sampled frames, with re-seeding so tracks cover the whole clip.

Both trackers take RGB uint8 frames (T, H, W, 3) and query points (N, 2) as
(x, y) pixels on frame 0, and return ``Tracks``: positions (T, M, 2) float32,
visibility (T, M) bool (CoTracker's output layout without the batch axis) and
the frame each track starts on. The first N tracks are the query points, in
order; tracks N..M-1 were seeded later, when the first ones were lost (points
leave the frame, get occluded or blurred), so that the camera can still be
measured at the end of a long clip:

- ``lk`` (CPU default): OpenCV pyramidal Lucas-Kanade frame to frame with a
  forward-backward check; a point that fails the check (or leaves the frame,
  or sits on a flat region) is lost. When fewer than ``reseed_fraction`` of
  the N query points are still tracked, new points are detected
  (``cv2.goodFeaturesToTrack``) in the areas no live track covers, up to N
  live points again.
- ``cotracker``: CoTracker loaded through ``torch.hub`` from a local clone or
  the hub cache (never bundled: its code and weights are CC-BY-NC). This is
  the only module that loads CoTracker. Besides the frame-0 queries it asks
  for a uniform query grid every ``query_every`` sampled frames, the way
  CoTracker's own material tracks long clips: queries are ``[t, x, y]`` with
  any frame t (co-tracker ``notebooks/demo.ipynb``, "Tracking forward from
  the frame number 30"; TAP-Vid's strided query mode,
  ``cotracker/datasets/tap_vid_datasets.py: sample_queries_strided``). Without
  ``backward_tracking`` CoTracker's predictor only pins a track at its query
  frame (``cotracker/predictor.py``: it overwrites the query frame's position
  and visibility); what it returns for earlier frames is not a track, so the
  adapter marks those frames not visible.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

HUB_REPO_DIRS = ("facebookresearch_co-tracker_main", "facebookresearch_co-tracker_master")
# Checkpoint file names that CoTracker's own hubconf downloads for each entry point.
DEFAULT_CHECKPOINTS = {
    "cotracker3_offline": "scaled_offline.pth",
    "cotracker3_online": "scaled_online.pth",
    "cotracker2": "cotracker2.pth",
}


@dataclass
class Tracks:
    xy: np.ndarray  # (T, M, 2) float32 pixels
    visible: np.ndarray  # (T, M) bool
    start: np.ndarray  # (M,) int32: the frame each track was seeded on (0 for the query points)

    @property
    def num_seeded(self) -> int:
        """Tracks added after frame 0."""
        return int((self.start > 0).sum())


class Tracker(Protocol):
    name: str

    def track(self, frames: np.ndarray, points: np.ndarray) -> Tracks: ...


@dataclass
class LKTracker:
    window: int = 11
    levels: int = 3
    fb_threshold_px: float = 1.0
    reseed_fraction: float = 0.5
    # LK's own flatness test: points whose gradient matrix is weaker than this are dropped.
    min_eig_threshold: float = 1e-3
    name: str = "lk"
    FAST_LEVELS = 0  # pyramid levels above full resolution in the predicted first pass (see _step)
    PREDICTION_TOLERANCE_PX = 2.0

    def _flow(
        self, a: np.ndarray, b: np.ndarray, p: np.ndarray, guess: np.ndarray | None = None, levels: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
        init = None if guess is None else np.ascontiguousarray(guess, np.float32).reshape(-1, 1, 2).copy()
        q, st, _ = cv2.calcOpticalFlowPyrLK(
            a,
            b,
            p.reshape(-1, 1, 2),
            init,
            winSize=(self.window, self.window),
            maxLevel=self.levels if levels is None else levels,
            criteria=criteria,
            minEigThreshold=self.min_eig_threshold,
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW if guess is not None else 0,
        )
        return q.reshape(-1, 2), st.reshape(-1).astype(bool)

    def _checked(
        self, a: np.ndarray, b: np.ndarray, p0: np.ndarray, velocity: np.ndarray | None, levels: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One forward-backward pass; ``velocity`` (per point) seeds both directions' search."""
        h, w = a.shape
        p1, ok1 = self._flow(a, b, p0, None if velocity is None else p0 + velocity, levels)
        p0_back, ok2 = self._flow(b, a, p1, None if velocity is None else p1 - velocity, levels)
        fb = np.linalg.norm(p0_back - p0, axis=1)
        # A point whose window reaches past the border tracks badly: treat it as having left.
        m = self.window / 2
        inside = (p1[:, 0] >= m) & (p1[:, 0] <= w - 1 - m) & (p1[:, 1] >= m) & (p1[:, 1] <= h - 1 - m)
        return p1, ok1 & ok2 & (fb < self.fb_threshold_px) & inside & np.isfinite(p1).all(1)

    def _step(
        self, a: np.ndarray, b: np.ndarray, p0: np.ndarray, velocity: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``b`` of points ``p0`` of ``a``, and which of them passed every check.

        Most points move about as they did in the previous pair (a still or
        steadily panning camera, a walking subject), so a first pass only
        refines that prediction at ``FAST_LEVELS`` pyramid levels (each level
        costs about as much as full-resolution tracking). Its result is kept
        only when it passes the forward-backward check *and* lands within
        ``PREDICTION_TOLERANCE_PX`` of the prediction, well inside what one
        level can find: a point that moved otherwise could have been caught by
        a wrong nearby minimum. Every other point (and every point without a
        prediction: NaN velocity) is tracked the usual way, all ``levels``
        from no prediction.
        """
        p1 = np.zeros_like(p0)
        ok = np.zeros(len(p0), bool)
        todo = np.arange(len(p0))
        if velocity is not None and self.levels > self.FAST_LEVELS:
            fast = np.nonzero(np.isfinite(velocity).all(1))[0]
            if len(fast):
                guess = p0[fast] + velocity[fast]
                q, good = self._checked(a, b, np.ascontiguousarray(p0[fast]), velocity[fast], self.FAST_LEVELS)
                good &= np.linalg.norm(q - guess, axis=1) <= self.PREDICTION_TOLERANCE_PX
                p1[fast[good]], ok[fast[good]] = q[good], True
                todo = np.nonzero(~ok)[0]
        if len(todo):
            q, good = self._checked(a, b, np.ascontiguousarray(p0[todo]), None, None)
            p1[todo], ok[todo] = q, good
        return p1, ok

    def _detect(self, gray: np.ndarray, live: np.ndarray, count: int, spacing: float) -> np.ndarray:
        """Up to ``count`` corners at least ``spacing`` / 2 from each other and from every live track."""
        h, w = gray.shape
        m = int(math.ceil(self.window / 2)) + 1
        mask = np.zeros((h, w), np.uint8)
        mask[m : h - m, m : w - m] = 255
        radius = max(2, int(round(spacing / 2)))
        for x, y in np.round(live).astype(int):
            cv2.circle(mask, (int(x), int(y)), radius, 0, -1)
        found = cv2.goodFeaturesToTrack(
            gray,
            maxCorners=int(count),
            qualityLevel=0.01,
            minDistance=max(2.0, spacing / 2),
            mask=mask,
            blockSize=min(self.window, 7),
        )
        return np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2).astype(np.float32)

    def track(self, frames: np.ndarray, points: np.ndarray) -> Tracks:
        t_len, h, w = frames.shape[:3]
        n0 = len(points)
        xy = np.zeros((t_len, n0, 2), np.float32)
        vis = np.zeros((t_len, n0), bool)
        start = np.zeros(n0, np.int32)
        xy[0], vis[0] = points, True
        if n0 == 0 or t_len < 2:
            return Tracks(xy, vis, start)
        spacing = math.sqrt(h * w / n0)  # the query points' mean spacing: new points keep about that density
        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        for t in range(t_len - 1):
            xy[t + 1] = xy[t]  # lost points keep their last position, like CoTracker's occluded ones
            alive = np.nonzero(vis[t])[0]
            if len(alive):
                # Each point's last displacement predicts its next one (none for points that were not tracked at t - 1).
                velocity = None
                if t > 0:
                    seen = vis[t - 1, alive][:, None]
                    velocity = np.where(seen, xy[t, alive] - xy[t - 1, alive], np.nan).astype(np.float32)
                p1, ok = self._step(grays[t], grays[t + 1], np.ascontiguousarray(xy[t, alive]), velocity)
                xy[t + 1, alive[ok]] = p1[ok]
                vis[t + 1, alive] = ok
            live = int(vis[t + 1].sum())
            if self.reseed_fraction > 0 and live < self.reseed_fraction * n0 and t + 1 < t_len - 1:
                new = self._detect(grays[t + 1], xy[t + 1, vis[t + 1]], n0 - live, spacing)
                if len(new):
                    # Before its first frame a new track is not visible; its position there is a placeholder.
                    xy = np.concatenate([xy, np.broadcast_to(new, (t_len, len(new), 2))], 1)
                    grown = np.zeros((t_len, len(new)), bool)
                    grown[t + 1] = True
                    vis = np.concatenate([vis, grown], 1)
                    start = np.concatenate([start, np.full(len(new), t + 1, np.int32)])
        return Tracks(xy, vis, start)


def _resolve_repo(repo: str | None) -> Path:
    if repo:
        p = Path(repo).expanduser()
        if not (p / "hubconf.py").is_file():
            raise FileNotFoundError(
                f"--cotracker-repo {p}: no hubconf.py there (expected a clone of facebookresearch/co-tracker)"
            )
        return p
    import torch

    hub = Path(torch.hub.get_dir())
    for name in HUB_REPO_DIRS:
        if (hub / name / "hubconf.py").is_file():
            return hub / name
    raise FileNotFoundError(
        f"CoTracker not found in the torch hub cache {hub}: pass --cotracker-repo with a local clone of facebookresearch/co-tracker"
    )


def _resolve_checkpoint(checkpoint: str | None, entry: str) -> Path:
    if checkpoint:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--cotracker-checkpoint {p}: no such file")
        return p
    import torch

    name = DEFAULT_CHECKPOINTS.get(entry)
    p = Path(torch.hub.get_dir()) / "checkpoints" / (name or f"{entry}.pth")
    if not p.is_file():
        raise FileNotFoundError(
            f"no CoTracker checkpoint given and {p} is not in the hub cache: pass --cotracker-checkpoint FILE"
        )
    return p


def resolve_cotracker(repo: str | None, checkpoint: str | None, entry: str = "cotracker3_offline") -> tuple[Path, Path]:
    """The hub directory and the checkpoint file that ``load_cotracker`` would use (raises if missing)."""
    return _resolve_repo(repo), _resolve_checkpoint(checkpoint, entry)


def load_cotracker(
    repo: str | None, checkpoint: str | None, entry: str = "cotracker3_offline", device: str = "cpu"
) -> Any:
    """Build CoTracker from a local hub directory and load a local checkpoint into ``model.model``."""
    import torch

    repo_dir, ckpt = resolve_cotracker(repo, checkpoint, entry)
    model = torch.hub.load(str(repo_dir), entry, source="local", pretrained=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints wrap the weights
    target = getattr(model, "model", model)
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(f"{ckpt}: does not match CoTracker entry {entry!r} ({str(e).splitlines()[0]})") from None
    log.info("loaded CoTracker %s from %s with weights %s", entry, repo_dir, ckpt)
    return model.to(device).eval()


@dataclass
class CoTrackerTracker:
    model: Any
    device: str = "cpu"
    query_every: int = 16
    grid_size: int = 24
    name: str = "cotracker"

    def query_frames(self, t_len: int) -> list[int]:
        """Frames that get a query grid after frame 0 (none in the last frame: it has no pair to start)."""
        return list(range(self.query_every, t_len - 1, self.query_every)) if self.query_every > 0 else []

    def track(self, frames: np.ndarray, points: np.ndarray) -> Tracks:
        import torch

        from syncam_data.filter.segment import grid_points

        t_len, h, w = frames.shape[:3]
        later = self.query_frames(t_len)
        grid = grid_points(h, w, self.grid_size)
        pts = np.concatenate([points.astype(np.float32)] + [grid] * len(later))
        start = np.concatenate([np.zeros(len(points), np.int32)] + [np.full(len(grid), k, np.int32) for k in later])
        if len(pts) == 0:
            return Tracks(np.zeros((t_len, 0, 2), np.float32), np.zeros((t_len, 0), bool), start)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float().to(self.device)
        q = np.concatenate([start[:, None].astype(np.float32), pts], 1)
        queries = torch.from_numpy(q)[None].to(self.device)
        with torch.inference_mode():
            pred_tracks, pred_vis = self.model(video, queries=queries)
        tracks = pred_tracks[0].float().cpu().numpy().astype(np.float32)
        vis = pred_vis[0].cpu().numpy()
        if vis.dtype != bool:  # some versions return probabilities
            vis = vis > 0.5
        if tracks.shape != (t_len, len(pts), 2) or vis.shape != (t_len, len(pts)):
            raise RuntimeError(
                f"CoTracker returned tracks {tracks.shape} / visibility {vis.shape}, expected ({t_len}, {len(pts)}, 2)"
            )
        # Before its query frame a track is CoTracker's guess, not a track (no backward_tracking): not visible.
        before = np.arange(t_len)[:, None] < start[None, :]
        vis = vis & ~before
        tracks = np.where(before[..., None], pts[None], tracks).astype(np.float32)
        return Tracks(tracks, vis, start)

"""Point tracking through the sampled frames.

Both trackers take RGB uint8 frames (T, H, W, 3) and query points (N, 2) as
(x, y) pixels on frame 0, and return ``tracks`` (T, N, 2) float32 pixels and
``visible`` (T, N) bool — CoTracker's output layout without the batch axis.

- ``lk`` (CPU default): OpenCV pyramidal Lucas-Kanade frame to frame with a
  forward-backward check; a point that fails the check (or leaves the frame,
  or sits on a flat region) is lost for the rest of the clip.
- ``cotracker``: CoTracker loaded through ``torch.hub`` from a local clone or
  the hub cache (never bundled: its code and weights are CC-BY-NC). This is
  the only module that loads CoTracker.
"""

from __future__ import annotations

import logging
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


class Tracker(Protocol):
    name: str

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class LKTracker:
    window: int = 15
    levels: int = 3
    fb_threshold_px: float = 1.0
    # LK's own flatness test: points whose gradient matrix is weaker than this are dropped.
    min_eig_threshold: float = 1e-3
    name: str = "lk"

    def _flow(self, a: np.ndarray, b: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
        q, st, _ = cv2.calcOpticalFlowPyrLK(
            a, b, p.reshape(-1, 1, 2), None, winSize=(self.window, self.window), maxLevel=self.levels,
            criteria=criteria, minEigThreshold=self.min_eig_threshold,
        )
        return q.reshape(-1, 2), st.reshape(-1).astype(bool)

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t_len, h, w = frames.shape[:3]
        n = len(points)
        tracks = np.zeros((t_len, n, 2), np.float32)
        visible = np.zeros((t_len, n), bool)
        tracks[0] = points
        visible[0] = True
        if n == 0:
            return tracks, visible
        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        for t in range(t_len - 1):
            tracks[t + 1] = tracks[t]  # lost points keep their last position, like CoTracker's occluded ones
            alive = np.nonzero(visible[t])[0]
            if len(alive) == 0:
                continue
            p0 = np.ascontiguousarray(tracks[t, alive])
            p1, ok1 = self._flow(grays[t], grays[t + 1], p0)
            p0_back, ok2 = self._flow(grays[t + 1], grays[t], p1)
            fb = np.linalg.norm(p0_back - p0, axis=1)
            # A point whose window reaches past the border tracks badly: treat it as having left.
            m = self.window / 2
            inside = (p1[:, 0] >= m) & (p1[:, 0] <= w - 1 - m) & (p1[:, 1] >= m) & (p1[:, 1] <= h - 1 - m)
            ok = ok1 & ok2 & (fb < self.fb_threshold_px) & inside & np.isfinite(p1).all(1)
            tracks[t + 1, alive[ok]] = p1[ok]
            visible[t + 1, alive] = ok
        return tracks, visible


def _resolve_repo(repo: str | None) -> Path:
    if repo:
        p = Path(repo).expanduser()
        if not (p / "hubconf.py").is_file():
            raise FileNotFoundError(f"--cotracker-repo {p}: no hubconf.py there (expected a clone of facebookresearch/co-tracker)")
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
        raise FileNotFoundError(f"no CoTracker checkpoint given and {p} is not in the hub cache: pass --cotracker-checkpoint FILE")
    return p


def resolve_cotracker(repo: str | None, checkpoint: str | None, entry: str = "cotracker3_offline") -> tuple[Path, Path]:
    """The hub directory and the checkpoint file that ``load_cotracker`` would use (raises if missing)."""
    return _resolve_repo(repo), _resolve_checkpoint(checkpoint, entry)


def load_cotracker(repo: str | None, checkpoint: str | None, entry: str = "cotracker3_offline", device: str = "cpu") -> Any:
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
    name: str = "cotracker"

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        t_len = len(frames)
        if len(points) == 0:
            return np.zeros((t_len, 0, 2), np.float32), np.zeros((t_len, 0), bool)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float().to(self.device)
        q = np.concatenate([np.zeros((len(points), 1), np.float32), points.astype(np.float32)], 1)
        queries = torch.from_numpy(q)[None].to(self.device)
        with torch.inference_mode():
            pred_tracks, pred_vis = self.model(video, queries=queries)
        tracks = pred_tracks[0].float().cpu().numpy().astype(np.float32)
        vis = pred_vis[0].cpu().numpy()
        if vis.dtype != bool:  # some versions return probabilities
            vis = vis > 0.5
        if tracks.shape != (t_len, len(points), 2) or vis.shape != (t_len, len(points)):
            raise RuntimeError(f"CoTracker returned tracks {tracks.shape} / visibility {vis.shape}, expected ({t_len}, {len(points)}, 2)")
        return tracks, vis

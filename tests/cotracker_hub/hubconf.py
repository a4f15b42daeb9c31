"""A local torch.hub directory standing in for facebookresearch/co-tracker in tests.

SynCam must not bundle CoTracker (CC-BY-NC), and no weights can be downloaded
here, so this is our own implementation with CoTracker's interface: the same
entry points, ``pretrained`` keyword, a predictor whose weights live in
``.model``, and the offline call signature

    model(video, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0, backward_tracking=False)
      video   float (B, T, 3, H, W), values 0..255
      queries float (B, N, 3) as [t, x, y] in pixels
      -> pred_tracks (B, T, N, 2) pixels, pred_visibility (B, T, N) bool

The tracks are real: pyramidal Lucas-Kanade with a forward-backward check,
whose window and check threshold are the module's "weights" (so loading a
checkpoint visibly changes them). Queries may start at any frame, as in
CoTracker; for the frames before a query's frame (without
``backward_tracking``) CoTracker's ``predictor.py`` returns the model's
output unpinned, which is no track: this stand-in returns the query point
marked visible there, so a caller that trusts those frames gets caught.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

dependencies = ["torch", "cv2", "numpy"]


class LKTrackerCore(nn.Module):
    """Plays the part of CoTracker's network: holds the state dict a checkpoint fills."""

    def __init__(self) -> None:
        super().__init__()
        self.window = nn.Parameter(torch.tensor(15.0), requires_grad=False)
        self.levels = nn.Parameter(torch.tensor(3.0), requires_grad=False)
        self.fb_threshold = nn.Parameter(torch.tensor(1.0), requires_grad=False)

    def flow(self, a: np.ndarray, b: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = int(self.window.item())
        q, st, _ = cv2.calcOpticalFlowPyrLK(
            a,
            b,
            p.reshape(-1, 1, 2).astype(np.float32),
            None,
            winSize=(w, w),
            maxLevel=int(self.levels.item()),
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
            minEigThreshold=1e-3,
        )
        return q.reshape(-1, 2), st.reshape(-1).astype(bool)

    def follow(self, grays: list[np.ndarray], start: np.ndarray, order: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Track ``start`` points through frames ``order`` (first = query frame)."""
        n = len(start)
        pos = np.zeros((len(order), n, 2), np.float32)
        vis = np.zeros((len(order), n), bool)
        pos[0], vis[0] = start, True
        h, w = grays[0].shape
        thr = float(self.fb_threshold.item())
        for k in range(len(order) - 1):
            a, b = grays[order[k]], grays[order[k + 1]]
            pos[k + 1] = pos[k]
            alive = np.nonzero(vis[k])[0]
            if len(alive) == 0:
                continue
            p0 = pos[k, alive]
            p1, ok1 = self.flow(a, b, p0)
            back, ok2 = self.flow(b, a, p1)
            m = float(self.window.item()) / 2  # windows reaching past the border track badly
            inside = (p1[:, 0] >= m) & (p1[:, 0] <= w - 1 - m) & (p1[:, 1] >= m) & (p1[:, 1] <= h - 1 - m)
            ok = ok1 & ok2 & (np.linalg.norm(back - p0, axis=1) < thr) & inside
            pos[k + 1, alive[ok]] = p1[ok]
            vis[k + 1, alive] = ok
        return pos, vis


class CoTrackerPredictor(nn.Module):
    def __init__(self, checkpoint=None, window_len: int = 60) -> None:
        super().__init__()
        self.model = LKTrackerCore()
        self.window_len = window_len
        if checkpoint is not None:
            self.model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))

    @torch.no_grad()
    def forward(self, video, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0, backward_tracking=False):
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        b, t, _, h, w = video.shape
        if queries is None:
            if grid_size <= 0:
                raise ValueError("this stand-in has no dense mode: pass queries or grid_size > 0")
            xs = torch.linspace(0, w - 1, grid_size)
            ys = torch.linspace(0, h - 1, grid_size)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
            if segm_mask is not None:
                m = segm_mask.reshape(segm_mask.shape[-2], segm_mask.shape[-1]).bool()
                sx = (pts[:, 0] * (m.shape[1] - 1) / max(w - 1, 1)).round().long()
                sy = (pts[:, 1] * (m.shape[0] - 1) / max(h - 1, 1)).round().long()
                pts = pts[m[sy, sx]]
            tq = torch.full((len(pts), 1), float(grid_query_frame))
            queries = torch.cat([tq, pts], 1)[None].repeat(b, 1, 1).to(video.device)
        if queries.ndim != 3 or queries.shape[0] != b or queries.shape[2] != 3:
            raise ValueError(f"queries must be (B, N, 3) as [t, x, y], got {tuple(queries.shape)}")
        n = queries.shape[1]
        tracks = torch.zeros(b, t, n, 2)
        visibility = torch.zeros(b, t, n, dtype=torch.bool)
        frames = video.detach().cpu().clamp(0, 255).permute(0, 1, 3, 4, 2).numpy().astype(np.uint8)
        for bi in range(b):
            grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[bi]]
            q = queries[bi].detach().cpu().numpy()
            for tq in np.unique(q[:, 0].round().astype(int)):
                sel = np.nonzero(q[:, 0].round().astype(int) == tq)[0]
                start = q[sel, 1:3].astype(np.float32)
                fwd, fvis = self.model.follow(grays, start, list(range(tq, t)))
                tracks[bi, tq:, sel] = torch.from_numpy(fwd)
                visibility[bi, tq:, sel] = torch.from_numpy(fvis)
                if tq > 0:
                    if backward_tracking:
                        bwd, bvis = self.model.follow(grays, start, list(range(tq, -1, -1)))
                        tracks[bi, :tq, sel] = torch.from_numpy(bwd[1:][::-1].copy())
                        visibility[bi, :tq, sel] = torch.from_numpy(bvis[1:][::-1].copy())
                    else:
                        # CoTracker's predictor pins only the query frame itself; before it, the real model
                        # still outputs positions and visibilities that are no track. Return a confident-looking
                        # non-track (the query point, "visible") so a caller that trusts those frames is caught.
                        tracks[bi, :tq, sel] = torch.from_numpy(start)[None]
                        visibility[bi, :tq, sel] = True
        return tracks.to(video.device), visibility.to(video.device)


def _predictor(pretrained: bool, **kwargs) -> CoTrackerPredictor:
    if pretrained:
        raise RuntimeError("this test hub has no downloadable weights: use pretrained=False and load a checkpoint")
    return CoTrackerPredictor(**kwargs)


def cotracker3_offline(*, pretrained: bool = True, **kwargs) -> CoTrackerPredictor:
    return _predictor(pretrained, window_len=60, **kwargs)


def cotracker3_online(*, pretrained: bool = True, **kwargs) -> CoTrackerPredictor:
    return _predictor(pretrained, window_len=16, **kwargs)


def cotracker2(*, pretrained: bool = True, **kwargs) -> CoTrackerPredictor:
    return _predictor(pretrained, window_len=8, **kwargs)

"""The training loader: hybrid data mix, angle curriculum, Contract 4 samples (docs/train.md).

Two halves, so that resume is exact and workers never duplicate work:

* ``PlanSampler`` runs in the training process and *plans* every
  micro-batch from the shard index alone (kind by the mix, groups, views in
  the curriculum window, frame indices). Every random choice is drawn from a
  generator seeded by ``(seed, micro-batch number, rank, slot)``, so a plan
  depends only on the seed and the sampler state (micro-batch number, draws
  per kind); that state is small JSON saved in each checkpoint.
* ``ShardSampleDataset`` (map-style, used with ``batch_size=None``) turns a
  plan into tensors in a dataloader worker: it decodes the same frame
  indices for every view, resizes + centre-crops to the training size
  (updating K), or reads the VAE posterior from a matching latent cache.

Sharding: each rank owns a disjoint, seeded subset of every kind's groups and
walks it in seeded epoch permutations (no repeats within an epoch); the
dataloader hands each planned micro-batch to exactly one worker. The kind of
micro-batch ``m`` (and its view count) is the same on every rank, so ranks
run equal-shaped steps; a micro-batch holds one kind.

A kind missing from the shards, or one that cannot supply a sample (too few
views for ``data.num_views``, or no group with enough views in the window of a
curriculum stage, on any rank's share), is left out of the mix with one
warning and the mix renormalized; the loader refuses to start only when no
kind can.

Per kind (Contract 4):

* ``multiview_video``: ``n`` views whose angle to view 0 lies in the current
  window; ``f`` frames, the same indices for every view.
* ``multiview_image``: ``n`` images of one static scene; each image is a
  one-frame clip (``f = 1``, one latent frame), as SynCamMaster treats its
  multi-view image data as single-frame videos.
* ``single_video``: one view (``n = 1``), camera = identity.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from syncam_data.cameras import Camera
from syncam_data.images import decode_rgb
from syncam_data.shards.reader import ShardReader
from syncam_model.camera_input import CameraRule
from syncam_model.config import KINDS, TrainConfig
from syncam_model.curriculum import AngleSchedule, Window, angle_matrix, feasible, select_views

log = logging.getLogger(__name__)

IDENTITY12 = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], dtype=np.float32)


class DataError(RuntimeError):
    """The shard dataset cannot feed the configured training (names the setting or sample)."""


# --- the index: groups per kind, planned from index columns only ---------------------------


@dataclass
class Group:
    dataset: str
    group_id: str
    kind: str
    rows: list[int]  # index rows, in view order
    sample_ids: list[str]
    captions: list[str]
    num_frames: int  # the shortest view's frame count
    size: tuple[int, int]  # (height, width) of the stored media (first view)
    c2w: np.ndarray | None  # (views, 12)
    K: np.ndarray | None  # (views, 4); NaN rows where unknown
    _angles: np.ndarray | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.group_id}"

    @property
    def angles(self) -> np.ndarray:
        if self._angles is None:
            self._angles = angle_matrix(self.c2w) if self.c2w is not None else np.zeros((len(self.rows),) * 2)
        return self._angles

    def caption(self, view: int) -> str:
        """The chosen view 0's caption, else the group's first non-empty one."""
        return self.captions[view] or next((c for c in self.captions if c), "")


def frame_window(num_frames: int, frames: int, stride: int) -> int:
    """Largest stride <= ``stride`` that fits ``frames`` frames in ``num_frames``; 0 if none does."""
    if frames == 1:
        return stride if num_frames >= 1 else 0
    return min(stride, (num_frames - 1) // (frames - 1))


def choose_frames(num_frames: int, frames: int, stride: int, mode: str, rng: np.random.Generator | None) -> list[int]:
    """Frame numbers of the stored clip: ``frames`` frames at the largest usable stride, first or random start."""
    s = frame_window(num_frames, frames, stride)
    if s < 1:
        raise DataError(f"clip of {num_frames} frames is shorter than {frames} frames")
    span = (frames - 1) * s + 1
    start = 0 if mode == "first" or rng is None else int(rng.integers(0, num_frames - span + 1))
    return [start + i * s for i in range(frames)]


class DataIndex:
    """Groups of each kind present in the shards, with the rank's share; built from the index only."""

    def __init__(
        self,
        reader: ShardReader,
        cfg: TrainConfig,
        rank: int = 0,
        world_size: int = 1,
        keep: Callable[[Group], bool] | None = None,
    ) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.groups: dict[str, list[Group]] = {}
        self.dropped: dict[str, int] = {}
        cols = reader.index.select(
            ["sample_id", "dataset", "group_id", "kind", "caption", "num_frames", "height", "width", "K", "c2w"]
        ).to_pydict()
        by_group: dict[tuple[str, str, str], list[int]] = {}
        for i, (d, g, k) in enumerate(zip(cols["dataset"], cols["group_id"], cols["kind"])):
            by_group.setdefault((k, d, g), []).append(i)
        frames_needed = {"multiview_video": cfg.data.frames, "single_video": cfg.data.frames, "multiview_image": 1}
        for (kind, d, g), rows in sorted(by_group.items()):
            if kind not in KINDS:
                continue
            c2w = [cols["c2w"][i] for i in rows]
            Ks = [cols["K"][i] for i in rows]
            nf = min(cols["num_frames"][i] for i in rows)
            reason = None
            if kind != "single_video" and any(c is None for c in c2w):
                reason = "views without c2w"
            elif frame_window(nf, frames_needed[kind], self.cfg.data.frame_stride) < 1:
                reason = f"shorter than {frames_needed[kind]} frames"
            if reason is None and keep is not None:
                probe = Group(
                    d,
                    g,
                    kind,
                    rows,
                    [cols["sample_id"][i] for i in rows],
                    [cols["caption"][i] or "" for i in rows],
                    nf,
                    (0, 0),
                    None,
                    None,
                )
                reason = None if keep(probe) else "not in the latent cache"
            if reason:
                self.dropped[f"{kind}: {reason}"] = self.dropped.get(f"{kind}: {reason}", 0) + 1
                continue
            self.groups.setdefault(kind, []).append(
                Group(
                    d,
                    g,
                    kind,
                    rows,
                    [cols["sample_id"][i] for i in rows],
                    [cols["caption"][i] or "" for i in rows],
                    nf,
                    (cols["height"][rows[0]], cols["width"][rows[0]]),
                    None if kind == "single_video" else np.asarray(c2w, np.float64),
                    np.asarray([k if k is not None else [np.nan] * 4 for k in Ks], np.float64),
                )
            )
        for why, count in sorted(self.dropped.items()):
            log.warning("loader: skipping %d group(s) of %s", count, why)
        self.schedule = AngleSchedule(cfg.curriculum)
        # A source (kind) that cannot supply a sample is treated like a missing one: left out of the mix.
        self.unusable = {k: why for k in self.groups if (why := self._cannot_supply(k)) is not None}
        self.mix = self._mix()
        self.rank_groups = {k: self._share(k, v, self.rank) for k, v in self.groups.items() if k in self.mix}

    def _mix(self) -> dict[str, float]:
        want = {k: w for k, w in self.cfg.data.mix.items() if w > 0}
        present = {k: w for k, w in want.items() if self.groups.get(k) and k not in self.unusable}
        missing = sorted(k for k in want if not self.groups.get(k))
        unusable = sorted(k for k in want if k in self.unusable)
        if not present:
            if unusable:
                return {}  # the sampler refuses to start (check_feasible); the latent cache can still index them
            raise DataError(f"the shards hold no usable groups of any kind in data.mix {sorted(want)}")
        for k in unusable:  # once per source, with the counts
            log.warning(
                "loader: %s; treated like a missing source: data.mix renormalized over %s",
                self.unusable[k],
                sorted(present),
            )
        if missing:
            log.warning(
                "loader: no usable groups of %s in the shards; data.mix renormalized over %s", missing, sorted(present)
            )
        total = sum(present.values())
        return {k: present[k] / total for k in KINDS if k in present}

    def _share(self, kind: str, groups: list[Group], rank: int) -> list[Group]:
        """Rank ``rank``'s disjoint share of a kind's groups (a seeded shuffle, then every world_size-th)."""
        if self.world_size == 1:
            return groups
        perm = np.random.default_rng([self.cfg.seed, 1, KINDS.index(kind)]).permutation(len(groups))
        mine = [groups[i] for i in perm[rank :: self.world_size]]
        if not mine:
            if rank == self.rank:
                log.warning(
                    "loader: %d %s group(s) for %d ranks; rank %d reuses all of them",
                    len(groups),
                    kind,
                    self.world_size,
                    rank,
                )
            return groups
        return mine

    def _cannot_supply(self, kind: str) -> str | None:
        """Why ``kind`` cannot supply every sample the sampler may ask of it, or None when it can.

        A sample needs n views (each n in data.num_views) in the window of every curriculum stage.
        Decided on every rank's share, not just this rank's: every rank must train the same kinds.
        """
        if kind == "single_video":
            return None
        lo, hi = self.cfg.data.views_range
        groups = self.groups[kind]
        pairwise = self.cfg.curriculum.pairwise  # curriculum.pairwise: the window on every pair of views
        for s, start in enumerate(self.schedule.starts):
            win = self.window(kind, start, self.schedule)
            for n in range(lo, hi + 1):
                for r in range(self.world_size):
                    if any(
                        len(g.rows) >= n and (win is None or feasible(g.angles, n, win, pairwise))
                        for g in self._share(kind, groups, r)
                    ):
                        continue
                    able = sum(
                        1 for g in groups if len(g.rows) >= n and (win is None or feasible(g.angles, n, win, pairwise))
                    )
                    sizes = sorted(len(g.rows) for g in groups)
                    where = f" in the window of curriculum.schedule[{s}] ({win.lo:g}-{win.hi:g} deg)" if win else ""
                    on = f" (none on rank {r} of {self.world_size})" if able else ""
                    return (
                        f"{kind}: {able} of {len(groups)} {kind} groups can give {n} views{where}{on}; "
                        f"they have {sizes[0]}-{sizes[-1]} views, data.num_views={self.cfg.data.num_views}"
                    )
        return None

    def window(self, kind: str, step: int, schedule: AngleSchedule) -> Window | None:
        if kind == "multiview_video" or (kind == "multiview_image" and self.cfg.curriculum.apply_to_images):
            return schedule.window(step)
        return None

    def check_feasible(self, schedule: AngleSchedule) -> None:
        """Fail at start, not at step 20k, if a kind in the mix cannot give a sample at some curriculum stage."""
        if not self.mix:
            raise DataError(
                "no source in data.mix can supply a sample: "
                + "; ".join(self.unusable[k] for k in sorted(self.unusable))
            )
        for kind in self.mix:
            why = self._cannot_supply(kind)
            if why is not None:
                raise DataError(why)


# --- plans ------------------------------------------------------------------------------------


@dataclass
class SlotPlan:
    group: str  # "<dataset>/<group_id>"
    kind: str
    views: list[int]  # positions in the group's view list; views[0] is the reference
    frames: list[int]


@dataclass
class BatchPlan:
    micro_id: int
    step: int
    kind: str
    num_views: int
    window: tuple[float, float] | None
    slots: list[SlotPlan]
    state_after: dict[str, Any]


@dataclass
class SamplerState:
    micro_id: int = 0
    draws: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    skipped: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    batches: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})

    def to_dict(self) -> dict[str, Any]:
        return {
            "micro_id": self.micro_id,
            "draws": dict(self.draws),
            "skipped": dict(self.skipped),
            "batches": dict(self.batches),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplerState:
        s = cls()
        s.micro_id = int(d["micro_id"])
        for name in ("draws", "skipped", "batches"):
            getattr(s, name).update({k: int(v) for k, v in d.get(name, {}).items()})
        return s


def frames_for(kind: str, cfg: TrainConfig) -> int:
    return 1 if kind == "multiview_image" else cfg.data.frames


class PlanSampler(torch.utils.data.Sampler):
    """Yields a ``BatchPlan`` per micro-batch, deterministically from (seed, state); runs in the main process.

    The dataloader prefetches, so the sampler runs ahead of training: the
    state to checkpoint is the ``state_after`` of the last *consumed* batch,
    which every batch carries.
    """

    def __init__(
        self,
        index: DataIndex,
        cfg: TrainConfig,
        micro_per_step: int,
        total_micro: int | None = None,
        frame_sampling: str | None = None,
    ) -> None:
        self.index, self.cfg = index, cfg
        self.micro_per_step = micro_per_step
        self.total_micro = total_micro
        self.frame_sampling = frame_sampling or cfg.data.frame_sampling
        self.schedule = AngleSchedule(cfg.curriculum)
        self.state = SamplerState()
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}
        index.check_feasible(self.schedule)

    # state -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.state = SamplerState.from_dict(d)

    # planning ----------------------------------------------------------
    def _group_at(self, kind: str, j: int) -> Group:
        groups = self.index.rank_groups[kind]
        epoch, pos = divmod(j, len(groups))
        key = (kind, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = np.random.default_rng([self.cfg.seed, 3, KINDS.index(kind), self.index.rank, epoch]).permutation(
                len(groups)
            )
            self._perm_cache = {key: perm}  # one epoch at a time per kind is enough
        return groups[int(perm[pos])]

    def _choose_kind(self, rng: np.random.Generator) -> str:
        kinds = list(self.index.mix)
        return kinds[int(rng.choice(len(kinds), p=np.asarray([self.index.mix[k] for k in kinds])))]

    def plan(self) -> BatchPlan:
        """Plan the next micro-batch and advance the state."""
        st = self.state
        m = st.micro_id
        step = m // self.micro_per_step
        # Rank-independent: every rank trains the same kind and view count at micro-batch m.
        rng = np.random.default_rng([self.cfg.seed, 11, m])
        kind = self._choose_kind(rng)
        lo, hi = self.cfg.data.views_range
        n = 1 if kind == "single_video" else int(rng.integers(lo, hi + 1))
        win = self.index.window(kind, step, self.schedule)
        slots = []
        for b in range(self.cfg.data.micro_batch_size):
            srng = np.random.default_rng([self.cfg.seed, 13, m, self.index.rank, b])
            slots.append(self._plan_slot(kind, n, win, srng))
        st.batches[kind] += 1
        st.micro_id += 1
        return BatchPlan(m, step, kind, n, None if win is None else (win.lo, win.hi), slots, st.to_dict())

    def _plan_slot(self, kind: str, n: int, win: Window | None, rng: np.random.Generator) -> SlotPlan:
        st = self.state
        # Two epochs' worth of draws visit every group at least once, even across an epoch boundary.
        tries = 2 * len(self.index.rank_groups[kind])
        for _ in range(tries):
            g = self._group_at(kind, st.draws[kind])
            st.draws[kind] += 1
            slot = plan_slot(g, n, win, self.cfg, self.frame_sampling, rng)
            if slot is not None:
                return slot
            st.skipped[kind] += 1
        raise DataError(
            f"no {kind} group on rank {self.index.rank} gives {n} views in window {win} (data.num_views, curriculum.schedule)"
        )

    def __iter__(self) -> Iterator[BatchPlan]:
        while self.total_micro is None or self.state.micro_id < self.total_micro:
            yield self.plan()

    def __len__(self) -> int:
        if self.total_micro is None:
            raise TypeError("endless sampler")
        return max(0, self.total_micro - self.state.micro_id)


def plan_slot(
    g: Group, n: int, win: Window | None, cfg: TrainConfig, frame_sampling: str, rng: np.random.Generator
) -> SlotPlan | None:
    """Views and frames for one sample from group ``g``, or None if ``g`` cannot satisfy (n, window)."""
    if g.kind == "single_video":
        views: list[int] | None = [int(rng.integers(0, len(g.rows)))]
    else:
        views = select_views(g.angles, n, win, rng, pairwise=cfg.curriculum.pairwise)
    if views is None:
        return None
    frames = choose_frames(g.num_frames, frames_for(g.kind, cfg), cfg.data.frame_stride, frame_sampling, rng)
    return SlotPlan(g.key, g.kind, views, frames)


# --- decoding ---------------------------------------------------------------------------------


def crop_box(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized width, resized height, x0, y0): scale to cover ``dst``, then an integer centre crop."""
    (h, w), (H, W) = src_hw, dst_hw
    s = max(W / w, H / h)
    rw, rh = max(W, round(w * s)), max(H, round(h * s))
    return rw, rh, (rw - W) // 2, (rh - H) // 2


def updated_K(K: Sequence[float], src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics after resize + the same integer centre crop the pixels get."""
    if K is None or not np.all(np.isfinite(K)):
        return np.full(4, np.nan, np.float32)
    rw, rh, x0, y0 = crop_box(src_hw, dst_hw)
    cam = Camera(src_hw[1], src_hw[0], *K).resized(rw, rh).cropped(x0, y0, dst_hw[1], dst_hw[0])
    return np.asarray(cam.intrinsics, np.float32)


def decode_view(
    blob: bytes,
    media_format: str,
    frames: Sequence[int],
    dst_hw: tuple[int, int],
    name: str,
    src_hw: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Media bytes -> uint8 (f, 3, H, W) at the training size (resize to cover, centre crop).

    Video frames are converted and scaled to the cover size by the decoder's
    own scaler and their crop written straight into ``out`` (a slice of the
    micro-batch array; allocated when not given), one frame at a time.
    ``src_hw`` is the stored size from the shard index (it fixes the crop, as
    it fixes K in ``updated_K``); given, the video is opened once.
    ``threads`` is the decoder's thread count (0: one per core).
    """
    from syncam_data import video

    H, W = dst_hw
    if out is None:
        out = np.empty((len(frames), 3, H, W), np.uint8)
    if media_format == "mp4":
        if src_hw is None:
            info = video.probe(blob)
            src_hw = (info.height, info.width)
        rw, rh, x0, y0 = crop_box(src_hw, dst_hw)
        video.decode_into(blob, frames, out, size=(rw, rh), offset=(x0, y0), threads=threads)
        return out
    import cv2

    img = decode_rgb(blob)  # stored pixels, as K describes them (syncam_data/images.py)
    if img is None:
        raise DataError(f"{name}: not a decodable {media_format} image")
    rw, rh, x0, y0 = crop_box(img.shape[:2], dst_hw)
    img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA)
    out[:] = img[y0 : y0 + H, x0 : x0 + W].transpose(2, 0, 1)  # the still image is every frame
    return out


def video_to_float(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1] (done on the device to keep worker queues 4x smaller)."""
    return u8.float().div_(127.5).sub_(1.0)


def caption_key(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


class ShardSampleDataset(torch.utils.data.Dataset):
    """Plan -> micro-batch tensors. Media decode by default; cached VAE posteriors when ``cache`` is given.

    A batch is a dict: ``video`` uint8 (B, n, f, 3, H, W) (or ``latent_mean``
    / ``latent_logvar`` (B, n, F', C, h, w) from the cache, plus ``text`` (B,
    L, D) when the cache holds captions), ``cameras`` float (B, n, 12),
    ``K`` (B, n, 4), ``captions``, ``sample_ids``, ``kind``, ``micro_id``,
    ``step``, ``state_after``, ``replaced`` (views that failed and were
    replaced by another draw).
    """

    def __init__(self, reader: ShardReader, index: DataIndex, cfg: TrainConfig, cache: Any | None = None) -> None:
        self.reader, self.index, self.cfg, self.cache = reader, index, cfg, cache
        self.by_key = {g.key: g for gs in index.groups.values() for g in gs}
        self.schedule = AngleSchedule(cfg.curriculum)
        # Relative poses with the translation rule of data.translation_normalization (syncam_model.camera_input).
        self.camera_rule = CameraRule.from_data_config(cfg.data)
        self.bad: set[str] = set()
        # Per-row decode inputs as plain arrays: a pyarrow scalar look-up per view and sample costs more.
        idx = reader.index
        self.stored_hw = (
            np.stack([idx.column("height").to_numpy(), idx.column("width").to_numpy()], 1)
            if len(idx)
            else np.zeros((0, 2), int)
        )
        self.media_format = idx.column("media_format").to_pylist()
        self.decode_threads = 0  # per decoder; dataloader workers split the cores (``_worker_init``)
        self.buffers = BatchBuffers()

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["buffers"] = BatchBuffers()  # memory mappings stay in their process
        return d

    def __len__(self) -> int:  # map-style with plan keys; length is not meaningful
        return 0

    def load_slot(self, slot: SlotPlan, video: np.ndarray | None = None) -> dict[str, Any]:
        """One sample; decoded frames go into ``video`` (n, f, 3, H, W) uint8 when given (a slice of the batch)."""
        g = self.by_key[slot.group]
        hw = (self.cfg.data.height, self.cfg.data.width)
        rows = [g.rows[v] for v in slot.views]
        sids = [g.sample_ids[v] for v in slot.views]
        out: dict[str, Any] = {"sample_ids": sids, "caption": g.caption(slot.views[0])}
        if g.c2w is None:
            out["cameras"] = np.tile(IDENTITY12, (len(rows), 1))
        else:
            out["cameras"] = self.camera_rule.apply([g.c2w[v] for v in slot.views])
        out["K"] = np.stack([updated_K(g.K[v], g.size, hw) for v in slot.views])
        if self.cache is not None:
            out.update(self.cache.load_views(sids, slot.frames, out["caption"]))
            return out
        if video is None:
            video = np.empty((len(rows), len(slot.frames), 3, *hw), np.uint8)
        for v, (r, sid) in enumerate(zip(rows, sids)):
            blob = self.reader.read_blob(r, "media")
            src_hw = (int(self.stored_hw[r, 0]), int(self.stored_hw[r, 1]))
            decode_view(
                blob, self.media_format[r], slot.frames, hw, sid, src_hw, out=video[v], threads=self.decode_threads
            )
        out["video"] = video
        return out

    def load_slot_or_replace(
        self, plan: BatchPlan, b: int, video: np.ndarray | None = None
    ) -> tuple[dict[str, Any], int]:
        """Load a slot; if a view fails to decode, log the sample id and draw a replacement (deterministically)."""
        slot = plan.slots[b]
        for attempt in range(self.cfg.data.max_decode_retries + 1):
            g = self.by_key[slot.group]
            sids = [g.sample_ids[v] for v in slot.views]
            known_bad = [s for s in sids if s in self.bad]
            if not known_bad:
                try:
                    return self.load_slot(slot, video), attempt
                except Exception as e:  # noqa: BLE001 - any decode failure of untrusted media: skip the sample
                    log.warning(
                        "loader: sample %s failed to load (%s: %s); drawing another", slot.group, type(e).__name__, e
                    )
                    self.bad.update(_failing(e, sids))
            slot = self._replacement(plan, b, attempt)
        raise DataError(
            f"micro-batch {plan.micro_id}: {self.cfg.data.max_decode_retries + 1} draws in a row failed to load (data.max_decode_retries)"
        )

    def _replacement(self, plan: BatchPlan, b: int, attempt: int) -> SlotPlan:
        groups = self.index.rank_groups[plan.kind]
        win = None if plan.window is None else Window(*plan.window)
        rng = np.random.default_rng([self.cfg.seed, 17, plan.micro_id, self.index.rank, b, attempt])
        for j in rng.permutation(len(groups)):
            s = plan_slot(
                groups[int(j)],
                plan.num_views,
                win,
                self.cfg,
                self.cfg.data.frame_sampling if self.cache is None else "first",
                rng,
            )
            if s is not None:
                return s
        raise DataError(f"no replacement {plan.kind} group available")

    def __getitem__(self, plan: BatchPlan) -> dict[str, Any]:
        video = None
        if self.cache is None:
            # The whole micro-batch in one uint8 array; every decoded frame is written into its place once.
            f = len(plan.slots[0].frames) if plan.slots else 0
            video = self.buffers.take(
                (len(plan.slots), plan.num_views, f, 3, self.cfg.data.height, self.cfg.data.width)
            )
        items, replaced = [], 0
        for b in range(len(plan.slots)):
            item, r = self.load_slot_or_replace(plan, b, None if video is None else video[b].numpy())
            items.append(item)
            replaced += r
        return collate(items, plan, replaced, video)


class BatchBuffers:
    """Uninitialized uint8 batch tensors, cheap to fill: reused memory in the training process, shared memory in a worker.

    A fresh 150 MB micro-batch (4 views x 49 x 3 x 384 x 672) costs ~37,000
    page faults, several times the copy of the frames into it
    (docs/benchmarks/train.md). In the training process a batch's memory (an
    anonymous mapping, advised to use transparent huge pages) is handed out
    again once every tensor on it is gone: the pool holds the mapping and only
    a weak reference to the array the tensors keep alive. In a dataloader
    worker the batch goes to the training process through shared memory, so it
    is allocated there from the start (a private tensor would be copied there
    whole on the way out).
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._pool: list[tuple[mmap.mmap, weakref.ref]] = []

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape)
        if size == 0:
            return torch.empty(shape, dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            # A new shared segment, filled by the decoder directly (``share_memory_`` would also copy the
            # uninitialized private tensor into it). ``_new_shared`` is torch's documented storage constructor.
            return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size)).view(shape)
        for i, (buf, ref) in enumerate(self._pool):
            if ref() is None and len(buf) == size:
                arr = np.frombuffer(buf, np.uint8).reshape(shape)
                self._pool[i] = (buf, weakref.ref(arr))
                return torch.from_numpy(arr)
        buf = mmap.mmap(-1, size)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; elsewhere plain pages
            buf.madvise(mmap.MADV_HUGEPAGE)
        arr = np.frombuffer(buf, np.uint8).reshape(shape)  # keeps ``buf`` alive while any tensor uses it
        self._pool.append((buf, weakref.ref(arr)))
        del self._pool[: max(0, len(self._pool) - self.keep)]
        return torch.from_numpy(arr)


def _failing(err: Exception, sids: list[str]) -> list[str]:
    """The sample ids an error names, else all of the slot's views (so they are skipped next time)."""
    named = [s for s in sids if s in str(err)]
    return named or sids


def collate(
    items: list[dict[str, Any]], plan: BatchPlan, replaced: int, video: torch.Tensor | None = None
) -> dict[str, Any]:
    """The micro-batch dict; ``video`` is the batch tensor the slots were decoded into (no stacking copy)."""
    batch: dict[str, Any] = {
        "kind": plan.kind,
        "micro_id": plan.micro_id,
        "step": plan.step,
        "window": plan.window,
        "state_after": plan.state_after,
        "replaced": replaced,
        "captions": [it["caption"] for it in items],
        "sample_ids": [it["sample_ids"] for it in items],
        "frames": [s.frames for s in plan.slots],
        "cameras": torch.from_numpy(np.stack([it["cameras"] for it in items])),
        "K": torch.from_numpy(np.stack([it["K"] for it in items])),
    }
    if video is not None:
        batch["video"] = video
    for key in ("video", "latent_mean", "latent_logvar", "text"):
        if key in items[0] and key not in batch:
            batch[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
    return batch


def as_contract4(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A decoded micro-batch as Contract 4 samples: video float (n, f, 3, H, W) in [-1, 1], cameras, caption, kind."""
    return [
        {
            "video": video_to_float(batch["video"][i]),
            "cameras": batch["cameras"][i],
            "caption": batch["captions"][i],
            "kind": batch["kind"],
        }
        for i in range(batch["video"].shape[0])
    ]


# --- assembly ------------------------------------------------------------------------------


def _worker_init(_: int) -> None:
    # Decoding is single-threaded per worker in torch; torch's intra-op pool would only oversubscribe the cores.
    torch.set_num_threads(1)
    # Each worker's decoder gets its share of the cores, so K workers scale up to the core count without
    # K x cores decoder threads fighting over them.
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, ShardSampleDataset):
        info.dataset.decode_threads = max(1, _cores() // info.num_workers)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Loader:
    """Everything the trainer needs from the data side, built by ``build_loader``."""

    reader: ShardReader
    index: DataIndex
    sampler: PlanSampler
    dataset: ShardSampleDataset
    cache: Any | None

    def dataloader(self) -> torch.utils.data.DataLoader:
        """A fresh dataloader starting at the sampler's current state (call after ``load_state_dict``)."""
        n = self.index.cfg.data.num_workers
        kw: dict[str, Any] = {"num_workers": n, "worker_init_fn": _worker_init}
        if n > 0:
            kw["prefetch_factor"] = self.index.cfg.data.prefetch_factor
        return torch.utils.data.DataLoader(self.dataset, sampler=self.sampler, batch_size=None, **kw)

    def stats(self) -> dict[str, Any]:
        st = self.sampler.state
        return {"skipped_window": dict(st.skipped), "batches_per_kind": dict(st.batches), "draws": dict(st.draws)}


def build_loader(
    shards: str,
    cfg: TrainConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    micro_per_step: int = 1,
    total_micro: int | None = None,
    cache: Any | None = None,
) -> Loader:
    """Open the shards, index the groups, and build sampler + dataset for this rank.

    ``cache`` is an opened ``syncam_model.cache.LatentCache`` whose settings
    match ``cfg`` (see ``cache.open_matching``); frames are then the cache's
    fixed window (first ``f`` frames) instead of a random start.
    """
    reader = ShardReader(shards)
    if len(reader) == 0:
        raise DataError(f"{shards}: the shard dataset has no rows")
    index = DataIndex(reader, cfg, rank, world_size, keep=cache.has_group if cache is not None else None)
    sampler = PlanSampler(
        index, cfg, micro_per_step, total_micro, frame_sampling="first" if cache is not None else None
    )
    dataset = ShardSampleDataset(reader, index, cfg, cache)
    log.info(
        "loader: rank %d/%d, groups %s, mix %s",
        rank,
        world_size,
        {k: f"{len(index.rank_groups[k])}/{len(index.groups[k])}" for k in index.rank_groups},
        {k: round(v, 3) for k, v in index.mix.items()},
    )
    return Loader(reader, index, sampler, dataset, cache)


__all__ = [
    "BatchPlan",
    "DataError",
    "DataIndex",
    "Loader",
    "PlanSampler",
    "SamplerState",
    "ShardSampleDataset",
    "SlotPlan",
    "as_contract4",
    "build_loader",
    "caption_key",
    "choose_frames",
    "crop_box",
    "decode_view",
    "updated_K",
    "video_to_float",
]

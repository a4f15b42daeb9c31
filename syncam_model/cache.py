"""Latent cache: VAE posteriors of every view clip and T5 embeddings of every caption, computed once.

Layout (next to the shards by default, ``<shards>/latent_cache/<key>/``)::

    cache.json                 settings, the key, counts, "complete": true when finished
    index.json                 sample id -> part file; caption sha1 -> part file
    part-r<rank>-<n>.safetensors
        "<sample_id>|mean", "<sample_id>|logvar"   [F', C, h, w] (unscaled VAE posterior)
        "<sample_id>|frames"                      int32 frame numbers that were encoded
        "text|<caption sha1>"                     [L, D] T5 embedding
    text_empty.safetensors     the empty prompt (classifier-free guidance dropout)
    parts-r<rank>.jsonl        commit log: one line per finished part (resume skips its groups)
    errors-r<rank>.jsonl       groups that failed to decode or encode, with the error

The key is a hash of everything that changes the numbers: training size,
frame count and stride, the VAE's and text encoder's identity, the storage
dtype. A cache is used only when its key matches the run's settings;
otherwise the loader decodes video. Frames are the first ``f`` frames of each
clip at the configured stride (the cache cannot hold a random start), the
same indices for every view of a group.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from syncam_data import fsio
from syncam_model.config import KINDS, TrainConfig
from syncam_model.data import DataError, DataIndex, Group, caption_key, choose_frames, decode_view, frames_for

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheError(RuntimeError):
    pass


# --- identity and settings ------------------------------------------------------------------


def module_identity(module: torch.nn.Module, name: str) -> str:
    """Hash of a frozen model's config and a few weight statistics (enough to tell two checkpoints apart)."""
    cfg = getattr(module, "config", None)
    # diffusers configs are dicts; transformers configs have to_dict()
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    cfg_d = {k: v for k, v in raw.items() if not str(k).startswith("_") and k != "transformers_version"}
    h = hashlib.sha256(json.dumps(cfg_d, sort_keys=True, default=str).encode())
    h.update(name.encode())
    state = module.state_dict()
    for key in sorted(state)[:: max(1, len(state) // 4)][:4]:
        t = state[key].detach().double().cpu()
        h.update(f"{key}:{float(t.mean()):.6e}:{float(t.std()) if t.numel() > 1 else 0.0:.6e}".encode())
    return h.hexdigest()[:16]


def cache_settings(cfg: TrainConfig, components: Any) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "height": cfg.data.height,
        "width": cfg.data.width,
        "frames": cfg.data.frames,
        "frame_stride": cfg.data.frame_stride,
        "frame_window": "first",
        "dtype": cfg.cache.dtype,
        "vae": module_identity(components.vae, "vae"),
        "text_encoder": module_identity(components.text_encoder, "t5"),
        "text_length": int(components.max_text_length),
    }


def cache_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(shards: str | os.PathLike, cfg: TrainConfig) -> Path:
    return Path(cfg.cache.dir) if cfg.cache.dir else Path(shards) / "latent_cache"


# --- reading --------------------------------------------------------------------------------


class LatentCache:
    """Read side: per-view posteriors and caption embeddings by key; opened lazily per process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_p, index_p = self.path / "cache.json", self.path / "index.json"
        if not meta_p.exists() or not index_p.exists():
            raise CacheError(f"{self.path}: not a finished latent cache (no cache.json / index.json)")
        self.meta = json.loads(meta_p.read_text())
        index = json.loads(index_p.read_text())
        self.samples: dict[str, str] = index["samples"]
        self.texts: dict[str, str] = index["texts"]
        self._files: dict[str, Any] = {}
        self._empty: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_files"] = {}
        return d

    def _file(self, name: str) -> Any:
        from safetensors import safe_open

        f = self._files.get(name)
        if f is None:
            p = self.path / name
            if not p.exists():
                raise CacheError(f"{p}: cache part listed in index.json is missing")
            f = self._files[name] = safe_open(str(p), framework="pt")
        return f

    def has_group(self, group: Group) -> bool:
        return all(s in self.samples for s in group.sample_ids) and all(
            caption_key(c) in self.texts for c in set(group.captions)
        )

    def load_views(self, sample_ids: list[str], frames: list[int], caption: str) -> dict[str, torch.Tensor]:
        means, logvars = [], []
        for sid in sample_ids:
            f = self._file(self.samples[sid])
            stored = f.get_tensor(f"{sid}|frames").tolist()
            if stored != list(frames):
                raise DataError(
                    f"{self.path}: {sid} was cached for frames {stored[:4]}..., the plan wants {list(frames)[:4]}..."
                )
            means.append(f.get_tensor(f"{sid}|mean").float())
            logvars.append(f.get_tensor(f"{sid}|logvar").float())
        key = caption_key(caption)
        text = self._file(self.texts[key]).get_tensor(f"text|{key}")
        return {"latent_mean": torch.stack(means), "latent_logvar": torch.stack(logvars), "text": text}

    def empty_text(self) -> torch.Tensor:
        if self._empty is None:
            from safetensors.torch import load_file

            self._empty = load_file(str(self.path / "text_empty.safetensors"))["text"]
        return self._empty


def open_matching(shards: str | os.PathLike, cfg: TrainConfig, components: Any) -> LatentCache | None:
    """The finished cache whose key matches this run's settings, or None (``cache.use=require`` raises)."""
    if cfg.cache.use == "never":
        return None
    settings = cache_settings(cfg, components)
    path = cache_root(shards, cfg) / cache_key(settings)
    meta = path / "cache.json"
    ok = meta.exists() and json.loads(meta.read_text()).get("complete", False)
    if not ok:
        msg = f"no finished latent cache for these settings at {path} (run `syncam-train cache` with the same config)"
        if cfg.cache.use == "require":
            raise CacheError(msg)
        log.info("%s; decoding video instead", msg)
        return None
    log.info("using latent cache %s", path)
    return LatentCache(path)


# --- building -------------------------------------------------------------------------------


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # Durable before the log line that marks the part done (fsio: fsync, rename, fsync the folder).
    with fsio.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def _append_line(path: Path, obj: dict[str, Any]) -> None:
    fsio.append_line(path, json.dumps(obj))


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: its part was never committed
            continue
    return out


def encode_group(g: Group, reader: Any, cfg: TrainConfig, components: Any, view_batch: int) -> dict[str, torch.Tensor]:
    """Decode every view of a group at the cache's frames and encode them: ``{"<sid>|mean": ...}``."""
    from syncam_model.components import encode_video_dist

    frames = choose_frames(g.num_frames, frames_for(g.kind, cfg), cfg.data.frame_stride, "first", None)
    hw = (cfg.data.height, cfg.data.width)
    dtype = DTYPES[cfg.cache.dtype]
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(g.rows), view_batch):
        rows, sids = g.rows[start : start + view_batch], g.sample_ids[start : start + view_batch]
        clips = np.empty((len(rows), len(frames), 3, *hw), np.uint8)
        for v, (r, sid) in enumerate(zip(rows, sids)):
            idx = reader.index
            src_hw = (idx.column("height")[r].as_py(), idx.column("width")[r].as_py())
            decode_view(
                reader.read_blob(r, "media"),
                idx.column("media_format")[r].as_py(),
                frames,
                hw,
                sid,
                src_hw,
                out=clips[v],
            )
        video = torch.from_numpy(clips).float().div_(127.5).sub_(1.0)
        mean, logvar = encode_video_dist(components, video)
        for i, sid in enumerate(sids):
            out[f"{sid}|mean"] = mean[i].to("cpu", dtype)
            out[f"{sid}|logvar"] = logvar[i].to("cpu", dtype)
            out[f"{sid}|frames"] = torch.tensor(frames, dtype=torch.int32)
    return out


def build_cache(
    shards: str | os.PathLike,
    cfg: TrainConfig,
    components: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    view_batch: int = 4,
    groups_per_part: int = 64,
    barrier: Any = None,
    progress: bool = True,
) -> Path:
    """Encode every usable group of the shards (this rank's share) into the cache for ``cfg``; resumable.

    Returns the cache folder. Groups already committed by an earlier run are
    skipped; a group that fails is recorded in ``errors-r<rank>.jsonl`` and
    skipped. Rank 0 writes ``index.json`` and marks the cache complete after
    ``barrier()`` (pass accelerate's ``wait_for_everyone`` when distributed).
    """
    from tqdm.auto import tqdm

    from syncam_data.shards.reader import ShardReader
    from syncam_model.text import encode_prompts

    settings = cache_settings(cfg, components)
    path = cache_root(shards, cfg) / cache_key(settings)
    path.mkdir(parents=True, exist_ok=True)
    reader = ShardReader(shards)
    # Cache every kind the shards hold, whatever the run's mix says.
    present = {k: 1.0 for k in KINDS if k in set(reader.index.column("kind").to_pylist())}
    index = DataIndex(reader, cfg.model_copy(update={"data": cfg.data.model_copy(update={"mix": present})}))
    all_groups = [g for kind in sorted(index.groups) for g in index.groups[kind]]
    mine = all_groups[rank::world_size]
    log_p, err_p = path / f"parts-r{rank}.jsonl", path / f"errors-r{rank}.jsonl"
    done = {k for line in _read_lines(log_p) for k in line["groups"]}
    failed = {line["group"] for line in _read_lines(err_p)}
    todo = [g for g in mine if g.key not in done and g.key not in failed]
    log.info(
        "cache %s: %d groups for rank %d, %d already done, %d failed before",
        path,
        len(mine),
        rank,
        len(done),
        len(failed),
    )
    if rank == 0 and not (path / "text_empty.safetensors").exists():
        _atomic_save(
            {"text": encode_prompts(components, [""])[0].to("cpu", DTYPES[cfg.cache.dtype])},
            path / "text_empty.safetensors",
        )
    part_no = len(_read_lines(log_p))
    buf: dict[str, torch.Tensor] = {}
    buf_groups: list[str] = []
    bar = tqdm(todo, desc=f"latent cache r{rank}", unit="group", disable=not progress)
    for g in bar:
        try:
            tensors = encode_group(g, reader, cfg, components, view_batch)
            for cap in sorted(set(g.captions)):
                key = f"text|{caption_key(cap)}"
                if key not in buf:
                    tensors[key] = encode_prompts(components, [cap])[0].to("cpu", DTYPES[cfg.cache.dtype])
        except Exception as e:  # noqa: BLE001 - untrusted media: record and go on
            log.warning("cache: group %s failed (%s: %s); skipped", g.key, type(e).__name__, e)
            _append_line(err_p, {"group": g.key, "error": f"{type(e).__name__}: {e}"})
            continue
        buf.update(tensors)
        buf_groups.append(g.key)
        if len(buf_groups) >= groups_per_part:
            _commit_part(path, rank, part_no, buf, buf_groups, log_p)
            part_no, buf, buf_groups = part_no + 1, {}, []
    if buf_groups:
        _commit_part(path, rank, part_no, buf, buf_groups, log_p)
    if barrier is not None:
        barrier()
    if rank == 0:
        finalize(path, settings, world_size)
    if barrier is not None:
        barrier()
    return path


def _commit_part(
    path: Path, rank: int, part_no: int, tensors: dict[str, torch.Tensor], groups: list[str], log_p: Path
) -> None:
    name = f"part-r{rank}-{part_no:05d}.safetensors"
    _atomic_save(tensors, path / name)
    samples = sorted({k.split("|")[0] for k in tensors if not k.startswith("text|")})
    texts = sorted(k.split("|", 1)[1] for k in tensors if k.startswith("text|"))
    # The part counts as done only once this line is written (after the file is in place).
    _append_line(log_p, {"file": name, "groups": groups, "samples": samples, "texts": texts})


def finalize(path: Path, settings: dict[str, Any], world_size: int) -> dict[str, Any]:
    samples: dict[str, str] = {}
    texts: dict[str, str] = {}
    errors = 0
    for log_p in sorted(path.glob("parts-r*.jsonl")):
        for line in _read_lines(log_p):
            samples.update({s: line["file"] for s in line["samples"]})
            texts.update({t: line["file"] for t in line["texts"]})
    for err_p in sorted(path.glob("errors-r*.jsonl")):
        errors += len(_read_lines(err_p))
    fsio.write_json(path / "index.json", {"samples": samples, "texts": texts}, indent=None)
    meta = {
        "key": path.name,
        "settings": settings,
        "num_samples": len(samples),
        "num_texts": len(texts),
        "failed_groups": errors,
        "ranks": world_size,
        "complete": True,
    }
    fsio.write_json(path / "cache.json", meta, indent=2)
    log.info("latent cache %s: %d view clips, %d captions, %d failed groups", path, len(samples), len(texts), errors)
    return meta

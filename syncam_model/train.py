"""The training loop: accelerate, v-prediction on CogVideoX, checkpoints that resume exactly.

Read top to bottom: ``train()`` builds a ``Trainer`` (model, optimizer, loader,
optionally restored from a checkpoint) and calls ``Trainer.run()``; one
optimizer step is ``Trainer.train_step()``: ``accumulation`` micro-batches,
each ``micro_loss()``.

Exactness: every random draw of a micro-batch (timestep, noise, posterior
sample, text dropout, novel-view choice) comes from a CPU generator seeded by
``(seed, micro-batch number, rank)``, and the loader plans micro-batches from
a seeded, saved state; so a run resumed from a checkpoint replays the very
same batches and noise as the uninterrupted run. Checkpoints hold the
adapter (safetensors), the optimizer's tensors (safetensors) and its
hyper-parameters (JSON), the LR schedule, every rank's RNG and loader state,
and the step, and are written to a temporary folder that is fsynced and
renamed when complete (``trainer_state.json``, written last, lists every file
with its size); a checkpoint being replaced or pruned is renamed away before it
is deleted, and ``--resume latest`` falls back to the newest complete one.
No pickles (FSDP / DeepSpeed state goes through ``accelerator.save_state``,
see docs/train.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from syncam_data import fsio
from syncam_model.camera_input import CameraRule
from syncam_model.config import TrainConfig
from syncam_model.data import DataError, Loader, build_loader, video_to_float
from syncam_model.frames import pad_latent_frames, round_up_decodable

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
BASE_FILE = "transformer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
# Settings a resumed run may change without breaking exactness.
RESUMABLE_CHANGES = (
    "steps",
    "checkpoint",
    "log",
    "validation",
    "data.num_workers",
    "data.prefetch_factor",
    "model.gradient_checkpointing",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed by this run (names the file and the mismatch)."""


# --- small helpers ----------------------------------------------------------------------------


def micro_generator(seed: int, micro_id: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch: identical in an uninterrupted and a resumed run."""
    s = np.random.SeedSequence([seed, 29, micro_id, rank]).generate_state(2, np.uint64)
    return torch.Generator("cpu").manual_seed(int(s[0] % (2**63)))


def lr_lambda(cfg: TrainConfig):
    warm, total, kind = cfg.optim.warmup_steps, cfg.steps, cfg.optim.schedule

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac

    return f


def resolve_dtypes(cfg: TrainConfig) -> tuple[torch.dtype, str]:
    """(weight dtype, accelerate mixed_precision): bf16 where the GPU supports it, float32 elsewhere.

    The trained parameters stay float32 whatever the base's dtype; the multi-view modules compute in
    their own dtype (``MultiViewModule.forward``), so every combination ``ModelConfig`` accepts runs.
    """
    bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = (torch.bfloat16 if bf16_ok else torch.float32) if cfg.model.dtype == "auto" else names[cfg.model.dtype]
    if cfg.model.mixed_precision != "auto":
        return dtype, cfg.model.mixed_precision
    # auto follows the weights' 16-bit type (never the other one, see ModelConfig._precision).
    mp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "bf16" if bf16_ok else "no")
    return dtype, mp


def tiny_config(pretrained: str, cfg: TrainConfig) -> dict[str, Any] | None:
    """``model.tiny_config`` applies to ``--pretrained tiny`` only."""
    return cfg.model.tiny_config if str(pretrained) == "tiny" else None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ and that change the training trajectory."""
    a, b = _flat(saved), _flat(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [
        f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}"
        for k in keys
        if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)
    ]


# --- optimizer / RNG state without pickles --------------------------------------------------


def optimizer_to_safetensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in state["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    st: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, pid, name = key.split(".", 2)
        st.setdefault(int(pid), {})[name] = t
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        st.setdefault(int(pid), {})[name] = v
    return {"state": st, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), pos, has_gauss, cached], "python": [py[0], list(py[1]), py[2]]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))


def _write_json(path: Path, obj: Any) -> None:
    fsio.write_json(path, obj, indent=1, allow_nan=True)


# Keys every trainer_state.json has (older checkpoints lack "files", the size of every file in the folder).
_STATE_KEYS = ("step", "world_size", "config", "base_id", "lr_scheduler")


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json; CheckpointError naming the file when it is missing or malformed."""
    f = Path(path) / STATE_FILE
    try:
        state = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint folder (no {STATE_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise CheckpointError(f"{f}: not a trainer state (needs {', '.join(_STATE_KEYS)})")
    return state


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (None when it is): every file it lists, at its size."""
    try:
        state = read_state(path)
    except CheckpointError as e:
        return str(e)
    files = state.get("files")
    if files is None:  # written before checkpoints listed their files
        world = int(state["world_size"])
        need = [ADAPTER_FILE] + [
            f"{k}_r{r}.{ext}"
            for r in range(world)
            for k, ext in (("rng", "safetensors"), ("rng", "json"), ("loader", "json"))
        ]
        if not state.get("sharded_state"):
            need += ["optimizer.safetensors", "optimizer.json"]
        files = {n: None for n in need}
    for name, size in files.items():
        f = Path(path) / name
        if not f.exists():
            return f"{f}: missing"
        if size is not None and f.stat().st_size != size:
            return f"{f}: {f.stat().st_size} bytes, {STATE_FILE} says {size} (truncated or changed)"
    return None


def resolve_checkpoint(run_dir: Path, which: str) -> Path | None:
    """``latest`` (the newest complete checkpoint of the run) or a checkpoint folder path.

    ``latest`` follows ``checkpoints/latest`` and falls back, with a warning,
    to the newest complete ``step_*`` when that one is incomplete (a kill
    while it was written or replaced). None when the run has no checkpoint;
    CheckpointError when it has some and none is complete.
    """
    if which != LATEST:
        p = Path(which)
        problem = checkpoint_problem(p)
        if problem:
            raise CheckpointError(f"--resume {which}: {problem}")
        return p
    ck = run_dir / CHECKPOINTS
    link = ck / LATEST
    candidates = ([link.resolve()] if link.is_symlink() or link.exists() else []) + sorted(
        ck.glob("step_*"), reverse=True
    )
    problems = []
    for p in candidates:
        problem = checkpoint_problem(p)
        if problem is None:
            if problems:
                log.warning("resuming from %s: newer checkpoint(s) are incomplete (%s)", p, "; ".join(problems))
            return p
        if problem not in problems:
            problems.append(problem)
    if problems:
        raise CheckpointError(
            f"{ck}: no complete checkpoint to resume from ({'; '.join(problems)}); delete the damaged folder(s) to start afresh"
        )
    return None


# --- the trainer ------------------------------------------------------------------------------


@dataclass
class StepStats:
    losses: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)
    data_wait: float = 0.0
    replaced: int = 0
    nonfinite: bool = False


class Trainer:
    def __init__(
        self, shards: str, pretrained: str, run_dir: str | os.PathLike, cfg: TrainConfig, *, log_samples: bool = False
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        from syncam_model.components import load_components

        self.cfg, self.shards, self.run_dir = cfg, shards, Path(run_dir)
        dtype, mp = resolve_dtypes(cfg)
        self.acc = Accelerator(
            # Without a GPU, processes started by torchrun / accelerate launch join over gloo on the CPU.
            cpu=not torch.cuda.is_available(),
            mixed_precision=mp,
            log_with="tensorboard" if cfg.log.tensorboard else None,
            project_dir=str(self.run_dir),
        )
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.sharded_state = self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.accum = cfg.grad_accumulation(self.world)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.components = load_components(
            pretrained,
            dtype=dtype,
            device=self.acc.device,
            tiny_config=tiny_config(pretrained, cfg),
            adapter=cfg.model.adapter_spec(),
        )
        self.camera_rule = CameraRule.from_data_config(cfg.data)
        model = self.components.transformer
        model.set_trainable(base=cfg.model.train_base)
        # Master weights of trained parameters stay float32 (AdamW on bf16 weights loses small updates).
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if cfg.model.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            self.params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps
        )
        self.model, self.optimizer = self.acc.prepare(model, opt)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer, lr_lambda(cfg)
        )
        from syncam_model.cache import open_matching

        failure: Exception | None = None
        try:
            self.cache = open_matching(shards, cfg, self.components)
            self.loader: Loader = build_loader(
                shards,
                cfg,
                rank=self.rank,
                world_size=self.world,
                micro_per_step=self.accum,
                total_micro=cfg.steps * self.accum,
                cache=self.cache,
            )
        except Exception as e:  # this rank cannot read or use the data (e.g. --shards not mounted on its node)
            failure = e
        self._agree_to_start(failure)
        self._empty_text: torch.Tensor | None = None
        self.step = 0
        self.loader_state = self.loader.sampler.state_dict()
        self.log_samples = log_samples
        if cfg.log.tensorboard:
            # TensorBoard's hparams take scalars only: lists and None go in as JSON text.
            hp = {
                k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in _flat(cfg.to_dict()).items()
            }
            self.acc.init_trackers("syncam-train", config=hp)

    def _agree_to_start(self, failure: Exception | None) -> None:
        """Every rank learns whether any rank refused its data, before the first collective of training.

        Without this a rank that stops leaves the others blocked in (then failing with) a gloo/NCCL collective;
        with it every rank raises, so each prints one error line and exits.
        """
        if self.world > 1:
            flags = self.acc.gather(torch.tensor([0 if failure is None else 1], device=self.acc.device)).tolist()
            failed = [r for r, f in enumerate(flags) if f]
            if failure is None and failed:
                raise DataError(
                    f"rank {failed[0]} could not use the data (see its message); rank {self.rank} stops too"
                )
        if failure is not None:
            raise failure

    # ---- the objective -------------------------------------------------------------------
    def empty_text(self) -> torch.Tensor:
        if self._empty_text is None:
            if self.cache is not None:
                self._empty_text = self.cache.empty_text().to(self.acc.device)
            else:
                from syncam_model.text import encode_prompts

                self._empty_text = encode_prompts(self.components, [""])[0]
        return self._empty_text

    def latents_and_text(self, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents (B, n, F', C, h, w) and text (B, L, D), from the cache or by encoding."""
        from syncam_model.components import encode_video_dist
        from syncam_model.text import encode_prompts

        dev, c = self.acc.device, self.components
        if "latent_mean" in batch:
            mean, logvar = batch["latent_mean"].to(dev, torch.float32), batch["latent_logvar"].to(dev, torch.float32)
            text = batch["text"].to(dev)
        else:
            video = batch["video"]
            b, n = video.shape[:2]
            with torch.no_grad():
                m, lv = encode_video_dist(c, video_to_float(video.to(dev)).flatten(0, 1))
            mean, logvar = m.float().unflatten(0, (b, n)), lv.float().unflatten(0, (b, n))
            text = encode_prompts(c, batch["captions"])
        # The posterior draw uses the micro-batch generator (on the CPU), so decoded and cached runs draw the same eps.
        eps = torch.randn(mean.shape, generator=gen).to(dev)
        if self.cfg.diffusion.latents == "mean":
            z = mean
        else:
            z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
        return z * c.vae_scaling_factor, text

    def micro_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample v-prediction loss (B,) and timesteps (B,) of one micro-batch."""
        cfg, dev = self.cfg, self.acc.device
        sched = self.components.scheduler
        gen = micro_generator(cfg.seed, batch["micro_id"], self.rank)
        b, n = batch["cameras"].shape[:2]
        # Fixed draw order: timesteps, posterior eps, noise, text dropout, novel view.
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen)
        latents, text = self.latents_and_text(batch, gen)
        # CogVideoX 1.5 patches latent frames in pairs: pad in front with copies of the first latent frame (as
        # CogVideo's fine-tuning does; syncam_model.frames) and keep the padding out of the loss.
        latents, pad = pad_latent_frames(latents, self.components.transformer.config.patch_size_t, dim=2)
        noise = torch.randn(latents.shape, generator=gen).to(dev)
        drop = torch.rand(b, generator=gen) < cfg.diffusion.text_dropout
        novel = (torch.rand(b, generator=gen) < cfg.diffusion.novel_view_prob) & cfg.diffusion.novel_view & (n > 1)
        if drop.any():
            text = torch.where(drop.to(dev)[:, None, None], self.empty_text().to(text.dtype).expand_as(text), text)
        t_views = t.repeat_interleave(n).to(dev)  # one timestep per sample, shared by its views
        flat_lat, flat_noise = latents.flatten(0, 1), noise.flatten(0, 1)
        noisy = sched.add_noise(flat_lat, flat_noise, t_views).unflatten(0, (b, n))
        target = sched.get_velocity(flat_lat, flat_noise, t_views).unflatten(0, (b, n))
        weight = torch.ones(b, n, device=dev)
        cond_mask = None
        if novel.any():
            # Novel-view training: view 0 is the clean input latent (timestep 0 inside the model) and not in the loss.
            cond_mask = torch.zeros(b, n, dtype=torch.bool, device=dev)
            cond_mask[:, 0] = novel.to(dev)
            noisy = torch.where(cond_mask[:, :, None, None, None, None], latents, noisy)
            weight = weight.masked_fill(cond_mask, 0.0)
        dtype = self.components.dtype
        with self.acc.autocast():
            pred = self.model(noisy.to(dtype), text.to(dtype), t.to(dev), batch["cameras"].to(dev, dtype), cond_mask)
        per_view = (pred.float() - target.float())[:, :, pad:].pow(2).mean(dim=(2, 3, 4, 5))
        self.last_view_losses, self.last_view_weights = per_view.detach(), weight
        per_sample = (per_view * weight).sum(1) / weight.sum(1)
        return per_sample, t

    # ---- one optimizer step ---------------------------------------------------------------
    def train_step(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        st = StepStats()
        t0 = time.perf_counter()
        for k in range(self.accum):
            w0 = time.perf_counter()
            batch = next(batches)
            st.data_wait += time.perf_counter() - w0
            st.replaced += int(batch["replaced"])
            sync = k == self.accum - 1
            ctx = self.acc.no_sync(self.model) if (not sync and self.world > 1) else nullcontext()
            with ctx:
                per_sample, t = self.micro_loss(batch)
                loss = per_sample.mean()
                finite = torch.isfinite(loss.detach()).float().reshape(1)
                if self.world > 1:
                    finite = self.acc.reduce(finite, reduction="sum") / self.world
                if finite.item() < 1.0:
                    st.nonfinite = True
                # After a non-finite loss on any rank, every rank still runs backward (DDP expects it) on a zero loss.
                self.acc.backward(torch.nan_to_num(loss, 0.0, 0.0, 0.0) * 0.0 if st.nonfinite else loss / self.accum)
            st.losses += per_sample.detach().float().cpu().tolist()
            st.kinds += [batch["kind"]] * per_sample.numel()
            st.timesteps += t.tolist()
            self.loader_state = batch["state_after"]
            if self.log_samples:
                with open(self.run_dir / f"samples_r{self.rank}.jsonl", "a") as f:
                    f.write(
                        json.dumps(
                            {
                                "step": self.step,
                                "micro_id": batch["micro_id"],
                                "kind": batch["kind"],
                                "sample_ids": batch["sample_ids"],
                            }
                        )
                        + "\n"
                    )
        grad_norm = float("nan")
        if not st.nonfinite:
            gn = self.acc.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm)
            grad_norm = float(gn) if gn is not None else float("nan")
            if math.isfinite(grad_norm):
                self.optimizer.step()
            else:
                st.nonfinite = True
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr_sched.get_last_lr()[0]
        with warnings.catch_warnings():
            # A skipped (non-finite) step still advances the schedule, so it stays aligned with the step count.
            warnings.filterwarnings(
                "ignore", message="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`"
            )
            self.lr_sched.step()
        self.step += 1
        return self._record(st, grad_norm, lr, time.perf_counter() - t0)

    def _record(self, st: StepStats, grad_norm: float, lr: float, dt: float) -> dict[str, Any]:
        """Losses gathered over ranks; per kind and per timestep bucket."""
        losses = torch.tensor(st.losses, device=self.acc.device)
        ts = torch.tensor(st.timesteps, device=self.acc.device)
        if self.world > 1:
            losses, ts = self.acc.gather(losses), self.acc.gather(ts)
        losses, ts = losses.cpu(), ts.cpu()
        kinds = st.kinds * self.world  # the kind of micro-batch m is the same on every rank
        rec: dict[str, Any] = {"step": self.step, "loss": float(losses.mean()), "lr": lr, "grad_norm": grad_norm}
        for kind in sorted(set(kinds)):
            sel = torch.tensor([k == kind for k in kinds])
            rec[f"loss/{kind}"] = float(losses[sel].mean())
        nb, T = self.cfg.diffusion.timestep_buckets, self.components.scheduler.config.num_train_timesteps
        for i in range(nb):
            lo, hi = i * T // nb, (i + 1) * T // nb
            sel = (ts >= lo) & (ts < hi)
            if sel.any():
                rec[f"loss/t{lo:03d}-{hi - 1:03d}"] = float(losses[sel].mean())
        rec.update(
            samples_per_s=len(st.losses) * self.world / dt,
            step_time_s=dt,
            data_wait_s=st.data_wait,
            peak_memory_mb=peak_memory_mb(self.acc.device),
            replaced_views=st.replaced,
            skipped_window=self.loader_state["skipped"],
        )
        if st.nonfinite:
            rec["skipped_nonfinite"] = True
            log.warning("step %d: non-finite loss or gradient; the update was skipped", self.step)
        return rec

    # ---- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        from syncam_model.adapter_io import save_adapter

        ck = self.run_dir / CHECKPOINTS
        name = f"step_{self.step:06d}"
        tmp, final = ck / f".tmp-{name}", ck / name
        if self.acc.is_main_process:
            _remove_leftovers(ck)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.model)
        d = self.cfg.data
        # What syncam-generate reads back: the base, the pose scale, the training shape.
        meta = {
            "base_id": self.components.base_id,
            "step": self.step,
            **self.camera_rule.to_meta(),
            "resolution": [d.height, d.width],
            "frames": d.frames,
            "train_config": self.cfg.to_dict(),
        }
        if self.sharded_state:
            self.acc.save_state(str(tmp / "accelerate_state"))
        if self.acc.is_main_process:
            save_adapter(model, tmp / ADAPTER_FILE, meta)
            if self.cfg.model.train_base:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in model.base.state_dict().items()}, str(tmp / BASE_FILE)
                )
            if not self.sharded_state:
                tensors, opt_meta = optimizer_to_safetensors(self.optimizer.state_dict())
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                _write_json(tmp / "optimizer.json", opt_meta)
            state = {
                "step": self.step,
                "world_size": self.world,
                "accumulation": self.accum,
                "config": self.cfg.to_dict(),
                "base_id": self.components.base_id,
                "lr_scheduler": self.lr_sched.state_dict(),
                "sharded_state": self.sharded_state,
                "torch": torch.__version__,
            }
        rng_t, rng_m = rng_state()
        save_file(rng_t, str(tmp / f"rng_r{self.rank}.safetensors"))
        _write_json(tmp / f"rng_r{self.rank}.json", rng_m)
        _write_json(tmp / f"loader_r{self.rank}.json", self.loader_state)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            # trainer_state.json last, listing every file of every rank with its size: what "complete" means.
            state["files"] = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            _write_json(tmp / STATE_FILE, state)
            publish_checkpoint(tmp, final)
            _point_latest(ck, name)
            self._prune(ck)
            log.info("checkpoint %s", final)
        self.acc.wait_for_everyone()
        return final

    def _prune(self, ck: Path) -> None:
        """Delete checkpoints beyond ``checkpoint.keep``: each renamed out of ``step_*`` first, so a kill
        mid-deletion never leaves a half-deleted folder under a name ``--resume latest`` considers."""
        done = sorted(p for p in ck.glob("step_*") if p.is_dir())
        for p in done[: -self.cfg.checkpoint.keep]:
            fsio.remove_dir(p)

    def load_checkpoint(self, path: Path) -> None:
        from syncam_model.adapter_io import check_base, load_adapter

        state = read_state(path)
        check_base(state["base_id"], self.components.base_id, source=str(path))
        diff = config_mismatch(state["config"], self.cfg.to_dict())
        if diff:
            raise CheckpointError(f"{path}: refusing to resume, the config differs in: " + "; ".join(diff))
        if state["world_size"] != self.world:
            raise CheckpointError(
                f"{path}: saved by {state['world_size']} process(es), this run has {self.world}; the data shards per rank would change, "
                "so the run could not continue exactly (start a new run from the adapter with --init-adapter instead)"
            )
        model = self.acc.unwrap_model(self.model)
        load_adapter(model, path / ADAPTER_FILE, self.components.base_id, camera_rule=self.camera_rule)
        if self.cfg.model.train_base:
            model.base.load_state_dict(_load_tensors(path / BASE_FILE))
        if state.get("sharded_state"):
            self.acc.load_state(str(path / "accelerate_state"))
        else:
            opt_meta = _read_json(path / "optimizer.json")
            self.optimizer.load_state_dict(
                optimizer_from_safetensors(_load_tensors(path / "optimizer.safetensors"), opt_meta)
            )
        self.lr_sched.load_state_dict(state["lr_scheduler"])
        set_rng_state(
            _load_tensors(path / f"rng_r{self.rank}.safetensors"), _read_json(path / f"rng_r{self.rank}.json")
        )
        self.loader_state = _read_json(path / f"loader_r{self.rank}.json")
        self.loader.sampler.load_state_dict(self.loader_state)
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    # ---- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Generate the fixed prompts from the fixed cameras; prompts are spread over the ranks."""
        from syncam_data import video as vio
        from syncam_model.generate import GenerationConfig, generate
        from syncam_model.rig import resolve_rig

        v = self.cfg.validation
        d = self.cfg.data
        rig = resolve_rig(v.cameras, d.width, d.height)
        cams = rig.relative(self.camera_rule)
        out = self.run_dir / "validation" / f"step_{self.step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        model = self.acc.unwrap_model(self.model)
        model.eval()
        for i in range(self.rank, len(v.prompts), self.world):
            with torch.no_grad():
                gen = GenerationConfig(
                    prompt=v.prompts[i],
                    num_frames=v.frames or round_up_decodable(d.frames),
                    height=d.height,
                    width=d.width,
                    steps=v.steps,
                    guidance=v.guidance,
                    use_dynamic_cfg=v.dynamic_cfg,
                    seed=self.cfg.seed + i,
                )
                vids = generate(self.components, gen, cams, progress=False)
            grid = (
                ((vids.permute(1, 3, 0, 4, 2).flatten(2, 3) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
            )  # F, H, n*W, 3
            vio.encode(grid, out / f"prompt{i:02d}.mp4", fps=8)
        model.train()
        self.acc.wait_for_everyone()

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``cfg.steps`` (or ``stop_after`` steps of this run, to simulate an interruption)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        log_path = self.run_dir / "log.jsonl"
        if self.acc.is_main_process:
            _write_json(self.run_dir / "config.json", cfg.to_dict())
            with open(log_path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "event": "start",
                            "step": self.step,
                            "world_size": self.world,
                            "accumulation": self.accum,
                            "cache": str(self.cache.path) if self.cache else None,
                            "time": time.time(),
                        }
                    )
                    + "\n"
                )
        self.model.train()
        batches = iter(self.loader.dataloader())
        records = []
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.acc.is_main_process)
        while self.step < end:
            rec = self.train_step(batches)
            rec["window"] = list(self.loader.sampler.schedule.window(self.step - 1).__dict__.values())
            records.append(rec)
            if self.acc.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                if self.step % cfg.log.every == 0 and cfg.log.tensorboard:
                    self.acc.log(
                        {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, step=self.step
                    )
            if self.step % cfg.checkpoint.every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if cfg.validation.every and self.step % cfg.validation.every == 0:
                self.validate()
        bar.close()
        if cfg.log.tensorboard:
            self.acc.end_training()
        return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors' own error type, or OSError: the file is damaged or missing
        raise CheckpointError(f"{path}: cannot read ({e})") from None


def publish_checkpoint(tmp: Path, final: Path) -> None:
    """Publish a finished temporary checkpoint folder as ``final``: its files fsynced, then renamed in.

    A checkpoint of the same step that exists (a resumed run saving it again)
    is first renamed aside and deleted only after the new one is in place, so
    no published checkpoint is ever half-deleted.
    """
    fsio.publish_dir(tmp, final, replace=True)


def _remove_leftovers(ck: Path) -> None:
    """Temporary, replaced or pruned checkpoint folders a killed run left (never a published one)."""
    for p in ck.glob(".*step_*") if ck.exists() else []:
        # .tmp-step_N (being written), .step_N.old* (being replaced: fsio.publish_dir), .step_N.del* (being pruned: fsio.remove_dir)
        if (
            p.name.startswith(".tmp-") or (p.name.startswith(".step_") and (".old" in p.name or ".del" in p.name))
        ) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _point_latest(ck: Path, name: str) -> None:
    """``checkpoints/latest`` -> ``step_<6-digit step>`` (a relative symlink, swapped atomically)."""
    fsio.point_symlink(ck / LATEST, name)


def train(
    shards: str,
    pretrained: str,
    run_dir: str | os.PathLike,
    cfg: TrainConfig,
    *,
    resume: str | None = None,
    init_adapter: str | None = None,
    log_samples: bool = False,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Build the trainer, restore a checkpoint if asked, and train. Returns this process's step records."""
    # Which checkpoint, before anything is built: a damaged one is reported at once.
    ck = resolve_checkpoint(Path(run_dir), resume) if resume else None
    trainer = Trainer(shards, pretrained, run_dir, cfg, log_samples=log_samples)
    if resume:
        if ck is None:
            log.info("no checkpoint in %s yet; starting from step 0", Path(run_dir) / CHECKPOINTS)
        else:
            trainer.load_checkpoint(ck)
    elif init_adapter:
        from syncam_model.adapter_io import load_adapter

        load_adapter(
            trainer.acc.unwrap_model(trainer.model),
            init_adapter,
            trainer.components.base_id,
            camera_rule=trainer.camera_rule,
        )
    return trainer.run(stop_after=stop_after)

"""`syncam-train`: Train SynCamMaster's multi-view modules on CogVideoX from a shard dataset.

    syncam-train --shards DIR --pretrained PATH|tiny --out RUN_DIR [--config paper|tiny|FILE] [--steps N] [--resume latest]
    syncam-train cache --shards DIR --pretrained PATH|tiny [--config ...]
    accelerate launch --num_processes 8 -m syncam_model.cli_train --shards ... --out ...   # several GPUs / nodes

See docs/train.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import typer

from syncam_data.cli.options import SafeGroup, check_out_path

app = typer.Typer(
    cls=SafeGroup,
    name="syncam-train",
    help="Train SynCamMaster's multi-view modules on CogVideoX from a shard dataset (run under `accelerate launch` or `torchrun` for several processes). "
    "Training needs --shards, --pretrained and --out. `syncam-train cache ...` precomputes VAE latents and T5 embeddings.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
)
log = logging.getLogger("syncam_model.cli_train")

SET_HELP = (
    "Override one config key, e.g. --set optim.lr=5e-5 --set data.num_views=[2,4] (value parsed as YAML; repeatable)."
)
CONFIG_HELP = (
    "Training config: a YAML file, or a bundled name (paper = the paper's recipe, tiny = CPU tests). Default: paper."
)


def _setup_logging(verbose: bool) -> None:
    main = int(os.environ.get("RANK", "0")) == 0
    level = logging.DEBUG if verbose else (logging.INFO if main else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _overrides(sets: list[str] | None, **named: Any) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    out.update({k: v for k, v in named.items() if v is not None})
    return out


def check_shards(path: Path) -> None:
    """The shard dataset exists and its dataset.json is usable: checked before any model is built."""
    from syncam_data.shards.reader import ShardDatasetError
    from syncam_data.shards.schema import DATASET_JSON, load_manifest

    if not path.is_dir():
        raise ShardDatasetError(f"--shards {path}: no such folder")
    try:
        manifest = load_manifest(path)
    except ValueError as e:
        raise ShardDatasetError(f"--shards: {e}") from None
    if manifest is None:
        raise ShardDatasetError(
            f"--shards {path}: no {DATASET_JSON} (not a shard dataset; build one with syncam-data build-shards)"
        )
    if not manifest.get("shards"):
        raise ShardDatasetError(f"--shards {path}: {DATASET_JSON} lists no shards (an empty dataset)")


def _fail(e: Exception) -> None:
    """One error line (naming the rank when several run) and exit 2; leave the process group so no rank hangs or dumps."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""
    typer.echo(f"syncam-train: error: {rank}{e}", err=True)
    import sys

    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    raise typer.Exit(2)


@app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context,
    shards: Path | None = typer.Option(
        None, "--shards", help="Shard dataset folder (with dataset.json and index.parquet). (required)"
    ),
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="Local diffusers CogVideoX folder, or 'tiny' for a tiny random model. (required)"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run folder: log.jsonl, config.json, checkpoints/, validation/. (required)"
    ),
    config: str | None = typer.Option(None, "--config", help=CONFIG_HELP),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Total optimizer steps (overrides the config's `steps`)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of data order, noise and dropout (overrides `seed`)."),
    resume: str | None = typer.Option(
        None,
        "--resume",
        help="'latest' continues the newest checkpoint in RUN_DIR/checkpoints exactly (starts fresh if none), or a checkpoint folder.",
    ),
    init_adapter: Path | None = typer.Option(
        None, "--init-adapter", help="Start a new run from these adapter weights (adapter.safetensors)."
    ),
    novel_view: bool | None = typer.Option(
        None,
        "--novel-view/--no-novel-view",
        help="Novel-view training: view 0 is the clean input latent with probability diffusion.novel_view_prob.",
    ),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    log_samples: bool = typer.Option(
        False, "--log-samples", help="Also write RUN_DIR/samples_r<rank>.jsonl: the sample ids of every micro-batch."
    ),
    stop_after: int | None = typer.Option(
        None,
        "--stop-after",
        min=1,
        help="Stop after this many steps of this invocation (a time-boxed job); continue later with --resume latest.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Train the multi-view modules (the default command)."""
    if ctx.invoked_subcommand is not None:
        return
    _setup_logging(verbose)
    missing = [name for name, v in (("--shards", shards), ("--pretrained", pretrained), ("--out", out)) if v is None]
    if missing:
        typer.echo(f"syncam-train: missing {', '.join(missing)} (see syncam-train --help)", err=True)
        raise typer.Exit(2)
    from syncam_data.shards.reader import ShardDatasetError
    from syncam_model.adapter_io import AdapterFileError
    from syncam_model.cache import CacheError
    from syncam_model.config import ConfigError, load_config
    from syncam_model.data import DataError
    from syncam_model.train import CheckpointError, train

    check_out_path(out)
    try:
        cfg = load_config(config, _overrides(sets, steps=steps, seed=seed, **{"diffusion.novel_view": novel_view}))
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # With several processes a rank that stopped here would leave the others waiting for it in the process
            # group's start-up; the trainer opens the shards on every rank and they stop together (one line each).
            check_shards(shards)
        train(
            str(shards),
            str(pretrained),
            out,
            cfg,
            resume=resume,
            init_adapter=str(init_adapter) if init_adapter else None,
            log_samples=log_samples,
            stop_after=stop_after,
        )
    except (
        ConfigError,
        DataError,
        CheckpointError,
        AdapterFileError,
        CacheError,
        ShardDatasetError,
        FileNotFoundError,
    ) as e:
        _fail(e)


@app.command("cache")
def cache_command(
    shards: Path = typer.Option(..., "--shards", help="Shard dataset folder to encode."),
    pretrained: str = typer.Option(..., "--pretrained", help="Local diffusers CogVideoX folder, or 'tiny'."),
    config: str | None = typer.Option(
        None,
        "--config",
        help=CONFIG_HELP + " Its data.height/width/frames/frame_stride and cache.* decide the cache key.",
    ),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Cache root (default: <shards>/latent_cache); same as --set cache.dir=..."
    ),
    view_batch: int = typer.Option(
        4, "--view-batch", min=1, help="View clips per VAE call (lower it if the VAE runs out of memory)."
    ),
    groups_per_part: int = typer.Option(
        64, "--groups-per-part", min=1, help="Groups per safetensors part file (the unit of resume)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Encode every view clip with the VAE and every caption with T5 once; training then reads the cache."""
    _setup_logging(verbose)
    import torch
    from accelerate import PartialState

    from syncam_data.shards.reader import ShardDatasetError
    from syncam_model.cache import build_cache
    from syncam_model.components import load_components
    from syncam_model.config import ConfigError, load_config
    from syncam_model.data import DataError
    from syncam_model.train import resolve_dtypes, tiny_config

    try:
        cfg = load_config(config, _overrides(sets, **{"cache.dir": str(cache_dir) if cache_dir else None}))
        check_shards(shards)
        state = PartialState(cpu=not torch.cuda.is_available())
        dtype, _ = resolve_dtypes(cfg)
        torch.manual_seed(cfg.seed)
        components = load_components(
            pretrained, dtype=dtype, device=state.device, tiny_config=tiny_config(pretrained, cfg)
        )
        path = build_cache(
            str(shards),
            cfg,
            components,
            rank=state.process_index,
            world_size=state.num_processes,
            view_batch=view_batch,
            groups_per_part=groups_per_part,
            barrier=state.wait_for_everyone,
            progress=state.is_main_process,
        )
    except (ConfigError, DataError, ShardDatasetError, FileNotFoundError) as e:
        _fail(e)
    if state.is_main_process:
        typer.echo(str(path))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

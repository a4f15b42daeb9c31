"""Run independent per-item tasks locally (processes) or on Ray, with progress and per-item errors.

Every data stage (render, sample-frames, filter-videos, build-shards, eval)
maps a picklable top-level function over items. ``run_tasks`` yields
``TaskResult``s as they finish: a failing item is reported with its error and
never stops the others.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tqdm import tqdm

log = logging.getLogger(__name__)

Engine = Literal["local", "ray"]


class EngineError(RuntimeError):
    """The engine cannot run at all (Ray missing, no cluster at --ray-address); the message is one line for the user.

    The CLI prints it as ``error: ...`` and exits 1 (``syncam_data.cli.app``), whichever command raised it.
    """


@dataclass
class TaskResult:
    item: Any
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _call(fn: Callable[[Any], Any], item: Any) -> TaskResult:
    t0 = time.perf_counter()
    try:
        return TaskResult(item, fn(item), seconds=time.perf_counter() - t0)
    except Exception as e:  # per-item failure: recorded, the job goes on
        return TaskResult(
            item, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(), seconds=time.perf_counter() - t0
        )


def run_tasks(
    fn: Callable[[Any], Any],
    items: Sequence[Any] | Iterable[Any],
    engine: Engine = "local",
    workers: int = 1,
    ray_address: str | None = None,
    desc: str = "tasks",
    unit: str = "item",
    ray_resources: dict[str, float] | None = None,
    mp_context: str = "spawn",
    progress: bool = True,
) -> Iterator[TaskResult]:
    """Map ``fn`` over ``items``; yield results in completion order.

    ``engine="local"``: ``workers`` processes (``workers <= 1`` runs in this
    process, which keeps tracebacks and debuggers simple). ``engine="ray"``:
    one Ray task per item on the cluster at ``ray_address`` (or a local Ray
    started on demand), ``ray_resources`` per task (e.g. ``{"num_gpus": 1}``).
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress or not items, dynamic_ncols=True)
    try:
        if engine == "ray":
            yield from _run_ray(fn, items, ray_address, ray_resources or {}, bar)
        elif engine == "local":
            if workers <= 1:
                for it in items:
                    r = _call(fn, it)
                    bar.update(1)
                    yield r
            else:
                ctx = mp.get_context(mp_context)
                with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    futs = {pool.submit(_call, fn, it): it for it in items}
                    try:
                        for fut in cf.as_completed(futs):
                            try:
                                r = fut.result()
                            except Exception as e:  # the worker process itself died
                                r = TaskResult(futs[fut], error=f"worker crashed: {type(e).__name__}: {e}")
                            bar.update(1)
                            yield r
                    except BaseException:
                        # Ctrl-C, or the caller stopped iterating: drop the queued items instead of
                        # running them all while the pool shuts down.
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
        else:
            raise ValueError(f"unknown engine {engine!r}: use 'local' or 'ray'")
    finally:
        bar.close()


def ray_init(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to ``address`` (or start a local Ray); quiet, and idempotent.

    Raises ``EngineError`` when Ray is not installed or nothing answers at ``address``
    (``auto`` with no cluster started on this machine, a wrong host or port).
    """
    try:
        import ray
    except ImportError:
        raise EngineError(
            "--engine ray needs Ray: pip install -e '.[ray]' in the SynCam checkout (scripts/setup.sh installs it)"
        ) from None
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        if address:
            _check_reachable(address)
            kw["address"] = address
        elif num_cpus:
            kw["num_cpus"] = num_cpus
        try:
            ray.init(**kw)
        except Exception as e:  # ConnectionError for "no cluster there"; ValueError and others for a malformed address
            if address:
                raise EngineError(
                    f"--ray-address {address}: no Ray cluster could be reached ({type(e).__name__}). Start one first "
                    "(`ray start --head` on this machine, or `ray up pipelines/ray_cluster.yaml`), "
                    "or leave out --ray-address to start a local Ray"
                ) from None
            raise EngineError(f"--engine ray: could not start a local Ray ({type(e).__name__}: {e})") from None
    return ray


_HOST_PORT = re.compile(r"^(?:ray://)?\[?([A-Za-z0-9_.:-]+?)\]?:(\d{1,5})$")


def _check_reachable(address: str) -> None:
    """Fail fast when the cluster address (or RAY_ADDRESS, which Ray lets override it) is a host:port nobody listens on.

    Ray itself retries a closed or unroutable address for a minute or more before giving up; ``auto`` and
    malformed addresses are left to Ray, which answers those at once.
    """
    effective = os.environ.get("RAY_ADDRESS") or address
    m = _HOST_PORT.match(effective.strip())
    if not m:
        return
    where = (
        f"RAY_ADDRESS={effective} (which overrides --ray-address)"
        if effective != address
        else f"--ray-address {address}"
    )
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as e:
        raise EngineError(
            f"{where}: no Ray cluster answers there ({e.strerror or type(e).__name__}). Start one first "
            "(`ray start --head` on the head node, or `ray up pipelines/ray_cluster.yaml`), or check the address"
        ) from None


def _run_ray(fn, items, address, resources, bar) -> Iterator[TaskResult]:
    ray = ray_init(address)
    remote = ray.remote(**resources)(_call) if resources else ray.remote(_call)
    pending = {remote.remote(fn, it): it for it in items}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            it = pending.pop(ref)
            try:
                r = ray.get(ref)
            except Exception as e:  # task or node failure
                r = TaskResult(it, error=f"ray task failed: {type(e).__name__}: {e}")
            bar.update(1)
            yield r

"""Render jobs: many scene specs through one backend instance per worker, resumable and crash-safe.

For each spec the job

1. skips it when ``<out>/<scene_id>`` is already a complete scene folder;
2. otherwise renders into ``<out>/.tmp-<scene_id>-<pid>-<random>`` (removing
   temporary folders that a killed run left for exactly this scene id), calls
   ``SceneOutput.finish`` with ``scene.json``, fsyncs every file and folder
   in it and renames the folder to ``<out>/<scene_id>`` -- the commit point
   of a scene (a stale, incomplete target is removed first);
3. retries a failing scene ``retries`` times (re-opening the backend, since
   an engine that failed once may be in a bad state), then records it as
   failed with its error and traceback and goes on.

``<out>/render_report.json`` lists the scenes done, skipped and failed; it is
rewritten after every scene so a killed job still leaves an accurate report.

Workers: ``engine="local"`` with ``workers=K`` starts K processes, each
owning ONE backend instance (``WorkerSlot(i, K)``, so the Unreal backend can
use the i-th engine port) for many scenes; ``workers=1`` renders in this
process. ``engine="ray"`` starts one Ray actor per slot on the cluster at
``ray_address`` (or a local Ray); the output folder must then be storage
that every node sees.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import multiprocessing.util
import os
import platform
import queue as _queue
import re
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from syncam_data import fsio
from syncam_data.fsio import utc_now
from syncam_data.render.base import RenderBackend, WorkerSlot, backend_config, get_backend
from syncam_data.render.output import SceneOutput, is_complete_scene
from syncam_data.scenes import SceneSpec, SpecError

log = logging.getLogger(__name__)

REPORT_JSON = "render_report.json"
SPECS_JSONL = "specs.jsonl"
TMP_PREFIX = ".tmp-"

ProgressFn = Callable[[str, int], None]


@dataclass
class RenderJobConfig:
    """How to run a render job (see the module docstring)."""

    out: Path
    backend: str = "blender"
    # The backend's options (render/blender_config.py BlenderConfig, render/unrealcv_config.py UnrealCVConfig): validated
    # here, before any work starts (ConfigError names the option), and kept complete, defaults included.
    backend_config: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    engine: str = "local"
    ray_address: str | None = None
    retries: int = 1
    progress: bool = True
    depth_dtype: str = "float16"
    crf: int = 18

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        self.backend_config = backend_config(self.backend, **self.backend_config).record()


@dataclass
class SceneOutcome:
    scene_id: str
    status: str  # done | skipped | failed
    attempts: int = 0
    seconds: float = 0.0
    frames: int = 0
    error: str | None = None
    traceback: str | None = None
    worker: int | None = None


@dataclass
class RenderReport:
    """What a job did; written to ``<out>/render_report.json``."""

    out: str
    backend: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    catalog_problems: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: str | None = None
    seconds: float = 0.0
    frames_rendered: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, o: SceneOutcome) -> None:
        if o.status == "done":
            self.done.append(o.scene_id)
            self.frames_rendered += o.frames
        elif o.status == "skipped":
            self.skipped.append(o.scene_id)
        else:
            self.failed.append(
                {"scene_id": o.scene_id, "error": o.error, "attempts": o.attempts, "traceback": o.traceback}
            )

    def write(self) -> None:
        fsio.write_json(Path(self.out) / REPORT_JSON, asdict(self), allow_nan=True)


# --- one worker: one backend, many scenes ---------------------------------------------------------


class SceneRenderer:
    """Owns one backend instance (one worker slot) and renders scenes into ``out`` atomically."""

    def __init__(
        self,
        backend: str,
        options: dict[str, Any],
        slot: WorkerSlot,
        out: Path,
        retries: int,
        depth_dtype: str = "float16",
        crf: int = 18,
    ) -> None:
        self.backend_name, self.options, self.slot = backend, dict(options), slot
        self.out, self.retries = Path(out), retries
        self.depth_dtype, self.crf = depth_dtype, crf
        self.backend: RenderBackend | None = None

    def _backend(self) -> RenderBackend:
        if self.backend is None:
            self.backend = get_backend(self.backend_name, slot=self.slot, **self.options)
            self.backend.open()
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception as e:  # closing a broken engine must not hide the scene's own error
                log.warning("worker %d: closing the %s backend failed: %s", self.slot.index, self.backend_name, e)
            self.backend = None

    def render(self, spec: SceneSpec, on_frame: ProgressFn | None = None) -> SceneOutcome:
        final = self.out / spec.scene_id
        if is_complete_scene(final):
            return SceneOutcome(spec.scene_id, "skipped", worker=self.slot.index)
        t0 = time.perf_counter()
        error = tb = None
        for attempt in range(1, self.retries + 2):
            remove_stale_temps(self.out, spec.scene_id)
            tmp = self.out / temp_folder_name(spec.scene_id)
            out = SceneOutput(tmp, spec.fps, depth_dtype=self.depth_dtype, crf=self.crf)
            try:
                backend = self._backend()
                result = backend.render_scene(spec, out, (lambda k: on_frame(spec.scene_id, k)) if on_frame else None)
                t1 = time.perf_counter()
                out.finish(scene_json(spec, result, backend.config.record(), self.slot, attempt))
                publish(tmp, final)
                log.info(
                    "%s: rendered in %.1fs (attempt %d, finish %.1fs)",
                    spec.scene_id,
                    time.perf_counter() - t0,
                    attempt,
                    time.perf_counter() - t1,
                )
                return SceneOutcome(
                    spec.scene_id, "done", attempt, time.perf_counter() - t0, spec.num_frames, worker=self.slot.index
                )
            except Exception as e:  # per-scene failure: retried, then recorded; the job goes on
                error, tb = f"{type(e).__name__}: {e}", traceback.format_exc()
                log.warning("%s: attempt %d/%d failed: %s", spec.scene_id, attempt, self.retries + 1, error)
                out.abort()
                shutil.rmtree(tmp, ignore_errors=True)
                self.close()  # the next attempt starts from a fresh engine
        return SceneOutcome(
            spec.scene_id,
            "failed",
            self.retries + 1,
            time.perf_counter() - t0,
            error=error,
            traceback=tb,
            worker=self.slot.index,
        )


def scene_json(
    spec: SceneSpec, result: Any, backend_config: dict[str, Any], slot: WorkerSlot, attempt: int
) -> dict[str, Any]:
    """scene.json (Contract 2): the spec plus everything about how it was rendered (every backend option, defaults included)."""
    import av
    import numpy as np

    from syncam_data import __version__ as syncam_version

    return {
        "scene_id": spec.scene_id,
        "caption": spec.caption,
        "spec": spec.model_dump(mode="json"),
        "backend": result.backend,
        "backend_options": backend_config,
        "versions": {
            "syncam": syncam_version,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "av": av.__version__,
            **result.versions,
        },
        "timings": result.timings,
        "info": result.info,
        "render": {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": slot.index,
            "workers": slot.count,
            "attempt": attempt,
            "finished": utc_now(),
        },
    }


def publish(tmp: Path, final: Path) -> None:
    """Publish a finished temporary scene folder under its final name (replacing an incomplete leftover).

    The scene's files and folders are fsynced before the rename and the
    parent after it (``fsio.publish_dir``), so a power loss never leaves a
    renamed scene folder whose files are empty.
    """
    if final.exists():
        if is_complete_scene(final):
            log.info("%s: completed meanwhile by another worker; discarding this copy", final.name)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        log.warning("%s: removing an incomplete scene folder left by an earlier run", final)
        shutil.rmtree(final)
    fsio.publish_dir(tmp, final)


# .tmp-<scene_id>-<pid>-<random>: read from the end, because scene ids may themselves contain '-'.
_TMP_RE = re.compile(rf"^{re.escape(TMP_PREFIX)}(?P<scene>.+)-(?P<pid>\d+)-(?P<rand>[0-9A-Za-z]+)$")


def temp_folder_name(scene_id: str) -> str:
    return f"{TMP_PREFIX}{scene_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_temps(out: Path, scene_id: str) -> None:
    """Delete the temporary folders a killed run left for exactly this scene (runs on one out dir do not overlap).

    ``.tmp-scene_1-*`` would also match the folders of a scene ``scene_1-2``,
    which another worker may be rendering right now: the id is compared whole.
    """
    for p in out.glob(f"{TMP_PREFIX}*"):
        m = _TMP_RE.match(p.name)
        if m and m.group("scene") == scene_id and p.is_dir():
            log.info("removing unfinished temporary folder %s", p)
            shutil.rmtree(p, ignore_errors=True)


# --- worker processes --------------------------------------------------------------------------------

_WORKER: SceneRenderer | None = None
_PROGRESS: Any = None


def _init_process_worker(
    slots: Any,
    progress: Any,
    backend: str,
    options: dict[str, Any],
    out: str,
    retries: int,
    count: int,
    depth_dtype: str,
    crf: int,
) -> None:
    global _WORKER, _PROGRESS
    from syncam_data.cli.app import setup_logging

    setup_logging(0, quiet=True)
    slot = WorkerSlot(slots.get(), count)
    _WORKER = SceneRenderer(backend, options, slot, Path(out), retries, depth_dtype, crf)
    _PROGRESS = progress
    # Release the engine (close Blender, stop a launched Unreal) when the pool shuts this worker down.
    multiprocessing.util.Finalize(_WORKER, _WORKER.close, exitpriority=10)


def _process_render(spec_json: str) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialized"
    spec = SceneSpec.from_json(spec_json)
    _PROGRESS.put(("start", spec.scene_id, -1))
    outcome = _WORKER.render(spec, lambda sid, k: _PROGRESS.put(("frame", sid, k)))
    return asdict(outcome)


class _Progress:
    """Two bars: scenes, and frames of the scenes being rendered (retries do not count twice)."""

    def __init__(self, specs: Sequence[SceneSpec], enabled: bool) -> None:
        self.frames_of = {s.scene_id: s.num_frames for s in specs}
        self.scenes = tqdm(
            total=len(specs), desc="scenes", unit="scene", disable=not enabled, position=0, dynamic_ncols=True
        )
        self.frames = tqdm(
            total=sum(self.frames_of.values()),
            desc="frames",
            unit="frame",
            disable=not enabled,
            position=1,
            dynamic_ncols=True,
        )
        self.seen: dict[str, int] = {}
        self.failed = 0

    def frame(self, scene_id: str, k: int) -> None:
        n = max(self.seen.get(scene_id, 0), k + 1)
        self.frames.update(n - self.seen.get(scene_id, 0))
        self.seen[scene_id] = n

    def scene(self, o: SceneOutcome) -> None:
        # Skipped and failed scenes leave the frames total; done scenes count fully.
        if o.status == "done":
            self.frame(o.scene_id, self.frames_of.get(o.scene_id, 0) - 1)
        else:
            self.frames.total -= self.frames_of.get(o.scene_id, 0) - self.seen.get(o.scene_id, 0)
            self.frames.refresh()
        if o.status == "failed":
            self.failed += 1
            self.scenes.set_postfix(failed=self.failed, refresh=False)
        self.scenes.update(1)

    def close(self) -> None:
        self.frames.close()
        self.scenes.close()


def _run_in_process(
    specs: Sequence[SceneSpec], cfg: RenderJobConfig, emit: Callable[[SceneOutcome], None], bar: _Progress
) -> None:
    worker = SceneRenderer(
        cfg.backend, cfg.backend_config, WorkerSlot(0, 1), cfg.out, cfg.retries, cfg.depth_dtype, cfg.crf
    )
    try:
        for spec in specs:
            emit(worker.render(spec, bar.frame))
    finally:
        worker.close()


def _run_processes(
    specs: Sequence[SceneSpec], cfg: RenderJobConfig, emit: Callable[[SceneOutcome], None], bar: _Progress
) -> None:
    """K processes, one backend each. A crashed process breaks the pool: scenes it was rendering are
    retried in a fresh pool (counted as attempts); scenes that never started are simply resubmitted."""
    ctx = mp.get_context("spawn")
    pending = {s.scene_id: s for s in specs}
    crashes: dict[str, int] = {}
    while pending:
        slots, progress = ctx.Queue(), ctx.Queue()
        for i in range(cfg.workers):
            slots.put(i)
        started: set[str] = set()
        args = (
            slots,
            progress,
            cfg.backend,
            cfg.backend_config,
            str(cfg.out),
            cfg.retries,
            cfg.workers,
            cfg.depth_dtype,
            cfg.crf,
        )
        with cf.ProcessPoolExecutor(
            max_workers=min(cfg.workers, len(pending)), mp_context=ctx, initializer=_init_process_worker, initargs=args
        ) as pool:
            futs = {pool.submit(_process_render, s.to_json()): sid for sid, s in pending.items()}
            waiting = set(futs)
            while waiting:
                done, waiting = cf.wait(waiting, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(progress, bar, started)
                for fut in done:
                    sid = futs[fut]
                    try:
                        o = SceneOutcome(**fut.result())
                    except cf.process.BrokenProcessPool as e:
                        if sid not in started:
                            continue  # never began: resubmitted in the next pool
                        crashes[sid] = crashes.get(sid, 0) + 1
                        if crashes[sid] <= cfg.retries:
                            log.warning("%s: worker process crashed (%s); retrying", sid, e)
                            continue
                        o = SceneOutcome(sid, "failed", crashes[sid], error=f"worker process crashed: {e}")
                    except Exception as e:  # an unexpected error outside the renderer's own handling
                        o = SceneOutcome(
                            sid, "failed", 1, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()
                        )
                    pending.pop(sid, None)
                    emit(o)
            _drain(progress, bar, started)


def _drain(progress: Any, bar: _Progress, started: set[str]) -> None:
    while True:
        try:
            kind, sid, k = progress.get_nowait()
        except _queue.Empty:
            return
        except (EOFError, OSError):
            return
        if kind == "start":
            started.add(sid)
        else:
            bar.frame(sid, k)


# --- Ray ------------------------------------------------------------------------------------------------


class _RayRenderer:
    """The Ray actor body: one backend instance per actor (= per worker slot)."""

    def __init__(
        self,
        backend: str,
        options: dict[str, Any],
        index: int,
        count: int,
        out: str,
        retries: int,
        depth_dtype: str,
        crf: int,
    ) -> None:
        self.worker = SceneRenderer(backend, options, WorkerSlot(index, count), Path(out), retries, depth_dtype, crf)

    def render(self, spec_json: str) -> dict[str, Any]:
        return asdict(self.worker.render(SceneSpec.from_json(spec_json)))

    def close(self) -> None:
        self.worker.close()


def _run_ray(
    specs: Sequence[SceneSpec], cfg: RenderJobConfig, emit: Callable[[SceneOutcome], None], bar: _Progress
) -> None:
    from syncam_data.engine import ray_init

    ray = ray_init(cfg.ray_address)
    gpu = cfg.backend_config.get("device") == "gpu"  # BlenderConfig.device
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=1)(_RayRenderer)

    def make(i: int) -> Any:
        return actor_cls.remote(
            cfg.backend, cfg.backend_config, i, cfg.workers, str(cfg.out), cfg.retries, cfg.depth_dtype, cfg.crf
        )

    actors = {i: make(i) for i in range(min(cfg.workers, len(specs)))}
    queue = list(specs)
    running: dict[Any, tuple[int, SceneSpec]] = {}
    try:
        while queue or running:
            for i in [i for i in actors if i not in {v[0] for v in running.values()}]:
                if queue:
                    s = queue.pop(0)
                    running[actors[i].render.remote(s.to_json())] = (i, s)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                i, s = running.pop(ref)
                try:
                    o = SceneOutcome(**ray.get(ref))
                except Exception as e:  # the actor or its node died: record and replace the actor
                    o = SceneOutcome(s.scene_id, "failed", 1, error=f"ray actor failed: {type(e).__name__}: {e}")
                    try:
                        ray.kill(actors[i])
                    except Exception:  # already gone
                        pass
                    actors[i] = make(i)
                emit(o)
    finally:
        for a in actors.values():
            try:
                ray.get(a.close.remote(), timeout=60)
            except Exception:  # a dead actor has nothing to close
                pass
            ray.kill(a)


# --- the job --------------------------------------------------------------------------------------------


def run_render_job(
    items: Sequence[SceneSpec | SpecError],
    cfg: RenderJobConfig,
    args: dict[str, Any] | None = None,
    catalog_problems: Sequence[str] = (),
) -> RenderReport:
    """Render every spec (invalid ones are recorded as failed); returns and writes the report."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = RenderReport(
        out=str(cfg.out),
        backend=cfg.backend,
        args=args or {},
        started=utc_now(),
        catalog_problems=list(catalog_problems),
    )
    specs: list[SceneSpec] = []
    seen: set[str] = set()
    for it in items:
        if isinstance(it, SpecError):
            # The report names the spec by its file:line; the error says only what is wrong with it.
            report.add(SceneOutcome(_spec_error_id(it), "failed", 0, error=it.detail if it.source else str(it)))
        elif it.scene_id in seen:
            report.add(
                SceneOutcome(it.scene_id, "failed", 0, error=f"duplicate scene id {it.scene_id!r} in the spec list")
            )
        else:
            seen.add(it.scene_id)
            specs.append(it)
    report.write()
    bar = _Progress(specs, cfg.progress)

    def emit(o: SceneOutcome) -> None:
        report.add(o)
        report.seconds = time.perf_counter() - t0
        report.write()
        bar.scene(o)
        if o.status == "failed":
            log.error("%s: failed after %d attempt(s): %s", o.scene_id, o.attempts, o.error)

    try:
        # Complete scenes are skipped here, without starting any engine.
        todo = []
        for s in specs:
            if is_complete_scene(cfg.out / s.scene_id):
                emit(SceneOutcome(s.scene_id, "skipped"))
            else:
                todo.append(s)
        if todo:
            if cfg.engine == "ray":
                _run_ray(todo, cfg, emit, bar)
            elif cfg.workers > 1 and len(todo) > 1:
                _run_processes(todo, cfg, emit, bar)
            else:
                _run_in_process(todo, cfg, emit, bar)
    finally:
        bar.close()
        report.finished = utc_now()
        report.seconds = time.perf_counter() - t0
        report.write()
    log.info(
        "render: %d done, %d skipped, %d failed -> %s",
        len(report.done),
        len(report.skipped),
        len(report.failed),
        cfg.out / REPORT_JSON,
    )
    return report


def _spec_error_id(e: SpecError) -> str:
    # "file.jsonl:12: invalid scene spec: ..." -> "file.jsonl:12"
    return e.source or str(e).split(": ", 1)[0]

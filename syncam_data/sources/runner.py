"""The `sample-frames` job: stream sequences from a source, sample frame sets, write groups and a report.

Sequences are discovered lazily and handed to ``run_tasks`` (local processes
or Ray) a chunk at a time, so a 10,000-sequence root is never held in memory
and the report on disk is never more than one chunk behind. Each sequence is
one task; a bad sequence is recorded in the report and the run goes on.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from syncam_data.cameras import CameraError
from syncam_data.engine import run_tasks
from syncam_data.ids import UnsafeIdError
from syncam_data.sources import dl3dv, realestate10k
from syncam_data.sources.frameset import (
    OutputConfig,
    RunReport,
    SequenceOutcome,
    SourceError,
    SourceFrame,
    existing_frame_indices,
    group_id_for,
    remove_stale_temporaries,
    write_frame_set,
)
from syncam_data.sources.sampling import SamplingConfig, TooShortError, choose_frame_sets, sequence_rng
from syncam_data.video import VideoError

log = logging.getLogger(__name__)

SOURCES = (realestate10k.SOURCE, dl3dv.SOURCE)
# Errors that mean "this sequence's input is bad": recorded as skipped, never fatal.
INPUT_ERRORS = (SourceError, CameraError, VideoError, TooShortError, UnsafeIdError, OSError)


class PosedSequence(Protocol):
    """What the readers provide to the sampler (RealEstate10K and DL3DV alike)."""

    source: str
    warnings: list[str]

    @property
    def sequence_id(self) -> str: ...
    @property
    def source_uri(self) -> str: ...
    @property
    def c2w(self) -> np.ndarray: ...
    @property
    def frame_indices(self) -> np.ndarray: ...
    @property
    def gap_positions(self) -> np.ndarray: ...
    def header(self) -> dict[str, Any]: ...
    def load_frames(self, entries: list[int]) -> dict[int, SourceFrame]: ...


@dataclass(frozen=True)
class SampleFramesJob:
    """Everything one run needs; picklable, so it travels to worker processes and Ray tasks."""

    source: str
    root: str
    out: str
    sampling: SamplingConfig
    output: OutputConfig
    re10k: realestate10k.Re10kConfig = realestate10k.Re10kConfig()
    dl3dv: dl3dv.Dl3dvConfig = dl3dv.Dl3dvConfig()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "source": self.source,
            "root": self.root,
            "out": self.out,
            "sampling": asdict(self.sampling),
            "output": asdict(self.output),
        }
        s["reader"] = asdict(self.re10k if self.source == realestate10k.SOURCE else self.dl3dv)
        return s

    def gap_unit(self) -> str:
        return self.re10k.gap_unit if self.source == realestate10k.SOURCE else "frame-number"


def iter_refs(job: SampleFramesJob) -> Iterator[Any]:
    # Never walk into our own output, nor into frame/video folders that happen to sit under the root.
    exclude = [Path(job.out)]
    if job.source == realestate10k.SOURCE:
        exclude += [Path(d) for d in (job.re10k.frames_dir, job.re10k.videos_dir) if d]
        return realestate10k.iter_sequence_refs(job.root, exclude)
    return dl3dv.iter_scene_refs(job.root, exclude)


def open_posed_sequence(ref: Any, job: SampleFramesJob) -> PosedSequence:
    if job.source == realestate10k.SOURCE:
        return realestate10k.open_sequence(ref, job.re10k)
    return dl3dv.open_scene(ref, job.dl3dv)


def process_sequence(ref: Any, job: SampleFramesJob) -> SequenceOutcome:
    """Sample and write every set of one sequence; input problems become a 'skipped' outcome."""
    t0 = time.perf_counter()
    outcome = SequenceOutcome(ref.sequence_id, ref.uri)
    try:
        seq = open_posed_sequence(ref, job)
        outcome.warnings.extend(seq.warnings)
        _sample_and_write(seq, job, outcome)
    except TooShortError as e:
        outcome.status, outcome.reason = "skipped", f"{ref.uri}: too short: {e}"
    except INPUT_ERRORS as e:
        outcome.status, outcome.reason = "skipped", str(e)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _sample_and_write(seq: PosedSequence, job: SampleFramesJob, outcome: SequenceOutcome) -> None:
    cfg = job.sampling
    sets = choose_frame_sets(seq.gap_positions, seq.c2w, cfg, sequence_rng(cfg.seed, seq.sequence_id))
    if not sets:
        outcome.status = "skipped"
        outcome.reason = (
            f"{seq.source_uri}: no set of {cfg.views} views within max gap {cfg.max_gap} ({job.gap_unit()}) "
            f"with min angle {cfg.min_angle_deg} deg"
            + (f" or min baseline {cfg.min_baseline}" if cfg.min_baseline is not None else "")
            + f" among {len(seq.gap_positions)} frames"
        )
        return
    if len(sets) < cfg.sets_per_sequence:
        outcome.warnings.append(f"only {len(sets)} of {cfg.sets_per_sequence} distinct sets satisfy the rules")
    out = Path(job.out)
    indices = seq.frame_indices
    todo: list[tuple[int, str, tuple[int, ...]]] = []
    for k, entries in enumerate(sets):
        gid = group_id_for(seq.sequence_id, k)
        planned = [int(indices[e]) for e in entries]
        existing = existing_frame_indices(out / gid)
        if existing is None:
            todo.append((k, gid, entries))
        elif existing == planned:
            outcome.sets_existing.append(gid)
        else:
            outcome.warnings.append(
                f"{gid} already exists with frames {existing}, not {planned}: kept (sample into a new --out to change settings)"
            )
            outcome.sets_existing.append(gid)
    if not todo:
        return
    # Fetch every needed frame before writing anything: a missing image or a bad video
    # then skips the whole sequence instead of leaving some of its sets behind.
    needed = sorted({e for _, _, entries in todo for e in entries})
    frames = seq.load_frames(needed)
    base_header = {"source": seq.source, "sequence": seq.sequence_id, "source_uri": seq.source_uri, **seq.header()}
    for k, gid, entries in todo:
        header = {
            **base_header,
            "group_id": gid,
            "set_index": k,
            "sampling": {**asdict(cfg), "gap_unit": job.gap_unit()},
        }
        try:
            write_frame_set(out, gid, header, [frames[e] for e in entries], job.output)
        except OSError as e:
            if existing_frame_indices(out / gid) is not None:
                outcome.sets_existing.append(gid)  # a concurrent writer finished it first
                continue
            # The output side failed (disk full, permissions): not the input's fault.
            outcome.status, outcome.reason = "error", f"{out / gid}: cannot write frame set ({e})"
            return
        outcome.sets_written.append(gid)


def run_sample_frames(
    job: SampleFramesJob,
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    limit: int | None = None,
    chunk_size: int = 256,
    progress: bool = True,
) -> RunReport:
    """Run the whole job; returns the report (also written to ``<out>/sample_report.json``).

    Raises SourceError, before anything is written, when ``job.root`` holds no sequence at all.
    """
    refs = iter_refs(job)
    first = next(refs, None)
    if first is None:  # a job that found nothing must never look like success
        layout = realestate10k.LAYOUT if job.source == realestate10k.SOURCE else dl3dv.LAYOUT
        raise SourceError(f"{job.root}: no {job.source} sequences found: expected {layout}")
    refs = itertools.chain([first], refs)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    report = RunReport(out, job.settings())
    report.write()
    if limit is not None:
        refs = itertools.islice(refs, limit)
    fn = functools.partial(process_sequence, job=job)
    seen: dict[str, str] = {}
    bar = tqdm(total=limit, desc=f"sample-frames {job.source}", unit="seq", disable=not progress, dynamic_ncols=True)
    try:
        while chunk := list(itertools.islice(refs, chunk_size)):
            unique = []
            for ref in chunk:
                if ref.sequence_id in seen:
                    report.add(
                        SequenceOutcome(
                            ref.sequence_id,
                            ref.uri,
                            "skipped",
                            reason=f"{ref.uri}: duplicate sequence id {ref.sequence_id!r} (also {seen[ref.sequence_id]})",
                        )
                    )
                    bar.update(1)
                else:
                    seen[ref.sequence_id] = ref.uri
                    unique.append(ref)
            for r in run_tasks(fn, unique, engine=engine, workers=workers, ray_address=ray_address, progress=False):  # type: ignore[arg-type]
                if r.ok:
                    outcome = r.value
                else:  # a bug or crash rather than bad input: still recorded, still not fatal
                    log.error("%s failed: %s\n%s", r.item.uri, r.error, r.traceback or "")
                    outcome = SequenceOutcome(r.item.sequence_id, r.item.uri, "error", reason=r.error)
                if outcome.status != "ok":
                    log.warning("skipped %s: %s", outcome.sequence, outcome.reason)
                report.add(outcome)
                bar.update(1)
                bar.set_postfix(
                    sets=report.totals["sets_written"],
                    skipped=report.totals["skipped"] + report.totals["error"],
                    refresh=False,
                )
            report.write()
    finally:
        bar.close()
    report.write(finished=True)
    return report

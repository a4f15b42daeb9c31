"""Adapters from each intermediate output to view records (Contract 3), one module per source.

| source (CLI option) | module | kind | dataset |
|---|---|---|---|
| ``--renders DIR`` | ``renders`` | multiview_video | syncam-blender / syncam-unreal |
| ``--frames DIR`` | ``framesets`` | multiview_image | realestate10k / dl3dv |
| ``--videos SCORES.parquet`` | ``videos`` | single_video | web |
| ``--syncamvideo DIR`` | ``syncamvideo`` | multiview_video | syncamvideo |

Each module provides ``discover(path, options)``, ``scan(ref, options)`` and
``convert(plan, options)`` (see ``base``), and ``LAYOUT``: what its input must
hold, for the error when an input yields nothing.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from syncam_data.shards.adapters import framesets, renders, syncamvideo, videos
from syncam_data.shards.adapters.base import AdapterError, ConvertConfig, GroupPlan, GroupRef, ViewPlan
from syncam_data.shards.schema import ViewRecord

ADAPTERS: dict[str, ModuleType] = {m.SOURCE: m for m in (renders, framesets, videos, syncamvideo)}


def adapter(source: str) -> ModuleType:
    try:
        return ADAPTERS[source]
    except KeyError:
        raise AdapterError(f"unknown source {source!r}: one of {sorted(ADAPTERS)}") from None


def discover(source: str, path: str | Path, options: ConvertConfig) -> list[GroupRef]:
    return adapter(source).discover(Path(path), options)


def scan(ref: GroupRef, options: ConvertConfig) -> GroupPlan:
    return adapter(ref.source).scan(ref, options)


def convert(plan: GroupPlan, options: ConvertConfig) -> list[ViewRecord]:
    records = adapter(plan.ref.source).convert(plan, options)
    got = sorted(r.view_id for r in records)
    want = sorted(v.view_id for v in plan.views)
    if got != want:
        # The folder changed between scan and convert: refuse rather than write a different group.
        raise AdapterError(f"{plan.ref.path}: views changed since the scan ({want} -> {got})")
    return records


__all__ = [
    "ADAPTERS",
    "AdapterError",
    "ConvertConfig",
    "GroupPlan",
    "GroupRef",
    "ViewPlan",
    "adapter",
    "convert",
    "discover",
    "scan",
]

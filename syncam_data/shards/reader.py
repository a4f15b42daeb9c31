"""Read a shard dataset through its index: plan without touching blobs, fetch any row's media.

The model side (``syncam_model``) reads shards only through this module.

Datasets written to Contract 3 by other tools may lack the index columns SynCam added after
schema version 1: ``row_in_group`` (needed to fetch a blob) is derived when the dataset is opened,
from each shard's ``sample_id`` column; ``media_bytes`` and ``group_hash`` cost a read of every
blob and are derived on request (``ensure_columns``). See ``shards/derive.py``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from syncam_data.shards.derive import DeriveError, complete_index, missing_index_columns, read_index
from syncam_data.shards.schema import BLOB_COLUMNS, DATASET_JSON, INDEX_FILE, load_manifest

log = logging.getLogger(__name__)


class ShardDatasetError(ValueError):
    pass


class ShardReader:
    """Open ``<dir>/dataset.json`` + ``index.parquet``; fetch blobs by (shard, row group, row).

    Blob reads load one row group's blob column (only that column) and keep
    the most recent ``cache_row_groups`` of them, so reading several views of
    one group costs one read.
    """

    def __init__(self, root: str | os.PathLike, cache_row_groups: int = 2) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ShardDatasetError(f"{self.root}: not a folder (a shard dataset is a folder with {DATASET_JSON})")
        try:
            manifest = load_manifest(self.root)
        except ValueError as e:
            raise ShardDatasetError(str(e)) from None
        if manifest is None:
            raise ShardDatasetError(f"{self.root}: no {DATASET_JSON} (not a shard dataset, or a build never committed)")
        self.manifest: dict[str, Any] = manifest
        # dataset.json is the commit point: the index is exactly its shards' rows (rebuilt in memory when
        # index.parquet does not carry the sha256 dataset.json records: an interrupted commit or damage).
        try:
            self.index, state = read_index(self.root, manifest)
        except ValueError as e:
            raise ShardDatasetError(str(e)) from None
        if state == "rebuilt":
            log.warning(
                "%s: does not match %s; using an index rebuilt from the shards (re-run build-shards to repair the file)",
                self.root / INDEX_FILE,
                DATASET_JSON,
            )
        self.ensure_columns("row_in_group")
        self._files: dict[str, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple[str, int, str], pa.Array] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.index.num_rows

    def ensure_columns(self, *names: str) -> None:
        """Derive index columns added after schema version 1 that this dataset lacks (``shards/derive.py``)."""
        missing = missing_index_columns(self.index, names)
        if not missing:
            return
        log.info(
            "%s: index has no %s (written by another tool); deriving from the shards", self.root, ", ".join(missing)
        )
        try:
            self.index = complete_index(self.root, self.index, missing)
        except DeriveError as e:
            raise ShardDatasetError(str(e)) from None

    def __getstate__(self) -> dict[str, Any]:
        # Dataloader workers re-open files lazily.
        d = self.__dict__.copy()
        d["_files"], d["_cache"], d["_lock"] = {}, OrderedDict(), None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    # --- planning (index only) -------------------------------------------
    def rows(self, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        t = self.index if columns is None else self.index.select(list(columns))
        return t.to_pylist()

    def filter(self, **equals: Any) -> pa.Table:
        """Rows of the index whose columns equal the given values, e.g. ``filter(kind="multiview_video")``."""
        t = self.index
        for col, val in equals.items():
            t = t.filter(pc.equal(t.column(col), pa.scalar(val)))
        return t

    def groups(self, kind: str | None = None) -> dict[tuple[str, str], list[int]]:
        """(dataset, group_id) -> row numbers in the index, in view order."""
        ds = self.index.column("dataset").to_pylist()
        gid = self.index.column("group_id").to_pylist()
        kinds = self.index.column("kind").to_pylist()
        out: dict[tuple[str, str], list[int]] = {}
        for i, (d, g, k) in enumerate(zip(ds, gid, kinds)):
            if kind is None or k == kind:
                out.setdefault((d, g), []).append(i)
        return out

    def row(self, i: int) -> dict[str, Any]:
        return {c: self.index.column(c)[i].as_py() for c in self.index.column_names}

    # --- blobs --------------------------------------------------------------
    def _file(self, name: str) -> pq.ParquetFile:
        f = self._files.get(name)
        if f is None:
            path = self.root / name
            if not path.exists():
                raise ShardDatasetError(f"{path}: shard listed in the index is missing")
            f = pq.ParquetFile(str(path), memory_map=True)
            self._files[name] = f
        return f

    def _blob_column(self, shard: str, row_group: int, column: str) -> pa.Array:
        key = (shard, row_group, column)
        with self._lock or threading.Lock():
            arr = self._cache.get(key)
            if arr is not None:
                self._cache.move_to_end(key)
                return arr
        arr = self._file(shard).read_row_group(row_group, columns=[column]).column(0).combine_chunks()
        with self._lock or threading.Lock():
            self._cache[key] = arr
            while len(self._cache) > self._cache_size * len(BLOB_COLUMNS):
                self._cache.popitem(last=False)
        return arr

    def read_blob(self, i: int, column: str = "media") -> bytes | None:
        """The blob of index row ``i`` (``media`` or ``depth``)."""
        if column not in BLOB_COLUMNS:
            raise ValueError(f"{column!r} is not a blob column {BLOB_COLUMNS}")
        shard = self.index.column("shard")[i].as_py()
        rg = self.index.column("row_group")[i].as_py()
        k = self.index.column("row_in_group")[i].as_py()
        v = self._blob_column(shard, rg, column)[k]
        return v.as_py()

    def read_depth(self, i: int) -> np.ndarray | None:
        import io

        blob = self.read_blob(i, "depth")
        if blob is None:
            return None
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return z["depth"]

    def iter_rows(self, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every full row, shard by shard, row group by row group (for validate / export)."""
        for s in self.manifest.get("shards", []):
            pf = self._file(s["file"])
            for rg in range(pf.num_row_groups):
                yield from pf.read_row_group(rg, columns=list(columns) if columns else None).to_pylist()


def extra(row: dict[str, Any]) -> dict[str, Any]:
    """Parse a row's ``extra`` JSON column."""
    try:
        return json.loads(row.get("extra") or "{}")
    except json.JSONDecodeError:
        return {}

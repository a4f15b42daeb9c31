"""`syncam-data build-shards`."""

from __future__ import annotations

from syncam_data.cli.app import app, not_landed


@app.command("build-shards", help="Pack renders, frame sets, filtered videos and SynCamVideo data into Parquet shards.", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def build_shards() -> None:
    raise not_landed("build-shards", 7)

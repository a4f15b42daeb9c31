"""`syncam-data filter-videos`."""

from __future__ import annotations

from syncam_data.cli.app import app, not_landed


@app.command("filter-videos", help="Score web videos for a static camera and moving subjects; keep the good ones.", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def filter_videos() -> None:
    raise not_landed("filter-videos", 6)

"""`syncam-data eval`."""

from __future__ import annotations

from syncam_data.cli.app import app, not_landed


@app.command("eval", help="Cross-view consistency and camera accuracy of a dataset or generated videos.", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval() -> None:
    raise not_landed("eval", 11)

"""`syncam-data demo`."""

from __future__ import annotations

from syncam_data.cli.app import app, not_landed


@app.command("demo", help="Run the whole pipeline end to end on built-in defaults and write a report.", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo() -> None:
    raise not_landed("demo", 10)

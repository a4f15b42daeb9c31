"""`syncam-data sample-frames`."""

from __future__ import annotations

from syncam_data.cli.app import app, not_landed


@app.command("sample-frames", help="Sample multi-view frame sets from RealEstate10K or DL3DV-10K.", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sample_frames() -> None:
    raise not_landed("sample-frames", 5)

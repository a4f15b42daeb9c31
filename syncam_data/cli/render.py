"""`syncam-data render`."""

from __future__ import annotations

from syncam_data.cli.app import app, not_landed


@app.command("render", help="Render multi-camera scenes (Blender or Unreal Engine through UnrealCV).", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def render() -> None:
    raise not_landed("render", 3)

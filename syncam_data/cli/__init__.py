"""`syncam-data` command line. Importing this package registers every subcommand."""

from syncam_data.cli import (  # noqa: F401  (each module registers its command)
    build_shards,
    demo,
    eval,
    export_posed,
    filter_videos,
    inspect,
    render,
    run,
    sample_frames,
    validate,
)
from syncam_data.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]

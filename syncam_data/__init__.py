"""SynCam data toolkit: cameras, scene specs, renderers, sources, motion filter, video I/O, Parquet shards."""

__version__ = "0.1.0"

"""SynCamMaster multi-view modules on CogVideoX: adapter, data loader, trainer and generation."""

__version__ = "0.1.0"

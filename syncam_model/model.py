"""The model API in one import: load CogVideoX components, wrap the transformer for n views, save and load adapters.

The code lives in one module per concept; this module only gathers their public names
(the trainer, ``syncam-generate``, the benchmarks and user scripts import from here):

- ``syncam_model.components`` -- :func:`load_components` (a local diffusers CogVideoX
  folder or ``"tiny"`` random models), :class:`Components`, the VAE helpers
  :func:`encode_video` / :func:`encode_video_dist` / :func:`sample_latents` /
  :func:`decode_latents`, and the tiny models' configs;
- ``syncam_model.transformer`` -- :class:`MultiViewTransformer`, the base transformer
  with a :class:`~syncam_model.modules.MultiViewModule` in every block;
- ``syncam_model.adapter_io`` -- :func:`save_adapter` / :func:`load_adapter`: only the
  new modules, as safetensors with the base model's identity in the header.
"""

from __future__ import annotations

from syncam_model.adapter_io import (
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    AdapterFileError,
    adapter_spec_of,
    base_identity,
    check_base,
    load_adapter,
    read_adapter_meta,
    save_adapter,
)
from syncam_model.components import (
    SCHEDULER_CONFIG,
    TINY,
    TINY_T5,
    TINY_TRANSFORMER,
    TINY_VAE,
    TINY_VARIANTS,
    Components,
    check_video_size,
    decode_latents,
    encode_video,
    encode_video_dist,
    load_components,
    sample_latents,
    tiny_tokenizer,
    tiny_transformer_config,
    write_tiny_pretrained,
)
from syncam_model.transformer import MultiViewTransformer

__all__ = [
    "ADAPTER_FORMAT",
    "ADAPTER_FORMAT_VERSION",
    "SCHEDULER_CONFIG",
    "TINY",
    "TINY_T5",
    "TINY_TRANSFORMER",
    "TINY_VAE",
    "TINY_VARIANTS",
    "AdapterFileError",
    "Components",
    "MultiViewTransformer",
    "adapter_spec_of",
    "base_identity",
    "check_base",
    "check_video_size",
    "decode_latents",
    "encode_video",
    "encode_video_dist",
    "load_adapter",
    "load_components",
    "read_adapter_meta",
    "sample_latents",
    "save_adapter",
    "tiny_tokenizer",
    "tiny_transformer_config",
    "write_tiny_pretrained",
]

"""``syncam-generate``'s work around the sampler: its inputs and its output folder.

- :func:`resolve_checkpoint` / :func:`camera_rule`: the adapter file and the camera
  translation rule its views are given in (the adapter's, unless asked otherwise, and then
  an adapter trained with another rule is refused);
- :func:`load_input_video`: the video to re-render, checked and resized before any model loads;
- :func:`generation_record`: ``generation.json``, everything that made the output (the
  ``GenerationConfig``, cameras, model, checkpoint, timings);
- :func:`write_outputs`: ``videos/<view>.mp4``, ``grid.mp4``, ``cameras.json`` and
  ``generation.json``, built under a temporary name and published durably (``syncam_data.fsio``).

Problems with an input raise ``InputError`` naming the command-line option it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from syncam_data import fsio

if TYPE_CHECKING:
    import numpy as np
    import torch

    from syncam_model.camera_input import CameraRule
    from syncam_model.components import Components
    from syncam_model.generate import GenerationConfig
    from syncam_model.rig import Rig


class InputError(ValueError):
    """An input of ``syncam-generate`` that cannot be used; ``option`` is the flag it came from."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def resolve_checkpoint(path: Path | None) -> Path | None:
    """The adapter file: ``path`` itself, or the ``adapter.safetensors`` of a checkpoint folder."""
    if path is not None and Path(path).is_dir():
        return Path(path) / "adapter.safetensors"
    return path


def camera_rule(meta: dict[str, Any], normalization: str | None, scale: float | None) -> CameraRule:
    """The camera rule to apply: the adapter's (``meta``), unless the options ask for another (then the adapter is refused)."""
    from syncam_model.camera_input import CameraRule, CameraRuleError, check_rule, rule_of

    rules = get_args(CameraRule.model_fields["translation_normalization"].annotation)
    if normalization is not None and normalization not in rules:
        raise InputError(
            "--translation-normalization",
            f"--translation-normalization must be one of {list(rules)}, got {normalization!r}",
        )
    if scale is not None and not scale > 0:
        raise InputError("--translation-scale", f"--translation-scale must be positive, got {scale}")
    if not meta:
        return CameraRule(
            translation_normalization=normalization or "max_distance", translation_scale=1.0 if scale is None else scale
        )
    try:
        have = rule_of(meta, "--checkpoint")
        if normalization is None and scale is None:
            return have
        norm = normalization or have.translation_normalization
        if scale is None:
            scale = have.translation_scale if norm == have.translation_normalization else 1.0
        return check_rule(meta, CameraRule(translation_normalization=norm, translation_scale=scale), "--checkpoint")
    except CameraRuleError as exc:
        raise InputError("--checkpoint", str(exc)) from None


def load_input_video(path: Path, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The first ``num_frames`` frames of ``path``, resized and centre-cropped to ``height x width``, as ``[F, 3, H, W]`` in [-1, 1]."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from syncam_data.video import VideoError, decode, probe

    if not Path(path).is_file():
        raise InputError("--input-video", f"{path}: no such file")
    try:
        info = probe(path, count_frames=True)
        if info.num_frames < num_frames:
            raise InputError("--input-video", f"{path}: has {info.num_frames} frames, --frames asks for {num_frames}")
        frames = decode(path, indices=list(range(num_frames)))
    except VideoError as e:
        raise InputError("--input-video", str(e)) from None
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    scale = max(height / video.shape[2], width / video.shape[3])
    rh, rw = max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale))
    video = F.interpolate(video, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    return video[:, :, top : top + height, left : left + width].clamp(-1, 1).contiguous()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[F, 3, H, W]`` in [-1, 1] -> ``(F, H, W, 3)`` uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def generation_record(
    config: GenerationConfig,
    components: Components,
    rig: Rig,
    model_cameras: Any,
    rule: CameraRule,
    *,
    cameras: str,
    input_video: Path | None,
    checkpoint: Path | None,
    checkpoint_meta: dict[str, Any],
    pretrained: str,
    fps: float,
    vae_tiling: bool,
    seconds: float,
) -> dict[str, Any]:
    """``generation.json``: the prompt, every setting (the ``GenerationConfig`` in full), the cameras and the model."""
    from syncam_model.generate import resolve_sampler

    c = config
    return {
        "prompt": c.prompt,
        "negative_prompt": c.negative_prompt,
        "mode": "rerender" if input_video else "text",
        "input_video": str(input_video) if input_video else None,
        "views": rig.ids,
        "camera_input": [[round(float(v), 6) for v in row] for row in model_cameras],
        # Every GenerationConfig field (under the command line's names), then how the model ran.
        "settings": {
            "frames": c.num_frames,
            "height": c.height,
            "width": c.width,
            "steps": c.steps,
            "guidance": c.guidance,
            "dynamic_cfg": c.use_dynamic_cfg,
            "text_guidance": c.text_guidance,
            "video_guidance": c.video_guidance,
            "sampler": resolve_sampler(components, c.sampler),
            "seed": c.seed,
            "batch_passes": c.batch_passes,
            "vae_tiling": vae_tiling,
            "camera_rule": rule.model_dump(),
            "cameras": cameras,
            "fps": fps,
            "dtype": str(components.dtype).removeprefix("torch."),
            "device": str(components.device),
        },
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_meta": {k: v for k, v in checkpoint_meta.items() if k != "base_id"},
        "pretrained": pretrained,
        "base_id": components.base_id,
        "seconds": round(seconds, 2),
    }


def write_outputs(out: Path, videos: torch.Tensor, rig: Rig, generation: dict[str, Any], fps: float) -> None:
    """The output folder, built under a temporary name and published durably, replacing an earlier one."""
    import numpy as np

    from syncam_data.video import encode

    with fsio.atomic_dir(out, replace=True) as tmp:
        frames = [to_uint8(v) for v in videos]
        for cid, f in zip(rig.ids, frames):
            encode(f, tmp / "videos" / f"{cid}.mp4", fps=fps)
        encode(np.concatenate(frames, axis=2), tmp / "grid.mp4", fps=fps)
        fsio.write_json(tmp / "cameras.json", rig.to_json())
        fsio.write_json(tmp / "generation.json", generation, allow_nan=True)

"""Eval on a SynCamVideo-layout import: synthetic views written as UE row-vector extrinsics, packed by
`syncam-data build-shards --syncamvideo`, then checked by `syncam-data eval` (the issue's "done when": correct
cameras pass, cameras corrupted on purpose are flagged). This also checks the whole UE conversion chain end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from syncam_data.cameras import UE_MIRROR, Camera, c2w_from_ue_row_matrix
from syncam_data.cli import app
from syncam_data.evaluate.synthetic import render_views, ring_cameras
from syncam_data.video import encode

W, H, HFOV = 224, 160, 70.0  # render_views' cameras have a 70 degree horizontal field of view


def ue_row_matrix(c2w: np.ndarray, mirror: bool = True) -> str:
    """Canonical c2w -> SynCamVideo's text: rows forward, right, up (UE world) and location in cm.

    ``mirror=False`` is the classic conversion slip: writing right-handed coordinates into the left-handed UE world.
    """
    S = UE_MIRROR if mirror else np.eye(3)
    R, t = c2w[:, :3], c2w[:, 3]
    rows = [S @ R[:, 2], S @ R[:, 0], -(S @ R[:, 1])]
    loc = S @ t * 100.0
    text = [f"[{r[0]:.7f} {r[1]:.7f} {r[2]:.7f} 0]" for r in rows] + [f"[{loc[0]:.4f} {loc[1]:.4f} {loc[2]:.4f} 1]"]
    return " ".join(text) + " "


def write_scene(folder: Path, cams: list[Camera], imgs: list[np.ndarray], mirror: bool = True) -> None:
    (folder / "cameras").mkdir(parents=True)
    ids = [f"cam{i + 1:02d}" for i in range(len(cams))]
    frames = {f"frame{k}": {cid: ue_row_matrix(c.c2w, mirror) for cid, c in zip(ids, cams)} for k in range(3)}
    (folder / "cameras" / "camera_extrinsics.json").write_text(json.dumps(frames))
    for cid, img in zip(ids, imgs):
        encode(np.stack([img] * 3), folder / "videos" / f"{cid}.mp4", fps=15.0)


def test_row_matrix_writer_inverts_the_importer() -> None:
    for c in ring_cameras(4, W, H):
        np.testing.assert_allclose(c2w_from_ue_row_matrix(ue_row_matrix(c.c2w)), c.c2w, atol=1e-5)


@pytest.mark.slow
def test_eval_flags_a_syncamvideo_import_with_corrupted_cameras(tmp_path: Path) -> None:
    cams, imgs = render_views(4, W, H, seed=0)
    root = tmp_path / "SynCamVideo"
    write_scene(root / "f24_aperture5" / "scene1", cams, imgs)
    write_scene(root / "f24_aperture5" / "scene2", cams, imgs, mirror=False)  # corrupted on purpose
    runner = CliRunner()
    r = runner.invoke(
        app, ["build-shards", "--out", str(tmp_path / "shards"), "--syncamvideo", str(root), "--fov", str(HFOV)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "shards"), "--out", str(tmp_path / "eval"), "--frames", "1"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    groups = {g["key"]: g for g in summary["groups"]}
    good, bad = groups["syncamvideo/f24_aperture5-scene1"], groups["syncamvideo/f24_aperture5-scene2"]
    assert good["epi_symmetric_median"] < 0.5 and good["within_1px"] > 0.9 and not good["flagged"]
    assert good["matched_pixels_mean"] > 50
    assert bad["flagged"] and bad["epi_symmetric_median"] > 2.0
    assert [g["key"] for g in summary["flagged_groups"]] == ["syncamvideo/f24_aperture5-scene2"]

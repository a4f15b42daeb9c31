"""The demo report: one structure rendered as HTML and as Markdown, so the two always say the same thing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from syncam_data.demo import Stage
from syncam_data.demo_report import build_report, to_html, to_markdown, write_report
from syncam_data.video import encode


def _stages(tmp: Path) -> list[Stage]:
    (tmp / "inspect.json").write_text(
        json.dumps(
            {
                "views": 6,
                "groups": 2,
                "shards": 1,
                "resolutions": {"96x160": 6},
                "frames": {"5": 6},
                "by_source": {
                    "syncam-blender/multiview_video": {
                        "groups": 2,
                        "views": 6,
                        "media_mb": 0.25,
                        "caption_coverage": 1.0,
                        "camera_coverage": 1.0,
                    }
                },
            }
        )
    )
    (tmp / "generate").mkdir()
    encode(np.full((3, 16, 48, 3), 120, np.uint8), tmp / "generate" / "grid.mp4", fps=8)
    return [
        Stage("render", "Render scenes", ["syncam-data render --scenes 2 --out render"], 12.5),
        Stage(
            "filter",
            "Filter web videos",
            ["syncam-data filter-videos a b"],
            3.0,
            outputs={
                "decisions": [
                    {
                        "path": "/x/static_camera_moving_subject.mp4",
                        "status": "kept",
                        "reason": "",
                        "subject_motion": 0.0312,
                        "camera_motion": 0.0011,
                    },
                    {
                        "path": "/x/corrupt.mp4",
                        "status": "error",
                        "reason": "decode_error",
                        "error": "bad <moov> | atom",
                        "subject_motion": None,
                        "camera_motion": None,
                    },
                ]
            },
        ),
        Stage(
            "eval",
            "Evaluate",
            ["syncam-data eval shards"],
            1.0,
            outputs={"summary": {"overall": {"inlier_rate": 0.5}, "groups": 2}},
        ),
        Stage(
            "train",
            "Train",
            ["syncam-train --config tiny.yaml"],
            20.0,
            outputs={
                "log": [
                    {"event": "start", "step": 0},
                    {"step": 1, "loss": 0.9},
                    {"event": "start", "step": 2},
                    {"step": 3, "loss": 0.7},
                ],
                "checkpoint": str(tmp / "train" / "checkpoints" / "step_000003"),
            },
        ),
        Stage("generate", "Generate", ["syncam-generate --out generate"], 4.0),
        Stage("report", "Write the report", [], 0.0, ok=False, error="disk <full>"),
    ]


def test_html_and_markdown_come_from_one_structure(tmp_path):
    stages = _stages(tmp_path)
    paths = write_report(tmp_path, stages)
    page, md = paths["html"].read_text(), paths["markdown"].read_text()
    sections = build_report(tmp_path, stages)
    titles = [s.title for s in sections]
    assert titles == [
        "Stages",
        "Dataset",
        "Web-video filter decisions",
        "Cross-view consistency (syncam-data eval)",
        "Training",
        "Generated multi-view grid (syncam-generate)",
    ]
    assert re.findall(r"<h2>(.*?)</h2>", page) == titles
    assert re.findall(r"^## (.*)$", md, flags=re.M) == titles
    assert page == to_html(sections) and md == to_markdown(sections)
    # the same facts in both: table cells, numbers, commands, images
    for fact in (
        "static_camera_moving_subject.mp4",
        "0.0312",
        "decode_error",
        "12.5",
        "syncam-blender/multiview_video",
        "0.25",
        "loss 0.9000 at step 1 -&gt; 0.7000 at step 3",
        "report_assets/loss.png",
        "report_assets/generated.png",
    ):
        assert fact in page, fact
        assert fact.replace("-&gt;", "->") in md, fact
    # text is escaped for HTML and kept for Markdown (a '|' inside a table cell is escaped there)
    assert "bad &lt;moov&gt; | atom" in page and "FAILED: disk &lt;full&gt;" in page and "<moov>" not in page
    assert "bad <moov> \\| atom" in md
    assert (
        "<code>syncam-data render --scenes 2 --out render</code>" in page
        and "`syncam-data render --scenes 2 --out render`" in md
    )
    assert "<td class=ok>kept</td>" in page and "<td class=bad>error</td>" in page
    # a section whose files are missing is left out of both
    assert "## Frames from each source" not in md and "Frames from each source" not in page
    assert (tmp_path / "report_assets" / "loss.png").stat().st_size > 0

"""report.html and report.md for the end-to-end demo: timings, dataset statistics, cameras,
frames from each source, filter decisions, eval figures, the loss curve and the generated grid.

Everything shown is read back from the files the stages wrote (shards through the
shard reader, the filter's scores.parquet, the training log, the generated videos),
so the report shows what a user would get, not what the demo meant to produce.

Each section is built once, as a small document structure (paragraphs, tables, images,
code), and that structure is rendered twice: ``to_html`` and ``to_markdown``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data import fsio
from syncam_data.images import decode_rgb

log = logging.getLogger(__name__)

ASSETS = "report_assets"
TITLE = "SynCam demo report"


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def _tile(images: list[np.ndarray], cols: int, height: int = 120) -> np.ndarray:
    import cv2

    resized = []
    for im in images:
        h, w = im.shape[:2]
        resized.append(cv2.resize(im, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA))
    width = max(r.shape[1] for r in resized)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in resized]
    rows = [padded[i : i + cols] for i in range(0, len(padded), cols)]
    rows = [np.concatenate(r + [np.full_like(padded[0], 255)] * (cols - len(r)), axis=1) for r in rows]
    return np.concatenate(rows, axis=0)


def source_sheets(out: Path) -> list[dict[str, Any]]:
    """One contact sheet per (dataset, kind) from the shards: a group's views (first and last frame)."""
    from syncam_data.shards.reader import ShardReader
    from syncam_data.video import decode

    shards = out / "shards"
    if not (shards / "dataset.json").exists():
        return []
    r = ShardReader(shards)
    seen: dict[tuple[str, str], tuple[str, list[int]]] = {}
    for (ds, gid), rows in sorted(r.groups().items()):
        kind = r.index.column("kind")[rows[0]].as_py()
        seen.setdefault((ds, kind), (gid, rows))
    sheets = []
    for (ds, kind), (gid, rows) in seen.items():
        imgs, labels = [], []
        for i in rows[:6]:
            row = r.row(i)
            blob = r.read_blob(i)
            if row["media_format"] == "mp4":
                last = max(0, row["num_frames"] - 1)
                fr = decode(blob, [0, last])
                imgs.append(np.concatenate(list(fr), axis=0))
                labels.append(f"{row['view_id']} (frames 0, {last})")
            else:
                imgs.append(decode_rgb(blob))
                labels.append(f"{row['view_id']} (frame {row['frame_indices'][0]})")
        sheet = _tile(imgs, cols=min(6, len(imgs)), height=180 if kind != "multiview_image" else 110)
        path = _save_png(out / ASSETS / f"source_{ds}_{kind}.png", sheet)
        caption = r.row(rows[0])["caption"]
        sheets.append(
            {
                "dataset": ds,
                "kind": kind,
                "group": gid,
                "views": len(rows),
                "png": path,
                "labels": labels,
                "caption": caption,
            }
        )
    return sheets


def loss_plot(out: Path, log_records: list[dict[str, Any]]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["step"], r["loss"]) for r in log_records if isinstance(r.get("loss"), (int, float)) and "step" in r]
    if not pts:
        return None
    starts = [r["step"] for r in log_records if r.get("event") == "start"]
    steps, losses = zip(*pts)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot(steps, losses, marker=".", lw=1)
    for s in starts[1:]:
        ax.axvline(s, color="red", ls="--", lw=1)
        ax.text(s, max(losses), " resumed", color="red", va="top", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("v-prediction MSE")
    ax.set_title("syncam-train (tiny random CogVideoX, CPU)")
    fig.tight_layout()
    path = out / ASSETS / "loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def generated_sheet(out: Path) -> Path | None:
    from syncam_data.video import VideoError, decode, probe

    grid = out / "generate" / "grid.mp4"
    if not grid.exists():
        return None
    try:
        n = probe(grid, count_frames=True).num_frames
        frames = decode(grid, sorted({0, n // 2, n - 1}))
    except VideoError as e:
        log.warning("cannot read %s: %s", grid, e)
        return None
    return _save_png(out / ASSETS / "generated.png", _tile(list(frames), cols=1, height=96))


def _rel(out: Path, p: Path | str) -> str:
    return os.path.relpath(str(p), str(out))


def _stage(stages: list[Any], name: str) -> Any:
    return next((s for s in stages if s.name == name), None)


# --- the document: one structure, rendered as HTML and as Markdown -----------------------------


@dataclass(frozen=True)
class Code:
    """Inline code."""

    text: str


@dataclass(frozen=True)
class Link:
    text: str
    href: str


Inline = str | Code | Link


@dataclass(frozen=True)
class Para:
    parts: tuple[Inline, ...]
    css: str = ""


@dataclass(frozen=True)
class Heading:
    parts: tuple[Inline, ...]


@dataclass(frozen=True)
class Cell:
    parts: tuple[Inline, ...]
    css: str = ""  # "ok" / "bad": coloured in HTML


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report
    alt: str
    style: str = ""


@dataclass(frozen=True)
class Pre:
    text: str
    lang: str = ""


@dataclass(frozen=True)
class Video:
    """HTML only (Markdown has no video element); the Markdown report links the file instead."""

    src: str


Block = Para | Heading | Table | Image | Pre | Video


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _cell(*parts: Inline, css: str = "") -> Cell:
    return Cell(tuple(parts), css)


def _inline_html(parts: tuple[Inline, ...]) -> str:
    out = []
    for p in parts:
        if isinstance(p, Code):
            out.append("<code>" + "<br>".join(html.escape(line) for line in p.text.split("\n")) + "</code>")
        elif isinstance(p, Link):
            out.append(f"<a href='{html.escape(p.href)}'>{html.escape(p.text)}</a>")
        else:
            out.append(html.escape(p))
    return "".join(out)


def _inline_md(parts: tuple[Inline, ...], in_table: bool = False) -> str:
    out = []
    for p in parts:
        if isinstance(p, Code):
            out.append("<br>".join(f"`{line}`" for line in p.text.split("\n")))
        elif isinstance(p, Link):
            out.append(f"[{p.text}]({p.href})")
        else:
            out.append(p.replace("|", "\\|").replace("\n", " ") if in_table else p)
    return "".join(out)


def to_html(sections: list[Section]) -> str:
    body = []
    for sec in sections:
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Para):
                cls = f" class={b.css}" if b.css else ""
                body.append(f"<p{cls}>{_inline_html(b.parts)}</p>")
            elif isinstance(b, Heading):
                body.append(f"<h3>{_inline_html(b.parts)}</h3>")
            elif isinstance(b, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                rows = "".join(
                    "<tr>"
                    + "".join(f"<td{f' class={c.css}' if c.css else ''}>{_inline_html(c.parts)}</td>" for c in row)
                    + "</tr>"
                    for row in b.rows
                )
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
            elif isinstance(b, Image):
                style = f" style='{b.style}'" if b.style else ""
                body.append(f"<img src='{html.escape(b.src)}' alt='{html.escape(b.alt)}'{style}>")
            elif isinstance(b, Pre):
                body.append(f"<pre>{html.escape(b.text)}</pre>")
            elif isinstance(b, Video):
                body.append(f"<p><video src='{html.escape(b.src)}' controls loop></video></p>")
    css = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}.ok{color:#070}.bad{color:#b00}"
        "img{max-width:100%}code{font-size:12px}.cap{color:#555;font-size:13px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{TITLE}</title><style>{css}</style></head>"
        f"<body><h1>{TITLE}</h1>{''.join(body)}</body></html>"
    )


def to_markdown(sections: list[Section]) -> str:
    out = [f"# {TITLE}\n"]
    for sec in sections:
        out.append(f"## {sec.title}\n")
        for b in sec.blocks:
            if isinstance(b, Para):
                out.append(_inline_md(b.parts) + "\n")
            elif isinstance(b, Heading):
                out.append(f"### {_inline_md(b.parts)}\n")
            elif isinstance(b, Table):
                lines = ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
                lines += ["| " + " | ".join(_inline_md(c.parts, in_table=True) for c in row) + " |" for row in b.rows]
                out.append("\n".join(lines) + "\n")
            elif isinstance(b, Image):
                out.append(f"![{b.alt}]({b.src})\n")
            elif isinstance(b, Pre):
                out.append(f"```{b.lang}\n{b.text}\n```\n")
            elif isinstance(b, Video):
                out.append(f"Video: [{b.src}]({b.src})\n")
    return "\n".join(out)


# --- the sections ---------------------------------------------------------------------------------


def _stages_section(stages: list[Any]) -> Section:
    total = sum(s.seconds for s in stages)
    rows = tuple(
        (
            _cell(s.title),
            _cell(f"{s.seconds:.1f}"),
            _cell("ok" if s.ok else f"FAILED: {s.error or 'failed'}", css="ok" if s.ok else "bad"),
            _cell(Code("\n".join(s.commands))) if s.commands else _cell(""),
        )
        for s in stages
    )
    return Section(
        "Stages",
        [
            Para(
                (
                    f"Total {total:.0f} s on {platform.platform()}, {os.cpu_count()} CPU cores. Every command is in ",
                    Code("commands.sh"),
                    ".",
                )
            ),
            Table(("stage", "seconds", "status", "commands"), rows),
        ],
    )


def _dataset_section(out: Path) -> Section | None:
    insp_path = out / "inspect.json"
    if not insp_path.exists():
        return None
    s = json.loads(insp_path.read_text())
    rows = tuple(
        (
            _cell(k),
            _cell(str(v["groups"])),
            _cell(str(v["views"])),
            _cell(f"{v['media_mb']:.2f}"),
            _cell(f"{v['caption_coverage']:.0%}"),
            _cell(f"{v['camera_coverage']:.0%}"),
        )
        for k, v in s["by_source"].items()
    )
    sec = Section(
        "Dataset",
        [
            Para(
                (
                    f"{s['views']} views in {s['groups']} groups, {s['shards']} shard(s); resolutions {json.dumps(s['resolutions'])}; "
                    f"frames per view {json.dumps(s['frames'])}. ",
                    Code("syncam-data validate"),
                    " passed.",
                )
            ),
            Table(("dataset/kind", "groups", "views", "MB", "captions", "cameras"), rows),
        ],
    )
    cam = out / "cameras.png"
    if cam.exists():
        sec.blocks += [
            Heading(("Camera rigs (", Code("syncam-data inspect"), ")")),
            Image(_rel(out, cam), "camera rigs", "max-width:100%"),
        ]
    return sec


def _sources_section(out: Path) -> Section | None:
    try:
        sheets = source_sheets(out)
    except Exception as e:  # the report must still be written
        log.warning("source frames: %s", e)
        return None
    if not sheets:
        return None
    sec = Section("Frames from each source")
    for x in sheets:
        sec.blocks += [
            Heading((f"{x['dataset']} · {x['kind']} · group {x['group']} ({x['views']} views)",)),
            Para((f"{x['caption'] or '(no caption)'} — {', '.join(x['labels'])}",), css="cap"),
            Image(_rel(out, x["png"]), x["dataset"]),
        ]
    return sec


def _filter_section(out: Path, st: Any) -> Section | None:
    if not (st and st.outputs.get("decisions")):
        return None

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    rows = []
    for d in st.outputs["decisions"]:
        why = (d["reason"] or "") + (f" ({d['error'][:80]})" if d.get("error") else "")
        rows.append(
            (
                _cell(Path(d["path"]).name),
                _cell(d["status"], css="ok" if d["status"] == "kept" else "bad"),
                _cell(why),
                _cell(fmt(d["subject_motion"])),
                _cell(fmt(d["camera_motion"])),
            )
        )
    sec = Section(
        "Web-video filter decisions",
        [
            Para(
                (
                    "Kept when camera motion is below the camera threshold and subject motion above the subject threshold "
                    "(both in frame diagonals per second).",
                )
            ),
            Table(("video", "status", "reason", "subject motion", "camera motion"), tuple(rows)),
        ],
    )
    dbg = sorted((out / "filter" / "debug").glob("*.png")) if (out / "filter" / "debug").exists() else []
    if dbg:
        sec.blocks.append(Heading(("Debug images (tracks coloured by motion)",)))
        sec.blocks += [Image(_rel(out, p), p.stem, "max-width:48%;margin:2px") for p in dbg[:4]]
    return sec


def _eval_section(st: Any) -> Section | None:
    if not (st and st.outputs.get("summary")):
        return None
    summ = st.outputs["summary"]
    pretty = json.dumps(
        {k: v for k, v in summ.items() if not isinstance(v, (list, dict)) or k in ("overall", "matching", "cameras")},
        indent=1,
    )[:3000]
    return Section(
        "Cross-view consistency (syncam-data eval)",
        [
            Para(("Full report: ", Link("eval/report.html", "eval/report.html"), ".")),
            Pre(pretty, "json"),
        ],
    )


def _train_section(out: Path, st: Any) -> Section | None:
    if not (st and st.outputs.get("log")):
        return None
    recs = st.outputs["log"]
    lp = loss_plot(out, recs)
    losses = [r for r in recs if "loss" in r]
    first, last = (losses[0], losses[-1]) if losses else ({}, {})
    sec = Section(
        "Training",
        [
            Para(
                (
                    f"{len(losses)} logged steps; loss {first.get('loss', float('nan')):.4f} at step {first.get('step')} -> "
                    f"{last.get('loss', float('nan')):.4f} at step {last.get('step')}. The run stopped part-way and was resumed with ",
                    Code("--resume latest"),
                    " (dashed line). Checkpoint: ",
                    Code(_rel(out, st.outputs.get("checkpoint", ""))),
                    ".",
                )
            )
        ],
    )
    if lp:
        sec.blocks.append(Image(_rel(out, lp), "loss"))
    return sec


def _generate_section(out: Path, st: Any) -> Section | None:
    gs = generated_sheet(out) if st and st.ok else None
    if not gs:
        return None
    return Section(
        "Generated multi-view grid (syncam-generate)",
        [
            Para(
                (
                    "Three synchronized views (azimuth 0°, 40°, 80°) from the tiny, randomly initialized model trained for a few dozen "
                    "CPU steps: the output is noise-like, as expected; with real CogVideoX weights (",
                    Code("--pretrained PATH"),
                    ") the same command produces real videos. Rows: frames 0, middle, last; columns: views.",
                )
            ),
            Image(_rel(out, gs), "generated", "image-rendering:pixelated;width:60%"),
            Video("generate/grid.mp4"),
        ],
    )


def build_report(out: Path, stages: list[Any]) -> list[Section]:
    """The report's sections, each read back from the files the stages wrote (None-sections left out)."""
    out = Path(out)
    sections = [
        _stages_section(stages),
        _dataset_section(out),
        _sources_section(out),
        _filter_section(out, _stage(stages, "filter")),
        _eval_section(_stage(stages, "eval")),
        _train_section(out, _stage(stages, "train")),
        _generate_section(out, _stage(stages, "generate")),
    ]
    return [s for s in sections if s is not None]


def write_report(out: Path, stages: list[Any]) -> dict[str, Path]:
    """report.html and report.md: one structure (``build_report``) rendered twice, each file written durably."""
    out = Path(out)
    sections = build_report(out, stages)
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    fsio.write_text(paths["html"], to_html(sections))
    fsio.write_text(paths["markdown"], to_markdown(sections))
    return paths

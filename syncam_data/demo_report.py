"""report.html and report.md for the end-to-end demo: timings, dataset statistics, cameras,
frames from each source, filter decisions, eval figures, the loss curve and the generated grid.

Everything shown is read back from the files the stages wrote (shards through the
shard reader, the filter's scores.parquet, the training log, the generated videos),
so the report shows what a user would get, not what the demo meant to produce.
"""

from __future__ import annotations

import html
import json
import logging
import platform
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ASSETS = "report_assets"


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
    import cv2

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
                img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                imgs.append(img)
                labels.append(f"{row['view_id']} (frame {row['frame_indices'][0]})")
        sheet = _tile(imgs, cols=min(6, len(imgs)), height=180 if kind != "multiview_image" else 110)
        path = _save_png(out / ASSETS / f"source_{ds}_{kind}.png", sheet)
        caption = r.row(rows[0])["caption"]
        sheets.append({"dataset": ds, "kind": kind, "group": gid, "views": len(rows), "png": path, "labels": labels, "caption": caption})
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


def write_report(out: Path, stages: list[Any]) -> dict[str, Path]:
    out = Path(out)
    sections: list[tuple[str, str, str]] = []  # (title, html, markdown)
    total = sum(s.seconds for s in stages)

    # 1. stage timings
    rows_h = "".join(
        f"<tr><td>{html.escape(s.title)}</td><td>{s.seconds:.1f}</td><td class={'ok' if s.ok else 'bad'}>{'ok' if s.ok else html.escape(s.error or 'failed')}</td>"
        f"<td><code>{'<br>'.join(html.escape(c) for c in s.commands)}</code></td></tr>"
        for s in stages
    )
    rows_m = "\n".join(f"| {s.title} | {s.seconds:.1f} | {'ok' if s.ok else 'FAILED: ' + (s.error or '')} | {'<br>'.join('`' + c + '`' for c in s.commands)} |" for s in stages)
    sections.append((
        "Stages",
        f"<p>Total {total:.0f} s on {html.escape(platform.platform())}, {os.cpu_count()} CPU cores. Every command is in <code>commands.sh</code>.</p>"
        f"<table><tr><th>stage</th><th>seconds</th><th>status</th><th>commands</th></tr>{rows_h}</table>",
        f"Total {total:.0f} s on {platform.platform()}, {os.cpu_count()} CPU cores.\n\n| stage | seconds | status | commands |\n|---|---|---|---|\n{rows_m}\n",
    ))

    # 2. dataset statistics + camera plot
    insp_path = out / "inspect.json"
    if insp_path.exists():
        s = json.loads(insp_path.read_text())
        trs = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v['groups']}</td><td>{v['views']}</td><td>{v['media_mb']:.2f}</td><td>{v['caption_coverage']:.0%}</td><td>{v['camera_coverage']:.0%}</td></tr>"
            for k, v in s["by_source"].items()
        )
        md = "\n".join(f"| {k} | {v['groups']} | {v['views']} | {v['media_mb']:.2f} | {v['caption_coverage']:.0%} | {v['camera_coverage']:.0%} |" for k, v in s["by_source"].items())
        cam = out / "cameras.png"
        sections.append((
            "Dataset",
            f"<p>{s['views']} views in {s['groups']} groups, {s['shards']} shard(s); resolutions {html.escape(json.dumps(s['resolutions']))}; "
            f"frames per view {html.escape(json.dumps(s['frames']))}. <code>syncam-data validate</code> passed.</p>"
            f"<table><tr><th>dataset/kind</th><th>groups</th><th>views</th><th>MB</th><th>captions</th><th>cameras</th></tr>{trs}</table>"
            + (f"<h3>Camera rigs (<code>syncam-data inspect</code>)</h3><img src='{_rel(out, cam)}' style='max-width:100%'>" if cam.exists() else ""),
            f"{s['views']} views in {s['groups']} groups, {s['shards']} shard(s).\n\n| dataset/kind | groups | views | MB | captions | cameras |\n|---|---|---|---|---|---|\n{md}\n\n"
            + (f"![camera rigs]({_rel(out, cam)})\n" if cam.exists() else ""),
        ))

    # 3. frames from each source (read back from the shards)
    try:
        sheets = source_sheets(out)
    except Exception as e:  # the report must still be written
        log.warning("source frames: %s", e)
        sheets = []
    if sheets:
        h = "".join(
            f"<h3>{html.escape(x['dataset'])} · {html.escape(x['kind'])} · group {html.escape(x['group'])} ({x['views']} views)</h3>"
            f"<p class=cap>{html.escape(x['caption'] or '(no caption)')} — {html.escape(', '.join(x['labels']))}</p><img src='{_rel(out, x['png'])}'>"
            for x in sheets
        )
        m = "\n".join(f"**{x['dataset']} / {x['kind']}**, group `{x['group']}`: {x['caption'] or '(no caption)'}\n\n![{x['dataset']}]({_rel(out, x['png'])})\n" for x in sheets)
        sections.append(("Frames from each source", h, m))

    # 4. filter decisions
    st = _stage(stages, "filter")
    if st and st.outputs.get("decisions"):
        trs, mds = [], []
        for d in st.outputs["decisions"]:
            name = Path(d["path"]).name
            fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
            why = d["reason"] or ""
            if d.get("error"):
                why += f" ({d['error'][:80]})"
            trs.append(f"<tr><td>{html.escape(name)}</td><td class={'ok' if d['status'] == 'kept' else 'bad'}>{d['status']}</td><td>{html.escape(why)}</td><td>{fmt(d['subject_motion'])}</td><td>{fmt(d['camera_motion'])}</td></tr>")
            mds.append(f"| {name} | {d['status']} | {why} | {fmt(d['subject_motion'])} | {fmt(d['camera_motion'])} |")
        dbg = sorted((out / "filter" / "debug").glob("*.png")) if (out / "filter" / "debug").exists() else []
        imgs = "".join(f"<img src='{_rel(out, p)}' style='max-width:48%;margin:2px'>" for p in dbg[:4])
        sections.append((
            "Web-video filter decisions",
            "<p>Kept when camera motion is below the camera threshold and subject motion above the subject threshold "
            "(both in frame diagonals per second).</p><table><tr><th>video</th><th>status</th><th>reason</th><th>subject motion</th><th>camera motion</th></tr>"
            + "".join(trs) + "</table>" + (f"<h3>Debug images (tracks coloured by motion)</h3>{imgs}" if imgs else ""),
            "| video | status | reason | subject motion | camera motion |\n|---|---|---|---|---|\n" + "\n".join(mds) + "\n",
        ))

    # 5. eval
    st = _stage(stages, "eval")
    if st and st.outputs.get("summary"):
        summ = st.outputs["summary"]
        pretty = json.dumps({k: v for k, v in summ.items() if not isinstance(v, (list, dict)) or k in ("overall", "matching", "cameras")}, indent=1)[:3000]
        sections.append((
            "Cross-view consistency (syncam-data eval)",
            f"<p>Full report: <a href='eval/report.html'>eval/report.html</a>.</p><pre>{html.escape(pretty)}</pre>",
            f"Full report: `eval/report.html`.\n\n```json\n{pretty}\n```\n",
        ))

    # 6. training
    st = _stage(stages, "train")
    if st and st.outputs.get("log"):
        recs = st.outputs["log"]
        lp = loss_plot(out, recs)
        losses = [r for r in recs if "loss" in r]
        first, last = (losses[0], losses[-1]) if losses else ({}, {})
        text = (f"{len(losses)} logged steps; loss {first.get('loss', float('nan')):.4f} at step {first.get('step')} -> "
                f"{last.get('loss', float('nan')):.4f} at step {last.get('step')}. The run stopped part-way and was resumed "
                f"with <code>--resume latest</code> (dashed line). Checkpoint: <code>{html.escape(_rel(out, st.outputs.get('checkpoint', '')))}</code>.")
        sections.append((
            "Training",
            f"<p>{text}</p>" + (f"<img src='{_rel(out, lp)}'>" if lp else ""),
            text.replace("<code>", "`").replace("</code>", "`") + (f"\n\n![loss]({_rel(out, lp)})\n" if lp else ""),
        ))

    # 7. generation
    st = _stage(stages, "generate")
    gs = generated_sheet(out) if st and st.ok else None
    if gs:
        note = ("Three synchronized views (azimuth 0°, 40°, 80°) from the tiny, randomly initialized model trained for a few dozen "
                "CPU steps: the output is noise-like, as expected; with real CogVideoX weights (<code>--pretrained PATH</code>) the "
                "same command produces real videos. Rows: frames 0, middle, last; columns: views.")
        sections.append((
            "Generated multi-view grid (syncam-generate)",
            f"<p>{note}</p><img src='{_rel(out, gs)}' style='image-rendering:pixelated;width:60%'><p><video src='generate/grid.mp4' controls loop></video></p>",
            note.replace("<code>", "`").replace("</code>", "`") + f"\n\n![generated]({_rel(out, gs)})\n",
        ))

    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}.ok{color:#070}.bad{color:#b00}"
           "img{max-width:100%}code{font-size:12px}.cap{color:#555;font-size:13px}")
    body = "".join(f"<h2>{html.escape(t)}</h2>{h}" for t, h, _ in sections)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>SynCam demo report</title><style>{css}</style></head><body><h1>SynCam demo report</h1>{body}</body></html>"
    html_path = out / "report.html"
    md_path = out / "report.md"
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(page)
    os.replace(tmp, html_path)
    md = "# SynCam demo report\n\n" + "\n".join(f"## {t}\n\n{m}\n" for t, _, m in sections)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(md)
    os.replace(tmp, md_path)
    return {"html": html_path, "markdown": md_path}

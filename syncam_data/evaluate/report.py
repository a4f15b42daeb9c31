"""Outputs of `syncam-data eval`: eval.parquet, summary.json and report.html (with drawn pairs).

- ``eval.parquet``: one row per group / view pair / sampled frame.
- ``summary.json``: the settings, overall and per-group figures, flagged
  groups (and the views that make them fail), skipped scores with reasons,
  per-group errors.
- ``report.html``: a self-contained page (images embedded) with the overall
  figures, a table of groups worst first, and for the worst groups the
  image pair drawn with its inlier matches (coloured by epipolar error) and
  the stated cameras' epipolar lines.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from syncam_data import fsio
from syncam_data.evaluate import epipolar
from syncam_data.evaluate.inputs import GroupRef, load_view_frames
from syncam_data.evaluate.run import EvalConfig, RunResult, _fit_frames, build_matcher, config_dict

log = logging.getLogger(__name__)

EVAL_PARQUET = "eval.parquet"
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"

ROW_SCHEMA = pa.schema(
    [
        ("input_kind", pa.string()),
        ("dataset", pa.string()),
        ("group_id", pa.string()),
        ("kind", pa.string()),
        ("view_a", pa.string()),
        ("view_b", pa.string()),
        ("frame", pa.int32()),
        ("frame_index", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("keypoints_a", pa.int32()),
        ("keypoints_b", pa.int32()),
        ("matches", pa.int32()),
        ("inliers", pa.int32()),
        ("inlier_ratio", pa.float32()),
        ("has_cameras", pa.bool_()),
        ("relative_angle_deg", pa.float32()),
        ("epi_sampson_median", pa.float32()),
        ("epi_sampson_mean", pa.float32()),
        ("epi_symmetric_median", pa.float32()),
        ("within_1px", pa.float32()),
        ("within_2px", pa.float32()),
        ("camera_flagged", pa.bool_()),
        ("clip_f", pa.float32()),
    ]
)


# --- aggregation ------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.median(xs)) if xs else None


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else None


def _weighted_share(rows: list[dict[str, Any]], col: str) -> float | None:
    """Share of all inlier matches (pooled over rows) within a distance."""
    num = sum(r[col] * r["inliers"] for r in rows if r[col] is not None)
    den = sum(r["inliers"] for r in rows if r[col] is not None)
    return float(num / den) if den else None


def view_verdicts(judged: list[dict[str, Any]], flag_px: float) -> tuple[dict[str, float], list[str]]:
    """Each view's error and the views to flag, from its errors with each partner view.

    The error of a view with a partner is the median over frames of their
    pair's median. A view is flagged when its errors with at least two
    partners, and with at least half of its judged partners, exceed ``flag_px``.
    One pair with a consistent set of wrong matches (repetitive texture such as
    a checkerboard floor) must not condemn a camera, and in a static scene that
    pair repeats the same wrong matches in every frame, so frames are no second
    witness; an innocent view next to one wrong camera has good partners too.

    The reported view error is the *smallest* error over its partners: a wrong
    camera is off with every partner, an innocent view agrees with some, so the
    largest of these points at the likely culprit (``worst_view``).
    """
    per_pair: dict[tuple[str, str], list[float]] = {}
    for r in judged:
        per_pair.setdefault((r["view_a"], r["view_b"]), []).append(r["epi_symmetric_median"])
    partner_err: dict[str, dict[str, float]] = {}
    for (a, b), errs in per_pair.items():
        e = float(np.median(errs))
        partner_err.setdefault(a, {})[b] = e
        partner_err.setdefault(b, {})[a] = e
    view_err = {v: min(p.values()) for v, p in partner_err.items()}
    flagged = []
    for v, p in partner_err.items():
        bad = sum(e > flag_px for e in p.values())
        if bad >= 2 and bad >= 0.5 * len(p):
            flagged.append(v)
    return view_err, sorted(flagged)


def group_summary(g: GroupRef, rows: list[dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """Per-group figures; flagged views (see :func:`view_verdicts`) flag the group, as does a group median above --flag-px."""
    judged = [r for r in rows if r["camera_flagged"] is not None]
    view_err, flagged_views = view_verdicts(judged, cfg.flag_px)
    worst_view = max(view_err, key=view_err.get) if view_err else None
    epi = _median([r["epi_symmetric_median"] for r in judged])
    return {
        "key": g.key,
        "dataset": g.dataset,
        "group_id": g.group_id,
        "input_kind": g.input_kind,
        "kind": g.kind,
        "views": len(g.views),
        "rows": len(rows),
        "has_cameras": any(r["has_cameras"] for r in rows),
        "matched_pixels_mean": _mean([r["inliers"] for r in rows]),
        "matched_pixels_median": _median([r["inliers"] for r in rows]),
        "inlier_ratio_mean": _mean([r["inlier_ratio"] for r in rows]),
        "epi_symmetric_median": epi,
        "epi_sampson_median": _median([r["epi_sampson_median"] for r in judged]),
        "within_1px": _weighted_share(judged, "within_1px"),
        "within_2px": _weighted_share(judged, "within_2px"),
        "pairs_judged": len(judged),
        "pairs_flagged": sum(bool(r["camera_flagged"]) for r in judged),
        "view_epi_median": view_err,
        "flagged_views": flagged_views,
        "worst_view": worst_view,
        "flagged": bool(flagged_views) or (epi is not None and epi > cfg.flag_px),
    }


def build_summary(
    run: RunResult, cfg: EvalConfig, input_path: Path, extra: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    groups = []
    clip_t, clip_t_skips, skipped = {}, {}, {}
    for g in run.groups:
        r = run.results.get(g.key)
        if r is None:
            continue
        rows.extend(r.rows)
        if r.skipped:
            skipped[g.key] = r.skipped
        if r.rows:
            gs = group_summary(g, r.rows, cfg)
            gs["clip_t"] = r.clip_t
            gs["camera_rescaled"] = r.camera_rescaled
            groups.append(gs)
        if r.clip_t is not None:
            clip_t[g.key] = r.clip_t
        elif r.clip_t_skipped:
            clip_t_skips[r.clip_t_skipped] = clip_t_skips.get(r.clip_t_skipped, 0) + 1
    judged = [r for r in rows if r["camera_flagged"] is not None]
    clip_f = [r["clip_f"] for r in rows if r["clip_f"] is not None]
    overall = {
        "groups": len(run.groups),
        "groups_evaluated": len(groups),
        "groups_failed": len(run.errors),
        "groups_skipped": len(skipped),
        "rows": len(rows),
        "matched_pixels_mean": _mean([r["inliers"] for r in rows]),
        "matched_pixels_median": _median([r["inliers"] for r in rows]),
        "matched_pixels_per_group_mean": _mean([g["matched_pixels_mean"] for g in groups]),
        "epi_symmetric_median": _median([r["epi_symmetric_median"] for r in judged]),
        "epi_sampson_median": _median([r["epi_sampson_median"] for r in judged]),
        "within_1px": _weighted_share(judged, "within_1px"),
        "within_2px": _weighted_share(judged, "within_2px"),
        "rows_with_camera_verdict": len(judged),
        "groups_flagged": sum(g["flagged"] for g in groups),
    }
    scores = {
        "clip_t": {
            "value": _mean(list(clip_t.values())),
            "groups": len(clip_t),
            "skipped": None if clip_t else _skip_reason(clip_t_skips, cfg.clip),
        },
        "clip_f": {
            "value": _mean(clip_f),
            "rows": len(clip_f),
            "skipped": None if clip_f else ("no --clip weights given" if not cfg.clip else "no view pairs"),
        },
        "fvd": run.fvd,
    }
    summary = {
        "input": str(input_path),
        "config": config_dict(cfg),
        **extra,
        "seconds": round(run.seconds, 3),
        "overall": overall,
        "scores": scores,
        "flagged_groups": [
            {
                "key": g["key"],
                "epi_symmetric_median": g["epi_symmetric_median"],
                "flagged_views": g["flagged_views"],
                "worst_view": g["worst_view"],
            }
            for g in groups
            if g["flagged"]
        ],
        "groups": groups,
        "skipped_groups": skipped,
        "errors": run.errors,
    }
    return summary, rows


def _skip_reason(counts: dict[str, int], weights: str | None) -> str:
    if not weights:
        return "no --clip weights given"
    return "; ".join(f"{k} ({n} groups)" for k, n in counts.items()) or "no groups"


# --- writing ------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA) if rows else ROW_SCHEMA.empty_table()
    with fsio.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_outputs(
    out: Path, run: RunResult, cfg: EvalConfig, input_path: Path, extra: dict[str, Any], report_groups: int = 5
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary, rows = build_summary(run, cfg, input_path, extra)
    write_rows(out / EVAL_PARQUET, rows)
    fsio.write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2, default=_json_default))
    figures = draw_worst(run, summary, rows, cfg, report_groups)
    fsio.write_text(out / REPORT_HTML, render_html(summary, figures))
    return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# --- figures ----------------------------------------------------------------------------


def worst_rows(summary: dict[str, Any], rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """For the ``n`` worst groups (largest epipolar error, else fewest matched pixels), their worst row."""

    def group_badness(g: dict[str, Any]) -> tuple:
        e = g["epi_symmetric_median"]
        return (e is not None, e if e is not None else -g["matched_pixels_mean"])

    worst = sorted(summary["groups"], key=group_badness, reverse=True)[:n]
    picked = []
    for g in worst:
        cand = [r for r in rows if f"{r['dataset']}/{r['group_id']}" == g["key"]]
        with_err = [r for r in cand if r["epi_symmetric_median"] is not None and r["camera_flagged"] is not None]
        picked.append(
            max(with_err, key=lambda r: r["epi_symmetric_median"])
            if with_err
            else min(cand, key=lambda r: r["inliers"])
        )
    return picked


def draw_worst(
    run: RunResult, summary: dict[str, Any], rows: list[dict[str, Any]], cfg: EvalConfig, n: int
) -> list[dict[str, Any]]:
    by_key = {g.key: g for g in run.groups}
    figs = []
    for r in worst_rows(summary, rows, n):
        g = by_key[f"{r['dataset']}/{r['group_id']}"]
        try:
            img = draw_pair(g, r["view_a"], r["view_b"], r["frame_index"], cfg)
        except Exception as e:  # a figure must never cost the report
            log.warning("could not draw %s %s-%s: %s", g.key, r["view_a"], r["view_b"], e)
            continue
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            figs.append({"row": r, "jpeg_b64": base64.b64encode(jpg.tobytes()).decode()})
    return figs


def _err_color(d: float) -> tuple[int, int, int]:
    if d <= 1.0:
        return (40, 220, 40)
    if d <= 2.0:
        return (240, 220, 30)
    return (240, 40, 40)


def draw_pair(
    g: GroupRef,
    view_a: str,
    view_b: str,
    frame_index: int,
    cfg: EvalConfig,
    max_lines: int = 40,
    max_epilines: int = 10,
    min_width: int = 480,
) -> np.ndarray:
    """Side-by-side RGB image: inlier matches coloured by stated-camera error, epipolar lines in view b."""
    views = {v.view_id: v for v in g.views}
    imgs, cams = [], []
    for vid in (view_a, view_b):
        f, cam, _ = _fit_frames(load_view_frames(g, views[vid], [frame_index]), views[vid].camera, cfg.max_side)
        imgs.append(f[0])
        cams.append(cam)
    matcher = build_matcher(cfg)
    m = matcher.match(matcher.detect(imgs[0]), matcher.detect(imgs[1]))
    pa, pb = m.pts_a[m.inliers], m.pts_b[m.inliers]
    F = None
    if cams[0] is not None and cams[1] is not None:
        try:
            F = epipolar.fundamental_from_cameras(cams[0], cams[1])
        except ValueError:
            F = None
    err = (
        epipolar.symmetric_epipolar_distance(F, epipolar.to_continuous(pa), epipolar.to_continuous(pb))
        if F is not None and len(pa)
        else np.zeros(len(pa))
    )
    # Small frames are enlarged and dimmed so the lines stay readable; geometry is scaled to match.
    scale = max(1.0, min_width / max(imgs[0].shape[1], imgs[1].shape[1]))
    shown = [
        _dim(cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else im)
        for im in imgs
    ]
    (ha, wa), (hb, wb) = shown[0].shape[:2], shown[1].shape[:2]
    canvas = np.zeros((max(ha, hb), wa + wb + GAP, 3), np.uint8)
    canvas[:ha, :wa], canvas[:hb, wa + GAP :] = shown[0], shown[1]
    off = wa + GAP
    if F is not None and len(pa):
        _draw_epilines(canvas, F, pa, err, off, imgs[1].shape[1], scale, max_epilines)
    step = max(1, int(math.ceil(len(pa) / max_lines)))
    for i in range(0, len(pa), step):
        c = _err_color(err[i]) if F is not None else (60, 160, 255)
        a = _pt(pa[i], scale, 0)
        b = _pt(pb[i], scale, off)
        cv2.line(canvas, a, b, c, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 3, c, -1, cv2.LINE_AA)
        cv2.circle(canvas, b, 3, c, -1, cv2.LINE_AA)
    return canvas


GAP = 8


def _dim(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float32) * 0.55).astype(np.uint8)


def _pt(p: np.ndarray, scale: float, x_off: int) -> tuple[int, int]:
    """OpenCV keypoint -> drawing coordinates of the (scaled) canvas."""
    return (int(round((p[0] + 0.5) * scale - 0.5)) + x_off, int(round((p[1] + 0.5) * scale - 0.5)))


def _draw_epilines(
    canvas: np.ndarray, F: np.ndarray, pa: np.ndarray, err: np.ndarray, x_off: int, wb: int, scale: float, n: int
) -> None:
    """The stated cameras' epipolar lines in view b for a few points of view a."""
    idx = np.linspace(0, len(pa) - 1, min(n, len(pa))).astype(int)
    lines = epipolar.epipolar_lines(F, epipolar.to_continuous(pa[idx]))
    for (a, b, c), e in zip(lines, err[idx]):
        if not np.isfinite([a, b, c]).all() or abs(b) < 1e-9:
            continue
        # a*x + b*y + c = 0 in continuous coordinates of view b; scaled to the canvas.
        xs = np.array([0.0, float(wb)])
        ys = -(a * xs + c) / b
        p0 = (int(round(xs[0] * scale)) + x_off, int(round(ys[0] * scale)))
        p1 = (int(round(xs[1] * scale)) + x_off - 1, int(round(ys[1] * scale)))
        cv2.line(canvas, p0, p1, _err_color(float(e)), 1, cv2.LINE_AA)


# --- html ------------------------------------------------------------------------------------


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def render_html(summary: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    o, s = summary["overall"], summary["scores"]
    cfg = summary["config"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>SynCam eval report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#eee}.bad{background:#fdd}img{max-width:100%;border:1px solid #888}code{background:#f4f4f4}</style></head><body>",
        f"<h1>SynCam eval: {html.escape(summary['input'])}</h1>",
        f"<p>Matcher <code>{html.escape(cfg['matcher'])}</code>, {cfg['frames']} frame(s) per video group, "
        f"flag threshold {cfg['flag_px']} px (median symmetric epipolar distance of RANSAC inliers under the stated cameras; "
        f"pairs with fewer than {cfg['min_inliers']} inliers give no verdict).</p>",
        "<h2>Overall</h2><table>",
    ]
    for k in (
        "groups",
        "groups_evaluated",
        "groups_failed",
        "groups_skipped",
        "rows",
        "matched_pixels_mean",
        "matched_pixels_median",
        "epi_symmetric_median",
        "epi_sampson_median",
        "within_1px",
        "within_2px",
        "groups_flagged",
    ):
        parts.append(f"<tr><th>{k}</th><td>{_fmt(o.get(k))}</td></tr>")
    for k in ("clip_t", "clip_f"):
        v = s[k]
        parts.append(
            f"<tr><th>{k}</th><td>{_fmt(v['value']) if v['value'] is not None else 'skipped: ' + html.escape(str(v['skipped']))}</td></tr>"
        )
    fv = s["fvd"]
    parts.append(
        f"<tr><th>fvd</th><td>{_fmt(fv.get('fvd')) if fv.get('fvd') is not None else 'skipped: ' + html.escape(str(fv.get('skipped')))}</td></tr>"
    )
    parts.append("</table>")
    parts.append(
        "<h2>Groups (worst first)</h2><table><tr><th>group</th><th>views</th><th>matched px (mean)</th><th>epi median px</th>"
        "<th>≤1 px</th><th>≤2 px</th><th>flagged views</th><th>worst view (its best partner, px)</th><th>CLIP-T</th></tr>"
    )
    groups = sorted(
        summary["groups"],
        key=lambda g: (
            g["epi_symmetric_median"] is not None,
            g["epi_symmetric_median"] or -(g["matched_pixels_mean"] or 0),
        ),
        reverse=True,
    )
    for g in groups:
        cls = " class='bad'" if g["flagged"] else ""
        parts.append(
            f"<tr{cls}><td style='text-align:left'>{html.escape(g['key'])}</td><td>{g['views']}</td><td>{_fmt(g['matched_pixels_mean'], 1)}</td>"
            f"<td>{_fmt(g['epi_symmetric_median'])}</td><td>{_fmt(g['within_1px'])}</td><td>{_fmt(g['within_2px'])}</td>"
            f"<td>{html.escape(', '.join(g['flagged_views']))}</td>"
            f"<td>{html.escape(g['worst_view'] or '–')} ({_fmt(g['view_epi_median'].get(g['worst_view']) if g['worst_view'] else None)})</td>"
            f"<td>{_fmt(g.get('clip_t'))}</td></tr>"
        )
    parts.append("</table>")
    if summary["skipped_groups"]:
        parts.append(
            "<h2>Skipped groups</h2><ul>"
            + "".join(
                f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                for k, v in summary["skipped_groups"].items()
            )
            + "</ul>"
        )
    if summary["errors"]:
        parts.append(
            "<h2>Errors</h2><ul>"
            + "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in summary["errors"].items())
            + "</ul>"
        )
    parts.append(
        "<h2>Worst groups, drawn</h2><p>Lines join RANSAC inlier matches; colour = symmetric epipolar distance under the stated cameras "
        "(green ≤ 1 px, yellow ≤ 2 px, red &gt; 2 px; blue when cameras are unknown). Long lines across view b are the stated cameras' "
        "epipolar lines of some view-a points: with correct cameras they pass through the matching points.</p>"
    )
    for f in figures:
        r = f["row"]
        parts.append(
            f"<h3>{html.escape(r['dataset'])}/{html.escape(r['group_id'])}: {html.escape(r['view_a'])} ↔ {html.escape(r['view_b'])}, frame {r['frame_index']}</h3>"
            f"<p>{r['inliers']} matched pixels, epipolar median {_fmt(r['epi_symmetric_median'])} px</p>"
            f"<img src='data:image/jpeg;base64,{f['jpeg_b64']}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)

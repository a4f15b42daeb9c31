"""Summaries of a shard dataset from its index alone, and a plot of a few groups' camera rigs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from syncam_data.shards.reader import ShardReader


def summarize(reader: ShardReader) -> dict[str, Any]:
    """Counts per dataset/kind, resolution and frame-count histograms, caption coverage (index only)."""
    reader.ensure_columns("media_bytes")  # a dataset written by another tool may lack it
    idx = reader.index
    rows = idx.select(
        ["dataset", "kind", "group_id", "width", "height", "num_frames", "caption", "c2w", "media_bytes"]
    ).to_pylist()
    per: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = f"{r['dataset']}/{r['kind']}"
        d = per.setdefault(key, {"views": 0, "groups": set(), "captioned_groups": set(), "bytes": 0, "with_cameras": 0})
        d["views"] += 1
        d["groups"].add(r["group_id"])
        d["bytes"] += r["media_bytes"]
        if r["caption"]:
            d["captioned_groups"].add(r["group_id"])
        if r["c2w"] is not None:
            d["with_cameras"] += 1
    by_source = {
        k: {
            "views": v["views"],
            "groups": len(v["groups"]),
            "caption_coverage": len(v["captioned_groups"]) / max(1, len(v["groups"])),
            "camera_coverage": v["with_cameras"] / max(1, v["views"]),
            "media_mb": v["bytes"] / 1e6,
        }
        for k, v in sorted(per.items())
    }
    return {
        "root": str(reader.root),
        "views": idx.num_rows,
        "groups": len({(r["dataset"], r["group_id"]) for r in rows}),
        "shards": len(reader.manifest.get("shards", [])),
        "by_source": by_source,
        "resolutions": dict(Counter(f"{r['height']}x{r['width']}" for r in rows).most_common()),
        "frames": dict(sorted(Counter(int(r["num_frames"]) for r in rows).items())),
        "caption_coverage": sum(1 for r in rows if r["caption"]) / max(1, len(rows)),
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['root']}: {s['views']} views in {s['groups']} groups, {s['shards']} shard(s)", ""]
    lines.append(f"{'dataset/kind':40s} {'groups':>7s} {'views':>7s} {'MB':>9s} {'captions':>9s} {'cameras':>8s}")
    for k, v in s["by_source"].items():
        lines.append(
            f"{k:40s} {v['groups']:7d} {v['views']:7d} {v['media_mb']:9.1f} {v['caption_coverage']:9.0%} {v['camera_coverage']:8.0%}"
        )
    lines += ["", "resolution (HxW): " + ", ".join(f"{k} x{v}" for k, v in s["resolutions"].items())]
    lines += ["frames per view:   " + ", ".join(f"{k} x{v}" for k, v in s["frames"].items())]
    lines += [f"caption coverage:  {s['caption_coverage']:.0%} of views"]
    return "\n".join(lines)


def plot_rigs(reader: ShardReader, out_png: Path, max_groups: int = 4, seed: int = 0) -> list[str]:
    """Draw the camera rigs of up to ``max_groups`` groups with cameras (3-D, frustums, view ids). Returns group ids drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for (ds, gid), rows in reader.groups().items():
        cams = [reader.index.column("c2w")[i].as_py() for i in rows]
        if len(rows) > 1 and all(c is not None for c in cams):
            groups[(ds, gid)] = rows
    keys = sorted(groups)
    if len(keys) > max_groups:
        rng = np.random.default_rng(seed)
        keys = [keys[i] for i in sorted(rng.choice(len(keys), max_groups, replace=False))]
    n = max(1, len(keys))
    cols = min(n, 2)
    rws = (n + cols - 1) // cols
    fig = plt.figure(figsize=(6 * cols, 5.2 * rws))
    for k, key in enumerate(keys):
        ax = fig.add_subplot(rws, cols, k + 1, projection="3d")
        _draw_group(ax, reader, groups[key])
        ax.set_title(f"{key[0]}/{key[1]} ({len(groups[key])} views)", fontsize=9)
    if not keys:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no multi-view group with cameras", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return [f"{a}/{b}" for a, b in keys]


def _draw_group(ax, reader: ShardReader, rows: list[int]) -> None:
    c2ws = [np.asarray(reader.index.column("c2w")[i].as_py(), dtype=np.float64).reshape(3, 4) for i in rows]
    Ks = [reader.index.column("K")[i].as_py() for i in rows]
    sizes = [(reader.index.column("width")[i].as_py(), reader.index.column("height")[i].as_py()) for i in rows]
    views = [reader.index.column("view_id")[i].as_py() for i in rows]
    pos = np.array([c[:, 3] for c in c2ws])
    span = float(np.ptp(pos, axis=0).max()) if len(pos) > 1 else 1.0
    scale = max(span * 0.12, 1e-3)
    colors = matplotlib_colors(len(rows))
    for c2w, K, (w, h), vid, col in zip(c2ws, Ks, sizes, views, colors):
        R, t = c2w[:, :3], c2w[:, 3]
        fx, fy, cx, cy = K if K is not None else (w, w, w / 2, h / 2)
        corners = np.array([[(u - cx) / fx, (v - cy) / fy, 1.0] for u, v in ((0, 0), (w, 0), (w, h), (0, h))]) * scale
        wc = corners @ R.T + t
        for c in wc:
            ax.plot(*zip(t, c), color=col, lw=0.8)
        loop = np.vstack([wc, wc[:1]])
        ax.plot(loop[:, 0], loop[:, 1], loop[:, 2], color=col, lw=0.8)
        # Camera "down" (+y) tick marks image-up orientation mistakes.
        ax.plot(*zip(t, t + R[:, 1] * scale * 0.5), color="k", lw=0.6)
        ax.text(*t, vid, fontsize=6)
    # Optical axes converge on the look-at centre for a rig; draw them towards their closest point.
    centre = _closest_point_to_axes(c2ws)
    if centre is not None:
        ax.scatter(*centre, color="red", marker="x", s=30)
        for c2w in c2ws:
            t, z = c2w[:, 3], c2w[:, 2]
            reach = max(float(np.dot(centre - t, z)), 0.0)
            ax.plot(*zip(t, t + z * reach), color="grey", lw=0.5, ls="--")
    ax.scatter(pos[:, 0], pos[:, 1], pos[:, 2], color="k", s=4)
    _equal_axes(ax, np.vstack([pos] + ([centre[None]] if centre is not None else [])))
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_zlabel("z (m, up)")


def matplotlib_colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _closest_point_to_axes(c2ws: list[np.ndarray]) -> np.ndarray | None:
    if len(c2ws) < 2:
        return None
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c in c2ws:
        d = c[:, 2] / np.linalg.norm(c[:, 2])
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c[:, 3]
    if np.linalg.cond(A) > 1e8:
        return None
    return np.linalg.solve(A, b)


def _equal_axes(ax, pts: np.ndarray) -> None:
    mid = (pts.max(0) + pts.min(0)) / 2
    r = max(float(np.ptp(pts, axis=0).max()) / 2, 0.5)
    ax.set_xlim(mid[0] - r, mid[0] + r)
    ax.set_ylim(mid[1] - r, mid[1] + r)
    ax.set_zlim(mid[2] - r, mid[2] + r)

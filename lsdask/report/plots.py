"""The run report's plots: matplotlib figures (``Figure``, no pyplot) written as PNG files.

Each function takes plain data (ledger rows, FITS columns) and a path, writes the PNG
atomically and returns the path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..atomic import atomic_path

#: Brick states on the sky map, in legend order, with their colours.
STATE_COLORS = {"done": "tab:green", "failed": "tab:red", "blocked": "tab:orange",
                "running": "tab:blue", "to do": "lightgrey"}
BAND_COLORS = {"g": "tab:green", "r": "tab:red", "i": "tab:brown", "z": "tab:purple",
               "Y": "black"}


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG) atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def unwrap_ra(ra: np.ndarray) -> np.ndarray:
    """RA continuous across 0/360 when the bricks straddle it (shown as negative RA)."""
    ra = np.asarray(ra, float)
    if len(ra) and ra.max() - ra.min() > 180.0:
        return np.where(ra > 180.0, ra - 360.0, ra)
    return ra


def _boxes(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) ra1, ra2, dec1, dec2 -> (n, 4, 2) polygon corners."""
    ra1, ra2, d1, d2 = (boxes[:, i] for i in range(4))
    return np.stack([np.stack([ra1, d1], 1), np.stack([ra2, d1], 1),
                     np.stack([ra2, d2], 1), np.stack([ra1, d2], 1)], 1)


def _sky_axes(ax, boxes: np.ndarray) -> None:
    pad = 0.1
    ax.set_xlim(boxes[:, 1].max() + pad, boxes[:, 0].min() - pad)  # RA grows to the left
    ax.set_ylim(boxes[:, 2].min() - pad, boxes[:, 3].max() + pad)
    ax.set_xlabel("RA (deg)")
    ax.set_ylabel("Dec (deg)")
    ax.set_aspect(1.0 / max(np.cos(np.radians(boxes[:, 2:].mean())), 0.1))


def brick_boxes(bricks: Sequence[str]) -> np.ndarray:
    """(n, 4) RA/Dec edges of bricks by name, RA unwrapped."""
    from ..survey.bricks import brick_grid

    grid = brick_grid()
    b = [grid.brick(n) for n in bricks]
    out = np.array([[x.ra1, x.ra2, x.dec1, x.dec2] for x in b], float).reshape(-1, 4)
    shift = unwrap_ra(out[:, 0]) - out[:, 0]
    out[:, :2] += shift[:, None]
    return out


def sky_states(bricks: Sequence[str], states: Sequence[str], path: Path) -> Path:
    """Bricks on the sky, coloured by state (done / failed / blocked / running / to do)."""
    boxes = brick_boxes(bricks)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    edges = dict(edgecolors="white", linewidths=0.5) if len(boxes) < 2000 else {}
    ax.add_collection(PolyCollection(_boxes(boxes), facecolors=[STATE_COLORS[s] for s in states],
                                     **edges))
    _sky_axes(ax, boxes)
    n = {s: list(states).count(s) for s in STATE_COLORS}
    ax.legend(handles=[Patch(color=c, label=f"{s} ({n[s]})") for s, c in STATE_COLORS.items()],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title(f"{len(bricks)} bricks by state")
    return save(fig, path)


def sky_depth(bricks: Sequence[str], depth: dict[str, np.ndarray], path: Path) -> Path:
    """Median 5-sigma point-source depth per brick, one panel per band."""
    boxes = brick_boxes(bricks)
    fig = Figure(figsize=(4.5 * len(depth), 4))
    for ax, (band, d) in zip(np.atleast_1d(fig.subplots(1, len(depth))), depth.items(),
                             strict=True):
        ok = d > 0
        pc = PolyCollection(_boxes(boxes[ok]), array=d[ok], cmap="viridis", edgecolors="none")
        ax.add_collection(pc)
        _sky_axes(ax, boxes)
        fig.colorbar(pc, ax=ax, shrink=0.8, label=f"{band} psfdepth (AB mag)")
        ax.set_title(f"{band}: {ok.sum()} bricks")
    return save(fig, path)


def durations(tasks: list[dict], path: Path, ncol: int = 4) -> Path:
    """Histogram of task wall times, one panel per stage (stages of one task left out when
    others have more)."""
    n = Counter(t["stage"] for t in tasks)
    stages = [s for s in n if n[s] > 1] or list(n)
    nrow = -(-len(stages) // ncol)
    fig = Figure(figsize=(3.2 * min(ncol, len(stages)), 2.6 * nrow))
    axes = np.asarray(fig.subplots(nrow, min(ncol, len(stages)), squeeze=False)).ravel()
    for ax, st in zip(axes, stages, strict=False):
        w = np.array([t["wall"] for t in tasks if t["stage"] == st], float)
        ax.hist(w, bins=min(30, max(5, len(w) // 3)), color="tab:blue")
        ax.set_title(f"{st} ({len(w)} tasks)", fontsize=9)
        ax.set_xlabel("wall (s)")
    for ax in axes[len(stages):]:
        ax.set_visible(False)
    return save(fig, path)


def memory(tasks: list[dict], path: Path) -> Path:
    """Peak memory (GB) against wall time, coloured by stage."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for st in dict.fromkeys(t["stage"] for t in tasks):
        ts = [t for t in tasks if t["stage"] == st]
        ax.scatter([t["wall"] for t in ts], [t["peak_rss"] / 1e9 for t in ts], s=12, label=st)
    walls = [t["wall"] for t in tasks]
    if max(walls) > 30 * min(walls):
        ax.set_xscale("log")
    ax.set_xlabel("wall (s)")
    ax.set_ylabel("peak memory (GB)")
    ax.legend(fontsize=8)
    return save(fig, path)


#: Attempts that did not succeed, each state in its own colour on the timeline.
ATTEMPT_COLORS = {"failed": "tab:red", "abandoned": "tab:gray"}
#: Stage colours on the timeline: matplotlib's tab10 without its red and grey.
STAGE_COLORS = [f"C{i}" for i in (0, 1, 2, 4, 5, 6, 8, 9)]


def timeline(attempts: list[dict], run_starts: Sequence[float], path: Path) -> Path:
    """One lane per worker, a bar per attempt (ledger ``attempts`` rows) from its start to its
    end: succeeded ones coloured by stage, failed ones red with a black cross at their end,
    abandoned ones (their driver stopped) grey; each run starts at a dotted line. An attempt
    with no known start is its end's cross alone."""
    starts = [a["start"] if a["start"] is not None else a["end"] for a in attempts]
    t0 = min(starts)
    span = max(max(a["end"] for a in attempts) - t0, 1e-3)
    unit, scale = ("h", 3600.0) if span > 7200 else ("min", 60.0) if span > 600 else ("s", 1.0)
    workers = sorted({a["worker"] or "driver" for a in attempts})
    lane = {w: i for i, w in enumerate(workers)}
    stages = list(dict.fromkeys(a["stage"] for a in attempts if a["state"] == "succeeded"))
    cmap = {st: STAGE_COLORS[i % len(STAGE_COLORS)] for i, st in enumerate(stages)}
    fig = Figure(figsize=(9, min(1.2 + 0.35 * len(workers), 10)))
    ax = fig.subplots()
    segs = [[((s - t0) / scale, lane[a["worker"] or "driver"]),
             ((a["end"] - t0) / scale, lane[a["worker"] or "driver"])]
            for s, a in zip(starts, attempts, strict=True)]
    colors = [cmap[a["stage"]] if a["state"] == "succeeded"
              else ATTEMPT_COLORS.get(a["state"], ATTEMPT_COLORS["failed"]) for a in attempts]
    ax.add_collection(LineCollection(segs, colors=colors,
                                     linewidths=max(1.0, min(8.0, 200 / len(workers)))))
    bad = [s[1] for s, a in zip(segs, attempts, strict=True) if a["state"] == "failed"]
    if bad:
        ax.scatter(*np.array(bad).T, marker="x", color="black", zorder=3)
    for r in run_starts:
        ax.axvline((r - t0) / scale, color="grey", ls=":", lw=1)
    ax.set_xlim(-0.02 * span / scale, 1.02 * span / scale)
    ax.set_ylim(-0.7, len(workers) - 0.3)
    if len(workers) <= 30:
        ax.set_yticks(range(len(workers)), [w.replace("tcp://", "") for w in workers], fontsize=7)
    else:  # too many to name
        ax.set_yticks([])
        ax.set_ylabel(f"{len(workers)} workers")
    ax.set_xlabel(f"time since the first attempt ({unit})")
    n = Counter(a["state"] for a in attempts)
    handles = [Patch(color=c, label=s) for s, c in cmap.items()]
    handles += [Patch(color=c, label=f"{s} attempt ({n[s]})")
                for s, c in ATTEMPT_COLORS.items() if n[s]]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def exposures(ccds: dict[str, np.ndarray], quantities: dict[str, str], camera: str,
              path: Path) -> Path:
    """Per band (columns), each quantity (rows: column -> label) against MJD; CCDs with
    ``ccd_cuts != 0`` as red crosses."""
    bands = sorted(set(ccds["filter"].tolist()))
    fig = Figure(figsize=(3.6 * len(bands), 2.0 * len(quantities)))
    axes = np.asarray(fig.subplots(len(quantities), len(bands), sharex=True, squeeze=False))
    cut = ccds["ccd_cuts"] != 0
    base = int(ccds["mjd_obs"].min()) if len(cut) else 0
    for j, band in enumerate(bands):
        inb = ccds["filter"] == band
        for i, (col, label) in enumerate(quantities.items()):
            ax = axes[i, j]
            for sel, kw in ((inb & ~cut, dict(s=6, color=BAND_COLORS.get(band, "C0"))),
                            (inb & cut, dict(s=14, marker="x", color="red", label="cut"))):
                if sel.any():
                    ax.scatter(ccds["mjd_obs"][sel] - base, ccds[col][sel], **kw)
            if i == 0:
                ax.set_title(f"{camera} {band}", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if i == len(quantities) - 1:
                ax.set_xlabel(f"MJD - {base}")
            ax.ticklabel_format(useOffset=False)
            ax.locator_params(axis="x", nbins=4)
            ax.tick_params(labelsize=7)
    if cut.any():
        axes[0, 0].legend(fontsize=7)
    return save(fig, path)

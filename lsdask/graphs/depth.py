"""Stage ``depth``: whole-release depth summary from every brick's depth table.

Inputs: ``coadd/<bri>/<brick>/legacysurvey-<brick>-depth.fits`` (50 bins ``depthlo, depthhi``
and per band ``counts_ptsrc_<b>``, ``counts_gal_<b>``; column names case-insensitive).
Outputs (each atomic):

- ``layout.depth_summary()``: the 50 bins with the summed counts per band (i8) and the
  matching areas ``area_ptsrc_<b>``, ``area_gal_<b>`` (deg^2, pixel (0.262/3600)^2 deg^2);
- ``layout.depth_table()``: one row per brick: BRICKNAME, BRICKID, RA, DEC, per band the
  count arrays [50] and ``psfdepth_<b>``/``galdepth_<b>`` = median depth (bin centre);
- ``layout.depth_plot()``: PNG, area with depth >= x (cumulative) vs x per band, with the
  target depths g 24.0, r 23.4, z 22.5 marked.

Public: :func:`run_depth(layout, client=None, bands=None)` -> summary dict;
:func:`read_depth_tables(layout)` -> Dask DataFrame (one row per brick).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..survey.bricks import BRICK_PIXSCALE, brick_grid

PIXEL_AREA = (BRICK_PIXSCALE / 3600.0) ** 2  # deg^2
TARGETS = {"g": 24.0, "r": 23.4, "z": 22.5}
NBINS = 50


def depth_bricks(layout) -> dict[str, Path]:
    """Brick -> depth table path for bricks that have one (scans ``coadd/``)."""
    root = layout.coadd_root
    out = {}
    if root.is_dir():
        for p in sorted(root.glob("*/*/legacysurvey-*-depth.fits")):
            brick = p.parent.name
            if p.name == f"legacysurvey-{brick}-depth.fits":
                out[brick] = p
    return out


def read_depth(path: str | Path) -> dict[str, np.ndarray]:
    """A brick depth table -> {lower-case column: array}."""
    import fitsio

    try:
        d = fitsio.read(str(path), ext=1)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read depth table: {e}") from e
    cols = {n.lower(): np.asarray(d[n]) for n in d.dtype.names}
    if "depthlo" not in cols or len(cols["depthlo"]) != NBINS:
        raise InputError(f"{path}: not a {NBINS}-bin depth table")
    return cols


def _sum_chunk(paths: list[tuple[str, Path]], bands: list[str]) -> tuple:
    tot = {f"{k}_{b}": np.zeros(NBINS, np.int64) for b in bands for k in ("ptsrc", "gal")}
    rows, errors, edges = [], {}, None
    for brick, p in paths:
        try:
            d = read_depth(p)
        except InputError as e:
            errors[brick] = str(e)
            continue
        edges = (d["depthlo"], d["depthhi"])
        row = {"brickname": brick}
        for b in bands:
            for k in ("ptsrc", "gal"):
                c = d.get(f"counts_{k}_{b}", np.zeros(NBINS, np.int32)).astype(np.int64)
                tot[f"{k}_{b}"] += c
                row[f"{k}_{b}"] = c
        rows.append(row)
    return tot, rows, errors, edges


def _median_depth(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    n = counts.sum()
    if n == 0:
        return 0.0
    i = int(np.searchsorted(np.cumsum(counts), n / 2.0))
    c = 0.5 * (np.clip(lo[i], 20.0, None) + np.clip(hi[i], None, 25.0))
    return float(c)


def run_depth(layout, client=None, bands: list[str] | None = None,
              bricks_per_task: int = 50) -> dict:
    """Summarise every brick's depth table. Returns
    ``{"bricks", "failed", "area": {band: deg2 with any depth}, "outputs", "seconds"}``."""
    import dask
    import fitsio

    t0 = time.time()
    bands = list(bands or ["g", "r", "z"])
    found = list(depth_bricks(layout).items())
    if not found:
        raise InputError(f"{layout.coadd_root}: no legacysurvey-*-depth.fits tables")
    chunks = [found[i:i + bricks_per_task] for i in range(0, len(found), bricks_per_task)]
    tasks = [dask.delayed(_sum_chunk, pure=False)(c, bands) for c in chunks]
    results = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    tot = {f"{k}_{b}": np.zeros(NBINS, np.int64) for b in bands for k in ("ptsrc", "gal")}
    rows, errors, edges = [], {}, None
    for t, r, e, ed in results:
        for k in tot:
            tot[k] += t[k]
        rows += r
        errors.update(e)
        edges = ed if ed is not None else edges
    if edges is None:
        raise InputError(f"{layout.coadd_root}: no readable depth table")
    lo, hi = edges
    sdt = [("DEPTHLO", "f4"), ("DEPTHHI", "f4")]
    for b in bands:
        sdt += [(f"COUNTS_PTSRC_{b.upper()}", "i8"), (f"COUNTS_GAL_{b.upper()}", "i8"),
                (f"AREA_PTSRC_{b.upper()}", "f8"), (f"AREA_GAL_{b.upper()}", "f8")]
    s = np.zeros(NBINS, dtype=sdt)
    s["DEPTHLO"], s["DEPTHHI"] = lo, hi
    for b in bands:
        for k in ("ptsrc", "gal"):
            s[f"COUNTS_{k.upper()}_{b.upper()}"] = tot[f"{k}_{b}"]
            s[f"AREA_{k.upper()}_{b.upper()}"] = tot[f"{k}_{b}"] * PIXEL_AREA
    grid = brick_grid()
    rows.sort(key=lambda r: r["brickname"])
    bdt = [("BRICKNAME", "S8"), ("BRICKID", "i4"), ("RA", "f8"), ("DEC", "f8")]
    for b in bands:
        bdt += [(f"COUNTS_PTSRC_{b.upper()}", "i4", (NBINS,)),
                (f"COUNTS_GAL_{b.upper()}", "i4", (NBINS,)),
                (f"PSFDEPTH_{b.upper()}", "f4"), (f"GALDEPTH_{b.upper()}", "f4")]
    per = np.zeros(len(rows), dtype=bdt)
    for i, r in enumerate(rows):
        br = grid.brick(r["brickname"])
        per[i]["BRICKNAME"] = r["brickname"].encode()
        per[i]["BRICKID"], per[i]["RA"], per[i]["DEC"] = br.brickid, br.ra, br.dec
        for b in bands:
            per[i][f"COUNTS_PTSRC_{b.upper()}"] = r[f"ptsrc_{b}"]
            per[i][f"COUNTS_GAL_{b.upper()}"] = r[f"gal_{b}"]
            per[i][f"PSFDEPTH_{b.upper()}"] = _median_depth(r[f"ptsrc_{b}"], lo, hi)
            per[i][f"GALDEPTH_{b.upper()}"] = _median_depth(r[f"gal_{b}"], lo, hi)
    hdr = {"PIXAREA": PIXEL_AREA, "NBRICKS": len(rows)}
    for path, data, ext in ((layout.depth_summary(), s, "DEPTH_SUMMARY"),
                            (layout.depth_table(), per, "DEPTH")):
        with atomic_path(path) as tmp:
            fitsio.write(str(tmp), data, extname=ext, header=hdr, clobber=True)
    plot_depth(s, bands, layout.depth_plot())
    return {"bricks": len(rows), "failed": errors,
            "area": {b: float(s[f"AREA_PTSRC_{b.upper()}"].sum()) for b in bands},
            "outputs": [str(layout.depth_summary()), str(layout.depth_table()),
                        str(layout.depth_plot())],
            "seconds": round(time.time() - t0, 3)}


def plot_depth(summary: np.ndarray, bands: list[str], path: str | Path) -> None:
    """PNG: cumulative area (deg^2) with 5-sigma point-source depth >= x, per band."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch

    colors = {"g": "tab:green", "r": "tab:red", "z": "tab:purple"}
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    lo = np.clip(summary["DEPTHLO"], 20.0, None)
    for b in bands:
        area = summary[f"AREA_PTSRC_{b.upper()}"]
        cum = np.cumsum(area[::-1])[::-1]  # area with depth >= depthlo
        ax.step(lo, cum, where="post", color=colors.get(b), label=f"{b}")
        if b in TARGETS:
            ax.axvline(TARGETS[b], color=colors.get(b), ls="--", lw=1)
            ax.text(TARGETS[b], 0, f" {b} target",
                    color=colors.get(b), rotation=90, va="bottom", fontsize=7)
    ax.set_xlabel("5-sigma point-source depth (AB mag)")
    ax.set_ylabel("area with depth >= x (deg$^2$)")
    ax.set_xlim(20, 25)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def read_depth_tables(layout):
    """The per-brick depth table (``layout.depth_table()``) scalar columns as a Dask
    DataFrame."""
    import dask.dataframe as dd
    import fitsio
    import pandas as pd

    p = layout.depth_table()
    if not p.is_file():
        raise InputError(f"{p}: missing (run depth)")
    d = fitsio.read(str(p))
    cols = [c for c in d.dtype.names if d.dtype[c].shape == ()]
    frame = {c: d[c].astype(d.dtype[c].newbyteorder("=")) if d.dtype[c].kind not in "SU"
             else d[c] for c in cols}
    return dd.from_pandas(pd.DataFrame(frame), npartitions=1)


# -- the stage protocol (see graphs/base.py) -------------------------------------------------
def stage_inputs(ctx) -> dict:
    """What the summary is made from now: each brick's depth table (size, mtime) and bands."""
    tables = {}
    for b, p in depth_bricks(ctx.layout).items():
        st = p.stat()
        tables[b] = [st.st_size, st.st_mtime_ns]
    return {"tables": tables, "bands": list(ctx.config.bands)}


def is_done(ctx, inputs: dict) -> bool:
    from ..done import fingerprint, stamp_ok

    layout = ctx.layout
    return stamp_ok(layout.stamp(layout.depth_summary()), fingerprint(inputs))


def stage_task(ctx, inputs: dict, client=None) -> dict:
    from ..done import clean_temps, fingerprint, write_stamp

    layout = ctx.layout
    clean_temps(layout.release_dir)
    out = run_depth(layout, client=client, bands=list(ctx.config.bands))
    write_stamp(layout.stamp(layout.depth_summary()), fingerprint(inputs),
                [p for p in (layout.depth_summary(), layout.depth_table(), layout.depth_plot())
                 if p.is_file()])
    return out


def _stage():
    from .base import WholeStage

    return WholeStage("depth", stage_inputs, is_done, stage_task)


STAGE = _stage()

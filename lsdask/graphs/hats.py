"""Stage ``hats``: the sweeps as a HATS catalogue with a margin cache, for LSDB.

The Parquet sweeps (``parquet/sweeps/sweep-<box>.parquet``, the main sweep columns) are
imported with hats-import (``ImportArguments`` then ``MarginCacheArguments``, run on the
release's Dask client) into ``hats/<name>`` and ``hats/<name>_<r>arcs``; LSDB reads them with
``lsdb.read_hats(catalog, margin_cache=margin)``. Both are built in a hidden folder beside them
and moved into place, then stamped with the sweeps they were made from, so "done" means the
same here as everywhere: the stamp records the current sweeps and every file it lists is there
with its size. The stage is opt-in (``[stages.hats] enabled = true``, ``margin_arcsec``);
hats-import and LSDB are optional (``pip install lsdask[hats]``), imported only when it runs.

API: :func:`run_hats`, :func:`read_hats`, :func:`crossmatch`, :data:`STAGE`.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Margin cache width (arcsec): wider than any match radius used with it.
MARGIN_ARCSEC = 10.0


def _sweep_parquets(layout) -> list[Path]:
    d = layout.sweeps_parquet
    files = sorted(d.glob("sweep-*.parquet")) if d.is_dir() else []
    if not files:
        raise InputError(f"{d}: no sweep Parquet files (run sweeps)")
    return files


def run_hats(layout, client=None, margin_arcsec: float = MARGIN_ARCSEC) -> dict[str, Any]:
    """Import the Parquet sweeps into the release's HATS catalogue and its margin cache
    (replacing what was there); returns ``{"catalog", "margin", "rows", "seconds"}``."""
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.margin_cache.margin_cache_arguments import MarginCacheArguments
    from hats_import.pipeline import pipeline_with_client

    t0 = time.time()
    files = _sweep_parquets(layout)
    cat, margin = layout.hats_catalog, layout.hats_margin(margin_arcsec)
    work = layout.hats_dir / f".build-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True)
    own = None
    try:
        if client is None:
            from distributed import Client, LocalCluster

            own = LocalCluster(n_workers=1, threads_per_worker=1, processes=False)
            client = Client(own)
        common = dict(output_path=work, progress_bar=False, tmp_dir=work / "tmp")
        pipeline_with_client(ImportArguments(
            input_file_list=[str(f) for f in files], file_reader="parquet", ra_column="RA",
            dec_column="DEC", output_artifact_name=cat.name, **common), client)
        pipeline_with_client(MarginCacheArguments(
            input_catalog_path=work / cat.name, margin_threshold=margin_arcsec,
            output_artifact_name=margin.name, **common), client)
        for built, final in ((work / cat.name, cat), (work / margin.name, margin)):
            shutil.rmtree(final, ignore_errors=True)
            built.replace(final)
    finally:
        if own is not None:
            client.close()
            own.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = _total_rows(cat)
    return {"catalog": str(cat), "margin": str(margin), "rows": rows,
            "seconds": round(time.time() - t0, 3)}


def _total_rows(catalog: Path) -> int:
    """``hats_nrows`` of a HATS catalogue's ``hats.properties``."""
    for line in (catalog / "hats.properties").read_text().splitlines():
        k, _, v = line.partition("=")
        if k.strip() == "hats_nrows":
            return int(v.strip())
    raise InputError(f"{catalog}: no hats_nrows in hats.properties")


def read_hats(layout, margin_arcsec: float = MARGIN_ARCSEC, **kwargs):
    """The release's HATS catalogue with its margin cache, as an LSDB catalogue."""
    import lsdb

    return lsdb.read_hats(layout.hats_catalog, margin_cache=layout.hats_margin(margin_arcsec),
                          **kwargs)


def crossmatch(layout, ra, dec, radius_arcsec: float = 1.5,
               margin_arcsec: float = MARGIN_ARCSEC):
    """LSDB's nearest-neighbour crossmatch of positions against the HATS catalogue: a pandas
    DataFrame, one row per matched position (``INDEX`` is its position in ``ra``/``dec``),
    the catalogue's columns suffixed ``_ls``, the distance in ``_dist_arcsec``."""
    import lsdb
    import numpy as np
    import pandas as pd

    ext = pd.DataFrame({"RA": np.asarray(ra, dtype="f8"), "DEC": np.asarray(dec, dtype="f8"),
                        "INDEX": np.arange(len(ra))})
    left = lsdb.from_dataframe(ext, ra_column="RA", dec_column="DEC")
    cat = read_hats(layout, margin_arcsec)
    return left.crossmatch(cat, radius_arcsec=radius_arcsec, n_neighbors=1,
                           suffixes=("", "_ls")).compute()


# -- the stage protocol (see graphs/base.py) -------------------------------------------------
def configured(ctx) -> bool:
    """Opt-in: ``[stages.hats] enabled = true``."""
    return ctx.config.stages.hats.enabled


def stage_inputs(ctx) -> dict:
    """What the HATS catalogue is made from: the sweeps manifest (box -> bricks and their
    tractor checksums; None before the sweeps exist) and the margin width."""
    m = ctx.layout.sweeps_manifest
    return {"sweeps": json.loads(m.read_text()) if m.is_file() else None,
            "margin": ctx.config.stages.hats.margin_arcsec}


def _products(layout, margin_arcsec: float) -> list[Path]:
    return sorted(p for d in (layout.hats_catalog, layout.hats_margin(margin_arcsec))
                  for p in d.rglob("*") if p.is_file())


def is_done(ctx, inputs: dict) -> bool:
    from ..done import fingerprint, stamp_ok

    return stamp_ok(ctx.layout.stamp(ctx.layout.hats_catalog), fingerprint(inputs))


def stage_task(ctx, inputs: dict, client=None) -> dict:
    from ..done import fingerprint, write_stamp

    margin = inputs["margin"]
    out = run_hats(ctx.layout, client=client, margin_arcsec=margin)
    write_stamp(ctx.layout.stamp(ctx.layout.hats_catalog), fingerprint(inputs),
                _products(ctx.layout, margin))
    return out


def _stage():
    from .base import WholeStage

    return WholeStage("hats", stage_inputs, is_done, stage_task, needs=("sweeps",),
                      configured=configured)


STAGE = _stage()

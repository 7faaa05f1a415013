"""Stage ``images``: the CP images of the release, as a table of CCD footprints.

Images are found per camera from their file-name pattern under ``images/``
(``Camera.ooi_glob``), filtered by the exclusion globs and MJD range of
``[stages.images]``. Each image's headers (primary: EXPNUM, FILTER, MJD-OBS,
EXPTIME; each CCD HDU: EXTNAME and the TAN WCS, size) give one row per CCD with
survey-ccds column names, so bricks touched by an exposure are known before its
zeropoints exist. The table is cached in ``layout.image_list`` (Parquet), keyed
by file size and mtime, so reruns read only new or changed files. An image whose
headers cannot be read keeps a single row with ``ok = False`` (its own tasks will
fail as ``input``; nothing else is affected).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..survey.camera import band_of_filter, get_camera, parse_image_filename
from ..survey.layout import ReleaseLayout

log = logging.getLogger(__name__)

IMAGE_CCD_DTYPE = np.dtype([
    ("image_filename", "U200"), ("image_hdu", "i2"), ("camera", "U7"), ("expnum", "i8"),
    ("ccdname", "U5"), ("filter", "U1"), ("exptime", "f4"), ("mjd_obs", "f8"),
    ("width", "i4"), ("height", "i4"), ("crpix1", "f8"), ("crpix2", "f8"),
    ("crval1", "f8"), ("crval2", "f8"), ("cd1_1", "f8"), ("cd1_2", "f8"), ("cd2_1", "f8"),
    ("cd2_2", "f8"), ("ra", "f8"), ("dec", "f8"), ("ccd_cuts", "i4"),
    ("file_size", "i8"), ("file_mtime", "f8"), ("ok", "?"), ("error", "U200"),
])


def discover(layout: ReleaseLayout, cameras: Sequence[str],
             exclude: Sequence[str] = ()) -> list[str]:
    """``image_filename``s (relative to ``images/``) of the cameras' CP ooi images, sorted."""
    root = layout.images_dir
    names: set[str] = set()
    for cam in cameras:
        for p in root.glob(get_camera(cam).ooi_glob):
            rel = p.relative_to(root).as_posix()
            if p.name.startswith("."):
                continue  # temporary files of atomic writes
            if any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(p.name, pat) for pat in exclude):
                continue
            if parse_image_filename(p.name) is None:
                continue
            names.add(rel)
    return sorted(names)


def read_footprints(layout: ReleaseLayout, image_filename: str) -> np.ndarray:
    """One row per CCD HDU of an image (``ok=False`` single row when unreadable)."""
    import fitsio

    from ..survey.wcs import TanWCS

    path = layout.image(image_filename)
    st = path.stat()
    info = parse_image_filename(path.name) or {}
    try:
        with fitsio.FITS(str(path)) as f:
            ph = f[0].read_header()
            rows = []
            for hdu in f[1:]:
                if hdu.get_exttype() != "IMAGE_HDU":
                    continue
                h = hdu.read_header()
                dims = hdu.get_dims()
                if len(dims) != 2:
                    continue
                hh, ww = dims
                wcs = TanWCS.from_header(h, ww, hh)
                ra, dec = wcs.center()
                rows.append((image_filename, hdu.get_extnum(), info.get("camera", ""),
                             int(ph.get("EXPNUM", h.get("EXPNUM", 0)) or 0),
                             str(h.get("EXTNAME", h.get("CCDNAME", ""))).strip()[:5],
                             band_of_filter(ph.get("FILTER", info.get("band", ""))),
                             float(ph.get("EXPTIME", 0) or 0),
                             float(ph.get("MJD-OBS", h.get("MJD-OBS", 0)) or 0),
                             ww, hh, wcs.crpix1, wcs.crpix2, wcs.crval1, wcs.crval2,
                             wcs.cd1_1, wcs.cd1_2, wcs.cd2_1, wcs.cd2_2, ra, dec, 0,
                             st.st_size, st.st_mtime, True, ""))
    except Exception as e:  # noqa: BLE001 - unreadable: its own tasks will fail as input
        log.warning("%s: cannot read headers: %s", path, e)
        rows = []
        err = f"{type(e).__name__}: {e}"[:200]
    else:
        err = "no CCD image HDUs" if not rows else ""
    if not rows:
        row = np.zeros(1, IMAGE_CCD_DTYPE)
        row["image_filename"], row["image_hdu"] = image_filename, -1
        row["camera"], row["filter"] = info.get("camera", ""), info.get("band", "")[:1]
        row["file_size"], row["file_mtime"], row["ok"], row["error"] = (
            st.st_size, st.st_mtime, False, err)
        return row
    return np.array(rows, dtype=IMAGE_CCD_DTYPE)


def _read_chunk(layout: ReleaseLayout, names: list[str]) -> np.ndarray:
    parts = [read_footprints(layout, n) for n in names]
    return np.concatenate(parts) if parts else np.zeros(0, IMAGE_CCD_DTYPE)


def load_cache(layout: ReleaseLayout) -> np.ndarray:
    import pyarrow.parquet as pq

    from ..survey.arrowfits import arrow_to_numpy

    path = layout.image_list
    if not path.exists():
        return np.zeros(0, IMAGE_CCD_DTYPE)
    try:
        t = arrow_to_numpy(pq.read_table(path))
        return t.astype(IMAGE_CCD_DTYPE)
    except Exception as e:  # noqa: BLE001 - a bad cache is rebuilt
        log.warning("%s: unreadable image list cache (%s); rebuilding", path, e)
        return np.zeros(0, IMAGE_CCD_DTYPE)


def image_table(layout: ReleaseLayout, names: Sequence[str], client=None,
                chunk: int = 200) -> np.ndarray:
    """CCD footprint rows of ``names``, reading only files new or changed since the cache."""
    import pyarrow.parquet as pq

    from ..survey.arrowfits import numpy_to_arrow

    cache = load_cache(layout)
    if len(cache):
        stamps = {r["image_filename"]: (int(r["file_size"]), float(r["file_mtime"]))
                  for r in cache}
    else:
        stamps = {}
    todo = []
    for n in names:
        try:
            st = os.stat(layout.image(n))
        except FileNotFoundError:
            continue
        if stamps.get(n) != (st.st_size, st.st_mtime):
            todo.append(n)
    wanted = set(names)
    fresh = set(todo)
    old = cache[np.array([fn in wanted and fn not in fresh for fn in cache["image_filename"]],
                         dtype=bool)] if len(cache) else cache
    if todo:
        chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        if client is not None and len(chunks) > 1:
            parts = client.gather(client.map(_read_chunk, [layout] * len(chunks), chunks,
                                             pure=False, key=[f"images-{i}" for i in
                                                              range(len(chunks))]))
        else:
            parts = [_read_chunk(layout, c) for c in chunks]
        new = np.concatenate([old, *parts])
    else:
        new = old
    new = new[np.lexsort((new["image_hdu"], new["image_filename"]))] if len(new) else new
    if todo or len(new) != len(cache):
        layout.image_list.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(layout.image_list) as tmp:
            pq.write_table(numpy_to_arrow(new), tmp)
    return new


def select(table: np.ndarray, mjd_min: float | None = None, mjd_max: float | None = None,
           bands: Sequence[str] | None = None) -> np.ndarray:
    """Rows within the MJD range and bands (unreadable images are kept: they must fail)."""
    keep = np.ones(len(table), dtype=bool)
    ok = table["ok"]
    if mjd_min is not None:
        keep &= ~ok | (table["mjd_obs"] >= mjd_min)
    if mjd_max is not None:
        keep &= ~ok | (table["mjd_obs"] <= mjd_max)
    if bands is not None:
        keep &= ~ok | np.isin(table["filter"], list(bands))
    return table[keep]


def run_images(config, client=None) -> np.ndarray:
    """The release's image table (per CCD), after the configured selections."""
    opts = config.stages.images
    layout = config.layout
    names = discover(layout, config.release.cameras, opts.exclude)
    table = image_table(layout, names, client=client)
    table = select(table, opts.mjd_min, opts.mjd_max, config.bands)
    log.info("images: %d images, %d CCDs", len(np.unique(table["image_filename"])),
             int(table["ok"].sum()))
    return table


def images_in_region(table: np.ndarray, region) -> tuple[list[str], dict[str, list[str]]]:
    """Images (sorted by RA) that touch bricks of ``region``, and brick -> its images."""
    from ..survey.bricks import brick_grid
    from ..survey.touching import ccd_brick_pairs

    ok = table[table["ok"]]
    ci, bi = ccd_brick_pairs(ok)
    grid = brick_grid().table
    if region is not None:
        inside = region.contains(grid["ra"][bi], grid["dec"][bi])
        ci, bi = ci[inside], bi[inside]
    brick_images: dict[str, set[str]] = {}
    names = grid["brickname"]
    for c, b in zip(ci, bi, strict=True):
        brick_images.setdefault(str(names[b]), set()).add(str(ok["image_filename"][c]))
    touching = {str(n) for n in ok["image_filename"][ci]}
    bad = {str(n) for n in table["image_filename"][~table["ok"]]}
    first = {}
    for r in table:
        first.setdefault(str(r["image_filename"]), float(r["ra"]))
    images = sorted(touching | bad, key=lambda n: (first[n], n))
    order = {str(names[b]): (float(grid["ra"][b]), float(grid["dec"][b])) for b in np.unique(bi)}
    bricks = {b: sorted(brick_images[b]) for b in sorted(brick_images, key=lambda b: order[b])}
    return images, bricks


def image_key(image_filename: str) -> str:
    """Ledger key of an image's tasks: its base name (``c4d_..._ooi_g_ls9``)."""
    return Path(image_filename).name.split(".", 1)[0]

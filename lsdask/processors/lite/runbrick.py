"""The lite runbrick: coadds, detection, forced photometry and a DR9-format catalogue per brick.

Steps (``run_runbrick``):

1. select the CCDs that touch the brick (``ccd_cuts == 0``, requested bands);
2. estimate the memory; :class:`~lsdask.processors.BrickMemoryError` above
   ``options.memory_limit_gb``;
3. per CCD (with ``options.threads`` > 1 in that many forked worker processes,
   results handed back through /dev/shm): read only the overlap, subtract the
   spline sky, scale to nanomaggies, resample onto the brick grid
   (:mod:`.resample`); accumulate inverse-variance coadds in table order
   (:mod:`.coadd`); checkpoint the coadds; with several threads, start writing
   the coadd images in forked processes while the next steps run;
4. detect on a flat-SED matched-filter S/N map with the brick's Gaia point sources as
   existing sources (:mod:`.detect`, :mod:`.refstars`);
5. joint position steps with the PSF model over every CCD, from the second on with every
   other source subtracted as a point source (blends; ``BLEND_PASSES``), then forced PSF
   photometry and round PSF/REX/DEV light-profile fits on every CCD, the others still
   subtracted (threads again; the calibrated CCD pixels are kept in memory from step 3
   when the memory limit allows, as legacypipe keeps its tims, else read again, e.g.
   after resuming), a last position step, elliptical EXP/DEV fits of the sources the
   round fits call galaxies (their cutouts taken in one more pass over the CCDs), and
   aperture photometry on the coadds (:mod:`.photometry`, :mod:`.galfit`);
6. write the coadds, maskbits, depth histograms, ccds table, JPEG, blob map,
   then the tractor catalogue and ``brick-<brick>.sha256sum`` (:mod:`.brickio`).

Each step is timed as a phase (:mod:`lsdask.phases`, in ``timings`` of the summary too):
``select``, ``calibs`` (calibrations fitted on the fly), ``coadds`` (read, calibrate,
resample and accumulate: one step, interleaved across the worker processes),
``checkpoint``, ``detect``, ``photometry`` and ``write``.

This is not legacypipe's runbrick: no Tractor (sources are fitted one at a time with
their neighbours subtracted, not simultaneously; no Sersic model), no WISE forced
photometry, no dust map (``ebv`` is 0 and ``mw_transmission`` 1; header ``EBVMAP = 'none'``).

Test hook: with environment variable ``LSDASK_RUNBRICK_TEST_KILL_AFTER=coadds``
the process SIGKILLs itself right after writing the coadds checkpoint (used by
the resume test; never set it in production).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...errors import ConfigError, InputError
from ...phases import phase
from ...survey.bricks import Brick, brick_grid
from ...survey.layout import ReleaseLayout
from ...survey.releases import DEFAULT_RELEASE
from ...survey.tractor import OPTICAL_BANDS, empty_tractor, validate_tractor, write_tractor
from ...survey.wcs import TanWCS
from .. import BrickMemoryError
from . import brickio, checkpoint, galfit, refstars
from .ccdimage import CcdImage, calib_path, overlap_box, read_ccd_image
from .coadd import BandCoadd, resample_ccd
from .detect import Detections, detect
from .photometry import (
    AP_RADII,
    BandAccum,
    accumulate,
    aperture_phot,
    band_results,
    fiber_fraction,
    forced_phot_ccd,
    fracflux,
    gaussian_model_image,
    point_model,
)

log = logging.getLogger(__name__)

#: Refine the sources the round fits call galaxies with elliptical EXP / DEV fits (False:
#: the round PSF / REX / DEV fits only; for benchmarks).
ELLIPTICAL_FITS = True
#: Measure each source with the others subtracted as point sources from the second pass on
#: (False: every source alone, as a fit of isolated sources; for benchmarks), and the
#: passes over the CCDs between the first position step and the final pass that do so.
SUBTRACT_NEIGHBOURS = True
BLEND_PASSES = 2

#: No new detections this close to a reference source (legacypipe: 4 pixels of 0.262").
REF_EXCLUSION_ARCSEC = 4 * 0.262

KILL_ENV = "LSDASK_RUNBRICK_TEST_KILL_AFTER"
DEFAULT_KERNEL = "lanczos3"
#: Coadd kinds written per band -> key in the band's coadd dict.
COADD_PRODUCTS = {"image": "image", "invvar": "invvar", "nexp": "nexp", "depth": "psfdepth",
                  "galdepth": "galdepth", "psfsize": "psfsize", "model": "model", "chi2": "chi2"}


def _s(v) -> str:
    return v.decode().strip() if isinstance(v, bytes) else str(v).strip()


def runbrick_done(layout: ReleaseLayout, brickname: str) -> bool:
    """True when the brick's tractor catalogue and sha256sum exist and the catalogue validates."""
    path = layout.tractor(brickname)
    if not path.is_file() or not layout.sha256sum(brickname).is_file():
        return False
    try:
        validate_tractor(path, brickname)
    except InputError as e:
        log.warning("%s", e)
        return False
    return True


def brick_wcs(brick: Brick, options) -> TanWCS:
    """The brick's pixel grid (``width x height`` at ``pixscale``), or the ``zoom``
    [x0, x1, y0, y1] sub-grid of it (0-based, half-open; as legacypipe's ``--zoom``)."""
    wcs = brick.wcs(int(options.width), int(options.height), float(options.pixscale))
    zoom = getattr(options, "zoom", None)
    if zoom:
        x0, x1, y0, y1 = (int(v) for v in zoom)
        if not (0 <= x0 < x1 <= wcs.width and 0 <= y0 < y1 <= wcs.height):
            raise ConfigError(f"zoom {list(zoom)} is outside the {wcs.width}x{wcs.height} "
                              "brick grid")
        wcs = dataclasses.replace(wcs, crpix1=wcs.crpix1 - x0, crpix2=wcs.crpix2 - y0,
                                  width=x1 - x0, height=y1 - y0)
    return wcs


# -- CCD selection and memory ------------------------------------------------------------
def select_ccds(ccds: np.ndarray, brick_wcs, bands) -> np.ndarray:
    """Rows of ``ccds`` to use: ``ccd_cuts == 0``, band requested, touching the brick grid."""
    names = ccds.dtype.names
    keep = np.ones(len(ccds), bool)
    if "ccd_cuts" in names:
        keep &= ccds["ccd_cuts"] == 0
    filt = np.array([_s(f) for f in ccds["filter"]]) if len(ccds) else np.zeros(0, "U1")
    keep &= np.isin(filt, list(bands))
    idx = [i for i in np.flatnonzero(keep) if overlap_box(ccds[i], brick_wcs) is not None]
    return ccds[np.array(idx, dtype=int)]


def cache_bytes(brick_wcs, ccds: np.ndarray) -> float:
    """Bytes to keep every CCD's calibrated overlap (image, ivar, dq) in memory."""
    total = 0
    for c in ccds:
        box = overlap_box(c, brick_wcs)
        if box is not None:
            x0, x1, y0, y1 = box[1]
            total += (x1 - x0) * (y1 - y0) * 10
    return float(total)


def estimate_memory(brick_wcs, ccds: np.ndarray, nbands: int, threads: int) -> float:
    """Rough peak memory (bytes): per-band coadd arrays plus per-thread CCD work buffers."""
    npix = brick_wcs.width * brick_wcs.height
    ccdpix = 0
    for c in ccds:
        box = overlap_box(c, brick_wcs)
        if box is not None:
            bx0, bx1, by0, by1 = box[0]
            ccdpix = max(ccdpix, (bx1 - bx0) * (by1 - by0))
    per_band = 56  # bytes/pixel: accumulators, finished coadds, detection, model
    per_ccd_pixel = 90  # reads, calibrated copies, maps, resampled outputs
    return 300e6 + npix * (nbands * per_band + 24) + threads * ccdpix * per_ccd_pixel


# -- main -----------------------------------------------------------------------------------
def run_runbrick(layout: ReleaseLayout, brickname: str, ccds: np.ndarray, bands,
                 options, release: int = DEFAULT_RELEASE, config_hash: str = "") -> dict[str, Any]:
    """Process one brick; returns a small summary dict (see module docstring)."""
    t0 = time.time()
    timings: dict[str, float] = {}  # phase -> wall seconds (also reported: lsdask.phases)
    brick = brick_grid().brick(brickname)
    bands = tuple(bands)
    wcs = brick_wcs(brick, options)
    threads = max(1, int(options.threads))
    kernel = getattr(options, "resample_kernel", DEFAULT_KERNEL) or DEFAULT_KERNEL
    if getattr(options, "force", False):
        layout.tractor(brickname).unlink(missing_ok=True)

    with phase("select", timings):
        sel = select_ccds(ccds, wcs, bands)
    if len(sel) == 0:
        raise InputError(f"brick {brickname}: no usable CCD (ccd_cuts == 0, bands "
                         f"{','.join(bands)}) touches it")
    with phase("calibs", timings):
        ensure_calibs(layout, sel, make=not getattr(options, "skip_calibs", False))
    need = estimate_memory(wcs, sel, len(bands), threads)
    limit = getattr(options, "memory_limit_gb", None)
    if limit is not None and need > float(limit) * 1e9:
        raise BrickMemoryError(f"brick {brickname}: estimated memory {need / 1e9:.2f} GB exceeds "
                               f"the limit {float(limit):.2f} GB with {threads} threads")

    key = checkpoint.checkpoint_key(
        brick=brickname, version=__version__, kernel=kernel, bands=bands, grid=wcs.params,
        size=(wcs.width, wcs.height),
        ccds=[(_s(c["image_filename"]), int(c["image_hdu"]), float(c["ccdzpt"]))
              for c in sel])
    ckpath = layout.checkpoint(brickname)
    resumed = None
    images = None
    # keep the calibrated CCD pixels for forced photometry (as legacypipe keeps its tims)
    # unless that would break the memory limit; else they are read again
    cache = cache_bytes(wcs, sel)
    keep_images = limit is None or need + cache <= float(limit) * 1e9
    if keep_images:
        need += cache
    got = checkpoint.load(ckpath, key)
    if got is not None:
        resumed, payload = got
        coadds = payload["coadds"]
        log.info("brick %s: resuming from checkpoint %s (%s)", brickname, ckpath, resumed)
    else:
        with phase("coadds", timings):
            coadds, images = make_coadds(layout, sel, wcs, bands, kernel, threads, keep_images)
        with phase("checkpoint", timings):
            checkpoint.save(ckpath, key, "coadds", {"coadds": coadds})
        if os.environ.get(KILL_ENV) == "coadds":
            os.kill(os.getpid(), signal.SIGKILL)

    with phase("detect", timings):
        refs = refstars.brick_refs(layout, wcs)
        det = detect_with_refs(coadds, wcs, refs, float(options.nsigma), threads)
        co_sky = subtract_coadd_sky(coadds, det.segmap, images)
    # the coadd images do not change from here on: with several threads, write them in
    # forked processes while photometry runs
    early = (_ImageWriter(coadd_jobs(layout, brickname, coadds), wcs, threads,
                          background=True) if threads > 1 else None)
    with phase("photometry", timings):
        cat, models = measure(layout, brick, wcs, sel, coadds, det, bands, kernel, threads,
                              images, refs=refs, co_sky=co_sky)
    del images
    with phase("write", timings):
        uniq = unique_pixels(brick, wcs)
        maskbits = make_maskbits(uniq, coadds, refs, wcs.pixscale)
        iy = np.clip(np.rint(cat["by"]).astype(int), 0, wcs.height - 1)
        ix = np.clip(np.rint(cat["bx"]).astype(int), 0, wcs.width - 1)
        cat["maskbits"] = maskbits[iy, ix]
        cat["release"] = release
        products = write_products(layout, brick, wcs, sel, coadds, models, maskbits, det, uniq,
                                  threads=threads, early=early, co_sky=co_sky)
        hdr = tractor_header(brick, release, config_hash, kernel)
        with brickio.atomic_path(layout.tractor(brickname)) as tmp:
            write_tractor(tmp, cat, header={"EXTNAME": "CATALOG"}, primary_header=hdr)
            text = brickio.sha256_lines(products, layout.release_dir)
            rel = layout.tractor(brickname).resolve().relative_to(layout.release_dir.resolve())
            text += f"{brickio.sha256_file(tmp)}  {rel}\n"
            brickio.write_sha256sum(layout, brickname, text)
    if not getattr(options, "keep_checkpoints", False):
        checkpoint.remove(ckpath)
    timings["total"] = time.time() - t0
    return {"brick": brickname, "nsources": int(len(cat)),
            "nprimary": int(cat["brick_primary"].sum()), "nccds": int(len(sel)),
            "bands": list(bands), "threads": threads, "resumed_from": resumed,
            "memory_estimate_gb": round(need / 1e9, 3), "images_kept": bool(keep_images),
            "timings": timings,
            "tractor": str(layout.tractor(brickname))}


def ensure_calibs(layout: ReleaseLayout, sel: np.ndarray, make: bool = True) -> list[str]:
    """Every CCD's sky and PSF calibration, in any layout lite reads; the missing ones fitted
    now (``make``) or an InputError naming them. Returns the files written."""
    from .calibs import make_missing_calibs

    made = []
    for c in sel:
        fn, name = _s(c["image_filename"]), _s(c["ccdname"])
        missing = []
        for kind in ("psfex", "splinesky"):
            try:
                calib_path(layout, fn, name, kind)
            except InputError:
                if not make:
                    raise
                missing.append(kind)
        if missing:
            made += make_missing_calibs(layout, fn, name, tuple(missing))
            print(f"{fn} CCD {name}: {' and '.join(missing)} calibration missing; "
                  "fitted now", flush=True)
    return made


# -- coadds ---------------------------------------------------------------------------------
def _load_and_resample(layout, sel, i, wcs, kernel):
    im = read_ccd_image(layout, sel[i], i, wcs)
    if im is None:
        return None
    r = resample_ccd(im, kernel)
    # the kept image does not need the (float64, brick-box sized) pixel map any more
    empty = np.zeros((0, 0))
    im = dataclasses.replace(im, pmap=dataclasses.replace(im.pmap, x=empty, y=empty))
    return im, r


#: (layout, sel, wcs, kernel, keep_images) for forked coadd workers (set only around forking).
_COADD_CTX: tuple | None = None


def _coadd_task(i: int, shmdir: str | None):
    layout, sel, wcs, kernel, keep = _COADD_CTX
    out = _load_and_resample(layout, sel, i, wcs, kernel)
    if out is None:
        return None
    im, r = out
    return _share(im if keep else None, shmdir), _share(r, shmdir)


@dataclasses.dataclass
class _Shared:
    """A numpy array handed over in a shared-memory file (unlinked once mapped)."""

    path: str
    dtype: str
    shape: tuple


def _share(obj, shmdir: str | None):
    """``obj`` (a dataclass) with its large arrays moved to files in ``shmdir`` (tmpfs), so
    that returning it from a worker process costs one copy instead of a pickle through a
    pipe; arrays stay inline when that fails (e.g. a small /dev/shm)."""
    if obj is None or shmdir is None:
        return obj
    import tempfile

    changes = {}
    for f in dataclasses.fields(obj):
        a = getattr(obj, f.name)
        if isinstance(a, np.ndarray) and a.nbytes >= 1 << 20:
            try:
                fd, path = tempfile.mkstemp(dir=shmdir)
            except OSError:
                continue
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.ascontiguousarray(a).tofile(fh)
            except OSError:  # e.g. /dev/shm full: pickle it instead
                os.unlink(path)
                continue
            changes[f.name] = _Shared(path, a.dtype.str, a.shape)
    return dataclasses.replace(obj, **changes)


def _unshare(obj):
    """The inverse of :func:`_share`: maps the files (and unlinks them at once)."""
    if obj is None:
        return None
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, _Shared):
            changes[f.name] = np.memmap(v.path, dtype=np.dtype(v.dtype), mode="r+",
                                        shape=v.shape)
            os.unlink(v.path)
    return dataclasses.replace(obj, **changes)


def _shm_dir() -> str | None:
    """A private directory in /dev/shm for worker results (named with this process's PID),
    or None without a usable one. Directories left by killed bricks (their PID gone) are
    removed first."""
    import tempfile

    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        return None
    clean_stale_shm()
    try:
        return tempfile.mkdtemp(prefix=f"lsdask-runbrick-{os.getpid()}-", dir="/dev/shm")
    except OSError:
        return None


def clean_stale_shm(root: str = "/dev/shm") -> list[str]:
    """Remove ``lsdask-runbrick-<pid>-*`` directories whose process is gone."""
    import shutil

    gone = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        parts = name.split("-")
        if not name.startswith("lsdask-runbrick-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            gone.append(name)
        except PermissionError:
            pass  # alive, another user's
    return gone


def make_coadds(layout: ReleaseLayout, sel: np.ndarray, wcs, bands, kernel: str,
                threads: int, keep_images: bool = False
                ) -> tuple[dict[str, dict[str, np.ndarray]], list | None]:
    """Per-band coadd images (bands without any CCD are left out), and the calibrated CCD
    images when ``keep_images``.

    With several threads, CCDs are read and resampled in ``threads`` forked worker
    processes (fitsio's decompression holds the GIL, so threads would serialise on it);
    this process accumulates them in table order, so the coadds do not depend on the
    number of threads."""
    global _COADD_CTX
    shape = (wcs.height, wcs.width)
    acc = {b: BandCoadd(b, shape) for b in bands}
    used = set()
    images: list | None = [] if keep_images else None

    def consume(outs):
        for out in outs:
            if out is None:
                continue
            im, r = out
            acc[r.band].add(r)
            used.add(r.band)
            if images is not None:
                images.append(im)

    if threads > 1 and len(sel) > 1 and "fork" in mp.get_all_start_methods():
        import shutil
        from concurrent.futures import ProcessPoolExecutor

        _COADD_CTX = (layout, sel, wcs, kernel, keep_images)
        shmdir = _shm_dir()
        try:
            with ProcessPoolExecutor(threads, mp_context=mp.get_context("fork")) as pool:
                futures = [pool.submit(_coadd_task, i, shmdir) for i in range(len(sel))]
                _COADD_CTX = None
                consume(None if out is None else (_unshare(out[0]), _unshare(out[1]))
                        for out in (f.result() for f in futures))
        finally:
            _COADD_CTX = None
            if shmdir is not None:
                shutil.rmtree(shmdir, ignore_errors=True)
    else:
        consume(_load_and_resample(layout, sel, i, wcs, kernel) for i in range(len(sel)))
    return {b: acc[b].finish() for b in bands if b in used}, images


# -- measurement ----------------------------------------------------------------------------
def subtract_coadd_sky(coadds, segmap: np.ndarray, images: list | None) -> dict[str, float]:
    """legacypipe's ``co_sky``: per band, the median coadd pixel outside every source's
    blob, subtracted from the coadd and (here, or as they are read again: ``co_sky`` of
    :func:`measure`) from every CCD image of the band before the fits. Returns it by band."""
    out = {}
    for b, c in coadds.items():
        pix = c["image"][(c["invvar"] > 0) & (segmap < 0)]
        out[b] = float(np.median(pix)) if pix.size else 0.0
        c["image"][c["invvar"] > 0] -= np.float32(out[b])
    for im in images or ():
        _subtract_sky(im, out)
    return out


def _subtract_sky(im: CcdImage, co_sky: dict[str, float]) -> None:
    im.img[im.ivar > 0] -= np.float32(co_sky.get(im.band, 0.0))


@dataclasses.dataclass(frozen=True)
class _Pass:
    """What one pass over the CCDs measures: ``"positions"`` (the PSF model's sums, for a
    position step), ``"final"`` (forced PSF photometry and every model's sums) or
    ``"ellip"`` (the :class:`~.galfit.EllipCcd` cutouts of the sources ``targets`` that
    the CCD's forced photometry measured, ``measured[ccd row]``). ``points = (ra, dec,
    {band: flux})``: point sources subtracted first: in ``"positions"`` and ``"final"``
    every source (the same list as measured), each measured with all the others
    subtracted; in ``"ellip"`` the sources typed PSF, subtracted from the pixels."""

    kind: str
    points: tuple | None = None
    targets: np.ndarray | None = None
    measured: dict | None = None


def _phot_ccd(im: CcdImage, ra, dec, p: _Pass):
    """One CCD's results of the pass ``p``: (band, forced photometry or None, sums or
    cutouts)."""
    pm = None
    if p.points is not None and im.band in p.points[2]:
        pm = point_model(im, p.points[0], p.points[1], p.points[2][im.band])
    if p.kind == "ellip":
        n = len(p.targets)
        usable = p.measured[im.row][p.targets] if im.row in p.measured else np.zeros(n, bool)
        if pm is not None:  # the point sources' models out of the pixels
            im = dataclasses.replace(im, img=im.img - pm.ccd_image())
        return im.band, None, galfit.ellip_prep_ccd(im, ra, dec, p.targets, usable)
    if p.kind == "final":
        return (im.band, forced_phot_ccd(im, ra, dec, others=pm),
                galfit.model_sums_ccd(im, ra, dec, others=pm))
    return im.band, None, galfit.model_sums_ccd(im, ra, dec, psf_only=True, others=pm)


def _phot_one(layout, sel, i, wcs, ra, dec, p: _Pass, co_sky: dict[str, float]):
    im: CcdImage | None = read_ccd_image(layout, sel[i], i, wcs)
    if im is None:
        return None
    _subtract_sky(im, co_sky)
    return _phot_ccd(im, ra, dec, p)


def _ccd_passes(layout, sel, wcs, images, threads: int, ra, dec, p: _Pass,
                co_sky: dict[str, float]):
    """The per-CCD results of one pass, in CCD order (threads; scipy releases the GIL)."""
    if images is not None:
        def job(im):
            return _phot_ccd(im, ra, dec, p)
        items = images
    else:
        def job(i):
            return _phot_one(layout, sel, i, wcs, ra, dec, p, co_sky)
        items = range(len(sel))
    with ThreadPoolExecutor(threads) as pool:
        yield from (out for out in pool.map(job, items) if out is not None)


class _Sums:
    """Per-band sums of :class:`~.galfit.ModelSums` over CCDs."""

    def __init__(self, bands, n: int, K: int):
        self.A = {b: np.zeros((n, K)) for b in bands}
        self.B = {b: np.zeros((n, K)) for b in bands}
        self.U = {b: np.zeros((n, 2)) for b in bands}
        self.V = {b: np.zeros((n, 2)) for b in bands}
        self.M = {b: np.zeros((n, 2, 2)) for b in bands}
        self.B0 = {b: np.zeros(n) for b in bands}  # PSF-only passes: see ModelSums
        self.pairs = {b: [] for b in bands}

    def add(self, ms) -> None:
        if ms.band not in self.A:
            return
        for k in ("A", "B", "U", "V", "M"):
            getattr(self, k)[ms.band][ms.idx] += getattr(ms, k)
        if ms.B0 is not None:
            self.B0[ms.band][ms.idx] += ms.B0
            self.pairs[ms.band].append(ms.pairs)


def detect_with_refs(coadds, wcs, refs: np.ndarray, nsigma: float, threads: int = 1
                     ) -> Detections:
    """Detections plus the Gaia point sources on the grid (as legacypipe: reference
    sources first, peaks not separated from them by a saddle or on the saturated cores of
    bright stars dropped); ``Detections.ref`` indexes ``refs``."""
    shape = (wcs.height, wcs.width)
    isref = np.flatnonzero(refstars.on_grid(refs, shape) & refs["pointsource"])
    satur = np.zeros(shape, bool)
    sizes = []
    for c in coadds.values():
        satur |= c["satur"]
        sizes.append(c["psfsize"][c["invvar"] > 0])
    allsizes = np.concatenate(sizes)
    fwhm_pix = float(np.median(allsizes)) / wcs.pixscale if allsizes.size else 1.0
    avoid = refstars.avoid_circles(refs, satur, fwhm_pix, wcs.pixscale)
    # and legacypipe's ~1" around every reference source (4 of its 0.262" pixels): a bright
    # star's peak pixel can sit a pixel from its catalogue position and read as a second
    # source there, beyond the saddle test's reach where the PSF is undersampled
    r_excl = max(1.0, REF_EXCLUSION_ARCSEC / wcs.pixscale)
    avoid = tuple(np.r_[a, b] for a, b in zip(avoid, (refs["x"][isref], refs["y"][isref],
                                                       np.full(len(isref), r_excl)),
                                              strict=True))
    det = detect(coadds, wcs.pixscale, nsigma, threads,
                 seeds=(refs["x"][isref], refs["y"][isref]), avoid=avoid)
    rx, ry = refs["x"][isref], refs["y"][isref]
    iy = np.clip(np.rint(ry).astype(int), 0, wcs.height - 1)
    ix = np.clip(np.rint(rx).astype(int), 0, wcs.width - 1)
    return Detections(np.r_[det.x, rx], np.r_[det.y, ry],
                      np.r_[det.snr, np.zeros(len(isref), np.float32)], det.segmap,
                      np.r_[det.blob, det.segmap[iy, ix]].astype(np.int32),
                      np.r_[np.full(len(det), -1), isref].astype(np.int64))


def measure(layout, brick: Brick, wcs, sel, coadds, det: Detections, bands, kernel: str,
            threads: int, images: list | None = None, refs: np.ndarray | None = None,
            co_sky: dict[str, float] | None = None
            ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """The tractor catalogue of the detections, and per-band model/chi2 images
    (``co_sky``: what to subtract from the CCD images read again, by band)."""
    co_sky = co_sky or {}
    n = len(det)
    order = np.lexsort((det.x, det.y))
    x, y = det.x[order], det.y[order]
    ra, dec = wcs.pixel_to_radec(x + 1.0, y + 1.0)
    ref = det.ref[order] if det.ref is not None else np.full(n, -1)
    isref = ref >= 0
    if refs is not None and isref.any():
        r = refs[ref[isref]]
        ra[isref], dec[isref] = r["ra"], r["dec"]  # reference positions, exactly
    cat = empty_tractor(n)
    cat["brickid"] = brick.brickid
    cat["brickname"] = brick.brickname.encode()
    cat["objid"] = np.arange(n, dtype=np.int32)
    cat["ra"], cat["dec"] = ra, dec
    cat["bx"], cat["by"] = x, y
    cat["brick_primary"] = brick.contains(ra, dec)
    if refs is not None and isref.any():
        r = refs[ref[isref]]
        cat["ref_cat"][isref] = b"G2"
        for k in ("ref_id", "pmra", "pmdec", "ref_epoch", "gaia_phot_g_mean_mag"):
            cat[k][isref] = r["source_id" if k == "ref_id" else
                              "gaia_g" if k == "gaia_phot_g_mean_mag" else k]
    accs = {b: BandAccum(n) for b in coadds}
    fit = None
    if n:
        # positions: Gauss-Newton steps of a joint fit over every CCD (PSF model; reference
        # sources keep their catalogue positions): pass 1 with the PSF model only ...
        fw = _median_fwhm(coadds, wcs.pixscale) * wcs.pixscale
        psums = _Sums(coadds, n, 1)
        for _, _, ms in _ccd_passes(layout, sel, wcs, images, threads, ra, dec,
                                    _Pass("positions"), co_sky):
            psums.add(ms)
        pflux = _psf_flux(psums)
        ra, dec = _move(ra, dec, psums, pflux, isref, fw)
        # ... then BLEND_PASSES more PSF-model passes and steps, each source measured with
        # all the others subtracted as point sources at the previous pass's positions and
        # fluxes (those of a simultaneous fit of every source's PSF model: blends) ...
        for _ in range(BLEND_PASSES if SUBTRACT_NEIGHBOURS else 0):
            psums = _Sums(coadds, n, 1)
            for _, _, ms in _ccd_passes(layout, sel, wcs, images, threads, ra, dec,
                                        _Pass("positions", points=(ra, dec, pflux)), co_sky):
                psums.add(ms)
            pflux = _psf_flux(psums)
            ra, dec = _move(ra, dec, psums, pflux, isref, fw)
        # ... and the final pass at the new positions (the others subtracted too): forced
        # PSF photometry (point-source fluxes, masks, nobs, rchisq) and light-profile fits
        # (PSF / REX / DEV) forced across each band's CCDs, then the last position step
        # (fluxes stay those of this pass)
        sums = _Sums(coadds, n, galfit.n_models())
        measured = {}  # CCD row -> the sources it counts in nobs (and may fit as galaxies)
        for band, ph, ms in _ccd_passes(layout, sel, wcs, images, threads, ra, dec,
                                        _Pass("final", points=(ra, dec, pflux)
                                              if SUBTRACT_NEIGHBOURS else None), co_sky):
            if band in accs:
                accumulate(accs[band], ph)
            sums.add(ms)
            measured[ph.row] = np.zeros(n, bool)
            measured[ph.row][ph.idx[ph.iv > 0]] = True
        sat0 = np.zeros(n, bool)
        for c in coadds.values():
            sat0 |= c["satur"][np.clip(np.rint(y).astype(int), 0, wcs.height - 1),
                               np.clip(np.rint(x).astype(int), 0, wcs.width - 1)]
        fit = galfit.choose_models(sums.A, sums.B, psf_only=sat0 | isref)
        ra, dec, ivE, ivN = _move(ra, dec, sums, fit.flux_psf, isref, fw, with_ivar=True)
        x, y = wcs.radec_to_pixel(ra, dec)
        x, y = x - 1.0, y - 1.0
        cat["ra"], cat["dec"] = ra, dec
        cat["bx"], cat["by"] = x, y
        cat["brick_primary"] = brick.contains(ra, dec)
        cat["ra_ivar"] = ivE * 3600.0 ** 2
        cat["dec_ivar"] = ivN * 3600.0 ** 2
        # elliptical EXP / DEV fits of the sources the round fits call galaxies (at the
        # final positions), then legacypipe's choice among PSF, REX, EXP and DEV
        # (only those kept: the others are dropped from the catalogue whatever their fit)
        gi = np.flatnonzero((fit.type != "PSF") & fit.keep)
        if gi.size and ELLIPTICAL_FITS:
            t0 = time.time()
            # the sources typed PSF are subtracted from the pixels (with their forced
            # fluxes): a bright star's halo would otherwise make its neighbours large galaxies
            pi = np.flatnonzero(fit.type == "PSF")
            points = (ra[pi], dec[pi], {b: band_results(accs[b])["flux"][pi] for b in accs})
            ellip = _Pass("ellip", points=points, targets=gi, measured=measured)
            preps = [p for _, _, p in _ccd_passes(layout, sel, wcs, images, threads, ra, dec,
                                                  ellip, co_sky) if p is not None]
            t1 = time.time()
            bands_ = list(coadds)
            fits = {"psf": galfit.fit_ellipses(preps, bands_, gi.size, "psf", None)}
            for fam, start in (("rex", "rex"), ("exp", "rex"), ("dev", "dev")):
                fits[fam] = galfit.fit_ellipses(preps, bands_, gi.size, fam,
                                                np.log(fit.families[start][1][gi]),
                                                round_only=fam == "rex")
            galfit.apply_ellipses(fit, gi, fits)
            log.info("elliptical fits of %d sources: %.1f s (%.1f s preparing)", gi.size,
                     time.time() - t0, t1 - t0)
    pixscale = wcs.pixscale
    ix = np.clip(np.rint(x).astype(int), 0, wcs.width - 1)
    iy = np.clip(np.rint(y).astype(int), 0, wcs.height - 1)
    is_gal = (fit.type != "PSF") if n else np.zeros(0, bool)
    # the circularised half-light radius sizes the round Gaussian stand-ins of the models
    shape_r = galfit.circularised_radius(fit.shape_r, fit.shape_e1, fit.shape_e2) if n else \
        np.zeros(0, np.float32)
    mjd_min = np.full(n, np.inf)
    mjd_max = np.full(n, -np.inf)
    models = {}
    for b, c in coadds.items():
        res = band_results(accs[b])
        if n:
            # galaxies: the fitted model's total flux; point sources: per-source PSF stamps
            res["flux"] = np.where(is_gal, fit.flux[b], res["flux"]).astype(np.float32)
            res["flux_ivar"] = np.where(is_gal, fit.flux_ivar[b],
                                        res["flux_ivar"]).astype(np.float32)
        if b not in OPTICAL_BANDS:
            log.warning("band %s has no DR9 tractor columns; measured but not written", b)
        psfsize = c["psfsize"][iy, ix]
        sig_pix = np.where(psfsize > 0, psfsize, np.median(c["psfsize"][c["invvar"] > 0]))
        sig_pix = sig_pix / pixscale / 2.3548
        # Gaussian-equivalent model size (the half-light radius of a Gaussian is 1.177 sigma)
        sig_mod = np.hypot(sig_pix, shape_r / pixscale / 1.177)
        model = gaussian_model_image(c["image"].shape, x, y, res["flux"], sig_mod)
        with np.errstate(invalid="ignore"):
            chi2 = ((c["image"] - model) ** 2 * c["invvar"]).astype(np.float32)
        models[b] = {"model": model, "chi2": chi2}
        mjd_min = np.minimum(mjd_min, res["mjd_min"])
        mjd_max = np.maximum(mjd_max, res["mjd_max"])
        if b not in OPTICAL_BANDS:
            continue
        cat[f"flux_{b}"] = res["flux"]
        cat[f"flux_ivar_{b}"] = res["flux_ivar"]
        for k in ("rchisq", "fracmasked", "nobs", "anymask", "allmask"):
            cat[f"{k}_{b}"] = res[k]
        cat[f"fracflux_{b}"] = fracflux(x, y, res["flux"], sig_mod)
        cat[f"psfsize_{b}"] = psfsize
        cat[f"psfdepth_{b}"] = c["psfdepth"][iy, ix]
        cat[f"galdepth_{b}"] = c["galdepth"][iy, ix]
        nea = 4 * np.pi * (sig_pix * pixscale) ** 2 * (psfsize > 0)
        cat[f"nea_{b}"] = nea
        cat[f"blob_nea_{b}"] = nea
        cat[f"fracin_{b}"] = np.where(res["flux_ivar"] > 0, 1.0, 0.0)
        ap = aperture_phot(c["image"], c["invvar"], model, x, y, pixscale)
        for k, v in ap.items():
            cat[f"{k}_{b}"] = v
        cat[f"apflux_blobresid_{b}"] = ap["apflux_resid"]
        models[b]["sig_pix"] = sig_pix
        models[b]["flux"] = res["flux"]
    cat["mjd_min"] = np.where(np.isfinite(mjd_min), mjd_min, 0)
    cat["mjd_max"] = np.where(np.isfinite(mjd_max), mjd_max, 0)
    if n:
        cat["type"] = fit.type.astype("S3")
        cat["shape_r"] = fit.shape_r
        cat["shape_r_ivar"] = fit.shape_r_ivar
        for k in ("shape_e1", "shape_e1_ivar", "shape_e2", "shape_e2_ivar"):
            cat[k] = getattr(fit, k)
        cat["dchisq"] = fit.dchisq
    for b in OPTICAL_BANDS:
        if b not in coadds:
            continue
        sig_src = np.where(is_gal, shape_r / 1.678, 0.0)  # rough Gaussian-equivalent size
        ff = fiber_fraction(sig_src)
        cat[f"fiberflux_{b}"] = cat[f"flux_{b}"] * ff
        cat[f"fibertotflux_{b}"] = cat[f"flux_{b}"] * ff * (1 + cat[f"fracflux_{b}"])
    if n:
        # legacypipe drops sources whose best model is below its 5-sigma penalised cut
        cat = cat[fit.keep | isref]
        cat["objid"] = np.arange(len(cat), dtype=np.int32)
    return cat, models


def _psf_flux(sums: _Sums) -> dict[str, np.ndarray]:
    """Per-band PSF-model fluxes of a simultaneous fit of all sources from the sums of a
    PSF-only pass (one sparse linear system per band: ``sum_j (sum w P_i P_j) f_j = sum w
    P_i d``; isolated sources: ``B / A``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    out = {}
    for b, A in sums.A.items():
        d, n = A[:, 0], A.shape[0]
        ok = d > 0
        pairs = sums.pairs[b] or [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))]
        pi, pj, pv = (np.concatenate(v) for v in zip(*pairs, strict=True))
        k = np.arange(n)
        # a 1e-6 ridge keeps two detections of one source (identical models) solvable
        M = coo_matrix((np.r_[np.where(ok, d * (1 + 1e-6), 1.0), pv, pv],
                        (np.r_[k, pi, pj], np.r_[k, pj, pi])), shape=(n, n)).tocsc()
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.atleast_1d(spsolve(M, np.where(ok, sums.B0[b], 0.0))) if n else np.zeros(0)
            alone = np.where(ok, sums.B0[b] / np.where(ok, d, 1), 0.0)
        out[b] = np.where(np.isfinite(f), f, alone)
    return out


def _median_fwhm(coadds, pixscale: float) -> float:
    """Median PSF FWHM (pixels) over the covered coadd pixels of all bands."""
    sizes = np.concatenate([c["psfsize"][c["invvar"] > 0] for c in coadds.values()])
    return float(np.median(sizes)) / pixscale if sizes.size else 1.0


def _move(ra, dec, sums: _Sums, flux: dict, fixed: np.ndarray, fwhm_arcsec: float,
          with_ivar: bool = False):
    """(ra, dec) after one Gauss-Newton position step (``fixed`` sources do not move;
    steps above half the FWHM are not taken), and with ``with_ivar`` the east / north
    inverse variances (arcsec^-2)."""
    step, ivE, ivN = galfit.position_step(sums.U, sums.V, sums.M, flux,
                                          maxstep=0.5 * fwhm_arcsec)
    step[fixed] = 0.0
    dec2 = dec + step[:, 1] / 3600.0
    ra2 = (ra + step[:, 0] / 3600.0 / np.cos(np.deg2rad(dec2))) % 360.0
    return (ra2, dec2, ivE, ivN) if with_ivar else (ra2, dec2)


# -- products -------------------------------------------------------------------------------
def make_maskbits(uniq: np.ndarray, coadds, refs: np.ndarray | None = None,
                  pixscale: float = 0.262) -> np.ndarray:
    """DR9-style maskbits image: NPRIMARY outside the brick, BRIGHT and MEDIUM within the
    masking radius of reference stars, SATUR_b, ALLMASK_b."""
    mb = np.where(uniq, 0, brickio.MASKBITS["NPRIMARY"]).astype(np.int16)
    if refs is not None and len(refs):
        bright, medium = refstars.star_masks(refs, uniq.shape, pixscale)
        mb[bright] |= brickio.MASKBITS["BRIGHT"]
        mb[medium] |= brickio.MASKBITS["MEDIUM"]
    for b, c in coadds.items():
        if f"SATUR_{b.upper()}" in brickio.MASKBITS:
            mb[c["satur"]] |= brickio.MASKBITS[f"SATUR_{b.upper()}"]
            mb[c["allmask"]] |= brickio.MASKBITS[f"ALLMASK_{b.upper()}"]
    return mb


def unique_pixels(brick: Brick, wcs, step: int = 64) -> np.ndarray:
    """Brick pixels inside the brick's RA/Dec bounds (its own, unique area).

    RA/Dec are evaluated every ``step`` pixels and interpolated bilinearly (errors far
    below a pixel on a TAN grid this small)."""
    from .resample import upsample_bilinear

    gx = np.unique(np.r_[np.arange(0, wcs.width, step), wcs.width - 1]).astype(float)
    gy = np.unique(np.r_[np.arange(0, wcs.height, step), wcs.height - 1]).astype(float)
    if len(gx) < 2 or len(gy) < 2:
        yy, xx = np.mgrid[0:wcs.height, 0:wcs.width]
        return brick.contains(*wcs.pixel_to_radec(xx + 1.0, yy + 1.0))
    GX, GY = np.meshgrid(gx + 1, gy + 1)
    ra, dec = wcs.pixel_to_radec(GX, GY)
    ra = np.unwrap(np.deg2rad(ra), axis=1)  # no jump at RA 0/360 inside the grid
    ra_full = np.rad2deg(upsample_bilinear(ra, gy, gx, wcs.height, wcs.width))
    dec_full = upsample_bilinear(dec, gy, gx, wcs.height, wcs.width)
    return brick.contains(ra_full, dec_full)


#: Coadd kinds that depend only on the coadds (written as soon as they exist).
COADD_ONLY = ("image", "invvar", "nexp", "depth", "galdepth", "psfsize")


def coadd_jobs(layout: ReleaseLayout, name: str, coadds, models=None,
               kinds=COADD_ONLY) -> list[tuple]:
    """(path, array, header extras, lossless, kind) of the coadd images of ``kinds``."""
    jobs = []
    for b, c in coadds.items():
        for kind in kinds:
            keyname = COADD_PRODUCTS[kind]
            arr = models[b][keyname] if keyname in ("model", "chi2") else c[keyname]
            extra = {"BAND": b, "BRICKNAM": name, "IMTYPE": kind}
            jobs.append((layout.coadd(name, kind, b), arr, extra, False, kind))
    return jobs


def write_products(layout: ReleaseLayout, brick: Brick, wcs, sel, coadds, models, maskbits,
                   det: Detections, uniq: np.ndarray, threads: int = 1,
                   early: _ImageWriter | None = None,
                   co_sky: dict[str, float] | None = None) -> list[Path]:
    """Every per-brick product except the tractor file and the sha256sum (``early``: the
    coadd-only images, already being written)."""
    name = brick.brickname
    kinds = tuple(k for k in COADD_PRODUCTS if early is None or k not in COADD_ONLY)
    jobs = coadd_jobs(layout, name, coadds, models, kinds)
    jobs.append((layout.coadd(name, "maskbits.fits.fz"), maskbits,
                 {"BRICKNAM": name, **{f"MB_{k}"[:8]: v for k, v in brickio.MASKBITS.items()}},
                 True, "maskbits"))

    late = _ImageWriter(jobs, wcs, threads, background=threads > 1)
    depth = brickio.depth_table(coadds, uniq, tuple(dict.fromkeys(OPTICAL_BANDS + tuple(coadds))))
    tables = [brickio.write_table(layout.coadd(name, "depth.fits"), depth, {"BRICKNAM": name})]
    ccdtab = ccds_table(sel, wcs, co_sky)
    tables.append(brickio.write_table(layout.coadd(name, "ccds.fits"), ccdtab,
                                      {"BRICKNAM": name}, extname="CCDS"))
    tables.append(brickio.rgb_jpeg(layout.coadd(name, "image.jpg"), coadds))
    tables.append(brickio.write_blobs(layout.blobs(name), det.segmap, wcs))
    paths = (early.result() if early is not None else []) + late.result()
    return paths + tables


_WRITE_JOBS: list = []


def _write_job(i: int) -> Path:
    path, arr, extra, lossless, kind, wcs = _WRITE_JOBS[i]
    return brickio.write_image(path, arr, wcs, extra, lossless=lossless, kind=kind)


class _ImageWriter:
    """Writes compressed images: in the ``background`` in ``nproc`` forked worker processes,
    started at once and running concurrently with the caller (the FITS compression holds the
    GIL, so threads would not help; forked children inherit the arrays without copying
    them); else in this process when :meth:`result` is called."""

    def __init__(self, jobs: list, wcs, nproc: int, background: bool):
        global _WRITE_JOBS
        self.jobs = [(*j, wcs) for j in jobs]
        self.futures = None
        self.pool = None
        if background and jobs and "fork" in mp.get_all_start_methods():
            from concurrent.futures import ProcessPoolExecutor

            _WRITE_JOBS = self.jobs  # inherited by the forked workers
            try:
                self.pool = ProcessPoolExecutor(nproc, mp_context=mp.get_context("fork"))
                # (with "fork", every worker is forked at the first submit)
                self.futures = [self.pool.submit(_write_job, i) for i in range(len(jobs))]
            finally:
                _WRITE_JOBS = []

    def result(self) -> list[Path]:
        global _WRITE_JOBS
        if self.futures is None:
            _WRITE_JOBS = self.jobs
            try:
                return [_write_job(i) for i in range(len(self.jobs))]
            finally:
                _WRITE_JOBS = []
        try:
            return [f.result() for f in self.futures]
        finally:
            self.pool.shutdown()


def ccds_table(sel: np.ndarray, wcs, co_sky: dict[str, float] | None = None) -> np.ndarray:
    """The brick's CCDs with DR9's ``ccd_x0, ccd_y0, ccd_x1, ccd_y1`` overlap box and the
    ``co_sky`` subtracted from them added."""
    extra = [("ccd_x0", "i2"), ("ccd_y0", "i2"), ("ccd_x1", "i2"), ("ccd_y1", "i2"),
             ("co_sky", "f4")]
    out = np.zeros(len(sel), dtype=sel.dtype.descr + extra)
    for n in sel.dtype.names:
        out[n] = sel[n]
    out["co_sky"] = [(co_sky or {}).get(_s(f), 0.0) for f in sel["filter"]]
    for i, c in enumerate(sel):
        box = overlap_box(c, wcs)
        if box is not None:
            x0, x1, y0, y1 = box[1]
            out["ccd_x0"][i], out["ccd_x1"][i] = x0, x1
            out["ccd_y0"][i], out["ccd_y1"][i] = y0, y1
    return out


def _dependency_versions() -> list[tuple[str, str]]:
    import fitsio
    import scipy
    import sep

    return [("lsdask", __version__), ("numpy", np.__version__), ("scipy", scipy.__version__),
            ("fitsio", fitsio.__version__), ("sep", sep.__version__)]


def tractor_header(brick: Brick, release: int, config_hash: str, kernel: str) -> dict:
    hdr: dict[str, Any] = {
        "BRICKNAM": brick.brickname, "BRICKID": int(brick.brickid),
        "RAMIN": brick.ra1, "RAMAX": brick.ra2, "DECMIN": brick.dec1, "DECMAX": brick.dec2,
        "RELEASE": int(release), "SURVEYID": "lsdask-lite",
        "LSDASKV": __version__, "CONFHASH": config_hash or "none",
        "PROCESSR": "lite", "RESAMPLE": kernel, "EBVMAP": "none",
        "EBVNOTE": "no dust map configured: ebv = 0, mw_transmission = 1",
        "PHOTNOTE": "lite: per-CCD PSF/REX/DEV fits, sources fitted one at a time",
        "APRADII": ",".join(str(r) for r in AP_RADII),
    }
    for i, (name, ver) in enumerate(_dependency_versions()):
        hdr[f"DEPNAM{i:02d}"] = name
        hdr[f"DEPVER{i:02d}"] = str(ver)
    return hdr

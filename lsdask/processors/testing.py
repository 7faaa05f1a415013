"""A small but real processor for testing the runner (``processor = "testing"``).

It implements the processor interface with cheap real work: it reads every HDU
of the image with fitsio (a truncated or corrupt file is an :class:`InputError`),
writes FITS products atomically, checkpoints runbrick half-way and resumes from
the checkpoint, and appends one line per completed product write to the file
named by ``LSDASK_TESTING_COMPLETIONS`` (so tests can count double work).

Faults are injected through environment variables (they reach Dask workers and
Slurm jobs started after they are set):

- ``LSDASK_TESTING_SLEEP``: seconds each runbrick sleeps (half before, half after
  its checkpoint); ``LSDASK_TESTING_ZPT_SLEEP`` for zeropoints.
- ``LSDASK_TESTING_INPUT_ERROR``: comma-separated keys (brick names or image
  basenames) that raise :class:`InputError`; ``LSDASK_TESTING_CONFIG_ERROR``: keys that
  raise :class:`ConfigError` (a processor misconfigured, e.g. a wrong launcher).
- ``LSDASK_TESTING_MEMORY``: ``brick=MiB``: the brick allocates and touches
  ``MiB * threads`` MiB (so a memory limit kills it until threads are few enough).
- ``LSDASK_TESTING_DIE``: keys whose task process kills itself with SIGKILL.
- ``LSDASK_TESTING_FORK``: bricks whose runbrick forks a helper process (as a processor's
  worker pool does) that sleeps for a minute and writes its pid to ``<checkpoint>.child``.

:func:`make_survey` writes a tiny CP-format survey (multi-extension ``ooi``
files with real TAN headers) for these tests.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import ConfigError, InputError
from ..survey.layout import ReleaseLayout, image_basename


def _keys(var: str) -> set[str]:
    return {k.strip() for k in os.environ.get(var, "").split(",") if k.strip()}


def _completed(what: str, key: str) -> None:
    path = os.environ.get("LSDASK_TESTING_COMPLETIONS")
    if path:
        line = f"{what} {key} {socket.gethostname()} {os.getpid()} {time.time():.3f}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _faults(key: str) -> None:
    if key in _keys("LSDASK_TESTING_DIE"):
        os.kill(os.getpid(), signal.SIGKILL)
    if key in _keys("LSDASK_TESTING_INPUT_ERROR"):
        raise InputError(f"{key}: injected input error")
    if key in _keys("LSDASK_TESTING_CONFIG_ERROR"):
        raise ConfigError(f"{key}: injected configuration error")


def completions(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(what, key) of every completed write recorded in a completions file."""
    p = Path(path)
    if not p.exists():
        return []
    return [tuple(line.split()[:2]) for line in p.read_text().splitlines() if line.strip()]


def _read_image(layout: ReleaseLayout, image_filename: str) -> list[dict[str, Any]]:
    """Header facts of every CCD HDU; reads the pixels too (corrupt file -> InputError)."""
    import fitsio

    path = layout.image(image_filename)
    rows = []
    try:
        with fitsio.FITS(str(path)) as f:
            primary = f[0].read_header()
            for hdu in f[1:]:
                hdr = hdu.read_header()
                data = hdu.read()
                if data is None or not np.all(np.isfinite(data)):
                    raise InputError(f"{path}: HDU {hdu.get_extnum()} has no finite pixels")
                rows.append({"hdu": hdu.get_extnum(), "hdr": hdr, "shape": data.shape,
                             "primary": primary, "median": float(np.median(data))})
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any read failure is a bad input
        raise InputError(f"{path}: cannot read image: {e}") from None
    if not rows:
        raise InputError(f"{path}: no image HDUs")
    return rows


# -- calibs ----------------------------------------------------------------------------

def calibs_done(layout: ReleaseLayout, image_filename: str) -> bool:
    return layout.psfex(image_filename).exists() and layout.splinesky(image_filename).exists()


def run_calibs(layout: ReleaseLayout, image_filename: str, options: Any) -> dict:
    import fitsio

    _faults(image_basename(image_filename))
    rows = _read_image(layout, image_filename)
    for path in (layout.psfex(image_filename), layout.splinesky(image_filename)):
        tab = np.zeros(len(rows), dtype=[("ccdname", "U5"), ("value", "f4")])
        tab["ccdname"] = [str(r["hdr"].get("EXTNAME", r["hdu"])).strip() for r in rows]
        tab["value"] = [r["median"] for r in rows]
        with atomic_path(path) as tmp:
            fitsio.write(str(tmp), tab, extname="CALIB", clobber=True)
    _completed("calibs", image_basename(image_filename))
    return {"image_filename": image_filename, "nccd": len(rows)}


# -- zeropoints ---------------------------------------------------------------------------

def zeropoints_done(layout: ReleaseLayout, image_filename: str) -> bool:
    return layout.zeropoints(image_filename).exists()


def run_zeropoints(layout: ReleaseLayout, image_filename: str, options: Any) -> dict:
    from ..survey.ccds import empty_ccds, write_ccds

    key = image_basename(image_filename)
    _faults(key)
    if not calibs_done(layout, image_filename):
        raise InputError(f"{layout.psfex(image_filename)}: calibrations missing")
    time.sleep(float(os.environ.get("LSDASK_TESTING_ZPT_SLEEP", "0")))
    rows = _read_image(layout, image_filename)
    ccds = empty_ccds(len(rows))
    for i, r in enumerate(rows):
        h, p = r["hdr"], r["primary"]
        ccds[i]["image_filename"] = image_filename
        ccds[i]["image_hdu"] = r["hdu"]
        ccds[i]["camera"] = "decam"
        ccds[i]["expnum"] = int(p.get("EXPNUM", 0))
        ccds[i]["ccdname"] = str(h.get("EXTNAME", "")).strip()
        ccds[i]["filter"] = str(p.get("FILTER", "g")).strip()[:1]
        ccds[i]["exptime"] = float(p.get("EXPTIME", 90.0))
        ccds[i]["mjd_obs"] = float(p.get("MJD-OBS", 57000.0))
        ccds[i]["height"], ccds[i]["width"] = r["shape"]
        for c in ("crpix1", "crpix2", "crval1", "crval2", "cd1_1", "cd1_2", "cd2_1", "cd2_2"):
            ccds[i][c] = float(h.get(c.upper(), 0.0))
        ccds[i]["ra"], ccds[i]["dec"] = ccds[i]["crval1"], ccds[i]["crval2"]
        ccds[i]["zpt"] = ccds[i]["ccdzpt"] = 25.0
        ccds[i]["ccd_cuts"] = int(h.get("TESTCUT", 0))
    write_ccds(ccds, layout.zeropoints(image_filename))
    _completed("zeropoints", key)
    return {"image_filename": image_filename, "nccd": len(ccds)}


# -- runbrick ---------------------------------------------------------------------------------

def runbrick_done(layout: ReleaseLayout, brickname: str) -> bool:
    """The catalogue opens and names its brick (a truncated file does not)."""
    import fitsio

    try:
        hdr = fitsio.read_header(str(layout.tractor(brickname)), ext=1)
    except (OSError, ValueError):
        return False
    return str(hdr.get("BRICKNAM", "")).strip() == brickname


def run_runbrick(layout: ReleaseLayout, brickname: str, ccds: np.ndarray, bands: list[str],
                 options: Any, release: int, config_hash: str) -> dict:
    import fitsio

    _faults(brickname)
    threads = int(getattr(options, "threads", 1))
    sleep = float(os.environ.get("LSDASK_TESTING_SLEEP", "0"))
    mem = {}
    for item in _keys("LSDASK_TESTING_MEMORY"):
        k, _, v = item.partition("=")
        mem[k] = float(v)
    ckpt = layout.checkpoint(brickname)
    if brickname in _keys("LSDASK_TESTING_FORK"):
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:  # the helper: sleeps (a real pool would work) until killed
            try:
                from ..atomic import write_text_atomic

                write_text_atomic(f"{ckpt}.child", str(os.getpid()))
                time.sleep(60)
            finally:
                os._exit(0)
    resumed = ckpt.exists()
    if resumed:
        with open(ckpt, "rb") as f:
            state = pickle.load(f)
        print(f"resumed {brickname} from checkpoint {ckpt}", flush=True)
    else:
        if brickname in mem:
            nbytes = int(mem[brickname] * threads * 2**20)
            block = np.ones(nbytes // 8)  # touched: resident
            time.sleep(1.0)
            del block
        time.sleep(sleep / 2)
        state = {"nccd": len(ccds), "phase": 1}
        with atomic_path(ckpt) as tmp:
            tmp.write_bytes(pickle.dumps(state))
    time.sleep(sleep / 2)
    cat = np.zeros(max(len(ccds), 1), dtype=[("release", "i2"), ("brickname", "U8"),
                                                ("objid", "i4"), ("ra", "f8"), ("dec", "f8"),
                                                ("expnum", "i8")])
    cat["release"] = release
    cat["brickname"] = brickname
    cat["objid"] = np.arange(len(cat))
    if len(ccds):
        cat["ra"], cat["dec"], cat["expnum"] = ccds["ra"], ccds["dec"], ccds["expnum"]
    hdr = {"BRICKNAM": brickname, "LSDASKCF": config_hash, "THREADS": threads}
    from ..atomic import sha256_file, write_text_atomic

    with atomic_path(layout.tractor(brickname)) as tmp:
        fitsio.write(str(tmp), cat, header=hdr, extname="CATALOG", clobber=True)
        rel = layout.tractor(brickname).relative_to(layout.release_dir)
        write_text_atomic(layout.sha256sum(brickname), f"{sha256_file(tmp)}  {rel}\n")
    if not getattr(options, "keep_checkpoints", False):
        ckpt.unlink(missing_ok=True)
    _completed("runbrick", brickname)
    return {"brickname": brickname, "nsources": len(cat), "nccds": len(ccds),
            "resumed": resumed, "threads": threads}


# -- a tiny survey --------------------------------------------------------------------------------

def make_survey(layout: ReleaseLayout, ra: float = 180.5, dec: float = 32.5,
                nexp: int = 4, bands: tuple[str, ...] = ("g", "r", "z"),
                size: tuple[int, int] = (40, 80), pixscale: float = 20.0,
                cuts: dict[str, int] | None = None) -> list[str]:
    """Write ``nexp`` 2-CCD exposures per band around (ra, dec); returns image_filenames.

    Each CCD is ``size`` pixels (w, h) at ``pixscale`` arcsec/pixel (so a few
    bricks are covered). ``cuts`` maps image basenames to a TESTCUT value that the
    testing zeropoints put into ``ccd_cuts``.
    """
    import fitsio

    rng = np.random.default_rng(12345)
    w, h = size
    names = []
    expnum = 100000
    for band in bands:
        for k in range(nexp):
            expnum += 1
            sec = 10 + k
            name = (f"decam/CP/V4.8.2a/CP20170101/c4d_170101_0100{sec:02d}_ooi_{band}_ls9"
                    f".fits.fz")
            path = layout.image(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            dra = (k - (nexp - 1) / 2) * 0.15 / np.cos(np.radians(dec))
            with atomic_path(path) as tmp:
                with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                    f.write(None, header={"EXPNUM": expnum, "FILTER": f"{band} DECam",
                                          "EXPTIME": 90.0, "MJD-OBS": 57754.0 + 0.01 * k,
                                          "OBSTYPE": "object"})
                    for j, ccd in enumerate(("N4", "S4")):
                        off = (j - 0.5) * h * pixscale / 3600.0
                        hdr = {"EXTNAME": ccd, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                               "CRVAL1": ra + dra, "CRVAL2": dec + off,
                               "CRPIX1": (w + 1) / 2, "CRPIX2": (h + 1) / 2,
                               "CD1_1": -pixscale / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                               "CD2_2": pixscale / 3600,
                               "TESTCUT": int((cuts or {}).get(image_basename(name), 0))}
                        data = (100 + rng.normal(0, 1, (h, w))).astype("f4")
                        f.write(data, header=hdr, extname=ccd, compress="RICE")
            names.append(name)
    return names


def write_config(directory: str | os.PathLike, region: tuple[float, float, float, float] = (
        180.2, 180.8, 32.2, 32.8), bands: tuple[str, ...] = ("g", "r", "z"),
        threads: int = 1, memory_limit_gb: float | None = None, max_retries: int = 3,
        profile: str = "local", name: str = "t") -> Path:
    """A release TOML using this processor: ``survey/`` and ``release/`` under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    mem = f"memory_limit_gb = {memory_limit_gb}\n" if memory_limit_gb else ""
    text = (f'[release]\nname = "{name}"\nsurvey_dir = "survey"\nrelease_dir = "release"\n'
            f'processor = "testing"\nbands = [{", ".join(repr(b) for b in bands)}]\n'
            f'[region]\nra = [{region[0]}, {region[1]}]\ndec = [{region[2]}, {region[3]}]\n'
            f"[stages.runbrick]\nthreads = {threads}\nmax_retries = {max_retries}\n{mem}"
            f'[cluster]\nprofile = "{profile}"\nwindow = 50\n')
    path = d / "release.toml"
    path.write_text(text.replace("'", '"'))
    return path


# -- helpers for fault tests -------------------------------------------------------------------

def task_processes(prefix: str = "runbrick-", env: dict[str, str] | None = None) -> list:
    """Live task child processes (``python -m lsdask.task``) whose task key starts with
    ``prefix`` (their environment names the task: ``LSDASK_TASK_KEY``) and whose environment
    has ``env`` (e.g. the test's completions file: other releases may run meanwhile)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "lsdask.task" not in " ".join(p.info["cmdline"] or []):
                continue
            environ = p.environ()
            if environ.get("LSDASK_TASK_KEY", "").startswith(prefix) and all(
                    environ.get(k) == v for k, v in (env or {}).items()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_for(pred, timeout: float = 120, step: float = 0.1):
    """Poll ``pred()`` until it returns something true; AssertionError after ``timeout``."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {pred}")


def check_all_bricks_once(rel) -> list[str]:
    """Assert every planned brick of a Release was completed exactly once (completions file
    in ``rel.completions``) and has its product; returns the completed bricks."""
    from ..graphs.images import images_in_region, run_images

    _, brick_images = images_in_region(run_images(rel.config), rel.config.region_box())
    done = [k for w, k in completions(rel.completions) if w == "runbrick"]
    assert len(done) == len(set(done)), f"bricks completed twice: {done}"
    assert set(done) == set(brick_images), (sorted(done), sorted(brick_images))
    for b in brick_images:
        assert rel.layout.tractor(b).exists()
    return done

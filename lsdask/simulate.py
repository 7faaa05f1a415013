"""A small but realistic simulated survey in the Community Pipeline (CP) format.

``simulate_survey(survey_dir, SimConfig(...))`` writes, under ``survey_dir``::

    images/decam/CP/V4.8.2a/CP<night>/c4d_<yymmdd>_<hhmmss>_{ooi,oow,ood}_<band>_ls9.fits.fz
    gaia/chunk-<healpix>.fits      reference stars (a real Gaia chunk's columns and types,
                                   + mag_g/r/z, errors)
    tycho2.kd.fits                 Tycho-2 stars (outside the images) as a star kd-tree
    ps1/ps1-<healpix>.fits         Pan-STARRS1-like calibrators for legacyzpts
    truth/truth.fits               HDU TRUTH: sources (fluxes in nanomaggies);
                                   HDU CCDS: per CCD true zeropoint, FWHM, sky
    survey-bricks.fits.gz

One tile-compressed HDU per CCD (EXTNAME = CCD name); headers carry EXPNUM,
MJD-OBS, DATE-OBS, EXPTIME, FILTER, AIRMASS, GAIN, PLVER, PROCDATE, PLPROCID, WCSCAL,
OBJECT, PROPID, CCDNAME and a TAN WCS per CCD placed on the camera's focal plane
(:mod:`lsdask.survey.camera`). Pixels are in ADU (counts): sky, stars and
galaxies (round/elliptical exponential and de Vaucouleurs, convolved with the
exposure's Moffat PSF, FWHM 0.9-1.6" varying slightly across the focal plane),
Gaussian-approximated Poisson + read noise, saturation, a bad column, cosmic rays.
DQ codes follow the CP: 1 bad pixel, 3 saturated, 5 cosmic ray.

Zeropoints: ``ccdzpt`` (and the truth ``zpt``) are for image counts per second:
``flux_nmgy = counts / exptime * 10**(-0.4 * (zpt - 22.5))``. The true zeropoint
is the camera's nominal e-/s zeropoint minus ``2.5 log10(GAIN)``, minus
extinction ``k (airmass - 1)``, minus clouds (0 - ``cloud_max`` mag).

Knobs (:class:`SimConfig`): the region box, ``bands``, ``camera``, ``passes``
(dithered passes per band; each pass tiles the region with pointings),
``ccd_width x ccd_height`` (default 512 x 1024; ``full_size=True`` gives the real
2046 x 4094), ``n_ccds`` (the innermost CCDs of the focal plane; None = all 62
DECam CCDs), ``pixscale`` (default the camera's), ``exptime``, source densities,
``seed``. Each pass tiles the region with pointings of the (reduced) focal plane,
so the number of exposures is about bands x passes x region area / focal-plane
area; cost scales with the number of pixels (about 0.3-0.7 s per 512 x 1024 CCD
including FITS compression, 4 s for a full 2046 x 4094 DECam CCD). For a fast
demo, coarser pixels (``pixscale=1.0``) cover 15x more sky per pixel; when the
FWHM drops below 3 pixels stars are rendered pixel-integrated (5 x 5 sub-pixels)
and the lite calibs write finely sampled PsfEx models (``psf_samp = 0.2``), so
zeropoints stay exact. Galaxies follow the stars' convention: profile and PSF are
convolved on a 3x finer grid, then integrated over each pixel (FWHM < 3 px) or
sampled at its centre (to 0.1-0.3 % of the fitted flux; ``tests/test_simulate.py``).
Same seed and config, same bytes, rendered here or on a Dask client's workers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .processors.lite.psfphot import moffat_stamp, pixel_oversample
from .survey.camera import Camera, get_camera
from .survey.layout import ReleaseLayout
from .survey.ps1cat import PS1_BANDS, PS1_TO_DECAM, ps1_chunk_name
from .survey.refcat import chunk_name, healpix_ring
from .survey.wcs import TanWCS, tan_pixel_to_radec

log = logging.getLogger(__name__)

__all__ = ["SimConfig", "simulate_survey", "moffat_stamp", "pixel_oversample", "TRUTH_DTYPE"]

#: Sky surface brightness (mag / arcsec^2) per band.
SKY_MAG = {"g": 22.1, "r": 21.2, "z": 19.9}
CP_DQ_BAD, CP_DQ_SATURATED, CP_DQ_CR = 1, 3, 5

TRUTH_DTYPE = np.dtype([("objid", "i8"), ("type", "S3"), ("ra", "f8"), ("dec", "f8"),
                        ("flux_g", "f4"), ("flux_r", "f4"), ("flux_z", "f4"),
                        ("shape_r", "f4"), ("shape_e1", "f4"), ("shape_e2", "f4"),
                        ("is_ref", "?")])


@dataclass
class SimConfig:
    """What to simulate (see the module docstring)."""

    ramin: float = 180.0
    ramax: float = 180.1
    decmin: float = 32.0
    decmax: float = 32.1
    bands: tuple[str, ...] = ("g", "r", "z")
    camera: str = "decam"
    passes: int = 1
    ccd_width: int = 512
    ccd_height: int = 1024
    n_ccds: int | None = 4
    full_size: bool = False
    pixscale: float | None = None
    exptime: float = 90.0
    star_density: float = 12000.0  # per deg^2, r in [15, 23] (dense: ~15 ref stars per CCD)
    galaxy_density: float = 5000.0  # per deg^2, r in [18, 23.5]
    fwhm_range: tuple[float, float] = (0.9, 1.6)  # arcsec
    cloud_max: float = 0.3
    seed: int = 1
    version: str = "ls9"
    plver: str = "V4.8.2a"
    mjd_start: float = 58500.1
    propid: str = "2026A-0001"
    extra: dict = field(default_factory=dict)

    def geometry(self, cam: Camera) -> tuple[int, int, float, list[str]]:
        """CCD width, height, pixel scale and the CCD names used."""
        w, h = (cam.ccd_width, cam.ccd_height) if self.full_size else (self.ccd_width,
                                                                         self.ccd_height)
        s = self.pixscale or cam.pixscale
        fp = cam.focal_plane(w, h, s)
        names = list(fp)
        if self.n_ccds is not None and self.n_ccds < len(names):
            # a compact block: innermost rows first, then outwards from the centre along
            # each row in pairs (4 DECam CCDs -> N4, S4, S3, N3: a 2 x 2 block, no holes)
            names = sorted(names, key=lambda n: (round(abs(fp[n][1]), 3), round(abs(fp[n][0]), 3),
                                                 fp[n][0], fp[n][1]))[: self.n_ccds]
        return w, h, s, names


def _galaxy_profile(kind: str, re_pix: float, e1: float, e2: float, half: int, dx: float,
                    dy: float) -> np.ndarray:
    """Unit-sum exponential / de Vaucouleurs profile centred at (dx, dy), integrated over the
    cells of a grid 3x finer than the pixels (3 (2 half + 1) cells a side): each cell is
    averaged over 15 x 15 points within 1 pixel of the stamp's centre (the de Vaucouleurs
    cusp), 5 x 5 within 5 pixels, and sampled at its centre beyond (converged to 1e-4)."""
    n, b = (1.0, 1.678) if kind == "EXP" else (4.0, 7.669)
    e = math.hypot(e1, e2)
    theta = 0.5 * math.atan2(e2, e1)
    ab = (1 - e) / (1 + e)  # axis ratio; re_pix is the major axis's, as the Tractor's EllipseE
    c, s = math.cos(theta), math.sin(theta)

    def profile(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = x - dx, y - dy
        u, v = c * x + s * y, -s * x + c * y
        r = np.minimum(np.sqrt(u ** 2 + (v / ab) ** 2) / max(re_pix, 0.3), 40.0)
        return np.exp(-b * ((np.sqrt(np.sqrt(r)) if n == 4.0 else r) - 1.0))

    g = (np.arange(3 * (2 * half + 1)) - 1) / 3.0 - half  # cell centres
    img = profile(g[None, :], g[:, None])
    mid = 3 * half + 1
    for radius, sub in ((min(5, half), 5), (1, 15)):
        k = 3 * radius
        off = ((np.arange(sub) + 0.5) / sub - 0.5) / 3.0
        pts = (g[mid - k:mid + k + 1, None] + off[None, :]).ravel()
        img[mid - k:mid + k + 1, mid - k:mid + k + 1] = profile(pts[None, :], pts[:, None]
                                                                ).reshape(2 * k + 1, sub,
                                                                          2 * k + 1, sub
                                                                          ).mean(axis=(1, 3))
    return img / img.sum()


def _galaxy_stamp(kind: str, re_pix: float, e1: float, e2: float, half: int, dx: float,
                  dy: float, fwhm: float, beta: float, half_psf: int) -> np.ndarray:
    """The galaxy convolved with the Moffat PSF on a (2 half + 1)^2 stamp, in the stars'
    convention (:func:`pixel_oversample`): integrated over each pixel when the PSF is
    undersampled, sampled at the pixel centres when it is not. The profile's cell integrals
    and the PSF's samples on the 3x finer grid are convolved there, then summed over each
    pixel's 3 x 3 cells (the pixel integrated over once) or taken at its centre cell."""
    from scipy.signal import fftconvolve

    m = 2 * half + 1
    psf = moffat_stamp(3.0 * fwhm, beta, 3 * half_psf + 1)
    img = fftconvolve(_galaxy_profile(kind, re_pix, e1, e2, half, dx, dy), psf / psf.sum(),
                      mode="same")
    if pixel_oversample(fwhm) > 1:
        return img.reshape(m, 3, m, 3).sum(axis=(1, 3))
    centres = img[1::3, 1::3]
    return centres * (img.sum() / centres.sum())


def _truth_catalogue(cfg: SimConfig, rng: np.random.Generator,
                     box: tuple[float, float, float, float]) -> np.ndarray:
    """Sources uniformly in ``box`` (ramin, ramax, decmin, decmax; ramax may exceed 360)."""
    ra0, ra1, dec0, dec1 = box
    area = (ra1 - ra0) * math.cos(math.radians(0.5 * (dec0 + dec1))) * (dec1 - dec0)
    nstar = rng.poisson(cfg.star_density * area)
    ngal = rng.poisson(cfg.galaxy_density * area)
    n = nstar + ngal
    t = np.zeros(n, dtype=TRUTH_DTYPE)
    t["objid"] = np.arange(n)
    # uniform on the sphere inside the box
    sd = rng.uniform(math.sin(math.radians(dec0)), math.sin(math.radians(dec1)), n)
    t["dec"] = np.degrees(np.arcsin(sd))
    t["ra"] = rng.uniform(ra0, ra1, n) % 360.0

    def powerlaw_mags(m0, m1, slope, k):  # dN/dm ~ 10^(slope m)
        u = rng.uniform(size=k)
        a, b = 10 ** (slope * m0), 10 ** (slope * m1)
        return np.log10(a + u * (b - a)) / slope

    r = np.empty(n)
    gr = np.empty(n)
    rz = np.empty(n)
    r[:nstar] = powerlaw_mags(15.0, 23.0, 0.15, nstar)
    gr[:nstar] = rng.uniform(0.3, 1.4, nstar)
    rz[:nstar] = 0.55 * gr[:nstar] + rng.normal(0, 0.05, nstar)
    r[nstar:] = powerlaw_mags(18.0, 23.5, 0.35, ngal)
    gr[nstar:] = rng.uniform(0.4, 1.2, ngal)
    rz[nstar:] = rng.uniform(0.3, 1.0, ngal)
    for b, m in (("g", r + gr), ("r", r), ("z", r - rz)):
        t[f"flux_{b}"] = 10 ** (-0.4 * (m - 22.5))
    t["type"][:nstar] = "PSF"
    kinds = rng.choice(np.array(["EXP", "DEV", "REX"]), ngal, p=[0.6, 0.25, 0.15])
    t["type"][nstar:] = np.where(kinds == "REX", "EXP", kinds)
    t["shape_r"][nstar:] = np.exp(rng.normal(math.log(0.6), 0.5, ngal)).clip(0.15, 4.0)
    e = rng.uniform(0, 0.5, ngal) * (kinds != "REX")
    phi = rng.uniform(0, math.pi, ngal)
    t["shape_e1"][nstar:] = e * np.cos(2 * phi)
    t["shape_e2"][nstar:] = e * np.sin(2 * phi)
    t["is_ref"][:nstar] = (r[:nstar] < 21.5)
    return t


def _write_refcat(layout: ReleaseLayout, truth: np.ndarray, rng: np.random.Generator,
                  box: tuple[float, float, float, float]) -> list[Path]:
    """Gaia chunks of every HEALPix touching ``box`` widened by 1 deg (as the real catalogue,
    which has a chunk everywhere: legacypipe opens every chunk near a brick), empty where the
    simulated sky has no reference star."""
    import fitsio

    ref = truth[truth["is_ref"]]
    n = len(ref)
    mags = {b: 22.5 - 2.5 * np.log10(ref[f"flux_{b}"]) for b in ("g", "r", "z")}
    # the columns and types of a real Gaia chunk (legacypipe's reference.read_gaia reads them),
    # then lsdask's simulated DECam-system magnitudes
    dt = [("source_id", "i8"), ("ra", "f8"), ("dec", "f8"), ("ra_error", "f4"),
          ("dec_error", "f4"), ("phot_g_mean_mag", "f4"), ("phot_g_mean_flux_over_error", "f4"),
          ("phot_g_n_obs", "i2"), ("phot_bp_mean_mag", "f4"),
          ("phot_bp_mean_flux_over_error", "f4"), ("phot_bp_n_obs", "i2"),
          ("phot_rp_mean_mag", "f4"), ("phot_rp_mean_flux_over_error", "f4"),
          ("phot_rp_n_obs", "i2"), ("astrometric_weight_al", "f4"),
          ("astrometric_n_obs_al", "i2"), ("astrometric_n_good_obs_al", "i2"),
          ("astrometric_excess_noise", "f4"), ("astrometric_excess_noise_sig", "f4"),
          ("duplicated_source", "?"), ("ref_epoch", "f4"), ("parallax", "f4"),
          ("parallax_error", "f4"), ("pmra", "f4"), ("pmra_error", "f4"), ("pmdec", "f4"),
          ("pmdec_error", "f4"), ("phot_variable_flag", "?"), ("a_g_val", "f4"),
          ("e_bp_min_rp_val", "f4"), ("phot_bp_rp_excess_factor", "f4"),
          ("astrometric_sigma5d_max", "f4"), ("astrometric_params_solved", "f4"),
          ("mag_g", "f4"), ("mag_g_err", "f4"), ("mag_r", "f4"), ("mag_r_err", "f4"),
          ("mag_z", "f4"), ("mag_z_err", "f4")]
    out = np.zeros(n, dtype=dt)
    out["source_id"] = 4_000_000_000_000_000_000 + ref["objid"]
    out["ra"], out["dec"] = ref["ra"], ref["dec"]
    out["ra_error"] = out["dec_error"] = 0.1  # mas
    gg = mags["r"] - 0.1 - 0.2 * (mags["g"] - mags["r"])
    out["phot_g_mean_mag"] = gg
    out["phot_bp_mean_mag"] = gg + 0.4 + 0.5 * (mags["g"] - mags["r"])
    out["phot_rp_mean_mag"] = gg - 0.5 - 0.4 * (mags["g"] - mags["r"])
    out["phot_g_mean_flux_over_error"] = 1000 * 10 ** (-0.4 * (gg - 17)).clip(0.01, 1)
    out["phot_bp_mean_flux_over_error"] = out["phot_rp_mean_flux_over_error"] = (
        0.3 * out["phot_g_mean_flux_over_error"])
    # fixed stars of a well-measured 5-parameter solution: no proper motion, no parallax
    out["phot_g_n_obs"], out["phot_bp_n_obs"], out["phot_rp_n_obs"] = 300, 30, 30
    out["astrometric_n_obs_al"] = out["astrometric_n_good_obs_al"] = 300
    out["astrometric_weight_al"] = 100.0
    out["parallax_error"] = out["pmra_error"] = out["pmdec_error"] = 0.1
    out["astrometric_sigma5d_max"] = 0.1
    out["astrometric_params_solved"] = 31
    out["phot_bp_rp_excess_factor"] = 1.2
    out["a_g_val"] = out["e_bp_min_rp_val"] = np.nan
    out["ref_epoch"] = 2015.5
    for b in ("g", "r", "z"):
        err = np.hypot(0.004, 0.01 * 10 ** (0.4 * (mags[b] - 20.0)))
        out[f"mag_{b}_err"] = err
        out[f"mag_{b}"] = mags[b] + rng.normal(0, 1, n) * err
    hp = healpix_ring(out["ra"], out["dec"])
    paths = []
    layout.gaia_dir.mkdir(parents=True, exist_ok=True)
    for c in np.union1d(np.unique(hp), _near_healpixes(box)):
        p = layout.gaia_dir / chunk_name(int(c))
        with atomic_path(p) as tmp:
            with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                f.write(out[hp == c], extname="GAIA")
        paths.append(p)
    return paths


def _near_healpixes(box: tuple[float, float, float, float], margin: float = 1.0) -> np.ndarray:
    """HEALPix (nside 32, RING) pixels touching ``box`` widened by ``margin`` deg: a healpixed
    reference catalogue has a file for each of them, as the real ones have everywhere."""
    ra0, ra1, dec0, dec1 = box
    dec0, dec1 = max(dec0 - margin, -90.0), min(dec1 + margin, 90.0)
    wide = margin / max(math.cos(math.radians(max(abs(dec0), abs(dec1)))), 0.02)
    rr, dd = np.meshgrid(np.linspace(ra0 - wide, ra1 + wide, 64), np.linspace(dec0, dec1, 64))
    return np.unique(healpix_ring(np.mod(rr.ravel(), 360.0), dd.ravel()))


def _write_ps1(layout: ReleaseLayout, truth: np.ndarray,
               box: tuple[float, float, float, float]) -> list[Path]:
    """Pan-STARRS1-like calibrators (``ps1/ps1-%05d.fits``, legacyzpts' ``PS1CAT_DIR``): the
    reference stars with the columns legacyzpts reads (``obj_id, ra, dec, ra_ok, dec_ok,
    nmag_ok[5], median[5]`` in grizY). Each star gets a PS1 g-i colour in legacyzpts'
    calibrator range (0.4-2.7) and PS1 magnitudes that legacypipe's PS1->DECam colour terms
    turn back into its true DECam g, r, z exactly."""
    import fitsio

    ref = truth[truth["is_ref"]]
    dec_mag = {b: 22.5 - 2.5 * np.log10(ref[f"flux_{b}"]) for b in ("g", "r", "z")}
    gi = np.clip(0.75 * (dec_mag["g"] - dec_mag["z"]), 0.5, 2.5)
    ps1 = np.zeros((len(ref), 5), np.float32)
    for b in ("g", "r", "z"):
        term = sum(c * gi ** k for k, c in enumerate(PS1_TO_DECAM[b]))
        ps1[:, PS1_BANDS.index(b)] = dec_mag[b] - term
    ps1[:, 2] = ps1[:, 0] - gi  # i
    ps1[:, 4] = ps1[:, 3]  # Y (not calibrated against)
    dt = [("obj_id", "i8"), ("ra", "f8"), ("dec", "f8"), ("ra_ok", "f8"), ("dec_ok", "f8"),
          ("epoch_mean", "f8"), ("nmag_ok", "i2", (5,)), ("median", "f4", (5,)),
          ("median_err", "f4", (5,)), ("stdev", "f4", (5,))]
    out = np.zeros(len(ref), dtype=dt)
    out["obj_id"] = 100_000_000_000_000_000 + ref["objid"]
    out["ra"] = out["ra_ok"] = ref["ra"]
    out["dec"] = out["dec_ok"] = ref["dec"]
    out["epoch_mean"] = 56000.0
    out["nmag_ok"] = 10
    out["median"] = ps1
    out["median_err"] = out["stdev"] = 0.01
    hp = healpix_ring(out["ra"], out["dec"])
    layout.ps1_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in np.union1d(np.unique(hp), _near_healpixes(box)):
        p = layout.ps1_dir / ps1_chunk_name(int(c))
        with atomic_path(p) as tmp:
            with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                f.write(out[hp == c], extname="PS1")
        paths.append(p)
    return paths


TYCHO2_DTYPE = np.dtype([("tyc1", "i2"), ("tyc2", "i2"), ("tyc3", "u1"), ("ra", "f8"),
                         ("dec", "f8"), ("mean_ra", "f8"), ("mean_dec", "f8"),
                         ("sigma_ra", "f4"), ("sigma_dec", "f4"), ("pm_ra", "f4"),
                         ("pm_dec", "f4"), ("sigma_pm_ra", "f4"), ("sigma_pm_dec", "f4"),
                         ("epoch_ra", "f4"), ("epoch_dec", "f4"), ("mag_bt", "f4"),
                         ("mag_vt", "f4"), ("mag_hp", "f4"), ("isgalaxy", "u1"), ("jmag", "f4"),
                         ("hmag", "f4"), ("kmag", "f4"), ("zguess", "f4"), ("ggguess", "f4")])


def _write_tycho2(layout: ReleaseLayout, box: tuple[float, float, float, float],
                  rng: np.random.Generator, n: int = 4) -> Path:
    """``tycho2.kd.fits``: the columns of NERSC's Tycho-2 reference file (legacypipe's
    ``reference.read_tycho2`` reads them) as astrometry.net's star kd-tree. The simulated sky
    has no star brighter than r = 15, so its Tycho-2 stars (V ~ 10-12) lie 0.3-0.6 deg
    outside every image: legacypipe finds and reads them, and masks no simulated pixel."""
    from .survey.startree import write_star_kdtree

    ra0, ra1, dec0, dec1 = box
    t = np.zeros(n, dtype=TYCHO2_DTYPE)
    t["tyc1"], t["tyc2"], t["tyc3"] = 2525, 1000 + np.arange(n), 1
    above = dec1 + rng.uniform(0.3, 0.6, n)
    t["dec"] = t["mean_dec"] = np.minimum(above, 89.0)
    t["ra"] = t["mean_ra"] = np.mod(rng.uniform(ra0, ra1, n), 360.0)
    t["sigma_ra"] = t["sigma_dec"] = 2e-5  # deg
    t["sigma_pm_ra"] = t["sigma_pm_dec"] = 0.002  # arcsec / yr
    t["epoch_ra"] = t["epoch_dec"] = 1991.5
    t["mag_vt"] = rng.uniform(10.0, 12.0, n)
    t["mag_bt"] = t["mag_vt"] + 0.6
    t["jmag"], t["hmag"], t["kmag"] = t["mag_vt"] - 1.2, t["mag_vt"] - 1.5, t["mag_vt"] - 1.6
    t["zguess"] = t["mag_vt"] - 0.8
    t["ggguess"] = t["mag_vt"] - 0.2
    return write_star_kdtree(layout.tycho2_kd, t)


@dataclass
class _Exposure:
    index: int
    expnum: int
    band: str
    ra_bore: float
    dec_bore: float
    mjd: float
    airmass: float
    cloud: float
    fwhm: float  # arcsec at the boresight
    beta: float
    sky_mag: float

    def image_filename(self, cam: Camera, cfg: SimConfig) -> str:
        t = _mjd_to_datetime(self.mjd)
        night = t - _dt.timedelta(hours=12)
        return (f"{cam.name}/CP/{cfg.plver}/CP{night:%Y%m%d}/"
                f"{cam.prefix}_{t:%y%m%d_%H%M%S}_ooi_{self.band}_{cfg.version}.fits.fz")


def _mjd_to_datetime(mjd: float) -> _dt.datetime:
    return _dt.datetime(1858, 11, 17) + _dt.timedelta(days=float(mjd))


def _plan(cfg: SimConfig, cam: Camera, rng: np.random.Generator) -> list[_Exposure]:
    w, h, s, names = cfg.geometry(cam)
    fp = cam.focal_plane(w, h, s)
    off = np.array([fp[n] for n in names])
    # footprint extent (arcsec): CCD y axis along RA (height), x along Dec (width)
    ext_ra = (off[:, 0].max() - off[:, 0].min() + h * s) / 3600.0
    ext_dec = (off[:, 1].max() - off[:, 1].min() + w * s) / 3600.0
    cosd = math.cos(math.radians(0.5 * (cfg.decmin + cfg.decmax)))
    ra_span = (cfg.ramax - cfg.ramin) % 360.0 or 360.0
    step_ra, step_dec = 0.95 * ext_ra / cosd, 0.95 * ext_dec
    nra = max(1, math.ceil(ra_span / step_ra))
    ndec = max(1, math.ceil((cfg.decmax - cfg.decmin) / step_dec))
    exps: list[_Exposure] = []
    mjd = cfg.mjd_start
    k = 0
    for p in range(cfg.passes):
        shift = p / max(cfg.passes, 1)
        for band in cfg.bands:
            for i in range(nra):
                for j in range(ndec):
                    ra = cfg.ramin + (i + 0.5 + 0.33 * shift) * ra_span / nra
                    dec = cfg.decmin + (j + 0.5 + 0.33 * shift) * (cfg.decmax - cfg.decmin) / ndec
                    ra += rng.uniform(-20, 20) / 3600.0 / cosd
                    dec += rng.uniform(-20, 20) / 3600.0
                    exps.append(_Exposure(
                        index=k, expnum=100000 + k, band=band, ra_bore=ra % 360.0,
                        dec_bore=dec, mjd=mjd, airmass=float(rng.uniform(1.0, 1.5)),
                        cloud=float(rng.uniform(0.0, cfg.cloud_max)),
                        fwhm=float(rng.uniform(*cfg.fwhm_range)),
                        beta=float(rng.uniform(3.0, 4.0)),
                        sky_mag=SKY_MAG.get(band, 21.0) + float(rng.normal(0, 0.15))))
                    k += 1
                    mjd += (cfg.exptime + 37.0) / 86400.0
    return exps


def _sky_box(cfg: SimConfig, cam: Camera, exps: list[_Exposure],
             pad: float = 0.01) -> tuple[float, float, float, float]:
    """RA/Dec box holding the region and every CCD of every exposure (plus ``pad`` deg), so
    sources cover all pixels. RA is unwrapped around the region's start."""
    w, h, s, names = cfg.geometry(cam)
    fp = cam.focal_plane(w, h, s)
    ras, decs = [cfg.ramin, cfg.ramin + ((cfg.ramax - cfg.ramin) % 360.0 or 360.0)], [
        cfg.decmin, cfg.decmax]
    for e in exps:
        for n in names:
            r, d = _ccd_wcs(e, fp[n], w, h, s).corners()
            ras.extend(cfg.ramin + ((np.asarray(r) - cfg.ramin + 180.0) % 360.0 - 180.0))
            decs.extend(d)
    cosd = max(math.cos(math.radians(max(abs(min(decs)), abs(max(decs))))), 1e-3)
    return (min(ras) - pad / cosd, max(ras) + pad / cosd, max(-90.0, min(decs) - pad),
            min(90.0, max(decs) + pad))


def _ccd_wcs(e: _Exposure, dxy: tuple[float, float], w: int, h: int, s: float) -> TanWCS:
    ra_c, dec_c = tan_pixel_to_radec(dxy[0], dxy[1], e.ra_bore, e.dec_bore, 0.0, 0.0,
                                     1 / 3600.0, 0.0, 0.0, 1 / 3600.0)
    # x along Dec, y along RA (as DECam CP images); standard (east-left) parity.
    return TanWCS(float(ra_c), float(dec_c), (w + 1) / 2.0, (h + 1) / 2.0,
                  0.0, s / 3600.0, s / 3600.0, 0.0, w, h)


def _render_ccd(e: _Exposure, wcs: TanWCS, cam: Camera, cfg: SimConfig, truth: np.ndarray,
                dxy: tuple[float, float], zpt: float, rng: np.random.Generator):
    """ooi (ADU), oow (1/ADU^2), ood (CP codes) and the true FWHM (pixels) at the centre."""
    w, h, s = wcs.width, wcs.height, wcs.pixscale
    gain = cam.gain
    fwhm_c = e.fwhm / s * (1.0 + 0.05 * math.hypot(*dxy) / 3600.0)
    sky_e = 10 ** (0.4 * (zpt - e.sky_mag)) * s * s * cfg.exptime * gain  # e- / pixel
    img = np.zeros((h, w), dtype=float)
    x, y = wcs.radec_to_pixel(truth["ra"], truth["dec"])
    x, y = x - 1.0, y - 1.0  # 0-based
    half_psf = int(min(31, max(15, math.ceil(5 * fwhm_c))))
    inside = (x > -half_psf) & (x < w + half_psf) & (y > -half_psf) & (y < h + half_psf)
    cps = 10 ** (0.4 * (zpt - 22.5)) * cfg.exptime * gain  # e- per nanomaggy
    flux = truth[f"flux_{e.band}"].astype(float) * cps
    for i in np.flatnonzero(inside):
        xi, yi = x[i], y[i]
        fw = fwhm_c * (1.0 + 0.03 * (yi - h / 2) / h)
        ix, iy = int(round(xi)), int(round(yi))
        kind = truth["type"][i].decode()
        if kind == "PSF":
            half = half_psf
            stamp = moffat_stamp(fw, e.beta, half, xi - ix, yi - iy, pixel_oversample(fw))
            stamp /= stamp.sum()  # exact flux even when undersampled (large pixscale)
        else:
            re_pix = float(truth["shape_r"][i]) / s
            half = int(min(48, max(half_psf, math.ceil(6 * re_pix + 3 * fw))))
            stamp = _galaxy_stamp(kind, re_pix, float(truth["shape_e1"][i]),
                                  float(truth["shape_e2"][i]), half, xi - ix, yi - iy, fw,
                                  e.beta, half_psf)
        y0, y1, x0, x1 = iy - half, iy + half + 1, ix - half, ix + half + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1 = stamp.shape[0] - max(0, y1 - h)
        sx1 = stamp.shape[1] - max(0, x1 - w)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        img[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] += flux[i] * stamp[sy0:sy1, sx0:sx1]
    var_e = img + sky_e + cam.read_noise ** 2
    img_e = img + sky_e + rng.standard_normal((h, w)) * np.sqrt(var_e)
    dq = np.zeros((h, w), dtype=np.int16)
    # cosmic rays: short tracks
    for _ in range(int(rng.poisson(2e-6 * w * h * cfg.exptime / 90.0 * 4))):
        cx, cy = rng.integers(0, w), rng.integers(0, h)
        ln = int(rng.integers(1, 6))
        ang = rng.uniform(0, math.pi)
        xs = np.clip((cx + np.arange(ln) * math.cos(ang)).astype(int), 0, w - 1)
        ys = np.clip((cy + np.arange(ln) * math.sin(ang)).astype(int), 0, h - 1)
        img_e[ys, xs] += rng.uniform(2000, 20000)
        dq[ys, xs] = CP_DQ_CR
    sat = img_e >= cam.saturation
    img_e[sat] = cam.saturation
    dq[sat] = CP_DQ_SATURATED
    ivar = 1.0 / (np.maximum(var_e, 1.0) / gain ** 2)  # ADU^-2, from the model variance
    if rng.uniform() < 0.5:
        col = int(rng.integers(0, w))
        dq[:, col] = CP_DQ_BAD
        ivar[:, col] = 0.0
        img_e[:, col] = 0.0
    return (img_e / gain).astype(np.float32), ivar.astype(np.float32), dq, fwhm_c, sky_e / gain


def _sexa(v: float, hours: bool) -> str:
    if hours:
        v = v / 15.0
    sign = "-" if v < 0 else ""
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    sec = ((v - d) * 60 - m) * 60
    return f"{sign}{d:02d}:{m:02d}:{sec:05.2f}"


def _headers(e: _Exposure, cam: Camera, cfg: SimConfig, fname: str) -> dict:
    t = _mjd_to_datetime(e.mjd)
    proc = t + _dt.timedelta(days=1, hours=3)
    plprocid = hashlib.sha1(f"{cfg.seed}-{e.expnum}".encode()).hexdigest()[:7]
    return {
        "OBJECT": f"DECaLS_{e.index:05d}_{e.band}", "PROCTYPE": "InstCal", "PRODTYPE": "image",
        "TELESCOP": cam.telescope, "INSTRUME": cam.instrument, "OBSTYPE": "object",
        "EXPTIME": cfg.exptime, "EXPREQ": cfg.exptime,
        "DATE-OBS": t.strftime("%Y-%m-%dT%H:%M:%S.%f"), "TIME-OBS": t.strftime("%H:%M:%S.%f"),
        "MJD-OBS": round(e.mjd, 8), "EXPNUM": e.expnum, "PROPID": cfg.propid,
        "FILTER": cam.filter_string(e.band), "BAND": e.band,
        "RA": _sexa(e.ra_bore, True), "DEC": _sexa(e.dec_bore, False),
        "TELRA": _sexa(e.ra_bore, True), "TELDEC": _sexa(e.dec_bore, False),
        "AIRMASS": round(e.airmass, 4), "GAIN": cam.gain, "PLVER": cfg.plver,
        "PROCDATE": proc.strftime("%Y-%m-%dT%H:%M:%S"), "PLPROCID": plprocid,
        "DTNSANAM": Path(fname).name, "SIMULATD": (True, "lsdask simulated exposure"),
        # the CP's astrometric-calibration flag, which legacypipe's DECam reader requires
        "WCSCAL": "Successful",
    }


def _write_exposures(layout: ReleaseLayout, exps: list[_Exposure], cam: Camera,
                     cfg: SimConfig, truth: np.ndarray, client=None):
    """(image file name, CCD truth rows) of each exposure in order, as each is written."""
    if client is None:
        for e in exps:
            yield _write_exposure(layout, e, cam, cfg, truth)
        return
    import uuid

    [shared] = client.scatter([truth], broadcast=True)
    run = uuid.uuid4().hex[:8]  # keys of this call only (another survey may reuse the names)
    futures = [client.submit(_write_exposure, layout, e, cam, cfg, shared, pure=False,
                             key=f"simulate-{run}-{Path(e.image_filename(cam, cfg)).name}")
               for e in exps]
    for f in futures:
        yield f.result()


def _write_exposure(layout: ReleaseLayout, e: _Exposure, cam: Camera, cfg: SimConfig,
                    truth: np.ndarray) -> tuple[str, list[tuple]]:
    import fitsio

    from .survey.camera import companion

    w, h, s, names = cfg.geometry(cam)
    fp = cam.focal_plane(w, h, s)
    fname = e.image_filename(cam, cfg)
    rng = np.random.default_rng([cfg.seed, 1, e.index])
    zpt = cam.zp0[e.band] - 2.5 * math.log10(cam.gain) - cam.k_ext[e.band] * (
        e.airmass - 1.0) - e.cloud
    phdr = _headers(e, cam, cfg, fname)
    planes = {"ooi": [], "oow": [], "ood": []}
    rows = []
    for ccd in names:
        wcs = _ccd_wcs(e, fp[ccd], w, h, s)
        img, iv, dq, fwhm_pix, sky = _render_ccd(e, wcs, cam, cfg, truth, fp[ccd], zpt, rng)
        hdr = dict(wcs.header_cards())
        hdr.update({"EXTNAME": ccd, "CCDNAME": ccd, "DETPOS": ccd, "INHERIT": True,
                    "GAIN": cam.gain, "GAINA": cam.gain, "GAINB": cam.gain,
                    "RDNOISE": cam.read_noise, "RDNOISEA": cam.read_noise,
                    "RDNOISEB": cam.read_noise, "SATURATE": cam.saturation / cam.gain,
                    "FWHM": round(fwhm_pix, 3), "AVSKY": round(float(sky), 3)})
        planes["ooi"].append((img, hdr))
        planes["oow"].append((iv, hdr))
        planes["ood"].append((dq, hdr))
        rows.append((fname, ccd, e.expnum, e.band, zpt, fwhm_pix, fwhm_pix * s, e.beta, sky,
                     e.airmass, e.cloud, e.ra_bore, e.dec_bore))
    for kind in ("ooi", "oow", "ood"):
        rel = fname if kind == "ooi" else companion(fname, kind)
        path = layout.image(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
                f.write(None, header=dict(phdr, PRODTYPE={"ooi": "image", "oow": "wtmap",
                                                          "ood": "dqmask"}[kind]))
                for data, hdr in planes[kind]:
                    if kind == "ood":
                        f.write(data, header=hdr, extname=hdr["EXTNAME"], compress="rice")
                    else:
                        f.write(data, header=hdr, extname=hdr["EXTNAME"], compress="rice",
                                qlevel=16 if kind == "ooi" else 4,
                                qmethod="SUBTRACTIVE_DITHER_2",
                                dither_seed=1 + (e.expnum % 9999))
    return fname, rows


CCDTRUTH_DTYPE = np.dtype([("image_filename", "S120"), ("ccdname", "S5"), ("expnum", "i8"),
                           ("filter", "S1"), ("zpt", "f8"), ("fwhm", "f4"),
                           ("fwhm_arcsec", "f4"), ("psf_beta", "f4"), ("sky", "f4"),
                           ("airmass", "f4"), ("cloud", "f4"), ("ra_bore", "f8"),
                           ("dec_bore", "f8")])


def simulate_survey(survey_dir: str | Path, config: SimConfig | None = None,
                    progress=None, client=None) -> dict:
    """Write a simulated survey under ``survey_dir``; returns a summary dict
    (``image_filenames``, ``n_exposures``, ``n_ccds``, ``n_sources``, ``truth``). Exposures
    are rendered on the workers of a Dask ``client`` when one is given (the same bytes:
    each exposure has its own random stream)."""
    import fitsio

    from .survey.bricks import brick_grid

    cfg = config or SimConfig()
    cam = get_camera(cfg.camera)
    for b in cfg.bands:
        if b not in cam.zp0:
            from .errors import ConfigError

            raise ConfigError(f"camera {cam.name} has no band {b!r} (has {cam.bands})")
    layout = ReleaseLayout(survey_dir)
    exps = _plan(cfg, cam, np.random.default_rng([cfg.seed, 3]))
    box = _sky_box(cfg, cam, exps)
    truth = _truth_catalogue(cfg, np.random.default_rng([cfg.seed, 0]), box)
    _write_refcat(layout, truth, np.random.default_rng([cfg.seed, 2]), box)
    _write_tycho2(layout, box, np.random.default_rng([cfg.seed, 4]))
    _write_ps1(layout, truth, box)
    names, rows = [], []
    for fname, r in _write_exposures(layout, exps, cam, cfg, truth, client):
        names.append(fname)
        rows.extend(r)
        if progress:
            progress(fname)
    ccdtruth = np.array(rows, dtype=CCDTRUTH_DTYPE)
    layout.truth.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(layout.truth) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(truth, extname="TRUTH", header={"SEED": cfg.seed})
            f.write(ccdtruth, extname="CCDS")
    if not layout.survey_bricks.exists():
        brick_grid().write(layout.survey_bricks)
    return {"image_filenames": names, "n_exposures": len(exps), "n_ccds": len(rows),
            "n_sources": len(truth), "truth": str(layout.truth)}

"""The lite processor's elliptical EXP / DEV fits (:mod:`lsdask.processors.lite.galfit`)
against truth: isolated elliptical galaxies rendered by the simulator's own galaxy renderer
(its e1, e2 convention) on two CCDs with different PSFs, fitted with fluxes forced across
the CCDs. The round fits underestimate the fluxes of elongated galaxies; the elliptical fits
recover e1, e2, r_e and the total flux, with inverse variances that describe their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsdask.processors.lite import galfit
from lsdask.processors.lite.ccdimage import CcdImage, CcdWcs
from lsdask.simulate import _galaxy_stamp, moffat_stamp
from lsdask.survey.wcs import TanWCS

PIXSCALE = 0.4  # arcsec; FWHM >= 3 px: natively sampled PSFs
SIZE = 360
STEP = 60
BETA = 3.5
NOISE = 0.02  # nanomaggies per pixel
FLUX = 60.0   # nanomaggies


def _wcs(ra: float, dec: float) -> TanWCS:
    # the simulator's CCD orientation: x along Dec, y along RA
    s = PIXSCALE / 3600.0
    return TanWCS(ra, dec, (SIZE + 1) / 2.0, (SIZE + 1) / 2.0, 0.0, s, s, 0.0, SIZE, SIZE)


def _truth(rng: np.random.Generator) -> np.ndarray:
    n = (SIZE // STEP - 1) ** 2
    t = np.zeros(n, dtype=[("x", "f8"), ("y", "f8"), ("type", "U3"), ("re", "f8"),
                           ("e1", "f8"), ("e2", "f8")])
    g = np.arange(STEP, SIZE - STEP // 2, STEP, dtype=float)
    t["x"] = np.repeat(g, len(g))[:n] + rng.uniform(-0.5, 0.5, n)
    t["y"] = np.tile(g, len(g))[:n] + rng.uniform(-0.5, 0.5, n)
    t["type"] = np.where(np.arange(n) % 2 == 0, "EXP", "DEV")
    t["re"] = rng.uniform(0.7, 1.4, n)
    e = rng.uniform(0.3, 0.55, n)
    phi = rng.uniform(0, math.pi, n)
    t["e1"], t["e2"] = e * np.cos(2 * phi), e * np.sin(2 * phi)
    return t


def _ccd(t: np.ndarray, fwhm_arcsec: float, rng: np.random.Generator, row: int) -> CcdImage:
    fw = fwhm_arcsec / PIXSCALE
    half_psf = 15
    img = np.zeros((SIZE, SIZE))
    for s in t:
        ix, iy = int(round(s["x"])), int(round(s["y"]))
        half = int(min(48, max(half_psf, math.ceil(6 * s["re"] / PIXSCALE + 3 * fw))))
        stamp = _galaxy_stamp(s["type"], s["re"] / PIXSCALE, s["e1"], s["e2"], half,
                              s["x"] - ix, s["y"] - iy, fw, BETA, half_psf)
        img[iy - half:iy + half + 1, ix - half:ix + half + 1] += FLUX * stamp
    img += rng.normal(0, NOISE, img.shape)
    psf = moffat_stamp(fw, BETA, half_psf)
    psf /= psf.sum()
    return CcdImage(row=row, band="r", x0=0, y0=0, img=img.astype(np.float32),
                    ivar=np.full(img.shape, NOISE ** -2, np.float32),
                    dq=np.zeros(img.shape, np.int16), wcs=CcdWcs(_wcs(180.0, 32.5)),
                    pmap=None, psf=psf, psfmodel=None, fwhm=fwhm_arcsec,
                    psfnorm=float(np.sqrt((psf ** 2).sum())), galnorm=0.0, mjd=0.0)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(5)
    t = _truth(rng)
    ims = [_ccd(t, fw, rng, i) for i, fw in enumerate((1.3, 1.6))]
    ra, dec = ims[0].wcs.pix_to_sky(t["x"], t["y"])
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    n = len(t)
    # round fits (the grid of radii), then the elliptical ones from their radii
    A, B = {"r": np.zeros((n, galfit.n_models()))}, {"r": np.zeros((n, galfit.n_models()))}
    for im in ims:
        ms = galfit.model_sums_ccd(im, ra, dec)
        A["r"][ms.idx] += ms.A
        B["r"][ms.idx] += ms.B
    rnd = galfit.choose_models(A, B)
    fit = galfit.choose_models(A, B)
    gi = np.arange(n)
    preps = [p for p in (galfit.ellip_prep_ccd(im, ra, dec, gi) for im in ims) if p]
    fits = {"psf": galfit.fit_ellipses(preps, ["r"], n, "psf", None)}
    for fam, start in (("rex", "rex"), ("exp", "rex"), ("dev", "dev")):
        fits[fam] = galfit.fit_ellipses(preps, ["r"], n, fam, np.log(fit.families[start][1]),
                                        round_only=fam == "rex")
    galfit.apply_ellipses(fit, gi, fits)
    return t, rnd, fit, fits


def test_elliptical_fits_recover_shapes_and_fluxes(fitted):
    """Each galaxy is typed by its true profile; fitted e1, e2 within 0.03 of the truth
    for EXP, 0.06 for DEV (the simulator's convention: position angle atan2(e2, e1) / 2
    east of north, axis ratio (1 - e) / (1 + e)). EXP: total fluxes within 3 % and r_e
    within 5 %, where the round fits are > 3 % low. DEV: fluxes and radii of the largest
    (r_e > 1.1", beyond 2.5 r_e of the cutout) run low by up to ~8 % and ~12 % (as the
    round DEV fits do: the models' and the simulator's profiles differ in their wings):
    median within 5 %."""
    t, rnd, fit, fits = fitted
    typ = fit.type
    assert np.all(typ == t["type"]), list(zip(typ, t["type"], strict=True))
    de = np.hypot(fit.shape_e1 - t["e1"], fit.shape_e2 - t["e2"])
    ratio = fit.flux["r"] / FLUX
    lnr = np.log(fit.shape_r / t["re"])
    exp = t["type"] == "EXP"
    assert np.median(de) < 0.015 and np.max(de[exp]) < 0.03 and np.max(de) < 0.06, de
    assert np.all(np.abs(ratio[exp] - 1) < 0.03), ratio[exp]
    assert np.all(np.abs(lnr[exp]) < 0.05), lnr[exp]
    assert np.median(rnd.flux["r"][exp] / FLUX) < 0.97, np.median(rnd.flux["r"][exp] / FLUX)
    assert abs(np.median(ratio[~exp]) - 1) < 0.05, ratio[~exp]
    assert np.all(np.abs(ratio[~exp] - 1) < 0.1), ratio[~exp]
    assert abs(np.median(lnr[~exp])) < 0.05 and np.all(np.abs(lnr[~exp]) < 0.15), lnr[~exp]


def test_elliptical_fit_inverse_variances(fitted):
    """The shape inverse variances (fluxes marginalised) are positive and describe the
    scatter of the fitted e1, e2 about the truth; the chosen model's dchisq is the best."""
    t, _, fit, _ = fitted
    assert np.all(fit.shape_e1_ivar > 0) and np.all(fit.shape_e2_ivar > 0)
    assert np.all(fit.shape_r_ivar > 0)
    chi = np.r_[(fit.shape_e1 - t["e1"]) * np.sqrt(fit.shape_e1_ivar),
                (fit.shape_e2 - t["e2"]) * np.sqrt(fit.shape_e2_ivar)]
    assert 0.4 < np.std(chi) < 2.0, np.std(chi)
    col = np.where(fit.type == "EXP", 3, 2)
    best = fit.dchisq[np.arange(len(t)), col]
    assert np.all(best >= fit.dchisq[:, :4].max(axis=1) - 1e-3 * np.abs(best))


def test_round_galaxy_stays_round():
    """e = 0 elliptical transform equals the round one (profile_ft) for both families."""
    q = np.linspace(0, 5, 50)
    for fam in ("exp", "dev"):
        G, _ = galfit._profile_q2(fam, (q * q).astype(np.float32))
        ref = galfit.profile_ft("rex" if fam == "exp" else fam, q)
        assert np.allclose(G, ref, atol=2e-4), (fam, np.abs(G - ref).max())

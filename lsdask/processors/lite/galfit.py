"""Light-profile fits of detected sources: PSF, REX (round exponential) and round de
Vaucouleurs models, each convolved with every CCD's own PSF, fluxes forced across CCDs.

For every source and every model on a grid of half-light radii, each CCD contributes the
sums ``A = sum(w P^2)`` and ``B = sum(w P d)`` over the source's cutout (``P`` the unit-flux
model on the CCD's pixels, ``d`` the calibrated pixels, ``w`` their inverse variance).
Per band the forced flux is ``sum B / sum A`` with inverse variance ``sum A`` (one flux per
band for all the band's CCDs, as legacypipe's forced fits), and the chi-squared improvement
over "no source" is ``sum_b B_b^2 / A_b`` (negative-flux bands count negatively, as
legacypipe's ``_chisq_improvement``): the ``dchisq`` of each model. The radius is the
maximum of a parabola in ln(r_e) through the best grid point and its neighbours; its
inverse variance comes from the parabola's curvature (fluxes profiled out).

Models are built on a finely sampled grid of each CCD's (pixel-integrated) PSF: the PSF's
Fourier transform times the profile's analytic (exponential) or tabulated (de
Vaucouleurs Hankel transform) one, then cubic-spline sampled at each source's sub-pixel
pixel centres, so undersampled PSFs are handled exactly as in forced PSF photometry.
One PSF per CCD (at the centre of its overlap with the brick) is used for all models.
Sources are fitted one at a time at fixed positions (no simultaneous fit of
blends); elliptical shapes are not fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .ccdimage import CcdImage

#: Half-light radius grid (arcsec) of the REX and DEV model families.
RE_GRID = np.geomspace(0.05, 6.0, 12)
#: Model families after the PSF (index 0): name and profile.
FAMILIES = ("rex", "dev")
#: Free parameters per model (positions + shape; fluxes are common to all), as legacypipe.
NPARAMS = {"psf": 2, "rex": 3, "dev": 3}
#: Fine-grid oversampling used for natively sampled PSF models.
NATIVE_OVERSAMPLE = 3
#: Model cutout radius: at least this many pixels, 2.5 PSF FWHM and 3 arcsec.
MIN_RADIUS_PIX = 7


def n_models() -> int:
    return 1 + len(FAMILIES) * len(RE_GRID)


@lru_cache(maxsize=1)
def _dev_table() -> tuple[np.ndarray, np.ndarray]:
    """(q, F(q)): Hankel transform of the unit-flux, unit-r_e de Vaucouleurs profile
    (truncated at 8 r_e), q in cycles per r_e."""
    from scipy.special import j0

    r = np.geomspace(1e-6, 8.0, 6000)
    prof = np.exp(-7.669 * (r ** 0.25 - 1.0))
    w = np.gradient(r) * r * prof
    q = np.r_[0.0, np.geomspace(1e-3, 200.0, 800)]
    F = (j0(2 * np.pi * q[:, None] * r[None, :]) * w[None, :]).sum(axis=1)
    return q, F / F[0]


def profile_ft(family: str, q: np.ndarray) -> np.ndarray:
    """Fourier transform (unit flux) of a round profile at spatial frequency ``q`` in
    cycles per half-light radius."""
    if family == "rex":
        return (1.0 + (2 * np.pi * q / 1.678) ** 2) ** -1.5
    if family == "dev":
        qt, F = _dev_table()
        return np.interp(q, qt, F, right=0.0)
    raise ValueError(family)


@dataclass
class FinePsf:
    """A CCD's PSF on a grid ``k`` times finer than its pixels, centred at ``c`` (fine
    pixels); native-pixel samples of it sum to ``norm``."""

    img: np.ndarray
    k: int
    c: int
    norm: float


def fine_psf(im: CcdImage) -> FinePsf:
    """The CCD's PSF at the centre of its overlap on a fine grid."""
    model = im.psfmodel
    k = getattr(model, "_fine", 0) if model is not None else 0
    if k:
        cy = im.y0 + im.img.shape[0] / 2.0
        cx = im.x0 + im.img.shape[1] / 2.0
        raw = np.nan_to_num(model.raw_at(cx, cy))
        c = raw.shape[0] // 2
        h = c // k
        norm = float(raw[c - h * k:c + h * k + 1:k, c - h * k:c + h * k + 1:k].sum())
        return FinePsf(raw, k, c, norm)
    psf = im.psf.astype(float)
    n = psf.shape[0]  # odd
    k = NATIVE_OVERSAMPLE
    m = n * k
    F = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(psf)))
    pad = (m - n) // 2
    Fp = np.pad(F, pad)
    fine = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(Fp))).real * k * k
    return FinePsf(fine, k, m // 2, 1.0)


def model_grids(fp: FinePsf, pixscale: float, margin_pix: int, psf_only: bool = False
                ) -> list[np.ndarray]:
    """Spline coefficients of the fine-grid model images: PSF, then (unless ``psf_only``)
    each family over :data:`RE_GRID`. The grid is padded by ``margin_pix`` native pixels
    (wrap-around)."""
    from scipy import fft
    from scipy.ndimage import spline_filter

    pad = margin_pix * fp.k
    n = fft.next_fast_len(fp.img.shape[0] + 2 * pad, real=True)
    img = np.zeros((n, n))
    m = fp.img.shape[0]
    img[pad:pad + m, pad:pad + m] = fp.img
    n0, n1 = img.shape
    FT = fft.rfft2(img)
    fy = np.fft.fftfreq(n0) * fp.k  # cycles per native pixel
    fx = np.fft.rfftfreq(n1) * fp.k
    f = np.hypot(fy[:, None], fx[None, :])
    # the PSF sits at (c + pad, c + pad); a real, symmetric profile transform keeps it there
    out = [spline_filter(img, order=3)]
    for fam in () if psf_only else FAMILIES:
        for re in RE_GRID:
            G = profile_ft(fam, f * (re / pixscale))
            out.append(spline_filter(fft.irfft2(FT * G, s=img.shape), order=3))
    return out


@dataclass
class ModelSums:
    """One CCD's per-source, per-model sums (see the module docstring)."""

    band: str
    idx: np.ndarray   # sources measured
    A: np.ndarray     # (n, K)
    B: np.ndarray     # (n, K)
    U: np.ndarray | None = None  # (n, 2): sum w dP d  (PSF model; dP: gradient wrt the
    V: np.ndarray | None = None  # (n, 2): sum w dP P   source's east/north offset, arcsec)
    M: np.ndarray | None = None  # (n, 2, 2): sum w dP dP^T


def model_sums_ccd(im: CcdImage, ra: np.ndarray, dec: np.ndarray,
                   psf_only: bool = False) -> ModelSums:
    """The A and B sums of every model (only the PSF's with ``psf_only``) and the PSF
    model's position sums for the sources at (ra, dec) on one CCD."""
    from scipy.ndimage import map_coordinates

    x, y = im.wcs.sky_to_pix(ra, dec)
    x = np.asarray(x) - im.x0
    y = np.asarray(y) - im.y0
    h, w = im.img.shape
    inside = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < w - 0.5) & (y > -0.5) & \
        (y < h - 0.5)
    idx = np.flatnonzero(inside)
    K = 1 if psf_only else n_models()
    if idx.size == 0:
        return ModelSums(im.band, idx, np.zeros((0, K)), np.zeros((0, K)), np.zeros((0, 2)),
                         np.zeros((0, 2)), np.zeros((0, 2, 2)))
    pixscale = im.wcs.tan.pixscale
    fwhm_pix = im.fwhm / pixscale
    r = int(np.ceil(max(MIN_RADIUS_PIX, 2.5 * fwhm_pix, 3.0 / pixscale)))
    fp = fine_psf(im)
    grids = model_grids(fp, pixscale, margin_pix=r, psf_only=psf_only)
    c = fp.c + r * fp.k
    xs, ys = x[idx], y[idx]
    ix, iy = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    dx, dy = xs - ix, ys - iy
    g = np.arange(-r, r + 1, dtype=float)
    n = len(idx)
    yy = np.broadcast_to((c + fp.k * (g[None, :] - dy[:, None]))[:, :, None], (n, g.size, g.size))
    xx = np.broadcast_to((c + fp.k * (g[None, :] - dx[:, None]))[:, None, :], (n, g.size, g.size))
    coords = np.stack([yy.ravel(), xx.ravel()])
    img = np.pad(im.img, r)
    ivar = np.pad(im.ivar, r)
    off = np.arange(2 * r + 1)
    rows = (iy[:, None] + off[None, :])[:, :, None]
    cols = (ix[:, None] + off[None, :])[:, None, :]
    civ = ivar[rows, cols].astype(float)
    wd = civ * img[rows, cols]
    A = np.zeros((n, K))
    B = np.zeros((n, K))

    def sample(coef, cy, cx):
        v = map_coordinates(coef, np.stack([cy.ravel(), cx.ravel()]), order=3,
                            prefilter=False, mode="constant")
        return v.reshape(n, g.size, g.size) / fp.norm

    for k, coef in enumerate(grids):
        P = map_coordinates(coef, coords, order=3, prefilter=False, mode="constant")
        P = P.reshape(n, g.size, g.size) / fp.norm
        A[:, k] = np.einsum("nij,nij->n", P * P, civ)
        B[:, k] = np.einsum("nij,nij->n", P, wd)
    # PSF-model gradients wrt the source position (central differences, 0.1 pixel), in
    # CCD pixels and then per arcsec east / north through the CCD's local WCS Jacobian
    e = 0.1
    gx = (sample(grids[0], yy, xx - fp.k * e) - sample(grids[0], yy, xx + fp.k * e)) / (2 * e)
    gy = (sample(grids[0], yy - fp.k * e, xx) - sample(grids[0], yy + fp.k * e, xx)) / (2 * e)
    J = _jacobian(im, float(np.median(ra[idx])), float(np.median(dec[idx])))
    dE = gx * J[0, 0] + gy * J[1, 0]
    dN = gx * J[0, 1] + gy * J[1, 1]
    P0 = sample(grids[0], yy, xx)
    U = np.stack([np.einsum("nij,nij->n", dE, wd), np.einsum("nij,nij->n", dN, wd)], axis=1)
    V = np.stack([np.einsum("nij,nij,nij->n", dE, P0, civ),
                  np.einsum("nij,nij,nij->n", dN, P0, civ)], axis=1)
    M = np.empty((n, 2, 2))
    M[:, 0, 0] = np.einsum("nij,nij,nij->n", dE, dE, civ)
    M[:, 1, 1] = np.einsum("nij,nij,nij->n", dN, dN, civ)
    M[:, 0, 1] = M[:, 1, 0] = np.einsum("nij,nij,nij->n", dE, dN, civ)
    return ModelSums(im.band, idx, A, B, U, V, M)


def _jacobian(im: CcdImage, ra: float, dec: float) -> np.ndarray:
    """d(CCD x, y) / d(east, north offset in arcsec) at (ra, dec): J[pixel axis, sky axis]."""
    d = 1.0 / 3600.0
    cosd = np.cos(np.deg2rad(dec))
    x0, y0 = im.wcs.sky_to_pix(np.array([ra]), np.array([dec]))
    xe, ye = im.wcs.sky_to_pix(np.array([ra + d / cosd]), np.array([dec]))
    xn, yn = im.wcs.sky_to_pix(np.array([ra]), np.array([dec + d]))
    return np.array([[float(xe[0] - x0[0]), float(xn[0] - x0[0])],
                     [float(ye[0] - y0[0]), float(yn[0] - y0[0])]])


def position_step(U: dict, V: dict, M: dict, flux: dict, maxstep: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Gauss-Newton step of every source's position from the per-band sums (fluxes
    fixed at ``flux``): (east, north) offsets in arcsec (clipped to ``maxstep``) and the
    positional inverse variances (arcsec^-2) east and north."""
    n = next(iter(U.values())).shape[0]
    H = np.zeros((n, 2, 2))
    gr = np.zeros((n, 2))
    for b in U:
        f = flux[b][:, None]
        gr += f * U[b] - f * f * V[b]
        H += (f * f)[:, :, None] * M[b]
    det = H[:, 0, 0] * H[:, 1, 1] - H[:, 0, 1] ** 2
    ok = det > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        sE = np.where(ok, (H[:, 1, 1] * gr[:, 0] - H[:, 0, 1] * gr[:, 1]) / det, 0.0)
        sN = np.where(ok, (H[:, 0, 0] * gr[:, 1] - H[:, 0, 1] * gr[:, 0]) / det, 0.0)
    step = np.stack([sE, sN], axis=1)
    big = np.hypot(sE, sN) > maxstep
    step[big | ~np.isfinite(step).all(axis=1)] = 0.0
    return step, np.maximum(H[:, 0, 0], 0), np.maximum(H[:, 1, 1], 0)


@dataclass
class FitResult:
    """Per-source model choice and measurements."""

    type: np.ndarray        # "PSF", "REX", "DEV"
    dchisq: np.ndarray      # (n, 5): PSF, REX, DEV, EXP, SER (EXP, SER not fitted: 0)
    shape_r: np.ndarray     # arcsec
    shape_r_ivar: np.ndarray
    flux: dict              # band -> (n,) fluxes of the chosen model
    flux_ivar: dict
    flux_psf: dict          # band -> (n,) fluxes of the PSF model
    keep: np.ndarray        # legacypipe's detection cut on the penalised dchisq


def _dchisq(A: dict, B: dict) -> np.ndarray:
    tot = 0.0
    for b in A:
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(A[b] > 0, B[b] ** 2 / np.where(A[b] > 0, A[b], 1), 0.0)
        tot = tot + np.sign(B[b]) * d
    return tot


def _parabola(u: np.ndarray, v: np.ndarray, j: np.ndarray):
    """Vertex (u*, v*, curvature c2 = -v'') of parabolas through (u[j-1..j+1], v[., j-1..j+1])."""
    rows = np.arange(v.shape[0])
    u0, u1 = u[j - 1], u[j]
    v0, v1, v2 = v[rows, j - 1], v[rows, j], v[rows, j + 1]
    h = u1 - u0  # uniform grid
    a = (v0 - 2 * v1 + v2) / (2 * h * h)
    b = (v2 - v0) / (2 * h)
    with np.errstate(invalid="ignore", divide="ignore"):
        du = np.where(a < 0, -b / (2 * a), 0.0)
    du = np.clip(du, -h, h)
    us = u1 + du
    vs = v1 + b * du + a * du * du
    return us, vs, -2 * a


def _interp3(u: np.ndarray, vals: np.ndarray, j: np.ndarray, us: np.ndarray) -> np.ndarray:
    """Quadratic (Lagrange) interpolation of vals[:, j-1..j+1] at us."""
    rows = np.arange(vals.shape[0])
    u0, u1, u2 = u[j - 1], u[j], u[j + 1]
    l0 = (us - u1) * (us - u2) / ((u0 - u1) * (u0 - u2))
    l1 = (us - u0) * (us - u2) / ((u1 - u0) * (u1 - u2))
    l2 = (us - u0) * (us - u1) / ((u2 - u0) * (u2 - u1))
    return l0 * vals[rows, j - 1] + l1 * vals[rows, j] + l2 * vals[rows, j + 1]


def circularised_radius(shape_r: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """sqrt(a b) of the ellipse whose major half-light radius is ``shape_r`` (DR9's SHAPE_R)
    and whose axis ratio is b/a = (1 - e) / (1 + e)."""
    e = np.minimum(np.hypot(e1, e2), 0.99)
    return shape_r * np.sqrt((1 - e) / (1 + e))


def choose_models(A: dict[str, np.ndarray], B: dict[str, np.ndarray],
                  psf_only: np.ndarray | None = None) -> FitResult:
    """Fit results from per-band summed (n, K) A and B (:func:`model_sums_ccd` added over
    CCDs). Model selection as legacypipe's ``_select_model``: PSF vs REX on the
    parameter-penalised dchisq, REX also at least 1 % better than PSF; DEV when better than
    the kept model by max(3^2 + extra parameters, 1 % of the PSF dchisq); sources whose best
    penalised dchisq is below 25 are flagged ``keep = False``. ``psf_only`` forces PSF
    (reference stars, saturated sources)."""
    bands = list(A)
    n = A[bands[0]].shape[0]
    dch = _dchisq(A, B)  # (n, K)
    nr = len(RE_GRID)
    u = np.log(RE_GRID)
    fams = {}
    for f, fam in enumerate(FAMILIES):
        sl = slice(1 + f * nr, 1 + (f + 1) * nr)
        v = dch[:, sl]
        j = np.clip(np.argmax(v, axis=1), 1, nr - 2)
        us, vs, c2 = _parabola(u, v, j)
        us = np.clip(us, u[0], u[-1])
        vs = np.maximum(vs, v.max(axis=1))
        re = np.exp(us)
        with np.errstate(invalid="ignore", divide="ignore"):
            iv = np.where(c2 > 0, c2 / (2 * re * re), 0.0)
        flux = {}
        fiv = {}
        for b in bands:
            Ab = _interp3(u, A[b][:, sl], j, us)
            Bb = _interp3(u, B[b][:, sl], j, us)
            with np.errstate(invalid="ignore", divide="ignore"):
                flux[b] = np.where(Ab > 0, Bb / np.where(Ab > 0, Ab, 1), 0.0)
            fiv[b] = np.maximum(Ab, 0)
        fams[fam] = (vs, re, iv, flux, fiv)
    dpsf = dch[:, 0]
    drex, ddev = fams["rex"][0], fams["dev"][0]
    best = np.maximum.reduce([dpsf - NPARAMS["psf"], drex - NPARAMS["rex"],
                              ddev - NPARAMS["dev"]])
    keep = best >= 25.0
    rex = (drex - NPARAMS["rex"] > dpsf - NPARAMS["psf"]) & (drex - dpsf >= 0.01 * np.maximum(
        dpsf, 0))
    kept = np.where(rex, drex, dpsf)
    cut = np.maximum(3.0 ** 2 + NPARAMS["dev"] - NPARAMS["psf"], 0.01 * np.maximum(dpsf, 0))
    dev = ddev - kept > cut
    if psf_only is not None:
        rex &= ~psf_only
        dev &= ~psf_only
    typ = np.where(dev, "DEV", np.where(rex, "REX", "PSF"))
    shape_r = np.where(dev, fams["dev"][1], np.where(rex, fams["rex"][1], 0.0))
    shape_iv = np.where(dev, fams["dev"][2], np.where(rex, fams["rex"][2], 0.0))
    flux, fiv, fpsfs = {}, {}, {}
    for b in bands:
        with np.errstate(invalid="ignore", divide="ignore"):
            fpsf = np.where(A[b][:, 0] > 0, B[b][:, 0] / np.where(A[b][:, 0] > 0, A[b][:, 0], 1),
                            0.0)
        fpsfs[b] = fpsf
        flux[b] = np.where(dev, fams["dev"][3][b], np.where(rex, fams["rex"][3][b], fpsf))
        fiv[b] = np.where(dev, fams["dev"][4][b], np.where(rex, fams["rex"][4][b],
                                                             A[b][:, 0]))
    dchisq = np.zeros((n, 5), np.float32)
    dchisq[:, 0], dchisq[:, 1], dchisq[:, 2] = dpsf, drex, ddev
    return FitResult(typ, dchisq, shape_r.astype(np.float32), shape_iv.astype(np.float32),
                     flux, fiv, fpsfs, keep)

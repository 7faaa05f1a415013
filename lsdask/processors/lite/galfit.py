"""Light-profile fits of detected sources: PSF, REX (round exponential) and round de
Vaucouleurs models, then elliptical EXP and DEV models of the sources these call galaxies,
each convolved with every CCD's own PSF, fluxes forced across CCDs.

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
Sources are fitted one at a time at fixed positions, with the other sources subtracted
as point sources (``others``: runbrick's blend passes), not fitted simultaneously.

Elliptical fits (:func:`fit_ellipses`, legacypipe's EXP and DEV): the sources the round
fits call galaxies are refined in (ln r_e, e1, e2) with the fluxes profiled out, by damped
Newton steps on the same sums and their shape derivatives (``C = sum w dP d``, ``D = sum w
dP P``, ``E = sum w dP dP^T``; Gauss-Newton curvature, a trust region). The transform of an
elliptical profile is the round one at the transformed frequency (:func:`ellip_model_ccd`),
times the CCD's fine-grid PSF transform and the source's sub-pixel phase, aliased onto the
native-pixel half plane and inverse transformed per source: exact for undersampled PSFs as
above, and analytic in the shape derivatives. The shape inverse variances are those of the
Gauss-Newton curvature with the fluxes and the other shape parameters marginalised. Each
cutout's pixels nearer another source than its own get no weight in these fits (and in the
PSF and REX fits they are compared with, made again on the same pixels); the model is then
chosen as legacypipe's ``_select_model`` (:func:`apply_ellipses`).
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
    B0: np.ndarray | None = None  # (n,): the PSF's B on the pixels with no source subtracted
    pairs: tuple | None = None  # (i, j, sum w P_i P_j): sources whose cutouts overlap


def model_sums_ccd(im: CcdImage, ra: np.ndarray, dec: np.ndarray,
                   psf_only: bool = False, others=None) -> ModelSums:
    """The A and B sums of every model (only the PSF's with ``psf_only``) and the PSF
    model's position sums for the sources at (ra, dec) on one CCD (with ``others``, a
    :class:`~.photometry.PointModel` of the same sources, each with all the others
    subtracted)."""
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
    cut = img[rows, cols] if others is None else img[rows, cols] - others.others(idx, r)
    wd = civ * cut
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
    if not psf_only:
        return ModelSums(im.band, idx, A, B, U, V, M)
    # for a simultaneous fit of the PSF fluxes: the data's own B and the overlaps
    B0 = B[:, 0] if others is None else np.einsum("nij,nij->n", P0, civ * img[rows, cols])
    return ModelSums(im.band, idx, A, B, U, V, M, B0, _overlaps(P0, civ, ix, iy, r, idx))


def _overlaps(P: np.ndarray, civ: np.ndarray, ix: np.ndarray, iy: np.ndarray, r: int,
              idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, sum w P_i P_j) over the pixels shared by the cutouts (radius ``r``, centred on
    pixels ``ix, iy``) of each pair of sources ``idx`` whose cutouts overlap."""
    from scipy.spatial import cKDTree

    if len(ix) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    pairs = cKDTree(np.c_[ix, iy]).query_pairs(2 * r, p=np.inf, output_type="ndarray")
    m = 2 * r + 1
    vals = np.empty(len(pairs))
    for k, (a, b) in enumerate(pairs):
        dx, dy = int(ix[b] - ix[a]), int(iy[b] - iy[a])
        ya, xa = slice(max(0, dy), m + min(0, dy)), slice(max(0, dx), m + min(0, dx))
        yb, xb = slice(max(0, -dy), m + min(0, -dy)), slice(max(0, -dx), m + min(0, -dx))
        vals[k] = np.sum(P[a, ya, xa] * P[b, yb, xb] * civ[a, ya, xa])
    return idx[pairs[:, 0]], idx[pairs[:, 1]], vals


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

    type: np.ndarray        # "PSF", "REX", "DEV" (and "EXP" after :func:`apply_ellipses`)
    dchisq: np.ndarray      # (n, 5): PSF, REX, DEV, EXP, SER (EXP until
    #                         :func:`apply_ellipses`, SER not fitted: 0)
    shape_r: np.ndarray     # arcsec
    shape_r_ivar: np.ndarray
    flux: dict              # band -> (n,) fluxes of the chosen model
    flux_ivar: dict
    flux_psf: dict          # band -> (n,) fluxes of the PSF model
    keep: np.ndarray        # legacypipe's detection cut on the penalised dchisq
    families: dict | None = None  # "rex", "dev" -> round fits (dchisq, r_e, r_e ivar,
    #                                flux, flux ivar), each (n,) (fluxes: band -> (n,))
    shape_e1: np.ndarray | None = None  # elliptical fits (:func:`apply_ellipses`)
    shape_e1_ivar: np.ndarray | None = None
    shape_e2: np.ndarray | None = None
    shape_e2_ivar: np.ndarray | None = None


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
    z = np.zeros(n, np.float32)
    return FitResult(typ, dchisq, shape_r.astype(np.float32), shape_iv.astype(np.float32),
                     flux, fiv, fpsfs, keep, fams, z, z.copy(),
                     z.copy(), z.copy())


# -- elliptical refinement ------------------------------------------------------------------
#: Elliptical families fitted after the round grid (legacypipe's EXP and DEV).
ELLIP_FAMILIES = ("exp", "dev")
#: Free parameters of the elliptical models (positions + r_e, e1, e2), as legacypipe.
NPARAMS_ELLIP = 5
#: Most model evaluations of the elliptical fits; the largest |e| they may reach; the
#: largest Newton step in (ln r_e, e1, e2); the predicted chi-squared gain below which a
#: source's fit stops.
ELLIP_ITERS = 10
E_MAX = 0.85
ELLIP_MAXSTEP = np.array([0.7, 0.35, 0.35])
ELLIP_TOL = 0.1
#: ln(r_e) range (arcsec) of the elliptical fits.
LNRE_RANGE = (np.log(0.02), np.log(12.0))
#: Neighbours considered for the Voronoi weights of the elliptical fits' cutouts.
ELLIP_NEIGHBOURS = 6
#: Sources per batch of the Fourier-space model evaluation.
ELLIP_BATCH = 24


#: Fine-grid frequencies where the PSF transform is below this (of its total) are dropped.
ELLIP_FT_FLOOR = 1e-5


@dataclass
class EllipCcd:
    """One CCD's data for the elliptical fits of some sources (see :func:`ellip_prep_ccd`):
    the sources' cutouts and, at the fine-grid frequencies that alias onto the native
    half-plane (where the PSF transform is not negligible), the PSF transform times each
    source's sub-pixel phase and the sky-frequency terms of the ellipse."""

    band: str
    idx: np.ndarray          # sources (indices into the positions given)
    civ: np.ndarray          # (n, m, m) inverse variances of the cutouts
    wd: np.ndarray           # (n, m, m) ivar * data
    gi: np.ndarray           # (m,) native FFT-grid indices of the cutout rows / columns
    N: int                   # native FFT grid size (the fine grid is k N)
    Hs: np.ndarray           # (n, npts) PSF transform x phase of each source, / k^2
    k2: np.ndarray           # (npts,) |f|^2 (f in cycles / arcsec)
    Kc: np.ndarray           # f_N^2 - f_E^2
    Ks: np.ndarray           # 2 f_N f_E
    starts: np.ndarray       # (nt,) first point of each native rfft frequency (sorted)
    target: np.ndarray       # (nt,) flat native rfft index of each group


def ellip_prep_ccd(im: CcdImage, ra: np.ndarray, dec: np.ndarray, targets: np.ndarray,
                   usable: np.ndarray | None = None) -> EllipCcd | None:
    """The cutouts of the sources ``targets`` (indices into ra, dec: all the sources) on one
    CCD and its PSF in Fourier space on a grid ``k`` times finer than the pixels: a model's
    native pixels are the aliased sum of its fine transform (here onto the native rfft
    half-plane), so undersampled PSFs stay exact (as :func:`model_grids`). Sources are fitted
    one at a time, so a cutout's pixels nearer another source than its own are given no
    weight (its Voronoi cell: neighbours' light would otherwise stretch the ellipse).
    ``usable`` (per target) limits the CCD to the sources it may measure. ``EllipCcd.idx``
    indexes ``targets``."""
    from scipy.spatial import cKDTree

    xa, ya = im.wcs.sky_to_pix(ra, dec)
    xa = np.asarray(xa, float) - im.x0
    ya = np.asarray(ya, float) - im.y0
    x, y = xa[targets], ya[targets]
    h, w = im.img.shape
    inside = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < w - 0.5) & (y > -0.5) & \
        (y < h - 0.5)
    if usable is not None:
        inside &= usable
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        return None
    pixscale = im.wcs.tan.pixscale
    fwhm_pix = im.fwhm / pixscale
    r = int(np.ceil(max(MIN_RADIUS_PIX, 2.5 * fwhm_pix, 3.0 / pixscale)))
    fp = fine_psf(im)
    k = fp.k
    N = 2 * r + 1 + 2 * ((r + 1) // 2)
    N += N % 2
    kN = k * N
    img = fp.img
    c = fp.c
    hw = min(c, (kN - 1) // 2)
    img = img[c - hw:c + hw + 1, c - hw:c + hw + 1]
    ii = (np.arange(-hw, hw + 1)) % kN
    grid = np.zeros((kN, kN))
    grid[np.ix_(ii, ii)] = img
    H = np.fft.fft2(grid) / fp.norm
    f = np.fft.fftfreq(kN) * k  # cycles per native pixel
    iy_f, ix_f = np.nonzero((np.abs(H) > ELLIP_FT_FLOOR * abs(H[0, 0]))
                            & ((np.arange(kN) % N) <= N // 2)[None, :])
    nh = N // 2 + 1
    t = (iy_f % N) * nh + (ix_f % N)
    order = np.argsort(t, kind="stable")
    iy_f, ix_f, t = iy_f[order], ix_f[order], t[order]
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    J = _jacobian(im, float(np.median(ra[idx])), float(np.median(dec[idx])))
    fx, fy = f[ix_f], f[iy_f]
    fE = J[0, 0] * fx + J[1, 0] * fy
    fN = J[0, 1] * fx + J[1, 1] * fy
    xs, ys = x[idx], y[idx]
    ix, iy = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    dx, dy = xs - ix, ys - iy
    Hs = (H[iy_f, ix_f][None, :] / (k * k)
          * np.exp(-2j * np.pi * (fy[None, :] * dy[:, None] + fx[None, :] * dx[:, None])))
    imgp = np.pad(im.img, r)
    ivar = np.pad(im.ivar, r)
    off = np.arange(2 * r + 1)
    rows = (iy[:, None] + off[None, :])[:, :, None]
    cols = (ix[:, None] + off[None, :])[:, None, :]
    civ = ivar[rows, cols].astype(float)
    # Voronoi cells: pixels nearer a neighbour (any source) than the target get no weight
    fin = np.isfinite(xa) & np.isfinite(ya)
    allxy = np.c_[xa[fin], ya[fin]]
    if len(allxy) > 1:
        K = min(ELLIP_NEIGHBOURS + 1, len(allxy))
        dist, nb = cKDTree(allxy).query(np.c_[xs, ys], k=K)
        nbx, nby = allxy[nb[:, 1:], 0], allxy[nb[:, 1:], 1]  # (n, K-1); [:, 0]: itself
        near = dist[:, 1:] < 2.0 * np.sqrt(2.0) * (r + 1)
        gy = (iy[:, None] + off[None, :] - r).astype(float)   # (n, m) pixel rows
        gx = (ix[:, None] + off[None, :] - r).astype(float)
        d0 = (gy - ys[:, None])[:, :, None] ** 2 + (gx - xs[:, None])[:, None, :] ** 2
        for j in range(K - 1):
            dj = ((gy - nby[:, j:j + 1])[:, :, None] ** 2
                  + (gx - nbx[:, j:j + 1])[:, None, :] ** 2)
            civ[(dj < d0) & near[:, j, None, None]] = 0.0
    wd = civ * imgp[rows, cols]
    f4 = np.float32
    return EllipCcd(im.band, idx, civ, wd, np.arange(-r, r + 1) % N, N,
                    Hs.astype(np.complex64), (fE ** 2 + fN ** 2).astype(f4),
                    (fN ** 2 - fE ** 2).astype(f4), (2 * fN * fE).astype(f4), starts,
                    t[starts])


#: Samples of the uniform de Vaucouleurs table in t = Q^(1/4) = sqrt(q).
DEV_T_SAMPLES = 8192


@lru_cache(maxsize=1)
def _dev_table_t() -> tuple[float, np.ndarray, np.ndarray]:
    """(dt, F, dF/dQ) of the de Vaucouleurs transform on a uniform grid of t = sqrt(q)
    (q in cycles per r_e; zero beyond the table), for a direct-index lookup."""
    q, F = _dev_table()
    Q = q * q
    dF = np.gradient(F, Q)
    t = np.linspace(0.0, np.sqrt(q[-1]), DEV_T_SAMPLES)
    return (float(t[1]), np.r_[np.interp(t * t, q, F), 0.0, 0.0].astype(np.float32),
            np.r_[np.interp(t ** 4, Q, dF), 0.0, 0.0].astype(np.float32))


def _profile_q2(family: str, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A round profile's transform G and dG/dQ at Q = (frequency in cycles per r_e)^2."""
    if family == "psf":
        return np.ones_like(Q), np.zeros_like(Q)
    if family in ("rex", "exp"):
        c = np.float32((2 * np.pi / 1.678) ** 2)
        t = 1.0 + c * Q
        g = t ** -1.5
        return g, np.float32(-1.5) * c * g / t
    if family == "dev":
        dt, F, dF = _dev_table_t()
        x = np.sqrt(np.sqrt(Q)) * np.float32(1.0 / dt)
        i = np.minimum(x, DEV_T_SAMPLES).astype(np.int32)
        fr = x - i
        return F[i] + fr * (F[i + 1] - F[i]), dF[i] + fr * (dF[i + 1] - dF[i])
    raise ValueError(family)


def ellip_model_ccd(p: EllipCcd, sel: np.ndarray, family: str, lnre: np.ndarray,
                    e1: np.ndarray, e2: np.ndarray, nd: int = 3) -> np.ndarray:
    """Unit-flux elliptical models of the prepared sources ``sel`` (indices into ``p.idx``)
    on their cutouts, and their derivatives wrt the first ``nd`` of (ln r_e, e1, e2):
    (n, 1 + nd, m, m).

    The transform of an elliptical profile is the round one at Q = r_e^2 (|f|^2 (1 + e^2)
    + 2 (e1 (f_N^2 - f_E^2) + e2 2 f_N f_E)) / (1 - e^2) (f in cycles per arcsec; e1, e2
    with the axis ratio b/a = (1 - e) / (1 + e) and the major axis at position angle
    atan2(e2, e1) / 2 east of north, the simulation's and legacypipe's convention)."""
    n = len(sel)
    N = p.N
    nh = N // 2 + 1
    f4 = np.float32
    re2 = np.exp(2 * lnre).astype(f4)[:, None]
    a1, a2 = e1.astype(f4)[:, None], e2.astype(f4)[:, None]
    s = 1.0 - a1 * a1 - a2 * a2
    Nn = p.k2 * (1.0 + a1 * a1 + a2 * a2) + 2.0 * (a1 * p.Kc + a2 * p.Ks)
    Q = re2 * Nn / s
    G, dG = _profile_q2(family, Q)
    HdG = p.Hs[sel] * (dG * (re2 / s))
    vals = np.empty((n, 1 + nd, Q.shape[1]), np.complex64)
    vals[:, 0] = p.Hs[sel] * G
    if nd >= 1:
        vals[:, 1] = HdG * (2 * s / re2 * Q)
    if nd >= 2:
        vals[:, 2] = HdG * (2 * a1 * p.k2 + 2 * p.Kc + 2 * a1 * Nn / s)
    if nd >= 3:
        vals[:, 3] = HdG * (2 * a2 * p.k2 + 2 * p.Ks + 2 * a2 * Nn / s)
    folded = np.zeros((n, 1 + nd, N * nh), np.complex128)
    folded[:, :, p.target] = np.add.reduceat(vals, p.starts, axis=2)
    img = np.fft.irfft2(folded.reshape(n, 1 + nd, N, nh), s=(N, N))
    return img[:, :, p.gi][:, :, :, p.gi]


@dataclass
class EllipFit:
    """Elliptical fits of one family for the sources given."""

    dchisq: np.ndarray       # (n,) signed chi-squared improvement (as :func:`_dchisq`)
    lnre: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    ivar: np.ndarray         # (n, 3) marginal inverse variances of (ln r_e, e1, e2)
    flux: dict
    flux_ivar: dict


def _ellip_sums(preps: list[EllipCcd], bands, n: int, family: str, lnre, e1, e2,
                active: np.ndarray, nd: int = 3):
    """Per-band sums over CCDs of the ``active`` sources' models: A, B (n,), C = sum w dP d,
    D = sum w dP P (n, 3) and E = sum w dP dP^T (n, 3, 3) (zero for the others, and for
    the derivatives beyond the first ``nd``)."""
    A = {b: np.zeros(n) for b in bands}
    B = {b: np.zeros(n) for b in bands}
    C = {b: np.zeros((n, 3)) for b in bands}
    D = {b: np.zeros((n, 3)) for b in bands}
    E = {b: np.zeros((n, 3, 3)) for b in bands}
    for p in preps:
        if p.band not in A:
            continue
        todo = np.flatnonzero(active[p.idx])
        for s0 in range(0, len(todo), ELLIP_BATCH):
            sel = todo[s0:s0 + ELLIP_BATCH]
            src = p.idx[sel]
            M = ellip_model_ccd(p, sel, family, lnre[src], e1[src], e2[src], nd)
            P, dP = M[:, 0], M[:, 1:]
            civ, wd = p.civ[sel], p.wd[sel]
            wP = P * civ
            np.add.at(A[p.band], src, np.einsum("nij,nij->n", P, wP))
            np.add.at(B[p.band], src, np.einsum("nij,nij->n", P, wd))
            if nd:
                c = np.zeros((len(sel), 3))
                d = np.zeros((len(sel), 3))
                e = np.zeros((len(sel), 3, 3))
                c[:, :nd] = np.einsum("nkij,nij->nk", dP, wd)
                d[:, :nd] = np.einsum("nkij,nij->nk", dP, wP)
                e[:, :nd, :nd] = np.einsum("nkij,nlij->nkl", dP, dP * civ[:, None])
                np.add.at(C[p.band], src, c)
                np.add.at(D[p.band], src, d)
                np.add.at(E[p.band], src, e)
    return A, B, C, D, E


def _newton(A, B, C, D, E, n: int):
    """Gradient and (Gauss-Newton, fluxes profiled out) curvature of sum_b B_b^2 / (2 A_b)
    wrt (ln r_e, e1, e2)."""
    g = np.zeros((n, 3))
    H = np.zeros((n, 3, 3))
    for b in A:
        ok = A[b] > 0
        a = np.where(ok, A[b], 1.0)
        f = np.where(ok, B[b] / a, 0.0)
        g += f[:, None] * (C[b] - f[:, None] * D[b])
        H += (f * f)[:, None, None] * (E[b] - D[b][:, :, None] * D[b][:, None, :]
                                        / a[:, None, None])
    return g, H


def fit_ellipses(preps: list[EllipCcd], bands, n: int, family: str,
                 lnre0: np.ndarray, round_only: bool = False) -> EllipFit:
    """Elliptical fits (ln r_e, e1, e2; fluxes forced across each band's CCDs and profiled
    out) of ``n`` sources from round starts at r_e = exp(lnre0): damped Newton steps on the
    A, B sums and their shape derivatives, a step halved when the chi-squared gets worse; a
    source stops once its predicted chi-squared gain is below :data:`ELLIP_TOL`.
    ``round_only``: e1 = e2 = 0 held (REX); ``family == "psf"``: the PSF model's sums."""
    bands = list(bands)
    if family == "psf":
        A, B = _ellip_sums(preps, bands, n, "psf", np.zeros(n), np.zeros(n), np.zeros(n),
                           np.ones(n, bool), nd=0)[:2]
        flux = {b: np.where(A[b] > 0, B[b] / np.where(A[b] > 0, A[b], 1), 0.0) for b in A}
        return EllipFit(_dchisq(A, B), np.full(n, -np.inf), np.zeros(n), np.zeros(n),
                        np.zeros((n, 3)), flux, {b: np.maximum(A[b], 0) for b in A})
    cur = np.zeros((n, 3))
    cur[:, 0] = np.clip(np.asarray(lnre0, float), *LNRE_RANGE)
    best = cur.copy()
    bestS = None
    bchi = np.full(n, -np.inf)
    step = np.zeros((n, 3))
    trust = np.ones(n)
    pred = np.zeros(n)
    prev = np.zeros(n)
    active = np.ones(n, bool)
    for _ in range(ELLIP_ITERS):
        S = _ellip_sums(preps, bands, n, family, cur[:, 0], cur[:, 1], cur[:, 2], active,
                        nd=1 if round_only else 3)
        chi = _dchisq(S[0], S[1])
        better = active & (chi >= bchi)
        best[better] = cur[better]
        bchi[better] = chi[better]
        if bestS is None:
            bestS = S
        else:
            for new, old in zip(S, bestS, strict=True):
                for b in new:
                    old[b][better] = new[b][better]
        g, Hm = _newton(*bestS, n)
        if round_only:
            g[:, 1:] = 0.0
            Hm[:, 1:, :] = Hm[:, :, 1:] = 0.0
            Hm[:, 1, 1] = Hm[:, 2, 2] = 1.0
        lam = 1e-6 * np.trace(Hm, axis1=1, axis2=2)[:, None, None] + 1e-12
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            try:
                newstep = np.linalg.solve(Hm + lam * np.eye(3)[None], g[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                newstep = np.zeros((n, 3))
            newstep[~np.isfinite(newstep).all(axis=1)] = 0.0
            gain = np.einsum("nk,nk->n", g, newstep)
        # a trust region: shrunk after a worse step or a gain below a quarter of the
        # predicted, grown (to the largest) after one of at least three quarters
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(pred > 0, (chi - prev) / pred, 1.0)
        trust = np.where(~better, 0.25 * trust, np.where(
            rho > 0.75, np.minimum(2 * trust, 1.0), np.where(rho < 0.25, 0.5 * trust, trust)))
        lim = trust[:, None] * ELLIP_MAXSTEP
        step = np.where(better[:, None], np.clip(newstep, -lim, lim), 0.5 * step)
        prev = bchi.copy()
        # predicted chi-squared gain of the step (quadratic model of 2 x the objective)
        pred = 2 * np.einsum("nk,nk->n", g, step) - np.einsum("nk,nkl,nl->n", step, Hm, step)
        trial = best + step
        e = np.hypot(trial[:, 1], trial[:, 2])
        trial[:, 1:] *= np.where(e > E_MAX, E_MAX / np.maximum(e, 1e-12), 1.0)[:, None]
        trial[:, 0] = np.clip(trial[:, 0], *LNRE_RANGE)
        # done: converged, or the step (held at the bounds) is nothing
        active &= ~(better & (gain < ELLIP_TOL)) & (np.abs(trial - best).max(axis=1) > 1e-4)
        if not active.any():
            break
        cur = np.where(active[:, None], trial, best)
    _, Hm = _newton(*bestS, n)
    if round_only:
        Hm[:, 1:, :] = Hm[:, :, 1:] = 0.0
        Hm[:, 1, 1] = Hm[:, 2, 2] = 1.0
    ivar = np.zeros((n, 3))
    det_ok = np.linalg.det(Hm) > 0
    if det_ok.any():
        cov = np.linalg.inv(Hm[det_ok])
        with np.errstate(divide="ignore"):
            ivar[det_ok] = 1.0 / np.diagonal(cov, axis1=1, axis2=2)
    ivar[~np.isfinite(ivar) | (ivar < 0)] = 0.0
    if round_only:
        ivar[:, 1:] = 0.0
    A, B = bestS[0], bestS[1]
    flux = {b: np.where(A[b] > 0, B[b] / np.where(A[b] > 0, A[b], 1), 0.0) for b in A}
    fiv = {b: np.maximum(A[b], 0) for b in A}
    return EllipFit(bchi, best[:, 0], best[:, 1], best[:, 2], ivar, flux, fiv)


def circularised_radius(shape_r: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """sqrt(a b) of the ellipse whose major half-light radius is ``shape_r`` (DR9's SHAPE_R)
    and whose axis ratio is b/a = (1 - e) / (1 + e)."""
    e = np.minimum(np.hypot(e1, e2), 0.99)
    return shape_r * np.sqrt((1 - e) / (1 + e))


def apply_ellipses(fit: FitResult, gi: np.ndarray, fits: dict[str, EllipFit]) -> None:
    """Choose among PSF, REX, EXP and DEV for the sources ``gi`` from their fits on the
    Voronoi-weighted cutouts (``fits``: "psf", "rex", "exp", "dev"; :func:`fit_ellipses`)
    as legacypipe's ``_select_model``: PSF or REX kept as in :func:`choose_models`, then
    EXP or DEV when better than the kept model by max(3^2 + extra parameters, 1 % of the PSF
    dchisq). ``fit`` is updated in place (type, the four dchisq columns, shapes, fluxes)."""
    dpsf, drex = fits["psf"].dchisq, fits["rex"].dchisq
    dexp, ddev = fits["exp"].dchisq, fits["dev"].dchisq
    rex = (drex - NPARAMS["rex"] > dpsf - NPARAMS["psf"]) & (drex - dpsf >= 0.01 * np.maximum(
        dpsf, 0))
    kept = np.where(rex, drex, dpsf)
    cut = np.maximum(3.0 ** 2 + NPARAMS_ELLIP - NPARAMS["psf"], 0.01 * np.maximum(dpsf, 0))
    expdiff, devdiff = dexp - kept, ddev - kept
    exp = (expdiff > cut) & (expdiff >= devdiff)
    dev = (devdiff > cut) & ~exp
    rex &= ~exp & ~dev
    for col, fam in enumerate(("psf", "rex", "dev", "exp")):
        fit.dchisq[gi, col] = fits[fam].dchisq
    fit.type[gi] = np.where(exp, "EXP", np.where(dev, "DEV", np.where(rex, "REX", "PSF")))
    for sel, ef in ((exp, fits["exp"]), (dev, fits["dev"]), (rex, fits["rex"])):
        j = gi[sel]
        # fitted: the circularised radius (smooth in e1, e2); written: the major axis's, the
        # Tractor's and DR9's SHAPE_R
        e = np.minimum(np.hypot(ef.e1[sel], ef.e2[sel]), 0.99)
        re = np.exp(ef.lnre[sel]) * np.sqrt((1 + e) / (1 - e))
        fit.shape_r[j] = re
        fit.shape_r_ivar[j] = ef.ivar[sel, 0] / (re * re)
        fit.shape_e1[j] = ef.e1[sel]
        fit.shape_e2[j] = ef.e2[sel]
        fit.shape_e1_ivar[j] = ef.ivar[sel, 1]
        fit.shape_e2_ivar[j] = ef.ivar[sel, 2]
        for b in fit.flux:
            fit.flux[b][j] = ef.flux[b][sel]
            fit.flux_ivar[b][j] = ef.flux_ivar[b][sel]
    j = gi[~rex & ~exp & ~dev]
    fit.shape_r[j] = 0.0
    fit.shape_r_ivar[j] = 0.0
    for b in fit.flux:
        fit.flux[b][j] = fit.flux_psf[b][j]

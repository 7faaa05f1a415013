"""PSF photometry helpers shared by the lite calibs, zeropoints (and runbrick).

- :func:`moffat_stamp`: circular Moffat on pixel centres (unit integral).
- :func:`fit_moffat`: fit flux, centre, FWHM, beta of one star stamp.
- :func:`fit_moffat_shared`: one Moffat shape (FWHM linear in position, one beta) for
  many star stamps.
- :func:`shifted_psf`: a PsfEx model's unit-sum stamp shifted to a sub-pixel centre.
- :func:`psf_photometry`: forced PSF flux at a position, then a flux + position fit
  (Gauss-Newton with the stamp's gradients), with inverse-variance errors.

Pixel coordinates are 0-based (pixel centres at integers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def moffat_stamp(fwhm: float, beta: float, half: int, dx: float = 0.0,
                 dy: float = 0.0, oversample: int = 1) -> np.ndarray:
    """Unit-integral circular Moffat on a (2 half + 1)^2 stamp centred at (half + dx, half + dy):
    sampled at pixel centres (``oversample=1``) or averaged over ``oversample``^2 sub-pixels
    (pixel-integrated, for undersampled PSFs; see :func:`pixel_oversample`)."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    n = max(1, int(oversample))
    sub = (np.arange(n) + 0.5) / n - 0.5
    g = np.arange(-half, half + 1, dtype=float)
    gx = (g[:, None] + sub[None, :]).ravel() - dx
    gy = (g[:, None] + sub[None, :]).ravel() - dy
    r2 = gx[None, :] ** 2 + gy[:, None] ** 2
    img = (beta - 1.0) / (math.pi * alpha * alpha) * (1.0 + r2 / (alpha * alpha)) ** (-beta)
    if n > 1:
        m = 2 * half + 1
        img = img.reshape(m, n, m, n).mean(axis=(1, 3))
    return img


def pixel_oversample(fwhm_pix: float) -> int:
    """Sub-pixel sampling used for Moffat stamps: 1 when well sampled (FWHM >= 3 px), else 5."""
    return 1 if fwhm_pix >= 3.0 else 5


@dataclass
class MoffatFit:
    flux: float
    dx: float
    dy: float
    fwhm: float
    beta: float
    chi2: float  # reduced
    ok: bool


def fit_moffat(stamp: np.ndarray, ivar: np.ndarray, fwhm0: float = 4.0,
               beta: float | None = None, oversample: int = 1) -> MoffatFit:
    """Fit a Moffat (free or fixed ``beta``) to a sky-subtracted odd-size stamp."""
    from scipy.optimize import least_squares

    half = stamp.shape[0] // 2
    w = np.sqrt(ivar).ravel()
    d = stamp.ravel()
    f0 = max(float(stamp.sum()), 1.0)

    def model(p):
        b = p[4] if beta is None else beta
        return p[0] * moffat_stamp(p[3], b, half, p[1], p[2], oversample).ravel()

    p0 = [f0, 0.0, 0.0, fwhm0] + ([3.5] if beta is None else [])
    lo = [0.0, -2.0, -2.0, 1.0] + ([1.5] if beta is None else [])
    hi = [np.inf, 2.0, 2.0, 3.0 * half] + ([10.0] if beta is None else [])
    p0 = np.clip(p0, np.array(lo) + 1e-6, np.array(hi) - 1e-6)
    try:
        r = least_squares(lambda p: (model(p) - d) * w, p0, bounds=(lo, hi), x_scale="jac",
                          max_nfev=200)
    except (ValueError, np.linalg.LinAlgError):
        return MoffatFit(0, 0, 0, np.nan, np.nan, np.inf, False)
    p = r.x
    ndof = max(1, int(np.count_nonzero(w)) - len(p))
    chi2 = float(np.sum(r.fun ** 2) / ndof)
    return MoffatFit(float(p[0]), float(p[1]), float(p[2]), float(p[3]),
                     float(p[4]) if beta is None else float(beta), chi2, bool(r.success))


def shifted_psf(stamp: np.ndarray, dx: float, dy: float, half: int) -> np.ndarray:
    """The central (2 half + 1)^2 of a centred unit-sum PSF stamp shifted by (dx, dy) pixels
    (Fourier shift: exact for a well-sampled PSF, unlike spline interpolation)."""
    c = stamp.shape[0] // 2
    h = min(c, max(half + 8, 2 * half))
    cut = stamp[c - h:c + h + 1, c - h:c + h + 1]
    n = cut.shape[0]
    f = np.fft.fftfreq(n)
    ph = np.exp(-2j * np.pi * (f[None, :] * dx + f[:, None] * dy))
    sh = np.fft.ifft2(np.fft.fft2(cut) * ph).real
    out = np.zeros((2 * half + 1, 2 * half + 1))
    k = min(h, half)
    out[half - k:half + k + 1, half - k:half + k + 1] = sh[h - k:h + k + 1, h - k:h + k + 1]
    return out


@dataclass
class PsfPhot:
    x: float  # fitted position (0-based)
    y: float
    flux: float  # fitted flux (image units)
    flux_ivar: float
    forced_flux: float
    forced_flux_ivar: float
    chi2: float
    ok: bool


def psf_photometry(img: np.ndarray, ivar: np.ndarray, psf_stamp, x: float,
                   y: float, half: int, fit_position: bool = True,
                   iterations: int = 4, seg: np.ndarray | None = None) -> PsfPhot | None:
    """PSF flux of a source near (x, y) in a sky-subtracted image (None if off the image).

    ``psf_stamp`` is a centred unit-sum stamp (shifted with :func:`shifted_psf`) or a
    callable ``(dx, dy) -> stamp`` giving the PSF with its centre offset by (dx, dy)
    (e.g. ``lambda dx, dy: model.stamp(x, y, dx, dy)``; exact for undersampled PSFs).
    With a segmentation map ``seg`` (0 = background), pixels of other detections than
    the one under (x, y) are masked, so neighbours do not bias the flux."""
    if callable(psf_stamp):
        func = psf_stamp

        def shifted(dx, dy):
            st = func(dx, dy)
            c = st.shape[0] // 2
            out = np.zeros((2 * half + 1, 2 * half + 1))
            k = min(c, half)
            out[half - k:half + k + 1, half - k:half + k + 1] = st[c - k:c + k + 1, c - k:c + k + 1]
            return out
    else:
        def shifted(dx, dy):
            return shifted_psf(psf_stamp, dx, dy, half)
    H, W = img.shape
    ix, iy = int(round(x)), int(round(y))
    if ix - half < 0 or iy - half < 0 or ix + half >= W or iy + half >= H:
        return None
    sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
    d = img[sl]
    wv = ivar[sl]
    if seg is not None:
        s = seg[sl]
        own = seg[iy, ix]
        wv = wv * ((s == 0) | (s == own))
    if np.count_nonzero(wv) < 0.7 * wv.size:
        return None

    def flux_fit(p):
        a = float(np.sum(wv * p * p))
        if a <= 0:
            return 0.0, 0.0
        return float(np.sum(wv * p * d)) / a, a

    cx, cy = x - ix, y - iy
    p = shifted(cx, cy)
    ff, fivar = flux_fit(p)
    fx, fy, flux, flux_ivar = cx, cy, ff, fivar
    ok = fivar > 0
    if fit_position and ok and ff > 0:
        for _ in range(iterations):
            p = shifted(fx, fy)
            gy, gx = np.gradient(p)
            # d ~ f p - f gx ddx - f gy ddy
            A = np.stack([p.ravel(), -gx.ravel(), -gy.ravel()], axis=1)
            sw = np.sqrt(wv.ravel())
            try:
                sol, *_ = np.linalg.lstsq(A * sw[:, None], d.ravel() * sw, rcond=None)
            except np.linalg.LinAlgError:
                ok = False
                break
            f = sol[0]
            if f <= 0:
                ok = False
                break
            ddx, ddy = np.clip(sol[1] / f, -1, 1), np.clip(sol[2] / f, -1, 1)
            fx, fy = fx + ddx, fy + ddy
            if abs(fx) > 3 or abs(fy) > 3:
                ok = False
                break
            if abs(ddx) < 1e-3 and abs(ddy) < 1e-3:
                break
        p = shifted(fx, fy)
        flux, flux_ivar = flux_fit(p)
    res = (d - flux * p) ** 2 * wv
    chi2 = float(res.sum() / max(1, np.count_nonzero(wv) - 3))
    return PsfPhot(x=ix + fx, y=iy + fy, flux=flux, flux_ivar=flux_ivar, forced_flux=ff,
                   forced_flux_ivar=fivar, chi2=chi2, ok=bool(ok and flux_ivar > 0))


@dataclass
class MoffatShape:
    """A CCD's Moffat PSF: ``fwhm = f0 + fu u + fv v`` (normalised position) and one beta,
    with the 1-sigma error of beta (0 when it was held fixed)."""
    f0: float
    fu: float
    fv: float
    beta: float
    beta_err: float


BETA_BOUNDS = (1.3, 15.0)


def fit_moffat_shared(stamps: np.ndarray, ivars: np.ndarray, offsets: np.ndarray,
                      fwhm0: float, beta0: float = 3.5, uv: np.ndarray | None = None,
                      oversample: int = 1, beta: float | None = None) -> MoffatShape:
    """Joint Moffat fit of several star stamps: FWHM linear in the stars' normalised
    positions ``uv`` (constant when ``uv`` is None), one beta (free, or held at ``beta``)
    and each star's centre (from ``offsets``, within a pixel). Each star's flux and a
    constant sky pedestal (the light of faint neighbours and the sky model's local error,
    which would otherwise read as wings and bias beta low) are solved linearly. Fitting all
    stars at once beats averaging single-star fits, whose FWHM and beta are degenerate and
    noisy; so are their centres where the PSF is undersampled: held at those, a 0.9-pixel
    FWHM came out 4-5 % too wide."""
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    half = stamps.shape[1] // 2
    m_ = 2 * half + 1
    n = max(1, int(oversample))
    ns = len(stamps)
    sub = (np.arange(n) + 0.5) / n - 0.5
    g = (np.arange(-half, half + 1, dtype=float)[:, None] + sub[None, :]).ravel()
    sw = np.sqrt(ivars)
    lin = uv is not None
    ng = 1 + (2 if lin else 0) + (1 if beta is None else 0)  # shape parameters, then centres
    s_1 = np.sum(ivars, axis=(1, 2))
    s_d = np.sum(ivars * stamps, axis=(1, 2))

    def resid(p):
        b = p[ng - 1] if beta is None else beta
        fw = np.full(ns, p[0])
        if lin:
            fw = fw + p[1] * uv[:, 0] + p[2] * uv[:, 1]
        fw = np.maximum(fw, 0.5)
        off = p[ng:].reshape(ns, 2)
        r2 = (g[None, None, :] - off[:, 0, None, None]) ** 2 + \
            (g[None, :, None] - off[:, 1, None, None]) ** 2
        alpha = fw / (2.0 * np.sqrt(2.0 ** (1.0 / b) - 1.0))
        a2 = (alpha * alpha)[:, None, None]
        m = (b - 1.0) / (np.pi * a2) * (1.0 + r2 / a2) ** (-b)
        if n > 1:
            m = m.reshape(ns, m_, n, m_, n).mean(axis=(2, 4))
        s_mm = np.sum(ivars * m * m, axis=(1, 2))
        s_m = np.sum(ivars * m, axis=(1, 2))
        s_md = np.sum(ivars * m * stamps, axis=(1, 2))
        det = np.maximum(s_mm * s_1 - s_m * s_m, 1e-30)
        flux = (s_md * s_1 - s_m * s_d) / det
        sky = (s_mm * s_d - s_m * s_md) / det
        return (sw * (stamps - flux[:, None, None] * m - sky[:, None, None])).ravel()

    off0 = np.asarray(offsets, float).ravel()
    p0 = [fwhm0] + ([0.0, 0.0] if lin else []) + ([beta0] if beta is None else [])
    lo = [0.5] + ([-np.inf, -np.inf] if lin else []) + ([BETA_BOUNDS[0]] if beta is None else [])
    hi = [np.inf] + ([np.inf, np.inf] if lin else []) + ([BETA_BOUNDS[1]] if beta is None else [])
    # a star's centre moves only its own pixels: sparse finite differences
    sparsity = lil_matrix((ns * m_ * m_, ng + 2 * ns), dtype=int)
    sparsity[:, :ng] = 1
    for k in range(ns):
        sparsity[k * m_ * m_:(k + 1) * m_ * m_, ng + 2 * k:ng + 2 * k + 2] = 1
    r = least_squares(resid, np.r_[p0, off0], bounds=(np.r_[lo, off0 - 1], np.r_[hi, off0 + 1]),
                      x_scale="jac", max_nfev=200, jac_sparsity=sparsity)
    f0, fu, fv = (r.x[0], r.x[1], r.x[2]) if lin else (r.x[0], 0.0, 0.0)
    if beta is not None:
        return MoffatShape(float(f0), float(fu), float(fv), float(beta), 0.0)
    dof = max(1, np.count_nonzero(ivars) - len(r.x) - 2 * ns)
    J = r.jac.toarray() if hasattr(r.jac, "toarray") else r.jac
    cov = np.linalg.pinv(J.T @ J) * (2.0 * r.cost / dof)
    return MoffatShape(float(f0), float(fu), float(fv), float(r.x[ng - 1]),
                       float(np.sqrt(max(cov[ng - 1, ng - 1], 0.0))))

"""Resampling CCD pixels onto a brick's pixel grid.

The brick-pixel -> CCD-pixel map is evaluated exactly (through the brick TAN
WCS and the CCD's WCS: TAN, or TPV through astropy for real CP headers) on a
coarse grid and interpolated bilinearly in between (the map is smooth; the
error is far below a milli-pixel for a 32-pixel grid). Pixel values are then
interpolated with one of two kernels:

``lanczos3``
    Lanczos-3 (6 x 6 taps, weights normalised to unit sum, tabulated), vectorised
    numpy, as legacypipe's coadds (the default). CCDs are resampled with
    :func:`lanczos3_map`: the same kernel applied as two separable 1-D passes along
    the (nearly axis-aligned) map, 12 taps per pixel instead of 36.
``spline3``
    Cubic B-spline interpolation through ``scipy.ndimage.map_coordinates``
    (compiled).

Array indices are 0-based (``FITS pixel - 1``) everywhere in this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...survey.wcs import TanWCS

KERNELS = ("lanczos3", "spline3")

#: A function (ra, dec) -> 0-based CCD pixel (x, y).
SkyToPix = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class PixelMap:
    """Brick pixels ``[by0:by1, bx0:bx1]`` map to CCD pixel coordinates ``x``, ``y`` (0-based)."""

    bx0: int
    bx1: int
    by0: int
    by1: int
    x: np.ndarray  # float64 (by1-by0, bx1-bx0)
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.by1 - self.by0, self.bx1 - self.bx0)


def upsample_bilinear(vals: np.ndarray, gy: np.ndarray, gx: np.ndarray, ny: int, nx: int,
                      dtype=np.float64) -> np.ndarray:
    """Bilinear interpolation of ``vals`` given at grid nodes (``gy`` rows x ``gx`` columns,
    increasing, covering 0..n-1) to every pixel of an ``ny x nx`` array. Separable: a cheap
    pass along x on the node rows, then one along y (no dense interpolation matrices)."""
    def lerp_index(n, nodes):
        t = np.arange(n, dtype=float)
        j = np.clip(np.searchsorted(nodes, t, side="right") - 1, 0, len(nodes) - 2)
        return j, (t - nodes[j]) / (nodes[j + 1] - nodes[j])

    jx, fx = lerp_index(nx, gx)
    rows = vals[:, jx] * (1 - fx) + vals[:, jx + 1] * fx  # (len(gy), nx), small
    rows = rows.astype(dtype, copy=False)
    jy, fy = lerp_index(ny, gy)
    fy = fy.astype(dtype)
    out = np.empty((ny, nx), dtype)
    for j in range(len(gy) - 1):  # one block of rows per node interval: no gathers
        r = np.flatnonzero(jy == j)
        if len(r):
            blk = out[r[0]:r[-1] + 1]
            np.multiply(fy[r[0]:r[-1] + 1, None], rows[j + 1] - rows[j], out=blk)
            blk += rows[j]
    return out


def _interp_matrix(n: int, nodes: np.ndarray) -> np.ndarray:
    """(n, len(nodes)) linear-interpolation weights from node values to 0..n-1."""
    t = np.arange(n, dtype=float)
    j = np.clip(np.searchsorted(nodes, t, side="right") - 1, 0, len(nodes) - 2)
    f = (t - nodes[j]) / (nodes[j + 1] - nodes[j])
    m = np.zeros((n, len(nodes)))
    m[np.arange(n), j] = 1 - f
    m[np.arange(n), j + 1] = f
    return m


def brick_to_ccd_map(brick_wcs: TanWCS, sky_to_ccd: SkyToPix, ccd_w: int, ccd_h: int,
                     ccd_corners_radec: tuple[np.ndarray, np.ndarray], step: int = 32,
                     margin: int = 2) -> PixelMap | None:
    """The brick pixels covered by a CCD and their CCD coordinates; None when they miss.

    ``ccd_corners_radec`` are the CCD outline corners (to find the brick bbox).
    """
    cr, cd = ccd_corners_radec
    bxc, byc = brick_wcs.radec_to_pixel(cr, cd)
    if not np.all(np.isfinite(bxc)):
        return None
    W, H = brick_wcs.width, brick_wcs.height
    bx0 = max(0, int(np.floor(bxc.min() - 1)) - margin)
    bx1 = min(W, int(np.ceil(bxc.max() - 1)) + margin + 1)
    by0 = max(0, int(np.floor(byc.min() - 1)) - margin)
    by1 = min(H, int(np.ceil(byc.max() - 1)) + margin + 1)
    if bx1 <= bx0 or by1 <= by0:
        return None
    nx, ny = bx1 - bx0, by1 - by0
    gx = np.unique(np.r_[np.arange(0, nx, step), nx - 1]).astype(float)
    gy = np.unique(np.r_[np.arange(0, ny, step), ny - 1]).astype(float)
    if len(gx) < 2:
        gx = np.array([0.0, max(nx - 1, 1.0)])
    if len(gy) < 2:
        gy = np.array([0.0, max(ny - 1, 1.0)])
    GX, GY = np.meshgrid(gx + bx0 + 1, gy + by0 + 1)
    ra, dec = brick_wcs.pixel_to_radec(GX, GY)
    cx, cy = sky_to_ccd(ra, dec)
    x = upsample_bilinear(cx, gy, gx, ny, nx)
    y = upsample_bilinear(cy, gy, gx, ny, nx)
    inside = (x > -0.5) & (x < ccd_w - 0.5) & (y > -0.5) & (y < ccd_h - 0.5)
    if not inside.any():
        return None
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return PixelMap(bx0 + c0, bx0 + c1, by0 + r0, by0 + r1,
                    np.ascontiguousarray(x[r0:r1, c0:c1]), np.ascontiguousarray(y[r0:r1, c0:c1]))


def lanczos3_weights(f: np.ndarray) -> np.ndarray:
    """(..., 6) Lanczos-3 weights for taps at offsets -2..3 of fractional shifts ``f`` in [0,1)."""
    d = f[..., None] - np.arange(-2, 4, dtype=np.float32)
    w = (np.sinc(d) * np.sinc(d / 3.0)).astype(np.float32)
    return w / w.sum(axis=-1, keepdims=True)


#: Lanczos-3 weights tabulated at 1/2048 pixel (as legacypipe's C resampler uses a table).
_NLUT = 2048
_LUT = lanczos3_weights(np.arange(_NLUT + 1, dtype=np.float32) / _NLUT)


def lanczos3(img: np.ndarray, x: np.ndarray, y: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Lanczos-3 interpolation of ``img`` at 0-based (x, y); zero outside (pad with 3).

    Weights come from a 1/2048-pixel table; each of the 6 kernel rows is one gather of
    6 contiguous pixels (a sliding-window view), so the cost is 6 gathers per output pixel.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    pad = 3
    p = np.pad(img.astype(np.float32, copy=False), pad)
    W = p.shape[1]
    win = sliding_window_view(p.ravel(), 6)
    xf, yf = x.ravel(), y.ravel()
    out = np.empty(xf.size, dtype=np.float32)
    maxx, maxy = p.shape[1] - 4, p.shape[0] - 4
    for s in range(0, xf.size, chunk):
        xs = np.nan_to_num(xf[s:s + chunk] + pad, nan=-10.0)
        ys = np.nan_to_num(yf[s:s + chunk] + pad, nan=-10.0)
        fx, fy = np.floor(xs), np.floor(ys)
        ix = np.clip(fx.astype(np.int64), 2, maxx)
        iy = np.clip(fy.astype(np.int64), 2, maxy)
        wx = _LUT[np.rint((xs - fx) * _NLUT).astype(np.intp)]
        wy = _LUT[np.rint((ys - fy) * _NLUT).astype(np.intp)]
        base = (iy - 2) * W + (ix - 2)
        acc = np.zeros(len(base), dtype=np.float32)
        for j in range(6):
            acc += wy[:, j] * np.einsum("ni,ni->n", win[base + j * W], wx)
        far = (xs < 2) | (xs > maxx + 1) | (ys < 2) | (ys > maxy + 1)
        acc[far] = 0
        out[s:s + chunk] = acc
    return out.reshape(x.shape)


_LUT_T = np.ascontiguousarray(_LUT.T)  # (6, _NLUT + 1): one contiguous table per tap
#: Largest shear (off-diagonal / diagonal of the map's Jacobian, after an optional
#: transpose) for which :func:`lanczos3_map` uses the two-pass separable scheme.
MAX_SHEAR = 0.2


def _taps(flat: np.ndarray, base: np.ndarray, ph: np.ndarray, stride: int,
          out: np.ndarray) -> np.ndarray:
    """``out = sum_k LUT[ph, k] * flat[base + k * stride]`` for the 6 Lanczos taps."""
    tmp = np.empty_like(out)
    w = np.empty_like(out)
    np.take(flat, base, out=out, mode="clip")
    _LUT_T[0].take(ph, out=w, mode="clip")
    out *= w
    for k in range(1, 6):
        np.take(flat[k * stride:], base, out=tmp, mode="clip")
        _LUT_T[k].take(ph, out=w, mode="clip")
        tmp *= w
        out += tmp
    return out


def _split(v: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer part clipped to [lo, hi] and the LUT index of the fractional part."""
    fl = np.floor(v)
    ph = np.rint((v - fl) * _NLUT).astype(np.intp)
    return np.clip(fl, lo, hi).astype(np.intp), ph


def _jacobian(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Map derivatives [[dx/du, dx/dv], [dy/du, dy/dv]] at a 3x3 set of places, (3, 3, 2, 2)."""
    ny, nx = x.shape
    js = np.clip(np.array([0, ny // 2, ny - 2]), 0, ny - 2)
    is_ = np.clip(np.array([0, nx // 2, nx - 2]), 0, nx - 2)
    J = np.empty((3, 3, 2, 2))
    for a, j in enumerate(js):
        for b, i in enumerate(is_):
            for r, m in enumerate((x, y)):
                J[a, b, r, 0] = m[j, i + 1] - m[j, i]
                J[a, b, r, 1] = m[j + 1, i] - m[j, i]
    return J


def lanczos3_map(img: np.ndarray, x: np.ndarray, y: np.ndarray, step: int = 16,
                 chunk: int = 1 << 16) -> np.ndarray:
    """Lanczos-3 interpolation of ``img`` at 0-based ``(x[v, u], y[v, u])`` for a smooth,
    nearly axis-aligned map of a brick-pixel box (as :class:`PixelMap`); zero-padded.

    Two 1-D passes (as separable warps do): (1) along the image rows, to the points where
    each brick column ``u`` crosses each image row; (2) along each brick column, to the
    exact sample positions. The result is the 6-tap Lanczos-3 interpolation at the mapped
    positions, with the kernel's second axis along the (slightly sheared) image of the brick
    column; 12 instead of 36 taps per pixel. Maps rotated by ~90 degrees (x along the brick
    rows, as DECam CCDs) are handled by transposing the image. Maps that are neither (shear
    above :data:`MAX_SHEAR`) or tiny fall back to the direct 36-tap :func:`lanczos3`.
    Values at positions more than a pixel outside the image are undefined (callers mask
    pixels outside the CCD).
    """
    ny, nx = x.shape
    if ny < 8 or nx < 8 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return lanczos3(img, x, y)
    J = _jacobian(x, y)
    if np.abs(J[..., 0, 0]).mean() < np.abs(J[..., 0, 1]).mean():
        src, X, Y = img.T, y, x  # image x runs along brick rows: transpose the image
        J = J[..., ::-1, :]
    else:
        src, X, Y = img, x, y
    a, b, c, d = (np.abs(J[..., i, k]) for i, k in ((0, 0), (0, 1), (1, 0), (1, 1)))
    if not (np.all(b <= MAX_SHEAR * a) and np.all(c <= MAX_SHEAR * d) and np.all(a > 0.2)
            and np.all(d > 0.2)):
        return lanczos3(img, x, y)
    pad = 3
    p = np.pad(src.astype(np.float32, copy=False), pad)
    H, W = src.shape
    Wp = W + 2 * pad
    rows = np.arange(H, dtype=float)

    # X at every image row j for a set of brick columns (inverting Y along each column,
    # extended linearly beyond the box), then linearly in u for every column
    uc = np.unique(np.r_[np.arange(0, nx, step), nx - 1])
    Xc = np.empty((H, len(uc)))
    for n, u in enumerate(uc):
        yv, xv = Y[:, u], X[:, u]
        if yv[-1] < yv[0]:
            yv, xv = yv[::-1], xv[::-1]
        s0 = (xv[1] - xv[0]) / (yv[1] - yv[0])
        s1 = (xv[-1] - xv[-2]) / (yv[-1] - yv[-2])
        L = float(H + abs(yv[0]) + abs(yv[-1]) + 10)
        Xc[:, n] = np.interp(rows, np.r_[yv[0] - L, yv, yv[-1] + L],
                             np.r_[xv[0] - L * s0, xv, xv[-1] + L * s1])
    t = np.arange(nx, dtype=float)
    jx = np.clip(np.searchsorted(uc, t, side="right") - 1, 0, len(uc) - 2)
    fx = (t - uc[jx]) / (uc[jx + 1] - uc[jx])

    # pass 1: T[j, u] = image row j interpolated at X(u, j); zero rows of padding around
    T = np.zeros((H + 2 * pad, nx), np.float32)
    Tf = T.ravel()
    pflat = p.ravel()
    nr = max(1, chunk // nx)
    for j0 in range(0, H, nr):
        j1 = min(H, j0 + nr)
        xb = Xc[j0:j1, jx] * (1 - fx) + Xc[j0:j1, jx + 1] * fx
        ix, ph = _split(xb, -1, W - 1)
        base = ix + (np.arange(j0, j1)[:, None] + pad) * Wp + (pad - 2)
        _taps(pflat, base, ph, 1, Tf[(j0 + pad) * nx:(j1 + pad) * nx].reshape(j1 - j0, nx))

    # pass 2: along each brick column, at Y(u, v)
    out = np.empty((ny, nx), np.float32)
    ucol = np.arange(nx)
    for v0 in range(0, ny, nr):
        v1 = min(ny, v0 + nr)
        iy, ph = _split(Y[v0:v1], -1, H - 1)
        base = (iy + (pad - 2)) * nx + ucol
        _taps(Tf, base, ph, nx, out[v0:v1])
    return out


def spline3(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cubic B-spline interpolation of ``img`` at 0-based (x, y) (scipy, compiled)."""
    return ndimage.map_coordinates(img.astype(np.float32, copy=False), [y, x], order=3,
                                   mode="constant", cval=0.0, output=np.float32)


def interpolate(img: np.ndarray, x: np.ndarray, y: np.ndarray, kernel: str) -> np.ndarray:
    if kernel == "lanczos3":
        return lanczos3(img, x, y)
    if kernel == "lanczos3_map":
        return lanczos3_map(img, x, y)
    if kernel == "spline3":
        return spline3(img, x, y)
    raise ValueError(f"unknown resampling kernel {kernel!r} (known: {', '.join(KERNELS)})")


def nearest(img: np.ndarray, x: np.ndarray, y: np.ndarray, fill=0) -> np.ndarray:
    """Nearest-pixel lookup at 0-based (x, y); ``fill`` outside."""
    h, w = img.shape
    xi = np.floor(np.nan_to_num(x, nan=-10.0) + 0.5)
    yi = np.floor(np.nan_to_num(y, nan=-10.0) + 0.5)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = np.clip(yi, 0, h - 1).astype(np.intp) * w + np.clip(xi, 0, w - 1).astype(np.intp)
    out = img.ravel().take(idx)
    out[~ok] = fill
    return out

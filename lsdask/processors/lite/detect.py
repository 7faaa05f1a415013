"""Source detection on the coadds: a flat-SED matched-filter S/N map thresholded with sep.

Per band the coadd is smoothed with a Gaussian of the band's median PSF width,
giving a point-source flux estimate ``det_b`` with inverse variance
``detiv_b = psfnorm_b**2 * smoothed invvar``; the flat-SED combination
``sum(det_b detiv_b) / sum(detiv_b)`` times ``sqrt(sum detiv_b)`` is an S/N map
(legacypipe's SED-matched detection with the flat SED). Peaks above ``nsigma`` are
kept as legacypipe does (a saddle test against brighter peaks); positions are refined
by a Gaussian fit on the ivar-weighted band mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Detections:
    x: np.ndarray          # 0-based brick pixels
    y: np.ndarray
    snr: np.ndarray        # detection S/N at the peak
    segmap: np.ndarray     # i4 blob map, -1 where no source (sources' "blobs")
    blob: np.ndarray       # blob id of each source
    ref: np.ndarray | None = None  # index into the brick's reference stars, -1 if none

    def __len__(self) -> int:
        return len(self.x)


def _smoothed(c: dict[str, np.ndarray], pixscale: float):
    """(det, detiv) of one band (None without coverage)."""
    iv = c["invvar"]
    sizes = c["psfsize"][iv > 0]
    if sizes.size == 0:
        return None
    sigma = float(np.median(sizes)) / pixscale / 2.3548
    # smoothing a point source of flux F with the unit-sum kernel K gives F * sum(K^2)
    k2 = np.float32(_sum_g2(sigma))
    det = ndimage.gaussian_filter(c["image"], sigma, truncate=3.0)
    det /= k2
    detiv = ndimage.gaussian_filter(iv, sigma, truncate=3.0)
    detiv *= k2
    detiv[iv <= 0] = 0
    return det, detiv


def detection_map(coadds: dict[str, dict[str, np.ndarray]], pixscale: float,
                  threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S/N map, ivar-weighted mean image over bands, its ivar) from per-band coadds (bands
    smoothed in ``threads`` threads; scipy releases the GIL; combined in band order)."""
    from concurrent.futures import ThreadPoolExecutor

    num = den = wsum = wimg = None
    with ThreadPoolExecutor(max(1, min(threads, len(coadds)))) as pool:
        smoothed = pool.map(lambda c: _smoothed(c, pixscale), coadds.values())
        for c, sm in zip(coadds.values(), smoothed, strict=True):
            if sm is None:
                continue
            det, detiv = sm
            iv = c["invvar"]
            if num is None:
                num, den = det * detiv, detiv
                wsum, wimg = iv.copy(), c["image"] * iv
            else:
                num += det * detiv
                den += detiv
                wsum += iv
                wimg += c["image"] * iv
    if num is None:
        raise ValueError("no coverage in any band")
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(den > 0, num / np.sqrt(den), 0).astype(np.float32)
        comb = np.where(wsum > 0, wimg / wsum, 0).astype(np.float32)
    return snr, comb, wsum


def refine_positions(img: np.ndarray, iv: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                     sigma: float, niter: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares fit of a Gaussian (flux, x, y; width ``sigma``) to each source's
    cutout, Gauss-Newton, vectorised. A symmetric model gives an unbiased centre for a
    symmetric PSF. Sources whose fit fails or moves more than 2 pixels keep the peak."""
    n = len(x0)
    r = int(max(3, np.ceil(2.0 * sigma)))
    ny, nx = img.shape
    P = np.pad(img, r)
    W = np.pad(iv, r)
    off = np.arange(-r, r + 1)
    ix0, iy0 = np.rint(x0).astype(int), np.rint(y0).astype(int)
    rows = (iy0[:, None] + off + r)[:, :, None]
    cols = (ix0[:, None] + off + r)[:, None, :]
    d = P[rows, cols].astype(float)
    w = W[rows, cols].astype(float)
    gx = (ix0[:, None] + off).astype(float)[:, None, :]
    gy = (iy0[:, None] + off).astype(float)[:, :, None]
    x, y = x0.astype(float).copy(), y0.astype(float).copy()
    flux = np.maximum(d.sum(axis=(1, 2)), 1e-6)
    ok = np.ones(n, bool)
    s2 = sigma * sigma
    for _ in range(niter):
        ddx = gx - x[:, None, None]
        ddy = gy - y[:, None, None]
        g = np.exp(-0.5 * (ddx ** 2 + ddy ** 2) / s2) / (2 * np.pi * s2)
        J = np.stack([g, flux[:, None, None] * g * ddx / s2, flux[:, None, None] * g * ddy / s2],
                     axis=-1).reshape(n, -1, 3)
        res = (d - flux[:, None, None] * g).reshape(n, -1)
        ww = w.reshape(n, -1)
        A = np.einsum("npi,np,npj->nij", J, ww, J)
        b = np.einsum("npi,np,np->ni", J, ww, res)
        A += np.eye(3)[None] * 1e-12
        try:
            step = np.linalg.solve(A, b[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        step[:, 1:] = np.clip(step[:, 1:], -0.5, 0.5)
        step = np.where(np.isfinite(step), step, 0)
        flux = np.maximum(flux + step[:, 0], 1e-6)
        x += step[:, 1]
        y += step[:, 2]
    ok &= np.isfinite(x) & np.isfinite(y) & (np.hypot(x - x0, y - y0) < 2.0)
    return np.where(ok, x, x0), np.where(ok, y, y0)


def _sum_g2(sigma: float) -> float:
    """Exact sum of squares of the sampled unit-sum Gaussian kernel scipy applies."""
    r = int(3.0 * sigma + 0.5)
    t = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    return float(np.sum(g ** 2) ** 2)


def find_peaks(snr: np.ndarray, nsigma: float, saddle_fraction: float = 0.1,
               saddle_min: float = 2.0, window: int = 25, seeds=None, avoid=None
               ) -> tuple[np.ndarray, np.ndarray]:
    """legacypipe's peak finding on an S/N map: local maxima above ``nsigma``, brightest
    first; a peak is kept unless the region around it above its height minus
    ``max(saddle_min, saddle_fraction * height)`` (no deep enough saddle) reaches a peak
    kept before (looked for within ``window`` pixels). ``seeds`` (x, y): existing sources
    (reference stars), kept from the start; ``avoid`` (x, y, r): circles where peaks are
    dropped (saturated cores of bright stars)."""
    hot = snr > nsigma
    peak = hot & (snr == ndimage.maximum_filter(snr, size=3, mode="constant", cval=0.0))
    ny, nx = snr.shape
    if avoid is not None and len(avoid[0]):
        for ax, ay, ar in zip(*avoid, strict=True):
            x0, x1 = int(max(0, np.floor(ax - ar))), int(min(nx, np.ceil(ax + ar) + 1))
            y0, y1 = int(max(0, np.floor(ay - ar))), int(min(ny, np.ceil(ay + ar) + 1))
            if x1 > x0 and y1 > y0:
                yy, xx = np.mgrid[y0:y1, x0:x1]
                peak[y0:y1, x0:x1] &= (xx - ax) ** 2 + (yy - ay) ** 2 > ar * ar
    py, px = np.nonzero(peak)
    order = np.argsort(-snr[py, px], kind="stable")
    py, px = py[order], px[order]
    kept = np.zeros(snr.shape, bool)
    if seeds is not None and len(seeds[0]):
        sx = np.clip(np.rint(seeds[0]).astype(int), 0, nx - 1)
        sy = np.clip(np.rint(seeds[1]).astype(int), 0, ny - 1)
        kept[sy, sx] = True
    keep = np.zeros(len(px), bool)
    for k, (y, x) in enumerate(zip(py, px, strict=True)):
        y0, y1 = max(0, y - window), min(ny, y + window + 1)
        x0, x1 = max(0, x - window), min(nx, x + window + 1)
        v = snr[y, x]
        level = v - max(saddle_min, saddle_fraction * v)
        lab, _ = ndimage.label(snr[y0:y1, x0:x1] > level)
        own = lab == lab[y - y0, x - x0]
        if not (own & kept[y0:y1, x0:x1]).any():
            keep[k] = True
            kept[y, x] = True
    return px[keep].astype(float), py[keep].astype(float)


def detect(coadds: dict[str, dict[str, np.ndarray]], pixscale: float, nsigma: float,
           threads: int = 1, seeds=None, avoid=None) -> Detections:
    """Detect sources above ``nsigma`` in the flat-SED S/N map (:func:`find_peaks`, with
    its ``seeds`` and ``avoid``); blobs are the connected regions of the map above
    ``nsigma`` (dilated by 2 pixels)."""
    snr, comb, combiv = detection_map(coadds, pixscale, threads)
    sizes = np.concatenate([c["psfsize"][c["invvar"] > 0] for c in coadds.values()])
    sigma = float(np.median(sizes)) / pixscale / 2.3548
    x0, y0 = find_peaks(snr, nsigma, seeds=seeds, avoid=avoid)
    seg, _ = ndimage.label(ndimage.binary_dilation(snr > nsigma, iterations=2))
    segmap = seg.astype(np.int32) - 1
    if len(x0) == 0:
        e = np.zeros(0)
        return Detections(e, e.copy(), e.astype(np.float32), segmap, np.zeros(0, np.int32))
    x, y = refine_positions(comb, combiv, x0, y0, sigma)
    ny, nx = snr.shape
    # sources centred off the grid (peaks on the edge of a star outside) are dropped
    on = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    x, y, x0, y0 = x[on], y[on], x0[on], y0[on]
    peak = snr[y0.astype(int), x0.astype(int)]
    blob = segmap[np.rint(y).astype(int), np.rint(x).astype(int)]
    return Detections(x, y, peak.astype(np.float32), segmap, blob.astype(np.int32))

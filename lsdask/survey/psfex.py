"""PsfEx PSF models: read real files (and lite ones, written in the same format).

One reader serves every layout found in the wild:

- merged per-exposure files (``calib/psfex/.../<base>-psfex.fits``): one table row
  per CCD with ``psf_mask[ncoef, N, N]``, ``polzero1/2``, ``polscal1/2``,
  ``poldeg1``, ``psf_samp``, ``psf_fwhm``, ``expnum``, ``ccdname`` ...;
- per-CCD files (``calib/psfex-single/...-<ccd>-psfex.fits``): the same, one row;
- old PsfEx outputs (``*.psf``, ``decam-<expnum>-<ccd>.fits``): one row holding
  only ``psf_mask``, the polynomial parameters in the table header.

API (stable)::

    read_psfex(path, ccdname=None) -> PsfExModel        # one CCD (the only row if None)
    read_psfex_all(path) -> dict[ccdname, PsfExModel]   # every row ('' for unnamed)
    write_psfex(path, models)                          # merged file, one row per model
    PsfExModel.at(x, y) -> 2-d unit-sum stamp (odd size, native pixels, centred)
    PsfExModel.stamp(x, y, dx, dy) -> the same with the centre offset by (dx, dy) pixels
    PsfExModel.fwhm  (pixels), .ccdname, .expnum, .stamp_size

Pixel coordinates ``x, y`` passed to :meth:`PsfExModel.at` are 0-based image
pixels (PsfEx's ``X_IMAGE`` is ``x + 1``). The spatial variation is PsfEx's
polynomial: terms ``dx**i * dy**j`` for ``j`` in ``0..deg`` and ``i`` in
``0..deg-j`` (``i`` fastest), ``dx = (X_IMAGE - polzero1) / polscal1``.
``psf_samp`` is the model's sampling step in pixels: > 1 (old 90Prime models) is
resampled onto pixels; ``1/k`` with odd ``k`` (lite models of undersampled images)
is sampled at the pixel centres after a sub-pixel shift on the fine grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

__all__ = ["PsfExModel", "read_psfex", "read_psfex_all", "write_psfex", "stamp_fwhm",
           "poly_terms"]


def poly_terms(dx: float, dy: float, degree: int) -> np.ndarray:
    """PsfEx polynomial terms (1, dx, dx^2, dy, dx dy, dy^2 for degree 2)."""
    out = []
    for j in range(degree + 1):
        for i in range(degree + 1 - j):
            out.append(dx ** i * dy ** j)
    return np.array(out, dtype=float)


def stamp_fwhm(stamp: np.ndarray) -> float:
    """FWHM (pixels) of a centred PSF stamp from the area above half maximum."""
    s = np.asarray(stamp, dtype=float)
    peak = s.max()
    if not np.isfinite(peak) or peak <= 0:
        return float("nan")
    area = float(np.count_nonzero(s >= 0.5 * peak))
    # sub-pixel refinement: fraction of the threshold pixels on the boundary is ignored
    return 2.0 * np.sqrt(area / np.pi)


@dataclass
class PsfExModel:
    """A PsfEx model of one CCD."""

    psf_mask: np.ndarray  # (ncoef, N, N) float32
    polzero: tuple[float, float] = (0.0, 0.0)
    polscal: tuple[float, float] = (1.0, 1.0)
    poldeg: int = 0
    psf_samp: float = 1.0
    psf_fwhm: float = float("nan")  # pixels, as recorded
    ccdname: str = ""
    expnum: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        m = np.asarray(self.psf_mask, dtype=np.float32)
        if m.ndim == 2:
            m = m[None]
        self.psf_mask = m
        nterm = len(poly_terms(0.0, 0.0, self.poldeg))
        if m.shape[0] < nterm:
            raise ValueError(f"psf_mask has {m.shape[0]} planes, degree {self.poldeg} "
                             f"needs {nterm}")

    @property
    def stamp_size(self) -> int:
        """Size (native pixels) of the stamps :meth:`at` returns."""
        n = self.psf_mask.shape[-1]
        if self._fine:
            return 2 * ((n // 2) // self._fine) + 1
        if abs(self.psf_samp - 1.0) < 1e-6:
            return n
        m = int(np.floor(n * self.psf_samp))
        return m if m % 2 == 1 else m - 1

    def raw_at(self, x: float, y: float) -> np.ndarray:
        """The model image in PSF-sample units (not resampled, not normalised)."""
        dx = (float(x) + 1.0 - self.polzero[0]) / self.polscal[0]
        dy = (float(y) + 1.0 - self.polzero[1]) / self.polscal[1]
        t = poly_terms(dx, dy, self.poldeg)
        return np.tensordot(t, self.psf_mask[: len(t)].astype(float), axes=1)

    @property
    def _fine(self) -> int:
        """k when the model is sampled k times finer than the pixels (psf_samp = 1/k), else 0."""
        if self.psf_samp < 1.0 - 1e-6:
            k = int(round(1.0 / self.psf_samp))
            if abs(k * self.psf_samp - 1.0) < 1e-3 and k % 2 == 1:
                return k
        return 0

    def stamp(self, x: float, y: float, dx: float = 0.0, dy: float = 0.0,
              half: int | None = None) -> np.ndarray:
        """Native-pixel stamp of the PSF at (x, y) whose centre is offset by (dx, dy)
        pixels from the stamp's central pixel (sub-pixel positioning); normalised so the
        whole (uncropped, unshifted) PSF sums to 1.

        Finely sampled models (``psf_samp = 1/k``, odd k) are shifted on their fine grid
        and then sampled at the pixel centres, which stays exact for undersampled PSFs;
        others are shifted with a Fourier phase ramp. ``half`` crops the result to
        (2 half + 1)^2 pixels (faster)."""
        k = self._fine
        if not k:
            img = self.at(x, y)
            c = img.shape[0] // 2
            if half is not None:
                r = min(c, half + 8)
                img = img[c - r:c + r + 1, c - r:c + r + 1]
            if dx or dy:
                img = _fourier_shift(img, dx, dy)
            if half is not None:
                c = img.shape[0] // 2
                r = min(c, half)
                img = img[c - r:c + r + 1, c - r:c + r + 1]
            return img
        from scipy.ndimage import map_coordinates, spline_filter

        key = (float(x), float(y))
        if getattr(self, "_raw_cache", (None,))[0] != key:
            raw = self.raw_at(x, y)
            c = raw.shape[0] // 2
            h = c // k
            norm = raw[c - h * k:c + h * k + 1:k, c - h * k:c + h * k + 1:k].sum()
            if norm <= 0:
                raise ValueError(f"PSF model of CCD {self.ccdname!r} has non-positive sum")
            self._raw_cache = (key, spline_filter(raw, order=3), norm, c, h)
        _, coef, norm, c, h = self._raw_cache
        if half is not None:
            h = min(h, half)
        # values of the fine (well-sampled) image at the shifted pixel centres
        g = np.arange(-h, h + 1, dtype=float)
        yy, xx = np.meshgrid(c + k * (g - dy), c + k * (g - dx), indexing="ij")
        img = map_coordinates(coef, [yy, xx], order=3, prefilter=False, mode="constant")
        return img / norm

    def at(self, x: float, y: float) -> np.ndarray:
        """Unit-sum PSF stamp at 0-based pixel (x, y), on native pixels, centred."""
        if self._fine:
            return self.stamp(x, y)
        img = self.raw_at(x, y)
        if abs(self.psf_samp - 1.0) > 1e-6:
            from scipy.ndimage import map_coordinates

            n = img.shape[0]
            m = self.stamp_size
            c_in, c_out = (n - 1) / 2.0, (m - 1) / 2.0
            g = (np.arange(m) - c_out) / self.psf_samp + c_in
            yy, xx = np.meshgrid(g, g, indexing="ij")
            img = map_coordinates(img, [yy, xx], order=3, mode="constant", cval=0.0)
        img = np.where(np.isfinite(img), img, 0.0)
        s = img.sum()
        if s <= 0:
            raise ValueError(f"PSF model of CCD {self.ccdname!r} has non-positive sum at "
                             f"({x}, {y})")
        return img / s

    @property
    def fwhm(self) -> float:
        """FWHM in native pixels (the recorded ``psf_fwhm``, else measured at the centre)."""
        if np.isfinite(self.psf_fwhm) and self.psf_fwhm > 0:
            return float(self.psf_fwhm)
        return stamp_fwhm(self.at(self.polzero[0] - 1.0, self.polzero[1] - 1.0))


def _fourier_shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Shift an image by (dx, dy) pixels with a Fourier phase ramp."""
    ny, nx = img.shape
    ph = np.exp(-2j * np.pi * (np.fft.fftfreq(nx)[None, :] * dx
                               + np.fft.fftfreq(ny)[:, None] * dy))
    return np.fft.ifft2(np.fft.fft2(img) * ph).real


def _get(row, hdr, names, key, default=None):
    if key in names:
        v = row[key]
        return v.decode() if isinstance(v, bytes) else v
    k = key.upper()
    if hdr is not None and k in hdr:
        return hdr[k]
    return default


def read_psfex_all(path: str | os.PathLike) -> dict[str, PsfExModel]:
    """Every PSF model in a PsfEx file, keyed by stripped CCD name ('' when unnamed)."""
    import fitsio

    path = Path(path)
    try:
        with fitsio.FITS(str(path)) as f:
            ext = next((h.get_extnum() for h in f if h.get_exttype() == "BINARY_TBL"), None)
            if ext is None:
                raise InputError(f"{path}: no table HDU in PsfEx file")
            hdr = f[ext].read_header()
            data = f[ext].read()
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read PsfEx file: {e}") from None
    names = {n.lower(): n for n in data.dtype.names}
    data.dtype.names = tuple(n.lower() for n in data.dtype.names)
    cols = set(names)
    if "psf_mask" not in cols:
        raise InputError(f"{path}: PsfEx table has no psf_mask column")
    out: dict[str, PsfExModel] = {}
    for row in data:
        ccd = str(_get(row, None, cols, "ccdname", "") or "").strip()
        fw = _get(row, hdr, cols, "psf_fwhm", float("nan"))
        model = PsfExModel(
            psf_mask=np.array(row["psf_mask"]),
            polzero=(float(_get(row, hdr, cols, "polzero1", 0.0)),
                     float(_get(row, hdr, cols, "polzero2", 0.0))),
            polscal=(float(_get(row, hdr, cols, "polscal1", 1.0)),
                     float(_get(row, hdr, cols, "polscal2", 1.0))),
            poldeg=int(_get(row, hdr, cols, "poldeg1", 0)),
            psf_samp=float(_get(row, hdr, cols, "psf_samp", 1.0)),
            psf_fwhm=float(fw) if fw is not None else float("nan"),
            ccdname=ccd, expnum=int(_get(row, None, cols, "expnum", 0) or 0),
            meta={k: _get(row, None, cols, k) for k in ("plver", "plprocid", "procdate",
                                                         "accepted", "chi2")
                  if k in cols},
        )
        out[ccd] = model
    return out


def read_psfex(path: str | os.PathLike, ccdname: str | None = None) -> PsfExModel:
    """One CCD's PSF model; ``ccdname=None`` takes the file's only (or first) row."""
    models = read_psfex_all(path)
    if ccdname is None:
        return next(iter(models.values()))
    key = ccdname.strip()
    for k, m in models.items():
        if k.upper() == key.upper():
            return m
    if list(models) == [""]:  # unnamed single-CCD file
        return models[""]
    raise InputError(f"{path}: no PSF model for CCD {ccdname!r} (has {sorted(models)})")


def write_psfex(path: str | os.PathLike, models: list[PsfExModel],
                extra: list[dict] | None = None) -> Path:
    """Write a merged PsfEx file (one row per model, real column names) atomically.

    All models must share one stamp size (planes are zero-padded to the most).
    ``extra`` gives per-row values of further columns (``plver``, ``procdate``,
    ``accepted``, ``chi2``, ``legpipev`` ...).
    """
    import fitsio

    if not models:
        raise ValueError("write_psfex needs at least one model")
    n = max(m.psf_mask.shape[0] for m in models)  # fewer planes (lower degree): zero-padded
    shape = (n,) + models[0].psf_mask.shape[1:]
    extra = extra or [{} for _ in models]
    dt = [("psf_mask", "f4", shape), ("psfaxis1", "i8"), ("psfaxis2", "i8"), ("psfaxis3", "i8"),
          ("psfnaxis", "i8"), ("polnaxis", "i8"), ("polgrp1", "i8"), ("polgrp2", "i8"),
          ("polngrp", "i8"), ("polname1", "S7"), ("polname2", "S7"), ("polzero1", "f8"),
          ("polzero2", "f8"), ("polscal1", "f8"), ("polscal2", "f8"), ("poldeg1", "i8"),
          ("psf_samp", "f8"), ("psf_fwhm", "f8"), ("accepted", "i8"), ("loaded", "i8"),
          ("chi2", "f8"), ("legpipev", "S20"), ("plver", "S8"), ("plprocid", "S7"),
          ("imgdsum", "i8"), ("procdate", "S19"), ("expnum", "i8"), ("ccdname", "S5")]
    t = np.zeros(len(models), dtype=dt)
    for i, (m, ex) in enumerate(zip(models, extra, strict=True)):
        if m.psf_mask.shape[1:] != shape[1:]:
            raise ValueError("all psf_mask stamps of a merged PsfEx file must share a size")
        k = m.psf_mask.shape[0]
        t["psf_mask"][i][:k] = m.psf_mask
        t["psfaxis1"][i], t["psfaxis2"][i], t["psfaxis3"][i] = shape[2], shape[1], k
        t["psfnaxis"][i], t["polnaxis"][i] = 3, 2
        t["polgrp1"][i], t["polgrp2"][i], t["polngrp"][i] = 1, 1, 1
        t["polname1"][i], t["polname2"][i] = "X_IMAGE", "Y_IMAGE"
        t["polzero1"][i], t["polzero2"][i] = m.polzero
        t["polscal1"][i], t["polscal2"][i] = m.polscal
        t["poldeg1"][i] = m.poldeg
        t["psf_samp"][i] = m.psf_samp
        t["psf_fwhm"][i] = m.psf_fwhm
        t["expnum"][i] = m.expnum
        t["ccdname"][i] = m.ccdname
        for k, v in ex.items():
            if k in t.dtype.names:
                t[k][i] = v
    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(t, extname="PSFEX")
    return Path(path)

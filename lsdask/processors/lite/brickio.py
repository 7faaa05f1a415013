"""Per-brick product writers: coadds, maskbits, depth histograms, ccds table, JPEG, blobs,
sha256sum. Every file is written atomically; each writer returns the path written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...atomic import atomic_path, sha256_file, write_bytes_atomic, write_text_atomic
from ...survey.layout import ReleaseLayout
from ...survey.wcs import TanWCS

#: DR9 maskbits used here.
MASKBITS = {"NPRIMARY": 0x1, "BRIGHT": 0x2, "SATUR_G": 0x4, "SATUR_R": 0x8, "SATUR_Z": 0x10,
            "ALLMASK_G": 0x20, "ALLMASK_R": 0x40, "ALLMASK_Z": 0x80, "MEDIUM": 0x800}

#: Depth-histogram bin edges (FORMATS.md): 0.1 mag from 20 to 25, outer edges 0 and 100.
DEPTH_EDGES = np.arange(20, 25.001, 0.1)
DEPTH_EDGES[0] = 0.0
DEPTH_EDGES[-1] = 100.0


def _header(wcs: TanWCS | None, extra: dict | None = None):
    import fitsio

    hdr = fitsio.FITSHDR()
    for k, v in ({**(wcs.header_cards() if wcs is not None else {}), **(extra or {})}).items():
        hdr.add_record({"name": k, "value": v})
    return hdr


#: Tile compression per coadd kind, as legacypipe's coadds: (method, qlevel, qmethod).
#: A negative qlevel is an absolute quantisation step (no per-tile noise estimate, much
#: faster); a positive one is relative to each tile's noise; None is lossless.
COMPRESSION = {
    "image": ("RICE", -1e-4, "SUBTRACTIVE_DITHER_2"),
    "model": ("RICE", -1e-4, "SUBTRACTIVE_DITHER_2"),
    "chi2": ("RICE", -0.1, "SUBTRACTIVE_DITHER_2"),
    "invvar": ("RICE", 16.0, "NO_DITHER"),
    "depth": ("GZIP_2", None, None),
    "galdepth": ("GZIP_2", None, None),
    "psfsize": ("GZIP_2", None, None),
}
#: Tile shape (rows, columns) of the compressed images (legacypipe uses 100 x 100).
TILE = (100, 100)


def write_image(path: Path, data: np.ndarray, wcs: TanWCS, extra: dict | None = None,
                lossless: bool = False, kind: str | None = None) -> Path:
    """A tile-compressed (``.fits.fz``) image with the brick WCS. Float images are compressed
    as legacypipe's coadd of that ``kind`` (:data:`COMPRESSION`); other float images RICE with
    quantisation relative to the noise (lossy) unless ``lossless`` (GZIP). Integer images
    are RICE compressed (lossless)."""
    import fitsio

    tiles = [min(TILE[0], data.shape[0]), min(TILE[1], data.shape[1])]
    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            hdr = _header(wcs, extra)
            if data.dtype.kind == "f":
                method, q, qmethod = ("GZIP_2", None, None) if lossless else COMPRESSION.get(
                    kind or "", ("RICE", 16.0, "SUBTRACTIVE_DITHER_2"))
                kw = {} if qmethod is None else {"qmethod": qmethod, "dither_seed": 1}
                f.write(data, header=hdr, compress=method, tile_dims=tiles, qlevel=q, **kw)
            else:
                f.write(data, header=hdr, compress="RICE", tile_dims=tiles)
    return Path(path)


def depth_mag(ivar: np.ndarray) -> np.ndarray:
    """5-sigma AB depth from a flux inverse variance (nanomaggies^-2); NaN where ivar <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ivar > 0, 22.5 - 2.5 * np.log10(5.0 / np.sqrt(ivar)), np.nan)


def depth_table(coadds: dict[str, dict[str, np.ndarray]], unique: np.ndarray,
                bands: tuple[str, ...]) -> np.ndarray:
    """The ``-depth.fits`` table: histograms of psf/gal depth over unique covered pixels."""
    dt = [("depthlo", "f4"), ("depthhi", "f4")]
    for b in bands:
        dt += [(f"counts_ptsrc_{b}", "i4"), (f"counts_gal_{b}", "i4")]
    t = np.zeros(len(DEPTH_EDGES) - 1, dtype=dt)
    t["depthlo"] = DEPTH_EDGES[:-1]
    t["depthhi"] = DEPTH_EDGES[1:]
    for b in bands:
        c = coadds.get(b)
        if c is None:
            continue
        for kind, key in (("ptsrc", "psfdepth"), ("gal", "galdepth")):
            iv = c[key][unique]
            m = depth_mag(iv[iv > 0])
            m = np.clip(m, DEPTH_EDGES[0], np.nextafter(DEPTH_EDGES[-1], 0))
            t[f"counts_{kind}_{b}"] = np.histogram(m, bins=DEPTH_EDGES)[0]
    return t


def write_table(path: Path, data: np.ndarray, header: dict | None = None,
                extname: str | None = None) -> Path:
    import fitsio

    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(_bytes_strings(data), header=_header(None, header), extname=extname)
    return Path(path)


def _bytes_strings(data: np.ndarray) -> np.ndarray:
    if not any(data.dtype[n].kind == "U" for n in data.dtype.names):
        return data
    dt = [(n, f"S{max(1, data.dtype[n].itemsize // 4)}") if data.dtype[n].kind == "U"
          else (n, data.dtype[n]) for n in data.dtype.names]
    out = np.empty(len(data), dtype=dt)
    for n in data.dtype.names:
        out[n] = np.char.encode(data[n], "ascii") if data.dtype[n].kind == "U" else data[n]
    return out


def write_blobs(path: Path, segmap: np.ndarray, wcs: TanWCS) -> Path:
    """The blob map (i4, -1 where no source) as a gzipped FITS image."""
    import fitsio

    with atomic_path(path) as tmp:
        with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
            f.write(segmap.astype(np.int32), header=_header(wcs, {"EXTNAME": "BLOBS"}))
    return Path(path)


def rgb_jpeg(path: Path, coadds: dict[str, dict[str, np.ndarray]], quality: int = 90) -> Path:
    """A g/r/z colour JPEG (asinh stretch, legacypipe-like scales; north up, east left)."""
    from PIL import Image

    scales = {"g": (2, 6.0), "r": (1, 3.4), "z": (0, 2.2), "i": (0, 2.8)}
    ny, nx = next(iter(coadds.values()))["image"].shape
    rgb = np.zeros((ny, nx, 3), np.float32)
    for b, c in coadds.items():
        if b not in scales:
            continue
        plane, scale = scales[b]
        rgb[:, :, plane] = c["image"] * scale
    q, m = 20.0, 0.03
    inten = rgb.mean(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(inten > 0, np.arcsinh(inten * q / m) / (q * inten), 0)
    rgb = np.clip(rgb * f[:, :, None] * 255.0 * 1.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb[::-1]).save(buf, format="JPEG", quality=quality)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def sha256_lines(paths: list[Path], root: Path) -> str:
    """``sha256sum``-format lines (``<hex>  <path relative to root>``)."""
    lines = []
    for p in paths:
        rel = Path(p).resolve().relative_to(Path(root).resolve())
        lines.append(f"{sha256_file(p)}  {rel}")
    return "\n".join(lines) + "\n"


def write_sha256sum(layout: ReleaseLayout, brick: str, text: str) -> Path:
    path = layout.sha256sum(brick)
    write_text_atomic(path, text)
    return path

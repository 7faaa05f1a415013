"""Per-camera naming and geometry (DECam, Mosaic-3, 90Prime). No Dask here.

API (stable; used by the images stage, the simulator and the lite processors)::

    CAMERAS["decam"] -> Camera          # also CAMERAS["mosaic"], CAMERAS["90prime"]
    get_camera(name) -> Camera          # by name or file prefix (c4d, k4m, ksb)
    Camera.prefix, .ccdnames, .ccd_width, .ccd_height, .pixscale, .zp0[band],
          .k_ext[band], .bands, .ooi_glob, .ccd_offset(name) -> (dx, dy) arcsec
    parse_image_filename(name) -> dict(camera, date, time, prodtype, band, version, ccdname)
    companion(image_filename, "oow" | "ood") -> str | None
    camera_of(image_filename) -> str    # "decam" / "mosaic" / "90prime"

``parse_image_filename`` understands the Community Pipeline naming
``<prefix>_<yymmdd>_<hhmmss>_<prodtype>_<band>_<version>.fits.fz`` and the
single-CCD cutout forms of the test data (``...ooi_z_ls9.N12.fits``,
``...ooi_zd_v2-ccd3.fits``); Mosaic's ``zd`` filter is reported as band ``z``.
Old 90Prime names (``deep2g_ra352_1-ccd1.fits`` with ``.wht.fits`` weights) give
camera ``90prime``, band from the name, and an ``oow`` companion but no ``ood``.

Focal-plane offsets are the CCD centres relative to the boresight in arcsec
(``dx`` towards +RA, ``dy`` towards +Dec, with the image y axis along RA and x
along Dec for DECam as in real CP images). The DECam layout has the real row
structure (N1-N31 / S1-S31 in 12 rows of 3-4-5-6-6-7 CCDs) with approximate gaps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

__all__ = ["Camera", "CAMERAS", "get_camera", "parse_image_filename", "companion",
           "camera_of", "decam_ccdnames"]

#: DECam rows from the outermost S row to the outermost N row.
_DECAM_ROWS_S = [(29, 31), (25, 28), (20, 24), (14, 19), (8, 13), (1, 7)]


def decam_ccdnames() -> list[str]:
    """The 62 DECam science CCD names, N1..N31 then S1..S31."""
    return [f"N{i}" for i in range(1, 32)] + [f"S{i}" for i in range(1, 32)]


def _decam_offsets(width: int, height: int, pixscale: float,
                   gap: float = 0.02) -> dict[str, tuple[float, float]]:
    """CCD centre offsets (arcsec) for a DECam-like plane of CCDs ``width`` x ``height`` px.

    Rows are stacked along Dec (the CCD x axis); within a row CCDs sit side by
    side along RA (their y axis). ``gap`` is the fractional gap between CCDs.
    """
    wx = width * pixscale * (1 + gap)   # extent along Dec of one row
    wy = height * pixscale * (1 + gap)  # extent along RA of one CCD
    out: dict[str, tuple[float, float]] = {}
    # S rows: index 0 (outermost) .. 5 (innermost); N rows mirror them.
    for side, sign in (("S", -1), ("N", 1)):
        for irow, (lo, hi) in enumerate(_DECAM_ROWS_S):
            dist = 5 - irow  # 0 for the innermost row
            dy = sign * (dist + 0.5) * wx
            n = hi - lo + 1
            for j, num in enumerate(range(lo, hi + 1)):
                dxv = (j - (n - 1) / 2.0) * wy
                out[f"{side}{num}"] = (float(dxv), float(dy))
    return out


def _quad_offsets(width: int, height: int, pixscale: float, names: list[str],
                  gap: float = 0.02) -> dict[str, tuple[float, float]]:
    """2x2 mosaic (Mosaic-3, 90Prime): CCD1 NE ... CCD4 (approximate)."""
    wx, wy = width * pixscale * (1 + gap), height * pixscale * (1 + gap)
    pos = [(-0.5, 0.5), (0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)]
    return {n: (p[0] * wx, p[1] * wy) for n, p in zip(names, pos, strict=True)}


@dataclass(frozen=True)
class Camera:
    """Naming and geometry of one camera."""

    name: str
    prefix: str
    ccdnames: tuple[str, ...]
    ccd_width: int
    ccd_height: int
    pixscale: float  # arcsec / pixel
    zp0: dict[str, float]  # nominal zeropoints, e-/s at airmass 1, per band
    k_ext: dict[str, float]  # extinction coefficient (mag / airmass) per band
    gain: float = 4.0
    saturation: float = 40000.0  # e- per pixel (counts * gain) before saturation
    read_noise: float = 7.0  # e-
    telescope: str = ""
    instrument: str = ""
    filter_names: dict[str, str] = field(default_factory=dict)
    #: CP images in e-/s (Mosaic-3, 90Prime), not in counts of the whole exposure (DECam):
    #: legacypipe's MosaicImage/BokImage scale them by EXPTIME where DecamImage adds
    #: 2.5 log10(EXPTIME) to ``ccdzpt``; survey-ccds' ``ccdzpt`` is per second for all.
    image_per_second: bool = False

    def expnum(self, primary) -> int:
        """The exposure number of a CP primary header, as legacypipe reads it: 90Prime's from
        ``DTACQNAM`` (``.../d7580.0144.fits`` -> 75800144), Mosaic-3's ``EXPNUM`` or, where
        blank, ``OBSID``'s time (``kp4m.20160125T082555`` -> 160125082555); else ``EXPNUM``."""
        if self.name == "90prime" and primary.get("DTACQNAM"):
            base = PurePath(str(primary["DTACQNAM"]).strip()).name
            base = base.replace(".fits", "").replace(".fz", "")
            return int(re.sub(r"([a-z]+|\.+)", "", base))
        value = primary.get("EXPNUM")
        if value not in (None, "") or self.name != "mosaic" or not primary.get("OBSID"):
            return int(float(value or 0))
        return int(str(primary["OBSID"]).strip().split(".")[1].replace("T", "")[2:])

    def counts_per_second(self, exptime: float) -> float:
        """What to divide the image by to get counts per second."""
        return 1.0 if self.image_per_second else float(exptime)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.zp0)

    @property
    def ooi_glob(self) -> str:
        """Glob (relative to ``images/``) that finds this camera's CP ooi files."""
        return f"{self.name}/**/{self.prefix}_*_ooi_*.fits.fz"

    def focal_plane(self, width: int | None = None, height: int | None = None,
                    pixscale: float | None = None) -> dict[str, tuple[float, float]]:
        """CCD centre offsets (arcsec, dRA-like, dDec) for CCDs of the given size."""
        w = width or self.ccd_width
        h = height or self.ccd_height
        s = pixscale or self.pixscale
        if self.name == "decam":
            return _decam_offsets(w, h, s)
        return _quad_offsets(w, h, s, list(self.ccdnames))

    def ccd_offset(self, ccdname: str) -> tuple[float, float]:
        """Offset (arcsec) of a CCD centre from the boresight at the real CCD size."""
        return self.focal_plane()[ccdname.strip().upper()]

    def filter_string(self, band: str) -> str:
        return self.filter_names.get(band, band)


CAMERAS: dict[str, Camera] = {
    "decam": Camera(
        name="decam", prefix="c4d", ccdnames=tuple(decam_ccdnames()),
        ccd_width=2046, ccd_height=4094, pixscale=0.262,
        zp0={"g": 26.610, "r": 26.818, "z": 26.484},
        k_ext={"g": 0.17, "r": 0.10, "z": 0.06},
        gain=4.0, saturation=4.0 * 38000.0, read_noise=7.0,
        telescope="CTIO 4.0-m telescope", instrument="DECam",
        filter_names={"g": "g DECam SDSS c0001 4720.0 1520.0",
                      "r": "r DECam SDSS c0002 6415.0 1480.0",
                      "z": "z DECam SDSS c0004 9260.0 1520.0"}),
    "mosaic": Camera(
        name="mosaic", prefix="k4m", ccdnames=("CCD1", "CCD2", "CCD3", "CCD4"),
        ccd_width=4096, ccd_height=4096, pixscale=0.262,
        zp0={"z": 26.552}, k_ext={"z": 0.06},
        gain=1.8, saturation=1.8 * 20000.0, read_noise=6.0,
        telescope="KPNO 4.0 meter telescope", instrument="Mosaic3",
        filter_names={"z": "zd DECam k1038"}, image_per_second=True),
    "90prime": Camera(
        name="90prime", prefix="ksb", ccdnames=("CCD1", "CCD2", "CCD3", "CCD4"),
        ccd_width=4096, ccd_height=4032, pixscale=0.455,
        zp0={"g": 26.93, "r": 27.01}, k_ext={"g": 0.17, "r": 0.10},
        gain=1.4, saturation=1.4 * 60000.0, read_noise=8.0,
        telescope="Bok 2.3-m telescope", instrument="90Prime",
        filter_names={"g": "g", "r": "bokr"}, image_per_second=True),
}

_PREFIX = {c.prefix: c.name for c in CAMERAS.values()}

_CP_RE = re.compile(
    r"^(?P<prefix>c4d|k4m|ksb)_(?P<date>\d{6})_(?P<time>\d{6})_(?P<prodtype>o[a-z]{2})_"
    r"(?P<band>[A-Za-z]+)_(?P<version>[A-Za-z0-9]+)"
    r"(?:[.-](?P<ccdname>[A-Za-z]+\d+))?(?P<ext>\.fits(?:\.fz|\.gz)?)$")
_OLD90_RE = re.compile(r"^(?P<field>[a-z0-9]+?)(?P<band>[gr])_(?P<rest>[a-z0-9_]+)"
                       r"-(?P<ccdname>ccd\d)(?P<wht>\.wht)?\.fits$")


def get_camera(name: str) -> Camera:
    """A camera by name (``decam``, ``mosaic``, ``90prime``) or file prefix (``c4d``...)."""
    key = name.strip().lower()
    key = _PREFIX.get(key, key)
    try:
        return CAMERAS[key]
    except KeyError:
        raise KeyError(f"unknown camera {name!r} (known: {', '.join(CAMERAS)})") from None


def parse_image_filename(name: str) -> dict[str, str] | None:
    """Fields of a CP image file name, or None when it is not a recognised camera image.

    Returns ``dict(camera, date, time, prodtype, band, version, ccdname)``; ``date`` is
    ``yymmdd``, ``ccdname`` is '' unless the file is a single-CCD cutout.
    """
    base = PurePath(name).name
    m = _CP_RE.match(base)
    if m:
        band = m["band"]
        if band == "zd":
            band = "z"
        return dict(camera=_PREFIX[m["prefix"]], date=m["date"], time=m["time"],
                    prodtype=m["prodtype"], band=band.lower(), version=m["version"],
                    ccdname=m["ccdname"] or "")
    m = _OLD90_RE.match(base)
    if m:
        return dict(camera="90prime", date="", time="", prodtype="oow" if m["wht"] else "ooi",
                    band=m["band"], version="", ccdname=m["ccdname"].upper())
    return None


def camera_of(image_filename: str) -> str:
    """Camera name of an image file (by naming, else by its folder), or '' when unknown."""
    info = parse_image_filename(image_filename)
    if info:
        return info["camera"]
    parts = [p.lower() for p in PurePath(image_filename).parts]
    for cam in CAMERAS:
        if cam in parts:
            return cam
    return ""


def band_of_filter(value: str) -> str:
    """The band of a CP ``FILTER`` card, as legacypipe reads it: its first word, Mosaic-3's
    ``zd`` being z and 90Prime's ``bokr`` r (``'g DECam SDSS c0001 ...'`` -> ``g``)."""
    words = str(value).split()
    if not words:
        return ""
    return {"zd": "z", "bokr": "r"}.get(words[0], words[0])[:1].lower()


def camera_for(image_filename: str, camera: str = "") -> Camera:
    """The camera of an image: ``camera`` (e.g. survey-ccds' column) when known, else by the
    file's naming; DECam when neither tells."""
    name = (camera or "").strip() or camera_of(image_filename) or "decam"
    return get_camera(name)


def companion(image_filename: str, kind: str) -> str | None:
    """Name of the weight (``oow``) or data-quality (``ood``) file of an ``ooi`` image.

    Keeps the directory part. Also handles Mosaic ``oki`` images and old 90Prime
    ``.fits`` / ``.wht.fits`` pairs (which have no ``ood`` file: returns None).
    """
    if kind not in ("oow", "ood"):
        raise ValueError(f"companion kind must be 'oow' or 'ood', not {kind!r}")
    p = PurePath(image_filename)
    base = p.name
    m = _CP_RE.match(base)
    if m:
        start, end = m.span("prodtype")
        return str(p.with_name(base[:start] + kind + base[end:]))
    m = _OLD90_RE.match(base)
    if m and not m["wht"]:
        if kind == "ood":
            return None
        return str(p.with_name(base[: -len(".fits")] + ".wht.fits"))
    return None

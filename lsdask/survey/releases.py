"""The tractor ``RELEASE`` number: what the Legacy Surveys ecosystem maps it to.

``RELEASE`` (tractor ``release i2``, sweep ``RELEASE``) names the data release *and* the
camera / photometric system of a processing run; downstream code decodes it. desitarget
(``desitarget.io.releasedict`` / ``release_to_photsys``) maps it to ``PHOTSYS`` 'S' (DECam,
the "south") or 'N' (BASS 90Prime + MzLS Mosaic-3, the "north") and refuses any other
number (``ValueError: Unknown release number``); targeting, the north/south resolution and
the colour cuts all follow ``PHOTSYS``. The public table is legacysurvey.org/release
(DR9: 9010/9012 DECam, 9011 BASS/MzLS).

lsdask writes the DR9 tractor datamodel (g, r, z + WISE, no i band), so its default is
**9010**, DR9 DECam: desitarget reads a DR9-model file (no ``FLUX_I``) as DR9 and maps 9010
to 'S'. 10000 (DR10 DECam, 'S') is accepted too, though real DR10 files carry the DR10
datamodel (with the i band) rather than the DR9 one lsdask writes.

API: :data:`RELEASES`, :data:`DEFAULT_RELEASE`, :func:`photsys`, :func:`release_problem`,
:func:`sweep_version`.
"""

from __future__ import annotations

from typing import NamedTuple


class ReleaseInfo(NamedTuple):
    """One known release number."""

    photsys: str  # 'S' (DECam) or 'N' (BASS + MzLS)
    dr: str  # the data release it belongs to
    note: str


#: Every release number desitarget 4.4 knows (``desitarget.io.releasedict``), with
#: legacysurvey.org/release's meaning.
RELEASES: dict[int, ReleaseInfo] = {
    3000: ReleaseInfo("S", "DR3", "DECaLS"),
    4000: ReleaseInfo("N", "DR4", "BASS + MzLS"),
    5000: ReleaseInfo("S", "DR5", "DECaLS"),
    6000: ReleaseInfo("N", "DR6", "BASS + MzLS"),
    7000: ReleaseInfo("S", "DR7", "DECaLS"),
    7999: ReleaseInfo("S", "DR8a", "DR8 test reductions (DECam)"),
    8000: ReleaseInfo("S", "DR8", "DECam"),
    8001: ReleaseInfo("N", "DR8", "BASS + MzLS"),
    **{r: ReleaseInfo("S" if r % 2 == 0 else "N", "DR9", "DR9 test runs")
       for r in range(9000, 9010)},
    9010: ReleaseInfo("S", "DR9", "DECam (DECaLS + DES), the DR9 'south'"),
    9011: ReleaseInfo("N", "DR9", "BASS + MzLS, the DR9 'north'"),
    9012: ReleaseInfo("S", "DR9", "DECam, DR9 bricks reprocessed"),
    9013: ReleaseInfo("N", "DR9", "BASS + MzLS, reprocessed"),
    10000: ReleaseInfo("S", "DR10", "DECam with the i band (DR10 datamodel)"),
}

#: The default release: DR9 DECam, the datamodel lsdask writes.
DEFAULT_RELEASE = 9010
#: The default for a release of the northern cameras (90prime, mosaic).
DEFAULT_NORTH_RELEASE = 9011

#: Photometric system of each camera.
CAMERA_PHOTSYS = {"decam": "S", "90prime": "N", "mosaic": "N"}


def photsys(release: int) -> str:
    """'S' or 'N' for a known release number (KeyError otherwise)."""
    return RELEASES[release].photsys


def release_problem(release: int, cameras: list[str]) -> str | None:
    """Why ``release`` cannot label a release of ``cameras`` (None if it can)."""
    if release not in RELEASES:
        return (f"{release} is not a Legacy Surveys release number that desitarget can map to "
                f"a photometric system (its read_tractor/select_targets refuse it); use "
                f"{DEFAULT_RELEASE} (DR9 DECam, 'south') or {DEFAULT_NORTH_RELEASE} (DR9 "
                f"BASS/MzLS, 'north'); known: {', '.join(map(str, sorted(RELEASES)))}")
    want = {CAMERA_PHOTSYS[c] for c in cameras if c in CAMERA_PHOTSYS}
    have = photsys(release)
    if len(want) > 1:
        return ("cameras of both photometric systems (DECam 'S', 90prime/mosaic 'N') in one "
                "release: the Legacy Surveys process them as separate releases "
                f"({DEFAULT_RELEASE} south, {DEFAULT_NORTH_RELEASE} north)")
    if want and have not in want:
        other = DEFAULT_RELEASE if "S" in want else DEFAULT_NORTH_RELEASE
        return (f"{release} is a '{have}' ({RELEASES[release].note}) release but cameras "
                f"{cameras} are '{want.pop()}'; use {other}")
    return None


def sweep_version(release: int) -> str:
    """The public sweep folder version of a release: ``sweep/9.0`` for DR9 (9010),
    ``sweep/10.0`` for DR10 (10000)."""
    return f"{release // 1000}.0"

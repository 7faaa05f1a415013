"""Camera naming and geometry."""

from __future__ import annotations

import numpy as np
import pytest

from lsdask.survey.camera import (
    CAMERAS,
    camera_of,
    companion,
    decam_ccdnames,
    get_camera,
    parse_image_filename,
)


def test_parse_cp_name():
    d = parse_image_filename("decam/CP/V4.8.2a/CP20140818/c4d_140818_232043_ooi_z_ls9.fits.fz")
    assert d == dict(camera="decam", date="140818", time="232043", prodtype="ooi", band="z",
                     version="ls9", ccdname="")
    d = parse_image_filename("c4d_150329_083505_ooi_g_ls9.N11.fits")
    assert d["ccdname"] == "N11" and d["band"] == "g"
    d = parse_image_filename("k4m_160311_103249_ooi_zd_v2-ccd3.fits")
    assert d["camera"] == "mosaic" and d["band"] == "z" and d["version"] == "v2"
    d = parse_image_filename("ksb_170430_055945_oow_r_ls9.CCD4.fits")
    assert d["camera"] == "90prime" and d["prodtype"] == "oow"
    assert parse_image_filename("survey-ccds-1.fits.gz") is None
    assert parse_image_filename("deep2g_ra352_1-ccd1.fits")["camera"] == "90prime"


def test_companion():
    f = "decam/CP/V4.8.2a/CP20140818/c4d_140818_232043_ooi_z_ls9.fits.fz"
    assert companion(f, "oow") == f.replace("_ooi_", "_oow_")
    assert companion(f, "ood") == f.replace("_ooi_", "_ood_")
    assert companion("mosaic/k4m_151214_021723_oki_zd_v0-ccd2.fits", "oow") == \
        "mosaic/k4m_151214_021723_oow_zd_v0-ccd2.fits"
    assert companion("90prime/deep2g_ra352_1-ccd1.fits", "oow") == \
        "90prime/deep2g_ra352_1-ccd1.wht.fits"
    assert companion("90prime/deep2g_ra352_1-ccd1.fits", "ood") is None
    with pytest.raises(ValueError):
        companion(f, "xyz")


def test_cameras():
    dec = get_camera("c4d")
    assert dec is CAMERAS["decam"] and dec.prefix == "c4d"
    assert (dec.ccd_width, dec.ccd_height, dec.pixscale) == (2046, 4094, 0.262)
    assert dec.zp0 == {"g": 26.610, "r": 26.818, "z": 26.484}
    assert dec.k_ext["g"] == 0.17
    assert get_camera("mosaic").zp0 == {"z": 26.552}
    assert get_camera("ksb").pixscale == 0.455
    with pytest.raises(KeyError):
        get_camera("hsc")
    names = decam_ccdnames()
    assert len(names) == 62 == len(set(names))
    fp = dec.focal_plane()
    assert set(fp) == set(names)
    off = np.array(list(fp.values()))
    # CCDs do not overlap: centre separations exceed a CCD's short side
    d = np.hypot(off[:, None, 0] - off[None, :, 0], off[:, None, 1] - off[None, :, 1])
    np.fill_diagonal(d, np.inf)
    assert d.min() > 2046 * 0.262
    # the focal plane spans about 2.2 deg
    assert 1.8 < (off[:, 0].max() - off[:, 0].min()) / 3600 + 4094 * 0.262 / 3600 < 2.4
    # N and S mirror each other
    assert fp["N4"][1] == -fp["S4"][1]
    assert dec.ooi_glob == "decam/**/c4d_*_ooi_*.fits.fz"


def test_real_names(shared_data):
    imgs = sorted(p for p in (shared_data / "legacypipe-test").glob("*/images/**/*.fits")
                  if not any(s.startswith("unwise") for s in p.parts))
    assert imgs
    for p in imgs:
        d = parse_image_filename(p.name)
        assert d is not None, p
        assert camera_of(str(p)) == d["camera"]
        if d["prodtype"] in ("ooi", "oki") and ".wht" not in p.name:
            w = companion(str(p), "oow")
            assert w is not None and p.with_name(w.split("/")[-1]).exists(), p


@pytest.mark.parametrize("case", ["mzlsbass2", "testcase3"])
def test_expnum_and_band_from_real_headers(case, shared_data):
    """90Prime's EXPNUM from DTACQNAM, Mosaic-3's and DECam's EXPNUM, bands from FILTER
    ('bokr', 'zd DECam k1038', 'g DECam SDSS ...'): what the real survey-ccds rows say."""
    import fitsio

    from lsdask.survey.camera import band_of_filter, camera_for

    folder = shared_data / "legacypipe-test" / case
    rows = fitsio.read(str(folder / "survey-ccds-1.fits.gz"))
    for r in rows:
        fn = str(r["image_filename"]).strip()
        prim = dict(fitsio.read_header(str(folder / "images" / fn), 0))
        cam = camera_for(fn, str(r["camera"]))
        assert cam.expnum(prim) == r["expnum"], fn
        assert band_of_filter(prim["FILTER"]) == str(r["filter"]).strip(), fn

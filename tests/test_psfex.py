"""PsfEx and splinesky readers: every real file in ../shared/data, and lite round trips."""

from __future__ import annotations

import numpy as np
import pytest

from lsdask.errors import InputError
from lsdask.processors.lite.psfphot import moffat_stamp
from lsdask.survey.psfex import PsfExModel, read_psfex, read_psfex_all, stamp_fwhm, write_psfex
from lsdask.survey.splinesky import (
    SPLINESKY_DTYPE,
    read_splinesky,
    read_splinesky_all,
    write_splinesky,
)


def _real_psfex_files(root):
    calib = sorted((root / "legacypipe-test").glob("*/calib/**/*"))
    return [p for p in calib if p.is_file() and (p.suffix == ".psf" or (
        p.suffix == ".fits" and "psfex" in str(p.relative_to(root))))]


def _real_sky_files(root):
    calib = sorted((root / "legacypipe-test").glob("*/calib/**/*.fits"))
    return [p for p in calib if "sky" in str(p.relative_to(root))]


def test_every_real_psfex_file(shared_data):
    files = _real_psfex_files(shared_data)
    assert len(files) >= 30  # per-CCD, merged, old .psf and decam-<expnum> layouts
    for p in files:
        models = read_psfex_all(p)
        assert models, p
        for name, m in models.items():
            for x, y in ((0, 0), (100.0, 250.5), (1000, 2000)):
                s = m.at(x, y)
                assert s.ndim == 2 and s.shape[0] == s.shape[1] and s.shape[0] % 2 == 1, p
                assert np.all(np.isfinite(s)), p
                assert abs(s.sum() - 1.0) < 1e-9, p
                c = s.shape[0] // 2
                # peak at (or next to) the centre
                iy, ix = np.unravel_index(np.argmax(s), s.shape)
                assert abs(iy - c) <= 1 and abs(ix - c) <= 1, (p, name)
            assert 1.5 < m.fwhm < 12, (p, name, m.fwhm)
        # one-CCD access by name
        first = next(iter(models))
        assert read_psfex(p, first or None).psf_mask.shape == models[first].psf_mask.shape


def test_real_psfex_fwhm_matches_header(shared_data):
    """The recorded psf_fwhm agrees with the half-maximum area FWHM of the model (~30%)."""
    n = 0
    for p in _real_psfex_files(shared_data):
        for m in read_psfex_all(p).values():
            if np.isfinite(m.psf_fwhm) and m.psf_samp == 1.0:
                meas = stamp_fwhm(m.at(m.polzero[0] - 1, m.polzero[1] - 1))
                assert abs(meas / m.psf_fwhm - 1) < 0.3, (p, meas, m.psf_fwhm)
                n += 1
    assert n >= 10


def test_old_psf_with_resampling(shared_data):
    p = shared_data / "legacypipe-test/mzlsbass/calib/90prime/psfex/deep2g_ra352_6-ccd3.psf"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    m = read_psfex(p)
    assert m.psf_samp > 1.4 and m.psf_mask.shape[-1] == 25
    s = m.at(500, 500)
    assert s.shape[0] == m.stamp_size > 25  # resampled onto native pixels
    assert abs(s.sum() - 1) < 1e-9


def test_lite_round_trip(tmp_path):
    masks = []
    for fw in (4.0, 5.0):
        st = moffat_stamp(fw, 3.5, 31)
        masks.append(st / st.sum())
    # degree-1 model: plane 0 constant, plane 1 x-gradient, plane 2 (y) zero
    mask = np.array([0.5 * (masks[0] + masks[1]), masks[1] - masks[0], np.zeros_like(masks[0])])
    m = PsfExModel(psf_mask=mask, polzero=(256.5, 512.5), polscal=(512, 1024), poldeg=1,
                   psf_fwhm=4.5, ccdname="N4", expnum=7)
    m0 = PsfExModel(psf_mask=masks[0], polzero=(1, 1), polscal=(1, 1), poldeg=0,
                    psf_fwhm=4.0, ccdname="S4", expnum=7)
    path = tmp_path / "x-psfex.fits"
    write_psfex(path, [m, m0], [dict(plver="V1", accepted=12), dict(plver="V1", accepted=0)])
    back = read_psfex_all(path)
    assert set(back) == {"N4", "S4"}
    assert back["N4"].poldeg == 1 and back["N4"].expnum == 7
    left, right = back["N4"].at(0, 512), back["N4"].at(511, 512)
    assert stamp_fwhm(left) < stamp_fwhm(right)
    np.testing.assert_allclose(back["S4"].at(10, 10), masks[0], atol=1e-6)
    assert back["N4"].meta["accepted"] == 12
    import fitsio

    cols = fitsio.FITS(str(path))[1].get_colnames()
    for c in ("psf_mask", "polzero1", "polscal2", "poldeg1", "psf_fwhm", "expnum", "ccdname",
              "psfaxis1", "psf_samp"):
        assert c in cols


def test_bad_files(tmp_path):
    p = tmp_path / "junk-psfex.fits"
    p.write_bytes(b"SIMPLE  = nonsense" * 10)
    with pytest.raises(InputError, match="junk-psfex.fits"):
        read_psfex_all(p)
    with pytest.raises(InputError, match="junk-psfex.fits"):
        read_splinesky_all(p)


def test_every_real_sky_file(shared_data):
    files = _real_sky_files(shared_data)
    assert len(files) >= 20
    for p in files:
        for name, s in read_splinesky_all(p).items():
            img = s.evaluate(0, 0, 30, 40)
            assert img.shape == (40, 30) and np.all(np.isfinite(img)), p
            if np.isfinite(s.sky_med) and s.sky_med > 0:
                assert abs(np.median(img) / s.sky_med - 1) < 0.05, (p, name)
            v = s.at([0, 10], [0, 20])
            np.testing.assert_allclose(v, [img[0, 0], img[20, 10]], rtol=1e-6)


def test_lite_sky_round_trip(tmp_path):
    t = np.zeros(2, dtype=SPLINESKY_DTYPE(3, 4))
    yy, xx = np.meshgrid([0, 500, 1023], [0, 170, 340, 511], indexing="ij")
    for i, name in enumerate(["N4", "S4"]):
        t["gridw"][i], t["gridh"][i] = 4, 3
        t["xgrid"][i], t["ygrid"][i] = [0, 170, 340, 511], [0, 500, 1023]
        t["gridvals"][i] = 100 + 0.01 * xx + 0.02 * yy + 5 * i
        t["order"][i] = 2
        t["ccdname"][i] = name
        t["sky_med"][i] = 110
    write_splinesky(tmp_path / "s.fits", t)
    s = read_splinesky(tmp_path / "s.fits", "S4")
    img = s.evaluate(100, 200, 5, 6)
    np.testing.assert_allclose(img[0, 0], 105 + 0.01 * 100 + 0.02 * 200, rtol=1e-6)
    np.testing.assert_allclose(img[5, 4], 105 + 0.01 * 104 + 0.02 * 205, rtol=1e-6)
    with pytest.raises(InputError):
        read_splinesky(tmp_path / "s.fits", "N31")


def test_fine_sampled_lite_model_is_exact_for_undersampled_psf(tmp_path):
    """psf_samp = 1/5 models (undersampled images): sub-pixel stamps equal the
    pixel-integrated Moffat at that offset, after a write/read round trip."""
    from lsdask.processors.lite.calibs import _model_image

    fw, beta = 1.4, 3.2
    fine = _model_image(fw, beta, 5)
    m = PsfExModel(psf_mask=fine[None], polzero=(1, 1), polscal=(1, 1), poldeg=0,
                   psf_samp=0.2, psf_fwhm=fw, ccdname="N1")
    write_psfex(tmp_path / "f.fits", [m])
    back = read_psfex(tmp_path / "f.fits", "N1")
    assert back.stamp_size == 31
    for dx, dy in ((0.0, 0.0), (0.3, -0.2), (-0.45, 0.4)):
        got = back.stamp(50, 50, dx, dy)
        want = moffat_stamp(fw, beta, 15, dx, dy, oversample=5)
        want /= moffat_stamp(fw, beta, 15, oversample=5).sum()
        np.testing.assert_allclose(got, want, atol=2e-3 * want.max())
        assert abs(got.sum() - 1) < 2e-3

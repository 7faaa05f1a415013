"""Lite zeropoints against simulated truth; failures; the real testcase3 cutouts; merging."""

from __future__ import annotations

import shutil
from pathlib import Path

import fitsio
import numpy as np
import pytest
from simsurvey import copy_exposure, sim_survey

from lsdask.errors import InputError
from lsdask.processors.lite import run_calibs, run_zeropoints, zeropoints_done
from lsdask.survey.ccds import CCD_CUTS, SURVEY_CCDS_DTYPE, ccds_from_arrow, merge_ccd_files
from lsdask.survey.layout import ReleaseLayout


def _rows(layout, files):
    return np.concatenate([fitsio.read(str(layout.zeropoints(f)), ext="CCDS") for f in files])


def test_zeropoints_match_truth(tmp_path_factory):
    layout, res, _, zps = sim_survey(tmp_path_factory)
    files = res["image_filenames"]
    ccdt = fitsio.read(layout.truth, ext="CCDS")
    z = _rows(layout, files)
    assert z.dtype.names == SURVEY_CCDS_DTYPE.names
    assert len(z) == 12 and all(s["failed"] == {} for s in zps)
    good = z["ccd_cuts"] == 0
    assert good.sum() >= 10
    dz, dfw = [], []
    for r in z[good]:
        t = ccdt[(ccdt["image_filename"] == r["image_filename"])
                 & (ccdt["ccdname"] == r["ccdname"])][0]
        dz.append(r["ccdzpt"] - t["zpt"])
        dfw.append(r["fwhm"] / t["fwhm"] - 1)
        # astrometric offsets consistent with zero within the rms
        assert abs(r["ccdraoff"]) <= r["ccdrarms"] + 0.01
        assert abs(r["ccddecoff"]) <= r["ccddecrms"] + 0.01
        assert r["ccdnphotom"] >= 5 and r["ccdnastrom"] >= r["ccdnphotom"]
        assert r["filter"] in "grz" and r["exptime"] == 90 and r["expnum"] >= 100000
    dz = np.array(dz)
    # measured: rms 0.0015, max 0.0032 mag, FWHM within 0.5 %; with the PSF stars picked by
    # sep's isophotal size (which passed over the brightest stars): rms 0.0042, max 0.0097
    assert np.sqrt(np.mean(dz ** 2)) < 0.003 and np.max(np.abs(dz)) < 0.006, dz
    assert np.max(np.abs(dfw)) < 0.01, dfw
    # exposure median and sig1 in nanomaggies (sky-limited: sqrt(sky) / gain / exptime)
    for f in files:
        zz = z[z["image_filename"] == f]
        assert np.all(zz["zpt"] == np.median(zz["ccdzpt"][zz["ccd_cuts"] == 0]))
        t = ccdt[ccdt["image_filename"] == f][0]
        sky_adu = t["sky"]
        expect = np.sqrt(sky_adu * 4.0 + 49) / 4.0 / 90 * 10 ** (-0.4 * (t["zpt"] - 22.5))
        np.testing.assert_allclose(zz["sig1"], expect, rtol=0.05)
        assert np.all(zz["psfdepth"] > zz["galdepth"])
        assert np.all((zz["width"] == 512) & (zz["height"] == 1024))
    photom = fitsio.read(str(layout.photom(files[0])))
    assert photom["used_photom"].sum() == z[z["image_filename"] == files[0]]["ccdnphotom"].sum()
    assert zeropoints_done(layout, files[0])
    assert run_zeropoints(layout, files[0], None)["skipped"] is True


def test_coarse_pixels_among_compact_galaxies(tmp_path):
    """At the demo's 1"/px with 1.3-1.6" seeing, compact galaxies pass the stars' size cut;
    each CCD's PSF stars are clipped on their own Moffat FWHM so none tilts its PSF model.
    Two z exposures, 15,000 galaxies per deg^2. Measured: max |zpt - truth| 0.0062 mag;
    0.0175 (four CCDs > 0.01) without the clip."""
    from lsdask.simulate import SimConfig, simulate_survey

    layout = ReleaseLayout(tmp_path / "survey", tmp_path / "release", name="coarse")
    cfg = SimConfig(ramin=180.0, ramax=180.3, decmin=32.0, decmax=32.3, bands=("z",),
                    pixscale=1.0, galaxy_density=15000.0, fwhm_range=(1.3, 1.6), seed=1)
    files = simulate_survey(layout.survey_dir, cfg)["image_filenames"]
    for f in files:
        run_calibs(layout, f, None)
        run_zeropoints(layout, f, None)
    ccdt = fitsio.read(layout.truth, ext="CCDS")
    z = _rows(layout, files)
    assert len(z) == 8
    dz = [r["ccdzpt"] - ccdt[(ccdt["image_filename"] == r["image_filename"])
                             & (ccdt["ccdname"] == r["ccdname"])][0]["zpt"] for r in z]
    assert np.max(np.abs(dz)) < 0.01, dz


def test_merge(tmp_path_factory):
    layout, res, *_ = sim_survey(tmp_path_factory)
    table = merge_ccd_files([layout.zeropoints(f) for f in res["image_filenames"]])
    merged = ccds_from_arrow(table)
    assert len(merged) == 12
    np.testing.assert_array_equal(merged["ccdzpt"], _rows(layout, res["image_filenames"])["ccdzpt"])


def test_failures_recorded(tmp_path_factory, tmp_path, capsys):
    """No stars on one CCD, an all-zero weight map on another, NaN pixels on a third:
    recorded and said (task log, ``lsdask status``'s line), the rest measured."""
    from lsdask.survey.ccds import describe_cuts

    layout, res, *_ = sim_survey(tmp_path_factory, processed=False)
    f = res["image_filenames"][1]
    dest = ReleaseLayout(tmp_path / "bad")
    rng = np.random.default_rng(1)

    def blank(name, data):
        if name == "S3":
            return (260 + rng.normal(0, 8, data.shape)).astype(np.float32)
        if name == "N3":
            return np.full(data.shape, np.nan, np.float32)
        return data

    copy_exposure(layout, f, dest, modify={"ooi": blank,
                                           "oow": lambda n, d: d * 0 if n == "S4" else d})
    run_calibs(dest, f, None)
    out = run_zeropoints(dest, f, None)
    log = capsys.readouterr().out
    z = fitsio.read(str(dest.zeropoints(f)), ext="CCDS")
    errs = fitsio.read(str(dest.zeropoints(f)), ext="ERRORS")
    cuts = dict(zip(z["ccdname"], z["ccd_cuts"], strict=True))
    assert cuts["S4"] & CCD_CUTS["err_legacyzpts"] and cuts["N3"] & CCD_CUTS["err_legacyzpts"]
    assert "all-zero weight map" in out["failed"]["S4"]
    assert sorted(errs["ccdname"]) == ["N3", "S4"]
    assert cuts["S3"] & CCD_CUTS["ccdnmatch"] and not cuts["S3"] & CCD_CUTS["err_legacyzpts"]
    assert cuts["N4"] == 0
    assert np.isfinite(z["zpt"][0])
    for ccd in ("N3", "S4"):  # the task log says so, for calibs and for zeropoints
        assert f"{f} CCD {ccd}: sky: fewer than 5% usable pixels" in log
        assert f"{f} CCD {ccd}: cut (err_legacyzpts)" in log
    line = describe_cuts(z)
    base = Path(f).name
    assert line.startswith("4 CCDs, 3 cut (err_legacyzpts 2, ccdnmatch 1")
    listed = line.split("; not measurable: ")[1].split(", ")
    assert sorted(listed) == [f"{base} N3", f"{base} S4"], line


def test_corrupt_image(tmp_path_factory, tmp_path):
    layout, res, *_ = sim_survey(tmp_path_factory)
    f = res["image_filenames"][2]
    dest = ReleaseLayout(tmp_path / "corrupt")
    copy_exposure(layout, f, dest)
    with pytest.raises(InputError, match="calibrations missing"):
        run_zeropoints(dest, f, None)
    p = dest.image(f)
    p.write_bytes(p.read_bytes()[:20000])
    with pytest.raises(InputError, match=p.name):
        run_zeropoints(dest, f, None)
    assert not dest.zeropoints(f).exists()


def test_calibrated_against_ps1_where_it_covers(tmp_path_factory, tmp_path):
    """As legacyzpts: where the PS1 catalogue covers the exposure its calibrators (with
    legacypipe's PS1->DECam colour terms) set the zeropoint, and the Gaia chunks' own
    magnitudes only where it does not. Shifting every Gaia-chunk magnitude by +0.3 leaves
    ``ccdzpt`` as it was; without the PS1 catalogue it moves by the 0.3."""
    layout, res, *_ = sim_survey(tmp_path_factory)
    f = res["image_filenames"][1]
    base = fitsio.read(str(layout.zeropoints(f)), ext="CCDS")["ccdzpt"]
    dest = ReleaseLayout(tmp_path / "s")
    copy_exposure(layout, f, dest)
    for p in (layout.psfex(f), layout.splinesky(f)):
        q = dest.survey_dir / p.relative_to(layout.survey_dir)
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, q)
    for p in dest.gaia_dir.glob("chunk-*.fits"):
        with fitsio.FITS(str(p)) as fits:
            if fits[1].get_nrows() == 0:
                continue
            d = fits[1].read()
        for b in "grz":
            d[f"mag_{b}"] += 0.3
        fitsio.write(str(p), d, extname="GAIA", clobber=True)
    run_zeropoints(dest, f, None)
    # (the copy is compressed again: its pixels differ by RICE quantisation, 2e-4 mag)
    np.testing.assert_allclose(fitsio.read(str(dest.zeropoints(f)), ext="CCDS")["ccdzpt"],
                               base, atol=1e-3)
    force = type("O", (), {"force": True})()
    good = {q: q.read_bytes() for q in dest.ps1_dir.glob("ps1-*.fits")}
    for q, data in good.items():  # truncated calibrator files fail the task, named
        q.write_bytes(data[:4000])
    with pytest.raises(InputError, match=r"ps1-\d{5}\.fits: cannot read PS1 chunk"):
        run_zeropoints(dest, f, force)
    for q, data in good.items():
        q.write_bytes(data)
    shutil.rmtree(dest.ps1_dir)
    run_zeropoints(dest, f, force)
    moved = fitsio.read(str(dest.zeropoints(f)), ext="CCDS")["ccdzpt"] - base
    print("without PS1, ccdzpt moves by", np.round(moved, 4))
    assert np.all(np.abs(moved - 0.3) < 0.02), moved


@pytest.mark.parametrize("case,nfiles", [("testcase3", 8), ("mzlsbass2", 3)])
def test_real_cases(case, nfiles, shared_data, tmp_path):
    """Real DECam (testcase3) and 90Prime + Mosaic-3 (mzlsbass2, images in e-/s) cutouts with
    their real PsfEx/sky calibs and Gaia chunks: no crash; the cutouts hold too few stars,
    so a clean ccdnmatch cut, with sig1 (per second: exposure-time units as legacyzpts') and
    FWHM as the real survey-ccds rows."""
    src = shared_data / "legacypipe-test" / case
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    shutil.copytree(src, tmp_path / "s")
    layout = ReleaseLayout(tmp_path / "s")
    real = {str(r["image_filename"]).strip(): r
            for r in fitsio.read(str(src / "survey-ccds-1.fits.gz"))}
    files = sorted(str(p.relative_to(layout.images_dir))
                   for p in layout.images_dir.rglob("*_ooi_*.fits"))
    assert len(files) == nfiles
    compared = 0
    for f in files:
        out = run_zeropoints(layout, f, None)
        assert out["failed"] == {}
        z = fitsio.read(str(layout.zeropoints(f)), ext="CCDS")[0]
        assert z["ccd_cuts"] == 0 or z["ccd_cuts"] & CCD_CUTS["ccdnmatch"]
        assert z["ccdname"] in f
        r = real.get(f)
        if r is not None:
            compared += 1
            assert z["expnum"] == r["expnum"] and z["camera"] == r["camera"].strip()
            # PsfEx psf_fwhm vs legacyzpts' own FWHM: real files differ by up to ~35%
            assert abs(z["fwhm"] / r["fwhm"] - 1) < 0.45
            assert abs(np.log10(z["sig1"] / r["sig1"])) < 0.3  # same noise level
        # our own calibs run too (on the copy): a recorded fallback, no crash
        c = run_calibs(layout, f, type("O", (), {"force": True})())
        assert c["nccd"] == 1
    assert compared >= 3

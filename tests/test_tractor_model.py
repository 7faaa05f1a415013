"""DR9 tractor datamodel, reader/validator, and the catalogue-set generator."""

from __future__ import annotations

import fitsio
import numpy as np
import pytest

from lsdask.atomic import sha256_file
from lsdask.errors import InputError
from lsdask.survey.bricks import brick_grid
from lsdask.survey.tractor import (
    MW_COEFFS,
    OPTICAL_BANDS,
    TRACTOR_COLUMNS,
    TRACTOR_DTYPE,
    WISE_BANDS,
    empty_tractor,
    mw_transmission,
    read_tractor,
    read_tractor_header,
    validate_tractor,
    write_tractor,
)
from lsdask.testing.tractor_gen import DEPTH_EDGES, generate_release


def test_datamodel_columns_and_dtypes():
    assert len(TRACTOR_COLUMNS) == 181
    assert TRACTOR_COLUMNS[:8] == ("release", "brickid", "brickname", "objid", "brick_primary",
                                   "maskbits", "fitbits", "type")
    assert TRACTOR_COLUMNS[-8:] == ("sersic", "sersic_ivar", "shape_r", "shape_r_ivar",
                                    "shape_e1", "shape_e1_ivar", "shape_e2", "shape_e2_ivar")
    dt = TRACTOR_DTYPE
    expect = {"release": "i2", "brickid": "i4", "brickname": "S8", "objid": "i4",
              "brick_primary": "?", "maskbits": "i2", "type": "S3", "ra": "f8", "dec": "f8",
              "ebv": "f4", "mjd_min": "f8", "ref_cat": "S2", "ref_id": "i8",
              "nobs_w1": "i2", "anymask_z": "i2", "wisemask_w2": "u1", "wise_coadd_id": "S8",
              "gaia_astrometric_params_solved": "u1", "gaia_duplicated_source": "?"}
    for name, code in expect.items():
        assert dt[name] == np.dtype(code), name
    assert dt["dchisq"].shape == (5,)
    assert dt["apflux_g"].shape == (8,) and dt["apflux_masked_z"].shape == (8,)
    assert dt["apflux_ivar_w4"].shape == (5,)
    assert dt["lc_flux_w1"].shape == (15,) and dt["lc_mjd_w2"].base == np.dtype("f8")
    for b in OPTICAL_BANDS + WISE_BANDS:
        for c in ("flux", "flux_ivar", "mw_transmission", "nobs", "rchisq", "fracflux"):
            assert f"{c}_{b}" in dt.names
    for b in OPTICAL_BANDS:
        for c in ("fiberflux", "fibertotflux", "fracmasked", "fracin", "allmask", "psfsize",
                  "psfdepth", "galdepth", "nea", "blob_nea", "apflux_blobresid"):
            assert f"{c}_{b}" in dt.names
    assert not any(f"nea_{b}" in dt.names for b in WISE_BANDS)


def test_empty_and_mw():
    t = empty_tractor(3)
    assert t.dtype == TRACTOR_DTYPE and len(t) == 3
    assert (t["type"] == b"PSF").all() and (t["ref_cat"] == b"").all()
    assert (t["lc_epoch_index_w1"] == -1).all() and (t["flux_g"] == 0).all()
    assert MW_COEFFS == {"g": 3.214, "r": 2.165, "z": 1.211, "w1": 0.184, "w2": 0.113,
                         "w3": 0.0241, "w4": 0.0091}
    np.testing.assert_allclose(mw_transmission(np.array([0.1]), "g"), 10 ** (-0.3214 / 2.5),
                               rtol=1e-6)


def test_write_read_validate(tmp_path):
    t = empty_tractor(5)
    t["brickname"] = b"1800p325"
    t["objid"] = np.arange(5)
    t["apflux_r"] = np.arange(40, dtype="f4").reshape(5, 8)
    p = tmp_path / "tractor-1800p325.fits"
    write_tractor(p, t, header={"BRICKNAM": "1800p325"})
    back = read_tractor(p)
    assert back.dtype == TRACTOR_DTYPE
    assert np.array_equal(back, t)
    assert validate_tractor(p) == 5
    assert read_tractor_header(p)["BRICKNAM"] == "1800p325"
    # case-insensitive column selection
    sub = read_tractor(p, columns=["OBJID", "Apflux_R"])
    assert sub.dtype.names == ("objid", "apflux_r") and (sub["objid"] == np.arange(5)).all()
    with pytest.raises(InputError, match="tractor-1800p325.fits"):
        read_tractor(p, columns=["nope"])
    with pytest.raises(InputError, match="differs"):
        validate_tractor(p, brick="0001p000")
    bad = tmp_path / "tractor-0001p000.fits"
    fitsio.write(str(bad), t[["ra", "dec"]], clobber=True)
    with pytest.raises(InputError, match="missing tractor columns"):
        validate_tractor(bad)
    junk = tmp_path / "tractor-0002p000.fits"
    junk.write_bytes(b"not a fits file" * 10)
    with pytest.raises(InputError, match="tractor-0002p000.fits"):
        validate_tractor(junk)
    with pytest.raises(InputError, match="missing"):
        validate_tractor(tmp_path / "tractor-9999p000.fits")


def test_real_samples_read(shared_data):
    d = shared_data / "desitarget-samples"
    files = sorted(d.glob("tractor-*.fits")) + sorted(d.glob("sweep-*.fits"))
    assert files
    for f in files:
        raw = fitsio.read(str(f))
        t = read_tractor(f)
        assert t.dtype.names == tuple(n.lower() for n in raw.dtype.names)
        assert t.dtype["brickname"].kind == "S"
        np.testing.assert_array_equal(t["ra"], raw["RA"])
        np.testing.assert_array_equal(t["dchisq"], raw["DCHISQ"])
        assert [s.decode() for s in t["type"]] == [s.strip() for s in raw["TYPE"]]
        # columns shared with DR9 have the DR9 kinds and shapes
        for c in t.dtype.names:
            if c in TRACTOR_DTYPE.names:
                assert t.dtype[c].shape == TRACTOR_DTYPE[c].shape, c
                kind = {"u": "i"}.get(t.dtype[c].base.kind, t.dtype[c].base.kind)
                want = {"u": "i"}.get(TRACTOR_DTYPE[c].base.kind, TRACTOR_DTYPE[c].base.kind)
                assert kind == want, c
        # a DR8 file is not a DR9 tractor catalogue: the validator says so, naming the file
        with pytest.raises(InputError, match=f.name):
            validate_tractor(f)


def test_generator(tmp_release):
    names = generate_release(tmp_release, 4, 400, seed=3, center=(180.0, 35.0))
    assert len(names) == 4
    grid = brick_grid()
    for name in names:
        p = tmp_release.tractor(name)
        assert validate_tractor(p) == 400
        t = read_tractor(p)
        b = grid.brick(name)
        assert np.array_equal(t["brick_primary"], b.contains(t["ra"], t["dec"]))
        assert 0 < t["brick_primary"].sum() < 400  # the pixel grid overlaps the neighbours
        assert (t["objid"] == np.arange(400)).all() and (t["brickid"] == b.brickid).all()
        assert (t["bx"] >= -0.5).all() and (t["bx"] < 3599.5).all()
        np.testing.assert_allclose(t["mw_transmission_z"], mw_transmission(t["ebv"], "z"))
        lines = tmp_release.sha256sum(name).read_text().split("\n")
        h, fn = lines[0].split()
        assert fn == f"*tractor/{name[:3]}/tractor-{name}.fits" and h == sha256_file(p)
        dep = fitsio.read(str(tmp_release.coadd(name, "depth.fits")))
        assert len(dep) == 50 and dep["depthlo"][0] == 0 and dep["depthhi"][-1] == 100
        np.testing.assert_allclose(dep["depthlo"][1:], DEPTH_EDGES[1:-1], rtol=1e-6)
        assert dep["counts_ptsrc_g"].dtype == np.dtype(">i4") and dep["counts_gal_z"].sum() > 0
    # deterministic
    again = read_tractor(tmp_release.tractor(names[0]))
    generate_release(tmp_release, names[:1], 400, seed=3)
    assert np.array_equal(read_tractor(tmp_release.tractor(names[0])), again)

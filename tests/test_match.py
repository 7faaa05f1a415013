"""External matching: identical to one brute-force KD-tree, incl. partition edges and RA wrap."""

from __future__ import annotations

import fitsio
import numpy as np
import pytest

from lsdask.cli import main
from lsdask.errors import InputError
from lsdask.graphs.match import (
    brute_force_match,
    chord_to_arcsec,
    match_dataframe,
    run_match,
)
from lsdask.graphs.parquet import run_parquet
from lsdask.survey.sweeps import box_of
from lsdask.survey.tractor import TRACTOR_COLUMNS, read_tractor
from lsdask.testing.tractor_gen import generate_release, patch_bricks

ARCSEC = 1 / 3600.0


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    from lsdask.survey.layout import ReleaseLayout

    root = tmp_path_factory.mktemp("match")
    layout = ReleaseLayout(root, root, name="m")
    names = generate_release(layout, patch_bricks(12, 0.0, 0.0), 1500, seed=5)
    run_parquet(layout)
    cat = np.concatenate([read_tractor(layout.tractor(n)) for n in names])
    prim = cat[cat["brick_primary"]]
    rng = np.random.default_rng(0)
    ra, dec = [], []
    # across RA 0/360 and across Dec 0 (both partition boundaries): mirror sources lying
    # within 0.6" of the line to 0.1" beyond it
    sra = np.where(prim["ra"] > 180, prim["ra"] - 360, prim["ra"])
    near_ra = np.abs(sra) < 0.6 * ARCSEC
    ra.append(np.mod(-np.sign(sra[near_ra]) * 0.1 * ARCSEC, 360))
    dec.append(prim["dec"][near_ra])
    near_dec = np.abs(prim["dec"]) < 0.6 * ARCSEC
    ra.append(prim["ra"][near_dec])
    dec.append(-np.sign(prim["dec"][near_dec]) * 0.1 * ARCSEC)
    # near matches, duplicates onto one source, random points, points near but outside radius
    k = rng.choice(len(prim), 400)
    ra.append(np.mod(prim["ra"][k] + rng.normal(0, 0.6 * ARCSEC, 400), 360))
    dec.append(prim["dec"][k] + rng.normal(0, 0.6 * ARCSEC, 400))
    ra.append(np.repeat(prim["ra"][:1], 3))
    dec.append(np.repeat(prim["dec"][:1], 3) + np.array([0, 0.5, -0.5]) * ARCSEC)
    ra.append(np.mod(rng.uniform(-0.4, 0.4, 400), 360))
    dec.append(rng.uniform(-0.4, 0.4, 400))
    ra.append(prim["ra"][10:20])
    dec.append(prim["dec"][10:20] + 1.6 * ARCSEC)
    ra, dec = np.concatenate(ra), np.concatenate(dec)
    ext = np.zeros(len(ra), dtype=[("PLUG_RA", "f8"), ("PLUG_DEC", "f8"), ("PLATE", "i4"),
                                   ("Z", "f4"), ("CLASS", "S6")])
    ext["PLUG_RA"], ext["PLUG_DEC"] = ra, dec
    ext["PLATE"] = np.arange(len(ra))
    ext["Z"] = rng.random(len(ra))
    ext["CLASS"] = b"QSO"
    path = root / "specObj-test.fits"
    fitsio.write(str(path), ext, clobber=True)
    s = run_match(layout, path, copy=["plate", "Z", "CLASS"])
    out = fitsio.read(s["output"], ext="MATCHED")
    return layout, ext, out, s, prim, int(near_ra.sum()), int(near_dec.sum())


def test_identical_to_brute_force(matched):
    layout, ext, out, s, prim, n_ra, n_dec = matched
    assert n_ra > 0 and n_dec > 0  # the edge cases are exercised
    bid, oid, d = brute_force_match(layout, ext["PLUG_RA"], ext["PLUG_DEC"])
    assert len(out) == len(ext)
    assert np.array_equal(out["OBJID"], oid)
    assert np.array_equal(np.where(oid >= 0, out["BRICKID"], -1), bid)
    hit = oid >= 0
    assert np.array_equal(out["MATCH_DIST"][hit], chord_to_arcsec(d[hit]))
    assert (out["MATCH_DIST"][hit] <= 1.5).all()
    # the edge pairs really cross a partition boundary, and RA 0/360
    src_box = box_of(out["RA"][hit], out["DEC"][hit])
    ext_box = box_of(ext["PLUG_RA"][hit], ext["PLUG_DEC"][hit])
    assert (src_box != ext_box).sum() >= n_ra + n_dec - 2
    assert (np.abs(out["RA"][hit] - ext["PLUG_RA"][hit]) > 359).sum() >= 1
    # a source matched by several external objects
    assert (out["OBJID"][-413:-410] == out["OBJID"][-413]).all()
    assert s["nmatched"] == int(hit.sum())


def test_output_format(matched):
    layout, ext, out, s, prim, *_ = matched
    ff = fitsio.FITS(s["output"])
    hdr = ff["MATCHED"].read_header()
    assert hdr["NMATCHED"] == s["nmatched"] and hdr["RADIUS"] == 1.5
    names = list(out.dtype.names)
    assert names[:181] == [c.upper() for c in TRACTOR_COLUMNS]
    assert names[181:] == ["PLATE", "Z", "CLASS", "MATCH_DIST"]
    assert np.array_equal(out["PLATE"], ext["PLATE"]) and (out["CLASS"] == "QSO").all()
    miss = out["OBJID"] == -1
    assert miss.any()
    assert (out["MATCH_DIST"][miss] == -1).all()
    assert (out["RA"][miss] == 0).all() and (out["FLUX_G"][miss] == 0).all()
    assert (~out["BRICK_PRIMARY"][miss]).all() and out["BRICK_PRIMARY"][~miss].all()
    # every matched row is the full tractor row of that source
    cat = {(int(r["brickid"]), int(r["objid"])): r for r in prim}
    for i in np.flatnonzero(~miss)[:50]:
        ref = cat[(int(out["BRICKID"][i]), int(out["OBJID"][i]))]
        assert np.array_equal(out["APFLUX_G"][i], ref["apflux_g"])
        assert out["RA"][i] == ref["ra"] and out["BRICKNAME"][i] == ref["brickname"].decode()
    df = match_dataframe(s["output"], columns=["OBJID", "MATCH_DIST"]).compute()
    assert len(df) == len(ext)


def test_errors_name_the_file(matched, tmp_path):
    layout, *_ = matched
    bad = tmp_path / "nopos.fits"
    fitsio.write(str(bad), np.zeros(3, dtype=[("X", "f8")]), clobber=True)
    with pytest.raises(InputError, match="nopos.fits"):
        run_match(layout, bad)
    ok = tmp_path / "pos.fits"
    fitsio.write(str(ok), np.zeros(3, dtype=[("RA", "f8"), ("DEC", "f8")]), clobber=True)
    with pytest.raises(InputError, match="NOPE"):
        run_match(layout, ok, copy=["NOPE"])


def test_cli_match(matched, tmp_path, capsys):
    layout, ext, *_ = matched
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[release]\nname = "m"\nsurvey_dir = "{layout.survey_dir}"\n')
    src = tmp_path / "cat.fits"
    e = np.zeros(5, dtype=[("RA", "f8"), ("DEC", "f8"), ("ID", "i8")])
    e["RA"], e["DEC"], e["ID"] = ext["PLUG_RA"][-415:-410], ext["PLUG_DEC"][-415:-410], 7
    fitsio.write(str(src), e, clobber=True)
    assert main(["match", str(cfg), str(src), "--radius", "1.0", "--copy", "ID",
                 "--scheduler", "threads"]) == 0
    assert '"n": 5' in capsys.readouterr().out
    out = fitsio.read(str(layout.external("cat")), ext="MATCHED")
    assert len(out) == 5 and (out["ID"] == 7).all()
    assert fitsio.read_header(str(layout.external("cat")), ext=1)["RADIUS"] == 1.0

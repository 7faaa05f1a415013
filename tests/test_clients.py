"""The release read by the real tools its users run next (issue 16).

desitarget (PyPI, a test dependency) on a small demo release made by the lite chain: its
``read_tractor`` on the tractor catalogues and the sweeps, its file listings on the release
tree, and ``select_targets`` on the sweeps against ``select_targets`` on the simulation's truth
written in the same sweep format, noise-free and with the release's own noise (what a flawless
pipeline would select at this depth). One release for the session (``demo_release`` in
conftest.py, ~2 min on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np
import pytest
from desitarget import io as dtio
from desitarget.cuts import select_targets
from desitarget.targetmask import bgs_mask, desi_mask
from distributed import Client

from lsdask.release import Release
from lsdask.survey.bricks import brick_grid
from lsdask.survey.sweeps import EXTNAME, box_of, read_sweep, to_sweep
from lsdask.survey.tractor import OPTICAL_BANDS, empty_tractor
from lsdask.survey.wcs import TanWCS


def _bricks(rel: Release) -> list[str]:
    return [b for b in rel.layout.bricklist.read_text().split() if rel.layout.tractor(b).exists()]


def _sweeps(rel: Release) -> list[Path]:
    from lsdask.graphs.sweeps import sweep_files

    return sweep_files(rel.layout)


def test_desitarget_reads_tractor_files_and_sweeps(demo_release):
    rel = demo_release
    layout = rel.layout
    bricks = _bricks(rel)
    assert len(bricks) >= 2
    # its listings of the release tree find exactly our tractor files and main sweeps
    found = dtio.list_tractorfiles(str(layout.release_dir))
    assert sorted(Path(f).name for f in found) == sorted(f"tractor-{b}.fits" for b in bricks)
    sweeps = _sweeps(rel)
    assert sweeps
    listed = dtio.list_sweepfiles(str(layout.release_dir))
    assert sorted(map(Path, listed)) == sorted(sweeps)
    nprim = 0
    for b in bricks:
        path = layout.tractor(b)
        ours = fitsio.read(str(path), ext=1, upper=True)
        data = dtio.read_tractor(str(path))
        assert len(data) == len(ours) > 0
        assert set(data["RELEASE"]) == {9010} and set(data["PHOTSYS"]) == {"S"}
        assert (data["BRICKNAME"] == b.encode()).all()
        for c in ("OBJID", "RA", "DEC", "FLUX_G", "FLUX_R", "FLUX_Z", "FIBERFLUX_R",
                  "MASKBITS", "NOBS_G", "GAIA_PHOT_G_MEAN_MAG"):
            np.testing.assert_array_equal(data[c], ours[c], err_msg=c)
        assert set(np.char.strip(data["TYPE"].astype(str))) <= {"PSF", "REX", "DEV", "EXP",
                                                                "SER", "DUP"}
        nprim += int(ours["BRICK_PRIMARY"].sum())
    nsweep = 0
    for p in sweeps:
        data = dtio.read_tractor(str(p))
        ours = read_sweep(p)
        assert len(data) == len(ours) and set(data["PHOTSYS"]) == {"S"}
        np.testing.assert_array_equal(data["FLUX_R"], ours["flux_r"])
        nsweep += len(data)
    assert nsweep == nprim  # every primary source, once


def _coadd_at(layout, brick: str, kind: str, ra, dec) -> np.ndarray:
    """Values of a brick coadd (``nexp-<band>``, ``maskbits``) at (ra, dec)."""
    name = f"{kind}.fits.fz" if kind == "maskbits" else None
    path = layout.coadd(brick, name) if name else layout.coadd(brick, *kind.split("-"))
    with fitsio.FITS(str(path)) as f:
        img = f[1].read()
        wcs = TanWCS.from_header(f[1].read_header())
    x, y = wcs.radec_to_pixel(ra, dec)  # 1-based pixel centres
    ix = np.clip(np.rint(x - 1).astype(int), 0, img.shape[1] - 1)
    iy = np.clip(np.rint(y - 1).astype(int), 0, img.shape[0] - 1)
    return img[iy, ix]


def truth_sweep(rel: Release, out: Path) -> int:
    """The simulation's truth as a sweep file, as a perfect runbrick would write it: the true
    sources in the primary area of the release's bricks, true fluxes and types, ``nobs`` and
    ``maskbits`` from the release's own coadd maps at the source, DR9 fibre fluxes (1.5"
    fibre, 1" seeing), and the Gaia G of reference stars that runbrick treats as Gaia point
    sources (G < 18: the simulated stars have no excess noise, proper motion or parallax).
    Returns the number of rows."""
    from lsdask.processors.lite.galfit import circularised_radius
    from lsdask.processors.lite.photometry import fiber_fraction

    layout = rel.layout
    truth = fitsio.read(str(layout.truth), ext="TRUTH")
    gaia = np.concatenate([fitsio.read(str(p)) for p in sorted(layout.gaia_dir.glob("*.fits"))
                           if fitsio.read_header(str(p), ext=1)["NAXIS2"] > 0])  # not empty
    gaia_g = dict(zip(gaia["source_id"].tolist(), gaia["phot_g_mean_mag"].tolist(),
                      strict=True))
    grid = brick_grid()
    parts = []
    for b in _bricks(rel):
        brick = grid.brick(b)
        t = truth[brick.contains(truth["ra"], truth["dec"])]
        rows = empty_tractor(len(t))
        rows["release"] = rel.config.release.release
        rows["brickid"], rows["brickname"] = brick.brickid, b.encode()
        rows["objid"] = t["objid"]
        rows["brick_primary"] = True
        rows["ra"], rows["dec"] = t["ra"], t["dec"]
        kind = np.char.strip(np.asarray(t["type"]).astype("S3"))  # fitsio reads str
        psf = kind == b"PSF"
        rows["type"] = kind
        rows["shape_r"] = np.where(psf, 0, t["shape_r"])
        # DR9 fibre flux as runbrick computes it (round Gaussian of the half-light size)
        r_circ = circularised_radius(t["shape_r"], t["shape_e1"], t["shape_e2"])
        ff = fiber_fraction(np.where(psf, 0.0, r_circ / 1.678))
        rows["maskbits"] = _coadd_at(layout, b, "maskbits", t["ra"], t["dec"])
        for band in OPTICAL_BANDS:
            nexp = _coadd_at(layout, b, f"nexp-{band}", t["ra"], t["dec"])
            rows[f"nobs_{band}"] = nexp
            rows[f"flux_{band}"] = t[f"flux_{band}"]
            rows[f"flux_ivar_{band}"] = np.where(nexp > 0, 1e6, 0)
            rows[f"fiberflux_{band}"] = rows[f"fibertotflux_{band}"] = t[f"flux_{band}"] * ff
            rows[f"fracin_{band}"] = 1.0
        g = np.array([gaia_g.get(4_000_000_000_000_000_000 + int(i), 99.0) for i in t["objid"]])
        point = g < 18.0
        rows["gaia_phot_g_mean_mag"] = np.where(point, g, 0)
        rows["ref_cat"] = np.where(point, b"G2", b"")
        parts.append(rows)
    rows = np.concatenate(parts)
    box = str(box_of(rows["ra"][:1], rows["dec"][:1])[0])
    assert (box_of(rows["ra"], rows["dec"]) == box).all()
    fitsio.write(str(out), to_sweep(rows), extname=EXTNAME, clobber=True)
    return len(rows)


def _counts(targets: np.ndarray) -> dict[str, int]:
    dt = targets["DESI_TARGET"]
    return {"ELG": int(((dt & desi_mask.ELG) != 0).sum()),
            "BGS": int(((dt & desi_mask.BGS_ANY) != 0).sum()),
            "BGS_BRIGHT": int(((targets["BGS_TARGET"] & bgs_mask.BGS_BRIGHT) != 0).sum())}


@pytest.fixture(scope="module")
def target_counts(demo_release, tmp_path_factory) -> tuple[dict, dict, Path]:
    """desitarget's ``select_targets`` (main survey, ELG and BGS, no Gaia-only backup
    targets) on the release's sweeps and on the truth sweep: counts per class, and the
    truth sweep file."""
    kw = dict(numproc=1, tcnames=["ELG", "BGS"], backup=False)
    measured = select_targets([str(p) for p in _sweeps(demo_release)], **kw)
    truth_file = tmp_path_factory.mktemp("truthsw") / "sweep-180p030-190p035.fits"
    ntruth = truth_sweep(demo_release, truth_file)
    assert dtio.read_tractor(str(truth_file)).size == ntruth
    truth = select_targets([str(truth_file)], **kw)
    assert set(measured["PHOTSYS"]) == set(truth["PHOTSYS"]) == {"S"}
    got, want = _counts(measured), _counts(truth)
    print(f"desitarget select_targets: release {got}, truth {want} ({ntruth} true sources)")
    return got, want, truth_file


def test_desitarget_select_targets_bgs_agree_with_truth(target_counts):
    """ELG and BGS targets come out of the release's sweeps, and the BGS targets number
    within 20 % of those desitarget selects from the truth in the same sweep format."""
    got, want = target_counts[:2]
    assert got["ELG"] >= 10 and want["ELG"] >= 10, (got, want)
    assert want["BGS"] >= 100, want
    assert abs(got["BGS"] - want["BGS"]) <= 0.2 * want["BGS"], (got, want)
    assert abs(got["BGS_BRIGHT"] - want["BGS_BRIGHT"]) <= 0.2 * want["BGS_BRIGHT"], (got, want)


#: Noise realisations of the truth at the release's depth (fixed seeds).
NOISE_SEEDS = range(8)


def noisy_truth_sweep(rel: Release, truth_file: Path, out: Path, seed: int) -> None:
    """The truth sweep with the noise a flawless pipeline would have at this release's depth:
    each true flux plus a Gaussian error of the release's own depth where the source lies
    (``psfdepth`` for point sources, ``galdepth`` for galaxies, from the nearest release
    sweep row; fibre fluxes scaled with the total flux), ``flux_ivar`` set to match."""
    from scipy.spatial import cKDTree

    truth, hdr = fitsio.read(str(truth_file), header=True)
    rows = np.concatenate([read_sweep(p) for p in _sweeps(rel)])
    cosd = np.cos(np.deg2rad(np.median(truth["DEC"])))
    _, j = cKDTree(np.c_[rows["ra"] * cosd, rows["dec"]]).query(
        np.c_[truth["RA"] * cosd, truth["DEC"]])
    point = np.char.strip(truth["TYPE"].astype(str)) == "PSF"
    rng = np.random.default_rng(seed)
    out_rows = truth.copy()
    for band in OPTICAL_BANDS:
        b = band.upper()
        depth = np.where(point, rows[f"psfdepth_{band}"][j], rows[f"galdepth_{band}"][j])
        sig = 1 / np.sqrt(np.where(depth > 0, depth, np.inf))
        flux = truth[f"FLUX_{b}"] + rng.standard_normal(len(truth)) * sig
        scale = np.where(truth[f"FLUX_{b}"] != 0, flux / np.where(truth[f"FLUX_{b}"] != 0,
                                                                 truth[f"FLUX_{b}"], 1), 1)
        out_rows[f"FLUX_{b}"] = flux
        out_rows[f"FLUX_IVAR_{b}"] = np.where(depth > 0, depth, 0)
        for k in ("FIBERFLUX", "FIBERTOTFLUX"):
            out_rows[f"{k}_{b}"] = truth[f"{k}_{b}"] * scale
    fitsio.write(str(out), out_rows, header=hdr, extname=EXTNAME, clobber=True)


@pytest.fixture(scope="module")
def noisy_truth_counts(demo_release, target_counts, tmp_path_factory) -> list[dict]:
    """``select_targets`` on the truth sweep with the release's noise, once per seed."""
    truth_file = target_counts[2]
    kw = dict(numproc=1, tcnames=["ELG", "BGS"], backup=False)
    out = []
    for seed in NOISE_SEEDS:
        path = tmp_path_factory.mktemp(f"noisy{seed}") / truth_file.name
        noisy_truth_sweep(demo_release, truth_file, path, seed)
        out.append(_counts(select_targets([str(path)], **kw)))
    return out


@pytest.mark.xfail(strict=True, reason=(
    "noise-free truth: at this release's depth, photometric noise scatters faint galaxies "
    "across the edge of desitarget's ELG colour box (the simulation's g-r and r-z put the box "
    "on a steep edge of the distribution), so ~2x the noise-free truth's ELGs come out; the "
    "truth with the release's own noise gives as many as the release "
    "(test_desitarget_select_targets_elg_agree_with_truth_at_the_release_depth)"))
def test_desitarget_select_targets_elg_agree_with_truth(target_counts):
    """ELG targets number within 20 % of those desitarget selects from the noise-free truth."""
    got, want = target_counts[:2]
    assert abs(got["ELG"] - want["ELG"]) <= 0.2 * want["ELG"], (got, want)


def test_desitarget_select_targets_elg_agree_with_truth_at_the_release_depth(
        target_counts, noisy_truth_counts):
    """The release's ELG count is one draw of what a flawless pipeline selects at the
    release's depth: within 2.5 standard deviations of the truth's counts over noise
    realisations (~12 targets here; a 0.05 mag bias in g moves it by 14-18), and the
    noise is what moves them: the noise-free truth gives fewer."""
    got, want = target_counts[:2]
    noisy = np.array([c["ELG"] for c in noisy_truth_counts])
    spread = float(noisy.std(ddof=1))
    print(f"ELG: release {got['ELG']}, noise-free truth {want['ELG']}, truth at the release's "
          f"depth {noisy.mean():.1f} +- {spread:.1f} (range {noisy.min()}-{noisy.max()}, "
          f"{len(noisy)} seeds)")
    assert 0 < spread < 0.3 * noisy.mean(), noisy
    assert abs(got["ELG"] - noisy.mean()) <= 2.5 * spread, (got, noisy)
    assert noisy.mean() > 1.3 * want["ELG"], (noisy, want)
    bgs = np.array([c["BGS"] for c in noisy_truth_counts])
    assert abs(got["BGS"] - bgs.mean()) <= 0.2 * bgs.mean(), (got, bgs)


#: Run in the legacypipe stack's own python (lsdask is not importable there): legacypipe's
#: read_fits_catalog on each tractor file, back through prepare_fits_catalog (legacypipe's own
#: sources -> table conversion), and format_catalog's column list for the same table; JSON out.
LP_CHECK = '''
import json, sys
import fitsio
import numpy as np
from astrometry.util.fits import fits_table
from legacypipe.catalog import fits_reverse_typemap, prepare_fits_catalog, read_fits_catalog
from legacypipe.format_catalog import format_catalog
from tractor import Catalog
from tractor.sfd import SFDMap

out_path, release, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
bands = "grz"
KEYS = ["flux", "flux_ivar", "rchisq", "fracflux", "fracmasked", "fracin", "nobs", "ngood",
        "anymask", "allmask", "psfsize", "psfdepth", "galdepth", "fiberflux", "fibertotflux",
        "apflux", "apflux_resid", "apflux_blobresid", "apflux_ivar", "apflux_masked"]
out = {"sfd": {k: v for k, v in SFDMap.extinctions.items() if k.startswith(("DES ", "WISE "))},
       "files": {}}
for fn in files:
    T = fits_table(fn)
    ours = T.get_columns()
    srcs, ivs = read_fits_catalog(T, invvars=True, bands=bands)
    cat = Catalog(*srcs)
    P = prepare_fits_catalog(cat, np.array(ivs), None, bands)
    strip = lambda a: np.char.strip(np.asarray(a).astype(str))
    gal = np.array([hasattr(s, "shape") for s in srcs], bool)
    same = {"type": bool(np.all(strip(P.type) == strip(T.type))),
            "ra": bool(np.all(P.ra == T.ra)), "dec": bool(np.all(P.dec == T.dec))}
    for i, b in enumerate(bands):
        same["flux_" + b] = bool(np.all(P.flux[:, i] == T.get("flux_" + b)))
        same["flux_ivar_" + b] = bool(np.all(P.flux_ivar[:, i] == T.get("flux_ivar_" + b)))
    for c in ("shape_r", "shape_e1", "shape_e2", "shape_r_ivar"):
        same[c] = bool(np.all(P.get(c)[gal] == T.get(c)[gal]))
    for c in ("ra_ivar", "dec_ivar"):
        same[c] = bool(np.all(P.get(c) == T.get(c)))
    # format_catalog on the same rows, per-band columns folded back into runbrick's arrays
    for k in KEYS:
        cols = [k + "_" + b for b in bands]
        if all(c in ours for c in cols):
            T.set(k, np.stack([T.get(c) for c in cols], axis=1))
            for c in cols:
                T.delete_column(c)
        else:
            T.set(k, np.zeros((len(T), len(bands)), np.int16))
    T.wise_mask = np.stack([T.wisemask_w1, T.wisemask_w2], axis=1)
    fcols, _ = format_catalog(T, bands, bands, release, N_wise_epochs=15, motions=True,
                              gaia_tagalong=True)
    F = fitsio.read(fn, ext=1, rows=[0])
    computed = ["release", "ebv"] + [c for c in fcols if c.startswith("mw_transmission_")]
    out["files"][fn] = {
        "rows": len(T), "sources": len(srcs), "nparams": int(cat.numberOfParams()),
        "ninvvars": len(ivs), "types": sorted(set(strip(P.type).tolist())),
        "known_types": sorted(fits_reverse_typemap), "same": same,
        "format_catalog_only": [c for c in fcols if c not in ours],
        "ours_only": [c for c in ours if c not in fcols],
        "same_order": [c for c in fcols if c in ours] == [c for c in ours if c in fcols],
        "dtype_diffs": [[c, T.get(c).dtype.str, F.dtype[c].str] for c in computed
                        if T.get(c).dtype.newbyteorder("=") != F.dtype[c].newbyteorder("=")],
    }
with open(out_path, "w") as f:
    json.dump(out, f)
'''

#: format_catalog columns that are newer than the DR9 datamodel lsdask writes (DR11).
DR11_ONLY = {"ls_id_dr11", "nearest_neighbor", "ngood_g", "ngood_r", "ngood_z"}


def test_legacypipe_reads_tractor_catalogues(demo_release, tmp_path):
    """legacypipe's own reader turns every row into a Tractor source whose parameters
    legacypipe writes back to the very same values, and format_catalog's column list for
    the same rows is lsdask's (DR9) plus only the DR11 additions, in the same order."""
    import json

    from legacypipe_stack import run_direct, stack_prefix

    from lsdask.survey.tractor import MW_COEFFS

    prefix = stack_prefix()
    rel = demo_release
    files = [str(rel.layout.tractor(b)) for b in _bricks(rel)]
    (tmp_path / "lsdask_lpcheck.py").write_text(LP_CHECK)
    out = tmp_path / "lp.json"
    rc = run_direct(prefix, [str(out), str(rel.config.release.release), *files],
                    {"PYTHONPATH": f"{tmp_path}:"}, tmp_path / "lp.log", module="lsdask_lpcheck")
    assert rc == 0, (tmp_path / "lp.log").read_text()[-3000:]
    res = json.loads(out.read_text())
    sfd = res["sfd"]
    for b, k in (("g", "DES g"), ("r", "DES r"), ("z", "DES z"), ("w1", "WISE W1"),
                 ("w2", "WISE W2"), ("w3", "WISE W3"), ("w4", "WISE W4")):
        assert MW_COEFFS[b] == pytest.approx(sfd[k], abs=1e-6), b
    nsrc = 0
    for fn in files:
        r = res["files"][fn]
        assert r["sources"] == r["rows"] > 0 and r["nparams"] == r["ninvvars"]
        assert all(r["same"].values()), r["same"]
        assert set(r["types"]) <= set(r["known_types"]) and "PSF" in r["types"]
        assert r["ours_only"] == [] and set(r["format_catalog_only"]) == DR11_ONLY, r
        assert r["same_order"] and r["dtype_diffs"] == [], r
        t = fitsio.read(fn, ext=1, columns=["ebv", "mw_transmission_g", "mw_transmission_w1"])
        for b, k in (("g", "DES g"), ("w1", "WISE W1")):
            np.testing.assert_allclose(t[f"mw_transmission_{b}"],
                                       10 ** (-sfd[k] * t["ebv"] / 2.5), rtol=1e-6)
        nsrc += r["sources"]
    print(f"legacypipe read_fits_catalog: {len(files)} tractor files, {nsrc} sources")


def test_hats_catalogue_read_and_crossmatched_by_lsdb(demo_release):
    """The sweeps exported with hats-import (catalogue + margin cache) through the stage
    protocol; LSDB reads every sweep row and its crossmatch of the demo's external targets
    gives the same nearest primary source as lsdask's own match stage."""
    from lsdask.graphs import hats
    from lsdask.graphs.base import Context
    from lsdask.graphs.match import _output

    rel = demo_release
    layout, ctx = rel.layout, Context(rel.config)
    inputs = hats.stage_inputs(ctx)
    assert not hats.is_done(ctx, inputs)
    out = hats.STAGE.task(ctx, inputs, None)
    assert hats.is_done(ctx, inputs) and not hats.is_done(ctx, {**inputs, "margin": 1.0})
    nsweep = sum(fitsio.read_header(str(p), ext=1)["NAXIS2"] for p in _sweeps(rel))
    assert out["rows"] == nsweep > 0
    cat = hats.read_hats(layout)
    assert cat.margin is not None
    df = cat.compute()
    assert len(df) == nsweep and set(zip(df["BRICKID"], df["OBJID"], strict=True)) == {
        (int(r["BRICKID"]), int(r["OBJID"])) for p in _sweeps(rel)
        for r in fitsio.read(str(p), columns=["BRICKID", "OBJID"])}
    opts = rel.config.stages.match
    ext = fitsio.read(str(opts.external))
    x = hats.crossmatch(layout, ext["RA"], ext["DEC"], radius_arcsec=opts.radius)
    lsdb_pairs = {int(i): (int(b), int(o)) for i, b, o in
                  zip(x["INDEX"], x["BRICKID_ls"], x["OBJID_ls"], strict=True)}
    ours = fitsio.read(str(_output(ctx)), columns=["BRICKID", "OBJID"])
    own_pairs = {i: (int(r["BRICKID"]), int(r["OBJID"])) for i, r in enumerate(ours)
                 if r["OBJID"] >= 0}
    print(f"hats-import: {out['rows']} rows; LSDB crossmatch: {len(lsdb_pairs)} of {len(ext)} "
          f"targets matched, lsdask match: {len(own_pairs)}")
    assert len(own_pairs) >= 50 and lsdb_pairs == own_pairs
    # a product file lost: not done any more
    next(p for p in layout.hats_catalog.rglob("*.parquet")).unlink()
    assert not hats.is_done(ctx, inputs)
    # as a release stage: off unless configured (no ledger row); on, redone, then skipped
    import dataclasses

    from distributed import LocalCluster

    from lsdask.config import HatsOptions

    on = Release(dataclasses.replace(rel.config, stages=dataclasses.replace(
        rel.config.stages, hats=HatsOptions(enabled=True))))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as lc, \
            Client(lc) as client:
        assert rel.run(client, stages=["hats"], progress=False).post["hats"] is None
        assert "hats" not in set(rel.status().index)
        res = on.run(client, stages=["hats"], progress=False)
        assert res.ok and res.post["hats"]["rows"] == nsweep and hats.is_done(ctx, inputs)
        again = on.run(client, stages=["hats"], progress=False)
        assert again.post["hats"] == {"skipped": True}
    assert on.status().loc["hats", "succeeded"] == 1

"""A small simulated survey (with lite calibs and zeropoints), built once per test session.

Import ``sim_survey(tmp_path_factory)`` from test modules; the build is cached in
this module so test_simulate, test_calibs and test_zeropoints share it.
"""

from __future__ import annotations

from lsdask.simulate import SimConfig, simulate_survey
from lsdask.survey.layout import ReleaseLayout

#: 3 exposures (g, r, z) of 4 CCDs of 512 x 1024 pixels; dense stars for ~20 per CCD.
TEST_CONFIG = SimConfig(ramin=180.0, ramax=180.1, decmin=32.0, decmax=32.06,
                        star_density=30000.0, galaxy_density=5000.0, seed=2)

_CACHE: dict = {}


def sim_survey(tmp_path_factory, processed: bool = True):
    """(layout, simulate summary, calibs summaries, zeropoint summaries)."""
    key = "survey"
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("simsurvey")
        layout = ReleaseLayout(root / "survey", root / "release", name="test")
        res = simulate_survey(layout.survey_dir, TEST_CONFIG)
        _CACHE[key] = [layout, res, None, None]
    entry = _CACHE[key]
    if processed and entry[2] is None:
        from lsdask.processors.lite import run_calibs, run_zeropoints

        layout, res = entry[0], entry[1]
        entry[2] = [run_calibs(layout, f, None) for f in res["image_filenames"]]
        entry[3] = [run_zeropoints(layout, f, None) for f in res["image_filenames"]]
    return tuple(entry)


def copy_exposure(layout, image_filename: str, dest, modify=None) -> None:
    """Copy one exposure (ooi/oow/ood) and the reference catalogues (Gaia chunks, PS1
    calibrators) to ``dest`` (a layout),
    applying ``modify[kind](ccdname, data) -> data`` to the pixels."""
    import shutil

    import fitsio

    from lsdask.survey.camera import companion

    modify = modify or {}
    for src, dst in ((layout.gaia_dir, dest.gaia_dir), (layout.ps1_dir, dest.ps1_dir)):
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst)
    for kind in ("ooi", "oow", "ood"):
        rel = image_filename if kind == "ooi" else companion(image_filename, kind)
        src, dst = layout.image(rel), dest.image(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with fitsio.FITS(str(src)) as f, fitsio.FITS(str(dst), "rw", clobber=True) as g:
            g.write(None, header=f[0].read_header())
            for h in f[1:]:
                data = h.read()
                hdr = h.read_header()
                if kind in modify:
                    data = modify[kind](h.get_extname(), data)
                keep = {k: hdr[k] for k in hdr.keys() if not k.startswith(("Z", "XTENSION",
                                                                          "PCOUNT", "GCOUNT",
                                                                          "TFIELDS", "TTYPE",
                                                                          "TFORM", "NAXIS",
                                                                          "BITPIX"))}
                g.write(data, header=keep, extname=h.get_extname(), compress="rice")

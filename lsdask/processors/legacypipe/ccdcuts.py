"""legacyzpts' own ``ccd_cuts`` on the merged survey-ccds table.

``legacy_zeropoints.py`` leaves a placeholder bit in each CCD's ``ccd_cuts``; at NERSC the
cuts are set afterwards on the whole table by ``legacyzpts/update_ccd_cuts.py`` (PSF and
zeropoint cuts, the camera's bad-exposure list, too few good CCDs in an exposure and, when
asked, the depth cut). The ``ccds`` stage runs that same module here, one camera at a time,
when the zeropoints came from legacyzpts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...survey.layout import ReleaseLayout
from .launcher import make_launcher, run


def ccd_cuts(layout: ReleaseLayout, ccds: np.ndarray, depth_cut: bool = False,
             good_ccd_fraction: float = 0.7, settings: Any = None) -> np.ndarray:
    """The ``ccd_cuts`` column legacyzpts' ``update_ccd_cuts`` gives the rows of ``ccds``."""
    import fitsio

    if settings is None:
        from ...config import LegacypipeSection

        settings = LegacypipeSection()
    launcher = make_launcher(settings, layout.survey_dir)
    cuts = np.zeros(len(ccds), dtype=np.int32)
    cameras = np.char.strip(ccds["camera"].astype("U"))
    with tempfile.TemporaryDirectory(prefix="lsdask-ccdcuts-") as tmp:
        for cam in sorted(set(cameras.tolist())):
            rows = np.flatnonzero(cameras == cam)
            src, out, ann = (Path(tmp) / f"{cam}-{k}.fits" for k in ("in", "out", "ann"))
            fitsio.write(str(src), ccds[rows], clobber=True)
            args = [cam, str(src), str(src), str(out), str(ann),
                    "--good-ccd-fraction", repr(float(good_ccd_fraction))]
            if not depth_cut:
                args.append("--depth-cut")  # legacyzpts' flag that turns the depth cut off
            run(launcher, "legacyzpts.update_ccd_cuts", args, what=f"ccd_cuts {cam}")
            cuts[rows] = fitsio.read(str(out), columns=["ccd_cuts"])["ccd_cuts"]
    return cuts

"""The survey-ccds kd-tree (``survey-ccds-<name>.kd.fits``) with legacypipe's
``create_kdtrees`` (astrometry.net's ``startree`` + an ``expnum`` tree; CCDs with
``ccd_cuts != 0`` left out, as at NERSC)."""

from __future__ import annotations

from typing import Any

from ...atomic import atomic_path
from ...survey.layout import ReleaseLayout
from .launcher import make_launcher, run


def make_kdtree(layout: ReleaseLayout, settings: Any = None) -> str:
    """Write ``layout.survey_ccds_kd`` from ``layout.survey_ccds``; returns its path."""
    if settings is None:
        from ...config import LegacypipeSection

        settings = LegacypipeSection()
    launcher = make_launcher(settings, layout.survey_dir)
    with atomic_path(layout.survey_ccds_kd) as tmp:
        run(launcher, "legacypipe.create_kdtrees", [str(layout.survey_ccds), str(tmp)],
            what="create_kdtrees")
    return str(layout.survey_ccds_kd)

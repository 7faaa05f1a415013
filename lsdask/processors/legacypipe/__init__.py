"""The ``legacypipe`` processor: the real legacypipe and legacyzpts as child processes.

Same interface as ``lite`` (see :mod:`lsdask.processors`), every function also taking
``settings`` (the release's ``[legacypipe]`` section: launcher, environment, reference
catalogues, extra arguments). calibs and zeropoints run ``legacy_zeropoints.py`` per image;
runbrick runs ``legacypipe.runbrick`` with its checkpoint and stage pickles in the release
directory; the ``ccds`` stage builds the survey-ccds kd-tree with legacypipe's
``create_kdtrees`` and, when legacyzpts made the zeropoints, sets ``ccd_cuts`` with its
``update_ccd_cuts``. legacypipe reads the survey-ccds table itself, so a brick waits for
the ``ccds`` stage (:data:`RUNBRICK_NEEDS_SURVEY_CCDS`).
"""

from __future__ import annotations

from .ccdcuts import ccd_cuts
from .kdtree import make_kdtree
from .runbrick import run_runbrick, runbrick_done
from .zeropoints import calibs_done, run_calibs, run_zeropoints, zeropoints_done

#: runbrick reads ``survey-ccds-*.kd.fits`` / ``*.fits.gz`` from the survey dir.
RUNBRICK_NEEDS_SURVEY_CCDS = True

__all__ = ["RUNBRICK_NEEDS_SURVEY_CCDS", "calibs_done", "ccd_cuts", "make_kdtree", "run_calibs",
           "run_runbrick", "run_zeropoints", "runbrick_done", "zeropoints_done"]

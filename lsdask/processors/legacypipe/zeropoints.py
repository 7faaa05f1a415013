"""legacyzpts for one image: calibrations (PsfEx + SourceExtractor + spline sky) and
zeropoints, each as a ``legacy_zeropoints.py`` child process.

``legacy_zeropoints.py --run-calibs-only`` writes the merged per-exposure
``calib/psfex/.../<base>-psfex.fits`` and ``calib/sky/.../<base>-splinesky.fits`` (the
paths of ``layout.psfex`` / ``layout.splinesky``); without it, the
``zpt/.../<base>-annotated.fits`` and ``-photom.fits`` tables (``layout.zeropoints`` /
``layout.photom``) that the ``ccds`` stage merges into survey-ccds.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import InputError
from ...phases import phase
from ...survey.camera import camera_of
from ...survey.layout import ReleaseLayout
from .launcher import make_launcher, run

MODULE = "legacyzpts.legacy_zeropoints"


def _valid_table(path: Path) -> bool:
    import fitsio

    if not path.is_file():
        return False
    try:
        with fitsio.FITS(str(path)) as f:
            return len(f) > 1 and f[1].get_nrows() > 0
    except (OSError, ValueError):
        return False


def _settings(settings: Any):
    if settings is None:
        from ...config import LegacypipeSection

        return LegacypipeSection()
    return settings


def _legacyzpts(launcher, args: list[str], what: str) -> None:
    """legacyzpts in a scratch working directory, removed after: PsfEx writes its
    ``psfex_out.cat`` into the working directory (every path lsdask passes is absolute)."""
    with tempfile.TemporaryDirectory(prefix="lsdask-legacyzpts-") as tmp, phase("legacyzpts"):
        run(launcher, MODULE, args, cwd=Path(tmp), what=what)


def _absolute(layout: ReleaseLayout) -> ReleaseLayout:
    return ReleaseLayout(layout.survey_dir.absolute(), layout.release_dir.absolute(),
                         layout.name, layout.sweep_version)


def _base_args(layout: ReleaseLayout, image_filename: str) -> list[str]:
    if not layout.image(image_filename).is_file():
        raise InputError(f"{layout.image(image_filename)}: image file missing")
    return ["--camera", camera_of(image_filename), "--image", image_filename,
            "--survey-dir", str(layout.survey_dir), "--threads", "1"]


def calibs_done(layout: ReleaseLayout, image_filename: str, settings: Any = None) -> bool:
    """Both merged calibration files exist and are non-empty tables."""
    return (_valid_table(layout.psfex(image_filename))
            and _valid_table(layout.splinesky(image_filename)))


def run_calibs(layout: ReleaseLayout, image_filename: str, options: Any,
               settings: Any = None) -> dict[str, Any]:
    """PsfEx and spline-sky calibrations of every CCD of one image."""
    settings = _settings(settings)
    layout = _absolute(layout)
    launcher = make_launcher(settings, layout.survey_dir)
    _remove_for_redo(options, layout.psfex(image_filename), layout.splinesky(image_filename),
                     layout.single_dir(image_filename, "psfex"),
                     layout.single_dir(image_filename, "sky"))
    args = [*_base_args(layout, image_filename), "--run-calibs-only",
            *(str(a) for a in settings.zeropoints_args)]
    _legacyzpts(launcher, args, f"calibs {image_filename}")
    if not calibs_done(layout, image_filename):
        raise InputError(f"calibs {image_filename}: legacyzpts wrote no valid "
                         f"{layout.psfex(image_filename)} / {layout.splinesky(image_filename)}")
    return {"image": image_filename, "psfex": str(layout.psfex(image_filename)),
            "splinesky": str(layout.splinesky(image_filename))}


def _remove_for_redo(options: Any, *paths: Path) -> None:
    """``options.force`` (a redo, or a stale product): legacyzpts skips an image whose
    outputs exist, so they go first."""
    if not getattr(options, "force", False):
        return
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def zeropoints_done(layout: ReleaseLayout, image_filename: str, settings: Any = None) -> bool:
    """The annotated CCDs table exists with rows."""
    return _valid_table(layout.zeropoints(image_filename))


def run_zeropoints(layout: ReleaseLayout, image_filename: str, options: Any,
                   settings: Any = None) -> dict[str, Any]:
    """legacyzpts' zeropoints of one image into ``zpt/`` (annotated + photom tables)."""
    import fitsio

    settings = _settings(settings)
    layout = _absolute(layout)
    launcher = make_launcher(settings, layout.survey_dir)
    _remove_for_redo(options, layout.zeropoints(image_filename), layout.photom(image_filename))
    args = [*_base_args(layout, image_filename), "--outdir", str(layout.zpt_dir),
            *(str(a) for a in settings.zeropoints_args)]
    _legacyzpts(launcher, args, f"zeropoints {image_filename}")
    ann = layout.zeropoints(image_filename)
    if not _valid_table(ann):
        raise InputError(f"zeropoints {image_filename}: legacyzpts wrote no valid {ann} "
                         "(all CCDs bad?)")
    t = fitsio.read(str(ann), columns=["ccdzpt", "ccd_cuts"])
    return {"image": image_filename, "nccds": int(len(t)),
            "ncut": int((t["ccd_cuts"] != 0).sum()), "annotated": str(ann)}

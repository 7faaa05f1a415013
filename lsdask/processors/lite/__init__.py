"""The embedded ("lite") processor: pure Python, runs anywhere.

It is not legacypipe: calibrations are a fitted pixel-basis PSF and a smooth
sky grid, zeropoints come from PSF photometry of reference stars, and runbrick
measures PSF-weighted fluxes on resampled coadds (no Tractor galaxy-model
fitting). See the submodules for what each step really does.
"""

from __future__ import annotations

from typing import Any

from ...survey.releases import DEFAULT_RELEASE


def calibs_done(layout, image_filename: str) -> bool:
    from .calibs import calibs_done as f

    return f(layout, image_filename)


def run_calibs(layout, image_filename: str, options) -> dict[str, Any]:
    from .calibs import run_calibs as f

    return f(layout, image_filename, options)


def zeropoints_done(layout, image_filename: str) -> bool:
    from .zeropoints import zeropoints_done as f

    return f(layout, image_filename)


def run_zeropoints(layout, image_filename: str, options) -> dict[str, Any]:
    from .zeropoints import run_zeropoints as f

    return f(layout, image_filename, options)


def runbrick_done(layout, brickname: str) -> bool:
    from .runbrick import runbrick_done as f

    return f(layout, brickname)


def run_runbrick(layout, brickname: str, ccds, bands, options, release: int = DEFAULT_RELEASE,
                 config_hash: str = "") -> dict[str, Any]:
    from .runbrick import run_runbrick as f

    return f(layout, brickname, ccds, bands, options, release=release, config_hash=config_hash)

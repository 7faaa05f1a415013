"""Stage ``runbrick``: one task per brick, run as soon as its exposures have zeropoints.

Which exposures touch a brick is known from the image headers (stage ``images``)
before any zeropoint exists, so each brick task depends only on the zeropoint
tasks of its own exposures. In the task process the brick reads the zeropoint
rows of those exposures, keeps the CCDs that overlap it and pass ``ccd_cuts``
in the release's bands, and calls the processor's ``run_runbrick``. A brick with
no usable CCD succeeds with ``nccds = 0`` and writes only its stamp.

Done (:func:`is_done`): the brick's stamp (``layout.brick_stamp``) records the inputs it was
made from (its exposures and the sha256 of their zeropoint tables) and they are the inputs
now; every product file has the size it was made with; the processor's ``runbrick_done``
accepts the product; the tractor catalogue hashes to what ``brick-<brick>.sha256sum`` says.
A brick whose exposures failed upstream is blocked, and reruns once they are repaired
(its inputs changed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..done import (
    clean_temps,
    file_sha256,
    fingerprint,
    read_stamp,
    remove_stamp,
    sha256sum_files,
    stamp_ok,
    verify_sha256sum,
    write_stamp,
)
from ..processors import ProcessorRef
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys, processor_call
from .images import image_key

log = logging.getLogger(__name__)

PRIO = PRIORITY["runbrick"]


def inputs(layout: ReleaseLayout, images: list[str]) -> list[list[str]]:
    """What a brick is made from now: its exposures and their zeropoint tables' sha256."""
    return [[image_key(n), file_sha256(layout.zeropoints(n))] for n in sorted(images)]


def is_done(layout: ReleaseLayout, processor: str | ProcessorRef, brick: str,
            fp: str) -> bool:
    """The brick's products exist, validate, and were made from inputs ``fp``."""
    stamp = layout.brick_stamp(brick)
    if not stamp_ok(stamp, fp):
        return False
    if (read_stamp(stamp) or {}).get("empty"):
        return True
    if not processor_call(processor, "runbrick_done", layout, brick):
        return False
    sums = layout.sha256sum(brick)
    if sums.is_file():
        bad = verify_sha256sum(sums, layout.release_dir, full=[layout.tractor(brick).name])
        if bad:
            log.warning("%s", bad)
            return False
    return True


def plan(ctx: Context, brick_images: dict[str, list[str]],
         blocked_by: Callable[[str], str | None] | None = None,
         waiting: Callable[[str], bool] | None = None) -> Plan:
    """Bricks touched by the images; ``blocked_by(brick)``: which failed input it waits for;
    ``waiting(brick)``: its zeropoints are being made in this run."""
    return plan_keys(ctx, "runbrick", list(brick_images), lambda b: is_done(
        ctx.layout, ctx.processor_for("runbrick"), b,
        fingerprint(inputs(ctx.layout, brick_images[b]))),
        blocked_by, waiting)


def threads_for(ctx: Context) -> int:
    t = int(ctx.config.stages.runbrick.threads)
    if ctx.max_cores is not None and t > ctx.max_cores:
        log.warning("runbrick threads %d > %d cores per worker: using %d", t, ctx.max_cores,
                    ctx.max_cores)
        t = ctx.max_cores
    return max(1, t)


def spec(ctx: Context, brick: str, images: list[str]) -> TaskSpec:
    opts = ctx.config.stages.runbrick
    mem = opts.memory_limit_gb * 1e9 if opts.memory_limit_gb else None
    return TaskSpec("runbrick", brick, "lsdask.graphs.runbrick:runbrick_task",
                    {"layout": ctx.layout, "processor": ctx.processor_for("runbrick"),
                     "brickname": brick,
                     "images": images, "bands": list(ctx.config.bands), "options": opts,
                     "release": ctx.config.release.release, "config_hash": ctx.config.hash(),
                     "force": ctx.forced("runbrick", brick)},
                    threads=threads_for(ctx), memory_limit=mem, timeout=opts.timeout,
                    log=str(ctx.layout.log("runbrick", brick)), child=ctx.child,
                    needs_deps=True)


def brick_ccds(layout: ReleaseLayout, brickname: str, images: list[str], bands: list[str],
               width: int, pixscale: float) -> np.ndarray:
    """Usable zeropoint rows of ``images`` whose CCDs overlap the brick."""
    from ..survey.bricks import brick_grid
    from ..survey.ccds import ccds_from_arrow, merge_ccd_files, usable
    from ..survey.touching import ccd_brick_pairs

    paths = [layout.zeropoints(n) for n in images]
    paths = [p for p in paths if p.exists()]
    if not paths:
        return np.zeros(0)
    ccds = ccds_from_arrow(merge_ccd_files(paths))
    ccds = ccds[usable(ccds, bands)]
    if not len(ccds):
        return ccds
    grid = brick_grid()
    bidx = int(np.flatnonzero(grid.table["brickname"] == brickname)[0])
    ci, bi = ccd_brick_pairs(ccds, width=width, pixscale=pixscale, grid=grid)
    return ccds[np.unique(ci[bi == bidx])]


def runbrick_task(threads: int, layout: ReleaseLayout, processor: str | ProcessorRef,
                  brickname: str, images: list[str], bands: list[str], options: Any, release: int,
                  config_hash: str, force: bool = False) -> dict[str, Any]:
    """Run in the task process: one brick (resumes from its checkpoint if there is one).

    Holds an exclusive lock on the brick for its whole run: an attempt rescheduled while an
    earlier one is still winding down (a retiring or lost worker) waits for it, then finds
    the brick done, so a brick is never completed twice.
    """
    with brick_lock(layout, brickname):
        return _runbrick(layout, processor, brickname, images, bands, options, release,
                         config_hash, threads, force)


@contextlib.contextmanager
def brick_lock(layout: ReleaseLayout, brickname: str):
    """``flock`` on a lock file next to the brick's checkpoint (released if we die)."""
    import fcntl

    from ..task import PRIVATE_FDS

    path = layout.brick_lock(brickname)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    PRIVATE_FDS.add(fd)  # processes the task forks do not keep the lock
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{brickname}: another attempt still holds the brick; waiting", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        PRIVATE_FDS.discard(fd)
        os.close(fd)


def _runbrick(layout, processor, brickname, images, bands, options, release, config_hash,
              threads, force) -> dict[str, Any]:
    fp = fingerprint(inputs(layout, images))
    if not force and is_done(layout, processor, brickname, fp):
        return {"skipped": True, "brickname": brickname}
    stamp = layout.brick_stamp(brickname)
    remove_stamp(stamp)
    clean_temps(layout.coadd_dir(brickname))  # a killed attempt's temporaries (ours alone)
    ccds = brick_ccds(layout, brickname, images, bands, int(options.width),
                      float(options.pixscale))
    if not len(ccds):
        print(f"{brickname}: no usable CCDs; nothing to do", flush=True)
        write_stamp(stamp, fp, empty=True)
        return {"brickname": brickname, "nccds": 0, "nsources": 0, "empty": True}
    print(f"{brickname}: {len(ccds)} CCDs from {len(images)} exposures, {threads} threads",
          flush=True)
    options = dataclasses.replace(options, threads=threads)
    out = processor_call(processor, "run_runbrick", layout, brickname, ccds, bands, options,
                         release, config_hash)
    if out.get("empty"):  # e.g. legacypipe's NothingToDoError: done, with no products
        write_stamp(stamp, fp, empty=True)
        return out
    sums = layout.sha256sum(brickname)
    files = (sha256sum_files(sums, layout.release_dir) if sums.is_file()
             else [layout.tractor(brickname)])
    write_stamp(stamp, fp, [*files, *([sums] if sums.is_file() else [])])
    return out

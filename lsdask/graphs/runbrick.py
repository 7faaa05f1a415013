"""Stage ``runbrick``: one task per brick, run as soon as its exposures have zeropoints.

Which exposures touch a brick is known from the image headers (stage ``images``)
before any zeropoint exists, so each brick task depends only on the zeropoint
tasks of its own exposures. In the task process the brick reads the zeropoint
rows of those exposures, keeps the CCDs that overlap it and pass ``ccd_cuts``
in the release's bands, and calls the processor's ``run_runbrick``. A brick with
no usable CCD succeeds with ``nccds = 0`` and writes nothing (the brick list,
once made, leaves it out of later runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

import numpy as np

from ..processors import ProcessorRef
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys, processor_call

log = logging.getLogger(__name__)

PRIO = PRIORITY["runbrick"]


def read_bricklist(layout: ReleaseLayout) -> list[str] | None:
    if not layout.bricklist.exists():
        return None
    return [ln.split()[0] for ln in layout.bricklist.read_text().splitlines() if ln.strip()]


def plan(ctx: Context, brick_images: dict[str, list[str]], use_bricklist: bool = True) -> Plan:
    bricks = list(brick_images)
    listed = read_bricklist(ctx.layout) if use_bricklist else None
    if listed is not None:
        keep = set(listed)
        bricks = [b for b in bricks if b in keep]
    return plan_keys(ctx, "runbrick", bricks, lambda b: processor_call(
        ctx.processor_for("runbrick"), "runbrick_done", ctx.layout, b))


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
                     "force": ctx.forced("runbrick")},
                    threads=threads_for(ctx), memory_limit=mem, timeout=opts.timeout,
                    log=str(ctx.layout.log("runbrick", brick)), child=ctx.child)


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

    ckpt = layout.checkpoint(brickname)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ckpt.with_name(f".{brickname}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{brickname}: another attempt still holds the brick; waiting", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _runbrick(layout, processor, brickname, images, bands, options, release, config_hash,
              threads, force) -> dict[str, Any]:
    if not force and processor_call(processor, "runbrick_done", layout, brickname):
        return {"skipped": True, "brickname": brickname}
    ccds = brick_ccds(layout, brickname, images, bands, int(options.width),
                      float(options.pixscale))
    if not len(ccds):
        print(f"{brickname}: no usable CCDs; nothing to do", flush=True)
        return {"brickname": brickname, "nccds": 0, "nsources": 0, "empty": True}
    print(f"{brickname}: {len(ccds)} CCDs from {len(images)} exposures, {threads} threads",
          flush=True)
    options = dataclasses.replace(options, threads=threads)
    return processor_call(processor, "run_runbrick", layout, brickname, ccds, bands, options,
                          release, config_hash)

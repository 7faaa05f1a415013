"""Plan a release run across stages and wire the tasks into one graph.

``build`` returns the runner tasks of the requested stages in submission order:
for each exposure (by RA) its calibs then zeropoints task, each brick right
after the last zeropoint task it depends on, then the survey-ccds merge (after
every zeropoint task) and the brick list (after the merge). Dependencies are
only on tasks of this run (done upstream products need no waiting).

``run_post`` runs a whole-release stage (parquet, sweeps, match, depth) from the
driver; those modules are imported lazily, so a missing one only disables itself.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..runner import Task
from . import bricks as bricks_stage
from . import calibs as calibs_stage
from . import ccds as ccds_stage
from . import images as images_stage
from . import runbrick as runbrick_stage
from . import zeropoints as zeropoints_stage
from .base import POST_STAGES, STAGES, Context, Plan

log = logging.getLogger(__name__)

#: Stages of a full run when none are given.
DEFAULT_STAGES = STAGES


def normalize_stages(stages: Sequence[str] | str | None) -> list[str]:
    """Stage names in release order; accepts a comma-separated string, ``all``, ranges ``a:b``."""
    if stages is None:
        return list(DEFAULT_STAGES)
    if isinstance(stages, str):
        stages = [s for s in stages.replace(" ", ",").split(",") if s]
    out: set[str] = set()
    for s in stages:
        if s == "all":
            out.update(STAGES)
        elif ":" in s:
            a, _, b = s.partition(":")
            i = STAGES.index(a) if a else 0
            j = STAGES.index(b) if b else len(STAGES) - 1
            out.update(STAGES[i:j + 1])
        elif s in STAGES:
            out.add(s)
        else:
            raise UsageError(f"unknown stage {s!r} (stages: {', '.join(STAGES)})")
    return [s for s in STAGES if s in out]


@dataclass
class Build:
    """The tasks of a run and what planning found."""

    tasks: list[Task] = field(default_factory=list)
    plans: dict[str, Plan] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    brick_images: dict[str, list[str]] = field(default_factory=dict)
    table: Any = None


def build(ctx: Context, stages: Sequence[str], client=None) -> Build:
    """Plan the requested task stages and wire their tasks."""
    out = Build()
    cfg = ctx.config
    table = images_stage.run_images(cfg, client=client)
    out.table = table
    images, brick_images = images_stage.images_in_region(table, cfg.region_box())
    out.images, out.brick_images = images, brick_images
    by_key = {images_stage.image_key(n): n for n in images}
    order = {images_stage.image_key(n): i for i, n in enumerate(images)}

    calib_tasks: dict[str, Task] = {}
    zpt_tasks: dict[str, Task] = {}
    if "calibs" in stages:
        plan, _ = calibs_stage.plan(ctx, images)
        out.plans["calibs"] = plan
        for k in plan.todo:
            calib_tasks[k] = Task(calibs_stage.spec(ctx, k, by_key[k]), priority=calibs_stage.PRIO)
    if "zeropoints" in stages:
        plan, _ = zeropoints_stage.plan(ctx, images)
        out.plans["zeropoints"] = plan
        for k in plan.todo:
            dep = [calib_tasks[k]] if k in calib_tasks else []
            zpt_tasks[k] = Task(zeropoints_stage.spec(ctx, k, by_key[k]), deps=dep,
                                priority=zeropoints_stage.PRIO)
    # a processor that reads survey-ccds itself (legacypipe) runs bricks after the merge
    needs_ccds = "runbrick" in stages and bool(
        ctx.processor_for("runbrick").has("RUNBRICK_NEEDS_SURVEY_CCDS"))
    ccds_task = None
    if "ccds" in stages:
        plan = ccds_stage.plan(ctx, stale=bool(zpt_tasks))
        out.plans["ccds"] = plan
        if plan.todo:
            ccds_task = Task(ccds_stage.spec(ctx, images), deps=list(zpt_tasks.values()),
                             priority=ccds_stage.PRIO)
    brick_tasks: dict[int, list[Task]] = {}
    if "runbrick" in stages:
        rerun_list = "bricks" in stages and bool(zpt_tasks)
        plan = runbrick_stage.plan(ctx, brick_images, use_bricklist=not rerun_list)
        out.plans["runbrick"] = plan
        opts = cfg.stages.runbrick
        for b in plan.todo:
            imgs = brick_images[b]
            deps = [zpt_tasks[k] for k in (images_stage.image_key(n) for n in imgs)
                    if k in zpt_tasks]
            after = max((order[t.key] for t in deps), default=-1)
            if needs_ccds and ccds_task is not None:
                deps, after = [ccds_task], len(images)
            brick_tasks.setdefault(after, []).append(
                Task(runbrick_stage.spec(ctx, b, imgs), deps=deps,
                     priority=runbrick_stage.PRIO, max_retries=opts.max_retries))
    # submission order: per exposure calibs, zeropoints, then bricks now unblocked
    tasks = list(brick_tasks.get(-1, []))
    for i, n in enumerate(images):
        k = images_stage.image_key(n)
        if k in calib_tasks:
            tasks.append(calib_tasks[k])
        if k in zpt_tasks:
            tasks.append(zpt_tasks[k])
        tasks.extend(brick_tasks.get(i, []))
    if ccds_task is not None:
        tasks.append(ccds_task)
        tasks.extend(brick_tasks.get(len(images), []))
    if "bricks" in stages:
        plan = bricks_stage.plan(ctx, stale=ccds_task is not None)
        out.plans["bricks"] = plan
        if plan.todo:
            tasks.append(Task(bricks_stage.spec(ctx), deps=[ccds_task] if ccds_task else [],
                              priority=bricks_stage.PRIO))
    out.tasks = tasks
    return out


def post_function(stage: str):
    """The whole-release function of a post stage, or None when its module is missing."""
    if stage not in POST_STAGES:
        raise UsageError(f"{stage!r} is not a whole-release stage ({', '.join(POST_STAGES)})")
    try:
        mod = importlib.import_module(f"{__package__}.{stage}")
    except ImportError as e:
        log.warning("stage %s unavailable: %s", stage, e)
        return None
    for name in (f"run_{stage}", "run"):
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    return None


def run_post(ctx: Context, stage: str, client=None) -> dict[str, Any] | None:
    """Run a whole-release stage from the driver; None when unavailable or not configured."""
    fn = post_function(stage)
    if fn is None:
        return None
    layout = ctx.layout
    force = ctx.forced(stage)
    if stage == "parquet":
        return fn(layout, client=client, force=force)
    if stage == "sweeps":
        return fn(layout, client=client, force=force)
    if stage == "depth":
        return fn(layout, client=client, bands=list(ctx.config.bands))
    if stage == "match":
        opts = ctx.config.stages.match
        if opts.external is None:
            log.info("match: no external catalogue configured ([stages.match] external)")
            return None
        return fn(layout, opts.external, client=client, radius=opts.radius, copy=opts.copy)
    return None


def brick_count(brick_images: dict[str, list[str]]) -> int:
    return len(brick_images)


def exposures_of(table: np.ndarray) -> list[str]:
    return sorted({str(n) for n in table["image_filename"]})

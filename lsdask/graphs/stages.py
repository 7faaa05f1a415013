"""Plan a release run across stages and wire the tasks into one graph.

``build`` returns the runner tasks of the requested stages in submission order:
for each exposure (by RA) its calibs then zeropoints task, each brick right
after the last zeropoint task it depends on, then the survey-ccds merge (after
every zeropoint task) and the brick list (after the merge). Dependencies are
only on tasks of this run (done upstream products need no waiting).

Whole-release stages (parquet, sweeps, match, depth) each define a
:class:`~lsdask.graphs.base.WholeStage` (``STAGE`` in their module, :func:`whole_stage`),
run from the driver by :meth:`lsdask.release.Release.run`; their modules are imported
lazily, so a missing one only disables itself.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, UsageError
from ..runner import Task
from . import bricks as bricks_stage
from . import calibs as calibs_stage
from . import ccds as ccds_stage
from . import images as images_stage
from . import runbrick as runbrick_stage
from . import zeropoints as zeropoints_stage
from .base import POST_STAGES, STAGES, Context, Plan, WholeStage, processor_call

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


def _force_downstream(ctx: Context, brick_images: dict[str, list[str]]) -> None:
    """Keys redone on purpose (``lsdask rerun``) redo what is made from them: an image's
    calibs its zeropoints, an image's zeropoints the bricks it touches."""
    fk = ctx.force_keys
    if fk.get("calibs"):
        fk.setdefault("zeropoints", set()).update(fk["calibs"])
    imgs = fk.get("zeropoints") or set()
    if imgs:
        fk.setdefault("runbrick", set()).update(
            b for b, names in brick_images.items()
            if any(images_stage.image_key(n) in imgs for n in names))


def build(ctx: Context, stages: Sequence[str], client=None) -> Build:
    """Plan the requested per-key stages and wire their tasks.

    A key whose inputs are being made by a task of this run is planned as a task that
    depends on it; the task decides whether it is done once those inputs exist. A key whose
    inputs failed (earlier, and not being retried) is blocked.
    """
    out = Build()
    cfg = ctx.config
    if not ctx.layout.survey_dir.is_dir():
        raise ConfigError(f"{cfg.path}: key 'release.survey_dir': {ctx.layout.survey_dir} is "
                          f"not a directory (wrong, or not mounted?); nothing was changed")
    table = images_stage.run_images(cfg, client=client)
    if not len(table):
        raise InputError(f"{ctx.layout.images_dir}: no {'/'.join(cfg.release.cameras)} images "
                         f"found (is survey_dir right, and mounted?); nothing was changed")
    out.table = table
    images, brick_images = images_stage.images_in_region(table, cfg.region_box())
    out.images, out.brick_images = images, brick_images
    by_key = {images_stage.image_key(n): n for n in images}
    order = {images_stage.image_key(n): i for i, n in enumerate(images)}
    _force_downstream(ctx, brick_images)

    def failed_in(plan: Plan | None, what: str) -> Callable[[str], str | None]:
        bad = set(plan.failed) | set(plan.blocked) if plan is not None else set()
        return lambda k: f"{what} {k} failed" if k in bad else None

    calib_tasks: dict[str, Task] = {}
    zpt_tasks: dict[str, Task] = {}
    calib_plan = zpt_plan = None
    if "calibs" in stages:
        calib_plan, _ = calibs_stage.plan(ctx, images)
        out.plans["calibs"] = calib_plan
        for k in calib_plan.todo:
            calib_tasks[k] = Task(calibs_stage.spec(ctx, k, by_key[k]), priority=calibs_stage.PRIO,
                                  memory_resource=ctx.memory.get("calibs"))
    if "zeropoints" in stages:
        zpt_plan, _ = zeropoints_stage.plan(ctx, images, failed_in(calib_plan, "calibs"),
                                            waiting=lambda k: k in calib_tasks)
        out.plans["zeropoints"] = zpt_plan
        for k in zpt_plan.todo:
            dep = [calib_tasks[k]] if k in calib_tasks else []
            zpt_tasks[k] = Task(zeropoints_stage.spec(ctx, k, by_key[k]), deps=dep,
                                priority=zeropoints_stage.PRIO,
                                memory_resource=ctx.memory.get("zeropoints"))
    # a processor that reads survey-ccds itself (legacypipe) runs bricks after the merge
    needs_ccds = "runbrick" in stages and bool(
        ctx.processor_for("runbrick").has("RUNBRICK_NEEDS_SURVEY_CCDS"))
    ccds_task = None
    if "ccds" in stages:
        plan = ccds_stage.plan(ctx, images, waiting=bool(zpt_tasks))
        out.plans["ccds"] = plan
        if plan.todo:
            ccds_task = Task(ccds_stage.spec(ctx, images), deps=list(zpt_tasks.values()),
                             priority=ccds_stage.PRIO)
    brick_tasks: dict[int, list[Task]] = {}
    if "runbrick" in stages:
        zpt_failed = failed_in(zpt_plan, "zeropoints")
        have_zpt: dict[str, bool] = {}

        def zpt_ready(n: str) -> bool:
            if n not in have_zpt:
                have_zpt[n] = bool(processor_call(ctx.processor_for("zeropoints"),
                                                  "zeropoints_done", ctx.layout, n))
            return have_zpt[n]

        def blocked_by(b: str) -> str | None:
            for n in brick_images[b]:
                k = images_stage.image_key(n)
                if k in zpt_tasks:
                    continue
                why = zpt_failed(k)
                if why or not zpt_ready(n):
                    return why or f"zeropoints {k} missing"
            return None

        plan = runbrick_stage.plan(
            ctx, brick_images, blocked_by,
            waiting=lambda b: any(images_stage.image_key(n) in zpt_tasks
                                  for n in brick_images[b]))
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
                     priority=runbrick_stage.PRIO, max_retries=opts.max_retries,
                     memory_resource=ctx.memory.get("runbrick")))
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
        plan = bricks_stage.plan(ctx, waiting=ccds_task is not None)
        out.plans["bricks"] = plan
        if plan.todo:
            tasks.append(Task(bricks_stage.spec(ctx), deps=[ccds_task] if ccds_task else [],
                              priority=bricks_stage.PRIO))
    out.tasks = tasks
    return out


def whole_stage(stage: str) -> WholeStage | None:
    """The :class:`WholeStage` of a whole-release stage, or None when its module is missing."""
    if stage not in POST_STAGES:
        raise UsageError(f"{stage!r} is not a whole-release stage ({', '.join(POST_STAGES)})")
    try:
        mod = importlib.import_module(f"{__package__}.{stage}")
    except ImportError as e:
        log.warning("stage %s unavailable: %s", stage, e)
        return None
    return getattr(mod, "STAGE", None)


def brick_count(brick_images: dict[str, list[str]]) -> int:
    return len(brick_images)


def exposures_of(table: np.ndarray) -> list[str]:
    return sorted({str(n) for n in table["image_filename"]})

"""Stage ``bricks``: the brick list (bricks touched by usable CCDs in the region).

Done: ``layout.bricklist`` exists and its stamp records the inputs now (the survey-ccds
table's sha256, the region, bands and ``ignore_cuts``). An empty list never replaces one
(the task fails instead: a wrong survey_dir must not erase a release's bricks).
"""

from __future__ import annotations

from typing import Any

from ..atomic import write_text_atomic
from ..done import file_sha256, fingerprint, stamp_ok, write_stamp
from ..errors import InputError
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys

KEY = "bricklist"
PRIO = PRIORITY["bricks"]


def inputs(layout: ReleaseLayout, region, bands: list[str], ignore_cuts: bool) -> dict:
    """What the list is made from now."""
    return {"ccds": file_sha256(layout.survey_ccds), "region": repr(region),
            "bands": list(bands), "ignore_cuts": bool(ignore_cuts)}


def _inputs(ctx: Context) -> dict:
    return inputs(ctx.layout, ctx.config.region_box(), list(ctx.config.bands),
                  ctx.config.stages.bricks.ignore_cuts)


def is_done(layout: ReleaseLayout, fp_inputs: dict) -> bool:
    return layout.bricklist.is_file() and stamp_ok(layout.stamp(layout.bricklist),
                                                   fingerprint(fp_inputs))


def read_bricklist(layout: ReleaseLayout) -> list[str] | None:
    if not layout.bricklist.exists():
        return None
    return [ln.split()[0] for ln in layout.bricklist.read_text().splitlines() if ln.strip()]


def current_bricklist(ctx: Context) -> set[str] | None:
    """The brick list when it is done (made from the survey-ccds table there now), else None."""
    if not is_done(ctx.layout, _inputs(ctx)):
        return None
    return set(read_bricklist(ctx.layout) or ())


def plan(ctx: Context, waiting: bool = False) -> Plan:
    """``waiting``: survey-ccds is being made in this run (the task decides)."""
    return plan_keys(ctx, "bricks", [KEY], lambda k: is_done(ctx.layout, _inputs(ctx)),
                     waiting=lambda k: waiting)


def spec(ctx: Context) -> TaskSpec:
    return TaskSpec("bricks", KEY, "lsdask.graphs.bricks:bricks_task",
                    {"layout": ctx.layout, "region": ctx.config.region_box(),
                     "bands": list(ctx.config.bands),
                     "ignore_cuts": ctx.config.stages.bricks.ignore_cuts,
                     "force": ctx.forced("bricks")},
                    threads=1, log=str(ctx.layout.log("bricks", KEY)), child=False,
                    needs_deps=True)


def bricks_task(threads: int, layout: ReleaseLayout, region, bands: list[str],
                ignore_cuts: bool = False, force: bool = False) -> dict[str, Any]:
    """Read survey-ccds, list touched bricks (sorted by RA), write ``layout.bricklist``."""
    from ..survey.ccds import read_ccds
    from ..survey.touching import bricks_touching_ccds

    now = inputs(layout, region, bands, ignore_cuts)
    if not force and is_done(layout, now):
        return {"skipped": True}
    fp = fingerprint(now)
    ccds = read_ccds(layout.survey_ccds)
    names = bricks_touching_ccds(ccds, region=region, bands=bands, ignore_cuts=ignore_cuts)
    if not names:
        raise InputError(f"{layout.survey_ccds}: no usable CCD touches a brick of the region; "
                         f"{layout.bricklist.name} left as it was")
    write_text_atomic(layout.bricklist, "".join(f"{n}\n" for n in names))
    write_stamp(layout.stamp(layout.bricklist), fp, [layout.bricklist])
    return {"nbricks": len(names), "path": str(layout.bricklist)}

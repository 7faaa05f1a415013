"""Stage ``bricks``: the brick list (bricks touched by usable CCDs in the region)."""

from __future__ import annotations

from typing import Any

from ..atomic import write_text_atomic
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys

KEY = "bricklist"
PRIO = PRIORITY["bricks"]


def plan(ctx: Context, stale: bool = False) -> Plan:
    return plan_keys(ctx, "bricks", [KEY], lambda k: not stale and ctx.layout.bricklist.exists())


def spec(ctx: Context) -> TaskSpec:
    return TaskSpec("bricks", KEY, "lsdask.graphs.bricks:bricks_task",
                    {"layout": ctx.layout, "region": ctx.config.region_box(),
                     "bands": list(ctx.config.bands),
                     "ignore_cuts": ctx.config.stages.bricks.ignore_cuts},
                    threads=1, log=str(ctx.layout.log("bricks", KEY)), child=False)


def bricks_task(threads: int, layout: ReleaseLayout, region, bands: list[str],
                ignore_cuts: bool = False) -> dict[str, Any]:
    """Read survey-ccds, list touched bricks (sorted by RA), write ``layout.bricklist``."""
    from ..survey.ccds import read_ccds
    from ..survey.touching import bricks_touching_ccds

    ccds = read_ccds(layout.survey_ccds)
    names = bricks_touching_ccds(ccds, region=region, bands=bands, ignore_cuts=ignore_cuts)
    write_text_atomic(layout.bricklist, "".join(f"{n}\n" for n in names))
    return {"nbricks": len(names), "path": str(layout.bricklist)}

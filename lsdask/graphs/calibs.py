"""Stage ``calibs``: per-exposure calibrations (PSF and sky models), one task per image."""

from __future__ import annotations

from typing import Any

from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys, processor_call
from .images import image_key


def plan(ctx: Context, images: list[str]) -> tuple[Plan, dict[str, str]]:
    """Plan over image filenames; returns the plan (keys = image base names) and key -> file."""
    by_key = {image_key(n): n for n in images}
    p = plan_keys(ctx, "calibs", by_key, lambda k: processor_call(
        ctx.processor, "calibs_done", ctx.layout, by_key[k]))
    return p, by_key


def spec(ctx: Context, key: str, image_filename: str) -> TaskSpec:
    opts = ctx.config.stages.calibs
    return TaskSpec("calibs", key, "lsdask.graphs.calibs:calibs_task",
                    {"layout": ctx.layout, "processor": ctx.processor,
                     "image_filename": image_filename, "options": opts,
                     "force": ctx.forced("calibs")},
                    threads=1, timeout=opts.timeout, log=str(ctx.layout.log("calibs", key)),
                    child=ctx.child)


def calibs_task(threads: int, layout: ReleaseLayout, processor: str, image_filename: str,
                options: Any, force: bool = False) -> dict[str, Any]:
    """Run in the task process: calibrate one image unless already done."""
    if not force and processor_call(processor, "calibs_done", layout, image_filename):
        return {"skipped": True}
    return processor_call(processor, "run_calibs", layout, image_filename, options)


PRIO = PRIORITY["calibs"]

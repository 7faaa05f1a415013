"""The shape shared by the per-image stages (``calibs``, ``zeropoints``): one task per image,
done when the processor's ``<stage>_done`` says so, running the processor's ``run_<stage>``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..processors import ProcessorRef
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import Context, Plan, plan_keys, processor_call
from .images import image_key


def plan(ctx: Context, stage: str, images: list[str],
         blocked_by: Callable[[str], str | None] | None = None
         ) -> tuple[Plan, dict[str, str]]:
    """Plan over image filenames; returns the plan (keys = image base names) and key -> file.
    Done is the processor's ``<stage>_done`` (its product exists and validates)."""
    by_key = {image_key(n): n for n in images}
    p = plan_keys(ctx, stage, by_key, lambda k: processor_call(
        ctx.processor_for(stage), f"{stage}_done", ctx.layout, by_key[k]), blocked_by)
    return p, by_key


def spec(ctx: Context, stage: str, key: str, image_filename: str) -> TaskSpec:
    opts = getattr(ctx.config.stages, stage)
    return TaskSpec(stage, key, "lsdask.graphs.perimage:image_task",
                    {"stage": stage, "layout": ctx.layout,
                     "processor": ctx.processor_for(stage),
                     "image_filename": image_filename, "options": opts,
                     "force": ctx.forced(stage, key)},
                    threads=1, timeout=opts.timeout, log=str(ctx.layout.log(stage, key)),
                    child=ctx.child, needs_deps=True)


def image_task(threads: int, stage: str, layout: ReleaseLayout,
               processor: str | ProcessorRef, image_filename: str, options: Any,
               force: bool = False) -> dict[str, Any]:
    """Run in the task process: one image's ``stage`` unless already done."""
    if not force and processor_call(processor, f"{stage}_done", layout, image_filename):
        return {"skipped": True}
    return processor_call(processor, f"run_{stage}", layout, image_filename, options)

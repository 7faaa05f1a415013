"""The shape shared by the per-image stages (``calibs``, ``zeropoints``): one task per image,
running the processor's ``run_<stage>``.

Done: the processor's ``<stage>_done`` (its product exists and validates) and, when lsdask
made the product, its stamp records the inputs that exist now: the image and its weight and
mask files, the processor, and for zeropoints the calibration files. Files are identified by
name, size and modification time, not hashed: CP images are 100-300 MB each and a plan looks
at every one. A product without a stamp was made outside lsdask (a survey dir's existing
calibrations, as legacypipe's ``--skip-calibs`` uses them) and is taken as it is.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..done import MISSING, fingerprint, remove_stamp, stamp_ok, write_stamp
from ..processors import ProcessorRef
from ..survey.camera import companion
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import Context, Plan, plan_keys, processor_call
from .images import image_key


def _identity(path: Path) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path.name, MISSING]
    return [path.name, st.st_size, st.st_mtime_ns]


def products(layout: ReleaseLayout, stage: str, image_filename: str) -> list[Path]:
    """The files a per-image stage makes (the first one carries the stamp)."""
    if stage == "calibs":
        return [layout.psfex(image_filename), layout.splinesky(image_filename)]
    return [layout.zeropoints(image_filename), layout.photom(image_filename)]


def stamp_path(layout: ReleaseLayout, stage: str, image_filename: str) -> Path:
    return layout.stamp(products(layout, stage, image_filename)[0])


def inputs(layout: ReleaseLayout, stage: str, processor: str | ProcessorRef,
           image_filename: str) -> dict[str, Any]:
    """What one image's ``stage`` product is made from now."""
    names = [image_filename, *filter(None, (companion(image_filename, k)
                                            for k in ("oow", "ood")))]
    out: dict[str, Any] = {
        "processor": processor.name if isinstance(processor, ProcessorRef) else processor,
        "image": [_identity(layout.image(n)) for n in names]}
    if stage == "zeropoints":
        out["calibs"] = [_identity(p) for p in products(layout, "calibs", image_filename)]
    return out


def is_done(layout: ReleaseLayout, stage: str, processor: str | ProcessorRef,
            image_filename: str) -> bool:
    """The product validates and, when stamped, was made from the inputs there now."""
    if not processor_call(processor, f"{stage}_done", layout, image_filename):
        return False
    stamp = stamp_path(layout, stage, image_filename)
    if not stamp.exists():
        return True  # made outside lsdask
    return stamp_ok(stamp, fingerprint(inputs(layout, stage, processor, image_filename)))


def plan(ctx: Context, stage: str, images: list[str],
         blocked_by: Callable[[str], str | None] | None = None,
         waiting: Callable[[str], bool] | None = None) -> tuple[Plan, dict[str, str]]:
    """Plan over image filenames; returns the plan (keys = image base names) and key -> file.
    ``waiting(key)``: the key's inputs are remade in this run (its task decides)."""
    by_key = {image_key(n): n for n in images}
    proc = ctx.processor_for(stage)
    p = plan_keys(ctx, stage, by_key,
                  lambda k: is_done(ctx.layout, stage, proc, by_key[k]), blocked_by, waiting)
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
    """Run in the task process: one image's ``stage`` unless already done; then its stamp."""
    if not force and is_done(layout, stage, processor, image_filename):
        return {"skipped": True}
    stamp = stamp_path(layout, stage, image_filename)
    fp = fingerprint(inputs(layout, stage, processor, image_filename))
    remove_stamp(stamp)
    if dataclasses.is_dataclass(options) and hasattr(options, "force"):
        options = dataclasses.replace(options, force=True)  # over a stale product too
    out = processor_call(processor, f"run_{stage}", layout, image_filename, options)
    write_stamp(stamp, fp, [p for p in products(layout, stage, image_filename) if p.is_file()])
    return out

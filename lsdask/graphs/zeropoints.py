"""Stage ``zeropoints``: per-exposure zeropoints (survey-ccds rows), one task per image."""

from __future__ import annotations

from collections.abc import Callable

from ..task import TaskSpec
from . import perimage
from .base import PRIORITY, Context, Plan

STAGE = "zeropoints"
PRIO = PRIORITY[STAGE]


def plan(ctx: Context, images: list[str],
         blocked_by: Callable[[str], str | None] | None = None,
         waiting: Callable[[str], bool] | None = None) -> tuple[Plan, dict[str, str]]:
    return perimage.plan(ctx, STAGE, images, blocked_by, waiting)


def spec(ctx: Context, key: str, image_filename: str) -> TaskSpec:
    return perimage.spec(ctx, STAGE, key, image_filename)

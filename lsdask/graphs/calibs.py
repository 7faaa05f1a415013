"""Stage ``calibs``: per-exposure calibrations (PSF and sky models), one task per image."""

from __future__ import annotations

from ..task import TaskSpec
from . import perimage
from .base import PRIORITY, Context, Plan

STAGE = "calibs"
PRIO = PRIORITY[STAGE]


def plan(ctx: Context, images: list[str]) -> tuple[Plan, dict[str, str]]:
    return perimage.plan(ctx, STAGE, images)


def spec(ctx: Context, key: str, image_filename: str) -> TaskSpec:
    return perimage.spec(ctx, STAGE, key, image_filename)

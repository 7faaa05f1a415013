"""The common shape of a stage: plan what is still to do, build tasks, reduce.

A stage's ``plan`` looks at every candidate key: a key whose product exists and
validates is done (skipped, ``force`` overrides); a key the ledger records as
failed is left alone until ``lsdask retry`` resets it (``force`` overrides too);
everything else (new, pending, or "running" when a previous driver died) is to
do. ``tasks`` turns the keys to do into runner :class:`~lsdask.runner.Task`
objects (Dask keys ``<stage>-<key>``, ``cores`` = threads), wired to upstream
tasks of the same run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import ReleaseConfig
from ..ledger import Ledger
from ..processors import ProcessorRef
from ..survey.layout import ReleaseLayout

log = logging.getLogger(__name__)

#: Stage order of a full release. Stages up to ``bricks`` (and ``runbrick``) are task
#: graphs run by the runner; the rest are whole-release steps run from the driver.
STAGES = ("images", "calibs", "zeropoints", "ccds", "bricks", "runbrick",
          "parquet", "sweeps", "match", "depth")
TASK_STAGES = ("calibs", "zeropoints", "runbrick", "ccds", "bricks")
POST_STAGES = ("parquet", "sweeps", "match", "depth")

#: Dask priorities: finish what was started (depth-first) before starting more.
PRIORITY = {"calibs": 0, "zeropoints": 10, "runbrick": 20, "ccds": 30, "bricks": 40}


@dataclass
class Context:
    """What every stage needs: the configuration, its layout, ledger and options."""

    config: ReleaseConfig
    ledger: Ledger | None = None
    force: frozenset[str] = frozenset()
    max_cores: int | None = None
    child: bool = True

    @property
    def layout(self) -> ReleaseLayout:
        return self.config.layout

    @property
    def processor(self) -> str:
        return self.config.release.processor

    def processor_for(self, stage: str) -> ProcessorRef:
        """The processor of ``stage`` with its settings (``[legacypipe]`` for legacypipe)."""
        return self.config.processor_ref(stage)

    def forced(self, stage: str) -> bool:
        opts = getattr(self.config.stages, stage, None)
        return stage in self.force or "all" in self.force or bool(getattr(opts, "force", False))


@dataclass
class Plan:
    """Keys of a stage: to do, already done (valid product), failed (left alone)."""

    stage: str
    todo: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.stage}: {len(self.todo)} to do, {len(self.done)} done, "
                f"{len(self.failed)} failed earlier")


def plan_keys(ctx: Context, stage: str, keys: Iterable[str],
              is_done: Callable[[str], bool]) -> Plan:
    """Split ``keys`` into to do / done / failed (see module docstring)."""
    plan = Plan(stage)
    force = ctx.forced(stage)
    states = ctx.ledger.states(stage) if ctx.ledger is not None else {}
    for k in keys:
        if not force and is_done(k):
            plan.done.append(k)
            continue
        row = states.get(k)
        if not force and row is not None and row["state"] == "failed":
            plan.failed.append(k)
            continue
        plan.todo.append(k)
    if ctx.ledger is not None and ctx.ledger._locked:
        ctx.ledger.ensure_tasks(stage, plan.done)
        ctx.ledger.mark_skipped(stage, plan.done)
    log.info("%s", plan)
    return plan


def processor_call(processor: str | ProcessorRef, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``lsdask.processors.<processor>.<name>`` (with the processor's settings)."""
    ref = processor if isinstance(processor, ProcessorRef) else ProcessorRef(processor)
    return ref.call(name, *args, **kwargs)

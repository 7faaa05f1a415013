"""The one shape of every stage: plan, is_done, task, reduce.

- ``is_done(key)``: the product exists, validates, and was made from the inputs that exist
  now (an input fingerprint stamped beside the product, :mod:`lsdask.done`). It is the only
  test of "done"; the ledger records history and never decides it.
- ``plan``: every candidate key is done (skipped; ``force`` overrides), *blocked* (an input
  it needs failed upstream and is not being remade: recorded, visible in ``status``, not
  run), failed earlier (left alone until ``lsdask retry``; ``force`` overrides; a failure
  of class ``config`` is retried once the configuration has changed), or to do.
- ``task(key)``: a :class:`~lsdask.task.TaskSpec` (per-key stages, run by the runner on the
  workers, wired to the upstream tasks of the run) or, for a whole-release stage, a call
  from the driver (:class:`WholeStage`). A task checks ``is_done`` again when it starts
  (its inputs may have been remade upstream in the same run) and skips if so; it writes
  its stamp after its product.
- ``reduce``: the runner's summary (per-key stages) or the stage's summary dict.
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
          "parquet", "sweeps", "match", "depth", "hats")
TASK_STAGES = ("calibs", "zeropoints", "runbrick", "ccds", "bricks")
POST_STAGES = ("parquet", "sweeps", "match", "depth", "hats")

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
    memory: dict[str, float] = field(default_factory=dict)  # stage -> bytes asked per task
    force_keys: dict[str, set[str]] = field(default_factory=dict)  # `lsdask rerun`: redo these

    @property
    def layout(self) -> ReleaseLayout:
        return self.config.layout

    @property
    def processor(self) -> str:
        return self.config.release.processor

    def processor_for(self, stage: str) -> ProcessorRef:
        """The processor of ``stage`` with its settings (``[legacypipe]`` for legacypipe)."""
        return self.config.processor_ref(stage)

    def forced(self, stage: str, key: str | None = None) -> bool:
        """Redo the stage (or this key of it) even when its product is done."""
        if key is not None and key in self.force_keys.get(stage, ()):
            return True
        opts = getattr(self.config.stages, stage, None)
        return stage in self.force or "all" in self.force or bool(getattr(opts, "force", False))


@dataclass
class Plan:
    """Keys of a stage: to do, done (valid, current product), failed earlier (left alone),
    blocked (key -> which failed input it waits for)."""

    stage: str
    todo: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{self.stage}: {len(self.todo)} to do, {len(self.done)} done, "
                f"{len(self.failed)} failed earlier"
                + (f", {len(self.blocked)} blocked" if self.blocked else ""))


def plan_keys(ctx: Context, stage: str, keys: Iterable[str],
              is_done: Callable[[str], bool],
              blocked_by: Callable[[str], str | None] | None = None,
              waiting: Callable[[str], bool] | None = None) -> Plan:
    """Split ``keys`` into done / failed / blocked / to do (see module docstring);
    ``blocked_by(key)``: why the key cannot run now (a failed input), or None;
    ``waiting(key)``: its inputs are being made in this run, so it is a task that decides
    whether it is done when it starts."""
    plan = Plan(stage)
    states = ctx.ledger.states(stage) if ctx.ledger is not None else {}
    config_of_run = ({r["run_id"]: r["config_hash"] for r in ctx.ledger.runs()}
                     if ctx.ledger is not None else {})

    def failed_earlier(row) -> bool:
        """Failed, and not for a configuration changed since (that is retried)."""
        if row is None or row["state"] != "failed":
            return False
        return not (row["failure_class"] == "config"
                    and config_of_run.get(row["run_id"]) != ctx.config.hash())

    for k in keys:
        force = ctx.forced(stage, k)
        if waiting is not None and waiting(k):
            plan.todo.append(k)
            continue
        if not force and is_done(k):
            plan.done.append(k)
            continue
        if not force and failed_earlier(states.get(k)):
            plan.failed.append(k)
            continue
        why = blocked_by(k) if blocked_by is not None else None
        if why:
            plan.blocked[k] = why
            continue
        plan.todo.append(k)
    if ctx.ledger is not None and ctx.ledger._locked:
        ctx.ledger.ensure_tasks(stage, [*plan.done, *plan.blocked])
        ctx.ledger.mark_skipped(stage, plan.done)
        ctx.ledger.mark_blocked(stage, plan.blocked)
    log.info("%s", plan)
    return plan


@dataclass(frozen=True)
class WholeStage:
    """A whole-release stage (one key, its name), run from the driver.

    ``inputs(ctx)``: a JSON-able description of what it is made from now (checksums of its
    input files, options), None when the stage is not configured; ``is_done(ctx, inputs)``:
    its product exists, validates and was made from ``inputs``; ``task(ctx, inputs, client)``:
    makes it (atomically, then its stamp) and returns a summary dict, whose ``failed``
    (key -> message) lists inputs it could not use (then the stage is failed);
    ``needs``: whole-release stages whose product it reads (blocked when one failed);
    ``configured(ctx)``: False for an opt-in stage the configuration leaves off (then it is not
    run and leaves no ledger row).
    """

    name: str
    inputs: Callable[[Context], Any]
    is_done: Callable[[Context, Any], bool]
    task: Callable[[Context, Any, Any], dict]
    needs: tuple[str, ...] = ()
    configured: Callable[[Context], bool] = lambda ctx: True


def processor_call(processor: str | ProcessorRef, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``lsdask.processors.<processor>.<name>`` (with the processor's settings)."""
    ref = processor if isinstance(processor, ProcessorRef) else ProcessorRef(processor)
    return ref.call(name, *args, **kwargs)

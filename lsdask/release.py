"""A release, from Python: ``Release.from_config(path)``, ``.run(client)``, ``.status()``.

::

    from distributed import Client
    from lsdask.jobqueue import make_cluster
    from lsdask.release import Release

    release = Release.from_config("release.toml")
    client = Client(make_cluster("local"))
    release.run(client)                    # all stages; or stages=["runbrick"]
    release.status()                       # a pandas DataFrame, one row per stage
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ReleaseConfig, load_config
from .errors import LsdaskError
from .graphs.base import POST_STAGES, STAGES, TASK_STAGES, Context
from .ledger import FAILURE_CLASSES, STATES, Ledger
from .runner import Runner, RunSummary

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What one :meth:`Release.run` did."""

    run_id: int | None
    stages: list[str]
    summary: RunSummary
    plans: dict[str, Any] = field(default_factory=dict)
    post: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    #: the HTML run report (``report/index.html``), refreshed at the end of the run
    run_report: str | None = None
    dashboard: str | None = None
    elapsed: float = 0.0
    #: after the run, from the ledger: failed tasks (this run or earlier) by class, and
    #: blocked tasks, over the stages of the run
    failed: dict[str, int] = field(default_factory=dict)
    blocked: int = 0

    @property
    def ok(self) -> bool:
        return (self.summary.total("failed") == 0 and not self.failed and not self.blocked
                and all(not (isinstance(v, dict) and (v.get("error") or v.get("blocked")))
                        for v in self.post.values()))


class Release:
    """One release: its configuration, layout and ledger."""

    def __init__(self, config: ReleaseConfig):
        self.config = config

    @classmethod
    def from_config(cls, config: str | os.PathLike | ReleaseConfig) -> Release:
        if isinstance(config, ReleaseConfig):
            return cls(config)
        return cls(load_config(config))

    @property
    def layout(self):
        return self.config.layout

    @property
    def name(self) -> str:
        return self.config.name

    def ledger(self) -> Ledger:
        """The ledger, read-only (raises when nothing has run yet)."""
        return Ledger.open_readonly(self.layout.ledger)

    # -- running ------------------------------------------------------------------------
    def preflight(self) -> None:
        """Fail before any cluster starts (no Slurm job submitted, no worker to stop): the
        ledger can be written and no other driver is running this release."""
        ledger = Ledger(self.layout.ledger)
        try:
            ledger.acquire(heartbeat=False)
        finally:
            with contextlib.suppress(Exception):
                ledger.close()  # releases the lock

    def run(self, client=None, stages: Sequence[str] | str | None = None,
            force: Sequence[str] | bool = (), progress: str | bool | None = None,
            window: int | None = None, report: bool = True, child: bool = True,
            echo=None, force_keys: dict[str, Sequence[str]] | None = None) -> RunResult:
        """Run ``stages`` (default: all) on ``client`` (default: a cluster from the config's
        profile, closed afterwards). ``report``: write the Dask performance report and refresh
        the HTML run report at the end. ``force``: stage names to redo (True: all);
        ``force_keys``: {stage: keys} to redo, with what is made from them (``lsdask rerun``).
        ``progress``: None picks a bar per stage in Jupyter (with ipywidgets), a tqdm bar in
        a terminal, else status lines (:class:`lsdask.progress.Progress`); False: none."""
        from .graphs.stages import build, normalize_stages
        from .jobqueue import (
            adapt,
            close_cluster,
            is_slurm,
            max_cores,
            release_cluster,
            uses_resources,
            worker_memory,
        )

        t0 = time.time()
        stages = normalize_stages(stages)
        forced = frozenset(STAGES if force is True else (force or ()))
        own_cluster = None
        ledger = Ledger(self.layout.ledger)  # first: a full or locked release starts nothing
        try:
            ledger.acquire()
            if client is None:
                from distributed import Client

                own_cluster = release_cluster(self.config)
                if is_slurm(own_cluster):
                    adapt(own_cluster, self.config.cluster.adapt_min,
                          self.config.cluster.adapt_max)
                client = Client(own_cluster)
        except BaseException:
            with contextlib.suppress(Exception):
                ledger.close()
            if own_cluster is not None:
                close_cluster(client, own_cluster)
            raise
        run_id = ledger.start_run(self.config.hash(), stages)
        outcome = "interrupted"
        result = RunResult(run_id, stages, RunSummary())
        try:
            ctx = Context(self.config, ledger, forced, max_cores=max_cores(client), child=child,
                          force_keys={s: set(k) for s, k in (force_keys or {}).items()})
            if uses_resources(client):
                ctx.memory = memory_requests(self.config, ledger, worker_memory(client))
            report_path = None
            cm: Any = contextlib.nullcontext()
            if report and client is not None:
                report_path = self.layout.performance_report(run_id)
                cm = _performance_report(report_path)
            with cm:
                task_stages = [s for s in stages if s in TASK_STAGES or s == "images"]
                if task_stages:
                    b = build(ctx, stages, client=client)
                    result.plans = b.plans
                    every = self.config.cluster.report_every
                    runner = Runner(client, ledger, window=window or self.config.cluster.window,
                                    progress=progress, use_resources=uses_resources(client),
                                    desc=self.name, echo=echo,
                                    status_every=self.config.cluster.status_every,
                                    tick=(every, self.refresh_report)
                                    if report and every > 0 else None)
                    result.dashboard = _link(client)
                    result.summary = runner.run(b.tasks)
                for stage in stages:
                    if stage in POST_STAGES:
                        result.post[stage] = self._run_whole(ctx, ledger, stage, client,
                                                             result.post)
            result.report = str(report_path) if report_path and report_path.exists() else None
            self._tally(ledger, result)
            outcome = "ok" if result.ok else "failures"
            return result
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        except Terminated:
            outcome = "terminated"
            raise
        except Exception as e:
            outcome = f"error: {type(e).__name__}"
            raise
        finally:
            result.elapsed = time.time() - t0
            with contextlib.suppress(Exception):
                ledger.end_run(outcome)
            with contextlib.suppress(Exception):
                ledger.close()
            if own_cluster is not None:
                close_cluster(client, own_cluster)
            if report and outcome not in ("interrupted", "terminated"):
                path = self.refresh_report()
                result.run_report = str(path) if path else None

    def refresh_report(self) -> Path | None:
        """Rewrite the HTML run report (:func:`lsdask.report.write_report`); best effort: a
        failure is one warning line and None, never an exception."""
        try:
            from .report import write_report

            return write_report(self)
        except Exception as e:  # noqa: BLE001 - the report never fails a run
            first = (str(e).splitlines() or [""])[0]
            log.warning("run report not refreshed: %s: %s", type(e).__name__, first)
            return None

    def _run_whole(self, ctx: Context, ledger: Ledger, stage: str, client,
                   before: dict[str, Any]) -> dict | None:
        """One whole-release stage through the stage protocol (:class:`WholeStage`)."""
        from .graphs.stages import whole_stage
        from .task import classify

        st = whole_stage(stage)
        if st is None or not st.configured(ctx):
            return None
        ledger.ensure_tasks(stage, [stage])
        failed = [n for n in st.needs if isinstance(before.get(n), dict)
                  and (before[n].get("error") or before[n].get("blocked"))]
        if failed:
            why = f"{', '.join(failed)} failed"
            log.warning("%s: blocked (%s)", stage, why)
            ledger.mark_blocked(stage, {stage: why})
            ledger.commit()
            return {"blocked": why}
        inputs = st.inputs(ctx)
        if inputs is None:
            log.info("%s: not configured", stage)
            return None
        if not ctx.forced(stage) and st.is_done(ctx, inputs):
            log.info("%s: done (made from the inputs there now)", stage)
            ledger.mark_skipped(stage, [stage])
            ledger.commit()
            return {"skipped": True}
        ledger.mark_running([(stage, stage, 1, 1)])
        ledger.commit()
        t0, c0 = time.time(), time.process_time()
        try:
            out = st.task(ctx, inputs, client)
        except Exception as e:  # noqa: BLE001 - recorded; the run goes on
            if _fatal_os_error(e):
                raise
            log.error("stage %s failed: %s", stage, e)
            ledger.record(stage, stage, "failed", 1, count_failure=True,
                          failure_class=classify(e), message=f"{type(e).__name__}: {e}"[:2000],
                          start=t0, wall=time.time() - t0, threads=1)
            return {"error": f"{type(e).__name__}: {e}"}
        bad = (out or {}).get("failed") or {}
        if bad:
            first = next(iter(bad.items()))
            msg = f"{len(bad)} input(s) unusable, e.g. {first[0]}: {first[1]}"[:2000]
            log.error("stage %s: %s", stage, msg)
            ledger.record(stage, stage, "failed", 1, count_failure=True, failure_class="input",
                          message=msg, start=t0, wall=time.time() - t0, threads=1)
            return {**out, "error": msg}
        ledger.record(stage, stage, "succeeded", 1, start=t0, wall=time.time() - t0,
                      cpu=time.process_time() - c0, threads=1)
        return out

    @staticmethod
    def _tally(ledger: Ledger, result: RunResult) -> None:
        """Failed (by class) and blocked tasks in the ledger, over the stages of the run."""
        stages = set(result.stages)
        for r in ledger.status_rows():
            if r["stage"] not in stages:
                continue
            if r["state"] == "failed":
                c = r["failure_class"] or "error"
                result.failed[c] = result.failed.get(c, 0) + r["n"]
            elif r["state"] == "blocked":
                result.blocked += r["n"]

    # -- operator views ---------------------------------------------------------------------
    def status(self) -> Any:
        """One row per stage: tasks by state, failures by class, core-hours, ETA (hours)."""
        import pandas as pd

        cols = [*STATES, *(f"failed:{c}" for c in FAILURE_CLASSES), "core_hours",
                "core_hours_all_attempts", "eta_hours"]
        if not self.layout.ledger.exists():
            return pd.DataFrame(columns=cols).rename_axis("stage")
        with self.ledger() as led:
            rows = led.status_rows()
            attempts = led.attempt_core_seconds()
        return status_frame(rows, attempts)

    def tasks(self, stage: str | None = None, state: str | None = None,
              failure_class: str | None = None) -> Any:
        import pandas as pd

        with self.ledger() as led:
            return pd.DataFrame(led.tasks(stage, state, failure_class))


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """The driver got SIGTERM (Slurm's walltime, ``scancel``): stop, recording the run's end."""


def _fatal_os_error(e: BaseException) -> bool:
    """Disk full, read-only or no permission: the release cannot be written; stop the run."""
    import errno

    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES,
                                                  errno.EDQUOT)


def status_frame(rows: list[dict], attempts: dict[str, float] | None = None) -> Any:
    """The status table from :meth:`Ledger.status_rows` aggregates."""
    import pandas as pd

    order = {s: i for i, s in enumerate(STAGES)}
    stages = sorted({r["stage"] for r in rows}, key=lambda s: (order.get(s, 99), s))
    data = []
    for st in stages:
        rs = [r for r in rows if r["stage"] == st]
        d: dict[str, Any] = {"stage": st}
        for s in STATES:
            d[s] = sum(r["n"] for r in rs if r["state"] == s)
        for c in FAILURE_CLASSES:
            d[f"failed:{c}"] = sum(r["n"] for r in rs if r["state"] == "failed"
                                   and r["failure_class"] == c)
        cs = sum(r["core_seconds"] for r in rs)
        d["core_hours"] = cs / 3600.0
        d["core_hours_all_attempts"] = (attempts or {}).get(st, cs) / 3600.0
        done = [r for r in rs if r["state"] == "succeeded" and r["n_timed"]]
        n_timed = sum(r["n_timed"] for r in done)
        mean_wall = sum(r["wall_seconds"] for r in done) / n_timed if n_timed else None
        remaining = d["pending"] + d["running"]
        if remaining == 0:
            d["eta_hours"] = 0.0
        elif mean_wall is None:
            d["eta_hours"] = float("nan")
        else:
            d["eta_hours"] = remaining * mean_wall / max(d["running"], 1) / 3600.0
        data.append(d)
    df = pd.DataFrame(data)
    if len(df):
        df = df.set_index("stage")
    return df


@contextlib.contextmanager
def _performance_report(path: Path):
    """Dask's performance report into ``path``; a failure to write it never fails the run."""
    try:
        import bokeh  # noqa: F401
        from distributed import performance_report
    except ImportError:
        log.warning("bokeh not installed: no performance report")
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    cm = performance_report(filename=str(path))
    cm.__enter__()
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            cm.__exit__(None, None, None)
        raise
    try:
        cm.__exit__(None, None, None)
    except Exception as e:  # noqa: BLE001
        log.warning("performance report not written: %s", e)


#: Stages whose tasks ask for ``memory``, and the margin over the observed p95 peak RSS.
MEMORY_STAGES = ("calibs", "zeropoints", "runbrick")
MEMORY_MARGIN = 1.2


def memory_requests(cfg: ReleaseConfig, ledger: Ledger, worker_mem: int | None
                    ) -> dict[str, float]:
    """Bytes each task of a stage asks of its worker (Dask resource ``memory``): the largest
    of ``[cluster] task_memory``, runbrick's ``memory_limit_gb`` and 1.2 x the p95 peak RSS
    the ledger observed for the stage; capped at one worker's memory. None of them: no ask.
    Workers that do not advertise ``memory`` (``worker_mem`` None): no ask at all."""
    import dask.utils

    if not worker_mem:
        return {}
    out: dict[str, float] = {}
    for stage in MEMORY_STAGES:
        want = []
        if cfg.cluster.task_memory.get(stage):
            want.append(float(dask.utils.parse_bytes(cfg.cluster.task_memory[stage])))
        if stage == "runbrick" and cfg.stages.runbrick.memory_limit_gb:
            want.append(cfg.stages.runbrick.memory_limit_gb * 1e9)
        seen = ledger.peak_rss_quantile(stage)
        if seen:
            want.append(seen * MEMORY_MARGIN)
        if want:
            req = max(want)
            if req > worker_mem:
                log.warning("%s tasks need %.1f GB, more than a worker has (%.1f GB): asking "
                            "for a whole worker", stage, req / 1e9, worker_mem / 1e9)
                req = float(worker_mem)
            out[stage] = req
    return out


def _link(client) -> str | None:
    from .jobqueue import dashboard_link

    with contextlib.suppress(Exception):
        return dashboard_link(client)
    return None


def release_from_arg(path: str | os.PathLike) -> Release:
    """CLI helper: a Release from a config path (a directory means its ``release.toml``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "release.toml"
    if not p.exists():
        raise LsdaskError(f"{p}: no such release configuration")
    return Release.from_config(p)

"""Submit tasks to Dask in a bounded window, follow them, keep the ledger, retry.

The runner takes a list of :class:`Task` (a :class:`~lsdask.task.TaskSpec` plus
upstream tasks it depends on) in submission order, and:

- submits at most ``window`` tasks at a time (``client.map`` in batches, keys like
  ``runbrick-<brick>``, ``resources={"cores": threads}``); a task whose upstream
  tasks are still running is submitted with their futures as arguments, so Dask
  starts it the moment they finish (a real graph dependency);
- follows them with ``as_completed`` and records every attempt in the ledger;
- applies the retry policy: ``oom`` -> again with half the threads (down to 1),
  then failed ``oom``; worker lost (``KilledWorker``: the worker died, its Slurm
  job was cancelled) -> again, up to ``max_retries`` times; ``input``, ``error``,
  ``timeout`` -> failed, no retry; a task process killed by a signal with no memory
  evidence (``killed``) -> again, up to ``max_retries``; a task only queued on a lost worker
  -> again, no failure counted; a task whose upstream task failed -> ``blocked``; a worker
  retired at its walltime (Dask moves the task silently) -> an attempt recorded as
  ``walltime``, no failure counted;
- shows progress (:mod:`lsdask.progress`: one bar per stage in Jupyter, tqdm in a
  terminal, status lines in a batch job's log) and prints the dashboard link at start.

Only the driver runs this, holding the ledger lock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .ledger import Ledger
from .progress import Progress
from .task import START_TOPIC, WORKER_TOPIC, TaskSpec, _retire_at, execute

log = logging.getLogger(__name__)

#: A worker lost within this many seconds of its lifetime's end retired (walltime).
RETIRE_SLACK = 10.0


class LifetimeReporterPlugin(WorkerPlugin):
    """Worker plugin: on joining, a worker reports when its ``--lifetime`` ends, so the
    driver can tell a walltime retirement from a lost worker."""

    name = "lsdask-lifetime"

    def setup(self, worker) -> None:
        with contextlib.suppress(Exception):
            worker.log_event(WORKER_TOPIC, {"worker": worker.address,
                                            "retire_at": _retire_at(worker)})


class QuietShutdownPlugin(WorkerPlugin):
    """Worker plugin: these loggers (warnings about tasks cancelled when a run stops) at
    ERROR in each worker, so stopping a run prints no chatter."""

    name = "lsdask-quiet"

    def __init__(self, loggers: Sequence[str]):
        self.loggers = list(loggers)

    def setup(self, worker) -> None:
        for n in self.loggers:
            logging.getLogger(n).setLevel(logging.ERROR)


class DeepMessageSizeofFilter(logging.Filter):
    """Drops distributed's warning that it could not size a message it is about to send
    ("... Defaulting to -1 B"): a deeply nested message, such as a worker's profile tree of
    runbrick's deep call stacks sent for the performance report. Distributed then just
    serialises it off its event loop; nothing is lost. Other sizeof warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Defaulting to -1 B" not in record.getMessage()


def quiet_deep_message_sizeof() -> None:
    """Install :class:`DeepMessageSizeofFilter` on ``distributed.sizeof`` (once)."""
    lg = logging.getLogger("distributed.sizeof")
    if not any(isinstance(f, DeepMessageSizeofFilter) for f in lg.filters):
        lg.addFilter(DeepMessageSizeofFilter())


class QuietSizeofPlugin(WorkerPlugin):
    """Worker plugin: :func:`quiet_deep_message_sizeof` in each worker."""

    name = "lsdask-quiet-sizeof"

    def setup(self, worker) -> None:
        quiet_deep_message_sizeof()


#: Dask key of attempt ``n`` of a task: ``runbrick-<brick>`` then ``runbrick-<brick>~2`` ...
def task_key(stage: str, key: str, attempt: int = 1) -> str:
    base = f"{stage}-{key}"
    return base if attempt <= 1 else f"{base}~{attempt}"


@dataclass(eq=False)
class Task:
    """A task to run: its spec, upstream tasks, Dask priority and resources."""

    spec: TaskSpec
    deps: list[Task] = field(default_factory=list)
    priority: int = 0
    max_retries: int = 3
    memory_resource: float | None = None
    # run-time state (driver side)
    future: Any = None
    result: dict[str, Any] | None = None
    done: bool = False
    failures: int = 0
    lost: int = 0

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def dask_key(self) -> str:
        return task_key(self.stage, self.key, self.spec.attempt)

    @property
    def succeeded(self) -> bool:
        return self.done and self.result is not None and self.result.get("status") == "succeeded"


@dataclass
class RunSummary:
    """What a :meth:`Runner.run` did, per stage."""

    submitted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    succeeded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    retried: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    blocked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    elapsed: float = 0.0

    def total(self, what: str) -> int:
        return sum(getattr(self, what).values())


def dashboard_link(client) -> str | None:
    with contextlib.suppress(Exception):
        return client.dashboard_link
    return None


class Runner:
    """Run tasks on a Dask client, recording them in a (locked) ledger."""

    def __init__(self, client, ledger: Ledger, window: int = 1000,
                 progress: str | bool | None = None, use_resources: bool = True,
                 desc: str = "lsdask", echo: Callable[[str], None] | None = None,
                 status_every: float = 60.0,
                 tick: tuple[float, Callable[[], Any]] | None = None):
        """``status_every``: seconds between status lines when there is no terminal;
        ``tick``: (seconds, fn): call ``fn`` from the driver that often while it runs (the
        ledger committed first), e.g. to refresh the run report."""
        self.client = client
        self.status_every = status_every
        self.tick = tick
        self.ledger = ledger
        self.window = max(1, int(window))
        self.progress = progress
        self.use_resources = use_resources
        self.desc = desc
        self.echo = echo if echo is not None else (lambda m: print(m, file=sys.stderr))
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._running: dict[str, Task] = {}  # dask key -> task in flight
        self._retire_at: dict[str, float] = {}  # worker address -> end of its lifetime

    # -- events from workers ------------------------------------------------------------
    def _on_event(self, event) -> None:
        self._events.put(event)

    def _drain_events(self, summary: RunSummary) -> None:
        while True:
            try:
                _, msg = self._events.get_nowait()
            except queue.Empty:
                return
            except (TypeError, ValueError):
                continue
            if msg.get("retire_at") and msg.get("worker"):
                self._retire_at[msg["worker"]] = float(msg["retire_at"])
            if "stage" not in msg:
                continue  # a worker joining
            task = self._running.get(task_key(msg["stage"], msg["key"], msg["attempt"]))
            if task is None:
                continue
            prev = getattr(task, "_started_on", None)
            if prev is not None and prev.get("worker") != msg.get("worker"):
                # the task moved without an error: its worker retired gracefully (walltime)
                self.ledger.record(task.stage, task.key, "failed", task.spec.attempt,
                                   count_failure=False, final=False,
                                   failure_class="walltime",
                                   message=f"worker {prev.get('worker')} retired; task moved "
                                           f"to {msg.get('worker')}",
                                   threads=task.spec.threads, worker=prev.get("worker"),
                                   host=prev.get("host"), slurm_job_id=prev.get("slurm_job_id"),
                                   start=prev.get("start"), end=msg.get("start"))
                summary.retried[task.stage] += 1
            task._started_on = msg  # type: ignore[attr-defined]
            self.ledger.mark_started(task.stage, task.key, msg.get("worker"), msg.get("host"),
                                     msg.get("slurm_job_id"), msg.get("start"))

    # -- submission ---------------------------------------------------------------------
    def _ready(self, task: Task) -> bool:
        for d in task.deps:
            if d.done:
                continue
            if d.future is None or d.future.status not in ("pending", "finished"):
                return False
        return True

    def _submit(self, batch: list[Task], ac) -> None:
        groups: dict[tuple, list[Task]] = defaultdict(list)
        for t in batch:
            res = None
            if self.use_resources:
                res = {"cores": t.spec.threads}
                if t.memory_resource:
                    res["memory"] = t.memory_resource
            groups[(t.priority, tuple(sorted(res.items())) if res else None)].append(t)
        futures = []
        for (priority, res), tasks in groups.items():
            deps = [[d.result if d.done else d.future for d in t.deps] for t in tasks]
            fs = self.client.map(execute, [t.spec for t in tasks], deps,
                                 key=[t.dask_key for t in tasks], pure=False,
                                 priority=priority, resources=dict(res) if res else None)
            for t, f in zip(tasks, fs, strict=True):
                t.future = f
                self._running[t.dask_key] = t
            futures.extend(fs)
        self.ledger.mark_running((t.stage, t.key, t.spec.attempt, t.spec.threads)
                                 for t in batch)
        ac.update(futures)

    # -- results --------------------------------------------------------------------------
    def _resubmit(self, task: Task, threads: int | None = None) -> None:
        from dataclasses import replace

        task.spec = replace(task.spec, attempt=task.spec.attempt + 1,
                            threads=threads or task.spec.threads)
        task.future = None
        if hasattr(task, "_started_on"):
            del task._started_on

    def _handle(self, task: Task, future, result, summary: RunSummary,
                requeue: list[Task], ok_batch: list) -> bool:
        """Process one finished future; returns True when the task is final."""
        self._running.pop(task.dask_key, None)
        stage, key, attempt = task.stage, task.key, task.spec.attempt
        if isinstance(result, BaseException) or future.status == "error":
            if not isinstance(result, BaseException):
                result = _exception(future)
            exc = result
            from distributed import KilledWorker

            blame = getattr(exc, "task", None)
            if isinstance(exc, KilledWorker) and blame not in (None, future.key):
                # an upstream task's worker died; run this one again once it is resubmitted
                self._resubmit(task)
                requeue.append(task)
                return False
            last = _last_worker(exc)
            retire_at = self._retire_at.get(last.get("worker") or "")
            if (isinstance(exc, KilledWorker) and retire_at is not None
                    and time.time() >= retire_at - RETIRE_SLACK):
                # its worker reached its lifetime (walltime retirement): again, not a failure
                self.ledger.record(stage, key, "failed", attempt, count_failure=False,
                                   final=False, failure_class="walltime",
                                   message=f"worker {last.get('worker')} retired at its "
                                           f"lifetime", threads=task.spec.threads, **last,
                                   **_started(task))
                summary.retried[stage] += 1
                self._resubmit(task)
                requeue.append(task)
                return False
            if isinstance(exc, KilledWorker) and getattr(task, "_started_on", None) is None:
                # it was only queued on the lost worker(s): not its failure, run it again
                self.ledger.record(stage, key, "failed", attempt, count_failure=False,
                                   final=False, failure_class="worker-lost",
                                   message="queued on a lost worker; resubmitted",
                                   threads=task.spec.threads, **last)
                summary.retried[stage] += 1
                self._resubmit(task)
                requeue.append(task)
                return False
            if isinstance(exc, KilledWorker):
                task.lost += 1
                final = task.lost > task.max_retries
                msg = f"worker lost: {exc}"[:2000]
                self.ledger.record(stage, key, "failed", attempt, count_failure=True,
                                   final=final, failure_class="worker-lost", message=msg,
                                   threads=task.spec.threads, **last, **_started(task))
                if final:
                    task.done, task.result = True, {"status": "failed",
                                                    "failure_class": "worker-lost",
                                                    "message": msg}
                    summary.failed[stage] += 1
                    return True
                summary.retried[stage] += 1
                self._resubmit(task)
                requeue.append(task)
                return False
            msg = f"{type(exc).__name__}: {exc}"[:2000]
            self.ledger.record(stage, key, "failed", attempt, count_failure=True,
                               failure_class="error", message=msg, threads=task.spec.threads)
            task.done, task.result = True, {"status": "failed", "failure_class": "error",
                                            "message": msg}
            summary.failed[stage] += 1
            return True
        if future.status == "cancelled":
            task.lost += 1
            self.ledger.record(stage, key, "failed", attempt, count_failure=True,
                               final=False, failure_class="worker-lost",
                               message="future cancelled", threads=task.spec.threads)
            self._resubmit(task)
            requeue.append(task)
            return False
        res = result
        if res.get("status") == "blocked":
            if any(not d.done for d in task.deps):
                # an upstream attempt failed but is being tried again: wait for it
                self._resubmit(task)
                requeue.append(task)
                return False
            self.ledger.mark_blocked(stage, {key: res.get("message") or "upstream failed"})
            task.done, task.result = True, res
            summary.blocked[stage] += 1
            return True
        if res.get("status") == "succeeded":
            ok_batch.append((stage, key, attempt, res))
            task.done, task.result = True, res
            summary.succeeded[stage] += 1
            return True
        cls = res.get("failure_class") or "error"
        fields = {k: res.get(k) for k in ("worker", "host", "slurm_job_id", "start", "end",
                                          "wall", "cpu", "peak_rss", "threads", "message",
                                          "phases")}
        again = None  # a retry: (count it as a failure, threads)
        if cls == "walltime":  # the worker retired at its lifetime: elsewhere, no failure
            again = (False, None)
        elif cls == "killed" and task.lost < task.max_retries:
            task.lost += 1  # killed by a signal, not for memory (operator, node problem)
            again = (True, None)
        elif cls == "oom" and task.spec.threads > 1:
            again = (True, max(1, task.spec.threads // 2))
        if again is not None:
            self.ledger.record(stage, key, "failed", attempt, count_failure=again[0],
                               final=False, failure_class=cls, **fields)
            summary.retried[stage] += 1
            self._resubmit(task, threads=again[1])
            requeue.append(task)
            return False
        self.ledger.record(stage, key, "failed", attempt, count_failure=True,
                           failure_class=cls, **fields)
        task.done, task.result = True, res
        summary.failed[stage] += 1
        return True

    def _results(self, futures: list) -> list[tuple[Any, Any]]:
        """(future, result or exception) for finished futures; results gathered at once."""
        ok = [f for f in futures if f.status == "finished"]
        out: list[tuple[Any, Any]] = []
        if ok:
            try:
                vals = self.client.gather(ok, errors="raise")
                out.extend(zip(ok, vals, strict=True))
            except Exception:  # noqa: BLE001 - lost between finishing and gathering
                out.extend((f, _exception(f)) for f in ok)
        out.extend((f, _exception(f)) for f in futures if f.status != "finished")
        return out

    # -- main loop --------------------------------------------------------------------------
    def run(self, tasks: Sequence[Task],
            on_done: Callable[[Task], None] | None = None) -> RunSummary:
        """Run ``tasks`` (in order, upstream tasks first) to completion."""
        from distributed import as_completed

        summary = RunSummary()
        t0 = time.time()
        if not tasks:
            return summary
        by_stage: dict[str, list[str]] = defaultdict(list)
        for t in tasks:
            by_stage[t.stage].append(t.key)
        for stage, keys in by_stage.items():
            self.ledger.ensure_tasks(stage, keys)
        self.ledger.commit()
        link = dashboard_link(self.client)
        if link:
            self.echo(f"lsdask: dashboard {link}")
        quiet_deep_message_sizeof()  # the scheduler's side (in this process)
        with contextlib.suppress(Exception):
            self.client.register_plugin(QuietSizeofPlugin())
        subscribed = any(t.spec.report_start for t in tasks)
        if subscribed:
            self.client.subscribe_topic(START_TOPIC, self._on_event)
            self.client.subscribe_topic(WORKER_TOPIC, self._on_event)
            with contextlib.suppress(Exception):
                self.client.register_plugin(LifetimeReporterPlugin())
        todo: deque[Task] = deque(tasks)
        blocked: list[Task] = []
        ac = as_completed()
        inflight = 0
        last_batch = time.monotonic()
        bar = Progress(len(tasks), self.progress, self.desc, self.status_every,
                       stages={st: len(keys) for st, keys in by_stage.items()})
        next_tick = time.monotonic() + self.tick[0] if self.tick else None
        try:
            while todo or blocked or inflight:
                self.ledger.check_lock()
                # fill the window
                room = self.window - inflight
                if room > 0 and (todo or blocked):
                    batch: list[Task] = []
                    if blocked:
                        still = []
                        for t in blocked:
                            (batch if len(batch) < room and self._ready(t) else still).append(t)
                        blocked = still
                    while todo and len(batch) < room:
                        t = todo.popleft()
                        (batch if self._ready(t) else blocked).append(t)
                    if batch:
                        self._submit(batch, ac)
                        inflight += len(batch)
                        for t in batch:
                            summary.submitted[t.stage] += 1
                # collect finished futures
                try:
                    first = ac.queue.get(timeout=0.2)
                except queue.Empty:
                    first = None
                done_fs = [first] if first is not None else []
                if first is not None and inflight > 16:
                    # let results accumulate: one gather round trip for many (<= 20 ms later)
                    time.sleep(max(0.0, 0.02 - (time.monotonic() - last_batch)))
                last_batch = time.monotonic()
                done_fs.extend(ac.next_batch(block=False) if ac.has_ready() else [])
                finished = self._results(done_fs)
                if subscribed:
                    self._drain_events(summary)
                requeue: list[Task] = []
                ok_batch: list = []
                ndone = 0
                for future, result in finished:
                    task = self._running.get(future.key)
                    inflight -= 1
                    if task is None:
                        continue
                    if self._handle(task, future, result, summary, requeue, ok_batch):
                        ndone += 1
                        task.future = None
                        if on_done is not None:
                            on_done(task)
                        summary.results[(task.stage, task.key)] = task.result
                if ok_batch:
                    by: dict[str, list] = defaultdict(list)
                    for st, key, attempt, res in ok_batch:
                        by[st].append((key, attempt, res))
                    for st, rows in by.items():
                        self.ledger.record_many(st, rows)
                if requeue:
                    blocked.extend(requeue)
                bar.update(ndone, self._postfix(summary), summary)
                self.ledger.maybe_commit()
                if next_tick is not None and time.monotonic() >= next_tick:
                    self.ledger.commit()
                    self.tick[1]()
                    next_tick = time.monotonic() + self.tick[0]
        finally:
            bar.close()
            if subscribed:
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(START_TOPIC)
                    self.client.unsubscribe_topic(WORKER_TOPIC)
            self.ledger.commit()
        summary.elapsed = time.time() - t0
        return summary

    def _postfix(self, s: RunSummary) -> str:
        f, r = s.total("failed"), s.total("retried")
        return (f"failed {f}" if f else "") + (f" retried {r}" if r else "")


def _exception(future) -> Any:
    if future.status == "cancelled":
        return None
    try:
        return future.exception(timeout=30)
    except Exception as e:  # noqa: BLE001
        return e


def _started(task: Task) -> dict[str, Any]:
    """When and in which Slurm job the task's attempt started, as its worker reported it."""
    msg = getattr(task, "_started_on", None) or {}
    return {"start": msg.get("start"), "slurm_job_id": msg.get("slurm_job_id")}


def _last_worker(exc) -> dict[str, Any]:
    lw = getattr(exc, "last_worker", None)
    addr = getattr(lw, "address", None)
    host = getattr(lw, "host", None)
    return {"worker": addr, "host": host}

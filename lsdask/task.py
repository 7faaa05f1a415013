"""One task, run on a Dask worker, usually in a child process of its own.

:func:`execute` is what the runner submits. It calls ``spec.func`` (a
``"module:function"`` name, called as ``func(threads=..., **spec.kwargs)``)
either in the worker thread (``spec.child=False``, for tiny tasks) or in a child
process ``python -m lsdask.task`` (so the task's memory is its own, it can be
killed on timeout or over its memory limit, and processors may use
multiprocessing). The child's stdout/stderr go to the task's log file.

A child reports its phases (:mod:`lsdask.phases`) through a pipe; the parent
puts them in the result (``phases``, for the ledger), reports each phase's wall seconds to
Dask's fine performance metrics (activity ``<stage>.<phase>``), and waits for the child in a
frame named ``<stage>.<phase>`` so Dask's profiler shows where the child's time goes
(``<stage>.start`` before the first phase: interpreter start and imports; ``<stage>.other``
between and after phases).

:func:`execute` never raises for a task failure: it returns a result dict with
``status`` (``succeeded``/``failed``), ``failure_class``, ``message``, where and
when it ran, wall and CPU seconds and peak RSS. Only the loss of the worker
itself reaches the driver as an exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .phases import ENV as PHASES_ENV
from .phases import PhaseReader, phase, waiter
from .phases import channel as phases_channel

#: Dask event topic on which workers report that a task started.
START_TOPIC = "lsdask-task-start"
#: Dask event topic on which a worker reports, when it joins, when its lifetime ends.
WORKER_TOPIC = "lsdask-worker"


@dataclass
class TaskSpec:
    """What to run for one task attempt."""

    stage: str
    key: str
    func: str  # "package.module:function"
    kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    memory_limit: float | None = None  # bytes of RSS (child tree); None: no limit
    timeout: float | None = None  # seconds
    log: str | None = None
    child: bool = True
    attempt: int = 1
    report_start: bool = True
    needs_deps: bool = False  # blocked (not run) when an upstream task did not succeed


def classify(exc: BaseException) -> str:
    """Failure class of an exception raised by a processor."""
    from .errors import ConfigError, InputError
    from .processors import BrickMemoryError

    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, ConfigError):
        return "config"  # retried by the first run whose configuration differs
    if isinstance(exc, (BrickMemoryError, MemoryError)):
        return "oom"
    return "error"


def resolve(func: str):
    mod, _, name = func.partition(":")
    return getattr(importlib.import_module(mod), name)


def _where() -> dict[str, Any]:
    worker = _current_worker()
    return {"worker": worker.address if worker is not None else None,
            "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _retire_at(worker) -> float | None:
    """When the worker's ``--lifetime`` ends (epoch seconds), or None without a lifetime."""
    lifetime = getattr(worker, "lifetime", None)
    if not lifetime:
        return None
    try:
        import psutil

        started = psutil.Process(os.getpid()).create_time()
    except Exception:  # noqa: BLE001
        return None
    return started + float(lifetime)


def execute(spec: TaskSpec, deps: list[Any] | None = None) -> dict[str, Any]:
    """Run one task attempt (on a worker); ``deps``: results of upstream tasks (for ordering)."""
    where = _where()
    start = time.time()
    if spec.report_start:
        with contextlib.suppress(Exception):
            from distributed import get_worker

            w = get_worker()
            w.log_event(START_TOPIC, {
                "stage": spec.stage, "key": spec.key, "attempt": spec.attempt,
                "start": start, "retire_at": _retire_at(w), **where})
    bad = [d for d in (deps or []) if isinstance(d, dict) and d.get("status") != "succeeded"]
    if spec.needs_deps and bad:
        res = {"status": "blocked", "failure_class": None, "summary": None,
               "message": "; ".join(f"{d.get('task', 'upstream')} {d.get('status')}"
                                    for d in bad)[:2000], "wall": 0.0, "cpu": 0.0}
    elif spec.child:
        res = _run_child(spec)
    else:
        res = _run_inline(spec)
    res["task"] = f"{spec.stage}-{spec.key}"
    res["summary"] = plain(res.get("summary"))
    res.update(where)
    res.setdefault("start", start)
    res["end"] = time.time()
    res["threads"] = spec.threads
    res["attempt"] = spec.attempt
    return res


def plain(obj: Any) -> Any:
    """Task summaries as plain Python (numpy scalars -> numbers, paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    return obj


def _call(spec: TaskSpec) -> dict[str, Any]:
    try:
        summary = resolve(spec.func)(threads=spec.threads, **spec.kwargs)
        return {"status": "succeeded", "summary": summary, "failure_class": None,
                "message": None}
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        traceback.print_exc()
        return {"status": "failed", "failure_class": classify(e),
                "message": f"{type(e).__name__}: {e}"[:2000], "summary": None}


def _run_inline(spec: TaskSpec) -> dict[str, Any]:
    t0, c0 = time.time(), time.process_time()
    if spec.log is None:
        res = _call(spec)
    else:
        Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "a") as f, contextlib.redirect_stderr(f), \
                contextlib.redirect_stdout(f):
            res = _call(spec)
    res.update(wall=time.time() - t0, cpu=time.process_time() - c0, peak_rss=None)
    return res


# -- child process ------------------------------------------------------------------

def _set_pdeathsig() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


#: File descriptors a task holds that its forked children must not keep (e.g. the brick's
#: ``flock``: a child holding it would keep the brick locked after the task died).
PRIVATE_FDS: set[int] = set()


def _after_fork_in_child() -> None:
    """In every process a task forks (processors' worker pools): die with the task, and
    drop the task's private descriptors (locks)."""
    _set_pdeathsig()
    for fd in list(PRIVATE_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    PRIVATE_FDS.clear()


def _tree_rss(pid: int) -> float:
    """Resident memory (bytes) of a process and its descendants."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        try:
            with open(f"/proc/{pid}/statm") as f:
                return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0.0
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def _oom_kills() -> int:
    """The cgroup's count of OOM kills (cgroup v2 ``memory.events``), 0 when unknown."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = f.read().strip().splitlines()[0].split(":", 2)[2]
        with open(f"/sys/fs/cgroup{rel.rstrip('/')}/memory.events") as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _current_worker():
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return get_worker()
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)  # not proc.kill(): it may reap the child


def _run_child(spec: TaskSpec) -> dict[str, Any]:
    log = Path(spec.log) if spec.log else None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    # the child creates it (at its very end): a kill leaves no empty file behind
    result_path = os.path.join(tempfile.gettempdir(),
                               f"lsdask-result-{os.getpid()}-{uuid.uuid4().hex}.pickle")
    rfd = wfd = -1
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(spec.threads)
    env["LSDASK_TASK_THREADS"] = str(spec.threads)
    env["LSDASK_TASK_PARENT"] = str(os.getpid())
    env["LSDASK_TASK_KEY"] = f"{spec.stage}-{spec.key}"
    out = open(log, "a") if log is not None else open(os.devnull, "w")  # noqa: SIM115
    t0 = time.time()
    peak = 0.0
    try:
        out.write(f"=== lsdask {spec.stage} {spec.key} attempt {spec.attempt} "
                  f"threads {spec.threads} on {socket.gethostname()} pid {os.getpid()} "
                  f"at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        out.flush()
        # the child's phases come through a pipe: nothing left behind if we are killed
        rfd, wfd, env[PHASES_ENV] = phases_channel()
        phases = PhaseReader(rfd)
        proc = subprocess.Popen([sys.executable, "-m", "lsdask.task", result_path],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True,
                                pass_fds=(wfd,))
        os.close(wfd)
        wfd = -1
        try:
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        killed_for = None
        oom_before = _oom_kills()
        rusage = None
        status = 0
        next_rss = 0.0
        next_status = 0.0
        worker = _current_worker()
        while True:
            try:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                rusage = None
                proc.returncode = proc.returncode if proc.returncode is not None else -9
                break
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            now = time.time()
            if spec.memory_limit is not None and now >= next_rss:
                rss = _tree_rss(proc.pid)
                peak = max(peak, rss)
                next_rss = now + 0.2
                if rss > spec.memory_limit:
                    killed_for = ("oom", f"killed: RSS {rss / 2**20:.0f} MiB over the limit "
                                         f"of {spec.memory_limit / 2**20:.0f} MiB")
                    _kill_group(proc)
                    continue
            if worker is not None and now >= next_status:
                next_status = now + 0.1
                if getattr(worker.status, "name", "running") not in ("running", "paused",
                                                                      "init"):
                    # the worker is leaving (lifetime, scancel, shutdown): its result could
                    # not be delivered, and the task is rescheduled elsewhere
                    killed_for = ("walltime", f"worker {worker.address} is leaving "
                                              f"({worker.status.name}); task stopped to be "
                                              f"resubmitted")
                    _kill_group(proc)
                    continue
            if spec.timeout is not None and now - t0 > spec.timeout:
                killed_for = ("timeout", f"killed after the timeout of {spec.timeout:.0f} s")
                _kill_group(proc)
                continue
            _report_phases(spec.stage, phases.poll())
            now_in = phases.current or ("other" if phases.done else "start")
            waiter(f"{spec.stage}.{now_in}")(0.05)
        # leftovers of the child's own children (same session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        wall = time.time() - t0
        ended = phases.poll()
        killed_in = phases.unfinished()  # phases the child did not end (killed in them)
        _report_phases(spec.stage, ended + killed_in)
        cpu = rusage.ru_utime + rusage.ru_stime if rusage else None
        peak = max(peak, rusage.ru_maxrss * 1024.0 if rusage else 0.0)
        res: dict[str, Any] | None = None
        if killed_for is None:
            with contextlib.suppress(Exception):
                with open(result_path, "rb") as f:
                    res = pickle.load(f)
        if res is None:
            if killed_for is not None:
                cls, msg = killed_for
            elif proc.returncode < 0:
                sig = -proc.returncode
                cls = "error"
                msg = f"task process killed by signal {signal.Signals(sig).name}"
                if sig == signal.SIGKILL:
                    # the kernel's OOM killer, or someone: only memory evidence makes it oom
                    oom = _oom_kills() > oom_before or (
                        spec.memory_limit is not None and peak >= 0.9 * spec.memory_limit)
                    cls = "oom" if oom else "killed"
                    msg += " (out of memory)" if oom else " (not for memory: retried)"
            else:
                cls, msg = "error", f"task process exited with code {proc.returncode}"
            res = {"status": "failed", "failure_class": cls, "message": msg, "summary": None}
        res.update(wall=wall, cpu=cpu, peak_rss=peak or None,
                   phases=(phases.done + killed_in) or None)
        out.write(f"=== {res['status']}"
                  f"{' (' + str(res['failure_class']) + ')' if res['failure_class'] else ''}"
                  f" wall {wall:.1f} s cpu {cpu or 0:.1f} s peak RSS {peak / 2**20:.0f} MiB"
                  f"{': ' + res['message'] if res.get('message') else ''}\n")
        return res
    finally:
        out.close()
        for fd in (rfd, wfd):
            if fd >= 0:
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(result_path)


def _report_phases(stage: str, ended: list[dict[str, Any]]) -> None:
    """Each phase's wall seconds to Dask's fine performance metrics (in a worker's task)."""
    if not ended:
        return
    with contextlib.suppress(Exception):
        from distributed.metrics import context_meter

        for p in ended:
            context_meter.digest_metric(f"{stage}.{p['name']}", p["wall"], "seconds")


def _watch_parent(ppid: int) -> None:
    while True:
        if os.getppid() != ppid:
            os._exit(70)
        time.sleep(1.0)


def child_main(result_path: str) -> int:
    """Entry of the child process: spec pickled on stdin, result pickled to ``result_path``."""
    import logging

    _set_pdeathsig()
    os.register_at_fork(after_in_child=_after_fork_in_child)
    ppid = os.getppid()
    if str(ppid) != os.environ.get("LSDASK_TASK_PARENT", str(ppid)):
        return 70  # the worker died before we could watch it
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True).start()
    spec: TaskSpec = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = _call(spec)
    try:
        data = pickle.dumps(res)
    except Exception as e:  # noqa: BLE001 - unpicklable summary
        data = pickle.dumps({"status": res["status"], "failure_class": res["failure_class"],
                             "message": res["message"] or f"summary not picklable: {e}",
                             "summary": None})
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


def maxrss_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))


def noop(threads: int = 1, **kwargs: Any) -> None:
    """A task that does nothing (orchestration benchmarks and tests)."""
    return None


def sleep(threads: int = 1, seconds: float = 0.0, **kwargs: Any) -> dict[str, Any]:
    """A task that sleeps (tests), in a phase named ``sleep``."""
    with phase("sleep"):
        time.sleep(seconds)
    return {"slept": seconds}

"""Phases of a task that runs in a child process, reported to its worker-side parent.

The parent (:func:`lsdask.task._run_child`) gives the child the write end of a pipe
(:func:`channel`; ``$LSDASK_PHASES`` = ``<fd>:<inode>``); the child writes one JSON line per
event to it::

    {"event": "begin", "phase": "coadds", "t": 1764201600.1}
    {"event": "end", "phase": "coadds", "t": 1764201612.4, "wall": 12.3, "cpu": 23.9, "rss": 8.1e8}

(``cpu``: seconds of this process and its reaped children; ``rss``: bytes resident at the
end; either may be null). Processors call :func:`phase` (or :func:`begin`/:func:`end` for
a phase measured elsewhere, e.g. parsed from legacypipe's log); without ``$LSDASK_PHASES``
these do nothing. A pipe leaves no file behind when the worker or the child is killed; the
child never blocks on it (a full pipe drops the event), a descriptor that is not that pipe any
more (a process that inherited the variable, not the pipe) is left alone. The parent reads it
without blocking (:class:`PhaseReader`): a killed child leaves at worst a torn last line,
which is ignored, and a phase begun but never ended (reported with ``"incomplete": true``).
No Dask in here: processors import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import stat
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

#: Environment variable: ``<fd>:<inode>`` of the pipe the child writes its phase events to.
ENV = "LSDASK_PHASES"


def channel() -> tuple[int, int, str]:
    """A new pipe for a child's phases: (read fd, write fd, the child's ``$LSDASK_PHASES``).
    The read end does not block; pass the write end to the child (``pass_fds``)."""
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    return rfd, wfd, f"{wfd}:{os.fstat(wfd).st_ino}"


def _target() -> int | None:
    """The pipe named by ``$LSDASK_PHASES`` if this process holds it, else None."""
    fd, _, ino = os.environ.get(ENV, "").partition(":")
    try:
        st = os.fstat(int(fd))
        return int(fd) if stat.S_ISFIFO(st.st_mode) and st.st_ino == int(ino) else None
    except (OSError, ValueError):
        return None


def _emit(record: dict[str, Any]) -> None:
    fd = _target()
    if fd is not None:
        with contextlib.suppress(OSError):  # full (dropped) or closed: never block the task
            os.write(fd, (json.dumps(record) + "\n").encode())  # < PIPE_BUF: atomic


def begin(name: str) -> None:
    """Report that phase ``name`` starts now."""
    _emit({"event": "begin", "phase": name, "t": time.time()})


def end(name: str, wall: float, cpu: float | None = None, rss: float | None = None) -> None:
    """Report that phase ``name`` ended now after ``wall`` seconds (``cpu`` s, ``rss`` bytes)."""
    _emit({"event": "end", "phase": name, "t": time.time(), "wall": float(wall),
           "cpu": None if cpu is None else float(cpu), "rss": rss})


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rss_bytes() -> float | None:
    """Resident memory of this process now (bytes), None when unknown."""
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def phase(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Time the block as phase ``name`` (reported even when it raises); its wall seconds
    also go to ``timings[name]`` when given."""
    begin(name)
    t0, c0 = time.time(), cpu_seconds()
    try:
        yield
    finally:
        wall = time.time() - t0
        if timings is not None:
            timings[name] = wall
        end(name, wall, cpu_seconds() - c0, rss_bytes())


class PhaseReader:
    """The parent's view of a child's phases, read from the pipe as they arrive."""

    def __init__(self, fd: int):
        self.fd = fd
        self._rest = b""  # a line not complete yet
        self._open: dict[str, float] = {}  # phase begun and not ended -> its start
        self.done: list[dict[str, Any]] = []  # ended phases, in order
        self.current: str | None = None  # the phase running now (the last begun, not ended)

    def poll(self) -> list[dict[str, Any]]:
        """Read the complete lines written since the last call (without blocking); returns
        the phases that ended."""
        data = self._rest
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed
                break
            if not chunk:  # every writer gone
                break
            data += chunk
        cut = data.rfind(b"\n") + 1  # a torn last line waits for the rest (or is dropped)
        self._rest = data[cut:]
        ended = []
        for line in data[:cut].splitlines():
            try:
                ev = json.loads(line)
                name = str(ev["phase"])
            except (ValueError, KeyError, TypeError):
                continue
            if ev.get("event") == "begin":
                self._open[name] = float(ev.get("t") or time.time())
                self.current = name
            elif ev.get("event") == "end":
                self._open.pop(name, None)
                rec = {"name": name, "wall": float(ev.get("wall") or 0.0),
                       "cpu": ev.get("cpu"), "rss": ev.get("rss")}
                self.done.append(rec)
                ended.append(rec)
                if self.current == name:
                    self.current = next(reversed(self._open), None)
        return ended

    def unfinished(self, now: float | None = None) -> list[dict[str, Any]]:
        """Phases begun and never ended (the child was killed in them), timed until ``now``."""
        now = time.time() if now is None else now
        return [{"name": n, "wall": max(0.0, now - t), "cpu": None, "rss": None,
                 "incomplete": True} for n, t in self._open.items()]


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _wait_in_phase(seconds: float) -> None:
    # not the innermost Python frame: Dask's profiler counts a sample for the callers of
    # the innermost frame only
    _pause(seconds)


_FRAMES: dict[str, Callable[[float], None]] = {}


def waiter(label: str) -> Callable[[float], None]:
    """A sleep function whose code is named ``label`` (e.g. ``runbrick.coadds``): a parent
    waiting in it shows in Dask's profiler (performance report, dashboard) as that frame."""
    fn = _FRAMES.get(label)
    if fn is None:
        code = _wait_in_phase.__code__.replace(co_name=label, co_qualname=label)
        fn = _FRAMES[label] = types.FunctionType(code, _wait_in_phase.__globals__, label)
    return fn


def totals(phases: list[dict[str, Any]] | None) -> dict[str, dict[str, float | None]]:
    """Phase name -> summed ``wall`` and ``cpu`` (None when no part has a CPU time), in
    order of first appearance (a phase may occur more than once in an attempt)."""
    out: dict[str, dict[str, float | None]] = {}
    for p in phases or []:
        t = out.setdefault(str(p.get("name")), {"wall": 0.0, "cpu": None})
        t["wall"] = (t["wall"] or 0.0) + float(p.get("wall") or 0.0)
        if p.get("cpu") is not None:
            t["cpu"] = (t["cpu"] or 0.0) + float(p["cpu"])
    return out

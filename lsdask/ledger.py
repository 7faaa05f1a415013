"""The durable ledger of a release: every task, every attempt, every run.

One SQLite file in the release directory (``layout.ledger``), written only by the driver
(the lock guarantees one driver per release). The release directory is on a network file
system at NERSC (Lustre ``$SCRATCH``) and ``lsdask status`` runs from other hosts, so the
ledger uses SQLite's rollback journal (``journal_mode=DELETE``, ``synchronous=FULL``), not
WAL: "All processes using a database must be on the same host computer; WAL does not work
over a network filesystem" (https://www.sqlite.org/wal.html). Readers take a shared lock
for each query and never write. ``LSDASK_LEDGER_JOURNAL=wal`` brings WAL back for a release
on a local disk. Tables:

- ``tasks``: one row per (stage, key) with its current state (pending, running,
  succeeded, failed, blocked: an input failed upstream), attempt number, failures
  counted, threads, failure class (``input``, ``oom``, ``killed``, ``timeout``,
  ``worker-lost``, ``walltime``, ``error``),
  message, worker, host, Slurm job id, start/end, wall and CPU seconds, peak RSS.
- ``attempts``: the history, one row per finished (or abandoned) attempt; an attempt a
  killed or interrupted driver left running is recorded ``abandoned`` when the next run
  starts (its task back to pending).
  ``phases``: the phases its child process reported (JSON list of ``{"name", "wall",
  "cpu", "rss"}``, NULL when none; a column added to older ledgers opened for writing).
- ``runs``: run id, config hash, versions, user, host, start/end, outcome.
- ``lock``: the driver holding the release (pid, host, heartbeat).

Readers (``status``, ``tasks``, ``logs``) open it read-only and need no lock.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LsdaskError

STATES = ("pending", "running", "succeeded", "failed", "blocked")
FAILURE_CLASSES = ("input", "config", "oom", "killed", "timeout", "worker-lost", "walltime",
                   "error")

#: A lock whose heartbeat is older than this (seconds) is stale even if its PID looks alive.
STALE_AFTER = 300.0
HEARTBEAT_EVERY = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    threads INTEGER NOT NULL DEFAULT 1,
    failure_class TEXT,
    message TEXT,
    worker TEXT,
    host TEXT,
    slurm_job_id TEXT,
    start REAL,
    end REAL,
    wall REAL,
    cpu REAL,
    peak_rss REAL,
    run_id INTEGER,
    UNIQUE (stage, key)
);
CREATE INDEX IF NOT EXISTS tasks_stage_state ON tasks (stage, state, failure_class, wall, threads);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    threads INTEGER,
    failure_class TEXT,
    message TEXT,
    worker TEXT,
    host TEXT,
    slurm_job_id TEXT,
    start REAL,
    end REAL,
    wall REAL,
    cpu REAL,
    peak_rss REAL,
    run_id INTEGER,
    phases TEXT
);
CREATE INDEX IF NOT EXISTS attempts_task ON attempts (task_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    config_hash TEXT,
    lsdask_version TEXT,
    dask_version TEXT,
    user TEXT,
    host TEXT,
    pid INTEGER,
    stages TEXT,
    start REAL,
    end REAL,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    acquired REAL NOT NULL,
    run_id INTEGER
);
"""

#: Columns a task result may set (besides state/attempt bookkeeping).
RESULT_FIELDS = ("threads", "failure_class", "message", "worker", "host", "slurm_job_id",
                 "start", "end", "wall", "cpu", "peak_rss")


#: Columns added after the first schema: (table, column, SQL type), added by :func:`_migrate`.
ADDED_COLUMNS = (("attempts", "phases", "TEXT"),)


def _migrate(con: sqlite3.Connection) -> None:
    """Add the columns an older ledger lacks (nullable: its old rows read as NULL)."""
    for table, col, kind in ADDED_COLUMNS:
        if col in _columns(con, table):
            continue
        try:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
        except sqlite3.OperationalError as e:  # another process added it first
            if "duplicate column" not in str(e):
                raise


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def _json(value: Any) -> str | None:
    return None if not value else json.dumps(value)


class LedgerLocked(LsdaskError):
    """Another live driver holds this release."""


class LockLost(LsdaskError):
    """This driver's lock was taken over by another driver: it must stop."""


@dataclass
class LockInfo:
    pid: int
    host: str
    heartbeat: float
    acquired: float
    run_id: int | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is dead too
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def journal_mode() -> str:
    """``DELETE`` (safe on network file systems), or ``WAL`` with LSDASK_LEDGER_JOURNAL=wal."""
    mode = os.environ.get("LSDASK_LEDGER_JOURNAL", "delete").upper()
    if mode not in ("DELETE", "TRUNCATE", "PERSIST", "WAL"):
        raise LsdaskError(f"LSDASK_LEDGER_JOURNAL={mode.lower()}: use delete, truncate, "
                          f"persist or wal")
    return mode


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                              check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=30, check_same_thread=False,
                              isolation_level=None)
        mode = journal_mode()
        con.execute(f"PRAGMA journal_mode={mode}")  # also turns an older WAL ledger back
        con.execute(f"PRAGMA synchronous={'NORMAL' if mode == 'WAL' else 'FULL'}")
    con.row_factory = sqlite3.Row
    return con


class Ledger:
    """The ledger of one release. ``Ledger(path)`` opens (creating) it for writing;
    use :meth:`acquire` before writing task states, or :meth:`open_readonly` to read."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise LsdaskError(f"{self.path}: no ledger yet (nothing has run for this release)")
        self._con = _connect(self.path, readonly)
        self._lock = threading.RLock()
        if not readonly:
            with self._lock:
                self._con.executescript(_SCHEMA)
                _migrate(self._con)
        self.run_id: int | None = None
        self._locked = False
        self.lock_lost = False
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._in_tx = False
        self._last_commit = time.monotonic()

    @classmethod
    def open_readonly(cls, path: str | Path) -> Ledger:
        return cls(path, readonly=True)

    # -- lock ---------------------------------------------------------------
    def lock_info(self) -> LockInfo | None:
        row = self._con.execute("SELECT * FROM lock WHERE id = 1").fetchone()
        if row is None:
            return None
        return LockInfo(row["pid"], row["host"], row["heartbeat"], row["acquired"],
                        row["run_id"])

    @staticmethod
    def lock_is_stale(info: LockInfo, now: float | None = None,
                      stale_after: float = STALE_AFTER) -> bool:
        """A lock is stale when its driver's PID is dead on this host (a live one on this host
        is never stale, whatever the clocks say), or, held from another host, when its
        heartbeat is older than ``stale_after``."""
        if info.host == socket.gethostname():
            return not _pid_alive(info.pid)
        now = time.time() if now is None else now
        return now - info.heartbeat > stale_after

    def acquire(self, stale_after: float = STALE_AFTER, heartbeat: bool = True) -> None:
        """Take the driver lock, or raise :class:`LedgerLocked` naming the live holder."""
        me, host, now = os.getpid(), socket.gethostname(), time.time()
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                info = self.lock_info()
                if info is not None and not (info.pid == me and info.host == host):
                    if not self.lock_is_stale(info, now, stale_after):
                        age = now - info.heartbeat
                        raise LedgerLocked(
                            f"{self.path}: release is being run by another driver "
                            f"(pid {info.pid} on {info.host}, heartbeat {age:.0f} s ago); "
                            f"wait for it to finish or stop it first")
                self._con.execute("INSERT OR REPLACE INTO lock (id, pid, host, heartbeat, "
                                  "acquired) VALUES (1, ?, ?, ?, ?)", (me, host, now, now))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        self._locked = True
        if heartbeat:
            self._hb_stop.clear()
            self._hb_thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                               name="lsdask-ledger-heartbeat")
            self._hb_thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.wait(HEARTBEAT_EVERY):
            self.heartbeat()

    def heartbeat(self) -> None:
        with self._lock:
            if self._locked and not self.lock_lost:
                # inside an open batch it commits with the batch (<= 0.5 s)
                n = self._con.execute(
                    "UPDATE lock SET heartbeat = ? WHERE id = 1 AND pid = ? AND host = ?",
                    (time.time(), os.getpid(), socket.gethostname())).rowcount
                if n == 0:
                    self.lock_lost = True

    def check_lock(self) -> None:
        """Raise :class:`LockLost` when another driver took this release over."""
        if self.lock_lost:
            info = self.lock_info()
            who = f" by pid {info.pid} on {info.host}" if info is not None else ""
            raise LockLost(f"{self.path}: the release lock was taken over{who}; this driver "
                           f"stops (its tasks are re-planned by the driver holding the lock)")

    def release_lock(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=5)
            self._hb_thread = None
        with self._lock:
            self.commit()
            if self._locked:
                self._con.execute("DELETE FROM lock WHERE id = 1 AND pid = ? AND host = ?",
                                  (os.getpid(), socket.gethostname()))
                self._locked = False

    def _require_lock(self) -> None:
        if not self._locked:
            raise LsdaskError(f"{self.path}: ledger written without holding the driver lock")
        self.check_lock()

    # -- transactions ----------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_tx:
            self._con.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        with self._lock:
            if self._in_tx:
                self._con.execute("COMMIT")
                self._in_tx = False
            self._last_commit = time.monotonic()

    def maybe_commit(self, every: float = 0.5) -> None:
        """Commit when the open transaction is older than ``every`` seconds (batching)."""
        if time.monotonic() - self._last_commit >= every:
            self.commit()

    # -- runs ------------------------------------------------------------------
    def start_run(self, config_hash: str = "", stages: Sequence[str] = ()) -> int:
        import dask

        from . import __version__

        self._require_lock()
        with self._lock:
            cur = self._con.execute(
                "INSERT INTO runs (config_hash, lsdask_version, dask_version, user, host, pid, "
                "stages, start) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (config_hash, __version__, dask.__version__, _user(), socket.gethostname(),
                 os.getpid(), ",".join(stages), time.time()))
            self.run_id = int(cur.lastrowid)
            self._con.execute("UPDATE lock SET run_id = ? WHERE id = 1", (self.run_id,))
            self._abandon_running()
        return self.run_id

    def _abandon_running(self) -> None:
        """Tasks an earlier driver left ``running`` (it was killed or interrupted): each such
        attempt gets an ``abandoned`` attempts row (its start and worker as known; its end:
        that run's end, else the last time that run recorded, an attempt's end or a task's
        start), and the task goes back to ``pending``."""
        end_of_run = ("COALESCE((SELECT r.end FROM runs r WHERE r.run_id = t.run_id), "
                      "(SELECT MAX(x) FROM (SELECT a.end AS x FROM attempts a "
                      "WHERE a.run_id = t.run_id UNION ALL SELECT u.start FROM tasks u "
                      "WHERE u.run_id = t.run_id)), t.start)")
        self._begin()
        self._con.execute(
            "INSERT INTO attempts (task_id, attempt, state, threads, message, worker, host, "
            "slurm_job_id, start, end, run_id) SELECT t.id, t.attempt, 'abandoned', t.threads, "
            "'driver stopped (run ' || COALESCE(t.run_id, '?') || ')', t.worker, t.host, "
            "t.slurm_job_id, t.start, " + end_of_run + ", t.run_id FROM tasks t "
            "WHERE t.state = 'running'")
        self._con.execute("UPDATE tasks SET state = 'pending' WHERE state = 'running'")
        self.commit()

    def end_run(self, outcome: str) -> None:
        with self._lock:
            self.commit()
            if self.run_id is not None:
                self._con.execute("UPDATE runs SET end = ?, outcome = ? WHERE run_id = ?",
                                  (time.time(), outcome, self.run_id))

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._con.execute("SELECT * FROM runs ORDER BY run_id")]

    # -- tasks -----------------------------------------------------------------
    def ensure_tasks(self, stage: str, keys: Iterable[str]) -> None:
        """Insert tasks that are not in the ledger yet (state pending)."""
        self._require_lock()
        with self._lock:
            self._begin()
            self._con.executemany("INSERT OR IGNORE INTO tasks (stage, key, run_id) "
                                  "VALUES (?, ?, ?)",
                                  ((stage, k, self.run_id) for k in keys))

    def states(self, stage: str) -> dict[str, sqlite3.Row]:
        """key -> row of every task of a stage."""
        with self._lock:
            return {r["key"]: r for r in
                    self._con.execute("SELECT * FROM tasks WHERE stage = ?", (stage,))}

    def get(self, stage: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            r = self._con.execute("SELECT * FROM tasks WHERE stage = ? AND key = ?",
                                  (stage, key)).fetchone()
        return dict(r) if r is not None else None

    def mark_running(self, items: Iterable[tuple[str, str, int, int]]) -> None:
        """Mark tasks submitted: items of (stage, key, attempt, threads)."""
        self._require_lock()
        now = time.time()
        with self._lock:
            self._begin()
            self._con.executemany(
                "UPDATE tasks SET state = 'running', attempt = ?, threads = ?, start = ?, "
                "end = NULL, failure_class = NULL, message = NULL, run_id = ? "
                "WHERE stage = ? AND key = ?",
                ((a, t, now, self.run_id, s, k) for s, k, a, t in items))

    def mark_started(self, stage: str, key: str, worker: str | None, host: str | None,
                     slurm_job_id: str | None, start: float | None) -> None:
        """A worker reported the task started (where and when)."""
        self._require_lock()
        with self._lock:
            self._begin()
            self._con.execute("UPDATE tasks SET worker = ?, host = ?, slurm_job_id = ?, "
                              "start = COALESCE(?, start) WHERE stage = ? AND key = ?",
                              (worker, host, slurm_job_id, start, stage, key))

    def record(self, stage: str, key: str, state: str, attempt: int,
               count_failure: bool = False, final: bool = True, **result: Any) -> None:
        """Record the end of an attempt: an ``attempts`` row, and the task's new state.

        ``final=False`` records the attempt but leaves the task ``running`` (it is being
        resubmitted); ``count_failure`` adds one to the task's failure count.
        """
        self._require_lock()
        vals = {f: result.get(f) for f in RESULT_FIELDS}
        if vals["end"] is None:
            vals["end"] = time.time()
        with self._lock:
            self._begin()
            row = self._con.execute("SELECT id FROM tasks WHERE stage = ? AND key = ?",
                                    (stage, key)).fetchone()
            if row is None:
                cur = self._con.execute("INSERT INTO tasks (stage, key, run_id) VALUES (?,?,?)",
                                        (stage, key, self.run_id))
                task_id = cur.lastrowid
            else:
                task_id = row[0]
            self._con.execute(
                "INSERT INTO attempts (task_id, attempt, state, threads, failure_class, message, "
                "worker, host, slurm_job_id, start, end, wall, cpu, peak_rss, run_id, phases) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, attempt, state, *(vals[f] for f in RESULT_FIELDS), self.run_id,
                 _json(result.get("phases"))))
            new_state = state if final else "running"
            sets = ", ".join(f"{f} = COALESCE(?, {f})" for f in RESULT_FIELDS
                             if f not in ("failure_class", "message"))
            self._con.execute(
                f"UPDATE tasks SET state = ?, attempt = ?, failures = failures + ?, "
                f"failure_class = ?, message = ?, {sets} WHERE id = ?",
                (new_state, attempt, int(count_failure), vals["failure_class"],
                 vals["message"],
                 *(vals[f] for f in RESULT_FIELDS if f not in ("failure_class", "message")),
                 task_id))

    def record_many(self, stage: str, rows: Sequence[tuple[str, int, dict[str, Any]]]) -> None:
        """Fast path: many successful attempts ``(key, attempt, result)`` at once."""
        self._require_lock()
        now = time.time()
        with self._lock:
            self._begin()
            self._con.executemany(
                "INSERT INTO attempts (task_id, attempt, state, threads, worker, host, "
                "slurm_job_id, start, end, wall, cpu, peak_rss, run_id, phases) "
                "SELECT id, ?, 'succeeded', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM tasks "
                "WHERE stage = ? AND key = ?",
                ((a, r.get("threads"), r.get("worker"), r.get("host"), r.get("slurm_job_id"),
                  r.get("start"), r.get("end") or now, r.get("wall"), r.get("cpu"),
                  r.get("peak_rss"), self.run_id, _json(r.get("phases")), stage, k)
                 for k, a, r in rows))
            self._con.executemany(
                "UPDATE tasks SET state = 'succeeded', attempt = ?, failure_class = NULL, "
                "message = NULL, threads = COALESCE(?, threads), worker = ?, host = ?, "
                "slurm_job_id = ?, start = COALESCE(?, start), end = ?, wall = ?, cpu = ?, "
                "peak_rss = ? WHERE stage = ? AND key = ?",
                ((a, r.get("threads"), r.get("worker"), r.get("host"), r.get("slurm_job_id"),
                  r.get("start"), r.get("end") or now, r.get("wall"), r.get("cpu"),
                  r.get("peak_rss"), stage, k) for k, a, r in rows))

    def mark_skipped(self, stage: str, keys: Iterable[str]) -> None:
        """Tasks whose product already exists and validates: succeeded, no attempt row."""
        self._require_lock()
        with self._lock:
            self._begin()
            self._con.executemany(
                "UPDATE tasks SET state = 'succeeded', failure_class = NULL, message = NULL "
                "WHERE stage = ? AND key = ? AND state != 'succeeded'",
                ((stage, k) for k in keys))

    def mark_blocked(self, stage: str, why: dict[str, str]) -> None:
        """Tasks that cannot run because an input failed upstream (key -> which): blocked."""
        self._require_lock()
        with self._lock:
            self._begin()
            self._con.executemany(
                "UPDATE tasks SET state = 'blocked', failure_class = NULL, message = ? "
                "WHERE stage = ? AND key = ?", ((m, stage, k) for k, m in why.items()))

    def reset(self, stage: str, failure_class: str | None = None,
              states: Sequence[str] = ("failed",), keys: Sequence[str] | None = None) -> int:
        """Set matching tasks back to pending (failures reset); returns how many."""
        self._require_lock()
        q = (f"UPDATE tasks SET state = 'pending', failures = 0 WHERE stage = ? "
             f"AND state IN ({','.join('?' * len(states))})")
        args: list[Any] = [stage, *states]
        if failure_class is not None:
            q += " AND failure_class = ?"
            args.append(failure_class)
        if keys is not None:
            q += f" AND key IN ({','.join('?' * len(keys))})"
            args.extend(keys)
        with self._lock:
            self._begin()
            n = self._con.execute(q, args).rowcount
            self.commit()
        return n

    # -- queries -----------------------------------------------------------------
    def status_rows(self) -> list[dict[str, Any]]:
        """Aggregate per (stage, state, failure_class): count, core-seconds, wall seconds."""
        q = ("SELECT stage, state, failure_class, COUNT(*) AS n, "
             "TOTAL(wall * threads) AS core_seconds, TOTAL(wall) AS wall_seconds, "
             "COUNT(wall) AS n_timed FROM tasks GROUP BY stage, state, failure_class")
        with self._lock:
            return [dict(r) for r in self._con.execute(q)]

    def attempt_core_seconds(self) -> dict[str, float]:
        """Core-seconds spent per stage over all attempts (failed ones included)."""
        q = ("SELECT t.stage AS stage, TOTAL(a.wall * a.threads) AS cs FROM attempts a "
             "JOIN tasks t ON t.id = a.task_id GROUP BY t.stage")
        with self._lock:
            return {r["stage"]: r["cs"] for r in self._con.execute(q)}

    def tasks(self, stage: str | None = None, state: str | None = None,
              failure_class: str | None = None, limit: int | None = None
              ) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM tasks WHERE 1=1", []
        for col, v in (("stage", stage), ("state", state), ("failure_class", failure_class)):
            if v is not None:
                q += f" AND {col} = ?"
                args.append(v)
        q += " ORDER BY stage, key"
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        with self._lock:
            return [dict(r) for r in self._con.execute(q, args)]

    def find(self, key: str) -> list[dict[str, Any]]:
        """Tasks of any stage with this key."""
        with self._lock:
            return [dict(r) for r in self._con.execute(
                "SELECT * FROM tasks WHERE key = ? ORDER BY stage", (key,))]

    def peak_rss_quantile(self, stage: str, q: float = 0.95, min_samples: int = 5,
                          last: int = 1000) -> float | None:
        """The ``q`` quantile of the peak RSS (bytes) of the stage's last ``last`` succeeded
        attempts, or None with fewer than ``min_samples``."""
        import numpy as np

        with self._lock:
            vals = [r[0] for r in self._con.execute(
                "SELECT a.peak_rss FROM attempts a JOIN tasks t ON t.id = a.task_id "
                "WHERE t.stage = ? AND a.state = 'succeeded' AND a.peak_rss > 0 "
                "ORDER BY a.id DESC LIMIT ?", (stage, last))]
        if len(vals) < min_samples:
            return None
        return float(np.quantile(vals, q))

    def all_attempts(self) -> list[dict[str, Any]]:
        """Every recorded attempt, oldest first, with its task's stage and key."""
        q = ("SELECT t.stage AS stage, t.key AS key, a.attempt, a.state, a.failure_class, "
             "a.threads, a.worker, a.host, a.start, a.end, a.wall, a.run_id FROM attempts a "
             "JOIN tasks t ON t.id = a.task_id ORDER BY a.id")
        with self._lock:
            return [dict(r) for r in self._con.execute(q)]

    def attempts(self, stage: str, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._con.execute(
                "SELECT a.* FROM attempts a JOIN tasks t ON t.id = a.task_id "
                "WHERE t.stage = ? AND t.key = ? ORDER BY a.id", (stage, key))]

    def phase_rows(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Attempts that reported phases: stage, key, attempt, state, wall, cpu, run_id and
        ``phases`` (the decoded list); [] for a ledger older than the ``phases`` column."""
        with self._lock:
            if "phases" not in _columns(self._con, "attempts"):
                return []
            q = ("SELECT t.stage AS stage, t.key AS key, a.attempt AS attempt, a.state AS state, "
                 "a.wall AS wall, a.cpu AS cpu, a.run_id AS run_id, a.phases AS phases "
                 "FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE a.phases IS NOT NULL")
            args: list[Any] = []
            if stage is not None:
                q += " AND t.stage = ?"
                args.append(stage)
            rows = [dict(r) for r in self._con.execute(q + " ORDER BY a.id", args)]
        out = []
        for r in rows:
            try:
                r["phases"] = json.loads(r["phases"])
            except ValueError:
                continue
            out.append(r)
        return out

    def close(self) -> None:
        if self._locked:
            self.release_lock()
        with self._lock:
            self.commit()
            self._con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid())

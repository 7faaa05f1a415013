"""The ledger: lock (refusal, stale takeover), attempts, reset, fast status."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from lsdask.ledger import Ledger, LedgerLocked
from lsdask.release import status_frame


def _hold_lock(path, ready, hold: float) -> None:
    led = Ledger(path)
    led.acquire()
    ready.set()
    time.sleep(hold)


def test_second_driver_refused_then_stale_lock_taken_over(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(path, ready, 60))
    p.start()
    try:
        assert ready.wait(30)
        led = Ledger(path)
        with pytest.raises(LedgerLocked, match=f"pid {p.pid}"):
            led.acquire()
        os.kill(p.pid, signal.SIGKILL)  # the first driver dies without releasing
        p.join(10)
        led.acquire()  # dead PID on this host: stale, taken over
        assert led.lock_info().pid == os.getpid()
        led.close()
    finally:
        if p.is_alive():
            p.kill()


def test_old_heartbeat_is_stale(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.acquire(heartbeat=False)
    # pretend another host holds it with a heartbeat 10 minutes old
    led._con.execute("UPDATE lock SET pid = 1, host = 'elsewhere', heartbeat = ?",
                     (time.time() - 600,))
    other = Ledger(tmp_path / "l.sqlite")
    other.acquire(heartbeat=False)
    assert other.lock_info().host != "elsewhere"
    # a fresh heartbeat from another host is respected
    other._con.execute("UPDATE lock SET pid = 1, host = 'elsewhere', heartbeat = ?",
                       (time.time(),))
    third = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(LedgerLocked, match="elsewhere"):
        third.acquire(heartbeat=False)


def test_attempts_reset_and_status(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(Exception, match="lock"):
        led.ensure_tasks("runbrick", ["a"])
    led.acquire(heartbeat=False)
    run = led.start_run("abc", ["runbrick"])
    led.ensure_tasks("runbrick", ["a", "b", "c"])
    led.mark_running([("runbrick", k, 1, 4) for k in "abc"])
    led.record("runbrick", "a", "failed", 1, count_failure=True, final=False,
               failure_class="oom", threads=4, wall=10.0)
    led.mark_running([("runbrick", "a", 2, 2)])
    led.record_many("runbrick", [("a", 2, {"threads": 2, "wall": 5.0, "host": "h"}),
                                 ("b", 1, {"threads": 4, "wall": 3.0})])
    led.record("runbrick", "c", "failed", 1, count_failure=True, failure_class="input",
               message="bad file", threads=4, wall=1.0)
    led.commit()
    a = led.get("runbrick", "a")
    assert a["state"] == "succeeded" and a["attempt"] == 2 and a["threads"] == 2
    assert a["failures"] == 1 and a["run_id"] == run
    hist = led.attempts("runbrick", "a")
    assert [(h["state"], h["failure_class"], h["threads"]) for h in hist] == [
        ("failed", "oom", 4), ("succeeded", None, 2)]
    df = status_frame(led.status_rows(), led.attempt_core_seconds())
    assert df.loc["runbrick", "succeeded"] == 2 and df.loc["runbrick", "failed"] == 1
    assert df.loc["runbrick", "failed:input"] == 1
    assert df.loc["runbrick", "core_hours"] == pytest.approx((10 + 12 + 4) / 3600)
    assert df.loc["runbrick", "core_hours_all_attempts"] == pytest.approx(
        (40 + 10 + 12 + 4) / 3600)
    assert led.reset("runbrick", "oom") == 0
    assert led.reset("runbrick", "input") == 1
    assert led.get("runbrick", "c")["state"] == "pending"
    led.end_run("ok")
    led.close()
    ro = Ledger.open_readonly(tmp_path / "l.sqlite")
    assert ro.runs()[0]["outcome"] == "ok"
    assert ro.lock_info() is None


def test_status_on_many_rows_uses_aggregate_sql(tmp_path):
    """10^5 rows here (the benchmark does 10^6): status is one GROUP BY, not a Python loop."""
    led = Ledger(tmp_path / "l.sqlite")
    led.acquire(heartbeat=False)
    n = 100_000
    led._begin()
    led._con.executemany(
        "INSERT INTO tasks (stage, key, state, failure_class, wall, threads) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (("runbrick", f"b{i}", "failed" if i % 10 == 0 else "succeeded",
          "oom" if i % 10 == 0 else None, 1.0, 2) for i in range(n)))
    led.commit()
    df = status_frame(led.status_rows())
    assert df.loc["runbrick", "succeeded"] == n - n // 10
    assert df.loc["runbrick", "failed:oom"] == n // 10
    plan = led._con.execute("EXPLAIN QUERY PLAN SELECT stage, state, failure_class, COUNT(*), "
                            "TOTAL(wall*threads) FROM tasks GROUP BY stage, state, "
                            "failure_class").fetchall()
    assert any("COVERING INDEX" in str(tuple(r)) for r in plan)


_READER = """
import contextlib, io, json, sys, time
from lsdask.cli import main
cfg, duration = sys.argv[1], float(sys.argv[2])
n = errors = 0
worst = 0.0
last = ""
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    warm = main(["status", cfg])  # imports; then the timed reads
until = time.time() + duration
while time.time() < until:
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["status", cfg])
    worst = max(worst, time.perf_counter() - t0)
    n += 1
    errors += rc != 0
    last = out.getvalue()
print(json.dumps({"reads": n, "errors": errors + (warm != 0), "worst": worst, "last": last}))
"""


def test_status_readers_in_other_processes_while_a_run_writes(tmp_path):
    """The ledger is in rollback-journal mode (no -wal/-shm: safe on Lustre/NFS); three
    `lsdask status` reader processes loop while the driver records tasks; every read
    succeeds, the writer is never refused, and the database is intact afterwards."""
    import json
    import sqlite3
    import subprocess
    import sys

    from lsdask.processors.testing import write_config
    from lsdask.release import Release

    cfg = write_config(tmp_path, bands=("g",))
    path = Release.from_config(cfg).layout.ledger
    led = Ledger(path)
    led.acquire()
    led.start_run("hash", ["runbrick"])
    led.record("runbrick", "b00000", "succeeded", 1, wall=1.0, peak_rss=1e8)
    led.commit()
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(cfg), "6"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    written, worst_commit = 1, 0.0
    try:
        deadline = time.time() + 300
        while any(p.poll() is None for p in readers) and time.time() < deadline:
            for _ in range(20):
                led.record("runbrick", f"b{written:05d}", "succeeded", 1, wall=1.0,
                           peak_rss=1e8)
                written += 1
            t0 = time.perf_counter()
            led.commit()
            worst_commit = max(worst_commit, time.perf_counter() - t0)
            time.sleep(0.01)
        outs = [p.communicate(timeout=120) for p in readers]
    finally:
        for p in readers:
            p.kill()
        led.end_run("ok")
        led.close()
    res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    reads = sum(r["reads"] for r in res)
    print(f"ledger: {written} tasks written (worst commit {worst_commit * 1000:.0f} ms) while "
          f"3 reader processes ran {reads} `lsdask status` (worst "
          f"{max(r['worst'] for r in res) * 1000:.0f} ms)")
    assert all(r["errors"] == 0 for r in res), res
    assert all(r["reads"] >= 2 for r in res), res
    assert all("runbrick" in r["last"] for r in res)
    assert not path.with_name(path.name + "-wal").exists()
    assert not path.with_name(path.name + "-shm").exists()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM tasks WHERE state='succeeded'").fetchone()[0] \
        == written
    con.close()

"""Ledger: ``status`` (per-stage aggregates) on 10^6 task rows; target < 1 s.

Baseline in the same run: the same aggregation done in Python over all rows
(``SELECT stage, state, ... FROM tasks`` and a dict count), i.e. what an index-less
status would cost.

    .venv/bin/python benchmarks/bench_ledger.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from lsdask.ledger import Ledger
from lsdask.release import status_frame

STAGES = ("calibs", "zeropoints", "runbrick")


def fill(led: Ledger, n: int) -> None:
    led._begin()
    led._con.executemany(
        "INSERT INTO tasks (stage, key, state, failure_class, wall, threads, attempt) "
        "VALUES (?, ?, ?, ?, ?, ?, 1)",
        ((STAGES[i % 3], f"k{i}",
          "failed" if i % 97 == 0 else ("pending" if i % 13 == 0 else "succeeded"),
          ("oom", "input", "worker-lost")[i % 3] if i % 97 == 0 else None,
          float(i % 1000), 1 + i % 8) for i in range(n)))
    led.commit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.sqlite"
        led = Ledger(path)
        led.acquire(heartbeat=False)
        t0 = time.perf_counter()
        fill(led, args.rows)
        t_fill = time.perf_counter() - t0
        led.close()
        ro = Ledger.open_readonly(path)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            df = status_frame(ro.status_rows())
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c = Counter()
        for row in ro._con.execute("SELECT stage, state, failure_class, wall, threads "
                                   "FROM tasks"):
            c[(row[0], row[1], row[2])] += 1
        t_py = time.perf_counter() - t0
        assert int(df["succeeded"].sum() + df["failed"].sum() + df["pending"].sum()) == args.rows
        print(f"rows {args.rows:,}  fill {t_fill:.1f} s")
        print(f"status(): best {min(times):.3f} s, first {times[0]:.3f} s "
              f"(target < 1 s: {'PASS' if max(times) < 1 else 'FAIL'})")
        print(f"baseline Python aggregation over rows: {t_py:.3f} s "
              f"(status is {t_py / min(times):.1f}x faster)")
        print(df[["pending", "succeeded", "failed", "core_hours"]].to_string())


if __name__ == "__main__":
    main()

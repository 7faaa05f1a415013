"""Orchestration overhead: 20,000 no-op tasks through runner + ledger on a 2-worker
LocalCluster, against a plain ``client.map`` + ``as_completed`` baseline in the same run.
Target >= 1,000 tasks/s; the driver's memory must stay flat (sampled every 2,000 tasks).

No-op tasks run in the worker thread (``child=False``): this measures the runner, not
process start-up.

    .venv/bin/python benchmarks/bench_runner.py [--tasks 20000] [--window 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import psutil
from distributed import Client, as_completed

from lsdask.jobqueue import make_cluster
from lsdask.ledger import Ledger
from lsdask.runner import Runner, Task
from lsdask.task import TaskSpec, noop


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def baseline(client, n: int) -> float:
    t0 = time.perf_counter()
    futures = client.map(noop, range(n), key=[f"base-{i}" for i in range(n)], pure=False)
    for _ in as_completed(futures):
        pass
    del futures
    return time.perf_counter() - t0


def through_runner(client, n: int, window: int, path: str) -> tuple[float, list[float]]:
    led = Ledger(path)
    led.acquire()
    led.start_run("bench", ["noop"])
    tasks = [Task(TaskSpec("noop", f"k{i}", "lsdask.task:noop", child=False,
                           report_start=False)) for i in range(n)]
    samples: list[float] = []
    count = [0]

    def on_done(task):
        count[0] += 1
        if count[0] % 2000 == 0:
            samples.append(rss_mb())

    t0 = time.perf_counter()
    s = Runner(client, led, window=window, progress=False, echo=lambda m: None).run(
        tasks, on_done=on_done)
    dt = time.perf_counter() - t0
    assert s.succeeded["noop"] == n, s
    with led._lock:
        got = led._con.execute("SELECT COUNT(*) FROM tasks WHERE state = 'succeeded'").fetchone()
    assert got[0] == n
    led.close()
    return dt, samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=1000)
    args = ap.parse_args()
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1)
    client = Client(cluster)
    try:
        client.submit(noop).result()  # warm up
        with tempfile.TemporaryDirectory() as d:
            t_base = baseline(client, args.tasks)
            t_run, samples = through_runner(client, args.tasks, args.window,
                                            os.path.join(d, "ledger.sqlite"))
        rate, base_rate = args.tasks / t_run, args.tasks / t_base
        print(f"{args.tasks:,} no-op tasks, 2 workers, window {args.window}")
        print(f"baseline client.map + as_completed: {t_base:.1f} s = {base_rate:,.0f} tasks/s")
        print(f"runner + ledger:                    {t_run:.1f} s = {rate:,.0f} tasks/s "
              f"({rate / base_rate:.2f}x baseline; target >= 1,000 tasks/s: "
              f"{'PASS' if rate >= 1000 else 'FAIL'})")
        if samples:
            q = len(samples) // 4
            growth = samples[-1] - samples[q]
            print(f"driver RSS every 2,000 tasks (MiB): {' '.join(f'{x:.0f}' for x in samples)}"
                  f" -> growth after the first quarter {growth:+.0f} MiB")
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()

"""The runner on a real LocalCluster with the testing processor: the full task chain,
reruns that do nothing, child processes (timeout, log files), oom retry with half threads."""

from __future__ import annotations

import math
import re

import pytest
from distributed import Client

from lsdask.jobqueue import make_cluster
from lsdask.ledger import Ledger
from lsdask.processors.testing import completions, make_survey, write_config
from lsdask.progress import format_eta
from lsdask.release import Release
from lsdask.runner import Runner, Task
from lsdask.task import TaskSpec

TASK_STAGES = ["images", "calibs", "zeropoints", "ccds", "bricks", "runbrick"]


@pytest.fixture
def survey(tmp_path, monkeypatch):
    """A tiny survey with the testing processor; completions counted in a file."""
    cfg = write_config(tmp_path, bands=("g", "r"))
    release = Release.from_config(cfg)
    make_survey(release.layout, nexp=3, bands=("g", "r"))
    comp = tmp_path / "completions.txt"
    monkeypatch.setenv("LSDASK_TESTING_COMPLETIONS", str(comp))
    return release, comp


@pytest.fixture
def client(survey):
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1)
    with Client(cluster) as c:
        yield c
    cluster.close()


def attempts_count(release) -> int:
    with release.ledger() as led:
        return led._con.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]


def test_chain_then_rerun_does_nothing(survey, client):
    release, comp = survey
    res = release.run(client, stages=TASK_STAGES, progress=False)
    assert res.ok, res.summary.failed
    s = res.summary
    assert s.succeeded["calibs"] == 6 and s.succeeded["zeropoints"] == 6
    bricks = release.layout.bricklist.read_text().split()
    assert len(bricks) >= 4
    done = [k for what, k in completions(comp) if what == "runbrick"]
    assert sorted(done) == sorted(set(done))  # none twice
    assert set(bricks) <= set(done)
    st = release.status()
    assert st.loc["runbrick", "failed"] == 0 and st.loc["runbrick", "pending"] == 0
    assert st.loc["runbrick", "running"] == 0
    # where it ran: worker, host, timings, peak RSS of the child process
    with release.ledger() as led:
        row = led.get("runbrick", bricks[0])
        assert row["worker"].startswith("tcp://") and row["wall"] > 0 and row["peak_rss"] > 1e6
        assert led.runs()[-1]["outcome"] == "ok"
    log = release.layout.log("runbrick", bricks[0]).read_text()
    assert "=== lsdask runbrick" in log and "=== succeeded" in log
    # brick tasks depended on zeropoint tasks: none started before its exposures' zeropoints
    n_attempts = attempts_count(release)
    n_lines = len(completions(comp))
    res2 = release.run(client, stages=TASK_STAGES, progress=False)
    assert res2.summary.total("submitted") == 0
    assert attempts_count(release) == n_attempts
    assert len(completions(comp)) == n_lines
    assert all(not p.todo for p in res2.plans.values())


def test_brick_waits_for_its_zeropoints(survey, client, monkeypatch):
    """Real graph dependencies: each brick starts after the zeropoints of its exposures."""
    release, comp = survey
    res = release.run(client, stages=["images", "calibs", "zeropoints", "runbrick"],
                      progress=False)
    assert res.ok
    import numpy as np  # noqa: F401

    lines = [ln.split() for ln in comp.read_text().splitlines()]
    when = {(w, k): float(t) for w, k, _h, _p, t in lines}
    from lsdask.graphs.images import image_key, images_in_region, run_images

    _, brick_images = images_in_region(run_images(release.config), release.config.region_box())
    checked = 0
    for b, imgs in brick_images.items():
        if ("runbrick", b) not in when:
            continue
        zpts = [when[("zeropoints", image_key(n))] for n in imgs]
        assert when[("runbrick", b)] > max(zpts)
        checked += 1
    assert checked >= 4


def test_child_timeout_and_error_classes(tmp_path, client):
    led = Ledger(tmp_path / "l.sqlite")
    led.acquire(heartbeat=False)
    led.start_run("x", ["t"])
    tasks = [
        Task(TaskSpec("t", "slow", "lsdask.task:sleep", {"seconds": 30}, timeout=2,
                      log=str(tmp_path / "slow.log"))),
        Task(TaskSpec("t", "bad", "lsdask.task:sleep", {"seconds": "x"},
                      log=str(tmp_path / "bad.log"))),
        Task(TaskSpec("t", "ok", "lsdask.task:sleep", {"seconds": 0.1})),
    ]
    s = Runner(client, led, progress=False).run(tasks)
    assert s.succeeded["t"] == 1 and s.failed["t"] == 2
    slow = led.get("t", "slow")
    assert slow["failure_class"] == "timeout" and slow["attempt"] == 1
    assert 2 <= slow["wall"] < 20
    bad = led.get("t", "bad")
    assert bad["failure_class"] == "error" and "TypeError" in bad["message"]
    assert "Traceback" in (tmp_path / "bad.log").read_text()
    led.close()


def test_oom_retried_with_half_threads(tmp_path, monkeypatch):
    """A brick over its memory limit is killed and retried with 4 -> 2 -> 1 threads."""
    cfg = write_config(tmp_path, bands=("g",), threads=4, memory_limit_gb=0.4)
    release = Release.from_config(cfg)
    make_survey(release.layout, nexp=2, bands=("g",))
    comp = tmp_path / "completions.txt"
    monkeypatch.setenv("LSDASK_TESTING_COMPLETIONS", str(comp))
    from lsdask.graphs.images import images_in_region, run_images

    _, brick_images = images_in_region(run_images(release.config), release.config.region_box())
    victim = sorted(brick_images)[0]
    monkeypatch.setenv("LSDASK_TESTING_MEMORY", f"{victim}=150")  # 150 MiB per thread
    cluster = make_cluster("local", n_workers=1, threads_per_worker=4)
    try:
        with Client(cluster) as c:
            res = release.run(c, stages=["images", "calibs", "zeropoints", "runbrick"],
                              progress=False)
    finally:
        cluster.close()
    assert res.ok
    with release.ledger() as led:
        hist = led.attempts("runbrick", victim)
        others = [r for r in led.tasks("runbrick") if r["key"] != victim]
    assert [(h["state"], h["failure_class"], h["threads"]) for h in hist] == [
        ("failed", "oom", 4), ("failed", "oom", 2), ("succeeded", None, 1)]
    assert "over the limit" in hist[0]["message"]
    assert all(r["threads"] == 4 and r["attempt"] == 1 for r in others)
    done = [k for w, k in completions(comp) if w == "runbrick"]
    assert done.count(victim) == 1 and len(done) == len(set(done))


def test_status_lines_and_ticks_without_a_terminal(tmp_path, client, capsys):
    """No terminal: a one-line status (counts, rate, ETA, failures) every ``status_every``
    seconds in the driver's log; ``tick`` is called while tasks run, the ledger committed."""
    led = Ledger(tmp_path / "l.sqlite")
    led.acquire(heartbeat=False)
    led.start_run("x", ["t"])
    seen = []

    def tick():
        with Ledger.open_readonly(tmp_path / "l.sqlite") as ro:
            seen.append(sum(1 for _ in ro.tasks("t", "succeeded")))

    tasks = [Task(TaskSpec("t", f"k{i}", "lsdask.task:sleep", {"seconds": 0.5})) for i in range(6)]
    tasks.append(Task(TaskSpec("t", "bad", "lsdask.task:sleep", {"seconds": "x"})))
    s = Runner(client, led, progress="log", desc="rel", status_every=0.01,
               tick=(0.01, tick)).run(tasks)
    led.close()
    assert s.succeeded["t"] == 6 and s.failed["t"] == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rel: ")]
    assert lines and lines[-1].startswith("rel: 7/7 tasks (100 %)")
    assert "all done; failed 1" in lines[-1] and "/min" in lines[-1]
    assert len(lines) >= 2 and all(" ETA " in ln for ln in lines[:-1]), lines
    # a run of seconds: the ETA in minutes ("ETA <1 min"), never "ETA 0.0 h"
    etas = [re.search(r"ETA ([^;]*)", ln).group(1) for ln in lines[:-1]]
    assert "<1 min" in etas and all(e in ("-", "<1 min") for e in etas), etas
    assert seen and seen == sorted(seen) and seen[-1] >= 1  # the committed ledger, growing


@pytest.mark.parametrize("hours, text", [
    (0.2, "12 min"), (1 / 120, "<1 min"), (59 / 60, "59 min"), (59.7 / 60, "1.0 h"),
    (2.4, "2.4 h"), (0.0, "0 min"), (math.nan, "-"), (None, "-")])
def test_eta_in_minutes_below_an_hour(hours, text):
    assert format_eta(hours) == text


def test_no_sizeof_warning_for_deep_profiles(tmp_path, capfd):
    """At a run's end the performance report asks each worker for its profile; runbrick's deep
    call stacks make that message too deeply nested for distributed's sizeof, which warned
    ("Sizeof calculation ... failed. Defaulting to -1 B") once per worker in every demo. The
    runner filters exactly that warning, in the workers and the driver; nothing else."""
    import logging
    import time

    def deep(n: int) -> int:  # a call stack n frames deep for a second (defined here: the
        if n == 0:            # workers get it by value)
            t0 = time.time()
            while time.time() - t0 < 1.0:
                pass
            return 0
        return deep(n - 1) + 1

    def filtered() -> bool:
        from lsdask.runner import DeepMessageSizeofFilter

        return any(isinstance(f, DeepMessageSizeofFilter)
                   for f in logging.getLogger("distributed.sizeof").filters)

    cluster = make_cluster("local", n_workers=1, threads_per_worker=1)
    try:
        with Client(cluster) as c:
            assert c.submit(deep, 90, pure=False).result() == 90
            c.profile()
            before = capfd.readouterr().err
            led = Ledger(tmp_path / "l.sqlite")
            led.acquire(heartbeat=False)
            led.start_run("x", ["t"])
            tasks = [Task(TaskSpec("t", "k", "lsdask.task:sleep", {"seconds": 0.1}))]
            assert Runner(c, led, progress=False).run(tasks).succeeded["t"] == 1
            led.close()
            assert all(c.run(filtered).values()) and filtered()
            assert c.submit(deep, 90, pure=False).result() == 90
            c.profile()
            after = capfd.readouterr().err
    finally:
        cluster.close()
    assert "Sizeof calculation for object of type 'dict' failed" in before, before[-2000:]
    assert "Sizeof calculation" not in after, after[-2000:]
    rec = logging.LogRecord("distributed.sizeof", logging.WARNING, "", 0,
                            "Sizeof calculation for object of type 'X' failed. Defaulting to "
                            "1 MiB", None, None)
    assert logging.getLogger("distributed.sizeof").filter(rec)  # other sizeof warnings pass

"""Faults with real processes: a worker SIGKILLed mid-brick, the driver SIGKILLed mid-run
(and a second driver refused meanwhile), a truncated image. After each: every brick done,
none completed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import psutil
import pytest
from distributed import Client

from lsdask.jobqueue import make_cluster
from lsdask.ledger import LedgerLocked
from lsdask.processors.testing import (
    check_all_bricks_once,
    completions,
    make_survey,
    task_processes,
    wait_for,
    write_config,
)
from lsdask.release import Release

STAGES = ["images", "calibs", "zeropoints", "runbrick"]


@pytest.fixture
def release(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, bands=("g",))
    rel = Release.from_config(cfg)
    make_survey(rel.layout, nexp=3, bands=("g",))
    comp = tmp_path / "completions.txt"
    monkeypatch.setenv("LSDASK_TESTING_COMPLETIONS", str(comp))
    rel.completions = comp
    return rel


def test_worker_sigkill_mid_brick(release, monkeypatch):
    monkeypatch.setenv("LSDASK_TESTING_SLEEP", "3")
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1)
    killed = {}

    def killer():
        # a brick past its checkpoint: kill the worker process that runs it
        def victim():
            for p in mine(release, "runbrick-"):
                brick = p.environ()["LSDASK_TASK_KEY"].split("-", 1)[1]
                if release.layout.checkpoint(brick).exists():
                    return p, brick
            return None
        p, brick = wait_for(victim)
        worker = psutil.Process(int(p.environ()["LSDASK_TASK_PARENT"]))
        killed["brick"], killed["worker"] = brick, worker.pid
        worker.send_signal(signal.SIGKILL)

    try:
        with Client(cluster) as client:
            t = threading.Thread(target=killer, daemon=True)
            t.start()
            res = release.run(client, stages=STAGES, progress=False)
            t.join(5)
    finally:
        cluster.close()
    assert killed, "no worker was killed"
    assert res.ok
    check_all_bricks_once(release)
    with release.ledger() as led:
        hist = led.attempts("runbrick", killed["brick"])
    assert [(h["state"], h["failure_class"]) for h in hist] == [
        ("failed", "worker-lost"), ("succeeded", None)]
    assert hist[0]["start"] < hist[0]["end"]  # the lost attempt's span (the report's timeline)
    # the rerun resumed from the checkpoint it had written before the kill
    assert res.summary.results[("runbrick", killed["brick"])]["summary"]["resumed"] is True


def mine(release, prefix: str = "") -> list:
    """Task processes of this test's release (others may run on the machine meanwhile)."""
    return task_processes(prefix, {"LSDASK_TESTING_COMPLETIONS": str(release.completions)})


def _run_cli(cfg, env):
    return subprocess.Popen([sys.executable, "-m", "lsdask", "run", str(cfg), "--stages",
                             *STAGES, "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_driver_sigkill_then_rerun_and_second_driver_refused(release):
    env = dict(os.environ, LSDASK_TESTING_SLEEP="2")
    driver = _run_cli(release.config.path, env)
    try:
        # wait until some bricks are done and others running
        wait_for(lambda: len([w for w, _ in completions(release.completions)
                              if w == "runbrick"]) >= 1 and mine(release, "runbrick-"),
                 timeout=180)
        # a second driver on the same release is refused while the first is alive
        with pytest.raises(LedgerLocked, match=f"pid {driver.pid}"):
            release.run(client=None, stages=STAGES, progress=False)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    before = [k for w, k in completions(release.completions) if w == "runbrick"]
    wait_for(lambda: not mine(release), timeout=60)  # its workers and tasks died with it
    with release.ledger() as led:
        assert led.runs()[-1]["outcome"] is None  # killed: never ended
        left = [t["key"] for t in led.tasks("runbrick", "running")]
        assert left  # left 'running' by the dead driver
    rerun = subprocess.run([sys.executable, "-m", "lsdask", "run", str(release.config.path),
                            "--stages", *STAGES, "--no-progress"], env=os.environ.copy(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    done = check_all_bricks_once(release)
    assert set(before) < set(done)
    with release.ledger() as led:
        assert not led.tasks(state="running") and not led.tasks(state="failed")
        # bricks finished before the kill were not run again
        for b in before:
            assert len(led.attempts("runbrick", b)) <= 1
        # what the dead driver left running: an abandoned attempt each, then done (or skipped)
        for b in left:
            hist = led.attempts("runbrick", b)
            assert hist[0]["state"] == "abandoned" and hist[0]["start"] <= hist[0]["end"], hist
            assert [h["state"] for h in hist[1:]] in ([], ["succeeded"]), hist
        assert led.runs()[-1]["outcome"] == "ok" and led.lock_info() is None


def test_truncated_image_fails_only_its_own_tasks(release):
    from lsdask.graphs.images import discover, image_key

    names = discover(release.layout, ["decam"])
    bad = names[1]
    path = release.layout.image(bad)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 3)  # inside the first CCD
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1)
    try:
        with Client(cluster) as client:
            res = release.run(client, stages=STAGES + ["ccds", "bricks"], progress=False)
    finally:
        cluster.close()
    assert not res.ok
    with release.ledger() as led:
        failed = {(r["stage"], r["key"]): r for r in led.tasks(state="failed")}
        assert set(failed) == {("calibs", image_key(bad))}
        # its zeropoints wait for the calibrations: blocked, not run
        assert [r["key"] for r in led.tasks("zeropoints", "blocked")] == [image_key(bad)]
        assert {r["failure_class"] for r in failed.values()} == {"input"}
        assert str(path) in failed[("calibs", image_key(bad))]["message"]
        assert all(r["attempt"] == 1 for r in failed.values())  # input errors: no retry
        assert led.tasks("runbrick", "succeeded")
    done = [k for w, k in completions(release.completions) if w == "runbrick"]
    assert done and len(done) == len(set(done))
    st = release.status()
    assert st.loc["calibs", "failed:input"] == 1 and st.loc["runbrick", "failed"] == 0
    # the operator resets the input failures; the next run retries them (and fails again)
    from lsdask.cli import main

    cfg = str(release.config.path)
    assert main(["retry", cfg, "--stage", "calibs", "--class", "input"]) == 0
    with release.ledger() as led:
        assert led.get("calibs", image_key(bad))["state"] == "pending"
        assert led.get("zeropoints", image_key(bad))["state"] == "blocked"
    assert main(["tasks", cfg, "--state", "failed", "--keys"]) == 0


def test_walltime_retirement_is_not_a_failure(release, monkeypatch):
    """Workers with a 5 s lifetime keep retiring under 3 s bricks: the bricks move (and resume
    from their checkpoints) without counting failures, each completed once."""
    from lsdask.jobqueue import adapt

    monkeypatch.setenv("LSDASK_TESTING_SLEEP", "3")
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1, lifetime="5s")
    try:
        adapt(cluster, 2, 2)  # replaces retired workers
        with Client(cluster) as client:
            res = release.run(client, stages=STAGES, progress=False)
    finally:
        cluster.close()
    assert res.ok, res.summary.failed
    check_all_bricks_once(release)
    with release.ledger() as led:
        classes = [r[0] for r in led._con.execute(
            "SELECT a.failure_class FROM attempts a WHERE a.state = 'failed'")]
        assert "walltime" in classes and "worker-lost" not in classes
        assert all(r["failures"] == 0 for r in led.tasks("runbrick"))

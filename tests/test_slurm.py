"""On the local Slurm (lsdask/jobqueue/local-slurm.sh start): SLURMCluster + adapt runs the
runbrick stage; the ledger records Slurm job ids; scancel of a worker's job mid-brick ->
the brick is redone elsewhere and the release completes."""

from __future__ import annotations

import subprocess
import threading

import pytest
from distributed import Client

from lsdask.jobqueue import adapt, make_cluster
from lsdask.processors.testing import (
    check_all_bricks_once,
    completions,
    make_survey,
    task_processes,
    wait_for,
    write_config,
)
from lsdask.release import Release

pytestmark = pytest.mark.slurm

@pytest.fixture
def release(tmp_path, monkeypatch, slurm):
    cfg = write_config(tmp_path, bands=("g",), profile="local-slurm")
    rel = Release.from_config(cfg)
    make_survey(rel.layout, nexp=3, bands=("g",))
    comp = tmp_path / "completions.txt"
    monkeypatch.setenv("LSDASK_TESTING_COMPLETIONS", str(comp))
    rel.completions = comp
    return rel


def test_slurm_adapt_runbrick_and_scancel(release, tmp_path, monkeypatch):
    # zeropoints first (also on Slurm), then the runbrick stage with a job cancelled mid-brick
    monkeypatch.setenv("LSDASK_TESTING_SLEEP", "4")
    cluster = make_cluster("local-slurm", log_directory=tmp_path / "jobs")
    cancelled = {}

    def canceller():
        def victim():
            for p in task_processes():
                job = p.environ().get("SLURM_JOB_ID")
                if job:
                    return p.environ()["LSDASK_TASK_KEY"].split("-", 1)[1], job
            return None
        brick, job = wait_for(victim, timeout=180)
        cancelled["brick"], cancelled["job"] = brick, job
        subprocess.run(["scancel", job], check=True)

    try:
        adapt(cluster, 0, 2)
        with Client(cluster) as client:
            res1 = release.run(client, stages=["images", "calibs", "zeropoints"],
                               progress=False)
            assert res1.ok
            t = threading.Thread(target=canceller, daemon=True)
            t.start()
            res = release.run(client, stages=["images", "runbrick"], progress=False)
            t.join(5)
    finally:
        cluster.close()
    assert cancelled, "no Slurm job was cancelled"
    assert res.ok, res.summary.failed
    check_all_bricks_once(release)
    with release.ledger() as led:
        rows = led.tasks("runbrick", "succeeded")
        assert rows and all(r["slurm_job_id"] for r in rows)
        hist = led.attempts("runbrick", cancelled["brick"])
        zrows = led.tasks("zeropoints", "succeeded")
        assert all(r["slurm_job_id"] for r in zrows)
    lost = [h for h in hist if h["state"] == "failed"]
    assert lost and lost[0]["failure_class"] in ("worker-lost", "walltime")
    assert hist[-1]["state"] == "succeeded"
    assert hist[-1]["slurm_job_id"] != cancelled["job"]
    assert len([k for w, k in completions(release.completions)
                if w == "runbrick" and k == cancelled["brick"]]) == 1


def test_launch_submits_the_driver_as_a_batch_job(release, tmp_path, capsys):
    """`lsdask launch` writes an sbatch script running `lsdask run`, submits it, prints the
    job id; the driver job runs the stages on Slurm workers (TLS) and exits 0."""
    import time

    from lsdask.cli import main

    cfg = release.config.path
    assert main(["launch", str(cfg), "--walltime", "00:20:00", "--stages", "images", "calibs"]
                ) == 0
    job = capsys.readouterr().out.strip()
    assert job.isdigit()
    script = next(release.layout.dask_logs_dir.glob("driver-*.sbatch")).read_text()
    assert "#SBATCH -J lsdask-t-driver" in script and "#SBATCH -t 00:20:00" in script
    assert "exec " in script and " run " in script and "--stages images calibs" in script
    deadline = time.time() + 240
    state = ""
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if not state:
            break
        time.sleep(1)
    log = release.layout.dask_logs_dir / f"driver-{job}.out"
    text = log.read_text() if log.exists() else ""
    assert not state, f"driver job {job} still {state}"
    assert "lsdask run: ok" in text, text[-2000:]
    assert "dashboard http://127.0.0.1:" in text
    with release.ledger() as led:
        rows = led.tasks("calibs", "succeeded")
        assert rows and all(r["slurm_job_id"] and r["slurm_job_id"] != job for r in rows)


def test_memory_packing_on_slurm_workers(tmp_path, monkeypatch, slurm):
    """A 2-core 1 GB Slurm worker (TLS) runs 600 MB bricks one at a time."""
    cfg = write_config(tmp_path, bands=("g",), profile="local-slurm")
    cfg.write_text(cfg.read_text() + 'task_memory = { runbrick = "600MB" }\n')
    rel = Release.from_config(cfg)
    make_survey(rel.layout, nexp=3, bands=("g",))
    monkeypatch.setenv("LSDASK_TESTING_SLEEP", "1")
    cluster = make_cluster("local-slurm", log_directory=tmp_path / "jobs",
                           options={"cores": 2, "memory": "1GB"})
    try:
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            res = [w["resources"] for w in client.scheduler_info()["workers"].values()]
            assert res == [{"cores": 2, "memory": 1e9}]
            out = rel.run(client, stages=["images", "calibs", "zeropoints", "runbrick"],
                          progress=False)
            assert out.ok, out.summary.failed
    finally:
        cluster.close()
    with rel.ledger() as led:
        rows = led._con.execute(
            "SELECT a.start, a.end FROM attempts a JOIN tasks t ON t.id = a.task_id "
            "WHERE t.stage = 'runbrick' AND a.state = 'succeeded' ORDER BY a.start").fetchall()
    assert len(rows) >= 3
    assert all(s2 >= e1 for (_, e1), (s2, _) in zip(rows, rows[1:], strict=False))

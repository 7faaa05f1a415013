"""Memory as a Dask resource: workers advertise ``memory``, tasks ask for it (config and the
ledger's observed p95 peak RSS x 1.2), so bricks that do not fit together are not co-scheduled."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client

from lsdask.jobqueue import make_cluster
from lsdask.ledger import Ledger
from lsdask.processors.testing import make_survey, write_config
from lsdask.release import Release, memory_requests


def test_requests_from_config_and_observed_peak(tmp_path):
    cfg = write_config(tmp_path, bands=("g",))
    cfg.write_text(cfg.read_text() + 'task_memory = { zeropoints = "2GB" }\n')
    conf = Release.from_config(cfg).config
    led = Ledger(tmp_path / "ledger.sqlite")
    led.acquire(heartbeat=False)
    led.start_run("h", ["runbrick"])
    peaks = np.linspace(100e6, 2000e6, 20)
    for i, p in enumerate(peaks):
        led.record("runbrick", f"b{i}", "succeeded", 1, wall=1.0, peak_rss=float(p))
    led.record("runbrick", "bfail", "failed", 1, peak_rss=50e9)  # failures do not count
    led.commit()
    req = memory_requests(conf, led, worker_mem=8_000_000_000)
    assert req["runbrick"] == pytest.approx(np.quantile(peaks, 0.95) * 1.2)
    assert req["zeropoints"] == 2e9 and "calibs" not in req
    capped = memory_requests(conf, led, worker_mem=1_000_000_000)
    assert capped["runbrick"] == 1e9 and capped["zeropoints"] == 1e9
    assert memory_requests(conf, led, worker_mem=None) == {}
    led.close()


def _overlaps(release) -> int:
    with release.ledger() as led:
        rows = led._con.execute(
            "SELECT a.start, a.end FROM attempts a JOIN tasks t ON t.id = a.task_id "
            "WHERE t.stage = 'runbrick' AND a.state = 'succeeded' ORDER BY a.start").fetchall()
    assert len(rows) >= 3
    return sum(1 for (_, e1), (s2, _) in zip(rows, rows[1:], strict=False) if s2 < e1)


def test_bricks_needing_more_than_half_a_worker_are_not_coscheduled(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, bands=("g",))
    base = cfg.read_text()
    cfg.write_text(base + 'task_memory = { runbrick = "600MB" }\n')
    release = Release.from_config(cfg)
    make_survey(release.layout, nexp=3, bands=("g",))
    monkeypatch.setenv("LSDASK_TESTING_SLEEP", "1.5")
    # one worker, 2 cores, 1 GB: two 1-thread bricks fit its cores but not its memory
    cluster = make_cluster("local", n_workers=1, threads_per_worker=2, memory_limit="1GB")
    try:
        with Client(cluster) as client:
            info = client.scheduler_info()["workers"]
            assert [w["resources"] for w in info.values()] == [{"cores": 2, "memory": 1e9}]
            res = release.run(client, stages=["images", "calibs", "zeropoints", "runbrick"],
                              progress=False)
            assert res.ok, res.summary.failed
            assert _overlaps(release) == 0
            # control: the same bricks without the memory ask do run two at a time
            plain = tmp_path / "plain.toml"
            plain.write_text(base)
            res2 = Release.from_config(plain).run(client, stages=["runbrick"], force=["runbrick"],
                                                  progress=False)
            assert res2.ok
            import sqlite3

            con = sqlite3.connect(release.layout.ledger)
            with con:
                con.execute("DELETE FROM attempts WHERE run_id = ?", (res.run_id,))
            con.close()
            assert _overlaps(release) >= 1
    finally:
        cluster.close()

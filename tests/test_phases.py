"""Task phases (issue 12): a child reports its phases to the worker-side parent, the ledger
keeps them per attempt, Dask sees them (fine performance metrics, profiler frames in the
performance report), the run report says where the time goes."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from distributed import Client, LocalCluster

from lsdask.demo import DemoSettings, simulate_demo, write_demo_config
from lsdask.jobqueue import make_cluster
from lsdask.ledger import Ledger
from lsdask.phases import ENV, PhaseReader, begin, channel, end, phase
from lsdask.processors.legacypipe.stages import parse_resources, report_line, stage_started
from lsdask.release import Release
from lsdask.task import TaskSpec, execute

#: The lite runbrick's phases, in the order it runs them.
LITE_PHASES = ["select", "calibs", "coadds", "checkpoint", "detect", "photometry", "write"]
#: One band, two exposures, a few bricks: a small lite release with runbrick tasks.
SETTINGS = DemoSettings(ramin=180.0, ramax=180.35, decmin=32.0, decmax=32.25, bands=("g",))

#: Real legacypipe output: lines 16, 59-61, 643 and 686 of the task log
#: logs/180/1801p320.log of tests/test_legacypipe_release.py::test_one_legacypipe_brick_on_s...
#: (legacypipe DR11.1.0-28-g93e2d828 on the simulated demo survey, --threads 1), 2026-11-27.
LEGACYPIPE_LOG = """\
Running stage tims
[INFO legacypipe.runbrick mystagefunc (runbrick.py:4958) pid18861 7.93] Resources for stage tims : Wall: 2.59 s, CPU: 2.57 s, VmPeak: 539 MB, VmSize: 457 MB, VmRSS: 199 MB, VmData: 309 MB, maxrss: 0.313856 MB
Stage tims finished
Running stage refs
[INFO legacypipe.runbrick mystagefunc (runbrick.py:4958) pid18861 443.98] Resources for stage fitblobs : Wall: 419.01 s, CPU: 418.90 s, VmPeak: 541 MB, VmSize: 524 MB, VmRSS: 269 MB, VmData: 373 MB, maxrss: 0.313856 MB
[INFO legacypipe.runbrick mystagefunc (runbrick.py:4958) pid18861 451.73] Resources for stage coadds : Wall: 7.75 s, CPU: 7.74 s, VmPeak: 636 MB, VmSize: 524 MB, VmRSS: 269 MB, VmData: 373 MB, maxrss: 0.389604 MB
Running stage writecat at 2026-11-27T00:10:08.133713
[INFO legacypipe.runbrick stage_outliers (runbrick.py:640) pid18861 9.56] "Before" coadds: Wall: 1.36 s, CPU: 1.36 s, VmPeak: 539 MB, VmSize: 476 MB, VmRSS: 219 MB, VmData: 327 MB, maxrss: 0.313856 MB
"""  # noqa: E501


def test_legacypipe_log_parser():
    lines = LEGACYPIPE_LOG.splitlines()
    assert [stage_started(ln) for ln in lines] == [
        "tims", None, None, "refs", None, None, None, None]
    got = [parse_resources(ln) for ln in lines]
    assert [g["name"] if g else None for g in got] == [
        None, "tims", None, None, "fitblobs", "coadds", None, None]
    tims, fitblobs = got[1], got[4]
    assert tims["wall"] == 2.59 and tims["cpu"] == 2.57
    assert tims["rss"] == 199 * 2**20 and tims["vmpeak"] == 539 * 2**20
    assert fitblobs["wall"] == 419.01 and fitblobs["cpu"] == 418.90


@pytest.fixture
def pipe(monkeypatch):
    """A phase channel as the parent makes it, with this process as the child."""
    rfd, wfd, env = channel()
    monkeypatch.setenv(ENV, env)
    yield PhaseReader(rfd), wfd
    os.close(rfd)
    os.close(wfd)


def test_legacypipe_output_becomes_phases(pipe):
    """The launcher's hook on each output line: stages begun and ended, as the parent reads
    them (a stage started and never ended is where a killed runbrick died)."""
    reader, _ = pipe
    for ln in LEGACYPIPE_LOG.splitlines(keepends=True):
        report_line(ln)
    assert [(p["name"], p["wall"], p["cpu"]) for p in reader.poll()] == [
        ("tims", 2.59, 2.57), ("fitblobs", 419.01, 418.90), ("coadds", 7.75, 7.74)]
    assert reader.current == "refs" and [p["name"] for p in reader.unfinished()] == ["refs"]


def test_reader_skips_torn_and_bad_lines(pipe, tmp_path, monkeypatch):
    reader, wfd = pipe
    assert reader.poll() == [] and reader.current is None  # nothing written yet
    with phase("a"):
        pass
    begin("b")
    os.write(wfd, b'not json\n{"event": "end", "phase": "b", "wa')  # garbage, a torn line
    assert [p["name"] for p in reader.poll()] == ["a"]
    assert reader.current == "b"
    os.write(wfd, b'll": 2.5}\n')  # the torn line completed
    assert reader.poll() == [{"name": "b", "wall": 2.5, "cpu": None, "rss": None}]
    assert reader.current is None and reader.unfinished() == []
    end("c", 1.0)  # an end without a begin is still a phase
    assert [p["name"] for p in reader.poll()] == ["c"]
    # a process that inherited the variable but not the pipe writes nothing to that fd
    other = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setenv(ENV, f"{other}:{os.fstat(wfd).st_ino}")
    begin("d")
    os.close(other)
    assert (tmp_path / "f").read_bytes() == b""
    # a full pipe drops events, never blocks the task
    monkeypatch.setenv(ENV, f"{wfd}:{os.fstat(wfd).st_ino}")
    for _ in range(5000):
        begin("e" * 50)
    assert len(reader.poll()) == 0 and reader.current == "e" * 50


def test_killed_child_reports_the_phase_it_died_in():
    res = execute(TaskSpec("t", "k", "lsdask.task:sleep", {"seconds": 60}, timeout=5,
                           report_start=False))
    assert res["failure_class"] == "timeout"
    [p] = res["phases"]  # killed 5 s after its start, in the phase it began
    assert p["name"] == "sleep" and p["incomplete"] is True
    assert 1.0 < p["wall"] <= res["wall"]
    ok = execute(TaskSpec("t", "k", "lsdask.task:sleep", {"seconds": 0.3},
                          report_start=False))
    assert ok["status"] == "succeeded" and [p["name"] for p in ok["phases"]] == ["sleep"]
    assert 0.3 <= ok["phases"][0]["wall"] <= ok["wall"] and "incomplete" not in ok["phases"][0]


def test_old_ledger_gets_the_phases_column(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    led.acquire(heartbeat=False)
    led.record("calibs", "x", "succeeded", 1, wall=2.0)
    led.close()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE attempts DROP COLUMN phases")  # as a ledger made before it
    con.commit()
    con.close()
    with Ledger.open_readonly(path) as old:  # read-only: not migrated, still readable
        assert old.phase_rows() == [] and len(old.attempts("calibs", "x")) == 1
    led = Ledger(path)
    led.acquire(heartbeat=False)
    led.record("calibs", "x", "succeeded", 2, wall=3.0, phases=[{"name": "fit", "wall": 1.5}])
    led.close()
    with Ledger.open_readonly(path) as new:
        assert [a["phases"] for a in new.attempts("calibs", "x")] == [
            None, '[{"name": "fit", "wall": 1.5}]']
        [row] = new.phase_rows()
        assert row["attempt"] == 2 and row["phases"] == [{"name": "fit", "wall": 1.5}]


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("phases")
    simulate_demo(d, SETTINGS)
    release = Release.from_config(write_demo_config(d, SETTINGS))
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1)
    try:
        with Client(cluster) as client:
            res = release.run(client, stages=["calibs", "zeropoints", "ccds", "bricks",
                                              "runbrick"], progress=False)
            metrics: dict[str, float] = {}
            for _ in range(100):  # workers send their metrics with their heartbeats
                metrics = client.run_on_scheduler(_phase_metrics)
                if any(k.startswith("runbrick.") for k in metrics):
                    break
                time.sleep(0.2)
    finally:
        cluster.close()
    assert res.ok, res
    return release, res, metrics


def _phase_metrics(dask_scheduler) -> dict[str, float]:
    """Seconds per fine performance metric activity ``<stage>.<phase>`` of executed tasks."""
    out: dict[str, float] = {}
    for key, v in dask_scheduler.cumulative_worker_metrics.items():
        if (isinstance(key, tuple) and len(key) == 4 and key[0] == "execute"
                and key[3] == "seconds" and "." in str(key[2])):
            out[str(key[2])] = out.get(str(key[2]), 0.0) + v
    return out


def test_ledger_has_the_lite_phases(lite_run):
    release, _, _ = lite_run
    with release.ledger() as led:
        bricks = led.phase_rows("runbrick")
        calibs = led.phase_rows("calibs")
        zpts = led.phase_rows("zeropoints")
    assert len(bricks) >= 2
    for r in bricks:
        assert [p["name"] for p in r["phases"]] == LITE_PHASES
        assert all(p["wall"] > 0 and p["cpu"] is not None and p["rss"] > 0
                   for p in r["phases"])
        assert sum(p["wall"] for p in r["phases"]) <= r["wall"]
    assert calibs and all([p["name"] for p in r["phases"]] == ["fit", "write"] for r in calibs)
    assert zpts and all([p["name"] for p in r["phases"]] == ["measure", "write"] for r in zpts)


def test_report_says_where_the_time_goes(lite_run):
    from test_report import Page

    release, _, _ = lite_run
    text = release.layout.report_index.read_text()
    rows = Page(text).rows["phases-table"]
    assert rows[0][:3] == ["stage", "phase", "attempts"]
    with release.ledger() as led:
        n = str(len(led.phase_rows("runbrick")))
    brick = [r[1:3] for r in rows if r[0] == "runbrick"]
    assert brick == [[p, n] for p in LITE_PHASES] + [["(outside phases)", n]]
    assert release.layout.report_plot("phases").read_bytes()[:4] == b"\x89PNG"
    assert 'src="phases.png"' in text


def test_performance_report_shows_the_phases(lite_run):
    release, res, _ = lite_run
    html = open(res.report).read()
    with release.ledger() as led:
        rows = led.phase_rows("runbrick")
    longest = max(LITE_PHASES, key=lambda n: sum(p["wall"] for r in rows for p in r["phases"]
                                                  if p["name"] == n))
    assert f"runbrick.{longest}" in html
    assert "calibs.fit" in html or "calibs.write" in html
    assert "runbrick.start" in html  # the child's start-up, before its first phase


def test_fine_performance_metrics_have_the_phases(lite_run):
    release, _, metrics = lite_run
    with release.ledger() as led:
        rows = led.phase_rows("runbrick")
    for name in LITE_PHASES:
        total = sum(p["wall"] for r in rows for p in r["phases"] if p["name"] == name)
        assert metrics[f"runbrick.{name}"] == pytest.approx(total, rel=1e-6, abs=1e-6)
    assert metrics["calibs.fit"] > 0 and metrics["zeropoints.measure"] > 0


#: legacypipe runbrick's stages on mzlsbass2 (no WISE), in the order it runs them.
LEGACYPIPE_STAGES = ["tims", "refs", "outliers", "halos", "srcs", "fitblobs", "coadds",
                     "writecat"]


def test_legacypipe_stages_reach_the_parent_and_the_profiler(shared_data, tmp_path,
                                                             monkeypatch):
    """The real legacypipe runbrick (legacypipe's mzlsbass2 case, zoomed) as a child task on a
    LocalCluster worker: its stages come back as phases with legacypipe's own times, and the
    Dask performance report shows the worker waiting in ``runbrick.<stage>`` frames."""
    from distributed import performance_report
    from legacypipe_stack import stack_prefix
    from test_legacypipe import copy_case, write_config

    monkeypatch.setenv("LSDASK_LEGACYPIPE_PREFIX", str(stack_prefix()))
    survey = copy_case(shared_data, "mzlsbass2", tmp_path)
    cfg = write_config(tmp_path / "lp.toml", survey, tmp_path / "out")
    (tmp_path / "lpjob.py").write_text(  # `lsdask runbrick` as a task function
        "def runbrick(threads, argv):\n"
        "    from lsdask.cli import main\n"
        "    assert main(argv) == 0\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    argv = ["runbrick", str(cfg), "--brick", "1773p595", "--zoom", "1300", "1500", "700", "900"]
    perf = tmp_path / "perf.html"
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        with performance_report(filename=str(perf)):
            res = client.submit(execute, TaskSpec("runbrick", "1773p595", "lpjob:runbrick",
                                                  {"argv": argv}, log=str(tmp_path / "t.log"),
                                                  report_start=False), pure=False).result()
    assert res["status"] == "succeeded", res["message"]
    assert [p["name"] for p in res["phases"]] == LEGACYPIPE_STAGES
    assert all(p["wall"] > 0 and p["cpu"] is not None and p["rss"] > 0
               for p in res["phases"] if p["name"] != "halos")  # halos: 0.0x s, no stars
    assert sum(p["wall"] for p in res["phases"]) <= res["wall"]
    assert "runbrick.fitblobs" in perf.read_text()

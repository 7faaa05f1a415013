"""The fault suite (issue 10): an operator's bad day, with real processes and signals, on the
smallest releases that show each point (the ``testing`` processor, 1 band, 3 exposures; or
generated tractor catalogues for the whole-release stages). Each ``test_fNN_*`` is fault NN
of the issue. The figures (kills survived / tried, bad inputs with a one-line message /
tried, tasks lost, tasks completed twice) print at the end of the pytest run."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import fitsio
import numpy as np
import psutil
import pytest
from distributed import Client

from lsdask.atomic import sha256_file
from lsdask.cli import main
from lsdask.config import load_config
from lsdask.errors import ConfigError, InputError, LsdaskError
from lsdask.graphs.images import image_key, images_in_region, run_images
from lsdask.jobqueue import make_cluster
from lsdask.ledger import Ledger, LedgerLocked, LockLost
from lsdask.processors.testing import (
    completions,
    make_survey,
    task_processes,
    wait_for,
    write_config,
)
from lsdask.release import Release
from lsdask.testing.faults import FIGURES, one_line

TASK_STAGES = ["images", "calibs", "zeropoints", "ccds", "bricks", "runbrick"]
POST = ["parquet", "sweeps", "depth"]


# -- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """Workers in this process: the tasks' own child processes inherit the environment
    the tests set (fault injection), and nothing is paid twice for starting workers."""
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1, processes=False)
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture
def rel(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, bands=("g",), max_retries=1)
    r = Release.from_config(cfg)
    make_survey(r.layout, nexp=3, bands=("g",))
    comp = tmp_path / "completions.txt"
    monkeypatch.setenv("LSDASK_TESTING_COMPLETIONS", str(comp))
    r.completions = comp
    return r


def run(r: Release, client, stages=TASK_STAGES, **kw):
    return r.run(client, stages=stages, progress=False, report=False, **kw)


def brick_images(r: Release) -> dict[str, list[str]]:
    return images_in_region(run_images(r.config), r.config.region_box())[1]


def brick_runs(r: Release) -> collections.Counter:
    return collections.Counter(k for w, k in completions(r.completions) if w == "runbrick")


def tally(r: Release, expected: set[str] | None = None) -> None:
    """Add lost / duplicated bricks of a release to the figures (completions vs products)."""
    runs = brick_runs(r)
    FIGURES.twice += sum(n - 1 for n in runs.values() if n > 1)
    if expected is not None:
        FIGURES.lost += len([b for b in expected if not r.layout.tractor(b).exists()])


def cli(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lsdask", *args], env=env or os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def tasks_of(var: str, value: str, prefix: str = "") -> list:
    """Live task processes of this test (their environment has ``var=value``)."""
    return task_processes(prefix, {var: value})


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- 1. survey_dir wrong or unmounted ------------------------------------------------------------
def test_f01_wrong_survey_dir_is_an_error_and_keeps_products(rel, client, tmp_path):
    assert run(rel, client).ok
    lay = rel.layout
    before = (sha256_file(lay.survey_ccds), lay.bricklist.read_text())
    assert before[1].strip()
    text = rel.config.path.read_text()
    (tmp_path / "empty").mkdir()
    for wrong, key in (("nope", "release.survey_dir"), ("empty", "no decam images")):
        bad = tmp_path / f"bad-{wrong}.toml"
        bad.write_text(text.replace('survey_dir = "survey"', f'survey_dir = "{wrong}"'))
        with pytest.raises(LsdaskError) as e:
            run(Release.from_config(bad), client)
        FIGURES.bad(one_line(str(e.value)) and key in str(e.value))
        assert key in str(e.value)
    assert (sha256_file(lay.survey_ccds), lay.bricklist.read_text()) == before
    # the right config again: the release is whole, and a brick whose product went missing
    # is redone (nothing was planned away by an empty brick list)
    gone = sorted(brick_images(rel))[0]
    lay.tractor(gone).unlink()
    res = run(rel, client)
    assert res.ok and res.plans["runbrick"].todo == [gone]
    assert brick_runs(rel)[gone] == 2  # wanted: its product was gone


# -- 2. bricks of failed exposures: blocked; redone when their inputs change -----------------
def _exposure_touching_some(r: Release) -> tuple[str, set[str]]:
    bi = brick_images(r)
    for img in sorted({n for v in bi.values() for n in v}):
        touched = {b for b, v in bi.items() if img in v}
        if 0 < len(touched) < len(bi):
            return img, touched
    raise AssertionError("every exposure touches every brick")


def _bump_zeropoint(r: Release, img: str) -> None:
    path = r.layout.zeropoints(img)
    data, hdr = fitsio.read(str(path), header=True)
    data["ccdzpt"] += 0.1
    fitsio.write(str(path), data, header=hdr, clobber=True)


def test_f02_failed_exposure_blocks_its_bricks_then_they_run(rel, client, monkeypatch):
    img, touched = _exposure_touching_some(rel)
    bricks = set(brick_images(rel))
    monkeypatch.setenv("LSDASK_TESTING_INPUT_ERROR", image_key(img))
    res = run(rel, client)
    assert not res.ok and res.blocked >= len(touched)
    with rel.ledger() as led:
        assert {r["key"] for r in led.tasks("runbrick", "blocked")} == touched
    assert rel.status().loc["runbrick", "blocked"] == len(touched)
    assert not any(rel.layout.tractor(b).exists() for b in touched)
    assert set(brick_runs(rel)) == bricks - touched
    # repaired and retried: the blocked bricks run; nothing else runs again
    monkeypatch.delenv("LSDASK_TESTING_INPUT_ERROR")
    assert main(["retry", str(rel.config.path), "--stage", "calibs", "--class", "input"]) == 0
    res = run(rel, client)
    assert res.ok, (res.summary.failed, res.failed, res.blocked)
    assert brick_runs(rel) == collections.Counter({b: 1 for b in bricks})
    # an input of some bricks changes (a zeropoint table redone): exactly they rerun
    _bump_zeropoint(rel, img)
    res = run(rel, client, stages=["images", "runbrick"])
    assert res.ok and set(res.plans["runbrick"].todo) == touched
    runs = brick_runs(rel)
    assert {b for b, n in runs.items() if n == 2} == touched
    FIGURES.twice += 0  # the reruns above are wanted (inputs changed), not duplicates
    FIGURES.lost += len([b for b in bricks if not rel.layout.tractor(b).exists()])


def _reprocess_image(r: Release, img: str) -> None:
    """The image replaced by a new CP processing (same name, new MJD-OBS in its header)."""
    path = r.layout.image(img)
    with fitsio.FITS(str(path)) as f:
        hdus = [(f[i].read(), f[i].read_header()) for i in range(len(f))]
    tmp = path.with_name(f".{path.name}.new")
    with fitsio.FITS(str(tmp), "rw", clobber=True) as f:
        for i, (data, hdr) in enumerate(hdus):
            if i == 0:
                hdr["MJD-OBS"] = float(hdr["MJD-OBS"]) + 1.0
            f.write(data, header=hdr)
    os.replace(tmp, path)


def test_f02b_replaced_image_redoes_its_calibs_zeropoints_merge_and_bricks(rel, client):
    img, touched = _exposure_touching_some(rel)
    assert run(rel, client).ok
    before = collections.Counter(completions(rel.completions))
    _reprocess_image(rel, img)
    res = run(rel, client)
    assert res.ok
    assert res.plans["calibs"].todo == [image_key(img)]
    redone = collections.Counter(completions(rel.completions)) - before
    assert redone == collections.Counter(
        [("calibs", image_key(img)), ("zeropoints", image_key(img)),
         *(("runbrick", b) for b in touched)])
    mjd = fitsio.read(str(rel.layout.survey_ccds), columns=["image_filename", "mjd_obs"])
    assert set(mjd["mjd_obs"][np.char.strip(mjd["image_filename"]) == img]) == {57755.0}
    res = run(rel, client)  # and then everything is current
    assert res.ok and all(not p.todo for p in res.plans.values())
    FIGURES.lost += len([b for b in brick_images(rel) if not rel.layout.tractor(b).exists()])


# -- 3. killed between stages: the merge, and whole-release products, follow their inputs ---
def test_f03a_merge_redone_when_zeropoints_changed_before_it(rel, client, monkeypatch):
    img, _ = _exposure_touching_some(rel)
    monkeypatch.setenv("LSDASK_TESTING_INPUT_ERROR", image_key(img))
    run(rel, client, stages=["images", "calibs", "zeropoints", "ccds"])
    short = len(fitsio.read(str(rel.layout.survey_ccds)))
    monkeypatch.delenv("LSDASK_TESTING_INPUT_ERROR")
    assert main(["retry", str(rel.config.path), "--stage", "calibs"]) == 0
    # new zeropoints, then the driver dies before the merge
    assert run(rel, client, stages=["images", "calibs", "zeropoints"]).ok
    res = run(rel, client, stages=["images", "ccds"])
    assert res.ok and res.plans["ccds"].todo == ["survey-ccds"]
    full = len(fitsio.read(str(rel.layout.survey_ccds)))
    assert full == short + 2  # the repaired exposure's two CCDs
    assert run(rel, client, stages=["images", "ccds"]).plans["ccds"].done == ["survey-ccds"]


@pytest.fixture
def post_rel(tmp_path):
    """A release of 4 generated tractor catalogues (with depth tables and sha256sums)."""
    from lsdask.testing.tractor_gen import generate_release

    cfg = write_config(tmp_path, bands=("g", "r", "z"))
    r = Release.from_config(cfg)
    (r.layout.survey_dir).mkdir(parents=True, exist_ok=True)
    r.bricks = generate_release(r.layout, 4, rows_per_brick=300)
    return r


def test_f03b_whole_release_stages_follow_their_inputs(post_rel, client):
    from lsdask.graphs.sweeps import sweep_files
    from lsdask.testing.tractor_gen import write_brick

    r, lay = post_rel, post_rel.layout
    res = run(r, client, stages=POST)
    assert res.ok, res.post
    sweeps = sweep_files(lay)
    assert sweeps and lay.depth_summary().exists()
    again = run(r, client, stages=POST)
    assert all(again.post[s] == {"skipped": True} for s in POST), again.post
    # a tractor catalogue rewritten (a brick rerun, then the driver killed before parquet)
    write_brick(lay, r.bricks[0], 400, seed=7)
    res = run(r, client, stages=POST)
    assert res.ok and res.post["parquet"]["converted"] == 1
    assert res.post["sweeps"].get("rows") and "skipped" not in res.post["depth"]
    # deleted products are rebuilt; temporaries of a killed sweeps run are cleaned
    sweeps[0].unlink()
    lay.depth_summary().unlink()
    leak = lay.sweeps_dir / ".sweep-000p000-010p005.tmp-0123456789ab.fits"
    leak.write_bytes(b"half")
    res = run(r, client, stages=POST)
    assert res.ok and sweeps[0].exists() and lay.depth_summary().exists()
    assert not leak.exists()  # fault 13: no hidden temporaries left


# -- 4. damaged products are redone; a damaged input fails the run ------------------------------
def test_f04a_truncated_or_corrupt_brick_is_redone(rel, client):
    assert run(rel, client).ok
    a, b = sorted(brick_images(rel))[:2]
    t = rel.layout.tractor(a)
    with open(t, "r+b") as f:
        f.truncate(t.stat().st_size // 2)
    t = rel.layout.tractor(b)
    data = bytearray(t.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes: only the sha256sum tells
    t.write_bytes(bytes(data))
    res = run(rel, client)
    assert res.ok and sorted(res.plans["runbrick"].todo) == [a, b]
    runs = brick_runs(rel)
    assert runs[a] == 2 and runs[b] == 2 and all(n == 1 for k, n in runs.items() if k not in (a, b))


def test_f04b_force_parquet_over_a_truncated_catalogue_fails_the_run(post_rel, client):
    r, lay = post_rel, post_rel.layout
    assert run(r, client, stages=["parquet", "sweeps"]).ok
    t = lay.tractor(r.bricks[1])
    with open(t, "r+b") as f:
        f.truncate(t.stat().st_size // 2)
    res = run(r, client, stages=["parquet", "sweeps"], force=["parquet"])
    assert not res.ok
    assert r.bricks[1] in res.post["parquet"]["error"]
    assert res.post["sweeps"] == {"blocked": "parquet failed"}
    with r.ledger() as led:
        assert led.get("parquet", "parquet")["failure_class"] == "input"
        assert led.get("sweeps", "sweeps")["state"] == "blocked"


# -- 5. children of a task die with it and never keep the brick lock ------------------------
def _runbrick_spec(r: Release, brick: str):
    from lsdask.graphs import runbrick as runbrick_stage
    from lsdask.graphs.base import Context

    return runbrick_stage.spec(Context(r.config, child=True), brick, brick_images(r)[brick])


EXECUTE = ("import pickle, sys; from lsdask.task import execute; "
           "print(execute(pickle.load(open(sys.argv[1], 'rb'))))")


def test_f05_forked_helpers_die_with_the_task_and_free_the_lock(rel, client, tmp_path,
                                                                  monkeypatch):
    assert run(rel, client, stages=["images", "calibs", "zeropoints"]).ok
    brick = sorted(brick_images(rel))[0]
    spec_file = tmp_path / "spec.pickle"
    spec_file.write_bytes(pickle.dumps(_runbrick_spec(rel, brick)))
    env = dict(os.environ, LSDASK_TESTING_FORK=brick, LSDASK_TESTING_SLEEP="60",
               TMPDIR=str(tmp_path))
    # the worker side of a task (what a Dask worker runs), killed as when the driver dies
    worker = subprocess.Popen([sys.executable, "-c", EXECUTE, str(spec_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile = Path(f"{rel.layout.checkpoint(brick)}.child")
    try:
        helper = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 120))
        # the task process is the helper's parent (PIDs wrap: not the lowest of the two)
        task = psutil.Process(helper).ppid()
        assert task in {p.pid for p in tasks_of("TMPDIR", str(tmp_path), "runbrick-")}
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)

        def gone(pid):
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        def lock_free() -> bool:
            fd = os.open(rel.layout.brick_lock(brick), os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody kept it
                return True
            except BlockingIOError:
                return False
            finally:
                os.close(fd)
        ok = True
        try:
            wait_for(lambda: gone(task) and gone(helper), 15)
        except AssertionError:
            ok = False
        try:  # within seconds: a leaked holder would keep it for the helper's 60 s
            free = bool(wait_for(lock_free, 5))
        except AssertionError:
            free = False
        leaks = list(tmp_path.glob("lsdask-result-*"))  # fault 13: no result-file leak
        FIGURES.kill(ok and free and not leaks)
        assert ok, f"outlived the worker: task {not gone(task)}, helper {not gone(helper)}"
        assert free, "the brick lock is still held"
        assert not leaks, leaks
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
    # and the brick then runs normally, once
    monkeypatch.delenv("LSDASK_TESTING_FORK", raising=False)
    assert run(rel, client, stages=["images", "runbrick"]).ok
    tally(rel, set(brick_images(rel)))


# -- 6. a live lock is never stolen; a driver that lost its lock stops ------------------------
HOLD = ("import sys, time; from lsdask.ledger import Ledger; l = Ledger(sys.argv[1]); "
        "l.acquire(heartbeat=False); print('held', flush=True); time.sleep(120)")


def test_f06_live_lock_not_stolen_and_the_loser_stops(tmp_path, monkeypatch):
    import lsdask.ledger as ledger_mod

    path = tmp_path / "ledger.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        real = time.time
        monkeypatch.setattr(ledger_mod.time, "time", lambda: real() + 400)  # clock ahead
        led = Ledger(path)
        with pytest.raises(LedgerLocked, match=f"pid {holder.pid}"):
            led.acquire(heartbeat=False)
        led.close()
        monkeypatch.undo()
    finally:
        holder.kill()
        holder.wait()
    # this driver holds it; another (on another host, stale heartbeat) takes it over
    led = Ledger(path)
    led.acquire(heartbeat=False)
    led.start_run("x", ["runbrick"])
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("UPDATE lock SET pid = 1, host = 'elsewhere' WHERE id = 1")
    con.commit()
    con.close()
    led.heartbeat()
    with pytest.raises(LockLost, match="taken over by pid 1 on elsewhere"):
        led.ensure_tasks("runbrick", ["x"])
    led.close()


# -- 7. disk full, read-only release dir: one clear line ------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_f07_disk_full_and_read_only_release_dir(tmp_path, small_fs):
    cfg = write_config(tmp_path, bands=("g",))
    text = cfg.read_text().replace('release_dir = "release"', f'release_dir = "{small_fs}"')
    cfg.write_text(text)
    r = Release.from_config(cfg)
    make_survey(r.layout, nexp=3, bands=("g",))
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill it: the ledger cannot be written
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    for case in ("full", "read-only"):
        if case == "read-only":
            filler.unlink()
            subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        p = cli(["run", str(cfg), "--stages", "images", "calibs", "--no-progress"])
        out, err = p.communicate(timeout=300)
        line = last_line(err)
        clear = p.returncode == 1 and "Traceback" not in err and line.startswith(
            "lsdask run: error:") and ("full" in line or "read-only" in line)
        FIGURES.bad(clear)
        assert clear, (case, p.returncode, err[-3000:])


# -- 8. SIGKILL of a task is not "oom", and is retried -------------------------------------
def test_f08_killed_task_is_not_oom_and_is_retried(rel, client, monkeypatch):
    brick = sorted(brick_images(rel))[0]
    monkeypatch.setenv("LSDASK_TESTING_DIE", brick)  # every attempt dies by SIGKILL
    res = run(rel, client)
    with rel.ledger() as led:
        hist = [(h["state"], h["failure_class"]) for h in led.attempts("runbrick", brick)]
    survived = hist == [("failed", "killed"), ("failed", "killed")] and res.failed == {
        "killed": 1}
    FIGURES.kill(survived)
    assert survived, (hist, res.failed)
    monkeypatch.delenv("LSDASK_TESTING_DIE")
    assert main(["retry", str(rel.config.path), "--stage", "runbrick"]) == 0
    assert run(rel, client).ok
    tally(rel, set(brick_images(rel)))


# -- 9. SIGTERM (walltime) records the end; Ctrl-C prints one line ----------------------------
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_f09_sigterm_and_ctrl_c(rel, client, sig):
    env = dict(os.environ, LSDASK_TESTING_SLEEP="3")
    p = cli(["run", str(rel.config.path), "--stages", *TASK_STAGES, "--no-progress"], env=env,
            start_new_session=True)
    try:
        wait_for(lambda: tasks_of("LSDASK_TESTING_COMPLETIONS", str(rel.completions),
                                  "runbrick-"), 240)
        if sig == "SIGTERM":
            p.send_signal(signal.SIGTERM)  # Slurm at the walltime
        else:
            os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground group
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    code = 143 if sig == "SIGTERM" else 130
    after = err.split("lsdask: dashboard", 1)[-1]
    with rel.ledger() as led:
        outcome = led.runs()[-1]["outcome"]
        unlocked = led.lock_info() is None
    clean = (p.returncode == code and "Traceback" not in err and "CancelledError" not in err
             and last_line(err).startswith("lsdask run:") and unlocked
             and outcome == ("terminated" if sig == "SIGTERM" else "interrupted"))
    wait_for(lambda: not tasks_of("LSDASK_TESTING_COMPLETIONS", str(rel.completions)), 60)
    res = run(rel, client)  # and a rerun finishes the release, nothing twice
    FIGURES.kill(clean and res.ok)
    assert clean, (p.returncode, outcome, unlocked, after[-3000:])
    assert res.ok
    tally(rel, set(brick_images(rel)))
    assert all(n == 1 for n in brick_runs(rel).values())


# -- 10. run exits non-zero while tasks are failed (this run or earlier) --------------------
def test_f10_exit_code_while_failures_remain(rel, client, monkeypatch, capsys):
    from lsdask.cli.run import print_result

    img, touched = _exposure_touching_some(rel)
    monkeypatch.setenv("LSDASK_TESTING_INPUT_ERROR", image_key(img))
    assert not run(rel, client).ok
    res = run(rel, client)  # nothing new to do, failures from before remain
    assert res.summary.total("failed") == 0
    assert not res.ok and res.failed == {"input": 1} and res.blocked >= len(touched)
    print_result(res, rel.config.path)
    line = last_line(capsys.readouterr().err)
    assert "1 task(s) failed (1 input)" in line and "blocked" in line
    assert f"lsdask tasks {rel.config.path} --state failed" in line


def test_f10b_config_failures_retried_once_the_config_changed(rel, client, monkeypatch):
    """A task failed by a configuration error (class ``config``) stays failed while the
    configuration is the same, and is retried by the first run after it changed."""
    brick = sorted(brick_images(rel))[0]
    monkeypatch.setenv("LSDASK_TESTING_CONFIG_ERROR", brick)
    res = run(rel, client)
    assert res.failed == {"config": 1}
    monkeypatch.delenv("LSDASK_TESTING_CONFIG_ERROR")
    res = run(rel, client)  # the same configuration: still failed, not retried
    assert res.plans["runbrick"].failed == [brick] and res.failed == {"config": 1}
    cfg = rel.config.path
    cfg.write_text(cfg.read_text().replace("max_retries = 1", "max_retries = 2"))  # the fix
    assert "max_retries = 2" in cfg.read_text()
    res = run(Release.from_config(cfg), client)
    assert res.ok and res.plans["runbrick"].todo == [brick]
    assert brick_runs(rel)[brick] == 1


# -- 11. bad inputs: named, one line --------------------------------------------------------
def test_f11_bad_zeropoint_tables_are_named(rel, client):
    from lsdask.survey.ccds import merge_ccd_files

    assert run(rel, client, stages=["images", "calibs", "zeropoints"]).ok
    imgs = sorted({n for v in brick_images(rel).values() for n in v})
    garbage = rel.layout.zeropoints(imgs[0])
    raw = bytearray(garbage.read_bytes())  # a header card with non-ASCII garbage
    i = raw.find(b"TTYPE1")
    raw[i + 11:i + 14] = b"\xff\xfe\xfd"
    garbage.write_bytes(bytes(raw))
    nozpt = rel.layout.zeropoints(imgs[1])
    data = fitsio.read(str(nozpt))
    keep = [n for n in data.dtype.names if n.lower() != "ccdzpt"]
    fitsio.write(str(nozpt), np.asarray(data[keep]), clobber=True)
    for path, what in ((garbage, "zeropoint table"), (nozpt, "ccdzpt")):
        with pytest.raises(InputError) as e:
            merge_ccd_files([path])
        msg = str(e.value)
        FIGURES.bad(one_line(msg) and str(path) in msg and what in msg)
        assert str(path) in msg and what in msg and one_line(msg)
    res = run(rel, client, stages=["images", "ccds"])
    with rel.ledger() as led:
        row = led.get("ccds", "survey-ccds")
    assert not res.ok and row["failure_class"] == "input" and str(garbage) in row["message"]


def test_f11b_cut_ccds_are_said_by_status(tmp_path, client, capsys):
    """CCDs that could not be measured (an image of NaNs, in lite) are cut, and ``lsdask
    status`` names them; other cuts are counted by bit."""
    cfg = write_config(tmp_path, bands=("g",))
    r = Release.from_config(cfg)
    names = make_survey(r.layout, nexp=3, bands=("g",),
                        cuts={"c4d_170101_010010_ooi_g_ls9": 0x1,
                              "c4d_170101_010011_ooi_g_ls9": 0x1000})
    assert run(r, client, stages=["images", "calibs", "zeropoints", "ccds"]).ok
    capsys.readouterr()
    assert main(["status", str(cfg)]) == 0
    line = last_line(capsys.readouterr().out)
    bad = Path(names[0]).name
    expect = (f"survey-ccds-t.fits.gz: 6 CCDs, 4 cut (err_legacyzpts 2, seeing_bad 2); "
              f"not measurable: {bad} N4, {bad} S4")
    FIGURES.bad(line == expect)
    assert line == expect


# -- 12. bad configuration: one line naming file and key ------------------------------------
BAD_CONFIGS = [
    ("cameras", 'cameras = ["decamx"]', "release.cameras"),
    ("bands", 'bands = ["x"]', "release.bands"),
    ("ra-reversed", "ra = [181.0, 180.0]", "region.ra"),
    ("ra-range", "ra = [180.0, 400.0]", "region.ra"),
    ("kernel", 'resample_kernel = "cubicx"', "stages.runbrick.resample_kernel"),
    ("timeout", "timeout = -5", "stages.runbrick.timeout"),
    ("profile", 'profile = "nersc-gpu"', "cluster.profile"),
    ("processor", 'processor = "legacypipex"', "release.processor"),
    ("release", "release = 9999", "release.release"),
]


def _variant(cfg: Path, case: str, line: str) -> str:
    text = cfg.read_text()
    key = line.split("=")[0].strip()
    section = {"cameras": "[release]", "bands": "[release]", "processor": "[release]",
               "release": "[release]",
               "kernel": "[stages.runbrick]", "timeout": "[stages.runbrick]",
               "profile": "[cluster]"}.get(case)
    lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
    text = "\n".join(lines) + "\n"
    if section is None:  # region
        return text.replace("[region]\n", f"[region]\n{line}\n")
    return text.replace(f"{section}\n", f"{section}\n{line}\n")


@pytest.mark.parametrize("case,line,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_f12_bad_config_one_line_naming_file_and_key(tmp_path, case, line, key):
    cfg = write_config(tmp_path)
    cfg.write_text(_variant(cfg, case, line))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    ok = one_line(msg) and str(cfg) in msg and key in msg
    FIGURES.bad(ok)
    assert ok, msg


def test_f12_unreadable_or_not_utf8_and_missing_survey_dir(tmp_path):
    from lsdask.graphs.base import Context
    from lsdask.graphs.stages import build

    cfg = write_config(tmp_path)
    good = cfg.read_bytes()
    cases = []
    cfg.write_bytes(good.replace(b'name = "t"', b'name = "t\xe9\xff"'))
    cases.append((cfg, "UTF-8"))
    cases.append((tmp_path, "cannot read"))  # a directory: unreadable as a file
    for path, what in cases:
        with pytest.raises(ConfigError) as e:
            load_config(path)
        msg = str(e.value)
        FIGURES.bad(one_line(msg) and str(path) in msg and what in msg)
        assert str(path) in msg and what in msg, msg
    cfg.write_bytes(good)
    conf = load_config(cfg)  # survey_dir "survey" does not exist: a run says so
    with pytest.raises(ConfigError) as e:
        build(Context(conf), TASK_STAGES)
    msg = str(e.value)
    FIGURES.bad(one_line(msg) and str(cfg) in msg and "release.survey_dir" in msg)
    assert "release.survey_dir" in msg and str(cfg) in msg


# -- 13. leaks: result files after a kill ----------------------------------------------------
def test_f13_no_result_file_left_by_a_killed_worker(tmp_path):
    from lsdask.task import TaskSpec

    spec = TaskSpec("test", "sleep", "lsdask.task:sleep", {"seconds": 60},
                    report_start=False)
    spec_file = tmp_path / "spec.pickle"
    spec_file.write_bytes(pickle.dumps(spec))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    worker = subprocess.Popen([sys.executable, "-c", EXECUTE, str(spec_file)],
                              env=dict(os.environ, TMPDIR=str(tmp)))
    task = wait_for(lambda: tasks_of("TMPDIR", str(tmp), "test-"), 60)[0]
    worker.kill()
    worker.wait()
    ok = True
    try:
        wait_for(lambda: not psutil.pid_exists(task.pid) or task.status() == "zombie", 15)
    except (AssertionError, psutil.Error):
        ok = psutil.pid_exists(task.pid) is False
    leaks = list(tmp.glob("lsdask-result-*"))
    FIGURES.kill(ok and not leaks)
    assert ok and not leaks, leaks


# -- the figures ------------------------------------------------------------------------------
def test_zz_figures():
    """Last: every kill survived, every bad input a clear line, nothing lost or doubled."""
    print("\n" + FIGURES.summary())
    if FIGURES.kills_tried == 0 and FIGURES.bad_tried == 0:
        pytest.skip("no fault test ran")
    assert FIGURES.kills_survived == FIGURES.kills_tried
    assert FIGURES.bad_clear == FIGURES.bad_tried
    assert FIGURES.lost == 0 and FIGURES.twice == 0



def test_f05b_stale_shm_of_a_killed_brick_is_removed(tmp_path):
    """A brick killed mid-coadd leaves its /dev/shm folder; the next brick's start removes
    folders whose process is gone and keeps live ones."""
    import subprocess

    from lsdask.processors.lite.runbrick import clean_stale_shm

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"lsdask-runbrick-{dead.pid}-abc"
    live = tmp_path / f"lsdask-runbrick-{os.getpid()}-def"
    for d in (stale, live):
        d.mkdir()
        (d / "x").write_bytes(b"0" * 10)
    assert clean_stale_shm(str(tmp_path)) == [stale.name]
    assert not stale.exists() and live.exists()

"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("LSDASK_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Legacy Survey test data folder (``../shared/data``), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def tmp_release(tmp_path):
    """A ReleaseLayout with survey and release dirs under tmp_path."""
    from lsdask.survey.layout import ReleaseLayout

    return ReleaseLayout(tmp_path / "survey", tmp_path / "release", name="test")


@pytest.fixture(scope="session")
def demo_release(tmp_path_factory):
    """A small demo release made by the whole lite chain (calibs, zeropoints, runbrick,
    sweeps) on a local Dask cluster: the demo's bottom-left corner with all three bands
    (ELG and BGS need g, r and z), south of desitarget's north/south line (Dec 32.375) as
    DECam ('S') targets must be. Its survey holds the simulation's truth."""
    from distributed import Client

    from lsdask.demo import DemoSettings, run_demo
    from lsdask.jobqueue import make_cluster
    from lsdask.release import Release

    settings = DemoSettings(ramin=180.0, ramax=180.35, decmin=32.0, decmax=32.35,
                            bands=("g", "r", "z"), name="clients")
    # desitarget's listings skip any folder whose *path* holds 'log', 'tractor', 'sweep' ...:
    # the base name here holds none of them
    d = tmp_path_factory.mktemp("dtclients")
    cluster = make_cluster("local", n_workers=2)
    try:
        with Client(cluster) as client:
            s = run_demo(d, client=client, settings=settings, progress=False,
                         echo=lambda m: None)
    finally:
        cluster.close()
    assert s["ok"], s["status"]
    return Release.from_config(d / "release.toml")


def pytest_terminal_summary(terminalreporter):
    """The fault suite's figures line, when it ran."""
    from lsdask.testing.faults import FIGURES

    if FIGURES.kills_tried or FIGURES.bad_tried:
        terminalreporter.write_line(FIGURES.summary())


CONF = "/var/tmp/lsdask-slurm/slurm.conf"


def slurm_up(wait: float = 120.0) -> str | None:
    """None when the local Slurm answers, else why not. A node still ``completing`` the
    jobs of a previous test is waited for (up to ``wait`` seconds)."""
    if shutil.which("sinfo") is None:
        return "Slurm is not installed"
    env = dict(os.environ)
    if os.path.exists(CONF):
        env.setdefault("SLURM_CONF", CONF)
    deadline = time.monotonic() + wait
    while True:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                 timeout=10, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"sinfo failed: {e}"
        states = out.stdout.split()
        if out.returncode == 0 and any(s in ("idle", "mixed", "allocated") for s in states):
            return None
        if not any(s.startswith("completing") for s in states) or time.monotonic() > deadline:
            return f"no idle Slurm node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
        time.sleep(2.0)


@pytest.fixture
def slurm(monkeypatch):
    why = slurm_up()
    if why is not None:
        msg = f"local Slurm not running ({why}); start it: lsdask/jobqueue/local-slurm.sh start"
        if os.environ.get("LSDASK_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    if os.path.exists(CONF):
        monkeypatch.setenv("SLURM_CONF", CONF)

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

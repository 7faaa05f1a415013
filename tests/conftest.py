"""Shared fixtures."""

from __future__ import annotations

import os
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

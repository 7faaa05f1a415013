"""`lsdask rerun CONFIG --stage S KEY...`: redo single keys and what is made from them."""

from __future__ import annotations

from collections import Counter

from lsdask.cli import main
from lsdask.processors.testing import completions, make_survey, write_config
from lsdask.release import Release


def test_rerun_bricks_and_images(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path, bands=("g",))
    release = Release.from_config(cfg)
    make_survey(release.layout, nexp=3, bands=("g",))
    comp = tmp_path / "completions.txt"
    monkeypatch.setenv("LSDASK_TESTING_COMPLETIONS", str(comp))
    stages = ["images", "calibs", "zeropoints", "runbrick"]
    assert main(["run", str(cfg), "--stages", *stages, "--no-progress"]) == 0
    first = Counter(completions(comp))
    bricks = sorted(k for w, k in first if w == "runbrick")
    assert len(bricks) >= 3 and max(first.values()) == 1

    # one brick: only it is redone
    assert main(["rerun", str(cfg), "--stage", "runbrick", bricks[0], "--no-progress"]) == 0
    again = Counter(completions(comp)) - first
    assert again == Counter({("runbrick", bricks[0]): 1})

    # one image's zeropoints: it, and every brick it touches, nothing else
    with release.ledger() as led:
        zkey = sorted(led.states("zeropoints"))[0]
    before = Counter(completions(comp))
    assert main(["rerun", str(cfg), "--stage", "zeropoints", zkey, "--no-progress"]) == 0
    redone = Counter(completions(comp)) - before
    assert redone[("zeropoints", zkey)] == 1
    assert {w for w, _ in redone} <= {"zeropoints", "runbrick"}
    assert sum(1 for w, _ in redone if w == "zeropoints") == 1
    touched = [k for w, k in redone if w == "runbrick"]
    assert touched and len(touched) < len(bricks) + 1
    with release.ledger() as led:
        assert led.tasks("runbrick", "failed") == []

    # an unknown key is an error naming it
    assert main(["rerun", str(cfg), "--stage", "runbrick", "0000p000", "--no-progress"]) == 2
    assert "0000p000" in capsys.readouterr().err

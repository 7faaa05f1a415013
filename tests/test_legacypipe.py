"""The legacypipe processor with the real legacypipe and the Tractor (no mocks).

legacypipe's own test cases (``shared/data/legacypipe-test``) run through
``lsdask runbrick --processor legacypipe``: the catalogue must be identical to running
legacypipe's runbrick directly with the command line lsdask logged, and legacypipe's own
assertions for the case must hold. A SIGKILL after the ``srcs`` stage pickle resumes from
it. Skipped without the stack (see ``legacypipe_stack.py``), never in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import fitsio
import numpy as np
import pytest
from legacypipe_stack import assert_same_catalogue, ref_env, run_direct, stack_prefix

from lsdask.processors.legacypipe.launcher import LegacypipeError, Outcome, failure
from lsdask.processors.legacypipe.runbrick import custom_brickname, verify_checksums
from lsdask.survey.layout import ReleaseLayout


@pytest.fixture(scope="module")
def prefix() -> Path:
    return stack_prefix()


@pytest.fixture
def lp_env(prefix, monkeypatch):
    monkeypatch.setenv("LSDASK_LEGACYPIPE_PREFIX", str(prefix))
    return prefix


def copy_case(shared_data: Path, name: str, dest: Path) -> Path:
    src = shared_data / "legacypipe-test" / name
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    out = dest / name
    shutil.copytree(src, out)
    for p in out.rglob("*"):  # shared/ is read-only in CI; runbrick may write calibs here
        p.chmod(p.stat().st_mode | 0o200)
    return out


def write_config(path: Path, survey: Path, release: Path, legacypipe: str = "") -> Path:
    path.write_text(f"""
[release]
name = "lp"
survey_dir = "{survey}"
release_dir = "{release}"
processor = "legacypipe"

[stages.runbrick]
threads = 1

[legacypipe]
{legacypipe}
""")
    return path


def lsdask_runbrick(args: list[str], log: Path, env: dict | None = None,
                    wait: bool = True) -> subprocess.Popen | dict:
    f = open(log, "w")  # noqa: SIM115 - closed below / by the caller's wait
    proc = subprocess.Popen([sys.executable, "-m", "lsdask", "runbrick", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=f, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    if not wait:
        return proc
    out, _ = proc.communicate()
    f.close()
    assert proc.returncode == 0, log.read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def logged_command(log: Path, module: str = "legacypipe.runbrick") -> list[str]:
    """The runbrick arguments lsdask wrote first in its log (the ``+ ...`` line)."""
    import shlex

    for ln in log.read_text().splitlines():
        if ln.startswith("+ ") and f"-m {module} " in ln:
            words = shlex.split(ln[2:])
            return words[words.index(module) + 1:]
    raise AssertionError(f"no command line in {log}")


def direct_same_args(prefix: Path, log: Path, survey: Path, release: Path, out: Path,
                     tmp: Path, module: str = "legacypipe.runbrick",
                     env: dict | None = None) -> None:
    """Rerun lsdask's logged command by hand, into ``out`` (only the output dirs change)."""
    args = [a.replace(str(release), str(out)) for a in logged_command(log, module)]
    rc = run_direct(prefix, args, {**ref_env(survey), **(env or {})}, tmp / "direct.log",
                    module=module)
    assert rc == 0, (tmp / "direct.log").read_text()[-3000:]


def test_mzlsbass2_identical_to_direct_runbrick(shared_data, tmp_path, lp_env):
    """90Prime + Mosaic-3 (legacypipe's test_mzlsbass2): 3 Gaia stars; same catalogue."""
    survey = copy_case(shared_data, "mzlsbass2", tmp_path)
    release = tmp_path / "out"
    cfg = write_config(tmp_path / "lp.toml", survey, release)
    log = tmp_path / "lsdask.log"
    res = lsdask_runbrick([cfg, "--brick", "1773p595", "--zoom", 1300, 1500, 700, 900], log)
    layout = ReleaseLayout(survey, release, "lp")
    tractor = layout.tractor("1773p595")
    assert res["tractor"] == str(tractor) and res["nsources"] > 0
    assert verify_checksums(layout, "1773p595") == []
    # legacypipe's own assertions for this case
    t = fitsio.read(str(tractor))
    assert np.sum(np.char.strip(t["ref_cat"]) == "G2") == 3
    assert np.sum(t["ref_id"] > 0) == 3
    # checkpoints and stage pickles were removed after success
    assert not layout.checkpoint("1773p595").exists()
    assert not list(layout.pickles_dir.rglob("*.pickle"))
    # the command line in the log, rerun by hand, makes the same catalogue
    direct = tmp_path / "direct"
    direct_same_args(lp_env, log, survey, release, direct, tmp_path)
    n = assert_same_catalogue(tractor, ReleaseLayout(survey, direct).tractor("1773p595"))
    assert n == res["nsources"]
    # a second call finds the brick done (checksums verify) and does nothing
    again = lsdask_runbrick([cfg, "--brick", "1773p595", "--zoom", 1300, 1500, 700, 900],
                            tmp_path / "again.log")
    assert again == {"brick": "1773p595", "skipped": True}


def test_testcase12_maskbits_identical(shared_data, tmp_path, lp_env):
    """A custom brick (--radec) on a cluster field: legacypipe's CLUSTER maskbits hold."""
    survey = copy_case(shared_data, "testcase12", tmp_path)
    release = tmp_path / "out"
    cfg = write_config(tmp_path / "lp.toml", survey, release)
    log = tmp_path / "lsdask.log"
    res = lsdask_runbrick([cfg, "--radec", 346.684, 12.791, "--width", 100, "--height", 100],
                          log)
    brick = custom_brickname(346.684, 12.791)
    assert brick == "custom-346684p12791"
    layout = ReleaseLayout(survey, release, "lp")
    assert res["tractor"] == str(layout.tractor(brick))
    m = fitsio.read(str(layout.coadd(brick, "maskbits.fits.fz")))
    c = Counter(m.ravel().tolist())
    assert c[0] >= 4000 and c[0x2000] >= 4000  # legacypipe.bits.MASKBITS['CLUSTER']
    direct = tmp_path / "direct"
    direct_same_args(lp_env, log, survey, release, direct, tmp_path)
    assert_same_catalogue(layout.tractor(brick), ReleaseLayout(survey, direct).tractor(brick))


def test_testcase4_computes_missing_sky_calib(shared_data, tmp_path, lp_env):
    """legacypipe's test_4 call: the missing sky-single calib is made on the fly (no
    --skip-calibs), with unWISE forced photometry; same catalogue as the direct run."""
    survey = copy_case(shared_data, "testcase4", tmp_path)
    sky = (survey / "calib/sky-single/decam/CP/V4.8.2/CP20170315/c4d_170316_062107_ooi_z_ls9"
           / "c4d_170316_062107_ooi_z_ls9-N2-splinesky.fits")
    sky.unlink(missing_ok=True)
    release = tmp_path / "out"
    unwise = survey / "images" / "unwise"
    # legacypipe's test_4 shrinks the spline-sky box to fit the cutout before calling
    # runbrick's main(); the same, as a runbrick entry module on the launcher's PYTHONPATH
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "tc4_runbrick.py").write_text(
        "import sys\nfrom legacypipe.decam import DecamImage\n"
        "from legacypipe.runbrick import main\n"
        "DecamImage.splinesky_boxsize = 128\nsys.exit(main())\n")
    cfg = write_config(tmp_path / "lp.toml", survey, release, f"""
runbrick_module = "tc4_runbrick"
pythonpath = ["{tmp_path / 'mods'}"]
skip_calibs = false
wise = true
unwise_coadds_dir = "{unwise}"
unwise_coadds_timeresolved_dir = "{survey / 'images' / 'unwise-tr'}"
extra_args = ["--coadd-bw", "--blob-image", "--no-wise-ceres"]
""")
    log = tmp_path / "lsdask.log"
    res = lsdask_runbrick([cfg, "--brick", "1867p255", "--zoom", 2050, 2300, 1150, 1400,
                           "--bands", "grz"], log)
    assert "-m tc4_runbrick --brick 1867p255" in log.read_text()
    assert sky.exists(), "runbrick did not compute the missing splinesky calib"
    layout = ReleaseLayout(survey, release, "lp")
    t = fitsio.read(res["tractor"])
    assert len(t) == res["nsources"] > 0
    assert np.any(t["flux_w1"] != 0)  # unWISE forced photometry ran
    direct = tmp_path / "direct"
    sky.unlink()
    direct_same_args(lp_env, log, survey, release, direct, tmp_path, module="tc4_runbrick",
                     env={"PYTHONPATH": f"{tmp_path / 'mods'}:"})
    assert sky.exists()
    assert_same_catalogue(layout.tractor("1867p255"),
                          ReleaseLayout(survey, direct).tractor("1867p255"))


def test_sigkill_after_srcs_resumes_from_pickle(shared_data, tmp_path, lp_env):
    """Kill the whole task (lsdask + legacypipe) once the srcs pickle exists: the rerun
    reads the pickle instead of recomputing tims..srcs, and the catalogue is the same as an
    uninterrupted run's."""
    survey = copy_case(shared_data, "mzlsbass2", tmp_path)
    release = tmp_path / "out"
    cfg = write_config(tmp_path / "lp.toml", survey, release)
    layout = ReleaseLayout(survey, release, "lp")
    args = [cfg, "--brick", "1773p595", "--zoom", 1300, 1500, 700, 900]
    proc = lsdask_runbrick(args, tmp_path / "killed.log", wait=False)
    srcs = layout.stage_pickle("1773p595", "srcs")
    t0 = time.time()
    while not srcs.exists():
        assert proc.poll() is None, "runbrick ended before the srcs pickle appeared"
        assert time.time() - t0 < 600
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not layout.tractor("1773p595").exists()
    res = lsdask_runbrick(args, tmp_path / "resumed.log")
    text = (tmp_path / "resumed.log").read_text()
    assert "runbrick-1773p595-srcs.pickle" in res["resumed_from"]
    assert "resuming from runbrick-1773p595-srcs.pickle" in text
    # legacypipe read the srcs pickle and never ran the stages up to srcs again
    assert f"Reading pickle {srcs}" in text
    for stage in ("tims", "refs", "outliers", "halos", "srcs"):
        assert not re.search(rf"^Running stage {stage}\b", text, re.M), stage
    assert "Running stage fitblobs" in text
    # same sources as an uninterrupted run (the direct run of the logged command)
    direct = tmp_path / "direct"
    direct_same_args(lp_env, tmp_path / "resumed.log", survey, release, direct, tmp_path)
    assert_same_catalogue(layout.tractor("1773p595"),
                          ReleaseLayout(survey, direct).tractor("1773p595"))


def test_failure_classes():
    """Exit status and log tail -> memory / input (naming the file) / error."""
    from lsdask.errors import InputError
    from lsdask.processors import BrickMemoryError

    oom = failure(Outcome(-9, ["Stage fitblobs ..."]), "runbrick b")
    assert isinstance(oom, BrickMemoryError)
    bad = failure(Outcome(1, ["Traceback (most recent call last):",
                              "OSError: FITSIO status = 104: could not open the named file",
                              "failed to find or open the following file: (ffopen)",
                              "/s/images/decam/x_ooi_g.fits.fz"]), "runbrick b")
    assert isinstance(bad, InputError) and "/s/images/decam/x_ooi_g.fits.fz" in str(bad)
    other = failure(Outcome(1, ["Traceback (most recent call last):",
                                "ValueError: something odd"]), "runbrick b")
    assert isinstance(other, LegacypipeError) and "ValueError: something odd" in str(other)
    # runbrick's NothingToDoError exits 0: a success with no sources, not a failure
    assert Outcome(0, ["[INFO legacypipe.runbrick main] No CCDs touching brick"]).nothing_to_do
    assert not Outcome(0, ["Stage writecat finished"]).nothing_to_do


def test_launcher_forms_and_config_errors(tmp_path, monkeypatch):
    """command / python / prefix launchers; no launcher or an unbuilt prefix is a clear error;
    the reference catalogues default to the survey dir."""
    from lsdask.config import LegacypipeSection, parse_config
    from lsdask.errors import ConfigError
    from lsdask.processors.legacypipe.launcher import make_launcher

    monkeypatch.delenv("LSDASK_LEGACYPIPE_PREFIX", raising=False)
    survey = tmp_path / "survey"
    shifter = ["shifter", "--image=docker:legacysurvey/legacypipe:DR11.1.0", "python", "-O"]
    lc = make_launcher(LegacypipeSection(command=shifter, env={"A": "1"}), survey)
    assert lc.command("legacypipe.runbrick", ["--brick", "x"]) == [
        *shifter, "-m", "legacypipe.runbrick", "--brick", "x"]
    assert lc.env["GAIA_CAT_DIR"] == str(survey / "gaia") and lc.env["A"] == "1"
    assert lc.env["TYCHO2_KD_DIR"] == str(survey)
    line = lc.shell_line("legacypipe.runbrick", ["--brick", "x"])
    assert line.startswith("A=1 ") and line.endswith("-m legacypipe.runbrick --brick x")
    native = make_launcher(LegacypipeSection(python=Path("/opt/lp/bin/python"),
                                             pythonpath=[Path("/opt/lp/py")]), survey)
    assert native.argv == ["/opt/lp/bin/python", "-O"] and native.env["PYTHONPATH"] == \
        "/opt/lp/py"
    with pytest.raises(ConfigError, match="LSDASK_LEGACYPIPE_PREFIX"):
        make_launcher(LegacypipeSection(), survey)
    with pytest.raises(ConfigError, match="no finished build"):
        make_launcher(LegacypipeSection(prefix=tmp_path), survey)
    (tmp_path / "env.sh").write_text("")
    (tmp_path / ".stamp").write_text("x")
    pre = make_launcher(LegacypipeSection(prefix=tmp_path, pythonpath=[Path("/x")]), survey)
    cmd = pre.command("m", [])
    assert cmd[:2] == ["bash", "-c"] and cmd[3] == str(tmp_path / "env.sh")
    assert cmd[4:] == ["python", "-O", "-m", "m"] and pre.env["LSDASK_PYTHONPATH"] == "/x"
    assert pre.shell_line("m", []).startswith(
        f". {tmp_path / 'env.sh'} && export PYTHONPATH=/x:$PYTHONPATH && ")
    # a per-stage processor; an unknown one names the key and the file
    cfg = parse_config({"release": {"name": "x", "survey_dir": "s"},
                        "stages": {"runbrick": {"processor": "legacypipe"}}}, "r.toml")
    assert cfg.processor_name("runbrick") == "legacypipe"
    assert cfg.processor_name("calibs") == "lite"
    with pytest.raises(ConfigError, match=r"r\.toml: key 'stages\.calibs\.processor'"):
        parse_config({"release": {"name": "x", "survey_dir": "s"},
                      "stages": {"calibs": {"processor": "legacypipes"}}}, "r.toml")

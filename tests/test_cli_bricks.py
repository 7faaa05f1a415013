"""The ``lsdask`` command: bricks, survey-bricks, exit codes, no tracebacks."""

import os
import subprocess
import sys
from pathlib import Path

import fitsio

from lsdask.survey.ccds import write_ccds
from lsdask.testing.ccdgen import random_ccds

ROOT = Path(__file__).resolve().parents[1]


def lsdask(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "lsdask", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_subcommands():
    r = lsdask("--help")
    assert r.returncode == 0
    for cmd in ("bricks", "survey-bricks"):
        assert cmd in r.stdout


def test_bricks_on_real_ccds_prints_clean_names(shared_data):
    files = sorted(shared_data.glob("legacypipe-test/*/survey-ccds*"))
    r = lsdask("bricks", "--ccds", *files)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "2447p120" in lines and "0091p035" in lines
    assert all(len(x) == 8 and x[4] in "pm" for x in lines)  # nothing but names on stdout
    from lsdask.survey.bricks import brick_grid

    ras = [brick_grid().brick(n).ra for n in lines]
    assert ras == sorted(ras)
    assert "bricks touched" in r.stderr


def test_bricks_region_bands_and_output(tmp_path):
    ccds = random_ccds(400, seed=11, ra_range=(355, 365), dec_range=(-3, 3))
    path = write_ccds(ccds, tmp_path / "survey-ccds-gen.fits.gz")
    out = tmp_path / "bricks.txt"
    r = lsdask("bricks", "--ccds", path, "--minra", 359, "--maxra", 1, "--mindec", -1,
               "--maxdec", 1, "--bands", "gr", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    names = out.read_text().split()
    assert names and all(n.startswith(("359", "000")) for n in names)
    r2 = lsdask("bricks", "--ccds", path, "--minra", 359, "--maxra", 1, "--mindec", -1,
                "--maxdec", 1, "--bands", "gr", "--ignore-cuts")
    assert set(names) <= set(r2.stdout.split())


def test_bricks_with_config_region(tmp_path):
    ccds = random_ccds(400, seed=12, ra_range=(179, 182), dec_range=(31, 34))
    survey = tmp_path / "survey"
    write_ccds(ccds, survey / "survey-ccds-cfg.fits.gz")
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[release]\nname = "cfg"\nsurvey_dir = "{survey}"\n[region]\nname = "demo"\n')
    r = lsdask("bricks", cfg)
    assert r.returncode == 0, r.stderr
    from lsdask.survey.bricks import brick_grid

    for n in r.stdout.split():
        b = brick_grid().brick(n)
        assert 180 <= b.ra <= 181 and 32 <= b.dec <= 33


def test_exit_codes_and_messages(tmp_path):
    good = write_ccds(random_ccds(20), tmp_path / "good.fits")
    trunc = tmp_path / "truncated.fits"
    trunc.write_bytes(good.read_bytes()[:5000])
    r = lsdask("bricks", "--ccds", trunc)
    assert r.returncode == 1 and "truncated.fits" in r.stderr and "Traceback" not in r.stderr
    c = random_ccds(5)
    fitsio.write(str(tmp_path / "nocd.fits"), c[[n for n in c.dtype.names if n != "cd1_1"]])
    r = lsdask("bricks", "--ccds", tmp_path / "nocd.fits")
    assert r.returncode == 1 and "cd1_1" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[release]\nname = "x"\nsurvey_dir = "/tmp"\nbogus = 1\n')
    r = lsdask("bricks", bad)
    assert r.returncode == 2 and "bad.toml" in r.stderr and "release.bogus" in r.stderr
    assert "Traceback" not in r.stderr
    bad.write_text('[release]\nname = "x"\nsurvey_dir = "/tmp"\n[stages.runbrick]\nthreads = "x"\n')
    r = lsdask("bricks", bad)
    assert r.returncode == 2 and "stages.runbrick.threads" in r.stderr
    r = lsdask("bricks", "--minra", 1)
    assert r.returncode == 2
    r = lsdask("no-such-command")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_survey_bricks_command(tmp_path):
    out = tmp_path / "sb" / "survey-bricks.fits.gz"
    r = lsdask("survey-bricks", "-o", out)
    assert r.returncode == 0, r.stderr
    assert fitsio.FITS(str(out))[1].get_nrows() == 662174

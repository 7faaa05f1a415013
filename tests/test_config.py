"""Release configuration: parsing, $VAR expansion, regions, and clear errors."""

import textwrap

import numpy as np
import pytest

from lsdask.config import load_config
from lsdask.errors import ConfigError

GOOD = """
[release]
name = "demo"
release = 9010
survey_dir = "$LSDASK_TEST_ROOT/survey"
release_dir = "out"
bands = ["g", "r", "z"]

[region]
name = "field"

[regions.field]
ra = [350.0, 10.0]
dec = [-1, 1]

[stages.runbrick]
threads = 2
width = 400

[cluster]
profile = "local"
"""


def _write(tmp_path, text, name="release.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LSDASK_TEST_ROOT", str(tmp_path / "root"))
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.release.survey_dir == tmp_path / "root" / "survey"
    assert cfg.release.release_dir == tmp_path / "out"  # relative to the config file
    assert cfg.stages.runbrick.threads == 2 and cfg.stages.runbrick.height == 3600
    r = cfg.region_box()
    assert r.wraps and r.contains(355, 0) and r.contains(5, 0) and not r.contains(180, 0)
    assert cfg.layout.tractor("1800p325").parts[-3:] == ("tractor", "180", "tractor-1800p325.fits")
    assert cfg.layout.survey_ccds.name == "survey-ccds-demo.fits.gz"
    assert len(cfg.hash()) == 16 and cfg.hash() == load_config(tmp_path / "release.toml").hash()


def test_builtin_region_and_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, """
        [release]
        name = "x"
        survey_dir = "/tmp/x"
        [region]
        name = "demo"
    """))
    r = cfg.region_box()
    assert (r.ramin, r.ramax, r.decmin, r.decmax) == (180.0, 181.0, 32.0, 33.0)
    assert cfg.release.release_dir is None and cfg.layout.release_dir == cfg.layout.survey_dir


@pytest.mark.parametrize("text,match", [
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\nthredas = 2\n', r"unknown key 'release.thredas'"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\n[stages.runbrick]\nthreads = "two"\n',
     r"'stages.runbrick.threads' must be int"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\n[stages.runbrick]\nnsigma = true\n',
     r"'stages.runbrick.nsigma' must be a number"),
    ('[release]\nname = "x"\n', r"missing required key 'release.survey_dir'"),
    ('[release]\nname = "x"\nsurvey_dir = "$LSDASK_SURELY_UNSET_VAR/a"\n',
     r"'release.survey_dir'.*LSDASK_SURELY_UNSET_VAR is not set"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\n[region]\nname = "nowhere"\n',
     r"'region.name': unknown region 'nowhere'"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\n[region]\nra = [1]\ndec = [0, 1]\n',
     r"'region.ra' must be a list of two numbers"),
    ('[stages]\n', r"missing required table '\[release\]'"),
    ('[release\nname = 1', r"not valid TOML"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\nrelease = 9999\n',
     r"'release.release': 9999 is not a Legacy Surveys release number .*desitarget.* use 9010"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\nrelease = 9011\n',
     r"'release.release': 9011 is a 'N' .* cameras \['decam'\] are 'S'; use 9010"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\ncameras = ["mosaic", "90prime"]\n',
     r"'release.release': 9010 is a 'S' .* are 'N'; use 9011"),
    ('[release]\nname = "x"\nsurvey_dir = "/tmp"\ncameras = ["decam", "mosaic"]\n'
     'release = 9011\n', r"'release.release': cameras of both photometric systems"),
])
def test_errors_name_file_and_key(tmp_path, text, match):
    p = _write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert "bad.toml" in str(e.value)


def test_release_numbers_desitarget_knows(tmp_path):
    """The default is DR9 DECam (9010); the north cameras take 9011; every accepted number
    is one desitarget maps to the camera's photometric system."""
    from lsdask.survey.releases import RELEASES, photsys

    cfg = load_config(_write(tmp_path, '[release]\nname = "x"\nsurvey_dir = "/tmp"\n'))
    assert cfg.release.release == 9010 and photsys(9010) == "S"
    north = load_config(_write(tmp_path, '[release]\nname = "x"\nsurvey_dir = "/tmp"\n'
                               'cameras = ["mosaic", "90prime"]\nrelease = 9011\n'))
    assert north.release.release == 9011 and photsys(9011) == "N"
    from desitarget import io
    assert {r: i.photsys for r, i in RELEASES.items()} == {
        int(k): v for k, v in io.releasedict.items()}
    assert list(io.release_to_photsys(np.array([9010, 9011]))) == [b"S", b"N"]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")

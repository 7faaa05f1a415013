"""Finding the real legacypipe stack for tests, and running legacypipe directly.

The stack is a prefix built by ``shared/vendor/legacypipe-stack/build.sh`` (``.ci/run``
builds it into a cache folder and sets ``LSDASK_LEGACYPIPE_PREFIX``). Without it the
legacypipe tests skip, saying how to build it; with ``LSDASK_REQUIRE_LEGACYPIPE=1`` (CI)
they fail instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import fitsio
import numpy as np
import pytest

DEFAULT_PREFIX = Path.home() / ".cache" / "lsdask" / "legacypipe-stack"
BUILD_HINT = ("build it with: bash ../shared/vendor/legacypipe-stack/build.sh \"\" "
              "~/.cache/lsdask/legacypipe-stack  (about 13 min), then set "
              "LSDASK_LEGACYPIPE_PREFIX to that folder")


def stack_prefix() -> Path:
    """The built prefix, or skip (fail under ``LSDASK_REQUIRE_LEGACYPIPE=1``)."""
    prefix = Path(os.environ.get("LSDASK_LEGACYPIPE_PREFIX", DEFAULT_PREFIX))
    if (prefix / ".stamp").is_file() and (prefix / "env.sh").is_file():
        return prefix
    msg = f"legacypipe stack not built in {prefix}: {BUILD_HINT}"
    if os.environ.get("LSDASK_REQUIRE_LEGACYPIPE") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def run_direct(prefix: Path, args: list[str], env: dict[str, str], log: Path,
               module: str = "legacypipe.runbrick", script: Path | None = None) -> int:
    """Run ``python -O -m module args`` (or ``python -O script args``) in the stack's
    environment (no lsdask involved)."""
    extra = env.get("PYTHONPATH")
    pp = f"export PYTHONPATH={shlex.quote(extra)}$PYTHONPATH && " if extra else ""
    target = shlex.quote(str(script)) if script is not None else f"-m {module}"
    cmd = (f". {shlex.quote(str(prefix / 'env.sh'))} && {pp}exec python -O {target} "
           + shlex.join(args))
    with open(log, "w") as f:
        return subprocess.run(["bash", "-c", cmd], env={**os.environ, **env}, stdout=f,
                              stderr=subprocess.STDOUT).returncode


def ref_env(survey_dir: Path) -> dict[str, str]:
    """What legacypipe's own runbrick_test.py sets (``set_ref_env``)."""
    return {"TYCHO2_KD_DIR": str(survey_dir), "GAIA_CAT_DIR": str(survey_dir / "gaia"),
            "GAIA_CAT_VER": "2", "GAIA_CAT_PREFIX": "chunk", "GAIA_CAT_SCHEME": "ring",
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def assert_same_catalogue(a: Path, b: Path) -> int:
    """Same rows, columns and values (NaN == NaN); returns the row count."""
    ta, tb = fitsio.read(str(a), ext=1), fitsio.read(str(b), ext=1)
    assert ta.dtype.names == tb.dtype.names, (a, b)
    assert len(ta) == len(tb), (len(ta), len(tb))
    for c in ta.dtype.names:
        x, y = ta[c], tb[c]
        if x.dtype.kind == "f":
            same = (x == y) | (np.isnan(x) & np.isnan(y))
        else:
            same = x == y
        assert np.all(same), f"column {c} differs between {a} and {b}"
    return len(ta)


def ensure_tiles_file(prefix: Path) -> Path:
    """legacyzpts' annotation reads ``legacyzpts/data/decam-tiles_obstatus.fits`` (the DECam
    tiling: tile id -> pass, E(B-V)), a data file the vendored legacypipe source lacks. Write a
    placeholder when it is missing, as build.sh does for the dust maps: tiles 0-99999, all
    pass 0 and E(B-V) 0 (the simulated OBJECT names ``DECaLS_<n>_<band>`` carry small n)."""
    data = prefix / "src" / "legacypipe" / "py" / "legacyzpts" / "data"
    path = data / "decam-tiles_obstatus.fits"
    if not path.exists():
        t = np.zeros(100_000, dtype=[("tileid", "i4"), ("pass", "i2"), ("ebv_med", "f4")])
        t["tileid"] = np.arange(len(t))
        tmp = path.with_suffix(".tmp.fits")
        fitsio.write(str(tmp), t, clobber=True)
        os.replace(tmp, path)
    return path

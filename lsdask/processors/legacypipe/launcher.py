"""Calling legacypipe as a child process through a configurable launcher.

At NERSC legacypipe lives in a container or its own environment, never in the
driver's venv, so every legacypipe step is a command line:

- ``[legacypipe] command = ["shifter", "--image=...", "python", "-O"]`` (or podman-hpc):
  the command runs as given, followed by ``-m module args...``;
- ``[legacypipe] python = ".../bin/python"``: a native install (``pythonpath`` added);
- ``[legacypipe] prefix``, else ``$LSDASK_LEGACYPIPE_PREFIX``: a prefix built by the
  vendored ``build.sh`` whose ``env.sh`` sets PATH, PYTHONPATH and DUST_DIR.

The exact command line (with the variables lsdask sets) is written first in the task log,
so an operator can rerun it by hand; the output follows in the log, and runbrick's stages
are reported as the task's phases as they end (:mod:`.stages`). Failures are classed
from the exit status and the log: memory -> :class:`BrickMemoryError`, a missing or
corrupt input file -> :class:`InputError` naming it, anything else a
:class:`LegacypipeError` with the last traceback line.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, InputError, LsdaskError
from .. import BrickMemoryError
from .stages import report_line

PREFIX_VAR = "LSDASK_LEGACYPIPE_PREFIX"


class LegacypipeError(LsdaskError):
    """legacypipe failed for a reason that is neither memory nor a bad input file."""


@dataclass
class Launcher:
    """The argv prefix that starts legacypipe's Python, and the environment to add."""

    argv: list[str]
    env: dict[str, str]
    source: str | None = None  # an env.sh sourced first (prefix installs)

    def command(self, module: str, args: list[str]) -> list[str]:
        """The full argv of ``python -m module args``."""
        cmd = [*self.argv, "-m", module, *args]
        if self.source is None:
            return cmd
        # env.sh sets PYTHONPATH: the configured pythonpath goes in front of it
        return ["bash", "-c", '. "$0" && export PYTHONPATH="${LSDASK_PYTHONPATH:+'
                '$LSDASK_PYTHONPATH:}$PYTHONPATH" && exec "$@"', self.source, *cmd]

    def shell_line(self, module: str, args: list[str]) -> str:
        """The same as one shell line (variables, then the command), to rerun by hand."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())
                       if k != "LSDASK_PYTHONPATH")
        cmd = shlex.join([*self.argv, "-m", module, *args])
        src = f". {shlex.quote(self.source)} && " if self.source else ""
        if "LSDASK_PYTHONPATH" in self.env:
            pp = shlex.quote(self.env["LSDASK_PYTHONPATH"] + os.pathsep)
            src += f"export PYTHONPATH={pp}$PYTHONPATH && "
        return f"{src}{env} {cmd}" if env else f"{src}{cmd}"


def prefix_dir(configured: Path | None = None) -> Path | None:
    """``configured`` or ``$LSDASK_LEGACYPIPE_PREFIX``, when it holds a finished build."""
    p = configured or os.environ.get(PREFIX_VAR)
    if not p:
        return None
    path = Path(p)
    if not ((path / "env.sh").is_file() and (path / ".stamp").is_file()):
        raise ConfigError(f"legacypipe prefix {path} holds no finished build (no env.sh/.stamp);"
                          " build it with shared/vendor/legacypipe-stack/build.sh")
    return path


def make_launcher(settings: Any, survey_dir: Path) -> Launcher:
    """The launcher for ``settings`` (the ``[legacypipe]`` section) and a survey dir."""
    env: dict[str, str] = {}
    source = None
    if settings.command:
        argv = [str(a) for a in settings.command]
    elif settings.python is not None:
        argv = [str(settings.python), "-O"]
    else:
        prefix = prefix_dir(settings.prefix)
        if prefix is None:
            raise ConfigError(
                "legacypipe processor: no launcher: set [legacypipe] command, python or prefix "
                f"in the release config, or ${PREFIX_VAR} to a prefix built by "
                "shared/vendor/legacypipe-stack/build.sh")
        argv = ["python", "-O"]
        source = str(prefix / "env.sh")
    if settings.pythonpath:
        var = "PYTHONPATH" if source is None else "LSDASK_PYTHONPATH"
        env[var] = os.pathsep.join(str(p) for p in settings.pythonpath)
    env.update(reference_env(settings, survey_dir))
    env.update({str(k): str(v) for k, v in settings.env.items()})
    return Launcher(argv, env, source)


def reference_env(settings: Any, survey_dir: Path) -> dict[str, str]:
    """The reference-catalogue variables runbrick reads, with the survey dir as default."""
    env = {
        "GAIA_CAT_DIR": str(settings.gaia_cat_dir or Path(survey_dir) / "gaia"),
        "GAIA_CAT_VER": str(settings.gaia_cat_ver),
        "GAIA_CAT_PREFIX": str(settings.gaia_cat_prefix),
        "GAIA_CAT_SCHEME": str(settings.gaia_cat_scheme),
        "TYCHO2_KD_DIR": str(settings.tycho2_kd_dir or survey_dir),
        "PS1CAT_DIR": str(getattr(settings, "ps1cat_dir", None) or Path(survey_dir) / "ps1"),
        # one thread per legacypipe process: it parallelises with --threads itself
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1",
    }
    for key, var in (("dust_dir", "DUST_DIR"), ("largegalaxies_cat", "LARGEGALAXIES_CAT"),
                     ("sky_template_dir", "SKY_TEMPLATE_DIR"),
                     ("unwise_coadds_dir", "UNWISE_COADDS_DIR"),
                     ("unwise_coadds_timeresolved_dir", "UNWISE_COADDS_TIMERESOLVED_DIR"),
                     ("unwise_model_sky_dir", "UNWISE_MODEL_SKY_DIR")):
        v = getattr(settings, key, None)
        if v is not None:
            env[var] = str(v)
    for var in ("GAIA_CAT_DIR", "TYCHO2_KD_DIR", "PS1CAT_DIR", "DUST_DIR", "LARGEGALAXIES_CAT",
                "SKY_TEMPLATE_DIR", "UNWISE_COADDS_DIR", "UNWISE_COADDS_TIMERESOLVED_DIR",
                "UNWISE_MODEL_SKY_DIR"):
        if var in env:  # a task may run in a scratch working directory
            env[var] = os.path.abspath(env[var])
    return env


@dataclass
class Outcome:
    """What a legacypipe command did: exit code and the tail of its output."""

    returncode: int
    tail: list[str]

    @property
    def nothing_to_do(self) -> bool:
        return any("NothingToDoError" in ln or "No CCDs touching brick" in ln
                   or "No photometric CCDs touching brick" in ln for ln in self.tail)


def run(launcher: Launcher, module: str, args: list[str], cwd: Path | None = None,
        what: str = "") -> Outcome:
    """Run ``module`` with ``args``; output to this process's stdout (the task log)."""
    line = launcher.shell_line(module, args)
    print(f"+ {'cd ' + shlex.quote(str(cwd)) + ' && ' if cwd else ''}{line}", flush=True)
    env = {**os.environ, **launcher.env}
    tail: collections.deque[str] = collections.deque(maxlen=400)
    proc = subprocess.Popen(launcher.command(module, args), env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, preexec_fn=_die_with_parent)
    try:
        assert proc.stdout is not None
        for ln in proc.stdout:
            sys.stdout.write(ln)
            tail.append(ln.rstrip("\n"))
            report_line(ln)  # runbrick's stages as the task's phases
        rc = proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise
    sys.stdout.flush()
    out = Outcome(rc, list(tail))
    if rc != 0:
        raise failure(out, what or module)
    return out


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the task process dies (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|std::bad_alloc|Killed")
_INPUT = re.compile(r"FileNotFoundError|No such file|FITSIO status|could not open|"
                    r"IOError|OSError|corrupt|truncated|END keyword", re.IGNORECASE)
_PATH = re.compile(r"""['"]?(/[^\s'",:)]+)""")


def failure(out: Outcome, what: str) -> LsdaskError:
    """The exception for a failed command: memory, input (naming the file) or error."""
    last = _last_error(out.tail) or f"exited with code {out.returncode}"
    if out.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or any(
            _MEMORY.search(ln) for ln in out.tail[-40:]):
        return BrickMemoryError(f"{what}: out of memory ({last})")
    if _INPUT.search(last):
        paths = [p for ln in reversed(out.tail[-60:]) for p in _PATH.findall(ln)
                 if "/site-packages/" not in p and not p.endswith(".py")]
        where = paths[0] if paths else "an input file"
        return InputError(f"{what}: bad or missing input {where}: {last}")
    return LegacypipeError(f"{what}: {last}")


def _last_error(tail: list[str]) -> str | None:
    """The last traceback line (``SomeError: message``) of the output, if any."""
    for ln in reversed(tail):
        s = ln.strip()
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*", s):
            return s[:500]
    return None

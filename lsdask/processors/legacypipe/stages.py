"""legacypipe runbrick's stages as task phases, read from its output as it runs.

runbrick announces each stage it runs (``astrometry.util.stages.runstage``) and, when the
stage ends, prints its resources (``mystagefunc`` in ``legacypipe/runbrick.py``, with
astrometry.net's ``CpuMeas`` and ``MemMeas``)::

    Running stage fitblobs
    [INFO legacypipe.runbrick mystagefunc (runbrick.py:4958) pid18861 443.98] Resources for
    stage fitblobs : Wall: 419.01 s, CPU: 418.90 s, VmPeak: 541 MB, VmSize: 524 MB, VmRSS:
    269 MB, VmData: 373 MB, maxrss: 0.313856 MB

(the second on one line). ``CPU`` is the main process's: with ``--threads`` > 1 the pool
workers' CPU is not in it. Stages read back from a pickle print neither line.
"""

from __future__ import annotations

import re
from typing import Any

from ... import phases

_RUNNING = re.compile(r"^Running stage (\w+)\s*$")
_RESOURCES = re.compile(r"Resources for stage (\w+) :(.*)$")
_FIELD = re.compile(r"\b(Wall|CPU|VmRSS|VmPeak): ([0-9.]+) (s|MB|kB)\b")
_BYTES = {"MB": 2.0**20, "kB": 2.0**10}


def stage_started(line: str) -> str | None:
    """The stage a ``Running stage <name>`` line starts, else None."""
    m = _RUNNING.match(line.strip())
    return m.group(1) if m else None


def parse_resources(line: str) -> dict[str, Any] | None:
    """``{"name", "wall", "cpu", "rss", "vmpeak"}`` (seconds, bytes; None when absent) of a
    ``Resources for stage`` line, else None."""
    m = _RESOURCES.search(line)
    if m is None:
        return None
    vals: dict[str, float] = {}
    for key, num, unit in _FIELD.findall(m.group(2)):
        vals[key] = float(num) * _BYTES.get(unit, 1.0)
    if "Wall" not in vals:
        return None
    return {"name": m.group(1), "wall": vals["Wall"], "cpu": vals.get("CPU"),
            "rss": vals.get("VmRSS"), "vmpeak": vals.get("VmPeak")}


def report_line(line: str) -> None:
    """Report a stage starting or ending (:mod:`lsdask.phases`) when ``line`` says so."""
    name = stage_started(line)
    if name is not None:
        phases.begin(name)
        return
    res = parse_resources(line)
    if res is not None:
        phases.end(res["name"], res["wall"], res["cpu"], res["rss"])

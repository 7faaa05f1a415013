"""Where the time goes: the phases tasks reported (``attempts.phases`` of the ledger), summed
per stage and phase, as numbers and as a bar plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..phases import totals
from .plots import save

#: The row of a stage for the time of its attempts spent outside any reported phase (the
#: child's start-up, imports, waiting for a lock ...).
OUTSIDE = "(outside phases)"


@dataclass
class PhaseStats:
    """One stage's phase over the attempts that reported it (seconds)."""

    stage: str
    phase: str
    attempts: int
    total_wall: float
    median_wall: float
    total_cpu: float | None
    median_cpu: float | None
    share: float  # of the wall of the stage's attempts that reported phases


def _median(v: list[float]) -> float | None:
    return statistics.median(v) if v else None


def phase_stats(rows: list[dict[str, Any]]) -> list[PhaseStats]:
    """Per stage and phase (in order of first appearance, then the stage's time outside its
    phases), from ledger attempt rows with decoded ``phases`` (:meth:`Ledger.phase_rows`)."""
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    stage_wall: dict[str, float] = {}
    for r in rows:
        per = totals(r["phases"])
        wall = float(r["wall"] or 0.0)
        stage_wall[r["stage"]] = stage_wall.get(r["stage"], 0.0) + wall
        for name, t in per.items():
            walls.setdefault((r["stage"], name), []).append(float(t["wall"] or 0.0))
            if t["cpu"] is not None:
                cpus.setdefault((r["stage"], name), []).append(float(t["cpu"]))
        if r["wall"] is not None:
            outside = max(0.0, wall - sum(float(t["wall"] or 0.0) for t in per.values()))
            walls.setdefault((r["stage"], OUTSIDE), []).append(outside)
    keys = sorted(walls, key=lambda k: (list(stage_wall).index(k[0]), k[1] == OUTSIDE))
    out = []
    for stage, name in keys:
        w, c = walls[(stage, name)], cpus.get((stage, name), [])
        out.append(PhaseStats(stage, name, len(w), sum(w), statistics.median(w),
                              sum(c) if c else None, _median(c),
                              sum(w) / stage_wall[stage] if stage_wall[stage] > 0 else 0.0))
    return out


def plot_phases(stats: list[PhaseStats], path: Path) -> Path:
    """Horizontal bars: total wall per stage and phase, coloured by stage (time outside the
    phases in grey)."""
    span = max((s.total_wall for s in stats), default=0.0)
    unit, scale = ("h", 3600.0) if span > 7200 else ("min", 60.0) if span > 600 else ("s", 1.0)
    stages = list(dict.fromkeys(s.stage for s in stats))
    fig = Figure(figsize=(7, min(1.0 + 0.28 * len(stats), 12)))
    ax = fig.subplots()
    y = list(range(len(stats)))[::-1]
    ax.barh(y, [s.total_wall / scale for s in stats],
            color=["lightgrey" if s.phase == OUTSIDE else f"C{stages.index(s.stage) % 10}"
                   for s in stats])
    ax.set_yticks(y, [f"{s.stage} · {s.phase}" for s in stats], fontsize=8)
    ax.set_xlabel(f"total wall over the attempts ({unit})")
    ax.set_title("Where the time goes", fontsize=10)
    return save(fig, path)

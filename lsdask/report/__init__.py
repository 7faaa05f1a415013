"""The HTML run report: ``<release_dir>/report/index.html`` and its PNG plots.

Static files with relative links only (it opens from the file system or a web folder),
made from the ledger (read-only), survey-ccds and the products. Each section says
"not yet" while its inputs do not exist, so a release half run gets a report too::

    from lsdask.release import Release
    from lsdask.report import write_report

    write_report(Release.from_config("release.toml"))   # -> .../report/index.html
"""

from __future__ import annotations

import html
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..atomic import atomic_path, write_text_atomic
from ..progress import format_eta
from . import plots

log = logging.getLogger(__name__)

#: Gallery: bricks drawn at random, and the slowest and most-failed bricks added to them.
GALLERY_RANDOM = 6
GALLERY_WORST = 3
THUMBNAIL = 256
#: A table cell right-aligned as a number (or a duration).
NUMBER = re.compile(r"(<|-)?[0-9.]+( (s|min|h))?")
#: Failed tasks listed one by one (the rest are counted).
MAX_FAILED_LISTED = 200

CSS = """body{font-family:sans-serif;margin:1.5em;max-width:80em;color:#222}
table{border-collapse:collapse;font-size:90%;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;white-space:nowrap}
td.n{text-align:right}td.w{white-space:normal}
.notyet{color:#777;font-style:italic}.fail{color:#b00}
figure{display:inline-block;margin:.3em;text-align:center;font-size:85%}
img{max-width:100%}nav a{margin-right:1em}summary{margin:.8em 0;cursor:pointer}"""


class Report:
    """The report of one release: its sections, read from the release dir."""

    def __init__(self, release: Any):
        self.release = release
        self.layout = release.layout
        self.dir = self.layout.report_dir
        self.tasks: list[dict] = []
        self.runs: list[dict] = []
        self.attempts: list[dict] = []  # every attempt, for the timeline
        self.errors: list[str] = []  # sections that could not be made
        if self.layout.ledger.exists():
            with release.ledger() as led:
                self.tasks, self.runs = led.tasks(), led.runs()
                self.attempts = led.all_attempts()

    # -- helpers --------------------------------------------------------------------------
    def href(self, path: Path) -> str:
        """``path`` relative to the report folder, as a URL."""
        return quote(Path(os.path.relpath(path, self.dir)).as_posix())

    def link(self, path: Path, text: str) -> str:
        """A link to ``path`` if it exists, else the bare text."""
        if not path.exists():
            return html.escape(text)
        return f'<a href="{self.href(path)}">{html.escape(text)}</a>'

    def img(self, path: Path, alt: str) -> str:
        return f'<img src="{self.href(path)}" alt="{html.escape(alt)}">'

    def timed(self) -> list[dict]:
        """Finished tasks with a start, an end and a wall time."""
        return [t for t in self.tasks if t["state"] in ("succeeded", "failed")
                and t["start"] and t["end"] and t["wall"] is not None]

    # -- sections -------------------------------------------------------------------------
    def stages(self) -> str:
        st = self.release.status()
        if not len(st):
            return notyet("no task has run yet (no ledger)")
        head = ["stage", "to do", "running", "done", "failed", "blocked", "failures by class",
                "core-h", "task wall-h", "span", "ETA"]
        rows, timed = [], self.timed()
        for stage, r in st.iterrows():
            ts = [t for t in timed if t["stage"] == stage]
            span = (max(t["end"] for t in ts) - min(t["start"] for t in ts)) if ts else 0.0
            fails = ", ".join(f"{c.split(':', 1)[1]} {int(r[c])}" for c in st.columns
                              if c.startswith("failed:") and r[c])
            rows.append([stage, int(r["pending"]), int(r["running"]), int(r["succeeded"]),
                         int(r["failed"]), int(r["blocked"]), fails, f"{r['core_hours']:.3f}",
                         f"{sum(t['wall'] for t in ts) / 3600:.3f}", duration(span),
                         format_eta(r["eta_hours"])])
        out = table(head, rows, id="stages-table")
        failed = [t for t in self.tasks if t["state"] == "failed"]
        if failed:
            rows = [[t["stage"], self.link(self.layout.log(t["stage"], t["key"]), t["key"]),
                     t["failure_class"] or "error", t["attempt"],
                     html.escape(shorten(t["message"] or "", 300))]
                    for t in failed[:MAX_FAILED_LISTED]]
            more = len(failed) - len(rows)
            out += (f"<details{' open' if len(failed) <= 20 else ''}><summary>"
                    f"<b>Failed tasks ({len(failed)})</b></summary>"
                    + table(["stage", "task (its log)", "class", "attempts", "message"], rows,
                            raw=True, id="failed-tasks")
                    + (f"<p>... and {more} more</p>" if more > 0 else "") + "</details>")
        return out

    def runs_section(self) -> str:
        if not self.runs:
            return notyet("no run recorded")
        rows = [[r["run_id"], when(r["start"]), when(r["end"]), r["outcome"] or "running/killed",
                 r["lsdask_version"], r["dask_version"], r["config_hash"],
                 f"{r['user']}@{r['host']}", (r["stages"] or "").replace(",", ", "),
                 self.link(self.layout.performance_report(r["run_id"]), "performance report")]
                for r in self.runs]
        rows = [[html.escape(str(v)) for v in r[:-1]] + [r[-1]] for r in rows]
        return table(["run", "start (UTC)", "end (UTC)", "outcome", "lsdask", "dask",
                      "config hash", "by", "stages", "Dask"], rows, raw=True)

    def brick_states(self) -> dict[str, str]:
        """Every brick of the release (listed or in the ledger) -> its state on the map."""
        lay = self.layout
        listed = lay.bricklist.read_text().split() if lay.bricklist.exists() else []
        word = {"succeeded": "done", "failed": "failed", "blocked": "blocked",
                "running": "running"}
        states = dict.fromkeys(listed, "to do")
        for t in self.tasks:
            if t["stage"] == "runbrick":
                states[t["key"]] = word.get(t["state"], "to do")
        return states

    def sky(self) -> str:
        states = self.brick_states()
        if not states:
            return notyet("no brick list yet")
        path = plots.sky_states(list(states), list(states.values()),
                                self.layout.report_plot("sky-states"))
        n = Counter(states.values())
        counts = " · ".join(f"{s} {n[s]}" for s in plots.STATE_COLORS)
        return f'<p id="brick-states">{counts}</p>{self.img(path, "bricks by state")}'

    def depth(self) -> str:
        import fitsio

        from ..graphs.depth import plot_depth

        lay = self.layout
        if not (lay.depth_table().exists() and lay.depth_summary().exists()):
            return notyet("no depth summary (made by the depth stage)")
        t = fitsio.read(str(lay.depth_table()))
        bands = [b for b in self.release.config.bands if f"PSFDEPTH_{b.upper()}" in t.dtype.names]
        if not bands or not len(t):
            return notyet("no brick in the depth table")
        names = [n.strip() for n in t["BRICKNAME"].astype(str)]
        m = plots.sky_depth(names, {b: t[f"PSFDEPTH_{b.upper()}"] for b in bands},
                            lay.report_plot("sky-depth"))
        area = lay.report_plot("depth-area")
        plot_depth(fitsio.read(str(lay.depth_summary())), bands, area)
        return (f"<h3>Depth per brick</h3>{self.img(m, 'depth map')}"
                f"<h3>Cumulative area vs depth</h3>{self.img(area, 'area vs depth')}")

    def task_plots(self) -> str:
        done = self.timed()
        if not done:
            return notyet("no task has finished yet")
        out = "<h3>Task durations</h3>" + self.img(
            plots.durations(done, self.layout.report_plot("durations")), "durations")
        mem = [t for t in done if t["peak_rss"] and t["wall"] > 0]
        if mem:
            out += "<h3>Peak memory vs duration</h3>" + self.img(
                plots.memory(mem, self.layout.report_plot("memory")), "memory")
        attempts = [a for a in self.attempts if a["end"]]
        if attempts:
            out += "<h3>Timeline (every attempt)</h3>" + self.img(
                plots.timeline(attempts, [r["start"] for r in self.runs if r["start"]],
                               self.layout.report_plot("timeline")), "timeline")
        return out

    def phases(self) -> str:
        """Where the time goes: per stage and phase, the wall (and CPU) of the attempts."""
        from .phases import phase_stats, plot_phases

        rows: list[dict] = []
        if self.layout.ledger.exists():
            with self.release.ledger() as led:
                rows = led.phase_rows()
        if not rows:
            return notyet("no task has reported its phases")
        stats = phase_stats(rows)
        n = Counter(r["stage"] for r in rows)
        body = [[s.stage, s.phase, s.attempts, duration(s.total_wall), duration(s.median_wall),
                 "-" if s.total_cpu is None else duration(s.total_cpu),
                 "-" if s.median_cpu is None else duration(s.median_cpu),
                 f"{100 * s.share:.1f}"] for s in stats]
        path = plot_phases(stats, self.layout.report_plot("phases"))
        return ("<p>Phases reported by the task processes, over all recorded attempts ("
                + ", ".join(f"{st} {k}" for st, k in n.items()) + "); CPU of the task process "
                "and its reaped children (legacypipe: its main process).</p>"
                + table(["stage", "phase", "attempts", "total wall", "median wall",
                         "total CPU", "median CPU", "% of stage wall"], body, id="phases-table")
                + self.img(path, "where the time goes"))

    def exposures(self) -> str:
        import fitsio
        import numpy as np

        path = self.layout.survey_ccds
        if not path.exists():
            return notyet("no survey-ccds table (made by the ccds stage)")
        with fitsio.FITS(str(path)) as f:
            names = f[1].get_colnames()
        want = ["camera", "filter", "mjd_obs", "zpt", "ccdzpt", "fwhm", "cd1_1", "cd1_2",
                "cd2_1", "cd2_2", "ccdskysb", "ccdskycounts", "psfdepth", "ccd_cuts"]
        d = fitsio.read(str(path), columns=[c for c in want if c in names])
        cols = {c: d[c] for c in d.dtype.names}
        cols["camera"] = np.char.strip(cols["camera"].astype(str))
        cols["filter"] = np.char.strip(cols["filter"].astype(str))
        cols.setdefault("ccd_cuts", np.zeros(len(d), int))
        quantities = {"zpt" if "zpt" in cols else "ccdzpt": "zeropoint (mag)"}
        if "fwhm" in cols and "cd1_1" in cols:
            pixscale = 3600 * np.sqrt(np.abs(cols["cd1_1"] * cols["cd2_2"]
                                             - cols["cd1_2"] * cols["cd2_1"]))
            cols["seeing"] = cols["fwhm"] * pixscale
            quantities["seeing"] = 'seeing FWHM (")'
        sky = "ccdskysb" if "ccdskysb" in cols else "ccdskycounts"
        if sky in cols:
            quantities[sky] = "sky (mag/arcsec²)" if sky == "ccdskysb" else "sky (counts/s/px)"
        if "psfdepth" in cols:
            quantities["psfdepth"] = "psfdepth (mag)"
        ncut = int((cols["ccd_cuts"] != 0).sum())
        out = (f"<p>{len(d)} CCDs; {ncut} cut (<code>ccd_cuts != 0</code>, red crosses)"
               f"{': bits ' + cut_bits(cols['ccd_cuts']) if ncut else ''}.</p>")
        for cam in sorted(set(cols["camera"].tolist())):
            sel = cols["camera"] == cam
            p = plots.exposures({k: v[sel] for k, v in cols.items()}, quantities, cam,
                                self.layout.report_plot(f"ccds-{cam}"))
            out += self.img(p, f"{cam} CCDs")
        return out

    def gallery(self) -> str:
        import fitsio
        from PIL import Image

        lay = self.layout
        bricks = {t["key"]: t for t in self.tasks
                  if t["stage"] == "runbrick" and t["state"] == "succeeded"}
        have = sorted(b for b in bricks if lay.coadd(b, "image.jpg").exists())
        if not have:
            return notyet("no brick colour image yet")
        picks: dict[str, str] = {}
        for b in sorted(have, key=lambda b: -(bricks[b]["wall"] or 0))[:GALLERY_WORST]:
            picks[b] = "slowest"
        failed = [b for b in have if bricks[b]["failures"]]
        for b in sorted(failed, key=lambda b: -bricks[b]["failures"])[:GALLERY_WORST]:
            picks.setdefault(b, f"failed {bricks[b]['failures']}x before")
        rest = [b for b in have if b not in picks]
        for b in sorted(random.Random(0).sample(rest, min(GALLERY_RANDOM, len(rest)))):
            picks[b] = "random"
        out = []
        for b, why in picks.items():
            thumb = lay.report_thumbnail(b)
            with Image.open(lay.coadd(b, "image.jpg")) as im, atomic_path(thumb) as tmp:
                im.thumbnail((THUMBNAIL, THUMBNAIL))
                im.convert("RGB").save(tmp, "JPEG", quality=85)
            tractor = lay.tractor(b)
            n = fitsio.read_header(str(tractor), ext=1).get("NAXIS2", 0) if tractor.exists() \
                else "?"
            wall = bricks[b]["wall"]
            out.append(
                f'<figure><a href="{self.href(lay.coadd(b, "image.jpg"))}">'
                f'{self.img(thumb, b)}</a><figcaption>{html.escape(b)}: {n} sources, '
                f'{duration(wall) if wall else "-"} ({why})<br>'
                f'{self.link(tractor, "catalogue")} · '
                f'{self.link(lay.log("runbrick", b), "log")}</figcaption></figure>')
        return f"<p>{len(have)} bricks with a colour image; shown:</p>" + "".join(out)

    # -- the page -------------------------------------------------------------------------
    SECTIONS: list[tuple[str, str, str]] = [
        ("stages", "Stages", "stages"), ("sky", "Bricks on the sky", "sky"),
        ("depth", "Depth", "depth"), ("tasks", "Tasks", "task_plots"),
        ("phases", "Where the time goes", "phases"),
        ("exposures", "Exposures (survey-ccds)", "exposures"), ("gallery", "Gallery", "gallery"),
        ("runs", "Runs", "runs_section")]

    def section(self, fn: Callable[[], str], title: str) -> str:
        """A section's HTML; an unexpected error becomes one line in it, never an exception."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a report shows what it can
            log.debug("report section %r", title, exc_info=True)
            self.errors.append(title)
            return (f'<p class="fail">could not be made: '
                    f'{html.escape(type(e).__name__)}: {html.escape(str(e))}</p>')

    def html(self) -> str:
        name = html.escape(self.release.name)
        nav = "".join(f'<a href="#{i}">{t}</a>' for i, t, _ in self.SECTIONS)
        body = "".join(f'<h2 id="{i}">{t}</h2>{self.section(getattr(self, f), t)}'
                       for i, t, f in self.SECTIONS)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<link rel="icon" href="data:,"><title>lsdask report: {name}</title>'
                f"<style>{CSS}</style></head><body><h1>Release {name}</h1>"
                f"<p>Made {when(time.time())} UTC from {html.escape(str(self.layout.release_dir))}"
                f" (<code>lsdask report</code>; refreshed at the end of every run).</p>"
                f"<nav>{nav}</nav>{body}</body></html>")


def write_report(release: Any) -> Path:
    """Write the release's report (HTML and plots) and return the path of its index.html."""
    rep = Report(release)
    rep.dir.mkdir(parents=True, exist_ok=True)
    path = release.layout.report_index
    write_text_atomic(path, rep.html())
    if rep.errors:
        log.warning("report: section(s) %s could not be made (the page says why): %s",
                    ", ".join(rep.errors), path)
    return path


# -- small HTML and text helpers ---------------------------------------------------------
def notyet(why: str) -> str:
    return f'<p class="notyet">Not yet: {html.escape(why)}.</p>'


def table(head: list[str], rows: list[list], raw: bool = False, id: str = "") -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already)."""
    def cell(v: Any) -> str:
        text = str(v) if raw else html.escape(str(v))
        cls = "n" if NUMBER.fullmatch(str(v)) else "w" if len(str(v)) > 60 else ""
        return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table{f" id={id!r}" if id else ""}><tr>{th}</tr>{trs}</table>'


def shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def cut_bits(cuts: Any) -> str:
    """``bit N: count`` of the set bits of ``ccd_cuts`` values."""
    n: Counter = Counter()
    for v in cuts.tolist():
        n.update(b for b in range(32) if int(v) >> b & 1)
    return ", ".join(f"{b}: {c}" for b, c in sorted(n.items()))

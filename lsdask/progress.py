"""A run's progress where the driver runs: one ipywidgets bar per stage in Jupyter, a tqdm
bar in a terminal, a one-line status every ``every`` seconds with no terminal (a batch job's
log). ETAs read ``ETA 12 min`` below one hour and ``ETA 2.4 h`` above (:func:`format_eta`,
also used by the run report and ``lsdask status``).

ipywidgets is optional (``pip install lsdask[notebook]``): without it a notebook gets the
status lines.
"""

from __future__ import annotations

import contextlib
import html
import math
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RunSummary

#: Seconds between refreshes of the Jupyter bars (each refresh is a message to the browser).
WIDGET_EVERY = 1.0


def format_eta(hours: float | None) -> str:
    """An ETA for people: ``<1 min`` and ``12 min`` below one hour, ``2.4 h`` above,
    ``0 min`` with nothing left, ``-`` when unknown (None, NaN, infinite)."""
    if hours is None or not math.isfinite(hours):
        return "-"
    if hours <= 0:
        return "0 min"
    minutes = hours * 60
    if minutes < 1:
        return "<1 min"
    return f"{minutes:.0f} min" if minutes < 59.5 else f"{hours:.1f} h"


def rate_and_eta(done: int, total: int, seconds: float) -> tuple[float, str]:
    """Tasks per minute after ``seconds``, and ``ETA ...`` for the rest (``all done`` when
    nothing is left, ``ETA -`` before the first task finished)."""
    rate = done / max(seconds, 1e-9) * 60
    left = total - done
    if left <= 0:
        return rate, "all done"
    return rate, f"ETA {format_eta(left / rate / 60)}" if rate > 0 else "ETA -"


def in_notebook() -> bool:
    """True inside a Jupyter (IPython) kernel."""
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        ip = get_ipython()
        return ip is not None and ip.__class__.__name__ == "ZMQInteractiveShell"
    return False


def widgets_available() -> bool:
    """True when ipywidgets can be imported."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class StageBars:
    """One ipywidgets bar per stage, displayed in the cell's output; each bar's description
    says ``stage: finished/total, failed, blocked, rate, ETA``, the rate counted from the
    stage's first finished task (stages wait for their inputs, so not from the run's start)."""

    def __init__(self, totals: dict[str, int], title: str):
        import ipywidgets as w
        from IPython.display import display

        self.totals = dict(totals)
        self.first: dict[str, tuple[float, int]] = {}  # stage -> (when, how many) first done
        self.bars = {st: w.IntProgress(value=0, min=0, max=max(n, 1),
                                       description=f"{st}: 0/{n}",
                                       style={"description_width": "initial"},
                                       layout=w.Layout(width="100%"))
                     for st, n in self.totals.items()}
        self.box = w.VBox([w.HTML(f"<b>{html.escape(title)}</b>"), *self.bars.values()])
        display(self.box)

    def update(self, summary: RunSummary, draw: bool = True, now: float | None = None) -> None:
        """Follow the run's counts (a :class:`~lsdask.runner.RunSummary`); ``draw``: also
        send them to the bars."""
        now = time.monotonic() if now is None else now
        for st, bar in self.bars.items():
            failed, blocked = summary.failed.get(st, 0), summary.blocked.get(st, 0)
            done = summary.succeeded.get(st, 0) + failed + blocked
            if done and st not in self.first:
                self.first[st] = (now, done)
            if not draw:
                continue
            total = self.totals[st]
            parts = [f"{st}: {done}/{total}"]
            if failed:
                parts.append(f"{failed} failed")
            if blocked:
                parts.append(f"{blocked} blocked")
            if st in self.first:
                t1, d1 = self.first[st]
                if done > d1:  # a rate needs tasks finished after the first ones
                    rate, eta = rate_and_eta(done - d1, total - d1, now - t1)
                    parts += [f"{rate:.1f}/min", eta]
                else:
                    parts.append("all done" if done >= total else "ETA -")
            bar.value = done
            bar.description = ", ".join(parts)
            bar.bar_style = ("danger" if failed or blocked else
                             "success" if done >= total else "")


class Progress:
    """A run's progress display. ``mode``: None (pick: Jupyter bars in a kernel with
    ipywidgets, a tqdm bar in a terminal, else status lines), False (nothing), ``"log"``
    (status lines), ``"tqdm"``/True (one tqdm bar), ``"notebook"`` (Jupyter bars; status
    lines without ipywidgets). ``stages``: tasks per stage, for the Jupyter bars."""

    def __init__(self, total: int, mode: str | bool | None, desc: str, every: float = 60.0,
                 stages: dict[str, int] | None = None):
        self.bar: Any = None
        self.widget: StageBars | None = None
        self.summary: RunSummary | None = None
        self.total, self.done, self.desc, self.every = total, 0, desc, every
        self.t0 = time.monotonic()
        self.next = self.t0 + every
        self.next_widget = self.t0
        if mode is None:
            mode = ("notebook" if in_notebook() and widgets_available() else
                    "tqdm" if sys.stderr.isatty() else "log")
        if mode == "notebook" and not widgets_available():
            mode = "log"
        self.log = mode == "log" and total > 0
        if mode == "notebook" and total:
            self.widget = StageBars(stages or {desc: total}, desc)
        elif mode in ("tqdm", True) and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="task", file=sys.stderr)

    def status_line(self, postfix: str = "") -> str:
        """``desc: done/total tasks (pct %), rate/min, ETA``, and failures/retries."""
        rate, eta = rate_and_eta(self.done, self.total, time.monotonic() - self.t0)
        return (f"{self.desc}: {self.done}/{self.total} tasks "
                f"({100 * self.done / self.total:.0f} %), {rate:.1f}/min, {eta}"
                + (f"; {postfix}" if postfix else ""))

    def update(self, n: int, postfix: str = "", summary: RunSummary | None = None) -> None:
        """``n`` more tasks finished; ``summary``: the run's counts so far (Jupyter bars)."""
        self.done += n
        if self.bar is not None and n:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
        if self.widget is not None and summary is not None:
            self.summary = summary
            draw = time.monotonic() >= self.next_widget
            if draw:
                self.next_widget = time.monotonic() + WIDGET_EVERY
            self.widget.update(summary, draw)
        if self.log and time.monotonic() >= self.next:
            self.next = time.monotonic() + self.every
            print(self.status_line(postfix), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.widget is not None and self.summary is not None:
            self.widget.update(self.summary)

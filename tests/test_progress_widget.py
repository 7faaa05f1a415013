"""Progress in Jupyter (issue 12): a notebook, executed with nbclient, shows one ipywidgets bar
per stage, first driven with made-up counts, then by a tiny run of the runner; the widget
state the notebook keeps says the counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lsdask import progress
from lsdask.progress import Progress
from lsdask.runner import RunSummary

ROOT = Path(__file__).resolve().parents[1]
VIEW = "application/vnd.jupyter.widget-view+json"

FAKE = """\
import time

import lsdask
from lsdask.progress import Progress
from lsdask.runner import RunSummary

s = RunSummary()
p = Progress(8, None, "fake", stages={"calibs": 4, "runbrick": 4})
s.submitted["calibs"], s.submitted["runbrick"] = 4, 4
s.succeeded["calibs"], s.failed["calibs"] = 3, 1
p.update(4, "failed 1", s)
s.succeeded["runbrick"] = 1
p.update(1, "failed 1", s)
time.sleep(0.05)
s.succeeded["runbrick"] = 2
p.update(1, "failed 1", s)
p.close()
print("lsdask from", lsdask.__file__, "widget", type(p.widget).__name__, "log", p.log)
"""

RUN = """\
from distributed import Client
from lsdask.ledger import Ledger
from lsdask.runner import Runner, Task
from lsdask.task import TaskSpec

led = Ledger("ledger.sqlite")
led.acquire(heartbeat=False)
led.start_run("x", ["a", "b"])
tasks = [Task(TaskSpec("a", f"k{i}", "lsdask.task:sleep", {"seconds": 0.05}, child=False))
         for i in range(3)]
tasks.append(Task(TaskSpec("b", "bad", "lsdask.task:sleep", {"seconds": "x"}, child=False)))
with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
    s = Runner(c, led, use_resources=False, desc="tiny").run(tasks)  # progress=None: pick
led.close()
print("succeeded", dict(s.succeeded), "failed", dict(s.failed))
"""


def bars(nb, cell) -> tuple[str, dict[str, dict]]:
    """The title and the bars (stage -> widget state) of the one widget view in a cell."""
    views = [o["data"][VIEW] for o in cell["outputs"] if VIEW in o.get("data", {})]
    assert len(views) == 1, cell["outputs"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    box = state[views[0]["model_id"]]
    assert box["model_name"] == "VBoxModel"
    kids = [state[k.removeprefix("IPY_MODEL_")] for k in box["state"]["children"]]
    title, *progress = kids
    assert title["model_name"] == "HTMLModel"
    assert all(k["model_name"] == "IntProgressModel" for k in progress)
    return title["state"]["value"], {k["state"]["description"].split(":")[0]: k["state"]
                                     for k in progress}


def test_stage_bars_in_a_notebook(tmp_path):
    pytest.importorskip("ipywidgets")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FAKE),
                                         nbformat.v4.new_code_cell(RUN)])
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    fake, run = nb.cells
    out = "".join(o.get("text", "") for o in fake["outputs"])
    assert f"lsdask from {ROOT / 'lsdask'}" in out  # this tree's lsdask, in the kernel
    assert "widget StageBars log False" in out
    title, b = bars(nb, fake)
    assert title == "<b>fake</b>" and list(b) == ["calibs", "runbrick"]
    calibs, runbrick = b["calibs"], b["runbrick"]
    assert (calibs["value"], calibs["max"], calibs["bar_style"]) == (4, 4, "danger")
    # all four finished at once: no rate to show (not "0.0/min")
    assert calibs["description"] == "calibs: 4/4, 1 failed, all done"
    assert (runbrick["value"], runbrick["max"], runbrick["bar_style"]) == (2, 4, "")
    assert runbrick["description"].startswith("runbrick: 2/4, ")
    assert "/min, ETA <1 min" in runbrick["description"]
    # the runner in a kernel picks the bars by itself; its final counts
    out = "".join(o.get("text", "") for o in run["outputs"] if o.get("name") == "stdout")
    assert "succeeded {'a': 3} failed {'b': 1}" in out, json.dumps(run["outputs"])[:3000]
    title, b = bars(nb, run)
    assert title == "<b>tiny</b>" and list(b) == ["a", "b"]
    assert (b["a"]["value"], b["a"]["max"], b["a"]["bar_style"]) == (3, 3, "success")
    assert b["a"]["description"].startswith("a: 3/3, ") and "all done" in b["a"]["description"]
    assert (b["b"]["value"], b["b"]["max"], b["b"]["bar_style"]) == (1, 1, "danger")
    assert b["b"]["description"] == "b: 1/1, 1 failed, all done"  # no rate from one task


def test_a_kernel_without_ipywidgets_gets_status_lines(monkeypatch, capsys):
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets: ImportError
    p = Progress(2, None, "plain", every=0.0, stages={"a": 2})
    assert p.widget is None and p.bar is None and p.log
    s = RunSummary()
    s.submitted["a"], s.succeeded["a"] = 2, 2
    p.update(2, "", s)
    p.close()
    assert capsys.readouterr().err.startswith("plain: 2/2 tasks (100 %), ")

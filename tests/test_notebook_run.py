"""Execute notebooks/01-run-a-release.ipynb (small demo) with nbclient; its outputs are of the
kinds stored."""

from __future__ import annotations

import re

import nbformat

from lsdask.testing.notebooks import NOTEBOOKS, execute, normalise, output_kinds

NOTEBOOK = NOTEBOOKS / "01-run-a-release.ipynb"


def test_run_a_release_notebook(tmp_path):
    stored = nbformat.read(NOTEBOOK, as_version=4)
    nb = execute(NOTEBOOK, tmp_path, timeout=600)  # LSDASK_DEMO_SIZE=small, in tmp_path/demo
    texts = []
    html = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            texts.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
            html.append(o.get("data", {}).get("text/html", ""))
    out = "\n".join(texts)
    assert "dashboard: http://" in out
    assert "ok: True" in out
    assert "tasks submitted on the second run: 0" in out
    assert any("runbrick" in h and "<table" in h for h in html)  # the status table
    # release.run's progress: a bar per stage (ipywidgets), runbrick's full at the end
    views = [o["data"]["application/vnd.jupyter.widget-view+json"] for c in nb.cells
             for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json"
             in o.get("data", {})]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert views and all(state[v["model_id"]]["model_name"] == "VBoxModel" for v in views)
    runbrick = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"
                and m["state"]["description"].startswith("runbrick: ")]
    assert runbrick and all(b["value"] == b["max"] for b in runbrick), runbrick
    m = re.search(r"(\d+) of (\d+) bricks done", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 2
    assert (tmp_path / "demo" / "release.toml").exists()  # the release is in tmp_path
    assert output_kinds(normalise(nb, tmp_path)) == output_kinds(stored)

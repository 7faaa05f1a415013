"""The notebooks are stored executed by notebooks/execute.py, with outputs that are not stale
(the cheap checks; tests/test_notebook_run.py and test_notebook_sweeps.py execute them)."""

from __future__ import annotations

import copy
import json
import tempfile

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from lsdask.testing.notebooks import (
    has_image,
    has_table,
    normalise,
    notebook_paths,
    output_kinds,
    problems,
    sources_sha256,
    stamp,
)

PATHS = notebook_paths()


def test_both_notebooks_are_there():
    assert [p.name for p in PATHS] == ["01-run-a-release.ipynb", "02-sweeps-and-matching.ipynb"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_stored_executed_and_fresh(path):
    nb = nbformat.read(path, as_version=4)
    assert problems(nb) == []  # stamped, sources unchanged, every cell run, no error
    assert has_table(nb) and has_image(nb)
    assert path.stat().st_size < 1_000_000


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_stored_outputs_have_no_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "/tmp/" not in text and tempfile.gettempdir() not in text
    assert "lsdask-nb-" not in text
    assert "$WORKDIR/" in text
    assert "widgets" not in nb.metadata


def test_an_edited_cell_makes_the_notebook_stale():
    nb = nbformat.read(PATHS[0], as_version=4)
    edited = copy.deepcopy(nb)
    code = next(c for c in edited.cells if c.cell_type == "code")
    code.source += "\nprint('new')"
    assert sources_sha256(edited) != sources_sha256(nb)
    assert any("cell sources changed" in p for p in problems(edited))
    md = copy.deepcopy(nb)
    next(c for c in md.cells if c.cell_type == "markdown").source += " More."
    assert any("cell sources changed" in p for p in problems(md))
    unstamped = copy.deepcopy(nb)
    del unstamped.metadata["lsdask"]
    assert any("no metadata.lsdask stamp" in p for p in problems(unstamped))


def test_problems_finds_unexecuted_and_failed_cells():
    nb = new_notebook(cells=[new_code_cell("1", execution_count=1),
                             new_code_cell("2"),
                             new_code_cell("1/0", execution_count=2, outputs=[
                                 new_output("error", ename="ZeroDivisionError", evalue="",
                                            traceback=[])])])
    stamp(nb)
    assert problems(nb) == ["cell 1 was not executed",
                            "cell 2 has an error output: ZeroDivisionError"]


def test_normalise(tmp_path):
    models = {
        "box": {"model_name": "HBoxModel",
                "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": "demo:\u2007100%"}},
        "p": {"model_name": "FloatProgressModel", "state": {"min": 0.0, "max": 12.0,
                                                            "value": 12.0}},
        "r": {"model_name": "HTMLModel",
              "state": {"value": "\u200712/12\u2007[01:02&lt;00:00,\u2007\u20074.61s/task]"}},
    }
    w = str(tmp_path)
    nb = new_notebook(cells=[new_code_cell("x", execution_count=1, outputs=[
        new_output("stream", name="stdout", text=f"in {w}/lsdask-nb02-5c16gvdz/a.fits\n"),
        new_output("stream", name="stderr",
                   text="2026-11-27 00:33:17,813 - distributed - WARNING - hm\n"
                        "b: 100%|##########| 4/4 [00:35<00:00,  1.12task/s]\n"),
        new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "box", "version_major": 2,
                                                         "version_minor": 0},
            "text/plain": "demo:   0%|          | 0/12"}),
        new_output("execute_result", execution_count=1,
                   data={"text/plain": f"PosixPath('{w}/demo')", "image/png": "iVBOR"}),
    ], metadata={"execution": {"iopub.status.idle": "2026-11-27T00:33:17"}})],
        metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {
            "state": models, "version_major": 2, "version_minor": 0}}})
    out = normalise(nb, tmp_path)
    assert "widgets" in nb.metadata and "widgets" not in out.metadata  # a copy
    cell = out.cells[0]
    assert "execution" not in cell.metadata
    o = cell.outputs
    assert o[0].text == "in $WORKDIR/lsdask-nb02-XXXXXXXX/a.fits\n"
    assert o[1].text == "distributed - WARNING - hm\nb: 100%|##########| 4/4\n"
    assert o[2].data == {"text/plain": "demo: 100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588"
                                       "\u2588\u2588\u2588| 12/12"}
    assert o[3].data == {"text/plain": "PosixPath('$WORKDIR/demo')", "image/png": "iVBOR"}
    assert output_kinds(out) == [[("stdout",), ("display_data", "text/plain"),
                                  ("execute_result", "image/png", "text/plain")]]

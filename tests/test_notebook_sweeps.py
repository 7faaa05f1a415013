"""Execute notebooks/02-sweeps-and-matching.ipynb on a generated release; its outputs are of
the kinds stored."""

from __future__ import annotations

import nbformat

from lsdask.testing.notebooks import NOTEBOOKS, execute, normalise, output_kinds

NOTEBOOK = NOTEBOOKS / "02-sweeps-and-matching.ipynb"


def test_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LSDASK_RELEASE", "/nonexistent/release.toml")  # the kernel has it unset
    stored = nbformat.read(NOTEBOOK, as_version=4)
    nb = execute(NOTEBOOK, tmp_path, timeout=300)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "identical to brute force" in outputs
    assert "sources with g and r" in outputs
    assert f"bricks in {tmp_path}" in outputs  # the generated release is in tmp_path
    assert any(o.get("data", {}).get("image/png") for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
    assert output_kinds(normalise(nb, tmp_path)) == output_kinds(stored)

"""Execute notebooks/02-sweeps-and-matching.ipynb on a generated release."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02-sweeps-and-matching.ipynb"


def test_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("LSDASK_RELEASE", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "identical to brute force" in outputs
    assert "sources with g and r" in outputs
    assert any(o.get("data", {}).get("image/png") for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))

"""The notebooks in ``notebooks/``, stored executed: run, normalise, stamp and check them.

``python notebooks/execute.py [NOTEBOOK...]`` executes each notebook with nbclient in a
temporary working directory (releases it makes land there, not in the repository), normalises
its outputs (see :func:`normalise`) and writes it back with a stamp in ``metadata.lsdask``: the
SHA-256 of its cell sources, so a test sees a cell edited without regenerating. The tests
execute the stored notebooks again and compare the kinds of their outputs with the stored ones.
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
EXECUTED_BY = "notebooks/execute.py"
WORKDIR = "$WORKDIR"  # what the temporary working directory is shown as

#: Environment of each notebook's kernel (besides TMPDIR and PYTHONPATH); ``{workdir}`` is
#: replaced by the working directory. Notebook 01 runs the small demo (as the tests do).
SETTINGS: dict[str, dict[str, str | None]] = {
    "01-run-a-release.ipynb": {"LSDASK_DEMO_SIZE": "small",
                               "LSDASK_DEMO_DIR": "{workdir}/demo"},
    "02-sweeps-and-matching.ipynb": {"LSDASK_RELEASE": None},
}
TIMEOUT = 900  # seconds per cell

# a tqdm bar's timings: " [00:35<00:00,  1.12task/s]"
_TQDM_TIMES = re.compile(r" ?\[\d+:\d\d(?::\d\d)?<[^\]\n]*\]")
# the time stamp of a logging line: "2026-11-27 00:33:17,813 - "
_LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - ", re.MULTILINE)
_WIDGET = "application/vnd.jupyter.widget-view+json"
# the random part of a folder made by tempfile.mkdtemp(prefix="...-") in the working directory
_MKDTEMP = re.compile(re.escape(WORKDIR) + r"(/[\w.-]*[-_])[a-z0-9_]{8}\b")
_IMAGE = "image/png"


def notebook_paths() -> list[Path]:
    """The stored notebooks, in order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def sources_sha256(nb: Any) -> str:
    """SHA-256 of the type and source of every cell, in order (not of outputs or metadata)."""
    cells = [[c["cell_type"], c["source"]] for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def kernel_env(name: str, workdir: Path) -> dict[str, str]:
    """The kernel's environment for notebook ``name`` run in ``workdir``: this repository's
    lsdask first on PYTHONPATH, temporary files under ``workdir``, the notebook's settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["TMPDIR"] = str(workdir)
    env.pop("MPLBACKEND", None)  # the inline backend
    for key, value in SETTINGS.get(name, {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.format(workdir=workdir)
    return env


def execute(path: Path, workdir: Path, timeout: int = TIMEOUT) -> Any:
    """Execute the notebook at ``path`` in ``workdir`` and return it, with raw outputs (streams
    merged per cell, carriage returns applied); an error in a cell raises."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            coalesce_streams=True,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=kernel_env(path.name, workdir))
    return nb


def _clean_text(text: str, workdirs: Sequence[str]) -> str:
    for w in workdirs:
        text = text.replace(w, WORKDIR)
    text = _MKDTEMP.sub(lambda m: f"{WORKDIR}{m.group(1)}XXXXXXXX", text)
    return _LOG_TIME.sub("", _TQDM_TIMES.sub("", text))


def _widget_text(model_id: str, models: dict[str, Any]) -> str | None:
    """The last state of a progress widget as text: a tqdm bar (an HBox of HTML, progress,
    HTML) on one line, lsdask's bars (a VBox of a title and one described bar per stage) a
    line each; None for another widget."""
    top = models.get(model_id, {})
    sep = "\n" if top.get("model_name") == "VBoxModel" else ""
    parts = []
    for child in top.get("state", {}).get("children", []):
        model = models.get(str(child).removeprefix("IPY_MODEL_"), {})
        state = model.get("state", {})
        if model.get("model_name") == "HTMLModel":
            text = re.sub(r"<[^>]+>", "", html.unescape(state.get("value", "")))
            parts.append(text.replace("\u2007", " "))
        elif model.get("model_name") in ("FloatProgressModel", "IntProgressModel"):
            span = (state.get("max") or 0) - (state.get("min") or 0)
            n = round(10 * ((state.get("value") or 0) - (state.get("min") or 0)) / span
                      ) if span else 0
            desc = state.get("description") or ""
            parts.append((desc + " " if desc else "") + "|" + "\u2588" * n + " " * (10 - n)
                         + "|")
        else:
            return None
    return sep.join(parts) or None


def normalise(nb: Any, workdir: Path) -> Any:
    """A copy of executed ``nb`` without machine-specific noise: ``workdir`` shown as
    ``$WORKDIR`` in every text output (and the random part of a folder made in it by
    ``tempfile.mkdtemp`` as ``XXXXXXXX``), progress widgets replaced by the text of their last
    state, tqdm timings and logging time stamps removed, no cell execution metadata."""
    nb = copy.deepcopy(nb)
    workdirs = sorted({str(workdir), os.path.realpath(workdir)}, key=len, reverse=True)
    widgets = nb.metadata.pop("widgets", {})
    models = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if _WIDGET in out.get("data", {}):  # its state is not kept: its last text instead
                text = _widget_text(out["data"][_WIDGET].get("model_id", ""), models)
                out["data"] = {"text/plain": text or out["data"].get("text/plain", "")}
            if out.get("output_type") == "stream":
                out["text"] = _clean_text(out["text"], workdirs)
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = _clean_text(value, workdirs)
    return nb


def stamp(nb: Any) -> Any:
    """Put the ``metadata.lsdask`` stamp on executed ``nb`` (in place) and return it."""
    import lsdask

    nb.metadata["lsdask"] = {"sources_sha256": sources_sha256(nb), "executed_by": EXECUTED_BY,
                             "lsdask_version": lsdask.__version__}
    return nb


def regenerate(path: Path, timeout: int = TIMEOUT) -> Path:
    """Execute the notebook at ``path`` in a temporary directory and write it back, normalised
    and stamped."""
    import nbformat

    with tempfile.TemporaryDirectory(prefix="lsdask-nb-") as tmp:
        workdir = Path(tmp)
        nb = stamp(normalise(execute(path, workdir, timeout), workdir))
    nbformat.validate(nb)
    tmp_path = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp_path)
    tmp_path.replace(path)
    return path


def output_kinds(nb: Any) -> list[list[tuple[str, ...]]]:
    """Per code cell, the kinds of its outputs: ``("stdout",)`` when it prints, then
    ``(output_type, mime types...)`` of each rich output, in order. stderr (warnings, the
    progress bar) is left out: what it shows depends on the machine."""
    kinds = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        k: list[tuple[str, ...]] = []
        if any(o.output_type == "stream" and o.name == "stdout" for o in outs):
            k.append(("stdout",))
        k += [(o.output_type, *sorted(o.get("data", {}))) for o in outs
              if o.output_type != "stream"]
        kinds.append(k)
    return kinds


def problems(nb: Any) -> list[str]:
    """What is wrong with a stored notebook: a missing or stale stamp, a code cell not
    executed, an error output. Empty when all is well."""
    found = []
    meta = nb.metadata.get("lsdask")
    if not meta:
        found.append("no metadata.lsdask stamp: run notebooks/execute.py")
    else:
        if meta.get("executed_by") != EXECUTED_BY:
            found.append(f"executed_by is {meta.get('executed_by')!r}, not {EXECUTED_BY!r}")
        if meta.get("sources_sha256") != sources_sha256(nb):
            found.append("cell sources changed since the notebook was executed: "
                         "run notebooks/execute.py")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if not isinstance(cell.get("execution_count"), int):
            found.append(f"cell {i} was not executed")
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {i} has an error output: {out.get('ename')}")
    return found


def has_table(nb: Any) -> bool:
    """Whether an output of ``nb`` is an HTML table (a DataFrame's)."""
    return any("<table" in o.get("data", {}).get("text/html", "") for o in _outputs(nb))


def has_image(nb: Any) -> bool:
    """Whether an output of ``nb`` is a PNG image (a plot)."""
    return any(o.get("data", {}).get(_IMAGE) for o in _outputs(nb))


def _outputs(nb: Any) -> Iterable[Any]:
    for cell in nb.cells:
        yield from cell.get("outputs", [])


def main(argv: Sequence[str] | None = None) -> int:
    """``python notebooks/execute.py [NOTEBOOK...]`` (default: every notebook)."""
    import argparse

    p = argparse.ArgumentParser(prog="notebooks/execute.py", description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    p.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds per cell")
    args = p.parse_args(argv)
    for path in args.notebooks or notebook_paths():
        print(f"executing {path} ...", flush=True)
        out = regenerate(path.resolve(), args.timeout)
        print(f"wrote {path} ({out.stat().st_size / 1024:.0f} kB)", flush=True)
    return 0

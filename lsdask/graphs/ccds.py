"""Stage ``ccds``: merge the per-exposure zeropoint tables into the survey-ccds table.

Writes ``layout.survey_ccds`` (FITS, ``ccd_cuts`` as computed by the zeropoints),
its Parquet copy ``layout.survey_ccds_parquet`` and the kd-tree file
``layout.survey_ccds_kd``: with the ``legacypipe`` processor by legacypipe's
``create_kdtrees``, else with astrometry.net's ``startree`` when installed (skipped
with a notice otherwise). One task, downstream of every zeropoint task of the run.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

from ..atomic import atomic_path
from ..processors import ProcessorRef
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys

log = logging.getLogger(__name__)

KEY = "survey-ccds"
PRIO = PRIORITY["ccds"]


def is_done(layout: ReleaseLayout) -> bool:
    return layout.survey_ccds.exists() and layout.survey_ccds_parquet.exists()


def plan(ctx: Context, stale: bool = False) -> Plan:
    """``stale``: zeropoints are being (re)made in this run, so the merge must be redone."""
    return plan_keys(ctx, "ccds", [KEY], lambda k: not stale and is_done(ctx.layout))


def spec(ctx: Context, images: list[str]) -> TaskSpec:
    return TaskSpec("ccds", KEY, "lsdask.graphs.ccds:ccds_task",
                    {"layout": ctx.layout, "images": images,
                     "depth_cut": ctx.config.stages.ccds.depth_cut,
                     "processor": ctx.processor_for("ccds")},
                    threads=1, log=str(ctx.layout.log("ccds", KEY)), child=ctx.child)


def make_kd(layout: ReleaseLayout) -> str:
    """kd-tree file via ``startree``, or a notice why not."""
    exe = shutil.which("startree")
    if exe is None:
        msg = "startree (astrometry.net) not installed: kd-tree file skipped"
        print(msg, flush=True)
        return msg
    with atomic_path(layout.survey_ccds_kd) as tmp:
        subprocess.run([exe, "-i", str(layout.survey_ccds), "-o", str(tmp), "-P", "-T", "-k",
                        "-n", "ccds"], check=True)
    return str(layout.survey_ccds_kd)


def ccds_task(threads: int, layout: ReleaseLayout, images: list[str],
              depth_cut: bool = False, processor: ProcessorRef | None = None) -> dict[str, Any]:
    """Run in the task process: merge, write FITS + Parquet (+ kd-tree)."""
    from ..survey.ccds import ccds_from_arrow, merge_ccd_files, write_ccds, write_ccds_parquet

    paths = [layout.zeropoints(n) for n in images]
    present = [p for p in paths if p.exists()]
    table = merge_ccd_files(present)
    ccds = ccds_from_arrow(table)
    if depth_cut:
        print("depth_cut: not implemented by lsdask yet; ccd_cuts kept as computed", flush=True)
    write_ccds(ccds, layout.survey_ccds, header={"NIMAGES": len(present)})
    write_ccds_parquet(table, layout.survey_ccds_parquet)
    if processor is not None and processor.has("make_kdtree"):
        kd = processor.call("make_kdtree", layout)
    else:
        kd = make_kd(layout)
    ncut = int((ccds["ccd_cuts"] != 0).sum()) if "ccd_cuts" in ccds.dtype.names else 0
    print(f"survey-ccds: {len(ccds)} CCDs from {len(present)} of {len(paths)} exposures "
          f"({ncut} cut)", flush=True)
    return {"nccds": len(ccds), "nexposures": len(present), "missing": len(paths) - len(present),
            "ncut": ncut, "path": str(layout.survey_ccds), "kd": kd}

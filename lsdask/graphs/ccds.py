"""Stage ``ccds``: merge the per-exposure zeropoint tables into the survey-ccds table.

Writes ``layout.survey_ccds`` (FITS, ``ccd_cuts`` as computed by the zeropoints),
its Parquet copy ``layout.survey_ccds_parquet`` and the kd-tree file
``layout.survey_ccds_kd``: with the ``legacypipe`` processor by legacypipe's
``create_kdtrees``, else with astrometry.net's ``startree`` when installed (skipped
with a notice otherwise). One task, downstream of every zeropoint task of the run
(it runs whatever they did: a failed exposure is left out, and when it is repaired the
merge's inputs change and it is redone).

Done: both tables exist and their stamp records the inputs now (each exposure and the
sha256 of its zeropoint table, ``missing`` when it has none; and ``good_ccd_fraction`` /
``depth_cut`` when the merge sets the cuts). With no zeropoint table at
all the task fails and leaves an existing survey-ccds as it was.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

from ..atomic import atomic_path
from ..done import file_sha256, fingerprint, stamp_ok, write_stamp
from ..errors import InputError
from ..processors import ProcessorRef
from ..survey.layout import ReleaseLayout
from ..task import TaskSpec
from .base import PRIORITY, Context, Plan, plan_keys
from .images import image_key

log = logging.getLogger(__name__)

KEY = "survey-ccds"
PRIO = PRIORITY["ccds"]


def cut_settings(cuts: ProcessorRef | None, depth_cut: bool,
                 good_ccd_fraction: float) -> dict[str, Any] | None:
    """The options that change the merged ``ccd_cuts`` (only when ``cuts`` sets them)."""
    if cuts is None:
        return None
    return {"by": cuts.name, "depth_cut": bool(depth_cut),
            "good_ccd_fraction": float(good_ccd_fraction)}


def inputs(layout: ReleaseLayout, images: list[str],
           cuts: dict[str, Any] | None = None) -> Any:
    """What the merge is made from now: each exposure and its zeropoint table's sha256, and
    the cut settings (:func:`cut_settings`) when the merge sets the cuts."""
    rows = [[image_key(n), file_sha256(layout.zeropoints(n))] for n in sorted(images)]
    return rows if cuts is None else {"zeropoints": rows, "cuts": cuts}


def is_done(layout: ReleaseLayout, images: list[str], cuts: dict[str, Any] | None = None
            ) -> bool:
    return (layout.survey_ccds.is_file() and layout.survey_ccds_parquet.exists()
            and stamp_ok(layout.stamp(layout.survey_ccds),
                         fingerprint(inputs(layout, images, cuts))))


def _settings(ctx: Context) -> dict[str, Any]:
    opts = ctx.config.stages.ccds
    return {"depth_cut": opts.depth_cut, "good_ccd_fraction": opts.good_ccd_fraction,
            "cuts": _cuts_by(ctx.processor_for("zeropoints"))}


def plan(ctx: Context, images: list[str], waiting: bool = False) -> Plan:
    """``waiting``: zeropoint tables are being made in this run (the task decides)."""
    cuts = cut_settings(**_settings(ctx))
    return plan_keys(ctx, "ccds", [KEY], lambda k: is_done(ctx.layout, images, cuts),
                     waiting=lambda k: waiting)


def spec(ctx: Context, images: list[str]) -> TaskSpec:
    return TaskSpec("ccds", KEY, "lsdask.graphs.ccds:ccds_task",
                    {"layout": ctx.layout, "images": images, **_settings(ctx),
                     "force": ctx.forced("ccds"), "processor": ctx.processor_for("ccds")},
                    threads=1, log=str(ctx.layout.log("ccds", KEY)), child=ctx.child)


def _cuts_by(zeropoints: ProcessorRef) -> ProcessorRef | None:
    """The zeropoints' processor when it sets ``ccd_cuts`` on the merged table (legacypipe:
    legacyzpts' update_ccd_cuts), else None (lite's zeropoint tables carry final cuts)."""
    return zeropoints if zeropoints.has("ccd_cuts") else None


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
              depth_cut: bool = False, force: bool = False,
              processor: ProcessorRef | None = None, cuts: ProcessorRef | None = None,
              good_ccd_fraction: float = 0.7) -> dict[str, Any]:
    """Run in the task process: merge, write FITS + Parquet (+ kd-tree)."""
    from ..survey.ccds import ccds_from_arrow, merge_ccd_files, write_ccds, write_ccds_parquet

    settings = cut_settings(cuts, depth_cut, good_ccd_fraction)
    if not force and is_done(layout, images, settings):
        return {"skipped": True}
    fp = fingerprint(inputs(layout, images, settings))
    paths = [layout.zeropoints(n) for n in images]
    present = [p for p in paths if p.exists()]
    if not present:
        raise InputError(f"{layout.zpt_dir}: none of the {len(paths)} exposures has a zeropoint "
                         f"table; {layout.survey_ccds.name} left as it was")
    table = merge_ccd_files(present)
    ccds = ccds_from_arrow(table)
    if cuts is not None:
        import pyarrow as pa

        ccds["ccd_cuts"] = cuts.call("ccd_cuts", layout, ccds, depth_cut=depth_cut,
                                     good_ccd_fraction=good_ccd_fraction)
        i = table.schema.get_field_index("ccd_cuts")
        table = table.set_column(i, table.schema.field(i),
                                 pa.array(ccds["ccd_cuts"]).cast(table.schema.field(i).type))
    elif depth_cut:
        print("depth_cut: only with legacyzpts zeropoints (processor legacypipe); ccd_cuts "
              "kept as computed", flush=True)
    write_ccds(ccds, layout.survey_ccds, header={"NIMAGES": len(present)})
    write_ccds_parquet(table, layout.survey_ccds_parquet)
    if processor is not None and processor.has("make_kdtree"):
        kd = processor.call("make_kdtree", layout)
    else:
        kd = make_kd(layout)
    write_stamp(layout.stamp(layout.survey_ccds), fp,
                [layout.survey_ccds, *([layout.survey_ccds_parquet]
                                       if layout.survey_ccds_parquet.is_file() else [])])
    ncut = int((ccds["ccd_cuts"] != 0).sum()) if "ccd_cuts" in ccds.dtype.names else 0
    print(f"survey-ccds: {len(ccds)} CCDs from {len(present)} of {len(paths)} exposures "
          f"({ncut} cut)", flush=True)
    return {"nccds": len(ccds), "nexposures": len(present), "missing": len(paths) - len(present),
            "ncut": ncut, "path": str(layout.survey_ccds), "kd": kd}

"""``lsdask demo``: the worked example, end to end on one machine.

Simulates the 1 sq. deg. region RA 180-181, Dec 32-33 (about 16-20 bricks) with
images scaled down (coarser pixels, smaller CCDs, smaller brick images) so that
the whole chain (images, calibs, zeropoints, survey-ccds, brick list, runbrick,
and the whole-release stages when available) runs in a few minutes on 2 cores,
writes its own ``release.toml`` (so ``lsdask status/tasks/logs DIR/release.toml``
work afterwards), runs it on a LocalCluster and prints a summary.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Scale of the demo (pixel scale in arcsec/pixel of images and of brick images).
DEMO_PIXSCALE = 1.0
DEMO_BRICK_PIXSCALE = 1.0  # as the images: 3600 * 0.262" = 943.2" -> 944 pixels at 1.0"
LEGACYPIPE_PIXSCALE = 0.262  # DECam's
LEGACYPIPE_ZOOM = (1400, 2200, 1400, 2200)  # the central 800 x 800 pixels of a 3600-px brick


@dataclass
class DemoSettings:
    ramin: float = 180.0
    ramax: float = 181.0
    decmin: float = 32.0
    decmax: float = 32.0 + 1.0
    bands: tuple[str, ...] = ("g", "r", "z")
    ccd_width: int = 512
    ccd_height: int = 1024
    n_ccds: int = 4
    passes: int = 1
    pixscale: float = DEMO_PIXSCALE
    brick_size: int = 944
    brick_pixscale: float = DEMO_BRICK_PIXSCALE
    threads: int = 1
    name: str = "demo"
    processor: str = "lite"  # runbrick's processor: lite or legacypipe (the real runbrick)
    zoom: tuple[int, int, int, int] | None = None  # runbrick --zoom of every brick
    star_density: float | None = None  # per deg^2 (None: the simulator's default)
    galaxy_density: float | None = None

    @classmethod
    def legacypipe(cls, zoom: tuple[int, int, int, int] | None = None) -> DemoSettings:
        """The demo with legacypipe's runbrick (with Gaia and Tycho-2) on the centre of brick
        1801p320: 800 x 800 pixels at DECam's own 0.262"/px, dense in stars and galaxies
        (legacypipe takes minutes where lite takes seconds); lite calibs and zeropoints.

        Not the 1"/px of the lite demo: there the seeing is 1-1.6 pixels, and legacypipe,
        made for well-sampled images, measured stars 1.4-1.7x too bright and typed 14 % of
        them PSF (although it reads the finely sampled lite PSF models exactly as lite does)."""
        return cls(ramin=180.085, ramax=180.165, decmin=31.965, decmax=32.035,
                   processor="legacypipe", threads=2, pixscale=LEGACYPIPE_PIXSCALE,
                   brick_pixscale=LEGACYPIPE_PIXSCALE, brick_size=3600,
                   zoom=zoom or LEGACYPIPE_ZOOM, passes=2, star_density=60000.0,
                   galaxy_density=30000.0)

    @classmethod
    def small(cls) -> DemoSettings:
        """A quarter-degree corner of the demo (a few bricks, 2 bands): tests, notebooks."""
        return cls(ramin=180.0, ramax=180.35, decmin=32.0, decmax=32.35, bands=("g", "r"))

    @classmethod
    def from_env(cls) -> DemoSettings:
        """``LSDASK_DEMO_SIZE=small`` gives :meth:`small`, else the full demo."""
        return cls.small() if os.environ.get("LSDASK_DEMO_SIZE") == "small" else cls()


DEMO_EXTERNAL = "demo-targets.fits"


def demo_config_toml(directory: Path, s: DemoSettings | None = None) -> str:
    """The demo's release configuration (TOML text)."""
    from .survey.releases import DEFAULT_RELEASE

    s = s or DemoSettings()
    bands = ", ".join(f'"{b}"' for b in s.bands)
    runbrick_extra = ""
    legacypipe = ""
    if s.zoom:
        runbrick_extra += f"zoom = {list(s.zoom)}\n"
    if s.processor == "legacypipe":
        runbrick_extra += 'processor = "legacypipe"\ntimeout = 3600.0\n'
        legacypipe = "\n[stages.ccds]\nprocessor = \"legacypipe\"  # create_kdtrees\n"
    else:
        runbrick_extra += 'resample_kernel = "spline3"\ntimeout = 600.0\n'
    return f"""# lsdask demo release (written by `lsdask demo`)
[release]
name = "{s.name}"
release = {DEFAULT_RELEASE}  # DR9 DECam (lsdask.survey.releases)
survey_dir = "survey"
release_dir = "release"
cameras = ["decam"]
bands = [{bands}]
processor = "lite"

[region]
ra = [{s.ramin}, {s.ramax}]
dec = [{s.decmin}, {s.decmax}]

[stages.runbrick]
threads = {s.threads}
width = {s.brick_size}
height = {s.brick_size}
pixscale = {s.brick_pixscale}
{runbrick_extra}
[stages.match]
external = "survey/external/{DEMO_EXTERNAL}"
copy = ["TRUTH_ID", "TRUE_FLUX_R"]

[cluster]
profile = "local"
window = 200
{legacypipe}"""


def write_demo_config(directory: str | Path, settings: DemoSettings | None = None) -> Path:
    from .atomic import write_text_atomic

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "release.toml"
    write_text_atomic(path, demo_config_toml(d, settings))
    return path


def simulate_demo(directory: str | Path, settings: DemoSettings | None = None,
                  client=None) -> dict:
    """Simulate the demo survey under ``DIR/survey`` (skipped when already there), on the
    workers of the Dask ``client`` if given."""
    from .simulate import SimConfig, simulate_survey
    from .survey.layout import ReleaseLayout

    s = settings or DemoSettings()
    survey = Path(directory) / "survey"
    layout = ReleaseLayout(survey)
    marker = layout.truth
    if marker.exists():
        if not (layout.external_input(DEMO_EXTERNAL)).exists():
            write_demo_external(layout, s)
        return {"skipped": True, "truth": str(marker)}
    cfg = SimConfig(ramin=s.ramin, ramax=s.ramax, decmin=s.decmin, decmax=s.decmax,
                    bands=tuple(s.bands), ccd_width=s.ccd_width, ccd_height=s.ccd_height,
                    n_ccds=s.n_ccds, passes=s.passes, pixscale=s.pixscale,
                    **{k: v for k, v in (("star_density", s.star_density),
                                         ("galaxy_density", s.galaxy_density)) if v is not None})
    out = simulate_survey(survey, cfg, client=client)
    write_demo_external(layout, s)
    return out


def write_demo_external(layout, s: DemoSettings, n: int = 400, seed: int = 1) -> Path:
    """A mock spectroscopic target list to match: bright truth sources inside the region
    (``TRUTH_ID``, ``TRUE_FLUX_R``) plus 10 % random positions that match nothing."""
    import fitsio
    import numpy as np

    from .atomic import atomic_path

    truth = fitsio.read(str(layout.truth))
    rng = np.random.default_rng(seed)
    inside = ((truth["ra"] >= s.ramin) & (truth["ra"] < s.ramax)
              & (truth["dec"] >= s.decmin) & (truth["dec"] < s.decmax))
    bright = np.flatnonzero(inside & (truth["flux_r"] > 10.0))  # r < 20
    pick = np.sort(rng.choice(bright, min(n, len(bright)), replace=False))
    nfake = max(1, len(pick) // 10)
    out = np.zeros(len(pick) + nfake, dtype=[("RA", "f8"), ("DEC", "f8"), ("TRUTH_ID", "i8"),
                                             ("TRUE_FLUX_R", "f4")])
    out["RA"][: len(pick)], out["DEC"][: len(pick)] = truth["ra"][pick], truth["dec"][pick]
    out["TRUTH_ID"][: len(pick)] = truth["objid"][pick]
    out["TRUE_FLUX_R"][: len(pick)] = truth["flux_r"][pick]
    out["RA"][len(pick):] = rng.uniform(s.ramin, s.ramax, nfake)
    out["DEC"][len(pick):] = rng.uniform(s.decmin, s.decmax, nfake)
    out["TRUTH_ID"][len(pick):] = -1
    path = layout.external_input(DEMO_EXTERNAL)
    with atomic_path(path) as tmp:
        fitsio.write(str(tmp), out, extname="TARGETS", clobber=True)
    return path


def run_demo(directory: str | Path, client=None, n_workers: int = 2,
             settings: DemoSettings | None = None, progress: Any = None,
             echo=None) -> dict[str, Any]:
    """Simulate (once), write ``release.toml``, run every stage; returns a summary dict."""
    from .release import Release

    echo = echo or (lambda m: print(m, file=sys.stderr))
    t0 = time.time()
    d = Path(directory).resolve()
    st = settings or DemoSettings()
    own = None
    if client is None:
        from distributed import Client

        from .jobqueue import close_cluster, local_sizes, make_cluster

        # workers with the cores each brick's runbrick is given (the legacypipe demo: 2)
        own = make_cluster("local", **local_sizes("local", st.threads, n_workers))
        client = Client(own)
    try:
        echo(f"lsdask demo: simulating RA {st.ramin:g}-{st.ramax:g}, Dec {st.decmin:g}-"
             f"{st.decmax:g} under {d / 'survey'} ...")
        sim = simulate_demo(d, settings, client=client)
        if not sim.get("skipped"):
            echo(f"  {sim['n_exposures']} exposures, {sim['n_ccds']} CCDs, "
                 f"{sim['n_sources']} true sources ({time.time() - t0:.0f} s)")
        cfg_path = write_demo_config(d, settings)
        release = Release.from_config(cfg_path)
        echo(f"lsdask demo: running the release ({cfg_path}); dashboard {client.dashboard_link}")
        res = release.run(client, progress=progress, echo=echo)
    finally:
        if own is not None:
            close_cluster(client, own)
    return summarize(release, res, time.time() - t0)


def summarize(release, res, elapsed: float) -> dict[str, Any]:
    import fitsio

    layout = release.layout
    bricks = []
    nsrc = 0
    listed = layout.bricklist.read_text().split() if layout.bricklist.exists() else []
    for b in listed:
        p = layout.tractor(b)
        if p.exists():
            bricks.append(b)
            nsrc += fitsio.read_header(str(p), ext=1).get("NAXIS2", 0)
    st = release.status()
    return {
        "config": str(release.config.path),
        "bricks_listed": len(listed),
        "bricks_done": len(bricks),
        "sources": int(nsrc),
        "failed": res.summary.total("failed"),
        "ok": res.ok,
        "survey_ccds": str(layout.survey_ccds),
        "bricklist": str(layout.bricklist),
        "tractor_dir": str(layout.tractor_dir),
        "coadd_dir": str(layout.coadd_root),
        "post": {k: (v is not None) for k, v in res.post.items()},
        "sweeps_dir": str(layout.sweeps_dir),
        "report": res.report,
        "run_report": res.run_report,
        "dashboard": res.dashboard,
        "status": st,
        "elapsed": elapsed,
        "processors": {k: release.config.processor_name(k)
                       for k in ("calibs", "zeropoints", "runbrick")},
    }


def format_summary(s: dict[str, Any]) -> str:
    from .cli.status import format_status

    post = ", ".join(f"{k} {'done' if v else 'unavailable'}" for k, v in s["post"].items())
    return "\n".join([
        f"lsdask demo: {'OK' if s['ok'] else 'finished with failures'} in {s['elapsed']:.0f} s",
        f"  bricks done: {s['bricks_done']} of {s['bricks_listed']} listed; "
        f"sources: {s['sources']}; failed tasks: {s['failed']}",
        f"  survey-ccds: {s['survey_ccds']}",
        f"  brick list:  {s['bricklist']}",
        f"  catalogues:  {s['tractor_dir']}",
        f"  coadds:      {s['coadd_dir']}",
        f"  whole-release stages: {post or 'none'}",
        "  processors: " + ", ".join(f"{k} {v}" for k, v in s["processors"].items()),
        f"  performance report: {s['report']}",
        f"  dashboard (while it ran): {s['dashboard']}",
        "",
        format_status(s["status"]),
        "",
        f"next: lsdask status {s['config']} | lsdask tasks {s['config']} --stage runbrick | "
        f"lsdask logs {s['config']} <brick>",
        f"report: {s['run_report'] or 'not written (see the warning above)'}",
    ])

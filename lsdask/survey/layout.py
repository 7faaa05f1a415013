"""Every path of a release, in one place.

Two roots: the *survey dir* (inputs and per-image products, legacypipe's
``LEGACY_SURVEY_DIR``: images, calib, zpt, survey-ccds, reference catalogues)
and the *release dir* (per-brick and whole-release products, runbrick's
``--outdir``: tractor, coadd, metrics, logs, checkpoints, sweep, external,
parquet, report, the ledger). They may be the same folder.

No other module builds a product path by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Coadd image kinds written per band.
COADD_BAND_KINDS = ("image", "invvar", "model", "chi2", "depth", "galdepth", "nexp", "psfsize")


def image_basename(image_filename: str) -> str:
    """File name up to its first '.' (``c4d_..._ooi_g_ls9.fits.fz`` -> ``c4d_..._ooi_g_ls9``)."""
    return Path(image_filename).name.split(".", 1)[0]


def image_dir(image_filename: str) -> str:
    """Directory part of an image path relative to ``images/``."""
    return str(Path(image_filename).parent)


@dataclass(frozen=True)
class ReleaseLayout:
    """Paths of one release. ``release_dir`` defaults to ``survey_dir``."""

    survey_dir: Path
    release_dir: Path
    name: str = "lsdask"
    sweep_version: str = "9.0"  # the public sweep/<version>/ folder (9.0 for DR9)

    def __init__(self, survey_dir: str | Path, release_dir: str | Path | None = None,
                 name: str = "lsdask", sweep_version: str = "9.0"):
        object.__setattr__(self, "survey_dir", Path(survey_dir))
        object.__setattr__(self, "release_dir",
                           Path(release_dir) if release_dir is not None else Path(survey_dir))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "sweep_version", sweep_version)

    # -- survey dir: inputs and per-image products -------------------------
    @property
    def images_dir(self) -> Path:
        return self.survey_dir / "images"

    def image(self, image_filename: str) -> Path:
        """An image file given its ``image_filename`` (relative to ``images/``)."""
        return self.images_dir / image_filename

    @property
    def calib_dir(self) -> Path:
        return self.survey_dir / "calib"

    def psfex(self, image_filename: str) -> Path:
        """Merged per-exposure PSF model: ``calib/psfex/<imgdir>/<basename>-psfex.fits``."""
        return (self.calib_dir / "psfex" / image_dir(image_filename)
                / f"{image_basename(image_filename)}-psfex.fits")

    def splinesky(self, image_filename: str) -> Path:
        """Merged per-exposure sky model: ``calib/sky/<imgdir>/<basename>-splinesky.fits``."""
        return (self.calib_dir / "sky" / image_dir(image_filename)
                / f"{image_basename(image_filename)}-splinesky.fits")

    def single_dir(self, image_filename: str, kind: str) -> Path:
        """legacypipe's per-CCD calibrations of one image: ``calib/<kind>-single/<imgdir>/<base>/``
        (``kind``: ``psfex`` or ``sky``)."""
        return (self.calib_dir / f"{kind}-single" / image_dir(image_filename)
                / image_basename(image_filename))

    def psfex_single(self, image_filename: str, ccdname: str) -> Path:
        """legacypipe per-CCD PSF model: ``<single_dir>/<base>-<ccd>-psfex.fits``."""
        return (self.single_dir(image_filename, "psfex")
                / f"{image_basename(image_filename)}-{ccdname.strip()}-psfex.fits")

    def splinesky_single(self, image_filename: str, ccdname: str) -> Path:
        """legacypipe per-CCD sky model: ``<single_dir>/<base>-<ccd>-splinesky.fits``."""
        return (self.single_dir(image_filename, "sky")
                / f"{image_basename(image_filename)}-{ccdname.strip()}-splinesky.fits")

    @property
    def zpt_dir(self) -> Path:
        return self.survey_dir / "zpt"

    def zeropoints(self, image_filename: str) -> Path:
        """Per-exposure survey-ccds rows: ``zpt/<imgdir>/<basename>-annotated.fits``."""
        return (self.zpt_dir / image_dir(image_filename)
                / f"{image_basename(image_filename)}-annotated.fits")

    def photom(self, image_filename: str) -> Path:
        """Per-exposure reference-star photometry: ``zpt/<imgdir>/<basename>-photom.fits``."""
        return (self.zpt_dir / image_dir(image_filename)
                / f"{image_basename(image_filename)}-photom.fits")

    @property
    def survey_ccds(self) -> Path:
        return self.survey_dir / f"survey-ccds-{self.name}.fits.gz"

    @property
    def survey_ccds_kd(self) -> Path:
        return self.survey_dir / f"survey-ccds-{self.name}.kd.fits"

    @property
    def survey_bricks(self) -> Path:
        return self.survey_dir / "survey-bricks.fits.gz"

    @property
    def tycho2_kd(self) -> Path:
        """Tycho-2 reference stars as a star kd-tree (legacypipe's ``TYCHO2_KD_DIR``)."""
        return self.survey_dir / "tycho2.kd.fits"

    @property
    def ps1_dir(self) -> Path:
        """Healpixed Pan-STARRS1 calibrators ``ps1-%05d.fits`` (legacyzpts' ``PS1CAT_DIR``)."""
        return self.survey_dir / "ps1"

    @property
    def gaia_dir(self) -> Path:
        """Reference star catalogue chunks (``chunk-*.fits``)."""
        return self.survey_dir / "gaia"

    @property
    def external_inputs_dir(self) -> Path:
        """External catalogues to match against (inputs)."""
        return self.survey_dir / "external"

    def external_input(self, filename: str) -> Path:
        """An external catalogue (input) by file name."""
        return self.external_inputs_dir / filename

    @property
    def truth(self) -> Path:
        """Truth catalogue of a simulated survey."""
        return self.survey_dir / "truth" / "truth.fits"

    # -- release dir: per-brick products -------------------------------------
    @property
    def image_list(self) -> Path:
        """The release's image list with per-CCD header footprints (Parquet, a cache)."""
        return self.release_dir / f"images-{self.name}.parquet"

    @property
    def bricklist(self) -> Path:
        return self.release_dir / "bricks.txt"

    @property
    def tractor_dir(self) -> Path:
        return self.release_dir / "tractor"

    def tractor(self, brick: str) -> Path:
        return self.tractor_dir / brick[:3] / f"tractor-{brick}.fits"

    def brick_stamp(self, brick: str) -> Path:
        """What the brick was made from (its input fingerprint) and its product sizes."""
        return self.tractor_dir / brick[:3] / f"brick-{brick}.inputs.json"

    def brick_lock(self, brick: str) -> Path:
        """``flock`` file held by the task running the brick."""
        return self.checkpoints_dir / brick[:3] / f".{brick}.lock"

    def sha256sum(self, brick: str) -> Path:
        return self.release_dir / "tractor" / brick[:3] / f"brick-{brick}.sha256sum"

    @property
    def coadd_root(self) -> Path:
        return self.release_dir / "coadd"

    def coadd_dir(self, brick: str) -> Path:
        return self.coadd_root / brick[:3] / brick

    def coadd(self, brick: str, kind: str, band: str | None = None) -> Path:
        """``legacysurvey-<brick>-<kind>-<band>.fits.fz`` for per-band kinds (see
        :data:`COADD_BAND_KINDS`), else ``legacysurvey-<brick>-<kind>`` where ``kind``
        carries its suffix (``maskbits.fits.fz``, ``ccds.fits``, ``depth.fits``, ``image.jpg``)."""
        if band is not None:
            return self.coadd_dir(brick) / f"legacysurvey-{brick}-{kind}-{band}.fits.fz"
        return self.coadd_dir(brick) / f"legacysurvey-{brick}-{kind}"

    def blobs(self, brick: str) -> Path:
        return self.release_dir / "metrics" / brick[:3] / f"blobs-{brick}.fits.gz"

    def checkpoint(self, brick: str) -> Path:
        return self.release_dir / "checkpoints" / brick[:3] / f"checkpoint-{brick}.pickle"

    @property
    def checkpoints_dir(self) -> Path:
        return self.release_dir / "checkpoints"

    @property
    def pickles_dir(self) -> Path:
        return self.release_dir / "pickles"

    def stage_pickle(self, brick: str, stage: str) -> Path:
        """legacypipe's per-stage pickle: ``pickles/<bri>/runbrick-<brick>-<stage>.pickle``."""
        return self.pickles_dir / brick[:3] / f"runbrick-{brick}-{stage}.pickle"

    def stage_pickle_pattern(self, brick: str) -> str:
        """runbrick's ``--pickle`` value for ``brick`` (``%%(stage)s`` left for runbrick)."""
        return str(self.stage_pickle(brick, "%%(stage)s"))

    def log(self, stage: str, key: str) -> Path:
        """Per-task log: ``logs/<bri>/<brick>.log`` (runbrick), else ``logs/<stage>/<key>.log``."""
        if stage == "runbrick":
            return self.logs_dir / key[:3] / f"{key}.log"
        safe = key.replace("/", "_")
        return self.logs_dir / stage / f"{safe}.log"

    @property
    def logs_dir(self) -> Path:
        return self.release_dir / "logs"

    @property
    def dask_logs_dir(self) -> Path:
        """Batch-job logs of the Dask workers."""
        return self.logs_dir / "dask-jobs"

    @staticmethod
    def stamp(product: Path) -> Path:
        """The input-fingerprint stamp kept beside a product: ``<product>.inputs.json``."""
        return product.with_name(f"{product.name}.inputs.json")

    # -- release dir: whole-release products --------------------------------
    @property
    def ledger(self) -> Path:
        return self.release_dir / "lsdask-ledger.sqlite"

    @property
    def parquet_dir(self) -> Path:
        return self.release_dir / "parquet"

    @property
    def tractor_parquet(self) -> Path:
        """Tractor catalogues as one Parquet dataset partitioned by sweep box."""
        return self.parquet_dir / "tractor"

    def tractor_parquet_file(self, box: str, brick: str) -> Path:
        """One brick's rows of one sweep box: ``parquet/tractor/box=<box>/<brick>.parquet``."""
        return self.tractor_parquet / f"box={box}" / f"{brick}.parquet"

    @property
    def tractor_parquet_manifest(self) -> Path:
        """Which bricks (tractor checksums) the tractor Parquet dataset was made from."""
        return self.tractor_parquet / "_manifest.json"

    @property
    def survey_ccds_parquet(self) -> Path:
        return self.parquet_dir / f"survey-ccds-{self.name}.parquet"

    @property
    def sweeps_root(self) -> Path:
        """``sweep/``: the three sweep folders, as the public releases (``dr9/south/sweep``)."""
        return self.release_dir / "sweep"

    def sweep_dir(self, kind: str = "") -> Path:
        """The folder of a sweep kind, as legacypipe's ``generate-sweep-files.py`` writes
        them: ``sweep/<v>/`` main, ``sweep/<v>-lightcurves/`` 'lc', ``sweep/<v>-extra/``
        'ex' (``<v>`` = :attr:`sweep_version`, e.g. 9.0)."""
        tail = {"": "", "lc": "-lightcurves", "ex": "-extra"}[kind]
        return self.sweeps_root / f"{self.sweep_version}{tail}"

    @property
    def sweeps_dir(self) -> Path:
        """The main sweep files' folder, ``sweep/<v>/``."""
        return self.sweep_dir("")

    def sweep(self, box: str, kind: str = "") -> Path:
        """``sweep/<v>/sweep-<box>.fits``, ``sweep/<v>-lightcurves/sweep-<box>-lc.fits``,
        ``sweep/<v>-extra/sweep-<box>-ex.fits`` (``kind`` '', 'lc' or 'ex')."""
        suffix = f"-{kind}" if kind else ""
        return self.sweep_dir(kind) / f"sweep-{box}{suffix}.fits"

    @property
    def sweeps_parquet(self) -> Path:
        return self.parquet_dir / "sweeps"

    def sweep_parquet(self, box: str) -> Path:
        return self.sweeps_parquet / f"sweep-{box}.parquet"

    @property
    def sweeps_manifest(self) -> Path:
        """Which Parquet inputs (brick checksums per box) the sweeps were made from."""
        return self.sweeps_parquet / "_manifest.json"

    @property
    def sweep_shares(self) -> Path:
        """Each brick's finished sweep rows per box (written with its Parquet partition)."""
        return self.parquet_dir / "sweep-shares"

    def sweep_share(self, box: str, brick: str) -> Path:
        """``parquet/sweep-shares/box=<box>/<brick>.share``."""
        return self.sweep_shares / f"box={box}" / f"{brick}.share"

    @property
    def hats_dir(self) -> Path:
        """HATS catalogues of the release (``hats/``), for LSDB."""
        return self.release_dir / "hats"

    @property
    def hats_catalog(self) -> Path:
        """The sweeps as a HATS catalogue: ``hats/<release name>``."""
        return self.hats_dir / self.name

    def hats_margin(self, arcsec: float) -> Path:
        """Its margin cache: ``hats/<release name>_<arcsec>arcs``."""
        return self.hats_dir / f"{self.name}_{arcsec:g}arcs"

    @property
    def external_dir(self) -> Path:
        return self.release_dir / "external"

    def external(self, name: str) -> Path:
        """Matched external catalogue: ``external/survey-<release>-<name>.fits``."""
        return self.external_dir / f"survey-{self.name}-{name}.fits"

    def depth_summary(self) -> Path:
        return self.release_dir / f"{self.name}-depth-summary.fits"

    def depth_table(self) -> Path:
        return self.release_dir / f"{self.name}-depth.fits"

    def depth_plot(self) -> Path:
        return self.release_dir / f"{self.name}-depth.png"

    @property
    def report_dir(self) -> Path:
        return self.release_dir / "report"

    @property
    def report_index(self) -> Path:
        """The HTML run report (``lsdask report``): ``report/index.html``."""
        return self.report_dir / "index.html"

    def report_plot(self, name: str) -> Path:
        """A plot of the run report: ``report/<name>.png``."""
        return self.report_dir / f"{name}.png"

    def report_thumbnail(self, brick: str) -> Path:
        """A brick's gallery image in the run report: ``report/gallery/<brick>.jpg``."""
        return self.report_dir / "gallery" / f"{brick}.jpg"

    @property
    def report_screenshot(self) -> Path:
        """A browser's screenshot of the run report (made by the tests)."""
        return self.report_dir / "screenshot.png"

    def performance_report(self, run_id: int) -> Path:
        return self.report_dir / f"dask-performance-run{run_id}.html"

    def calib_single(self, image_filename: str, ccdname: str, kind: str) -> Path:
        """Per-CCD calibration of ``kind`` 'psfex' or 'splinesky' (legacypipe layout)."""
        f = self.psfex_single if kind == "psfex" else self.splinesky_single
        return f(image_filename, ccdname)

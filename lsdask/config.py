"""The release configuration: one TOML file per release, parsed into typed objects.

Example (every section but ``[release]`` is optional)::

    [release]
    name = "demo"              # used in product names (survey-ccds-demo.fits.gz ...)
    release = 9010             # the tractor ``release`` number (DR9 DECam; see survey.releases)
    survey_dir = "$SCRATCH/demo/survey"
    release_dir = "$SCRATCH/demo/release"   # default: survey_dir
    cameras = ["decam"]
    bands = ["g", "r", "z"]

    [region]                   # an RA/Dec box (RA may wrap: ra = [350, 10]) ...
    ra = [180.0, 181.0]
    dec = [32.0, 33.0]
    # name = "cosmos"          # ... or a named region (built-in or from [regions])

    [regions.myfield]
    ra = [10.0, 12.0]
    dec = [-1.0, 1.0]

    [stages.runbrick]
    threads = 2

    [cluster]
    profile = "local"

Errors name the file and the dotted key: an unknown key, a value of the wrong
type, a missing required key, or an unresolved ``$VARIABLE`` in a path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .survey.layout import ReleaseLayout
from .survey.regions import REGIONS, Region
from .survey.releases import DEFAULT_RELEASE, release_problem, sweep_version


@dataclass
class ImagesOptions:
    """Which CP images make up the release."""

    mjd_min: float | None = None
    mjd_max: float | None = None
    exclude: list[str] = field(default_factory=list)  # image_filename globs to leave out


@dataclass
class CalibsOptions:
    force: bool = False
    timeout: float = 1800.0
    processor: str | None = None  # default: [release] processor


@dataclass
class ZeropointsOptions:
    force: bool = False
    timeout: float = 1800.0
    processor: str | None = None


@dataclass
class CcdsOptions:
    force: bool = False
    depth_cut: bool = False
    # legacyzpts' update_ccd_cuts (zeropoints from legacypipe): an exposure with fewer good
    # CCDs than this fraction of the camera's (62 for DECam) is cut whole
    good_ccd_fraction: float = 0.7
    processor: str | None = None  # legacypipe: the kd-tree with legacypipe's create_kdtrees


@dataclass
class BricksOptions:
    ignore_cuts: bool = False


@dataclass
class RunbrickOptions:
    threads: int = 1
    width: int = 3600
    height: int = 3600
    pixscale: float = 0.262
    nsigma: float = 6.0
    memory_limit_gb: float | None = None
    keep_checkpoints: bool = False
    force: bool = False
    timeout: float = 4 * 3600.0
    max_retries: int = 3
    zoom: list[int] | None = None  # [x0, x1, y0, y1] of the brick grid (legacypipe --zoom)
    resample_kernel: str = "lanczos3"  # or "spline3" (scipy cubic spline, faster)
    processor: str | None = None
    radec: list[float] | None = None  # legacypipe: a custom brick centred here (--radec)
    # lite, as legacypipe without --skip-calibs: a CCD's missing sky/PSF calibration is fitted
    # when the brick needs it; true: a missing calibration is an error
    skip_calibs: bool = False


@dataclass
class SweepsOptions:
    force: bool = False


@dataclass
class MatchOptions:
    external: Path | None = None  # FITS catalogue with RA/DEC (or PLUG_RA/PLUG_DEC)
    radius: float = 1.5  # arcsec
    copy: list[str] = field(default_factory=list)  # external columns copied to the output


@dataclass
class HatsOptions:
    enabled: bool = False  # export the sweeps as a HATS catalogue (needs lsdask[hats])
    force: bool = False
    margin_arcsec: float = 10.0  # margin cache width


@dataclass
class StagesOptions:
    images: ImagesOptions = field(default_factory=ImagesOptions)
    calibs: CalibsOptions = field(default_factory=CalibsOptions)
    zeropoints: ZeropointsOptions = field(default_factory=ZeropointsOptions)
    ccds: CcdsOptions = field(default_factory=CcdsOptions)
    bricks: BricksOptions = field(default_factory=BricksOptions)
    runbrick: RunbrickOptions = field(default_factory=RunbrickOptions)
    sweeps: SweepsOptions = field(default_factory=SweepsOptions)
    match: MatchOptions = field(default_factory=MatchOptions)
    hats: HatsOptions = field(default_factory=HatsOptions)


@dataclass
class LegacypipeSection:
    """How to call the real legacypipe (``[legacypipe]``); see ``lsdask.processors.legacypipe``.

    The launcher is ``command`` (e.g. ``["shifter", "--image=docker:legacysurvey/legacypipe:
    DR11.1.0", "python", "-O"]``), else ``python`` (a native install), else ``prefix`` or the
    prefix named by ``$LSDASK_LEGACYPIPE_PREFIX`` (built by the vendored ``build.sh``).
    Reference catalogues default to the survey dir (``gaia/`` chunks, ``tycho2.kd.fits``,
    ``ps1/`` calibrators) as legacypipe's tests do.
    """

    python: Path | None = None
    command: list[str] | None = None
    prefix: Path | None = None  # a build.sh prefix (its env.sh is sourced)
    pythonpath: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gaia_cat_dir: Path | None = None  # default <survey_dir>/gaia
    gaia_cat_ver: str = "2"
    gaia_cat_prefix: str = "chunk"
    gaia_cat_scheme: str = "ring"
    tycho2_kd_dir: Path | None = None  # default <survey_dir>
    ps1cat_dir: Path | None = None  # legacyzpts' PS1 calibrators; default <survey_dir>/ps1
    dust_dir: Path | None = None
    largegalaxies_cat: Path | None = None
    sky_template_dir: Path | None = None
    unwise_coadds_dir: Path | None = None
    unwise_coadds_timeresolved_dir: Path | None = None
    unwise_model_sky_dir: Path | None = None
    skip_calibs: bool = True  # runbrick --skip-calibs (the calibs stage made them)
    wise: bool = False  # unWISE forced photometry (needs unwise_coadds_dir)
    gaia_stars: bool = True
    tycho_stars: bool = True
    large_galaxies: bool = False
    checkpoint_period: int = 600  # seconds (runbrick --checkpoint-period)
    write_stages: list[str] = field(default_factory=lambda: ["srcs"])  # --write-stage
    extra_args: list[str] = field(default_factory=list)  # more runbrick arguments
    runbrick_module: str = "legacypipe.runbrick"  # the entry module (python -m ...)
    zeropoints_args: list[str] = field(default_factory=list)  # more legacy_zeropoints args


@dataclass
class ClusterOptions:
    """``[cluster]``: the profile (a ``jobqueue.<name>`` Dask config section, see
    ``lsdask.jobqueue``) and this release's overrides of it."""

    profile: str = "local"
    adapt_min: int = 0
    adapt_max: int = 4
    account: str | None = None
    qos: str | None = None
    walltime: str | None = None
    # any key of the profile's jobqueue section, e.g. {memory = "400GB", cores = 64}
    jobqueue: dict[str, str | int | float | bool | list[str]] = field(default_factory=dict)
    # memory each task of a stage asks of its worker, e.g. {runbrick = "16GB"} (also learnt:
    # 1.2 x the p95 peak RSS the ledger observed for the stage, whichever is larger)
    task_memory: dict[str, str] = field(default_factory=dict)
    window: int = 1000  # tasks in flight at once
    status_every: float = 60.0  # seconds between status lines of a run with no terminal
    report_every: float = 600.0  # seconds between run-report refreshes while running (0: off)


@dataclass
class ReleaseSection:
    name: str
    survey_dir: Path
    release_dir: Path | None = None
    release: int = DEFAULT_RELEASE  # 9010, DR9 DECam (lsdask.survey.releases)
    cameras: list[str] = field(default_factory=lambda: ["decam"])
    bands: list[str] = field(default_factory=lambda: ["g", "r", "z"])
    processor: str = "lite"


@dataclass
class RegionSection:
    ra: list[float] | None = None
    dec: list[float] | None = None
    name: str | None = None


@dataclass
class ReleaseConfig:
    """A parsed release configuration."""

    release: ReleaseSection
    region: RegionSection | None = None
    regions: dict[str, RegionSection] = field(default_factory=dict)
    stages: StagesOptions = field(default_factory=StagesOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    legacypipe: LegacypipeSection = field(default_factory=LegacypipeSection)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def bands(self) -> list[str]:
        return self.release.bands

    @property
    def layout(self) -> ReleaseLayout:
        return ReleaseLayout(self.release.survey_dir, self.release.release_dir, self.release.name,
                             sweep_version(self.release.release))

    def processor_name(self, stage: str) -> str:
        """The processor of ``stage``: ``[stages.<stage>] processor``, else ``[release]``'s."""
        opts = getattr(self.stages, stage, None)
        return getattr(opts, "processor", None) or self.release.processor

    def processor_ref(self, stage: str):
        """The processor of ``stage`` with its settings (``[legacypipe]`` for legacypipe)."""
        from .processors import ProcessorRef

        name = self.processor_name(stage)
        return ProcessorRef(name, self.legacypipe if name == "legacypipe" else None)

    def region_box(self) -> Region | None:
        """The release region as a :class:`Region`, or None for the whole sky."""
        if self.region is None:
            return None
        return resolve_region(self.region, self.regions, str(self.path), "region")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path", None)
        return d

    def hash(self) -> str:
        """Short stable hash of the parsed configuration (provenance)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def resolve_region(sec: RegionSection, user: dict[str, RegionSection], file: str,
                   key: str) -> Region:
    if sec.name is not None:
        if sec.ra is not None or sec.dec is not None:
            raise ConfigError(f"{file}: key '{key}': give either 'name' or 'ra'/'dec', not both")
        if sec.name in user:
            return resolve_region(user[sec.name], {}, file, f"regions.{sec.name}").named(sec.name)
        if sec.name in REGIONS:
            return REGIONS[sec.name]
        known = sorted(set(REGIONS) | set(user))
        raise ConfigError(f"{file}: key '{key}.name': unknown region {sec.name!r} "
                          f"(known: {', '.join(known)})")
    for k in ("ra", "dec"):
        v = getattr(sec, k)
        if v is None or len(v) != 2:
            raise ConfigError(f"{file}: key '{key}.{k}' must be a list of two numbers [min, max]")
    if not (-90 <= sec.dec[0] <= sec.dec[1] <= 90):
        raise ConfigError(f"{file}: key '{key}.dec' must satisfy -90 <= min <= max <= 90")
    ra0, ra1 = sec.ra
    if not (0 <= ra0 <= 360 and 0 <= ra1 <= 360):
        raise ConfigError(f"{file}: key '{key}.ra' must be within [0, 360], got {list(sec.ra)}")
    if ra0 > ra1 and 360 - ra0 + ra1 >= 180:
        raise ConfigError(f"{file}: key '{key}.ra': [{ra0:g}, {ra1:g}] would wrap through RA 0 "
                          f"over {360 - ra0 + ra1:g} degrees; give [min, max] (or a wrap "
                          f"narrower than 180 degrees, e.g. [350, 10])")
    return Region(float(sec.ra[0]), float(sec.ra[1]), float(sec.dec[0]), float(sec.dec[1]))


#: Processors a configuration may name (``lsdask.processors.<name>``).
PROCESSORS = ("lite", "legacypipe", "testing")

_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(value: str, file: str, key: str, base: Path | None) -> Path:
    """Expand ``$VAR``/``${VAR}`` and ``~``; relative paths are relative to the config file."""
    expanded = os.path.expanduser(os.path.expandvars(value))
    m = _VAR.search(expanded)
    if m:
        raise ConfigError(f"{file}: key '{key}': environment variable {m.group(0)} is not set "
                          f"(in {value!r})")
    p = Path(expanded)
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "None")


def _convert(value: Any, tp, file: str, key: str, base: Path | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, file, key, base)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: key '{key}' must be a table, got {value!r}")
        return _build(tp, value, file, key, base)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{file}: key '{key}' must be a list, got {value!r}")
        return [_convert(v, args[0], file, f"{key}[{i}]", base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: key '{key}' must be a table, got {value!r}")
        return {k: _convert(v, args[1], file, f"{key}.{k}", base) for k, v in value.items()}
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{file}: key '{key}' must be a path string, got {value!r}")
        return expand_path(value, file, key, base)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{file}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp in (int, bool, str):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{file}: key '{key}' must be {_type_name(tp)}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")  # programming error


def _build(cls, data: dict, file: str, prefix: str, base: Path | None):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            raise ConfigError(f"{file}: unknown key '{key}' (valid keys here: "
                              f"{', '.join(sorted(fields))})")
        kwargs[k] = _convert(v, hints[k], file, key, base)
    for name, f in fields.items():
        if (name not in kwargs and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{file}: missing required key '{key}'")
    return cls(**kwargs)


def parse_config(data: dict, file: str = "<config>", base: Path | None = None) -> ReleaseConfig:
    """Build a :class:`ReleaseConfig` from a TOML-shaped dict."""
    if "release" not in data:
        raise ConfigError(f"{file}: missing required table '[release]'")
    cfg = _build(ReleaseConfig, data, file, "", base)
    cfg.path = Path(file) if file != "<config>" else None
    if cfg.region is not None:
        cfg.region_box()  # validate now, errors name the key
    for name, sec in cfg.regions.items():
        resolve_region(sec, {}, file, f"regions.{name}")
    for stage in ("release", *(f.name for f in dataclasses.fields(StagesOptions))):
        sec = cfg.release if stage == "release" else getattr(cfg.stages, stage)
        name = getattr(sec, "processor", None)
        if name is not None and name not in PROCESSORS:
            key = "release.processor" if stage == "release" else f"stages.{stage}.processor"
            raise ConfigError(f"{file}: key '{key}': unknown processor {name!r} "
                              f"(known: {', '.join(PROCESSORS)})")
    r = cfg.stages.runbrick
    if r.threads < 1:
        raise ConfigError(f"{file}: key 'stages.runbrick.threads' must be >= 1")
    _check_values(cfg, file)
    return cfg


#: Band names a release may use.
BANDS = ("u", "g", "r", "i", "z", "Y", "N419", "N501", "N540", "N673", "N708")
#: Resampling kernels of runbrick.
KERNELS = ("lanczos3", "spline3")


def _check_values(cfg: ReleaseConfig, file: str) -> None:
    """Values that parse but cannot work: each a :class:`ConfigError` naming file and key."""

    from .survey.camera import get_camera

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{file}: key '{key}': {what}")

    for c in cfg.release.cameras:
        try:
            get_camera(c)
        except Exception:  # noqa: BLE001 - any lookup failure is an unknown camera
            raise bad("release.cameras", f"unknown camera {c!r} (decam, mosaic, 90prime)"
                      ) from None
    for b in cfg.release.bands:
        if b not in BANDS:
            raise bad("release.bands", f"unknown band {b!r} (known: {', '.join(BANDS)})")
    if not cfg.release.bands:
        raise bad("release.bands", "no bands")
    why = release_problem(cfg.release.release, cfg.release.cameras)
    if why:
        raise bad("release.release", why)
    st = cfg.stages
    if st.runbrick.resample_kernel not in KERNELS:
        raise bad("stages.runbrick.resample_kernel",
                  f"unknown kernel {st.runbrick.resample_kernel!r} ({', '.join(KERNELS)})")
    for name in ("calibs", "zeropoints", "runbrick"):
        if getattr(st, name).timeout <= 0:
            raise bad(f"stages.{name}.timeout", "must be > 0 seconds")
    if st.runbrick.max_retries < 0:
        raise bad("stages.runbrick.max_retries", "must be >= 0")
    if st.runbrick.memory_limit_gb is not None and st.runbrick.memory_limit_gb <= 0:
        raise bad("stages.runbrick.memory_limit_gb", "must be > 0")
    if st.hats.margin_arcsec <= 0:
        raise bad("stages.hats.margin_arcsec", "must be > 0 arcsec")
    if st.match.radius <= 0:
        raise bad("stages.match.radius", "must be > 0 arcsec")
    if cfg.cluster.window < 1:
        raise bad("cluster.window", "must be >= 1")
    if cfg.cluster.status_every <= 0:
        raise bad("cluster.status_every", "must be > 0 seconds")
    if cfg.cluster.report_every < 0:
        raise bad("cluster.report_every", "must be >= 0 seconds (0: only at the end)")
    try:
        from .jobqueue import Profile

        Profile.load(cfg.cluster.profile)
    except ConfigError as e:
        raise bad("cluster.profile", str(e)) from None


def load_config(path: str | Path) -> ReleaseConfig:
    """Read and validate a release TOML file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a release TOML must be "
                          f"UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    return parse_config(data, str(path), path.resolve().parent)

"""Cluster profiles as Dask configuration, and the clusters made from them.

``lsdask.yaml`` (this folder) is registered as Dask configuration defaults on import, the
way dask-jobqueue registers its ``jobqueue.yaml``: a Slurm profile is a ``jobqueue.<name>``
section, so ``SLURMCluster(config_name="perlmutter-cpu")`` works on it, and
``~/.config/dask/*.yaml`` (or ``DASK_JOBQUEUE__<NAME>__...`` variables) override it or add
new profiles. ``lsdask.profiles.<name>`` holds what dask-jobqueue has no key for: the worker
lifetime margin and stagger, the ``distributed`` settings applied before the scheduler starts
(``allowed-failures: 0`` so the runner sees lost workers, ``default-task-durations`` so
adaptive scaling knows a runbrick lasts an hour), and, for ``local``, LocalCluster arguments.

Every worker advertises ``--resources cores=N,memory=BYTES``; a Slurm worker gets
``--lifetime`` = walltime - margin and ``--lifetime-stagger`` (never ``--lifetime-restart``),
TLS with temporary certificates (``security=True``), the job name ``lsdask-<release>``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import yaml

from ..errors import ConfigError

HERE = Path(__file__).resolve().parent
DEFAULTS = HERE / "lsdask.yaml"
#: dask-jobqueue's own sections, not lsdask profiles.
JOBQUEUE_BUILTIN = ("htcondor", "local", "lsf", "moab", "oar", "pbs", "sge", "slurm")
#: Worker options lsdask computes (removed from a profile's worker-extra-args, then re-added).
_COMPUTED = ("--resources", "--lifetime", "--lifetime-stagger")


@functools.cache
def slurm_defaults() -> dict[str, Any]:
    """dask-jobqueue's ``jobqueue.slurm`` defaults, read from its YAML (no import: fast CLI)."""
    spec = importlib.util.find_spec("dask_jobqueue")
    path = Path(spec.origin).parent / "jobqueue.yaml"  # type: ignore[union-attr, arg-type]
    return yaml.safe_load(path.read_text())["jobqueue"]["slurm"]


def register() -> None:
    """Add lsdask's profiles to Dask's configuration defaults (user config keeps priority).

    Each ``jobqueue.<profile>`` section is completed with dask-jobqueue's ``jobqueue.slurm``
    defaults, because dask-jobqueue reads every key of its section."""
    data = yaml.safe_load(DEFAULTS.read_text())
    slurm = slurm_defaults()
    data["jobqueue"] = {k: dask.config.merge(slurm, v) for k, v in data["jobqueue"].items()}
    with contextlib.suppress(Exception):
        dask.config.ensure_file(source=str(DEFAULTS))  # a commented copy to edit
    dask.config.update_defaults(data)


register()


def profile_names() -> list[str]:
    """Every profile: lsdask's, and any ``jobqueue.<name>`` added in the user's config."""
    names = set(dask.config.get("lsdask.profiles", {}))
    names |= {k for k in dask.config.get("jobqueue", {}) if k not in JOBQUEUE_BUILTIN}
    return sorted(names)


PROFILES = tuple(profile_names())


def parse_seconds(value: str | int | float) -> float:
    """``"15m"``, ``"1h"``, ``"30s"``, ``"00:30:00"``, ``"1-00:00:00"`` or seconds."""
    import dask.utils

    if isinstance(value, int | float):
        return float(value)
    v = str(value).strip()
    days = 0.0
    if "-" in v and v.count(":") == 2:
        d, v = v.split("-", 1)
        days = float(d)
    if v.count(":") == 2:
        h, m, s = (float(x) for x in v.split(":"))
        return days * 86400 + h * 3600 + m * 60 + s
    return float(dask.utils.parse_timedelta(v, default="s"))


def _strip(args: list[str], options: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        out.append(a)
    return out


def _set_qos(directives: list[str], qos: str) -> list[str]:
    keep = [d for d in directives if not (d.startswith("-q ") or d.startswith("--qos"))]
    return [f"-q {qos}", *keep]


def _tls_dir(value: str | None) -> str:
    d = Path(os.path.expanduser(os.path.expandvars(value or "~/.cache/lsdask/tls")))
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return str(d)


@dataclass
class Profile:
    """A named cluster profile: a ``jobqueue.<name>`` section (Slurm) or a LocalCluster."""

    name: str
    jobqueue: dict[str, Any] | None
    local: dict[str, Any] = field(default_factory=dict)
    lifetime_margin: float = 0.0
    lifetime_stagger: float = 0.0
    distributed: dict[str, Any] = field(default_factory=dict)
    driver: dict[str, Any] = field(default_factory=dict)  # `lsdask launch`'s batch job

    @classmethod
    def load(cls, name: str) -> Profile:
        """The profile from the current Dask configuration (a ConfigError names the known)."""
        extra = dask.config.get(f"lsdask.profiles.{name}", None) or {}
        jq = None if name in JOBQUEUE_BUILTIN else dask.config.get(f"jobqueue.{name}", None)
        if jq is None and "local-cluster" not in extra:
            raise ConfigError(f"unknown cluster profile {name!r} (known: "
                              f"{', '.join(profile_names())}; add one as a jobqueue.<name> "
                              f"section in ~/.config/dask/)")
        if jq is not None:  # a user's section: dask-jobqueue reads every key of jobqueue.slurm
            full = dask.config.merge(slurm_defaults(), jq)
            if set(full) != set(jq):
                dask.config.update(dask.config.config, {"jobqueue": {name: full}})
                jq = full
        return cls(name, copy.deepcopy(jq) if jq is not None else None,
                   local=copy.deepcopy(extra.get("local-cluster", {})),
                   lifetime_margin=parse_seconds(extra.get("lifetime-margin", 0) or 0),
                   lifetime_stagger=parse_seconds(extra.get("lifetime-stagger", 0) or 0),
                   distributed=copy.deepcopy(extra.get("distributed", {})),
                   driver=copy.deepcopy(extra.get("driver", {})))

    @property
    def is_slurm(self) -> bool:
        return self.jobqueue is not None

    @property
    def cores(self) -> int:
        if self.is_slurm:
            return int(self.jobqueue["cores"]) // max(1, int(self.jobqueue.get("processes") or 1))
        return int(self.local.get("threads-per-worker", 1))

    def apply_distributed(self) -> None:
        """Set the profile's ``distributed`` settings (before a scheduler starts)."""
        if self.distributed:
            dask.config.set({"distributed": dask.config.merge(
                dask.config.get("distributed", {}), self.distributed)})

    def slurm_kwargs(self, release: str | None = None, account: str | None = None,
                     qos: str | None = None, walltime: str | None = None,
                     log_directory: str | os.PathLike | None = None, security: Any = True,
                     options: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """SLURMCluster keyword arguments beyond ``config_name``: the release's overrides,
        job name, account, QOS, walltime, lifetime and resources, TLS."""
        jq = dask.config.merge(self.jobqueue, {k.replace("_", "-"): v
                                               for k, v in (options or {}).items()})
        kw: dict[str, Any] = {("job_name" if k == "name" else k.replace("-", "_")): v
                              for k, v in (options or {}).items()}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        if walltime:
            kw["walltime"] = walltime
        wall = kw.get("walltime", jq.get("walltime"))
        if release:
            kw["job_name"] = f"lsdask-{release}"
        env_acct = os.environ.get("LSDASK_ACCOUNT") or os.environ.get("SBATCH_ACCOUNT")
        if account:  # the command line or the release config: over the profile
            kw["account"] = account
        elif env_acct and not jq.get("account") and "account" not in kw:
            kw["account"] = env_acct
        if qos:
            kw["job_extra_directives"] = _set_qos(
                list(kw.get("job_extra_directives", jq.get("job-extra-directives")) or []), qos)
        cores = int(kw.get("cores", jq["cores"]))
        procs = max(1, int(kw.get("processes", jq.get("processes")) or 1))
        memory = dask.utils.parse_bytes(str(kw.get("memory", jq["memory"])))
        args = _strip(list(kw.get("worker_extra_args", jq.get("worker-extra-args")) or []),
                      _COMPUTED)
        args += ["--resources", f"cores={cores // procs},memory={memory // procs}"]
        if self.lifetime_margin > 0 and wall:
            lifetime = parse_seconds(wall) - self.lifetime_margin
            if lifetime <= 0:
                raise ConfigError(f"profile {self.name}: lifetime-margin "
                                  f"{self.lifetime_margin:.0f} s is not shorter than the "
                                  f"walltime {wall}")
            args += ["--lifetime", f"{int(lifetime)}s"]
            if self.lifetime_stagger > 0:
                args += ["--lifetime-stagger", f"{int(self.lifetime_stagger)}s"]
        kw["worker_extra_args"] = args
        if not jq.get("python"):
            kw.setdefault("python", sys.executable)
        if security:
            kw["security"] = security
            kw.setdefault("shared_temp_directory",
                          _tls_dir(jq.get("shared-temp-directory")))
        if log_directory is not None:
            Path(log_directory).mkdir(parents=True, exist_ok=True)
            kw["log_directory"] = str(log_directory)
        return kw

    def local_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """LocalCluster keyword arguments, with ``cores`` and ``memory`` resources."""
        from distributed.system import MEMORY_LIMIT

        kw = {k.replace("-", "_"): v for k, v in self.local.items()}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        threads = int(kw.get("threads_per_worker", 1))
        n = max(1, int(kw.get("n_workers") or 1))
        lim = kw.get("memory_limit", "auto")
        mem = (MEMORY_LIMIT // n if lim in ("auto", None, 0)
               else dask.utils.parse_bytes(str(lim)) if isinstance(lim, str) else int(lim))
        kw.setdefault("resources", {"cores": threads, "memory": mem})
        return kw

    def make_cluster(self, **kwargs: Any):
        """A SLURMCluster(config_name=...) or LocalCluster (see the ``*_kwargs`` methods)."""
        self.apply_distributed()
        if not self.is_slurm:
            from distributed import LocalCluster

            drop = ("release", "account", "qos", "walltime", "log_directory", "security",
                    "options")
            return LocalCluster(**self.local_kwargs(
                **{k: v for k, v in kwargs.items() if k not in drop}))
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(config_name=self.name, **self.slurm_kwargs(**kwargs))

    def job_script(self, **kwargs: Any) -> str:
        """The batch script of one worker job (a LocalCluster has none: a description)."""
        if not self.is_slurm:
            return (f"# profile {self.name}: LocalCluster (no batch script), "
                    f"{self.local.get('n-workers')} workers x "
                    f"{self.local.get('threads-per-worker')} threads\n")
        from dask_jobqueue.slurm import SLURMJob

        kw = self.slurm_kwargs(security=None, **kwargs)
        kw.pop("shared_temp_directory", None)
        job = SLURMJob(scheduler="tls://<scheduler>:8786", name="<worker>",
                       config_name=self.name, **kw)
        return job.job_script()


def load_profile(name: str) -> Profile:
    return Profile.load(name)


def make_cluster(profile: str = "local", account: str | None = None,
                 log_directory: str | os.PathLike | None = None, **overrides: Any):
    """A cluster from a named profile; ``overrides`` as in :meth:`Profile.slurm_kwargs` or
    LocalCluster keywords."""
    prof = Profile.load(profile)
    jhub = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or (
        f"/user/{os.environ['JUPYTERHUB_USER']}/" if os.environ.get("JUPYTERHUB_USER") else None)
    if jhub and "{host}" in str(dask.config.get("distributed.dashboard.link", "{host}")):
        # the widget and client.dashboard_link through jupyter-server-proxy
        dask.config.set({"distributed.dashboard.link": jhub.rstrip("/") + "/proxy/{port}/status"})
    cluster = prof.make_cluster(account=account, log_directory=log_directory, **overrides)
    cluster.lsdask_profile = prof  # type: ignore[attr-defined]
    if not prof.is_slurm:
        cluster.lsdask_cores = int(overrides.get("threads_per_worker")  # type: ignore
                                   or prof.cores)
    return cluster


def local_sizes(profile: str, threads: int, n_workers: int | None = None) -> dict[str, int]:
    """LocalCluster sizes whose workers each have ``threads`` cores (a brick's runbrick
    threads; the runner gives a task no more than its worker's cores), keeping the total
    cores of the profile's workers (or of ``n_workers`` of them)."""
    local = Profile.load(profile).local
    tpw = int(local.get("threads-per-worker", 1))
    n = int(n_workers or local.get("n-workers") or 1)
    t = max(tpw, int(threads))
    return {"n_workers": max(1, n * tpw // t), "threads_per_worker": t}


def release_cluster(cfg, profile: str | None = None, log_directory: Any = None,
                    **cli: Any):
    """The cluster of a release config (``cfg.release.name``, ``cfg.cluster``); ``cli``
    (qos, walltime, account) overrides the config, which overrides the profile."""
    prof = profile or cfg.cluster.profile
    if not Profile.load(prof).is_slurm:
        return make_cluster(prof, **local_sizes(prof, cfg.stages.runbrick.threads))
    c = cfg.cluster
    return make_cluster(prof, account=cli.get("account") or c.account,
                        qos=cli.get("qos") or c.qos, walltime=cli.get("walltime") or c.walltime,
                        release=cfg.release.name, options=dict(c.jobqueue),
                        log_directory=log_directory)


def is_slurm(cluster) -> bool:
    return hasattr(cluster, "job_cls")


def adapt(cluster, minimum: int, maximum: int, **kwargs: Any):
    """Adaptive scaling: workers (LocalCluster) or jobs (SLURMCluster)."""
    if is_slurm(cluster):
        return cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum, **kwargs)
    return cluster.adapt(minimum=minimum, maximum=maximum, **kwargs)


def job_script(profile: str, account: str | None = None, **overrides: Any) -> str:
    return Profile.load(profile).job_script(account=account, **overrides)


def dashboard_link(client_or_cluster) -> str | None:
    """The dashboard where the operator is: behind JupyterHub the jupyter-server-proxy path
    (``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status``, by default
    ``/user/{JUPYTERHUB_USER}/proxy/{port}/status`` as dask-jobqueue documents), else the
    machine's host name (the loopback address when the dashboard listens only there)."""
    cluster = getattr(client_or_cluster, "cluster", None) or client_or_cluster
    try:
        info = cluster.scheduler_info if hasattr(cluster, "scheduler_info") else None
        if callable(info):
            info = info()
        port = (info or {}).get("services", {}).get("dashboard")
    except Exception:  # noqa: BLE001
        port = None
    if port is None:
        with contextlib.suppress(Exception):
            return client_or_cluster.dashboard_link
        return None
    if os.environ.get("JUPYTERHUB_USER") or os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or \
            f"/user/{os.environ['JUPYTERHUB_USER']}/"
        return f"{prefix.rstrip('/')}/proxy/{port}/status"
    host = socket.gethostname()
    with contextlib.suppress(Exception):  # the dashboard's own socket: loopback only?
        socks = cluster.scheduler.http_server._sockets.values()
        if all(str(sk.getsockname()[0]).startswith("127.") for sk in socks):
            host = "127.0.0.1"
    return f"http://{host}:{port}/status"


def uses_resources(client) -> bool:
    """Whether tasks may ask for ``cores``: the cluster is ours, or a worker advertises it."""
    if getattr(getattr(client, "cluster", None), "lsdask_profile", None) is not None:
        return True
    try:
        workers = client.scheduler_info()["workers"].values()
    except Exception:  # noqa: BLE001
        return False
    return any("cores" in (w.get("resources") or {}) for w in workers)


def _max_resource(client, name: str) -> float | None:
    try:
        workers = client.scheduler_info()["workers"].values()
        vals = [float((w.get("resources") or {}).get(name, 0)) for w in workers]
        vals = [v for v in vals if v]
        return max(vals) if vals else None
    except Exception:  # noqa: BLE001
        return None


def max_cores(client) -> int | None:
    """Most ``cores`` any worker advertises (or the profile's, before workers exist)."""
    if client is None:
        return None
    got = _max_resource(client, "cores")
    if got:
        return int(got)
    cluster = getattr(client, "cluster", None)
    prof = getattr(cluster, "lsdask_profile", None)
    if prof is None:
        return None
    if is_slurm(cluster):
        with contextlib.suppress(Exception):
            return int(cluster._dummy_job.worker_process_threads)
    return int(getattr(cluster, "lsdask_cores", None) or prof.cores)


def max_memory(client) -> int | None:
    """Most ``memory`` (bytes) any worker advertises."""
    got = _max_resource(client, "memory") if client is not None else None
    return int(got) if got else None


def worker_memory(client) -> int | None:
    """Memory (bytes) of the largest worker: advertised, or, before a Slurm cluster of ours
    has workers, what its jobs will have; None when workers do not advertise ``memory``."""
    got = max_memory(client)
    if got:
        return got
    cluster = getattr(client, "cluster", None)
    if getattr(cluster, "lsdask_profile", None) is not None and is_slurm(cluster):
        with contextlib.suppress(Exception):
            job = cluster._dummy_job
            return int(job.worker_memory // job.worker_processes)
    return None


def close_cluster(client, cluster) -> None:
    """Shut down quietly: retire the workers first (so none is left heartbeating to a
    scheduler that is gone), then close the client and the cluster."""
    with contextlib.suppress(Exception):
        client.retire_workers(close_workers=True, remove=True)
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close()

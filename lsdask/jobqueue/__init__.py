"""Cluster factories from named profiles (Dask-config-style YAML in this folder).

A profile has three parts: ``lsdask`` (``kind: local|slurm``, worker lifetime
margin and stagger), ``local`` (LocalCluster arguments) or ``jobqueue.slurm``
(SLURMCluster arguments, as in Dask's ``jobqueue.yaml``), and ``distributed``
(Dask settings applied before the scheduler starts: ``allowed-failures: 0`` so
the lsdask runner sees and records lost workers, ``default-task-durations`` so
adaptive scaling knows a runbrick lasts an hour, not 500 ms).

Profiles: ``local``, ``local-slurm`` (the test cluster of ``local-slurm.sh``),
``perlmutter-cpu`` (NERSC), ``cori-haswell`` (historic). A path to a YAML file
works too. Every worker advertises ``--resources cores=N``; a SLURM worker gets
``--lifetime`` = walltime - margin, ``--lifetime-stagger``, no ``--lifetime-restart``.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

HERE = Path(__file__).resolve().parent
PROFILES = ("local", "local-slurm", "perlmutter-cpu", "cori-haswell")


def profile_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    q = HERE / f"{name}.yaml"
    if not q.is_file():
        known = ", ".join(sorted(x.stem for x in HERE.glob("*.yaml")))
        raise ConfigError(f"unknown cluster profile {name!r} (known: {known}, or a .yaml path)")
    return q


def load_profile(name: str) -> dict[str, Any]:
    """The profile as a dict (``lsdask``, ``local`` or ``jobqueue``, ``distributed``)."""
    path = profile_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    kind = data.get("lsdask", {}).get("kind")
    if kind not in ("local", "slurm"):
        raise ConfigError(f"{path}: key 'lsdask.kind' must be 'local' or 'slurm'")
    return data


def parse_seconds(value: str | int | float) -> float:
    """``"15m"``, ``"1h"``, ``"30s"``, ``"00:30:00"`` or a number of seconds."""
    import dask.utils

    if isinstance(value, int | float):
        return float(value)
    v = str(value).strip()
    if v.count(":") == 2:
        h, m, s = (float(x) for x in v.split(":"))
        return h * 3600 + m * 60 + s
    return float(dask.utils.parse_timedelta(v, default="s"))


def _apply_distributed(profile: dict[str, Any]) -> None:
    import dask

    dist = profile.get("distributed")
    if dist:
        dask.config.set({"distributed": dask.config.merge(
            dask.config.get("distributed", {}), dist)})


def slurm_kwargs(profile: dict[str, Any], account: str | None = None,
                 log_directory: str | os.PathLike | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """SLURMCluster keyword arguments for a slurm profile (worker args, lifetime, account)."""
    kw = copy.deepcopy(profile.get("jobqueue", {}).get("slurm", {}))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    meta = profile.get("lsdask", {})
    for k in ("local_directory",):
        if isinstance(kw.get(k), str):
            kw[k] = os.path.expandvars(kw[k])
    acct = account or os.environ.get("LSDASK_ACCOUNT") or os.environ.get("SBATCH_ACCOUNT")
    if acct and not kw.get("account"):
        kw["account"] = acct
    cores = int(kw.get("cores", 1))
    extra = list(kw.get("worker_extra_args") or [])
    extra += ["--resources", f"cores={cores}"]
    margin = parse_seconds(meta.get("lifetime-margin", 0) or 0)
    if margin > 0 and kw.get("walltime"):
        lifetime = parse_seconds(kw["walltime"]) - margin
        if lifetime <= 0:
            raise ConfigError(f"profile: lifetime-margin {meta['lifetime-margin']} is not "
                              f"shorter than the walltime {kw['walltime']}")
        extra += ["--lifetime", f"{int(lifetime)}s"]
        stagger = parse_seconds(meta.get("lifetime-stagger", 0) or 0)
        if stagger > 0:
            extra += ["--lifetime-stagger", f"{int(stagger)}s"]
    kw["worker_extra_args"] = extra
    kw.setdefault("python", sys.executable)
    if log_directory is not None:
        Path(log_directory).mkdir(parents=True, exist_ok=True)
        kw["log_directory"] = str(log_directory)
    return kw


def make_cluster(profile: str = "local", account: str | None = None,
                 log_directory: str | os.PathLike | None = None, **overrides: Any):
    """A LocalCluster or SLURMCluster from a named profile; ``overrides`` replace its keys."""
    prof = load_profile(profile)
    _apply_distributed(prof)
    kind = prof["lsdask"]["kind"]
    if kind == "local":
        from distributed import LocalCluster

        kw = copy.deepcopy(prof.get("local", {}))
        kw.update({k: v for k, v in overrides.items() if v is not None})
        threads = int(kw.get("threads_per_worker", 1))
        kw.setdefault("resources", {"cores": threads})
        cluster = LocalCluster(**kw)
        cluster._lsdask_threads = threads  # type: ignore[attr-defined]
    else:
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(**slurm_kwargs(prof, account, log_directory, **overrides))
    cluster.lsdask_profile = profile  # type: ignore[attr-defined]
    cluster.lsdask_kind = kind  # type: ignore[attr-defined]
    return cluster


def adapt(cluster, minimum: int, maximum: int, **kwargs: Any):
    """Adaptive scaling for both kinds: workers (LocalCluster) or jobs (SLURMCluster)."""
    if getattr(cluster, "lsdask_kind", None) == "slurm" or hasattr(cluster, "job_cls"):
        return cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum, **kwargs)
    return cluster.adapt(minimum=minimum, maximum=maximum, **kwargs)


def job_script(profile: str, account: str | None = None, **overrides: Any) -> str:
    """The batch script a slurm profile submits (a LocalCluster has none: a description)."""
    prof = load_profile(profile)
    if prof["lsdask"]["kind"] == "local":
        kw = prof.get("local", {})
        return (f"# profile {profile}: LocalCluster (no batch script), "
                f"{kw.get('n_workers')} workers x {kw.get('threads_per_worker')} threads\n")
    from dask_jobqueue import SLURMCluster

    _apply_distributed(prof)
    kw = slurm_kwargs(prof, account, **overrides)
    kw.setdefault("scheduler_options", {})
    kw["scheduler_options"] = {**kw["scheduler_options"], "dashboard_address": "127.0.0.1:0",
                               "host": "127.0.0.1"}
    kw["interface"] = None
    with SLURMCluster(**kw) as cluster:
        return cluster.job_script()


def uses_resources(client) -> bool:
    """Whether tasks may ask for ``cores``: the cluster is ours, or a worker advertises it."""
    cluster = getattr(client, "cluster", None)
    if getattr(cluster, "lsdask_kind", None) is not None:
        return True
    try:
        workers = client.scheduler_info()["workers"].values()
    except Exception:  # noqa: BLE001
        return False
    return any("cores" in (w.get("resources") or {}) for w in workers)


def max_cores(client) -> int | None:
    """Most ``cores`` any worker advertises (or the profile's, before workers exist)."""
    if client is None:
        return None
    try:
        workers = client.scheduler_info()["workers"].values()
        cores = [int((w.get("resources") or {}).get("cores", 0)) for w in workers]
        cores = [c for c in cores if c]
        if cores:
            return max(cores)
    except Exception:  # noqa: BLE001
        pass
    cluster = getattr(client, "cluster", None)
    profile = getattr(cluster, "lsdask_profile", None)
    if profile is None:
        return None
    prof = load_profile(profile)
    if prof["lsdask"]["kind"] == "slurm":
        return int(prof.get("jobqueue", {}).get("slurm", {}).get("cores", 1))
    try:
        return int(getattr(cluster, "_lsdask_threads", None)
                   or prof.get("local", {}).get("threads_per_worker", 1))
    except (TypeError, ValueError):
        return None


def close_cluster(client, cluster) -> None:
    """Shut down quietly: retire the workers first (so none is left heartbeating to a
    scheduler that is gone), then close the client and the cluster."""
    import contextlib

    with contextlib.suppress(Exception):
        client.retire_workers(close_workers=True, remove=True)
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close()

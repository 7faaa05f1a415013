"""Cluster profiles: job scripts, lifetime arithmetic, LocalCluster with resources + adapt."""

from __future__ import annotations

import pytest

from lsdask.cli import main
from lsdask.errors import ConfigError
from lsdask.jobqueue import PROFILES, adapt, job_script, load_profile, make_cluster, slurm_kwargs


def test_profiles_load():
    for name in PROFILES:
        assert load_profile(name)["lsdask"]["kind"] in ("local", "slurm")
    with pytest.raises(ConfigError, match="unknown cluster profile"):
        load_profile("no-such-profile")


def test_perlmutter_job_script(monkeypatch):
    monkeypatch.setenv("LSDASK_ACCOUNT", "m0000")
    script = job_script("perlmutter-cpu")
    assert "#SBATCH -q regular" in script and "#SBATCH -p" not in script
    assert "#SBATCH -C cpu" in script
    assert "#SBATCH -A m0000" in script
    assert "#SBATCH -t 06:00:00" in script
    assert "--resources cores=128" in script
    assert "--nthreads 128" in script and "--nworkers" not in script
    # lifetime = 6 h - 15 min margin, staggered, never restarted inside the job
    assert "--lifetime 20700s" in script and "--lifetime-stagger 300s" in script
    assert "--lifetime-restart" not in script


def test_lifetime_shorter_than_walltime_required():
    prof = load_profile("perlmutter-cpu")
    prof["jobqueue"]["slurm"]["walltime"] = "00:10:00"
    with pytest.raises(ConfigError, match="lifetime-margin"):
        slurm_kwargs(prof)


def test_cli_show_script(capsys, monkeypatch):
    monkeypatch.delenv("LSDASK_ACCOUNT", raising=False)
    assert main(["cluster", "--profile", "cori-haswell", "--show-script"]) == 0
    out = capsys.readouterr().out
    assert "#!/usr/bin/env bash" in out and "-C haswell" in out and "cores=32" in out
    assert main(["cluster", "--profile", "local", "--show-script"]) == 0
    assert "LocalCluster" in capsys.readouterr().out


def test_local_cluster_resources_and_adapt():
    from distributed import Client

    cluster = make_cluster("local", n_workers=1, threads_per_worker=2)
    try:
        with Client(cluster) as client:
            info = client.scheduler_info()["workers"]
            assert [w["resources"] for w in info.values()] == [{"cores": 2}]
            ad = adapt(cluster, 1, 2)
            assert ad.minimum == 1 and ad.maximum == 2
            fut = client.submit(sum, [1, 2], resources={"cores": 2})
            assert fut.result(timeout=30) == 3
    finally:
        cluster.close()

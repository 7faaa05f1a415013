"""Cluster profiles as Dask config: job scripts, overrides, SLURMCluster(config_name=...),
LocalCluster with resources + adapt; on the local Slurm: TLS refusal, $TMPDIR on the node."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lsdask.cli import main
from lsdask.errors import ConfigError
from lsdask.jobqueue import PROFILES, Profile, adapt, job_script, make_cluster


def test_profiles_are_dask_config():
    import dask

    assert set(PROFILES) >= {"local", "local-slurm", "perlmutter-cpu", "perlmutter-cpu-shared",
                             "cori-haswell"}
    assert dask.config.get("jobqueue.perlmutter-cpu.cores") == 128
    assert not Profile.load("local").is_slurm and Profile.load("local-slurm").is_slurm
    with pytest.raises(ConfigError, match="unknown cluster profile.*perlmutter-cpu-shared"):
        Profile.load("no-such-profile")
    with pytest.raises(ConfigError, match="unknown cluster profile"):
        Profile.load("slurm")  # dask-jobqueue's own section is not a profile


def test_slurmcluster_config_name_reads_the_profile():
    from dask_jobqueue.slurm import SLURMJob

    # dask-jobqueue alone (no lsdask keyword) makes the worker job of the profile
    script = SLURMJob(scheduler="tcp://x:1", name="w", config_name="perlmutter-cpu").job_script()
    assert "#SBATCH -q regular" in script and "#SBATCH -C cpu" in script
    assert "--resources cores=128,memory=480000000000" in script
    assert "--local-directory $TMPDIR" in script  # left for the node's shell


def test_perlmutter_job_script(monkeypatch):
    monkeypatch.setenv("LSDASK_ACCOUNT", "m0000")
    monkeypatch.setenv("TMPDIR", "/driver/tmp")
    script = job_script("perlmutter-cpu", release="dr11-south")
    assert "#SBATCH -J lsdask-dr11-south" in script
    assert "#SBATCH -q regular" in script and "#SBATCH -p" not in script
    assert "#SBATCH -C cpu" in script and "#SBATCH -A m0000" in script
    assert "#SBATCH -t 06:00:00" in script
    assert "--resources cores=128,memory=480000000000" in script
    assert "--nthreads 128" in script and "--nworkers" not in script
    assert "--local-directory $TMPDIR" in script and "/driver/tmp" not in script
    # lifetime = 6 h - 15 min margin, staggered, never restarted inside the job
    assert "--lifetime 20700s" in script and "--lifetime-stagger 300s" in script
    assert "--lifetime-restart" not in script
    assert script.count("--resources") == 1 and script.count("--lifetime ") == 1
    # --qos/--walltime/--account override the profile; the lifetime follows the walltime
    s2 = job_script("perlmutter-cpu", account="m9999", qos="debug", walltime="00:30:00")
    assert "#SBATCH -q debug" in s2 and "-q regular" not in s2 and "#SBATCH -A m9999" in s2
    assert "#SBATCH -t 00:30:00" in s2 and "--lifetime 900s" in s2
    # the release config's [cluster] jobqueue table overrides any key
    s3 = job_script("perlmutter-cpu-shared", options={"memory": "60GB", "cores": 16})
    assert "#SBATCH -q shared" in s3 and "--resources cores=16,memory=60000000000" in s3


def test_lifetime_shorter_than_walltime_required():
    with pytest.raises(ConfigError, match="lifetime-margin"):
        job_script("perlmutter-cpu", walltime="00:10:00")


def test_user_dask_config_overrides_and_adds_profiles(tmp_path):
    (tmp_path / "site.yaml").write_text(textwrap.dedent("""\
        jobqueue:
          perlmutter-cpu:
            memory: 400GB
            walltime: "12:00:00"
            account: site-default
          mysite:
            cores: 8
            memory: 32GB
            queue: long
    """))
    code = ("from lsdask.jobqueue import job_script, profile_names\n"
            "print(profile_names())\n"
            "print(job_script('perlmutter-cpu'))\nprint(job_script('mysite'))\n"
            "print(job_script('perlmutter-cpu', account='cli-acct'))\n")
    env = dict(os.environ, DASK_CONFIG=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'mysite'" in out.stdout
    assert "#SBATCH -t 12:00:00" in out.stdout and "memory=400000000000" in out.stdout
    assert "#SBATCH -A site-default" in out.stdout and "#SBATCH -A cli-acct" in out.stdout
    assert "--lifetime 42300s" in out.stdout  # 12 h - 15 min
    assert "#SBATCH -p long" in out.stdout and "cores=8,memory=32000000000" in out.stdout


def test_cli_show_script_and_errors(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("LSDASK_ACCOUNT", raising=False)
    assert main(["cluster", "--profile", "cori-haswell", "--show-script"]) == 0
    out = capsys.readouterr().out
    assert "#!/usr/bin/env bash" in out and "-C haswell" in out and "cores=32" in out
    assert main(["cluster", "--profile", "local", "--show-script"]) == 0
    assert "LocalCluster" in capsys.readouterr().out
    assert main(["cluster", "--list"]) == 0
    assert "perlmutter-cpu-shared" in capsys.readouterr().out
    # --cluster slurm with the config's local profile: an error naming the Slurm profiles
    from lsdask.processors.testing import write_config

    cfg = write_config(tmp_path, bands=("g",), profile="local")
    assert main(["run", str(cfg), "--cluster", "slurm", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--cluster slurm needs a Slurm profile" in err and "perlmutter-cpu" in err


def test_local_cluster_resources_and_adapt():
    from distributed import Client

    cluster = make_cluster("local", n_workers=1, threads_per_worker=2, memory_limit="1GB")
    try:
        with Client(cluster) as client:
            info = client.scheduler_info()["workers"]
            assert [w["resources"] for w in info.values()] == [{"cores": 2, "memory": 1e9}]
            ad = adapt(cluster, 1, 2)
            assert ad.minimum == 1 and ad.maximum == 2
            fut = client.submit(sum, [1, 2], resources={"cores": 2})
            assert fut.result(timeout=30) == 3
    finally:
        cluster.close()


@pytest.mark.parametrize("threads,sizes", [(1, [1, 1]), (2, [2])])
def test_release_local_cluster_gives_runbrick_its_threads(tmp_path, threads, sizes):
    """A release on the local profile gets workers with the cores its runbrick asks for
    (the profile's 2 cores in all): the runner would cap a 2-thread brick at 1 on 1-core
    workers."""
    from distributed import Client

    from lsdask.jobqueue import max_cores, release_cluster
    from lsdask.processors.testing import write_config
    from lsdask.release import Release

    cfg = Release.from_config(write_config(tmp_path, threads=threads)).config
    cluster = release_cluster(cfg)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(len(sizes), timeout=60)
            assert sorted(client.nthreads().values()) == sizes
            assert max_cores(client) == threads
    finally:
        cluster.close()


@pytest.mark.slurm
def test_local_slurm_tls_and_node_tmpdir(slurm, tmp_path, monkeypatch):
    """security=True by default: a client without the certificate is refused, the cluster's
    own client works; local-directory $TMPDIR is expanded by the job's shell on the node."""
    from distributed import Client

    monkeypatch.setenv("TMPDIR", "/driver-side-tmp-not-used")
    cluster = make_cluster("local-slurm", release="tls-test", log_directory=tmp_path / "jobs",
                           options={"local-directory": "$TMPDIR",
                                    "job-script-prologue": [
                                        "export TMPDIR=/tmp/lsdask-node-$SLURM_JOB_ID",
                                        "mkdir -p $TMPDIR"]})
    try:
        addr = cluster.scheduler_address
        assert addr.startswith("tls://")
        with pytest.raises((OSError, TimeoutError)):
            Client(addr.replace("tls://", "tcp://"), timeout="3s")
        from distributed.security import Security

        with pytest.raises((OSError, TimeoutError)):  # a certificate of another CA
            Client(addr, security=Security.temporary(), timeout="3s")
        cluster.scale(jobs=1)
        with Client(cluster, timeout="20s") as client:
            client.wait_for_workers(1, timeout=120)
            job = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            jid = next(iter(job.values()))
            local = client.run(lambda dask_worker: dask_worker.local_directory)
            assert next(iter(local.values())).startswith(f"/tmp/lsdask-node-{jid}")
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        name = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%j"], capture_output=True,
                              text=True).stdout.strip()
        assert name in ("lsdask-tls-test", "")  # the job may already be gone
    finally:
        cluster.close()


def test_dashboard_link_jupyterhub_and_host(monkeypatch):
    import socket

    from distributed import Client

    from lsdask.jobqueue import dashboard_link

    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    cluster = make_cluster("local", n_workers=1, dashboard_address=":0")
    try:
        with Client(cluster) as client:
            port = client.scheduler_info()["services"]["dashboard"]
            # elsewhere: the machine's real host name, not 127.0.0.1
            assert dashboard_link(client) == f"http://{socket.gethostname()}:{port}/status"
            monkeypatch.setenv("JUPYTERHUB_USER", "alice")
            assert dashboard_link(client) == f"/user/alice/proxy/{port}/status"
            monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/perlmutter-login/")
            assert dashboard_link(client) == f"/user/alice/perlmutter-login/proxy/{port}/status"
    finally:
        cluster.close()
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX")
    monkeypatch.delenv("JUPYTERHUB_USER")
    cluster = make_cluster("local", n_workers=1)  # the local profile listens on loopback only
    try:
        assert dashboard_link(cluster).startswith("http://127.0.0.1:")
    finally:
        cluster.close()


def test_launch_script_for_perlmutter(tmp_path, capsys, monkeypatch):
    from lsdask.processors.testing import write_config

    monkeypatch.delenv("LSDASK_ACCOUNT", raising=False)
    cfg = write_config(tmp_path, bands=("g",), profile="perlmutter-cpu", name="dr11")
    assert main(["launch", str(cfg), "--dry-run", "--account", "desi"]) == 0
    script = open(capsys.readouterr().out.strip()).read()
    assert "#SBATCH -q shared" in script and "#SBATCH -C cpu" in script
    assert "#SBATCH -J lsdask-dr11-driver" in script and "#SBATCH -A desi" in script
    assert "--profile perlmutter-cpu" in script and "--account desi" in script
    assert main(["launch", str(cfg), "--dry-run", "--qos", "regular", "--walltime",
                 "12:00:00"]) == 0
    script = open(capsys.readouterr().out.strip().splitlines()[-1]).read()
    assert "#SBATCH -q regular" in script and "-q shared" not in script
    assert "#SBATCH -t 12:00:00" in script


@pytest.mark.slurm
def test_plain_slurmcluster_config_name_on_local_slurm(slurm, tmp_path):
    """dask-jobqueue alone, given only the profile name: the worker job starts, advertises
    the profile's resources and computes."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    with SLURMCluster(config_name="local-slurm", log_directory=str(tmp_path)) as cluster:
        assert "#SBATCH -J lsdask-worker" in cluster.job_script()
        cluster.scale(jobs=1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            res = [w["resources"] for w in client.scheduler_info()["workers"].values()]
            assert res == [{"cores": 1, "memory": 1e9}]
            assert client.submit(lambda: 6 * 7, resources={"cores": 1}).result(timeout=60) == 42

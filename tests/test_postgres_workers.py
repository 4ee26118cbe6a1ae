"""Scaling out: several workers sharing one real PostgreSQL server finish exactly N distinct trials.

The test starts a throwaway PostgreSQL cluster (initdb + pg_ctl, as the ``postgres`` user when run as
root) on 127.0.0.1 and a free port in a temporary directory, and removes it afterwards. It is skipped,
saying why, only when the PostgreSQL server binaries are not installed.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
        if not runuser:
            pytest.skip("running as root and no runuser to drop privileges for the server")
        prefix = [runuser, "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="archsearch-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if as_root:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    subprocess.run(prefix + [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, env=env, timeout=120)
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=50"
    subprocess.run(prefix + [pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "60",
                             "start"], check=True, capture_output=True, env=env, timeout=90)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       env=env, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_postgres(postgres_url, tiny_study, tmp_path):
    """Two independent worker processes (as on two hosts) on one PostgreSQL storage: N distinct,
    complete trials, no duplicates, both workers took part; then `archsearch pareto` reads it."""
    n = 6
    p = tiny_study(name="pg", n_trials=n)
    cmd = [sys.executable, "-m", "archsearch.cli", "run", str(p), f"storage={postgres_url}",
           "synthetic.seconds_per_eval=0.5", "early_stopping.enabled=false", "--worker-only"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [pr.communicate(timeout=400)[0] for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), outs
    import optuna

    from archsearch.study.runner import is_counted
    from archsearch.study.storage import trial_id

    storage = optuna.storages.RDBStorage(postgres_url)
    study = optuna.load_study(study_name="pg", storage=storage)
    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if is_counted(t)]  # repeated samples reuse values and are not counted
    assert len(trials) == n, [(t.number, t.state, t.user_attrs.get("duplicate_of")) for t in every]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.state.is_finished() for t in every)
    assert len({t.number for t in trials}) == n and len({trial_id(storage, "pg", t.number) for t in trials}) == n
    assert len({t.user_attrs["spec_hash"] for t in trials}) == n, "an architecture evaluated twice"
    assert len({t.user_attrs["worker"]["pid"] for t in every}) == 2, "both workers ran trials"
    # The study files of a run on shared storage: the launcher writes them; here, write and read back.
    r = subprocess.run([sys.executable, "-m", "archsearch.cli", "run", str(p), f"storage={postgres_url}",
                        "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(study.get_trials(deepcopy=False)) == len(every)  # already complete: nothing new
    r = subprocess.run([sys.executable, "-m", "archsearch.cli", "pareto", "run", "--json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"hypervolume"' in r.stdout, r.stderr

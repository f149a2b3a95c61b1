"""The multi-host path: three `nnctl sweep` processes, each in a folder of its own (as on three
machines), join one study on a throwaway PostgreSQL server and finish it between them.

The server runs from a temporary folder on a Unix socket, as an unprivileged user when the tests
run as root (PostgreSQL refuses root). Where its binaries or psycopg2 are missing the test skips
and says why; `.ci/run` installs them.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TWO_TOWER, write_project

pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary, in the test extra)")

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
pytestmark = pytest.mark.skipif(not BINARIES, reason="PostgreSQL's binaries are not installed (apt-get install postgresql)")
PORT = 54329


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


@pytest.fixture
def postgres():
    """A PostgreSQL server on a Unix socket in a short temporary folder; yields its URL."""
    bin_dir = Path(BINARIES[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="nnpg", dir="/tmp"))  # a socket path must stay under 108 bytes
    os.chmod(folder, 0o777)
    data = folder / "data"
    run = lambda *args: subprocess.run(_as_server_user([str(bin_dir / args[0]), *args[1:]]), check=True,  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    try:
        run("initdb", "-D", str(data), "-U", "sweep", "--auth=trust", "--no-sync")
        run("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "30", "-o",
            f"-k {folder} -p {PORT} -c listen_addresses='' -c fsync=off", "start")
        yield f"postgresql+psycopg2://sweep@/postgres?host={folder}&port={PORT}"
    finally:
        if (data / "postmaster.pid").exists():
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_three_hosts_finish_one_study_on_postgresql(tmp_path, postgres):
    spec = TWO_TOWER.replace("epochs: 3", "epochs: 10")
    sweep = "method: grid\nparameters:\n  optimizer.learning_rate: {values: [0.001, 0.01, 0.1]}\n  layers.dense2.units: {values: [1, 2, 3]}\n"
    hosts = []
    for name in ("host1", "host2", "host3"):
        write_project(tmp_path / name, spec)
        (tmp_path / name / "sweep.yaml").write_text(sweep)
        hosts.append(tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-m", "nnctl", "--debug", "sweep", "spec.yaml", "sweep.yaml", "--storage", postgres, "--json"],
                                  cwd=host, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for host in hosts]
    outputs = [p.communicate(timeout=180) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    finals = [json.loads(out) for out, _ in outputs]
    status = json.loads(subprocess.run([sys.executable, "-m", "nnctl", "sweep", "status", "sweep.yaml", "--storage", postgres, "--json"],
                                       cwd=hosts[0], env=env, capture_output=True, text=True, check=True, timeout=60).stdout)
    trials = status["trials"]
    assert status["counts"] == {"complete": 9, "running": 0, "pruned": 0, "fail": 0}
    combos = sorted((t["params"]["optimizer.learning_rate"], t["params"]["layers.dense2.units"]) for t in trials)
    assert combos == sorted(itertools.product([0.001, 0.01, 0.1], [1, 2, 3]))  # each once, across the hosts
    ran = {host: len(list((host / "runs/two_tower/sweeps/sweep/trials").glob("trial-*"))) for host in hosts}
    assert sum(ran.values()) == 9
    assert {t["folder"] for t in trials} == {str(p.resolve()) for h in hosts for p in (h / "runs/two_tower/sweeps/sweep/trials").glob("trial-*")}
    # Each host reports the best it saw when it finished; the study's best is the lowest of all,
    # and the host that finished last saw it (which host that is, the processes' timing decides).
    lowest = min(trials, key=lambda t: t["value"])
    assert status["best"]["trial"] == lowest["trial"]
    assert status["best"]["trial"] in {final["best"]["trial"] for final in finals}
    assert all(final["best"]["value"] >= lowest["value"] for final in finals)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # this test asks as a bare Optuna worker would
def test_a_silent_worker_on_another_host_is_failed_by_its_heartbeat(tmp_path, postgres):
    from nnctl.sweep.plan import load_plan
    from nnctl.sweep.study import open_study
    from tests.helpers import run_json

    write_project(tmp_path)
    (tmp_path / "sweep.yaml").write_text("method: random\ntrials: 2\nheartbeat_seconds: 1\nparameters:\n  optimizer.learning_rate: {values: [0.01, 0.02]}\n")
    with contextlib.chdir(tmp_path):
        study, _ = open_study(load_plan("spec.yaml", "sweep.yaml"), postgres)
    # A worker on another machine asked for a trial, beat once, and went silent (its machine was lost).
    trial = study.ask()
    trial.set_user_attr("worker", {"folder": "/elsewhere/trial-0000", "host": "another-host"})
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # past 3 heartbeats
    data = run_json("sweep", "spec.yaml", "sweep.yaml", "--storage", postgres, cwd=tmp_path)
    assert data["counts"] == {"complete": 2, "running": 0, "pruned": 0, "fail": 1}
    lost = [t for t in data["trials"] if t["state"] == "fail"][0]
    assert lost["trial"] == 0 and lost["error"].startswith("its heartbeat stopped") and lost["host"] == "another-host"

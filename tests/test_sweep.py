"""`nnctl sweep`: grids, seeded proposals, several workers on the default storage, a SIGKILLed
worker, resume, the pruner, best.yaml, status. Tiny specs and few epochs: seconds in all."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TWO_TOWER, run, run_json, write_project

pytest.importorskip("optuna")

FOLDER = Path("runs/two_tower/sweeps/sweep")


def sweep_file(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def project(tmp_path, spec=TWO_TOWER, sweep="") -> Path:
    write_project(tmp_path, spec)
    sweep_file(tmp_path, sweep)
    return tmp_path


def journal_trials(folder: Path) -> list:
    """The study's trials as Optuna reads them from the default storage."""
    from nnctl.sweep.study import find_study

    with contextlib.chdir(folder):
        return find_study(Path("sweep.yaml")).get_trials()


GRID = """\
method: grid
metric: {name: val_loss, goal: minimize}
trials: 100
parameters:
  optimizer.learning_rate: {values: [0.001, 0.01, 0.1]}
  layers.dense2.units: {values: [1, 3]}
"""


def test_grid_runs_every_combination_once_and_writes_a_best_spec_train_accepts(tmp_path):
    folder = project(tmp_path, sweep=GRID)
    data = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    seen = sorted((t["params"]["optimizer.learning_rate"], t["params"]["layers.dense2.units"]) for t in data["trials"])
    assert seen == sorted(itertools.product([0.001, 0.01, 0.1], [1, 3]))
    assert [t["state"] for t in data["trials"]] == ["complete"] * 6
    values = [t["value"] for t in data["trials"]]
    assert values == sorted(values) and data["best"]["value"] == values[0]
    # Each trial's own folder: its resolved spec, weights and history.
    for t in data["trials"]:
        trial = Path(t["folder"])
        assert {"spec.yaml", "weights.npz", "history.csv", "run.json"} <= {p.name for p in trial.iterdir()}
    best = folder / FOLDER / "best.yaml"
    assert data["best_files"] == {"spec": str(FOLDER / "best.yaml"), "weights": str(FOLDER / "best.npz"), "trial": data["best"]["trial"]}
    trained = run_json("train", best, cwd=folder)
    assert trained["final"]["val_loss"] == pytest.approx(data["best"]["value"], rel=1e-6)
    # Rerunning a finished study runs nothing more; status reads the same study.
    again = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    assert [t["trial"] for t in again["trials"]] == [t["trial"] for t in data["trials"]]
    status = run_json("sweep", "status", "sweep.yaml", cwd=folder)
    assert status["counts"] == {"complete": 6, "running": 0, "pruned": 0, "fail": 0}
    shown = run("sweep", "status", "sweep.yaml", cwd=folder)
    assert shown.exit_code == 0 and "layers.dense2.units" in shown.stdout and "val_loss against optimizer.learning_rate" in shown.stdout


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_seeded_sweep_proposes_the_same_trials_twice(tmp_path, method):
    text = f"""\
method: {method}
trials: 6
seed: 3
parameters:
  optimizer.learning_rate: {{distribution: log_uniform, min: 1.0e-3, max: 1.0e-1}}
  layers.dense2.units: {{distribution: int_uniform, min: 1, max: 8}}
  train.batch_size: {{values: [2, 4]}}
"""
    proposals = []
    for name in ("a", "b"):
        folder = project(tmp_path / name, sweep=text)
        data = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
        proposals.append(sorted((t["trial"], tuple(sorted(t["params"].items()))) for t in data["trials"]))
    assert proposals[0] == proposals[1]
    assert len({p for _, p in proposals[0]}) == 6  # not one point six times


def test_three_workers_finish_the_study_with_no_trial_run_twice(tmp_path):
    spec = TWO_TOWER.replace("epochs: 3", "epochs: 20")
    folder = project(tmp_path, spec, GRID.replace("[1, 3]", "[1, 2, 3]"))
    data = run_json("sweep", "spec.yaml", "sweep.yaml", "--workers", "3", cwd=folder)
    combos = [(t["params"]["optimizer.learning_rate"], t["params"]["layers.dense2.units"]) for t in data["trials"]]
    assert sorted(combos) == sorted(itertools.product([0.001, 0.01, 0.1], [1, 2, 3]))
    assert data["counts"] == {"complete": 9, "running": 0, "pruned": 0, "fail": 0}
    for t in data["trials"]:  # each trial trained once: one run, all its epochs, in its own folder
        record = json.loads((Path(t["folder"]) / "run.json").read_text())
        assert record["epochs"] == 20
    assert len({t["folder"] for t in data["trials"]}) == 9


def _start(folder, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "nnctl", "sweep", "spec.yaml", "sweep.yaml", "--json", *args],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_trial(folder: Path, number: int, timeout=60) -> int:
    """The PID of the worker running trial `number`, once it has started training."""
    trial = folder / FOLDER / "trials" / f"trial-{number:04d}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock, checkpoint = trial / ".worker.lock", trial / "checkpoint.npz"
        if checkpoint.exists() and lock.exists() and lock.read_text().strip():
            return int(lock.read_text())
        time.sleep(0.02)
    raise AssertionError(f"trial {number} did not start")


SLOW = TWO_TOWER.replace("epochs: 3", "epochs: 150")


def test_a_worker_killed_mid_trial_leaves_it_failed_and_a_rerun_completes_the_study(tmp_path):
    folder = project(tmp_path, SLOW, "method: random\ntrials: 3\nparameters:\n  optimizer.learning_rate: {values: [0.01, 0.02]}\n")
    process = _start(folder)
    os.kill(_wait_for_trial(folder, 0), signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    data = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    states = {t["trial"]: t["state"] for t in data["trials"]}
    assert states == {0: "fail", 1: "complete", 2: "complete", 3: "complete"}
    assert [t["error"] for t in data["trials"] if t["trial"] == 0] == ["its worker died"]


def test_the_other_workers_carry_on_past_a_killed_one(tmp_path):
    folder = project(tmp_path, SLOW, "method: random\ntrials: 3\nparameters:\n  optimizer.learning_rate: {values: [0.01, 0.02]}\n")
    process = _start(folder, "--workers", "2")
    victim = _wait_for_trial(folder, 0)
    assert victim != process.pid  # a worker process, not the command
    os.kill(victim, signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "1 worker(s) ended" in err
    data = json.loads(out)
    assert data["counts"] == {"complete": 3, "running": 0, "pruned": 0, "fail": 1}
    assert [t["trial"] for t in data["trials"] if t["state"] == "fail"] == [0]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # it diverges on purpose
def test_the_median_pruner_stops_a_diverging_trial_early(tmp_path):
    spec = TWO_TOWER.replace("epochs: 3", "epochs: 12").replace("{type: adam, learning_rate: 0.01}", "{type: sgd, learning_rate: 0.01}")
    folder = project(tmp_path, spec, """\
method: grid
trials: 3
parameters:
  optimizer.learning_rate: {values: [0.02, 0.05, 1.0]}
early_terminate: {type: median, warmup_epochs: 0, startup_trials: 1}
""")
    data = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    by_rate = {t["params"]["optimizer.learning_rate"]: t for t in data["trials"]}
    assert by_rate[0.02]["state"] == by_rate[0.05]["state"] == "complete"
    diverging = by_rate[1.0]
    assert diverging["state"] == "pruned"
    # A pruned trial keeps its spec (and its epochs' values in the study), never final weights.
    assert (Path(diverging["folder"]) / "spec.yaml").exists() and not (Path(diverging["folder"]) / "weights.npz").exists()
    reported = [t for t in journal_trials(folder) if t.number == diverging["trial"]][0].intermediate_values
    assert list(reported) == [1]  # pruned after its first epoch, of 12


def test_without_optuna_the_command_names_the_extra(tmp_path, monkeypatch):
    folder = project(tmp_path, sweep=GRID)
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = run("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    assert result.exit_code == 2
    assert "pip install 'nnctl[sweep]'" in result.stderr and "Traceback" not in result.output


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # it diverges on purpose
def test_a_trial_that_diverges_counts_and_is_not_retried(tmp_path):
    spec = TWO_TOWER.replace("{type: adam, learning_rate: 0.01}", "{type: sgd, learning_rate: 0.01}")
    folder = project(tmp_path, spec, "method: grid\nparameters:\n  optimizer.learning_rate: {values: [0.01, 1000.0]}\n")
    data = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    assert sorted((t["params"]["optimizer.learning_rate"], t["state"]) for t in data["trials"]) == [(0.01, "complete"), (1000.0, "fail")]
    assert "loss became NaN or inf" in [t["error"] for t in data["trials"] if t["state"] == "fail"][0]


def test_trials_takes_a_finished_study_further_and_a_changed_sweep_file_is_refused(tmp_path):
    folder = project(tmp_path, sweep="method: random\ntrials: 2\nparameters:\n  optimizer.learning_rate: {values: [0.01, 0.02]}\n")
    assert run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)["counts"]["complete"] == 2
    further = run_json("sweep", "spec.yaml", "sweep.yaml", "--trials", "3", cwd=folder)
    assert further["counts"]["complete"] == 3 and further["target"] == 3
    (folder / "sweep.yaml").write_text("method: random\ntrials: 2\nparameters:\n  optimizer.learning_rate: {values: [0.05]}\n")
    result = run("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    assert result.exit_code == 2 and "expected the sweep file that started this study" in result.stderr


def test_hyperband_runs_the_study_to_its_count(tmp_path):
    spec = TWO_TOWER.replace("epochs: 3", "epochs: 9")
    folder = project(tmp_path, spec, """\
method: random
trials: 5
parameters:
  optimizer.learning_rate: {distribution: log_uniform, min: 1.0e-4, max: 1.0}
early_terminate: {type: hyperband, min_epochs: 1, reduction_factor: 3}
""")
    data = run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)
    assert data["counts"]["complete"] + data["counts"]["pruned"] == 5 and data["counts"]["complete"] >= 1
    assert all(t["best_epoch"] is not None and 1 <= t["best_epoch"] <= 9 for t in data["trials"])


def test_the_plot_is_a_picture_with_matplotlib_and_a_note_without(tmp_path):
    from nnctl.cli.plotting import matplotlib_available

    folder = project(tmp_path, sweep=GRID)
    result = run("sweep", "spec.yaml", "sweep.yaml", "--plot", "sweep.png", "--json", cwd=folder)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    if matplotlib_available():
        assert data["plot"] == "sweep.png" and (folder / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert data["plot"] is None and "pip install 'nnctl[plot]'" in result.stderr and not (folder / "sweep.png").exists()
    refused = run("sweep", "status", "sweep.yaml", "--plot", "sweep.yaml", cwd=folder)
    assert refused.exit_code == 2 and "--plot: expected a .png, .svg, .pdf file" in refused.stderr


def test_a_journal_lock_whose_holder_was_killed_mid_write_is_free_at_once(tmp_path):
    """Optuna's own file locks wait out a stale-lock timeout (or never recover, given a relative
    path); the sweep's journal lock is the kernel's, released with a SIGKILLed holder."""
    folder = project(tmp_path, sweep="method: random\ntrials: 1\nparameters:\n  optimizer.learning_rate: {values: [0.01]}\n")
    lock = folder / FOLDER / "journal.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, os, time; fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    assert run_json("sweep", "spec.yaml", "sweep.yaml", cwd=folder)["counts"]["complete"] == 1
    assert time.monotonic() - started < 10  # not a 30 s stale-lock timeout

"""The fault battery: a real `nnctl train` killed with SIGKILL at seeded random points, then resumed.

After every kill, `nnctl train SPEC --resume` must finish with weights byte-identical (every
array's bytes) to an uninterrupted run's, and leave no temporary file in the run folder. The kills
land after the first checkpoint is on disk (before it there is nothing to resume, and --resume
says so), at a random delay spread over the rest of the run: mid-epoch, mid-checkpoint write, in
the final saves. The killed runs and their resumes go two at a time (the machine has 2 cores).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import pytest

from helpers import ROOT, TWO_TOWER, write_project

KILLS = 40
SEED = 18
EPOCHS = 40
SPEC = TWO_TOWER.replace("epochs: 3", f"epochs: {EPOCHS}")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _train(folder: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnctl", "train", "spec.yaml", *args], cwd=folder, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run_folder(folder: Path) -> Path:
    return folder / "runs" / "two_tower"


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen) -> float:
    """Seconds until the first checkpoint is on disk (the process must not end before)."""
    start = time.perf_counter()
    checkpoint = _run_folder(folder) / "checkpoint.npz"
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.001)
    return time.perf_counter() - start


def _arrays(path: Path) -> dict:
    with numpy.load(path, allow_pickle=False) as archive:
        return {key: (archive[key].dtype.str, archive[key].shape, archive[key].tobytes()) for key in archive.files}


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in _run_folder(folder).iterdir() if p.name.endswith(".tmp"))


def _checkpoint_epoch(folder: Path) -> int:
    with numpy.load(_run_folder(folder) / "checkpoint.npz", allow_pickle=False) as archive:
        return json.loads(str(archive["meta"]))["epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(weights of an uninterrupted run, seconds from its first checkpoint to its end)."""
    folder = tmp_path_factory.mktemp("reference")
    write_project(folder, SPEC)
    proc = _train(folder)
    _wait_for_checkpoint(folder, proc)
    after_first = time.perf_counter()
    assert proc.wait() == 0, proc.stderr.read()
    return _arrays(_run_folder(folder) / "weights.npz"), time.perf_counter() - after_first


def _kill_and_resume(folder: Path, delay: float) -> dict:
    write_project(folder, SPEC)
    proc = _train(folder)
    _wait_for_checkpoint(folder, proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    killed = proc.wait() == -signal.SIGKILL  # else it had finished
    proc.stderr.close()
    outcome = {"killed": killed, "left_temp": _temp_files(folder), "checkpoint_epoch": _checkpoint_epoch(folder)}
    resume = subprocess.run([sys.executable, "-m", "nnctl", "train", "spec.yaml", "--resume"], cwd=folder, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    weights = _run_folder(folder) / "weights.npz"
    outcome.update(rc=resume.returncode, stderr=resume.stderr, temp_after=_temp_files(folder),
                   weights=_arrays(weights) if weights.exists() else None)
    return outcome


@pytest.fixture(scope="module")
def battery(reference, tmp_path_factory):
    """The outcome of each seeded kill and its resume."""
    _, remaining = reference
    rng = random.Random(SEED)
    delays = [rng.uniform(0, remaining) for _ in range(KILLS)]
    folders = [tmp_path_factory.mktemp(f"kill{i}") for i in range(KILLS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_kill_and_resume, folders, delays))


@pytest.mark.parametrize("index", range(KILLS))
def test_a_killed_run_resumes_to_the_same_weights(battery, reference, index):
    outcome = battery[index]
    if not outcome["killed"]:
        # It finished before the kill: a complete run, which --resume rightly has nothing to add to.
        assert outcome["rc"] == 2 and "nothing to resume" in outcome["stderr"], outcome
    elif outcome["checkpoint_epoch"] > EPOCHS and outcome["rc"] != 0:
        # Killed after its final save (while the interpreter exited): the run is complete on disk.
        assert "nothing to resume: the checkpoint has all" in outcome["stderr"], outcome["stderr"]
    else:
        assert outcome["rc"] == 0, outcome["stderr"]
    assert outcome["weights"] == reference[0]
    assert outcome["temp_after"] == [], outcome


def test_resume_after_the_last_checkpoint(reference, tmp_path):
    """The disk as a SIGKILL while the final weights are written leaves it: the final checkpoint,
    no weights, history or run record yet, the dead writer's temporary file."""
    write_project(tmp_path, SPEC)
    proc = _train(tmp_path)
    assert proc.wait() == 0, proc.stderr.read()
    run_dir = _run_folder(tmp_path)
    for name in ("weights.npz", "history.csv", "best.npz", "run.json"):
        (run_dir / name).unlink()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (run_dir / f".weights.npz.{dead.pid}.abcd1234.tmp").write_bytes(b"PK\x03\x04 half an archive")
    resume = subprocess.run([sys.executable, "-m", "nnctl", "train", "spec.yaml", "--resume"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True)
    assert resume.returncode == 0, resume.stderr
    assert _arrays(run_dir / "weights.npz") == reference[0]
    assert _temp_files(tmp_path) == []

"""Resuming: a run stopped and resumed ends with exactly the weights of an uninterrupted run.

In-process: 6 epochs straight == 3 epochs, then `--resume --epochs 6` (byte-for-byte), and
`--resume` refuses what it cannot continue (nothing left to do, a changed spec, no checkpoint).
In a real subprocess: SIGINT after the first epoch's checkpoint stops the run with exit code 130
and a resume hint; `--resume` then finishes with the uninterrupted run's weights, byte for byte.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from tests.helpers import ROOT, run, write_project

SENTINEL = b"sentinel weights: a refused --resume must leave me alone\n"
WALL_CLOCK = ("seconds", "samples_per_second")


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(handle)]


def _train(folder: Path, *args):
    return run("train", "spec.yaml", "--json", *args, cwd=folder)


def test_resume_continues_bit_exactly(tmp_path):
    straight, resumed = write_project(tmp_path / "straight"), write_project(tmp_path / "resumed")
    assert _train(straight.parent, "--epochs", 6).exit_code == 0
    first = _train(resumed.parent, "--epochs", 3)
    assert first.exit_code == 0, first.output
    checkpoint = resumed.parent / "runs/two_tower/checkpoint.npz"
    assert checkpoint.exists()
    second = _train(resumed.parent, "--resume", "--epochs", 6)
    assert second.exit_code == 0, second.output
    weights = "runs/two_tower/weights.npz"
    assert (straight.parent / weights).read_bytes() == (resumed.parent / weights).read_bytes()
    # The history is the whole run's, and equal too (but for the wall-clock columns).
    assert _history(straight.parent / "runs/two_tower") == _history(resumed.parent / "runs/two_tower")
    assert [row["epoch"] for row in _history(resumed.parent / "runs/two_tower")] == [str(e) for e in range(1, 7)]


@pytest.fixture
def finished(tmp_path):
    """A project whose run has all its epochs done (3) and a checkpoint saying so."""
    spec = write_project(tmp_path / "proj")
    assert _train(spec.parent).exit_code == 0
    (spec.parent / "keep").mkdir()
    (spec.parent / "keep/weights.npz").write_bytes(SENTINEL)
    return spec.parent


def _refused(folder, *args, expected):
    result = run("train", "spec.yaml", "--out", "keep/weights.npz", *args, cwd=folder)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Internal error" not in result.output
    for text in expected:
        assert text in result.output, (text, result.output)
    assert (folder / "keep/weights.npz").read_bytes() == SENTINEL
    return result


def test_resume_refuses_nothing_to_resume(finished):
    _refused(finished, "--resume", expected=["nothing to resume", "all 3 epochs done", "--epochs N"])
    _refused(finished, "--resume", "--epochs", 2, expected=["nothing to resume"])


def test_resume_refuses_a_changed_spec(finished):
    spec = finished / "spec.yaml"
    spec.write_text(spec.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    _refused(finished, "--resume", "--epochs", 5,
             expected=["checkpoint.npz", "expected the spec the checkpoint was made with, received a changed spec",
                       "only train.epochs and the backend may change", "without --resume"])


def test_resume_refuses_changed_data(finished):
    data = finished / "data.csv"
    data.write_text(data.read_text() + "0.5,0.5,0.5\n")
    _refused(finished, "--resume", "--epochs", 5,
             expected=["checkpoint.npz", "expected the data the checkpoint was made with, received changed data", "data.csv"])


def test_resume_refuses_a_missing_checkpoint(tmp_path):
    spec = write_project(tmp_path / "proj")
    (spec.parent / "keep").mkdir()
    (spec.parent / "keep/weights.npz").write_bytes(SENTINEL)
    _refused(spec.parent, "--resume", expected=["runs/two_tower/checkpoint.npz", "received a path that does not exist",
                                                "train without --resume first"])


def test_resume_refuses_a_damaged_checkpoint(finished):
    checkpoint = finished / "runs/two_tower/checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    _refused(finished, "--resume", "--epochs", 5, expected=["checkpoint.npz", "truncated or corrupt"])


def test_resume_refuses_a_checkpoint_with_a_bad_state(finished):
    checkpoint = finished / "runs/two_tower/checkpoint.npz"
    with numpy.load(checkpoint) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays = {k: v for k, v in arrays.items() if not k.startswith("optimizer/")}
    numpy.savez(checkpoint, **arrays)
    _refused(finished, "--resume", "--epochs", 5, expected=["checkpoint.npz", "damaged", "optimizer slot"])


def test_resume_with_init_is_a_usage_error(finished):
    _refused(finished, "--resume", "--init", "keep/weights.npz", expected=["--resume", "--init"])


# --- a real process, a real Ctrl-C -------------------------------------------------------------------
MLP = """\
name: mlp
seed: 3
inputs:
  x: [8]
layers:
  - {type: dense, units: 256, activation: relu}
  - {type: dense, units: 256, activation: tanh}
  - {type: dropout, rate: 0.1}
  - {type: dense, units: 1}
loss: mse
metrics: [mae]
optimizer: {type: adam, learning_rate: 0.001}
data:
  path: data.csv
  inputs: {x: [f0, f1, f2, f3, f4, f5, f6, f7]}
  targets: [y]
  validation_split: 0.1
train: {epochs: 10, batch_size: 32, shuffle: true}
"""


def _synthetic_csv(rows=20_000) -> str:
    rng = numpy.random.default_rng(7)
    x = rng.normal(size=(rows, 8))
    y = numpy.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3] - 0.5 * x[:, 3:4] + 0.1 * rng.normal(size=(rows, 1))
    table = numpy.hstack([x, y])
    return "f0,f1,f2,f3,f4,f5,f6,f7,y\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in table) + "\n"


def _nnctl(folder: Path, *args, log: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # One BLAS thread in every run: the same arithmetic, and no fight over the cores.
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = open(folder / f"{log}.out", "w")
    err = open(folder / f"{log}.err", "w")
    process = subprocess.Popen([sys.executable, "-m", "nnctl", "train", "spec.yaml", *args], cwd=folder, env=env,
                               stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    process.logs = (out, err, folder / f"{log}.out", folder / f"{log}.err")
    return process


def _finish(process, timeout=60):
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
        for handle in process.logs[:2]:
            handle.close()
    return code, process.logs[2].read_text() + process.logs[3].read_text()


@pytest.mark.slow
def test_sigint_stops_with_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    data = _synthetic_csv()
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for folder in (straight, stopped):
        write_project(folder, MLP, data)

    # Both start together (two cores): the uninterrupted reference and the one we stop.
    reference = _nnctl(straight, log="straight")
    interrupted = _nnctl(stopped, log="first")
    checkpoint = stopped / "runs/mlp/checkpoint.npz"
    deadline = time.monotonic() + 40
    while not checkpoint.exists():
        assert interrupted.poll() is None, _finish(interrupted)[1]
        assert time.monotonic() < deadline, "no checkpoint after 40 s"
        time.sleep(0.01)
    interrupted.send_signal(signal.SIGINT)
    code, output = _finish(interrupted)
    assert code == 130, output
    assert "Traceback" not in output and "Internal error" not in output, output
    assert "Interrupted at epoch" in output and "checkpoint saved to runs/mlp/checkpoint.npz" in output, output
    assert "Resume with: nnctl train spec.yaml --resume" in output, output
    assert checkpoint.exists()
    assert not (stopped / "runs/mlp/weights.npz").exists(), "a stopped run must not write final weights"

    resumed = _nnctl(stopped, "--resume", log="resumed")
    code, output = _finish(resumed)
    assert code == 0, output
    code, reference_output = _finish(reference)
    assert code == 0, reference_output

    weights = "runs/mlp/weights.npz"
    assert (stopped / weights).read_bytes() == (straight / weights).read_bytes()
    assert _history(stopped / "runs/mlp") == _history(straight / "runs/mlp")
    assert len(_history(straight / "runs/mlp")) == 10

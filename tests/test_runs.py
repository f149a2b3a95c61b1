"""A training run's files: where they go, who owns them, and what survives a failure.

Each test drives `nnctl train` (in-process, or two processes at once) and asserts the exit code,
the message, and the bytes of every file that was there before.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy
import pytest

from nnctl.errors import FileSystemError, Problem
from nnctl.io.lock import FolderLock
from tests.helpers import TWO_TOWER, run, write_project
from tests.test_errors import Project, run_failing, spec_edit


def _train(folder: Path, *args):
    return run("train", "spec.yaml", "--json", *args, cwd=folder)


def _bytes(folder: Path) -> dict:
    """Every file under `folder` (but the lock, which only names its last holder), by path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _arrays(path: Path) -> dict:
    with numpy.load(path) as archive:
        return {key: archive[key].tobytes() for key in archive.files}


# --- the spec's name is a run folder, never a path -------------------------------------------------
NAMES = [
    ("a parent folder", "../victim"), ("the parent itself", '".."'), ("the current folder", '"."'),
    ("a backslash", '"a\\\\b"'), ("a NUL", '"a\\0b"'), ("a newline", '"a\\nb"'), ("300 characters", "x" * 300),
]


@pytest.mark.parametrize("what, name", NAMES, ids=[n[0] for n in NAMES])
def test_an_unsafe_name_is_refused_at_its_key(tmp_path, what, name):
    project = Project(tmp_path / "proj", None)
    output = run_failing(project, spec_edit(("name: two_tower", f"name: {name}"))(project))
    assert "spec.yaml:1:7: name: expected a name of 1 to 100 characters" in output, output
    assert not (tmp_path / "victim").exists() and not (project.folder / "runs").exists()


def test_a_file_stem_is_made_a_safe_name(tmp_path):
    spec = write_project(tmp_path, TWO_TOWER.replace("name: two_tower\n", ""), name="odd\tname.yaml")
    assert run("train", spec.name, "--json", cwd=tmp_path).exit_code == 0
    assert (tmp_path / "runs" / "odd_name" / "weights.npz").exists()


# --- outputs are checked before training ------------------------------------------------------------
def test_an_out_under_a_file_fails_before_training(tmp_path):
    folder = write_project(tmp_path).parent
    before = _bytes(folder)
    result = _train(folder, "--out", "data.csv/w.npz")
    assert result.exit_code == 2
    assert "data.csv/w.npz: expected data.csv to be a folder to write this file in, received a file" in result.stderr
    assert _bytes(folder) == before  # nothing trained, nothing written


def test_an_out_that_is_no_npz_or_an_input_is_refused(tmp_path):
    folder = write_project(tmp_path).parent
    result = _train(folder, "--out", "data.csv")
    assert result.exit_code == 2 and "--out: expected a file ending in .npz, received 'data.csv'" in result.stderr
    assert _train(folder).exit_code == 0
    before = _bytes(folder)
    weights = "runs/two_tower/weights.npz"
    result = _train(folder, "--init", weights, "--out", "./" + weights)
    assert result.exit_code == 2, result.output
    assert "expected an output path that is not one of the run's inputs, received the --init weights" in result.stderr
    assert _bytes(folder) == before


def test_predict_and_init_never_write_over_their_input(tmp_path):
    folder = write_project(tmp_path).parent
    assert _train(folder).exit_code == 0
    (folder / "curves.png").write_bytes((folder / "runs/two_tower/history.csv").read_bytes())  # a history under any name
    before = _bytes(folder)
    weights = "runs/two_tower/weights.npz"
    for args in (["predict", "spec.yaml", "--weights", weights, "--input", "data.csv", "--output", "./data.csv"],
                 ["init", "data.csv", "--target", "y", "--out", "./data.csv", "--force"],
                 ["plot", "curves.png", "--out", "./curves.png"]):
        result = run(*args, cwd=folder)
        assert result.exit_code == 2 and "expected a path that is not one of this command's inputs" in result.stderr, (args, result.output)
    assert _bytes(folder) == before


def test_out_into_a_folder_of_another_run_is_refused(tmp_path):
    first = write_project(tmp_path / "a")
    second = write_project(tmp_path / "b", TWO_TOWER.replace("name: two_tower", "name: other"))
    shared = tmp_path / "models"
    assert run("train", first, "--out", shared / "a.npz", "--json", cwd=tmp_path).exit_code == 0
    before = _bytes(shared)
    result = run("train", second, "--out", shared / "b.npz", "--json", cwd=tmp_path)
    assert result.exit_code == 2 and "another run wrote; give --out a folder of its own" in result.stderr
    assert _bytes(shared) == before
    # The run that owns the folder may write there again.
    assert run("train", first, "--out", shared / "a.npz", "--json", cwd=tmp_path).exit_code == 0


# --- one run per folder, one spec file per folder ---------------------------------------------------
def test_a_second_run_of_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    folder = write_project(tmp_path).parent
    (folder / "runs" / "two_tower").mkdir(parents=True)
    with FolderLock(folder / "runs" / "two_tower", {"spec_file": str((folder / "spec.yaml").resolve())}):
        result = _train(folder)
    assert result.exit_code == 2, result.output
    assert "runs/two_tower: expected a run folder no other run is using, received one in use by process" in result.stderr
    assert not (folder / "runs/two_tower/checkpoint.npz").exists()


def test_two_spec_files_with_one_name_keep_apart(tmp_path):
    for experiment in ("exp1", "exp2"):
        write_project(tmp_path / experiment, TWO_TOWER.replace("name: two_tower\n", ""), name="config.yaml")
    assert run("train", "exp1/config.yaml", "--json", cwd=tmp_path).exit_code == 0
    before = _bytes(tmp_path / "runs")
    result = run("train", "exp2/config.yaml", "--json", cwd=tmp_path)
    assert result.exit_code == 2 and "the run folder of" in result.stderr and "exp1/config.yaml" in result.stderr
    assert "give this spec a `name:` of its own" in result.stderr
    assert _bytes(tmp_path / "runs") == before


# --- an unfinished run is never discarded silently --------------------------------------------------
@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """A project whose run stopped after its first step (as after Ctrl-C), with the hint it printed."""
    folder = write_project(tmp_path, TWO_TOWER.replace("epochs: 3", "epochs: 5")).parent

    class Stop:
        def __enter__(self):
            return lambda: True

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("nnctl.cli.commands._graceful_stop", Stop)
    result = run("train", "spec.yaml", "--epochs", 4, "--out", "w/w.npz", cwd=folder)
    monkeypatch.undo()
    assert result.exit_code == 130, result.output
    return folder, result.stderr


def test_the_resume_hint_repeats_every_flag(interrupted):
    _, hint = interrupted
    assert "Resume with: nnctl train spec.yaml --epochs 4 --out w/w.npz --resume" in hint, hint


def test_a_fresh_run_over_an_unfinished_one_is_refused_until_restart(interrupted):
    folder, _ = interrupted
    before = _bytes(folder)
    result = _train(folder, "--epochs", 4, "--out", "w/w.npz")
    assert result.exit_code == 2
    assert "expected no unfinished run, received a checkpoint at epoch 1 of 4 (seed 0); continue it with --resume, or pass --restart" in result.stderr
    assert _bytes(folder) == before
    assert _train(folder, "--epochs", 4, "--out", "w/w.npz", "--restart").exit_code == 0


def test_resume_accepts_the_spec_however_its_path_is_spelled(interrupted, tmp_path):
    folder, _ = interrupted
    straight = write_project(tmp_path / "straight", TWO_TOWER.replace("epochs: 3", "epochs: 5")).parent
    assert _train(straight, "--epochs", 4).exit_code == 0
    resumed = run("train", str((folder / "spec.yaml").resolve()), "--epochs", 4, "--out", "w/w.npz", "--resume", cwd=folder)
    assert resumed.exit_code == 0, resumed.output
    assert _arrays(folder / "w/w.npz") == _arrays(straight / "runs/two_tower/weights.npz")


# --- a failure in the final save, or a diverging run, loses nothing ----------------------------------
def test_a_failed_final_save_is_finished_by_resume(tmp_path, monkeypatch):
    straight = write_project(tmp_path / "straight").parent
    assert _train(straight).exit_code == 0
    folder = write_project(tmp_path / "failed").parent

    def full_disk(path, weights):
        raise FileSystemError(Problem("expected a writable folder, received: No space left on device", str(path)))

    monkeypatch.setattr("nnctl.train.run.save_weights", full_disk)
    result = _train(folder)
    monkeypatch.undo()
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    assert not (folder / "runs/two_tower/weights.npz").exists() and not (folder / "runs/two_tower/run.json").exists()
    resumed = _train(folder, "--resume")
    assert resumed.exit_code == 0, resumed.output
    for name in ("weights.npz", "best.npz"):
        assert _arrays(folder / "runs/two_tower" / name) == _arrays(straight / "runs/two_tower" / name)
    assert (folder / "runs/two_tower/history.csv").read_text().count("\n") == 4  # header and 3 epochs
    assert _train(folder, "--resume").exit_code == 2  # now complete: nothing to resume


def test_a_diverging_run_leaves_the_previous_run_whole(tmp_path, monkeypatch):
    folder = write_project(tmp_path, TWO_TOWER.replace("epochs: 3", "epochs: 6")).parent
    assert _train(folder, "--epochs", 3).exit_code == 0
    run_dir = folder / "runs/two_tower"
    before = _bytes(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["seed"] == 0 and record["epochs"] == 3 and record["files"]["weights"] == "runs/two_tower/weights.npz"

    from nnctl.train.session import Session

    real, calls = Session.gradients, []

    def diverging(self, inputs, targets, size, ctx):  # NaN from the 7th step on: after epoch 1's checkpoint
        calls.append(1)
        loss, *rest = real(self, inputs, targets, size, ctx)
        return (math.nan if len(calls) >= 7 else loss), *rest

    monkeypatch.setattr(Session, "gradients", diverging)
    result = _train(folder, "--seed", 2, "--epochs", 3)
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    assert "Error (training diverged): the loss became NaN or inf at epoch 2" in result.stderr
    assert "the previous run's checkpoint (runs/two_tower/checkpoint.npz), weights and records were left as they were" in result.stderr
    assert _bytes(run_dir) == before
    # The good run can still be extended.
    assert _train(folder, "--resume", "--epochs", 6).exit_code == 0


# --- flags are spec keys ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "0", "--epochs: train.epochs: expected a positive integer, received 0"),
    ("--batch-size", "many", "--batch-size: train.batch_size: expected a positive integer, received 'many'"),
    ("--seed", "-1", "--seed: seed: expected a non-negative integer, received -1"),
    ("--backend", "gpu", "--backend: backend: expected one of numpy, cupy, received 'gpu'"),
])
def test_an_override_is_checked_like_its_key(tmp_path, flag, value, message):
    folder = write_project(tmp_path).parent
    result = _train(folder, flag, value)
    assert result.exit_code == 2 and message in result.stderr, result.output


# --- a hand-edited checkpoint is refused before training ----------------------------------------------
def _meta(arrays, **changes):
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = numpy.array(json.dumps({**meta, **changes}))


def _mid_epoch(arrays, order):
    _meta(arrays, epoch=4, step=2, count=8)
    arrays.update({"order": order, "totals/loss": numpy.array(1.0, numpy.float32), "totals/metric/mae": numpy.array(1.0, numpy.float32)})


EDITS = [
    ("integer weights", lambda a: a.update({"weights/dense1/kernel": a["weights/dense1/kernel"].astype(numpy.int64)}),
     "array 'weights/dense1/kernel': expected finite floating-point values, received dtype int64"),
    ("NaN weights", lambda a: a.update({"weights/dense2/bias": a["weights/dense2/bias"] * numpy.nan}),
     "array 'weights/dense2/bias': expected finite floating-point values, received NaN or inf"),
    ("text in an optimizer slot", lambda a: a.update({"optimizer/v_sum": numpy.array(["x"] * a["optimizer/v_sum"].size)}),
     "array 'optimizer/v_sum': expected finite floating-point values, received dtype <U1"),
    ("NaN best weights", lambda a: a.update({"best_weights": a["best_weights"] * numpy.nan}),
     "array 'best_weights': expected finite floating-point values"),
    ("a history of the wrong length", lambda a: _meta(a, history=[]), "meta 'history' should hold epochs 1 to 3, holds 0 records"),
    ("controls of the wrong shape", lambda a: _meta(a, controls={"tracker": "x"}), "meta 'controls' has a tracker that is not {best, best_epoch}"),
    ("an order that is no permutation", lambda a: _mid_epoch(a, numpy.array([100, -5, 3])),
     "expected an intact nnctl checkpoint for 16 training samples in 4 steps an epoch, received an order of 3 samples at step 2"),
    ("a step past the epoch", lambda a: (_mid_epoch(a, numpy.arange(16)), _meta(a, step=9)),
     "received an order of 16 samples at step 9"),
    ("a running total of the wrong shape", lambda a: (_mid_epoch(a, numpy.arange(16)), a.update({"totals/loss": numpy.arange(3.0)})),
     "the running total 'loss' should be one number, has shape (3,)"),
]


@pytest.mark.parametrize("what, edit, message", EDITS, ids=[e[0] for e in EDITS])
def test_a_hand_edited_checkpoint_is_refused(tmp_path, what, edit, message):
    folder = write_project(tmp_path, TWO_TOWER.replace("epochs: 3", "epochs: 6")).parent
    assert _train(folder, "--epochs", 3).exit_code == 0
    checkpoint = folder / "runs/two_tower/checkpoint.npz"
    with numpy.load(checkpoint) as archive:
        arrays = {key: archive[key] for key in archive.files}
    edit(arrays)
    numpy.savez(checkpoint, **arrays)
    before = _bytes(folder)
    result = _train(folder, "--resume", "--epochs", 6)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error (checkpoint error): runs/two_tower/checkpoint.npz: ") and message in result.stderr, result.stderr
    assert _bytes(folder) == before


@pytest.mark.parametrize("make, kind", [
    (lambda path: path.symlink_to("/dev/zero"), "a character device"),
    (lambda path: __import__("os").mkfifo(path), "a FIFO"),
], ids=["/dev/zero", "a FIFO"])
def test_a_spec_that_is_no_regular_file_is_refused_before_reading(tmp_path, make, kind):
    make(tmp_path / "spec.yaml")
    result = run("summary", "spec.yaml", cwd=tmp_path)
    assert result.exit_code == 2 and f"spec.yaml: expected a regular file, received {kind}" in result.stderr, result.output


def test_two_processes_training_one_spec_are_kept_apart(tmp_path):
    """A real second process: while one `nnctl train` runs, another of the same spec is refused,
    naming the first's PID, and the first's files are its own."""
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    folder = write_project(tmp_path, TWO_TOWER.replace("epochs: 3", "epochs: 4000")).parent
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "nnctl", "-q", "train", "spec.yaml"], cwd=folder, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (folder / "runs/two_tower/checkpoint.npz").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.01)
        second = subprocess.run([sys.executable, "-m", "nnctl", "train", "spec.yaml", "--seed", "2"], cwd=folder, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"received one in use by process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
        first.stderr.close()

"""A whole training run: the one function `nnctl train` (and a sweep's trial) calls.

`train_run` compiles the spec into a Session, reads its data, resumes a checkpoint or refuses to
discard one, trains with checkpoints, and saves the weights, the best epoch's weights, the
history and the run record; it returns a `RunResult` that the CLI renders. No printing.

Guarantees, each with its reason:
- One run at a time per run folder (a kernel-released lock), and a folder belongs to one spec file.
- Every output path is checked before training starts, and none may be one of the run's inputs.
- An unfinished checkpoint is never discarded silently: a fresh run over one needs `restart`.
- The final checkpoint is written before the weights, so a run whose final save fails (full
  disk, SIGKILL) can be finished by `--resume`, which then writes the weights from it.
- run.json is written last, once the files it describes are on disk.
- A fresh run that diverges puts the previous run's checkpoint back: resuming the diverged run
  would only diverge again, and the previous run stays extendable with `--resume --epochs N`.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from nnctl.errors import CheckpointError, Problem, TrainingDiverged, UsageError
from nnctl.io.atomic import check_writable, remove_stale_temp_files
from nnctl.io.lock import FolderLock
from nnctl.io.records import read_run_record, save_history, save_run_record
from nnctl.data.preprocessing import state_arrays
from nnctl.io.weights import save_weights
from nnctl.train.checkpoint import checkpoint_progress, data_fingerprint, load_checkpoint, save_checkpoint, start_data_fingerprint
from nnctl.train.fit import Interrupted, Progress, fit
from nnctl.train.session import load_test_set, open_session, training_sets

RUNS = Path("runs")
# Per-epoch checkpoints are written at most this often (and always after the first and the last
# epoch, and on a stop request): a short epoch would otherwise spend its time writing them, and a
# SIGKILL loses at most this much training.
CHECKPOINT_SECONDS = 2.0
WALL_CLOCK_LOGS = ("epoch", "lr", "seconds", "samples_per_second")


class RunFiles(NamedTuple):
    """Where a run reads and writes: its folder (runs/<name>) and the files beside --out."""

    folder: Path
    weights: Path
    best: Path
    history: Path
    checkpoint: Path
    record: Path

    @classmethod
    def of(cls, spec, out=None, root=RUNS) -> "RunFiles":
        folder = Path(root) / spec.name
        weights = Path(out) if out is not None else folder / "weights.npz"
        return cls(folder, weights, weights.parent / "best.npz", weights.parent / "history.csv",
                   folder / "checkpoint.npz", folder / "run.json")

    @property
    def previous_checkpoint(self) -> Path:
        """Where a fresh run keeps the checkpoint it replaces until it has finished."""
        return self.folder / ".checkpoint.previous.npz"

    @property
    def written(self) -> list[Path]:
        return [self.weights, self.best, self.history, self.checkpoint, self.record]


@dataclass(frozen=True)
class RunResult:
    """What a finished run did; `history` is the whole run's (resumed epochs included)."""

    spec: object
    history: object  # nnctl.train.fit.History
    files: RunFiles
    train_samples: int
    validation_samples: int
    epochs_this_run: int  # epochs trained by this call (a resume trains the rest)
    best: dict | None  # {monitor, value, epoch, weights} when best.npz was written
    test: dict | None  # logs on data.test
    test_file: Path | None
    test_samples: int
    restored_best: bool  # early_stopping.restore_best_weights ended the run with the best epoch
    preprocessing: dict  # data file -> {filled, dropped_rows, unknown} when the spec preprocesses columns
    notes: list  # what reading the data had to say (a data cache rebuilt, and why)

    @property
    def final(self) -> dict:
        """The last epoch's logs without its bookkeeping (epoch, lr, timings)."""
        return {k: v for k, v in self.history[-1].items() if k not in WALL_CLOCK_LOGS} if self.history else {}

    @property
    def samples_per_second(self) -> float | None:
        """Training samples per second of this call's epochs: training steps only (no validation,
        no checkpoint), as each epoch's `samples_per_second`."""
        epochs = self.history[len(self.history) - self.epochs_this_run:] if self.epochs_this_run else []
        seconds = sum(h["seconds"] for h in epochs)
        return sum(h["samples_per_second"] * h["seconds"] for h in epochs) / seconds if seconds else None


class RunInterrupted(Exception):
    """A stop request ended the run after a whole step; its checkpoint is saved at `checkpoint`."""

    def __init__(self, epoch: int, step: int, checkpoint: Path):
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


def train_run(spec, *, out=None, init=None, resume=False, restart=False, progress: Progress | None = None,
              stop_requested=lambda: False, argv=(), root=RUNS) -> RunResult:
    """Train `spec` (a validated nnctl.spec Spec) as `nnctl train` does; see the module docstring."""
    if resume and init is not None:
        raise UsageError("--resume: expected a checkpoint to continue, received --init weights too; use one of them")
    files = RunFiles.of(spec, out, root)
    start_data_fingerprint(spec)  # the checkpoint's hash of the data files, in threads beside their reading
    session = open_session(spec, init)
    train_set, val_set = training_sets(session)
    test_set = load_test_set(session)  # read now: a bad test file fails before training, not after
    data_fingerprint(spec)  # waited for now, so that it never competes with training for the cores
    data = (train_set, val_set, test_set)
    _check_outputs(spec, files, init)
    owner = {"spec_file": str(Path(spec.file).resolve())}
    lock = FolderLock(files.folder, owner)
    previous = lock.previous_owner()
    if previous.get("spec_file") not in (None, owner["spec_file"]):
        raise UsageError(Problem(
            f"expected a run folder of this spec file, received the run folder of {previous['spec_file']}; "
            "give this spec a `name:` of its own", str(files.folder)))
    try:
        with lock:
            for folder in {files.folder, files.weights.parent}:
                remove_stale_temp_files(folder)  # what killed writers left (their PIDs are dead)
            return _train_locked(session, data, files, resume, restart, progress or Progress(), stop_requested, argv)
    except FolderLock.Busy as busy:
        raise UsageError(Problem(
            f"expected a run folder no other run is using, received one in use by process {busy.holder.get('pid', '?')} "
            f"(training {busy.holder.get('spec_file', 'a spec')}); wait for it, or give this spec another `name:`",
            str(files.folder))) from None


def _train_locked(session, data, files: RunFiles, resume, restart, progress, stop_requested, argv) -> RunResult:
    spec, (train_set, val_set, test_set) = session.spec, data
    state = None
    if resume:
        weights, state = load_checkpoint(files.checkpoint, spec, session.model)
        _check_resumable(state, files, len(train_set), spec.train["batch_size"])
        session.params.load(weights)
    else:
        _check_fresh_start(files, restart)
    if state is not None and _nothing_left(spec, state):
        record = read_run_record(files.record)
        saved = record.get("epochs") == state.epoch - 1 and record.get("checkpoint_epoch") == state.epoch
        if saved and Path((record.get("files") or {}).get("weights") or files.weights).exists():
            stopped = state.controls.get("stopped_early")
            if stopped:
                raise UsageError(f"nothing to resume: the run stopped early at epoch {stopped['epoch']} ({stopped['reason']}); "
                                 "train without --resume to start over")
            raise UsageError(f"nothing to resume: the checkpoint has all {state.epoch - 1} epochs done; pass --epochs N to train further")
        # The run finished training but its final save did not complete: write it from the checkpoint.
    checkpoints = _Checkpoints(spec, session, files, fresh=not resume)
    history_before = len(state.history) if state else 0
    try:
        history = fit(session, train_set, val_set, progress, state=state, stop_requested=stop_requested,
                      on_epoch_end=checkpoints.after_epoch)
    except Interrupted as stop:
        checkpoints.write(stop.state)
        raise RunInterrupted(stop.state.epoch, stop.state.step, files.checkpoint) from None
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}; {checkpoints.after_divergence()}") from None
    finally:
        progress.close()
    checkpoints.finish()
    # The weights file is the whole fitted model: the preprocessing fitted on the data beside the layers.
    fitted = state_arrays(session.preprocessing) if session.preprocessing is not None else {}
    save_weights(files.weights, {**session.params.to_host(), **fitted})
    save_history(files.history, history)
    best = None
    if val_set is not None and history.best_weights is not None:
        save_weights(files.best, {**history.best_weights, **fitted})
        best = {**history.best, "weights": str(files.best)}
    test = session.evaluate(test_set, spec.train["batch_size"]) if test_set is not None else None
    save_run_record(files.record, spec, argv, {
        "epochs": len(history), "checkpoint_epoch": len(history) + 1,
        "files": {"weights": str(files.weights), "history": str(files.history), "best": best and best["weights"]},
    })
    checkpoints.forget_previous()
    es = spec.train["early_stopping"]
    return RunResult(
        spec, history, files, len(train_set), len(val_set) if val_set is not None else 0, len(history) - history_before,
        best, test, test_set.file if test_set is not None else None, len(test_set) if test_set is not None else 0,
        bool(es and es["restore_best_weights"]), {file: report.as_dict() for file, report in session.preprocessing_reports.items()},
        list(dict.fromkeys(note for dataset in data if dataset is not None for note in dataset.notes)),
    )


def _check_resumable(state, files: RunFiles, samples: int, batch_size: int) -> None:
    """A checkpoint stopped mid-epoch must fit this data: its order a permutation of the training
    rows, its step within the epoch (a hand-edited one is refused here, not mid-training)."""
    if state.step == 0:
        return
    import numpy

    order, steps = state.order, -(-samples // batch_size)
    if len(order) != samples or not numpy.array_equal(numpy.sort(order), numpy.arange(samples)) or not state.step < steps:
        raise CheckpointError(Problem(
            f"expected an intact nnctl checkpoint for {samples} training samples in {steps} steps an epoch, received "
            f"an order of {len(order)} samples at step {state.step}", str(files.checkpoint)))


def _nothing_left(spec, state) -> bool:
    return state.epoch > spec.train["epochs"] or bool(state.controls.get("stopped_early"))


def _check_fresh_start(files: RunFiles, restart: bool) -> None:
    """A fresh run may replace a finished run's checkpoint, never an unfinished one unless asked
    (whatever spec or seed made it: it may be resumed with those)."""
    progress = None if restart else checkpoint_progress(files.checkpoint)
    if progress is not None and not progress["finished"]:
        raise UsageError(Problem(
            f"expected no unfinished run, received a checkpoint at epoch {progress['epoch']} of {progress['epochs']} "
            f"(seed {progress['seed']}); continue it with --resume, or pass --restart to discard it and start over",
            str(files.checkpoint)))


class _Checkpoints:
    """Per-epoch checkpoints of one run, written at most every CHECKPOINT_SECONDS."""

    def __init__(self, spec, session, files: RunFiles, fresh: bool):
        self.spec, self.session, self.files, self.fresh = spec, session, files, fresh
        self.last_written = None  # time of the last write; None: not yet this run
        self.pending = None  # (state, weights) of the newest epoch not yet written
        self.kept_previous = False

    def write(self, state, weights=None) -> None:
        if self.fresh and self.last_written is None and self.files.checkpoint.exists():
            # Set the previous run's checkpoint aside, whole, until this run has finished.
            os.replace(self.files.checkpoint, self.files.previous_checkpoint)
            self.kept_previous = True
        save_checkpoint(self.files.checkpoint, self.spec, weights or self.session.params.to_host(), state)
        self.last_written, self.pending = time.monotonic(), None

    def after_epoch(self, state) -> None:
        if self.last_written is None or time.monotonic() - self.last_written >= CHECKPOINT_SECONDS:
            self.write(state)
        else:
            # The weights as they are now: restore_best_weights may change them after the last epoch.
            self.pending = (state, self.session.params.to_host())

    def finish(self) -> None:
        """The run's final checkpoint, before any other file of the final save."""
        if self.pending is not None:
            self.write(*self.pending)

    def after_divergence(self) -> str:
        """Put the previous run's checkpoint back; say what is on disk now."""
        if self.kept_previous:
            os.replace(self.files.previous_checkpoint, self.files.checkpoint)
            return (f"the previous run's checkpoint ({self.files.checkpoint}), weights and records were left as they were")
        if self.last_written is not None:
            return f"the last good checkpoint is {self.files.checkpoint}; weights on disk were left as they were"
        return "no checkpoint was written; weights on disk were left as they were"

    def forget_previous(self) -> None:
        if self.kept_previous:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.files.previous_checkpoint)


def _check_outputs(spec, files: RunFiles, init) -> None:
    """Before any training: every output can be written and none is one of the run's inputs."""
    if files.weights.suffix.lower() != ".npz":
        raise UsageError(Problem(f"--out: expected a file ending in .npz, received {files.weights.name!r}", str(files.weights)))
    # Beside --out, best.npz and history.csv are this run's own, or absent.
    listed = {Path(p).resolve() for p in (read_run_record(files.record).get("files") or {}).values() if p}
    if files.weights.parent.resolve() != files.folder.resolve():
        for path in (files.best, files.history):
            if path.exists() and path.resolve() not in listed:
                raise UsageError(Problem(
                    f"expected a folder for --out that holds no other run's files, received one whose {path.name} another run wrote; "
                    "give --out a folder of its own", str(path)))
    inputs = {Path(spec.file).resolve(): "the spec"}
    if init is not None:
        inputs[Path(init).resolve()] = "the --init weights"
    if spec.data is not None:
        for what, path in (("data", spec.data.path), ("data.validation", spec.data.validation), ("data.test", spec.data.test)):
            if path is not None:
                inputs[Path(path).resolve()] = f"the {what} file"
    for path in files.written:
        if path.resolve() in inputs:
            raise UsageError(Problem(f"expected an output path that is not one of the run's inputs, received {inputs[path.resolve()]}", str(path)))
        check_writable(path)  # also: a folder in its place, a file where its folder should be

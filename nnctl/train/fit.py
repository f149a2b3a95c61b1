"""Epochs of mini-batch steps for a Session. No printing: progress goes to a callback.

`fit` runs epochs of mini-batch steps (forward, backward, one optimizer step over the flat
buffer) and reports through a `Progress` object that the CLI renders. Once per epoch it consults
nnctl.train.controls: the epoch's learning rate, the best epoch, early stopping. A `TrainState`
holds everything needed to continue a run bit-exactly (nnctl.train.checkpoint stores it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy

from nnctl.core.finite import all_finite
from nnctl.core.random import STREAM_DROPOUT, STREAM_SHUFFLE, rng_for
from nnctl.errors import TrainingDiverged
from nnctl.model.graph import ForwardContext
from nnctl.train.controls import Controls
from nnctl.train.session import Totals


class Progress:
    """Callbacks for a training run; the CLI subclasses this to draw bars and tables."""

    def on_train_begin(self, epochs: int, steps: int, samples: int) -> None: ...

    def on_step(self, epoch: int, step: int, read_logs) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def close(self) -> None: ...


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) after a whole step; `state` can resume it."""

    def __init__(self, state):
        super().__init__(f"interrupted at epoch {state.epoch}, step {state.step}")
        self.state = state


@dataclass
class TrainState:
    """Everything needed to continue a run bit-exactly: see nnctl.train.checkpoint for its file form.

    `step` is the number of steps done in `epoch`; 0 means `epoch` has not started. `order` is
    that epoch's sample order once it has started.
    """

    epoch: int = 1
    step: int = 0
    order: object = None
    totals: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    shuffle_rng: dict | None = None  # bit-generator states
    dropout_rng: dict | None = None
    optimizer: dict | None = None
    controls: dict = field(default_factory=dict)  # nnctl.train.controls.Controls.state(): JSON-able
    best_weights: object = None  # host copy of the flat weights of the best epoch, or None


class History(list):
    """`fit`'s result: one dict of logs per epoch, and how the run ended.

    `stopped_early`: None, or {epoch, reason, ...} when early stopping ended the run.
    `best`: None, or {monitor, value, epoch}: the best epoch (see nnctl.train.controls.Controls).
    `best_weights`: host arrays keyed like the weights file, of that epoch, or None.
    """

    stopped_early = None
    best = None
    best_weights = None


def _generator(seed, stream, state):
    rng = rng_for(seed, stream)
    if state is not None:
        rng.bit_generator.state = state
    return rng


def fit(session, train_set, val_set=None, progress: Progress | None = None, state: TrainState | None = None,
        stop_requested=lambda: False, on_epoch_end=None) -> History:
    """Train up to the spec's epochs from `state` (a fresh run when None); return the history.

    `stop_requested()` is polled after every step: when true the run raises `Interrupted` with a
    state that `fit` continues from exactly. `on_epoch_end(state)` runs after each epoch (the CLI
    writes its checkpoint there). A non-finite loss or gradient raises `TrainingDiverged`.
    Early stopping ends the loop after an epoch; restore_best_weights then loads the best epoch's
    weights (Keras 3: at the end of training, whether or not it stopped early).
    """
    spec, backend = session.spec, session.backend
    train = spec.train
    epochs, batch_size, shuffle, validation_freq = train["epochs"], train["batch_size"], train["shuffle"], train["validation_freq"]
    state = state or TrainState()
    progress = progress or Progress()
    optimizer = session.make_optimizer()
    if state.optimizer is not None:
        optimizer.load_state(state.optimizer)
    controls = Controls(spec, optimizer.learning_rate, val_set is not None, state.controls)
    params = session.params
    shuffle_rng = _generator(spec.seed, STREAM_SHUFFLE, state.shuffle_rng)
    ctx = ForwardContext(backend, training=True, dropout_rng=_generator(spec.seed, STREAM_DROPOUT, state.dropout_rng))
    batches = session.batches(train_set, batch_size)
    check_each_step = backend.name == "numpy"  # on a GPU this would synchronise every step
    xp = backend.xp
    history = History(state.history)
    best_flat = None  # on the device: the best epoch's weights (all of them), when they are wanted
    if controls.keeps_best_weights and state.best_weights is not None:
        best_flat = backend.asarray(state.best_weights, dtype=params.flat.dtype)
    progress.on_train_begin(epochs, len(batches), len(train_set))

    def snapshot(epoch, step, order, totals):
        return TrainState(epoch, step, order, totals.state() if totals else {}, list(history),
                          shuffle_rng.bit_generator.state, ctx.dropout_rng.bit_generator.state, optimizer.state_dict(),
                          controls.state(), backend.to_host(best_flat).copy() if best_flat is not None else None)

    for epoch in range(state.epoch, epochs + 1):
        if controls.stopped_early:
            break
        resuming = epoch == state.epoch and state.step > 0
        if resuming:
            order, done = state.order, state.step
        else:
            order = shuffle_rng.permutation(len(train_set)) if shuffle else numpy.arange(len(train_set))
            done = 0
        lr = optimizer.learning_rate = controls.lr(epoch)
        totals = Totals(session, state.totals if resuming else None, penalty=bool(session.regularized))

        def read_logs(totals=totals, lr=lr):
            return {**totals.read(), "lr": lr}

        started = time.perf_counter()
        for step, (inputs, targets, size) in enumerate(batches(order, skip=done), start=done + 1):
            loss, outputs, penalty, own = session.gradients(inputs, targets, size, ctx)
            if check_each_step and not (math.isfinite(loss) and all_finite(params.grad_flat)):
                what = "loss" if not math.isfinite(loss) else "gradient"
                raise TrainingDiverged(f"the {what} became NaN or inf at epoch {epoch}, step {step}")
            optimizer.step(params.flat, params.grad_flat)
            totals.add(loss, outputs, targets, size, penalty, own)
            progress.on_step(epoch, step, read_logs)
            if stop_requested():
                raise Interrupted(snapshot(epoch, step, order, totals))
        seconds = time.perf_counter() - started
        logs = {"epoch": epoch, **totals.read()}
        if not (math.isfinite(logs["loss"]) and bool(xp.isfinite(params.all_flat).all())):
            raise TrainingDiverged(f"the loss or weights became NaN or inf in epoch {epoch}")
        if val_set is not None and epoch % validation_freq == 0:
            logs.update({f"val_{k}": v for k, v in session.evaluate(val_set, batch_size).items()})
        logs["lr"] = lr
        logs["seconds"] = seconds
        logs["samples_per_second"] = (len(train_set) - done * batch_size) / seconds if seconds > 0 else float("inf")
        if controls.end_epoch(epoch, logs) and controls.keeps_best_weights:
            if best_flat is None:
                best_flat = xp.empty_like(params.all_flat)
            best_flat[...] = params.all_flat
        history.append(logs)
        progress.on_epoch_end(epoch, logs)
        if on_epoch_end is not None:
            on_epoch_end(snapshot(epoch + 1, 0, None, None))
    es = train["early_stopping"]
    if es and es["restore_best_weights"] and best_flat is not None:
        params.all_flat[...] = best_flat
    history.stopped_early = controls.stopped_early
    history.best = controls.best
    if best_flat is not None:
        history.best_weights = params.unflatten(backend.to_host(best_flat))
    return history

"""Training, evaluation and prediction of a compiled spec. No printing: progress goes to a callback.

`Session` is a spec compiled on a backend: model, weights in flat buffers, loss, metrics,
optimizer. `fit` runs epochs of mini-batch steps (forward, backward, one optimizer step over the
flat buffer) and reports through a `Progress` object that the CLI renders. Once per epoch it
consults nnctl.train.controls: the epoch's learning rate, the best epoch, early stopping.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy

from nnctl.core import ops
from nnctl.train.controls import Controls
from nnctl.data.batches import Batches
from nnctl.data.dataset import load_dataset, split
from nnctl.errors import SpecError, TrainingDiverged
from nnctl.model.graph import STREAM_DROPOUT, STREAM_SHUFFLE, STREAM_SPLIT, ForwardContext, Model, Parameters, rng_for
from nnctl.train.losses import LOSSES
from nnctl.train.metrics import METRICS
from nnctl.train.optimizers import OPTIMIZERS
from nnctl.train.step import TrainStep


class Session:
    def __init__(self, spec, backend, weights: dict | None = None, dtype: str | None = None):
        self.spec = spec
        self.backend = backend
        self.dtype = dtype or spec.dtype
        self.model = Model(spec)
        name, options = spec.loss
        self.loss = LOSSES[name](options)
        self.metrics = {m: METRICS[m](self.loss) for m in spec.metrics}
        values = weights if weights is not None else self.model.initial_weights(spec.seed)
        self.params = Parameters(self.model, backend, self.dtype, values)
        # Layers whose weights add a penalty to the loss (a kernel_regularizer with l1 or l2 > 0).
        self.regularized = [node for node in self.model.nodes
                            if any((node.layer.config.get("kernel_regularizer") or {}).values())]
        self._steps = {}  # batch size -> nnctl.train.step.TrainStep

    def penalty(self, weights):
        """The regularization penalty as a scalar tensor (Keras adds it to the loss), or None."""
        total = None
        for node in self.regularized:
            term = node.layer.penalty({w.name: weights[f"{node.name}/{w.name}"] for w in node.layer.weights})
            if term is not None:
                total = term if total is None else ops.add(total, term)
        return total

    def objective(self, output, targets, weights):
        """What training minimises: the loss of `output`, plus the penalty of `weights` if any."""
        loss = self.loss(output, targets)
        penalty = self.penalty(weights) if self.regularized else None
        return loss if penalty is None else ops.add(loss, penalty)

    def gradients(self, inputs, targets, ctx):
        """One batch forward and backward through the compiled step (nnctl.train.step):
        (loss, output, penalty or None) arrays. The gradients land in `params.grad_flat`."""
        return self._step(len(targets))(inputs, targets, ctx)

    def _step(self, batch: int) -> TrainStep:
        """The compiled step for `batch` samples, compiled on first use (one per batch size)."""
        step = self._steps.get(batch)
        if step is None:
            step = self._steps[batch] = TrainStep(self, batch)
        return step

    @property
    def output_units(self) -> int:
        return self.model.shapes[self.model.output][-1]

    def make_optimizer(self):
        name, options = self.spec.optimizer
        return OPTIMIZERS[name](options, self.params.flat)

    def batches(self, dataset, batch_size):
        return Batches(dataset, batch_size, self.backend, self.dtype)

    def evaluate(self, dataset, batch_size: int) -> dict:
        """Mean loss and metrics over `dataset` in inference mode. As in Keras, `loss` includes the
        regularization penalty of the current weights (a constant over the batches)."""
        totals = _Totals(self)
        ctx = ForwardContext(self.backend)
        for inputs, targets, size in self.batches(dataset, batch_size)(None):
            output = self._step(size).forward(inputs, ctx)
            totals.add(self.loss(output, targets).value, output, targets, size)
        logs = totals.read()
        penalty = self.penalty(self.params.frozen()) if self.regularized else None
        if penalty is not None and logs:
            logs["loss"] += self.backend.scalar(penalty.value)
        return logs

    def predict(self, dataset, batch_size: int = 1024):
        """Host arrays of the outputs, in chunks (probabilities for logits), and class indices or None."""
        xp = self.backend.xp
        ctx = ForwardContext(self.backend)
        chunks = []
        for inputs, _, size in self.batches(dataset, batch_size)(None):
            output = self._step(size).forward(inputs, ctx)
            # A copy: on NumPy, to_host of the step's own buffer is that buffer.
            chunks.append(numpy.array(self.backend.to_host(self.loss.probabilities(xp, output))))
        values = numpy.concatenate(chunks)
        classes = values.argmax(axis=-1) if self.loss.targets in ("labels", "one_hot") else None
        return values, classes


class _Totals:
    """Sample-weighted sums of loss (and penalty) and metrics, kept on the device until read."""

    def __init__(self, session: Session, saved: dict | None = None, penalty: bool = False):
        self.session = session
        self.count = 0
        self.loss = 0.0
        self.penalty = 0.0 if penalty else None
        self.metrics = {name: 0.0 for name in session.metrics}
        if saved:
            xp = session.backend.xp
            self.count = int(saved["count"])
            self.loss = xp.asarray(saved["loss"])
            if penalty:
                self.penalty = xp.asarray(saved["penalty"])
            self.metrics = {name: xp.asarray(saved[f"metric/{name}"]) for name in session.metrics}

    def state(self) -> dict:
        """Host arrays (dtype kept, so a resumed sum continues bit-exactly)."""
        host = self.session.backend.to_host
        penalty = {"penalty": host(self.penalty)} if self.penalty is not None else {}
        return {"count": self.count, "loss": host(self.loss), **penalty, **{f"metric/{k}": host(v) for k, v in self.metrics.items()}}

    def add(self, loss_value, output, targets, size, penalty_value=None):
        xp = self.session.backend.xp
        self.count += size
        self.loss = self.loss + loss_value * size
        if penalty_value is not None:
            self.penalty = self.penalty + penalty_value * size
        for name, metric in self.session.metrics.items():
            self.metrics[name] = self.metrics[name] + metric(xp, output, targets)

    def read(self) -> dict:
        scalar = self.session.backend.scalar
        if not self.count:
            return {}
        logs = {"loss": scalar(self.loss) / self.count}
        if self.penalty is not None:
            logs["penalty"] = scalar(self.penalty) / self.count
        for name, total in self.metrics.items():
            logs[name] = scalar(total) / self.count
        return logs


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


def fit(session: Session, train_set, val_set=None, progress: Progress | None = None, state: TrainState | None = None,
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
    best_flat = None  # on the device: the best epoch's weights, when they are wanted
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
        totals = _Totals(session, state.totals if resuming else None, penalty=bool(session.regularized))

        def read_logs(totals=totals, lr=lr):
            return {**totals.read(), "lr": lr}

        started = time.perf_counter()
        for step, (inputs, targets, size) in enumerate(batches(order, skip=done), start=done + 1):
            loss, output, penalty = session.gradients(inputs, targets, ctx)
            if check_each_step and not (math.isfinite(loss) and math.isfinite(params.grad_flat.sum())):
                what = "loss" if not math.isfinite(loss) else "gradient"
                raise TrainingDiverged(f"the {what} became NaN or inf at epoch {epoch}, step {step}")
            optimizer.step(params.flat, params.grad_flat)
            totals.add(loss, output, targets, size, penalty)
            progress.on_step(epoch, step, read_logs)
            if stop_requested():
                raise Interrupted(snapshot(epoch, step, order, totals))
        seconds = time.perf_counter() - started
        logs = {"epoch": epoch, **totals.read()}
        if not (math.isfinite(logs["loss"]) and bool(xp.isfinite(params.flat).all())):
            raise TrainingDiverged(f"the loss or weights became NaN or inf in epoch {epoch}")
        if val_set is not None and epoch % validation_freq == 0:
            logs.update({f"val_{k}": v for k, v in session.evaluate(val_set, batch_size).items()})
        logs["lr"] = lr
        logs["seconds"] = seconds
        logs["samples_per_second"] = (len(train_set) - done * batch_size) / seconds if seconds > 0 else float("inf")
        if controls.end_epoch(epoch, logs) and controls.keeps_best_weights:
            if best_flat is None:
                best_flat = xp.empty_like(params.flat)
            best_flat[...] = params.flat
        history.append(logs)
        progress.on_epoch_end(epoch, logs)
        if on_epoch_end is not None:
            on_epoch_end(snapshot(epoch + 1, 0, None, None))
    es = train["early_stopping"]
    if es and es["restore_best_weights"] and best_flat is not None:
        params.flat[...] = best_flat
    history.stopped_early = controls.stopped_early
    history.best = controls.best
    if best_flat is not None:
        history.best_weights = unflatten(params, backend.to_host(best_flat))
    return history


def unflatten(params, flat) -> dict:
    """Host arrays keyed like the weights file, from a host copy of the flat weight buffer."""
    values, offset = {}, 0
    for key, view in params.views.items():
        values[key] = numpy.array(flat[offset:offset + view.size]).reshape(view.shape)
        offset += view.size
    return values


def load_spec_data(session, path=None, targets=True):
    """The spec's data file (or `path`), checked against the model."""
    spec = session.spec
    if spec.data is None:
        raise SpecError(spec.problem((), "expected a 'data' section (path, inputs, targets), received none"))
    return load_dataset(
        path or spec.data.path, spec.data.inputs, spec.data.targets if targets else None,
        session.model.input_shapes, session.loss, session.output_units, session.dtype,
    )


def load_test_set(session):
    """The spec's data.test file, or None."""
    spec = session.spec
    if spec.data is None or spec.data.test is None:
        return None
    return load_spec_data(session, spec.data.test)


def training_sets(session):
    """(train, validation or None) as the spec asks: a seeded split or a separate file."""
    spec = session.spec
    dataset = load_spec_data(session)
    if spec.data.validation is not None:
        return dataset, load_spec_data(session, spec.data.validation)
    return split(dataset, spec.data.validation_split, rng_for(spec.seed, STREAM_SPLIT))

"""Training, evaluation and prediction of a compiled spec. No printing: progress goes to a callback.

`Session` is a spec compiled on a backend: model, weights in flat buffers, loss, metrics,
optimizer. `fit` runs epochs of mini-batch steps (forward, backward, one optimizer step over the
flat buffer) and reports through a `Progress` object that the CLI renders.
"""
from __future__ import annotations

import math
import time

import numpy

from nnctl.autograd import backward
from nnctl.data import Batches, load_dataset, split
from nnctl.errors import SpecError, TrainingDiverged
from nnctl.graph import STREAM_DROPOUT, STREAM_SHUFFLE, STREAM_SPLIT, ForwardContext, Model, Parameters, rng_for
from nnctl.losses import LOSSES
from nnctl.metrics import METRICS
from nnctl.optimizers import OPTIMIZERS


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

    @property
    def output_units(self) -> int:
        return self.model.shapes[self.model.output][-1]

    def make_optimizer(self):
        name, options = self.spec.optimizer
        return OPTIMIZERS[name](options, self.params.flat)

    def batches(self, dataset, batch_size):
        return Batches(dataset, batch_size, self.backend, self.dtype)

    def evaluate(self, dataset, batch_size: int) -> dict:
        """Mean loss and metrics over `dataset` in inference mode."""
        totals = _Totals(self)
        ctx = ForwardContext(self.backend)
        weights = self.params.frozen()
        for inputs, targets, size in self.batches(dataset, batch_size)(None):
            output = self.model.forward(weights, inputs, ctx)
            totals.add(self.loss(output, targets).value, output.value, targets, size)
        return totals.read()

    def predict(self, dataset, batch_size: int = 1024):
        """Host arrays of the outputs, in chunks (probabilities for logits), and class indices or None."""
        xp = self.backend.xp
        ctx = ForwardContext(self.backend)
        weights = self.params.frozen()
        chunks = []
        for inputs, _, _ in self.batches(dataset, batch_size)(None):
            output = self.model.forward(weights, inputs, ctx).value
            chunks.append(self.backend.to_host(self.loss.probabilities(xp, output)))
        values = numpy.concatenate(chunks)
        classes = values.argmax(axis=-1) if self.loss.targets in ("labels", "one_hot") else None
        return values, classes


class _Totals:
    """Sample-weighted sums of loss and metrics, kept on the device until read."""

    def __init__(self, session: Session):
        self.session = session
        self.count = 0
        self.loss = 0.0
        self.metrics = {name: 0.0 for name in session.metrics}

    def add(self, loss_value, output, targets, size):
        xp = self.session.backend.xp
        self.count += size
        self.loss = self.loss + loss_value * size
        for name, metric in self.session.metrics.items():
            self.metrics[name] = self.metrics[name] + metric(xp, output, targets)

    def read(self) -> dict:
        scalar = self.session.backend.scalar
        if not self.count:
            return {}
        logs = {"loss": scalar(self.loss) / self.count}
        for name, total in self.metrics.items():
            logs[name] = scalar(total) / self.count
        return logs


class Progress:
    """Callbacks for a training run; the CLI subclasses this to draw bars and tables."""

    def on_train_begin(self, epochs: int, steps: int, samples: int) -> None: ...

    def on_step(self, epoch: int, step: int, read_logs) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...


def shuffle_orders(seed: int, n: int):
    """The per-epoch sample orders nnctl trains in (the benchmark reuses them)."""
    rng = rng_for(seed, STREAM_SHUFFLE)
    while True:
        yield rng.permutation(n)


def fit(session: Session, train_set, val_set=None, progress: Progress | None = None, optimizer=None) -> list[dict]:
    """Train for the spec's epochs; return the history, one dict per epoch."""
    spec, backend = session.spec, session.backend
    epochs, batch_size, shuffle = spec.train["epochs"], spec.train["batch_size"], spec.train["shuffle"]
    progress = progress or Progress()
    optimizer = optimizer or session.make_optimizer()
    params, model, loss_fn = session.params, session.model, session.loss
    weights = params.tensors
    ctx = ForwardContext(backend, training=True, dropout_rng=rng_for(spec.seed, STREAM_DROPOUT))
    batches = session.batches(train_set, batch_size)
    orders = shuffle_orders(spec.seed, len(train_set))
    check_each_step = backend.name == "numpy"  # on a GPU this would synchronise every step
    progress.on_train_begin(epochs, len(batches), len(train_set))
    history = []
    for epoch in range(1, epochs + 1):
        order = next(orders) if shuffle else None
        totals = _Totals(session)
        started = time.perf_counter()
        for step, (inputs, targets, size) in enumerate(batches(order), start=1):
            params.zero_grad()
            output = model.forward(weights, inputs, ctx)
            loss = loss_fn(output, targets)
            if check_each_step and not math.isfinite(loss.value):
                raise TrainingDiverged(f"the loss became {float(loss.value)} at epoch {epoch}, step {step}")
            backward(loss)
            optimizer.step(params.flat, params.grad_flat)
            totals.add(loss.value, output.value, targets, size)
            progress.on_step(epoch, step, totals.read)
        seconds = time.perf_counter() - started
        logs = {"epoch": epoch, **totals.read()}
        if not math.isfinite(logs["loss"]):
            raise TrainingDiverged(f"the loss became {logs['loss']} in epoch {epoch}")
        if val_set is not None:
            logs.update({f"val_{k}": v for k, v in session.evaluate(val_set, batch_size).items()})
        logs["seconds"] = seconds
        logs["samples_per_second"] = len(train_set) / seconds if seconds > 0 else float("inf")
        history.append(logs)
        progress.on_epoch_end(epoch, logs)
    return history


def load_spec_data(session, path=None, targets=True):
    """The spec's data file (or `path`), checked against the model."""
    spec = session.spec
    if spec.data is None:
        raise SpecError(spec.problem((), "expected a 'data' section (path, inputs, targets), received none"))
    return load_dataset(
        path or spec.data.path, spec.data.inputs, spec.data.targets if targets else None,
        session.model.input_shapes, session.loss, session.output_units, session.dtype,
    )


def training_sets(session):
    """(train, validation or None) as the spec asks: a seeded split or a separate file."""
    spec = session.spec
    dataset = load_spec_data(session)
    if spec.data.validation is not None:
        return dataset, load_spec_data(session, spec.data.validation)
    return split(dataset, spec.data.validation_split, rng_for(spec.seed, STREAM_SPLIT))

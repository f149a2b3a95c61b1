"""A spec compiled on a backend: model, weights in flat buffers, each output's loss and metrics
(nnctl.train.heads), optimizer.

`Session` computes gradients through the compiled step (nnctl.train.step), evaluates and
predicts; nnctl.train.fit runs its epochs. The spec's data files are read here, checked against
the model and the loss's kind of target.
"""
from __future__ import annotations

import math

import numpy

from nnctl.core import ops
from nnctl.core.backend import get_backend
from nnctl.core.random import STREAM_SPLIT, rng_for
from nnctl.data.batches import Batches
from nnctl.data import prepared, preprocessing
from nnctl.data.dataset import Dataset, load_dataset, split
from nnctl.data.readers import ReadOptions
from nnctl.io.weights import load_weights
from nnctl.errors import Problem, SpecError, UsageError, WeightsError, did_you_mean
from nnctl.model.graph import ForwardContext, Model
from nnctl.model.parameters import Parameters
from nnctl.train.heads import make_heads, weighted_total
from nnctl.train.optimizers import OPTIMIZERS
from nnctl.train.step import TrainStep


PREDICT_BATCH = 1024  # rows per forward pass of `Session.predict`
# Rows of a raw table that `predict_file` reads, transforms and predicts at a time: a few MB of
# inputs, whatever the size of the file.
PREDICT_BLOCK_ROWS = 65536


class Session:
    def __init__(self, spec, backend, weights: dict | None = None, dtype: str | None = None):
        self.spec = spec
        self.backend = backend
        self.dtype = dtype or spec.dtype
        self.model = Model(spec)
        self.heads = make_heads(spec, self.model.shapes)  # the outputs, each with its loss and metrics
        values = weights if weights is not None else self.model.initial_weights(spec.seed)
        self.params = Parameters(self.model, backend, self.dtype, values)
        # Layers whose weights add a penalty to the loss (a kernel_regularizer with l1 or l2 > 0).
        self.regularized = [node for node in self.model.nodes
                            if any((node.layer.config.get("kernel_regularizer") or {}).values())]
        self._steps = {}  # batch size -> nnctl.train.step.TrainStep
        # The fitted column preprocessing ({column: transform}) of a spec that declares one: from
        # its weights file, or fitted on the training rows by `training_sets`.
        self.preprocessing = None
        self.preprocessing_reports = {}  # data file -> nnctl.data.preprocessing.Report

    def penalty(self, weights):
        """The regularization penalty as a scalar tensor (Keras adds it to the loss), or None."""
        total = None
        for node in self.regularized:
            term = node.layer.penalty({w.name: weights[f"{node.name}/{w.name}"] for w in node.layer.weights})
            if term is not None:
                total = term if total is None else ops.add(total, term)
        return total

    def objective(self, outputs, targets, weights):
        """What training minimises: the outputs' losses (weighted, with several), plus the penalty
        of `weights` if any; `outputs` in the model's order, `targets` by output name."""
        loss = None
        for head, output in zip(self.heads, outputs):
            own = head.loss(output, targets[head.name])
            if len(self.heads) > 1:
                own = ops.multiply(own, head.weight)
            loss = own if loss is None else ops.add(loss, own)
        penalty = self.penalty(weights) if self.regularized else None
        return loss if penalty is None else ops.add(loss, penalty)

    def gradients(self, inputs, targets, size, ctx):
        """One batch of `size` samples forward and backward through the compiled step
        (nnctl.train.step): (loss, outputs, penalty or None, each output's loss or None) arrays.
        The gradients land in `params.grad_flat`."""
        return self._step(size)(inputs, targets, ctx)

    def _step(self, batch: int) -> TrainStep:
        """The compiled step for `batch` samples, compiled on first use (one per batch size)."""
        step = self._steps.get(batch)
        if step is None:
            step = self._steps[batch] = TrainStep(self, batch)
        return step

    def target_kinds(self) -> dict:
        """{output: (the kind of target its loss reads, its units)}, for checking a data file's targets."""
        return {head.name: (head.targets, head.units) for head in self.heads}

    def make_optimizer(self):
        return OPTIMIZERS[self.spec.optimizer.name](self.spec.optimizer.options, self.params.flat)

    def batches(self, dataset, batch_size):
        return Batches(dataset, batch_size, self.backend, self.dtype)

    def evaluate(self, dataset, batch_size: int) -> dict:
        """Mean loss and metrics over `dataset` in inference mode. As in Keras, `loss` includes the
        regularization penalty of the current weights (a constant over the batches)."""
        totals = Totals(self)
        ctx = ForwardContext(self.backend)
        several = len(self.heads) > 1
        for inputs, targets, size in self.batches(dataset, batch_size)(None):
            outputs = self._step(size).forward(inputs, ctx)
            own = [head.loss(output, targets[head.name]).value for head, output in zip(self.heads, outputs)]
            totals.add(weighted_total(self.heads, own), outputs, targets, size, own=own if several else None)
        logs = totals.read()
        penalty = self.penalty(self.params.frozen()) if self.regularized else None
        if penalty is not None and logs:
            logs["loss"] += self.backend.scalar(penalty.value)
        return logs

    def predict(self, dataset, batch_size: int = PREDICT_BATCH) -> list:
        """Per output, (host array of its values, class indices or None): probabilities for
        logits, read in chunks."""
        xp = self.backend.xp
        ctx = ForwardContext(self.backend)
        chunks = [[] for _ in self.heads]
        for inputs, _, size in self.batches(dataset, batch_size)(None):
            for head, output, kept in zip(self.heads, self._step(size).forward(inputs, ctx), chunks):
                # A copy: on NumPy, to_host of the step's own buffer is that buffer.
                kept.append(numpy.array(self.backend.to_host(head.loss.probabilities(xp, output))))
        predictions = []
        for head, kept in zip(self.heads, chunks):
            values = numpy.concatenate(kept)
            predictions.append((values, head.targets.predicted_classes(values) if head.targets.shows_classes else None))
        return predictions

    def activations(self, dataset, layer: str, batch_size: int = PREDICT_BATCH):
        """Host array of layer (or input) `layer`'s values for every sample, as they are."""
        ctx = ForwardContext(self.backend)
        chunks = [numpy.array(self.backend.to_host(self._step(size).activations(inputs, ctx, layer)))
                  for inputs, _, size in self.batches(dataset, batch_size)(None)]
        return numpy.concatenate(chunks)


def open_session(spec, weights=None, dtype: str | None = None, backend: str | None = None) -> Session:
    """`spec` on its backend (or `backend`), with the weights of the .npz file `weights` (and the
    preprocessing fitted with them), or the initializers' when None."""
    values = state = None
    if weights is not None:
        columns = spec.data.columns if spec.data is not None else None
        values = load_weights(weights, Model(spec).weight_shapes, state_prefix=preprocessing.PREFIX if columns is not None else None)
        state = {k: values.pop(k) for k in list(values) if k.startswith(preprocessing.PREFIX)}
    try:
        session = Session(spec, get_backend(backend or spec.backend), weights=values, dtype=dtype)
    except WeightsError as exc:  # values that overflow the run's dtype: say which file they came from
        raise WeightsError([p if p.file else Problem(p.message, str(weights)) for p in exc.problems]) from None
    if state is not None and columns is not None:
        session.preprocessing = preprocessing.state_from_arrays(state, prepared.configs_of(spec.data), str(weights))
    return session


class Totals:
    """Sample-weighted sums of the loss (and penalty, and each output's loss when there are
    several), and each metric's accumulated state (nnctl.train.metrics), kept on the device until
    read. Keys are log names (nnctl.train.heads)."""

    def __init__(self, session: Session, saved: dict | None = None, penalty: bool = False):
        self.session = session
        xp = session.backend.xp
        self.heads = session.heads
        self.count = 0
        self.loss = 0.0
        self.penalty = 0.0 if penalty else None
        self.own = {head.loss_log: 0.0 for head in self.heads if head.loss_log is not None}
        self.metrics = {name: metric.start(xp) for head in self.heads for name, metric in head.metrics.items()}
        if saved:
            self.count = int(saved["count"])
            self.loss = xp.asarray(saved["loss"])
            if penalty:
                self.penalty = xp.asarray(saved["penalty"])
            self.own = {name: xp.asarray(saved[f"loss/{name}"]) for name in self.own}
            self.metrics = {name: metric.unpack(xp, saved[f"metric/{name}"]) for name, metric in self._metrics()}

    def _metrics(self):
        return [(name, metric) for head in self.heads for name, metric in head.metrics.items()]

    def state(self) -> dict:
        """Host arrays (dtype kept, so a resumed sum continues bit-exactly)."""
        backend = self.session.backend
        penalty = {"penalty": backend.to_host(self.penalty)} if self.penalty is not None else {}
        own = {f"loss/{name}": backend.to_host(value) for name, value in self.own.items()}
        metrics = {f"metric/{name}": metric.pack(backend, self.metrics[name]) for name, metric in self._metrics()}
        return {"count": self.count, "loss": backend.to_host(self.loss), **penalty, **own, **metrics}

    def add(self, loss_value, outputs, targets, size, penalty_value=None, own=None):
        """Fold in a batch: its loss, outputs (model order), targets (by output), and with several
        outputs `own`, each output's loss."""
        xp = self.session.backend.xp
        self.count += size
        self.loss = self.loss + loss_value * size
        if penalty_value is not None:
            self.penalty = self.penalty + penalty_value * size
        if own is not None:
            for head, value in zip(self.heads, own):
                self.own[head.loss_log] = self.own[head.loss_log] + value * size
        for head, output in zip(self.heads, outputs):
            for name, metric in head.metrics.items():
                self.metrics[name] = metric.update(xp, self.metrics[name], output, targets[head.name])

    def read(self) -> dict:
        backend = self.session.backend
        if not self.count:
            return {}
        logs = {"loss": backend.scalar(self.loss) / self.count}
        if self.penalty is not None:
            logs["penalty"] = backend.scalar(self.penalty) / self.count
        for name, value in self.own.items():
            logs[name] = backend.scalar(value) / self.count
        for name, metric in self._metrics():
            logs[name] = metric.result(backend, self.metrics[name], self.count)
        return logs


def load_spec_data(session, path=None, targets=True):
    """The spec's data file (or `path`), checked against the model, through the session's fitted
    preprocessing when the spec declares one (fitted first from the training rows if need be)."""
    spec = session.spec
    if spec.data is None:
        raise SpecError(spec.problem((), "expected a 'data' section (path, inputs, targets), received none"))
    path = path or spec.data.path
    if spec.data.columns is None:
        return load_dataset(path, spec.data.inputs, spec.data.targets if targets else None,
                            session.model.input_shapes, session.target_kinds(), session.dtype,
                            read_options(spec.data), spec.data.cache)
    if session.preprocessing is None:
        training_sets(session)
    return _prepared(session, path, targets=targets).dataset


def read_options(data_spec) -> ReadOptions:
    return ReadOptions(data_spec.delimiter, data_spec.missing_values)


def _prepared(session, path, targets=True, split=None) -> prepared.Loaded:
    """`path` through the spec's preprocessing (prepared.load): the session's, or fitted on the
    training rows of `split` when it has none."""
    spec = session.spec
    loaded = prepared.load(path, spec.data, session.preprocessing, session.model.input_shapes, session.target_kinds(),
                           session.dtype, targets, split, spec.problem)
    session.preprocessing = loaded.fitted
    session.preprocessing_reports[str(path)] = loaded.report
    return loaded


def load_test_set(session):
    """The spec's data.test file, or None."""
    spec = session.spec
    if spec.data is None or spec.data.test is None:
        return None
    return load_spec_data(session, spec.data.test)


def training_sets(session):
    """(train, validation or None) as the spec asks: a seeded split or a separate file. With
    column preprocessing, it is fitted here on the training rows (session.preprocessing)."""
    spec = session.spec
    if spec.data is None or spec.data.columns is None:
        dataset = load_spec_data(session)
        if spec.data.validation is not None:
            return dataset, load_spec_data(session, spec.data.validation)
        return split(dataset, spec.data.validation_split, rng_for(spec.seed, STREAM_SPLIT))
    # fitted on the training rows unless a weights file brought its own
    loaded = _prepared(session, spec.data.path, split=(0.0 if spec.data.validation is not None else spec.data.validation_split, spec.seed))
    dataset, held = loaded.dataset, loaded.held
    if spec.data.validation is not None:
        return dataset, load_spec_data(session, spec.data.validation)
    if not held.any():
        return dataset, None
    return dataset.subset(dataset.rows[~held]), dataset.subset(dataset.rows[held])


def fitted_preprocessing(session) -> dict | None:
    """The fitted column transforms of a spec that preprocesses its columns (None for one that does
    not); a UsageError when its weights file brought none."""
    data = session.spec.data
    if data is None or data.columns is None:
        return None
    if session.preprocessing is None:
        raise UsageError(Problem("--weights: expected a weights file with the model's fitted preprocessing, received none "
                                 "(train the spec to make one)", str(session.spec.file)))
    return session.preprocessing


def class_names(session, head) -> list | None:
    """The names of the classes `predict` gives for output `head` (a text target's, in index
    order), or None where it gives class indices (or no classes)."""
    data = session.spec.data
    names = prepared.class_names(session.preprocessing, data, head.name) if data is not None and head.name in data.targets else None
    return names if names is not None and head.targets.shows_classes and head.shape == (len(names),) else None


class Predictions:
    """What `predict_file` gives: `columns` (the values') and `class_columns` (each classifier
    output's class: `class`, or `<output>_class` with several outputs), then by iterating (once)
    blocks in row order, (values (rows, columns; a single output's in its own shape), {class column:
    a class per row}), and once they are done `report` (the preprocessing report, or None). A
    problem with the rows may be raised by the last block: write what comes before it atomically."""

    def __init__(self, blocks, columns: list, class_columns: list, report, notes: list):
        self._blocks, self._report = iter(blocks), report
        self.columns, self.class_columns = columns, class_columns
        self.notes = notes  # what the user should hear of the data cache

    def __iter__(self):
        return self._blocks

    @property
    def report(self) -> dict | None:
        return self._report()

    def collect(self) -> tuple:
        """(values, {class column: a class per row}) of every row."""
        blocks = list(self)
        return (numpy.concatenate([values for values, _ in blocks]),
                {name: numpy.concatenate([classes[name] for _, classes in blocks]) for name in self.class_columns})


def predict_file(session, path, layer: str | None = None, block_rows: int | None = None) -> Predictions:
    """The predictions for every row of the file at `path`, read with the spec's data.inputs
    (targets not needed): probabilities for cross-entropies, classes by name for a text target, a
    normalized regression target in its own units. Columns are `prob_<class or i>` (or
    `<output>_<i>`), prefixed by the output's name when there are several. With `layer`, that
    layer's activations (a tower's embedding, a hidden representation), flattened, columns
    `<layer>_<i>`. A raw table with column preprocessing is read, transformed and predicted
    `block_rows` (PREDICT_BLOCK_ROWS) rows at a time, in the batches one pass over all of them would make."""
    spec = session.spec
    if layer is not None and layer not in session.model.shapes:
        names = list(session.model.shapes)
        raise UsageError(f"--layer: expected a layer or input of the model, received {layer!r}{did_you_mean(layer, names)}")
    if spec.data is None:
        raise UsageError("--input: expected a spec with data.inputs to say which columns feed which input, received a spec without a data section")
    if spec.data.columns is None:
        dataset = load_dataset(path, spec.data.inputs, None, session.model.input_shapes, dtype=session.dtype,
                               read=read_options(spec.data), cache_folder=spec.data.cache)
        whole = session.predict(dataset) if layer is None else session.activations(dataset, layer)
        blocks, report, notes = [whole], (lambda: None), dataset.notes
    else:
        fitted_preprocessing(session)
        table = prepared.raw_table(path, spec.data, targets=False, on_disk=True)
        inputs = prepared.InputBlocks(path, table, session.preprocessing, spec.data, session.model.input_shapes, session.dtype,
                                      block_rows or PREDICT_BLOCK_ROWS)
        blocks, notes = _predicted(session, path, inputs, layer), table.notes

        def report():
            session.preprocessing_reports[str(path)] = inputs.report
            return inputs.report.as_dict()
    if layer is not None:
        width = math.prod(session.model.shapes[layer])
        return Predictions(((values.reshape(len(values), -1), {}) for values in blocks),
                           [f"{layer}_{i}" for i in range(width)], [], report, notes)
    columns = [f"{head.shown}_{label}" for head in session.heads for label in (class_names(session, head) or range(math.prod(head.shape)))]
    class_columns = [head.class_column for head in session.heads if head.targets.shows_classes]

    def shown(block):
        parts, classes = [], {}
        for head, (values, indices) in zip(session.heads, block):
            values, indices = shown_output(session, head, values, indices)
            if indices is not None:
                classes[head.class_column] = indices
            parts.append(values)
        return (parts[0] if len(parts) == 1 else numpy.concatenate([v.reshape(len(v), -1) for v in parts], axis=1)), classes

    return Predictions((shown(block) for block in blocks), columns, class_columns, report, notes)


def shown_output(session, head, values, indices):
    """An output's values and classes as `predict` shows them: a normalized regression target's
    values in its own units, a text target's classes by name."""
    data = session.spec.data
    target = prepared.target_transform(session.preprocessing, data, head.name) if data is not None and head.name in data.targets else None
    if isinstance(target, preprocessing.Numeric):
        values = target.restore(values)
    names = class_names(session, head)
    if indices is not None and names is not None:
        indices = numpy.array(names, dtype=object)[indices]
    return values, indices


def _predicted(session, path, blocks, layer, batch_size: int = PREDICT_BATCH):
    """What `Session.predict` (or, for `layer`, `Session.activations`) gives for the rows of
    `blocks` ({input: array}) in runs of whole batches of `batch_size` (and the rest at the end):
    every batch holds the rows one pass over all of them would, whatever the blocks' sizes."""
    def rows(inputs: dict, stop: int):
        dataset = Dataset(path, inputs, None, numpy.arange(stop))
        return session.predict(dataset, batch_size) if layer is None else session.activations(dataset, layer, batch_size)

    pending, count = [], 0
    for inputs in blocks:
        pending.append(inputs)
        count += len(next(iter(inputs.values())))
        whole = count - count % batch_size
        if whole:
            joined = {name: numpy.concatenate([p[name] for p in pending]) for name in inputs}
            yield rows(joined, whole)
            pending, count = [{name: a[whole:] for name, a in joined.items()}], count - whole
    if count:
        yield rows({name: numpy.concatenate([p[name] for p in pending]) for name in pending[0]}, count)

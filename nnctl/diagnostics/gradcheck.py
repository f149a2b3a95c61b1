"""Gradient check: autograd against central finite differences, in float64.

For every weight element (or a seeded sample of them) and every named node of the graph (inputs,
layer outputs, pre-activations: dL/dz and dL/da), the gradient of the loss on one batch is computed
by reverse mode and by (L(v + eps) - L(v - eps)) / 2 eps, and compared element-wise. L is what
training minimises: the loss plus any kernel_regularizer penalty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from nnctl.core import ops
from nnctl.core.autograd import Tensor, backward
from nnctl.core.random import STREAM_GRADCHECK, rng_for
from nnctl.model.graph import ForwardContext
from nnctl.train.session import load_spec_data


@dataclass
class GradRow:
    name: str
    kind: str  # "weight" or "node"
    shape: tuple
    checked: int
    total: int
    max_abs_error: float
    max_rel_error: float
    passed: bool


class _Recorder(ForwardContext):
    """Records every tapped node (with retained gradient) and can nudge one element of one node."""

    def __init__(self, backend, nudge=None):
        super().__init__(backend)
        self.nodes = {}
        self.nudge = nudge  # (node name, flat index, delta)

    def tap(self, name, tensor):
        if not isinstance(tensor, Tensor):
            tensor = Tensor(tensor, requires_grad=True)
        if self.nudge is not None and self.nudge[0] == name:
            delta = self.backend.xp.zeros_like(tensor.value)
            delta.reshape(-1)[self.nudge[1]] = self.nudge[2]
            tensor = ops.add(tensor, delta)
        tensor.retain_grad = True
        self.nodes[name] = tensor
        return tensor


def random_batch(session, size: int, rng=None):
    """Seeded inputs and targets of the right kind and shape (host float64 arrays, int labels),
    for specs without data; `rng` defaults to the spec seed's gradcheck stream."""
    rng = rng or rng_for(session.spec.seed, STREAM_GRADCHECK)
    model = session.model
    inputs = {name: rng.standard_normal((size,) + shape) for name, shape in model.input_shapes.items()}
    return inputs, session.loss.targets.random(rng, (size, *model.shapes[model.output]))


def check_batch(session, size: int):
    """The batch gradcheck checks: the first `size` rows of the spec's data, or seeded random
    inputs and targets when the spec has no data."""
    if session.spec.data is None:
        return random_batch(session, size)
    dataset = load_spec_data(session)
    inputs, targets, _ = next(iter(session.batches(dataset.subset(dataset.rows[:size]), size)(None)))
    return inputs, targets


def _sample(rng, total: int, limit: int):
    return numpy.arange(total) if total <= limit else numpy.sort(rng.choice(total, limit, replace=False))


def gradcheck(session, inputs: dict, targets, eps=1e-6, rtol=1e-4, atol=1e-6, max_elements=1000):
    """Compare gradients for every weight and node; returns (rows, loss value, recorder)."""
    backend, model = session.backend, session.model
    xp = backend.xp
    inputs = {k: backend.asarray(v, dtype="float64") for k, v in inputs.items()}
    targets = backend.asarray(targets)
    params = session.params

    def loss_at(nudge=None):
        ctx = _Recorder(backend, nudge)
        weights = params.frozen()
        value = session.objective(model.forward(weights, inputs, ctx), targets, weights).value
        return float(value)

    recorder = _Recorder(backend)
    params.zero_grad()
    loss = session.objective(model.forward(params.tensors, inputs, recorder), targets, params.tensors)
    backward(loss)

    rng = rng_for(session.spec.seed, STREAM_GRADCHECK + 1)
    rows = []

    def compare(name, kind, analytic, numeric_at, shape):
        total = int(numpy.prod(shape))
        picked = _sample(rng, total, max_elements)
        analytic = backend.to_host(analytic).reshape(-1)[picked]
        numeric = numpy.array([numeric_at(int(i)) for i in picked])
        abs_err = numpy.abs(analytic - numeric)
        rel_err = abs_err / numpy.maximum(numpy.maximum(numpy.abs(analytic), numpy.abs(numeric)), 1e-300)
        rel_err[abs_err == 0] = 0.0
        passed = bool(numpy.all(abs_err <= atol + rtol * numpy.abs(numeric)))
        rows.append(GradRow(name, kind, tuple(shape), len(picked), total, float(abs_err.max(initial=0)), float(rel_err.max(initial=0)), passed))

    for key, view in params.views.items():
        flat = view.reshape(-1)

        def numeric_weight(i, flat=flat):
            original = float(flat[i])
            flat[i] = original + eps
            up = loss_at()
            flat[i] = original - eps
            down = loss_at()
            flat[i] = original
            return (up - down) / (2 * eps)

        compare(key, "weight", params.grad_views[key], numeric_weight, view.shape)

    for name, node in recorder.nodes.items():
        def numeric_node(i, name=name):
            return (loss_at((name, i, eps)) - loss_at((name, i, -eps))) / (2 * eps)

        grad = node.grad if node.grad is not None else xp.zeros_like(node.value)
        compare(name, "node", grad, numeric_node, node.value.shape)
    return rows, float(loss.value), recorder

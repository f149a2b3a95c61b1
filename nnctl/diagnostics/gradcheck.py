"""Gradient check: autograd against central finite differences, in float64.

For every weight element (or a seeded sample of them) and every named node of the graph (inputs,
layer outputs, pre-activations: dL/dz and dL/da), the gradient of the loss on one batch is computed
by reverse mode and by (L(v + eps) - L(v - eps)) / 2 eps, and compared element-wise. L is what
training minimises: the loss plus any kernel_regularizer penalty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from nnctl.core.random import STREAM_GRADCHECK, STREAM_GRADCHECK_SAMPLE, rng_for
from nnctl.diagnostics.numeric import Probe
from nnctl.train.session import load_spec_data


@dataclass(frozen=True)
class GradRow:
    name: str
    kind: str  # "weight" or "node"
    shape: tuple
    checked: int
    total: int
    max_abs_error: float
    max_rel_error: float
    passed: bool


def random_batch(session, size: int, rng=None):
    """Seeded inputs and targets (by output) of the right kind and shape (host float64 arrays, int
    labels), for specs without data; `rng` defaults to the spec seed's gradcheck stream."""
    rng = rng or rng_for(session.spec.seed, STREAM_GRADCHECK)
    model = session.model
    inputs = {name: rng.integers(0, model.id_inputs[name], (size,) + shape).astype(float) if name in model.id_inputs
              else rng.standard_normal((size,) + shape) for name, shape in model.input_shapes.items()}
    return inputs, {head.name: head.targets.random(rng, (size, *head.shape)) for head in session.heads}


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
    """Compare gradients for every trainable weight and every node; returns (rows, loss value, probe)."""
    backend, params = session.backend, session.params
    probe = Probe(session, inputs, targets)
    rng = rng_for(session.spec.seed, STREAM_GRADCHECK_SAMPLE)
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

    for key, grad in params.grad_views.items():
        compare(key, "weight", grad, lambda i, key=key: probe.weight_derivative(key, i, eps), grad.shape)
    for name, node in probe.nodes.items():
        compare(name, "node", probe.node_gradient(name), lambda i, name=name: probe.node_derivative(name, i, eps), node.value.shape)
    return rows, probe.loss, probe

"""Activation functions by name: used by activation layers and by `dense.activation`.

Each has an autograd form (`apply`, on tensors) and a compiled form for the compiled step
(`compile(xp, out, bias=None, **options)` -> (forward(x), vjp(g))), whose forward is
activation(x + bias): dense hands over its bias so that relu adds it in the same pass. relu and
linear run in place over preallocated buffers; on NumPy relu is one compiled loop each way and a
bias alone one loop (nnctl/core/_loops.c, bit-identical to the NumPy passes they replace). The
others call their primitive's forward and VJP directly, the same arithmetic as autograd without
the graph.
"""
from __future__ import annotations

from typing import NamedTuple

from nnctl.core import ops
from nnctl.core.loops import loops_for
from nnctl.options import NO_OPTIONS, Option, integer, number


def _bias_adder(xp, bias):
    """x -> x + bias, in place: x is dense's own pre-activation buffer whenever a bias comes with it."""
    if bias is None:
        return lambda x: x
    loops = loops_for(xp)
    if loops is not None:
        return lambda x: loops.add_bias(x, bias, x)
    return lambda x: xp.add(x, bias, out=x)


def _compile_primitive(primitive):
    def compile(xp, out, bias=None, **options):
        """(forward(x) -> a, vjp(g) -> dL/dx); `out` is unused: the primitive allocates."""
        seen = [None, None]
        add_bias = _bias_adder(xp, bias)

        def forward(x):
            x = add_bias(x)
            seen[0], seen[1] = x, primitive.forward(xp, x, **options)
            return seen[1]

        def vjp(g):
            return primitive.vjps[0](xp, g, seen[1], seen[0], **options)

        return forward, vjp

    return compile


def _compile_relu(xp, out, bias=None):
    """relu(x + bias) into `out` (which may be x itself: dense's pre-activation buffer)."""
    mask = xp.empty(out.shape, dtype=bool)
    input_grad = xp.empty_like(out)
    # NumPy's maximum against a scalar 0 misses its SIMD loop: an array of zeros is 3-4x faster.
    zeros = xp.zeros_like(out)
    add_bias = _bias_adder(xp, bias)

    def numpy_forward(x):
        return xp.maximum(add_bias(x), zeros, out=out)

    def numpy_vjp(g):
        # out > 0 exactly where the pre-activation was > 0, as ops.relu's VJP asks.
        xp.greater(out, 0, out=mask)
        return xp.multiply(g, mask, out=input_grad)

    loops = loops_for(xp)
    if loops is None:
        return numpy_forward, numpy_vjp

    def forward(x):
        try:
            return loops.relu(x, bias, out)
        except ValueError:  # NumPy's refusal of a view that is not contiguous: the passes take any layout
            return numpy_forward(x)

    def vjp(g):
        try:
            return loops.relu_grad(g, out, input_grad)
        except ValueError:  # g is not contiguous (a slice of a merge's gradient)
            return numpy_vjp(g)

    return forward, vjp


def _compile_identity(xp, out, bias=None):
    return _bias_adder(xp, bias), (lambda g: g)


class Activation(NamedTuple):
    apply: object  # (Tensor, **options) -> Tensor
    compile: object  # (xp, out buffer, bias=None, **options) -> (forward(x), vjp(g)) for the compiled step
    options: dict = NO_OPTIONS
    doc: str = ""


def _from_primitive(primitive, doc, options=None) -> Activation:
    return Activation(primitive, _compile_primitive(primitive), options or NO_OPTIONS, doc)


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x: x, _compile_identity, doc="identity"),
    "relu": Activation(ops.relu, _compile_relu, doc="max(x, 0)"),
    "sigmoid": _from_primitive(ops.sigmoid, "1 / (1 + exp(-x))"),
    "tanh": _from_primitive(ops.tanh, "tanh(x)"),
    "softmax": _from_primitive(ops.softmax, "exp(x) / sum(exp(x))", {"axis": Option(integer(), -1, "axis to normalise over")}),
    "leaky_relu": _from_primitive(ops.leaky_relu, "x if x > 0 else alpha * x", {"alpha": Option(number(low=0), 0.2, "slope for x < 0")}),
    "elu": _from_primitive(ops.elu, "x if x > 0 else alpha * (exp(x) - 1)", {"alpha": Option(number(low=0), 1.0, "scale for x < 0")}),
    "gelu": _from_primitive(ops.gelu, "x * Phi(x), tanh approximation"),
    "softplus": _from_primitive(ops.softplus, "log(1 + exp(x))"),
}

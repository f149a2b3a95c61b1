"""Activation functions by name: used by activation layers and by `dense.activation`."""
from __future__ import annotations

from dataclasses import dataclass, field

from nnctl import ops
from nnctl.options import Option, integer, number


@dataclass(frozen=True)
class Activation:
    apply: object  # (Tensor, **options) -> Tensor
    options: dict = field(default_factory=dict)
    doc: str = ""


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x: x, doc="identity"),
    "relu": Activation(ops.relu, doc="max(x, 0)"),
    "sigmoid": Activation(ops.sigmoid, doc="1 / (1 + exp(-x))"),
    "tanh": Activation(ops.tanh, doc="tanh(x)"),
    "softmax": Activation(
        ops.softmax, {"axis": Option(integer(), -1, "axis to normalise over")}, doc="exp(x) / sum(exp(x))"
    ),
    "leaky_relu": Activation(
        ops.leaky_relu, {"alpha": Option(number(low=0), 0.2, "slope for x < 0")}, doc="x if x > 0 else alpha * x"
    ),
    "elu": Activation(
        ops.elu, {"alpha": Option(number(low=0), 1.0, "scale for x < 0")}, doc="x if x > 0 else alpha * (exp(x) - 1)"
    ),
    "gelu": Activation(ops.gelu, doc="x * Phi(x), tanh approximation"),
    "softplus": Activation(ops.softplus, doc="log(1 + exp(x))"),
}

"""ONNX lowerings: the one table `LOWERINGS`, (kind, name) -> the function that writes it as ONNX nodes.

Kinds: "layer" (every type in nnctl.model.layers.LAYERS), "activation" (every function in
nnctl.model.activations.ACTIVATIONS, used by activation layers and `dense.activation`) and
"output" (every loss in nnctl.train.losses.LOSSES: what `predict` shows for the raw output).
Adding a layer type, activation, loss or preprocessing step means one entry here;
tests/test_export.py fails until it has one.

Each lowering writes the same operations in the same order as nnctl's NumPy forward (x @ kernel,
then + bias; elu and softplus from Where, Exp and Log as nnctl.core.ops computes them), so
onnxruntime's results differ from nnctl's by rounding only. A lowering that needs a newer opset
than the one asked for says so through `Graph.require`.
"""
from __future__ import annotations

import math

import numpy

from nnctl.model.activations import ACTIVATIONS
from nnctl.model.layers import LAYERS
from nnctl.train.losses import LOSSES

# onnxruntime runs models of opset 7 and later; every lowering works there unless it requires more.
MIN_OPSET = 7


class Graph:
    """The ONNX graph being written: nodes, initializers (the weights, in the model's dtype) and
    fresh tensor names; `where` is what is being lowered, for `require`'s shortfalls."""

    def __init__(self, helper, numpy_helper, dtype: str, opset: int):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.dtype = numpy.dtype(dtype)
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.shortfalls = []  # (where, opset needed, why)
        self.where = None
        self._taken = set()

    def name(self, hint: str) -> str:
        name, n = hint, 0
        while name in self._taken:
            n += 1
            name = f"{hint}_{n}"
        self._taken.add(name)
        return name

    def op(self, op_type: str, inputs: list, hint: str, **attributes) -> str:
        """One node of `op_type` and the name of its (only) output."""
        output = self.name(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output

    def constant(self, value, hint: str) -> str:
        """An initializer holding `value` in the model's dtype (a weight, or a scalar of a formula)."""
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(numpy.asarray(value, dtype=self.dtype), name))
        return name

    def require(self, opset: int, why: str) -> None:
        if self.opset < opset:
            self.shortfalls.append((self.where, opset, why))


# --- activations: (graph, x, rank with the batch axis, hint, **options) -> output name ---------------
def _identity(g, x, rank, hint):
    return x


def _unary(op_type):
    def lower(g, x, rank, hint):
        return g.op(op_type, [x], hint)

    return lower


def _softmax(g, x, rank, hint, axis=-1):
    axis %= rank
    # Before opset 13 Softmax flattens the array to 2-D at `axis`: per-row softmax only for the last axis.
    if axis != rank - 1:
        g.require(13, f"softmax over axis {axis} of a {rank}-D array, not its last")
    return g.op("Softmax", [x], hint, axis=axis)


def _leaky_relu(g, x, rank, hint, alpha=0.2):
    # ops.leaky_relu: where(a > 0, a, a * alpha), alpha in the model's dtype (LeakyRelu's alpha
    # attribute is a float32: 0.2 off by 1.5e-8 relative in a float64 model).
    scaled = g.op("Mul", [x, g.constant(alpha, f"{hint}/alpha")], f"{hint}/scaled")
    return g.op("Where", [_positive(g, x, hint, "leaky_relu"), x, scaled], hint)


def _positive(g, x, hint, what):
    g.require(9, f"{what}, written with Where")
    return g.op("Greater", [x, g.constant(0, f"{hint}/zero")], f"{hint}/positive")


def _elu(g, x, rank, hint, alpha=1.0):
    # ops.elu: where(a > 0, a, alpha * expm1(min(a, 0))); ONNX has no expm1, exp(.) - 1 is within an ulp of 1.
    # (onnxruntime has no float64 Elu.)
    negative = g.op("Min", [x, g.constant(0, f"{hint}/zero")], f"{hint}/negative")
    expm1 = g.op("Sub", [g.op("Exp", [negative], f"{hint}/exp"), g.constant(1, f"{hint}/one")], f"{hint}/expm1")
    scaled = g.op("Mul", [g.constant(alpha, f"{hint}/alpha"), expm1], f"{hint}/scaled")
    return g.op("Where", [_positive(g, x, hint, "elu"), x, scaled], hint)


def _softplus(g, x, rank, hint):
    # ops.softplus is logaddexp(a, 0) = max(a, 0) + log1p(exp(-|a|)): finite for any a, where
    # onnxruntime's Softplus has no float64 kernel.
    g.require(9, "softplus, written with Where")
    tail = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], f"{hint}/abs")], f"{hint}/neg")], f"{hint}/exp")
    log1p = g.op("Log", [g.op("Add", [g.constant(1, f"{hint}/one"), tail], f"{hint}/1p")], f"{hint}/log1p")
    return g.op("Add", [g.op("Relu", [x], f"{hint}/relu"), log1p], hint)


def _gelu(g, x, rank, hint):
    # ops.gelu, operation for operation: 0.5 * a * (1 + tanh(c * (a + 0.044715 * a**3))).
    cube = g.op("Pow", [x, g.constant(3, f"{hint}/three")], f"{hint}/cube")
    inner = g.op("Add", [x, g.op("Mul", [g.constant(0.044715, f"{hint}/k"), cube], f"{hint}/kcube")], f"{hint}/sum")
    tanh = g.op("Tanh", [g.op("Mul", [g.constant(math.sqrt(2 / math.pi), f"{hint}/c"), inner], f"{hint}/scaled")], f"{hint}/tanh")
    half = g.op("Mul", [g.constant(0.5, f"{hint}/half"), x], f"{hint}/half_x")
    return g.op("Mul", [half, g.op("Add", [g.constant(1, f"{hint}/one"), tanh], f"{hint}/1p")], hint)


_ACTIVATIONS = {
    "linear": _identity,
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "softmax": _softmax,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "gelu": _gelu,
    "softplus": _softplus,
}


def activate(g, choice, x, rank, hint):
    """Activation `choice` (a Choice: name and options) applied to tensor `x`."""
    return LOWERINGS["activation", choice.name](g, x, rank, hint, **choice.options)


# --- layers: (graph, layer, input names, {param: host array}) -> output name -------------------------
def _dense(g, layer, inputs, weights):
    z = g.op("MatMul", [inputs[0], g.constant(weights["kernel"], f"{layer.name}/kernel")], f"{layer.name}/matmul")
    if "bias" in weights:
        z = g.op("Add", [z, g.constant(weights["bias"], f"{layer.name}/bias")], f"{layer.name}/preactivation")
    return activate(g, layer.config["activation"], z, 2, layer.name)


def _concat(g, layer, inputs, weights):
    return g.op("Concat", inputs, layer.name, axis=layer.config["axis"] % len(layer.output_shape) + 1)


def _add(g, layer, inputs, weights):
    total = inputs[0]  # ((a + b) + c): nnctl's order of additions
    for i, x in enumerate(inputs[1:]):
        total = g.op("Add", [total, x], layer.name if i == len(inputs) - 2 else f"{layer.name}/sum")
    return total


def _dropout(g, layer, inputs, weights):
    return inputs[0]  # the identity in inference


def _activation_layer(g, layer, inputs, weights):
    return LOWERINGS["activation", layer.type_name](g, inputs[0], len(layer.output_shape) + 1, layer.name, **layer.config)


# --- outputs: (graph, loss, raw output, rank) -> what predict shows (Loss.probabilities) -------------
def _raw(g, loss, x, rank):
    return x


def _sigmoid_of_logits(g, loss, x, rank):
    return g.op("Sigmoid", [x], "probabilities") if loss.config["from_logits"] else x


def _softmax_of_logits(g, loss, x, rank):
    return _softmax(g, x, rank, "probabilities") if loss.config["from_logits"] else x


LOWERINGS: dict[tuple[str, str], object] = {
    ("layer", "dense"): _dense,
    ("layer", "concat"): _concat,
    ("layer", "add"): _add,
    ("layer", "dropout"): _dropout,
    **{("layer", name): _activation_layer for name in ACTIVATIONS},
    **{("activation", name): lower for name, lower in _ACTIVATIONS.items()},
    ("output", "mse"): _raw,
    ("output", "mae"): _raw,
    ("output", "huber"): _raw,
    ("output", "half_squared_error"): _raw,
    ("output", "binary_crossentropy"): _sigmoid_of_logits,
    ("output", "categorical_crossentropy"): _softmax_of_logits,
    ("output", "sparse_categorical_crossentropy"): _softmax_of_logits,
}

REGISTRIES = {"layer": LAYERS, "activation": ACTIVATIONS, "output": LOSSES}
"""What each kind of lowering covers: every entry of these registries needs one."""


def missing_lowerings() -> list[str]:
    """'kind name' for every registry entry with no lowering (empty when the table is complete)."""
    return [f"{kind} {name}" for kind, registry in REGISTRIES.items() for name in registry if (kind, name) not in LOWERINGS]

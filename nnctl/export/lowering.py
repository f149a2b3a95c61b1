"""ONNX lowerings: the one table `LOWERINGS`, (kind, name) -> the function that writes it as ONNX nodes.

Kinds: "layer" (every type in nnctl.model.layers.LAYERS), "activation" (every function in
nnctl.model.activations.ACTIVATIONS, used by activation layers and `dense.activation`),
"output" (every loss in nnctl.train.losses.LOSSES: what `predict` shows for the raw output) and
"column" (every kind of fitted column in nnctl.data.preprocessing: a raw column's input to the
model's, computed in float64 as nnctl does and cast to the model's dtype last).
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

from nnctl.data.column_options import KINDS
from nnctl.model.activations import ACTIVATIONS
from nnctl.model.layers import LAYERS
from nnctl.train.losses import LOSSES

# onnxruntime runs models of opset 7 and later; every lowering works there unless it requires more.
MIN_OPSET = 7
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder with string keys: ai.onnx.ml 2


class Graph:
    """The ONNX graph being written: nodes, initializers (the weights, in the model's dtype) and
    fresh tensor names; `where` is what is being lowered, for `require`'s shortfalls."""

    def __init__(self, helper, numpy_helper, dtype: str, opset: int):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.dtype = numpy.dtype(dtype)
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.ml = False  # whether an ai.onnx.ml operator was written
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

    def op(self, op_type: str, inputs: list, hint: str, domain: str | None = None, **attributes) -> str:
        """One node of `op_type` and the name of its (only) output."""
        output = self.name(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], name=output, domain=domain, **attributes))
        self.ml = self.ml or domain == ML_DOMAIN
        return output

    def cast(self, x, dtype, hint: str) -> str:
        return self.op("Cast", [x], hint, to=self.helper.np_dtype_to_tensor_dtype(numpy.dtype(dtype)))

    def constant(self, value, hint: str, dtype=None) -> str:
        """An initializer holding `value` in the model's dtype, or in `dtype` (int64 shapes and axes,
        float64 preprocessing, str class names)."""
        name = self.name(hint)
        array = numpy.asarray(value, dtype=self.dtype if dtype is None else dtype)
        if array.dtype.kind == "U":  # onnx writes text from an object array
            array = array.astype(object)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def ints(self, values, hint: str) -> str:
        return self.constant(list(values), hint, numpy.int64)

    def reduce_sum(self, x, axes, hint: str) -> str:
        """Sums over `axes`, dims kept (ReduceSum's axes became an input at opset 13)."""
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.ints(axes, f"{hint}/axes")], hint, keepdims=1)
        return self.op("ReduceSum", [x], hint, axes=list(axes), keepdims=1)

    def reshape(self, x, sample_shape, hint: str) -> str:
        """`x` as (batch, *sample_shape); Reshape's 0 keeps the (symbolic) batch size."""
        return self.op("Reshape", [x, self.ints([0, *sample_shape], f"{hint}/shape")], hint)

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


def _fold(op_type, last=None):
    """Inputs merged element by element: ((a op b) op c), nnctl's order; `last` (a function of the
    graph, the fold's output, the count and the hint) finishes it."""
    def lower(g, layer, inputs, weights):
        total = inputs[0]
        for i, x in enumerate(inputs[1:]):
            final = i == len(inputs) - 2 and last is None
            total = g.op(op_type, [total, x], layer.name if final else f"{layer.name}/{op_type.lower()}")
        return total if last is None else last(g, total, len(inputs), layer.name)

    return lower


def _mean_of_sum(g, total, count, hint):
    # Average.compile: the sum times 1 / n (a product, as nnctl rounds it)
    return g.op("Mul", [total, g.constant(1 / count, f"{hint}/share")], hint)


def _extreme(op_type):
    def lower(g, layer, inputs, weights):
        return g.op(op_type, inputs, layer.name)

    return lower


def _l2_normalize(g, x, axis, hint):
    # ops.l2_normalize: a / sqrt(max(sum(a * a), 1e-12)) over the axis
    squares = g.reduce_sum(g.op("Mul", [x, x], f"{hint}/square"), [axis], f"{hint}/sum")
    floored = g.op("Max", [squares, g.constant(1e-12, f"{hint}/floor")], f"{hint}/floored")
    return g.op("Div", [x, g.op("Sqrt", [floored], f"{hint}/norm")], hint)


def _dot(g, layer, inputs, weights):
    # ops.batch_dot: a's axis moved last and b's to 1, both as 3-D, one batched MatMul, reshaped.
    (a, b), (axis_a, axis_b) = inputs, layer._axes
    rank_a, rank_b = len(layer.input_shapes[0]) + 1, len(layer.input_shapes[1]) + 1
    if layer.config["normalize"]:
        a = _l2_normalize(g, a, axis_a, f"{layer.name}/a_normalized")
        b = _l2_normalize(g, b, axis_b, f"{layer.name}/b_normalized")
    size = layer.input_shapes[0][axis_a - 1]
    perm_a = [0, *(i for i in range(1, rank_a) if i != axis_a), axis_a]
    perm_b = [0, axis_b, *(i for i in range(1, rank_b) if i != axis_b)]
    left = g.reshape(g.op("Transpose", [a], f"{layer.name}/a_moved", perm=perm_a), [-1, size], f"{layer.name}/left")
    right = g.reshape(g.op("Transpose", [b], f"{layer.name}/b_moved", perm=perm_b), [size, -1], f"{layer.name}/right")
    return g.reshape(g.op("MatMul", [left, right], f"{layer.name}/matmul"), layer.output_shape, layer.name)


def _affine(g, layer, z, weights, shape):
    """gamma * z + beta, the 1-D weights reshaped to broadcast as `shape`."""
    if "gamma" in weights:
        z = g.op("Mul", [z, g.constant(weights["gamma"].reshape(shape), f"{layer.name}/gamma")], f"{layer.name}/scaled")
    if "beta" in weights:
        z = g.op("Add", [z, g.constant(weights["beta"].reshape(shape), f"{layer.name}/beta")], f"{layer.name}/shifted")
    return z


def _batch_normalization(g, layer, inputs, weights):
    # Inference: (x - moving_mean) * (gamma / sqrt(moving_variance + epsilon)) + beta, the factor
    # folded into one constant (computed in float64) and the centring kept first: x * factor +
    # (beta - mean * factor) would cancel digits when the mean is large against the spread.
    variance = weights["moving_variance"].astype(numpy.float64)
    factor = 1 / numpy.sqrt(variance + layer.config["epsilon"])
    if "gamma" in weights:
        factor = factor * weights["gamma"].astype(numpy.float64)
    centred = g.op("Sub", [inputs[0], g.constant(weights["moving_mean"], f"{layer.name}/moving_mean")], f"{layer.name}/centred")
    z = g.op("Mul", [centred, g.constant(factor, f"{layer.name}/factor")], f"{layer.name}/scaled")
    if "beta" in weights:
        z = g.op("Add", [z, g.constant(weights["beta"], f"{layer.name}/beta")], f"{layer.name}/shifted")
    return z


def _layer_normalization(g, layer, inputs, weights):
    # LayerNormalization.compile's operations: mean = sum / n, centred, var = sum(c * c) / n,
    # times 1 / sqrt(var + epsilon); then gamma and beta. (ONNX's LayerNormalization needs opset
    # 17 and computes in its own order.)
    x, axis, hint = inputs[0], layer._axis, layer.name
    count = g.constant(layer.input_shapes[0][axis - 1], f"{hint}/count")
    mean = g.op("Div", [g.reduce_sum(x, [axis], f"{hint}/sum"), count], f"{hint}/mean")
    centred = g.op("Sub", [x, mean], f"{hint}/centred")
    square = g.op("Mul", [centred, centred], f"{hint}/square")
    variance = g.op("Div", [g.reduce_sum(square, [axis], f"{hint}/square_sum"), count], f"{hint}/variance")
    std = g.op("Sqrt", [g.op("Add", [variance, g.constant(layer.config["epsilon"], f"{hint}/epsilon")], f"{hint}/variance_eps")], f"{hint}/std")
    inverse = g.op("Div", [g.constant(1, f"{hint}/one"), std], f"{hint}/inverse")
    z = g.op("Mul", [centred, inverse], f"{hint}/standardized")
    return _affine(g, layer, z, weights, layer._broadcast()[1:])


def _rearrange(g, layer, inputs, weights):
    return g.reshape(inputs[0], layer.output_shape, layer.name)


def _embedding(g, layer, inputs, weights):
    # The ids are floats of integer value (checked by nnctl, not here): truncation is exact.
    ids = g.cast(inputs[0], numpy.int64, f"{layer.name}/ids")
    return g.op("Gather", [g.constant(weights["embeddings"], f"{layer.name}/embeddings"), ids], layer.name, axis=0)


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


# --- columns: (graph, fitted column, raw input (batch, 1), hint) -> (batch, width) in the model's dtype --
# A raw numeric column is float64 with NaN where missing; a text column (category or binary,
# numbers written as nnctl.data.preprocessing writes their tokens: 3, 1.5) a string with "" where
# missing. What nnctl refuses (a missing cell under `missing: error` or `drop`, an unknown value
# under `unknown: error` or in a binary column) cannot raise in ONNX: see each lowering.
def _numeric_column(g, column, x, hint):
    # Numeric.transform: fill, then (x - center) / scale, a Sub then a Div (not a product by the
    # reciprocal: onnxruntime #4130), in float64. Without a fill value a NaN stays NaN.
    if column.fill is not None:
        g.require(9, "filling missing numbers, written with IsNaN and Where")
        x = g.op("Where", [g.op("IsNaN", [x], f"{hint}/missing"), g.constant(column.fill, f"{hint}/fill", numpy.float64), x], f"{hint}/filled")
    centred = g.op("Sub", [x, g.constant(column.center, f"{hint}/center", numpy.float64)], f"{hint}/centred")
    return g.cast(g.op("Div", [centred, g.constant(column.scale, f"{hint}/scale", numpy.float64)], f"{hint}/scaled"), g.dtype, hint)


def _label_encoder(g, x, codes: dict, fill, default: int, hint):
    """Each token's code (int64), "" (missing) as `fill`'s code, anything else `default`."""
    if fill is not None:
        codes = {**codes, "": codes.get(fill, default)}
    return g.op("LabelEncoder", [x], hint, domain=ML_DOMAIN, keys_strings=list(codes), values_int64s=list(codes.values()),
                default_int64=default)


def _category_column(g, column, x, hint):
    # Category.transform: an unknown token's index is len(vocabulary): its bucket column, or all
    # zeros in one_hot (unknown: ignore, and unknown: error, which cannot raise in ONNX); encode:
    # index passes that index on (an embedding's Gather then refuses it as out of range).
    size = len(column.vocabulary)
    index = _label_encoder(g, x, {token: i for i, token in enumerate(column.vocabulary)}, column.fill, size, f"{hint}/index")
    if column.encode == "index":
        return g.cast(index, g.dtype, hint)
    hot = g.op("Equal", [index, g.ints(range(column.width), f"{hint}/positions")], f"{hint}/one_hot")
    return g.cast(hot, g.dtype, hint)


def _binary_column(g, column, x, hint):
    # Binary.transform: 1 for the second value, 0 for the first; a third value (an error in nnctl)
    # is 0 here.
    negative, positive = column.values
    return g.cast(_label_encoder(g, x, {negative: 0, positive: 1}, column.fill, 0, f"{hint}/code"), g.dtype, hint)


LOWERINGS: dict[tuple[str, str], object] = {
    ("layer", "dense"): _dense,
    ("layer", "concat"): _concat,
    ("layer", "add"): _fold("Add"),
    ("layer", "dropout"): _dropout,
    ("layer", "multiply"): _fold("Mul"),
    ("layer", "subtract"): _fold("Sub"),
    ("layer", "average"): _fold("Add", _mean_of_sum),
    ("layer", "maximum"): _extreme("Max"),
    ("layer", "minimum"): _extreme("Min"),
    ("layer", "dot"): _dot,
    ("layer", "batch_normalization"): _batch_normalization,
    ("layer", "layer_normalization"): _layer_normalization,
    ("layer", "reshape"): _rearrange,
    ("layer", "flatten"): _rearrange,
    ("layer", "embedding"): _embedding,
    **{("layer", name): _activation_layer for name in ACTIVATIONS},
    **{("activation", name): lower for name, lower in _ACTIVATIONS.items()},
    ("column", "numeric"): _numeric_column,
    ("column", "category"): _category_column,
    ("column", "binary"): _binary_column,
    ("output", "mse"): _raw,
    ("output", "mae"): _raw,
    ("output", "huber"): _raw,
    ("output", "half_squared_error"): _raw,
    ("output", "binary_crossentropy"): _sigmoid_of_logits,
    ("output", "categorical_crossentropy"): _softmax_of_logits,
    ("output", "sparse_categorical_crossentropy"): _softmax_of_logits,
}

REGISTRIES = {"layer": LAYERS, "activation": ACTIVATIONS, "output": LOSSES, "column": [k for k in KINDS if k != "auto"]}
"""What each kind of lowering covers: every entry of these registries needs one."""


def missing_lowerings() -> list[str]:
    """'kind name' for every registry entry with no lowering (empty when the table is complete)."""
    return [f"{kind} {name}" for kind, registry in REGISTRIES.items() for name in registry if (kind, name) not in LOWERINGS]

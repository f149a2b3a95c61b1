"""Layer types: the registry `LAYERS`, type name -> class.

A layer declares its options, infers its per-sample output shape from its inputs' shapes (before
any data exists), declares its weights, and computes its output from primitives. Adding a layer
type means one class here and one entry in `LAYERS`.

`call` computes with autograd primitives (gradcheck and explain use it); `kernel` optionally
compiles the layer for nnctl.train.step's step (training, evaluation, prediction): a forward and a
backward closure over buffers allocated once per batch size. A layer without one runs `call`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nnctl.core import ops
from nnctl.model.activations import ACTIVATIONS
from nnctl.model.initializers import INITIALIZERS
from nnctl.options import Option, Section, Typed, boolean, integer, number

# Keras' L1L2 regularizer: l1 * sum(|w|) + l2 * sum(w^2), added to the loss.
REGULARIZER = Section({
    "l1": Option(number(low=0), 0.0, "factor of the sum of absolute values"),
    "l2": Option(number(low=0), 0.0, "factor of the sum of squares"),
}, "kernel_regularizer")


class ShapeConflict(Exception):
    """The inputs' shapes do not fit this layer; the message says expected and received."""


@dataclass(frozen=True)
class WeightSpec:
    name: str  # "kernel", "bias"
    shape: tuple
    initializer: tuple  # (registry name, options)
    fan_in: int
    fan_out: int


def _shape_text(shape) -> str:
    return "(None, " + ", ".join(str(n) for n in shape) + ")"


class Layer:
    keras_name = "Layer"
    options: dict = {}
    many_inputs = False  # True: `from` is a list of two or more names

    def __init__(self, name: str, type_name: str, config: dict):
        self.name = name
        self.type_name = type_name
        self.config = config
        self.input_shapes = self.output_shape = None
        self.weights: list[WeightSpec] = []

    def build(self, input_shapes: list[tuple]) -> tuple:
        self.input_shapes = input_shapes
        self.output_shape = self.infer_shape(input_shapes)
        return self.output_shape

    def infer_shape(self, input_shapes):
        return input_shapes[0]

    def call(self, inputs, weights, ctx):
        raise NotImplementedError

    def kernel(self, xp, batch: int, dtype, weights: dict, grads: dict, needs_grad: list):
        """(forward, backward) for batches of `batch` samples, or None to train through `call`.

        forward(*input_arrays) -> output array. backward(g) -> one gradient per input (None where
        `needs_grad` is false) and writes dL/d(weight) into `grads[name]` (views into the flat
        gradient buffer): each weight belongs to one layer, so it is assigned, not accumulated.
        Neither may write into arrays it was given: an upstream gradient can be shared.
        """
        return None

    def penalty(self, weights):
        """The regularization term this layer adds to the loss (a scalar tensor), or None."""
        return None


def regularization(config: dict | None, weight):
    """l1 * sum(|w|) + l2 * sum(w^2) as a scalar tensor, or None when both factors are 0."""
    if not config:
        return None
    terms = []
    if config["l1"]:
        terms.append(ops.multiply(ops.reduce_sum(ops.absolute(weight)), config["l1"]))
    if config["l2"]:
        terms.append(ops.multiply(ops.reduce_sum(ops.square(weight)), config["l2"]))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else ops.add(terms[0], terms[1])


class Dense(Layer):
    keras_name = "Dense"
    options = {
        "units": Option(integer(1), doc="output size"),
        "activation": Option(Typed(lambda: ACTIVATIONS, "activation"), "linear", "applied after x @ kernel + bias"),
        "use_bias": Option(boolean, True, "add a bias vector"),
        "kernel_initializer": Option(Typed(lambda: INITIALIZERS, "initializer"), "glorot_uniform"),
        "bias_initializer": Option(Typed(lambda: INITIALIZERS, "initializer"), "zeros"),
        "kernel_regularizer": Option(REGULARIZER, None, "{l1, l2}: penalty on the kernel added to the loss (null: none)"),
    }

    def infer_shape(self, input_shapes):
        (shape,) = input_shapes
        if len(shape) != 1:
            raise ShapeConflict(f"expected a 1-D input (None, features), received {_shape_text(shape)}")
        units = self.config["units"]
        self.weights = [WeightSpec("kernel", (shape[0], units), self.config["kernel_initializer"], shape[0], units)]
        if self.config["use_bias"]:
            # Keras takes a 1-D weight's fans from its own length.
            self.weights.append(WeightSpec("bias", (units,), self.config["bias_initializer"], units, units))
        return (units,)

    def call(self, inputs, weights, ctx):
        (x,) = inputs
        if "bias" in weights:
            z = ops.linear(x, weights["kernel"], weights["bias"])
        else:
            z = ops.matmul(x, weights["kernel"])
        name, options = self.config["activation"]
        if name == "linear":
            return z
        z = ctx.tap(f"{self.name}/preactivation", z)
        return ACTIVATIONS[name].apply(z, **options)

    def kernel(self, xp, batch, dtype, weights, grads, needs_grad):
        kernel, bias = weights["kernel"], weights.get("bias")
        kernel_grad, bias_grad = grads["kernel"], grads.get("bias")
        z = xp.empty((batch, self.config["units"]), dtype=dtype)
        # dL/dx only when something upstream learns: never for the layer that reads the data.
        input_grad = xp.empty((batch, kernel.shape[0]), dtype=dtype) if needs_grad[0] else None
        ones = xp.ones(batch, dtype=dtype)  # dL/dbias = ones @ dz: a BLAS GEMV beats a column sum
        name, options = self.config["activation"]
        activate, activation_vjp = ACTIVATIONS[name].kernel(xp, z, **options)
        seen = [None]

        def forward(x):
            seen[0] = x
            xp.matmul(x, kernel, out=z)
            if bias is not None:
                xp.add(z, bias, out=z)
            return activate(z)

        def backward(g):
            dz = activation_vjp(g)
            xp.matmul(seen[0].T, dz, out=kernel_grad)
            if bias_grad is not None:
                xp.matmul(ones, dz, out=bias_grad)
            return (None if input_grad is None else xp.matmul(dz, kernel.T, out=input_grad),)

        return forward, backward

    def penalty(self, weights):
        return regularization(self.config.get("kernel_regularizer"), weights["kernel"])


class Concatenate(Layer):
    keras_name = "Concatenate"
    many_inputs = True
    options = {"axis": Option(integer(), -1, "per-sample axis to join along (-1: the last)")}

    def infer_shape(self, input_shapes):
        rank = len(input_shapes[0])
        axis = self.config["axis"]
        if not -rank <= axis < rank:
            raise ShapeConflict(f"expected an axis in [-{rank}, {rank - 1}], received {axis}")
        axis %= rank
        first = input_shapes[0]
        for shape in input_shapes[1:]:
            if len(shape) != rank or any(a != b for i, (a, b) in enumerate(zip(first, shape)) if i != axis):
                shapes = ", ".join(_shape_text(s) for s in input_shapes)
                raise ShapeConflict(f"expected shapes equal except on axis {axis}, received {shapes}")
        return tuple(sum(s[axis] for s in input_shapes) if i == axis else n for i, n in enumerate(first))

    def call(self, inputs, weights, ctx):
        return ops.concat(*inputs, axis=self._batch_axis())

    def _batch_axis(self) -> int:
        """The axis in (batch, *per-sample) arrays."""
        axis = self.config["axis"]
        return axis if axis < 0 else axis + 1

    def kernel(self, xp, batch, dtype, weights, grads, needs_grad):
        axis = self._batch_axis()
        out = xp.empty((batch, *self.output_shape), dtype=dtype)
        pieces, start = [], 0
        for shape, needed in zip(self.input_shapes, needs_grad):
            width = shape[self.config["axis"]]  # a per-sample axis
            index = [slice(None)] * out.ndim
            index[axis] = slice(start, start + width)
            pieces.append(tuple(index) if needed else None)
            start += width

        def forward(*parts):
            return xp.concatenate(parts, axis=axis, out=out)

        def backward(g):
            return tuple(None if index is None else g[index] for index in pieces)

        return forward, backward


class Add(Layer):
    keras_name = "Add"
    many_inputs = True

    def infer_shape(self, input_shapes):
        if any(s != input_shapes[0] for s in input_shapes):
            shapes = ", ".join(_shape_text(s) for s in input_shapes)
            raise ShapeConflict(f"expected inputs of one shape, received {shapes}")
        return input_shapes[0]

    def call(self, inputs, weights, ctx):
        total = inputs[0]
        for x in inputs[1:]:
            total = ops.add(total, x)
        return total

    def kernel(self, xp, batch, dtype, weights, grads, needs_grad):
        out = xp.empty((batch, *self.output_shape), dtype=dtype)

        def forward(first, *rest):
            xp.add(first, rest[0], out=out)
            for x in rest[1:]:
                xp.add(out, x, out=out)
            return out

        def backward(g):
            return tuple(g if needed else None for needed in needs_grad)

        return forward, backward


class Dropout(Layer):
    keras_name = "Dropout"
    options = {"rate": Option(number(0, 1, high_open=True), doc="fraction of inputs zeroed in training")}

    def call(self, inputs, weights, ctx):
        (x,) = inputs
        rate = self.config["rate"]
        if not ctx.training or rate == 0:
            return x
        keep = ctx.dropout_rng.random(x.shape) >= rate
        scale = ctx.backend.asarray(keep / (1 - rate), dtype=x.dtype)
        return ops.multiply(x, scale)


class ActivationLayer(Layer):
    def call(self, inputs, weights, ctx):
        return ACTIVATIONS[self.type_name].apply(inputs[0], **self.config)

    def kernel(self, xp, batch, dtype, weights, grads, needs_grad):
        # Its own output buffer: the input belongs to another layer, which may need it intact.
        forward, vjp = ACTIVATIONS[self.type_name].kernel(xp, xp.empty((batch, *self.output_shape), dtype=dtype), **self.config)
        return forward, (lambda g: (vjp(g) if needs_grad[0] else None,))


_ACTIVATION_KERAS_NAMES = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "elu": "ELU", "softmax": "Softmax"}


def _activation_layer(name: str):
    return type(
        f"{name.title().replace('_', '')}Layer",
        (ActivationLayer,),
        {"keras_name": _ACTIVATION_KERAS_NAMES.get(name, "Activation"), "options": ACTIVATIONS[name].options},
    )


LAYERS: dict[str, type[Layer]] = {
    "dense": Dense,
    "concat": Concatenate,
    "add": Add,
    "dropout": Dropout,
    **{name: _activation_layer(name) for name in ACTIVATIONS},
}


def count_params(layer: Layer) -> int:
    return sum(math.prod(w.shape) for w in layer.weights)

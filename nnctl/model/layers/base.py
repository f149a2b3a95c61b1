"""What every layer is: options, shape inference, declared weights, an autograd `call` and an
optional compiled form.

A layer declares its options, infers its per-sample output shape from its inputs' shapes (before
any data exists), declares its weights (trainable, or non-trainable state such as moving
statistics), and computes its output from primitives in `call` (gradcheck and explain use it).
`compile` optionally lowers the layer for the compiled step (nnctl.train.step): a forward and a
backward closure over buffers allocated once per batch size. A layer without one runs `call`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from nnctl.core import ops
from nnctl.options import Choice, Option, Section, number

# Keras' L1L2 regularizer: l1 * sum(|w|) + l2 * sum(w^2), added to the loss.
REGULARIZER = Section({
    "l1": Option(number(low=0), 0.0, "factor of the sum of absolute values"),
    "l2": Option(number(low=0), 0.0, "factor of the sum of squares"),
}, "kernel_regularizer")


class ShapeConflict(Exception):
    """The inputs' shapes do not fit this layer; the message says expected and received."""


class WeightSpec(NamedTuple):
    name: str  # "kernel", "bias", "moving_mean"
    shape: tuple
    initializer: Choice
    fan_in: int
    fan_out: int
    # False for state the optimizer never steps (moving statistics, adapted preprocessing):
    # saved, loaded and checkpointed with the rest, never regularized or gradient-checked.
    trainable: bool = True


class Layer:
    keras_name = "Layer"
    options: dict = {}
    many_inputs = False  # True: `from` is a list of two or more names

    def id_range(self) -> int | None:
        """n when the layer reads ids 0 .. n - 1 (an embedding), not numbers: an input that feeds it
        has no gradient, random batches draw ids for it and finite differences leave it alone."""
        return None

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

    def compile(self, xp, batch: int, dtype, weights: dict, grads: dict, needs_grad: list):
        """(forward, backward) for batches of `batch` samples, or None to train through `call`.

        forward(ctx, *input_arrays) -> output array; `ctx` is the call's ForwardContext
        (training or inference, the dropout generator). backward(g) -> one gradient per input
        (None where `needs_grad` is false) and writes dL/d(weight) into `grads[name]` (views into
        the flat gradient buffer; trainable weights only): each weight belongs to one layer, so it
        is assigned, not accumulated. `weights` holds every weight's view, non-trainable ones
        included (a forward in training may update those in place). Neither closure may write
        into arrays it was given: an upstream gradient can be shared.
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


def count_params(layer: Layer, trainable: bool | None = None) -> int:
    """The layer's weight values: all of them, or only the trainable (or non-trainable) ones."""
    return sum(math.prod(w.shape) for w in layer.weights if trainable is None or w.trainable == trainable)

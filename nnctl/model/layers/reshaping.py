"""Shape layers: Keras' Reshape and Flatten. The values are the input's, rearranged per sample."""
from __future__ import annotations

import math

from nnctl.core import ops
from nnctl.errors import shape_text
from nnctl.model.layers.base import Layer, ShapeConflict
from nnctl.options import Check, Option

_TARGET_SHAPE = Check(
    "a list of positive integers, one of them may be -1 (inferred)",
    lambda v: isinstance(v, list) and len(v) > 0
    and all(isinstance(n, int) and not isinstance(n, bool) and (n >= 1 or n == -1) for n in v)
    and sum(n == -1 for n in v) <= 1,
    {"type": "array", "items": {"type": "integer"}, "minItems": 1},
)


class _Rearrange(Layer):
    def call(self, inputs, weights, ctx):
        x = inputs[0]
        return ops.reshape(x, shape=(x.shape[0], *self.output_shape))

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        # Views: neither closure writes into them, and their consumers never write into inputs.
        out_shape, in_shape = (batch, *self.output_shape), (batch, *self.input_shapes[0])
        return (lambda ctx, x: x.reshape(out_shape)), (lambda g: (g.reshape(in_shape) if needs_grad[0] else None,))


class Reshape(_Rearrange):
    keras_name = "Reshape"
    options = {"target_shape": Option(_TARGET_SHAPE, doc="the per-sample shape (no batch axis), as Keras' target_shape")}

    def infer_shape(self, input_shapes):
        (shape,) = input_shapes
        target, size = self.config["target_shape"], math.prod(shape)
        known = math.prod(n for n in target if n != -1)
        if -1 in target:
            if size % known:
                raise ShapeConflict(f"expected a target_shape whose known sizes divide the input's {size} values, received {list(target)} for input {shape_text(shape)}")
            target = [size // known if n == -1 else n for n in target]
        if math.prod(target) != size:
            raise ShapeConflict(
                f"expected a target_shape of {size} values like input {shape_text(shape)}, received {list(self.config['target_shape'])} ({math.prod(target)} values)")
        return tuple(target)


class Flatten(_Rearrange):
    keras_name = "Flatten"

    def infer_shape(self, input_shapes):
        return (math.prod(input_shapes[0]),)

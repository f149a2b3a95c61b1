"""Merging layers: several inputs joined into one (Keras' Concatenate, Add, Subtract, Multiply,
Average, Maximum, Minimum and Dot)."""
from __future__ import annotations

import functools

from nnctl.core import ops
from nnctl.errors import shape_text
from nnctl.model.layers.base import Layer, ShapeConflict
from nnctl.options import Check, Option, boolean, integer


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
                shapes = ", ".join(shape_text(s) for s in input_shapes)
                raise ShapeConflict(f"expected shapes equal except on axis {axis}, received {shapes}")
        return tuple(sum(s[axis] for s in input_shapes) if i == axis else n for i, n in enumerate(first))

    def call(self, inputs, weights, ctx):
        return ops.concat(*inputs, axis=self._batch_axis())

    def _batch_axis(self) -> int:
        """The axis in (batch, *per-sample) arrays."""
        axis = self.config["axis"]
        return axis if axis < 0 else axis + 1

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        axis = self._batch_axis()
        out = xp.empty((batch, *self.output_shape), dtype=dtype)
        pieces, start = [], 0
        for shape, needed in zip(self.input_shapes, needs_grad):
            width = shape[self.config["axis"]]  # a per-sample axis
            index = [slice(None)] * out.ndim
            index[axis] = slice(start, start + width)
            pieces.append(tuple(index) if needed else None)
            start += width

        def forward(ctx, *parts):
            return xp.concatenate(parts, axis=axis, out=out)

        def backward(g):
            return tuple(None if index is None else g[index] for index in pieces)

        return forward, backward


class _SameShape(Layer):
    """A merge of inputs of one shape, element by element: `primitive` folded over them."""

    many_inputs = True
    primitive = None  # a binary primitive of nnctl.core.ops

    def call(self, inputs, weights, ctx):
        return functools.reduce(self.primitive, inputs)

    def infer_shape(self, input_shapes):
        if any(s != input_shapes[0] for s in input_shapes):
            shapes = ", ".join(shape_text(s) for s in input_shapes)
            raise ShapeConflict(f"expected inputs of one shape, received {shapes}")
        return input_shapes[0]


class Add(_SameShape):
    keras_name = "Add"
    primitive = ops.add

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        out = xp.empty((batch, *self.output_shape), dtype=dtype)

        def forward(ctx, first, *rest):
            xp.add(first, rest[0], out=out)
            for x in rest[1:]:
                xp.add(out, x, out=out)
            return out

        def backward(g):
            return tuple(g if needed else None for needed in needs_grad)

        return forward, backward


class Average(Add):
    keras_name = "Average"

    def call(self, inputs, weights, ctx):
        return ops.multiply(super().call(inputs, weights, ctx), 1 / len(inputs))

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        add_forward, _ = super().compile(xp, batch, dtype, weights, grads, needs_grad)
        share = 1 / len(needs_grad)
        input_grad = xp.empty((batch, *self.output_shape), dtype=dtype) if any(needs_grad) else None

        def forward(ctx, *parts):
            out = add_forward(ctx, *parts)
            return xp.multiply(out, share, out=out)

        def backward(g):
            shared = None if input_grad is None else xp.multiply(g, share, out=input_grad)
            return tuple(shared if needed else None for needed in needs_grad)

        return forward, backward


class Subtract(_SameShape):
    keras_name = "Subtract"
    primitive = ops.subtract

    def infer_shape(self, input_shapes):
        if len(input_shapes) != 2:
            raise ShapeConflict(f"expected exactly 2 inputs (the first minus the second), received {len(input_shapes)}")
        return super().infer_shape(input_shapes)


    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        out = xp.empty((batch, *self.output_shape), dtype=dtype)
        negated = xp.empty_like(out) if needs_grad[1] else None

        def forward(ctx, a, b):
            return xp.subtract(a, b, out=out)

        def backward(g):
            return (g if needs_grad[0] else None, None if negated is None else xp.negative(g, out=negated))

        return forward, backward


class Multiply(_SameShape):
    keras_name = "Multiply"
    primitive = ops.multiply

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        shape = (batch, *self.output_shape)
        out = xp.empty(shape, dtype=dtype)
        input_grads = [xp.empty(shape, dtype=dtype) if needed else None for needed in needs_grad]
        seen = []

        def forward(ctx, *parts):
            seen[:] = parts
            xp.multiply(parts[0], parts[1], out=out)
            for x in parts[2:]:
                xp.multiply(out, x, out=out)
            return out

        def backward(g):
            # The product of the others, not out / x: an input may hold zeros.
            for i, grad in enumerate(input_grads):
                if grad is not None:
                    grad[...] = g
                    for j, x in enumerate(seen):
                        if j != i:
                            xp.multiply(grad, x, out=grad)
            return tuple(input_grads)

        return forward, backward


class _Extreme(_SameShape):
    """Maximum or minimum: each element's gradient goes to the first input that attains it."""

    pick = None  # "argmax" or "argmin"

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        shape = (batch, *self.output_shape)
        input_grads = [xp.empty(shape, dtype=dtype) if needed else None for needed in needs_grad]
        winner = [None]

        def forward(ctx, *parts):
            stacked = xp.stack(parts)
            winner[0] = getattr(stacked, self.pick)(axis=0)  # the first on a tie, as the chain of primitives
            return xp.take_along_axis(stacked, winner[0][None], axis=0)[0]

        def backward(g):
            for i, grad in enumerate(input_grads):
                if grad is not None:
                    xp.multiply(g, winner[0] == i, out=grad)
            return tuple(input_grads)

        return forward, backward


class Maximum(_Extreme):
    keras_name = "Maximum"
    primitive = ops.maximum
    pick = "argmax"


class Minimum(_Extreme):
    keras_name = "Minimum"
    primitive = ops.minimum
    pick = "argmin"


def _axes_pair(value):
    return [value, value] if isinstance(value, int) else list(value)


_AXES = Check(
    "an axis or a list of two axes (the batch axis is 0, as in Keras)",
    lambda v: (isinstance(v, int) and not isinstance(v, bool) and v != 0)
    or (isinstance(v, list) and len(v) == 2 and all(isinstance(a, int) and not isinstance(a, bool) and a != 0 for a in v)),
    {"oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}]},
)


class Dot(Layer):
    """Keras' Dot: per sample, the first input contracted with the second over `axes`;
    `normalize` divides each by its L2 norm first (the cosine similarity)."""

    keras_name = "Dot"
    many_inputs = True
    options = {
        "axes": Option(_AXES, -1, "the axis of each input summed over (-1: the last; 0 is the batch axis)"),
        "normalize": Option(boolean, False, "L2-normalize both inputs along their axis first: cosine similarity"),
    }

    def infer_shape(self, input_shapes):
        if len(input_shapes) != 2:
            raise ShapeConflict(f"expected exactly 2 inputs, received {len(input_shapes)}")
        axes = []
        for shape, axis in zip(input_shapes, _axes_pair(self.config["axes"])):
            rank = len(shape) + 1
            if not -rank < axis < rank:
                raise ShapeConflict(f"expected axes of a sample in [1, {rank - 1}] or [-{rank - 1}, -1] for input {shape_text(shape)}, received {axis}")
            axes.append(axis % rank)
        a, b = input_shapes
        if a[axes[0] - 1] != b[axes[1] - 1]:
            raise ShapeConflict(
                f"expected inputs of one size along axes {axes[0]} and {axes[1]}, received {shape_text(a)} and {shape_text(b)} "
                f"({a[axes[0] - 1]} and {b[axes[1] - 1]})")
        self._axes = tuple(axes)
        rest = [n for i, n in enumerate(a) if i != axes[0] - 1] + [n for i, n in enumerate(b) if i != axes[1] - 1]
        return tuple(rest) or (1,)

    def call(self, inputs, weights, ctx):
        a, b = inputs
        if self.config["normalize"]:
            a, b = ops.l2_normalize(a, axis=self._axes[0]), ops.l2_normalize(b, axis=self._axes[1])
        return ops.batch_dot(a, b, axes=self._axes)

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        axes, normalize = self._axes, self.config["normalize"]
        dot, l2 = ops.batch_dot, ops.l2_normalize
        seen = [None, None, None, None]  # inputs, then the normalized inputs

        def forward(ctx, a, b):
            seen[:2] = a, b
            if normalize:
                a, b = l2.forward(xp, a, axes[0]), l2.forward(xp, b, axes[1])
            seen[2:] = a, b
            return dot.forward(xp, a, b, axes)

        def backward(g):
            grads_out = []
            for i, needed in enumerate(needs_grad):
                if not needed:
                    grads_out.append(None)
                    continue
                grad = dot.vjp_argnum(i, xp, g, None, seen[2], seen[3], axes)
                if normalize:
                    grad = l2.vjps[0](xp, grad, seen[2 + i], seen[i], axes[i])
                grads_out.append(grad)
            return tuple(grads_out)

        return forward, backward

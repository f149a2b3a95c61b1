"""Merging layers: several inputs joined into one (Keras' Concatenate and Add)."""
from __future__ import annotations

from nnctl.core import ops
from nnctl.errors import shape_text
from nnctl.model.layers.base import Layer, ShapeConflict
from nnctl.options import Option, integer


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


class Add(Layer):
    keras_name = "Add"
    many_inputs = True

    def infer_shape(self, input_shapes):
        if any(s != input_shapes[0] for s in input_shapes):
            shapes = ", ".join(shape_text(s) for s in input_shapes)
            raise ShapeConflict(f"expected inputs of one shape, received {shapes}")
        return input_shapes[0]

    def call(self, inputs, weights, ctx):
        total = inputs[0]
        for x in inputs[1:]:
            total = ops.add(total, x)
        return total

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

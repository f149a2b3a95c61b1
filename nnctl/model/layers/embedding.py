"""Embedding: Keras' lookup table from integer ids to dense vectors.

The model's inputs are float arrays, so the layer reads ids as floats of integer value (3.0 is
id 3), casts them to indices, and refuses any other value (2.5, -1, an id >= input_dim) with the
layer's name: a lookup of a wrong id would silently train the wrong row. The ids get no gradient.
"""
from __future__ import annotations

from nnctl.core import ops
from nnctl.core.autograd import Tensor
from nnctl.errors import DataError, number_text
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers.base import Layer, WeightSpec
from nnctl.options import Option, Typed, integer


class Embedding(Layer):
    keras_name = "Embedding"
    options = {
        "input_dim": Option(integer(1), doc="number of ids: ids are 0 .. input_dim - 1"),
        "output_dim": Option(integer(1), doc="length of each id's vector"),
        "embeddings_initializer": Option(Typed(lambda: INITIALIZERS, "initializer"), "random_uniform", "Keras' uniform(-0.05, 0.05)"),
    }

    def id_range(self):
        return self.config["input_dim"]

    def infer_shape(self, input_shapes):
        (shape,) = input_shapes
        rows, columns = self.config["input_dim"], self.config["output_dim"]
        self.weights = [WeightSpec("embeddings", (rows, columns), self.config["embeddings_initializer"], rows, columns)]
        return (*shape, columns)

    def indices(self, xp, x):
        """`x`'s ids as integer indices; a DataError naming the first value that is not an id."""
        rows = self.config["input_dim"]
        bad = ~((x >= 0) & (x < rows) & (xp.floor(x) == x))  # NaN fails every comparison: bad too
        if bool(bad.any()):
            raise DataError(f"embedding layer {self.name!r}: expected ids that are integers in [0, {rows - 1}], received {number_text(x[bad][0])}")
        return x.astype("int64")

    def call(self, inputs, weights, ctx):
        x = inputs[0]
        value = x.value if isinstance(x, Tensor) else x
        return ops.take_rows(weights["embeddings"], self.indices(ctx.backend.xp, value))

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        table, table_grad = weights["embeddings"], grads["embeddings"]
        out = xp.empty((batch, *self.output_shape), dtype=dtype)
        ids = [None]

        def forward(ctx, x):
            ids[0] = self.indices(xp, x)
            return xp.take(table, ids[0], axis=0, out=out)

        def backward(g):
            table_grad.fill(0)
            xp.add.at(table_grad, ids[0], g)
            return (None,)

        return forward, backward

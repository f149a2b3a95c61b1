"""Dropout: in training, zero a random `rate` of the inputs and scale the rest by 1 / (1 - rate)."""
from __future__ import annotations

from nnctl.core import ops
from nnctl.model.layers.base import Layer
from nnctl.options import Option, number


class Dropout(Layer):
    keras_name = "Dropout"
    options = {"rate": Option(number(0, 1, high_open=True), doc="fraction of inputs zeroed in training")}

    def _scale(self, ctx, x):
        """The mask times 1 / (1 - rate), drawn from the context's generator (one draw per call)."""
        rate = self.config["rate"]
        keep = ctx.dropout_rng.random(x.shape) >= rate
        return ctx.backend.asarray(keep / (1 - rate), dtype=x.dtype)

    def call(self, inputs, weights, ctx):
        (x,) = inputs
        if not ctx.training or self.config["rate"] == 0:
            return x
        return ops.multiply(x, self._scale(ctx, x))

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        out = xp.empty((batch, *self.output_shape), dtype=dtype)
        input_grad = xp.empty_like(out) if needs_grad[0] else None
        scale = [None]  # this training step's mask; None: the last forward was the identity

        def forward(ctx, x):
            if not ctx.training or self.config["rate"] == 0:
                scale[0] = None
                return x
            scale[0] = self._scale(ctx, x)
            return xp.multiply(x, scale[0], out=out)

        def backward(g):
            if input_grad is None:
                return (None,)
            return (g if scale[0] is None else xp.multiply(g, scale[0], out=input_grad),)

        return forward, backward

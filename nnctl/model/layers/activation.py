"""Activation layers: one layer type per activation function (relu, softmax, ...)."""
from __future__ import annotations

from nnctl.model.activations import ACTIVATIONS
from nnctl.model.layers.base import Layer


class ActivationLayer(Layer):
    def call(self, inputs, weights, ctx):
        return ACTIVATIONS[self.type_name].apply(inputs[0], **self.config)

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        # Its own output buffer: the input belongs to another layer, which may need it intact.
        activate, vjp = ACTIVATIONS[self.type_name].compile(xp, xp.empty((batch, *self.output_shape), dtype=dtype), **self.config)
        return (lambda ctx, x: activate(x)), (lambda g: (vjp(g) if needs_grad[0] else None,))


_KERAS_NAMES = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "elu": "ELU", "softmax": "Softmax"}


def activation_layer(name: str) -> type[ActivationLayer]:
    """The layer class of activation `name`, with Keras' class name and the activation's options."""
    return type(
        f"{name.title().replace('_', '')}Layer",
        (ActivationLayer,),
        {"keras_name": _KERAS_NAMES.get(name, "Activation"), "options": ACTIVATIONS[name].options},
    )

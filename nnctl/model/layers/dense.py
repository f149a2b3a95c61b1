"""Dense: y = activation(x @ kernel + bias), kernel (in, out) as in Keras."""
from __future__ import annotations

from nnctl.core import ops
from nnctl.errors import shape_text
from nnctl.model.activations import ACTIVATIONS
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers.base import REGULARIZER, Layer, ShapeConflict, WeightSpec, regularization
from nnctl.options import Option, Typed, boolean, integer


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
            raise ShapeConflict(f"expected a 1-D input (None, features), received {shape_text(shape)}")
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
        activation = self.config["activation"]
        if activation.name == "linear":
            return z
        z = ctx.tap(f"{self.name}/preactivation", z)
        return ACTIVATIONS[activation.name].apply(z, **activation.options)

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        kernel, bias = weights["kernel"], weights.get("bias")
        kernel_grad, bias_grad = grads["kernel"], grads.get("bias")
        z = xp.empty((batch, self.config["units"]), dtype=dtype)
        # dL/dx only when something upstream learns: never for the layer that reads the data.
        input_grad = xp.empty((batch, kernel.shape[0]), dtype=dtype) if needs_grad[0] else None
        ones = xp.ones(batch, dtype=dtype)  # dL/dbias = ones @ dz: a BLAS GEMV beats a column sum
        activation = self.config["activation"]
        activate, activation_vjp = ACTIVATIONS[activation.name].compile(xp, z, bias, **activation.options)
        seen = [None]
        product = ops.matmul_for(xp)

        def forward(ctx, x):
            seen[0] = x
            return activate(product(x, kernel, out=z))  # the bias is added by the activation's pass

        def backward(g):
            dz = activation_vjp(g)
            product(seen[0].T, dz, out=kernel_grad)
            if bias_grad is not None:
                product(ones, dz, out=bias_grad)
            return (None if input_grad is None else product(dz, kernel.T, out=input_grad),)

        return forward, backward

    def penalty(self, weights):
        return regularization(self.config.get("kernel_regularizer"), weights["kernel"])

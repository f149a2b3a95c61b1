"""Normalization layers: Keras' BatchNormalization and LayerNormalization.

Both standardize with the biased variance, (x - mean) / sqrt(var + epsilon), then scale by gamma
and shift by beta. Batch normalization takes its statistics over the batch (every axis but the
last) in training and from its moving statistics in inference; it updates those, as Keras does,
with moving = momentum * moving + (1 - momentum) * batch statistic, the batch variance biased.
torch's momentum is the other weight (Keras' 0.99 is torch's 0.01) and torch's running variance
takes the unbiased batch variance: the two agree on everything but that factor n / (n - 1).
"""
from __future__ import annotations

import math

from nnctl.core import ops
from nnctl.core.autograd import Tensor
from nnctl.errors import DataError, shape_text
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers.base import Layer, ShapeConflict, WeightSpec
from nnctl.options import Option, Typed, boolean, integer, number

_INITIALIZER = Typed(lambda: INITIALIZERS, "initializer")
_AFFINE = {
    "epsilon": Option(number(low=0, low_open=True), 1e-3, "added to the variance"),
    "center": Option(boolean, True, "add the learned offset beta"),
    "scale": Option(boolean, True, "multiply by the learned factor gamma"),
    "beta_initializer": Option(_INITIALIZER, "zeros"),
    "gamma_initializer": Option(_INITIALIZER, "ones"),
}


def _summer(xp, shape, axes, dtype):
    """a -> its sums over `axes` (dims kept) for arrays of `shape`: a BLAS GEMV in the usual 2-D
    cases, which beats NumPy's reductions several times over."""
    if len(shape) == 2 and axes in ((0,), (1,)):
        ones, product = xp.ones(shape[axes[0]], dtype=dtype), ops.matmul_for(xp)
        if axes == (0,):
            return lambda a: product(ones, a)[None]
        return lambda a: product(a, ones)[:, None]
    return lambda a: a.sum(axis=axes, keepdims=True)


def _standardize(xp, x, summed, count, epsilon, out):
    """(x - mean) / sqrt(var + epsilon) into `out`, `summed` summing over the normalized axes of
    `count` values; (mean, var, 1 / std), dims kept."""
    mean = summed(x) / count
    xp.subtract(x, mean, out=out)
    var = summed(out * out) / count
    inverse = 1 / xp.sqrt(var + epsilon)
    xp.multiply(out, inverse, out=out)
    return mean, var, inverse


def _standardize_vjp(xp, dxhat, xhat, inverse, summed, count, out):
    """dL/dx into `out` from dL/d(standardized x), the statistics depending on x:
    inverse * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))."""
    projection = summed(xp.multiply(dxhat, xhat, out=out)) / count
    xp.multiply(xhat, -projection, out=out)
    xp.add(out, dxhat, out=out)
    xp.subtract(out, summed(dxhat) / count, out=out)
    return xp.multiply(out, inverse, out=out)


class _Affine(Layer):
    """gamma and beta over one axis of the sample, and their compiled application."""

    def _affine_weights(self, size):
        weights = []
        if self.config["scale"]:
            weights.append(WeightSpec("gamma", (size,), self.config["gamma_initializer"], size, size))
        if self.config["center"]:
            weights.append(WeightSpec("beta", (size,), self.config["beta_initializer"], size, size))
        return weights

    def _apply(self, z, weights, shape):
        """gamma * z + beta as primitives; `shape` broadcasts the 1-D weights against z."""
        if "gamma" in weights:
            z = ops.multiply(z, ops.reshape(weights["gamma"], shape=shape))
        if "beta" in weights:
            z = ops.add(z, ops.reshape(weights["beta"], shape=shape))
        return z

    def _compiled_apply(self, xp, weights, broadcast):
        """apply(xhat, out): gamma * xhat + beta into `out`; and the broadcast gamma (or None)."""
        gamma, beta = weights.get("gamma"), weights.get("beta")
        gamma_b = None if gamma is None else gamma.reshape(broadcast)
        beta_b = None if beta is None else beta.reshape(broadcast)

        def apply(xhat, out):
            if gamma_b is None:
                out[...] = xhat
            else:
                xp.multiply(xhat, gamma_b, out=out)
            if beta_b is not None:
                xp.add(out, beta_b, out=out)
            return out

        return apply, gamma_b


class BatchNormalization(_Affine):
    keras_name = "BatchNormalization"
    options = {
        "momentum": Option(number(0, 1), 0.99, "moving = momentum * moving + (1 - momentum) * batch statistic (torch's momentum is 1 - this)"),
        **_AFFINE,
        "moving_mean_initializer": Option(_INITIALIZER, "zeros"),
        "moving_variance_initializer": Option(_INITIALIZER, "ones"),
    }

    def infer_shape(self, input_shapes):
        (shape,) = input_shapes
        if not shape:
            raise ShapeConflict(f"expected an input with a feature axis, received {shape_text(shape)}")
        units = shape[-1]
        self.weights = self._affine_weights(units) + [
            WeightSpec("moving_mean", (units,), self.config["moving_mean_initializer"], units, units, trainable=False),
            WeightSpec("moving_variance", (units,), self.config["moving_variance_initializer"], units, units, trainable=False),
        ]
        return shape

    def _axes(self):
        """Every axis of the (batch, *sample) array but the last: the statistics' axes."""
        return tuple(range(len(self.input_shapes[0])))

    def _broadcast(self):
        return (1,) * len(self.input_shapes[0]) + (self.input_shapes[0][-1],)

    def _check_batch(self, x):
        if x.size // x.shape[-1] < 2:
            raise DataError(
                f"batch_normalization layer {self.name!r}: expected a training batch of at least 2 samples, received 1 "
                "(its variance is 0; pick a batch_size that leaves no batch of one sample)")

    def _update_moving(self, moving_mean, moving_variance, mean, var):
        """Keras' update, with the biased batch variance."""
        momentum = self.config["momentum"]
        moving_mean[...] = moving_mean * momentum + mean.reshape(moving_mean.shape) * (1 - momentum)
        moving_variance[...] = moving_variance * momentum + var.reshape(moving_variance.shape) * (1 - momentum)

    def call(self, inputs, weights, ctx):
        (x,) = inputs
        axes, eps = self._axes(), self.config["epsilon"]
        moving_mean, moving_variance = weights["moving_mean"].value, weights["moving_variance"].value
        if ctx.training:
            value = x.value if isinstance(x, Tensor) else x
            self._check_batch(value)
            mean = value.mean(axis=axes)
            centered = value - mean
            if ctx.updates_state:
                self._update_moving(moving_mean, moving_variance, mean, (centered * centered).mean(axis=axes))
            z = ops.normalize(x, axis=axes, epsilon=eps)
        else:
            z = ops.multiply(ops.subtract(x, moving_mean), 1 / ctx.backend.xp.sqrt(moving_variance + eps))
        return self._apply(z, weights, self._broadcast())

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        axes, eps = self._axes(), self.config["epsilon"]
        shape = (batch, *self.output_shape)
        count = math.prod(shape[:-1])
        summed = _summer(xp, shape, axes, dtype)
        xhat, out, scratch = (xp.empty(shape, dtype=dtype) for _ in range(3))
        input_grad = xp.empty(shape, dtype=dtype) if needs_grad[0] else None
        moving_mean, moving_variance = weights["moving_mean"], weights["moving_variance"]
        gamma_grad, beta_grad = grads.get("gamma"), grads.get("beta")
        apply, gamma = self._compiled_apply(xp, weights, self._broadcast())
        state = [None, False]  # 1 / std of the last forward, and whether it was the batch's

        def forward(ctx, x):
            if ctx.training:
                self._check_batch(x)
                mean, var, state[0] = _standardize(xp, x, summed, count, eps, xhat)
                if ctx.updates_state:
                    self._update_moving(moving_mean, moving_variance, mean, var)
            else:
                state[0] = 1 / xp.sqrt(moving_variance + eps)
                xp.multiply(xp.subtract(x, moving_mean, out=xhat), state[0], out=xhat)
            state[1] = ctx.training
            return apply(xhat, out)

        def backward(g):
            # gamma is one value per feature, constant over the reduced axes: it factors out of
            # the standardization's VJP, whose sums are then beta's and gamma's gradients.
            sum_g, sum_gx = summed(g), summed(xp.multiply(g, xhat, out=scratch))
            if gamma_grad is not None:
                gamma_grad[...] = sum_gx.reshape(gamma_grad.shape)
            if beta_grad is not None:
                beta_grad[...] = sum_g.reshape(beta_grad.shape)
            if input_grad is None:
                return (None,)
            scale = state[0] if gamma is None else state[0] * gamma
            if not state[1]:
                return (xp.multiply(g, scale, out=input_grad),)
            xp.multiply(xhat, sum_gx * (-1 / count), out=input_grad)
            xp.add(input_grad, g, out=input_grad)
            xp.subtract(input_grad, sum_g * (1 / count), out=input_grad)
            return (xp.multiply(input_grad, scale, out=input_grad),)

        return forward, backward


class LayerNormalization(_Affine):
    keras_name = "LayerNormalization"
    options = {
        "axis": Option(integer(), -1, "the axis normalized, counting the batch axis as 0 as Keras does (-1: the last)"),
        **_AFFINE,
    }

    def infer_shape(self, input_shapes):
        (shape,) = input_shapes
        rank = len(shape) + 1
        axis = self.config["axis"]
        if not (1 <= axis < rank or -rank < axis <= -1):
            raise ShapeConflict(f"expected an axis of a sample in [1, {rank - 1}] or [-{rank - 1}, -1] for input {shape_text(shape)}, received {axis}")
        self._axis = axis % rank
        self.weights = self._affine_weights(shape[self._axis - 1])
        return shape

    def _broadcast(self):
        rank = len(self.input_shapes[0]) + 1
        return tuple(self.input_shapes[0][self._axis - 1] if i == self._axis else 1 for i in range(rank))

    def call(self, inputs, weights, ctx):
        z = ops.normalize(inputs[0], axis=self._axis, epsilon=self.config["epsilon"])
        return self._apply(z, weights, self._broadcast())

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        axis, eps = self._axis, self.config["epsilon"]
        shape = (batch, *self.output_shape)
        count = shape[axis]
        summed = _summer(xp, shape, (axis,), dtype)
        others = tuple(i for i in range(len(shape)) if i != axis)
        xhat, out, scratch = (xp.empty(shape, dtype=dtype) for _ in range(3))
        input_grad = xp.empty(shape, dtype=dtype) if needs_grad[0] else None
        gamma_grad, beta_grad = grads.get("gamma"), grads.get("beta")
        apply, gamma = self._compiled_apply(xp, weights, self._broadcast())
        inverse = [None]

        def forward(ctx, x):
            inverse[0] = _standardize(xp, x, summed, count, eps, xhat)[2]
            return apply(xhat, out)

        def backward(g):
            if gamma_grad is not None:
                gamma_grad[...] = xp.multiply(g, xhat, out=scratch).sum(axis=others)
            if beta_grad is not None:
                beta_grad[...] = g.sum(axis=others)
            if input_grad is None:
                return (None,)
            dxhat = g if gamma is None else xp.multiply(g, gamma, out=scratch)
            return (_standardize_vjp(xp, dxhat, xhat, inverse[0], summed, count, input_grad),)

        return forward, backward

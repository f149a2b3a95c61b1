"""Losses: the registry `LOSSES`, name -> class. Keras' names, formulas and defaults.

A loss turns the model's output and the targets into one scalar tensor: per-sample values
reduced over the batch by their mean (Keras' default) or sum (`reduction: sum`). Cross-entropies
with `from_logits: true` are computed from log-sum-exp and log-sigmoid, finite for any logits.

`compile` optionally lowers a loss for the compiled step (nnctl.train.step): value and gradient with
respect to the output in one pass over preallocated buffers. Others train through `__call__`.
"""
from __future__ import annotations

import math

from nnctl.core import ops
from nnctl.core.backend import namespace_of
from nnctl.core.loops import loops_for
from nnctl.data.targets import BINARY, LABELS, ONE_HOT, VALUES
from nnctl.options import Option, boolean, number, one_of

# Keras clips probabilities to [EPSILON, 1 - EPSILON] before taking their log.
EPSILON = 1e-7

_REDUCTION = Option(one_of(["mean", "sum"]), "mean", "how per-sample losses combine over a batch")
_FROM_LOGITS = Option(boolean, False, "the model outputs logits (no sigmoid/softmax applied)")


class Loss:
    options = {"reduction": _REDUCTION}
    targets = VALUES  # the kind of target it reads (nnctl.data.targets): checks, classes, accuracy
    gives_probabilities = False  # whether `probabilities` are class or event probabilities

    def __init__(self, config: dict):
        self.config = config

    def __call__(self, output, targets):
        per_sample = self.per_sample(output, targets)
        if self.config["reduction"] == "sum":
            return ops.reduce_sum(per_sample)
        return ops.reduce_mean(per_sample)

    def per_sample(self, output, targets):
        raise NotImplementedError

    def compile(self, xp, shape: tuple, dtype):
        """loss_and_grad(output, targets) -> (scalar loss, dL/d(output)) for outputs of `shape`,
        or None to train through autograd. It must not write into `output`: metrics read it."""
        return None

    def _scale(self, count: int) -> float:
        """d(reduced loss)/d(per-sample loss) over `count` values: 1/count for a mean, 1 for a sum."""
        return 1 / count if self.config["reduction"] == "mean" else 1.0

    def probabilities(self, xp, output):
        """What `predict` shows for a raw output (probabilities for logits)."""
        return output

    def accuracy(self, xp, output, targets):
        """The batch's count of correct predictions, by the kind of target (Keras' `accuracy`)."""
        return self.targets.correct(xp, output, targets, self.config.get("from_logits", False))


class MeanSquaredError(Loss):
    def per_sample(self, output, targets):
        return ops.squared_error(output, targets)

    def compile(self, xp, shape, dtype):
        difference = xp.empty(shape, dtype=dtype)
        # Per-sample values are means over the last axis, one per (batch, *middle axes) index.
        scale = self._scale(math.prod(shape[:-1])) / shape[-1]

        def loss_and_grad(output, targets):
            xp.subtract(output, targets, out=difference)
            loss = xp.vdot(difference, difference) * scale
            return loss, xp.multiply(difference, 2 * scale, out=difference)

        return loss_and_grad


class HalfSquaredError(Loss):
    """0.5 * sum((output - targets)^2): the loss of textbook backprop, where dL/da = a - y."""

    def per_sample(self, output, targets):
        return ops.multiply(ops.reduce_sum(ops.square(ops.subtract(output, targets)), axis=-1), 0.5)


class MeanAbsoluteError(Loss):
    def per_sample(self, output, targets):
        return ops.reduce_mean(ops.absolute(ops.subtract(output, targets)), axis=-1)


class Huber(Loss):
    options = {"delta": Option(number(low=0, low_open=True), 1.0, "where quadratic turns linear"), **Loss.options}

    def per_sample(self, output, targets):
        return ops.reduce_mean(ops.huber(ops.subtract(output, targets), delta=self.config["delta"]), axis=-1)


class CrossEntropy(Loss):
    options = {"from_logits": _FROM_LOGITS, **Loss.options}
    gives_probabilities = True


class BinaryCrossentropy(CrossEntropy):
    targets = BINARY

    def per_sample(self, output, targets):
        if self.config["from_logits"]:
            log_p = ops.log_sigmoid(output)
            log_not_p = ops.log_sigmoid(ops.negative(output))
        else:
            p = ops.clip(output, EPSILON, 1 - EPSILON)
            log_p = ops.log(p)
            log_not_p = ops.log(ops.add(ops.negative(p), 1.0))
        elementwise = ops.add(ops.multiply(log_p, targets), ops.multiply(log_not_p, 1 - targets))
        return ops.negative(ops.reduce_mean(elementwise, axis=-1))

    def probabilities(self, xp, output):
        # The overflow-free sigmoid: 1 / (1 + exp(-x)) warns of overflow for logits below ~-709.
        return ops._sigmoid(xp, output) if self.config["from_logits"] else output


class CategoricalCrossentropy(CrossEntropy):
    targets = ONE_HOT

    def per_sample(self, output, targets):
        if self.config["from_logits"]:
            log_p = ops.log_softmax(output)
        else:
            # Keras renormalises the rows before clipping, so un-normalised outputs still work.
            p = ops.divide(output, ops.reduce_sum(output, axis=-1, keepdims=True))
            log_p = ops.log(ops.clip(p, EPSILON, 1 - EPSILON))
        return ops.negative(ops.reduce_sum(ops.multiply(log_p, targets), axis=-1))

    def probabilities(self, xp, output):
        if not self.config["from_logits"]:
            return output
        e = xp.exp(output - output.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    targets = LABELS

    def per_sample(self, output, targets):
        if self.config["from_logits"]:
            return ops.sparse_softmax_cross_entropy(output, targets)
        return CategoricalCrossentropy.per_sample(self, output, _one_hot(output.value, targets))

    def compile(self, xp, shape, dtype):
        if not self.config["from_logits"] or len(shape) != 2:
            return None
        grad = xp.empty(shape, dtype=dtype)
        picked, sums = xp.empty(shape[0], dtype=dtype), xp.empty(shape[0], dtype=dtype)
        scale = self._scale(shape[0])
        passes = _xent_passes(xp, shape, dtype)
        loops = loops_for(xp)
        shift, finish = passes if loops is None else (loops.xent_shift, loops.xent_grad)

        def loss_and_grad(logits, labels):
            # The label's shifted logit is read before exp(): log(exp(z)) would lose small ones.
            try:
                shift(logits, labels, grad, picked)
            except ValueError:  # NumPy's refusal of logits that are not contiguous: the passes take any layout
                passes[0](logits, labels, grad, picked)
            xp.exp(grad, out=grad)
            grad.sum(axis=-1, out=sums)
            loss = (xp.log(sums) - picked).sum() * scale
            return loss, finish(grad, sums, labels, scale)

        return loss_and_grad


def _xent_passes(xp, shape, dtype):
    """Sparse softmax cross-entropy's passes before and after exp() as array operations:
    shift(logits, labels, shifted, picked) and finish(grad, sums, labels, scale) -> grad."""
    # NumPy's max over a short last axis is a slow reduction; over the first axis of a transposed
    # copy it is 3x faster, and a max is exact in any order.
    transposed, row_max = xp.empty(shape[::-1], dtype=dtype), xp.empty(shape[0], dtype=dtype)
    rows = xp.arange(shape[0])

    def shift(logits, labels, shifted, picked):
        transposed[...] = logits.T
        transposed.max(axis=0, out=row_max)
        xp.subtract(logits, row_max[:, None], out=shifted)
        picked[...] = shifted[rows, labels]

    def finish(grad, sums, labels, scale):
        xp.divide(grad, sums[:, None], out=grad)  # softmax - onehot, times the reduction's scale
        grad[rows, labels] -= 1
        return xp.multiply(grad, scale, out=grad)

    return shift, finish


def _one_hot(like, labels):
    """A one-hot matrix shaped, typed and placed like `like`."""
    xp = namespace_of(like)
    one_hot = xp.zeros_like(like)
    one_hot[xp.arange(labels.shape[0]), labels] = 1
    return one_hot


LOSSES: dict[str, type[Loss]] = {
    "mse": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
    "half_squared_error": HalfSquaredError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}

"""The primitive table: every differentiable op nnctl computes with, forward and VJP side by side.

Adding an op means adding one `Primitive(...)` here and one row in tests/test_ops.py's table, which
checks its VJP against central finite differences in float64.
"""
from __future__ import annotations

import math

from nnctl.core.autograd import Primitive, unbroadcast

# --- arithmetic (broadcasting; gradients summed back by unbroadcast) -----------------------------
add = Primitive(
    "add",
    lambda xp, a, b: a + b,
    [
        lambda xp, g, ans, a, b: unbroadcast(xp, g, a.shape),
        lambda xp, g, ans, a, b: unbroadcast(xp, g, b.shape),
    ],
)
subtract = Primitive(
    "subtract",
    lambda xp, a, b: a - b,
    [
        lambda xp, g, ans, a, b: unbroadcast(xp, g, a.shape),
        lambda xp, g, ans, a, b: unbroadcast(xp, -g, b.shape),
    ],
)
multiply = Primitive(
    "multiply",
    lambda xp, a, b: a * b,
    [
        lambda xp, g, ans, a, b: unbroadcast(xp, g * b, a.shape),
        lambda xp, g, ans, a, b: unbroadcast(xp, g * a, b.shape),
    ],
)
divide = Primitive(
    "divide",
    lambda xp, a, b: a / b,
    [
        lambda xp, g, ans, a, b: unbroadcast(xp, g / b, a.shape),
        lambda xp, g, ans, a, b: unbroadcast(xp, -g * ans / b, b.shape),
    ],
)
negative = Primitive("negative", lambda xp, a: -a, [lambda xp, g, ans, a: -g])
square = Primitive("square", lambda xp, a: a * a, [lambda xp, g, ans, a: 2 * g * a])
absolute = Primitive("abs", lambda xp, a: xp.abs(a), [lambda xp, g, ans, a: g * xp.sign(a)])
exp = Primitive("exp", lambda xp, a: xp.exp(a), [lambda xp, g, ans, a: g * ans])
log = Primitive("log", lambda xp, a: xp.log(a), [lambda xp, g, ans, a: g / a])
clip = Primitive(
    "clip",
    lambda xp, a, low, high: xp.clip(a, low, high),
    [lambda xp, g, ans, a, low, high: g * ((a >= low) & (a <= high))],
)

# --- reductions ---------------------------------------------------------------------------------
def _expand_reduced(xp, g, shape, axis, keepdims):
    """Broadcast a reduction's gradient back over the reduced axes."""
    if axis is not None and not keepdims:
        g = xp.expand_dims(g, axis)
    return xp.broadcast_to(g, shape)


def _reduced_count(shape, axis):
    if axis is None:
        return math.prod(shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(shape[a] for a in axes)


reduce_sum = Primitive(
    "sum",
    lambda xp, a, axis=None, keepdims=False: a.sum(axis=axis, keepdims=keepdims),
    [lambda xp, g, ans, a, axis=None, keepdims=False: _expand_reduced(xp, g, a.shape, axis, keepdims)],
)
reduce_mean = Primitive(
    "mean",
    # sum / count is what ndarray.mean computes, without its Python-level wrapper.
    lambda xp, a, axis=None, keepdims=False: a.sum(axis=axis, keepdims=keepdims) / _reduced_count(a.shape, axis),
    [
        lambda xp, g, ans, a, axis=None, keepdims=False: _expand_reduced(
            xp, g / _reduced_count(a.shape, axis), a.shape, axis, keepdims
        )
    ],
)

# --- linear algebra -----------------------------------------------------------------------------
matmul = Primitive(
    "matmul",
    lambda xp, a, b: a @ b,
    [lambda xp, g, ans, a, b: g @ b.T, lambda xp, g, ans, a, b: a.T @ g],
)


# numpy.dot zeroes its output before BLAS writes it (NumPy's cblas_matrixproduct; matmul does not,
# leaving only OpenBLAS's own zeroing for beta = 0).
# Past about this size the zeroing costs more than dot's cheaper dispatch saves (0.5-1 us a call):
# 10 us on 800 KB (an MLP's first kernel gradient), 1 ms on 64 MB (a 4096-wide layer's).
DOT_ZEROING_LIMIT = 256 * 1024  # bytes


def matmul_for(xp):
    """(a, b, out=None) -> xp.matmul(a, b, out=out) for 1-D and 2-D operands, bit for bit, at the
    least cost per call, for the compiled closures. On NumPy, where both operands are C- or
    F-contiguous and `out` is at most DOT_ZEROING_LIMIT bytes, numpy.dot makes the same BLAS call
    in half matmul's dispatch time (most of a small layer's cost). On other strides (a concat's
    column slices) dot calls BLAS otherwise and rounds otherwise, so those take matmul itself, as
    do a larger `out` and an `out` that dot refuses. (The callers that pass no `out` sum to a
    vector.)"""
    if xp.__name__ != "numpy":
        return xp.matmul
    dot, matmul = xp.dot, xp.matmul

    def product(a, b, out=None):
        if a.flags.forc and b.flags.forc and (out is None or out.nbytes <= DOT_ZEROING_LIMIT):
            try:
                return dot(a, b, out=out)
            except ValueError:  # dot's `out` must be C-contiguous and of the result's dtype
                pass
        return matmul(a, b, out=out)

    return product


def _linear(xp, x, kernel, bias):
    out = x @ kernel
    out += bias
    return out


# Dense's x @ kernel + bias as one op: one fewer temporary and one fewer graph node per layer.
linear = Primitive(
    "linear",
    _linear,
    [
        lambda xp, g, ans, x, kernel, bias: g @ kernel.T,
        lambda xp, g, ans, x, kernel, bias: x.T @ g,
        lambda xp, g, ans, x, kernel, bias: g.sum(axis=0),
    ],
)


def _concat_vjp(argnum, xp, g, ans, *parts, axis=-1):
    start = sum(p.shape[axis] for p in parts[:argnum])
    index = [slice(None)] * g.ndim
    index[axis] = slice(start, start + parts[argnum].shape[axis])
    return g[tuple(index)]


concat = Primitive("concat", lambda xp, *parts, axis=-1: xp.concatenate(parts, axis=axis), vjp_argnum=_concat_vjp)

# --- activations --------------------------------------------------------------------------------
relu = Primitive("relu", lambda xp, a: xp.maximum(a, 0), [lambda xp, g, ans, a: g * (a > 0)])
leaky_relu = Primitive(
    "leaky_relu",
    lambda xp, a, alpha=0.2: xp.where(a > 0, a, a * alpha),
    [lambda xp, g, ans, a, alpha=0.2: xp.where(a > 0, g, g * alpha)],
)
elu = Primitive(
    "elu",
    lambda xp, a, alpha=1.0: xp.where(a > 0, a, alpha * xp.expm1(xp.minimum(a, 0))),
    [lambda xp, g, ans, a, alpha=1.0: xp.where(a > 0, g, g * (ans + alpha))],
)


def _sigmoid(xp, a):
    # exp of a non-positive number only: no overflow warning for large |a|.
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e))


sigmoid = Primitive("sigmoid", _sigmoid, [lambda xp, g, ans, a: g * ans * (1 - ans)])
tanh = Primitive("tanh", lambda xp, a: xp.tanh(a), [lambda xp, g, ans, a: g * (1 - ans * ans)])
softplus = Primitive(
    "softplus",
    lambda xp, a: xp.logaddexp(a, 0),
    [lambda xp, g, ans, a: g * _sigmoid(xp, a)],
)

_GELU_C = math.sqrt(2 / math.pi)


def _gelu_vjp(xp, g, ans, a):
    inner = _GELU_C * (a + 0.044715 * a**3)
    t = xp.tanh(inner)
    d_inner = _GELU_C * (1 + 3 * 0.044715 * a * a)
    return g * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * d_inner)


# The tanh approximation (torch's approximate='tanh', Keras' approximate=True): NumPy has no erf.
gelu = Primitive(
    "gelu",
    lambda xp, a: 0.5 * a * (1 + xp.tanh(_GELU_C * (a + 0.044715 * a**3))),
    [_gelu_vjp],
)


def _softmax(xp, a, axis=-1):
    e = xp.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


softmax = Primitive(
    "softmax",
    _softmax,
    [lambda xp, g, ans, a, axis=-1: ans * (g - (g * ans).sum(axis=axis, keepdims=True))],
)


def _log_softmax(xp, a, axis=-1):
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


log_softmax = Primitive(
    "log_softmax",
    _log_softmax,
    [lambda xp, g, ans, a, axis=-1: g - xp.exp(ans) * g.sum(axis=axis, keepdims=True)],
)
# log(sigmoid(a)) = -softplus(-a), finite for any a.
log_sigmoid = Primitive(
    "log_sigmoid",
    lambda xp, a: -xp.logaddexp(-a, 0),
    [lambda xp, g, ans, a: g * _sigmoid(xp, -a)],
)

# --- fused losses (per-sample values; the caller reduces over the batch) --------------------------
def _sparse_xent(xp, logits, labels):
    log_probs = _log_softmax(xp, logits)
    return -xp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _sparse_xent_vjp(xp, g, ans, logits, labels):
    grad = _softmax(xp, logits)
    grad[xp.arange(labels.shape[0]), labels] -= 1
    grad *= g[:, None]
    return grad


# Softmax cross-entropy from logits with integer labels: the gradient is softmax - onehot,
# computed without the one-hot matrix or a log-softmax graph.
sparse_softmax_cross_entropy = Primitive("sparse_softmax_cross_entropy", _sparse_xent, [_sparse_xent_vjp])

def _squared_error_vjp(sign):
    def vjp(xp, g, ans, output, targets):
        d = output - targets
        return g[..., None] * (sign * 2 / d.shape[-1]) * d

    return vjp


# Mean over the last axis of (output - targets)^2, per sample: MSE in one op instead of four.
squared_error = Primitive(
    "squared_error",
    lambda xp, output, targets: _squared_mean(output - targets),
    [_squared_error_vjp(1), _squared_error_vjp(-1)],
)


def _squared_mean(d):
    return (d * d).sum(axis=-1) / d.shape[-1]


huber = Primitive(
    "huber",
    lambda xp, d, delta=1.0: xp.where(xp.abs(d) <= delta, 0.5 * d * d, delta * (xp.abs(d) - 0.5 * delta)),
    [lambda xp, g, ans, d, delta=1.0: g * xp.clip(d, -delta, delta)],
)

# --- merges, normalization, shapes, lookups (Keras' layers beyond dense) --------------------------
# Ties go to the first argument, as in TensorFlow: exactly one argument gets each element's gradient.
maximum = Primitive(
    "maximum",
    lambda xp, a, b: xp.maximum(a, b),
    [
        lambda xp, g, ans, a, b: unbroadcast(xp, g * (a >= b), a.shape),
        lambda xp, g, ans, a, b: unbroadcast(xp, g * (a < b), b.shape),
    ],
)
minimum = Primitive(
    "minimum",
    lambda xp, a, b: xp.minimum(a, b),
    [
        lambda xp, g, ans, a, b: unbroadcast(xp, g * (a <= b), a.shape),
        lambda xp, g, ans, a, b: unbroadcast(xp, g * (a > b), b.shape),
    ],
)


def _inverse_std(xp, a, axis, epsilon):
    centered = a - a.mean(axis=axis, keepdims=True)
    return 1 / xp.sqrt((centered * centered).mean(axis=axis, keepdims=True) + epsilon)


def _normalize_vjp(xp, g, ans, a, axis, epsilon):
    # d/dx of (x - mean) / sqrt(var + eps) with the biased variance, for normalized `ans`.
    return _inverse_std(xp, a, axis, epsilon) * (
        g - g.mean(axis=axis, keepdims=True) - ans * (g * ans).mean(axis=axis, keepdims=True))


# (a - mean) / sqrt(var + epsilon) over `axis` (biased variance): batch and layer normalization.
normalize = Primitive(
    "normalize",
    lambda xp, a, axis, epsilon: (a - a.mean(axis=axis, keepdims=True)) * _inverse_std(xp, a, axis, epsilon),
    [_normalize_vjp],
)

# Keras' l2_normalize floor on the squared norm: a zero vector normalizes to zero, not NaN.
_L2_FLOOR = 1e-12


def _l2_norm(xp, a, axis):
    return xp.sqrt(xp.maximum((a * a).sum(axis=axis, keepdims=True), _L2_FLOOR))


def _l2_normalize_vjp(xp, g, ans, a, axis):
    norm = _l2_norm(xp, a, axis)
    floored = (a * a).sum(axis=axis, keepdims=True) <= _L2_FLOOR  # the norm is a constant there
    return g / norm - xp.where(floored, 0, ans * (g * ans).sum(axis=axis, keepdims=True) / norm)


l2_normalize = Primitive("l2_normalize", lambda xp, a, axis: a / _l2_norm(xp, a, axis), [_l2_normalize_vjp])


def _dot_operands(xp, a, b, axes):
    """(batch, rest of a, n) and (batch, n, rest of b) views for one batched matmul."""
    a = xp.moveaxis(a, axes[0], -1)
    b = xp.moveaxis(b, axes[1], 1)
    return a.reshape(a.shape[0], -1, a.shape[-1]), b.reshape(b.shape[0], b.shape[1], -1)


def _batch_dot(xp, a, b, axes):
    left, right = _dot_operands(xp, a, b, axes)
    rest = [n for i, n in enumerate(a.shape) if i not in (0, axes[0])] + [n for i, n in enumerate(b.shape) if i not in (0, axes[1])]
    return (left @ right).reshape(a.shape[0], *(rest or [1]))


def _batch_dot_vjp(argnum, xp, g, ans, a, b, axes):
    left, right = _dot_operands(xp, a, b, axes)
    g = g.reshape(a.shape[0], left.shape[1], right.shape[2])
    if argnum == 0:
        grad = (g @ xp.swapaxes(right, 1, 2)).reshape(*xp.moveaxis(a, axes[0], -1).shape)
        return xp.moveaxis(grad, -1, axes[0])
    grad = (xp.swapaxes(left, 1, 2) @ g).reshape(*xp.moveaxis(b, axes[1], 1).shape)
    return xp.moveaxis(grad, 1, axes[1])


# Keras' batch_dot: per sample, a contracted with b over a's axes[0] and b's axes[1] (batch axis 0).
batch_dot = Primitive("batch_dot", _batch_dot, vjp_argnum=_batch_dot_vjp)

# A copy, not a view: a value in the graph must not change when its input is written to.
reshape = Primitive("reshape", lambda xp, a, shape: a.reshape(shape).copy(), [lambda xp, g, ans, a, shape: g.reshape(a.shape)])


def _take_rows_vjp(xp, g, ans, table, indices):
    grad = xp.zeros_like(table)
    xp.add.at(grad, indices, g)  # an index seen twice gets both gradients
    return grad


# table[indices]: an embedding lookup; the integer indices get no gradient.
take_rows = Primitive("take_rows", lambda xp, table, indices: table[indices], [_take_rows_vjp])

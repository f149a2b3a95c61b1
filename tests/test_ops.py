"""Every primitive's VJP against central finite differences, plus the autograd engine's contracts.

One table, one harness: each row names a primitive, how to draw its arguments and which of them
are differentiable. A test fails when a primitive is registered without a row, so a new op
cannot ship without its gradient being checked.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

import nnctl.core.ops as ops
from nnctl.core.autograd import PRIMITIVES, Tensor, backward, topological_order
from nnctl.train.losses import LOSSES

EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-8
# Inputs closer than this to a kink (relu at 0, clip at its bounds, huber at +-delta...) are
# redrawn: central differences straddling a kink measure the average of two slopes.
MARGIN = 1e-2


# --- argument makers: rng -> value ---------------------------------------------------------------
def normal(*shape, scale=1.0, avoid=()):
    def draw(rng):
        x = rng.standard_normal(shape) * scale
        for _ in range(100):
            near = np.zeros(shape, dtype=bool)
            for kink in avoid:
                near |= np.abs(x - kink) < MARGIN
            if not near.any():
                return x
            x[near] = rng.standard_normal(int(near.sum())) * scale
        raise AssertionError("could not draw inputs away from the kinks")

    return draw


def uniform(*shape, low, high):
    return lambda rng: rng.uniform(low, high, size=shape)


def labels(n, classes):
    return lambda rng: rng.integers(0, classes, size=n)


def const(value):
    return lambda rng: value


@dataclass(frozen=True)
class Row:
    op: str
    case: str
    args: tuple  # argument makers
    diff: tuple  # positions of the differentiable arguments
    params: dict = field(default_factory=dict)

    @property
    def id(self):
        return f"{self.op}[{self.case}]"


def row(op, case, *args, diff=None, **params):
    if diff is None:
        diff = tuple(range(len(args)))
    return Row(op, case, args, tuple(diff), params)


def _binary_rows(op, b_maker=normal):
    return [
        row(op, "same", normal(3, 4), b_maker(3, 4)),
        row(op, "(3,4)x(4,)", normal(3, 4), b_maker(4)),
        row(op, "(3,4)x(3,1)", normal(3, 4), b_maker(3, 1)),
        row(op, "(4,)x(3,4)", normal(4), b_maker(3, 4)),
        row(op, "(3,1)x(1,4)", normal(3, 1), b_maker(1, 4)),
        row(op, "(2,3,4)x(3,1)", normal(2, 3, 4), b_maker(3, 1)),
        row(op, "scalar", normal(3, 4), const(0.75), diff=(0,)),
    ]


def _reduction_rows(op):
    rows = []
    for axis in (None, 0, -1, 1):
        for keepdims in (False, True):
            rows.append(row(op, f"axis={axis},keepdims={keepdims}", normal(3, 4), axis=axis, keepdims=keepdims))
    rows.append(row(op, "3d,axis=(0,2)", normal(2, 3, 4), axis=(0, 2)))
    rows.append(row(op, "3d,axis=(0,2),keepdims", normal(2, 3, 4), axis=(0, 2), keepdims=True))
    rows.append(row(op, "1d", normal(5)))
    return rows


positive = lambda *shape: uniform(*shape, low=0.5, high=2.0)  # noqa: E731 (divisors, log inputs)

TABLE: list[Row] = [
    *_binary_rows("add"),
    *_binary_rows("subtract"),
    *_binary_rows("multiply"),
    *_binary_rows("divide", positive),
    row("negative", "2d", normal(3, 4)),
    row("square", "2d", normal(3, 4)),
    row("abs", "2d", normal(3, 4, avoid=(0,))),
    row("exp", "2d", normal(3, 4)),
    row("log", "2d", positive(3, 4)),
    row("clip", "[-0.5,0.5]", normal(3, 4, avoid=(-0.5, 0.5)), const(-0.5), const(0.5), diff=(0,)),
    row("clip", "[1e-7,1-1e-7]", uniform(3, 4, low=-0.5, high=1.5), const(1e-7), const(1 - 1e-7), diff=(0,)),
    *_reduction_rows("sum"),
    *_reduction_rows("mean"),
    row("matmul", "(3,4)@(4,5)", normal(3, 4), normal(4, 5)),
    row("matmul", "(1,2)@(2,3)", normal(1, 2), normal(2, 3)),
    row("linear", "(3,4)@(4,5)+(5,)", normal(3, 4), normal(4, 5), normal(5)),
    row("linear", "(1,2)@(2,1)+(1,)", normal(1, 2), normal(2, 1), normal(1)),
    row("concat", "2 parts,axis=-1", normal(3, 2), normal(3, 4), axis=-1),
    row("concat", "3 parts,axis=-1", normal(3, 1), normal(3, 4), normal(3, 2), axis=-1),
    row("concat", "3 parts,axis=1", normal(3, 1), normal(3, 4), normal(3, 2), axis=1),
    row("concat", "2 parts,axis=0", normal(2, 3), normal(4, 3), axis=0),
    row("concat", "3d,axis=-1", normal(2, 3, 1), normal(2, 3, 2), axis=-1),
    row("relu", "2d", normal(3, 4, avoid=(0,))),
    row("leaky_relu", "default", normal(3, 4, avoid=(0,))),
    row("leaky_relu", "alpha=0.05", normal(3, 4, avoid=(0,)), alpha=0.05),
    row("elu", "default", normal(3, 4, avoid=(0,))),
    row("elu", "alpha=0.5", normal(3, 4, avoid=(0,)), alpha=0.5),
    row("sigmoid", "2d", normal(3, 4, scale=3)),
    row("tanh", "2d", normal(3, 4, scale=2)),
    row("softplus", "2d", normal(3, 4, scale=3)),
    row("gelu", "2d", normal(3, 4, scale=2)),
    row("softmax", "axis=-1", normal(3, 4, scale=2)),
    row("softmax", "axis=0", normal(3, 4, scale=2), axis=0),
    row("softmax", "1 class", normal(3, 1)),
    row("log_softmax", "axis=-1", normal(3, 4, scale=2)),
    row("log_softmax", "axis=0", normal(3, 4, scale=2), axis=0),
    row("log_sigmoid", "2d", normal(3, 4, scale=3)),
    row("sparse_softmax_cross_entropy", "5x4", normal(5, 4, scale=2), labels(5, 4), diff=(0,)),
    row("sparse_softmax_cross_entropy", "1x3", normal(1, 3), labels(1, 3), diff=(0,)),
    row("squared_error", "rows", normal(3, 4), normal(3, 4)),
    row("squared_error", "one unit", normal(5, 1), normal(5, 1)),
    row("huber", "delta=1", normal(3, 4, scale=2, avoid=(-1.0, 1.0)), delta=1.0),
    row("huber", "delta=0.3", normal(3, 4, avoid=(-0.3, 0.3)), delta=0.3),
    *_binary_rows("maximum"),
    *_binary_rows("minimum"),
    row("normalize", "batch axis", normal(5, 3, scale=2), axis=0, epsilon=1e-3),
    row("normalize", "last axis", normal(4, 6), axis=-1, epsilon=1e-3),
    row("normalize", "3d,axis=(0,1)", normal(2, 3, 4), axis=(0, 1), epsilon=1e-5),
    row("normalize", "two samples", normal(2, 3), axis=0, epsilon=1e-3),
    row("l2_normalize", "rows", normal(4, 3), axis=-1),
    row("l2_normalize", "3d,axis=1", normal(2, 3, 4), axis=1),
    row("batch_dot", "vectors", normal(4, 3), normal(4, 3), axes=(1, 1)),
    row("batch_dot", "(2,3)x(3,)", normal(4, 2, 3), normal(4, 3), axes=(2, 1)),
    row("batch_dot", "(3,2)x(3,5),axes=1", normal(4, 3, 2), normal(4, 3, 5), axes=(1, 1)),
    row("batch_dot", "(2,3)x(4,3),axes=(2,2)", normal(2, 2, 3), normal(2, 4, 3), axes=(2, 2)),
    row("reshape", "(3,4)->(3,2,2)", normal(3, 4), shape=(3, 2, 2)),
    row("reshape", "flatten", normal(2, 3, 4), shape=(2, 12)),
    row("take_rows", "indices", normal(5, 3), const(np.array([[0, 4], [2, 2], [1, 0]])), diff=(0,)),
    row("take_rows", "one column", normal(4, 2), const(np.array([3, 3, 0, 1])), diff=(0,)),
]


def _draw(r: Row, seed: int):
    rng = np.random.default_rng(seed)
    return [make(rng) for make in r.args]


def _autograd_vjp(r: Row, args, cotangent, backend=None):
    """(forward value, [grad per differentiable arg]) through Tensor + backward, on `backend`.

    Results come back as host arrays, so the finite differences can stay in NumPy.
    """
    if backend is not None:
        args = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        cotangent = backend.asarray(cotangent)
    inputs = [Tensor(a, requires_grad=True) if i in r.diff else a for i, a in enumerate(args)]
    out = PRIMITIVES[r.op](*inputs, **r.params)
    backward(out, cotangent)
    host = backend.to_host if backend is not None else (lambda a: a)
    return host(out.value), [host(inputs[i].grad) for i in r.diff]


def _numeric_vjp(r: Row, args, argnum, cotangent):
    """d(sum(forward * cotangent)) / d(args[argnum]) by central differences."""
    forward = PRIMITIVES[r.op].forward
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    x = args[argnum]
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + EPS
        up = forward(np, *args, **r.params)
        x[index] = original - EPS
        down = forward(np, *args, **r.params)
        x[index] = original
        grad[index] = np.sum((np.asarray(up) - np.asarray(down)) * cotangent) / (2 * EPS)
    return grad


@pytest.mark.parametrize("r", TABLE, ids=lambda r: r.id)
def test_vjp_matches_finite_differences(r, backend):
    args = _draw(r, seed=1234)
    rng = np.random.default_rng(99)
    shape = np.shape(PRIMITIVES[r.op].forward(np, *args, **r.params))
    cotangent = np.asarray(rng.standard_normal(shape))
    out, grads = _autograd_vjp(r, args, cotangent, backend)
    for argnum, grad in zip(r.diff, grads):
        assert grad is not None, f"argument {argnum} got no gradient"
        assert grad.shape == args[argnum].shape
        assert grad.dtype == np.float64
        numeric = _numeric_vjp(r, args, argnum, cotangent)
        np.testing.assert_allclose(grad, numeric, rtol=RTOL, atol=ATOL, err_msg=f"{r.id}: argument {argnum}")


@pytest.mark.parametrize("r", TABLE, ids=lambda r: r.id)
def test_vjp_keeps_float32(r):
    args = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in _draw(r, 7)]
    shape = np.shape(PRIMITIVES[r.op].forward(np, *args, **r.params))
    cotangent = np.ones(shape, dtype=np.float32)
    out, grads = _autograd_vjp(r, args, cotangent)
    assert out.dtype == np.float32, f"{r.id}: forward gave {out.dtype}"
    for argnum, grad in zip(r.diff, grads):
        assert grad.shape == args[argnum].shape
        assert grad.dtype == np.float32, f"{r.id}: argument {argnum} got a {grad.dtype} gradient"


def test_table_covers_every_primitive():
    tested = {r.op for r in TABLE}
    assert set(PRIMITIVES) - tested == set(), "primitives without a row in TABLE"
    assert tested - set(PRIMITIVES) == set(), "rows naming no registered primitive"


def test_every_differentiable_argument_has_a_vjp():
    for r in TABLE:
        prim = PRIMITIVES[r.op]
        if prim.vjp_argnum is None:
            assert max(r.diff) < len(prim.vjps), r.id


# --- extreme values --------------------------------------------------------------------------------
HUGE = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [3.0, -1e4, -2.0]])


def _strict():
    """Overflow, division by zero and invalid operations raise; underflow to 0 is the intent."""
    stack = warnings.catch_warnings()
    stack.__enter__()
    warnings.simplefilter("error")
    errstate = np.errstate(over="raise", divide="raise", invalid="raise", under="ignore")
    errstate.__enter__()
    return stack, errstate


@pytest.fixture
def strict():
    stack, errstate = _strict()
    yield
    errstate.__exit__(None, None, None)
    stack.__exit__(None, None, None)


@pytest.mark.parametrize("op", ["sigmoid", "log_sigmoid", "softplus", "tanh", "softmax", "log_softmax", "elu", "gelu"])
def test_huge_inputs_finite(op, strict):
    x = Tensor(HUGE.copy(), requires_grad=True)
    out = PRIMITIVES[op](x)
    backward(out, np.ones_like(out.value))
    assert np.isfinite(out.value).all()
    assert np.isfinite(x.grad).all()


def test_sigmoid_saturates_exactly(strict):
    x = Tensor(np.array([1e4, -1e4, 0.0]), requires_grad=True)
    out = ops.sigmoid(x)
    backward(out, np.ones(3))
    np.testing.assert_array_equal(out.value, [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.25])


def test_log_sigmoid_huge(strict):
    x = Tensor(np.array([1e4, -1e4]), requires_grad=True)
    out = ops.log_sigmoid(x)
    backward(out, np.ones(2))
    np.testing.assert_allclose(out.value, [0.0, -1e4])
    np.testing.assert_allclose(x.grad, [0.0, 1.0])


def test_sparse_xent_huge(strict):
    x = Tensor(HUGE.copy(), requires_grad=True)
    out = ops.sparse_softmax_cross_entropy(x, np.array([1, 0, 0]))
    backward(out, np.ones(3))
    tail = np.exp(-5.0) / (1 + np.exp(-5.0))  # row 3: logits 3 and -2, label 0
    np.testing.assert_allclose(out.value, [2e4, 2e4 + np.log(2), np.log1p(np.exp(-5.0))], rtol=1e-12)
    np.testing.assert_allclose(x.grad, [[1, -1, 0], [-1, 0.5, 0.5], [-tail, 0, tail]], rtol=1e-12, atol=1e-300)


def _loss_targets(name):
    if name == "sparse_categorical_crossentropy":
        return np.array([1, 0, 0])
    if name == "categorical_crossentropy":
        return np.eye(3)[[1, 0, 2]]
    return np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])


CROSS_ENTROPIES = ["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", CROSS_ENTROPIES)
def test_cross_entropy_from_huge_logits_finite(name, reduction, strict):
    loss = LOSSES[name]({"from_logits": True, "reduction": reduction})
    x = Tensor(HUGE.copy(), requires_grad=True)
    value = loss(x, _loss_targets(name))
    backward(value)
    assert np.isfinite(value.value) and value.value > 1e3  # the wrong classes cost ~1e4
    assert np.isfinite(x.grad).all()


@pytest.mark.parametrize("name", CROSS_ENTROPIES)
def test_probabilities_from_huge_logits(name, strict):
    """What `predict` shows for logits: no overflow warning, rows of valid probabilities."""
    loss = LOSSES[name]({"from_logits": True, "reduction": "mean"})
    p = loss.probabilities(np, HUGE.copy())
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    if name == "binary_crossentropy":
        np.testing.assert_array_equal(p[0], [1.0, 0.0, 0.5])
    else:
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-15)


@pytest.mark.parametrize("name", CROSS_ENTROPIES)
def test_cross_entropy_of_saturated_probabilities_finite(name, strict):
    """Probabilities of exactly 0 and 1 are clipped, so loss and gradient stay finite."""
    loss = LOSSES[name]({"from_logits": False, "reduction": "mean"})
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    x = Tensor(probs, requires_grad=True)
    value = loss(x, _loss_targets(name))
    backward(value)
    assert np.isfinite(value.value)
    assert np.isfinite(x.grad).all()


# --- the engine ------------------------------------------------------------------------------------
def test_deep_chain_has_no_recursion_limit():
    depth = 5000
    assert depth > sys.getrecursionlimit() / 2  # a recursive sort would need a frame per node
    x = Tensor(np.arange(3.0), requires_grad=True)
    one = np.ones(3)
    y = x
    for _ in range(depth):
        y = ops.add(y, one)
    total = ops.reduce_sum(y)
    assert len(topological_order(total)) == depth + 2
    backward(total)
    np.testing.assert_array_equal(y.value, np.arange(3.0) + depth)
    np.testing.assert_array_equal(x.grad, np.ones(3))


def test_deep_chain_of_mixed_ops():
    x = Tensor(np.array([0.5, -0.25]), requires_grad=True)
    y = x
    for _ in range(2000):
        y = ops.multiply(ops.add(y, 0.0), 1.0)
    backward(ops.reduce_sum(ops.square(y)))
    np.testing.assert_allclose(x.grad, 2 * x.value)


def test_value_used_twice_accumulates():
    value = np.array([[1.5, -2.0, 0.25]])
    x = Tensor(value.copy(), requires_grad=True)
    backward(ops.reduce_sum(ops.multiply(x, x)))
    np.testing.assert_allclose(x.grad, 2 * value)


def test_two_tower_accumulates():
    value = np.array([[0.3, -1.2], [2.0, 0.7]])
    x = Tensor(value.copy(), requires_grad=True)
    a, b = ops.tanh(x), ops.sigmoid(x)
    backward(ops.reduce_sum(ops.concat(a, b, axis=-1)))
    s = 1 / (1 + np.exp(-value))
    np.testing.assert_allclose(x.grad, (1 - np.tanh(value) ** 2) + s * (1 - s), rtol=1e-14)


def test_diamond_with_shared_gradient_buffer():
    """add passes one gradient array to both parents; neither may alias or mutate the other."""
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = Tensor(np.array([3.0, 4.0]), requires_grad=True)
    s = ops.add(x, y)
    backward(ops.add(ops.multiply(s, 2.0), ops.multiply(x, 3.0)), np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [5.0, 50.0])
    np.testing.assert_array_equal(y.grad, [2.0, 20.0])
    assert not np.shares_memory(x.grad, y.grad)


def test_backward_accumulates_into_existing_grad_buffer():
    """Parameters pre-set `.grad` to a view of the flat buffer: backward adds into it in place."""
    flat = np.zeros(4)
    x = Tensor(np.array([1.0, 2.0, 3.0, 4.0]), requires_grad=True)
    x.grad = flat[:]
    buffer = x.grad
    for _ in range(2):
        backward(ops.reduce_sum(ops.multiply(x, x)))
    assert x.grad is buffer
    np.testing.assert_array_equal(flat, 4 * x.value)


def test_retain_grad_on_intermediate():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    h = ops.multiply(x, 3.0)
    h.retain_grad = True
    backward(ops.reduce_sum(ops.square(h)))
    np.testing.assert_allclose(h.grad, 2 * h.value)
    np.testing.assert_allclose(x.grad, 6 * h.value)


def test_no_graph_without_requires_grad():
    x = Tensor(np.ones(3))
    y = ops.exp(x)
    assert not y.requires_grad and y.parents == ()
    backward(y)  # nothing to do, no error
    assert x.grad is None


def test_operator_sugar_maps_to_primitives():
    a_value, b_value = np.array([1.5, -0.5]), np.array([2.0, 4.0])
    a = Tensor(a_value.copy(), requires_grad=True)
    b = Tensor(b_value.copy(), requires_grad=True)
    out = -(a * b + a - a / b)
    assert out.op == "negative"
    backward(out, np.ones(2))
    np.testing.assert_allclose(a.grad, -(b_value + 1 - 1 / b_value))
    np.testing.assert_allclose(b.grad, -(a_value + a_value / b_value**2))
    m = Tensor(np.array([[1.0, 2.0]]), requires_grad=True) @ Tensor(np.array([[3.0], [4.0]]))
    assert m.op == "matmul" and m.value.item() == 11.0


def test_l2_normalize_of_zero_is_zero_with_a_finite_gradient():
    """Keras' floor on the squared norm: a zero vector (an unseen id's embedding) gives 0, not NaN."""
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    out = ops.l2_normalize(x, axis=-1)
    backward(out, np.ones((2, 3)))
    np.testing.assert_array_equal(out.value, 0)
    np.testing.assert_array_equal(x.grad, 1e6)  # 1 / sqrt(floor): the norm is a constant there


def test_take_rows_sums_the_gradient_of_a_repeated_index():
    table = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    backward(ops.take_rows(table, np.array([2, 0, 2])), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    np.testing.assert_array_equal(table.grad, [[3, 4], [0, 0], [6, 8]])

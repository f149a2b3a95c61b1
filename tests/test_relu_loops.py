"""relu's compiled loops (nnctl/core/_loops.c: relu after dense's bias, and relu's gradient) against
the NumPy passes they replace (nnctl.model.activations), bit for bit.

The two paths are relu's compiled closures with and without the loops: on every kind of float value
(NaN, infinities, signed zeros, subnormals, the largest), in both dtypes, with and without a bias,
in place (as dense runs it) and into a buffer of its own (as the relu layer does), at lengths with
and without a vector tail. A NaN's payload is left out of the comparison: which of two NaN operands
an addition returns is the compiler's choice, and a NaN fails the run whatever its bits.
"""
import numpy as np
import pytest

from nnctl.model import activations

kernels = pytest.importorskip("nnctl.core._loops", reason="nnctl.core._loops was not built (no C compiler at install)")

DTYPES = [np.float32, np.float64]
# (batch, units): a vector loop's width, a tail after it, a single element, a bias over odd units
SHAPES = [(128, 256), (5, 17), (1, 1), (3, 7)]


def _with_specials(rng, shape, dtype):
    """Normal values with every kind of special one sprinkled among them."""
    info = np.finfo(dtype)
    specials = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal,
                info.tiny, -info.tiny, info.max, -info.max]
    values = rng.standard_normal(shape).astype(dtype)
    flat = values.reshape(-1)
    where = rng.choice(flat.size, size=min(flat.size, 2 * len(specials)), replace=False)
    flat[where] = np.resize(np.array(specials, dtype), where.size)
    return values


def _assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    assert a[~nan].tobytes() == b[~nan].tobytes()  # signed zeros included


def _relu(monkeypatch, compiled, x, bias, g, in_place):
    """relu's compiled closures on (x, g): (forward's value, vjp's value), copies."""
    calls = []
    if compiled:
        for name, loop in (("fused_relu", kernels.relu), ("fused_relu_grad", kernels.relu_grad)):
            monkeypatch.setattr(activations, name, lambda *args, loop=loop: calls.append(loop) or loop(*args))
    else:
        monkeypatch.setattr(activations, "fused_relu", None)
    out = x.copy() if in_place else np.empty_like(x)
    forward, vjp = activations.ACTIVATIONS["relu"].compile(np, out, bias)
    value = forward(out if in_place else x).copy()
    grad = vjp(g).copy()
    assert calls == ([kernels.relu, kernels.relu_grad] if compiled else [])
    return value, grad


@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "own buffer"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_loops_are_bit_identical_to_the_numpy_passes(monkeypatch, dtype, shape, with_bias, in_place):
    rng = np.random.default_rng(0)
    x, g = _with_specials(rng, shape, dtype), _with_specials(rng, shape, dtype)
    bias = _with_specials(rng, shape[-1:], dtype) if with_bias else None
    compiled = _relu(monkeypatch, True, x, bias, g, in_place)
    monkeypatch.undo()
    with np.errstate(invalid="ignore"):  # inf * 0 where a unit is off: NaN, and NumPy says so
        passes = _relu(monkeypatch, False, x, bias, g, in_place)
    for loop_value, numpy_value in zip(compiled, passes):
        _assert_same_bits(loop_value, numpy_value)
    value = compiled[0]
    assert (value >= 0).all() or np.isnan(value).any()
    assert not np.signbit(value[value == 0]).any(), "relu gives +0, never -0"
    np.testing.assert_array_equal(compiled[1][value > 0], g[value > 0])


def test_relu_closures_take_views_that_are_not_contiguous(monkeypatch):
    """A relu layer may read a slice of another layer's output, and get a slice of a merge's gradient."""
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((6, 10))[:, ::2], rng.standard_normal((6, 10))[:, 1::2]
    assert not x.flags.c_contiguous and not g.flags.c_contiguous
    forward, vjp = activations.ACTIVATIONS["relu"].compile(np, np.empty(x.shape))
    np.testing.assert_array_equal(forward(x), np.maximum(x, 0))
    np.testing.assert_array_equal(vjp(g), g * (x > 0))


_F32 = np.zeros((2, 3), np.float32)
# name -> relu's (x, bias, out) and relu_grad's (g, out, input_grad) (None: it takes no bias), each with one mistake
BAD_ARGUMENTS = {
    "mixed dtypes": ((_F32, None, np.zeros((2, 3))), (_F32, np.zeros((2, 3)), _F32.copy())),
    "integer buffers": ((np.zeros((2, 3), int), None, np.zeros((2, 3), int)),) * 2,
    "different lengths": ((_F32, None, np.zeros((2, 4), np.float32)), (_F32, _F32, np.zeros((2, 4), np.float32))),
    "non-contiguous": ((np.zeros((2, 6), np.float32)[:, ::2], None, _F32.copy()), (np.zeros((2, 6), np.float32)[:, ::2], _F32, _F32.copy())),
    "read-only output": ((_F32, None, np.frombuffer(bytes(24), np.float32).reshape(2, 3)),
                         (_F32, _F32, np.frombuffer(bytes(24), np.float32).reshape(2, 3))),
    "bias of another length": ((_F32, np.zeros(2, np.float32), _F32.copy()), None),
    "bias of another dtype": ((_F32, np.zeros(3), _F32.copy()), None),
}


@pytest.mark.parametrize("loop, case", [(loop, case) for case, calls in BAD_ARGUMENTS.items()
                                         for loop, arguments in zip(("relu", "relu_grad"), calls) if arguments])
def test_relu_loops_refuse_buffers_they_cannot_run_on(loop, case):
    arguments = BAD_ARGUMENTS[case][loop == "relu_grad"]
    with pytest.raises((TypeError, ValueError, BufferError)):
        getattr(kernels, loop)(*arguments)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_dense_relu_models_gradients_do_not_depend_on_the_loops(monkeypatch, make_session, dtype):
    spec = {"inputs": {"x": [9]}, "loss": {"type": "sparse_categorical_crossentropy", "from_logits": True},
            "layers": [{"name": "hidden", "type": "dense", "units": 33, "activation": "relu"},
                       {"name": "relu", "type": "relu"}, {"name": "logits", "type": "dense", "units": 4}]}
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((17, 9)).astype(dtype), rng.integers(0, 4, 17)

    def gradients():
        session = make_session(spec, dtype=dtype)
        loss = session.gradients({"x": x}, {"logits": labels}, 17, None)[0]
        return loss, session.params.grad_flat.copy()

    compiled = gradients()
    monkeypatch.setattr(activations, "fused_relu", None)
    passes = gradients()
    assert compiled[0] == passes[0]
    assert compiled[1].tobytes() == passes[1].tobytes() and (compiled[1] != 0).any()

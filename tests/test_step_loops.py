"""The compiled step's loops (nnctl/core/_loops.c) against the NumPy passes they replace, bit for bit:
dense's bias with relu or alone and relu's gradient (nnctl.model.activations), sparse softmax
cross-entropy's passes around exp() (nnctl.train.losses), and the batch's gather (nnctl.data.batches).

The two paths are the compiled closures with and without the loops: on every kind of float value
(NaN, infinities, signed zeros, subnormals, the largest), in both dtypes, at lengths with and
without a vector tail; each dense activation with and without a bias, in place (as dense runs it) and into a buffer
of its own (as the relu layer does). A NaN's payload is left out of the comparison: which of two
NaN operands an addition returns is the compiler's choice, and a NaN fails the run whatever its bits.
"""
import types

import numpy as np
import pytest

from nnctl.core import loops
from nnctl.model import activations
from nnctl.train import losses

kernels = pytest.importorskip("nnctl.core._loops", reason="nnctl.core._loops was not built (no C compiler at install)")

# The loops this file holds to their passes (test_optimizers.py and test_finite_checks.py hold the others).
STEP_LOOPS = {"relu", "relu_grad", "add_bias", "xent_shift", "xent_grad", "gather_rows"}

DTYPES = [np.float32, np.float64]
# (batch, units): a vector loop's width, a tail after it, a single element, a bias over odd units
SHAPES = [(128, 256), (5, 17), (1, 1), (3, 7)]


def _spy_on_loops(monkeypatch, calls):
    """The step's loops as built, each call's name appended to `calls` first."""
    spies = {name: (lambda *args, name=name: calls.append(name) or getattr(kernels, name)(*args)) for name in STEP_LOOPS}
    monkeypatch.setattr(loops, "built", types.SimpleNamespace(**spies))


def _without_loops(monkeypatch):
    """As where the module was not built: the NumPy passes."""
    monkeypatch.setattr(loops, "built", None)


def _with_specials(rng, shape, dtype, share=2):
    """Normal values with every kind of special one sprinkled among them, each `share` times at most."""
    info = np.finfo(dtype)
    specials = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal,
                info.tiny, -info.tiny, info.max, -info.max]
    values = rng.standard_normal(shape).astype(dtype)
    flat = values.reshape(-1)
    where = rng.choice(flat.size, size=min(flat.size, share * len(specials)), replace=False)
    flat[where] = np.resize(np.array(specials, dtype), where.size)
    return values


def _assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    assert a[~nan].tobytes() == b[~nan].tobytes()  # signed zeros included


# The loops each dense activation with a compiled form runs: (with a bias, without one)
DENSE_LOOPS = {"relu": (("relu", "relu_grad"), ("relu", "relu_grad")), "linear": (("add_bias",), ())}


def _dense_activation(monkeypatch, compiled, name, x, bias, g, in_place):
    """Activation `name`'s compiled closures on (x, g): (forward's value, vjp's value), copies."""
    calls = []
    _spy_on_loops(monkeypatch, calls) if compiled else _without_loops(monkeypatch)
    out = x.copy() if in_place else np.empty_like(x)
    forward, vjp = activations.ACTIVATIONS[name].compile(np, out, bias)
    value = forward(out if in_place else x.copy()).copy()
    grad = vjp(g).copy()
    assert calls == (list(DENSE_LOOPS[name][bias is None]) if compiled else [])
    return value, grad


@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "own buffer"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", DENSE_LOOPS)
def test_dense_activation_loops_are_bit_identical_to_the_numpy_passes(monkeypatch, name, dtype, shape, with_bias, in_place):
    rng = np.random.default_rng(0)
    x, g = _with_specials(rng, shape, dtype), _with_specials(rng, shape, dtype)
    bias = _with_specials(rng, shape[-1:], dtype) if with_bias else None
    compiled = _dense_activation(monkeypatch, True, name, x, bias, g, in_place)
    monkeypatch.undo()
    with np.errstate(invalid="ignore"):  # inf * 0 where a unit is off, inf - inf: NaN, and NumPy says so
        passes = _dense_activation(monkeypatch, False, name, x, bias, g, in_place)
    for loop_value, numpy_value in zip(compiled, passes):
        _assert_same_bits(loop_value, numpy_value)
    value = compiled[0]
    if name == "linear":
        with np.errstate(invalid="ignore"):
            _assert_same_bits(value, x + bias if with_bias else x)
        return
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


_F32, _BIAS = np.zeros((2, 3), np.float32), np.zeros(3, np.float32)
_READ_ONLY = np.frombuffer(bytes(24), np.float32).reshape(2, 3)
_STRIDED = np.zeros((2, 6), np.float32)[:, ::2]
# name -> {loop: its arguments with that one mistake}: relu and add_bias take (x, bias, out), relu_grad (g, out, input_grad)
BAD_ARGUMENTS = {
    "mixed dtypes": {"relu": (_F32, _BIAS, np.zeros((2, 3))), "add_bias": (_F32, _BIAS, np.zeros((2, 3))),
                     "relu_grad": (_F32, np.zeros((2, 3)), _F32.copy())},
    "integer buffers": {loop: (np.zeros((2, 3), int), np.zeros(3, int), np.zeros((2, 3), int)) for loop in ("relu", "add_bias")}
                       | {"relu_grad": (np.zeros((2, 3), int),) * 3},
    "different lengths": {"relu": (_F32, _BIAS, np.zeros((2, 4), np.float32)), "add_bias": (_F32, _BIAS, np.zeros((2, 4), np.float32)),
                          "relu_grad": (_F32, _F32, np.zeros((2, 4), np.float32))},
    "non-contiguous": {"relu": (_STRIDED, _BIAS, _F32.copy()), "add_bias": (_STRIDED, _BIAS, _F32.copy()),
                       "relu_grad": (_STRIDED, _F32, _F32.copy())},
    "read-only output": {"relu": (_F32, _BIAS, _READ_ONLY), "add_bias": (_F32, _BIAS, _READ_ONLY), "relu_grad": (_F32, _F32, _READ_ONLY)},
    "bias of another length": {loop: (_F32, np.zeros(2, np.float32), _F32.copy()) for loop in ("relu", "add_bias")},
    "bias of another dtype": {loop: (_F32, np.zeros(3), _F32.copy()) for loop in ("relu", "add_bias")},
    "no bias": {"add_bias": (_F32, None, _F32.copy())},
}


@pytest.mark.parametrize("loop, case", [(loop, case) for case, calls in BAD_ARGUMENTS.items() for loop in calls])
def test_dense_activation_loops_refuse_buffers_they_cannot_run_on(loop, case):
    with pytest.raises((TypeError, ValueError, BufferError)):
        getattr(kernels, loop)(*BAD_ARGUMENTS[case][loop])


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
    _without_loops(monkeypatch)
    passes = gradients()
    assert compiled[0] == passes[0]
    assert compiled[1].tobytes() == passes[1].tobytes() and (compiled[1] != 0).any()


# --- sparse softmax cross-entropy ------------------------------------------------------------------
def _xent(monkeypatch, compiled, logits, labels, reduction):
    """The compiled loss's (value, gradient), copies."""
    if not compiled:
        _without_loops(monkeypatch)
    loss = losses.LOSSES["sparse_categorical_crossentropy"]({"from_logits": True, "reduction": reduction})
    loss_and_grad = loss.compile(np, logits.shape, logits.dtype)
    with np.errstate(all="ignore"):  # the specials' NaNs and overflows
        value, grad = loss_and_grad(logits, labels)
    return np.asarray(value), grad.copy()


# name -> (batch, classes) of the logits and how many of each special value they hold
LOGITS = {"a batch of ten classes": ((128, 10), 0), "with special values": ((128, 10), 3), "one class": ((7, 1), 0),
          "a tail after the vector width": ((5, 33), 1), "rows past a block of eight": ((13, 5), 1),
          "ties of signed zeros": ((19, 4), "zeros"), "many classes": ((9, 1000), 20)}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", LOGITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cross_entropy_loops_are_bit_identical_to_the_numpy_passes(monkeypatch, dtype, case, reduction):
    shape, specials = LOGITS[case]
    rng = np.random.default_rng(3)
    if specials == "zeros":  # the row's max is a zero of either sign; which one the subtraction sees matters
        logits = rng.choice(np.array([0.0, -0.0, -1.0], dtype), shape)
    else:
        logits = _with_specials(rng, shape, dtype, specials) if specials else rng.standard_normal(shape).astype(dtype) * 5
    labels = rng.integers(0, shape[1], shape[0])
    compiled = _xent(monkeypatch, True, logits, labels, reduction)
    monkeypatch.undo()
    passes = _xent(monkeypatch, False, logits, labels, reduction)
    for loop_value, numpy_value in zip(compiled, passes):
        _assert_same_bits(loop_value, numpy_value)
    if not specials:  # the loss and its gradient as the formula gives them
        expected = np.log(np.exp(logits.astype(float)).sum(axis=1)) - logits[np.arange(shape[0]), labels]
        assert compiled[0] == pytest.approx(expected.sum() / (shape[0] if reduction == "mean" else 1), rel=1e-5)
        np.testing.assert_allclose(compiled[1].sum(axis=1), 0, atol=1e-6)


def test_the_compiled_loss_takes_logits_that_are_not_contiguous(monkeypatch):
    rng = np.random.default_rng(4)
    logits, labels = rng.standard_normal((5, 8))[:, ::2], rng.integers(0, 4, 5)
    assert not logits.flags.c_contiguous
    compiled = _xent(monkeypatch, True, logits, labels, "mean")
    monkeypatch.undo()
    passes = _xent(monkeypatch, False, np.ascontiguousarray(logits), labels, "mean")
    for loop_value, numpy_value in zip(compiled, passes):
        _assert_same_bits(loop_value, numpy_value)


def test_the_compiled_loss_runs_the_loops(monkeypatch):
    calls = []
    _spy_on_loops(monkeypatch, calls)
    _xent(monkeypatch, True, np.zeros((2, 3)), np.array([0, 2]), "mean")
    assert calls == ["xent_shift", "xent_grad"]


_LOGITS = np.zeros((2, 3), np.float32)
_LABELS = np.array([0, 2])
# name -> xent_shift's (logits, labels, shifted, picked) and xent_grad's (grad, sums, labels, scale), one mistake each
BAD_XENT_ARGUMENTS = {
    "a label past the classes": ((_LOGITS, np.array([0, 3]), _LOGITS.copy(), np.zeros(2, np.float32)),
                                 (_LOGITS.copy(), np.ones(2, np.float32), np.array([0, 3]), 0.5)),
    "a negative label": ((_LOGITS, np.array([-1, 0]), _LOGITS.copy(), np.zeros(2, np.float32)),
                         (_LOGITS.copy(), np.ones(2, np.float32), np.array([-1, 0]), 0.5)),
    "labels of another integer type": ((_LOGITS, _LABELS.astype(np.int32), _LOGITS.copy(), np.zeros(2, np.float32)),
                                       (_LOGITS.copy(), np.ones(2, np.float32), _LABELS.astype(np.int32), 0.5)),
    "labels of another length": ((_LOGITS, np.array([0, 1, 2]), _LOGITS.copy(), np.zeros(2, np.float32)),
                                 (_LOGITS.copy(), np.ones(2, np.float32), np.array([0, 1, 2]), 0.5)),
    "rows of another dtype": ((_LOGITS, _LABELS, _LOGITS.copy(), np.zeros(2)), (_LOGITS.copy(), np.ones(2), _LABELS, 0.5)),
    "logits that are not a matrix": ((np.zeros(6, np.float32), _LABELS, np.zeros(6, np.float32), np.zeros(2, np.float32)),
                                     (np.zeros(6, np.float32), np.ones(2, np.float32), _LABELS, 0.5)),
    "non-contiguous": ((np.zeros((2, 6), np.float32)[:, ::2], _LABELS, _LOGITS.copy(), np.zeros(2, np.float32)),
                       (np.zeros((2, 6), np.float32)[:, ::2], np.ones(2, np.float32), _LABELS, 0.5)),
}


@pytest.mark.parametrize("loop", ["xent_shift", "xent_grad"])
@pytest.mark.parametrize("case", BAD_XENT_ARGUMENTS)
def test_cross_entropy_loops_refuse_what_they_cannot_run_on(loop, case):
    arguments = BAD_XENT_ARGUMENTS[case][loop == "xent_grad"]
    with pytest.raises((TypeError, ValueError, IndexError)):
        getattr(kernels, loop)(*arguments)


# The arrays a data set's inputs and targets come as: every dtype a file gives, rows of any shape.
GATHER_SOURCES = {
    "float32 images": np.arange(50 * 8 * 8, dtype=np.float32).reshape(50, 8, 8),
    "float64 features": np.linspace(-1, 1, 50 * 7).reshape(50, 7),
    "int64 labels": np.arange(50, dtype=np.int64)[::-1].copy(),
    "bool flags": np.arange(50 * 3).reshape(50, 3) % 4 == 0,
    "float16 big-endian": np.arange(50 * 5, dtype=">f2").reshape(50, 5),
    "unicode names": np.array([f"name {i}" for i in range(50)]),
}


@pytest.mark.parametrize("source", GATHER_SOURCES)
def test_the_batch_gather_copies_what_take_does(source):
    array = GATHER_SOURCES[source]
    rows = np.random.default_rng(0).integers(0, len(array), 37)
    out = np.empty((len(rows),) + array.shape[1:], array.dtype)
    assert kernels.gather_rows(array, rows, out) is out
    assert out.dtype == array.dtype and out.tobytes() == array.take(rows, axis=0).tobytes()


@pytest.mark.parametrize("loaded", [True, False], ids=["loops", "numpy"])
def test_batches_gather_with_or_without_the_loop(monkeypatch, loaded):
    from nnctl.core.backend import get_backend
    from nnctl.data.batches import Batches
    from nnctl.data.dataset import Dataset

    backend, calls = get_backend("numpy"), []
    _spy_on_loops(monkeypatch, calls) if loaded else _without_loops(monkeypatch)
    x, y = GATHER_SOURCES["float32 images"], GATHER_SOURCES["int64 labels"]
    dataset = Dataset(None, {"x": x, "strided": x[:, ::2]}, {"out": y}, np.arange(len(x)))
    order = np.random.default_rng(1).permutation(len(x))
    sizes = []
    for (inputs, targets, size), start in zip(Batches(dataset, 16, backend, np.float32)(order), range(0, 50, 16)):
        rows = order[start:start + size]  # each batch before the next: the buffers are reused
        np.testing.assert_array_equal(inputs["x"], x[rows])
        np.testing.assert_array_equal(inputs["strided"], x[:, ::2][rows])
        np.testing.assert_array_equal(targets["out"], y[rows])
        sizes.append(size)
    assert sizes == [16, 16, 16, 2]
    assert calls == (["gather_rows"] * 8 if loaded else [])  # x and the targets; the strided view takes take()


def test_batches_gather_rows_that_are_not_contiguous():
    """A data set's rows may be a strided view (no shuffle): they take take() rather than the loop."""
    from nnctl.core.backend import get_backend
    from nnctl.data.batches import Batches
    from nnctl.data.dataset import Dataset

    x = GATHER_SOURCES["float32 images"]
    rows = np.arange(len(x))[::3]
    assert not rows.flags.c_contiguous
    gathered = [inputs["x"].copy() for inputs, _, _ in Batches(Dataset(None, {"x": x}, None, rows), 8, get_backend("numpy"), np.float32)(None)]
    np.testing.assert_array_equal(np.concatenate(gathered), x[rows])


_ROWS = np.zeros(2, np.int64)
BAD_GATHERS = {
    "a row past the end": (np.zeros((3, 2)), np.array([0, 3]), np.zeros((2, 2))),
    "a negative row": (np.zeros((3, 2)), np.array([-1, 0]), np.zeros((2, 2))),
    "rows of another dtype": (np.zeros((3, 2)), np.zeros(2, np.int32), np.zeros((2, 2))),
    "rows of another count": (np.zeros((3, 2)), np.zeros(3, np.int64), np.zeros((2, 2))),
    "an out of another dtype": (np.zeros((3, 2)), _ROWS, np.zeros((2, 2), np.float32)),
    "an out of another row shape": (np.zeros((3, 2)), _ROWS, np.zeros((2, 3))),
    "an empty source": (np.zeros((0, 2)), _ROWS, np.zeros((2, 2))),
    "a source that is not contiguous": (np.zeros((3, 4))[:, ::2], _ROWS, np.zeros((2, 2))),
    "a read-only out": (np.zeros((3, 2)), _ROWS, np.frombuffer(bytes(32)).reshape(2, 2)),
}


@pytest.mark.parametrize("case", BAD_GATHERS)
def test_the_batch_gather_refuses_what_it_cannot_copy(case):
    with pytest.raises((TypeError, ValueError, IndexError, BufferError)):
        kernels.gather_rows(*BAD_GATHERS[case])


def test_every_step_loop_is_held_here():
    assert STEP_LOOPS <= set(dir(kernels))

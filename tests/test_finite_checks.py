"""The finite check (nnctl.core.finite.all_finite), which `fit` runs on every step's gradient and
the readers on every float array: the compiled one (nnctl/core/_loops.c) and the NumPy fallback say
what numpy.isfinite(...).all() says, and `fit` stops at the first step whose gradient is not
finite, before the optimizer touches the weights."""
import numpy as np
import pytest

from nnctl.core import finite
from nnctl.core.backend import get_backend
from nnctl.errors import TrainingDiverged
from nnctl.spec.load import Override, load_spec
from nnctl.train import fit as fit_module
from nnctl.train.session import Session, load_spec_data
from tests.helpers import SPECS

kernels = pytest.importorskip("nnctl.core._loops", reason="nnctl.core._loops was not built (no C compiler at install)")


CHECKS = {"compiled": kernels.all_finite, "numpy": finite.numpy_all_finite}

# name -> (value placed in an otherwise finite buffer, or None for none placed)
VALUES = {
    "all finite": None,
    "inf": np.inf,
    "-inf": -np.inf,
    "nan": np.nan,
    "largest finite": "max",  # a float sum of these overflows; each element is finite
    "smallest subnormal": "tiny",
    "negative zero": -0.0,
}


def _buffer(dtype, value, where, n=1027):  # odd length: the vector loop's tail is checked too
    array = np.random.default_rng(0).standard_normal(n).astype(dtype)
    if value is not None:
        info = np.finfo(dtype)
        array[where] = {"max": info.max, "tiny": info.smallest_subnormal}.get(value, value) if isinstance(value, str) else value
    return array


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("where", [0, 513, -1])
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_agrees_with_numpy(check, value, where, dtype):
    array = _buffer(dtype, VALUES[value], where)
    expected = value not in ("inf", "-inf", "nan")
    assert bool(np.isfinite(array).all()) == expected
    assert CHECKS[check](array) is expected


def test_fit_checks_with_the_compiled_loop_when_built():
    assert finite.all_finite is fit_module.all_finite is kernels.all_finite


def test_all_finite_of_largest_values_is_true_where_their_sum_overflows():
    array = np.full(4, np.finfo(np.float32).max, np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(array.sum())
    assert kernels.all_finite(array)


@pytest.mark.parametrize("bad", [np.zeros(4, np.int32), np.zeros(8, np.float32)[::2]])
def test_all_finite_refuses_buffers_it_cannot_read(bad):
    with pytest.raises((TypeError, ValueError, BufferError)):
        kernels.all_finite(bad)


def test_fit_stops_before_the_step_whose_gradient_is_not_finite(monkeypatch):
    session = Session(load_spec(SPECS / "two_tower.yaml", [Override.at("train.epochs", 1, "test"), Override.at("train.batch_size", 2, "test")]), get_backend("numpy"))
    dataset = load_spec_data(session)
    calls = []

    def check(array):  # the fourth step's gradient "is" non-finite
        calls.append(array is session.params.grad_flat)
        return len(calls) < 4

    stepped = []
    monkeypatch.setattr(fit_module, "all_finite", check)
    original = session.make_optimizer

    def make_optimizer():
        optimizer = original()
        step = optimizer.step
        optimizer.step = lambda params, grads: (stepped.append(1), step(params, grads))
        return optimizer

    monkeypatch.setattr(session, "make_optimizer", make_optimizer)
    with pytest.raises(TrainingDiverged, match="the gradient became NaN or inf at epoch 1, step 4"):
        fit_module.fit(session, dataset)
    assert calls == [True] * 4 and len(stepped) == 3

"""Each compiled optimizer loop (nnctl/core/_loops.c) against the NumPy passes it replaces: bit for bit.

Both are exact IEEE arithmetic in the same order, so weights and slots must be identical, not
close; torch parity of the updates themselves is in test_torch_parity.py.
"""
import types

import numpy as np
import pytest

from nnctl.core import loops
from nnctl.train import optimizers
from tests.test_step_loops import STEP_LOOPS

kernels = pytest.importorskip("nnctl.core._loops", reason="nnctl.core._loops was not built (no C compiler at install)")

CLIP = {"clipnorm": None, "clipvalue": None}
ADAM = {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, **CLIP}
SGD = {"learning_rate": 0.05, "momentum": 0.9, "nesterov": False, **CLIP}
RMSPROP = {"learning_rate": 1e-3, "rho": 0.9, "epsilon": 1e-7, **CLIP}
ADAGRAD = {"learning_rate": 0.05, "initial_accumulator_value": 0.1, "epsilon": 1e-7, **CLIP}

# registry name -> the _loops function its update runs as; plain SGD (no momentum) has no loop.
LOOPS = {"adam": "adam", "adamw": "adam", "sgd": "sgd", "rmsprop": "scaled", "adagrad": "scaled"}


def _normal(rng, n):
    return rng.standard_normal(n)


def _wide_range(rng, n):
    """Magnitudes from 1e-30 to 1e3: squares underflow to subnormals and to zero in float32."""
    return rng.standard_normal(n) * 10.0 ** rng.integers(-30, 4, n)


def _sparse(rng, n):
    """Mostly exact zeros, as for dead relu units and always-zero input features."""
    return rng.standard_normal(n) * (rng.random(n) < 0.1)


def _stopping():
    """Gradients for 3 steps, then none: the state decays through the subnormal range (float32's
    after some 800 steps at 0.9), where both paths flush it to zero."""
    count = [0]

    def draw(rng, n):
        count[0] += 1
        return rng.standard_normal(n) * (1e-3 if count[0] <= 3 else 0.0)
    return draw


# name -> (registry name, its options, gradient draw (or a maker of one), steps)
CASES = {
    "adam normal": ("adam", ADAM, _normal, 5),
    "adam wide range": ("adam", ADAM, _wide_range, 5),
    "adam sparse, many steps": ("adam", ADAM, _sparse, 40),
    "adam other betas": ("adam", {**ADAM, "learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}, _normal, 5),
    "adam clipnorm": ("adam", {**ADAM, "clipnorm": 0.5}, _wide_range, 5),
    "adamw": ("adamw", {**ADAM, "weight_decay": 0.004}, _normal, 5),
    "adamw strong decay, many steps": ("adamw", {**ADAM, "learning_rate": 0.05, "weight_decay": 0.5}, _sparse, 40),
    "sgd momentum": ("sgd", SGD, _normal, 5),
    "sgd momentum wide range, many steps": ("sgd", SGD, _wide_range, 40),
    "sgd nesterov": ("sgd", {**SGD, "nesterov": True}, _normal, 5),
    "sgd nesterov sparse, many steps": ("sgd", {**SGD, "momentum": 0.5, "nesterov": True}, _sparse, 40),
    "sgd momentum clipvalue": ("sgd", {**SGD, "clipvalue": 0.5}, _wide_range, 5),
    "rmsprop normal": ("rmsprop", RMSPROP, _normal, 5),
    "rmsprop wide range, many steps": ("rmsprop", {**RMSPROP, "rho": 0.5, "epsilon": 1e-3}, _wide_range, 40),
    "rmsprop sparse": ("rmsprop", RMSPROP, _sparse, 40),
    "adagrad normal": ("adagrad", ADAGRAD, _normal, 5),
    "adagrad wide range, many steps": ("adagrad", {**ADAGRAD, "initial_accumulator_value": 0.0}, _wide_range, 40),
    "adagrad sparse": ("adagrad", ADAGRAD, _sparse, 40),
    "adam stopped gradients": ("adam", ADAM, _stopping, 1200),
    "sgd stopped gradients": ("sgd", SGD, _stopping, 1200),
    "rmsprop stopped gradients": ("rmsprop", RMSPROP, _stopping, 1200),
}
DRAW_MAKERS = (_stopping,)


def test_every_compiled_optimizer_has_cases():
    assert set(LOOPS) == set(optimizers.OPTIMIZERS)
    assert {CASES[case][0] for case in CASES} == set(LOOPS)


def _train(monkeypatch, compiled: bool, name, config, draw, steps, dtype, n=1001):
    monkeypatch.setattr(loops, "built", kernels if compiled else None)
    draw = draw() if draw in DRAW_MAKERS else draw
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n).astype(dtype)
    optimizer = optimizers.OPTIMIZERS[name](config, params)
    assert optimizer.compiled(np) == compiled
    for _ in range(steps):
        optimizer.step(params, draw(rng, n).astype(dtype))
    return params, optimizer.state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_compiled_loop_is_bit_identical_to_the_numpy_passes(monkeypatch, case, dtype):
    name, config, draw, steps = CASES[case]
    loop_params, loop_state = _train(monkeypatch, True, name, config, draw, steps, dtype)
    numpy_params, numpy_state = _train(monkeypatch, False, name, config, draw, steps, dtype)
    assert loop_params.dtype == dtype
    np.testing.assert_array_equal(loop_params, numpy_params)
    assert loop_state.keys() == numpy_state.keys() and loop_state
    for slot in loop_state:
        np.testing.assert_array_equal(loop_state[slot], numpy_state[slot])
    assert not np.array_equal(loop_params, np.random.default_rng(0).standard_normal(1001).astype(dtype)), "nothing was updated"


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("case", [case for case in CASES if "stopped" in case])
def test_a_stopped_gradients_state_is_flushed_not_subnormal(monkeypatch, case, compiled):
    """No decaying state is left subnormal (arithmetic on those is many times slower): the
    float32 state of a gradient that stopped has reached exactly 0, in both paths."""
    name, config, draw, steps = CASES[case]
    _, state = _train(monkeypatch, compiled, name, config, draw, steps, np.float32)
    tiny = np.finfo(np.float32).tiny
    for slot, value in state.items():
        assert not ((value != 0) & (np.abs(value) < tiny)).any(), slot
    decaying = state["m_sum"] if name == "adam" else next(iter(state.values()))
    assert (decaying == 0).all()
    short = _train(monkeypatch, compiled, name, config, draw, 50, np.float32)[1]
    assert (next(iter(short.values())) != 0).any()  # not zero from the start: it decayed there


def _fake_loops(calls):
    return types.SimpleNamespace(**{loop: (lambda *args, loop=loop: calls.append(loop)) for loop in set(LOOPS.values())})


@pytest.mark.parametrize("name", LOOPS)
def test_numpy_runs_the_compiled_loop(monkeypatch, name):
    calls = []
    monkeypatch.setattr(loops, "built", _fake_loops(calls))
    config = next(config for case_name, config, _, _ in CASES.values() if case_name == name)
    params = np.zeros(3, np.float32)
    optimizers.OPTIMIZERS[name](config, params).step(params, np.ones(3, np.float32))
    assert calls == [LOOPS[name]]


def test_plain_sgd_runs_numpy_passes(monkeypatch):
    calls = []
    monkeypatch.setattr(loops, "built", _fake_loops(calls))
    params = np.zeros(3, np.float32)
    optimizer = optimizers.SGD({**SGD, "momentum": 0.0}, params)
    optimizer.step(params, np.ones(3, np.float32))
    assert calls == [] and not optimizer.compiled(np)
    np.testing.assert_array_equal(params, np.float32(-0.05))


# What the loops refuse: (params, grads, m_sum, v_sum), each a different mistake, all in the first
# three buffers (the ones the three-buffer loops take).
_F32 = np.zeros(4, np.float32)
BAD_BUFFERS = {
    "mixed dtypes": (_F32.copy(), np.zeros(4, np.float64), _F32.copy(), _F32.copy()),
    "integer buffers": tuple(np.zeros(4, np.int32) for _ in range(4)),
    "different lengths": (_F32.copy(), _F32.copy(), np.zeros(5, np.float32), _F32.copy()),
    "non-contiguous": (np.zeros(8, np.float32)[::2], _F32.copy(), _F32.copy(), _F32.copy()),
    "read-only params": (np.frombuffer(bytes(16), np.float32), _F32.copy(), _F32.copy(), _F32.copy()),
}
# loop -> a call of it on a BAD_BUFFERS case
CALLS = {
    "adam": lambda buffers: kernels.adam(*buffers, 0.9, 0.999, 1e-7, -1e-3),
    "sgd": lambda buffers: kernels.sgd(*buffers[:3], 0.9, 0.01, False),
    "scaled": lambda buffers: kernels.scaled(*buffers[:3], 0.9, 0.1, 1e-7, 1e-3),
}


def test_every_loop_is_checked_for_refusals():
    # The others: fit's finite check (tests/test_finite_checks.py), the step's loops (tests/test_step_loops.py)
    # and the pool they share with OpenBLAS (tests/test_pool.py).
    others = {"all_finite", "share_blas_threads", "pool_stats"} | STEP_LOOPS
    assert set(CALLS) == set(LOOPS.values()) == {name for name in dir(kernels) if not name.startswith("_")} - others


@pytest.mark.parametrize("loop", CALLS)
@pytest.mark.parametrize("case", BAD_BUFFERS)
def test_compiled_loop_refuses_buffers_it_cannot_run_on(loop, case):
    with pytest.raises((TypeError, ValueError, BufferError)):
        CALLS[loop](BAD_BUFFERS[case])

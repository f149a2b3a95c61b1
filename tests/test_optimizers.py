"""The compiled Adam loop (nnctl/core/_loops.c) against the NumPy passes it replaces: bit for bit.

Both are exact IEEE arithmetic in the same order, so weights and moments must be identical, not
close; torch parity of the update itself is in test_torch_parity.py.
"""
import numpy as np
import pytest

from nnctl.train import optimizers

kernels = pytest.importorskip("nnctl.core._loops", reason="nnctl.core._loops was not built (no C compiler at install)")

ADAM = {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "clipnorm": None, "clipvalue": None}


def _normal(rng, n):
    return rng.standard_normal(n)


def _wide_range(rng, n):
    """Magnitudes from 1e-30 to 1e3: squares underflow to subnormals and to zero in float32."""
    return rng.standard_normal(n) * 10.0 ** rng.integers(-30, 4, n)


def _sparse(rng, n):
    """Mostly exact zeros, as for dead relu units and always-zero input features."""
    return rng.standard_normal(n) * (rng.random(n) < 0.1)


# name -> (optimizer class, its options, gradient draw, steps)
CASES = {
    "adam normal": (optimizers.Adam, ADAM, _normal, 5),
    "adam wide range": (optimizers.Adam, ADAM, _wide_range, 5),
    "adam sparse, many steps": (optimizers.Adam, ADAM, _sparse, 40),
    "adam other betas": (optimizers.Adam, {**ADAM, "learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}, _normal, 5),
    "adamw": (optimizers.AdamW, {**ADAM, "weight_decay": 0.004}, _normal, 5),
    "adam clipnorm": (optimizers.Adam, {**ADAM, "clipnorm": 0.5}, _wide_range, 5),
}


def _train(monkeypatch, fused: bool, optimizer_class, config, draw, steps, dtype, n=1001):
    monkeypatch.setattr(optimizers, "fused_adam", kernels.adam if fused else None)
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n).astype(dtype)
    optimizer = optimizer_class(config, params)
    for _ in range(steps):
        optimizer.step(params, draw(rng, n).astype(dtype))
    return params, optimizer.state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_fused_adam_is_bit_identical_to_the_numpy_passes(monkeypatch, case, dtype):
    optimizer_class, config, draw, steps = CASES[case]
    fused_params, fused_state = _train(monkeypatch, True, optimizer_class, config, draw, steps, dtype)
    numpy_params, numpy_state = _train(monkeypatch, False, optimizer_class, config, draw, steps, dtype)
    assert fused_params.dtype == dtype
    np.testing.assert_array_equal(fused_params, numpy_params)
    for slot in ("m_sum", "v_sum"):
        np.testing.assert_array_equal(fused_state[slot], numpy_state[slot])
    assert not np.array_equal(fused_params, np.random.default_rng(0).standard_normal(1001).astype(dtype)), "nothing was updated"


def test_numpy_runs_the_fused_loop(monkeypatch):
    calls = []
    monkeypatch.setattr(optimizers, "fused_adam", lambda *args: calls.append(args))
    params = np.zeros(3, np.float32)
    optimizers.Adam(ADAM, params).step(params, np.ones(3, np.float32))
    assert len(calls) == 1


# What the loop refuses: (params, grads, m_sum, v_sum), each a different mistake.
_F32 = np.zeros(4, np.float32)
BAD_BUFFERS = {
    "mixed dtypes": (_F32.copy(), np.zeros(4, np.float64), _F32.copy(), _F32.copy()),
    "integer buffers": tuple(np.zeros(4, np.int32) for _ in range(4)),
    "different lengths": (_F32.copy(), _F32.copy(), np.zeros(5, np.float32), _F32.copy()),
    "non-contiguous": (np.zeros(8, np.float32)[::2], _F32.copy(), _F32.copy(), _F32.copy()),
    "read-only params": (np.frombuffer(bytes(16), np.float32), _F32.copy(), _F32.copy(), _F32.copy()),
}


@pytest.mark.parametrize("case", BAD_BUFFERS)
def test_fused_adam_refuses_buffers_it_cannot_run_on(case):
    with pytest.raises((TypeError, ValueError, BufferError)):
        kernels.adam(*BAD_BUFFERS[case], 0.9, 0.999, 1e-7, -1e-3)

"""Layers through the whole model path: YAML spec -> load_spec -> Session -> gradcheck.

Also the initializers' shapes and statistics, dropout's training-mode behaviour, dtype keeping,
and a hand-derived backprop example checked against autograd to rounding.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnctl.core import ops
from nnctl.model.activations import ACTIVATIONS
from nnctl.core.autograd import Tensor, backward
from nnctl.diagnostics.gradcheck import gradcheck, random_batch
from nnctl.model.graph import ForwardContext
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers import LAYERS
from nnctl.train.losses import LOSSES


class Taps(ForwardContext):
    """A forward context that keeps every named value and retains its gradient."""

    def __init__(self, backend, training=False, dropout_rng=None):
        super().__init__(backend, training, dropout_rng)
        self.values = {}

    def tap(self, name, tensor):
        if hasattr(tensor, "retain_grad"):
            tensor.retain_grad = True
        self.values[name] = tensor
        return tensor


def dense(units, activation="linear", **extra):
    return {"type": "dense", "units": units, "activation": activation, **extra}


ACTIVATION_CONFIGS = {
    "leaky_relu": {"type": "leaky_relu", "alpha": 0.1},
    "elu": {"type": "elu", "alpha": 0.7},
}

# --- whole-model gradient checks: one row per layer type / variant --------------------------------
GRAPHS = {
    **{
        f"dense-{name}": {"inputs": {"x": [3]}, "layers": [dense(4, ACTIVATION_CONFIGS.get(name, name)), dense(2)]}
        for name in ACTIVATIONS
    },
    "dense-no-bias": {"inputs": {"x": [3]}, "layers": [dense(4, "tanh", use_bias=False), dense(2, use_bias=False)]},
    "concat": {
        "inputs": {"x": [3]},
        "layers": [
            {"name": "a", "from": "x", **dense(2, "tanh")},
            {"name": "b", "from": "x", **dense(3, "sigmoid")},
            {"name": "j", "type": "concat", "from": ["a", "b"]},
            dense(2),
        ],
    },
    "concat-3-with-input": {
        "inputs": {"x": [3]},
        "layers": [
            {"name": "a", "from": "x", **dense(2, "tanh")},
            {"name": "b", "from": "x", **dense(1, "elu")},
            {"name": "j", "type": "concat", "from": ["a", "x", "b"]},
            dense(2),
        ],
    },
    "concat-axis-0": {
        "inputs": {"x": [3]},
        "layers": [
            {"name": "a", "from": "x", **dense(2, "relu")},
            {"name": "b", "from": "x", **dense(3, "leaky_relu")},
            {"name": "j", "type": "concat", "from": ["a", "b"], "axis": 0},
            dense(2),
        ],
    },
    "concat-two-inputs": {
        "inputs": {"u": [2], "v": [3]},
        "layers": [
            {"name": "j", "type": "concat", "from": ["u", "v"]},
            dense(3, "softplus"),
            dense(2),
        ],
    },
    "add": {
        "inputs": {"x": [3]},
        "layers": [
            {"name": "a", "from": "x", **dense(4, "tanh")},
            {"name": "b", "from": "x", **dense(4, "gelu")},
            {"name": "s", "type": "add", "from": ["a", "b"]},
            dense(2),
        ],
    },
    "add-3": {
        "inputs": {"x": [3]},
        "layers": [
            {"name": "a", "from": "x", **dense(3, "tanh")},
            {"name": "b", "from": "x", **dense(3)},
            {"name": "s", "type": "add", "from": ["a", "b", "x"]},
            dense(2),
        ],
    },
    "dropout-inference": {
        "inputs": {"x": [3]},
        "layers": [dense(4, "tanh"), {"type": "dropout", "rate": 0.5}, dense(2)],
    },
    **{
        f"layer-{name}": {
            "inputs": {"x": [3]},
            "layers": [dense(4), {"type": name, **{k: v for k, v in ACTIVATION_CONFIGS.get(name, {}).items() if k != "type"}}, dense(2)],
        }
        for name in ACTIVATIONS
    },
}


def _merged(kind, n=2, **options):
    return {"inputs": {"x": [3]}, "layers": [
        *({"name": f"t{i}", "from": "x", **dense(4, ["tanh", "sigmoid", "elu"][i % 3])} for i in range(n)),
        {"name": "m", "type": kind, "from": [f"t{i}" for i in range(n)], **options}, dense(2)]}


GRAPHS.update({
    **{kind: _merged(kind, 3) for kind in ("multiply", "average", "maximum", "minimum")},
    "subtract": _merged("subtract"),
    "dot": _merged("dot", axes=-1),
    "dot-cosine": _merged("dot", normalize=True),
    # gradcheck runs in inference mode: batch normalization from (trained-looking) moving statistics.
    "batch-normalization-inference": {"inputs": {"x": [3]}, "layers": [
        dense(4, "tanh"), {"type": "batch_normalization", "moving_mean_initializer": {"type": "random_normal", "stddev": 0.3},
                           "moving_variance_initializer": {"type": "random_uniform", "minval": 0.5, "maxval": 2.0},
                           "beta_initializer": {"type": "random_normal", "stddev": 0.3}}, dense(2)]},
    "layer-normalization": {"inputs": {"x": [3]}, "layers": [
        dense(4, "tanh"), {"type": "layer_normalization", "beta_initializer": {"type": "random_normal", "stddev": 0.3}}, dense(2)]},
    "reshape-flatten": {"inputs": {"x": [2, 3]}, "layers": [
        {"type": "flatten", "from": "x"}, dense(4, "tanh"), {"type": "reshape", "target_shape": [2, 2]},
        {"type": "flatten"}, dense(2)]},
})

# Ids are not differentiable: gradcheck's node perturbations would turn them into non-ids, so these
# graphs check every weight against central differences, not the id inputs.
ID_GRAPHS = {
    "embedding": {"inputs": {"ids": [2], "x": [3]}, "layers": [
        {"name": "e", "type": "embedding", "from": "ids", "input_dim": 4, "output_dim": 3,
         "embeddings_initializer": {"type": "random_normal", "stddev": 0.5}},
        {"name": "f", "type": "flatten", "from": "e"}, {"name": "d", "from": "x", **dense(3, "tanh")},
        {"name": "c", "type": "concat", "from": ["f", "d"]}, {"name": "out", "from": "c", **dense(2)}]},
}


def test_graph_table_covers_every_layer_type():
    used = {layer["type"] for graph in [*GRAPHS.values(), *ID_GRAPHS.values()] for layer in graph["layers"]}
    assert set(LAYERS) - used == set()


@pytest.mark.parametrize("name", list(ID_GRAPHS))
def test_gradcheck_weights_of_id_graphs(make_session, name):
    from nnctl.diagnostics.numeric import Probe
    from tests.ids import with_ids

    session = make_session({"seed": 3, **ID_GRAPHS[name], "loss": "mse"})
    rng = np.random.default_rng(5)
    inputs, targets = random_batch(session, 4, rng)
    probe = Probe(session, with_ids(session, inputs, rng), targets)
    assert math.isfinite(probe.loss)
    for key, grad in session.params.grad_views.items():
        numeric = np.array([probe.weight_derivative(key, i, 1e-6) for i in range(grad.size)]).reshape(grad.shape)
        assert np.any(numeric != 0), key
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=key)


def _assert_gradcheck_passes(session, batch=4):
    inputs, targets = random_batch(session, batch)
    rows, loss, _ = gradcheck(session, inputs, targets)
    assert math.isfinite(loss)
    failed = [row for row in rows if not row.passed]
    assert not failed, failed
    weights = {row.name for row in rows if row.kind == "weight"}
    assert weights == set(session.params.grad_views)  # trainable ones: moving statistics are never checked
    nodes = {row.name for row in rows if row.kind == "node"}
    assert set(session.model.input_shapes) <= nodes
    assert {node.name for node in session.model.nodes} <= nodes
    assert all(row.checked == row.total for row in rows)
    return rows


@pytest.mark.parametrize("name", list(GRAPHS))
def test_gradcheck_layer(make_session, name):
    session = make_session({"seed": 3, **GRAPHS[name], "loss": "mse"})
    rows = _assert_gradcheck_passes(session)
    if "-" in name and name.split("-", 1)[1] in ACTIVATIONS and name.startswith("dense") and name != "dense-linear":
        assert "dense/preactivation" in {row.name for row in rows}


LOSS_CONFIGS = [
    ("mse", {}, "linear"),
    ("mae", {}, "linear"),
    ("huber", {"delta": 0.5}, "linear"),
    ("half_squared_error", {}, "sigmoid"),
    ("binary_crossentropy", {}, "sigmoid"),
    ("binary_crossentropy", {"from_logits": True}, "linear"),
    ("categorical_crossentropy", {}, "softmax"),
    ("categorical_crossentropy", {"from_logits": True}, "linear"),
    ("sparse_categorical_crossentropy", {}, "softmax"),
    ("sparse_categorical_crossentropy", {"from_logits": True}, "linear"),
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss,options,activation", LOSS_CONFIGS, ids=lambda v: str(v))
def test_gradcheck_loss(make_session, loss, options, activation, reduction):
    spec = {
        "seed": 5,
        "inputs": {"x": [3]},
        "layers": [dense(4, "tanh"), dense(3, activation)],
        "loss": {"type": loss, "reduction": reduction, **options},
    }
    _assert_gradcheck_passes(make_session(spec), batch=5)


def test_loss_table_covers_every_loss():
    assert {name for name, _, _ in LOSS_CONFIGS} == set(LOSSES)


# --- initializers --------------------------------------------------------------------------------
FAN_IN, FAN_OUT = 200, 300


def _kernel(make_session, initializer, seed=0, shape=(FAN_IN, FAN_OUT)):
    spec = {
        "seed": seed,
        "inputs": {"x": [shape[0]]},
        "layers": [{"name": "d", **dense(shape[1], kernel_initializer=initializer)}],
        "loss": "mse",
    }
    weights = make_session(spec).params.to_host()
    assert weights["d/kernel"].shape == shape
    assert weights["d/bias"].shape == (shape[1],)
    np.testing.assert_array_equal(weights["d/bias"], 0.0)
    return weights["d/kernel"]


TRUNCATION = 0.87962566103423978  # std of a standard normal truncated at +-2


def _uniform_check(limit):
    def check(w):
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.99 * limit
        assert abs(w.mean()) < 0.02 * limit
        assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.03)

    return check


def _truncated_check(stddev):
    def check(w):
        bound = 2 * stddev / TRUNCATION
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.95 * bound
        assert abs(w.mean()) < 0.02 * stddev
        assert w.std() == pytest.approx(stddev, rel=0.03)

    return check


def _normal_check(mean, stddev):
    def check(w):
        assert w.mean() == pytest.approx(mean, abs=0.02 * stddev)
        assert w.std() == pytest.approx(stddev, rel=0.03)
        assert np.abs(w - mean).max() > 3 * stddev  # not truncated

    return check


def _range_check(low, high):
    def check(w):
        assert w.min() >= low and w.max() <= high
        assert w.mean() == pytest.approx((low + high) / 2, abs=0.02 * (high - low))
        assert w.std() == pytest.approx((high - low) / math.sqrt(12), rel=0.03)

    return check


INITIALIZER_CASES = [
    ("glorot_uniform", "glorot_uniform", _uniform_check(math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    ("glorot_normal", "glorot_normal", _truncated_check(math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    ("he_uniform", "he_uniform", _uniform_check(math.sqrt(6 / FAN_IN))),
    ("he_normal", "he_normal", _truncated_check(math.sqrt(2 / FAN_IN))),
    ("lecun_normal", "lecun_normal", _truncated_check(math.sqrt(1 / FAN_IN))),
    ("random_normal", "random_normal", _normal_check(0.0, 0.05)),
    ("random_normal", {"type": "random_normal", "mean": 0.3, "stddev": 0.2}, _normal_check(0.3, 0.2)),
    ("random_uniform", "random_uniform", _range_check(-0.05, 0.05)),
    ("random_uniform", {"type": "random_uniform", "minval": -0.3, "maxval": 0.7}, _range_check(-0.3, 0.7)),
    ("zeros", "zeros", lambda w: np.testing.assert_array_equal(w, 0.0)),
    ("ones", "ones", lambda w: np.testing.assert_array_equal(w, 1.0)),
    ("constant", {"type": "constant", "value": -0.375}, lambda w: np.testing.assert_array_equal(w, -0.375)),
]


@pytest.mark.parametrize("initializer,check", [c[1:] for c in INITIALIZER_CASES], ids=[str(c[1]) for c in INITIALIZER_CASES])
def test_initializer_statistics(make_session, initializer, check):
    check(_kernel(make_session, initializer))


def test_initializer_table_covers_every_initializer():
    assert {c[0] for c in INITIALIZER_CASES} == set(INITIALIZERS)


@pytest.mark.parametrize("name", ["glorot_uniform", "he_normal", "random_normal"])
def test_initializer_seeded(make_session, name):
    a = _kernel(make_session, name, seed=7, shape=(4, 5))
    b = _kernel(make_session, name, seed=7, shape=(4, 5))
    c = _kernel(make_session, name, seed=8, shape=(4, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_constant_initializer_nested_list(make_session):
    value = [[0.5, -1.25, 3.0], [2.0, 0.0, -0.125]]
    spec = {
        "inputs": {"x": [2]},
        "layers": [{"name": "d", **dense(3, kernel_initializer={"type": "constant", "value": value},
                                          bias_initializer={"type": "constant", "value": [0.1, 0.2, 0.3]})}],
        "loss": "mse",
    }
    weights = make_session(spec).params.to_host()
    np.testing.assert_array_equal(weights["d/kernel"], value)
    np.testing.assert_array_equal(weights["d/bias"], [0.1, 0.2, 0.3])


# --- the seed-003 worked example: a 2-4-3 sigmoid network, backprop by hand ----------------------
W1 = [[-0.96988726, -0.84827805, 0.312042, 0.8871379], [0.6567688, -0.29099226, -0.80029106, -0.15143871]]
W2 = [[0.2, -0.5, 0.1], [-0.3, 0.4, 0.6], [0.7, -0.1, -0.2], [0.05, 0.3, -0.45]]
A1 = [0.585077, 0.19305778, 0.2161, 0.64204717]


def test_seed_003_hand_backprop(make_session):
    spec = {
        "seed": 3,
        "inputs": {"x": [2]},
        "layers": [
            {"name": "hidden", **dense(4, "sigmoid", kernel_initializer={"type": "constant", "value": W1})},
            {"name": "out", **dense(3, "sigmoid", kernel_initializer={"type": "constant", "value": W2})},
        ],
        "loss": "half_squared_error",
    }
    session = make_session(spec)
    x = np.array([[1.0, 2.0]])
    y = np.array([[0.3, 0.5, 0.2]])
    ctx = Taps(session.backend)
    session.params.zero_grad()
    output = session.model.forward(session.params.tensors, {"x": x}, ctx)[0]
    loss = session.heads[0].loss(output, y)
    backward(loss)

    a1, a2 = ctx.values["hidden"].value, output.value
    np.testing.assert_allclose(a1[0], A1, atol=1e-6)

    w2 = np.array(W2)
    assert loss.value == pytest.approx(0.5 * ((a2 - y) ** 2).sum(), rel=1e-15)
    dl_da2 = a2 - y
    dl_dz2 = dl_da2 * a2 * (1 - a2)
    dl_dw2 = a1.T @ dl_dz2
    dl_dz1 = (dl_dz2 @ w2.T) * a1 * (1 - a1)
    dl_dw1 = x.T @ dl_dz1

    grads = session.params.grad_views
    np.testing.assert_allclose(ctx.values["out"].grad, dl_da2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ctx.values["out/preactivation"].grad, dl_dz2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ctx.values["hidden/preactivation"].grad, dl_dz1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["out/kernel"], dl_dw2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["out/bias"], dl_dz2[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["hidden/kernel"], dl_dw1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["hidden/bias"], dl_dz1[0], rtol=0, atol=1e-12)


# --- dtypes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_dense_float32_keeps_float32(make_session, activation):
    spec = {"inputs": {"x": [3]}, "layers": [{"name": "d", **dense(4, activation)}, {"name": "e", **dense(2)}], "loss": "mse"}
    session = make_session(spec, dtype="float32")
    assert session.params.flat.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y = np.zeros((5, 2), dtype=np.float32)
    ctx = Taps(session.backend)
    session.params.zero_grad()
    output = session.model.forward(session.params.tensors, {"x": x}, ctx)[0]
    loss = session.heads[0].loss(output, y)
    backward(loss)
    assert output.dtype == np.float32
    assert loss.value.dtype == np.float32
    for name in ("d", "e"):
        assert ctx.values[name].value.dtype == np.float32
        assert ctx.values[name].grad.dtype == np.float32, name
    assert session.params.grad_flat.dtype == np.float32
    assert np.any(session.params.grad_flat != 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss,options,activation", LOSS_CONFIGS, ids=lambda v: str(v))
def test_loss_float32_keeps_float32(make_session, loss, options, activation, reduction):
    spec = {
        "inputs": {"x": [3]},
        "layers": [{"name": "d", **dense(3, activation)}],
        "loss": {"type": loss, "reduction": reduction, **options},
    }
    session = make_session(spec, dtype="float32")
    inputs, targets = random_batch(session, 4)
    x = inputs["x"].astype(np.float32)
    targets = targets["d"]
    if targets.dtype.kind == "f":
        targets = targets.astype(np.float32)
    ctx = Taps(session.backend)
    session.params.zero_grad()
    output = session.model.forward(session.params.tensors, {"x": x}, ctx)[0]
    value = session.heads[0].loss(output, targets)
    backward(value)
    assert value.value.dtype == np.float32
    assert ctx.values["d"].grad.dtype == np.float32
    assert np.isfinite(session.params.grad_flat).all() and np.any(session.params.grad_flat != 0)


# --- dropout -------------------------------------------------------------------------------------
def _dropout_session(make_session, rate):
    spec = {"inputs": {"x": [500]}, "layers": [{"name": "drop", "type": "dropout", "rate": rate}], "loss": "mse"}
    return make_session(spec)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_dropout_training(make_session, rate):
    session = _dropout_session(make_session, rate)
    x_value = np.random.default_rng(1).uniform(0.5, 1.5, (200, 500))
    x = Tensor(x_value.copy(), requires_grad=True)
    ctx = ForwardContext(session.backend, training=True, dropout_rng=np.random.default_rng(42))
    out = session.model.forward({}, {"x": x}, ctx)[0]
    dropped = out.value == 0
    assert dropped.mean() == pytest.approx(rate, abs=0.01)
    np.testing.assert_allclose(out.value[~dropped], x_value[~dropped] / (1 - rate), rtol=1e-15)
    assert out.value.mean() == pytest.approx(x_value.mean(), rel=0.02)  # expectation kept
    backward(ops.reduce_sum(out))
    np.testing.assert_allclose(x.grad, np.where(dropped, 0.0, 1 / (1 - rate)), rtol=1e-15)

    again = session.model.forward({}, {"x": x_value}, ForwardContext(session.backend, True, np.random.default_rng(42)))[0]
    np.testing.assert_array_equal(again.value, out.value)  # seeded: the same mask


@pytest.mark.parametrize("training,rate", [(False, 0.5), (True, 0.0)])
def test_dropout_identity(make_session, training, rate):
    session = _dropout_session(make_session, rate)
    x = np.random.default_rng(2).standard_normal((4, 500))
    out = session.model.forward({}, {"x": x}, ForwardContext(session.backend, training, np.random.default_rng(0)))[0]
    np.testing.assert_array_equal(out.value if hasattr(out, "value") else out, x)


def test_dropout_float32(make_session):
    session = _dropout_session(make_session, 0.25)
    x = Tensor(np.ones((3, 500), dtype=np.float32))
    out = session.model.forward({}, {"x": x}, ForwardContext(session.backend, True, np.random.default_rng(0)))[0]
    assert out.dtype == np.float32


def test_gradcheck_checks_the_training_gradient(make_session):
    """Batch normalization from the batch's statistics and dropout with fixed masks: the loss
    gradcheck differentiates is the one a training step computes, not inference's, and the check
    leaves the moving statistics as they were."""
    from nnctl.diagnostics.numeric import Probe
    from nnctl.model.graph import ForwardContext
    from nnctl.train.step import TrainStep

    spec = {"seed": 2, "inputs": {"x": [3]}, "loss": "mse", "layers": [
        {"name": "h", **dense(5, "tanh")}, {"name": "bn", "type": "batch_normalization", "momentum": 0.5},
        {"name": "drop", "type": "dropout", "rate": 0.3}, {"name": "out", **dense(2)}]}
    session = make_session(spec)
    inputs, targets = random_batch(session, 6)
    before = session.params.to_host()
    training, inference = Probe(session, inputs, targets), Probe(session, inputs, targets, training=False)
    assert training.loss != pytest.approx(inference.loss, rel=1e-3)
    # The training loss without dropout's randomness: the compiled step's, at rate 0.
    plain = make_session({**spec, "layers": [l if l["type"] != "dropout" else {**l, "rate": 0.0} for l in spec["layers"]]})
    step = TrainStep(plain, 6)
    loss = step({"x": inputs["x"]}, targets, ForwardContext(plain.backend, training=True, dropout_rng=np.random.default_rng(0)))[0]
    assert Probe(plain, inputs, targets).loss == pytest.approx(float(loss), rel=1e-12)
    _assert_gradcheck_passes(session, batch=6)
    after = session.params.to_host()
    for key in ("bn/moving_mean", "bn/moving_variance"):
        np.testing.assert_array_equal(after[key], before[key])

"""The facts of the source articles (shared/seeds), checked on the shipped specs in specs/."""
from __future__ import annotations

import json

import numpy
import pytest

from nnctl.core.autograd import backward
from nnctl.core.backend import get_backend
from nnctl.diagnostics.numeric import Recorder
from nnctl.spec.load import Override, load_spec
from nnctl.train.fit import fit
from nnctl.train.session import Session, load_spec_data, training_sets
from tests.helpers import ROOT, SPECS, run_json


def session_for(name: str, **overrides) -> Session:
    return Session(load_spec(SPECS / f"{name}.yaml", _overrides(overrides)), get_backend("numpy"))


def train(name: str, **overrides):
    session = session_for(name, **overrides)
    train_set, val_set = training_sets(session)
    return session, fit(session, train_set, val_set)


def test_two_tower_summary_counts():
    """Article 000: dense1 3, dense2 6, concat 0, dense3 4 parameters; 13 in all."""
    data = run_json("summary", SPECS / "two_tower.yaml")
    assert [(layer["name"], layer["params"]) for layer in data["layers"]] == [
        ("x", 0), ("dense1", 3), ("dense2", 6), ("concat", 0), ("dense3", 4)]
    assert data["total_params"] == 13


def test_two_tower_one_adam_step_lowers_the_loss():
    """Article 000: one Adam(0.01) step on the 10 samples lowers the MSE."""
    session = session_for("two_tower", epochs=1, batch_size=10)
    dataset = load_spec_data(session)
    assert len(dataset) == 10
    before = session.evaluate(dataset, 10)["loss"]
    fit(session, dataset)
    after = session.evaluate(dataset, 10)["loss"]
    assert after < before


def _fnn_forward():
    session = session_for("fnn_sigmoid")
    x = numpy.array([[1.0, 2.0]])
    y = numpy.array([[0.3, 0.5, 0.2]])
    ctx = Recorder(session.backend)
    loss = session.heads[0].loss(session.model.forward(session.params.tensors, {"x": x}, ctx)[0], y)
    backward(loss)
    return session, ctx.nodes, x, y


def test_fnn_sigmoid_forward_matches_article_003():
    _, nodes, _, y = _fnn_forward()
    numpy.testing.assert_allclose(nodes["dense"].value[0], [0.585077, 0.19305778, 0.2161, 0.64204717], atol=1e-6)
    # The article prints dL/da2 = a2 - y = [0.1497804, -0.05124322, 0.23775901].
    numpy.testing.assert_allclose(nodes["dense_1"].value[0] - y[0], [0.1497804, -0.05124322, 0.23775901], atol=1e-7)


def test_fnn_sigmoid_gradients_match_article_003_and_hand_backprop():
    session, nodes, x, y = _fnn_forward()
    a1, a2 = nodes["dense"].value, nodes["dense_1"].value
    dz2 = (a2 - y) * a2 * (1 - a2)
    numpy.testing.assert_allclose(nodes["dense_1"].grad, a2 - y, atol=1e-15)
    numpy.testing.assert_allclose(nodes["dense_1/preactivation"].grad, dz2, atol=1e-15)
    # The article's t.gradient(loss, z_l2) and t.gradient(loss, l2.kernel), printed in float32.
    numpy.testing.assert_allclose(dz2[0], [0.03706735, -0.01267625, 0.05851868], atol=1e-7)
    article_dw2 = [[0.02168725, -0.00741658, 0.03423793], [0.00715614, -0.00244725, 0.01129749],
                   [0.00801025, -0.00273934, 0.01264589], [0.02379899, -0.00813875, 0.03757175]]
    grads = session.params.grad_views
    numpy.testing.assert_allclose(grads["dense_1/kernel"], article_dw2, atol=1e-7)
    numpy.testing.assert_allclose(grads["dense_1/kernel"], a1.T @ dz2, atol=1e-15)
    kernel2 = session.params.views["dense_1/kernel"]
    dz1 = (dz2 @ kernel2.T) * a1 * (1 - a1)
    numpy.testing.assert_allclose(grads["dense/kernel"], x.T @ dz1, atol=1e-15)
    numpy.testing.assert_allclose(grads["dense/bias"], dz1[0], atol=1e-15)


def test_linear_recovers_true_weights():
    """Article 004: fitting data made from known weights gives those weights back."""
    session, _ = train("linear")
    truth = json.loads((ROOT / "data" / "linear_true.json").read_text())
    weights = session.params.to_host()
    numpy.testing.assert_allclose(weights["dense/kernel"], truth["kernel"], atol=1e-2)
    numpy.testing.assert_allclose(weights["dense/bias"], truth["bias"], atol=1e-2)


def test_product_net_beats_linear_net():
    """Article 004: y = x1*x2 is fitted far better by linear+sigmoid+linear than by a linear net."""
    _, nonlinear = train("product")
    _, linear = train("product_linear")
    assert nonlinear[-1]["loss"] < 0.1 * linear[-1]["loss"]
    assert linear[-1]["loss"] > 0.09  # the linear net cannot do better than var(x1*x2) ~ 0.111


@pytest.mark.slow
def test_digits_mlp_reaches_95_percent_validation_accuracy():
    _, history = train("digits")
    assert history[-1]["val_accuracy"] >= 0.95


def _overrides(values: dict) -> list:
    """Overrides as the CLI's flags give them: train keys under train, the rest at the top."""
    return [Override.at(("train." if key in ("epochs", "batch_size", "shuffle", "validation_freq") else "") + key, value, "test") for key, value in values.items() if value is not None]

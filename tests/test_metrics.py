"""Metrics over an epoch of uneven batches, through `Totals` (what fit and evaluate use), against
scikit-learn on the whole epoch's data at once: exact, not a mean of batch values. Also: a state
packed into a checkpoint mid-epoch and unpacked continues to the same value, bit for bit.

One table, one harness; a metric registered without a row fails the coverage test.
"""
from __future__ import annotations

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from nnctl.train.metrics import METRICS  # noqa: E402
from nnctl.train.session import Totals  # noqa: E402

BATCHES = [4, 7, 1, 5, 3]


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def binary(units, logits=False, ties=False):
    def draw(rng, n):
        z = rng.standard_normal((n, units)) * 2
        if ties:
            z = np.round(z)
        y = (rng.random((n, units)) < _sigmoid(z)).astype(float)  # informative scores: AUC well above 0.5
        return (z if logits else _sigmoid(z)), y, _sigmoid(z)
    return draw


def classes(units, one_hot=False, logits=False, scale=2.0):
    def draw(rng, n):
        z = rng.standard_normal((n, units)) * scale
        labels = np.array([rng.choice(units, p=p) for p in _softmax(z)])
        y = np.eye(units)[labels] if one_hot else labels
        return (z if logits else _softmax(z)), y, _softmax(z)
    return draw


def values(units):
    def draw(rng, n):
        y = rng.standard_normal((n, units))
        return y + 0.5 * rng.standard_normal((n, units)), y, None
    return draw


def _indicator(y, units):
    return np.eye(units)[y] if y.ndim == 1 else y


# (metric, loss config, output units, draw, reference(outputs, targets, probabilities))
ROWS = {
    "accuracy-binary": ("accuracy", "binary_crossentropy", 1, binary(1),
                        lambda o, y, p: sklearn_metrics.accuracy_score(y.ravel(), p.ravel() > 0.5)),
    "mae": ("mae", "mse", 3, values(3), lambda o, y, p: sklearn_metrics.mean_absolute_error(y, o)),
    "mse": ("mse", "mse", 2, values(2), lambda o, y, p: sklearn_metrics.mean_squared_error(y, o)),
    "auc": ("auc", "binary_crossentropy", 1, binary(1), lambda o, y, p: sklearn_metrics.roc_auc_score(y.ravel(), p.ravel())),
    "auc-logits": ("auc", {"type": "binary_crossentropy", "from_logits": True}, 1, binary(1, logits=True),
                   lambda o, y, p: sklearn_metrics.roc_auc_score(y.ravel(), p.ravel())),
    "auc-ties": ("auc", "binary_crossentropy", 1, binary(1, ties=True),
                 lambda o, y, p: sklearn_metrics.roc_auc_score(y.ravel(), p.ravel())),
    "auc-two-units": ("auc", "binary_crossentropy", 2, binary(2), lambda o, y, p: sklearn_metrics.roc_auc_score(y.ravel(), p.ravel())),
    "auc-one-hot": ("auc", "categorical_crossentropy", 3, classes(3, one_hot=True),
                    lambda o, y, p: sklearn_metrics.roc_auc_score(y.ravel(), p.ravel())),
    "precision": ("precision", "binary_crossentropy", 1, binary(1),
                  lambda o, y, p: sklearn_metrics.precision_score(y.ravel(), p.ravel() > 0.5)),
    "precision-sparse-logits": ("precision", {"type": "sparse_categorical_crossentropy", "from_logits": True}, 3, classes(3, logits=True),
                                lambda o, y, p: sklearn_metrics.precision_score(_indicator(y, 3).ravel(), p.ravel() > 0.5)),
    "recall": ("recall", {"type": "binary_crossentropy", "from_logits": True}, 2, binary(2, logits=True),
               lambda o, y, p: sklearn_metrics.recall_score(y.ravel(), p.ravel() > 0.5)),
    "recall-one-hot": ("recall", "categorical_crossentropy", 4, classes(4, one_hot=True),
                       lambda o, y, p: sklearn_metrics.recall_score(y.ravel(), p.ravel() > 0.5)),
    "top-k-sparse": ("top_k_categorical_accuracy", "sparse_categorical_crossentropy", 12, classes(12, scale=0.5),
                     lambda o, y, p: sklearn_metrics.top_k_accuracy_score(y, o, k=5, labels=range(12))),
    "top-k-one-hot-logits": ("top_k_categorical_accuracy", {"type": "categorical_crossentropy", "from_logits": True}, 10,
                             classes(10, one_hot=True, logits=True, scale=0.5),
                             lambda o, y, p: sklearn_metrics.top_k_accuracy_score(y.argmax(-1), o, k=5, labels=range(10))),
    "top-3": ({"type": "top_k_categorical_accuracy", "k": 3}, "sparse_categorical_crossentropy", 12, classes(12, scale=0.5),
              lambda o, y, p: sklearn_metrics.top_k_accuracy_score(y, o, k=3, labels=range(12))),
    "r2": ("r2", "mse", 1, values(1), lambda o, y, p: sklearn_metrics.r2_score(y, o)),
    "r2-columns": ("r2", "mse", 3, values(3), lambda o, y, p: sklearn_metrics.r2_score(y, o)),
}


def _session(make_session, metric, loss, units):
    return make_session({"seed": 0, "inputs": {"x": [2]}, "layers": [{"type": "dense", "units": units}],
                         "loss": loss, "metrics": [metric]})


def _name(metric) -> str:
    return metric["type"] if isinstance(metric, dict) else metric


def _add(totals, output, target):
    """One batch into `totals` of the one-output model `_session` builds (its output: dense)."""
    totals.add(0.0, [output], {"dense": target}, len(output))


def _epoch(rng, draw):
    parts = [draw(rng, n) for n in BATCHES]
    return parts, [np.concatenate([p[i] for p in parts]) if parts[0][i] is not None else None for i in range(3)]


@pytest.mark.parametrize("row", list(ROWS))
def test_metric_over_uneven_batches_matches_scikit_learn(make_session, row):
    metric, loss, units, draw, reference = ROWS[row]
    session = _session(make_session, metric, loss, units)
    parts, (outputs, targets, probabilities) = _epoch(np.random.default_rng(3), draw)
    totals = Totals(session)
    for output, target, _ in parts:
        _add(totals, output, target)
    expected = reference(outputs, targets, probabilities)
    metric = _name(metric)
    got = totals.read()[metric]
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert 0 < expected < 1 or metric in ("mae", "mse"), f"a degenerate reference value {expected}"
    # Not a mean of batch values: the per-batch mean differs.
    per_batch = []
    for output, target, _ in parts:
        one = Totals(session)
        _add(one, output, target)
        per_batch.append(one.read()[metric])
    if metric in ("auc", "r2"):
        assert not np.isclose(np.average(per_batch, weights=BATCHES), expected, rtol=1e-9), "the row cannot tell exact from batch means"


@pytest.mark.parametrize("row", list(ROWS))
def test_metric_state_resumes_bit_exactly(make_session, row):
    metric, loss, units, draw, _ = ROWS[row]
    session = _session(make_session, metric, loss, units)
    parts, _ = _epoch(np.random.default_rng(4), draw)
    straight = Totals(session)
    first = Totals(session)
    for i, (output, target, _) in enumerate(parts):
        _add(straight, output, target)
        if i < 2:
            _add(first, output, target)
    saved = {k: np.asarray(v) for k, v in first.state().items()}
    saved["count"] = int(saved["count"])
    resumed = Totals(session, saved)
    for output, target, _ in parts[2:]:
        _add(resumed, output, target)
    assert resumed.read()[_name(metric)] == straight.read()[_name(metric)]


def test_table_covers_every_metric():
    assert set(METRICS) == {_name(row[0]) for row in ROWS.values()}


@pytest.mark.parametrize("metric,target", [("auc", 0.0), ("auc", 1.0), ("precision", 0.0), ("recall", 0.0)])
def test_undefined_values_are_zero_as_in_keras(make_session, metric, target):
    """AUC with targets of one class is undefined, precision and recall with nothing to count
    too: each is 0, as Keras gives (a monitor never compares NaN)."""
    session = _session(make_session, metric, "binary_crossentropy", 1)
    totals = Totals(session)
    _add(totals, np.full((4, 1), 0.2), np.full((4, 1), target))
    assert totals.read()[metric] == 0.0


def test_r2_of_a_constant_target_follows_scikit_learn(make_session):
    session = _session(make_session, "r2", "mse", 2)
    y = np.column_stack([np.full(5, 2.0), np.arange(5.0)])
    totals = Totals(session)
    _add(totals, np.column_stack([np.full(5, 2.0), np.arange(5.0) + 0.5]), y)
    assert totals.read()["r2"] == pytest.approx(sklearn_metrics.r2_score(y, np.column_stack([np.full(5, 2.0), np.arange(5.0) + 0.5])))

"""Metrics: the registry `METRICS`, name -> `MetricType` (its options, and the accumulator it makes
for an output's loss).

An epoch's metric is exact over the whole epoch, not a mean of batch values: each `Metric` keeps
a state that `update` folds one batch into and `result` reads once per progress update. Means of
per-sample values (accuracy, mae, mse, top-k) keep a running sum on the device; precision and
recall keep counts; r2 keeps per-column moments merged batch by batch (Chan's formula, no
cancellation); auc keeps every score and label of the epoch, because a ranking statistic is no
function of per-batch summaries. `pack`/`unpack` turn a state into one host array and back, so a
checkpoint resumes an epoch's metrics exactly (nnctl.train.session.Totals).

Classification metrics read the targets by the loss's kind (nnctl.data.targets): class indices,
one-hot rows or 0/1 values; `accuracy` is the loss's own, as in Keras. NumPy is imported where
it is used: reading a spec (`nnctl summary`) needs no NumPy.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from nnctl.data.targets import LABELS
from nnctl.options import Option, integer


class Metric:
    """An epoch's accumulator. States pack into one host array for checkpoints."""

    def start(self, xp):
        raise NotImplementedError

    def update(self, xp, state, output, targets):
        """The state with one batch folded in."""
        raise NotImplementedError

    def result(self, backend, state, count: int) -> float:
        raise NotImplementedError

    def pack(self, backend, state):
        return backend.to_host(state)

    def unpack(self, xp, array):
        return xp.asarray(array)


class Mean(Metric):
    """A sample-weighted mean: the state is the sum of per-sample values, on the device."""

    def __init__(self, batch_sum):
        self.batch_sum = batch_sum  # (xp, output, targets) -> the batch's sum of per-sample values

    def start(self, xp):
        return 0.0

    def update(self, xp, state, output, targets):
        return state + self.batch_sum(xp, output, targets)

    def result(self, backend, state, count):
        return backend.scalar(state) / count


class Ratio(Metric):
    """Counts (numerator, denominator) summed over the epoch; 0 when the denominator is (Keras)."""

    def __init__(self, counts):
        self.counts = counts  # (xp, output, targets) -> the batch's (numerator, denominator)

    def start(self, xp):
        return xp.zeros(2)

    def update(self, xp, state, output, targets):
        return state + xp.stack(self.counts(xp, output, targets))

    def result(self, backend, state, count):
        numerator, denominator = (float(v) for v in backend.to_host(state))
        return numerator / denominator if denominator else 0.0


class R2(Metric):
    """Keras' R2Score (uniform average over output columns) = scikit-learn's r2_score.

    State: rows (count, mean of y, sum of squared deviations of y, sum of squared residuals),
    one column per output value."""

    def start(self, xp):
        return None

    def update(self, xp, state, output, targets):
        y = targets.reshape(-1, targets.shape[-1]) if targets.ndim > 1 else targets[:, None]
        p = output.reshape(y.shape)
        n = y.shape[0]
        mean = y.mean(axis=0)
        batch = xp.stack([xp.full_like(mean, n), mean, ((y - mean) ** 2).sum(axis=0), ((y - p) ** 2).sum(axis=0)])
        if state is None:
            return batch
        total = state[0] + n
        delta = mean - state[1]
        return xp.stack([total, state[1] + delta * n / total, state[2] + batch[2] + delta * delta * state[0] * n / total,
                         state[3] + batch[3]])

    def result(self, backend, state, count):
        import numpy

        if state is None:
            return 0.0
        _, _, total, residual = backend.to_host(state)
        # A constant column: scikit-learn's force_finite convention (1 if predicted exactly, else 0).
        safe = numpy.where(total > 0, total, 1.0)
        scores = numpy.where(total > 0, 1 - residual / safe, numpy.where(residual == 0, 1.0, 0.0))
        return float(scores.mean())

    def pack(self, backend, state):
        import numpy

        return numpy.zeros((4, 0)) if state is None else backend.to_host(state)

    def unpack(self, xp, array):
        return None if array.size == 0 else xp.asarray(array)


class AUC(Metric):
    """The exact area under the ROC curve of every score in the epoch (ties count half): the
    Mann-Whitney statistic, equal to scikit-learn's roc_auc_score. Undefined while the epoch's
    targets hold one class only; it is then 0, as Keras' AUC gives (its true-positive rate is 0
    over 0, which Keras takes as 0), so a monitor never compares NaN."""

    def __init__(self, loss):
        self.loss = loss

    def start(self, xp):
        return []

    def update(self, xp, state, output, targets):
        scores = self.loss.probabilities(xp, output).reshape(-1)
        state.append(xp.stack([scores, _indicator(xp, self.loss, output, targets).reshape(-1)]))
        return state

    def result(self, backend, state, count):
        import numpy

        if not state:
            return 0.0
        scores, labels = numpy.concatenate([backend.to_host(chunk) for chunk in state], axis=1)
        positive = labels > 0.5
        n_pos = int(positive.sum())
        n_neg = labels.size - n_pos
        if not n_pos or not n_neg:
            return 0.0
        return float((_average_ranks(scores)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

    def pack(self, backend, state):
        import numpy

        if not state:
            return numpy.zeros((2, 0))
        return numpy.concatenate([backend.to_host(chunk) for chunk in state], axis=1)

    def unpack(self, xp, array):
        return [xp.asarray(array)] if array.size else []


def _average_ranks(values):
    """1-based ranks, tied values sharing their mean rank."""
    import numpy

    order = numpy.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = numpy.flatnonzero(numpy.r_[True, ordered[1:] != ordered[:-1]])
    ends = numpy.r_[starts[1:], ordered.size]
    ranks = numpy.empty(values.size)
    ranks[order] = numpy.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def _indicator(xp, loss, output, targets):
    """The targets as 0/1 values of the output's shape (class indices become one-hot rows)."""
    if loss.targets is LABELS:
        return (xp.arange(output.shape[-1]) == targets[:, None]).astype(output.dtype)
    return targets


def _true_class(xp, loss, targets):
    return targets if loss.targets is LABELS else targets.argmax(axis=-1)


def _predicted_positive(xp, loss, output):
    return loss.probabilities(xp, output) > 0.5


def _share_of_positives(denominator):
    """Precision (`denominator` "predicted") or recall ("actual"): true positives over those."""
    def metric(loss, config):
        def counts(xp, output, targets):
            predicted = _predicted_positive(xp, loss, output)
            actual = _indicator(xp, loss, output, targets) > 0.5
            total = predicted if denominator == "predicted" else actual
            return (predicted & actual).sum().astype(output.dtype), total.sum().astype(output.dtype)
        return Ratio(counts)
    return metric


def _top_k(loss, config):
    """A class tied with the k-th best score counts as in the top k (Keras' in_top_k)."""
    k = config["k"]

    def hits(xp, output, targets):
        true = _true_class(xp, loss, targets)
        score = xp.take_along_axis(output, true[:, None].astype("int64"), axis=-1)
        return ((output > score).sum(axis=-1) < k).sum()
    return Mean(hits)


def _mean_error(xp, output, targets, power):
    diff = output - targets
    per_sample = (xp.abs(diff) if power == 1 else diff * diff).mean(axis=-1)
    return per_sample.sum()


class MetricType(NamedTuple):
    """A metric as the spec names it: its options, and `make(loss, config)` -> its accumulator for
    an output trained with `loss`."""

    make: Callable
    options: dict = {}


METRICS = {
    "accuracy": MetricType(lambda loss, config: Mean(loss.accuracy)),
    "mae": MetricType(lambda loss, config: Mean(lambda xp, output, targets: _mean_error(xp, output, targets, 1))),
    "mse": MetricType(lambda loss, config: Mean(lambda xp, output, targets: _mean_error(xp, output, targets, 2))),
    "auc": MetricType(lambda loss, config: AUC(loss)),
    "precision": MetricType(_share_of_positives("predicted")),
    "recall": MetricType(_share_of_positives("actual")),
    "top_k_categorical_accuracy": MetricType(_top_k, {"k": Option(integer(1), 5, "how many of the best-scored classes count as a hit (Keras' default 5)")}),
    "r2": MetricType(lambda loss, config: R2()),
}

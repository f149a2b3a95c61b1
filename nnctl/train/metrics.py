"""Metrics: name -> function of (xp, output, targets) giving the batch's *sum* of per-sample values.

Sums (not means) so that epochs accumulate exactly over uneven batches; they stay on the device
and are read once per progress update. `accuracy` is the loss's, by its kind of target, as in Keras.
"""
from __future__ import annotations


def _mean_error(xp, output, targets, power):
    diff = output - targets
    per_sample = (xp.abs(diff) if power == 1 else diff * diff).mean(axis=-1)
    return per_sample.sum()


METRICS = {
    "accuracy": lambda loss: loss.accuracy,
    "mae": lambda loss: lambda xp, output, targets: _mean_error(xp, output, targets, 1),
    "mse": lambda loss: lambda xp, output, targets: _mean_error(xp, output, targets, 2),
}

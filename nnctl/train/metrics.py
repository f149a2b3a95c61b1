"""Metrics: name -> function of (xp, output, targets) giving the batch's *sum* of per-sample values.

Sums (not means) so that epochs accumulate exactly over uneven batches; they stay on the device
and are read once per progress update. `accuracy` picks its kind from the loss, as Keras does.
"""
from __future__ import annotations


def _mean_error(xp, output, targets, power):
    diff = output - targets
    per_sample = (xp.abs(diff) if power == 1 else diff * diff).mean(axis=-1)
    return per_sample.sum()


def accuracy_for(loss) -> object:
    """The accuracy that fits the loss's targets: sparse, categorical or binary."""
    kind = loss.targets
    logits = loss.config.get("from_logits", False)
    if kind == "labels":
        return lambda xp, output, targets: (output.argmax(axis=-1) == targets).sum()
    if kind == "one_hot":
        return lambda xp, output, targets: (output.argmax(axis=-1) == targets.argmax(axis=-1)).sum()
    threshold = 0.0 if logits else 0.5
    return lambda xp, output, targets: ((output > threshold) == (targets > 0.5)).mean(axis=-1).sum()


METRICS = {
    "accuracy": accuracy_for,
    "mae": lambda loss: lambda xp, output, targets: _mean_error(xp, output, targets, 1),
    "mse": lambda loss: lambda xp, output, targets: _mean_error(xp, output, targets, 2),
}

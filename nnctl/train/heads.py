"""The model's outputs as training sees them: each with its loss, its weight in the total loss and
its metrics, and the names its values are logged under.

A model with one output logs Keras' plain names (`loss`, `accuracy`, `val_loss`). With several,
the trained loss is the weighted sum of the outputs' losses (`loss_weights`, default 1 each, as
Keras), logged as `loss`, and each output's own loss and metrics are logged under Keras'
names `<output>_loss` and `<output>_<metric>` (with their `val_` forms).
"""
from __future__ import annotations

from typing import NamedTuple

from nnctl.train.losses import LOSSES
from nnctl.train.metrics import METRICS


def log_name(output: str, name: str, several: bool) -> str:
    """The log name of an output's loss or metric `name`: prefixed by the output when there are several."""
    return f"{output}_{name}" if several else name


def log_names(outputs) -> list[str]:
    """Every value an epoch logs for the spec's `outputs` (nnctl.spec.load.OutputSpec), before its
    val_ forms: the total loss, each output's loss when there are several, then the metrics."""
    several = len(outputs) > 1
    names = ["loss"] + ([log_name(o.name, "loss", True) for o in outputs] if several else [])
    return names + [log_name(o.name, m.name, several) for o in outputs for m in o.metrics]


def loss_names(outputs) -> str:
    """The spec's `outputs`' losses by name, each once ("mse", or "sparse_categorical_crossentropy, mse")."""
    return ", ".join(dict.fromkeys(o.loss.name for o in outputs))


def total_keys(outputs) -> list[str]:
    """The running totals (nnctl.train.session.Totals) a checkpoint taken mid-epoch holds for the
    spec's `outputs`, besides count and penalty."""
    several = len(outputs) > 1
    own = [f"loss/{log_name(o.name, 'loss', True)}" for o in outputs] if several else []
    return ["loss", *own, *(f"metric/{log_name(o.name, m.name, several)}" for o in outputs for m in o.metrics)]


class Head(NamedTuple):
    """One output of the model: its loss, its weight, and its metrics' accumulators by log name."""

    name: str  # the output layer (or input)
    shape: tuple  # its per-sample shape
    loss: object  # nnctl.train.losses.Loss
    weight: float
    metrics: dict  # log name -> nnctl.train.metrics.Metric
    several: bool  # whether the model has other outputs: its names are then prefixed by its own

    @property
    def loss_log(self) -> str | None:
        """Its own loss's log name; None when it is the only output (`loss` is its loss)."""
        return log_name(self.name, "loss", True) if self.several else None

    @property
    def shown(self) -> str:
        """What `predict` calls its values (columns `<shown>_<i>`, the exported output): `prob` for
        probabilities, else the output's name; prefixed by the output's name when there are several."""
        base = "prob" if self.loss.gives_probabilities else self.name
        return log_name(self.name, base, self.several and base != self.name)

    @property
    def class_column(self) -> str:
        """What `predict` calls its predicted class: `class`, or `<output>_class` with several outputs."""
        return log_name(self.name, "class", self.several)

    @property
    def units(self) -> int:
        return self.shape[-1]

    @property
    def targets(self):
        """The kind of target its loss reads (nnctl.data.targets)."""
        return self.loss.targets


def weighted_total(heads: list, losses: list):
    """The trained loss from each output's: their weighted sum, or the one output's own loss."""
    if len(heads) == 1:
        return losses[0]
    return sum(head.weight * loss for head, loss in zip(heads, losses))


def make_heads(spec, shapes: dict) -> list[Head]:
    several = len(spec.outputs) > 1
    heads = []
    for output in spec.outputs:
        loss = LOSSES[output.loss.name](output.loss.options)
        metrics = {log_name(output.name, m.name, several): METRICS[m.name].make(loss, m.options) for m in output.metrics}
        heads.append(Head(output.name, shapes[output.name], loss, output.weight, metrics, several))
    return heads

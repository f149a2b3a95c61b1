"""Kinds of target: what a loss is trained against, owned by the loss (`Loss.targets`).

Each kind checks a data file's targets, draws random ones (gradcheck, `nnctl time`), counts
correct predictions for `accuracy`, and says which classes targets and outputs name, for
evaluation and prediction. Adding a kind of target means one class here. NumPy is imported in
the methods that use it: losses name these kinds, and reading a spec (`nnctl summary`) needs no
NumPy.
"""
from __future__ import annotations

from nnctl.errors import DataError, Problem, describe, number_text


def sample_locator(file, target_columns):
    """Where sample i's targets are in an .npy/.npz file: the array (or columns) and the sample."""
    what = f"array {target_columns!r}" if isinstance(target_columns, str) else f"columns {target_columns!r}"

    def locate(i):
        return {"file": str(file)}, f"{what}, sample {i + 1}"

    return locate


class Targets:
    """Values of the output's shape (regression); the base of the other kinds."""

    name = "values"
    shows_classes = False  # whether `nnctl predict` adds a class column

    def check(self, file, targets, units, dtype, locate, what="targets"):
        """The targets as the step reads them, or a DataError naming the first bad sample; `what`
        names them in messages ("targets", or an output's of several)."""
        values = targets.reshape(len(targets), -1) if targets.ndim != 2 else targets
        if units is not None and values.shape[1] != units:
            plural = "column" if units == 1 else "columns"
            raise DataError(Problem(f"{what}: expected {units} {plural} (one per output unit), received {values.shape[1]}", str(file)))
        bad = self._bad_rows(values)
        if bad is not None and bad.size:
            row = int(bad[0])
            place, text = locate(row)
            raise DataError(Problem(f"{what}: expected {self._expected}, received [{', '.join(map(number_text, values[row]))}] (in {text})", **place))
        return values.astype(dtype, copy=False)

    _expected = ""

    def _bad_rows(self, values):
        return None

    def random(self, rng, shape):
        """Seeded targets of this kind for outputs of `shape` (batch first), as host arrays."""
        return rng.standard_normal(shape)

    def correct(self, xp, output, targets, from_logits: bool):
        """The batch's count of correct predictions (summed per-sample fractions): Keras'
        binary accuracy, at 0 for logits and 0.5 for probabilities."""
        threshold = 0.0 if from_logits else 0.5
        return ((output > threshold) == (targets > 0.5)).mean(axis=-1).sum()

    def class_count(self, units: int) -> int | None:
        """How many classes the targets name, or None when they are not classes."""
        return None

    def true_classes(self, targets):
        """The class index of each sample's target (host arrays), when there are classes."""
        return None

    def predicted_classes(self, values):
        """The class each row of predict's output (probabilities) stands for, when there are classes."""
        return None


class _Classes(Targets):
    """Targets that name one of the output's units as the class: its argmax is the prediction."""

    shows_classes = True

    def class_count(self, units):
        return units

    def predicted_classes(self, values):
        return values.argmax(axis=-1)


class Labels(_Classes):
    """One integer class index per sample (sparse categorical cross-entropy)."""

    name = "labels"

    def check(self, file, targets, units, dtype, locate, what="targets"):
        import numpy

        values = targets.reshape(len(targets), -1) if targets.ndim > 1 else targets[:, None]
        if values.shape[1] != 1:
            raise DataError(Problem(f"{what}: expected one class-index column for {describe('sparse_categorical_crossentropy')}, received {values.shape[1]} columns", str(file)))
        labels = values[:, 0]
        bad = numpy.flatnonzero((labels != numpy.round(labels)) | (labels < 0) | (labels >= units))
        if bad.size:
            row = int(bad[0])
            place, text = locate(row)
            raise DataError(Problem(f"{what}: expected class indices in [0, {units}) for sparse categorical cross-entropy "
                                    f"(the output has {units} units), received {number_text(labels[row])} (in {text})", **place))
        return labels.astype(numpy.int64)

    def random(self, rng, shape):
        return rng.integers(0, shape[-1], shape[:-1])

    def correct(self, xp, output, targets, from_logits):
        return (output.argmax(axis=-1) == targets).sum()

    def true_classes(self, targets):
        import numpy

        return targets.reshape(len(targets)).astype(numpy.int64)


class OneHot(_Classes):
    """A one-hot (or probability) row per sample (categorical cross-entropy)."""

    name = "one_hot"
    _expected = "one-hot or probability rows (non-negative, summing to 1) for categorical cross-entropy"

    def _bad_rows(self, values):
        import numpy

        return numpy.flatnonzero((values < 0).any(axis=1) | (numpy.abs(values.sum(axis=1) - 1) > 1e-3))

    def random(self, rng, shape):
        import numpy

        return numpy.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]

    def correct(self, xp, output, targets, from_logits):
        return (output.argmax(axis=-1) == targets.argmax(axis=-1)).sum()

    def true_classes(self, targets):
        return targets.reshape(len(targets), -1).argmax(axis=1)


class Binary(Targets):
    """0/1 (or a probability) per output unit (binary cross-entropy)."""

    name = "binary"
    _expected = "values in [0, 1] for binary cross-entropy"

    def _bad_rows(self, values):
        import numpy

        return numpy.flatnonzero(((values < 0) | (values > 1)).any(axis=1))

    def random(self, rng, shape):
        import numpy

        return rng.integers(0, 2, shape).astype(numpy.float64)

    def class_count(self, units):
        # One unit is two classes; several units are independent yes/no questions, not classes.
        return 2 if units == 1 else None

    def true_classes(self, targets):
        import numpy

        return (targets.reshape(len(targets)) > 0.5).astype(numpy.int64)

    def predicted_classes(self, values):
        import numpy

        # The one unit's probability of class 1 (predict gives probabilities for logits too).
        return (values.reshape(len(values)) > 0.5).astype(numpy.int64)


VALUES, LABELS, ONE_HOT, BINARY = Targets(), Labels(), OneHot(), Binary()


def kind_for(target_kinds: dict | None, output: str) -> tuple:
    """(kind of target, units) that `target_kinds` gives an output's targets: values of any width
    when it gives none (a reader's caller that checks no loss's kind)."""
    return (target_kinds or {}).get(output, (VALUES, None))

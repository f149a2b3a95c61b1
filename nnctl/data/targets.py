"""Targets: the values a loss is trained against, checked against the loss's kind of target."""
from __future__ import annotations

import numpy

from nnctl.errors import DataError, Problem, describe, number_text


def sample_locator(file, target_columns):
    """Where sample i's targets are in an .npy/.npz file: the array (or columns) and the sample."""
    what = f"array {target_columns!r}" if isinstance(target_columns, str) else f"columns {target_columns!r}"

    def locate(i):
        return {"file": str(file)}, f"{what}, sample {i + 1}"

    return locate


def check_targets(file, targets, loss, units, dtype, locate):
    kind = loss.targets if loss is not None else "values"

    def problem(i, message):
        place, text = locate(i)
        return DataError(Problem(f"targets: {message} (in {text})", **place))

    if kind == "labels":
        values = targets.reshape(len(targets), -1) if targets.ndim > 1 else targets[:, None]
        if values.shape[1] != 1:
            raise DataError(Problem(f"targets: expected one class-index column for {describe('sparse_categorical_crossentropy')}, received {values.shape[1]} columns", str(file)))
        labels = values[:, 0]
        bad = numpy.flatnonzero((labels != numpy.round(labels)) | (labels < 0) | (labels >= units))
        if bad.size:
            row = int(bad[0])
            raise problem(row, f"expected class indices in [0, {units}) for sparse categorical cross-entropy (the output has {units} units), received {number_text(labels[row])}")
        return labels.astype(numpy.int64)
    values = targets.reshape(len(targets), -1) if targets.ndim != 2 else targets
    if units is not None and values.shape[1] != units:
        plural = "column" if units == 1 else "columns"
        raise DataError(Problem(f"targets: expected {units} {plural} (one per output unit), received {values.shape[1]}", str(file)))
    if kind == "binary":
        bad = numpy.flatnonzero(((values < 0) | (values > 1)).any(axis=1))
        if bad.size:
            row = int(bad[0])
            raise problem(row, f"expected values in [0, 1] for binary cross-entropy, received [{', '.join(map(number_text, values[row]))}]")
    if kind == "one_hot":
        bad = numpy.flatnonzero((values < 0).any(axis=1) | (numpy.abs(values.sum(axis=1) - 1) > 1e-3))
        if bad.size:
            row = int(bad[0])
            raise problem(row, "expected one-hot or probability rows (non-negative, summing to 1) for categorical cross-entropy, "
                               f"received [{', '.join(map(number_text, values[row]))}]")
    return values.astype(dtype, copy=False)

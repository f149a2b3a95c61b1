"""Evaluation of trained weights on a whole data file: loss, metrics and, for classifiers, a
confusion matrix with per-class precision, recall, F1 and support (scikit-learn's definitions).

No printing: `evaluate_file` returns plain data (lists and floats, ready for JSON) that
nnctl.cli.report renders.
"""
from __future__ import annotations

import os

import numpy

from nnctl.train.session import load_spec_data

# Losses whose targets are classes: sparse labels, one-hot rows, or one 0/1 unit (two classes).
CLASS_TARGETS = ("labels", "one_hot")


def is_classifier(session) -> bool:
    kind = session.loss.targets
    return kind in CLASS_TARGETS or (kind == "binary" and session.output_units == 1)


def true_classes(session, dataset):
    """Host class index per sample of `dataset`, or None when the loss has no class targets."""
    targets = numpy.asarray(dataset.targets[dataset.rows])
    kind = session.loss.targets
    if kind == "labels":
        return targets.reshape(len(targets)).astype(numpy.int64)
    if kind == "one_hot":
        return targets.reshape(len(targets), -1).argmax(axis=1)
    if kind == "binary" and session.output_units == 1:
        return (targets.reshape(len(targets)) > 0.5).astype(numpy.int64)
    return None


def predicted_classes(session, dataset):
    values, classes = session.predict(dataset)
    if classes is not None:
        return classes
    # One sigmoid unit (or one logit: predict gives its probability): class 1 when p > 0.5.
    return (values.reshape(len(values)) > 0.5).astype(numpy.int64)


def confusion_matrix(true, predicted, classes: int):
    """counts[i][j]: samples of true class i predicted as class j."""
    matrix = numpy.zeros((classes, classes), dtype=numpy.int64)
    numpy.add.at(matrix, (true, predicted), 1)
    return matrix


def per_class_scores(matrix) -> tuple[list[dict], dict]:
    """Precision, recall, F1 and support per class, and their macro and weighted averages.

    A ratio with a zero denominator is 0 (scikit-learn's zero_division=0).
    """
    matrix = numpy.asarray(matrix, dtype=numpy.float64)
    hits = numpy.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)

    def ratio(a, b):
        return numpy.divide(a, b, out=numpy.zeros_like(a), where=b > 0)

    precision = ratio(hits, predicted)
    recall = ratio(hits, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    rows = [
        {"class": i, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i in range(len(hits))
    ]
    total = support.sum()
    weights = support / total if total else numpy.zeros_like(support)
    averages = {
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()), "support": int(total)},
        "weighted": {"precision": float(precision @ weights), "recall": float(recall @ weights), "f1": float(f1 @ weights), "support": int(total)},
    }
    return rows, averages


def evaluate_file(session, path=None) -> dict:
    """Loss and metrics of the session's weights on every row of the spec's data file (or `path`)."""
    dataset = load_spec_data(session, path)
    batch_size = session.spec.train["batch_size"]
    result = {
        "name": session.spec.name,
        "data": os.path.normpath(dataset.file),  # specs/../data/x.csv -> data/x.csv
        "samples": len(dataset),
        "loss_name": session.spec.loss[0],
        "metrics": session.evaluate(dataset, batch_size),
        "classification": None,
    }
    if is_classifier(session):
        true = true_classes(session, dataset)
        predicted = predicted_classes(session, dataset)
        classes = max(session.output_units, 2)
        matrix = confusion_matrix(true, predicted, classes)
        rows, averages = per_class_scores(matrix)
        result["classification"] = {
            "classes": classes,
            "accuracy": float(numpy.trace(matrix) / matrix.sum()),
            "confusion_matrix": matrix.tolist(),
            "per_class": rows,
            "averages": averages,
        }
    return result

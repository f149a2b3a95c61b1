"""Evaluation of trained weights on a whole data file: loss, metrics and, for classifiers, a
confusion matrix with per-class precision, recall, F1 and support (scikit-learn's definitions).

No printing: `evaluate_file` returns plain data (lists and floats, ready for JSON) that
nnctl.cli.report renders.
"""
from __future__ import annotations

import os

import numpy

from nnctl.data.prepared import class_names
from nnctl.train.session import load_spec_data

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
    """Loss and metrics of the session's weights on every row of the spec's data file (or `path`),
    and per output its loss and, for a classifier, its classification report. A one-output model's
    also stand at the top level (`loss_name`, `classification`)."""
    dataset = load_spec_data(session, path)
    batch_size = session.spec.train["batch_size"]
    result = {
        "name": session.spec.name,
        "data": os.path.normpath(dataset.file),  # specs/../data/x.csv -> data/x.csv
        "samples": len(dataset),
        "metrics": session.evaluate(dataset, batch_size),
    }
    if str(dataset.file) in session.preprocessing_reports:  # the spec preprocesses its columns
        result["preprocessing"] = session.preprocessing_reports[str(dataset.file)].as_dict()
    predictions = None
    outputs = []
    for i, head in enumerate(session.heads):
        kind = head.targets
        classes = kind.class_count(head.units)
        classification = None
        if classes is not None:
            predictions = predictions or session.predict(dataset)
            true = kind.true_classes(numpy.asarray(dataset.targets[head.name][dataset.rows]))
            matrix = confusion_matrix(true, kind.predicted_classes(predictions[i][0]), classes)
            rows, averages = per_class_scores(matrix)
            data = session.spec.data
            names = class_names(session.preprocessing, data, head.name) if data is not None else None
            classification = {
                "classes": classes,
                "class_names": names or [str(j) for j in range(classes)],
                "accuracy": float(numpy.trace(matrix) / matrix.sum()),
                "confusion_matrix": matrix.tolist(),
                "per_class": rows,
                "averages": averages,
            }
        outputs.append({"name": head.name, "loss_name": session.spec.outputs[i].loss.name, "loss_weight": head.weight,
                        "classification": classification})
    result["outputs"] = outputs
    if len(outputs) == 1:
        result["loss_name"], result["classification"] = outputs[0]["loss_name"], outputs[0]["classification"]
    return result

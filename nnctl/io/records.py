"""Files a run leaves behind: history CSV and predictions, written atomically at full precision."""
from __future__ import annotations

import csv
import json
import os
import platform
import shutil

import numpy

from nnctl import __version__
from nnctl.io.atomic import atomic_write


def history_columns(history: list[dict]) -> list[str]:
    """Every key of every epoch, in a fixed order: epoch, training logs, val_ logs, then lr and
    timings. Epochs without validation (train.validation_freq > 1) lack the val_ keys."""
    seen = list(dict.fromkeys(key for row in history for key in row))
    tail = ["lr", "seconds", "samples_per_second"]

    def rank(key):
        return (0 if key == "epoch" else 3 + tail.index(key) if key in tail else 2 if key.startswith("val_") else 1)

    return sorted(seen, key=rank)  # stable: first appearance within each rank


def save_history(path, history: list[dict]) -> None:
    columns = history_columns(history) if history else ["epoch"]
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in history:
            writer.writerow([repr(row[c]) if isinstance(row.get(c), float) else row.get(c, "") for c in columns])


def save_predictions(path, values, classes: dict, columns) -> None:
    """.npy: the values array; .csv: one row per sample, floats in round-trip precision, then the
    class columns (`classes`: {column name: a class per row})."""
    write_predictions(path, [(values, classes)], columns, list(classes))


def write_predictions(path, blocks, columns, class_columns) -> int:
    """`save_predictions` of blocks of rows ((values, {class column: a class per row}), in order)
    joined, written as they come (a .npy's rows wait in a temporary file for the header that counts
    them); the number of rows. Nothing is written if a block raises."""
    if str(path).lower().endswith(".npy"):
        import tempfile

        rows, first = 0, None
        with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path))) as spool:
            for values, _ in blocks:
                values = numpy.ascontiguousarray(values)
                first = values if first is None else first
                spool.write(values.data)
                rows += len(values)
            # the header numpy.save writes for the joined array
            header = numpy.lib.format.header_data_from_array_1_0(first[:0])
            header["shape"] = (rows,) + first.shape[1:]
            spool.seek(0)
            with atomic_write(path) as handle:
                numpy.lib.format.write_array_header_1_0(handle, header)
                shutil.copyfileobj(spool, handle, 1 << 20)
        return rows
    rows = 0
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(columns) + list(class_columns))
        for values, classes in blocks:
            for i, row in enumerate(values.reshape(len(values), -1)):
                writer.writerow([repr(float(v)) for v in row] + [str(classes[name][i]) for name in class_columns])
            rows += len(values)
    return rows


def save_run_record(path, spec, argv, outcome: dict) -> None:
    """run.json: the resolved spec, the command line, versions and seed, for reproducing a run, and
    its `outcome` (epochs trained, the files it wrote), for telling whose files are whose."""
    record = {
        "command": list(argv), "seed": spec.seed, "backend": spec.backend, "spec_file": str(spec.file),
        "versions": {"nnctl": __version__, "numpy": numpy.__version__, "python": platform.python_version()},
        "platform": platform.platform(), **outcome, "resolved_spec": spec.resolved(),
    }
    with atomic_write(path, "w") as handle:
        json.dump(record, handle, indent=2, default=str)
        handle.write("\n")


def read_run_record(path) -> dict:
    """run.json's contents, or {} when there is none (or it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}

"""`nnctl init`: a spec that trains well on a raw table file, from its header and values.

Every other column is an input, typed over the whole file: numbers are standardized, two-valued
text is binary, a few distinct texts are one-hot categories (their vocabulary written out), and
missing values are filled (numbers with the mean, texts with the most frequent value); a column
with one value or too many distinct texts is skipped. The task is classification for a text
target or a few integer values (or when asked), regression otherwise. The spec is a small ReLU
MLP with early stopping that trains as written; its header says what was decided for each column
and why. No printing: `starter_spec` returns the YAML text and a description of what was chosen.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import yaml

from nnctl.errors import DataError, Problem, UsageError, describe, did_you_mean, number_text
from nnctl.io.atomic import atomic_write

TASKS = ("regression", "classification")
HIDDEN_UNITS = (32, 32)
MAX_AUTO_CLASSES = 20  # at most this many distinct integer labels is taken for classes
MAX_CATEGORIES = 50  # a text column with more distinct values is taken for names or free text
BATCH_SIZE = 32
# Epochs for about TARGET_STEPS optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS]; early stopping
# (PATIENCE epochs) ends a run that has stopped improving and keeps its best epoch.
TARGET_STEPS, MIN_EPOCHS, MAX_EPOCHS, PATIENCE = 4000, 20, 300, 20


class _Columns(list):
    """Column names, written ["a", "b"]: double-quoted, where every character can be escaped and no
    name reads back as something else (1e3 as a number, null as nothing, a NEL as a line break)."""


class _Name(str):
    """A column name as a mapping key, written double-quoted for the same reasons as _Columns."""


class _SpecDumper(yaml.SafeDumper):
    pass


def _represent_columns(dumper, names):
    quoted = [dumper.represent_scalar("tag:yaml.org,2002:str", name, style='"') for name in names]
    return yaml.SequenceNode("tag:yaml.org,2002:seq", quoted, flow_style=True)


def _represent_text(dumper, text):
    # Plain or single-quoted, a line break (NEL, U+2028) is read back folded and a control character refused.
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=None if text.isprintable() else '"')


_SpecDumper.add_representer(_Columns, _represent_columns)
_SpecDumper.add_representer(_Name, lambda dumper, name: dumper.represent_scalar("tag:yaml.org,2002:str", name, style='"'))
_SpecDumper.add_representer(str, _represent_text)


def _comment_text(text: str) -> str:
    """`text` for a YAML comment: a line break (\\n, \\r, NEL, U+2028) in a name would end the comment
    and make the rest of the line YAML, and a control character is not allowed in YAML at all."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _spec_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("_") or "model"


def starter_spec(csv_path, target: str, task: str | None, out) -> tuple[str, dict]:
    """(YAML text of the spec, facts: task, inputs, skipped columns, classes, one line per column)
    for a table file: each column read, typed and described, its preprocessing chosen."""
    from nnctl.io.tables import read_table  # here, not at the top: the CLI starts without NumPy

    csv_path, out = Path(csv_path), Path(out)
    header = _header(csv_path)
    for later, name in enumerate(header):
        if name and name in header[:later]:
            # The data reader refuses a doubled column the spec uses, and which one a name meant is not ours to guess.
            raise DataError(Problem(f"expected distinct column names in the header, received {name!r} as columns "
                                    f"{header.index(name) + 1} and {later + 1}; rename one", str(csv_path), 1, later + 1))
    table = read_table(csv_path, DataError, "a table file with a header row", [name for name in header if name])
    if table.rows == 0:
        raise DataError(Problem("expected a header row and at least one row of values, received only a header", str(csv_path)))
    unnamed = [i + 1 for i, name in enumerate(header) if not name]  # a spec names its columns: these cannot be used
    header = [name for name in header if name]
    if target not in header:
        raise DataError(Problem(f"--target: expected a column of the header ({', '.join(header)}), received {target!r}{did_you_mean(target, header)}", str(csv_path), 1))
    goal = table.columns[target]
    task, classes, target_options, target_note = _target(goal, task, csv_path)
    inputs, columns, notes, skipped, width = [], {}, [], [], 0
    for name in header:
        if name == target:
            continue
        options, note, column_width = _column_choice(table.columns[name], table.rows)
        notes.append(f"{name}: {note}")
        if options is None:
            skipped.append(name)
            continue
        inputs.append(name)
        width += column_width
        if options:
            columns[name] = options
    if not inputs:
        raise DataError(Problem(f"expected at least one usable column besides the target {target!r}, received none", str(csv_path)))
    if target_options:
        columns[target] = target_options

    # Relative to the spec (as nnctl reads it) when the two share a folder above the root, else absolute.
    csv_abs, out_dir = csv_path.resolve(), out.resolve().parent
    shared = Path(os.path.commonpath([csv_abs, out_dir]))
    data_path = Path(os.path.relpath(csv_abs, out_dir)).as_posix() if shared != Path(shared.anchor) else csv_abs.as_posix()
    layers = [{"name": "hidden", "type": "dense", "units": HIDDEN_UNITS[0], "activation": "relu", "from": "x"}]
    for i, units in enumerate(HIDDEN_UNITS[1:], start=1):
        layers.append({"name": f"hidden_{i}", "type": "dense", "units": units, "activation": "relu"})
    if task == "classification":
        layers.append({"name": "logits", "type": "dense", "units": len(classes)})
        loss, metrics = {"type": "sparse_categorical_crossentropy", "from_logits": True}, ["accuracy"]
    else:
        layers.append({"name": "output", "type": "dense", "units": 1})
        loss, metrics = "mse", ["mae"]
    steps = -(-int(table.rows * 0.8) // BATCH_SIZE)
    data = {"path": data_path, "inputs": {"x": _Columns(inputs)}, "targets": _Columns([target]), "validation_split": 0.2,
            "preprocessing": {"normalize": "zscore", "missing": "mean"}}
    if columns:
        data["columns"] = {_Name(name): options for name, options in columns.items()}
    spec = {
        "name": _spec_name(csv_path),
        "seed": 0,
        "inputs": {"x": [width]},
        "layers": layers,
        "outputs": layers[-1]["name"],
        "loss": loss,
        "metrics": metrics,
        "optimizer": {"type": "adam", "learning_rate": 0.001},
        "data": data,
        "train": {"epochs": max(MIN_EPOCHS, min(MAX_EPOCHS, -(-TARGET_STEPS // steps))), "batch_size": BATCH_SIZE, "shuffle": True,
                  "early_stopping": {"monitor": "val_loss", "patience": PATIENCE, "restore_best_weights": True}},
    }
    what = f"classification into {len(classes)} classes" if task == "classification" else task
    lines = [f"Starter spec written by `nnctl init {csv_path.name} --target {target}` ({what}).",
             f"{target} (target): {target_note}",
             f"Inputs: {width} values from {len(inputs)} columns; numbers are standardized and missing values filled with",
             "the training rows' mean unless a column says otherwise (data.columns):", *[f"  {note}" for note in notes]]
    if unnamed:
        lines.append(f"Skipped (no name in the header): column{'s' if len(unnamed) > 1 else ''} {', '.join(map(str, unnamed))}.")
    lines.append("`nnctl config` shows every default filled in; `nnctl schema` gives the whole format for your editor.")
    body = yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)
    text = "".join(f"# {_comment_text(line)}\n" for line in lines) + body
    return text, {"task": task, "inputs": inputs, "skipped": skipped, "target": target, "classes": classes, "data": data_path,
                  "columns": notes, "width": width}


def _header(path: Path) -> list:
    """The column names, as the file has them (a CSV's header row, or a table file's schema)."""
    from nnctl.io.tables import CsvTable, read_table

    if path.suffix.lower() != ".csv":
        return read_table(path, DataError, "a table file with a header row").header
    with CsvTable(path, DataError, "a table file with a header row") as table:
        if table.header is None:
            raise DataError(Problem("expected a header row and at least one row of values, received an empty file", str(path)))
        return table.header


def _target(column, task, path):
    """(task, class names or None, the target's data.columns options, a note) for the target column."""
    import numpy

    from nnctl.io.tables import TEXT
    present = column.values[~column.missing]
    if column.missing.any():
        note_missing = f"; {int(column.missing.sum())} rows without one are dropped"
    else:
        note_missing = ""
    options = {"missing": "drop"} if column.missing.any() else {}
    if column.kind == TEXT:
        classes = sorted(set(present))
        if task == "regression":
            raise DataError(Problem(f"column {column.name!r}: expected numbers for regression, received {describe(present[0])}", str(path)))
        if len(classes) < 2:
            raise DataError(Problem(f"column {column.name!r}: expected a target with at least two classes, received {len(classes)}", str(path)))
        return "classification", classes, options, f"text, so classification: {len(classes)} classes ({', '.join(classes)}){note_missing}"
    distinct = numpy.unique(present)
    integers = bool(numpy.all(distinct == numpy.round(distinct)))
    if task is None:
        task = "classification" if integers and len(distinct) <= MAX_AUTO_CLASSES else "regression"
    if task == "classification":
        if not integers:
            raise DataError(Problem(f"column {column.name!r}: expected class labels for classification, received {number_text(distinct[0])}", str(path)))
        classes = [number_text(v) for v in distinct]
        if len(classes) < 2:
            raise DataError(Problem(f"column {column.name!r}: expected a target with at least two classes, received {len(classes)}", str(path)))
        return task, classes, {**options, "type": "category"}, \
            f"{len(classes)} integer values, so classification with a class per value{note_missing}"
    return task, None, {**options, "normalize": "zscore"}, \
        f"numbers ({number_text(present.min())} to {number_text(present.max())}), so regression, trained standardized and predicted in its units{note_missing}"


def _column_choice(column, rows: int):
    """(data.columns options or {} for the defaults, or None to skip; a note; its input width)."""
    import numpy

    from nnctl.io.tables import NUMBER
    missing = int(column.missing.sum())
    note_missing = f", {missing} missing" if missing else ""
    present = column.values[~column.missing]
    if present.size == 0:
        return None, "skipped: every value is missing", 0
    if column.kind == NUMBER:
        distinct = numpy.unique(present)
        if len(distinct) == 1:
            return None, f"skipped: always {number_text(distinct[0])}", 0
        if set(distinct.tolist()) <= {0.0, 1.0}:
            return {"normalize": "none", "missing": "most_frequent"}, f"0/1 values, kept as they are{note_missing}", 1
        return {}, f"numbers from {number_text(present.min())} to {number_text(present.max())}{note_missing}", 1
    counts = Counter(present.tolist())
    if len(counts) == 1:
        return None, f"skipped: always {next(iter(counts))!r}", 0
    if len(counts) == 2:
        return {"type": "binary", "missing": "most_frequent"}, f"two values ({', '.join(sorted(counts))}), one input{note_missing}", 1
    if len(counts) > min(MAX_CATEGORIES, rows // 2):
        return None, f"skipped: {len(counts)} distinct texts, more like names or free text than categories", 0
    vocabulary = sorted(counts, key=lambda t: (-counts[t], t))
    return ({"type": "category", "vocabulary": _Columns(vocabulary), "unknown": "ignore", "missing": "most_frequent"},
            f"{len(counts)} categories, one-hot{note_missing}", len(vocabulary))


def write_new(path, text: str, force: bool) -> None:
    """Write `text` at `path` unless a file is already there (then only with `force`)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(Problem("--out: expected a file path, received a folder", str(path)))
    if path.exists() and not force:
        raise UsageError(Problem("--out: expected a path where no file exists yet, received an existing file; pass --force to overwrite it", str(path)))
    with atomic_write(path, "w") as handle:
        handle.write(text)

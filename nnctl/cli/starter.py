"""`nnctl init`: a working starter spec from a CSV file's header and values.

Inputs are every other numeric column; the task is classification when the target holds a few
non-negative integer labels (or when asked), regression otherwise. The spec is a small ReLU MLP
with Keras-like defaults that trains as written. No printing: `starter_spec` returns the YAML text
and a description of what was chosen.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import yaml

from nnctl.errors import DataError, Problem, UsageError, did_you_mean
from nnctl.io.atomic import atomic_write
from nnctl.io.tables import CsvTable, number

TASKS = ("regression", "classification")
HIDDEN_UNITS = (32, 32)
MAX_AUTO_CLASSES = 20  # at most this many distinct integer labels is taken for classes
EPOCHS = 20


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(number(cell))
    except ValueError:
        return False


def read_columns(path: Path) -> tuple[list[str], dict]:
    """(header, {column: [cells]}) of a CSV file with a header row."""
    with CsvTable(path, DataError, "a CSV file with a header row") as table:
        header = table.header
        rows = list(table.rows()) if header is not None else []
    if not rows:
        raise DataError(Problem("expected a header row and at least one row of values, received " + ("an empty file" if header is None else "only a header"), str(path)))
    return header, {name: [cells[i].strip() for _, cells in rows] for i, name in enumerate(header)}


def _labels(cells) -> list[int] | None:
    """The cells as non-negative integer class labels, or None when they are not."""
    labels = []
    for cell in cells:
        if not _is_number(cell):
            return None
        value = float(cell)
        if value != round(value) or value < 0:
            return None
        labels.append(int(value))
    return labels


class _Columns(list):
    """Column names, written ["a", "b"]: double-quoted, where every character can be escaped and no
    name reads back as something else (1e3 as a number, null as nothing, a NEL as a line break)."""


class _SpecDumper(yaml.SafeDumper):
    pass


def _represent_columns(dumper, names):
    quoted = [dumper.represent_scalar("tag:yaml.org,2002:str", name, style='"') for name in names]
    return yaml.SequenceNode("tag:yaml.org,2002:seq", quoted, flow_style=True)


def _represent_text(dumper, text):
    # Plain or single-quoted, a line break (NEL, U+2028) is read back folded and a control character refused.
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=None if text.isprintable() else '"')


_SpecDumper.add_representer(_Columns, _represent_columns)
_SpecDumper.add_representer(str, _represent_text)


def _comment_text(text: str) -> str:
    """`text` for a YAML comment: a line break (\\n, \\r, NEL, U+2028) in a name would end the comment
    and make the rest of the line YAML, and a control character is not allowed in YAML at all."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _spec_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("_") or "model"


def starter_spec(csv_path, target: str, task: str | None, out) -> tuple[str, dict]:
    """(YAML text of the spec, facts: task, inputs, skipped columns, classes) for a CSV file."""
    csv_path, out = Path(csv_path), Path(out)
    header, columns = read_columns(csv_path)
    for later, name in enumerate(header):
        if name and name in header[:later]:
            # The data reader refuses a doubled column the spec uses, and which one a name meant is not ours to guess.
            raise DataError(Problem(f"expected distinct column names in the header, received {name!r} as columns "
                                    f"{header.index(name) + 1} and {later + 1}; rename one", str(csv_path), 1, later + 1))
    unnamed = [i + 1 for i, name in enumerate(header) if not name]  # a spec names its columns: these cannot be used
    header = [name for name in header if name]
    if target not in header:
        raise DataError(Problem(f"--target: expected a column of the header ({', '.join(header)}), received {target!r}{did_you_mean(target, header)}", str(csv_path), 1))
    numeric = [name for name in header if name != target and all(_is_number(c) for c in columns[name])]
    skipped = [name for name in header if name != target and name not in numeric]
    if not numeric:
        raise DataError(Problem(f"expected at least one numeric column besides the target {target!r}, received none", str(csv_path)))
    labels = _labels(columns[target])
    if task is None:
        task = "classification" if labels is not None and len(set(labels)) <= MAX_AUTO_CLASSES else "regression"
    if task == "classification":
        if labels is None:
            example = next(c for c in columns[target] if not (_is_number(c) and float(c) == round(float(c)) and float(c) >= 0))
            raise DataError(Problem(
                f"column {target!r}: expected class labels 0, 1, 2, ... for classification, received {example!r}; "
                "map the classes to integers first", str(csv_path)))
        classes = max(labels) + 1
        if classes < 2:
            raise DataError(Problem(f"column {target!r}: expected at least two classes (labels 0 and 1), received only label 0", str(csv_path)))
    else:
        bad = next((c for c in columns[target] if not _is_number(c)), None)
        if bad is not None:
            raise DataError(Problem(f"column {target!r}: expected numbers for regression, received {bad!r}", str(csv_path)))
        classes = None

    # Relative to the spec (as nnctl reads it) when the two share a folder above the root, else absolute.
    csv_abs, out_dir = csv_path.resolve(), out.resolve().parent
    shared = Path(os.path.commonpath([csv_abs, out_dir]))
    data_path = Path(os.path.relpath(csv_abs, out_dir)).as_posix() if shared != Path(shared.anchor) else csv_abs.as_posix()
    layers = [{"name": "hidden", "type": "dense", "units": HIDDEN_UNITS[0], "activation": "relu", "from": "x"}]
    for i, units in enumerate(HIDDEN_UNITS[1:], start=1):
        layers.append({"name": f"hidden_{i}", "type": "dense", "units": units, "activation": "relu"})
    if task == "classification":
        layers.append({"name": "logits", "type": "dense", "units": classes})
        loss, metrics = {"type": "sparse_categorical_crossentropy", "from_logits": True}, ["accuracy"]
    else:
        layers.append({"name": "output", "type": "dense", "units": 1})
        loss, metrics = "mse", ["mae"]
    spec = {
        "name": _spec_name(csv_path),
        "seed": 0,
        "inputs": {"x": [len(numeric)]},
        "layers": layers,
        "outputs": layers[-1]["name"],
        "loss": loss,
        "metrics": metrics,
        "optimizer": {"type": "adam", "learning_rate": 0.001},
        "data": {"path": data_path, "inputs": {"x": _Columns(numeric)}, "targets": _Columns([target]), "validation_split": 0.2},
        "train": {"epochs": EPOCHS, "batch_size": 32, "shuffle": True},
    }
    what = f"{task} into {classes} classes, labels 0..{classes - 1}" if classes else task
    notes = [
        f"Starter spec written by `nnctl init {csv_path.name} --target {target}` ({what}).",
        f"Inputs: the {len(numeric)} numeric columns other than {target!r}, unscaled: rescale them in the CSV if their ranges differ a lot.",
    ]
    if skipped:
        notes.append(f"Skipped (not numeric): {', '.join(skipped)}.")
    if unnamed:
        notes.append(f"Skipped (no name in the header): column{'s' if len(unnamed) > 1 else ''} {', '.join(map(str, unnamed))}.")
    notes.append("`nnctl config` shows every default filled in; `nnctl schema` gives the whole format for your editor.")
    body = yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)
    text = "".join(f"# {_comment_text(line)}\n" for line in notes) + body
    return text, {"task": task, "inputs": numeric, "skipped": skipped, "target": target, "classes": classes, "data": data_path}


def write_new(path, text: str, force: bool) -> None:
    """Write `text` at `path` unless a file is already there (then only with `force`)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(Problem("--out: expected a file path, received a folder", str(path)))
    if path.exists() and not force:
        raise UsageError(Problem("--out: expected a path where no file exists yet, received an existing file; pass --force to overwrite it", str(path)))
    with atomic_write(path, "w") as handle:
        handle.write(text)

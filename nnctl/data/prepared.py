"""Data sets through column preprocessing: a table's raw columns, fitted on the training rows,
transformed into a Dataset the model reads (the spec's data.columns / data.preprocessing).

The split is drawn over the file's rows before anything is fitted, so validation rows never
shape the means, scales, fill values or vocabularies; rows dropped for a missing cell leave the
split they were in.
"""
from __future__ import annotations

import numpy

from nnctl.data import preprocessing
from nnctl.data.dataset import Dataset, shape_input
from nnctl.data.readers import Target, target_text
from nnctl.data.targets import VALUES
from nnctl.errors import DataError, Problem
from nnctl.io.tables import read_table


def target_groups(data_spec) -> dict:
    """{output: its target columns}."""
    return {output: [columns] if isinstance(columns, str) else list(columns) for output, columns in data_spec.targets.items()}


def target_names(data_spec) -> list:
    """Every target column, each once, in the outputs' order."""
    return list(dict.fromkeys(name for columns in target_groups(data_spec).values() for name in columns))


def input_groups(data_spec) -> dict:
    """{model input: its raw columns, in data.inputs' order}."""
    return {name: [columns] if isinstance(columns, str) else list(columns) for name, columns in data_spec.inputs.items()}


def read_raw(file, data_spec, targets: bool = True) -> dict:
    """{column: Column} of every column the spec reads from `file` (targets too unless False),
    typed over the whole file (numbers, or text where any cell is not one)."""
    names = [name for columns in input_groups(data_spec).values() for name in columns]
    if targets:
        names += [name for name in target_names(data_spec) if name not in names]
    table = read_table(file, DataError, "a data file", names, data_spec.delimiter, data_spec.missing_values)
    return {name: preprocessing.Column(name, _raw_values(table.columns[name]), table) for name in names}


def _raw_values(column):
    """Floats with NaN where missing, or text (an object array) with None where missing."""
    if column.values.dtype.kind == "f":
        return column.values
    values = numpy.array(column.values, dtype=object)
    values[column.missing] = None
    return values


def configs_of(data_spec, targets: bool = True) -> dict:
    wanted = set(target_names(data_spec)) if targets else set()
    configs = {}
    for name, config in data_spec.columns.items():
        if name in target_names(data_spec):
            if name in wanted:
                configs[name] = preprocessing.target_config(config)
        else:
            configs[name] = config
    return configs


def fit(raw: dict, data_spec, rows, problem) -> dict:
    """The fitted transform of every column from the training `rows`."""
    return preprocessing.fit(raw, configs_of(data_spec), rows, problem, targets=target_names(data_spec))


def prepare(file, raw: dict, fitted: dict, data_spec, input_shapes: dict, target_kinds: dict | None = None, dtype="float32",
            targets: bool = True):
    """(Dataset, kept-row mask, preprocessing.Report) for `raw` transformed by `fitted`; each
    output's targets checked as `target_kinds[output]` = (kind of target, units) says."""
    configs = configs_of(data_spec, targets)
    groups = input_groups(data_spec)
    if targets:
        groups.update({Target(output): columns for output, columns in target_groups(data_spec).items()})
    try:
        arrays, keep, report = preprocessing.transform(raw, {n: fitted[n] for n in configs}, configs, groups)
    except KeyError as exc:
        raise DataError(Problem(f"expected the fitted preprocessing of column {exc.args[0]!r}, received a model without it", str(file))) from None
    if not keep.any():
        raise DataError(Problem("expected at least one row with every value present, received none (missing: drop dropped them all)", str(file)))
    inputs = {}
    for name, shape in input_shapes.items():
        widths = ", ".join(f"{column} {fitted[column].width}" for column in groups[name])
        try:
            inputs[name] = shape_input(file, name, arrays[name], shape, dtype)
        except DataError as exc:
            raise DataError(Problem(f"{exc.problems[0].message}; after preprocessing its columns are {widths} wide", str(file))) from None
    target_values = None
    if targets:
        kept, target_values = numpy.flatnonzero(keep), {}
        for output, columns in target_groups(data_spec).items():
            first = raw[columns[0]]

            def locate(i, first=first):
                return first.place(int(kept[i])), f"column {first.name!r}"

            kind, units = (target_kinds or {}).get(output, (VALUES, None))
            target_values[output] = kind.check(file, arrays[Target(output)], units, dtype, locate, target_text(data_spec.targets, output))
    return Dataset(file, inputs, target_values, numpy.arange(int(keep.sum()))), keep, report


def target_transform(fitted: dict | None, data_spec, output: str):
    """The fitted transform of an output's (first) target column, or None without preprocessing."""
    return None if fitted is None else fitted.get(target_groups(data_spec)[output][0])


def class_names(fitted: dict | None, data_spec, output: str) -> list | None:
    """The classes of an output's text (category) target, in index order; None for numbers."""
    target = target_transform(fitted, data_spec, output)
    return list(target.vocabulary) if isinstance(target, preprocessing.Category) else None

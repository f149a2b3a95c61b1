"""Column preprocessing: raw table columns -> the model's float inputs, as the spec declares.

Each column is numeric (normalized: none, zscore or minmax), a category (a vocabulary, encoded
one-hot or as an index for an embedding) or binary (two values, one of them positive). Missing
cells are an error or are filled (mean, median, most frequent, a constant) or drop their row.
Everything is fitted on the training rows only, never on validation or test rows, and what was
fitted (centres, scales, fill values, vocabularies, the two binary values) becomes plain arrays,
`state_arrays`, that the weights file keeps beside the layer weights: predict and evaluate apply
exactly the transforms training used, from the weights file alone.

The transforms run in one fixed order, which an exported model repeats: fill, subtract the
centre, divide by the scale (a division, not a multiplication by the reciprocal: the two round
differently in float32).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy

from nnctl.errors import DataError, Problem, SpecError, WeightsError, describe, number_text
from nnctl.io.tables import is_number
from nnctl.data.column_options import POSITIVE_WORDS

@dataclass
class Column:
    """A raw column as a reader gives it: floats (NaN where missing) or text (None where missing),
    and the table it came from (nnctl.io.tables.Table), which knows each cell's place."""

    name: str
    values: object  # numpy float64 array, or numpy object array of str / None
    table: object  # .file, .place(row, name) -> Problem keywords, .where(row) -> ' at row N' or ''

    @property
    def file(self) -> str:
        return self.table.file

    @property
    def numeric(self) -> bool:
        return self.values.dtype.kind == "f"

    @property
    def missing(self):
        return numpy.isnan(self.values) if self.numeric else numpy.array([v is None for v in self.values], dtype=bool)

    def tokens(self):
        """The values as text: numbers as the user wrote them (3, 1.5)."""
        if not self.numeric:
            return self.values
        return numpy.array([None if numpy.isnan(v) else number_text(v) for v in self.values], dtype=object)

    def place(self, row: int) -> dict:
        return self.table.place(row, self.name)

    def where(self, row: int) -> str:
        return self.table.where(row)


@dataclass
class Report:
    """What preprocessing did to a data set: cells filled, rows dropped, unknown values met."""

    filled: dict = field(default_factory=dict)  # column -> cells
    dropped_rows: int = 0
    unknown: dict = field(default_factory=dict)  # column -> cells

    def as_dict(self) -> dict:
        return {"filled": dict(self.filled), "dropped_rows": self.dropped_rows, "unknown": dict(self.unknown)}


# --- fitted columns ---------------------------------------------------------------------------------
@dataclass
class Numeric:
    center: float = 0.0
    scale: float = 1.0
    fill: float | None = None  # None: missing cells are an error (or were dropped)
    width: int = 1

    def transform(self, column: Column, keep, report: Report):
        values = column.values.astype(numpy.float64)
        missing = numpy.isnan(values) & keep
        if missing.any():
            values = values.copy()
            values[missing] = self.fill
            report.filled[column.name] = report.filled.get(column.name, 0) + int(missing.sum())
        return ((values - self.center) / self.scale)[:, None]

    def restore(self, values):
        """Normalized values back in the column's own units (a regression's predictions)."""
        return values * self.scale + self.center

    def arrays(self) -> dict:
        return {"center": numpy.array(self.center), "scale": numpy.array(self.scale),
                **({"fill": numpy.array(self.fill)} if self.fill is not None else {})}


@dataclass
class Category:
    vocabulary: list
    encode: str = "one_hot"
    unknown: str = "ignore"
    fill: str | None = None

    @property
    def width(self) -> int:
        if self.encode == "index":
            return 1
        return len(self.vocabulary) + (self.unknown == "bucket")

    def indices(self, column: Column, keep, report: Report):
        """Each row's token index; len(vocabulary) for an unknown token (its bucket, or all zeros)."""
        tokens = column.tokens()
        lookup = {token: i for i, token in enumerate(self.vocabulary)}
        out = numpy.empty(len(tokens), dtype=numpy.int64)
        unknown = 0
        for row, token in enumerate(tokens):
            if token is None and keep[row]:
                token = self.fill
                report.filled[column.name] = report.filled.get(column.name, 0) + 1
            index = lookup.get(token)
            if index is None and keep[row]:
                if self.unknown == "error":
                    raise DataError(Problem(
                        f"column {column.name!r}: expected one of the {len(self.vocabulary)} values seen in training "
                        f"({_listed(self.vocabulary)}), received {describe(token)}{column.where(row)}; "
                        "set this column's `unknown: ignore` or `unknown: bucket` to accept new values", **column.place(row)))
                unknown += 1
            out[row] = len(self.vocabulary) if index is None else index
        if unknown:
            report.unknown[column.name] = report.unknown.get(column.name, 0) + unknown
        return out

    def transform(self, column: Column, keep, report: Report):
        index = self.indices(column, keep, report)
        if self.encode == "index":
            return index[:, None].astype(numpy.float64)
        encoded = numpy.zeros((len(index), len(self.vocabulary) + 1))
        encoded[numpy.arange(len(index)), index] = 1.0
        return encoded[:, :self.width]  # without the bucket column, an unknown value is all zeros

    def arrays(self) -> dict:
        return {"vocabulary": numpy.array(self.vocabulary, dtype=str), **({"fill": numpy.array(self.fill, dtype=str)} if self.fill is not None else {})}


@dataclass
class Binary:
    values: tuple  # (the value that is 0, the value that is 1)
    fill: str | None = None
    width: int = 1

    def transform(self, column: Column, keep, report: Report):
        tokens = column.tokens()
        out = numpy.empty((len(tokens), 1))
        for row, token in enumerate(tokens):
            if token is None and keep[row]:
                token = self.fill
                report.filled[column.name] = report.filled.get(column.name, 0) + 1
            if token not in self.values and keep[row]:
                raise DataError(Problem(
                    f"column {column.name!r}: expected one of the binary column's two values ({_listed(self.values)}), "
                    f"received {describe(token)}{column.where(row)}; declare it `type: category` if it has more", **column.place(row)))
            out[row, 0] = 1.0 if token == self.values[1] else 0.0
        return out

    def arrays(self) -> dict:
        return {"values": numpy.array(self.values, dtype=str), **({"fill": numpy.array(self.fill, dtype=str)} if self.fill is not None else {})}


def _listed(tokens, limit: int = 8) -> str:
    shown = ", ".join(repr(t) for t in list(tokens)[:limit])
    return shown + (", ..." if len(tokens) > limit else "")


# --- fitting ---------------------------------------------------------------------------------------
def resolve_kind(column: Column, config: dict) -> str:
    """numeric, category or binary: the declared type, or what the values are."""
    if config["type"] != "auto":
        return config["type"]
    if column.numeric:
        return "numeric"
    distinct = {v for v in column.values if v is not None}
    return "binary" if len(distinct) == 2 else "category"


def fit_column(column: Column, config: dict, rows, path: tuple, problem):
    """The fitted transform of `column` from its training `rows`; `problem(path, message)` makes the
    Problem of a spec key (the column's entry in data.columns)."""
    kind = resolve_kind(column, config)
    missing = column.missing[rows]
    strategy = config["missing"]
    if kind == "numeric":
        if not column.numeric:
            # The file's first cell that is no number: the column is text because of it, whichever split it is in.
            bad = next(i for i, v in enumerate(column.values) if v is not None and not is_number(v))
            raise DataError(Problem(f"column {column.name!r}: expected numbers for a numeric column, received {describe(column.values[bad])}"
                                    f"{column.where(bad)}; declare it `type: category` in data.columns", **column.place(bad)))
        present = column.values[rows][~missing]
        if present.size == 0:
            raise DataError(Problem(f"column {column.name!r}: expected at least one value in the training rows, received none", column.file))
        fill = _numeric_fill(present, strategy, config["fill_value"], column, problem, path)
        center, scale = 0.0, 1.0
        if config["normalize"] == "zscore":
            # population std, as scikit-learn's StandardScaler; a constant column keeps scale 1
            center, scale = float(present.mean()), float(present.std())
        elif config["normalize"] == "minmax":
            center, scale = float(present.min()), float(present.max() - present.min())
        if scale == 0.0:
            scale = 1.0
        return Numeric(center, scale, fill)
    tokens = column.tokens()[rows]
    present = [t for t in tokens if t is not None]
    if kind == "binary":
        distinct = sorted(set(present))
        if len(distinct) != 2:
            raise DataError(Problem(f"column {column.name!r}: expected exactly two values for a binary column, received "
                                    f"{len(distinct)} ({_listed(distinct)}); declare it `type: category`", column.file))
        positive = config["positive"] or next((v for v in distinct if v.casefold() in POSITIVE_WORDS), distinct[1])
        if positive not in distinct:
            raise SpecError(problem(path + ("positive",), f"expected one of the column's values ({_listed(distinct)}), received {positive!r}"))
        negative = distinct[0] if distinct[1] == positive else distinct[1]
        return Binary((negative, positive), _token_fill(present, strategy, config["fill_value"], column))
    fill = _token_fill(present, strategy, config["fill_value"], column)
    # Filled first, then counted: a constant fill value is a token like any other (as scikit-learn's
    # SimpleImputer before its OneHotEncoder).
    counts = Counter(present if fill is None else [fill if t is None else t for t in tokens])
    if config["vocabulary"] is not None:
        vocabulary = list(config["vocabulary"])
    else:
        # Most frequent first, ties in sorted order: the same vocabulary from the same rows, always.
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        vocabulary = [t for t in ranked if counts[t] >= config["min_frequency"]]
        if config["max_tokens"] is not None and len(vocabulary) > config["max_tokens"]:
            # Many more values than expected is most often an identifier or free text, not a category.
            raise DataError(Problem(f"column {column.name!r}: expected at most {config['max_tokens']} distinct values (max_tokens), "
                                    f"received {len(vocabulary)} ({_listed(vocabulary)}); raise max_tokens, raise min_frequency "
                                    "to keep only the common ones, or leave the column out", column.file))
    if len(vocabulary) < 2 and config["vocabulary"] is None:
        raise DataError(Problem(f"column {column.name!r}: expected a category column with at least two values, received "
                                f"{len(vocabulary)} ({_listed(vocabulary)})", column.file))
    return Category(vocabulary, config["encode"], config["unknown"], fill)


def _numeric_fill(present, strategy, value, column, problem, path):
    if strategy in ("error", "drop"):
        return None
    if strategy == "mean":
        return float(present.mean())
    if strategy == "median":
        return float(numpy.median(present))
    if strategy == "most_frequent":
        values, counts = numpy.unique(present, return_counts=True)
        return float(values[counts.argmax()])  # ties: the smallest value, as scikit-learn's SimpleImputer
    if not isinstance(value, (int, float)):
        raise SpecError(problem(path + ("fill_value",), f"expected a number to fill the numeric column {column.name!r}, received {describe(value)}"))
    return float(value)


def _token_fill(present, strategy, value, column):
    if strategy in ("error", "drop"):
        return None
    if strategy == "constant":
        return number_text(value) if isinstance(value, (int, float)) else value
    counts = Counter(present)
    return min(counts, key=lambda t: (-counts[t], t))  # the most frequent value (mean and median too)


def target_config(config: dict) -> dict:
    """A target column's options: its values are classes (a text or category column: their index,
    in sorted order unless declared, an unknown one an error) or numbers (normalized if its own
    entry says so), never filled."""
    return {**config, "encode": "index", "unknown": "error", "max_tokens": None, "min_frequency": 1,
            "missing": "drop" if config["missing"] == "drop" else "error", "fill_value": None}


def fit_classes(column: Column, config: dict, rows):
    """A target column's fitted transform: numbers (normalized, for a regression), or class indices."""
    kind = resolve_kind(column, config)
    if kind == "numeric":
        return fit_column(column, {**config, "type": "numeric"}, rows, (), None)
    present = sorted({t for t in column.tokens()[rows] if t is not None})
    classes = list(config["vocabulary"]) if config["vocabulary"] is not None else present
    if len(classes) < 2:
        raise DataError(Problem(f"column {column.name!r}: expected a target with at least two classes, received "
                                f"{len(classes)} ({_listed(classes)})", column.file))
    return Category(classes, "index", "error")


def fit(columns: dict, configs: dict, rows, problem, targets=()) -> dict:
    """{column name: fitted transform} for `configs` ({name: resolved COLUMN_OPTIONS}); the
    `targets` columns are fitted as classes or numbers (`fit_classes`)."""
    return {name: fit_classes(columns[name], configs[name], rows) if name in targets
            else fit_column(columns[name], configs[name], rows, ("data", "columns", name), problem) for name in configs}


def keep_rows(columns: dict, fitted: dict, configs: dict) -> numpy.ndarray:
    """Which rows survive `missing: drop` and `missing: error` (the latter raising at the first)."""
    n = len(next(iter(columns.values())).values)
    keep = numpy.ones(n, dtype=bool)
    for name, config in configs.items():
        column = columns[name]
        missing = column.missing
        if not missing.any():
            continue
        if config["missing"] == "drop":
            keep &= ~missing
        elif config["missing"] == "error":
            row = int(numpy.flatnonzero(missing)[0])
            raise DataError(Problem(f"column {name!r}: expected a value, received a missing cell{column.where(row)}; "
                                    "set this column's `missing:` (mean, median, most_frequent, constant or drop) to accept them",
                                    **column.place(row)))
    return keep


def transform(columns: dict, fitted: dict, configs: dict, groups: dict) -> tuple[dict, numpy.ndarray, Report]:
    """({group: float64 (rows, width) array}, kept row mask, Report): each group (a model input)
    is its columns' transforms side by side, in the order listed."""
    report = Report()
    keep = keep_rows(columns, fitted, configs)
    report.dropped_rows = int((~keep).sum())
    out = {}
    for group, names in groups.items():
        parts = [fitted[name].transform(columns[name], keep, report) for name in names]
        out[group] = numpy.concatenate(parts, axis=1)[keep]
    return out, keep, report


# --- the weights file ----------------------------------------------------------------------------------
PREFIX = "preprocessing/"


def state_arrays(fitted: dict) -> dict:
    """Plain arrays (numbers, fixed-width unicode text) keyed preprocessing/<column>/<name>."""
    return {f"{PREFIX}{name}/{key}": value for name, f in fitted.items() for key, value in f.arrays().items()}


def state_from_arrays(arrays: dict, configs: dict, file: str) -> dict:
    """The fitted transforms back from a weights file's preprocessing arrays, for `configs`."""
    fitted = {}
    for name, config in configs.items():
        own = {k[len(PREFIX) + len(name) + 1:]: v for k, v in arrays.items() if k.startswith(f"{PREFIX}{name}/")}
        try:
            if "vocabulary" in own:
                fill = str(own["fill"]) if "fill" in own else None
                fitted[name] = Category([str(t) for t in own["vocabulary"]], config["encode"], config["unknown"], fill)
            elif "values" in own:
                fitted[name] = Binary(tuple(str(t) for t in own["values"]), str(own["fill"]) if "fill" in own else None)
            else:
                fitted[name] = Numeric(float(own["center"]), float(own["scale"]), float(own["fill"]) if "fill" in own else None)
        except (KeyError, TypeError, ValueError):
            raise WeightsError(Problem(f"expected the fitted preprocessing of column {name!r} (arrays {PREFIX}{name}/...), received "
                                       f"{', '.join(sorted(own)) or 'none'}", file)) from None
        declared = config["vocabulary"]
        if declared is not None and isinstance(fitted[name], Category) and fitted[name].vocabulary != list(declared):
            raise WeightsError(Problem(f"array {PREFIX}{name}/vocabulary: expected the spec's vocabulary ({_listed(declared)}), "
                                       f"received {_listed(fitted[name].vocabulary)}", file))
    return fitted

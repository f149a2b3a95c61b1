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

A text column is its distinct values and an integer code per cell (`Column`), so every per-cell
step is a NumPy gather or count: what is looked up, compared or ranked in Python is one entry per
distinct value, never one per cell. `scan` checks a block of rows and counts what the transforms
do to it without raising, so a file read in blocks (`nnctl predict`) reports the same first problem
as the whole file would; `transform` is `scan`, then the first problem raised, then `encode`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from nnctl.errors import DataError, Problem, SpecError, WeightsError, describe, number_text
from nnctl.io.tables import is_number
from nnctl.data.column_options import POSITIVE_WORDS

MISSING_CODE = -1  # a text column's code for a missing cell


def text_codes(values) -> tuple:
    """(codes, tokens) of text values (str, None where missing): int32 codes into the distinct
    strings (an object array, in order of first appearance), MISSING_CODE where missing."""
    import pyarrow

    encoded = pyarrow.array(values, type=pyarrow.string()).dictionary_encode()
    codes = numpy.asarray(encoded.indices.fill_null(MISSING_CODE), dtype=numpy.int32)
    tokens = numpy.empty(len(encoded.dictionary), dtype=object)
    tokens[:] = encoded.dictionary.to_pylist()
    return codes, tokens


class Column:
    """A raw column as a reader gives it: numbers (float64, NaN where missing), or text as int32
    codes (MISSING_CODE where missing) into `tokens`, its distinct values; and the table it came
    from (nnctl.io.tables.Table), which knows each cell's place. Rows [offset, offset + len) of
    that table: a block of a file read in blocks names its cells' places in the whole file.

    `Column(name, values, table)` with text values (an object array, None where missing) codes them."""

    def __init__(self, name: str, values, table, tokens=None, offset: int = 0):
        values = numpy.asarray(values)
        if tokens is None and values.dtype.kind != "f":
            values, tokens = text_codes(values)
        self.name, self.table, self.offset = name, table, offset
        self._data, self._tokens = values, tokens  # numbers, or codes when tokens is not None
        self._dictionary = None if tokens is None else (values, tokens)
        self._memo = {}

    def __len__(self) -> int:
        return len(self._data)

    @property
    def file(self) -> str:
        return self.table.file

    @property
    def numeric(self) -> bool:
        return self._tokens is None

    @property
    def values(self):
        """Numbers (NaN where missing), or the text of each cell (an object array, None where missing)."""
        return self._data if self.numeric else self.tokens()

    @property
    def missing(self):
        return numpy.isnan(self._data) if self.numeric else self._data == MISSING_CODE

    def dictionary(self) -> tuple:
        """(codes, tokens): each cell's code into the distinct values as text; numbers as the user
        wrote them (3, 1.5), one token per distinct text (0 and -0 are both '0')."""
        if self._dictionary is None:
            values = self._data
            present = ~numpy.isnan(values)
            # by bit pattern: the distinct floats as they are, -0.0 apart from 0.0 until they are text
            bits, inverse = numpy.unique(numpy.ascontiguousarray(values[present], dtype=numpy.float64).view(numpy.int64),
                                         return_inverse=True)
            texts = numpy.empty(len(bits), dtype=object)
            texts[:] = [number_text(v) for v in bits.view(numpy.float64)]
            tokens, merged = numpy.unique(texts, return_inverse=True)
            codes = numpy.full(len(values), MISSING_CODE, dtype=numpy.int32)
            codes[present] = merged.reshape(-1)[inverse.reshape(-1)]
            self._dictionary = (codes, tokens)
        return self._dictionary

    def tokens(self):
        """The values as text, an object array with None where missing: numbers as the user wrote them."""
        codes, tokens = self.dictionary()
        return numpy.append(tokens, None)[codes]

    def memo(self, key, compute):
        """`compute()` once per key for this column (a transform's lookup, gathered per row)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def place(self, row: int) -> dict:
        return self.table.place(self.offset + row, self.name)

    def where(self, row: int) -> str:
        return self.table.where(self.offset + row)


@dataclass
class Report:
    """What preprocessing did to a data set: cells filled, rows dropped, unknown values met."""

    filled: dict = field(default_factory=dict)  # column -> cells
    dropped_rows: int = 0
    unknown: dict = field(default_factory=dict)  # column -> cells

    def as_dict(self) -> dict:
        return {"filled": dict(self.filled), "dropped_rows": self.dropped_rows, "unknown": dict(self.unknown)}

    def count(self, counts: dict, name: str, cells) -> None:
        if cells:
            counts[name] = counts.get(name, 0) + int(cells)

    def add(self, other: "Report", order) -> None:
        """`other`'s counts added to these, the columns in `order` (the order one block's report
        would list them in), so a file read in blocks reports as the whole file would."""
        self.dropped_rows += other.dropped_rows
        for mine, theirs in ((self.filled, other.filled), (self.unknown, other.unknown)):
            total = {name: mine.get(name, 0) + theirs.get(name, 0) for name in order}
            mine.clear()
            mine.update({name: cells for name, cells in total.items() if cells})


def _per_token(owner, key: str, column: Column, table):
    """`table(tokens)` (an entry per distinct value, then one for a missing cell, along its last
    axis) gathered per row of `column`; kept by `owner` for the next block of the same file, which
    shares its distinct values."""
    tokens = column.dictionary()[1]
    kept = owner.__dict__.setdefault("_per_token", {})
    if key not in kept or kept[key][0] is not tokens:
        kept[key] = (tokens, table(tokens))
    return kept[key][1][..., column.dictionary()[0]]


def _gather(table, column: Column, fill):
    """Per row of `column`: table[its token's code], and for a missing cell the entry of `fill`."""
    return numpy.append(table, fill)[column.dictionary()[0]]


def _numbers(column: Column):
    """(float64 per row, None) for a numeric column; for a text one, its numbers where the text is
    one (NaN elsewhere) and which rows hold text that is not a number."""
    if column.numeric:
        return column.values, None

    def compute():
        codes, tokens = column.dictionary()
        number = numpy.fromiter((is_number(t) for t in tokens), dtype=bool, count=len(tokens))
        values = numpy.fromiter((float(t) if ok else numpy.nan for t, ok in zip(tokens, number)), dtype=numpy.float64, count=len(tokens))
        return _gather(values, column, numpy.nan), _gather(~number, column, False)
    return column.memo("numbers", compute)


def _not_a_number(column: Column, row: int) -> DataError:
    return DataError(Problem(f"column {column.name!r}: expected numbers for a numeric column, received {describe(column.values[row])}"
                             f"{column.where(row)}; declare it `type: category` in data.columns", **column.place(row)))


def _first(mask):
    """The first row where `mask` holds, or None."""
    return int(mask.argmax()) if mask.any() else None


# --- fitted columns ---------------------------------------------------------------------------------
# Each checks a block of rows (`check`: counts into the report, the first kept row it cannot
# transform or None), names that row's problem (`failure`) and writes the inputs of `rows` (a
# slice or indices of kept rows) into a float array of its width (`write`).
@dataclass
class Numeric:
    center: float = 0.0
    scale: float = 1.0
    fill: float | None = None  # None: missing cells are an error (or were dropped)
    width: int = 1

    def check(self, column: Column, keep, report: Report):
        values, text = _numbers(column)
        if text is not None and (text & keep).any():
            return _first(text & keep)
        report.count(report.filled, column.name, numpy.count_nonzero(numpy.isnan(values) & keep))
        return None

    def failure(self, column: Column, row: int) -> DataError:
        return _not_a_number(column, row)

    def write(self, column: Column, rows, out) -> None:
        values = _numbers(column)[0][rows]
        missing = numpy.isnan(values)
        if self.fill is not None and missing.any():
            values = numpy.where(missing, self.fill, values)
        out[:, 0] = (values - self.center) / self.scale

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

    def indices(self, column: Column):
        """Each row's token index; len(vocabulary) for an unknown token (its bucket, or all zeros).
        A missing cell is its fill value's."""
        def table(tokens):
            lookup = {token: i for i, token in enumerate(self.vocabulary)}
            n = len(self.vocabulary)
            return numpy.append(numpy.fromiter((lookup.get(t, n) for t in tokens), dtype=numpy.int64, count=len(tokens)), lookup.get(self.fill, n))
        return column.memo(("indices", id(self)), lambda: _per_token(self, "indices", column, table))

    def check(self, column: Column, keep, report: Report):
        report.count(report.filled, column.name, numpy.count_nonzero(column.missing & keep))
        unknown = (self.indices(column) == len(self.vocabulary)) & keep
        if self.unknown == "error" and unknown.any():
            return _first(unknown)
        report.count(report.unknown, column.name, numpy.count_nonzero(unknown))
        return None

    def failure(self, column: Column, row: int) -> DataError:
        token = self.fill if column.missing[row] else column.dictionary()[1][column.dictionary()[0][row]]
        return DataError(Problem(
            f"column {column.name!r}: expected one of the {len(self.vocabulary)} values seen in training "
            f"({_listed(self.vocabulary)}), received {describe(token)}{column.where(row)}; "
            "set this column's `unknown: ignore` or `unknown: bucket` to accept new values", **column.place(row)))

    def write(self, column: Column, rows, out) -> None:
        index = self.indices(column)[rows]
        if self.encode == "index":
            out[:, 0] = index
            return
        out[:] = 0  # without the bucket column, an unknown value is all zeros
        hot = numpy.flatnonzero(index < self.width)
        out[hot, index[hot]] = 1

    def arrays(self) -> dict:
        return {"vocabulary": numpy.array(self.vocabulary, dtype=str), **({"fill": numpy.array(self.fill, dtype=str)} if self.fill is not None else {})}


@dataclass
class Binary:
    values: tuple  # (the value that is 0, the value that is 1)
    fill: str | None = None
    width: int = 1

    def flags(self, column: Column):
        """(whether each row's value, a missing one filled, is one of the two; whether it is the positive one)."""
        def table(tokens):
            known = numpy.fromiter((t in self.values for t in tokens), dtype=bool, count=len(tokens))
            positive = numpy.fromiter((t == self.values[1] for t in tokens), dtype=bool, count=len(tokens))
            return numpy.stack([numpy.append(known, self.fill in self.values),
                                numpy.append(positive, self.fill is not None and self.fill == self.values[1])])
        return column.memo(("flags", id(self)), lambda: _per_token(self, "flags", column, table))

    def check(self, column: Column, keep, report: Report):
        report.count(report.filled, column.name, numpy.count_nonzero(column.missing & keep))
        return _first(~self.flags(column)[0] & keep)

    def failure(self, column: Column, row: int) -> DataError:
        token = self.fill if column.missing[row] else column.dictionary()[1][column.dictionary()[0][row]]
        return DataError(Problem(
            f"column {column.name!r}: expected one of the binary column's two values ({_listed(self.values)}), "
            f"received {describe(token)}{column.where(row)}; declare it `type: category` if it has more", **column.place(row)))

    def write(self, column: Column, rows, out) -> None:
        out[:, 0] = self.flags(column)[1][rows]

    def arrays(self) -> dict:
        return {"values": numpy.array(self.values, dtype=str), **({"fill": numpy.array(self.fill, dtype=str)} if self.fill is not None else {})}


def _listed(tokens, limit: int = 8) -> str:
    shown = ", ".join(repr(t) for t in list(tokens)[:limit])
    return shown + (", ..." if len(tokens) > limit else "")


# --- fitting ---------------------------------------------------------------------------------------
def _counts(column: Column, rows) -> tuple[dict, int]:
    """({token: cells} of the tokens present in `rows`, in order of first appearance; missing cells)."""
    codes, tokens = column.dictionary()
    picked = codes[rows]
    counts = numpy.bincount(picked[picked != MISSING_CODE], minlength=len(tokens))
    return {tokens[i]: int(counts[i]) for i in numpy.flatnonzero(counts)}, int(numpy.count_nonzero(picked == MISSING_CODE))


def resolve_kind(column: Column, config: dict) -> str:
    """numeric, category or binary: the declared type, or what the values are."""
    if config["type"] != "auto":
        return config["type"]
    if column.numeric:
        return "numeric"
    return "binary" if len(_counts(column, slice(None))[0]) == 2 else "category"


def fit_column(column: Column, config: dict, rows, path: tuple, problem):
    """The fitted transform of `column` from its training `rows`; `problem(path, message)` makes the
    Problem of a spec key (the column's entry in data.columns)."""
    kind = resolve_kind(column, config)
    strategy = config["missing"]
    if kind == "numeric":
        values, text = _numbers(column)
        if text is not None and text.any():
            # The file's first cell that is no number: the column is text because of it, whichever split it is in.
            raise _not_a_number(column, _first(text))
        present = values[rows][~numpy.isnan(values[rows])]
        if present.size == 0:
            raise _no_values(column)
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
    counts, missing = _counts(column, rows)
    if kind == "binary":
        distinct = sorted(counts)
        if len(distinct) != 2:
            raise DataError(Problem(f"column {column.name!r}: expected exactly two values for a binary column, received "
                                    f"{len(distinct)} ({_listed(distinct)}); declare it `type: category`", column.file))
        positive = config["positive"] or next((v for v in distinct if v.casefold() in POSITIVE_WORDS), distinct[1])
        if positive not in distinct:
            raise SpecError(problem(path + ("positive",), f"expected one of the column's values ({_listed(distinct)}), received {positive!r}"))
        negative = distinct[0] if distinct[1] == positive else distinct[1]
        return Binary((negative, positive), _token_fill(counts, strategy, config["fill_value"], column))
    fill = _token_fill(counts, strategy, config["fill_value"], column)
    # Filled first, then counted: a constant fill value is a token like any other (as scikit-learn's
    # SimpleImputer before its OneHotEncoder).
    if fill is not None and missing:
        counts = {**counts, fill: counts.get(fill, 0) + missing}
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


def _no_values(column: Column) -> DataError:
    return DataError(Problem(f"column {column.name!r}: expected at least one value in the training rows, received none", column.file))


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


def _token_fill(counts: dict, strategy, value, column):
    if strategy in ("error", "drop"):
        return None
    if strategy == "constant":
        return number_text(value) if isinstance(value, (int, float)) else value
    if not counts:
        raise _no_values(column)
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
    present = sorted(_counts(column, rows)[0])
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


# --- transforming ------------------------------------------------------------------------------------
@dataclass
class Scan:
    """What `scan` found in a block of rows: the rows kept, the report's counts, and the first
    problem of each check ({(phase, rank): a function making its DataError}; the smallest key is
    the one the whole file raises: a missing cell under `missing: error` before any transform's,
    then the transforms in input order, each at its first row)."""

    keep: numpy.ndarray
    report: Report
    failures: dict
    order: list  # the transformed columns, in the order the report lists them


def _missing_error(column: Column, row: int) -> DataError:
    return DataError(Problem(f"column {column.name!r}: expected a value, received a missing cell{column.where(row)}; "
                             "set this column's `missing:` (mean, median, most_frequent, constant or drop) to accept them",
                             **column.place(row)))


def _kept(columns: dict, configs: dict) -> tuple[numpy.ndarray, dict]:
    """(which rows survive `missing: drop`, {(0, rank): failure} of the columns under `missing: error`)."""
    n = len(next(iter(columns.values())))
    keep = numpy.ones(n, dtype=bool)
    failures = {}
    for rank, (name, config) in enumerate(configs.items()):
        column = columns[name]
        missing = column.missing
        if not missing.any():
            continue
        if config["missing"] == "drop":
            keep &= ~missing
        elif config["missing"] == "error":
            failures[(0, rank)] = (lambda column=column, row=_first(missing): _missing_error(column, row))
    return keep, failures


def keep_rows(columns: dict, fitted: dict, configs: dict) -> numpy.ndarray:
    """Which rows survive `missing: drop` and `missing: error` (the latter raising at the first)."""
    keep, failures = _kept(columns, configs)
    raise_first(failures)
    return keep


def raise_first(failures: dict) -> None:
    """Raise the problem the whole file would raise first (Scan.failures), if any."""
    if failures:
        raise failures[min(failures)]()


def scan(columns: dict, fitted: dict, configs: dict, groups: dict) -> Scan:
    """Check a block of rows (every column the same rows) and count what the transforms do to it,
    raising nothing (Scan)."""
    keep, failures = _kept(columns, configs)
    report = Report(dropped_rows=int(numpy.count_nonzero(~keep)))
    order = [name for names in groups.values() for name in names]
    for rank, name in enumerate(order):
        row = fitted[name].check(columns[name], keep, report)
        if row is not None:
            failures[(1, rank)] = (lambda f=fitted[name], column=columns[name], row=row: f.failure(column, row))
    return Scan(keep, report, failures, order)


# Rows of a group written at a time: the block of its array every column writes into stays in the
# CPU's cache, rather than each column striding over the whole array.
ENCODE_ROWS = 4096


def encode(columns: dict, fitted: dict, groups: dict, keep, dtypes: dict | None = None) -> dict:
    """{group: (kept rows, width) array}: each group's columns' transforms side by side, in the
    order listed, in its dtype (`dtypes`, float64 for a group not named)."""
    kept_rows = None if keep.all() else numpy.flatnonzero(keep)
    kept = len(keep) if kept_rows is None else len(kept_rows)
    out = {}
    for group, names in groups.items():
        array = numpy.empty((kept, sum(fitted[name].width for name in names)), dtype=(dtypes or {}).get(group, numpy.float64))
        for first in range(0, kept, ENCODE_ROWS):
            last = min(first + ENCODE_ROWS, kept)
            rows = slice(first, last) if kept_rows is None else kept_rows[first:last]
            start = 0
            for name in names:
                fitted[name].write(columns[name], rows, array[first:last, start:start + fitted[name].width])
                start += fitted[name].width
        out[group] = array
    return out


def transform(columns: dict, fitted: dict, configs: dict, groups: dict, dtypes: dict | None = None) -> tuple[dict, numpy.ndarray, Report]:
    """({group: (kept rows, width) array}, kept row mask, Report): each group (a model input)
    is its columns' transforms side by side, in the order listed (float64, or `dtypes[group]`)."""
    found = scan(columns, fitted, configs, groups)
    raise_first(found.failures)
    return encode(columns, fitted, groups, found.keep, dtypes), found.keep, found.report


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

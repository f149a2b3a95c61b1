"""Column preprocessing against its formulas and against scikit-learn's transformers.

Every transform is fitted on training rows only and must equal, on other rows: StandardScaler
(zscore), MinMaxScaler (minmax), SimpleImputer (mean, median, most_frequent, constant) and
OneHotEncoder(handle_unknown="ignore") given the same vocabulary. The fitted state goes through
the weights file's arrays and back unchanged.
"""
from __future__ import annotations

import numpy
import pytest

from nnctl.data import preprocessing as pre
from nnctl.data.column_options import COLUMN_OPTIONS
from nnctl.errors import DataError, Problem

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install '.[test]')")
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler  # noqa: E402

RNG = numpy.random.default_rng(4)
N = 60
TRAIN = numpy.arange(40)
NUMBERS = RNG.normal(3.0, 50.0, N)
NUMBERS[[3, 17, 45]] = numpy.nan
TOKENS = numpy.array([["red", "green", "blue", None, "red"][i % 5] for i in range(N)], dtype=object)
TOKENS[50] = "violet"  # only outside the training rows


def _config(**options) -> dict:
    return {name: options.get(name, option.default) for name, option in COLUMN_OPTIONS.items()}


def _problem(path, message):
    return DataError(Problem(message, path="/".join(map(str, path))))


def _roundtrip(fitted, configs):
    """The fitted state as the weights file keeps it, and back."""
    arrays = pre.state_arrays(fitted)
    assert all(isinstance(v, numpy.ndarray) and v.dtype.kind in "fU" for v in arrays.values())
    return pre.state_from_arrays(arrays, configs, "w.npz")


class _Table:
    """Where a cell is: row i of column c sits on line i + 2 (after the header)."""

    file = "d.csv"

    def place(self, row, name):
        return {"file": self.file, "line": row + 2}

    def where(self, row):
        return ""


def _apply(values, **options):
    column = pre.Column("c", values, _Table())
    configs = {"c": _config(**options)}
    fitted = _roundtrip(pre.fit({"c": column}, configs, TRAIN, _problem), configs)
    out, keep, report = pre.transform({"c": column}, fitted, configs, {"x": ["c"]})
    return out["x"], keep, report, fitted["c"]


@pytest.mark.parametrize("normalize, scaler", [("zscore", StandardScaler()), ("minmax", MinMaxScaler())])
@pytest.mark.parametrize("missing, imputer", [
    ("mean", SimpleImputer(strategy="mean")), ("median", SimpleImputer(strategy="median")),
    ("most_frequent", SimpleImputer(strategy="most_frequent")), ("constant", SimpleImputer(strategy="constant", fill_value=-7.5)),
])
def test_numeric_columns_match_scikit_learn(normalize, scaler, missing, imputer):
    got, keep, report, _ = _apply(NUMBERS, normalize=normalize, missing=missing, fill_value=-7.5)
    train = NUMBERS[TRAIN][:, None]
    expected = scaler.fit(train[~numpy.isnan(train[:, 0])]).transform(imputer.fit(train).transform(NUMBERS[:, None]))
    numpy.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert keep.all() and report.filled == {"c": 3} and report.dropped_rows == 0


def test_the_numeric_formulas_and_a_constant_column():
    got, _, _, fitted = _apply(NUMBERS, normalize="zscore", missing="mean")
    present = NUMBERS[TRAIN][~numpy.isnan(NUMBERS[TRAIN])]
    assert (fitted.center, fitted.scale, fitted.fill) == (present.mean(), present.std(), present.mean())
    numpy.testing.assert_array_equal(got[:, 0], (numpy.where(numpy.isnan(NUMBERS), present.mean(), NUMBERS) - present.mean()) / present.std())
    flat, _, _, fitted = _apply(numpy.full(N, 4.0), normalize="zscore")
    assert fitted.scale == 1.0 and (flat == 0).all()  # zero variance: centred, not divided by 0


def test_drop_removes_rows_with_a_missing_cell():
    got, keep, report, _ = _apply(NUMBERS, missing="drop")
    assert report.dropped_rows == 3 and keep.sum() == N - 3 and len(got) == N - 3 and not numpy.isnan(got).any()


def test_a_missing_cell_under_error_names_the_column_and_line():
    with pytest.raises(DataError, match=r"column 'c': expected a value, received a missing cell"):
        _apply(NUMBERS)
    try:
        _apply(NUMBERS)
    except DataError as exc:
        assert exc.problems[0].line == 5  # row 3, after the header on line 1


@pytest.mark.parametrize("unknown", ["ignore", "bucket"])
def test_one_hot_matches_scikit_learn_with_the_learned_vocabulary(unknown):
    got, _, report, fitted = _apply(TOKENS, type="category", missing="most_frequent", unknown=unknown)
    assert fitted.vocabulary == ["red", "blue", "green"]  # most frequent first, ties sorted
    filled = numpy.array([fitted.fill if t is None else t for t in TOKENS], dtype=object)[:, None]
    encoder = OneHotEncoder(categories=[fitted.vocabulary], handle_unknown="ignore", sparse_output=False).fit(filled[TRAIN])
    expected = encoder.transform(filled)
    if unknown == "bucket":
        expected = numpy.hstack([expected, (filled[:, :1] == "violet").astype(float)])
    numpy.testing.assert_array_equal(got, expected)
    assert report.unknown == {"c": 1} and report.filled == {"c": 12}


def test_index_encoding_and_an_unknown_value_under_error():
    got, _, _, fitted = _apply(TOKENS, type="category", missing="constant", fill_value="none", encode="index", unknown="bucket")
    lookup = {t: i for i, t in enumerate(fitted.vocabulary)}
    assert got[:, 0].tolist() == [lookup.get("none" if t is None else t, len(fitted.vocabulary)) for t in TOKENS]
    with pytest.raises(DataError, match=r"column 'c': expected one of the 4 values seen in training .* received 'violet'"):
        _apply(TOKENS, type="category", missing="constant", fill_value="none", unknown="error")


def test_vocabulary_limits_and_a_declared_vocabulary():
    with pytest.raises(DataError, match=r"column 'c': expected at most 2 distinct values \(max_tokens\), received 3"):
        _apply(TOKENS, type="category", missing="most_frequent", max_tokens=2)
    rare = numpy.array(["a"] * 20 + ["b"] * 15 + ["c"] * 5 + ["a"] * 20, dtype=object)  # training rows: a 20, b 15, c 5
    _, _, _, fitted = _apply(rare, type="category", min_frequency=10)
    assert fitted.vocabulary == ["a", "b"]
    _, _, _, fitted = _apply(TOKENS, type="category", missing="most_frequent", vocabulary=["green", "red", "blue", "violet"])
    assert fitted.vocabulary == ["green", "red", "blue", "violet"]
    with pytest.raises(DataError, match="expected a category column with at least two values"):
        _apply(numpy.array(["a"] * N, dtype=object), type="category")


BINARY = numpy.array(["no", "yes", "yes", "no"] * (N // 4), dtype=object)


def test_binary_columns_map_the_positive_value_to_one():
    got, _, _, fitted = _apply(BINARY)
    assert fitted.values == ("no", "yes") and got[:, 0].tolist() == [float(v == "yes") for v in BINARY]
    got, _, _, fitted = _apply(BINARY, positive="no")
    assert fitted.values == ("yes", "no") and got[:, 0].tolist() == [float(v == "no") for v in BINARY]
    third = BINARY.copy()
    third[55] = "maybe"
    with pytest.raises(DataError, match=r"expected one of the binary column's two values \('no', 'yes'\), received 'maybe'"):
        _apply(third, type="binary")  # (auto: three values in the file make a category)


def test_text_in_a_numeric_column_suggests_a_category():
    with pytest.raises(DataError, match="expected numbers for a numeric column, received 'red'.*declare it `type: category`"):
        _apply(TOKENS, type="numeric")


# --- the vectorized transforms against the per-cell loops they replaced ----------------------------------
def _loop_indices(fitted, tokens, keep):
    """Category.indices as one Python step per cell: (indices, filled, unknown, first bad row)."""
    lookup = {token: i for i, token in enumerate(fitted.vocabulary)}
    out, filled, unknown = [], 0, 0
    for row, token in enumerate(tokens):
        if token is None and keep[row]:
            token, filled = fitted.fill, filled + 1
        index = lookup.get(token)
        if index is None and keep[row]:
            if fitted.unknown == "error":
                return None, filled, unknown, row
            unknown += 1
        out.append(len(fitted.vocabulary) if index is None else index)
    return out, filled, unknown, None


def _loop_binary(fitted, tokens, keep):
    out, filled = [], 0
    for row, token in enumerate(tokens):
        if token is None and keep[row]:
            token, filled = fitted.fill, filled + 1
        if token not in fitted.values and keep[row]:
            return None, filled, row
        out.append(1.0 if token == fitted.values[1] else 0.0)
    return out, filled, None


def _loop_vocabulary(tokens, fill, min_frequency):
    from collections import Counter

    present = [t for t in tokens if t is not None]
    counts = Counter(present if fill is None else [fill if t is None else t for t in tokens])
    return [t for t in sorted(counts, key=lambda t: (-counts[t], t)) if counts[t] >= min_frequency]


def _random_tokens(rng, n, alphabet):
    return numpy.array([None if rng.random() < 0.15 else alphabet[rng.integers(len(alphabet))] for _ in range(n)], dtype=object)


@pytest.mark.parametrize("seed", range(12))
def test_category_and_binary_equal_the_per_cell_loops(seed):
    """Same indices, one-hot rows, filled and unknown counts, and the same first bad cell (row and
    line) as a Python step per cell, over random columns, keep masks and options."""
    rng = numpy.random.default_rng(seed)
    n = 300
    alphabet = ["a", "b", "c", " c", "", "é", "1", "x" * 70, "b\u00a0"]
    tokens = _random_tokens(rng, n, alphabet)
    keep = rng.random(n) < 0.8
    column = pre.Column("c", tokens, _Table())
    fill = [None, "a", "zz"][seed % 3]  # none, a known one, an unknown one
    vocabulary = sorted({t for t in tokens if t is not None})[: 2 + seed % 4]
    for unknown in ("ignore", "bucket", "error"):
        fitted = pre.Category(vocabulary, "one_hot", unknown, fill)
        expected, filled, unknown_cells, bad = _loop_indices(fitted, tokens, keep)
        report = pre.Report()
        assert fitted.check(column, keep, report) == bad
        if bad is None:
            assert report.filled == ({"c": filled} if filled else {})
            assert report.unknown == ({"c": unknown_cells} if unknown_cells else {})
            assert fitted.indices(column)[keep].tolist() == numpy.array(expected)[keep].tolist()
            got = pre.encode({"c": column}, {"c": fitted}, {"x": ["c"]}, keep)["x"]
            hot = numpy.zeros((n, len(vocabulary) + 1))
            hot[numpy.arange(n), expected] = 1
            numpy.testing.assert_array_equal(got, hot[keep][:, :fitted.width])
        else:  # the whole column kept: the first bad cell is the loop's, on its line, named as the loop names it
            first = _loop_indices(fitted, tokens, numpy.ones(n, dtype=bool))[3]
            with pytest.raises(DataError) as raised:
                pre.transform({"c": column}, {"c": fitted}, {"c": _config(missing="mean")}, {"x": ["c"]})
            problem = raised.value.problems[0]
            token = fill if tokens[first] is None else tokens[first]
            assert problem.line == first + 2 and f"received {pre.describe(token)};" in problem.message
    pair = pre.Binary(("a", "b"), fill)
    expected, filled, bad = _loop_binary(pair, tokens, keep)
    report = pre.Report()
    assert pair.check(column, keep, report) == bad
    if bad is None:
        assert report.filled == ({"c": filled} if filled else {})
        got = pre.encode({"c": column}, {"c": pair}, {"x": ["c"]}, keep)["x"][:, 0]
        assert got.tolist() == numpy.array(expected)[keep].tolist()
    two = numpy.array([None if t is None else ("a" if t in ("a", "c", "é") else "b") for t in tokens], dtype=object)
    expected, filled, bad = _loop_binary(pre.Binary(("a", "b"), "a"), two, keep)
    got = pre.encode({"c": pre.Column("c", two, _Table())}, {"c": pre.Binary(("a", "b"), "a")}, {"x": ["c"]}, keep)["x"][:, 0]
    assert bad is None and got.tolist() == numpy.array(expected)[keep].tolist()


@pytest.mark.parametrize("seed", range(8))
def test_learned_vocabularies_and_fills_equal_the_counting_loops(seed):
    rng = numpy.random.default_rng(100 + seed)
    tokens = _random_tokens(rng, 200, ["p", "q", "r", "s", "t", "u"][: 2 + seed % 5])
    column = pre.Column("c", tokens, _Table())
    for missing, fill_value in (("most_frequent", None), ("constant", "zz"), ("constant", "p"), ("drop", None)):
        for min_frequency in (1, 5, 30):
            config = _config(type="category", missing=missing, fill_value=fill_value, min_frequency=min_frequency)
            train = tokens[TRAIN]
            present = [t for t in train if t is not None]
            if missing == "most_frequent":
                fill = min(set(present), key=lambda t: (-present.count(t), t))
            else:
                fill = fill_value
            vocabulary = _loop_vocabulary(train, fill, min_frequency)
            if len(vocabulary) < 2:
                with pytest.raises(DataError, match="at least two values"):
                    pre.fit_column(column, config, TRAIN, ("c",), _problem)
                continue
            fitted = pre.fit_column(column, config, TRAIN, ("c",), _problem)
            assert (fitted.vocabulary, fitted.fill) == (vocabulary, fill)


def test_numbers_as_category_tokens_are_the_text_the_user_wrote():
    values = numpy.array([3.0, 1.5, numpy.nan, -0.0, 0.0, 1e16, 3.0, 2.5e-7, -4.0])
    column = pre.Column("n", values, _Table())
    expected = [None if numpy.isnan(v) else pre.number_text(v) for v in values]
    assert column.tokens().tolist() == expected and column.missing.tolist() == [v is None for v in expected]
    codes, tokens = column.dictionary()
    assert sorted(tokens.tolist()) == sorted(set(t for t in expected if t is not None))  # -0 and 0 are one token
    fitted = pre.fit_column(column, _config(type="category", missing="most_frequent"), numpy.arange(len(values)), ("n",), _problem)
    assert fitted.vocabulary[:2] == ["0", "3"] and fitted.fill == "0"


def test_text_in_a_numeric_column_at_predict_is_an_error_not_a_crash():
    fitted = pre.Numeric(1.0, 2.0, 0.5)
    column = pre.Column("c", numpy.array(["1", None, "x", "4"], dtype=object), _Table())
    with pytest.raises(DataError, match=r"column 'c': expected numbers for a numeric column, received 'x'.*type: category") as raised:
        pre.transform({"c": column}, {"c": fitted}, {"c": _config(missing="mean")}, {"x": ["c"]})
    assert raised.value.problems[0].line == 4
    keep = numpy.array([True, True, False, True])  # the text is in a row that another column drops: numbers
    report = pre.Report()
    assert fitted.check(column, keep, report) is None and report.filled == {"c": 1}
    out = pre.encode({"c": column}, {"c": fitted}, {"x": ["c"]}, keep)["x"][:, 0]
    assert out.tolist() == [(1 - 1) / 2, (0.5 - 1) / 2, (4 - 1) / 2]

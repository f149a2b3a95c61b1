"""Raw tables for column preprocessing: the streaming reader types columns as read_table does, the
data cache keeps the raw columns and the prepared data sets (reused, invalidated, rebuilt when
damaged), and predict reads, transforms and predicts a block of rows at a time with the results,
the report and the first error of the whole file at once."""
from __future__ import annotations

import json
import math
import os

import numpy
import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

from nnctl.data import cache, prepared, raw
from nnctl.errors import DataError
from nnctl.io import tables
from nnctl.io.records import save_predictions, write_predictions
from nnctl.io.tables import NUMBER, read_table
from nnctl.spec.load import load_spec
from nnctl.train import session as sessions
from nnctl.train.session import open_session, predict_file, training_sets
from tests.helpers import run, run_json, table_bytes
from tests.test_preprocessing_cli import RAW, _edit, _rows

pyarrow = pytest.importorskip("pyarrow", reason="pyarrow reads table files")

MISSING = ("", "NA", "NaN", "null", "None")


@pytest.fixture
def small_cache(monkeypatch):
    monkeypatch.setattr(cache, "MIN_BYTES", 0)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(tables, "TEXT_BLOCK_BYTES", 64)  # a few rows a block


def _expected(path, names):
    """What read_table (the whole file at once) reads: numbers (NaN where missing) or text (None)."""
    table = read_table(path, DataError, "a data file", names, ",", MISSING)
    out = {}
    for name in names:
        column = table.columns[name]
        if column.kind == NUMBER:
            out[name] = ("number", numpy.asarray(column.values, dtype=float).tolist())
        else:
            out[name] = ("text", [None if m else v for v, m in zip(column.values, column.missing)])
    return out


def _read(path, names, folder=None, on_disk=False):
    table = raw.read_raw_table(path, names, ",", MISSING, folder, on_disk)
    columns = table.columns()
    return {name: ("number", [None if v != v else v for v in c.values.tolist()]) if c.numeric else ("text", c.tokens().tolist())
            for name, c in columns.items()}, table


def _same(got, expected):
    for name, (kind, values) in expected.items():
        assert got[name][0] == kind, name
        if kind == "number":  # (NaN, where missing, is None in _read's lists)
            assert numpy.array(got[name][1], dtype=float).tobytes() == numpy.array(values, dtype=float).tobytes(), name
        else:
            assert got[name][1] == values, name


# --- the streaming reader -------------------------------------------------------------------------------
LATE = "n,t,s\n" + "".join(f"{i},{'abc' if i == 70 else i},{' 3 ' if i % 9 == 0 else 'x'}\n" for i in range(90))


@pytest.mark.parametrize("text", [
    LATE,  # a text cell in the 71st row: the column is text though its first blocks are numbers
    "a,b\n1,x\n,y\nNA,z\n2.5,\n",  # missing values of both kinds
    '\ufeffa,b\r\n"1,5",q\r\n"2\n3",r\r\n',  # a byte-order mark, CRLF, quoted delimiters and line breaks
    "a,b\n 3 ,1_0\n4,0x10\n1e3,5\n",  # ' 3 ' is a number; '1_0' and '0x10' are text
    "a,b\n1,2\n,\n3,4\n",  # a row of blank cells: read_table's own reading
    "a,b\nNA,NA\nNA,NA\n",  # a column of missing values only
    "a,b\n1,true\n2,false\n",  # booleans are their text
    '"a","b"\n1,x\n2,y\n',  # quoted names, unquoted values
    '"a\nb","c"\n1,x\n2,y\n',  # a quoted name across a line break
], ids=["late text", "missing", "quoting", "number rules", "blank row", "all missing", "booleans", "quoted names", "name across lines"])
def test_the_streaming_reader_types_columns_as_read_table(tmp_path, small_blocks, text):
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("utf-8"))
    names = tables.csv_header(path, DataError, "a data file")[0]
    got, table = _read(path, names)
    _same(got, _expected(path, names))
    assert table.rows == len(next(iter(got.values()))[1])


def test_a_late_text_cell_reads_again_and_names_the_cells_line(tmp_path, small_blocks):
    path = tmp_path / "d.csv"
    path.write_text(LATE)
    columns = raw.read_raw_table(path, ["n", "t"], ",", MISSING).columns()
    assert columns["t"].tokens()[70] == "abc" and columns["t"].tokens()[3] == "3"  # the text as written
    assert columns["t"].place(70) == {"file": str(path), "line": 72, "column": 2}


def test_a_ragged_row_is_named_by_its_line(tmp_path, small_blocks):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n" + "1,2\n" * 40 + "3\n")
    with pytest.raises(DataError, match="expected 2 fields like the header, received 1") as raised:
        raw.read_raw_table(path, ["a", "b"], ",", MISSING)
    assert raised.value.problems[0].line == 42


CELL = st.one_of(st.sampled_from(["", "NA", "x", "yes", "no", "1", "0", "2.5", "-3", "1e5", " 3 ", "é", "1_0", "0x1", "a,b", "q\"q"]),
                 st.integers(-50, 50).map(str), st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(CELL, CELL, CELL), min_size=1, max_size=40), block=st.sampled_from([64, 200, 1 << 20]))
def test_streamed_raw_columns_equal_read_tables_on_mixed_tables(tmp_path_factory, monkeypatch, rows, block):
    monkeypatch.setattr(tables, "TEXT_BLOCK_BYTES", block)
    path = tmp_path_factory.mktemp("mixed") / "d.csv"
    path.write_text("a,b,c\n" + "".join(",".join('"' + c.replace('"', '""') + '"' for c in row) + "\n" for row in rows))
    try:
        expected = _expected(path, ["a", "b", "c"])
    except DataError as exc:
        with pytest.raises(DataError) as raised:
            raw.read_raw_table(path, ["a", "b", "c"], ",", MISSING)
        assert str(raised.value.problems[0]) == str(exc.problems[0])
        return
    _same(_read(path, ["a", "b", "c"])[0], expected)


# {column: (its cells, what nnctl reads of them)}: every column is numbers in the file's first
# pieces; "late" turns out text in the last.
ARROW_COLUMNS = {
    "float": ([None if i % 6 == 1 else i / 3 for i in range(40)], ("number", [math.nan if i % 6 == 1 else i / 3 for i in range(40)])),
    "int": (list(range(40)), ("number", [float(i) for i in range(40)])),
    "numbers as text": ([" 3 " if i % 5 == 0 else str(i) for i in range(40)], ("number", [3.0 if i % 5 == 0 else float(i) for i in range(40)])),
    "late": ([str(i) for i in range(39)] + ["late"], ("text", [str(i) for i in range(39)] + ["late"])),
    "missing late": ([str(i) if i < 35 else None for i in range(40)], ("number", [float(i) if i < 35 else math.nan for i in range(40)])),
    "all missing": ([None] * 40, ("number", [math.nan] * 40)),
    "bool": ([i % 2 == 0 for i in range(40)], ("text", ["true" if i % 2 == 0 else "false" for i in range(40)])),
    "dictionary": (pyarrow.array([["x", "y", None][i % 3] for i in range(40)]).dictionary_encode(), ("text", [["x", "y", None][i % 3] for i in range(40)])),
}
ARROW_MIXED = pyarrow.table({name: cells for name, (cells, _) in ARROW_COLUMNS.items()})


@pytest.mark.parametrize("kind, suffix", [("parquet", ".parquet"), ("feather", ".feather"), ("stream", ".arrow")])
def test_raw_columns_of_a_file_in_pieces_are_those_of_the_file_in_one(tmp_path, monkeypatch, kind, suffix):
    names = ARROW_MIXED.column_names
    (tmp_path / f"whole{suffix}").write_bytes(table_bytes(ARROW_MIXED, kind, 40))
    whole, table = _read(tmp_path / f"whole{suffix}", names)
    assert table.rows == 40 and table.table.delimiter is None and table.table.place(3, "late") == {"file": str(tmp_path / f"whole{suffix}")}
    monkeypatch.setattr(tables, "BLOCK_BYTES", 8 * 8 * 2)  # 2 rows a block
    (tmp_path / f"pieces{suffix}").write_bytes(table_bytes(ARROW_MIXED, kind, 5))
    flips = []
    real = raw._Blocks._block
    monkeypatch.setattr(raw._Blocks, "_block", lambda self, batch, first: (flips.append(first), real(self, batch, first))[1])
    pieces, _ = _read(tmp_path / f"pieces{suffix}", names)
    assert pieces == whole and flips.count(True) == 2  # read again from the start once "late" turned out text
    _same(pieces, {name: expected for name, (_, expected) in ARROW_COLUMNS.items()})


def test_raw_columns_of_a_parquet_file_come_from_the_cache(tmp_path, monkeypatch, small_cache):
    path, folder = tmp_path / "d.parquet", tmp_path / "cache"
    path.write_bytes(table_bytes(ARROW_MIXED, "parquet", 7))
    monkeypatch.setattr(tables, "BLOCK_BYTES", 8 * 8 * 3)
    names = ARROW_MIXED.column_names
    first, table = _read(path, names, folder)
    assert table.notes == [] and len([p for p in folder.iterdir() if p.is_dir()]) == 1
    _no_reading(monkeypatch)
    second, table = _read(path, names, folder)
    assert second == first and table.notes == [] and table.table.delimiter is None and table.kinds["late"] == "text"
    blocks = list(raw.read_raw_table(path, names, ",", MISSING, folder, on_disk=True).blocks(9))
    assert sum((b["late"].tokens().tolist() for b in blocks), []) == first["late"][1]


# --- the raw cache -----------------------------------------------------------------------------------------
def _mixed(path, rows=200, scale=1):
    cities = ["Paris", "Lyon", "Nice", ""]
    path.write_text("age,city,member,y\n" + "".join(
        f"{'' if i % 11 == 3 else (20 + i % 37) * scale},{cities[i % 4]},{'yes' if i % 3 else 'no'},{i % 2}\n" for i in range(rows)))


def _parses(monkeypatch):
    count = []
    real = raw.arrow_text_blocks
    monkeypatch.setattr(raw, "arrow_text_blocks", lambda *a, **k: (count.append(1), real(*a, **k))[1])
    return count


def _no_reading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the table file was read")
    monkeypatch.setattr(raw, "arrow_text_blocks", refuse)
    monkeypatch.setattr(raw, "arrow_file_batches", refuse)
    monkeypatch.setattr(raw, "read_table", refuse)


NAMES = ["age", "city", "member", "y"]


def test_a_second_read_of_raw_columns_comes_from_the_cache(tmp_path, monkeypatch, small_cache):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _mixed(path)
    first, table = _read(path, NAMES, folder)
    assert table.notes == [] and len([p for p in folder.iterdir() if p.is_dir()]) == 1
    _no_reading(monkeypatch)
    second, table = _read(path, NAMES, folder)
    assert second == first and table.notes == []
    _same(first, _expected(path, NAMES))
    assert table.columns()["city"].place(5) == {"file": str(path), "line": 7, "column": 2}  # places from the cached header
    blocks = list(raw.read_raw_table(path, NAMES, ",", MISSING, folder, on_disk=True).blocks(7))
    assert len(blocks) == 29 and blocks[3]["city"].offset == 21
    assert sum((b["city"].tokens().tolist() for b in blocks), []) == first["city"][1]


@pytest.mark.parametrize("change", ["content", "missing values", "columns", "delimiter"])
def test_a_changed_file_or_reading_reads_the_raw_columns_again(tmp_path, monkeypatch, small_cache, change):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _mixed(path)
    parses = _parses(monkeypatch)
    _read(path, NAMES, folder)
    if change == "content":
        stat = os.stat(path)
        _mixed(path, scale=2)  # the same size? no: the hash tells either way
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        got = raw.read_raw_table(path, NAMES, ",", MISSING, folder).columns()
        assert got["age"].values[0] == 40.0
    elif change == "missing values":
        got = raw.read_raw_table(path, NAMES, ",", ("NA",), folder).columns()
        assert got["city"].tokens()[3] == ""  # an empty cell is a value now
    elif change == "columns":
        raw.read_raw_table(path, ["city", "age"], ",", MISSING, folder)
    else:
        path.write_text(path.read_text().replace(",", ";"))
        got = raw.read_raw_table(path, NAMES, ";", MISSING, folder).columns()
        assert got["member"].tokens()[1] == "yes"
    assert len(parses) == 2 and len([p for p in folder.iterdir() if p.is_dir()]) == 2


@pytest.mark.parametrize("damage", ["flip codes", "flip values", "truncate", "tokens", "manifest", "missing array"])
def test_a_damaged_raw_entry_is_rebuilt_with_a_note(tmp_path, monkeypatch, small_cache, damage):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _mixed(path)
    good, _ = _read(path, NAMES, folder)
    (entry,) = [p for p in folder.iterdir() if p.is_dir()]
    target = {"flip codes": "1.npy", "flip values": "0.npy", "truncate": "1.npy", "tokens": "1.tokens.npy"}.get(damage)
    if damage.startswith("flip") or damage == "tokens":
        data = bytearray((entry / target).read_bytes())
        data[-2] ^= 0x01
        (entry / target).write_bytes(bytes(data))
    elif damage == "truncate":
        (entry / target).write_bytes((entry / target).read_bytes()[:-4])
    elif damage == "manifest":
        (entry / "manifest.json").write_text("{not json")
    else:
        (entry / "2.npy").unlink()
    parses = _parses(monkeypatch)
    for on_disk in (False, True):  # a training run loads the columns; predict reads them by block: both check them
        got, table = _read(path, NAMES, folder, on_disk)
        assert got == good
        if not on_disk:
            assert len(parses) == 1 and len(table.notes) == 1
            assert table.notes[0].startswith(f"{entry}: the cached data of {path} is damaged (") and table.notes[0].endswith("rebuilt from the file")
        else:
            assert len(parses) == 1 and table.notes == []


def test_an_unwritable_cache_folder_reads_the_raw_columns_without_it(tmp_path, small_cache):
    path = tmp_path / "d.csv"
    _mixed(path)
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    got, table = _read(path, NAMES, blocker / "cache")
    _same(got, _expected(path, NAMES))
    assert len(table.notes) == 1 and table.notes[0].startswith("the data cache cannot be written (")


# --- prepared data sets ----------------------------------------------------------------------------------
# RAW's spec with the cache on, and a city's unknown values in a bucket of their own
SPEC = _edit(RAW, ("inputs: {x: [6]}", "inputs: {x: [8]}"), ("  validation_split: 0.25", "  validation_split: 0.25\n  cache: cache"),
             ("city: {missing: most_frequent}", "city: {missing: constant, fill_value: none, unknown: bucket}"))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "data.csv").write_text(_rows(400))
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path


def _sets(project):
    with _chdir(project):
        session = open_session(load_spec("spec.yaml"))
        train, validation = training_sets(session)
    return session, train, validation


class _chdir:
    def __init__(self, folder):
        self.folder, self.old = folder, None

    def __enter__(self):
        self.old = os.getcwd()
        os.chdir(self.folder)

    def __exit__(self, *exc):
        os.chdir(self.old)


def _same_sets(a, b):
    (sa, ta, va), (sb, tb, vb) = a, b
    assert ta.inputs["x"].tobytes() == tb.inputs["x"].tobytes() and ta.targets.keys() == tb.targets.keys() and all(ta.targets[k].tobytes() == tb.targets[k].tobytes() for k in ta.targets)
    assert ta.rows.tolist() == tb.rows.tolist() and va.rows.tolist() == vb.rows.tolist()
    from nnctl.data.preprocessing import state_arrays

    state_a, state_b = state_arrays(sa.preprocessing), state_arrays(sb.preprocessing)
    assert state_a.keys() == state_b.keys() and all(numpy.array_equal(state_a[k], state_b[k]) for k in state_a)
    assert sa.preprocessing_reports == sb.preprocessing_reports


def test_a_second_training_run_neither_reads_nor_transforms_the_file(project, monkeypatch, small_cache):
    first = _sets(project)
    assert first[1].notes == [] and len(first[1]) + len(first[2]) == 400
    uncached = (project / "spec.yaml").read_text().replace("cache: cache", "cache: false")
    (project / "plain.yaml").write_text(uncached)
    with _chdir(project):
        plain_session = open_session(load_spec("plain.yaml"))
        plain = (plain_session, *training_sets(plain_session))
    _same_sets(first, plain)
    _no_reading(monkeypatch)
    monkeypatch.setattr(prepared.preprocessing, "transform", lambda *a, **k: (_ for _ in ()).throw(AssertionError("transformed")))
    second = _sets(project)
    _same_sets(first, second)
    assert second[1].notes == []


def test_changed_preprocessing_transforms_the_cached_raw_columns_again(project, monkeypatch, small_cache):
    _sets(project)
    parses = _parses(monkeypatch)
    spec = project / "spec.yaml"
    spec.write_text(spec.read_text().replace("{normalize: zscore, missing: mean}", "{normalize: minmax, missing: median}"))
    session, train, _ = _sets(project)
    assert parses == [] and session.preprocessing["age"].center == 20.0  # minmax: the training rows' least age
    assert len([p for p in (project / "cache").iterdir() if p.is_dir()]) == 3  # one raw entry, two prepared


@pytest.mark.parametrize("part", ["group.0.bits.npy", "group.0.rest.npy", "keep.npy"])
def test_a_damaged_prepared_entry_is_rebuilt_with_a_note(project, monkeypatch, small_cache, part):
    """The inputs' one-hot and binary columns are kept as bits, the others as numbers: either damaged is found."""
    first = _sets(project)
    entries = [p for p in (project / "cache").iterdir() if p.is_dir() and (p / "keep.npy").exists()]
    (entry,) = entries
    manifest = json.loads((entry / "manifest.json").read_text())
    groups = {key if isinstance(key, str) else f"targets of {key['targets']}": meta for key, meta in manifest["groups"]}
    assert len(groups["x"]["bits"]) == 6  # the city's five and the member's one, of eight
    data = bytearray((entry / part).read_bytes())
    data[-3] ^= 0x10
    (entry / part).write_bytes(bytes(data))
    again = _sets(project)
    _same_sets(first, again)
    assert len(again[1].notes) == 1 and again[1].notes[0].startswith(f"cache/{entry.name}: the cached data of data.csv is damaged ({part} ")
    assert _sets(project)[1].notes == []


def test_a_damaged_cache_is_a_note_in_the_training_output(project, monkeypatch, small_cache):
    run_json("train", "spec.yaml", cwd=project)
    for entry in (project / "cache").iterdir():
        if entry.is_dir():
            (entry / "manifest.json").write_text("[]")
    trained = run_json("train", "spec.yaml", "--restart", cwd=project)
    assert any("is damaged" in note and "rebuilt from the file" in note for note in trained["notes"])


# --- predict, a block of rows at a time -------------------------------------------------------------------
def _predict_rows(path, rows, seed=1, unknown="Rome", bad=None):
    rng = numpy.random.default_rng(seed)
    lines = ["age,fee,city,member"]
    for i in range(rows):
        age = "" if rng.random() < 0.1 else str(int(rng.integers(18, 80)))
        city = ["Paris", "Lyon", "Nice", "", unknown][int(rng.integers(5))]
        member = ["yes", "no", ""][int(rng.integers(3))]
        lines.append(",".join((age, str(int(rng.integers(900, 2500))), city, member)))
    for row, column, value in bad or ():
        cells = lines[row + 1].split(",")
        cells[column] = value
        lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def trained(project):
    run_json("train", "spec.yaml", cwd=project)
    return project


def _predict(project, rows, layer=None):
    """(values, classes, columns, report) of predict_file on new.csv, `rows` rows a block."""
    with _chdir(project):
        session = open_session(load_spec("spec.yaml"), weights="runs/raw/weights.npz")
        predictions = predict_file(session, "new.csv", layer, block_rows=rows)
        values, classes = predictions.collect()
        return values, classes, predictions.columns, predictions.report


@pytest.mark.parametrize("layer", [None, "dense"])
def test_predict_in_blocks_equals_predict_at_once(trained, layer):
    """Unknown cities (bucket), missing cells filled, and 2,500 rows in blocks of 37: batches of 1,024
    cross the blocks, and the report adds up to the whole file's, column order and all."""
    _predict_rows(trained / "new.csv", 2500)
    whole = _predict(trained, 1 << 20, layer)
    blocks = _predict(trained, 37, layer)
    assert whole[0].tobytes() == blocks[0].tobytes() and whole[2] == blocks[2]
    assert whole[1].keys() == blocks[1].keys() and all(whole[1][k].tolist() == blocks[1][k].tolist() for k in whole[1])
    if layer is None:
        assert whole[3] == blocks[3] and list(whole[3]["filled"]) == ["age", "city", "member"] and whole[3]["unknown"]["city"] > 400


def test_predict_in_blocks_drops_rows_as_predict_at_once(trained):
    spec = trained / "spec.yaml"
    spec.write_text(spec.read_text().replace("{normalize: zscore, missing: mean}", "{normalize: zscore, missing: drop}"))
    _predict_rows(trained / "new.csv", 1500)
    whole, blocks = _predict(trained, 1 << 20), _predict(trained, 10)
    assert whole[0].tobytes() == blocks[0].tobytes() and whole[3] == blocks[3] and whole[3]["dropped_rows"] > 100


@pytest.mark.parametrize("bad, expected", [
    # a later column's bad value in an earlier block: the whole file raises the earlier column's
    ([(3, 3, "maybe"), (40, 0, "old")], "new.csv:42:1: column 'age': expected numbers for a numeric column, received 'old'"),
    # and a city no one has seen goes to its bucket: the member's bad value is the first problem
    ([(3, 3, "maybe"), (50, 2, "Rome")], "new.csv:5:4: column 'member': expected one of the binary column's two values"),
])
def test_predict_in_blocks_raises_the_first_problem_of_the_whole_file(trained, bad, expected):
    _predict_rows(trained / "new.csv", 60, unknown="Nice", bad=bad)
    for rows in (1 << 20, 4):
        with pytest.raises(DataError) as raised:
            _predict(trained, rows)
        assert str(raised.value.problems[0]).startswith(expected)


def test_predict_output_is_the_same_bytes_in_blocks(trained, monkeypatch):
    _predict_rows(trained / "new.csv", 3000)
    outputs = {}
    for rows in (1 << 20, 128):
        monkeypatch.setattr(sessions, "PREDICT_BLOCK_ROWS", rows)
        for out in ("p.csv", "p.npy"):
            result = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", "--output", out, cwd=trained)
            assert result.exit_code == 0, result.output
            outputs[rows, out] = (trained / out).read_bytes(), result.stdout
        outputs[rows, "json"] = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", "--json", cwd=trained).stdout
    for kind in ("p.csv", "p.npy", "json"):
        assert outputs[1 << 20, kind] == outputs[128, kind]
    # the rows whose cells are all blank are skipped, as a CSV's blank rows always are
    assert outputs[128, "p.csv"][1] == f"Wrote {len(json.loads(outputs[128, 'json'])['outputs'])} predictions to p.csv\n"
    assert json.loads(outputs[128, "json"])["preprocessing"]["unknown"]["city"] > 0


def test_a_failed_predict_in_blocks_leaves_the_output_alone(trained, monkeypatch):
    monkeypatch.setattr(sessions, "PREDICT_BLOCK_ROWS", 8)
    _predict_rows(trained / "new.csv", 2100, bad=[(2090, 0, "old")])  # after two batches were predicted and written
    (trained / "p.csv").write_text("keep me")
    result = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", "--output", "p.csv", cwd=trained)
    assert result.exit_code == 2 and "new.csv:2092:1: column 'age': expected numbers" in result.stderr
    assert (trained / "p.csv").read_text() == "keep me" and [p.name for p in trained.iterdir() if p.name.startswith("p.")] == ["p.csv"]


@pytest.mark.parametrize("shape, dtype", [((50, 3), numpy.float32), ((7, 1), numpy.float64), ((20,), numpy.float32)])
def test_predictions_written_in_blocks_are_numpy_save_and_the_csv_of_the_whole(tmp_path, shape, dtype):
    values = numpy.random.default_rng(0).standard_normal(shape).astype(dtype)
    classes = numpy.array([f"c{i % 3}" for i in range(shape[0])], dtype=object)
    columns = [f"p_{i}" for i in range(shape[1] if len(shape) == 2 else 1)]
    numpy.save(tmp_path / "whole.npy", values)
    pieces = [(values[i:i + 6], {"class": classes[i:i + 6]}) for i in range(0, shape[0], 6)]
    assert write_predictions(tmp_path / "blocks.npy", pieces, columns, ["class"]) == shape[0]
    assert (tmp_path / "blocks.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    save_predictions(tmp_path / "whole.csv", values, {"class": classes}, columns)
    write_predictions(tmp_path / "blocks.csv", iter(pieces), columns, ["class"])
    assert (tmp_path / "blocks.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_predict_reads_a_cached_input_without_parsing_it(trained, monkeypatch, small_cache):
    _predict_rows(trained / "new.csv", 300)
    first = _predict(trained, 50)
    _no_reading(monkeypatch)
    second = _predict(trained, 50)
    assert first[0].tobytes() == second[0].tobytes() and first[3] == second[3]


def test_text_in_a_numeric_column_at_predict_is_one_clear_error(trained):
    (trained / "new.csv").write_text("age,fee,city,member\n30,1000,Paris,yes\nabc,1100,Lyon,no\n")
    result = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", cwd=trained)
    assert result.exit_code == 2 and result.stderr.startswith("Error (")
    assert "new.csv:3:1: column 'age': expected numbers for a numeric column, received 'abc'; declare it `type: category`" in result.stderr


def test_a_file_keeps_its_few_most_recent_prepared_entries(project, monkeypatch, small_cache):
    """A sweep over seeds makes an entry per seed: the file keeps the PREPARED_PER_FILE most recently used."""
    spec = project / "spec.yaml"
    monkeypatch.setattr(prepared, "PREPARED_PER_FILE", 2)
    prepared_entries = lambda: {p.name for p in (project / "cache").iterdir() if (p / "keep.npy").exists()}
    made, before = {}, set()
    for seed in (0, 1, 2):
        spec.write_text(SPEC.replace("seed: 0", f"seed: {seed}"))
        _sets(project)
        (made[seed],) = prepared_entries() - before
        before = prepared_entries()
    assert prepared_entries() == {made[1], made[2]}  # seed 0's, the least recently used, went
    parses = _parses(monkeypatch)
    spec.write_text(SPEC.replace("seed: 0", "seed: 1"))
    _sets(project)
    assert parses == [] and len(prepared_entries()) == 2  # seed 1's is still there: nothing transformed, nothing evicted


def test_a_data_set_too_large_to_load_is_transformed_each_run(project, monkeypatch, small_cache):
    monkeypatch.setattr(prepared, "LOAD_WHOLE_BYTES", 1000)
    first = _sets(project)
    assert not [p for p in (project / "cache").iterdir() if (p / "keep.npy").exists()]  # only the raw columns are kept
    _same_sets(first, _sets(project))


def test_a_group_kept_as_bits_and_numbers_is_the_same_bytes(tmp_path):
    rng = numpy.random.default_rng(3)
    array = numpy.zeros((1000, 9), dtype=numpy.float32)
    array[numpy.arange(1000), rng.integers(0, 4, 1000)] = 1  # one-hot
    array[:, 4] = rng.standard_normal(1000)
    array[:, 5] = rng.integers(0, 2, 1000)  # binary
    array[:, 6] = numpy.where(rng.random(1000) < 0.5, -0.0, 1.0)  # -0.0 is no bit: kept as a number
    array[:, 7] = 0.0
    array[:, 8] = rng.integers(0, 3, 1000)  # an index
    meta = prepared._write_group(tmp_path, "g", array)
    assert meta["bits"] == [0, 1, 2, 3, 5, 7]
    assert prepared._read_group(tmp_path, meta).tobytes() == array.tobytes()

"""Table files read by pyarrow: typed columns of every format, pyarrow's reading against CsvTable's
(the exact one it falls back to), and the data cache's reuse and invalidation."""
from __future__ import annotations

import json
import math
import os

import numpy
import pyarrow
import pyarrow.csv
import pyarrow.feather
import pyarrow.parquet
import pytest

from nnctl.data import cache, readers
from nnctl.data.dataset import load_dataset
from nnctl.data.readers import ReadOptions, RowFile, read_csv
from nnctl.errors import DataError
from nnctl.io import tables
from nnctl.io.tables import NUMBER, TEXT, read_table
from tests.helpers import table_bytes


def _columns(table) -> dict:
    """{name: (kind, values, missing)} with NaN shown as None, for comparing."""
    def shown(column):
        if column.kind == NUMBER:
            return [None if math.isnan(v) else v for v in column.values.tolist()]
        return column.values.tolist()
    return {name: (c.kind, shown(c), c.missing.tolist()) for name, c in table.columns.items()}


def _python_only(monkeypatch):
    def refuse(*args, **kwargs):
        raise tables.Fallback("test: CsvTable only")
    monkeypatch.setattr(tables, "_arrow_csv_columns", refuse)


# --- typed columns of a CSV --------------------------------------------------------------------------
CSVS = [
    ("BOM and CRLF", "\ufeffa,b\r\n1,x\r\n2,y\r\n", {},
     {"a": (NUMBER, [1.0, 2.0], [False, False]), "b": (TEXT, ["x", "y"], [False, False])}),
    ("quoted commas and line breaks", 'a,b\n"1",\n"2","x,\n""y"""\n', {},
     {"a": (NUMBER, [1.0, 2.0], [False, False]), "b": (TEXT, [None, 'x,\n"y"'], [True, False])}),
    ("every default missing token", "a,b\nNA,u\nNaN,null\nNone,v\n,w\n5,\n", {},
     {"a": (NUMBER, [None, None, None, None, 5.0], [True, True, True, True, False]),
      "b": (TEXT, ["u", None, "v", "w", None], [False, True, False, False, True])}),
    ("declared missing tokens", "a,b\n?,NA\n1,x\n", {"missing_values": ["?"]},
     {"a": (NUMBER, [None, 1.0], [True, False]), "b": (TEXT, ["NA", "x"], [False, False])}),
    ("a delimiter", "a;b\n1,5;x\n2;y\n", {"delimiter": ";"},
     {"a": (TEXT, ["1,5", "2"], [False, False]), "b": (TEXT, ["x", "y"], [False, False])}),
    ("tab-separated", "a\tb\n1\t2\n", {"delimiter": "\t"}, {"a": (NUMBER, [1.0], [False]), "b": (NUMBER, [2.0], [False])}),
    ("hexadecimal is text, not 16", "a,b\n1,2\n0x10,3\n", {},
     {"a": (TEXT, ["1", "0x10"], [False, False]), "b": (NUMBER, [2.0, 3.0], [False, False])}),
    ("booleans and dates are their text", "a,b\ntrue,2020-01-01\nFalse,2020-01-02\n", {},
     {"a": (TEXT, ["true", "False"], [False, False]), "b": (TEXT, ["2020-01-01", "2020-01-02"], [False, False])}),
    ("padded numbers, inf and digits of other scripts", "a,b\n 3 ,\u0661\ninf,2\n", {},
     {"a": (NUMBER, [3.0, math.inf], [False, False]), "b": (TEXT, ["\u0661", "2"], [False, False])}),
    ("a blank row is skipped, a row of missing values is not", "a,b\n1,2\n , \nNA,NA\n", {},
     {"a": (NUMBER, [1.0, None], [False, True]), "b": (NUMBER, [2.0, None], [False, True])}),
    ("declared types", "a,b\n1,2\n3,4\n", {"types": {"a": TEXT, "b": NUMBER}},
     {"a": (TEXT, ["1", "3"], [False, False]), "b": (NUMBER, [2.0, 4.0], [False, False])}),
]


@pytest.mark.parametrize("text, options, expected", [pytest.param(*row[1:], id=row[0]) for row in CSVS])
@pytest.mark.parametrize("reader", ["pyarrow", "CsvTable"])
def test_csv_columns_are_typed_over_the_whole_file(tmp_path, monkeypatch, reader, text, options, expected):
    if reader == "CsvTable":
        _python_only(monkeypatch)
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode("utf-8"))
    assert _columns(read_table(path, DataError, "a table", **options)) == expected


def test_a_type_that_shows_late_in_the_file_decides_the_column(tmp_path):
    rows = 300_000  # far past pyarrow's first block (1 MB)
    path = tmp_path / "late.csv"
    path.write_text("a,b,c\n" + "1,2,3\n" * rows + "word,2.5,\n")
    table = read_table(path, DataError, "a table")
    a, b, c = (table.columns[n] for n in "abc")
    assert (a.kind, a.values[-1], a.values[0]) == (TEXT, "word", "1")
    assert (b.kind, b.values[-1], b.values[0]) == (NUMBER, 2.5, 2.0)
    assert (c.kind, bool(c.missing[-1]), int(c.missing.sum())) == (NUMBER, True, 1)


def test_a_cell_names_its_physical_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,b,c\n"1\n\n",x,3\n\n4,y,six\n')
    table = read_table(path, DataError, "a table")
    assert table.place(1, "c") == {"file": str(path), "line": 6, "column": 3} and table.cell(1, "c") == "six"
    assert table.place(0, "b") == {"file": str(path), "line": 4, "column": 2} and table.line(0) == 2


@pytest.mark.parametrize("reader", ["pyarrow", "CsvTable"])
def test_text_in_a_declared_number_column_is_refused_at_its_cell(tmp_path, monkeypatch, reader):
    if reader == "CsvTable":
        _python_only(monkeypatch)
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,2\n"x\ny",3\nabc,4\n')
    with pytest.raises(DataError) as caught:
        read_table(path, DataError, "a table", types={"a": NUMBER})
    assert str(caught.value) == f"{path}:3:1: column 'a': expected a number, received 'x\\ny'; declare the column as text to read it as categories"


def test_a_column_the_file_lacks_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("alpha,beta\n1,2\n")
    with pytest.raises(DataError) as caught:
        read_table(path, DataError, "a table", ["alpha", "bta"])
    assert str(caught.value) == f"{path}:1: column: expected column 'bta' (did you mean 'beta'?); the header has 'alpha', 'beta'"


# --- Parquet and Feather ---------------------------------------------------------------------------
ARROW_TABLE = pyarrow.table({"n": [1.5, None, 3.0], "i": [1, 2, 3], "s": ["a", None, "c"], "flag": [True, False, None],
                             "d": pyarrow.array(["u", "v", "u"]).dictionary_encode()})
WRITERS = {".parquet": pyarrow.parquet.write_table, ".feather": pyarrow.feather.write_feather, ".arrow": pyarrow.feather.write_feather}


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_parquet_and_feather_columns_are_typed(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    WRITERS[suffix](ARROW_TABLE, str(path))
    assert _columns(read_table(path, DataError, "a table")) == {
        "n": (NUMBER, [1.5, None, 3.0], [False, True, False]), "i": (NUMBER, [1.0, 2.0, 3.0], [False] * 3),
        "s": (TEXT, ["a", None, "c"], [False, True, False]), "flag": (TEXT, ["true", "false", None], [False, False, True]),
        "d": (TEXT, ["u", "v", "u"], [False] * 3)}
    data = load_dataset(path, {"x": ["i", "i"]}, {"y": "i"}, {"x": (2,)}, cache_folder=None)
    assert data.inputs["x"].tolist() == [[1, 1], [2, 2], [3, 3]] and data.targets["y"].tolist() == [[1], [2], [3]]


@pytest.mark.parametrize("column, message", [
    ("n", "column 'n': expected a number at row 2, received a missing value"),
    ("s", "column 's': expected a number at row 2, received a missing value"),
    ("d", "column 'd': expected a number at row 1, received text 'u'"),
    ("N", "input 'x': expected column 'N' (did you mean 'n'?); the header has 'n', 'i', 's', 'flag', 'd'"),
])
def test_a_parquet_column_the_model_cannot_read_is_named(tmp_path, column, message):
    path = tmp_path / "t.parquet"
    pyarrow.parquet.write_table(ARROW_TABLE, str(path))
    with pytest.raises(DataError) as caught:
        load_dataset(path, {"x": [column]}, {"y": "i"}, {"x": (1,)}, cache_folder=None)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize("content", [b"", b"PAR1 not really", b"\x00" * 64])
def test_an_unreadable_parquet_file_is_a_data_error(tmp_path, content):
    path = tmp_path / "t.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_table(path, DataError, "a table")
    assert str(caught.value).startswith(f"{path}: expected a readable Parquet file, received ArrowInvalid: ")


# --- Parquet and Feather, a record batch at a time -----------------------------------------------------
PIECES = pyarrow.table({
    "n": [i / 7 for i in range(50)],
    "m": [None if i % 9 == 4 else i for i in range(50)],  # integers, some missing
    "padded": [" 3 " if i % 4 == 0 else str(i) for i in range(50)],  # text cells, every one a number
    "late": [str(i) for i in range(49)] + ["word"],  # text in the last piece only
    "s": pyarrow.array([["a", "b", None][i % 3] for i in range(50)]).dictionary_encode(),
})
SUFFIXES = {"parquet": ".parquet", "feather": ".feather", "stream": ".arrow"}


def _pieces(tmp_path, kind, rows, table=PIECES):
    path = tmp_path / f"{kind}-{rows}{SUFFIXES[kind]}"
    path.write_bytes(table_bytes(table, kind, rows))
    return path


def _numeric(path):
    wanted, blocks, locate = readers.table_blocks(path, {"x": ["n", "padded"]}, {"y": ["n"]})
    parts = list(blocks())
    joined = readers.joined_blocks(wanted, iter(parts))
    return len(parts), joined["x"].tobytes(), joined[readers.Target("y")].tobytes(), locate["y"](49)[1]


@pytest.mark.parametrize("kind", list(SUFFIXES))
def test_a_file_read_in_pieces_reads_as_the_file_in_one(tmp_path, monkeypatch, kind):
    whole = _pieces(tmp_path, kind, 50)
    expected, (blocks, *numbers) = _columns(read_table(whole, DataError, "a table")), _numeric(whole)
    assert blocks == 1
    assert expected["n"][1][1] == 1 / 7 and expected["m"][1][4] is None and expected["padded"][:2] == (NUMBER, [3.0 if i % 4 == 0 else float(i) for i in range(50)])
    assert expected["late"][0] == TEXT and expected["late"][1][:2] == ["0", "1"] and expected["s"][1][:3] == ["a", "b", None]
    monkeypatch.setattr(tables, "BLOCK_BYTES", 48)  # 3 rows a piece for 2 columns, 1 for 5
    pieces = _pieces(tmp_path, kind, 7)
    assert _columns(read_table(pieces, DataError, "a table")) == expected
    streamed_blocks, *streamed = _numeric(pieces)
    # Parquet's batches of 3 rows run across its row groups; a Feather file's are its record batches cut to 3 rows
    assert streamed_blocks == (17 if kind == "parquet" else 22) and streamed == numbers


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_columns_asked_for_out_of_the_files_order_keep_their_values(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    WRITERS[suffix](pyarrow.table({"f": [1.0, 2.0], "i": [3, 4], "b": [True, False], "big": [5.0, 6.0]}), str(path))
    data = load_dataset(path, {"x": ["big", "f"]}, {"y": "i"}, {"x": (2,)}, dtype="float64", cache_folder=None)
    assert data.inputs["x"].tolist() == [[5.0, 1.0], [6.0, 2.0]] and data.targets["y"].tolist() == [[3.0], [4.0]]


def test_an_arrow_stream_reads_as_an_arrow_file(tmp_path):
    file, stream = tmp_path / "file.arrow", _pieces(tmp_path, "stream", 20)
    pyarrow.feather.write_feather(PIECES, str(file))
    assert tables.table_header(stream, DataError, "a table") == PIECES.column_names
    assert _columns(read_table(stream, DataError, "a table")) == _columns(read_table(file, DataError, "a table"))


@pytest.mark.parametrize("kind", list(SUFFIXES))
@pytest.mark.parametrize("columns, message", [
    (["late"], "column 'late': expected a number at row 1, received text '0'"),  # the text in the last piece; the column's first cell named
    (["m", "late"], "column 'm': expected a number at row 5, received a missing value"),  # the first column asked for, not the first piece
    (["big"], "column 'big': expected a number that is finite in float32 (|x| <= 3.4e+38) at row 48, received 1e+39"),
])
def test_a_problem_in_a_later_piece_is_the_whole_files_first(tmp_path, monkeypatch, kind, columns, message):
    monkeypatch.setattr(tables, "BLOCK_BYTES", 48)
    path = _pieces(tmp_path, kind, 7, PIECES.append_column("big", pyarrow.array([1e39 if i == 47 else 1.0 for i in range(50)])))
    with pytest.raises(DataError) as caught:
        load_dataset(path, {"x": columns}, {"y": "n"}, {"x": (len(columns),)}, dtype="float32", cache_folder=None)
    assert str(caught.value) == f"{path}: {message}"


# --- the model's numbers: pyarrow against CsvTable -------------------------------------------------
NUMERIC = [
    "a,b,c\n1,2,3\n4.5,-6e-3,7\n",
    "\ufeffa, b ,c\r\n1,2,3\r\n\r\n4,5,6\r\n",
    'a,b,c\n"1",2,"3"\n4," 5 ",6\n',
    "a,b,c\n1,2,3\n,,\n4,5,6\n",  # a blank row: pyarrow sees missing cells, CsvTable skips it
    "a,b,c,note\n1,2,3,\"x,\ny\"\n4,5,6,z\n",
    "a,b,c\n" + "".join(f"{i * 0.1!r},{-i},{i % 3}\n" for i in range(5000)),
]


@pytest.mark.parametrize("text", NUMERIC)
def test_pyarrow_reads_the_numbers_csvtable_reads(tmp_path, monkeypatch, text):
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode("utf-8"))
    fast_inputs, fast_targets, fast_locate = read_csv(path, {"x": ["a", "b"]}, {"y": ["c"]})
    calls = []
    monkeypatch.setattr(readers, "arrow_number_blocks", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(tables.Fallback("test")))
    slow_inputs, slow_targets, slow_locate = read_csv(path, {"x": ["a", "b"]}, {"y": ["c"]})
    assert calls and fast_inputs["x"].tobytes() == slow_inputs["x"].tobytes() and fast_targets["y"].tobytes() == slow_targets["y"].tobytes()
    last = len(fast_targets["y"]) - 1
    assert fast_locate["y"](last) == slow_locate["y"](last)


def test_a_delimiter_and_missing_values_reach_the_model_reader(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a;b\n1;2\n?;4\n")
    with pytest.raises(DataError) as caught:
        read_csv(path, {"x": ["a"]}, {"y": ["b"]}, options=ReadOptions(";", ("?",)))
    assert str(caught.value) == f"{path}:3:1: column 'a': expected a number, received '?'"


@pytest.mark.parametrize("stream", [False, True])
def test_streamed_blocks_hold_the_same_numbers(tmp_path, monkeypatch, stream):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i / 7!r},{i}\n" for i in range(200_000)))
    monkeypatch.setattr(readers, "STREAM_BYTES", 0 if stream else 1 << 40)
    monkeypatch.setattr(tables, "BLOCK_BYTES", 1 << 20)
    wanted, blocks, _ = readers.table_blocks(path, {"x": ["a"]}, {"y": ["b"]})
    parts = list(blocks())
    assert (len(parts) > 1) == stream
    joined = readers.joined_blocks(wanted, iter(parts))
    assert joined["x"][:, 0].tolist() == [i / 7 for i in range(200_000)] and joined[readers.Target("y")][-1, 0] == 199_999


# --- the cache -------------------------------------------------------------------------------------
@pytest.fixture
def small_cache(monkeypatch):
    monkeypatch.setattr(cache, "MIN_BYTES", 0)


def _entries(folder):
    return [p for p in folder.iterdir() if p.is_dir()]


def _write(path, rows, scale=1.0):
    path.write_text("a,b,y\n" + "".join(f"{i * scale!r},{-i},{i % 2}\n" for i in range(rows)))


def _load(path, folder, **kw):
    return load_dataset(path, {"x": ["a", "b"]}, {"y": ["y"]}, {"x": (2,)}, dtype="float64", cache_folder=folder, **kw)


def _parses(monkeypatch):
    """A counter of how often the CSV is parsed."""
    count = []
    real = readers.arrow_number_blocks
    monkeypatch.setattr(readers, "arrow_number_blocks", lambda *a, **k: (count.append(1), real(*a, **k))[1])
    return count


def test_a_second_read_comes_from_the_cache_without_parsing(tmp_path, monkeypatch, small_cache):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _write(path, 1000)
    parses = _parses(monkeypatch)
    first = _load(path, folder)
    entries = _entries(folder)
    second = _load(path, folder)
    assert len(parses) == 1 and len(entries) == 1 and (entries[0] / "manifest.json").exists()
    assert list(json.loads((folder / "hashes.json").read_text()).values())[0]["sha256"] == json.loads(
        (entries[0] / "manifest.json").read_text())["identity"]["file"]["sha256"]
    assert second.inputs["x"].tobytes() == first.inputs["x"].tobytes() and second.targets["y"].tobytes() == first.targets["y"].tobytes()
    assert first.notes == second.notes == []
    assert _load(path, None).inputs["x"].tobytes() == first.inputs["x"].tobytes() and len(parses) == 2


def test_a_parquet_file_is_cached_from_its_pieces_and_read_from_the_cache(tmp_path, monkeypatch, small_cache):
    csv, path, folder = tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "cache"
    _write(csv, 1000)
    path.write_bytes(table_bytes(pyarrow.csv.read_csv(csv), "parquet", 128))
    monkeypatch.setattr(tables, "BLOCK_BYTES", 1 << 10)
    reads = []
    real = readers.arrow_file_batches
    monkeypatch.setattr(readers, "arrow_file_batches", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    first = _load(path, folder)
    second = _load(path, folder)
    assert len(reads) == 1 and len(_entries(folder)) == 1 and first.notes == second.notes == []
    assert second.inputs["x"][999].tolist() == [999.0, -999.0] and second.targets["y"][:3, 0].tolist() == [0.0, 1.0, 0.0]
    from_csv = _load(csv, None)
    for data in (first, second):
        assert data.inputs["x"].tobytes() == from_csv.inputs["x"].tobytes() and data.targets["y"].tobytes() == from_csv.targets["y"].tobytes()


@pytest.mark.parametrize("change", ["content", "config", "columns"])
def test_a_changed_file_or_config_is_read_again(tmp_path, monkeypatch, small_cache, change):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _write(path, 100)
    parses = _parses(monkeypatch)
    _load(path, folder)
    if change == "content":
        stat = os.stat(path)
        _write(path, 100, scale=2.0)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the hash still tells
        data = _load(path, folder)
        assert data.inputs["x"][3].tolist() == [6.0, -3.0]
    elif change == "config":
        data = _load(path, folder, read=ReadOptions(",", ("", "?")))
    else:
        data = load_dataset(path, {"x": ["b", "a"]}, {"y": ["y"]}, {"x": (2,)}, dtype="float64", cache_folder=folder)
        assert data.inputs["x"][3].tolist() == [-3.0, 3.0]
    assert len(parses) == 2 and len(_entries(folder)) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "header", "missing array"])
def test_a_damaged_cache_is_rebuilt_with_a_note(tmp_path, monkeypatch, small_cache, damage):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _write(path, 100)
    good = _load(path, folder)
    (entry,) = _entries(folder)
    array = entry / "0.npy"
    if damage == "truncate":
        array.write_bytes(array.read_bytes()[:-8])
    elif damage == "flip":
        data = bytearray(array.read_bytes())
        data[-5] ^= 0xFF
        array.write_bytes(bytes(data))
    elif damage == "manifest":
        (entry / "manifest.json").write_text("{not json")
    elif damage == "header":
        array.write_bytes(b"garbage" + array.read_bytes()[7:])
    else:
        array.unlink()
    parses = _parses(monkeypatch)
    data = _load(path, folder)
    assert len(parses) == 1 and data.inputs["x"].tobytes() == good.inputs["x"].tobytes()
    assert len(data.notes) == 1 and data.notes[0].startswith(f"{entry}: the cached data of {path} is damaged (")
    again = _load(path, folder)
    assert again.notes == [] and len(parses) == 1


def test_an_unwritable_cache_folder_is_a_note_not_a_failure(tmp_path, small_cache):
    path = tmp_path / "d.csv"
    _write(path, 10)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    data = _load(path, blocker / "cache")
    assert data.inputs["x"][9].tolist() == [9.0, -9.0] and len(data.notes) == 1
    assert data.notes[0].startswith("the data cache cannot be written (") and data.notes[0].endswith(f"data read from {path} without it")


def test_small_files_and_a_cache_turned_off_leave_no_cache(tmp_path):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _write(path, 10)
    _load(path, folder)
    assert os.path.getsize(path) < cache.MIN_BYTES and not folder.exists()


def test_large_cached_inputs_stay_on_disk(tmp_path, monkeypatch, small_cache):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _write(path, 1000)
    monkeypatch.setattr(cache, "LOAD_WHOLE_BYTES", 1000)
    data = _load(path, folder)  # built, then read back as the next run would
    assert isinstance(data.inputs["x"], RowFile) and not isinstance(data.targets["y"], RowFile)
    assert data.inputs["x"].take([0, 999]).tolist() == [[0.0, 0.0], [999.0, -999.0]]


def test_the_cache_holds_its_identity(tmp_path, small_cache):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _write(path, 10)
    _load(path, folder)
    (entry,) = _entries(folder)
    manifest = json.loads((entry / "manifest.json").read_text())
    identity = manifest["identity"]
    assert identity["file"]["size"] == os.path.getsize(path) and len(identity["file"]["sha256"]) == 64
    assert identity["config"] == {"delimiter": ",", "missing_values": ["", "NA", "NaN", "null", "None"], "dtype": "float64"}
    assert identity["columns"] == [["x", [0, 1]], [{"targets": "y"}, [2]]]  # header positions: the hash fixes the header and [a["rows"] for a in manifest["arrays"]] == [10, 10]
    assert numpy.load(entry / "0.npy").tolist() == [[float(i), -float(i)] for i in range(10)]


def test_cached_inputs_are_the_uncached_ones_in_the_model_dtype(tmp_path, small_cache):
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    path.write_text("a,b,y\n" + "".join(f"{i / 3!r},{i * 1e30!r},{i / 7!r}\n" for i in range(50)))
    load = lambda cache_folder: load_dataset(path, {"x": ["a", "b"]}, {"y": ["y"]}, {"x": (2,)}, dtype="float32", cache_folder=cache_folder)
    plain, built, read = load(None), load(folder), load(folder)
    assert plain.inputs["x"].dtype == built.inputs["x"].dtype == read.inputs["x"].dtype == numpy.float32
    assert plain.inputs["x"].tobytes() == built.inputs["x"].tobytes() == read.inputs["x"].tobytes()
    assert read.targets["y"].dtype == plain.targets["y"].dtype and read.targets["y"].tobytes() == plain.targets["y"].tobytes()


def test_a_stream_that_must_start_over_caches_only_the_second_reading(tmp_path, monkeypatch, small_cache):
    """A blank row far into a streamed file: pyarrow's blocks so far are dropped, CsvTable's kept."""
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    path.write_text("a,b,y\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(100_000)) + ",,\n" + "7,8,1\n")
    monkeypatch.setattr(readers, "STREAM_BYTES", 0)
    monkeypatch.setattr(tables, "BLOCK_BYTES", 1 << 16)
    data = _load(path, folder)
    assert len(data) == 100_001 and data.inputs["x"][-1].tolist() == [7.0, 8.0] and data.targets["y"][-1, 0] == 1.0
    assert _load(path, folder).inputs["x"].tobytes() == data.inputs["x"].tobytes()


@pytest.mark.parametrize("text, found", [
    (b"a\n1\n", {"quotes": False, "hexadecimal": False}), (b'a\n"1"\n', {"quotes": True, "hexadecimal": False}),
    (b"a\n" + b"1" * 30 + b"0x1\n", {"quotes": False, "hexadecimal": True}),  # "0" ends a chunk, "x" starts the next
    (b"a\n" + b"1" * 30 + b"0X1\n", {"quotes": False, "hexadecimal": True}), (b"max\nx0\n", {"quotes": False, "hexadecimal": False}),
    # Quoted names alone (as R and pyarrow write headers) leave the values unquoted ...
    (b'"a","b"\n1,2\n', {"quotes": False, "hexadecimal": False}), (b'"a"\r1\r', {"quotes": False, "hexadecimal": False}),
    (b'"' + b"a" * 40 + b'"\n1\n', {"quotes": False, "hexadecimal": False}),  # a header longer than a chunk
    # ... unless a quoted name spans a line break, or a value is quoted too.
    (b'"a\nb",c\n1,2\n', {"quotes": True, "hexadecimal": False}), (b'"' + b"a" * 40 + b'\nb"\n1\n', {"quotes": True, "hexadecimal": False}),
    (b'"a"\r"1"\r', {"quotes": True, "hexadecimal": False}),
])
def test_a_scan_finds_quoted_values_and_hexadecimal_across_chunks(tmp_path, monkeypatch, text, found):
    monkeypatch.setattr(tables, "_SCAN_BYTES", 33)
    path = tmp_path / "t.csv"
    path.write_bytes(text)
    assert tables.scan(path) == found


@pytest.mark.parametrize("suffix", [".parquet", ".feather"])
def test_train_reads_parquet_and_feather_as_it_reads_the_csv(tmp_path, suffix):
    import pyarrow.csv

    from tests.helpers import run, write_project

    spec = write_project(tmp_path)
    WRITERS[suffix](pyarrow.csv.read_csv(tmp_path / "data.csv"), str(tmp_path / f"data{suffix}"))
    from_csv = run("train", spec, "--out", tmp_path / "csv/w.npz", cwd=tmp_path)
    spec.write_text(spec.read_text().replace("path: data.csv", f"path: data{suffix}"))
    from_table = run("train", spec, "--out", tmp_path / "table/w.npz", cwd=tmp_path)
    assert from_csv.exit_code == from_table.exit_code == 0, from_table.output
    with numpy.load(tmp_path / "csv/w.npz") as a, numpy.load(tmp_path / "table/w.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(a[k].tobytes() == b[k].tobytes() for k in a.files)

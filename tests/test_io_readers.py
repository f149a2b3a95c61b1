"""nnctl.io's readers on their own: what a number is, which line a row is on, which paths are
readable, and how much an .npz or a CSV costs to read. The CLI's view of the same files is in
test_errors.py's tables."""
from __future__ import annotations

import math
import os
import re
import tracemalloc
import zipfile

import numpy
import pytest

from nnctl.data.readers import RowFile, read_csv, read_npy, read_npz
from nnctl.errors import DataError, UsageError, WeightsError
from nnctl.io.arrays import Archive, NpyFile
from nnctl.io.paths import check_suffix, open_regular
from nnctl.io.tables import CsvTable, NotNumbers, number, numbers
from nnctl.io.weights import load_weights, read_arrays
from tests import hostile
from tests.helpers import run, run_json


# --- numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, value", [
    ("1.5", 1.5), ("-2", -2.0), (" 3 ", 3.0), ("1e3", 1000.0), ("+.5", 0.5), ("1E-2", 0.01), ("inf", math.inf),
    ("1_0", None), ("\u0661", None), ("\uff11", None), ("1\u00a0", None), ("", None), ("0x10", None), ("one", None),
])
def test_number_is_a_plain_ascii_decimal(cell, value):
    if value is None:
        with pytest.raises(ValueError):
            number(cell)
    else:
        assert number(cell) == value


@pytest.mark.parametrize("cells, first_bad", [
    (["1", "2.5", "-3e2"], None), (["1", "2_0", "x"], 1), (["x", "1"], 0), (["1", "2", "\u0663"], 2), ([], None),
])
def test_numbers_converts_a_column_or_names_its_first_bad_cell(cells, first_bad):
    if first_bad is None:
        assert numbers(cells).tolist() == [float(c) for c in cells]
    else:
        with pytest.raises(NotNumbers) as caught:
            numbers(cells)
        assert caught.value.index == first_bad


# --- CSV tables ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, header, header_line, rows", [
    ("a,b\n1,2\n3,4\n", ["a", "b"], 1, [(2, ["1", "2"]), (3, ["3", "4"])]),
    ("\ufeffa, b \r\n1,2\r\n", ["a", "b"], 1, [(2, ["1", "2"])]),  # BOM and padding are not part of a name
    ("\n\na,b\n\n1,2\n,\n3,4\n", ["a", "b"], 3, [(5, ["1", "2"]), (7, ["3", "4"])]),  # blank rows skipped, still counted
    ('a,b\n"x\n\ny",2\n3,4\n', ["a", "b"], 1, [(2, ["x\n\ny", "2"]), (5, ["3", "4"])]),
    ('a,b\n"x\r\ny",2\r\n3,4\r\n', ["a", "b"], 1, [(2, ["x\r\ny", "2"]), (4, ["3", "4"])]),
    ("", None, None, []),
])
def test_rows_carry_the_physical_line_they_start_on(tmp_path, text, header, header_line, rows):
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode("utf-8"))
    with CsvTable(path, DataError, "a table") as table:
        assert (table.header, table.header_line) == (header, header_line)
        assert (list(table.rows()) if header else []) == rows


def test_a_cell_line_counts_the_breaks_in_the_cells_before_it():
    cells = ["a\nb", "c", "d\r\ne\rf", "g"]
    assert [CsvTable.cell_line(10, cells, i) for i in range(4)] == [10, 11, 11, 13]


def test_a_ragged_row_is_reported_at_its_first_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n"1\n",2\n3\n')
    with CsvTable(path, DataError, "a table") as table, pytest.raises(DataError) as caught:
        list(table.rows())
    assert str(caught.value) == f"{path}:4: expected 2 fields like the header, received 1"


# --- paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, suffixes, flag, message", [
    ("out.npy", (".csv", ".npy"), "--output", None),
    ("OUT.CSV", (".csv", ".npy"), "--output", None),
    ("out.txt", (".csv", ".npy"), "--output", "--output: expected a .csv or .npy file, received 'out.txt'"),
    ("g", (".dot", ".gv", ".svg"), "--graph", "--graph: expected a .dot, .gv, .svg file, received 'g'"),
])
def test_check_suffix(tmp_path, name, suffixes, flag, message):
    if message is None:
        check_suffix(tmp_path / name, suffixes, flag)
        return
    with pytest.raises(UsageError) as caught:
        check_suffix(tmp_path / name, suffixes, flag)
    assert str(caught.value) == f"{tmp_path / name}: {message}"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"data"), None),
    (lambda p: None, "expected a thing, received a path that does not exist"),
    (lambda p: p.mkdir(), "expected a thing, received a directory"),
    (hostile.fifo, "expected a regular file, received a FIFO"),
    (lambda p: hostile.link(p, os.devnull), "expected a regular file, received a character device"),
])
def test_open_regular_refuses_all_but_regular_files(tmp_path, make, message):
    path = tmp_path / "f"
    make(path)
    if message is None:
        with open_regular(path, DataError, "a thing") as handle:
            assert handle.read() == b"data"
        return
    with pytest.raises(DataError) as caught:
        open_regular(path, DataError, "a thing")
    assert str(caught.value) == f"{path}: {message}"


def test_predict_output_and_picture_suffixes_share_the_helper(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n1,0.5\n")
    result = run("plot", history, "--out", tmp_path / "c.bmp")
    assert result.exit_code == 2 and "--out: expected a .png, .svg, .pdf file, received 'c.bmp'" in result.stderr
    assert not (tmp_path / "c.bmp").exists()


# --- .npz and .npy ---------------------------------------------------------------------------------
X = numpy.arange(12, dtype=numpy.float64).reshape(6, 2)


def _write(path, data):
    path.write_bytes(data)
    return path


def test_an_unexpected_member_is_never_opened(tmp_path):
    """Garbage deflate data under an unexpected name, claiming 2 GB: reading it would fail loudly."""
    bomb = bytearray(hostile.forged_zip({"kernel.npy": hostile.npy_bytes(X.astype(numpy.float32)),
                                         "bomb.npy": hostile.npy_header((1 << 28,)) + bytes(4096)},
                                        {"bomb.npy": 128 + (8 << 28)}, deflate=("bomb.npy",)))
    start = bomb.index(b"bomb.npy") + len("bomb.npy")
    bomb[start + 10:start + 60] = b"\xff" * 50  # the compressed stream itself: undecodable
    path = _write(tmp_path / "w.npz", bytes(bomb))
    with pytest.raises(WeightsError) as caught:
        load_weights(path, {"kernel": (6, 2)})
    assert [p.message for p in caught.value.problems] == ["expected only the model's weights (kernel), received unexpected array 'bomb'"]
    with Archive(path, WeightsError) as archive:
        assert archive.names == ["kernel", "bomb"] and archive.read("kernel").tolist() == X.tolist()


@pytest.mark.parametrize("method, message", [
    (zipfile.ZIP_BZIP2, "expected a stored or deflated member (as numpy.savez and savez_compressed write), received compression method 12"),
    (zipfile.ZIP_LZMA, "received compression method 14"),
])
def test_only_the_compressions_numpy_writes_are_read(tmp_path, method, message):
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("X.npy", hostile.npy_bytes(X))
    with Archive(path, DataError) as archive, pytest.raises(DataError) as caught:
        archive.read("X")
    assert message in str(caught.value)


class _Unseekable:
    """A write-only stream: zipfile then writes each member's sizes in a data descriptor after it."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()


def _archives(tmp_path):
    """The same arrays as numpy.savez and savez_compressed write them, and as a streamed zip."""
    arrays = {"a": numpy.arange(7, dtype=numpy.int16), "x": numpy.asarray(X, order="F"), "y": X.astype(numpy.float32)[:, 1].copy()}
    numpy.savez(tmp_path / "stored.npz", **arrays)
    numpy.savez_compressed(tmp_path / "deflated.npz", **arrays)
    with open(tmp_path / "streamed.npz", "wb") as handle, zipfile.ZipFile(_Unseekable(handle), "w") as archive:
        for name, array in arrays.items():
            archive.writestr(f"{name}.npy", hostile.npy_bytes(array))
    return arrays, ["stored.npz", "deflated.npz", "streamed.npz"]


def test_archive_members_read_as_numpy_reads_them(tmp_path):
    """A stored member is read straight from the file (past its local header's name and extra
    field, zip64 included), a deflated one through zipfile: the same arrays, dtype and order."""
    arrays, files = _archives(tmp_path)
    with zipfile.ZipFile(tmp_path / "streamed.npz") as archive:
        assert all(info.flag_bits & 0x8 for info in archive.infolist())  # sizes after the data
    for file in files:
        with Archive(tmp_path / file, DataError) as archive:
            for name, array in arrays.items():
                read = archive.read(name)
                assert read.dtype == array.dtype and read.tolist() == array.tolist() and numpy.isfortran(read) == numpy.isfortran(array)


@pytest.mark.parametrize("where", ["data", "header"])
def test_a_flipped_byte_in_a_stored_member_fails_its_crc(tmp_path, where):
    """(A member larger than zipfile's first read: a smaller one fails its CRC-32 as it is opened.)"""
    big = numpy.arange(4000.0).reshape(1000, 4)
    numpy.savez(tmp_path / "a.npz", x=big)
    data = bytearray((tmp_path / "a.npz").read_bytes())
    start = data.index(b"\x93NUMPY")
    if where == "data":
        data[start + len(hostile.npy_bytes(big)) - 3] ^= 0x01
    else:  # a space of the header's padding made a tab: still a valid header
        assert data[start + 100] == ord(" ")
        data[start + 100] = ord("\t")
    path = _write(tmp_path / "a.npz", bytes(data))
    with Archive(path, DataError) as archive, pytest.raises(DataError) as caught:
        archive.read("x")
    assert str(caught.value).endswith("array 'x': expected a valid array, received a truncated or corrupt file (Bad CRC-32 for file 'x.npy')")


def test_read_arrays_reads_every_member_of_a_checkpoint_like_file(tmp_path):
    numpy.savez_compressed(tmp_path / "c.npz", **{"weights/k": X, "meta": numpy.array('{"format": 3}')})
    arrays = read_arrays(tmp_path / "c.npz", what="checkpoint")
    assert arrays["weights/k"].tolist() == X.tolist() and str(arrays["meta"]) == '{"format": 3}'


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_files_of_either_order_load_as_numpy_does(tmp_path, order):
    array = numpy.asarray(numpy.arange(35.0).reshape(5, 7), order=order)
    numpy.save(tmp_path / "a.npy", array)
    with NpyFile(tmp_path / "a.npy", DataError) as npy:
        assert npy.header.fortran_order is (order == "F") and npy.header.shape == (5, 7)
        assert npy.load().tolist() == array.tolist()
    inputs, targets = read_npy(tmp_path / "a.npy", {"x": "0:6"}, {"y": "6"})
    assert inputs["x"].tolist() == array[:, :6].tolist() and targets["y"].tolist() == array[:, 6:].tolist()


def test_a_large_c_order_npy_stays_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr("nnctl.data.readers.LOAD_WHOLE_BYTES", 1 << 20)
    rows = (1 << 20) // 24 + 1  # three float64 columns, just over the limit
    hostile.sparse_npy(tmp_path / "big.npy", (rows, 3))
    inputs, targets = read_npy(tmp_path / "big.npy", {"x": "0:2"}, {"y": "2"})
    assert isinstance(inputs["x"], RowFile) and inputs["x"].shape == (rows, 2) and targets["y"].shape == (rows, 1)


# --- values that overflow the model's dtype, and CSV memory ----------------------------------------
@pytest.mark.parametrize("cell, dtype, message", [
    ("1e38", "float32", None),
    ("1e39", "float32", ":3:2: column 'b': expected a number that is finite in float32 (|x| <= 3.4e+38), received '1e39'"),
    ("1e39", "float64", None),
    ("1e309", "float64", ":3:2: column 'b': expected a finite number, received '1e309'"),
])
def test_csv_values_must_fit_the_models_dtype(tmp_path, cell, dtype, message):
    path = tmp_path / "d.csv"
    path.write_text(f"a,b\n1,2\n3,{cell}\n")
    if message is None:
        inputs, _, _ = read_csv(path, {"x": ["a", "b"]}, None, dtype)
        assert inputs["x"][1, 1] == float(cell)
        return
    with pytest.raises(DataError) as caught:
        read_csv(path, {"x": ["a", "b"]}, None, dtype)
    assert str(caught.value) == f"{path}{message}"


def _first_bad(array, dtype):
    """The exact search that _check_values ran on every array before its fast pass: the first element
    by index that is NaN, infinite or beyond `dtype`'s range, or None (in float64: a Python float's
    limit would be cast to float16's inf for a float16 array)."""
    bad = numpy.argwhere(~(numpy.abs(array.astype(numpy.float64)) <= float(numpy.finfo(dtype).max)))
    return tuple(int(i) for i in bad[0]) if bad.size else None


@pytest.mark.parametrize("stored", ["<f4", ">f4", "<f8", ">f8", "<f2", "F-order <f4", "F-order <f8"])
@pytest.mark.parametrize("model", ["float32", "float64"])
@pytest.mark.parametrize("value", [None, numpy.nan, numpy.inf, -numpy.inf, 1e39, -1e39, 3e38, "max"])
def test_npz_values_are_checked_fast_and_named_exactly(tmp_path, stored, model, value):
    """_check_values' one fast pass (the compiled finite check, or min and max where the stored dtype
    is wider than the model's) lets through exactly what the exact search lets through, and what it
    refuses is named at the first bad element, whatever the array's dtype, byte order or layout."""
    order, dtype = ("F", stored.split()[1]) if stored.startswith("F-order") else ("C", stored)
    array = numpy.random.default_rng(0).standard_normal((37, 5))
    if value is not None:
        array[[3, 20], [4, 1]] = numpy.finfo(dtype).max if value == "max" else value
    with numpy.errstate(over="ignore"):
        array = numpy.asarray(array.astype(dtype), order=order)
    numpy.savez(tmp_path / "d.npz", x=array)
    where = _first_bad(array, model)
    if where is None:
        inputs, _ = read_npz(tmp_path / "d.npz", {"x": "x"}, None, model)
        assert numpy.array_equal(inputs["x"], array) and inputs["x"].dtype == array.dtype
        return
    with pytest.raises(DataError, match=re.escape(f"received {float(array[where])!r} at index {where}")):
        read_npz(tmp_path / "d.npz", {"x": "x"}, None, model)


def test_a_large_npy_is_checked_chunk_by_chunk_and_names_the_row(tmp_path, monkeypatch):
    monkeypatch.setattr("nnctl.data.readers.LOAD_WHOLE_BYTES", 1 << 20)
    rows = (1 << 20) // 24 + 1
    array = numpy.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=numpy.float64, shape=(rows, 3))
    array[rows - 2, 1] = 1e39  # finite in float64, inf in float32: the range check, in the last chunk
    array.flush()
    del array
    monkeypatch.setattr(RowFile, "chunks", lambda self, chunk_bytes=1 << 16: RowFile_chunks(self, chunk_bytes))
    read_npy(tmp_path / "big.npy", {"x": "0:2"}, {"y": "2"}, "float64")
    with pytest.raises(DataError, match=re.escape(f"expected numbers that are finite in float32 (|x| <= 3.4e+38), received 1e+39 at index ({rows - 2}, 1)")):
        read_npy(tmp_path / "big.npy", {"x": "0:2"}, {"y": "2"}, "float32")


RowFile_chunks = RowFile.chunks


def test_csv_reading_holds_arrays_not_rows(tmp_path):
    """Peak traced memory against the arrays returned: 2.4x here; holding every row's cells (the old reader) was 8.6x."""
    rows = 60_000
    path = tmp_path / "d.csv"
    path.write_text("a,b,c\n" + "".join(f"{i * 0.001!r},{-i},{i % 7}\n" for i in range(rows)))
    tracemalloc.start()
    try:
        inputs, targets, locators = read_csv(path, {"x": ["a", "b"]}, {"y": ["c"]})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result = inputs["x"].nbytes + targets["y"].nbytes + rows * 8  # the line numbers kept for messages
    assert inputs["x"][-1].tolist() == [(rows - 1) * 0.001, -(rows - 1)] and locators["y"](rows - 1)[0]["line"] == rows + 1
    assert peak < 3 * result, (peak, result)


def test_a_parquet_file_is_cached_a_block_at_a_time(tmp_path, monkeypatch):
    """Peak traced memory of a first load (the cache built, large inputs left on disk) against the
    file's numbers: 0.32x here; reading the file whole (the old reader) was 1.08x."""
    import pyarrow
    import pyarrow.parquet

    from nnctl.data import cache
    from nnctl.data.dataset import load_dataset
    from nnctl.io import tables

    rows, path = 100_000, tmp_path / "d.parquet"
    pyarrow.parquet.write_table(pyarrow.table({name: numpy.arange(rows) * k for k, name in enumerate("abcdefghi")}), path, row_group_size=10_000)
    monkeypatch.setattr(cache, "MIN_BYTES", 0)
    monkeypatch.setattr(cache, "LOAD_WHOLE_BYTES", 1000)
    monkeypatch.setattr(tables, "BLOCK_BYTES", 1 << 16)
    tracemalloc.start()
    try:
        data = load_dataset(path, {"x": list("abcdefgh")}, {"y": ["i"]}, {"x": (8,)}, dtype="float64", cache_folder=tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(data.inputs["x"], RowFile) and data.inputs["x"].take([rows - 1]).tolist() == [[float(k * (rows - 1)) for k in range(8)]]
    assert data.targets["y"][-1, 0] == 8.0 * (rows - 1)
    assert peak < 0.5 * rows * 9 * 8, (peak, rows * 9 * 8)


# --- plot and init read through the same table -----------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ('epoch,loss\n1,0.5\n"2\n",0.25\n3,1_0\n', ":5:2: column 'loss': expected a number, received '1_0'"),
    ("epoch,loss\n1,\u0661\n", ":2:2: column 'loss': expected a number, received '\u0661'"),
    ("epoch,loss\n1,0.5\n2\n", ":3: expected 2 fields like the header, received 1"),
])
def test_plot_reports_history_cells_at_their_lines(tmp_path, text, message):
    history = tmp_path / "history.csv"
    history.write_text(text)
    result = run("plot", history)
    assert result.exit_code == 2 and f"{history}{message}" in result.stderr, result.output


def test_init_counts_only_plain_numbers_as_numeric(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,b,y\n" + "".join(f"{i},{i}_0,{i % 2}\n" for i in range(10)))
    facts = run_json("init", data, "--target", "y", "--out", tmp_path / "d.yaml")
    assert facts["inputs"] == ["a"] and facts["skipped"] == ["b"]


def test_init_refuses_a_fifo(tmp_path):
    hostile.fifo(tmp_path / "d.csv")
    result = run("init", tmp_path / "d.csv", "--target", "y", "--out", tmp_path / "d.yaml")
    assert result.exit_code == 2 and "expected a regular file, received a FIFO" in result.stderr
    assert not (tmp_path / "d.yaml").exists()


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n" + "9" * 40, ":3: expected lines of at most 32 characters, received a longer one"),
    ("a,b\n" + "1," + "2" * 29 + "\n", None),  # 32 characters with the line break: at the limit
])
def test_a_line_longer_than_the_limit_is_refused_unread(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr("nnctl.io.tables.MAX_LINE_CHARS", 32)
    path = tmp_path / "t.csv"
    path.write_text(text)
    with CsvTable(path, DataError, "a table") as table:
        if message is None:
            assert [cells for _, cells in table.rows()] == [["1", "2" * 29]]
            return
        with pytest.raises(DataError) as caught:
            list(table.rows())
    assert str(caught.value) == f"{path}{message}"

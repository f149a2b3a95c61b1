"""Readers: tables (.csv with a header row, .parquet, .feather, .arrow), .npy (2-D, columns by index)
and .npz (arrays by name) -> host arrays.

Every problem names the file and the place: CSV line and column, array name, and the value.
Large .npy files stay on disk (RowFile) and are read row by row, so a data set is never copied whole.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy

from nnctl.core.finite import CHECKED_DTYPES, all_finite
from nnctl.errors import DataError, Problem, describe, did_you_mean
from nnctl.io.arrays import Archive, NpyFile
from nnctl.io.tables import (MISSING_VALUES, STREAM_BYTES, CsvTable, Fallback, NotNumbers, Table, arrow_file_batches,
                              arrow_file_column, arrow_number_blocks, column_indices, number_values, numbers, scan, table_header)

# Rows converted at a time: the cells of one chunk are all that is held as Python strings.
CHUNK_ROWS = 8192


def _limit(dtype) -> numpy.float64:
    """The largest finite value of `dtype`, as a NumPy float64: compared with a narrower array (float16)
    it widens the comparison, where a Python float would be cast to the array's dtype (inf)."""
    return numpy.float64(numpy.finfo(dtype).max)


def _fits_text(dtype) -> str:
    return f"finite in {numpy.dtype(dtype).name} (|x| <= {_limit(dtype):.3g})"


class Target(NamedTuple):
    """The key of an output's targets among the columns a reader picks (an input's key is its
    name, a string: the two never clash)."""

    output: str


def target_text(target_map: dict, output: str) -> str:
    """How messages name an output's targets: "targets", or with the output when there are several."""
    return "targets" if len(target_map) == 1 else f"targets of output {output!r}"


def _all_fit(array, dtype) -> bool:
    """Whether every value of the float `array` is finite in `dtype` (1e39 is inf in float32): one
    fast pass. A finite value of a dtype no wider than `dtype` fits it, so for those this is the
    compiled finite check; a wider dtype (float64 values for a float32 model) is held to `dtype`'s
    range by its min and max, which carry a NaN through. False only says that there is a bad value:
    the caller's exact search finds the first one and names it."""
    if array.size == 0:
        return True
    if array.dtype in CHECKED_DTYPES and array.dtype.itemsize <= numpy.dtype(dtype).itemsize and array.flags.c_contiguous:
        return bool(all_finite(array))
    limit = _limit(dtype)
    return bool(-limit <= array.min() and array.max() <= limit)


class ReadOptions(NamedTuple):
    """How a table file is read (the spec's data.delimiter and data.missing_values)."""

    delimiter: str = ","
    missing_values: tuple = MISSING_VALUES


# Yielded by a block reader that found, after earlier blocks, that it must start over another way.
RESTART = object()


def table_blocks(file: Path, column_map: dict, target_map: dict | None, dtype="float64", options: ReadOptions = ReadOptions()):
    """(keys, blocks, locators) for the model's columns of a table file: `blocks()` yields, a block
    of rows at a time, {key: float64 array (rows, columns)} with key an input's name or an output's
    Target (or RESTART: drop what came before); `locators[output](i)` names the place of that
    output's target row i. `target_map` is {output: its target columns}, or None."""
    if Path(file).suffix.lower() == ".csv":
        return _csv_blocks(file, column_map, target_map, dtype, options)
    return _arrow_file_blocks(file, column_map, target_map, dtype, options)


def _wanted(column_map, target_map, find):
    wanted = {name: find(cols, f"input {name!r}") for name, cols in column_map.items()}
    for output, cols in (target_map or {}).items():
        wanted[Target(output)] = find(cols, target_text(target_map, output))
    return wanted


def _csv_blocks(file, column_map, target_map, dtype, options):
    with CsvTable(file, DataError, "a data file", options.delimiter) as table:
        header, header_line, raw = table.header, table.header_line, table.raw_header
    if header is None:
        raise DataError(Problem("expected a header row of column names, received an empty file", str(file)))
    wanted = _wanted(column_map, target_map, lambda cols, what: column_indices(header, cols, DataError, file, header_line, what))
    needed = sorted({i for indices in wanted.values() for i in indices})
    located = Table(str(file), header, {}, 0, options.delimiter)

    def locator(indices):
        def locate(i):
            names = ", ".join(repr(header[c]) for c in indices)
            return {"file": str(file), "line": located.line(i), "column": indices[0] + 1}, f"column{'s' if len(indices) > 1 else ''} {names}"
        return locate

    def blocks():
        try:
            found = scan(file)
            stream = os.stat(file).st_size > STREAM_BYTES
            groups = [[raw[i] for i in indices] for indices in wanted.values()]
            for arrays in arrow_number_blocks(file, groups, options.delimiter, options.missing_values, found["quotes"], stream):
                if not all(_all_fit(array, dtype) for array in arrays):
                    raise Fallback("a number out of range")
                yield dict(zip(wanted, arrays))
        except Fallback:
            # CsvTable finds the place of the problem, or reads a file pyarrow could not.
            yield RESTART
            yield from _python_csv_blocks(file, header, wanted, needed, dtype, options)

    return wanted, blocks, {key.output: locator(indices) for key, indices in wanted.items() if isinstance(key, Target)}


def _python_csv_blocks(file, header, wanted, needed, dtype, options):
    """The slow, exact reader: a chunk of rows at a time, every cell through `numbers`."""
    limit = _limit(dtype)
    with CsvTable(file, DataError, "a data file", options.delimiter) as table:
        def convert(chunk):
            column = {}
            for i in needed:
                try:
                    values = numbers([row[i] for _, row in chunk])
                except NotNumbers as bad:
                    line, row = chunk[bad.index]
                    raise DataError(Problem(f"column {header[i]!r}: expected a number, received {row[i]!r}", str(file), table.cell_line(line, row, i), i + 1)) from None
                out_of_range = numpy.flatnonzero(~(numpy.abs(values) <= limit))
                if out_of_range.size:
                    r = int(out_of_range[0])
                    line, row = chunk[r]
                    expected = "a finite number" if not math.isfinite(values[r]) else f"a number that is {_fits_text(dtype)}"
                    raise DataError(Problem(f"column {header[i]!r}: expected {expected}, received {row[i]!r}", str(file), table.cell_line(line, row, i), i + 1))
                column[i] = values
            return {key: numpy.stack([column[i] for i in indices], axis=1) for key, indices in wanted.items()}

        chunk = []
        for row in table.rows():
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                yield convert(chunk)
                chunk = []
        if chunk:
            yield convert(chunk)


def _arrow_file_blocks(file, column_map, target_map, dtype, options):
    """A Parquet or Feather file's columns, a record batch at a time: numbers only, every cell
    present and finite. A problem is the one the whole file shows first (the first column, in the
    order asked for, with a missing cell, else with a cell of text, else with a value out of range,
    at its first such row), so the batches after the first with a problem are read for it too."""
    header = table_header(file, DataError, "a data file")

    def find(cols, what):
        column_indices(header, cols, DataError, file, None, what)
        return [cols] if isinstance(cols, str) else list(cols)

    wanted = _wanted(column_map, target_map, find)
    names = list(dict.fromkeys(c for cols in wanted.values() for c in cols))

    def blocks():
        limit, rows = _limit(dtype), 0
        problems, first_cells = {}, {}  # name -> (rank, row, expected, received); name -> (row, its first present cell)

        def found(name, *problem):
            problems[name] = min(problems.get(name, problem), problem)

        for batch in arrow_file_batches(file, DataError, names):
            values = {}
            for name in names:
                column = arrow_file_column(batch.column(name))
                missing = numpy.asarray(column.is_null())
                if missing.any():
                    found(name, 0, rows + int(numpy.argmax(missing)), "a number", "a missing value")
                if name not in first_cells and not missing.all():
                    first = int(numpy.argmin(missing))
                    first_cells[name] = rows + first, column[first].as_py()
                try:
                    values[name] = number_values(column)
                except NotNumbers:
                    row, cell = first_cells[name]
                    found(name, 1, row, "a number", f"text {cell!r}")
                    continue
                if not _all_fit(values[name], dtype):  # then the first bad value, exactly
                    out = int(numpy.flatnonzero(~(numpy.abs(values[name]) <= limit))[0])
                    value = float(values[name][out])
                    found(name, 2, rows + out, "a finite number" if not math.isfinite(value) else f"a number that is {_fits_text(dtype)}", repr(value))
            rows += batch.num_rows
            if not problems:
                yield {key: numpy.stack([values[c] for c in cols], axis=1) for key, cols in wanted.items()}
        for name in names:
            if name in problems:
                _, row, expected, received = problems[name]
                raise DataError(Problem(f"column {name!r}: expected {expected} at row {row + 1}, received {received}", str(file)))

    def locator(cols):
        def locate(i):
            return {"file": str(file)}, f"row {i + 1}, column{'s' if len(cols) > 1 else ''} {', '.join(map(repr, cols))}"
        return locate

    return wanted, blocks, {key.output: locator(cols) for key, cols in wanted.items() if isinstance(key, Target)}


def joined_blocks(wanted, blocks) -> dict:
    """The blocks of `table_blocks` joined in memory: {key: array}."""
    parts = {key: [] for key in wanted}
    for block in blocks:
        if block is RESTART:
            parts = {key: [] for key in wanted}
            continue
        for key, array in block.items():
            parts[key].append(array)
    # One block (a file read whole) is its own array: joining it would copy it.
    return {key: (p[0] if len(p) == 1 else numpy.concatenate(p)) if p else numpy.empty((0, len(wanted[key])))
            for key, p in parts.items()}


def split_keys(arrays: dict, column_map: dict, target_map: dict | None) -> tuple[dict, dict | None]:
    """({input: array}, {output: targets} or None) from arrays keyed as `table_blocks` keys them."""
    targets = {output: arrays[Target(output)] for output in target_map} if target_map is not None else None
    return {name: arrays[name] for name in column_map}, targets


def read_csv(file: Path, column_map: dict, target_map: dict | None, dtype="float64", options: ReadOptions = ReadOptions()):
    """(inputs, targets, locators) as float64 arrays: pyarrow's reader, or CsvTable's where pyarrow cannot tell."""
    wanted, blocks, locators = table_blocks(file, column_map, target_map, dtype, options)
    return (*split_keys(joined_blocks(wanted, blocks()), column_map, target_map), locators)


# --- NumPy files ----------------------------------------------------------------------------------
class RowFile:
    """Columns [start, stop) of a 2-D .npy file too large to load, read from disk by row.

    Not a memory map: the kernel maps whole large folios around every row a map touches, so
    shuffled batches from a 2 GB map end with 2 GB resident. `os.pread` leaves the pages in the
    page cache, outside the process, and a batch costs one small read per row.
    """

    def __init__(self, path: Path, offset: int, rows: int, width: int, dtype, start: int = 0, stop: int | None = None):
        self.path, self.offset, self.rows, self.width, self.dtype = path, offset, rows, width, numpy.dtype(dtype)
        self.start, self.stop = start, width if stop is None else stop
        self.shape = (rows, self.stop - self.start)
        self.ndim = 2
        self._fd = None

    def __len__(self) -> int:
        return self.rows

    def columns(self, start: int, stop: int) -> "RowFile":
        return RowFile(self.path, self.offset, self.rows, self.width, self.dtype, self.start + start, self.start + stop)

    def _read(self, offset: int, size: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise DataError(Problem(f"expected {self.rows} rows of {self.width} values, received a file cut short at byte {offset + len(data)}", str(self.path)))
        return data

    def chunks(self, chunk_bytes: int = 64 << 20):
        """(first row, rows as an array) in order, a chunk at a time."""
        row_bytes = self.width * self.dtype.itemsize
        step = max(1, chunk_bytes // row_bytes)
        for first in range(0, self.rows, step):
            count = min(step, self.rows - first)
            block = numpy.frombuffer(self._read(self.offset + first * row_bytes, count * row_bytes), dtype=self.dtype)
            yield first, block.reshape(count, self.width)[:, self.start:self.stop]

    def take(self, rows):
        itemsize, row_bytes = self.dtype.itemsize, self.width * self.dtype.itemsize
        size, skip = (self.stop - self.start) * itemsize, self.offset + self.start * itemsize
        data = b"".join(self._read(skip + int(r) * row_bytes, size) for r in rows)
        return numpy.frombuffer(data, dtype=self.dtype).reshape(len(rows), self.stop - self.start)

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)


def _check_values(file, name, array, dtype):
    """Numbers only, finite in the model's dtype (1e39 is inf in float32), the first bad one by index."""
    if array.dtype.kind == "f":
        limit = _limit(dtype)
        chunks = array.chunks() if isinstance(array, RowFile) else [(0, array)]
        for start, chunk in chunks:
            if _all_fit(chunk, dtype):  # the usual case, in one fast pass
                continue
            bad = numpy.argwhere(~(numpy.abs(chunk) <= limit))  # the first bad value, exactly
            if bad.size:
                where = tuple(int(i) for i in bad[0])
                expected = "finite numbers" if not numpy.isfinite(chunk[where]) else f"numbers that are {_fits_text(dtype)}"
                # repr, not number_text: 1e39 is "1e+39", not its forty integer digits
                raise DataError(Problem(f"array {name!r}: expected {expected}, received {float(chunk[where])!r} at index {(where[0] + start,) + where[1:]}", str(file)))
    elif array.dtype.kind not in "iub":
        raise DataError(Problem(f"array {name!r}: expected a numeric array, received dtype {array.dtype}", str(file)))


def read_npz(file: Path, column_map: dict, target_map: dict | None, dtype="float64"):
    """The named arrays, read whole; the archive's other members are never read."""
    with Archive(file, DataError, "a data file") as archive:
        def array(name, what):
            if not isinstance(name, str):
                raise DataError(Problem(f"{what}: expected one array name for an .npz file, received {describe(name)}", str(file)))
            if name not in archive.names:
                raise DataError(Problem(f"{what}: expected array {name!r}{did_you_mean(name, archive.names)}; the archive has {', '.join(archive.names) or 'no arrays'}", str(file)))
            value = archive.read(name)
            if value.ndim == 0:
                raise DataError(Problem(f"array {name!r}: expected samples along axis 0, received a scalar", str(file)))
            _check_values(file, name, value, dtype)
            return value

        inputs = {name: array(arr, f"input {name!r}") for name, arr in column_map.items()}
        targets = None
        if target_map is not None:
            targets = {output: array(name, target_text(target_map, output)) for output, name in target_map.items()}
    return inputs, targets


def _column_slice(spec, width, file, what):
    """'3' -> [3], '0:784' -> 0..783, a list of such -> their union; for 2-D .npy files."""
    parts = [spec] if isinstance(spec, str) else spec
    picked = []
    for part in parts:
        try:
            if ":" in part:
                start, stop = (int(p) if p.strip() else None for p in part.split(":", 1))
                picked.extend(range(width)[slice(start, stop)])
            else:
                i = int(part)
                range(width)[i]
                picked.append(i % width)
        except (ValueError, IndexError):
            raise DataError(Problem(f"{what}: expected a column index or range like '0:784' within {width} columns, received {part!r}", str(file))) from None
    if not picked:
        raise DataError(Problem(f"{what}: expected at least one column, received the empty range {spec!r}", str(file)))
    return picked


# .npy files up to this size are loaded whole; larger ones are read by row (RowFile).
LOAD_WHOLE_BYTES = 256 << 20


def _open_npy(file: Path):
    """An in-memory array, or a RowFile for a large 2-D C-ordered file; the header is checked first."""
    with NpyFile(file, DataError, "a data file") as npy:
        header = npy.header
        if len(header.shape) != 2:
            raise DataError(Problem(f"expected a 2-D array (samples, columns), received shape {list(header.shape)}", str(file)))
        if header.nbytes <= LOAD_WHOLE_BYTES:
            return npy.load()
    if header.fortran_order:
        # A row of a Fortran-order array is strided over the whole file: one read per value, not
        # per row, and a batch of rows touches every page. Loading it instead would break the
        # promise that a large .npy stays on disk, so the fix is asked of the file, once.
        raise DataError(Problem(
            f"expected a C-order (row-major) .npy file for one this large ({header.nbytes >> 20} MB; nnctl reads files over "
            f"{LOAD_WHOLE_BYTES >> 20} MB row by row from disk), received a Fortran-order one; rewrite it in C order, e.g. "
            "numpy.save('c_order.npy', numpy.ascontiguousarray(numpy.load(path, mmap_mode='r')))", str(file)))
    return RowFile(file, header.offset, header.shape[0], header.shape[1], header.dtype)


def read_npy(file: Path, column_map: dict, target_map: dict | None, dtype="float64"):
    array = _open_npy(file)
    _check_values(file, file.name, array, dtype)
    width = array.shape[1]

    def pick(spec, what, copy=False):
        cols = _column_slice(spec, width, file, what)
        contiguous = cols == list(range(cols[0], cols[-1] + 1))
        if isinstance(array, RowFile):
            if contiguous and not copy:
                return array.columns(cols[0], cols[-1] + 1)
            return numpy.concatenate([chunk[:, cols] for _, chunk in array.chunks()])
        return numpy.ascontiguousarray(array[:, cols])

    inputs = {name: pick(cols, f"input {name!r}") for name, cols in column_map.items()}
    targets = None
    if target_map is not None:
        targets = {output: pick(cols, target_text(target_map, output), copy=True) for output, cols in target_map.items()}
    return inputs, targets

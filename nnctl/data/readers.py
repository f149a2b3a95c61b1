"""Readers: CSV (header row), .npy (2-D, columns by index) and .npz (arrays by name) -> host arrays.

Every problem names the file and the place: CSV line and column, array name, and the value.
Large .npy files stay on disk (RowFile) and are read row by row, so a data set is never copied whole.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy

from nnctl.errors import DataError, Problem, describe, did_you_mean
from nnctl.io.arrays import Archive, NpyFile
from nnctl.io.tables import CsvTable, NotNumbers, numbers

CSV_SUFFIXES = (".csv",)


# Rows converted at a time: the cells of one chunk are all that is held as Python strings.
CHUNK_ROWS = 8192


def _limit(dtype) -> float:
    return float(numpy.finfo(dtype).max)


def _fits_text(dtype) -> str:
    return f"finite in {numpy.dtype(dtype).name} (|x| <= {_limit(dtype):.3g})"


def read_csv(file: Path, column_map: dict, target_columns, dtype="float64"):
    """Inputs and targets as float64 arrays, converted a chunk of rows at a time while streaming."""
    limit = _limit(dtype)
    with CsvTable(file, DataError, "a data file") as table:
        header = table.header
        if header is None:
            raise DataError(Problem("expected a header row of column names, received an empty file", str(file)))
        index = {name: i for i, name in enumerate(header)}

        def columns_of(columns, what):
            names = [columns] if isinstance(columns, str) else columns
            missing = [c for c in names if c not in index]
            if missing:
                raise DataError(Problem(
                    f"{what}: expected column {missing[0]!r}{did_you_mean(missing[0], header)}; the header has {', '.join(map(repr, header))}",
                    str(file), table.header_line,
                ))
            for name in names:
                places = [i + 1 for i, h in enumerate(header) if h == name]
                if len(places) > 1:
                    raise DataError(Problem(
                        f"{what}: expected column {name!r} once in the header, received it in columns {', '.join(map(str, places))}",
                        str(file), table.header_line, places[1],
                    ))
            return [index[c] for c in names]

        wanted = {name: columns_of(cols, f"input {name!r}") for name, cols in column_map.items()}
        if target_columns is not None:
            wanted[None] = columns_of(target_columns, "targets")  # None: no input can be named so
        needed = sorted({i for indices in wanted.values() for i in indices})
        blocks = {key: [] for key in wanted}
        line_blocks = []

        def convert(chunk):
            lines = [line for line, _ in chunk]
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
            for key, indices in wanted.items():
                blocks[key].append(numpy.stack([column[i] for i in indices], axis=1))
            line_blocks.append(numpy.array(lines, dtype=numpy.int64))

        chunk = []
        for row in table.rows():
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                convert(chunk)
                chunk = []
        if chunk:
            convert(chunk)

    def joined(key):
        parts = blocks.pop(key)
        return numpy.concatenate(parts) if parts else numpy.empty((0, len(wanted[key])))

    line_numbers = numpy.concatenate(line_blocks) if line_blocks else numpy.empty(0, dtype=numpy.int64)
    targets = joined(None) if target_columns is not None else None
    inputs = {name: joined(name) for name in column_map}

    def locate(i):
        first = wanted[None][0]
        names = ", ".join(repr(header[c]) for c in wanted[None])
        return {"file": str(file), "line": int(line_numbers[i]), "column": first + 1}, f"column{'s' if len(wanted[None]) > 1 else ''} {names}"

    return inputs, targets, locate


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
            bad = numpy.argwhere(~(numpy.abs(chunk) <= limit))
            if bad.size:
                where = tuple(int(i) for i in bad[0])
                expected = "finite numbers" if not numpy.isfinite(chunk[where]) else f"numbers that are {_fits_text(dtype)}"
                # repr, not number_text: 1e39 is "1e+39", not its forty integer digits
                raise DataError(Problem(f"array {name!r}: expected {expected}, received {float(chunk[where])!r} at index {(where[0] + start,) + where[1:]}", str(file)))
    elif array.dtype.kind not in "iub":
        raise DataError(Problem(f"array {name!r}: expected a numeric array, received dtype {array.dtype}", str(file)))


def read_npz(file: Path, column_map: dict, target_columns, dtype="float64"):
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
        targets = array(target_columns, "targets") if target_columns is not None else None
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


def read_npy(file: Path, column_map: dict, target_columns, dtype="float64"):
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
    targets = pick(target_columns, "targets", copy=True) if target_columns is not None else None
    return inputs, targets

"""Readers: CSV (header row), .npy (2-D, columns by index) and .npz (arrays by name) -> host arrays.

Every problem names the file and the place: CSV line and column, array name, and the value.
Large .npy files stay on disk (RowFile) and are read row by row, so a data set is never copied whole.
"""
from __future__ import annotations

import csv
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy

from nnctl.errors import DataError, Problem, describe, did_you_mean, number_text

CSV_SUFFIXES = (".csv",)


def read_csv(file: Path, column_map: dict, target_columns):
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM (Excel's) is not part of the first name
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(Problem(f"expected a readable UTF-8 CSV file, received {exc.__class__.__name__}: {exc}", str(file))) from None
    if not rows:
        raise DataError(Problem("expected a header row of column names, received an empty file", str(file)))
    header = [h.strip() for h in rows[0]]
    body = [row for row in rows[1:] if row and any(cell.strip() for cell in row)]
    index = {name: i for i, name in enumerate(header)}

    def columns_of(columns, what):
        names = [columns] if isinstance(columns, str) else columns
        missing = [c for c in names if c not in index]
        if missing:
            raise DataError(Problem(
                f"{what}: expected column {missing[0]!r}{did_you_mean(missing[0], header)}; the header has {', '.join(map(repr, header))}",
                str(file), 1,
            ))
        for name in names:
            places = [i + 1 for i, h in enumerate(header) if h == name]
            if len(places) > 1:
                raise DataError(Problem(
                    f"{what}: expected column {name!r} once in the header, received it in columns {', '.join(map(str, places))}",
                    str(file), 1, places[1],
                ))
        return [index[c] for c in names]

    wanted = {name: columns_of(cols, f"input {name!r}") for name, cols in column_map.items()}
    target_index = columns_of(target_columns, "targets") if target_columns is not None else None
    for line, row in enumerate(rows[1:], start=2):
        if row and any(cell.strip() for cell in row) and len(row) != len(header):
            raise DataError(Problem(f"expected {len(header)} fields like the header, received {len(row)}", str(file), line))
    line_numbers = [i for i, row in enumerate(rows[1:], start=2) if row and any(cell.strip() for cell in row)]

    def convert(indices):
        out = numpy.empty((len(body), len(indices)), dtype=numpy.float64)
        for r, row in enumerate(body):
            for c, i in enumerate(indices):
                cell = row[i]
                try:
                    value = float(cell)
                except ValueError:
                    raise DataError(Problem(f"column {header[i]!r}: expected a number, received {cell!r}", str(file), line_numbers[r], i + 1)) from None
                if not math.isfinite(value):
                    raise DataError(Problem(f"column {header[i]!r}: expected a finite number, received {cell!r}", str(file), line_numbers[r], i + 1))
                out[r, c] = value
        return out

    inputs = {name: convert(indices) for name, indices in wanted.items()}
    targets = convert(target_index) if target_index is not None else None

    def locate(i):
        first = target_index[0]
        names = ", ".join(repr(header[c]) for c in target_index)
        return {"file": str(file), "line": line_numbers[i], "column": first + 1}, f"column{'s' if len(target_index) > 1 else ''} {names}"

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


def _finite(file, name, array):
    if array.dtype.kind == "f":
        chunks = array.chunks() if isinstance(array, RowFile) else [(0, array)]
        for start, chunk in chunks:
            bad = numpy.argwhere(~numpy.isfinite(chunk))
            if bad.size:
                where = tuple(int(i) for i in bad[0])
                raise DataError(Problem(f"array {name!r}: expected finite numbers, received {number_text(chunk[where])} at index {(where[0] + start,) + where[1:]}", str(file)))
    elif array.dtype.kind not in "iub":
        raise DataError(Problem(f"array {name!r}: expected a numeric array, received dtype {array.dtype}", str(file)))


_MAGIC = {".npz": (b"PK\x03\x04", b"PK\x05\x06"), ".npy": (b"\x93NUMPY",)}
_CORRUPT = (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error)


def _check_magic(file: Path, suffix: str) -> None:
    """Refuse a file that is not what its suffix says before NumPy guesses (it would call it a pickle)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise DataError(Problem(f"expected a readable {suffix} file, received {exc.__class__.__name__}: {exc}", str(file))) from None
    if head.startswith(_MAGIC[suffix]):
        return
    other = next((s for s, magic in _MAGIC.items() if head.startswith(magic)), None)
    if other:
        reason = f"an {other} file"
    elif not head:
        reason = "an empty file"
    elif head.startswith(b"\x80"):
        reason = "a pickle file, which nnctl never loads"
    else:
        reason = f"a file that starts with {head[:4]!r}"
    what = "an .npz archive (a zip of .npy arrays)" if suffix == ".npz" else "a .npy array file"
    raise DataError(Problem(f"expected {what}, received {reason}", str(file)))


def _unreadable(exc) -> str:
    if "pickle" in str(exc) or "Python objects" in str(exc):
        return "a pickled object array, which nnctl never loads"
    return f"an unreadable one ({exc})"


def read_npz(file: Path, column_map: dict, target_columns):
    _check_magic(file, ".npz")
    try:
        archive = numpy.load(file, allow_pickle=False)
    except (ValueError, *_CORRUPT) as exc:
        raise DataError(Problem(f"expected a valid .npz archive, received a truncated or corrupt file ({exc})", str(file))) from None
    with archive:
        def array(name, what):
            if not isinstance(name, str):
                raise DataError(Problem(f"{what}: expected one array name for an .npz file, received {describe(name)}", str(file)))
            if name not in archive.files:
                raise DataError(Problem(f"{what}: expected array {name!r}{did_you_mean(name, archive.files)}; the archive has {', '.join(archive.files) or 'no arrays'}", str(file)))
            try:
                value = archive[name]
            except (ValueError, *_CORRUPT) as exc:
                raise DataError(Problem(f"array {name!r}: expected a plain numeric array, received {_unreadable(exc)}", str(file))) from None
            if not isinstance(value, numpy.ndarray):
                raise DataError(Problem(f"array {name!r}: expected a NumPy array, received a member that is not in .npy format", str(file)))
            if value.ndim == 0:
                raise DataError(Problem(f"array {name!r}: expected samples along axis 0, received a scalar", str(file)))
            _finite(file, name, value)
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
    """An in-memory array, or a RowFile for a large 2-D C-ordered file."""
    if file.stat().st_size <= LOAD_WHOLE_BYTES:
        return numpy.load(file, allow_pickle=False)
    with open(file, "rb") as handle:
        version = numpy.lib.format.read_magic(handle)
        read_header = numpy.lib.format.read_array_header_1_0 if version == (1, 0) else numpy.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    if len(shape) != 2 or fortran_order:
        return numpy.load(file, mmap_mode="r", allow_pickle=False)  # only its shape is looked at: rejected below
    if offset + shape[0] * shape[1] * dtype.itemsize > file.stat().st_size:
        raise ValueError(f"the file is shorter than its header's shape {shape} says")
    return RowFile(file, offset, shape[0], shape[1], dtype)


def read_npy(file: Path, column_map: dict, target_columns):
    _check_magic(file, ".npy")
    try:
        array = _open_npy(file)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(Problem(f"expected a valid .npy file, received {_unreadable(exc)}", str(file))) from None
    if array.ndim != 2:
        raise DataError(Problem(f"expected a 2-D array (samples, columns), received shape {list(array.shape)}", str(file)))
    _finite(file, file.name, array)
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

"""A table file's raw columns for column preprocessing: numbers, or text as codes into its distinct
values, typed over the whole file, read a block of rows at a time and kept in the data cache.

A CSV is read by pyarrow's streaming reader with every column as text, and a Parquet or Feather
file a record batch at a time (its number columns as numbers, the others as text), so no block
fixes a text column's type: a column is numbers while every cell that is not missing is one
(pyarrow's cast, or nnctl's own rule where pyarrow refuses a cell: ` 3 ` is a number, `1_0` is
not), and the first block with a cell that is not sends the reader back to the start with the
column as text (a RESTART for whoever is writing the blocks down). A CSV pyarrow cannot read in
blocks as nnctl.io.tables.read_table would (a ragged row, a row of blank cells, bytes that are not
UTF-8) is read by read_table whole, which reads it or names the line. Either way the columns are
what read_table types them as: a text cell of numbers is the number, a text column keeps its
cells as written.

In the cache (nnctl.data.cache) an entry is the columns of one file read one way (delimiter,
missing values, the columns): per column `<i>.npy`, (rows, 1) float64 numbers or int32 codes (-1:
missing), and for text `<i>.tokens.npy` (the distinct values, UTF-8, end to end) and
`<i>.ends.npy` (where each ends). A second run reads them without parsing; `nnctl predict` reads
them a block of rows at a time (RawTable.blocks), so a large file costs a block's memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from nnctl.data import cache
from nnctl.data.preprocessing import MISSING_CODE, Column, text_codes
from nnctl.data.readers import LOAD_WHOLE_BYTES, RESTART
from nnctl.errors import DataError, Problem
from nnctl.io.tables import (NUMBER, TEXT, TABLE_SUFFIXES, Fallback, NotNumbers, Table, arrow_file_batches, arrow_file_column,
                             arrow_header, arrow_text_blocks, blank_cells, csv_header, number_values, read_table, scan)

WHAT = "a data file"


@dataclass
class RawTable:
    """The columns `names` of a table file: per column its kind (NUMBER or TEXT), its data (numbers
    or codes, (rows,) in memory or (rows, 1) on disk) and, for text, its distinct values."""

    table: Table  # where each cell is (Column.place)
    names: list
    kinds: dict
    data: dict
    tokens: dict
    notes: list = field(default_factory=list)  # what the caller should tell the user (a rebuilt cache)

    @property
    def rows(self) -> int:
        return self.table.rows

    def columns(self) -> "Columns":
        """{name: Column} of every row."""
        return Columns({name: self._column(name, _whole(self.data[name]), 0) for name in self.names}, self.notes)

    def blocks(self, size: int):
        """{name: Column} of `size` rows at a time (the last may be fewer), read from disk a block
        at a time where the data stays there."""
        readers = {name: _pieces(self.data[name], size) for name in self.names}
        for start in range(0, self.rows, size):
            yield {name: self._column(name, next(readers[name]), start) for name in self.names}

    def _column(self, name, data, offset) -> Column:
        return Column(name, data, self.table, self.tokens.get(name), offset)


class Columns(dict):
    """{name: Column}, and the notes of their reading (`notes`)."""

    def __init__(self, columns: dict, notes: list):
        super().__init__(columns)
        self.notes = notes


def _whole(data):
    if isinstance(data, numpy.ndarray):
        return data
    return numpy.concatenate([chunk[:, 0] for _, chunk in data.chunks()]) if data.rows else numpy.empty(0, data.dtype)


def _pieces(data, size):
    if isinstance(data, numpy.ndarray):
        for start in range(0, len(data), size):
            yield data[start:start + size]
        return
    for _, chunk in data.chunks(size * data.dtype.itemsize):
        yield numpy.ascontiguousarray(chunk[:, 0])


def read_raw_table(file, names: list, delimiter: str, missing_values, cache_folder=None, on_disk: bool = False) -> RawTable:
    """The columns `names` of the table file `file`, through the data cache in `cache_folder` for a
    file of cache.MIN_BYTES or more (None: no cache); `on_disk`: leave cached columns on disk, to be
    read by RawTable.blocks."""
    file = Path(file)
    suffix = file.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(Problem(f"expected a .csv, .parquet, .feather or .arrow file for columns read with preprocessing, "
                                f"received a {suffix or 'suffix-less'} file", str(file)))
    source = _Blocks(file, list(names), delimiter, tuple(missing_values))
    if cache_folder is None or os.stat(file).st_size < cache.MIN_BYTES:
        return source.joined()
    identity = {"raw": {"columns": list(names), "delimiter": delimiter, "missing_values": list(missing_values)}}
    table, notes = cache.cached(cache_folder, file, identity, lambda entry, identity: _read_entry(entry, identity, file, on_disk),
                                lambda entry, identity: _build_entry(entry, identity, source, file, on_disk), source.joined)
    table.notes = notes
    return table


class _Flip(Exception):
    """Columns read as numbers hold a cell that is not one, after blocks that held them as
    numbers: read again, the columns as text."""


def _blank_rows(columns) -> bool:
    """Whether a row's cells are all missing or blank (the rows no cell of a column rules out are
    the only ones the next column is asked about)."""
    rows = None
    for column in columns:
        blank = blank_cells(column if rows is None else column.take(rows))
        rows = numpy.flatnonzero(blank) if rows is None else rows[blank]
        if not rows.size:
            return False
    return True


class _Blocks:
    """The raw columns of a table file, a block of rows at a time: iterating yields {name: (rows,)
    float64 numbers or int32 codes}, or RESTART (the blocks before it are void); after the last,
    `kinds`, `tokens` and `table` describe them."""

    def __init__(self, file: Path, names: list, delimiter: str, missing_values: tuple):
        self.file, self.names, self.delimiter, self.missing_values = file, names, delimiter, missing_values
        self.csv = file.suffix.lower() == ".csv"
        if self.csv:
            self.header, _, self.raw_names = csv_header(file, DataError, WHAT, names, delimiter)
        else:
            self.header, self.raw_names = arrow_header(file, DataError, WHAT, names)
        self.text = set()  # the columns found to be text so far

    def __iter__(self):
        quotes = scan(self.file)["quotes"] if self.csv else None
        while True:
            self.codes = {name: {} for name in self.text}  # token -> code, in order of first appearance
            rows = 0
            batches = (arrow_text_blocks(self.file, self.raw_names, self.delimiter, self.missing_values, quotes) if self.csv
                       else arrow_file_batches(self.file, DataError, self.names))
            try:
                for batch in batches:
                    block = self._block(batch, first=not rows)
                    rows += batch.num_rows
                    yield block
            except _Flip:
                yield RESTART
                continue
            except Fallback:
                # read_table reads what the streaming reader cannot, as it always has (or names the line)
                yield RESTART
                yield from self._whole()
                return
            finally:
                batches.close()
            self.kinds = {name: TEXT if name in self.text else NUMBER for name in self.names}
            self.tokens = {name: _object_array(list(codes)) for name, codes in self.codes.items()}
            self.table = Table(str(self.file), self.header, {}, rows, self.delimiter if self.csv else None)
            return

    def _block(self, batch, first: bool) -> dict:
        if not self.csv:
            columns = {name: arrow_file_column(batch.column(name)) for name in self.names}
        else:
            columns = dict(zip(self.names, (batch.column(raw) for raw in self.raw_names)))
            if _blank_rows(list(columns.values())):  # read_table's rule: a row of blank cells is one its Python reader reads
                raise Fallback("a row of blank or missing cells")
        block = {name: self._numbers(column) for name, column in columns.items() if name not in self.text}
        flipped = [name for name, values in block.items() if values is None]
        if flipped:
            self.text.update(flipped)
            self.codes.update({name: {} for name in flipped})
            if not first:
                raise _Flip(flipped)  # the blocks before this one hold these columns as numbers
        return {name: self._codes(name, column) if name in self.text else block[name] for name, column in columns.items()}

    @staticmethod
    def _numbers(column):
        """The cells as float64 (NaN where missing), or None if one is not a number."""
        try:
            return number_values(column)
        except NotNumbers:
            return None

    def _codes(self, name, column):
        encoded = column.dictionary_encode()
        known = self.codes[name]
        local = numpy.fromiter((known.setdefault(t, len(known)) for t in encoded.dictionary.to_pylist()), dtype=numpy.int32,
                               count=len(encoded.dictionary))
        return numpy.append(local, numpy.int32(MISSING_CODE))[numpy.asarray(encoded.indices.fill_null(-1))]

    def _whole(self):
        """read_table's columns of a CSV, as one block."""
        table = read_table(self.file, DataError, WHAT, self.names, self.delimiter, self.missing_values)
        block, self.kinds, self.tokens = {}, {}, {}
        for name in self.names:
            column = table.columns[name]
            self.kinds[name] = column.kind
            if column.kind == NUMBER:
                block[name] = numpy.asarray(column.values, dtype=numpy.float64)
            else:
                values = numpy.array(column.values, dtype=object)
                values[column.missing] = None
                block[name], self.tokens[name] = text_codes(values)
        self.table = Table(table.file, table.header, {}, table.rows, table.delimiter, table._found)
        yield block

    def joined(self) -> RawTable:
        """Every block, joined in memory."""
        parts = {name: [] for name in self.names}
        for block in self:
            if block is RESTART:
                parts = {name: [] for name in self.names}
                continue
            for name, array in block.items():
                parts[name].append(array)
        data = {name: numpy.concatenate(p) if p else numpy.empty(0, _dtype(self.kinds[name])) for name, p in parts.items()}
        return RawTable(self.table, self.names, self.kinds, data, self.tokens)


def _object_array(items: list):
    out = numpy.empty(len(items), dtype=object)
    out[:] = items
    return out


def _dtype(kind):
    return numpy.dtype("<f8") if kind == NUMBER else numpy.dtype("<i4")


# --- cache entries ----------------------------------------------------------------------------------
def _build_entry(entry: Path, identity: dict, source: _Blocks, file: Path, on_disk: bool) -> RawTable:
    names = [f"{i}.npy" for i in range(len(source.names))]
    keys = dict(zip(names, source.names))

    def two_d(blocks):
        for block in blocks:
            yield block if block is RESTART else {name: block[key][:, None] for name, key in keys.items()}

    arrays = cache.write_blocks(entry, names, two_d(source), lambda name: (1, _dtype(source.kinds[keys[name]])))
    columns = []
    for i, (name, array) in enumerate(zip(source.names, arrays)):
        column = {"name": name, "kind": source.kinds[name], **array}
        if name in source.tokens:
            blob, ends = _token_arrays(source.tokens[name])
            column["tokens"] = cache.write_array(entry / f"{i}.tokens.npy", blob)
            column["ends"] = cache.write_array(entry / f"{i}.ends.npy", ends)
        columns.append(column)
    table = source.table
    cache.write_manifest(entry, {"identity": identity, "header": table.header, "rows": table.rows, "csv": table.delimiter is not None,
                                 "columns": columns})
    return _read_entry(entry, identity, file, on_disk, verify=False)  # just written: nothing to check yet


def _read_entry(entry: Path, identity: dict, file: Path, on_disk: bool, verify: bool = True) -> RawTable:
    manifest = cache.read_manifest(entry, identity)
    names = identity["raw"]["columns"]
    if [c["name"] for c in manifest["columns"]] != names:
        raise ValueError("its manifest lists other columns")
    rows = int(manifest["rows"])
    kinds, data, tokens = {}, {}, {}
    for i, column in enumerate(manifest["columns"]):
        name, kind = column["name"], column["kind"]
        if kind not in (NUMBER, TEXT) or column["rows"] != rows:
            raise ValueError(f"its manifest holds column {name!r} as {kind!r} of {column['rows']} rows")
        dtype = _dtype(kind)
        whole = not on_disk and rows * dtype.itemsize <= LOAD_WHOLE_BYTES
        # the same checks as the numeric entries': a CRC-32 for what is loaded, and for what predict reads by block up to that size
        array = cache.open_array(entry / f"{i}.npy", [rows, 1], dtype, column["crc32"], whole, verify and rows * dtype.itemsize <= LOAD_WHOLE_BYTES)
        kinds[name], data[name] = kind, array[:, 0] if whole else array
        if kind == TEXT:
            blob = cache.open_array(entry / f"{i}.tokens.npy", column["tokens"]["shape"], numpy.dtype("u1"), column["tokens"]["crc32"], verify=verify)
            ends = cache.open_array(entry / f"{i}.ends.npy", column["ends"]["shape"], numpy.dtype("<i8"), column["ends"]["crc32"], verify=verify)
            tokens[name] = _tokens_of(blob, ends)
            if whole and data[name].size and not (-1 <= data[name].min() and data[name].max() < len(tokens[name])):
                raise ValueError(f"{i}.npy holds codes outside its {len(tokens[name])} values")
    table = Table(str(file), list(manifest["header"]), {}, rows, identity["raw"]["delimiter"] if manifest["csv"] else None)
    return RawTable(table, names, kinds, data, tokens)


def _token_arrays(tokens) -> tuple:
    """Distinct values as plain arrays (never pickled): their UTF-8 bytes end to end, and where each ends."""
    encoded = [token.encode("utf-8") for token in tokens]
    ends = numpy.cumsum([len(b) for b in encoded], dtype=numpy.int64) if encoded else numpy.zeros(0, dtype=numpy.int64)
    return numpy.frombuffer(b"".join(encoded), dtype=numpy.uint8), ends


def _tokens_of(blob, ends):
    data = blob.tobytes()
    starts = numpy.concatenate([[0], ends[:-1]]) if len(ends) else ends
    if len(ends) and (ends[-1] != len(data) or (numpy.diff(ends) < 0).any() or ends[0] < 0):
        raise ValueError("its values' ends do not fit their bytes")
    return _object_array([data[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist())])

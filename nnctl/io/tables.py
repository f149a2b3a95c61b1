"""CSV tables: a header row, then rows read one at a time with the physical line each starts on.

Every CSV nnctl reads (data, history.csv, `nnctl init`'s input) goes through `CsvTable`, so they
agree on what a number is, which rows are blank, and which line a problem is on: a quoted cell may
hold line breaks, so the row count is not the line number.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from nnctl.errors import Problem, number_text
from nnctl.io.paths import OpenFile, open_regular

# A physical line longer than this is refused rather than read: a file without line breaks (a disk
# image, a binary renamed .csv) would otherwise be read whole into one string before csv sees it.
MAX_LINE_CHARS = 64 << 20


def number(cell: str) -> float:
    """The cell as a float, or ValueError. Stricter than float(), which also takes '1_0' and
    digits of other scripts ('١'): a data file holding those is more likely a mistake than data."""
    value = float(cell)
    if not cell.isascii() or "_" in cell:
        raise ValueError(f"not a plain decimal number: {cell!r}")
    return value


class NotNumbers(ValueError):
    """`numbers` found a cell that is not one; `index` says which."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def numbers(cells: list) -> numpy.ndarray:
    """`number` of every cell, as a float64 array (NotNumbers names the first that is not one)."""
    try:
        values = list(map(float, cells))
    except ValueError:
        values = None
    if values is not None:
        text = "".join(cells)
        if text.isascii() and "_" not in text:
            return numpy.array(values, dtype=numpy.float64)
    raise NotNumbers(next(i for i, cell in enumerate(cells) if not is_number(cell)))


def cell_numbers(cells, missing) -> numpy.ndarray:
    """`numbers` of the cells (an object array) that are not `missing`, NaN where they are;
    NotNumbers names the row of the first that is not one."""
    present = numpy.flatnonzero(~missing)
    try:
        found = numbers(cells[present].tolist())
    except NotNumbers as bad:
        raise NotNumbers(int(present[bad.index])) from None
    out = numpy.full(len(cells), math.nan)
    out[present] = found
    return out


def is_number(cell: str) -> bool:
    try:
        number(cell)
    except ValueError:
        return False
    return True


def _line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


class CsvTable(OpenFile):
    """`header` (stripped names; None for an empty file) at `header_line`, then `rows()`.

    `error` is the NnctlError class to raise and `what` names the file expected ("a data file").
    """

    def __init__(self, path, error, what: str, delimiter: str = ","):
        self.file, self.error = str(path), error
        # utf-8-sig: a BOM (Excel writes one) is not part of the first column's name.
        self.handle = io.TextIOWrapper(open_regular(path, error, what), encoding="utf-8-sig", newline="")
        self.reader = csv.reader(self._lines(), delimiter=delimiter)
        self.header, self.header_line, self.raw_header = None, None, None
        self._iterator = self._rows()
        try:
            first = next(self._iterator, None)
        except BaseException:
            self.handle.close()
            raise
        if first is not None:
            self.header_line, self.raw_header = first
            self.header = [name.strip() for name in self.raw_header]

    def _lines(self):
        while True:
            text = self.handle.readline(MAX_LINE_CHARS)
            if len(text) == MAX_LINE_CHARS and not text.endswith(("\n", "\r")):
                raise self.error(Problem(f"expected lines of at most {MAX_LINE_CHARS:,} characters, received a longer one", self.file, self.reader.line_num + 1))
            if not text:
                return
            yield text

    def _rows(self):
        """(line, cells) for every row with a non-blank cell."""
        line = 1  # where the next row starts: one past the last line the reader consumed
        while True:
            try:
                cells = next(self.reader, None)
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise self.error(Problem(f"expected a readable UTF-8 CSV file, received {exc.__class__.__name__}: {exc}", self.file, line)) from None
            if cells is None:
                return
            if any(cell.strip() for cell in cells):
                yield line, cells
            line = self.reader.line_num + 1

    def rows(self):
        """(line, cells) for each row after the header, each with as many cells as the header."""
        for line, cells in self._iterator:
            if len(cells) != len(self.header):
                raise self.error(Problem(f"expected {len(self.header)} fields like the header, received {len(cells)}", self.file, line))
            yield line, cells

    @staticmethod
    def cell_line(line: int, cells: list, index: int) -> int:
        """The physical line cell `index` of a row starting on `line` begins on."""
        return line + sum(_line_breaks(cell) for cell in cells[:index])


# --- typed tables, read by pyarrow ----------------------------------------------------------------
# Cells that are missing values unless a spec says otherwise (data.missing_values). Matched exactly,
# as pyarrow matches them: ' NA' is text, not missing.
MISSING_VALUES = ("", "NA", "NaN", "null", "None")
NUMBER, TEXT = "number", "text"
# CSV files larger than this are read block by block (pyarrow's streaming reader), never whole.
STREAM_BYTES = 256 << 20
BLOCK_BYTES = 8 << 20  # what a streamed block holds: bounded memory, few Python calls
_SCAN_BYTES = 1 << 20


class Fallback(Exception):
    """pyarrow cannot give the answer CsvTable would (a parse error, a missing or blank cell, a type
    it infers that nnctl reads otherwise): the caller reads with CsvTable, which either gives the same
    result more slowly or names the line and column of the problem."""


def scan(path, digest=None) -> dict:
    """One pass over the bytes: whether a value may hold a line break (pyarrow must be told, and
    reads slower when told), whether a hexadecimal prefix occurs (pyarrow reads '0x10' as 16 in
    integer columns) and, given a hashlib object, its update. Quotes on the header's names alone
    (R and pyarrow write them) leave values unquoted; the header itself is read by CsvTable."""
    quotes = hexadecimal = False
    tail, header, header_quotes = b"", True, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_SCAN_BYTES):
            if digest is not None:
                digest.update(chunk)
            body = chunk
            if header:
                ends = [i for i in (chunk.find(b"\n"), chunk.find(b"\r")) if i >= 0]
                end = min(ends) if ends else len(chunk)
                header_quotes += chunk.count(b'"', 0, end)
                header, body = not ends, chunk[end:]
                # An odd count of quotes leaves a quoted name open across the line break.
                quotes = not header and header_quotes % 2 == 1
            quotes = quotes or b'"' in body
            if not hexadecimal and (b"x" in chunk or b"X" in chunk):
                joined = tail + chunk
                hexadecimal = b"0x" in joined or b"0X" in joined
            tail = chunk[-1:]
    return {"quotes": quotes, "hexadecimal": hexadecimal}


def _options(delimiter, missing_values, quotes, names, types, block_size=None):
    import pyarrow.csv

    read = pyarrow.csv.ReadOptions(**({"block_size": block_size} if block_size else {}))
    parse = pyarrow.csv.ParseOptions(delimiter=delimiter, newlines_in_values=quotes)
    convert = pyarrow.csv.ConvertOptions(include_columns=list(names), column_types=types, null_values=list(missing_values),
                                         strings_can_be_null=True, quoted_strings_can_be_null=True)
    return {"read_options": read, "parse_options": parse, "convert_options": convert}


def arrow_number_blocks(path, groups, delimiter=",", missing_values=MISSING_VALUES, quotes=True, stream=False):
    """For each list of column names (as the header spells them) in `groups`, a float64 array
    (rows, len(names)), a block of rows at a time (the whole file at once unless `stream`).
    Fallback on a cell that is missing, blank or not a number, and on anything pyarrow refuses:
    CsvTable then finds the place."""
    import pyarrow

    names = list(dict.fromkeys(name for group in groups for name in group))
    for table in _arrow_csv(path, names, {name: pyarrow.float64() for name in names}, delimiter, missing_values, quotes, stream):
        yield _float_groups(table, groups)


# pyarrow's streaming reader reads some 30 blocks ahead: text blocks this size keep that to tens of MB.
TEXT_BLOCK_BYTES = 1 << 20


def arrow_text_blocks(path, names, delimiter=",", missing_values=MISSING_VALUES, quotes=True):
    """The columns `names` (as the header spells them) as text, pyarrow record batches of about
    TEXT_BLOCK_BYTES of the file each, missing values as nulls; Fallback on anything pyarrow refuses."""
    import pyarrow

    yield from _arrow_csv(path, names, {name: pyarrow.string() for name in names}, delimiter, missing_values, quotes, TEXT_BLOCK_BYTES)


def _arrow_csv(path, names, types, delimiter, missing_values, quotes, stream):
    """pyarrow's reading of a CSV's columns `names` as `types`: the whole table, or (`stream`: True,
    or a block size in bytes) its record batches one at a time; Fallback on what pyarrow refuses."""
    import pyarrow
    import pyarrow.csv

    block = (BLOCK_BYTES if stream is True else stream) if stream else None
    options = _options(delimiter, missing_values, quotes, names, types, block_size=block)
    try:
        if stream:
            with pyarrow.csv.open_csv(str(path), **options) as reader:
                yield from reader
        else:
            yield pyarrow.csv.read_csv(str(path), **options)
    except (pyarrow.ArrowException, OSError, UnicodeError) as exc:
        raise Fallback(str(exc)) from None


def blank_cells(column):
    """Which cells of a pyarrow column are missing, or text of nothing but white space."""
    import pyarrow
    import pyarrow.compute
    import pyarrow.types as kinds

    missing = numpy.asarray(column.is_null())
    if not kinds.is_string(column.type):
        return missing
    return missing | numpy.asarray(pyarrow.compute.equal(pyarrow.compute.utf8_trim_whitespace(column), "").fill_null(False))


def _float_groups(table, groups) -> list:
    """Each group's columns copied once into one C-ordered array, a record batch at a time: the rows
    of a batch fit in the CPU's cache while its columns are interleaved."""
    if any(column.null_count for column in table.columns):
        raise Fallback("a missing or blank cell")
    out = [numpy.empty((table.num_rows, len(group))) for group in groups]
    start = 0
    for batch in (table.to_batches() if hasattr(table, "to_batches") else [table]):
        stop = start + batch.num_rows
        for array, group in zip(out, groups):
            for j, name in enumerate(group):
                array[start:stop, j] = batch.column(name).to_numpy()
        start = stop
    return out


def column_indices(header: list, names, error, file, header_line, what: str) -> list:
    """Where each of `names` is in `header`; a name it lacks (with a did-you-mean) or holds twice is
    an `error` at the header's line."""
    from nnctl.errors import did_you_mean

    names = [names] if isinstance(names, str) else names
    index = {name: i for i, name in enumerate(header)}
    missing = [c for c in names if c not in index]
    if missing:
        raise error(Problem(
            f"{what}: expected column {missing[0]!r}{did_you_mean(missing[0], header)}; the header has {', '.join(map(repr, header))}",
            str(file), header_line,
        ))
    for name in names:
        places = [i + 1 for i, h in enumerate(header) if h == name]
        if len(places) > 1:
            raise error(Problem(
                f"{what}: expected column {name!r} once in the header, received it in columns {', '.join(map(str, places))}",
                str(file), header_line, places[1],
            ))
    return [index[c] for c in names]


@dataclass
class Column:
    """One column: numbers (float64, NaN where missing) or text (str, None where missing)."""

    name: str
    kind: str  # NUMBER or TEXT
    values: numpy.ndarray
    missing: numpy.ndarray  # bool, one per row


@dataclass
class Table:
    """Typed columns of a table file, and where each cell is: `place(row, name)` gives Problem's
    file, line and column keyword arguments (for a CSV the physical line, found by reading the file
    again with CsvTable: only a problem pays for it) and `cell(row, name)` the cell as written."""

    file: str
    header: list
    columns: dict  # name -> Column, in the order asked for
    rows: int
    delimiter: str | None = None  # None: not a CSV; places are rows
    _found: dict = field(default_factory=dict, repr=False)

    def _row(self, row: int):
        if row not in self._found:
            with CsvTable(self.file, ValueError, "a table", self.delimiter) as table:
                for i, found in enumerate(table.rows()):
                    if i == row:
                        self._found[row] = found
                        break
        return self._found[row]

    def line(self, row: int) -> int:
        """The physical line row `row` starts on (CSV only)."""
        return self._row(row)[0]

    def place(self, row: int, name: str) -> dict:
        index = self.header.index(name)
        if self.delimiter is None:
            return {"file": self.file}
        line, cells = self._row(row)
        return {"file": self.file, "line": CsvTable.cell_line(line, cells, index), "column": index + 1}

    def where(self, row: int) -> str:
        """' at row N' for files without lines (Parquet, Feather); '' for a CSV, whose place has them."""
        return "" if self.delimiter is not None else f" at row {row + 1}"

    def cell(self, row: int, name: str) -> str:
        if self.delimiter is not None:
            return self._row(row)[1][self.header.index(name)]
        column = self.columns[name]
        return "" if column.missing[row] else (number_text(column.values[row]) if column.kind == NUMBER else column.values[row])


TABLE_SUFFIXES = (".csv", ".parquet", ".feather", ".arrow")


def read_table(path, error, what: str, names=None, delimiter: str = ",", missing_values=MISSING_VALUES, types=None) -> Table:
    """The columns `names` (all when None) of a .csv, .parquet, .feather or .arrow file, typed over the
    whole file: a column is NUMBER when every cell that is not a missing value is a number (`number`),
    else TEXT, unless `types` (name -> NUMBER or TEXT) declares it; a declared NUMBER column holding
    text is an `error` at its cell."""
    suffix = Path(path).suffix.lower()
    types = dict(types or {})
    if suffix == ".csv":
        return _read_csv_table(path, error, what, names, delimiter, tuple(missing_values), types)
    return _read_arrow_file(path, error, what, names, types)


def csv_header(path, error, what: str, names=None, delimiter: str = ","):
    """(header, names, their cells in the header row as written) of a CSV file: `names` (all when
    None) checked against the header (a name it lacks, with a did-you-mean, is an `error`)."""
    with CsvTable(path, error, what, delimiter) as table:
        header, header_line, raw = table.header, table.header_line, table.raw_header
    if header is None:
        raise error(Problem("expected a header row of column names, received an empty file", str(path)))
    names = list(header) if names is None else list(names)
    indices = column_indices(header, names, error, path, header_line, "column")
    return header, names, [raw[i] for i in indices]


def _read_csv_table(path, error, what, names, delimiter, missing_values, types) -> Table:
    header, names, raw_names = csv_header(path, error, what, names, delimiter)
    indices = [header.index(n) for n in names]
    result = Table(str(path), header, {}, 0, delimiter)
    try:
        columns, rows = _arrow_csv_columns(path, raw_names, delimiter, missing_values,
                                           {raw_names[names.index(n)]: t for n, t in types.items() if n in names})
    except Fallback:
        columns, rows = _python_csv_columns(path, error, what, indices, delimiter, missing_values)
    result.rows = rows
    for name, (values, missing, text) in zip(names, columns):
        result.columns[name] = _typed(result, name, values, missing, text, types.get(name), error)
    return result


def _arrow_csv_columns(path, raw_names, delimiter, missing_values, types):
    """(values, missing, is_text) per column by pyarrow: inferred types, then the integer columns
    again as text where '0x' occurs (pyarrow reads hexadecimal) and dates, times and booleans as
    the text they were written as."""
    import pyarrow
    import pyarrow.csv
    import pyarrow.types as kinds

    found = scan(path)
    declared = {n: pyarrow.float64() if t == NUMBER else pyarrow.string() for n, t in types.items() if n in raw_names}
    try:
        table = pyarrow.csv.read_csv(str(path), **_options(delimiter, missing_values, found["quotes"], raw_names, declared))
        again = {f.name: pyarrow.string() for f in table.schema if f.name not in declared and not (
            kinds.is_floating(f.type) or kinds.is_null(f.type) or kinds.is_string(f.type)
            or (kinds.is_integer(f.type) and not found["hexadecimal"]))}
        if again:
            table = pyarrow.csv.read_csv(str(path), **_options(delimiter, missing_values, found["quotes"], raw_names, {**declared, **again}))
    except (pyarrow.ArrowException, OSError, UnicodeError) as exc:
        raise Fallback(str(exc)) from None
    if table.num_columns != len(raw_names):
        raise Fallback("a column named twice")
    columns, blank = [], numpy.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        missing = numpy.asarray(column.is_null())
        blank &= blank_cells(column)
        if kinds.is_string(column.type):
            columns.append((column.to_numpy(), missing, True))
        else:
            columns.append((numpy.asarray(column.cast(pyarrow.float64()).fill_null(math.nan), dtype=numpy.float64), missing, False))
    if blank.any():  # CsvTable skips a row of blank cells, but a row of 'NA's is a row of missing values
        raise Fallback("a row of blank or missing cells")
    return columns, table.num_rows


def _python_csv_columns(path, error, what, indices, delimiter, missing_values):
    missing_set = set(missing_values)
    cells = [[] for _ in indices]
    rows = 0
    with CsvTable(path, error, what, delimiter) as table:
        for _, row in table.rows():
            rows += 1
            for out, i in zip(cells, indices):
                out.append(row[i])
    columns = []
    for column in cells:
        missing = numpy.fromiter((cell in missing_set for cell in column), dtype=bool, count=len(column))
        values = numpy.empty(len(column), dtype=object)
        values[:] = [None if m else cell for cell, m in zip(column, missing)]
        columns.append((values, missing, True))
    return columns, rows


def _typed(table: Table, name, values, missing, text: bool, declared, error) -> Column:
    """Text cells all numbers make a NUMBER column (unless declared TEXT); a declared NUMBER column
    with other text is an `error` at the first such cell."""
    if not text:
        if declared == TEXT:
            shown = numpy.array([None if m else number_text(v) for v, m in zip(values, missing)], dtype=object)
            return Column(name, TEXT, shown, missing)
        return Column(name, NUMBER, values, missing)
    if declared != TEXT:
        try:
            return Column(name, NUMBER, cell_numbers(values, missing), missing)
        except NotNumbers as bad:
            if declared == NUMBER:
                raise error(Problem(f"column {name!r}: expected a number{table.where(bad.index)}, received {values[bad.index]!r}; "
                                    "declare the column as text to read it as categories", **table.place(bad.index, name))) from None
    return Column(name, TEXT, values, missing)


def _arrow_kind(suffix: str) -> str:
    return "Parquet" if suffix == ".parquet" else "Feather/Arrow IPC"


def _unreadable(error, path, exc):
    return error(Problem(f"expected a readable {_arrow_kind(Path(path).suffix.lower())} file, received {exc.__class__.__name__}: {exc}", str(path)))


def _ipc_reader(source):
    """The reader of an Arrow IPC file (Feather), or of an IPC stream (a .arrow file may hold
    either); a source that is neither fails with the file format's error."""
    import pyarrow
    import pyarrow.ipc

    try:
        return pyarrow.ipc.open_file(source)
    except pyarrow.ArrowInvalid as exc:
        source.seek(0)
        try:
            return pyarrow.ipc.open_stream(source)
        except pyarrow.ArrowInvalid:
            raise exc from None


def table_header(path, error, what: str) -> list:
    """The column names of a .parquet, .feather or .arrow file, from its schema (no data read)."""
    import pyarrow

    with open_regular(path, error, what):
        pass  # a FIFO or a device is refused before pyarrow opens it
    try:
        if Path(path).suffix.lower() == ".parquet":
            import pyarrow.parquet

            return list(pyarrow.parquet.read_schema(str(path)).names)
        with pyarrow.OSFile(str(path)) as source:
            return list(_ipc_reader(source).schema.names)
    except (pyarrow.ArrowException, OSError) as exc:
        raise _unreadable(error, path, exc) from None


def arrow_header(path, error, what: str, names=None) -> tuple:
    """(header, names) of a .parquet, .feather or .arrow file: `names` (all when None) checked
    against its schema (a name it lacks, with a did-you-mean, is an `error`)."""
    header = table_header(path, error, what)
    if names is not None:
        for name in names:
            column_indices(header, name, error, path, None, "column")
    return header, list(header) if names is None else list(names)


def arrow_file_batches(path, error, names):
    """The columns `names` of a .parquet, .feather or .arrow file as pyarrow record batches of
    about BLOCK_BYTES of float64 values at most, one at a time (an Arrow IPC file's own batches are
    read whole, then cut to size). A file without rows is one empty batch (its columns' types still
    type them); a file pyarrow cannot read is an `error`."""
    import pyarrow

    names = list(dict.fromkeys(names))
    rows = max(1, BLOCK_BYTES // (8 * max(1, len(names))))
    empty = True
    try:
        if Path(path).suffix.lower() == ".parquet":
            import pyarrow.parquet

            # pre_buffer (pyarrow's default) reads every row group's bytes before the first batch: the whole file
            with pyarrow.parquet.ParquetFile(str(path), pre_buffer=False) as parquet:
                schema = parquet.schema_arrow
                for batch in parquet.iter_batches(batch_size=rows, columns=names):
                    empty = False
                    yield batch
        else:
            # Read, not memory-mapped: the pages a map touches stay resident, a compressed file's every one
            with pyarrow.OSFile(str(path)) as source:
                reader = _ipc_reader(source)
                schema = reader.schema
                # a file's batches are read by index, a stream's in turn
                batches = map(reader.get_batch, range(reader.num_record_batches)) if hasattr(reader, "get_batch") else reader
                for whole in batches:
                    for start in range(0, whole.num_rows, rows):
                        empty = False
                        yield whole.slice(start, rows).select(names)
        if empty:
            yield pyarrow.RecordBatch.from_pylist([], schema=pyarrow.schema([schema.field(name) for name in names]))
    except (pyarrow.ArrowException, OSError) as exc:
        raise _unreadable(error, path, exc) from None


def arrow_file_column(column):
    """A column of a Parquet or Feather file as read_table types it: float64 (numbers, and a
    column of nulls) or text (a dictionary's values; any other type as the text pyarrow writes)."""
    import pyarrow
    import pyarrow.types as kinds

    if kinds.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if kinds.is_integer(column.type) or kinds.is_floating(column.type) or kinds.is_null(column.type):
        return column.cast(pyarrow.float64())
    return column if kinds.is_string(column.type) or kinds.is_large_string(column.type) else column.cast(pyarrow.string())


def number_values(column) -> numpy.ndarray:
    """The cells of a pyarrow column as float64 (NaN where missing): pyarrow's cast, or nnctl's
    rule where pyarrow refuses a cell (' 3 ' is a number, '1_0' is not; NotNumbers names the row)."""
    import pyarrow
    import pyarrow.compute

    try:
        return numpy.asarray(pyarrow.compute.cast(column, pyarrow.float64()).fill_null(math.nan), dtype=numpy.float64)
    except pyarrow.ArrowInvalid:
        pass
    return cell_numbers(column.to_numpy(zero_copy_only=False), numpy.asarray(column.is_null()))


def _read_arrow_file(path, error, what, names, types) -> Table:
    import pyarrow.types as kinds

    header, names = arrow_header(path, error, what, names)
    parts = {name: [] for name in names}
    rows = 0
    for batch in arrow_file_batches(path, error, names):
        rows += batch.num_rows
        for name in parts:
            column = arrow_file_column(batch.column(name))
            if kinds.is_floating(column.type):
                values = number_values(column)
            else:
                values = numpy.empty(len(column), dtype=object)
                values[:] = column.to_pylist()
            parts[name].append((values, numpy.asarray(column.is_null(), dtype=bool)))
    result = Table(str(path), header, {}, rows)
    for name, pieces in parts.items():
        values, missing = (numpy.concatenate(p) for p in zip(*pieces))
        result.columns[name] = _typed(result, name, values, missing, values.dtype == object, types.get(name), error)
    return result

"""CSV tables: a header row, then rows read one at a time with the physical line each starts on.

Every CSV nnctl reads (data, history.csv, `nnctl init`'s input) goes through `CsvTable`, so they
agree on what a number is, which rows are blank, and which line a problem is on: a quoted cell may
hold line breaks, so the row count is not the line number.
"""
from __future__ import annotations

import csv
import io

import numpy

from nnctl.errors import Problem
from nnctl.io.paths import open_regular

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
    raise NotNumbers(next(i for i, cell in enumerate(cells) if not _is_number(cell)))


def _is_number(cell: str) -> bool:
    try:
        number(cell)
    except ValueError:
        return False
    return True


def _line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


class CsvTable:
    """`header` (stripped names; None for an empty file) at `header_line`, then `rows()`.

    `error` is the NnctlError class to raise and `what` names the file expected ("a data file").
    """

    def __init__(self, path, error, what: str):
        self.file, self.error = str(path), error
        # utf-8-sig: a BOM (Excel writes one) is not part of the first column's name.
        self.handle = io.TextIOWrapper(open_regular(path, error, what), encoding="utf-8-sig", newline="")
        self.reader = csv.reader(self._lines())
        self.header, self.header_line = None, None
        self._iterator = self._rows()
        try:
            first = next(self._iterator, None)
        except BaseException:
            self.handle.close()
            raise
        if first is not None:
            self.header_line, cells = first
            self.header = [name.strip() for name in cells]

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

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Raw columns of a CSV file for preprocessing: numbers where every present cell is one, text
otherwise, and missing cells (empty, NA, NaN, null, None) marked as missing.

Unlike the numeric reader (nnctl.data.readers), nothing is refused for being text: which column
may hold text is the preprocessing's question (nnctl.data.preprocessing), which names the line.
"""
from __future__ import annotations

import numpy

from nnctl.data.preprocessing import Column
from nnctl.errors import DataError, Problem, did_you_mean
from nnctl.io.tables import CsvTable, NotNumbers, numbers

MISSING_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})


def read_columns(file, names: list) -> dict:
    """{name: Column} for the columns `names` of the CSV `file`, every row of it."""
    file = str(file)
    with CsvTable(file, DataError, "a data file") as table:
        if table.header is None:
            raise DataError(Problem("expected a header row of column names, received an empty file", file))
        index = {}
        for name in names:
            if name not in table.header:
                raise DataError(Problem(f"expected column {name!r}{did_you_mean(name, table.header)}; the header has "
                                        f"{', '.join(map(repr, table.header))}", file, table.header_line))
            index[name] = table.header.index(name)
        cells = {name: [] for name in names}
        lines = []
        for line, row in table.rows():
            lines.append(line)
            for name, i in index.items():
                cell = row[i].strip()
                cells[name].append(None if cell in MISSING_TOKENS else cell)
    lines = numpy.array(lines, dtype=numpy.int64)
    return {name: Column(name, _typed(values), file, lines) for name, values in cells.items()}


def _typed(values: list):
    """float64 (NaN where missing) when every present cell is a number, else the text (None where missing)."""
    present = [v for v in values if v is not None]
    try:
        parsed = numbers(present)
    except NotNumbers:
        return numpy.array(values, dtype=object)
    out = numpy.full(len(values), numpy.nan)
    out[[i for i, v in enumerate(values) if v is not None]] = parsed
    return out

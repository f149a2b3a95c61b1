"""Training curves: history.csv -> per-metric train/validation series -> a picture or a text chart.

`save_figure` draws with matplotlib (the optional `[plot]` extra, imported only when called, and
never through pyplot: no global backend is changed). Without it, `line_chart` lays the curves out
on a braille canvas (2 x 4 dots per character cell) that nnctl.cli.report renders in the terminal, and
`sparkline` gives the one-line version shown at the end of `nnctl train`. No printing here.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from nnctl.errors import DataError, Problem
from nnctl.io.atomic import atomic_write
from nnctl.io.paths import check_suffix
from nnctl.io.tables import CsvTable, number

PICTURE_SUFFIXES = (".png", ".svg", ".pdf")
INSTALL_HINT = "pip install 'nnctl[plot]' (or pip install matplotlib)"
NOT_CURVES = ("epoch", "seconds", "samples_per_second")
TRAIN, VALIDATION = 1, 2  # series bits on the canvas


class PlotUnavailable(Exception):
    """matplotlib is not installed; the caller falls back to the terminal chart."""


# --- history ---------------------------------------------------------------------------------------
def read_history(path) -> list[dict]:
    """The rows of a history.csv written by `nnctl train`, every value a float (epoch an int)."""
    with CsvTable(path, DataError, "a history.csv written by nnctl train") as table:
        header = table.header
        if header is None or "epoch" not in header or len(header) < 2:
            raise DataError(Problem("expected a header with 'epoch' and at least one curve (e.g. epoch,loss,val_loss), received "
                                    + (repr(",".join(header)) if header else "an empty file"), str(path), table.header_line or 1))
        history = []
        for line, row in table.rows():
            record = {}
            for column, (name, cell) in enumerate(zip(header, row), start=1):
                try:
                    value = number(cell) if cell.strip() else math.nan
                except ValueError:
                    raise DataError(Problem(f"column {name!r}: expected a number, received {cell!r}", str(path), table.cell_line(line, row, column - 1), column)) from None
                record[name] = int(value) if name == "epoch" and math.isfinite(value) else value
            history.append(record)
    if not history:
        raise DataError(Problem("expected at least one epoch row, received only the header", str(path)))
    return history


def curves(history: list[dict]) -> dict:
    """{"epochs": [...], "curves": {metric: {"train": [...], "validation": [...] or None}}}, loss first."""
    names = [k for k in history[0] if k not in NOT_CURVES and not k.startswith("val_")]
    names += [k[4:] for k in history[0] if k.startswith("val_") and k[4:] not in names]
    names.sort(key=lambda k: k != "loss")
    result = {}
    for name in names:
        train = [row[name] for row in history] if name in history[0] else None
        validation = [row[f"val_{name}"] for row in history] if f"val_{name}" in history[0] else None
        if name == "lr" and len(set(train or [])) <= 1:
            continue  # a constant learning rate is no curve
        result[name] = {"train": train, "validation": validation}
    return {"epochs": [row.get("epoch", i + 1) for i, row in enumerate(history)], "curves": result}


# --- text: braille line chart and block sparkline ----------------------------------------------------
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row in cell][column in cell]
BLOCKS = "▁▂▃▄▅▆▇█"


class BrailleCanvas:
    """width x height character cells of 2 x 4 dots; each dot remembers which series set it."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.dots = [[0] * (2 * width) for _ in range(4 * height)]  # series bits per dot

    def set(self, x: int, y: int, series: int) -> None:
        """Dot (x, y), y counted from the bottom."""
        if 0 <= x < 2 * self.width and 0 <= y < 4 * self.height:
            self.dots[4 * self.height - 1 - y][x] |= series

    def line(self, points, series: int, dotted: bool = False) -> None:
        """Join consecutive (x, y) dots; a dotted line sets every other dot along its path."""
        step = 0
        previous = None
        for point in points:
            if point is None:  # a gap (a non-finite value)
                previous = None
                continue
            if previous is None:
                self.set(*point, series)
            else:
                (x0, y0), (x1, y1) = previous, point
                n = max(abs(x1 - x0), abs(y1 - y0), 1)
                for i in range(1, n + 1):
                    step += 1
                    if dotted and step % 2:
                        continue
                    self.set(round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n), series)
            previous = point

    def cells(self) -> list[list[tuple[str, int]]]:
        """Rows of (character, series bits) cells, top row first."""
        rows = []
        for cy in range(self.height):
            row = []
            for cx in range(self.width):
                bits = series = 0
                for dy in range(4):
                    for dx in range(2):
                        owner = self.dots[4 * cy + dy][2 * cx + dx]
                        if owner:
                            bits |= _DOTS[dy][dx]
                            series |= owner
                row.append((chr(0x2800 + bits) if bits else " ", series))
            rows.append(row)
        return rows


def _finite(values) -> list[float]:
    return [v for v in values or [] if isinstance(v, (int, float)) and math.isfinite(v)]


def _fraction(value: float, low: float, high: float) -> float:
    """Where `value` lies from `low` (0) to `high` (1). In halves: the difference of two floats
    near the largest (1.8e308) overflows to inf, the difference of their halves cannot."""
    return (value / 2 - low / 2) / (high / 2 - low / 2) if high > low else 0.5


def chart_range(train, validation) -> tuple[float, float]:
    """(low, high) of a chart of two curves: their finite values' range, widened around a flat
    curve (staying within the finite floats), (0, 1) when there is none."""
    values = _finite(train) + _finite(validation)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        margin = min(0.5 * (abs(low) or 1), sys.float_info.max - abs(low))
        low, high = low - margin, high + margin
    return low, high


def line_chart(train, validation, width: int, height: int) -> dict:
    """Lay out a train (solid) and validation (dotted) curve on a shared y range.

    Returns {"cells": rows of (char, series bits), "low": y at the bottom row, "high": y at the top}.
    """
    canvas = BrailleCanvas(width, height)
    low, high = chart_range(train, validation)
    x_dots, y_dots = 2 * width - 1, 4 * height - 1

    def points(series):
        n = len(series)
        out = []
        for i, v in enumerate(series):
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                out.append(None)
                continue
            x = round(i * x_dots / (n - 1)) if n > 1 else 0
            out.append((x, round(_fraction(v, low, high) * y_dots)))
        return out

    if validation:
        canvas.line(points(validation), VALIDATION, dotted=True)
    if train:
        canvas.line(points(train), TRAIN)
    return {"cells": canvas.cells(), "low": low, "high": high}


def resample(values, width: int) -> list[float]:
    """At most `width` values: the means of equal runs of epochs when there are more."""
    values = list(values)
    if len(values) <= width:
        return values
    out = []
    for i in range(width):
        chunk = [v for v in values[i * len(values) // width:(i + 1) * len(values) // width] if math.isfinite(v)]
        out.append(sum(v / len(chunk) for v in chunk) if chunk else math.nan)  # a sum of huge values overflows
    return out


def sparkline(values, width: int = 40, low: float | None = None, high: float | None = None) -> str:
    """One row of block characters, `low` (default: the least value) ▁, `high` █; a blank for a
    non-finite value. Give two lines the same low and high to compare them."""
    values = resample(values, width)
    finite = _finite(values)
    if not finite:
        return ""
    low = min(finite) if low is None else low
    high = max(finite) if high is None else high
    top = len(BLOCKS) - 1
    return "".join(
        " " if not math.isfinite(v) else BLOCKS[min(max(round(_fraction(v, low, high) * top), 0), top) if high > low else top // 2]
        for v in values
    )


# --- pictures --------------------------------------------------------------------------------------
def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def check_picture_suffix(path: Path) -> None:
    check_suffix(path, PICTURE_SUFFIXES, "--out")


def save_figure(data: dict, path, title: str = "") -> None:
    """One panel per metric, train (solid) against validation (dashed), saved as .png/.svg/.pdf."""
    path = Path(path)
    check_picture_suffix(path)
    unavailable = PlotUnavailable(f"matplotlib is not installed, so {path} was not written; {INSTALL_HINT}")
    if not matplotlib_available():
        raise unavailable
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError:  # installed but broken (a missing compiled dependency)
        raise unavailable from None

    names = list(data["curves"])
    figure = Figure(figsize=(4.2 * len(names), 3.4), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    epochs = data["epochs"]
    for ax, name in zip(axes, names):
        curve = data["curves"][name]
        if curve["train"] is not None:
            ax.plot(epochs, curve["train"], label="train", color="tab:blue", linewidth=1.6)
        if curve["validation"] is not None:
            ax.plot(epochs, curve["validation"], label="validation", color="tab:orange", linewidth=1.6, linestyle="--")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(frameon=False)
    if title:
        figure.suptitle(title)
    with atomic_write(path) as handle:
        figure.savefig(handle, format=path.suffix.lower()[1:], dpi=120)

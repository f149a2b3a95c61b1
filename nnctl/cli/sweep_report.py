"""What a person reads of a sweep: the live progress line, the trial table sorted by the metric,
and a terminal chart of the metric against each parameter. Builders return rich renderables;
user strings (parameter paths, values, errors) are escaped."""
from __future__ import annotations

import math
import time

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nnctl.cli.plotting import BrailleCanvas, _fraction


def _g(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def progress_text(data: dict) -> str:
    c, best = data["counts"], data["best"]
    text = (f"trials {c['complete'] + c['pruned']}/{data['target']} done · {c['running']} running · "
            f"{c['pruned']} pruned · {c['fail']} failed")
    if best is not None:
        text += f" · best {data['metric']} {_g(best['value'])} (trial {best['trial']})"
    return text


class SweepProgress:
    """The live line of a sweep: redrawn in place on a terminal, one line per change elsewhere."""

    def __init__(self, console, read, enabled: bool = True, every: float = 0.5):
        self.console, self.read, self.enabled, self.every = console, read, enabled, every
        self.live, self.last, self.shown = None, 0.0, None

    def __enter__(self):
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(Text(""), console=self.console, transient=True, auto_refresh=False)
            self.live.start()
        return self

    def refresh(self) -> None:
        if not self.enabled or time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        line = progress_text(self.read())
        if self.live is not None:
            self.live.update(Text(line), refresh=True)
        elif line != self.shown:
            self.console.print(escape(line))
        self.shown = line

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()


def sweep_data(data: dict, best_files: dict | None) -> dict:
    return {**data, "best_files": best_files}


def sweep_view(data: dict, best_files: dict | None):
    table = Table(title=f"Sweep {escape(data['study'])}: {escape(str(data['metric']))} ({data['goal']})", title_justify="left")
    table.add_column("trial", justify="right")
    for name in data["parameters"]:
        table.add_column(escape(name), justify="right", overflow="fold")  # key paths are long; fold, never cut
    for column in (str(data["metric"]), "best epoch", "state", "seconds"):
        table.add_column(escape(column), justify="right" if column != "state" else "left")
    for row in data["trials"]:
        state = row["state"] if not row["error"] else f"{row['state']}: {row['error'][:60]}"
        table.add_row(str(row["trial"]), *(escape(_g(row["params"].get(n))) for n in data["parameters"]),
                      _g(row["value"]), _g(row["best_epoch"]), escape(state), _g(row["seconds"] and round(row["seconds"], 1)))
    parts = [table, Text(progress_text(data))]
    parts += [chart for name in data["parameters"] if (chart := metric_chart(data, name)) is not None]
    return Group(*parts)


def metric_chart(data: dict, name: str, width: int = 40, height: int = 6):
    """The metric of each finished trial against one parameter's value: a braille scatter
    (numbers on a linear axis, log when they span over two decades; other values evenly spaced)."""
    points = [(row["params"].get(name), row["value"]) for row in data["trials"]
              if row["state"] in ("complete", "pruned") and isinstance(row["value"], (int, float)) and math.isfinite(row["value"])]
    if len(points) < 2:
        return None
    xs = [x for x, _ in points]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if numeric and min(xs) > 0 and max(xs) / min(xs) > 100:
        position, axis = [math.log10(x) for x in xs], "log"
    elif numeric:
        position, axis = [float(x) for x in xs], "linear"
    else:
        levels = sorted({str(x) for x in xs})
        position, axis = [float(levels.index(str(x))) for x in xs], "values " + ", ".join(levels)
    ys = [y for _, y in points]
    canvas = BrailleCanvas(width, height)
    for px, py in zip(position, ys):
        canvas.set(round(_fraction(px, min(position), max(position)) * (2 * width - 1)),
                   round(_fraction(py, min(ys), max(ys)) * (4 * height - 1)), 1)
    rows = ["".join(ch for ch, _ in row) for row in canvas.cells()]
    label = f"{data['metric']} against {name} ({axis}: {_g(min(xs) if numeric else xs[0])} .. {_g(max(xs) if numeric else xs[-1])})"
    lines = [f"{_g(max(ys)):>9} ┤{rows[0]}"] + [f"{'':>9} │{r}" for r in rows[1:-1]] + [f"{_g(min(ys)):>9} ┤{rows[-1]}"]
    return Text("\n".join([label, *lines]))


def save_sweep_figure(data: dict, path) -> None:
    """The metric of each finished trial against each parameter, one panel per parameter, with
    matplotlib (the `[plot]` extra; no pyplot, so no global backend); a log axis for a parameter
    whose values span over two decades."""
    from pathlib import Path

    from nnctl.cli.plotting import INSTALL_HINT, PlotUnavailable, matplotlib_available
    from nnctl.io.atomic import atomic_write

    path = Path(path)
    if not matplotlib_available():
        raise PlotUnavailable(f"matplotlib is not installed, so {path} was not written; {INSTALL_HINT}")
    from matplotlib.figure import Figure

    names = data["parameters"]
    figure = Figure(figsize=(4.0 * len(names), 3.4), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for state, color in (("complete", "tab:blue"), ("pruned", "tab:gray")):
            points = [(row["params"].get(name), row["value"]) for row in data["trials"]
                      if row["state"] == state and isinstance(row["value"], (int, float)) and math.isfinite(row["value"])]
            if points:
                xs = [x if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x) for x, _ in points]
                ax.scatter(xs, [y for _, y in points], color=color, label=state, s=18)
        numbers = [row["params"].get(name) for row in data["trials"] if isinstance(row["params"].get(name), (int, float))]
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) > 100:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(str(data["metric"]))
        ax.grid(True, alpha=0.3)
        ax.legend(frameon=False)
    figure.suptitle(f"{data['study']}: {data['metric']} ({data['goal']})")
    with atomic_write(path) as handle:
        figure.savefig(handle, format=path.suffix.lower()[1:], dpi=120)

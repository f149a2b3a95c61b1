"""Everything a person reads: rich tables and the live training progress.

Builders return rich renderables; `render_text` turns one into a string (tests use it). User
strings (layer names, paths) are escaped so that '[' in a name never becomes markup.
"""
from __future__ import annotations

import io
import math
import time

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nnctl.layers import count_params


def render_text(renderable, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def human_bytes(count: int) -> str:
    """Keras' 1024-based sizes: 52.00 B, 1.18 KB, 3.40 MB."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def _shape(shape) -> str:
    return "(" + ", ".join(["None"] + [str(n) for n in shape]) + ")"


# --- summary -------------------------------------------------------------------------------------
def summary_data(model, dtype: str) -> dict:
    itemsize = 4 if dtype == "float32" else 8
    layers = [
        {"name": name, "type": "input", "class": "InputLayer", "output_shape": [None, *shape], "params": 0, "connected_to": []}
        for name, shape in model.input_shapes.items()
    ]
    for node in model.nodes:
        layers.append({
            "name": node.name, "type": node.layer.type_name, "class": node.layer.keras_name,
            "output_shape": [None, *node.layer.output_shape], "params": count_params(node.layer),
            "connected_to": list(node.inputs),
        })
    total = sum(layer["params"] for layer in layers)
    return {
        "name": model.spec.name,
        "dtype": dtype,
        "layers": layers,
        "output": model.output,
        "total_params": total,
        "trainable_params": total,
        "non_trainable_params": 0,
        "total_bytes": total * itemsize,
        "weights": [{"name": key, "shape": list(w.shape)} for key, w in model.weight_specs],
    }


def summary_view(data: dict):
    table = Table(title=f'Model: "{escape(data["name"])}"', title_justify="left", show_lines=False)
    table.add_column("Layer (type)", no_wrap=True)
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    table.add_column("Connected to")
    for i, layer in enumerate(data["layers"]):
        shape = "(" + ", ".join("None" if n is None else str(n) for n in layer["output_shape"]) + ")"
        connected = ", ".join(f"{escape(n)}[0][0]" for n in layer["connected_to"]) or "-"
        table.add_row(f"{escape(layer['name'])} ({layer['class']})", shape, f"{layer['params']:,}", connected,
                      end_section=(layer["class"] == "InputLayer" and i + 1 < len(data["layers"]) and data["layers"][i + 1]["class"] != "InputLayer"))
    itemsize = data["total_bytes"] // data["total_params"] if data["total_params"] else 4
    totals = Text(
        f" Total params: {data['total_params']:,} ({human_bytes(data['total_bytes'])})\n"
        f" Trainable params: {data['trainable_params']:,} ({human_bytes(data['trainable_params'] * itemsize)})\n"
        f" Non-trainable params: {data['non_trainable_params']:,} ({human_bytes(0)})"
    )
    weights = Table(title="Trainable variables (weights-file keys)", title_justify="left")
    weights.add_column("Name", no_wrap=True)
    weights.add_column("Shape")
    weights.add_column("Count", justify="right")
    for w in data["weights"]:
        weights.add_row(escape(w["name"]), "(" + ", ".join(map(str, w["shape"])) + (",)" if len(w["shape"]) == 1 else ")"), f"{math.prod(w['shape']):,}")
    return Group(table, totals, Text(""), weights)


# --- training --------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return str(value)


def history_view(history: list[dict], title: str = "Training history"):
    table = Table(title=title, title_justify="left")
    keys = [k for k in history[0] if k not in ("seconds",)] if history else []
    for key in keys:
        table.add_column(key.replace("_", " ") if key != "samples_per_second" else "samples/s", justify="right")
    rows = history if len(history) <= 20 else history[:5] + [None] + history[-10:]
    for row in rows:
        if row is None:
            table.add_row(*["…"] * len(keys))
        else:
            table.add_row(*[_fmt(row.get(k, "")) if k != "samples_per_second" else f"{row[k]:,.0f}" for k in keys])
    return table


def saved_view(paths: dict):
    lines = [f"[bold]{label}[/bold]: {escape(str(path))}" for label, path in paths.items()]
    return Text.from_markup("\n".join(lines))


class LiveProgress:
    """A rich progress bar on a terminal; one line per epoch otherwise (CI logs, pipes)."""

    def __init__(self, console: Console, metric_names):
        self.console = console
        self.metric_names = list(metric_names)
        self.live = console.is_terminal
        self.bar = None
        self._last_refresh = 0.0

    def on_train_begin(self, epochs, steps, samples):
        self.epochs, self.steps, self.samples = epochs, steps, samples
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[logs]}"), TimeElapsedColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps, epoch=1, epochs=epochs, logs="")
        self.epoch_started = time.perf_counter()

    def _logs_text(self, logs, done_samples):
        parts = [f"{k} {_fmt(v)}" for k, v in logs.items() if k not in ("epoch", "seconds", "samples_per_second")]
        elapsed = time.perf_counter() - self.epoch_started
        if elapsed > 0 and done_samples:
            parts.append(f"{done_samples / elapsed:,.0f} samples/s")
        return " · ".join(parts)

    def on_step(self, epoch, step, read_logs):
        if not self.live:
            return
        now = time.perf_counter()
        if step == 1:
            self.epoch_started = now
        if now - self._last_refresh < 0.1 and step != self.steps:
            return
        self._last_refresh = now
        done = min(step * max(1, self.samples // max(1, self.steps)), self.samples)
        self.bar.update(self.task, completed=step, epoch=epoch, logs=self._logs_text(read_logs(), done))

    def on_epoch_end(self, epoch, logs):
        if not self.live:
            text = f"epoch {epoch}/{self.epochs} " + self._logs_text({k: v for k, v in logs.items()}, 0) + f" · {logs['samples_per_second']:,.0f} samples/s"
            self.console.print(text, highlight=False, markup=False)

    def close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# --- gradcheck -------------------------------------------------------------------------------------
def gradcheck_view(rows, loss: float, eps: float, rtol: float, atol: float):
    table = Table(title=f"Gradient check: autograd vs central differences (float64, eps={eps:g}), loss {loss:.6g}", title_justify="left")
    table.add_column("Name", no_wrap=True)
    for column, justify in ( ("Kind", "left"), ("Shape", "left"), ("Checked", "right"),
                            ("Max abs error", "right"), ("Max rel error", "right"), ("Result", "left")):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(escape(row.name), "dL/d" + ("weight" if row.kind == "weight" else "node"), str(row.shape),
                      f"{row.checked}/{row.total}", f"{row.max_abs_error:.2e}", f"{row.max_rel_error:.2e}",
                      "[green]pass[/green]" if row.passed else "[red]FAIL[/red]")
    failed = sum(not r.passed for r in rows)
    verdict = Text.from_markup(
        f"[green]All {len(rows)} gradients agree[/green] (|autograd - numeric| <= {atol:g} + {rtol:g}·|numeric|)"
        if not failed else f"[red]{failed} of {len(rows)} gradients disagree[/red] (tolerance {atol:g} + {rtol:g}·|numeric|)"
    )
    return Group(table, verdict)


# --- predict ---------------------------------------------------------------------------------------
def predictions_view(values, classes, columns, limit: int = 50):
    table = Table(title="Predictions", title_justify="left")
    table.add_column("#", justify="right")
    for name in columns:
        table.add_column(escape(name), justify="right")
    if classes is not None:
        table.add_column("class", justify="right")
    for i in range(min(len(values), limit)):
        cells = [f"{v:.6g}" for v in values[i]]
        if classes is not None:
            cells.append(str(int(classes[i])))
        table.add_row(str(i + 1), *cells)
    if len(values) > limit:
        table.caption = f"first {limit} of {len(values)} rows; use --output FILE for all"
    return table

"""Everything a person reads: rich tables and the live training progress.

Builders return rich renderables; `render_text` turns one into a string (tests use it). User
strings (layer names, paths) are escaped so that '[' in a name never becomes markup.
"""
from __future__ import annotations

import io
import os
import math
import time

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nnctl.errors import shape_text
from nnctl.model.layers.base import count_params


def render_text(renderable, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, legacy_windows=False, emoji=False)
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
    trainable = sum(count_params(node.layer, trainable=True) for node in model.nodes)
    return {
        "name": model.spec.name,
        "dtype": dtype,
        "layers": layers,
        "outputs": [{"name": o.name, "loss": o.loss.name, "loss_weight": o.weight, "metrics": [m.name for m in o.metrics]}
                    for o in model.spec.outputs],
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "total_bytes": total * itemsize,
        "weights": [{"name": key, "shape": list(w.shape), "trainable": w.trainable} for key, w in model.weight_specs],
    }


def preprocessing_data(fitted: dict | None) -> list:
    """The fitted preprocessing of a weights file as rows: column, kind, what was fitted."""
    from nnctl.data.preprocessing import Binary, Category

    rows = []
    for name, transform in (fitted or {}).items():
        if isinstance(transform, Category):
            rows.append({"column": name, "kind": f"category ({transform.encode})", "width": transform.width,
                         "fitted": {"vocabulary": transform.vocabulary, "fill": transform.fill, "unknown": transform.unknown}})
        elif isinstance(transform, Binary):
            rows.append({"column": name, "kind": "binary", "width": 1, "fitted": {"values": list(transform.values), "fill": transform.fill}})
        else:
            rows.append({"column": name, "kind": "numeric", "width": 1,
                         "fitted": {"center": transform.center, "scale": transform.scale, "fill": transform.fill}})
    return rows


def _fitted_text(fitted: dict) -> str:
    parts = []
    for key, value in fitted.items():
        if value is None:
            continue
        shown = ", ".join(map(str, value[:8])) + (", …" if len(value) > 8 else "") if isinstance(value, list) else _fmt(value) if isinstance(value, float) else str(value)
        parts.append(f"{key} {shown}")
    return escape("; ".join(parts))


def summary_view(data: dict):
    table = Table(title=f'Model: "{escape(data["name"])}"', title_justify="left", show_lines=False)
    table.add_column("Layer (type)", no_wrap=True)
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    table.add_column("Connected to")
    for i, layer in enumerate(data["layers"]):
        shape = shape_text(layer["output_shape"][1:])
        connected = ", ".join(f"{escape(n)}[0][0]" for n in layer["connected_to"]) or "-"
        table.add_row(f"{escape(layer['name'])} ({layer['class']})", shape, f"{layer['params']:,}", connected,
                      end_section=(layer["class"] == "InputLayer" and i + 1 < len(data["layers"]) and data["layers"][i + 1]["class"] != "InputLayer"))
    itemsize = data["total_bytes"] // data["total_params"] if data["total_params"] else 4
    totals = Text(
        f" Total params: {data['total_params']:,} ({human_bytes(data['total_bytes'])})\n"
        f" Trainable params: {data['trainable_params']:,} ({human_bytes(data['trainable_params'] * itemsize)})\n"
        f" Non-trainable params: {data['non_trainable_params']:,} ({human_bytes(data['non_trainable_params'] * itemsize)})"
    )
    parts = [table, totals]
    if len(data["outputs"]) > 1:
        described = [f"{escape(o['name'])} ({escape(o['loss'])}, weight {o['loss_weight']:g})" for o in data["outputs"]]
        parts.append(Text.from_markup(f" Outputs: {', '.join(described)}"))
    for trainable, title in ((True, "Trainable variables"), (False, "Non-trainable variables")):
        rows = [w for w in data["weights"] if w["trainable"] == trainable]
        if not rows and not trainable:
            continue
        weights = Table(title=title, title_justify="left")
        weights.add_column("Name (weights-file key)", no_wrap=True)
        weights.add_column("Shape")
        weights.add_column("Count", justify="right")
        for w in rows:
            weights.add_row(escape(w["name"]), shape_text(w["shape"], batch=False), f"{math.prod(w['shape']):,}")
        parts += [Text(""), weights]
    if data.get("preprocessing"):
        fitted = Table(title="Fitted preprocessing (in the weights file)", title_justify="left")
        for column in ("Column", "Kind", "Width", "Fitted on the training rows"):
            fitted.add_column(column, justify="right" if column == "Width" else "left")
        for row in data["preprocessing"]:
            fitted.add_row(escape(row["column"]), row["kind"], str(row["width"]), _fitted_text(row["fitted"]))
        parts += [Text(""), fitted]
    return Group(*parts)


# --- training --------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return str(value)


def _fmt_log(key, value) -> str:
    """A logged value; the learning rate keeps 4 significant digits (0.00125, not 0.0013)."""
    return f"{value:.4g}" if key == "lr" and isinstance(value, float) else _fmt(value)


# Beyond this many columns (several outputs log many values) the validation values get a table of
# their own: one table that wide would crop every number to a few digits.
MAX_HISTORY_COLUMNS = 10


def history_view(history: list[dict], title: str = "Training history"):
    from nnctl.io.records import history_columns

    keys = [k for k in history_columns(history) if k not in ("seconds",)]
    validation = [k for k in keys if k.startswith("val_")]
    if len(keys) > MAX_HISTORY_COLUMNS and validation:
        return Group(_history_table(history, title, [k for k in keys if k not in validation]),
                     _history_table(history, "Validation history", ["epoch", *validation]))
    return _history_table(history, title, keys)


def _history_table(history: list[dict], title: str, keys: list):
    table = Table(title=title, title_justify="left")
    for key in keys:
        table.add_column(key.replace("_", " ") if key != "samples_per_second" else "samples/s", justify="right")
    rows = history if len(history) <= 20 else history[:5] + [None] + history[-10:]
    for row in rows:
        if row is None:
            table.add_row(*["…"] * len(keys))
        else:
            table.add_row(*[_fmt_log(k, row.get(k, "")) if k != "samples_per_second" else f"{row[k]:,.0f}" if k in row else "" for k in keys])
    return table


def training_end_view(stopped_early: dict | None, restored_best: dict | None):
    """Why the run ended early and whose weights it kept; None when there is nothing to say."""
    lines = []
    if stopped_early:
        lines.append(f"Stopped early at epoch {stopped_early['epoch']}: {stopped_early['reason']}.")
    if restored_best:
        lines.append(f"Restored the weights of epoch {restored_best['epoch']} "
                     f"(best {restored_best['monitor']} {_fmt(restored_best['value'])}).")
    return Text("\n".join(lines)) if lines else None


def saved_view(paths: dict):
    lines = [f"[bold]{label}[/bold]: {escape(str(path))}" for label, path in paths.items()]
    return Text.from_markup("\n".join(lines))


def training_data(result) -> dict:
    """`nnctl train --json`: a RunResult (nnctl.train.run) as plain data."""
    files = result.files
    return {
        "name": result.spec.name, "epochs": len(result.history), "train_samples": result.train_samples,
        "validation_samples": result.validation_samples, "final": result.final,
        "samples_per_second": result.samples_per_second, "lr": result.history[-1]["lr"] if result.history else None,
        "stopped_early": result.history.stopped_early, "best": result.best,
        "test": result.test, "test_samples": result.test_samples,
        **({"preprocessing": result.preprocessing} if result.preprocessing else {}),
        **({"notes": result.notes} if result.notes else {}),
        "weights": str(files.weights), "history": str(files.history), "checkpoint": str(files.checkpoint),
    }


def training_view(result):
    """(the history table, curves and notes; the saved files) of a finished run: the second is
    shown even under --quiet."""
    history = result.history
    parts = [history_view(history), loss_sparkline(history)]
    end = training_end_view(history.stopped_early, history.best if result.restored_best else None)
    if end is not None:
        parts.append(end)
    parts += [Text(f"note: {note}") for note in result.notes]
    for file, report in result.preprocessing.items():
        if preprocessing_note(report):
            parts.append(Text(f"preprocessing of {os.path.normpath(file)}: ") + Text.from_markup(preprocessing_note(report)))
    if result.test is not None:
        parts += [history_view([result.test], title="Test set"),
                  Text(f"evaluated once after training on {result.test_file} ({result.test_samples} samples)")]
    paths = {"weights": result.files.weights}
    if result.best is not None:
        best = result.best
        paths[f"best weights (epoch {best['epoch']}, {best['monitor']} {best['value']:.4g})"] = result.files.best
    return Group(*parts), saved_view({**paths, "history": result.files.history, "checkpoint": result.files.checkpoint})


class LiveProgress:
    """A rich progress bar on a terminal; one line per epoch otherwise (CI logs, pipes)."""

    def __init__(self, console: Console):
        self.console = console
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
        parts = [f"{k} {_fmt_log(k, v)}" for k, v in logs.items() if k not in ("epoch", "seconds", "samples_per_second")]
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
def preprocessing_note(report: dict | None) -> str:
    """'filled 2 missing cells (age 2) · 1 unknown value (city 1) · dropped 0 rows', or ''."""
    if not report:
        return ""
    parts = []
    for key, what in (("filled", "missing cell"), ("unknown", "unknown value")):
        total = sum(report[key].values())
        if total:
            detail = ", ".join(f"{name} {count}" for name, count in report[key].items())
            parts.append(f"{'filled ' if key == 'filled' else ''}{total} {what}{'s' if total != 1 else ''} ({detail})")
    if report["dropped_rows"]:
        parts.append(f"dropped {report['dropped_rows']} row{'s' if report['dropped_rows'] != 1 else ''} with a missing cell")
    return escape(" · ".join(parts))


def predictions_json(columns, values, classes: dict, report, output) -> dict:
    """`predict --json`: a one-output model's classes as a list (null without), several outputs' by
    class column."""
    if set(classes) <= {"class"}:
        classes = classes["class"].tolist() if classes else None
    else:
        classes = {name: labels.tolist() for name, labels in classes.items()}
    return {"columns": columns, "outputs": values.tolist(), "classes": classes,
            "output": str(output) if output else None, **({"preprocessing": report} if report else {})}


def predictions_view(columns, values, classes: dict, report=None, limit: int = 50):
    table = Table(title="Predictions", title_justify="left")
    table.add_column("#", justify="right")
    for name in [*columns, *classes]:
        table.add_column(escape(name), justify="right")
    for i in range(min(len(values), limit)):
        # Readable at a glance; --output and --json keep every digit.
        cells = [f"{v:.4f}" if 0 <= v <= 1 else f"{v:.6g}" for v in values[i].reshape(-1)]
        table.add_row(str(i + 1), *cells, *(escape(str(labels[i])) for labels in classes.values()))
    captions = [f"first {limit} of {len(values)} rows; use --output FILE for all"] if len(values) > limit else []
    captions += [preprocessing_note(report)] if preprocessing_note(report) else []
    table.caption = "; ".join(captions) or None
    return table


# --- evaluate --------------------------------------------------------------------------------------
def evaluation_view(data: dict):
    parts = [Text.assemble(("Evaluation of ", "bold"), (data["name"], "bold"), f" on {data['data']}: {data['samples']:,} samples, all rows")]
    several = len(data["outputs"]) > 1
    losses = {("loss" if not several else f"{o['name']}_loss"): o["loss_name"] for o in data["outputs"]}
    table = Table()
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for key, value in data["metrics"].items():
        label = f"{key} ({losses[key]})" if key in losses else f"{key} (weighted sum)" if key == "loss" else key
        table.add_row(escape(label), _fmt(value))
    parts.append(table)
    for output in data["outputs"]:
        if output["classification"]:
            parts += _classification_view(output["classification"], output["name"] if several else None)
    return Group(*parts)


def _classification_view(cls: dict, output: str | None) -> list:
    """The confusion matrix and per-class scores of one output (named when there are several)."""
    of = f" of output {output}" if output is not None else ""
    parts = [Text(""), Text.assemble(("Confusion matrix", "bold"), escape(of), " (rows: true class, columns: predicted class)")]
    matrix = Table()
    matrix.add_column("true \\ pred", justify="right")
    names = [escape(name) for name in cls["class_names"]]
    for name in names:
        matrix.add_column(name, justify="right")
    for i, row in enumerate(cls["confusion_matrix"]):
        matrix.add_row(names[i], *[f"[bold]{n}[/bold]" if i == j and n else str(n) for j, n in enumerate(row)])
    parts += [matrix, Text(""), Text.assemble(("Per-class scores", "bold"), escape(of), f" (accuracy {cls['accuracy']:.4f})")]
    scores = Table()
    for column in ("Class", "Precision", "Recall", "F1", "Support"):
        scores.add_column(column, justify="left" if column == "Class" else "right")
    for i, row in enumerate(cls["per_class"]):
        scores.add_row(names[row["class"]], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", f"{row['support']:,}",
                       end_section=i == len(cls["per_class"]) - 1)
    for name, row in cls["averages"].items():
        scores.add_row(f"{name} avg", f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", f"{row['support']:,}")
    parts.append(scores)
    return parts


# --- curves: terminal chart and sparkline -------------------------------------------------------------
TRAIN_STYLE, VALIDATION_STYLE, BOTH_STYLE = "cyan", "magenta", "bold"


class CurvesChart:
    """Train (solid) and validation (dotted) curves per metric, drawn in braille as wide as the console."""

    def __init__(self, data: dict, height: int = 8, max_width: int = 100):
        self.data, self.height, self.max_width = data, height, max_width

    def __rich_console__(self, console, options):
        from nnctl.cli.plotting import TRAIN, VALIDATION, chart_range, line_chart

        epochs = self.data["epochs"]
        for index, (name, curve) in enumerate(self.data["curves"].items()):
            pad = max(len(_fmt(bound)) for bound in chart_range(curve["train"], curve["validation"]))
            width = max(10, min(self.max_width, options.max_width) - pad - 3)
            chart = line_chart(curve["train"], curve["validation"], width, self.height)
            heading = Text(name, style="bold")
            legend = []
            if curve["train"] is not None:
                legend.append(Text.assemble(("━━", TRAIN_STYLE), " train (solid)"))
            if curve["validation"] is not None:
                legend.append(Text.assemble(("┅┅", VALIDATION_STYLE), " validation (dotted)"))
            yield Text.assemble(heading, "  ", *sum(([item, "   "] for item in legend), [])[:-1]) if legend else heading
            for r, row in enumerate(chart["cells"]):
                label = _fmt(chart["high"]) if r == 0 else _fmt(chart["low"]) if r == len(chart["cells"]) - 1 else ""
                line = Text(label.rjust(pad) + (" ┤" if label else " │"))
                for char, series in row:
                    style = {TRAIN: TRAIN_STYLE, VALIDATION: VALIDATION_STYLE}.get(series, BOTH_STYLE if series else "")
                    line.append(char, style=style)
                yield line
            yield Text(" " * pad + " └" + "─" * width)
            first, last = str(epochs[0]), f"{epochs[-1]} epoch" + ("s" if len(epochs) != 1 else "")
            yield Text(" " * (pad + 2) + first + last.rjust(max(width - len(first), len(last) + 1)))
            if index + 1 < len(self.data["curves"]):
                yield Text("")


def curves_view(data: dict, height: int = 8):
    return CurvesChart(data, height)


def loss_sparkline(history: list[dict], width: int = 40):
    """One line per loss curve (train, and validation when logged): first value, sparkline, last value."""
    from nnctl.cli.plotting import sparkline

    lines = []
    curves = {key: [row[key] for row in history if isinstance(row.get(key), (int, float))] for key in ("loss", "val_loss")}
    curves = {key: values for key, values in curves.items() if values}
    finite = [v for values in curves.values() for v in values if math.isfinite(v)]
    # A loss that falls by 10x or more is drawn on a log scale, or its first epochs flatten the rest.
    log = bool(finite) and min(finite) > 0 and max(finite) >= 10 * min(finite)
    scaled = {key: [math.log10(v) if log and v > 0 else v for v in values] for key, values in curves.items()}
    points = [v for values in scaled.values() for v in values if math.isfinite(v)]
    low, high = (min(points), max(points)) if points else (None, None)  # one scale for both lines
    pad = max((len(k) for k in curves), default=0)
    for key, values in curves.items():
        lines.append(Text.assemble((key.ljust(pad), "bold"), "  ", _fmt(values[0]), " ",
                                   (sparkline(scaled[key], width, low, high), TRAIN_STYLE if key == "loss" else VALIDATION_STYLE),
                                   " ", _fmt(values[-1]), f"  ({len(values)} epoch{'s' if len(values) != 1 else ''}"
                                   + (", log scale)" if log else ")")))
    return Group(*lines)


# --- gradcheck --explain -----------------------------------------------------------------------------
def _g(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _vector(values, limit: int = 8) -> str:
    shown = ", ".join(_g(v) for v in values[:limit])
    return "[" + shown + (f", … {len(values) - limit} more" if len(values) > limit else "") + "]"


def explain_view(data: dict, limit: int = 12):
    """The one-sample backprop walkthrough: forward values, then dL/d(node) and dL/dW three ways."""
    head = Text.assemble(
        (f"Backprop walkthrough of {data['name']}", "bold"), " for one sample (float64, central differences with eps = ",
        f"{data['eps']:g})\n", "inputs: ", ", ".join(f"{k} = {_vector(v)}" for k, v in data["inputs"].items()),
        f"   targets: y = {_vector(data['targets'])}\n",
        f"loss ({data['loss_name']}): L = {data['loss']:.6g}",
    )
    if data["textbook"]:
        head.append("\nhand-derived: dL/da = a - y at the output, dL/dz = dL/da ⊙ a(1 - a) (sigmoid),\n"
                    "              dL/da = dL/dz_next · W_nextᵀ (hidden), dL/dW = a_prevᵀ · dL/dz, dL/db = dL/dz")
    else:
        head.append("\nhand-derived formulas are shown for dense+sigmoid layers under half_squared_error only")
    forward = Table(title="Forward pass", title_justify="left")
    for column in ("Node", "Symbol", "Computed as", "Value"):
        forward.add_column(column, overflow="fold")
    for node in data["nodes"]:
        forward.add_row(escape(node["name"]), node["symbol"], escape(node["forward"]), _vector(node["value"], limit))

    def gradient_table(title, rows, what):
        table = Table(title=title, title_justify="left")
        for column, justify in (("Gradient", "left"), ("i", "right"), (f"{what} value", "right"), ("autograd", "right"),
                                ("finite diff.", "right"), ("hand-derived", "right"), ("formula", "left"), ("|autograd - fd|", "right")):
            table.add_column(column, justify=justify, no_wrap=True)
        for r, row in enumerate(rows):
            count = len(row["autograd"])
            shape = row.get("shape")
            for i in range(min(count, limit)):
                index = str(i) if not shape or len(shape) < 2 else str(tuple(int(k) for k in divmod(i, shape[-1])))
                fd = row["numeric"][i]
                err = "-" if fd is None or math.isnan(fd) else f"{abs(row['autograd'][i] - fd):.1e}"
                table.add_row(
                    f"dL/d{row['symbol']}" if i == 0 else "", index, _g(row["value"][i]), _g(row["autograd"][i]), _g(fd),
                    _g(row["formula"][i]) if row["formula"] is not None else "-",
                    escape(row["formula_text"] or "-") if i == 0 else "", err,
                    end_section=(i == min(count, limit) - 1 and r + 1 < len(rows) and count <= limit),
                )
            if count > limit:
                table.add_row("", "…", f"{count - limit} more", "", "", "", "", f"max {row['max_abs_error']:.1e}",
                              end_section=r + 1 < len(rows))
        return table

    nodes = gradient_table("Backward pass, from the output back: dL/d(node)", list(reversed(data["nodes"])), "node")
    weight_names = ", ".join(f"{w['symbol']} = {w['name']}" for w in data["weights"])
    weights = gradient_table(f"Weight gradients ({weight_names})", data["weights"], "weight")
    failed = [n["name"] for n in data["nodes"] + data["weights"] if not n["passed"]]
    verdict = Text.from_markup(
        f"[green]autograd, finite differences{' and the hand-derived formulas' if data['textbook'] else ''} agree[/green] "
        f"(|difference| <= {data['atol']:g} + {data['rtol']:g}·|reference|)"
        if not failed else f"[red]disagreement at {escape(', '.join(failed))}[/red]"
    )
    return Group(head, Text(""), forward, Text(""), nodes, Text(""), weights, verdict)


# --- time --------------------------------------------------------------------------------------------
def timing_view(data: dict):
    threads = data["threads"]
    head = Text.assemble(("Per-layer time of a training step", "bold"), f": {data['name']}, batch {data['batch_size']}, "
                         f"mean of {data['iterations']} steps after {data['warmup']} warm-up, {data['backend']} {data['dtype']}"
                         + (f", {threads} threads for products and loops" if threads and threads > 1 else ""))
    table = Table()
    for column, justify in (("Layer (type)", "left"), ("Forward ms", "right"), ("Backward ms", "right"), ("Total ms", "right"), ("Share", "right")):
        table.add_column(column, justify=justify)
    for row in data["layers"]:
        label = f"{escape(row['name'])} ({row['class']})" if row["class"] != "Loss" else f"loss ({escape(row['type'])})"
        table.add_row(label, f"{row['forward_ms']:.4f}", f"{row['backward_ms']:.4f}", f"{row['total_ms']:.4f}", f"{row['share']:.1%}",
                      end_section=row is data["layers"][-1])
    step = data["step_ms"]
    share = (lambda ms: f"{ms / step:.1%}" if step else "-")
    update = f"optimizer update ({data['optimizer']}{', one compiled loop' if data['optimizer_compiled'] else ''})"
    table.add_row(update, "", "", f"{data['update_ms']:.4f}", share(data["update_ms"]))
    table.add_row("step overhead", "", "", f"{data['other_ms']:.4f}", share(data["other_ms"]), end_section=True)
    table.add_row("[bold]whole step[/bold]", f"{data['forward_ms']:.4f}", f"{data['backward_ms']:.4f}", f"[bold]{step:.4f}[/bold]", "100.0%")
    rate = Text(f" {data['batch_size'] * 1000 / step:,.0f} samples/s at this batch size" if step else "")
    return Group(head, table, rate)


# --- config, init, written files ------------------------------------------------------------------------
def config_yaml(resolved: dict, source: str | None = None) -> str:
    """The resolved spec as YAML (leaf lists and mappings inline), keys in nnctl's order."""
    import yaml

    head = f"# {source} with every default filled in (nnctl config)\n" if source else ""
    return head + yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)


def init_view(facts: dict, path):
    classes = facts["classes"]
    what = f"classification into {len(classes)} classes" if facts["task"] == "classification" else "regression"
    table = Table(title=f"Wrote {escape(str(path))}: {what} of {escape(repr(facts['target']))}", title_justify="left")
    table.add_column("Column (what nnctl saw and chose)")
    for note in facts["columns"]:
        table.add_row(escape(note))
    lines = [table, Text(f"{facts['width']} input values from {len(facts['inputs'])} columns"
                         + (f"; classes: {', '.join(classes)}" if classes else ""))]
    lines.append(Text(f"Next: nnctl summary {path}   then: nnctl train {path}"))
    return Group(*lines)

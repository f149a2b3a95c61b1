"""How `nnctl export` reads: the file's interface and, when verified, onnxruntime against nnctl."""
from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nnctl.cli.report import human_bytes
from nnctl.errors import shape_text


def export_view(result):
    """Inputs and outputs of the written file, then one row per output: max errors and the verdict."""
    exported = result.exported
    ports = Table(title=f"ONNX model (opset {exported.opset}, {human_bytes(result.size)})", title_justify="left")
    for column in ("Port", "Name", "Type", "Shape"):
        ports.add_column(column)
    for kind, group in (("input", exported.inputs), ("output", exported.outputs)):
        for port in group:
            ports.add_row(kind, escape(port.name), port.dtype, shape_text(port.shape, batch=False))
    parts = [ports]
    if result.errors is None:
        parts.append(Text("Not verified (--no-verify)."))
    else:
        source = f"rows of {escape(result.sample)}" if result.sample else "seeded random samples (the spec has no data)"
        # A line of its own: a title would wrap at the table's width.
        parts.append(Text.from_markup(f"onnxruntime vs nnctl predict on {result.rows} {source}, at batch 1 and {result.rows}:"))
        errors = Table()
        for column, justify in (("Output", "left"), ("Max abs error", "right"), ("Max rel error", "right"), ("Tolerance", "right"), ("Result", "left")):
            errors.add_column(column, justify=justify)
        for error in result.errors:
            tolerance = "exact" if error.rtol == error.atol == 0 else f"{error.atol:g} + {error.rtol:g}·|nnctl|"
            errors.add_row(escape(error.name), f"{error.max_abs:.2e}", f"{error.max_rel:.2e}", tolerance,
                           "[green]pass[/green]" if error.passed else "[red]FAIL[/red]")
        parts.append(errors)
        failed = [e.name for e in result.errors if not e.passed]
        if failed:
            parts.append(Text.from_markup(f"[red]onnxruntime disagrees with nnctl on {escape(', '.join(failed))}[/red]: "
                                          f"{escape(str(result.path))} was not written"))
    if result.passed:
        parts.append(Text(f"model: {result.path}"))
    return Group(*parts)

"""The layer graph as a picture, like Keras' plot_model(show_shapes=True).

`to_dot` writes Graphviz DOT text from `report.summary_data`: one box per input and layer
("name (Class)" over its input and output shapes), one edge per `from` reference. `write_graph`
saves .dot/.gv as is and turns .svg/.png/.pdf into pictures with Graphviz's `dot` program.
"""
from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

from nnctl.errors import MissingTool, Problem, shape_text
from nnctl.io import paths
from nnctl.io.atomic import atomic_write

DOT_SUFFIXES = (".dot", ".gv")
PICTURE_SUFFIXES = (".svg", ".png", ".pdf")
SUFFIXES = DOT_SUFFIXES + PICTURE_SUFFIXES
INSTALL_HINT = "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz), or write a .dot file instead"


def _shape(shape) -> str:
    """A summary_data shape ([None, *per-sample]) as Keras prints it."""
    return shape_text(shape[1:])


def _quote(name: str) -> str:
    """A DOT identifier in double quotes: any name is safe."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(layer: dict, input_shapes: list) -> str:
    """An HTML-like label: name (Class) on top, then input and output shapes (Keras' layout)."""
    if not input_shapes:
        input_text = _shape(layer["output_shape"])
    elif len(input_shapes) == 1:
        input_text = _shape(input_shapes[0])
    else:
        input_text = "[" + ", ".join(_shape(s) for s in input_shapes) + "]"
    title = html.escape(f"{layer['name']} ({layer['class']})", quote=True)
    return (
        '<<table border="0" cellborder="1" cellspacing="0" cellpadding="4">'
        f'<tr><td colspan="2" bgcolor="#dbe8f7"><b>{title}</b></td></tr>'
        f'<tr><td>Input shape</td><td>Output shape</td></tr>'
        f'<tr><td>{html.escape(input_text)}</td><td>{html.escape(_shape(layer["output_shape"]))}</td></tr>'
        "</table>>"
    )


def to_dot(summary: dict) -> str:
    """DOT text for a model described by `report.summary_data` (top-to-bottom, like plot_model)."""
    shapes = {layer["name"]: layer["output_shape"] for layer in summary["layers"]}
    lines = [
        f"digraph {_quote(summary['name'])} {{",
        "  rankdir=TB;",
        '  graph [fontname="Helvetica", nodesep=0.4, ranksep=0.5];',
        '  node [shape=plaintext, fontname="Helvetica", fontsize=11];',
        '  edge [arrowsize=0.7];',
    ]
    for layer in summary["layers"]:
        label = _label(layer, [shapes[name] for name in layer["connected_to"]])
        lines.append(f"  {_quote(layer['name'])} [label={label}];")
    for layer in summary["layers"]:
        for source in layer["connected_to"]:
            lines.append(f"  {_quote(source)} -> {_quote(layer['name'])};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def check_suffix(path: Path) -> None:
    paths.check_suffix(path, SUFFIXES, "--graph")


def write_graph(dot_text: str, path: Path) -> None:
    """Save DOT text, or the picture `dot` draws from it, at `path` (atomically)."""
    path = Path(path)
    check_suffix(path)
    suffix = path.suffix.lower()
    if suffix in DOT_SUFFIXES:
        with atomic_write(path, "w") as handle:
            handle.write(dot_text)
        return
    program = shutil.which("dot")
    if program is None:
        raise MissingTool(Problem(f"--graph: drawing a {suffix} picture needs Graphviz's `dot` program, which is not installed; {INSTALL_HINT}", str(path)))
    try:
        done = subprocess.run([program, f"-T{suffix[1:]}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingTool(Problem(f"--graph: Graphviz's `dot` could not be run ({exc})", str(path))) from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        raise MissingTool(Problem(f"--graph: Graphviz's `dot` failed: {message}", str(path)))
    with atomic_write(path) as handle:
        handle.write(done.stdout)

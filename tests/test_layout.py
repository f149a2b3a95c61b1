"""The house's layout: each folder of nnctl imports only folders below it, and an install ships them all.

The order, lowest first (the README's "Layout" section says what lives in each):
the package root (errors, options), core, io, data, model, train, spec, diagnostics, export, sweep, cli.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnctl"
LAYERS = ["", "core", "io", "data", "model", "train", "spec", "diagnostics", "export", "sweep", "cli"]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    """The folder under nnctl/ that `module` lives in ('' for the package root's own modules)."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "" if parts[-1] != "__main__" else "cli"


def _imports(path: Path, module: str):
    """Every nnctl module `path` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("nnctl"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnctl"):
            # `from nnctl.core import ops` imports nnctl.core.ops
            yield from (f"{node.module}.{a.name}" if (PACKAGE / Path(*node.module.split(".")[1:]) / f"{a.name}.py").exists()
                        else node.module for a in node.names)


def test_every_folder_is_in_the_layer_order():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS[1:])


def test_no_module_imports_a_higher_layer():
    upward = []
    for path, module in _modules():
        own = LAYERS.index(_layer(module))
        for imported in _imports(path, module):
            if LAYERS.index(_layer(imported)) > own:
                upward.append(f"{module} imports {imported}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_layer_test_sees_an_upward_import():
    """The walk above would catch core importing cli (so it cannot pass by seeing nothing)."""
    assert LAYERS.index(_layer("nnctl.cli.commands")) > LAYERS.index(_layer("nnctl.core.ops"))
    found = list(_imports(PACKAGE / "cli" / "commands.py", "nnctl.cli.commands"))
    assert any(_layer(m) == "spec" for m in found) and any(_layer(m) == "train" for m in found)


@pytest.mark.slow
def test_a_wheel_holds_every_subpackage(tmp_path):
    """A non-editable build ships every folder of nnctl (the wheel `pip install .` installs)."""
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, env=env,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("nnctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(path.relative_to(ROOT)) for path, _ in _modules()}
    assert expected <= names, sorted(expected - names)

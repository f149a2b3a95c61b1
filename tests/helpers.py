"""Shared test helpers: write specs and data into a temporary folder, run the CLI."""
from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from nnctl.cli.commands import cli

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

TWO_TOWER = """\
name: two_tower
seed: 0
inputs:
  x: [2]
layers:
  - {name: dense1, type: dense, units: 1, from: x}
  - {name: dense2, type: dense, units: 2, from: x}
  - {name: concat, type: concat, from: [dense1, dense2]}
  - {name: dense3, type: dense, units: 1, from: concat}
outputs: dense3
loss: mse
metrics: [mae]
optimizer: {type: adam, learning_rate: 0.01}
data:
  path: data.csv
  inputs: {x: [x1, x2]}
  targets: [y]
  validation_split: 0.2
train: {epochs: 3, batch_size: 4, shuffle: true}
"""

TWO_TOWER_CSV = "x1,x2,y\n" + "".join(f"{(i % 7) / 3 - 1},{(i * 3 % 5) / 2 - 1},{(i % 4) / 2}\n" for i in range(20))


def write_project(folder: Path, spec: str = TWO_TOWER, data: str | None = TWO_TOWER_CSV, name="spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (folder / "data.csv").write_text(data)
    path = folder / name
    path.write_text(textwrap.dedent(spec))
    return path


def run(*args, cwd: Path | None = None):
    """Invoke `nnctl ARGS` in-process; returns click's Result (exit_code, stdout, stderr), after
    checking that it reported no internal error."""
    runner = CliRunner()
    with contextlib.chdir(cwd or Path.cwd()):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    # No user-facing failure is an nnctl bug: every harness that runs the CLI checks it here.
    assert "Internal error" not in result.output, result.output
    return result


def run_json(*args, cwd=None):
    result = run(*args, "--json", cwd=cwd)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def table_bytes(table, kind: str, rows: int) -> bytes:
    """`table` (pyarrow) in pieces of `rows` rows: a Parquet file's row groups ("parquet"), a Feather
    file's record batches ("feather") or an Arrow IPC stream's ("stream")."""
    import pyarrow
    import pyarrow.feather
    import pyarrow.ipc
    import pyarrow.parquet

    out = pyarrow.BufferOutputStream()
    if kind == "parquet":
        pyarrow.parquet.write_table(table, out, row_group_size=rows)
    elif kind == "feather":
        pyarrow.feather.write_feather(table, out, chunksize=rows)
    else:
        with pyarrow.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table, max_chunksize=rows)
    return out.getvalue().to_pybytes()

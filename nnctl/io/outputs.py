"""Output paths: a command never writes over one of the files it reads."""
from __future__ import annotations

from pathlib import Path

from nnctl.errors import Problem, UsageError


def refuse_inputs(output, flag: str, inputs: dict) -> None:
    """UsageError when `output` is one of `inputs` ({what: path}), compared as resolved paths
    (so ./d.csv, d.csv and a symlink to it are one file)."""
    if output is None:
        return
    target = Path(output).resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise UsageError(Problem(f"{flag}: expected a path that is not one of this command's inputs, received {what}", str(output)))

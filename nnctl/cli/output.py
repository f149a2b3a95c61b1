"""How commands print: tables through rich, JSON for scripts, errors on stderr.

Output may be lost, never the run: a reader that went away (`nnctl train | head`) silences the
stream for the rest of the run, and a character the stream's encoding lacks prints as '?'.
"""
from __future__ import annotations

import contextlib
import sys

import click

from nnctl.errors import NnctlError


class _Stream:
    """sys.stdout or sys.stderr as the commands print to them, looked up at each write (tests swap
    them). Output may be lost, never the run: a reader that went away (nnctl train | head) silences
    the stream for the rest of the run, and a character its encoding lacks (PYTHONIOENCODING=latin-1)
    is printed as '?'."""

    def __init__(self, name: str):
        self.name = name

    def _target(self):
        stream = getattr(sys, self.name)
        # While a progress bar is live, rich puts a proxy that prints through our console in sys.stdout:
        # writing to it from here would come back here.
        return getattr(stream, "rich_proxied_file", stream)

    def __getattr__(self, attribute):
        return getattr(self._target(), attribute)

    def write(self, text: str) -> int:
        stream = self._target()
        try:
            try:
                return stream.write(text)
            except UnicodeEncodeError:
                encoding = stream.encoding or "ascii"
                return stream.write(text.encode(encoding, "replace").decode(encoding))
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._target().flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        import os

        # Onto /dev/null at the descriptor: what is still buffered, and Python's flush at exit, then
        # go nowhere instead of failing again. A stream without a descriptor (a test's) has no exit flush.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._target().fileno())
            os.close(devnull)


STDOUT, STDERR = _Stream("stdout"), _Stream("stderr")


def print_error(exc: NnctlError) -> None:
    click.echo(f"Error ({exc.kind}):" if len(exc.problems) > 1 else f"Error ({exc.kind}): {exc.problems[0]}", file=STDERR)
    if len(exc.problems) > 1:
        for problem in exc.problems:
            click.echo(f"  {problem}", file=STDERR)


def console():
    from rich.console import Console

    # Off a terminal (pipes, CI logs) rich would wrap at 80 columns; tables read better wider.
    return Console(file=STDOUT, highlight=False, emoji=False, width=None if sys.stdout.isatty() else 120)


def quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))


def show(renderable):
    """Tables and charts: not shown under --quiet."""
    if not quiet():
        console().print(renderable)


def print_path(label, path):
    """A file a command wrote: shown even under --quiet."""
    click.echo(f"{label}: {path}", file=STDOUT)


def _json_safe(value):
    """`value` with every NaN and infinity as None: JSON has no such numbers (json.dumps would
    write NaN, which strict parsers refuse)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def emit_json(data):
    import json  # here: the tables' commands (`nnctl summary`) start faster without it

    click.echo(json.dumps(_json_safe(data), indent=2, allow_nan=False), file=STDOUT)

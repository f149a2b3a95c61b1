"""Paths the user names: the file to read must be a regular file, the file to write must have a
suffix we write and must not be one of the command's inputs.

The checks run before any work, so a wrong path costs nothing and overwrites nothing.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from nnctl.errors import Problem, UsageError, file_kind

def open_regular(path, error, what: str):
    """`path` opened for binary reading, or `error` (a NnctlError class) saying why it cannot be.

    `what` names the file the caller expects ("a data file"). Only a regular file is accepted: a
    FIFO would be drained by the first read (and a second read would block forever), and a device
    such as /dev/zero never ends. The kind is asked of the open descriptor, not of the path, so the
    path cannot change in between; O_NONBLOCK makes opening a FIFO return at once instead of
    waiting for a writer.
    """
    path = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(Problem(f"expected {what}, received a path that does not exist", path)) from None
    except OSError as exc:
        raise error(Problem(f"expected {what} that can be read, received {exc.__class__.__name__}: {exc}", path)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = file_kind(mode)
        if kind == "a directory":
            raise error(Problem(f"expected {what}, received a directory", path))
        raise error(Problem(f"expected a regular file, received {kind}", path))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_suffix(path, suffixes, flag: str) -> None:
    """A UsageError naming `flag` unless `path` ends in one of `suffixes` (in any case)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        listed = " or ".join(suffixes) if len(suffixes) == 2 else ", ".join(suffixes)
        raise UsageError(Problem(f"{flag}: expected a {listed} file, received {path.name!r}", str(path)))


def refuse_inputs(output, flag: str, inputs: dict) -> None:
    """UsageError when `output` is one of `inputs` ({what: path}), compared as resolved paths
    (so ./d.csv, d.csv and a symlink to it are one file)."""
    if output is None:
        return
    target = Path(output).resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == target:
            raise UsageError(Problem(f"{flag}: expected a path that is not one of this command's inputs, received {what}", str(output)))


class OpenFile:
    """A reader of one open file, `self.handle`: closing the reader, or leaving its `with`, closes it."""

    handle = None

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

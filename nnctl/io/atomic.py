"""Atomic writes: a file nnctl writes is complete or absent, never half-written.

Data goes to a temporary file in the destination's folder, is flushed to disk and renamed over
the destination in one step, so an interrupted run leaves the user's earlier file untouched.
The temporary file is named `.<name>.<pid>.<random>.tmp` after the process writing it: one left
by a writer that was killed (SIGKILL, power loss) is recognised by its dead PID and removed by
`remove_stale_temp_files`, which each write also runs for its own destination's leftovers.

Permissions and links are those of an ordinary write: a new file gets the mode the umask gives,
a replaced file keeps its mode, and a symlink is written through (its target is replaced, the
link stays). A failure of the file system (a full disk, a read-only or missing folder, a file
where a folder should be) is a `FileSystemError` naming the path and the system's reason.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from nnctl.errors import FileSystemError, Problem

_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")  # the random part: mkstemp's letters


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OSError, OverflowError):  # a PID no kernel hands out: no process ever had it
        return False
    return True


def remove_stale_temp_files(folder, name: str | None = None) -> list[Path]:
    """Remove the temporary files in `folder` whose writer is dead (only those for file `name` if
    given); returns what was removed. A missing or unreadable folder has nothing to remove.

    A live writer's file is never touched, not even when the writer is this process."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):  # gone already (another cleaner), or not ours to remove
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _umask() -> int:
    # The only portable way to read the umask is to set it and set it back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _not_a_folder(path: Path) -> Path | None:
    """The first folder on the way to `path` that exists but is not a folder."""
    for parent in reversed(path.parents):
        if os.path.exists(parent) and not os.path.isdir(parent):  # os.path: a folder we may not search is no error here
            return parent
    return None


def _failure(shown: Path, path: Path, exc: OSError) -> FileSystemError:
    """The error for a failed write of `shown` (`path` once a symlink is followed)."""
    blocking = _not_a_folder(path)
    if blocking is not None:
        return FileSystemError(Problem(f"expected {blocking} to be a folder to write this file in, received a file", str(shown)))
    if exc.errno == errno.EISDIR:
        return FileSystemError(Problem("expected a file path, received a folder", str(shown)))
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return FileSystemError(Problem(f"expected a writable folder ({path.parent}), received: {reason}", str(shown)))


def _open_temp(path: Path) -> tuple[int, str]:
    """A temporary file next to `path` (its folders made) with the mode `path` will have."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, path.name)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            old = os.stat(path)
        except FileNotFoundError:
            os.chmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an ordinary new file honours the umask
        else:
            os.chmod(fd, stat.S_IMODE(old.st_mode))
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    return fd, temp


def check_writable(path) -> None:
    """Prove, before any work, that `path` can be written as atomic_write would write it: the same
    folders made and the same FileSystemError when it cannot be (a temporary file made and removed)."""
    shown = path = Path(path)
    try:
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        fd, temp = _open_temp(path)
    except OSError as exc:
        raise _failure(shown, path, exc) from None
    os.close(fd)
    os.unlink(temp)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """`with atomic_write(p) as handle:` write; the file appears at `p` only on success."""
    shown = path = Path(path)
    try:
        if path.is_symlink():  # write through: replacing the link itself would cut what it links to
            path = Path(os.path.realpath(path))
        fd, temp = _open_temp(path)
    except OSError as exc:
        raise _failure(shown, path, exc) from None
    written = False
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as handle:
            yield handle
            written = True
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        # An OSError naming a file is about another file the caller opened while writing, not this write.
        if not isinstance(exc, OSError) or (not written and exc.filename is not None):
            raise
        raise _failure(shown, path, exc) from None

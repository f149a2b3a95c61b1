"""The SHA-256 of a data file's bytes: computed once per process, in a background thread if started early.

`nnctl train` fingerprints its data files: the checkpoint records them (a resume on changed data
is refused) and the data cache names its entries by them. A hash is a pass over the whole file;
`start(path)` begins it in a thread before the file is read and parsed, so that it runs beside
them (file reads and hashlib's updates of large buffers release the GIL) and a first run pays
the longer of the two, not their sum. `sha256(path)` waits for a started hash or computes one.

Answers are kept for the process, keyed by the file's resolved path and stat (size, mtime_ns,
ctime_ns, inode; every write moves ctime): a changed file is hashed anew, an unchanged one never
twice. `remember(path, digest, stat)` records a digest that the caller holds for the file as that
stat describes it (the data cache's hashes.json). A failed hash is not kept: the next call tries again.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path

from nnctl.errors import DataError
from nnctl.io.paths import open_regular

CHUNK_BYTES = 1 << 20
_lock = threading.Lock()
_digests: dict = {}  # stat_key -> Future of the hex digest


def stat_key(path, stat: os.stat_result | None = None) -> tuple:
    """What identifies the file's present contents without reading them (OSError if it is gone)."""
    stat = stat if stat is not None else os.stat(path)
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _compute(path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, DataError, "a data file") as handle:  # never a FIFO: it would be drained
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _run(key, future: Future, path) -> None:
    try:
        digest = _compute(path)
    except BaseException as exc:  # (Ctrl-C in a foreground hash too: never a future left pending)
        with _lock:
            if _digests.get(key) is future:
                del _digests[key]
        future.set_exception(exc)
    else:
        future.set_result(digest)


def _future(path, background: bool, stat=None) -> Future:
    key = stat_key(path, stat)
    with _lock:
        future = _digests.get(key)
        fresh = future is None
        if fresh:
            future = _digests[key] = Future()
    if fresh:
        if background:  # a daemon: a run that fails early does not wait for it to exit
            threading.Thread(target=_run, args=(key, future, path), name=f"sha256 {Path(path).name}", daemon=True).start()
        else:
            _run(key, future, path)
    return future


def start(path) -> None:
    """Begin hashing `path` in a background thread, unless its hash is known or under way. A path
    that cannot be read is left to its reader to report."""
    try:
        _future(path, background=True)
    except OSError:
        pass


def sha256(path, stat: os.stat_result | None = None) -> str:
    """The hex SHA-256 of the file's bytes (waiting for a hash that `start` began), for the file as
    `stat` (default: its stat now) describes it. OSError when the file is gone; DataError when it
    is not a readable regular file."""
    return _future(path, background=False, stat=stat).result()


def remember(path, digest: str, stat: os.stat_result) -> None:
    """Record `digest` as the hash of `path` while its stat is `stat`."""
    future = Future()
    future.set_result(digest)
    with _lock:
        _digests.setdefault(stat_key(path, stat), future)

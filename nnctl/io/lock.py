"""A folder lock that the kernel releases when its holder dies: one run at a time per run folder.

`fcntl.flock` on a `.lock` file: a crashed or SIGKILLed run never leaves a stale lock behind.
The file keeps the holder's PID and spec file, so a refused run can name who holds the folder
and a later run can tell whose folder it is.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

LOCK_NAME = ".lock"


class FolderLock:
    """`with FolderLock(folder, owner) as lock:`; raises `Busy` while another process holds it."""

    class Busy(Exception):
        def __init__(self, holder: dict):
            super().__init__(holder)
            self.holder = holder

    def __init__(self, folder, owner: dict):
        self.path = Path(folder) / LOCK_NAME
        self.owner = owner
        self._fd = None

    def previous_owner(self) -> dict:
        """Who last held the lock (its owner record), or {} when nobody did."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.previous_owner()
            os.close(fd)
            raise FolderLock.Busy(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**self.owner, "pid": os.getpid()}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

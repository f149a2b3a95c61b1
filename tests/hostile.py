"""Hostile files for the error harness, built small: forged headers and sizes, sparse files, FIFOs."""
from __future__ import annotations

import io
import os
import struct
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy


def npy_header(shape, dtype="<f8", fortran=False) -> bytes:
    """A .npy header (magic included) declaring `shape`; the data is the caller's."""
    buffer = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)})
    return buffer.getvalue()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    numpy.save(buffer, array)
    return buffer.getvalue()


def forged_zip(members, claims: dict | None = None, deflate=()) -> bytes:
    """A zip of `members` (name -> bytes, or (name, bytes) pairs: a name may repeat), those in
    `deflate` compressed, with the uncompressed size recorded for each name in `claims` replaced by
    the claimed one (in the local and central headers; for a stored member the compressed size too)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a repeated name: here it is the point
        for name, content in members.items() if isinstance(members, dict) else members:
            archive.writestr(name, content, zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
        infos = {info.filename: info.header_offset for info in archive.infolist()}
    data = bytearray(buffer.getvalue())
    for name, size in (claims or {}).items():
        fields = (22,) if name in deflate else (18, 22)  # local header: compressed, uncompressed size
        for field in fields:
            struct.pack_into("<I", data, infos[name] + field, size)
        central = data.index(b"PK\x01\x02")  # the first central directory entry
        while True:
            length = struct.unpack_from("<H", data, central + 28)[0]
            if data[central + 46:central + 46 + length].decode() == name:
                for field in fields:
                    struct.pack_into("<I", data, central + field + 2, size)
                break
            central = data.index(b"PK\x01\x02", central + 46)
    return bytes(data)


def sparse_npy(path: Path, shape, fortran=False) -> None:
    """A float64 .npy of `shape` whose data is a hole: gigabytes on paper, a page on disk."""
    header = npy_header(shape, fortran=fortran)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + 8 * int(numpy.prod(shape)))


def fifo(path: Path) -> None:
    """A FIFO at `path`. Should a reader open it blocking (the bug), a writer comes and goes at
    once, so the reader sees an empty file and the test fails instead of hanging."""
    path.unlink(missing_ok=True)
    os.mkfifo(path)

    def release():
        for _ in range(200):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader yet (ENXIO), or the FIFO is gone
                time.sleep(0.05)

    threading.Thread(target=release, daemon=True).start()


def link(path: Path, target) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)

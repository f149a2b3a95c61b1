"""NumPy files read without trusting them: .npy arrays and .npz archives of named .npy arrays.

Never unpickles, and never allocates or decompresses more than the file can hold: every .npy
header's shape is checked against the bytes really there (the file's size, or the zip member's
declared size, itself checked against what its compressed bytes can expand to) before anything
is allocated, and an archive's members are read one at a time, only when asked for, so a caller
can refuse an unexpected one unread. Which NnctlError a problem is (DataError, WeightsError) is
the caller's: every reader takes the class to raise.
"""
from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from typing import NamedTuple

import numpy

from nnctl.errors import Problem
from nnctl.io.paths import OpenFile, open_regular

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first bytes (an empty one: the second)
NPY_WANTED = "a .npy array file"
NPZ_WANTED = "an .npz archive of named arrays (a zip of .npy files)"
# Deflate cannot expand a byte to more than about 1032 bytes; a member claiming more is forged.
DEFLATE_MAX_RATIO = 1032
_LOCAL_HEADER_BYTES = 30  # a zip member's local file header before its name and extra field
_CORRUPT = (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, NotImplementedError)


def _sniff(head: bytes) -> str:
    """What a file that is not the expected kind is, from its first bytes."""
    if head.startswith(NPY_MAGIC):
        return "a single .npy array file"
    if head.startswith(ZIP_MAGIC):
        return "an .npz file (a zip archive)"
    if not head:
        return "an empty file"
    if head.startswith(b"\x80") or head[:1] in (b"(", b"]", b"}"):
        return "a pickle file, which nnctl never loads"
    return f"a file that starts with {head[:4]!r}, not a zip archive"


class Header(NamedTuple):
    """An .npy header: what the data that follows it is, and where it starts."""

    shape: tuple
    dtype: numpy.dtype
    fortran_order: bool
    offset: int  # bytes from the start of the .npy data (the file or the zip member) to the array

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _size_text(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _read_header(handle, available: int, error, file, name) -> Header:
    """The header at the handle's position (after the magic), refused unless its array fits in `available` bytes."""
    where = f"array {name!r}: " if name is not None else ""
    version = handle.read(2)
    readers = {b"\x01\x00": numpy.lib.format.read_array_header_1_0, b"\x02\x00": numpy.lib.format.read_array_header_2_0,
               b"\x03\x00": numpy.lib.format.read_array_header_2_0}  # 3.0 differs from 2.0 in the header's text encoding only
    try:
        if version not in readers:
            raise ValueError(f"unknown .npy format version {tuple(version)}")
        shape, fortran_order, dtype = readers[version](handle)
    except _CORRUPT as exc:
        raise error(Problem(f"{where}expected a valid .npy header, received an unreadable one ({exc})", file)) from None
    if any(n < 0 for n in shape):
        raise error(Problem(f"{where}expected a valid .npy header, received negative dimensions in shape {tuple(shape)}", file))
    if dtype.hasobject:
        raise error(Problem(f"{where}expected a plain numeric array, received a pickled object array, which nnctl never loads", file))
    header = Header(tuple(shape), dtype, bool(fortran_order), handle.tell())
    if header.offset + header.nbytes > available:
        raise error(Problem(
            f"{where}expected a .npy header that fits the data, received shape {header.shape} of {dtype} "
            f"({_size_text(header.nbytes)}) with {_size_text(max(available - header.offset, 0))} of data: a truncated or corrupt file", file))
    return header


def _fill(handle, header: Header, error, file, name) -> numpy.ndarray:
    """The array after `header`, read into one buffer of exactly its size."""
    return _fill_flat(handle, header, error, file, name).reshape(header.shape, order="F" if header.fortran_order else "C")


def _fill_flat(handle, header: Header, error, file, name) -> numpy.ndarray:
    array = numpy.empty(math.prod(header.shape), dtype=header.dtype)
    view, done = memoryview(array).cast("B"), 0
    try:
        while done < header.nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise EOFError(f"the data ends after {done} of {header.nbytes} bytes")
            done += got
    except _CORRUPT as exc:
        what = f"array {name!r}: " if name is not None else ""
        raise error(Problem(f"{what}expected a valid array, received a truncated or corrupt file ({exc})", file)) from None
    return array


class NpyFile(OpenFile):
    """A .npy file, its header read and checked; `load()` reads the array."""

    def __init__(self, path, error, what: str = "a .npy file"):
        self.file, self.error = str(path), error
        self.handle = open_regular(path, error, what)
        try:
            head = self.handle.read(len(NPY_MAGIC))
            if head != NPY_MAGIC:
                raise error(Problem(f"expected {NPY_WANTED}, received {_sniff(head + self.handle.read(4))}", self.file))
            self.header = _read_header(self.handle, os.fstat(self.handle.fileno()).st_size, error, self.file, None)
        except BaseException:
            self.handle.close()
            raise

    def load(self) -> numpy.ndarray:
        self.handle.seek(self.header.offset)
        return _fill(self.handle, self.header, self.error, self.file, None)


class Archive(OpenFile):
    """An .npz archive whose members are read one at a time: `names`, then `header(name)`, `read(name)`.

    A name is the member's file name less ".npy" (as numpy.savez writes them). Nothing is read
    beyond the zip directory until asked, so an unexpected member costs nothing.
    """

    def __init__(self, path, error, what: str = "an .npz file"):
        self.file, self.error = str(path), error
        self.handle = open_regular(path, error, what)
        try:
            head = self.handle.read(8)
            if not head.startswith(ZIP_MAGIC):
                raise error(Problem(f"expected {NPZ_WANTED}, received {_sniff(head)}", self.file))
            self.handle.seek(0)
            try:
                self.zip = zipfile.ZipFile(self.handle)
            except _CORRUPT as exc:
                raise self._corrupt(exc) from None
            self.members, size = {}, os.fstat(self.handle.fileno()).st_size
            for info in self.zip.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if name in self.members:
                    raise error(Problem(f"expected each array once, received {name!r} twice (a tampered archive)", self.file))
                if info.header_offset + info.compress_size > size:
                    raise error(Problem(f"array {name!r}: expected a member within the file's {_size_text(size)}, received one of "
                                        f"{_size_text(info.compress_size)} at byte {info.header_offset}: a truncated or corrupt file", self.file))
                self.members[name] = info
        except BaseException:
            self.handle.close()
            raise

    def _corrupt(self, exc):
        return self.error(Problem(f"expected a valid .npz archive, received a truncated or corrupt file ({exc})", self.file))

    @property
    def names(self) -> list:
        return list(self.members)

    def _open(self, name):
        """The member opened, its header read and checked against the member's declared size."""
        info, problem = self.members[name], None
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            problem = f"expected a stored or deflated member (as numpy.savez and savez_compressed write), received compression method {info.compress_type}"
        elif info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            problem = f"expected a stored member of {info.compress_size} bytes to hold as many, received a claim of {info.file_size}"
        elif info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 64:
            problem = (f"expected at most {DEFLATE_MAX_RATIO} times its {_size_text(info.compress_size)} of compressed data, "
                       f"received a claim of {_size_text(info.file_size)} (a zip bomb or a corrupt file)")
        if problem:
            raise self.error(Problem(f"array {name!r}: {problem}", self.file))
        try:
            handle = self.zip.open(info)
            head = handle.read(len(NPY_MAGIC))
        except _CORRUPT as exc:
            raise self._corrupt(exc) from None
        try:
            if head != NPY_MAGIC:
                raise self.error(Problem(f"array {name!r}: expected a NumPy array, received a member that is not in .npy format", self.file))
            header = _read_header(handle, info.file_size, self.error, self.file, name)
        except BaseException:
            handle.close()
            raise
        if header.offset + header.nbytes != info.file_size:
            handle.close()
            raise self.error(Problem(
                f"array {name!r}: expected a member of {header.offset + header.nbytes} bytes for shape {header.shape} of {header.dtype}, "
                f"received {info.file_size}: a corrupt file", self.file))
        return handle, header

    def header(self, name) -> Header:
        handle, header = self._open(name)
        handle.close()
        return header

    def read(self, name) -> numpy.ndarray:
        handle, header = self._open(name)
        info = self.members[name]
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            handle.close()
            return self._read_stored(name, info, header)
        with handle:  # reading to the member's end makes zipfile check its CRC-32
            return _fill(handle, header, self.error, self.file, name)

    def _read_stored(self, name, info, header: Header) -> numpy.ndarray:
        """A stored (uncompressed: numpy.savez's) member's array read straight from the file into its
        buffer, where zipfile would copy it through Python a chunk at a time (0.30 s against 0.18 s
        for a 188 MB array); its CRC-32 checked as zipfile checks it. `_open` has checked the rest."""
        try:
            self.handle.seek(info.header_offset)
            local = self.handle.read(_LOCAL_HEADER_BYTES)
            if len(local) != _LOCAL_HEADER_BYTES or local[:4] != ZIP_MAGIC[0]:
                raise zipfile.BadZipFile("Bad magic number for file header")
            name_bytes, extra_bytes = struct.unpack("<HH", local[26:30])
            self.handle.seek(info.header_offset + _LOCAL_HEADER_BYTES + name_bytes + extra_bytes)
            prefix = self.handle.read(header.offset)  # the member's .npy magic and header
            if len(prefix) != header.offset:
                raise EOFError(f"the member ends after {len(prefix)} bytes")
        except _CORRUPT as exc:
            raise self._corrupt(exc) from None
        array = _fill_flat(self.handle, header, self.error, self.file, name)
        if zlib.crc32(array, zlib.crc32(prefix)) != info.CRC:
            raise self.error(Problem(f"array {name!r}: expected a valid array, received a truncated or corrupt file "
                                     f"(Bad CRC-32 for file {info.filename!r})", self.file))
        return array.reshape(header.shape, order="F" if header.fortran_order else "C")

    def close(self) -> None:
        self.zip.close()
        super().close()

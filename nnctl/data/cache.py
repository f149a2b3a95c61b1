"""The data cache: a table file's model columns, read once and kept as .npy files.

Parsing a CSV costs seconds per 100 MB; gathering rows from a .npy costs nothing, and a large one
is read by row from disk (readers.RowFile), so a file bigger than memory trains in bounded memory.
An entry is a folder named by a digest of the file's fingerprint (size, mtime_ns, SHA-256 of its
bytes) and of the reading config (the columns per input, delimiter, missing values, dtype): a
changed file or config is another entry, built anew; the old one is replaced. `manifest.json`,
written last, holds what the entry must be; an entry that does not match it (cut short,
overwritten, a CRC-32 that disagrees, from another version) is rebuilt, with a note for the caller, never used.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy

from nnctl.data.readers import LOAD_WHOLE_BYTES, RESTART, RowFile, Target
from nnctl.errors import DataError, FileSystemError, NnctlError
from nnctl.io.arrays import NpyFile
from nnctl.io.atomic import atomic_write
from nnctl.io.tables import scan

FORMAT = 1
# Beside the runs (runs/ in the working folder), not beside the data: a data folder may be read-only,
# shared or in version control, and runs/ is what nnctl already writes and users already clean.
DEFAULT_FOLDER = Path("runs") / ".cache"
# Files smaller than this parse in milliseconds: caching them would only leave files behind.
MIN_BYTES = 1 << 20
# A fixed-size .npy header, written before the rows are counted and rewritten after.
_HEADER_BYTES = 128


def fingerprint(file, folder) -> dict:
    """Size, mtime_ns and the SHA-256 of the bytes. The hash of a file whose stat is unchanged since it
    was hashed (ctime_ns too, which every write and every utime moves) is taken from the folder's
    hashes.json rather than computed again: a second run of a 2 GB file reads none of it."""
    stat = os.stat(file)
    seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}
    memo_path = Path(folder) / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    place = str(Path(file).resolve())
    known = memo.get(place)
    if isinstance(known, dict) and {k: known.get(k) for k in seen} == seen and isinstance(known.get("sha256"), str):
        sha256 = known["sha256"]
    else:
        digest = hashlib.sha256()
        scan(file, digest)
        sha256 = digest.hexdigest()
        memo[place] = {**seen, "sha256": sha256}
        try:
            with atomic_write(memo_path, "w") as handle:
                json.dump(memo, handle, indent=1)
        except FileSystemError:
            pass  # the hash is computed again next time; _build_entry reports the folder
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def _npy_header(rows: int, width: int, dtype) -> bytes:
    text = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (numpy.dtype(dtype).str, rows, width)
    text = text.ljust(_HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _names(wanted: dict) -> list:
    """A file name per key of `wanted` (an input's name may be any text, as may an output's)."""
    return [f"{i}.npy" for i in range(len(wanted))]


def _dtype(key, config: dict):
    """Inputs as the model computes in (the cast a load would make, made once); targets in float64,
    which the loss's checks of class indices and probabilities read."""
    return numpy.dtype("<f8") if isinstance(key, Target) else numpy.dtype(config["dtype"]).newbyteorder("<")


def cached_arrays(folder, file, config: dict, wanted: dict, blocks) -> tuple[dict, list]:
    """({key: array or RowFile}, notes): the entry for `file` read with `config`, built from
    `blocks()` (readers.table_blocks) when absent, stale or corrupt. Targets (Target keys) are loaded
    whole; large inputs stay on disk. A cache folder that cannot be written is a note, and the
    arrays come from the file."""
    from nnctl.data.readers import joined_blocks

    file = Path(file)
    identity = {"format": FORMAT, "file": fingerprint(file, folder), "config": config,
                "columns": [[key if isinstance(key, str) else {"targets": key.output}, list(cols)] for key, cols in wanted.items()]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]
    entry = Path(folder) / key
    notes = []
    if (entry / "manifest.json").exists():
        try:
            return _read_entry(entry, identity, wanted), notes
        except (NnctlError, OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"{entry}: the cached data of {file} is damaged ({exc}); rebuilt from the file")
    try:
        return _build_entry(entry, identity, wanted, blocks()), notes
    except FileSystemError as exc:
        notes.append(f"the data cache cannot be written ({exc}); data read from {file} without it")
        return joined_blocks(wanted, blocks()), notes


def _read_entry(entry: Path, identity: dict, wanted: dict, verify: bool = True) -> dict:
    manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("identity") != json.loads(json.dumps(identity, default=str)):
        raise ValueError("its manifest is another file's or config's")
    arrays = {}
    for (key, cols), name, expected in zip(wanted.items(), _names(wanted), manifest["arrays"]):
        path = entry / name
        with NpyFile(path, DataError, "a cached array") as npy:
            header = npy.header
            shape, dtype = [expected["rows"], len(cols)], _dtype(key, identity["config"])
            if list(header.shape) != shape or header.dtype != dtype or header.fortran_order:
                raise ValueError(f"{name} holds {list(header.shape)} {header.dtype}, not {shape} {dtype}")
            if os.stat(path).st_size != header.offset + header.nbytes:
                raise ValueError(f"{name} is {os.stat(path).st_size} bytes, not {header.offset + header.nbytes}")
            if isinstance(key, Target) or header.nbytes <= LOAD_WHOLE_BYTES:
                array = npy.load()
                # a loaded array costs a checksum: a flipped byte is found, not trained on
                if verify and zlib.crc32(array) != expected["crc32"]:
                    raise ValueError(f"{name} does not hold the values it was written with")
            else:
                array = RowFile(path, header.offset, header.shape[0], header.shape[1], header.dtype)
        arrays[key] = array
    return arrays


def _build_entry(entry: Path, identity: dict, wanted: dict, blocks) -> dict:
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    names = _names(wanted)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(atomic_write(entry / name)) for name in names]

        def start():
            for handle in handles:
                handle.seek(0)
                handle.truncate()
                handle.write(bytes(_HEADER_BYTES))
            return [0] * len(names), 0

        crcs, rows = start()
        for block in blocks:
            if block is RESTART:
                crcs, rows = start()
                continue
            for k, (handle, key) in enumerate(zip(handles, wanted)):
                data = numpy.ascontiguousarray(block[key], dtype=_dtype(key, identity["config"]))
                handle.write(data)
                crcs[k] = zlib.crc32(data, crcs[k])
            rows += len(next(iter(block.values())))
        for handle, key in zip(handles, wanted):
            handle.seek(0)
            handle.write(_npy_header(rows, len(wanted[key]), _dtype(key, identity["config"])))
    manifest = {"identity": identity, "arrays": [{"rows": rows, "crc32": crc} for crc in crcs]}
    with atomic_write(entry / "manifest.json", "w") as handle:
        json.dump(manifest, handle, indent=1, default=str)
    return _read_entry(entry, identity, wanted, verify=False)  # just written: nothing to check yet

"""The data cache: a table file's model columns, read once and kept as .npy files.

Parsing a CSV costs seconds per 100 MB; gathering rows from a .npy costs nothing, and a large one
is read by row from disk (readers.RowFile), so a file bigger than memory trains in bounded memory.
An entry is a folder named by a digest of the file's fingerprint (size, mtime_ns, SHA-256 of its
bytes) and of the reading config (the columns per input, delimiter, missing values, dtype): a
changed file or config is another entry, built anew; the old one is replaced. `manifest.json`,
written last, holds what the entry must be; an entry that does not match it (cut short,
overwritten, a CRC-32 that disagrees, from another version) is rebuilt, with a note for the caller, never used.
A file read for the first time is parsed while its hash is computed in a thread: its arrays go to a
staging folder (`.build.<pid>.<random>`), renamed to the entry once the hash has named it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import zlib
from pathlib import Path

import numpy

from nnctl.data.readers import LOAD_WHOLE_BYTES, RESTART, RowFile, Target
from nnctl.errors import DataError, FileSystemError, NnctlError, Problem
from nnctl.io import hashing
from nnctl.io.arrays import NpyFile
from nnctl.io.atomic import atomic_write, pid_alive

FORMAT = 1
# Beside the runs (runs/ in the working folder), not beside the data: a data folder may be read-only,
# shared or in version control, and runs/ is what nnctl already writes and users already clean.
DEFAULT_FOLDER = Path("runs") / ".cache"
# Files smaller than this parse in milliseconds: caching them would only leave files behind.
MIN_BYTES = 1 << 20
# A fixed-size .npy header, written before the rows are counted and rewritten after.
_HEADER_BYTES = 128


def _seen(stat) -> dict:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _memo(folder) -> dict:
    try:
        memo = json.loads((Path(folder) / "hashes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def known_sha256(file, folder, stat=None) -> str | None:
    """The SHA-256 that the folder's hashes.json holds for `file` as it is now (its stat, ctime_ns
    too, which every write and every utime moves, unchanged since it was hashed), or None. A hash
    found is recorded for the process (nnctl.io.hashing): the checkpoint's fingerprint of the same
    file reads none of it either."""
    stat = stat if stat is not None else os.stat(file)
    seen, known = _seen(stat), _memo(folder).get(str(Path(file).resolve()))
    if isinstance(known, dict) and {k: known.get(k) for k in seen} == seen and isinstance(known.get("sha256"), str):
        hashing.remember(file, known["sha256"], stat)
        return known["sha256"]
    return None


def fingerprint(file, folder) -> dict:
    """Size, mtime_ns and the SHA-256 of the bytes. The hash of a file whose stat is unchanged since it
    was hashed is taken from the folder's hashes.json rather than computed again: a second run of a
    2 GB file reads none of it. A hash computed (or under way in a thread: nnctl.io.hashing) is
    waited for and written to hashes.json."""
    stat = os.stat(file)
    sha256 = known_sha256(file, folder, stat)
    if sha256 is None:
        sha256 = hashing.sha256(file, stat)
        memo = _memo(folder)
        memo[str(Path(file).resolve())] = {**_seen(stat), "sha256": sha256}
        try:
            with atomic_write(Path(folder) / "hashes.json", "w") as handle:
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
    notes = []
    try:
        staged = _parse_while_hashing(Path(folder), file, config, wanted, blocks)
    except FileSystemError as exc:
        notes.append(_unwritable(exc, file))
        return joined_blocks(wanted, blocks()), notes
    identity = {"format": FORMAT, "file": fingerprint(file, folder), "config": config,
                "columns": [[key if isinstance(key, str) else {"targets": key.output}, list(cols)] for key, cols in wanted.items()]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]
    entry = Path(folder) / key
    try:
        if (entry / "manifest.json").exists():
            try:
                return _read_entry(entry, identity, wanted), notes  # (another process built it meanwhile)
            except (NnctlError, OSError, ValueError, KeyError, TypeError) as exc:
                notes.append(f"{entry}: the cached data of {file} is damaged ({exc}); rebuilt from the file")
        try:
            if staged is not None:
                return _commit(staged, entry, identity, wanted), notes
            return _build_entry(entry, identity, wanted, blocks()), notes
        except FileSystemError as exc:
            notes.append(_unwritable(exc, file))
            return joined_blocks(wanted, blocks()), notes
    finally:
        if staged is not None:
            shutil.rmtree(staged[0], ignore_errors=True)  # gone already once committed


def _unwritable(exc, file) -> str:
    return f"the data cache cannot be written ({exc}); data read from {file} without it"


# A folder of an entry being built before its name is known: .build.<pid>.<random>
_BUILDING = re.compile(r"\.build\.(?P<pid>\d+)\.[0-9a-f]+")


def _parse_while_hashing(folder: Path, file: Path, config: dict, wanted: dict, blocks):
    """The first reading of `file`: when hashes.json does not know its hash and no entry can hold
    it (none has its size, mtime_ns and config), its SHA-256, which names the entry, is computed in
    a thread (nnctl.io.hashing) while its blocks are parsed into a staging folder, so the two
    overlap rather than follow each other. (staging folder, rows, crcs), or None for the usual
    order: the hash, then the entry looked up, then built if need be."""
    stat = os.stat(file)
    if known_sha256(file, folder, stat) is not None or _may_hold(folder, stat, config):
        return None
    hashing.start(file)
    _remove_dead_builds(folder)
    staging = folder / f".build.{os.getpid()}.{secrets.token_hex(8)}"
    try:
        return (staging, *_write_arrays(staging, wanted, config, blocks()))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _may_hold(folder: Path, stat, config: dict) -> bool:
    """Whether an entry of `folder` was built from a file of this size and mtime_ns with `config`
    (only its hash could then tell whether it is this file's). Unreadable manifests hold nothing."""
    try:
        entries = [entry for entry in os.scandir(folder) if not entry.name.startswith(".") and entry.is_dir()]
    except OSError:
        return False
    wanted = {"format": FORMAT, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "config": json.loads(json.dumps(config, default=str))}
    for entry in entries:
        try:
            identity = json.loads((Path(entry.path) / "manifest.json").read_text(encoding="utf-8"))["identity"]
            held = {"format": identity["format"], "size": identity["file"]["size"], "mtime_ns": identity["file"]["mtime_ns"],
                    "config": identity["config"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if held == wanted:
            return True
    return False


def _remove_dead_builds(folder: Path) -> None:
    """Staging folders that a killed process left (its PID is dead)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _BUILDING.fullmatch(entry.name)
        if match is not None and not pid_alive(int(match["pid"])):
            shutil.rmtree(entry.path, ignore_errors=True)


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
    rows, crcs = _write_arrays(entry, wanted, identity["config"], blocks)
    _write_manifest(entry, identity, rows, crcs)
    return _read_entry(entry, identity, wanted, verify=False)  # just written: nothing to check yet


def _commit(staged, entry: Path, identity: dict, wanted: dict) -> dict:
    """A staging folder's arrays (_parse_while_hashing) made the entry, once its name is known."""
    staging, rows, crcs = staged
    _write_manifest(staging, identity, rows, crcs)
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(staging, entry)
    except OSError as exc:  # another process's entry appeared in between: this one is dropped
        raise FileSystemError(Problem(f"expected to move the built entry into place, received: {os.strerror(exc.errno) if exc.errno else exc}", str(entry))) from None
    return _read_entry(entry, identity, wanted, verify=False)  # just written: nothing to check yet


def _write_arrays(folder: Path, wanted: dict, config: dict, blocks) -> tuple[int, list]:
    """The blocks' arrays as .npy files in `folder` (each written atomically): (rows, their CRC-32s)."""
    names = _names(wanted)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(atomic_write(folder / name)) for name in names]

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
                data = numpy.ascontiguousarray(block[key], dtype=_dtype(key, config))
                handle.write(data)
                crcs[k] = zlib.crc32(data, crcs[k])
            rows += len(next(iter(block.values())))
        for handle, key in zip(handles, wanted):
            handle.seek(0)
            handle.write(_npy_header(rows, len(wanted[key]), _dtype(key, config)))
    return rows, crcs


def _write_manifest(folder: Path, identity: dict, rows: int, crcs: list) -> None:
    """Written last: what the entry must be."""
    manifest = {"identity": identity, "arrays": [{"rows": rows, "crc32": crc} for crc in crcs]}
    with atomic_write(folder / "manifest.json", "w") as handle:
        json.dump(manifest, handle, indent=1, default=str)

"""The data cache: a table file's columns, read once and kept as .npy files.

Parsing a CSV costs seconds per 100 MB; gathering rows from a .npy costs nothing, and a large one
is read by row from disk (readers.RowFile), so a file bigger than memory trains in bounded memory.
An entry is a folder named by a digest of the file's fingerprint (size, mtime_ns, SHA-256 of its
bytes) and of the reading config (the columns per input, delimiter, missing values, dtype): a
changed file or config is another entry, built anew; the old one is replaced. `manifest.json`,
written last, holds what the entry must be; an entry that does not match it (cut short,
overwritten, a CRC-32 that disagrees, from another version) is rebuilt, with a note for the caller, never used.
A numeric file read for the first time is parsed while its hash is computed in a thread: its arrays
go to a staging folder (`.build.<pid>.<random>`), renamed to the entry once the hash has named it.

Three kinds of entry share these rules (`cached`): the model's columns as numbers
(`cached_arrays`, for a spec without column preprocessing); for one with it, a table's raw
columns, numbers and coded text (nnctl.data.raw), and a data set prepared from them
(nnctl.data.prepared: the transformed inputs, kept rows and fitted transforms).
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


def cached(folder, file, identity: dict, read, build, uncached) -> tuple:
    """(result, notes): `read(entry, identity)` of the entry of `file` for `identity` (what else
    the entry depends on, beside the file's fingerprint), or `build(entry, identity)` when it is
    absent, stale or damaged (a note says so); `uncached()` when the folder cannot be written."""
    file = Path(file)
    identity = {"format": FORMAT, "file": fingerprint(file, folder), **identity}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]
    entry = Path(folder) / key
    notes = []
    if (entry / "manifest.json").exists():
        try:
            return read(entry, identity), notes
        except (NnctlError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:  # whatever a damaged entry holds
            notes.append(f"{entry}: the cached data of {file} is damaged ({exc}); rebuilt from the file")
    try:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        return build(entry, identity), notes
    except FileSystemError as exc:
        notes.append(_unwritable(exc, file))
        return uncached(), notes


def _unwritable(exc, file) -> str:
    return f"the data cache cannot be written ({exc}); data read from {file} without it"


def read_manifest(entry: Path, identity: dict) -> dict:
    """The entry's manifest.json, which must be the manifest of `identity`."""
    manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("identity") != json.loads(json.dumps(identity, default=str)):
        raise ValueError("its manifest is another file's or config's")
    return manifest


def write_manifest(entry: Path, manifest: dict) -> None:
    """Written last: an entry without one is never read."""
    with atomic_write(entry / "manifest.json", "w") as handle:
        json.dump(manifest, handle, indent=1, default=str)


def evict(entry: Path, related, keep: int) -> None:
    """Remove all but the `keep` most recently used of the entries beside `entry` (itself included)
    whose identity `related(identity)` says are its kind's for the same file: entries that another
    run may be reading are loaded whole by it, and one taken away is rebuilt."""
    used = []
    for other in Path(entry).parent.iterdir():
        try:
            manifest = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
            if other == entry or related(manifest["identity"]):
                used.append((os.stat(other / "manifest.json").st_mtime_ns, other))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    for _, other in sorted(used, reverse=True)[keep:]:
        if other != entry:
            shutil.rmtree(other, ignore_errors=True)


def touch(entry: Path) -> None:
    """Mark an entry as just used (`evict` keeps the most recent)."""
    with contextlib.suppress(OSError):
        os.utime(entry / "manifest.json")


def open_array(path: Path, shape, dtype, crc: int, whole: bool = True, verify: bool = True):
    """The .npy file at `path`, which must hold `shape` `dtype` values: loaded (and, if `verify`,
    its CRC-32 checked: a flipped byte is found, not trained on), or else a RowFile, read from disk
    by row (a 2-D one; checked a chunk at a time if `verify`)."""
    with NpyFile(path, DataError, "a cached array") as npy:
        header = npy.header
        if list(header.shape) != list(shape) or header.dtype != dtype or header.fortran_order:
            raise ValueError(f"{path.name} holds {list(header.shape)} {header.dtype}, not {list(shape)} {dtype}")
        if os.stat(path).st_size != header.offset + header.nbytes:
            raise ValueError(f"{path.name} is {os.stat(path).st_size} bytes, not {header.offset + header.nbytes}")
        if whole:
            array = npy.load()
            found = zlib.crc32(array) if verify else crc
    if not whole:
        array = RowFile(path, header.offset, header.shape[0], header.shape[1], header.dtype)
        found = crc
        if verify:
            found = 0
            for _, chunk in array.chunks():
                found = zlib.crc32(numpy.ascontiguousarray(chunk), found)
    if found != crc:
        raise ValueError(f"{path.name} does not hold the values it was written with")
    return array


def write_blocks(entry: Path, names: list, blocks, layout) -> list:
    """Each block's arrays ({name: 2-D array}, or RESTART: drop what came before) written one
    after another to entry/<name>, .npy files whose header is written last, as `layout(name)`
    (width, dtype) says once the blocks are done: [{"rows", "crc32"}] per name."""
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
            for k, (handle, name) in enumerate(zip(handles, names)):
                data = numpy.ascontiguousarray(block[name])
                handle.write(data)
                crcs[k] = zlib.crc32(data, crcs[k])
            rows += len(next(iter(block.values())))
        for handle, name in zip(handles, names):
            handle.seek(0)
            handle.write(_npy_header(rows, *layout(name)))
    return [{"rows": rows, "crc32": crc} for crc in crcs]


def write_array(path: Path, array) -> dict:
    """A whole array as a .npy file: {"shape", "crc32"}."""
    array = numpy.asarray(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    with atomic_write(path) as handle:
        numpy.save(handle, array)
    return {"shape": list(array.shape), "crc32": zlib.crc32(array)}


# --- the model's columns as numbers -------------------------------------------------------------------
def cached_arrays(folder, file, config: dict, wanted: dict, blocks) -> tuple[dict, list]:
    """({key: array or RowFile}, notes): the entry for `file` read with `config`, built from
    `blocks()` (readers.table_blocks) when absent, stale or corrupt. Targets (Target keys) are loaded
    whole; large inputs stay on disk. A cache folder that cannot be written is a note, and the
    arrays come from the file."""
    from nnctl.data.readers import joined_blocks

    file = Path(file)
    try:
        staged = _parse_while_hashing(Path(folder), file, config, wanted, blocks)
    except FileSystemError as exc:
        return joined_blocks(wanted, blocks()), [_unwritable(exc, file)]

    def build(entry, identity):
        if staged is None:
            return _build_entry(entry, identity, wanted, blocks())
        return _commit(staged, entry, identity, wanted)

    identity = {"config": config, "columns": [[key if isinstance(key, str) else {"targets": key.output}, list(cols)]
                                              for key, cols in wanted.items()]}
    try:  # (an entry another process built meanwhile is read, and the staged arrays dropped)
        return cached(folder, file, identity, lambda entry, identity: _read_entry(entry, identity, wanted), build,
                      lambda: joined_blocks(wanted, blocks()))
    finally:
        if staged is not None:
            shutil.rmtree(staged[0], ignore_errors=True)  # gone already once committed


def _read_entry(entry: Path, identity: dict, wanted: dict, verify: bool = True) -> dict:
    manifest = read_manifest(entry, identity)
    arrays = {}
    for (key, cols), name, expected in zip(wanted.items(), _names(wanted), manifest["arrays"]):
        dtype = _dtype(key, identity["config"])
        whole = isinstance(key, Target) or expected["rows"] * len(cols) * dtype.itemsize <= LOAD_WHOLE_BYTES
        arrays[key] = open_array(entry / name, [expected["rows"], len(cols)], dtype, expected["crc32"], whole, verify and whole)
    return arrays


def _write_arrays(folder: Path, wanted: dict, config: dict, blocks) -> list:
    """The blocks' arrays, cast to their cached dtypes, as .npy files in `folder`: [{"rows", "crc32"}]."""
    names = _names(wanted)
    keys = dict(zip(names, wanted))

    def cast(blocks):
        for block in blocks:
            yield block if block is RESTART else {name: numpy.ascontiguousarray(block[key], dtype=_dtype(key, config))
                                                  for name, key in keys.items()}

    return write_blocks(folder, names, cast(blocks), lambda name: (len(wanted[keys[name]]), _dtype(keys[name], config)))


def _build_entry(entry: Path, identity: dict, wanted: dict, blocks) -> dict:
    write_manifest(entry, {"identity": identity, "arrays": _write_arrays(entry, wanted, identity["config"], blocks)})
    return _read_entry(entry, identity, wanted, verify=False)  # just written: nothing to check yet


def _commit(staged, entry: Path, identity: dict, wanted: dict) -> dict:
    """A staging folder's arrays (_parse_while_hashing) made the entry, once its name is known."""
    staging, arrays = staged
    write_manifest(staging, {"identity": identity, "arrays": arrays})
    try:
        os.rename(staging, entry)
    except OSError as exc:  # another process's entry appeared in between: this one is dropped
        raise FileSystemError(Problem(f"expected to move the built entry into place, received: {os.strerror(exc.errno) if exc.errno else exc}", str(entry))) from None
    return _read_entry(entry, identity, wanted, verify=False)  # just written: nothing to check yet


# A folder of an entry being built before its name is known: .build.<pid>.<random>
_BUILDING = re.compile(r"\.build\.(?P<pid>\d+)\.[0-9a-f]+")


def _parse_while_hashing(folder: Path, file: Path, config: dict, wanted: dict, blocks):
    """The first reading of `file`: when hashes.json does not know its hash and no entry can hold
    it (none has its size, mtime_ns and config), its SHA-256, which names the entry, is computed in
    a thread (nnctl.io.hashing) while its blocks are parsed into a staging folder, so the two
    overlap rather than follow each other. (staging folder, its arrays), or None for the usual
    order: the hash, then the entry looked up, then built if need be."""
    stat = os.stat(file)
    if known_sha256(file, folder, stat) is not None or _may_hold(folder, stat, config):
        return None
    hashing.start(file)
    _remove_dead_builds(folder)
    staging = folder / f".build.{os.getpid()}.{secrets.token_hex(8)}"
    try:
        return staging, _write_arrays(staging, wanted, config, blocks())
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

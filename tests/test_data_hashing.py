"""The data files' SHA-256 (nnctl.io.hashing): the same digest as hashlib over the bytes, each file
hashed once per process, in a thread beside its parsing on a first reading, and a cached file's
hash taken from the cache's hashes.json rather than read again for the checkpoint."""
from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from nnctl.data import cache, readers
from nnctl.data.dataset import load_dataset
from nnctl.errors import DataError
from nnctl.io import hashing
from nnctl.spec.load import load_spec
from nnctl.train.checkpoint import data_fingerprint
from tests.helpers import run, write_project


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(hashing, "_digests", {})


def _counted(monkeypatch):
    calls = []
    real = hashing._compute
    monkeypatch.setattr(hashing, "_compute", lambda path: (calls.append(str(path)), real(path))[1])
    return calls


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n1,2\n")
    calls = _counted(monkeypatch)
    hashing.start(path)
    assert hashing.sha256(path) == hashing.sha256(path) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert len(calls) == 1
    path.write_bytes(b"a,b\n1,3\n")
    assert hashing.sha256(path) == hashlib.sha256(b"a,b\n1,3\n").hexdigest() and len(calls) == 2


def test_a_failed_hash_is_raised_and_not_kept(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_bytes(b"x\n")
    real, failures = hashing._compute, [OSError("a read failed")]
    monkeypatch.setattr(hashing, "_compute", lambda p: (_ for _ in ()).throw(failures.pop()) if failures else real(p))
    with pytest.raises(OSError, match="a read failed"):
        hashing.sha256(path)
    assert hashing.sha256(path) == hashlib.sha256(b"x\n").hexdigest()


def test_a_fifo_is_refused_not_drained(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    hashing.start(fifo)  # opened without blocking, refused by its kind
    with pytest.raises(DataError, match="expected a regular file, received a FIFO"):
        hashing.sha256(fifo)


def test_the_checkpoint_fingerprint_is_unchanged(tmp_path):
    spec_path = write_project(tmp_path / "p")
    spec = load_spec(spec_path)
    file_hash = hashlib.sha256((spec_path.parent / "data.csv").read_bytes()).hexdigest()
    assert data_fingerprint(spec) == hashlib.sha256(file_hash.encode()).hexdigest()


def _csv(path, rows=2000):
    path.write_text("a,b,y\n" + "".join(f"{i / 3!r},{-i},{i % 2}\n" for i in range(rows)))


def _load(path, folder):
    return load_dataset(path, {"x": ["a", "b"]}, {"y": ["y"]}, {"x": (2,)}, dtype="float64", cache_folder=folder)


def test_a_first_reading_parses_while_the_hash_runs(tmp_path, monkeypatch):
    """The hash waits until the parse has begun: read one after the other, this would time out."""
    monkeypatch.setattr(cache, "MIN_BYTES", 0)
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _csv(path)
    parsing, overlapped = threading.Event(), []
    real_parse, real_hash = readers.arrow_number_blocks, hashing._compute
    monkeypatch.setattr(readers, "arrow_number_blocks", lambda *a, **k: (parsing.set(), real_parse(*a, **k))[1])
    monkeypatch.setattr(hashing, "_compute", lambda p: (overlapped.append(parsing.wait(timeout=10)), real_hash(p))[1])
    data = _load(path, folder)
    assert overlapped == [True]
    (entry,) = [p for p in folder.iterdir() if p.is_dir()]  # the staging folder became the entry
    identity = json.loads((entry / "manifest.json").read_text())["identity"]
    assert entry.name == hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]
    assert identity["file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(hashing, "_digests", {})
    again = _load(path, folder)  # from the entry, its hash from hashes.json
    assert again.inputs["x"].tobytes() == data.inputs["x"].tobytes() and again.targets["y"].tobytes() == data.targets["y"].tobytes()
    assert again.notes == data.notes == []


def test_an_entry_that_may_be_this_files_is_looked_up_before_any_parse(tmp_path, monkeypatch):
    """hashes.json lost, the entry kept: the hash comes first and finds it, nothing is parsed."""
    monkeypatch.setattr(cache, "MIN_BYTES", 0)
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _csv(path)
    _load(path, folder)
    (folder / "hashes.json").unlink()
    monkeypatch.setattr(hashing, "_digests", {})
    parses = []
    real = readers.arrow_number_blocks
    monkeypatch.setattr(readers, "arrow_number_blocks", lambda *a, **k: (parses.append(1), real(*a, **k))[1])
    assert _load(path, folder).notes == [] and parses == []


def test_a_killed_builds_staging_folder_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MIN_BYTES", 0)
    path, folder = tmp_path / "d.csv", tmp_path / "cache"
    _csv(path)
    dead, alive = folder / ".build.999999999.00ff", folder / f".build.{os.getpid()}.00ff"
    for staging in (dead, alive):
        staging.mkdir(parents=True)
        (staging / "0.npy").write_bytes(b"half written")
    _load(path, folder)
    assert not dead.exists() and alive.exists()
    assert [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] != []


def test_a_cached_files_checkpoint_hash_reads_none_of_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MIN_BYTES", 0)
    folder = write_project(tmp_path / "p").parent
    assert run("-q", "train", "spec.yaml", cwd=folder).exit_code == 0
    monkeypatch.setattr(hashing, "_digests", {})  # as a new process starts
    calls = _counted(monkeypatch)
    assert run("-q", "train", "spec.yaml", "--epochs", "5", "--resume", cwd=folder).exit_code == 0
    assert calls == []
    (folder / "data.csv").write_text((folder / "data.csv").read_text() + "0.5,0.5,0.5\n")
    result = run("-q", "train", "spec.yaml", "--epochs", "6", "--resume", cwd=folder)
    assert result.exit_code == 2 and "received changed data" in result.output and len(calls) == 1

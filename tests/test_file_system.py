"""What the user's machine refuses or leaves behind, through `atomic_write` and the CLI.

A full disk, a read-only folder, a file where a folder should be and a denied permission are each
exit 2 naming the path and the system's reason, and leave every file there as it was. A killed
writer's temporary file is removed by the next write; a written file has the mode an ordinary
write would give it; a symlink is written through.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest

from helpers import ROOT, run, write_project
from nnctl.cli.commands import NnctlGroup
from nnctl.errors import FileSystemError
from nnctl.io.atomic import atomic_write, remove_stale_temp_files


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    """A tmpfs of `size` at `folder`, or a skip saying why there cannot be one here."""
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system with")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root in a namespace that allows it): {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path / "proj")


@pytest.fixture
def old_weights(project):
    """Weights from an earlier run: the bytes a failed write must leave as they are."""
    path = project.parent / "old.npz"
    assert run("train", project, "--epochs", 1, "--out", path, cwd=project.parent).exit_code == 0
    return path.read_bytes()


# --- the machine refuses ---------------------------------------------------------------------------
def test_full_disk_is_exit_2_naming_the_file_and_the_reason(project, old_weights, tmp_path):
    with _tmpfs(tmp_path / "small", "64k") as small:
        (small / "w.npz").write_bytes(old_weights)
        with open(small / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        before = _snapshot(small)
        result = run("train", project, "--out", small / "w.npz", cwd=project.parent)
        assert result.exit_code == 2, result.output
        assert result.stderr == f"Error (file error): {small}/w.npz: expected a writable folder ({small}), received: No space left on device\n"
        assert _snapshot(small) == before


def test_read_only_folder_is_exit_2_naming_the_file_and_the_reason(project, old_weights, tmp_path):
    with _tmpfs(tmp_path / "ro", "64k") as folder:
        (folder / "w.npz").write_bytes(old_weights)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        result = run("train", project, "--out", folder / "w.npz", cwd=project.parent)
        assert result.exit_code == 2, result.output
        assert result.stderr == f"Error (file error): {folder}/w.npz: expected a writable folder ({folder}), received: Read-only file system\n"
        assert _snapshot(folder) == {"w.npz": old_weights}


def test_a_file_where_a_folder_should_be_is_exit_2(project):
    before = _snapshot(project.parent)
    result = run("train", project, "--out", "data.csv/w.npz", cwd=project.parent)
    assert result.exit_code == 2, result.output
    assert result.stderr == "Error (file error): data.csv/w.npz: expected data.csv to be a folder to write this file in, received a file\n"
    after = _snapshot(project.parent)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [name for name in after if name.endswith(".tmp")]


def test_permission_denied_is_exit_2_naming_the_file_and_the_reason(project, old_weights):
    locked = project.parent / "locked"
    locked.mkdir()
    (locked / "w.npz").write_bytes(old_weights)
    locked.chmod(0o555)
    command = [sys.executable, "-m", "nnctl", "train", project.name, "--out", "locked/w.npz"]
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and no setpriv to drop CAP_DAC_OVERRIDE with")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *command]
    result = subprocess.run(command, cwd=project.parent, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    locked.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "Error (file error): locked/w.npz: expected a writable folder (locked), received: Permission denied\n"
    assert _snapshot(locked) == {"w.npz": old_weights}


def test_a_folder_as_the_destination_is_refused(tmp_path):
    (tmp_path / "w.npz").mkdir()
    with pytest.raises(FileSystemError) as caught, atomic_write(tmp_path / "w.npz") as handle:
        handle.write(b"x")
    assert str(caught.value) == f"{tmp_path}/w.npz: expected a file path, received a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


def test_an_os_error_from_another_file_the_caller_opens_is_not_this_writes(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "w.txt", "w"):
        open(tmp_path / "missing.txt")
    assert list(tmp_path.iterdir()) == []


def test_the_last_resort_names_the_file_an_os_error_was_about():
    group = NnctlGroup()

    @group.command()
    def touch():
        raise PermissionError(13, "Permission denied", "somewhere/file.txt")

    result = click.testing.CliRunner().invoke(group, ["touch"])
    assert result.exit_code == 2
    assert result.stderr == "Error (file error): somewhere/file.txt: expected a usable file or folder, received: Permission denied\n"


# --- what a write leaves ---------------------------------------------------------------------------
@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_the_umask_gives(tmp_path, mask, mode):
    with _umask(mask), atomic_write(tmp_path / "w.txt", "w") as handle:
        handle.write("new")
    assert stat.S_IMODE((tmp_path / "w.txt").stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("old")
    path.chmod(0o664)
    with _umask(0o077), atomic_write(path, "w") as handle:
        handle.write("new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o664


def test_a_symlink_is_written_through(project, tmp_path):
    target = tmp_path / "kept" / "w.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = project.parent / "latest.npz"
    link.symlink_to(target)
    assert run("train", project, "--out", link, cwd=project.parent).exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes().startswith(b"PK\x03\x04") and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["w.npz"]


def test_the_temporary_file_carries_the_writers_pid(tmp_path):
    with atomic_write(tmp_path / "w.npz") as handle:
        handle.write(b"x")
        (temp,) = [p.name for p in tmp_path.iterdir()]
    assert temp.startswith(f".w.npz.{os.getpid()}.") and temp.endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_a_write_removes_its_destinations_leftovers_of_dead_writers(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".checkpoint.npz.{dead}.abc_1234.tmp"
    live = tmp_path / f".checkpoint.npz.{os.getpid()}.abc_1234.tmp"
    other = tmp_path / f".history.csv.{dead}.abc_1234.tmp"
    mine = tmp_path / "notes.tmp"
    for path in (stale, live, other, mine):
        path.write_bytes(b"leftover " + path.name.encode())
    with atomic_write(tmp_path / "checkpoint.npz") as handle:
        handle.write(b"new")
    assert not stale.exists() and live.exists() and other.exists() and mine.exists()
    assert remove_stale_temp_files(tmp_path) == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.npz", live.name, mine.name])
    assert mine.read_bytes() == b"leftover notes.tmp" and live.read_bytes() == b"leftover " + live.name.encode()


def test_removing_stale_files_of_a_missing_folder_is_nothing(tmp_path):
    assert remove_stale_temp_files(tmp_path / "missing") == []

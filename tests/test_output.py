"""Where the output goes wrong, the run does not: strict --json, a reader that leaves (| head), an
encoding without box characters, and charts of values near the largest float."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import click
import numpy
import pytest

from helpers import ROOT, run, write_project
from nnctl.cli.commands import NnctlGroup
from nnctl.cli.report import loss_sparkline, render_text

MAX = sys.float_info.max
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _refuse_constant(name):
    raise AssertionError(f"not JSON: {name}")


def _strict_json(text):
    return json.loads(text, parse_constant=_refuse_constant)


def _arrays(path):
    with numpy.load(path, allow_pickle=False) as archive:
        return {key: archive[key].tobytes() for key in archive.files}


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path / "proj")


# --- --json --------------------------------------------------------------------------------------
def test_json_writes_null_for_nan_and_infinity(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n1,nan,inf\n2,0.5,-inf\n3,0.25,\n")
    result = run("plot", history, "--json")
    assert result.exit_code == 0, result.output
    data = _strict_json(result.stdout)
    assert data["curves"]["loss"] == {"train": [None, 0.5, 0.25], "validation": [None, None, None]}
    assert data["epochs"] == [1, 2, 3]


# --- a reader that leaves: nnctl train | head -------------------------------------------------------
def _train_into_closed_pipe(folder, *args):
    """`nnctl train` with a stdout whose reader is already gone: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "nnctl", "train", "spec.yaml", "--epochs", "30", *args], cwd=folder,
                              env=ENV, stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["tables", "json"])
def test_a_closed_stdout_loses_the_output_not_the_run(tmp_path, args):
    reference = write_project(tmp_path / "reference")
    assert run("train", reference, "--epochs", 30, cwd=reference.parent).exit_code == 0
    piped = write_project(tmp_path / "piped")
    result = _train_into_closed_pipe(piped.parent, *args)
    # Exit 0: the run did all it was asked and saved it; only what nobody read was dropped.
    assert (result.returncode, result.stderr) == (0, "")
    for name in ("weights.npz", "best.npz"):
        assert _arrays(piped.parent / "runs/two_tower" / name) == _arrays(reference.parent / "runs/two_tower" / name)
    assert (piped.parent / "runs/two_tower/history.csv").read_text().count("\n") == 31


def test_head_of_the_training_log(tmp_path):
    project = write_project(tmp_path / "proj")
    result = subprocess.run(f"set -o pipefail; {sys.executable} -m nnctl train spec.yaml --epochs 200 | head -n 2", shell=True, cwd=project.parent,
                            env=ENV, capture_output=True, text=True, executable="/bin/bash")
    assert result.returncode == 0 and result.stderr == ""  # pipefail: nnctl's own status
    assert [line.split(" loss ")[0] for line in result.stdout.splitlines()] == ["epoch 1/200", "epoch 2/200"]
    assert len((project.parent / "runs/two_tower/history.csv").read_text().splitlines()) == 201


# --- an encoding without the characters ----------------------------------------------------------------
def test_a_latin_1_stdout_degrades_instead_of_failing(project):
    env = {**ENV, "PYTHONIOENCODING": "latin-1"}
    result = subprocess.run([sys.executable, "-m", "nnctl", "train", "spec.yaml"], cwd=project.parent, env=env, capture_output=True)
    assert result.returncode == 0 and result.stderr == b""
    out = result.stdout.decode("latin-1")
    assert "|-------+--------+" in out  # rich's ASCII boxes, as it picks them for a non-UTF-8 stream
    assert "loss      0.7604 ??? 0.4557  (3 epochs)" in out  # the sparkline's blocks are not latin-1
    assert out.endswith("checkpoint: runs/two_tower/checkpoint.npz\n")
    plot = subprocess.run([sys.executable, "-m", "nnctl", "plot", "runs/two_tower/history.csv"], cwd=project.parent, env=env, capture_output=True)
    assert plot.returncode == 0 and plot.stderr == b"" and "? train (solid)" in plot.stdout.decode("latin-1")


# --- values near the largest float --------------------------------------------------------------------
def test_plot_of_values_near_the_largest_float(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text(f"epoch,loss,val_loss\n1,{MAX!r},{-MAX!r}\n2,1e308,{MAX!r}\n3,5,nan\n")
    result = run("plot", history)
    assert result.exit_code == 0, result.output
    top, bottom = result.stdout.splitlines()[1], result.stdout.splitlines()[8]
    assert top.startswith(" 1.798e+308 ┤") and bottom.startswith("-1.798e+308 ┤")
    assert top[13:].strip() and bottom[13:].strip()  # both extremes are drawn, on the chart's edges


def _chart_rows(history, text):
    history.write_text(text)
    result = run("plot", history)
    assert result.exit_code == 0, result.output
    return [re.split("[┤│]", line, maxsplit=1)[1] for line in result.stdout.splitlines()[1:9]], result.stdout


def test_a_flat_curve_at_the_largest_float_is_drawn_as_any_flat_curve(tmp_path):
    huge, text = _chart_rows(tmp_path / "huge.csv", f"epoch,loss\n1,{MAX!r}\n2,{MAX!r}\n")
    one, _ = _chart_rows(tmp_path / "one.csv", "epoch,loss\n1,1.0\n2,1.0\n")
    assert [i for i, row in enumerate(huge) if row.strip()] == [i for i, row in enumerate(one) if row.strip()] == [3]
    assert set(huge[3].strip()) == set(one[3].strip()) == {"⣀"}
    assert "inf" not in text and text.splitlines()[1].startswith("1.798e+308 ┤")


def test_loss_sparkline_of_huge_losses():
    history = [{"loss": MAX, "val_loss": 1e-300}, {"loss": 1e308, "val_loss": MAX}, {"loss": 2.0, "val_loss": 3.0}]
    assert render_text(loss_sparkline(history)).splitlines() == [
        "loss      1.798e+308 ██▄ 2.0000  (3 epochs, log scale)",
        "val_loss  1e-300 ▁█▄ 3.0000  (3 epochs, log scale)",
    ]


def test_a_reader_that_leaves_ends_any_command_quietly():
    """The last resort for output printed past nnctl's own streams (click.echo straight to stdout)."""
    group = NnctlGroup()

    @group.command()
    def talk():
        raise BrokenPipeError(32, "Broken pipe")

    result = click.testing.CliRunner().invoke(group, ["talk"])
    assert (result.exit_code, result.output) == (0, "")


def test_a_latin_1_terminal_with_the_live_progress_bar(project):
    """On a terminal rich draws a live bar (block characters) and proxies sys.stdout while it does."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: nnctl on the terminal's side
        os.chdir(project.parent)
        os.execve(sys.executable, [sys.executable, "-m", "nnctl", "train", "spec.yaml", "--epochs", "100"], {**ENV, "PYTHONIOENCODING": "latin-1"})
    out = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(fd, 65536):
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode("latin-1")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("latin-1"))
    assert "epoch 1/100 ----" in text  # the bar, in ASCII
    assert text.endswith("history: runs/two_tower/history.csv\r\ncheckpoint: runs/two_tower/checkpoint.npz\r\n")
    assert len((project.parent / "runs/two_tower/history.csv").read_text().splitlines()) == 101


def test_user_strings_render_as_written_markup_and_emoji_codes_alike():
    """A class named ':fire: [b]x[/b]' is shown as those characters, not as an emoji in bold."""
    import numpy

    from nnctl.cli.report import predictions_view, render_text

    shown = render_text(predictions_view(["p"], numpy.array([[0.5]]), {"c": [":fire: [b]x[/b]"]}))
    assert ":fire: [b]x[/b]" in shown and "\N{FIRE}" not in shown

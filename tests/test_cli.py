"""CLI behaviour through click's CliRunner: every command, its exit codes, tables and --json."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy
import pytest

from tests.helpers import ROOT, TWO_TOWER, run, run_json, write_project


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path / "proj")


def test_summary_table_matches_keras_layout(project):
    result = run("summary", project)
    assert result.exit_code == 0
    out = result.stdout
    for expected in ("Layer (type)", "Output Shape", "Param #", "Connected to", "dense1 (Dense)", "concat (Concatenate)",
                     "dense1[0][0], dense2[0][0]", "Total params: 13 (52.00 B)", "Trainable params: 13 (52.00 B)",
                     "Non-trainable params: 0 (0.00 B)", "dense3/kernel", "(3, 1)"):
        assert expected in out, expected


def test_summary_json_counts_two_tower(project):
    data = run_json("summary", project)
    params = {layer["name"]: layer["params"] for layer in data["layers"]}
    assert params == {"x": 0, "dense1": 3, "dense2": 6, "concat": 0, "dense3": 4}
    assert data["total_params"] == 13 and data["trainable_params"] == 13 and data["non_trainable_params"] == 0
    assert data["total_bytes"] == 52
    assert {w["name"]: w["shape"] for w in data["weights"]}["dense2/kernel"] == [2, 2]
    assert data["layers"][3]["output_shape"] == [None, 3]


# What `nnctl summary` never imports: it needs shapes, not arrays or tables, and bench/run.py
# times its start-up against `python -c "import numpy"`; the rest only other commands use.
SUMMARY_SKIPS = ["numpy", "pyarrow", "json", "difflib", "shlex", "signal", "nnctl.train.session", "nnctl.data.dataset"]


def test_summary_imports_only_what_it_shows(project):
    code = ("import sys\nfrom nnctl.cli.entry import main\nsys.argv = ['nnctl', 'summary', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, str(project)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "Total params: 13" in done.stdout
    imported = set(done.stdout.split())
    assert "nnctl.model.graph" in imported and [name for name in SUMMARY_SKIPS if name in imported] == []



def test_the_program_freezes_its_start_up_and_collects_during_the_command():
    """nnctl.cli.entry.main: start-up's objects frozen before the command, the collector on during
    it (a long train collects its cycles), and what the command left frozen at exit."""
    code = ("import gc, sys\nimport nnctl.cli.commands as commands\nseen = {}\n"
            "def command(prog_name):\n    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())\n"
            "    seen['made'] = [[] for _ in range(1000)]\n    sys.exit(0)\n"
            "commands.cli = command\nfrom nnctl.cli.entry import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(seen['enabled'], seen['frozen'], gc.get_freeze_count() - seen['frozen'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    enabled, frozen, frozen_at_exit = done.stdout.split()
    assert enabled == "True" and int(frozen) > 5000 and int(frozen_at_exit) >= 1000

def test_train_writes_weights_history_and_reports(project):
    result = run("train", project, cwd=project.parent)
    assert result.exit_code == 0, result.output
    run_dir = project.parent / "runs" / "two_tower"
    weights = numpy.load(run_dir / "weights.npz")
    assert sorted(weights.files) == sorted(["dense1/kernel", "dense1/bias", "dense2/kernel", "dense2/bias", "dense3/kernel", "dense3/bias"])
    assert weights["dense3/kernel"].shape == (3, 1) and weights["dense3/kernel"].dtype == numpy.float32
    rows = list(csv.DictReader(open(run_dir / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(rows[0])
    assert "Training history" in result.stdout and "weights.npz" in result.stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["seed"] == 0 and record["resolved_spec"]["optimizer"]["beta_1"] == 0.9


def test_train_json_and_overrides(project, tmp_path):
    out = tmp_path / "elsewhere" / "w.npz"
    data = run_json("train", project, "--epochs", 2, "--batch-size", 3, "--seed", 5, "--out", out, cwd=project.parent)
    assert data["epochs"] == 2 and data["train_samples"] == 16 and data["validation_samples"] == 4
    assert set(data["final"]) == {"loss", "mae", "val_loss", "val_mae"}
    assert data["weights"] == str(out) and out.exists() and (out.parent / "history.csv").exists()
    assert data["samples_per_second"] > 0


def test_same_seed_gives_identical_bytes_and_other_seed_differs(project, tmp_path):
    a, b, c = (tmp_path / n / "w.npz" for n in ("a", "b", "c"))
    run_json("train", project, "--out", a, cwd=project.parent)
    run_json("train", project, "--out", b, cwd=project.parent)
    run_json("train", project, "--out", c, "--seed", 1, cwd=project.parent)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()

    def history(path):  # all but the wall-clock columns
        return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second")} for row in csv.DictReader(open(path.parent / "history.csv"))]

    assert history(a) == history(b) != history(c)


def test_init_starts_from_given_weights(project, tmp_path):
    first = tmp_path / "first.npz"
    run_json("train", project, "--out", first, "--epochs", 1, cwd=project.parent)
    data = run_json("train", project, "--init", first, "--epochs", 1, "--out", tmp_path / "second.npz", cwd=project.parent)
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert data["epochs"] == 1 and len(history) == 1


def test_predict_csv_stdout_json_and_files(project, tmp_path):
    weights = tmp_path / "w.npz"
    run_json("train", project, "--out", weights, cwd=project.parent)
    inputs = tmp_path / "in.csv"
    inputs.write_text("x2,x1\n0.5,1.0\n-1,2\n")  # column order differs from the spec; targets absent
    data = run_json("predict", project, "--weights", weights, "--input", inputs)
    assert len(data["outputs"]) == 2 and len(data["outputs"][0]) == 1 and data["classes"] is None
    w = numpy.load(weights)
    x = numpy.array([[1.0, 0.5], [2, -1]], dtype=numpy.float32)
    expected = numpy.concatenate([x @ w["dense1/kernel"] + w["dense1/bias"], x @ w["dense2/kernel"] + w["dense2/bias"]], axis=1) @ w["dense3/kernel"] + w["dense3/bias"]
    numpy.testing.assert_allclose(numpy.array(data["outputs"]), expected, rtol=1e-6)
    out_csv = tmp_path / "pred.csv"
    assert run("predict", project, "--weights", weights, "--input", inputs, "--output", out_csv).exit_code == 0
    rows = list(csv.reader(open(out_csv)))
    assert rows[0] == ["dense3_0"] and float(rows[1][0]) == numpy.float32(data["outputs"][0][0])
    out_npy = tmp_path / "pred.npy"
    assert run("predict", project, "--weights", weights, "--input", inputs, "--output", out_npy).exit_code == 0
    assert numpy.load(out_npy).shape == (2, 1)
    table = run("predict", project, "--weights", weights, "--input", inputs)
    assert table.exit_code == 0 and "Predictions" in table.stdout and "dense3_0" in table.stdout


def test_predict_classification_gives_probabilities_and_class(tmp_path):
    spec = TWO_TOWER.replace("loss: mse", "loss: {type: sparse_categorical_crossentropy, from_logits: true}").replace(
        "units: 1, from: concat", "units: 3, from: concat").replace("metrics: [mae]", "metrics: [accuracy]")
    data = "x1,x2,y\n" + "".join(f"{i / 10},{-i / 7},{i % 3}\n" for i in range(12))
    path = write_project(tmp_path, spec, data)
    weights = tmp_path / "w.npz"
    run_json("train", path, "--out", weights, cwd=tmp_path)
    result = run_json("predict", path, "--weights", weights, "--input", tmp_path / "data.csv")
    probs = numpy.array(result["outputs"])
    numpy.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    assert result["classes"] == probs.argmax(axis=1).tolist()


def test_gradcheck_passes_and_json(project):
    result = run("gradcheck", project)
    assert result.exit_code == 0, result.output
    assert "All" in result.stdout and "dense2/kernel" in result.stdout
    data = run_json("gradcheck", project)
    assert data["passed"] is True
    names = {c["name"] for c in data["checks"]}
    assert {"dense1/kernel", "dense3/bias", "x", "concat", "dense3"} <= names
    assert all(c["max_abs_error"] < 1e-6 for c in data["checks"])


def test_gradcheck_fails_with_exit_1_when_tolerance_is_impossible(project):
    # A finite-difference step of 0.5 makes the numeric estimate of a non-quadratic loss wrong.
    spec = TWO_TOWER.replace("type: dense, units: 2, from: x}", "type: dense, units: 2, from: x, activation: tanh}")
    path = write_project(project.parent / "tanh", spec)
    result = run("gradcheck", path, "--eps", "0.5", "--rtol", "0", "--atol", "1e-12")
    assert result.exit_code == 1
    assert "disagree" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "{missing}"], "does not exist"),
    (["summary", "{bad_yaml}"], "syntax error"),
    (["predict", "{spec}", "--weights", "{missing}", "--input", "{data}"], "does not exist"),
    (["train", "{spec}", "--epochs", "0"], "0"),
    (["train", "{spec}", "--backend", "tpu"], "tpu"),
    (["predict", "{spec}", "--weights", "{data}", "--input", "{data}", "--output", "x.txt"], ".csv or .npy"),
])
def test_bad_input_exits_2_without_traceback(project, args, message):
    (project.parent / "bad.yaml").write_text("layers: [\n")
    subst = {"missing": project.parent / "nope.yaml", "bad_yaml": project.parent / "bad.yaml", "spec": project, "data": project.parent / "data.csv"}
    result = run(*[a.format(**subst) for a in args], cwd=project.parent)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_version_and_help():
    assert run("--version").exit_code == 0
    help_text = run("--help").stdout
    for command in ("train", "summary", "gradcheck", "predict"):
        assert command in help_text


def test_cupy_backend_without_gpu_says_what_is_missing(project):
    from tests.conftest import CUPY_MISSING

    if CUPY_MISSING is None:
        pytest.skip("CuPy and a GPU are present")
    result = run("train", project, "--backend", "cupy", cwd=project.parent)
    assert result.exit_code == 2
    assert "nnctl[cuda12]" in result.output or "expected an NVIDIA GPU" in result.output
    assert "Traceback" not in result.output


def test_device_resident_batches_match_host_batches(project):
    """The GPU path (data copied to the device once, gathered there) yields the host path's batches."""
    from nnctl.core.backend import get_backend
    from nnctl.data.batches import Batches
    from nnctl.spec.load import load_spec
    from nnctl.train.session import Session, load_spec_data

    session = Session(load_spec(project), get_backend("numpy"))
    dataset = load_spec_data(session)
    host = Batches(dataset, 3, session.backend, "float32")
    device = Batches(dataset, 3, session.backend, "float32")
    device._device = {"x": dataset.inputs["x"].copy(), **{key: targets.copy() for key, targets in device._targets.items()}}
    order = numpy.random.default_rng(0).permutation(len(dataset))
    for (xa, ya, na), (xb, yb, nb) in zip(host(order, skip=1), device(order, skip=1), strict=True):
        assert na == nb and numpy.array_equal(xa["x"], xb["x"]) and ya.keys() == yb.keys() == {session.model.outputs[0]}
        assert all(numpy.array_equal(ya[k], yb[k]) for k in ya)

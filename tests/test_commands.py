"""The inspecting commands through click's CliRunner: evaluate, summary --graph, plot, gradcheck
--explain, time, config, init, schema, and what every command shares (--quiet, --json, NO_COLOR,
no TTY, shell completion). Table-driven where the cases differ only in data."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy
import pytest
import yaml
from click.testing import CliRunner

from nnctl.cli.commands import cli
from tests.helpers import SPECS, TWO_TOWER, run, run_json, write_project

BRAILLE = re.compile("[\u2801-\u28ff]")
SGR_COLOR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;[25])[;m]")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CLASSIFIER = (
    TWO_TOWER.replace("loss: mse", "loss: {type: sparse_categorical_crossentropy, from_logits: true}")
    .replace("units: 1, from: concat", "units: 3, from: concat")
    .replace("metrics: [mae]", "metrics: [accuracy]")
    .replace("epochs: 3", "epochs: 20")
)
CLASSIFIER_CSV = "x1,x2,y\n" + "".join(f"{(i % 3) - 1 + (i % 5) / 10},{(i % 7) / 7},{i % 3}\n" for i in range(30))

# Article 003's 2-4-3 sigmoid network: x = [1, 2] -> dense 4 sigmoid -> dense 3 sigmoid, 0.5 * sum of squares.
FNN_SIGMOID = """\
name: fnn
dtype: float64
inputs: {x: [2]}
layers:
  - name: dense
    type: dense
    units: 4
    activation: sigmoid
    kernel_initializer:
      type: constant
      value: [[-0.96988726, -0.84827805, 0.312042, 0.8871379], [0.6567688, -0.29099226, -0.80029106, -0.15143871]]
    bias_initializer: zeros
  - name: dense_1
    type: dense
    units: 3
    activation: sigmoid
    kernel_initializer:
      type: constant
      value: [[-0.1406, -0.1435, -0.1746], [-0.0464, -0.0474, -0.0576], [-0.0519, -0.0530, -0.0645], [-0.1543, -0.1575, -0.1916]]
loss: half_squared_error
optimizer: {type: sgd, learning_rate: 0.5}
data: {path: data.csv, inputs: {x: [x1, x2]}, targets: [y1, y2, y3]}
train: {epochs: 2, batch_size: 1, shuffle: false}
"""
FNN_CSV = "x1,x2,y1,y2,y3\n1,2,0.3,0.5,0.2\n"
A1 = [0.58507696, 0.19305778, 0.21610001, 0.64204715]

HISTORY_CSV = "epoch,loss,mae,val_loss,val_mae,lr,seconds,samples_per_second\n" + "".join(
    f"{e},{1 / e},{0.8 / e},{1.2 / e + 0.05},{0.9 / e},0.01,0.01,1000.0\n" for e in range(1, 31)
)


def invoke(*args, env=None, cwd=None):
    """Like tests.helpers.run, with environment variables (NO_COLOR, completion)."""
    with contextlib.chdir(cwd or Path.cwd()):
        return CliRunner().invoke(cli, [str(a) for a in args], env=env, prog_name="nnctl", catch_exceptions=False)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """The two-tower project, trained once: (spec path, weights path, history path)."""
    folder = tmp_path_factory.mktemp("regression")
    spec = write_project(folder)
    run_json("train", spec, cwd=folder)
    run_dir = folder / "runs" / "two_tower"
    return spec, run_dir / "weights.npz", run_dir / "history.csv"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    spec = write_project(folder, CLASSIFIER, CLASSIFIER_CSV)
    run_json("train", spec, cwd=folder)
    return spec, folder / "runs" / "two_tower" / "weights.npz"


@pytest.fixture
def fnn(tmp_path):
    return write_project(tmp_path / "fnn", FNN_SIGMOID, FNN_CSV)


# --- evaluate ----------------------------------------------------------------------------------------
def test_evaluate_regression_uses_every_row_and_matches_predict(regression, tmp_path):
    spec, weights, _ = regression
    data = run_json("evaluate", spec, "--weights", weights)
    assert set(data) == {"name", "data", "samples", "loss_name", "metrics", "classification", "outputs"}
    assert data["outputs"] == [{"name": "dense3", "loss_name": "mse", "loss_weight": 1.0, "classification": None}]
    assert data["samples"] == 20 and data["classification"] is None  # all rows: no validation split
    predicted = numpy.array(run_json("predict", spec, "--weights", weights, "--input", spec.parent / "data.csv")["outputs"])
    y = numpy.array([float(line.split(",")[2]) for line in (spec.parent / "data.csv").read_text().splitlines()[1:]])
    assert data["metrics"]["loss"] == pytest.approx(numpy.mean((predicted[:, 0] - y) ** 2), rel=1e-5)
    assert data["metrics"]["mae"] == pytest.approx(numpy.mean(numpy.abs(predicted[:, 0] - y)), rel=1e-5)
    subset = tmp_path / "subset.csv"
    subset.write_text("\n".join((spec.parent / "data.csv").read_text().splitlines()[:6]) + "\n")
    assert run_json("evaluate", spec, "--weights", weights, "--data", subset)["samples"] == 5
    table = run("evaluate", spec, "--weights", weights).stdout
    assert "loss (mse)" in table and "mae" in table and "Confusion" not in table


def test_evaluate_classifier_confusion_matrix_and_scores(classifier):
    spec, weights = classifier
    data = run_json("evaluate", spec, "--weights", weights)
    cls = data["classification"]
    truth = numpy.array([int(line.split(",")[2]) for line in CLASSIFIER_CSV.splitlines()[1:]])
    predicted = numpy.array(run_json("predict", spec, "--weights", weights, "--input", spec.parent / "data.csv")["classes"])
    expected = numpy.zeros((3, 3), dtype=int)
    for t, p in zip(truth, predicted):
        expected[t, p] += 1
    assert cls["classes"] == 3 and cls["confusion_matrix"] == expected.tolist()
    assert cls["accuracy"] == pytest.approx(data["metrics"]["accuracy"]) == pytest.approx((truth == predicted).mean())
    assert [row["support"] for row in cls["per_class"]] == [10, 10, 10]
    macro = cls["averages"]["macro"]
    assert macro["f1"] == pytest.approx(numpy.mean([row["f1"] for row in cls["per_class"]]))
    table = run("evaluate", spec, "--weights", weights).stdout
    for text in ("Confusion matrix", "true \\ pred", "Precision", "Recall", "F1", "Support", "macro avg", "weighted avg"):
        assert text in table, text


def test_per_class_scores_follow_scikit_learn():
    from nnctl.diagnostics.evaluation import per_class_scores

    rows, averages = per_class_scores([[5, 1, 0], [2, 3, 1], [0, 0, 0]])  # class 2: never true, never predicted
    precision, recall = [5 / 7, 3 / 4, 0.0], [5 / 6, 3 / 6, 0.0]
    for row, p, r in zip(rows, precision, recall):
        assert row["precision"] == pytest.approx(p) and row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    assert [row["support"] for row in rows] == [6, 6, 0]
    assert averages["macro"]["recall"] == pytest.approx(sum(recall) / 3)
    assert averages["weighted"]["recall"] == pytest.approx((5 + 3) / 12)


@pytest.mark.parametrize("extra, message", [
    ([], "Missing option '--weights'"),
    (["--weights", "{missing}"], "does not exist"),
    (["--weights", "{weights}", "--data", "{missing}"], "does not exist"),
    (["--weights", "{weights}", "--data", "{bad_csv}"], "column"),
])
def test_evaluate_bad_input_exits_2(regression, tmp_path, extra, message):
    spec, weights, _ = regression
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    subst = {"missing": tmp_path / "nope.npz", "weights": weights, "bad_csv": tmp_path / "bad.csv"}
    result = run("evaluate", spec, *[a.format(**subst) for a in extra])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# --- summary --graph ---------------------------------------------------------------------------------
def test_summary_graph_dot_has_nodes_with_shapes_and_edges(tmp_path):
    out = tmp_path / "two_tower.dot"
    result = run("summary", SPECS / "two_tower.yaml", "--graph", out)
    assert result.exit_code == 0 and f"graph: {out}" in result.stdout and "Total params" in result.stdout
    dot = out.read_text()
    assert dot.startswith('digraph "two_tower" {') and dot.rstrip().endswith("}")
    for node in ("x (InputLayer)", "dense1 (Dense)", "dense2 (Dense)", "concat (Concatenate)", "dense3 (Dense)"):
        assert node in dot, node
    assert "[(None, 1), (None, 2)]" in dot and "(None, 3)" in dot  # concat's input and output shapes
    edges = set(re.findall(r'^\s*"([^"]+)" -> "([^"]+)";', dot, re.MULTILINE))
    assert edges == {("x", "dense1"), ("x", "dense2"), ("dense1", "concat"), ("dense2", "concat"), ("concat", "dense3")}
    assert run_json("summary", SPECS / "two_tower.yaml", "--graph", tmp_path / "g.gv")["graph"] == str(tmp_path / "g.gv")


def test_dot_quotes_odd_names():
    from nnctl.cli.graphviz import to_dot

    summary = {"name": 'a"b', "layers": [
        {"name": 'in"put', "class": "InputLayer", "output_shape": [None, 2], "connected_to": []},
        {"name": "<b>&", "class": "Dense", "output_shape": [None, 1], "connected_to": ['in"put']},
    ]}
    dot = to_dot(summary)
    assert 'digraph "a\\"b"' in dot and '"in\\"put" -> "<b>&";' in dot and "&lt;b&gt;&amp; (Dense)" in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("suffix, magic", [(".png", PNG_MAGIC), (".svg", b"<?xml")])
def test_summary_graph_picture_through_dot(tmp_path, suffix, magic):
    out = tmp_path / f"two_tower{suffix}"
    assert run("summary", SPECS / "two_tower.yaml", "--graph", out).exit_code == 0
    assert out.read_bytes().startswith(magic) and out.stat().st_size > 2000


def test_summary_graph_picture_without_dot_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("nnctl.cli.graphviz.shutil.which", lambda name: None)
    result = run("summary", SPECS / "two_tower.yaml", "--graph", tmp_path / "g.png")
    assert result.exit_code == 2 and not (tmp_path / "g.png").exists()
    assert "apt-get install graphviz" in result.stderr and "brew install graphviz" in result.stderr and ".dot" in result.stderr


def test_summary_graph_bad_suffix_exits_2(tmp_path):
    result = run("summary", SPECS / "two_tower.yaml", "--graph", tmp_path / "g.txt")
    assert result.exit_code == 2 and ".dot, .gv, .svg, .png, .pdf" in result.stderr


# --- plot and the train sparkline --------------------------------------------------------------------
@pytest.fixture
def history(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HISTORY_CSV)
    return path


def test_plot_draws_terminal_chart_without_out(history):
    result = run("plot", history)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "loss" in out and "mae" in out and "train (solid)" in out and "validation (dotted)" in out
    assert len(BRAILLE.findall(out)) > 100 and "30 epochs" in out
    assert "lr" not in out.split("\n")[0] and "\nlr" not in out  # a constant learning rate is no curve
    assert "\x1b[" not in out  # not a terminal: plain text
    assert max(len(line) for line in out.splitlines()) <= 120


@pytest.mark.parametrize("width", [50, 80, 160])
def test_terminal_chart_fits_the_width(history, width):
    from nnctl.cli.plotting import curves, read_history
    from nnctl.cli.report import curves_view, render_text

    text = render_text(curves_view(curves(read_history(history))), width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert len(BRAILLE.findall(text)) > 30


def test_plot_json_shape(history):
    data = run_json("plot", history)
    assert set(data) == {"history", "epochs", "curves", "out"} and data["out"] is None
    assert data["epochs"] == list(range(1, 31)) and list(data["curves"]) == ["loss", "mae"]
    assert data["curves"]["loss"]["train"][1] == pytest.approx(0.5) and data["curves"]["mae"]["validation"][0] == pytest.approx(0.9)


def _has_matplotlib() -> bool:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_matplotlib(), reason="matplotlib is not installed")
def test_plot_out_png_with_matplotlib(history, tmp_path):
    out = tmp_path / "curves.png"
    result = run("plot", history, "--out", out)
    assert result.exit_code == 0 and f"curves: {out}" in result.stdout
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 10_000


def test_plot_out_without_matplotlib_falls_back_to_terminal(history, tmp_path, monkeypatch):
    monkeypatch.setattr("nnctl.cli.plotting.matplotlib_available", lambda: False)
    out = tmp_path / "curves.png"
    result = run("plot", history, "--out", out)
    assert result.exit_code == 0 and not out.exists()
    assert "pip install 'nnctl[plot]'" in result.stderr and BRAILLE.search(result.stdout)


@pytest.mark.parametrize("content, args, message", [
    (None, [], "does not exist"),
    ("loss\n1\n", [], "'epoch'"),
    ("epoch,loss\n1,abc\n", [], "expected a number"),
    ("epoch,loss\n", [], "only the header"),
    (HISTORY_CSV, ["--out", "curves.bmp"], ".png, .svg, .pdf"),
])
def test_plot_bad_input_exits_2(tmp_path, content, args, message):
    path = tmp_path / "history.csv"
    if content is not None:
        path.write_text(content)
    result = run("plot", path, *args, cwd=tmp_path)
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_loss_sparkline_and_train_shows_it(history, tmp_path):
    from nnctl.cli.plotting import read_history
    from nnctl.cli.report import loss_sparkline, render_text

    lines = render_text(loss_sparkline(read_history(history))).splitlines()
    assert lines[0].startswith("loss ") and lines[1].startswith("val_loss ")
    assert "█" in lines[1] and lines[0].split()[1] == "1.0000" and "(30 epochs, log scale)" in lines[0]
    spec = write_project(tmp_path / "p")
    out = run("train", spec, cwd=spec.parent).stdout
    assert re.search(r"^loss\s+\S+ [▁▂▃▄▅▆▇█]{3} \S+", out, re.MULTILINE), out


# --- gradcheck --explain -------------------------------------------------------------------------------
def test_explain_walks_through_article_003(fnn):
    result = run("gradcheck", fnn, "--explain")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "[0.585077, 0.193058, 0.2161, 0.642047]" in out  # a1, to 6 digits
    for text in ("a2 - y", "dL/da2 ⊙ a2(1 - a2)", "dL/dz2 · W2ᵀ", "a1ᵀ · dL/dz2", "a0ᵀ · dL/dz1", "finite diff.", "hand-derived", "agree"):
        assert text in out, text
    data = run_json("gradcheck", fnn, "--explain")
    nodes = {n["name"]: n for n in data["nodes"]}
    assert list(nodes) == ["x", "dense/preactivation", "dense", "dense_1/preactivation", "dense_1"]
    numpy.testing.assert_allclose(nodes["dense"]["value"], A1, rtol=1e-7)
    a2 = numpy.array(nodes["dense_1"]["value"])
    numpy.testing.assert_allclose(nodes["dense_1"]["formula"], a2 - [0.3, 0.5, 0.2], rtol=1e-12)
    for row in data["nodes"] + data["weights"]:
        assert row["formula"] is not None, row["name"]
        numpy.testing.assert_allclose(row["autograd"], row["formula"], rtol=1e-10, atol=1e-15)
        numpy.testing.assert_allclose(row["autograd"], row["numeric"], rtol=1e-5, atol=1e-9)
    assert data["passed"] is True and data["loss"] == pytest.approx(0.5 * numpy.sum((a2 - [0.3, 0.5, 0.2]) ** 2))


def test_explain_without_textbook_formulas(tmp_path):
    spec = write_project(tmp_path / "tt")
    data = run_json("gradcheck", spec, "--explain")
    assert data["textbook"] is False and data["passed"] is True
    assert all(row["formula"] is None for row in data["nodes"] + data["weights"])
    assert len(data["nodes"][0]["value"]) == 2  # one sample
    assert "formulas are shown for dense+sigmoid" in run("gradcheck", spec, "--explain").stdout


# --- time ----------------------------------------------------------------------------------------------
def test_time_reports_every_layer(tmp_path):
    spec = write_project(tmp_path / "tt")
    data = run_json("time", spec, "--batch-size", 16, "--iterations", 5)
    assert data["batch_size"] == 16 and data["iterations"] == 5
    assert [row["name"] for row in data["layers"]] == ["dense1", "dense2", "concat", "dense3", "loss"]
    for row in data["layers"][:-1]:
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0, row
    loss = data["layers"][-1]  # value and gradient in one call: all forward
    assert loss["forward_ms"] > 0 and loss["backward_ms"] == 0
    for row in data["layers"]:
        assert row["total_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"])
    assert sum(row["share"] for row in data["layers"]) <= 1.0
    assert data["step_ms"] == pytest.approx(data["forward_ms"] + data["backward_ms"] + data["update_ms"])
    compiled = importlib.util.find_spec("nnctl.core._loops") is not None
    assert data["optimizer"] == "adam" and data["optimizer_compiled"] is compiled
    # the pool takes OpenBLAS's thread count where it is built, so as many threads as this machine has cores at most
    assert 1 <= data["threads"] <= (os.cpu_count() if compiled else 1)
    table = run("time", spec, "--iterations", 2).stdout
    update = "optimizer update (adam, one compiled loop)" if compiled else "optimizer update (adam)"
    for text in ("Forward ms", "Backward ms", "Share", "dense1 (Dense)", "concat (Concatenate)", "loss (mse)", "whole step", update):
        assert text in table, text
    threads = f"numpy {data['dtype']}, {data['threads']} threads for products and loops"
    head = " ".join(table.split("┏")[0].split())  # the heading, as rich wrapped it, on one line
    assert (threads in head) is (data["threads"] > 1) and ("threads for" in head) is (data["threads"] > 1)


def test_time_leaves_the_training_path_alone(make_session):
    from nnctl.diagnostics.timing import time_step

    spec = yaml.safe_load(TWO_TOWER)
    spec.pop("data")
    session = make_session(spec)
    time_step(session, 4, 1, warmup=0)
    assert session._steps == {}  # it timed a compiled step of its own, not the session's


# --- config --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in SPECS.glob("*.yaml")))
def test_config_output_is_a_spec_nnctl_reads(tmp_path, name):
    """`nnctl config SPEC > c.yaml` gives a spec: summary reads it, and config of it is the same."""
    text = run("config", SPECS / name).stdout
    copy = tmp_path / name
    copy.write_text(text)
    assert run("summary", copy).exit_code == 0
    assert run_json("config", copy) == yaml.safe_load(text)


def test_config_of_a_spec_without_data_is_a_spec(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("inputs: {x: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n")
    copy = tmp_path / "c.yaml"
    copy.write_text(run("config", spec).stdout)
    assert run_json("config", copy)["data"] is None and run("summary", copy).exit_code == 0


def test_config_fills_every_default(tmp_path):
    spec = write_project(tmp_path / "tt")
    text = run("config", spec).stdout
    assert text.startswith("# ") and "every default" in text.splitlines()[0]
    resolved = yaml.safe_load(text)
    assert resolved == run_json("config", spec)
    assert resolved["optimizer"] == {**resolved["optimizer"], "type": "adam", "learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999}
    dense = resolved["layers"][0]
    assert dense["kernel_initializer"] == {"type": "glorot_uniform"} and dense["use_bias"] is True and dense["activation"] == {"type": "linear"}
    assert resolved["loss"] == {"type": "mse", "reduction": "mean"} and resolved["train"]["epochs"] == 3
    assert run("config", tmp_path / "missing.yaml").exit_code == 2


# --- init ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("csv_text, args, task, loss, units, metric", [
    ("a,b,name,label\n" + "".join(f"{i},{i % 4},n{i},{i % 3}\n" for i in range(20)), [], "classification",
     "sparse_categorical_crossentropy", 3, "accuracy"),
    ("a,b,y\n" + "".join(f"{i},{i % 4},{i * 0.37}\n" for i in range(20)), [], "regression", "mse", 1, "mae"),
    ("a,b,y\n" + "".join(f"{i},{i % 4},{i % 3}\n" for i in range(20)), ["--task", "regression"], "regression", "mse", 1, "mae"),
])
def test_init_writes_a_spec_that_trains(tmp_path, csv_text, args, task, loss, units, metric):
    data = tmp_path / "data" / "table.csv"
    data.parent.mkdir()
    data.write_text(csv_text)
    target = csv_text.split("\n")[0].split(",")[-1]
    out = tmp_path / "specs" / "starter.yaml"
    facts = run_json("init", data, "--target", target, "--out", out, *args)
    assert facts["task"] == task and facts["spec"] == str(out) and facts["inputs"] == ["a", "b"]
    spec = yaml.safe_load(out.read_text())
    assert spec["data"]["path"] == "../data/table.csv" and spec["data"]["validation_split"] == 0.2
    assert spec["inputs"] == {"x": [2]} and spec["layers"][-1]["units"] == units and spec["metrics"] == [metric]
    assert (spec["loss"] if isinstance(spec["loss"], str) else spec["loss"]["type"]) == loss
    trained = run_json("train", out, "--epochs", 2, cwd=tmp_path)
    assert trained["epochs"] == 2 and trained["validation_samples"] == 4
    if "name" in csv_text.split("\n")[0]:
        assert facts["skipped"] == ["name"] and "name: skipped: 20 distinct texts" in out.read_text()


def test_init_never_overwrites_without_force(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,y\n1,0\n2,1\n3,0\n")
    first = run("init", data, "--target", "y", cwd=tmp_path)
    assert first.exit_code == 0 and (tmp_path / "d.yaml").exists() and "Wrote d.yaml" in first.stdout
    (tmp_path / "d.yaml").write_text("# mine\n")
    again = run("init", data, "--target", "y", cwd=tmp_path)
    assert again.exit_code == 2 and "--force" in again.stderr and (tmp_path / "d.yaml").read_text() == "# mine\n"
    assert run("init", data, "--target", "y", "--force", cwd=tmp_path).exit_code == 0
    assert (tmp_path / "d.yaml").read_text().startswith("# Starter spec")


@pytest.mark.parametrize("csv_text, args, message", [
    ("a,y\n1,0\n", ["--target", "z"], "expected a column of the header"),
    ("a,y\n1,cat\n2,dog\n", ["--target", "y", "--task", "regression"], "expected numbers for regression"),
    ("a,y\n1,cat\n2,cat\n", ["--target", "y"], "expected a target with at least two classes"),
    ("a,y\n", ["--target", "y"], "only a header"),
    ("s,y\nu,1\nu,2\n", ["--target", "y"], "expected at least one usable column"),
    ("a,y\n1,0\n", ["--target", "y", "--task", "nonsense"], "nonsense"),
])
def test_init_bad_input_exits_2(tmp_path, csv_text, args, message):
    data = tmp_path / "d.csv"
    data.write_text(csv_text)
    result = run("init", data, *args, cwd=tmp_path)
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "d.yaml").exists()


# --- schema --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def schema():
    return json.loads(run("schema").stdout)


def test_schema_lists_every_registry_name(schema):
    from nnctl.model.activations import ACTIVATIONS
    from nnctl.model.initializers import INITIALIZERS
    from nnctl.model.layers import LAYERS
    from nnctl.train.losses import LOSSES
    from nnctl.train.metrics import METRICS
    from nnctl.train.optimizers import OPTIMIZERS
    from nnctl.spec.load import TOP_LEVEL_KEYS, TRAIN_OPTIONS

    defs = schema["$defs"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert [ref["$ref"] for ref in defs["layer"]["oneOf"]] == [f"#/$defs/layer.{name}" for name in LAYERS]
    for name in LAYERS:
        assert defs[f"layer.{name}"]["properties"]["type"] == {**defs[f"layer.{name}"]["properties"]["type"], "const": name}
    registries = (("activation", ACTIVATIONS), ("initializer", INITIALIZERS), ("loss", LOSSES), ("metric", METRICS), ("optimizer", OPTIMIZERS))
    for what, registry in registries:
        assert defs[what]["oneOf"][0]["enum"] == list(registry), what
        assert all(f"{what}.{name}" in defs for name in registry)
    assert defs["metric.top_k_categorical_accuracy"]["properties"]["k"]["default"] == 5
    assert list(schema["properties"]) == list(TOP_LEVEL_KEYS) and set(schema["properties"]["train"]["properties"]) == set(TRAIN_OPTIONS)
    dense = defs["layer.dense"]["properties"]
    assert dense["units"]["type"] == "integer" and "units" in defs["layer.dense"]["required"]
    assert dense["kernel_initializer"]["default"] == "glorot_uniform" and dense["units"]["description"] == "output size"
    assert defs["optimizer.adam"]["properties"]["beta_1"]["default"] == 0.9


def _validator(schema):
    """A draft 2020-12 validator; the test skips where jsonschema is not installed."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates_against_the_schema(schema, path):
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator(schema).iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


@pytest.mark.parametrize("change", [
    lambda s: s["layers"][0].update(units="ten"),
    lambda s: s["layers"][0].update(type="dens"),
    lambda s: s["layers"][0].update(unknown=1),
    lambda s: s.update(loss={"type": "mse", "from_logits": True}),
    lambda s: s.update(optimizer={"type": "adam", "learning_rate": -1}),
    lambda s: s.update(metrics=["accuracy", "accuracy"]),
    lambda s: s.update(metrics=[{"type": "top_k_categorical_accuracy", "k": 0}]),
    lambda s: s.update(loss_weights={"dense3": -1}),
    lambda s: s.update(outputs=["dense3", "dense3"]),
    lambda s: s["train"].update(epochs=0),
    lambda s: s.pop("layers"),
])
def test_schema_rejects_bad_specs(schema, change):
    spec = yaml.safe_load(TWO_TOWER)
    change(spec)
    assert list(_validator(schema).iter_errors(spec))


# --- everywhere: --quiet, no TTY, NO_COLOR, completion, --json ---------------------------------------------
def test_quiet_prints_only_written_paths(tmp_path):
    spec = write_project(tmp_path / "q")
    assert invoke("-q", "summary", spec).stdout == ""
    assert invoke("-q", "summary", spec, "--graph", tmp_path / "g.dot").stdout == f"graph: {tmp_path / 'g.dot'}\n"
    trained = invoke("-q", "train", spec, cwd=spec.parent)
    assert trained.exit_code == 0
    lines = trained.stdout.splitlines()
    assert lines and all(re.match(r"^[\w ()_,.]+: \S+$", line) for line in lines), lines  # "label: path" only
    assert any(line.startswith("weights: ") for line in lines) and not any(line.startswith("epoch ") for line in lines)
    weights = spec.parent / "runs" / "two_tower" / "weights.npz"
    assert invoke("-q", "evaluate", spec, "--weights", weights).stdout == ""
    assert invoke("-q", "gradcheck", spec).stdout == ""
    assert invoke("-q", "config", spec).stdout == ""
    assert json.loads(invoke("-q", "evaluate", spec, "--weights", weights, "--json").stdout)["samples"] == 20  # --json still answers


def test_no_tty_training_output_is_one_plain_line_per_epoch(tmp_path):
    spec = write_project(tmp_path / "t")
    out = invoke("train", spec, cwd=spec.parent).stdout
    assert "\r" not in out and "\x1b[" not in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]


def test_no_color_is_honoured(history):
    forced = invoke("plot", history, env={"FORCE_COLOR": "1", "NO_COLOR": None, "TTY_COMPATIBLE": None})
    assert SGR_COLOR.search(forced.stdout)  # a colour terminal gets coloured curves...
    plain = invoke("plot", history, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.exit_code == 0 and BRAILLE.search(plain.stdout) and not SGR_COLOR.search(plain.stdout)  # ...NO_COLOR none


def test_shell_completion():
    script = invoke(env={"_NNCTL_COMPLETE": "bash_source"})
    assert script.exit_code == 0 and "_nnctl_completion" in script.stdout and "complete " in script.stdout
    words = invoke(env={"_NNCTL_COMPLETE": "bash_complete", "COMP_WORDS": "nnctl ev", "COMP_CWORD": "1"})
    assert "evaluate" in words.stdout
    options = invoke(env={"_NNCTL_COMPLETE": "bash_complete", "COMP_WORDS": "nnctl summary x.yaml --gr", "COMP_CWORD": "3"})
    assert "--graph" in options.stdout


@pytest.mark.parametrize("command", ["summary", "train", "predict", "gradcheck", "evaluate", "plot", "time", "config", "init", "schema"])
def test_every_command_has_help_and_json(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "--json" in result.stdout
    assert command in run("--help").stdout

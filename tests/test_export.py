"""ONNX export: the lowering table covers every registry; every shipped spec and seeded random graphs
holding every layer type and activation export, pass onnx's full check and give nnctl's own
predictions under onnxruntime at batch 1 and 37 (float32: 1e-5 + 1e-4·|x|; float64: 1e-9 + 1e-9·|x|);
the verification can fail; bad input exits 2 and overwrites nothing."""
from __future__ import annotations

import random
import shutil

import numpy
import pytest
import yaml

from nnctl.core.backend import get_backend
from nnctl.data import prepared
from nnctl.data.preprocessing import state_arrays
from nnctl.data.dataset import Dataset
from nnctl.model.activations import ACTIVATIONS
from nnctl.model.graph import Model
from nnctl.model.layers import LAYERS
from nnctl.spec.load import load_spec
from nnctl.train.losses import LOSSES
from nnctl.train.session import Session, load_spec_data, open_session, training_sets
from tests.helpers import ROOT, SPECS, run, run_json

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nnctl.export import lowering  # noqa: E402  (after the skips: it needs nothing of onnx, the rest does)
from nnctl.export.onnx_file import TOLERANCES, build, compare, raw_feeds, sample_inputs, verify  # noqa: E402

ROWS = 37  # the batch verified besides 1


# --- the table -------------------------------------------------------------------------------------
def test_every_registry_entry_has_a_lowering():
    assert lowering.missing_lowerings() == []
    stale = [key for key in lowering.LOWERINGS if key[1] not in lowering.REGISTRIES[key[0]]]
    assert stale == []


def test_a_new_layer_type_without_a_lowering_is_found(monkeypatch):
    monkeypatch.setitem(LAYERS, "cropping", LAYERS["dense"])
    monkeypatch.setitem(ACTIVATIONS, "swish", ACTIVATIONS["relu"])
    monkeypatch.setitem(LOSSES, "poisson", LOSSES["mse"])
    assert lowering.missing_lowerings() == ["layer cropping", "activation swish", "output poisson"]


# --- seeded random graphs: every layer type, every activation --------------------------------------
def _activation(rng, name):
    options = {"leaky_relu": {"alpha": rng.choice([0.0, 0.1, 0.3])}, "elu": {"alpha": rng.choice([0.5, 1.0, 2.0])},
               "softmax": {"axis": rng.choice([-1, 1])}}.get(name, {})
    return {"type": name, **options}


def random_graph(seed: int, loss: dict, second: dict | None = None) -> dict:
    """A spec whose layers are every layer type (dense with every activation) in a seeded random DAG
    over two inputs and one of ids (the embedding's); every layer leads to the output through a
    final concat and dense. Tensors are 1-D per sample: the 2-D ones (reshape, embedding) are
    flattened back. With `second`, a second output with that loss: a dense head on the concat."""
    rng = random.Random(seed)
    width = {"a": 3, "b": 4}  # tensor -> per-sample width
    unused = set(width)
    layers = []
    init = {"type": "random_normal", "stddev": 0.8}

    def pick():
        return rng.choice(sorted(width))

    def add_layer(kind, sources, width_out, **config):
        name = f"l{len(layers)}_{kind}"
        layers.append({"name": name, "type": kind, "from": sources if len(sources) > 1 else sources[0], **config})
        unused.difference_update(sources)
        unused.add(name)
        width[name] = width_out

    def dense(source, units, activation):
        add_layer("dense", [source], units, units=units, activation=activation, kernel_initializer=init, bias_initializer=init,
                  use_bias=rng.random() < 0.8)

    def flatten_2d():
        grid = layers[-1]["name"]
        add_layer("flatten", [grid], width.pop(grid))

    kinds = [*LAYERS, *(f"dense:{a}" for a in ACTIVATIONS)]
    rng.shuffle(kinds)
    for kind in kinds:
        source = pick()
        if kind.startswith("dense:"):
            dense(source, rng.randint(1, 5), _activation(rng, kind.split(":")[1]))
        elif kind == "concat":
            sources = rng.sample(sorted(width), min(len(width), rng.randint(2, 3)))
            add_layer("concat", sources, sum(width[s] for s in sources))
        elif kind in ("add", "multiply", "average", "maximum", "minimum", "subtract", "dot"):
            dense(pick(), width[source], {"type": "tanh"})
            twin = layers[-1]["name"]
            many = kind not in ("subtract", "dot") and rng.random() < 0.5
            config = {"normalize": rng.random() < 0.5} if kind == "dot" else {}
            add_layer(kind, [source, twin] + ([twin] if many else []), 1 if kind == "dot" else width[source], **config)
        elif kind == "batch_normalization":
            stats = {"type": "random_uniform", "minval": 0.5, "maxval": 2.0}
            add_layer(kind, [source], width[source], momentum=0.9, center=rng.random() < 0.7, scale=rng.random() < 0.7,
                      moving_mean_initializer=init, moving_variance_initializer=stats, gamma_initializer=init, beta_initializer=init)
        elif kind == "layer_normalization":
            add_layer(kind, [source], width[source], epsilon=rng.choice([1e-3, 1e-5]), gamma_initializer=init, beta_initializer=init)
        elif kind == "reshape":
            add_layer("reshape", [source], width[source], target_shape=[-1, 1])
            flatten_2d()
        elif kind == "embedding":
            add_layer("embedding", ["ids"], 2 * 3, input_dim=5, output_dim=3, embeddings_initializer=init)
            flatten_2d()
        elif kind == "flatten":
            add_layer("flatten", [source], width[source])
        elif kind == "dropout":
            add_layer("dropout", [source], width[source], rate=0.4)
        elif kind == "dense":
            dense(source, rng.randint(1, 5), {"type": "linear"})
        else:
            add_layer(kind, [source], width[source], **{k: v for k, v in _activation(rng, kind).items() if k != "type"})
    ends = sorted(unused)
    if len(ends) > 1:
        add_layer("concat", ends, sum(width[e] for e in ends))
    joined = layers[-1]["name"]
    dense(joined, 1 if loss["type"] == "binary_crossentropy" else 4, {"type": "linear"})
    spec = {"seed": seed, "inputs": {"a": [3], "b": [4], "ids": [2]}, "layers": layers, "outputs": layers[-1]["name"], "loss": loss}
    if second is not None:
        first = layers[-1]["name"]
        dense(joined, 1 if second["type"] == "binary_crossentropy" else 3, {"type": "linear"})
        spec.update(outputs=[first, layers[-1]["name"]], loss={first: loss, layers[-1]["name"]: second})
    return spec


LOSS_CASES = [
    {"type": "mse"},
    {"type": "sparse_categorical_crossentropy", "from_logits": True},
    {"type": "categorical_crossentropy", "from_logits": False},
    {"type": "binary_crossentropy", "from_logits": True},
]
GRAPHS = [(seed, loss) for seed, loss in enumerate(LOSS_CASES)]
# Two outputs: a classifier beside a regression, and two classifiers (two class outputs).
TWO_OUTPUTS = [(10, LOSS_CASES[1], LOSS_CASES[0]), (11, LOSS_CASES[3], LOSS_CASES[2])]


def test_random_graphs_hold_every_layer_type_and_activation():
    layer_types, activations = set(), set()
    for seed, loss in GRAPHS:
        for layer in random_graph(seed, loss)["layers"]:
            layer_types.add(layer["type"])
            if layer["type"] == "dense":
                activations.add(layer["activation"]["type"])
    assert layer_types == set(LAYERS) and activations == set(ACTIVATIONS)


def _assert_verified(errors, dtype, outputs):
    rtol, atol = TOLERANCES[dtype]
    assert [e.name for e in errors] == outputs
    for error in errors:
        assert error.passed, error
        assert error.max_abs <= atol + rtol  # the values are O(1): the bound a pass implies, in numbers


def _onnx_and_nnctl(session, exported, inputs):
    """onnxruntime's outputs on the serialized file, and nnctl's predictions run here independently:
    per output its values, then its classes where it has them."""
    runner = ort.InferenceSession(exported.data, providers=["CPUExecutionProvider"])
    got = runner.run(None, inputs)
    predictions = session.predict(Dataset(None, inputs, None, numpy.arange(len(next(iter(inputs.values()))))))
    return got, [part for values, classes in predictions for part in ([values] if classes is None else [values, classes])]


def _exported_names(session) -> list:
    """The output names the issue asks for: predict's ("prob" or the layer's; "class"), prefixed by
    the output's name when there are several."""
    several = len(session.heads) > 1
    names = []
    for head in session.heads:
        shown = "prob" if head.loss.gives_probabilities else head.name
        names.append(f"{head.name}_{shown}" if several and shown != head.name else shown)
        if head.targets.shows_classes:
            names.append(f"{head.name}_class" if several else "class")
    return names


@pytest.mark.parametrize("dtype,opset", [("float32", 17), ("float64", 17), ("float64", 9)])
@pytest.mark.parametrize("seed,loss,second", [(s, l, None) for s, l in GRAPHS] + TWO_OUTPUTS,
                         ids=[f"{s}-{l['type']}" for s, l in GRAPHS] + [f"{s}-{l['type']}+{m['type']}" for s, l, m in TWO_OUTPUTS])
def test_random_graph_exports_equal_to_nnctl(make_session, seed, loss, second, dtype, opset):
    """At the default opset, and at 9: the oldest these graphs' layers all run at (Where)."""
    session = make_session(random_graph(seed, loss, second), dtype=dtype)
    exported = build(session, opset)
    inputs = sample_inputs(session, ROWS)
    outputs = _exported_names(session)
    assert len(outputs) >= (3 if second is not None else 1)
    _assert_verified(verify(session, exported, inputs), dtype, outputs)
    rtol, atol = TOLERANCES[dtype]
    for size in (1, ROWS):
        feed = {k: v[:size] for k, v in inputs.items()}
        got, expected = _onnx_and_nnctl(session, exported, feed)
        assert len(got) == len(expected) == len(outputs)
        for name, actual, wanted in zip(outputs, got, expected):
            if name.endswith("class"):
                numpy.testing.assert_array_equal(actual, wanted)
            else:
                assert actual.dtype == numpy.dtype(dtype) and actual.shape == wanted.shape == (size, wanted.shape[1])
                numpy.testing.assert_allclose(actual, wanted, rtol=rtol, atol=atol)
    assert not any(n.op_type == "Dropout" for n in exported.model.graph.node)
    assert exported.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_multi_dimensional_inputs_and_softmax_over_a_middle_axis(make_session):
    spec = {"inputs": {"x": [2, 3]}, "loss": "mse", "layers": [
        {"name": "relu", "type": "elu", "alpha": 0.7, "from": "x"},
        {"name": "middle", "type": "softmax", "axis": 1},
        {"name": "out", "type": "gelu"},
    ]}
    session = make_session(spec, dtype="float64")
    exported = build(session)
    assert [d.dim_param or d.dim_value for d in exported.model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 2, 3]
    _assert_verified(verify(session, exported, sample_inputs(session, ROWS)), "float64", ["out"])


GRIDS = {"inputs": {"x": [2, 3], "y": [3, 4]}, "loss": "mse", "layers": [
    {"name": "cosine", "type": "dot", "axes": [2, 1], "normalize": True, "from": ["x", "y"]},
    {"name": "paired", "type": "dot", "axes": [2, 2], "from": ["cosine", "y"]},
    {"name": "rows", "type": "layer_normalization", "axis": 1, "from": "paired",
     "gamma_initializer": {"type": "random_normal"}, "beta_initializer": {"type": "random_normal"}},
    {"name": "grid", "type": "batch_normalization", "from": "rows", "moving_mean_initializer": {"type": "random_normal"},
     "moving_variance_initializer": {"type": "random_uniform", "minval": 0.5, "maxval": 2}},
    {"name": "turned", "type": "reshape", "target_shape": [3, -1], "from": "grid"},
    {"name": "flat", "type": "flatten", "from": "turned"},
    {"name": "flat_cosine", "type": "flatten", "from": "cosine"},
    {"name": "out", "type": "concat", "from": ["flat", "flat_cosine"]},
]}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_over_several_axes(make_session, dtype):
    """dot over chosen axes (normalized or not), layer normalization over a middle axis, batch
    normalization and reshape of 2-D samples."""
    session = make_session(GRIDS, dtype=dtype)
    exported = build(session)
    assert [d.dim_param or d.dim_value for d in exported.model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 14]
    _assert_verified(verify(session, exported, sample_inputs(session, ROWS)), dtype, ["out"])


def test_verification_fails_when_the_file_computes_something_else(make_session):
    session = make_session(random_graph(1, LOSS_CASES[1]), dtype="float64")
    exported = build(session)
    kernel = next(t for t in exported.model.graph.initializer if t.name.endswith("/kernel"))
    value = onnx.numpy_helper.to_array(kernel).copy()
    value.flat[0] += 1e-6
    kernel.CopyFrom(onnx.numpy_helper.from_array(value, kernel.name))
    exported.data = exported.model.SerializeToString()
    errors = verify(session, exported, sample_inputs(session, ROWS))
    assert not errors[0].passed and 1e-12 < errors[0].max_abs < 1e-3


def test_compare_reports_abs_and_rel_errors():
    assert compare([1.0, -2.0, 0.0], [1.0, -2.1, 0.0], 1e-4, 1e-5) == pytest.approx((0.1, 0.05, False))
    assert compare([1.0, 0.0], [1.00001, 0.0], 1e-4, 1e-5)[2] is True
    assert compare([0.0], [1e-6], 0.0, 1e-5) == (1e-6, float("inf"), True)
    assert compare([[1.0]], [1.0], 1e-4, 1e-5) == (float("inf"), float("inf"), False)


# --- every shipped spec, through the command ----------------------------------------------------------
SHIPPED_ALL = sorted(p.stem for p in SPECS.glob("*.yaml"))
# Specs that preprocess raw columns take one input per column: their own test below.
RAW_SHIPPED = [name for name in SHIPPED_ALL if load_spec(SPECS / f"{name}.yaml").data.columns is not None]
SHIPPED = [name for name in SHIPPED_ALL if name not in RAW_SHIPPED]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """specs/ and data/ copied, with a small stand-in for mnist_mlp's generated data file."""
    folder = tmp_path_factory.mktemp("shipped")
    shutil.copytree(SPECS, folder / "specs")
    shutil.copytree(ROOT / "data", folder / "data")
    rng = numpy.random.default_rng(0)
    numpy.savez(folder / "data" / "mnist_like.npz", x=rng.random((50, 784), dtype=numpy.float32), y=rng.integers(0, 10, 50))
    return folder


def _initial_weights(project, name):
    """The spec's seeded initial weights as a weights file (training is what other tests check)."""
    spec = load_spec(project / "specs" / f"{name}.yaml")
    path = project / f"{name}.npz"
    numpy.savez(path, **Model(spec).initial_weights(spec.seed))
    return spec, path


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_exports_and_equals_predict(project, name):
    spec, weights = _initial_weights(project, name)
    out = project / f"{name}.onnx"
    data = run_json("export", project / "specs" / f"{name}.yaml", "--weights", weights, "--output", out, cwd=project)
    assert data["path"] == str(out) and data["opset"] == 17 and data["verified"] and data["passed"] and data["written"]
    assert data["sample"] == str(spec.data.path)
    inputs = _all_rows(spec)
    in_file = len(next(iter(inputs.values())))  # a file of one row is checked twice (batch 1 and 2)
    assert data["bytes"] == out.stat().st_size and data["rows"] == max(2, min(256, in_file))
    assert [p["name"] for p in data["inputs"]] == list(spec.inputs)
    rtol, atol = TOLERANCES[spec.dtype]
    assert all(e["passed"] and e["max_abs"] <= atol + rtol for e in data["errors"])

    # Independently of the command's own check: the file under onnxruntime gives predict's rows.
    predicted = run_json("predict", project / "specs" / f"{name}.yaml", "--weights", weights, "--input", spec.data.path, cwd=project)
    runner = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for size in (1, ROWS):
        got = runner.run(None, {k: v[:size] for k, v in inputs.items()})
        expected = numpy.array(predicted["outputs"][:size]).reshape(got[0].shape)
        numpy.testing.assert_allclose(got[0], expected, rtol=rtol, atol=atol)
        if predicted["classes"] is not None:
            assert got[1].tolist() == predicted["classes"][:size]


@pytest.mark.parametrize("name", RAW_SHIPPED)
def test_every_shipped_raw_table_spec_exports_and_verifies(project, name):
    """Trained briefly (the weights file then holds the fitted preprocessing), exported and
    checked by the command itself against nnctl's predictions on the raw rows."""
    weights = project / f"{name}_trained" / "weights.npz"  # a folder of its own: best.npz and history.csv go beside it
    run_json("train", project / "specs" / f"{name}.yaml", "--epochs", 1, "--out", weights, cwd=project)
    spec = load_spec(project / "specs" / f"{name}.yaml")
    data = run_json("export", project / "specs" / f"{name}.yaml", "--weights", weights, "--output", project / f"{name}.onnx", cwd=project)
    assert data["passed"] and data["written"] and data["rows"] >= 2
    raw = [name for columns in spec.data.inputs.values() for name in columns]
    assert [p["name"] for p in data["inputs"]] == raw
    rtol, atol = TOLERANCES[spec.dtype]
    assert all(e["passed"] and e["max_abs"] <= atol + rtol for e in data["errors"])


def _all_rows(spec):
    """Every row of the spec's data file, per input, as nnctl reads them (the run's dtype)."""
    session = Session(spec, get_backend("numpy"))
    dataset = load_spec_data(session, targets=False)
    batch, _, _ = next(iter(session.batches(dataset, len(dataset))(None)))
    return {name: numpy.array(array) for name, array in batch.items()}


# --- the command: output, bad input ------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(project):
    """(spec path, weights path) of the digits spec at its initial weights."""
    _, weights = _initial_weights(project, "digits")
    return project / "specs" / "digits.yaml", weights


def test_export_writes_runs_name_model_onnx_by_default(project, digits):
    spec, weights = digits
    result = run("export", spec, "--weights", weights, cwd=project)
    assert result.exit_code == 0, result.output
    path = project / "runs" / "digits" / "model.onnx"
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["prob", "class"]
    assert model.opset_import[0].version == 17
    said = f"onnxruntime vs nnctl predict on 256 rows of {project}/specs/../data/digits.csv, at batch 1 and 256:"
    assert "".join(said.split()) in "".join(result.stdout.split())  # rich wraps the long line
    assert "model: runs/digits/model.onnx" in result.stdout


@pytest.mark.parametrize("opset", [7, 13])
def test_export_json_names_path_opset_ports_and_errors(project, digits, tmp_path, opset):
    spec, weights = digits
    out = tmp_path / "d.onnx"
    data = run_json("export", spec, "--weights", weights, "--output", out, "--opset", opset, cwd=project)
    assert data["opset"] == opset and onnx.load(out).opset_import[0].version == opset
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
    assert data["outputs"] == [{"name": "prob", "dtype": "float32", "shape": ["batch", 10]},
                               {"name": "class", "dtype": "int64", "shape": ["batch"]}]
    prob, classes = data["errors"]
    assert prob["name"] == "prob" and 0 < prob["max_abs"] <= 1e-5 and prob["rtol"] == 1e-4 and prob["atol"] == 1e-5
    assert classes == {"name": "class", "max_abs": 0.0, "max_rel": 0.0, "rtol": 0.0, "atol": 0.0, "passed": True}


def test_no_verify_writes_without_onnxruntime(project, digits, tmp_path, monkeypatch):
    import sys

    spec, weights = digits
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    data = run_json("export", spec, "--weights", weights, "--output", tmp_path / "d.onnx", "--no-verify", cwd=project)
    assert data["verified"] is False and data["errors"] is None and data["written"] and (tmp_path / "d.onnx").stat().st_size == data["bytes"]
    result = run("export", spec, "--weights", weights, "--output", tmp_path / "e.onnx", cwd=project)
    assert result.exit_code == 2 and "pip install 'nnctl[onnx]'" in result.stderr and "onnxruntime" in result.stderr
    assert not (tmp_path / "e.onnx").exists()


def test_without_onnx_the_command_names_the_extra(project, digits, tmp_path, monkeypatch):
    import sys

    spec, weights = digits
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("export", spec, "--weights", weights, "--output", tmp_path / "d.onnx", "--no-verify", cwd=project)
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error (missing tool): nnctl export: expected onnx to be installed, received no module named 'onnx': "
                                     "install the extra with pip install 'nnctl[onnx]'")


def test_a_disagreement_exits_1_and_keeps_the_previous_file(project, digits, tmp_path, monkeypatch):
    from nnctl.export import onnx_file

    spec, weights = digits
    out = tmp_path / "d.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setitem(onnx_file.TOLERANCES, "float32", (0.0, 0.0))
    result = run("export", spec, "--weights", weights, "--output", out, cwd=project)
    assert result.exit_code == 1 and "onnxruntime disagrees with nnctl on prob" in result.stdout
    assert out.read_bytes() == b"previous"


OPSET_SPEC = {"inputs": {"x": [3]}, "loss": "mse", "layers": [
    {"name": "hidden", "type": "dense", "units": 4, "activation": "elu"},
    {"name": "batchwise", "type": "softmax", "axis": 0},
]}


@pytest.mark.parametrize("opset,needs", [
    (8, [("hidden", 9, "dense layer 'hidden' (elu, written with Where)"), ("batchwise", 13, "softmax layer 'batchwise' (softmax over axis 0 of a 2-D array, not its last)")]),
    (12, [("batchwise", 13, "softmax layer 'batchwise' (softmax over axis 0 of a 2-D array, not its last)")]),
    (13, []),
])
def test_an_opset_below_a_layers_need_names_the_layer_and_the_opset(tmp_path, opset, needs):
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump(OPSET_SPEC, sort_keys=False))
    weights = tmp_path / "w.npz"
    numpy.savez(weights, **Model(load_spec(spec)).initial_weights(0))
    out = tmp_path / "net.onnx"
    out.write_bytes(b"previous")
    result = run("export", spec, "--weights", weights, "--output", out, "--opset", opset, cwd=tmp_path)
    if not needs:
        assert result.exit_code == 0, result.output
        assert onnx.load(out).opset_import[0].version == 13
        return
    expected = [f"{spec}:{_layer_line(spec, name)}:3: layers[{['hidden', 'batchwise'].index(name)}]: "
                f"--opset {opset}: expected an opset of at least {need} for {what}, received {opset}" for name, need, what in needs]
    assert result.exit_code == 2 and out.read_bytes() == b"previous"
    assert [line.strip().removeprefix("Error (usage error): ") for line in result.stderr.splitlines() if "--opset" in line] == expected


def test_an_input_named_as_an_output_is_refused(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump({"inputs": {"class": [3]}, "layers": [{"type": "dense", "units": 2}],
                                    "loss": {"type": "sparse_categorical_crossentropy", "from_logits": True}}, sort_keys=False))
    weights = tmp_path / "w.npz"
    numpy.savez(weights, **Model(load_spec(spec)).initial_weights(0))
    result = run("export", spec, "--weights", weights, "--output", tmp_path / "net.onnx", cwd=tmp_path)
    assert result.exit_code == 2 and not (tmp_path / "net.onnx").exists()
    assert result.stderr.strip() == (f"Error (usage error): {spec}:2:3: inputs.class: expected input names other than the exported "
                                     "outputs' (prob, class), received input 'class'")


def _layer_line(spec, name) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if f"name: {name}" in line)


BAD = {
    "missing weights": (lambda p, w: ["--weights", p / "none.npz"], "Error (weights error): {p}/none.npz: expected a weights file, received a path that does not exist"),
    "mismatched weights": (lambda p, w: ["--weights", _reshaped(p, w)], "Error (weights error): {p}/wrong.npz: array 'dense/kernel': expected shape (64, 128), received (128, 64)"),
    "folder does not exist": (lambda p, w: ["--weights", w, "--output", p / "no" / "d.onnx"],
                              "Error (usage error): {p}/no/d.onnx: --output: expected a path in an existing folder, received a path in {p}/no, which does not exist"),
    "not .onnx": (lambda p, w: ["--weights", w, "--output", p / "d.txt"], "Error (usage error): {p}/d.txt: --output: expected a .onnx file, received 'd.txt'"),
    "output is the weights": (lambda p, w: ["--weights", w, "--output", w], "received the --weights file"),
    "opset too old": (lambda p, w: ["--weights", w, "--opset", "6"], "--opset: expected an opset in [7, "),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_message_and_writes_nothing(project, digits, case):
    spec, weights = digits
    args, message = BAD[case]
    args = args(project, weights)
    existing = project / "runs" / "digits" / "model.onnx"
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(b"previous")
    before = sorted(p.name for p in project.rglob("*"))
    result = run("export", spec, *args, cwd=project)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message.format(p=project) in result.stderr and result.stderr.startswith("Error (")
    assert existing.read_bytes() == b"previous" and sorted(p.name for p in project.rglob("*")) == before


def _reshaped(project, weights):
    """The digits weights with the first kernel transposed: every key right, one shape wrong."""
    arrays = dict(numpy.load(weights))
    arrays["dense/kernel"] = arrays["dense/kernel"].T
    numpy.savez(project / "wrong.npz", **arrays)
    return project / "wrong.npz"


def test_export_has_help_json_and_quiet(project, digits, tmp_path):
    assert "--json" in run("export", "--help").stdout and "export" in run("--help").stdout
    spec, weights = digits
    result = run("-q", "export", spec, "--weights", weights, "--output", tmp_path / "q.onnx", cwd=project)
    assert result.exit_code == 0 and result.stdout == f"model: {tmp_path / 'q.onnx'}\n"


def test_the_export_benchmark_runs():
    """bench/export.py on a few rows: it measures both sides (no timing is asserted)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("bench_export", ROOT / "bench" / "export.py")
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
    results = bench.measure(SPECS / "iris.yaml", None, rows=300, single=3, repeats=1)
    assert results["rows"] == 300 and results["bytes"] > 0
    for group in ("batch", "one_row"):
        rates = results[group]
        assert rates["nnctl_predict"] > 0 and rates["ratio"] == rates["onnxruntime"] / rates["nnctl_predict"]


OPSET_7 = {"inputs": {"x": [3]}, "loss": "categorical_crossentropy", "layers": [
    {"name": "a", "type": "dense", "units": 4, "activation": "gelu", "from": "x"},
    {"name": "b", "type": "dense", "units": 4, "activation": "sigmoid", "use_bias": False, "from": "x"},
    {"name": "c", "type": "add", "from": ["a", "b"]},
    {"name": "d", "type": "tanh", "from": "c"},
    {"name": "e", "type": "concat", "from": ["d", "a"]},
    {"name": "f", "type": "dropout", "rate": 0.5, "from": "e"},
    {"name": "g", "type": "relu", "from": "f"},
    {"name": "h", "type": "linear", "from": "g"},
    {"name": "out", "type": "dense", "units": 3, "activation": "softmax", "from": "h"},
]}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_that_need_no_newer_opset_run_at_opset_7(make_session, dtype):
    session = make_session(OPSET_7, dtype=dtype)
    exported = build(session, 7)
    assert exported.model.opset_import[0].version == 7 and exported.model.ir_version == 4
    assert not exported.model.graph.input[1:]  # the weights are initializers, not inputs a caller could override
    _assert_verified(verify(session, exported, sample_inputs(session, ROWS)), dtype, ["prob", "class"])


def test_a_model_over_protobufs_limit_is_refused(project, digits, tmp_path, monkeypatch):
    from nnctl.export import onnx_file

    spec, weights = digits
    monkeypatch.setattr(onnx_file, "MAX_BYTES", 1000)  # 2 GB in earnest: the digits model is 70 KB
    result = run("export", spec, "--weights", weights, "--output", tmp_path / "d.onnx", cwd=project)
    assert result.exit_code == 2 and not (tmp_path / "d.onnx").exists()
    assert result.stderr.startswith(f"Error (usage error): {spec}: expected a model that fits one ONNX file (1,000 bytes at most")


# --- column preprocessing: raw rows in, predict's outputs out ------------------------------------------
def _init_spec(project, csv, target, dtype, edit=None):
    """`nnctl init` on a shipped raw table, in `dtype`, edited by `edit(spec dict)`; its weights file:
    the initial weights and the preprocessing fitted on the training rows (training is other tests')."""
    name = f"{csv}_{dtype}_{edit.__name__ if edit else 'init'}"
    path = project / f"{name}.yaml"
    result = run("init", project / "data" / f"{csv}.csv", "--target", target, "--out", path, "--force", cwd=project)
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(path.read_text())
    spec.update(name=name, dtype=dtype)
    if edit:
        edit(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    loaded = load_spec(path)
    session = Session(loaded, get_backend("numpy"))
    training_sets(session)
    weights = project / f"{name}.npz"
    numpy.savez(weights, **Model(loaded).initial_weights(loaded.seed), **state_arrays(session.preprocessing))
    return path, weights


def region_as_ids(spec):
    """plan with an unknown bucket, region encoded as an index into an embedding (its unknown id
    is len(vocabulary): input_dim one more), autopay binary, the numbers filled and standardized."""
    spec["data"]["columns"]["plan"]["unknown"] = "bucket"
    spec["data"]["columns"]["region"].update(encode="index", missing="constant", fill_value="west")
    spec["data"]["inputs"] = {"x": [c for c in spec["data"]["inputs"]["x"] if c != "region"], "region_id": ["region"]}
    spec["inputs"] = {"x": [8], "region_id": [1]}
    spec["layers"] = [
        {"name": "region_vector", "type": "embedding", "input_dim": 5, "output_dim": 2, "from": "region_id"},
        {"name": "region_flat", "type": "flatten"},
        {"name": "joined", "type": "concat", "from": ["x", "region_flat"]},
        {"name": "hidden", "type": "dense", "units": 8, "activation": "tanh"},
        {"name": "logits", "type": "dense", "units": 3},
    ]


def calls_as_category(spec):
    """support_calls, numbers in the file, as a category: its input takes them as text ("3")."""
    spec["data"]["columns"]["support_calls"] = {"type": "category", "missing": "most_frequent", "unknown": "bucket"}
    spec["inputs"]["x"] = [10 + 8 + 1]  # the other columns' 10, the 8 counts in the training rows, the bucket


def _with_surprises(project):
    """customers.csv with unknown categories ('platinum', 'mars') and blank
    cells in the first rows, besides its own missing cells."""
    lines = (project / "data" / "customers.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for i, (column, value) in enumerate([("plan", "platinum"), ("region", "mars"), ("plan", ""), ("region", ""),
                                         ("monthly_fee", ""), ("tenure_months", ""), ("autopay", "")]):
        rows[i][header.index(column)] = value
    path = project / "customers_surprises.csv"
    path.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    return path


COLUMN_CASES = [(csv, target, dtype, edit) for csv, target, edit in [("customers", "outcome", None), ("customers", "outcome", region_as_ids),
                                                                     ("customers", "outcome", calls_as_category),
                                                                     ("iris_names", "species", None)]
                for dtype in ("float32", "float64")]


@pytest.mark.parametrize("csv,target,dtype,edit", COLUMN_CASES, ids=[f"{c}-{d}-{e.__name__ if e else 'init'}" for c, _, d, e in COLUMN_CASES])
def test_raw_columns_export_equal_to_predict(project, csv, target, dtype, edit):
    """One input per raw column; the file's prob and class texts equal `nnctl predict` on the raw
    rows, unknown categories and missing cells included, at batch 1 and 37."""
    spec_path, weights = _init_spec(project, csv, target, dtype, edit)
    out = project / f"{spec_path.stem}.onnx"
    data = run_json("export", spec_path, "--weights", weights, "--output", out, cwd=project)
    spec = load_spec(spec_path)
    columns = [c for group in spec.data.inputs.values() for c in group]
    assert [p["name"] for p in data["inputs"]] == columns
    session = open_session(spec, weights)
    assert [p["dtype"] for p in data["inputs"]] == ["string" if c in (spec.data.columns or {}) and
                                                    spec.data.columns[c]["type"] in ("category", "binary") else "float64" for c in columns]
    assert [(p["name"], p["dtype"]) for p in data["outputs"]] == [("prob", dtype), ("class", "string")]
    rtol, atol = TOLERANCES[dtype]
    assert data["passed"] and all(e["max_abs"] <= atol + rtol for e in data["errors"])

    table = _with_surprises(project) if csv == "customers" else project / "data" / f"{csv}.csv"
    predicted = run_json("predict", spec_path, "--weights", weights, "--input", table, cwd=project)
    if csv == "customers":
        # the surprises reached nnctl (and support_calls as a category meets a count unseen in training)
        assert predicted["preprocessing"]["unknown"] == {"plan": 1, "region": 1, **({"support_calls": 1} if edit is calls_as_category else {})}
    feeds = raw_feeds(prepared.read_raw(table, spec.data, targets=False), numpy.arange(ROWS), session.preprocessing)
    runner = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for size in (1, ROWS):
        prob, classes = runner.run(None, {k: v[:size] for k, v in feeds.items()})
        assert prob.dtype == numpy.dtype(dtype)
        numpy.testing.assert_allclose(prob, numpy.array(predicted["outputs"][:size]), rtol=rtol, atol=atol)
        assert classes.tolist() == predicted["classes"][:size]
        assert set(classes) <= set(session.preprocessing[target].vocabulary)
    # The verification itself, on these rows: it passes, and would catch a wrong class text.
    exported = build(session)
    _assert_verified(verify(session, exported, feeds), dtype, ["prob", "class"])


def test_raw_columns_below_opset_9_name_the_input_and_the_opset(project):
    spec_path, weights = _init_spec(project, "customers", "outcome", "float32")
    out = project / "opset8.onnx"
    result = run("export", spec_path, "--weights", weights, "--output", out, "--opset", 8, cwd=project)
    assert result.exit_code == 2 and not out.exists()
    assert ("data.inputs.x: --opset 8: expected an opset of at least 9 for the columns of input 'x' (filling missing numbers, "
            "written with IsNaN and Where), received 8") in " ".join(result.stderr.split())


def test_raw_columns_need_a_weights_file_with_their_preprocessing(project, tmp_path):
    spec_path, _ = _init_spec(project, "iris_names", "species", "float64")
    weights = tmp_path / "bare.npz"
    numpy.savez(weights, **Model(load_spec(spec_path)).initial_weights(0))
    result = run("export", spec_path, "--weights", weights, "--output", tmp_path / "m.onnx", cwd=project)
    assert result.exit_code == 2 and not (tmp_path / "m.onnx").exists()
    assert result.stderr == f"Error (weights error): {weights}: expected the fitted preprocessing of column 'sepal_length' (arrays preprocessing/sepal_length/...), received none\n"


def plan_unknown_error(spec):
    spec["data"]["columns"]["plan"]["unknown"] = "error"


def test_what_nnctl_refuses_reads_as_documented(project):
    """Inside ONNX nothing raises: an unknown plan under `unknown: error` is what `ignore` gives,
    a third autopay value is the binary column's first (0)."""
    from nnctl.export.onnx_file import nnctl_outputs

    spec_path, weights = _init_spec(project, "customers", "outcome", "float64", plan_unknown_error)
    session = open_session(load_spec(spec_path), weights)
    runner = ort.InferenceSession(build(session).data, providers=["CPUExecutionProvider"])
    feeds = raw_feeds(prepared.read_raw(project / "data" / "customers.csv", session.spec.data, targets=False), numpy.arange(ROWS),
                      session.preprocessing)
    feeds["plan"][:] = "platinum"
    negative = session.preprocessing["autopay"].values[0]
    surprising = {**feeds, "autopay": numpy.full_like(feeds["autopay"], "maybe")}
    prob, classes = runner.run(None, surprising)
    session.preprocessing["plan"].unknown = "ignore"
    expected, expected_classes = nnctl_outputs(session, {**feeds, "autopay": numpy.full_like(feeds["autopay"], negative)})
    numpy.testing.assert_allclose(prob, expected, rtol=1e-9, atol=1e-9)
    assert classes.tolist() == expected_classes.tolist()


def test_a_raw_column_named_as_an_output_is_refused(project):
    """Its input would take the name of the probabilities' output."""
    spec_path, weights = _init_spec(project, "iris_names", "species", "float32")
    table = project / "iris_prob.csv"
    table.write_text((project / "data" / "iris_names.csv").read_text().replace("sepal_width", "prob", 1))
    spec = yaml.safe_load(spec_path.read_text())
    spec["data"]["inputs"]["x"] = ["prob" if c == "sepal_width" else c for c in spec["data"]["inputs"]["x"]]
    spec["data"]["path"] = str(table)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    session = Session(load_spec(spec_path), get_backend("numpy"))
    training_sets(session)
    numpy.savez(weights, **Model(load_spec(spec_path)).initial_weights(0), **state_arrays(session.preprocessing))
    result = run("export", spec_path, "--weights", weights, "--output", project / "prob.onnx", cwd=project)
    assert result.exit_code == 2 and not (project / "prob.onnx").exists()
    assert "data.inputs.x: expected input names other than the exported outputs' (prob, class), received input 'prob'" in result.stderr

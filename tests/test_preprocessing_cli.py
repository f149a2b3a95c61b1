"""Raw tables through the commands: init, train, predict and evaluate on text, missing cells and
text targets, the weights file as the whole fitted model, and every bad input as one clear error."""
from __future__ import annotations

import json
import textwrap

import numpy
import pytest

from tests.helpers import ROOT, run, run_json
from tests.test_errors import Project, run_failing

pytest.importorskip("pyarrow", reason="pyarrow reads table files")

RAW = """\
name: raw
seed: 0
inputs: {x: [6]}
layers:
  - {type: dense, units: 8, activation: relu}
  - {type: dense, units: 3}
loss: {type: sparse_categorical_crossentropy, from_logits: true}
metrics: [accuracy]
data:
  path: data.csv
  inputs: {x: [age, fee, city, member]}
  targets: kind
  validation_split: 0.25
  preprocessing: {normalize: zscore, missing: mean}
  columns:
    city: {missing: most_frequent}
    member: {type: binary, positive: "yes", missing: most_frequent}
train: {epochs: 4, batch_size: 8}
"""


def _rows(n=40):
    cities, kinds = ["Paris", "Lyon", "Nice"], ["cat", "dog", "bird"]
    lines = ["age,fee,city,member,kind"]
    for i in range(n):
        age = "" if i % 11 == 3 else str(20 + i % 37)
        city = "" if i % 13 == 5 else cities[i % 3]
        lines.append(f"{age},{1000 + 97 * (i % 17)},{city},{'yes' if i % 2 else 'no'},{kinds[(i // 2) % 3]}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "data.csv").write_text(_rows())
    (tmp_path / "spec.yaml").write_text(RAW)
    return tmp_path


def test_train_predict_evaluate_on_raw_rows(project):
    trained = run_json("train", "spec.yaml", cwd=project)
    assert trained["preprocessing"]["data.csv"] == {"filled": {"age": 4, "city": 3}, "dropped_rows": 0, "unknown": {}}
    with numpy.load(project / "runs/raw/weights.npz") as weights:
        state = {k: weights[k] for k in weights.files if k.startswith("preprocessing/")}
    assert state["preprocessing/kind/vocabulary"].tolist() == ["bird", "cat", "dog"]  # classes in sorted order
    assert state["preprocessing/member/values"].tolist() == ["no", "yes"] and state["preprocessing/city/vocabulary"].dtype.kind == "U"
    (project / "new.csv").write_text("age,fee,city,member\n30,1200,Paris,yes\n,1500,Rome,no\n")
    predicted = run_json("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", cwd=project)
    assert predicted["columns"] == ["prob_bird", "prob_cat", "prob_dog"] and set(predicted["classes"]) <= {"bird", "cat", "dog"}
    assert predicted["preprocessing"] == {"filled": {"age": 1}, "dropped_rows": 0, "unknown": {"city": 1}}
    numpy.testing.assert_allclose(numpy.sum(predicted["outputs"], axis=1), 1.0, rtol=1e-6)
    evaluated = run_json("evaluate", "spec.yaml", "--weights", "runs/raw/weights.npz", cwd=project)
    assert evaluated["classification"]["class_names"] == ["bird", "cat", "dog"] and evaluated["samples"] == 40
    table = run("evaluate", "spec.yaml", "--weights", "runs/raw/weights.npz", cwd=project).stdout
    assert "true \\ pred" in table and "bird" in table


def test_statistics_come_from_the_training_rows_only(project):
    """The mean that fills a missing age is the training rows' mean, not the whole file's."""
    run_json("train", "spec.yaml", cwd=project)
    with numpy.load(project / "runs/raw/weights.npz") as weights:
        fill = float(weights["preprocessing/age/fill"])
    from nnctl.core.random import STREAM_SPLIT, rng_for
    from nnctl.data.dataset import split_mask

    ages = numpy.array([numpy.nan if i % 11 == 3 else 20 + i % 37 for i in range(40)])
    held = split_mask(40, 0.25, rng_for(0, STREAM_SPLIT), "data.csv")
    assert fill == numpy.nanmean(ages[~held]) and fill != numpy.nanmean(ages)


def test_init_on_the_shipped_raw_table_trains_and_predicts(tmp_path):
    spec = tmp_path / "customers.yaml"
    facts = run_json("init", ROOT / "data/customers.csv", "--target", "outcome", "--out", spec)
    assert facts["classes"] == ["cancelled", "renewed", "upgraded"] and facts["width"] == 11
    assert any(note.startswith("region: 4 categories, one-hot") for note in facts["columns"])
    trained = run_json("train", spec, "--epochs", 3, cwd=tmp_path)
    assert trained["preprocessing"] and trained["train_samples"] == 480


# --- bad input, each one message and exit 2 --------------------------------------------------------------
def _edit(text, *pairs):
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def breaker(spec_pairs=(), data=None, command=None):
    def apply(project):
        spec = project.folder / "spec.yaml"
        spec.write_text(_edit(textwrap.dedent(RAW), *spec_pairs))
        (project.folder / "data.csv").write_text(data if data is not None else _rows())
        return command(project) if command else ["train", "spec.yaml"]
    return apply


BAD = [
    ("text in a numeric column", breaker([("    city: {missing: most_frequent}", "    city: {type: numeric}")]),
     ["column 'city': expected numbers for a numeric column, received 'Paris'", "declare it `type: category`"]),
    ("a missing value under error", breaker([("{normalize: zscore, missing: mean}", "{normalize: zscore, missing: error}")]),
     ["data.csv:5:", "column 'age': expected a value, received a missing cell"]),
    ("a category with one value", breaker(data=_rows().replace("Lyon", "Paris").replace("Nice", "Paris")),
     ["column 'city': expected a category column with at least two values, received 1 ('Paris')"]),
    ("more values than max_tokens", breaker([("city: {missing: most_frequent}", "city: {missing: most_frequent, max_tokens: 2}")]),
     ["column 'city': expected at most 2 distinct values (max_tokens), received 3"]),
    ("a target with one class", breaker(data="\n".join(line.rsplit(",", 1)[0] + ",cat" if i else line for i, line in enumerate(_rows().splitlines())) + "\n"),
     ["column 'kind': expected a target with at least two classes, received 1"]),
    ("a third value in a binary column", breaker(data=_rows().replace("no,", "maybe,", 1)),
     ["column 'member': expected exactly two values for a binary column, received 3"]),
    ("a column the file lacks", breaker([("inputs: {x: [age, fee, city, member]}", "inputs: {x: [age, fees, city, member]}")]),
     ["expected column 'fees' (did you mean 'fee'?)"]),
    ("preprocessing of a column the spec does not read", breaker([("    city: {missing: most_frequent}", "    cty: {missing: most_frequent}")]),
     ["spec.yaml:", "data.columns.cty", "received 'cty' (did you mean 'city'?)"]),
    ("a misspelt preprocessing option", breaker([("{normalize: zscore, missing: mean}", "{normalise: zscore, missing: mean}")]),
     ["spec.yaml:", "data.preprocessing.normalise", "did you mean 'normalize'?"]),
]


@pytest.mark.parametrize("what, breaks, expected", BAD, ids=[row[0] for row in BAD])
def test_bad_raw_input_is_one_clear_error(tmp_path, what, breaks, expected):
    project = Project.__new__(Project)  # run_failing's sentinels and checks, with this spec and data
    project.folder = tmp_path / "proj"
    project.folder.mkdir()
    output = run_failing(project, breaks(project))
    for text in expected:
        assert text in output, f"{what}: {text!r} not in {output}"


def test_an_unknown_category_under_error_names_column_value_and_line(project):
    run_json("train", "spec.yaml", cwd=project)
    (project / "spec.yaml").write_text(_edit(RAW, ("city: {missing: most_frequent}", "city: {missing: most_frequent, unknown: error}")))
    (project / "new.csv").write_text("age,fee,city,member\n30,1200,Paris,yes\n31,1300,Rome,no\n")
    result = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", cwd=project)
    assert result.exit_code == 2 and "new.csv:3:3: column 'city': expected one of the 3 values seen in training" in result.stderr
    assert "received 'Rome'" in result.stderr


def test_a_weights_file_whose_vocabulary_differs_from_the_declared_one(project):
    run_json("train", "spec.yaml", cwd=project)
    declared = _edit(RAW, ("city: {missing: most_frequent}", "city: {missing: most_frequent, vocabulary: [Nice, Lyon, Paris]}"))
    (project / "spec.yaml").write_text(declared)
    result = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "data.csv", cwd=project)
    assert result.exit_code == 2, result.output
    assert "array preprocessing/city/vocabulary: expected the spec's vocabulary ('Nice', 'Lyon', 'Paris')" in result.stderr
    assert json.loads(run("config", "spec.yaml", "--json", cwd=project).stdout)["data"]["columns"]["city"]["vocabulary"] == ["Nice", "Lyon", "Paris"]


def test_a_normalized_regression_target_is_predicted_in_its_units(tmp_path):
    rng = numpy.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    y = 5000 + 800 * x[:, 0] - 300 * x[:, 1]
    (tmp_path / "data.csv").write_text("a,b,y\n" + "".join(f"{u},{v},{t}\n" for u, v, t in zip(x[:, 0], x[:, 1], y)))
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""\
        name: units
        inputs: {x: [2]}
        layers: [{type: dense, units: 1}]
        loss: mse
        optimizer: {type: adam, learning_rate: 0.05}
        data: {path: data.csv, inputs: {x: [a, b]}, targets: y, columns: {y: {normalize: zscore}}}
        train: {epochs: 40, batch_size: 20}
        """))
    run_json("train", "spec.yaml", cwd=tmp_path)
    with numpy.load(tmp_path / "runs/units/weights.npz") as weights:
        assert float(weights["preprocessing/y/center"]) == pytest.approx(y.mean()) and float(weights["preprocessing/y/scale"]) == pytest.approx(y.std())
    predicted = numpy.array(run_json("predict", "spec.yaml", "--weights", "runs/units/weights.npz", "--input", "data.csv", cwd=tmp_path)["outputs"])[:, 0]
    assert numpy.abs(predicted - y).max() < 0.05 * y.std()  # in the target's units, not standardized ones


def test_summary_shows_what_the_weights_were_fitted_with(project):
    run_json("train", "spec.yaml", cwd=project)
    rows = {row["column"]: row for row in run_json("summary", "spec.yaml", "--weights", "runs/raw/weights.npz", cwd=project)["preprocessing"]}
    assert rows["city"]["kind"] == "category (one_hot)" and rows["city"]["width"] == 3 and rows["member"]["fitted"]["values"] == ["no", "yes"]
    assert rows["kind"]["fitted"]["vocabulary"] == ["bird", "cat", "dog"] and rows["fee"]["fitted"]["scale"] > 0
    assert "Fitted preprocessing" in run("summary", "spec.yaml", "--weights", "runs/raw/weights.npz", cwd=project).stdout


# --- fuzz: mixed-type tables and preprocessing options never crash ----------------------------------------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

CELLS = st.one_of(st.sampled_from(["", "NA", "x", "y", "z", "yes", "no", "1", "0", "2.5", "-3", "1e5", "Paris", " ", "é", "1_0"]),
                  st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr))
OPTIONS = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["auto", "numeric", "category", "binary"]), "normalize": st.sampled_from(["none", "zscore", "minmax"]),
    "missing": st.sampled_from(["error", "mean", "median", "most_frequent", "constant", "drop"]),
    "fill_value": st.sampled_from([0, "x", 1.5]), "encode": st.sampled_from(["one_hot", "index"]),
    "unknown": st.sampled_from(["error", "ignore", "bucket"]), "max_tokens": st.integers(1, 4), "min_frequency": st.integers(1, 3)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.lists(st.tuples(st.one_of(st.just(""), st.floats(-1e3, 1e3).map(repr), CELLS),
                                  st.sampled_from(["Paris", "Lyon", "Nice", "", "yes", "no"]), st.sampled_from(["x", "y", "y"])),
                        min_size=4, max_size=16), a=OPTIONS, b=OPTIONS, width=st.integers(1, 4))
def test_mixed_tables_never_crash(tmp_path_factory, table, a, b, width):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "data.csv").write_text("a,b,t\n" + "".join(",".join(f'"{c}"' for c in row) + "\n" for row in table))
    spec = {"name": "fuzz", "inputs": {"x": [width]}, "layers": [{"type": "dense", "units": 2}],
            "loss": {"type": "sparse_categorical_crossentropy", "from_logits": True},
            "data": {"path": "data.csv", "inputs": {"x": ["a", "b"]}, "targets": "t", "validation_split": 0.25,
                     "columns": {"a": a, "b": b}}, "train": {"epochs": 1, "batch_size": 4}}
    (folder / "spec.yaml").write_text(json.dumps(spec))
    result = run("train", "spec.yaml", "--json", cwd=folder)  # run() fails on an internal error
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code:
        assert result.stderr.startswith("Error ("), result.output


def test_predict_writes_any_layers_activations(project):
    run_json("train", "spec.yaml", cwd=project)
    (project / "new.csv").write_text("age,fee,city,member\n30,1200,Paris,yes\n,1500,Lyon,no\n")
    hidden = run_json("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", "--layer", "dense", cwd=project)
    assert hidden["columns"] == [f"dense_{i}" for i in range(8)] and hidden["classes"] is None
    assert numpy.min(hidden["outputs"]) >= 0  # after the relu
    logits = run_json("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", "--layer", "dense_1", cwd=project)
    with numpy.load(project / "runs/raw/weights.npz") as w:
        expected = numpy.array(hidden["outputs"], dtype=numpy.float32) @ w["dense_1/kernel"] + w["dense_1/bias"]
    numpy.testing.assert_allclose(logits["outputs"], expected, rtol=1e-5, atol=1e-6)
    wrong = run("predict", "spec.yaml", "--weights", "runs/raw/weights.npz", "--input", "new.csv", "--layer", "dens", cwd=project)
    assert wrong.exit_code == 2 and "--layer: expected a layer or input of the model, received 'dens' (did you mean 'dense'?)" in wrong.stderr


def test_an_auto_input_takes_its_width_from_its_columns(project):
    """Numbers and binary columns are 1 wide, a one-hot category its declared vocabulary (and a bucket)."""
    auto = _edit(RAW, ("inputs: {x: [6]}", "inputs: {x: auto}"), ("{normalize: zscore, missing: mean}", "{normalize: zscore, missing: mean, type: numeric}"),
                 ("city: {missing: most_frequent}", "city: {missing: most_frequent, type: category, vocabulary: [Paris, Lyon, Nice], unknown: bucket}"))
    (project / "spec.yaml").write_text(auto)
    assert run_json("summary", "spec.yaml", cwd=project)["layers"][0]["output_shape"] == [None, 7]
    assert run_json("train", "spec.yaml", "--epochs", 1, cwd=project)["epochs"] == 1
    (project / "spec.yaml").write_text(_edit(RAW, ("inputs: {x: [6]}", "inputs: {x: auto}")))
    result = run("summary", "spec.yaml", cwd=project)
    assert result.exit_code == 2 and "inputs.x: expected a width, or a declared type for column 'age'" in result.stderr
    (project / "spec.yaml").write_text(_edit(RAW, ("inputs: {x: [6]}", "inputs: {x: auto}"), ("city: {missing: most_frequent}", "city: {type: category}"),
                                             ("{normalize: zscore, missing: mean}", "{normalize: zscore, missing: mean, type: numeric}")))
    result = run("summary", "spec.yaml", cwd=project)
    assert result.exit_code == 2 and "inputs.x: expected a width, or a declared vocabulary for one-hot column 'city'" in result.stderr

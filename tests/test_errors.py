"""Trustworthy input handling: every bad spec, data file or weights file is a clear user error.

One table, one harness. Each row says how to break the valid two-tower project and which
substrings the message must contain (file, FILE:LINE:COLUMN, key path, expected/received, the
"did you mean" suggestion). The harness runs the CLI, asserts exit code 2, no traceback and no
internal error, and that the sentinel files at `--out` / `--output` (and the history.csv beside
`--out`) are byte-for-byte unchanged.
"""
from __future__ import annotations

import io
import pickle
import shutil
import textwrap
import zipfile
from pathlib import Path

import numpy
import pytest

from tests import hostile
from tests.helpers import TWO_TOWER, TWO_TOWER_CSV, run, table_bytes, write_project

SENTINEL_WEIGHTS = b"sentinel weights: must survive a failed run \x00\x01\x02"
SENTINEL_HISTORY = b"sentinel,history\n1,2\n"
SENTINEL_PREDICTIONS = b"sentinel,predictions\n3,4\n"


class Project:
    """A valid two-tower project in `folder` that a row breaks; paths are relative to it."""

    def __init__(self, folder: Path, good_weights: Path):
        self.folder = folder
        self.spec = write_project(folder)
        self.good_weights = good_weights

    def edit(self, old: str, new: str) -> None:
        text = self.spec.read_text(encoding="utf-8")
        assert old in text, f"{old!r} is not in the spec"
        self.spec.write_text(text.replace(old, new, 1), encoding="utf-8")

    def write(self, name: str, content) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def weights(self) -> dict:
        with numpy.load(self.good_weights) as archive:
            return {k: archive[k] for k in archive.files}


# --- ways to break a project ------------------------------------------------------------------------
# The two-tower project with a second output, dense2 (its targets: the inputs' own columns).
TWO_OUTPUTS = (("outputs: dense3", "outputs: [dense3, dense2]"), ("targets: [y]", "targets: {dense3: [y], dense2: [x1, x2]}"))

def spec_edit(*pairs, command="train"):
    """Replace text in the spec (each pair once), then run `command`."""
    def breaker(project):
        for old, new in pairs:
            project.edit(old, new)
        return [command, "spec.yaml"]
    return breaker


def spec_text(text, command="train"):
    def breaker(project):
        project.write("spec.yaml", textwrap.dedent(text) if isinstance(text, str) else text)
        return [command, "spec.yaml"]
    return breaker


def csv_data(text, *pairs):
    """data.csv replaced by `text` (str or bytes), with optional spec edits."""
    def breaker(project):
        for old, new in pairs:
            project.edit(old, new)
        if text is None:
            (project.folder / "data.csv").unlink()
        else:
            project.write("data.csv", text)
        return ["train", "spec.yaml"]
    return breaker


NPZ_EDITS = (("path: data.csv", "path: data.npz"), ("inputs: {x: [x1, x2]}", "inputs: {x: X}"), ("targets: [y]", "targets: Y"))
NPY_EDITS = (("path: data.csv", "path: data.npy"), ("inputs: {x: [x1, x2]}", "inputs: {x: '0:2'}"), ("targets: [y]", "targets: '2'"))
X = numpy.linspace(-1, 1, 40).reshape(20, 2)
Y = X.sum(axis=1, keepdims=True)


def npz_data(make_arrays, *extra_pairs):
    """data.npz holding make_arrays() (a dict), or raw bytes; the spec reads arrays X and Y."""
    def breaker(project):
        for old, new in NPZ_EDITS + extra_pairs:
            project.edit(old, new)
        content = make_arrays()
        if isinstance(content, bytes):
            project.write("data.npz", content)
        else:
            numpy.savez(project.folder / "data.npz", **content)
        return ["train", "spec.yaml"]
    return breaker


def table_data(name, make, *extra_pairs):
    """data.<suffix> (Parquet or Feather) written from make() (a pyarrow table) or raw bytes; the spec reads the CSV's columns."""
    def breaker(project):
        import pyarrow.feather
        import pyarrow.parquet

        for old, new in (("path: data.csv", f"path: {name}"),) + extra_pairs:
            project.edit(old, new)
        content = make()
        if isinstance(content, bytes):
            project.write(name, content)
        elif name.endswith(".parquet"):
            pyarrow.parquet.write_table(content, project.folder / name)
        else:
            pyarrow.feather.write_feather(content, project.folder / name)
        return ["train", "spec.yaml"]
    return breaker


def _arrow_table(**columns):
    import pyarrow

    return pyarrow.table(columns)


def npy_data(make_array, *extra_pairs):
    def breaker(project):
        for old, new in NPY_EDITS + extra_pairs:
            project.edit(old, new)
        content = make_array()
        if isinstance(content, bytes):
            project.write("data.npy", content)
        else:
            numpy.save(project.folder / "data.npy", content)
        return ["train", "spec.yaml"]
    return breaker


def weights_file(change, how="predict"):
    """The trained weights, changed by `change(arrays) -> arrays or bytes`, given to predict or train --init."""
    def breaker(project):
        content = change(project.weights())
        if isinstance(content, bytes):
            project.write("bad.npz", content)
        elif content is not None:
            numpy.savez(project.folder / "bad.npz", **content)
        if how == "predict":
            return ["predict", "spec.yaml", "--weights", "bad.npz", "--input", "data.csv"]
        return ["train", "spec.yaml", "--init", "bad.npz", "--epochs", "1"]
    return breaker


def predict_input(name, content):
    """predict with the good weights on a bad --input file."""
    def breaker(project):
        shutil.copy(project.good_weights, project.folder / "good.npz")
        if content is not None:
            project.write(name, content)
        return ["predict", "spec.yaml", "--weights", "good.npz", "--input", name]
    return breaker


def without(key):
    def change(arrays):
        del arrays[key]
        return arrays
    return change


def with_array(key, value):
    def change(arrays):
        arrays[key] = value
        return arrays
    return change


def good_bytes(cut=None, flip=None):
    def change(arrays):
        buffer = io.BytesIO()
        numpy.savez(buffer, **arrays)
        data = bytearray(buffer.getvalue())
        if flip is not None:
            data[int(len(data) * flip)] ^= 0xFF
        return bytes(data[: int(len(data) * cut)] if cut else data)
    return change


class _Canary:
    """Unpickling this creates the file at `path`: proof that nnctl never unpickles."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_object_array(arrays):
    arrays["dense2/kernel"] = numpy.array([[_Canary(CANARY), 1.0], [2.0, 3.0]], dtype=object)
    return arrays


def pickle_file(arrays):
    return pickle.dumps({"dense1/kernel": _Canary(CANARY)})


CANARY = Path("unpickled.canary")  # relative to the project folder (the CLI's cwd)

# Line numbers in TWO_TOWER (tests/helpers.py): 6-9 are layers[0..3], 11 loss, 12 metrics,
# 13 optimizer, 14-18 data, 19 train.
SPEC = [
    ("negative units", spec_edit(("units: 2", "units: -4")),
     ["spec.yaml:7:40:", "layers[1].units", "expected a positive integer, received -4"]),
    ("units of the wrong type", spec_edit(("units: 2", "units: two")),
     ["spec.yaml:7:40:", "layers[1].units", "expected a positive integer, received 'two'"]),
    ("misspelt layer key", spec_edit(("units: 2", "unitz: 2")),
     ["spec.yaml:7:33:", "layers[1].unitz", "received unknown key 'unitz'", "did you mean 'units'?",
      "spec.yaml:7:5:", "expected key 'units'"]),
    ("misspelt layer type", spec_edit(("type: dense, units: 2", "type: dens, units: 2")),
     ["spec.yaml:7:26:", "layers[1].type", "expected a layer type", "received 'dens'", "did you mean 'dense'?"]),
    ("misspelt activation", spec_edit(("units: 2,", "units: 2, activation: rellu,")),
     ["spec.yaml:7:55:", "layers[1].activation", "received 'rellu'", "did you mean 'relu'?"]),
    ("misspelt loss", spec_edit(("loss: mse", "loss: msee")),
     ["spec.yaml:11:7:", "loss: expected a loss", "received 'msee'", "did you mean 'mse'?"]),
    ("misspelt optimizer", spec_edit(("type: adam", "type: adma")),
     ["spec.yaml:13:19:", "optimizer.type", "received 'adma'", "did you mean 'adam'?"]),
    ("misspelt optimizer option", spec_edit(("learning_rate: 0.01", "learning_rat: 0.01")),
     ["spec.yaml:13:25:", "optimizer.learning_rat", "did you mean 'learning_rate'?"]),
    ("misspelt initializer option", spec_edit(("units: 2,", "units: 2, kernel_initializer: {type: random_normal, stdev: 1},")),
     ["spec.yaml:7:", "layers[1].kernel_initializer.stdev", "did you mean 'stddev'?"]),
    ("misspelt metric", spec_edit(("metrics: [mae]", "metrics: [accuracyy]")),
     ["spec.yaml:12:11:", "metrics[0]", "received 'accuracyy'", "did you mean 'accuracy'?"]),
    ("misspelt layer reference", spec_edit(("from: concat", "from: conact")),
     ["spec.yaml:9:49:", "layers[3].from", "received 'conact'", "did you mean 'concat'?"]),
    ("misspelt reference in a list", spec_edit(("from: [dense1, dense2]", "from: [dense1, dense22]")),
     ["spec.yaml:8:49:", "layers[2].from[1]", "received 'dense22'", "did you mean 'dense2'?"]),
    ("misspelt output", spec_edit(("outputs: dense3", "outputs: dens3")),
     ["spec.yaml:10:10:", "outputs", "received 'dens3'", "did you mean 'dense3'?"]),
    # Several outputs: every key of loss, metrics, loss_weights and data.targets is an output,
    # checked when the spec is read (Keras #21675: not at the first batch).
    ("a loss key that is no output", spec_edit(*TWO_OUTPUTS, ("loss: mse", "loss: {dense3: mse, dense22: mse}")),
     ["spec.yaml:11:21:", "loss.dense22", "expected an output name (dense3, dense2), received 'dense22'", "did you mean 'dense2'?",
      "spec.yaml:11:7: loss: expected a loss for output 'dense2', received none"]),
    ("a metrics key that is no output", spec_edit(*TWO_OUTPUTS, ("metrics: [mae]", "metrics: {dense33: [mae]}")),
     ["spec.yaml:12:11:", "metrics.dense33", "received 'dense33'", "did you mean 'dense3'?"]),
    ("a loss_weights key that is no output", spec_edit(*TWO_OUTPUTS, ("loss: mse", "loss: mse\nloss_weights: {dense3: 1, dens2: 0.5}")),
     ["spec.yaml:12:27:", "loss_weights.dens2", "received 'dens2'", "did you mean 'dense2'?"]),
    ("a negative loss weight", spec_edit(*TWO_OUTPUTS, ("loss: mse", "loss: mse\nloss_weights: [1, -0.5]")),
     ["spec.yaml:12:", "loss_weights[1]", "expected a number >= 0", "received -0.5"]),
    ("loss weights of another count", spec_edit(*TWO_OUTPUTS, ("loss: mse", "loss: mse\nloss_weights: [1]")),
     ["spec.yaml:12:15:", "loss_weights", "expected 2 weights (one per output: dense3, dense2), received 1"]),
    ("one target for two outputs", spec_edit(TWO_OUTPUTS[0]),
     ["spec.yaml:17:12:", "data.targets", "expected a mapping of output name -> target columns (the model has outputs dense3, dense2)"]),
    ("a target missing for one output", spec_edit(TWO_OUTPUTS[0], ("targets: [y]", "targets: {dense3: [y]}")),
     ["spec.yaml:17:12:", "data.targets", "expected target columns for output 'dense2', received none"]),
    ("a targets key that is no output", spec_edit(TWO_OUTPUTS[0], ("targets: [y]", "targets: {dense3: [y], dense_2: [x1, x2]}")),
     ["spec.yaml:17:26:", "data.targets.dense_2", "received 'dense_2'", "did you mean 'dense2'?"]),
    ("an output twice", spec_edit(("outputs: dense3", "outputs: [dense3, dense3]")),
     ["spec.yaml:10:19:", "outputs[1]", "expected each output once, received 'dense3' again"]),
    ("a misspelt metric option", spec_edit(("metrics: [mae]", "metrics: [{type: top_k_categorical_accuracy, kk: 3}]")),
     ["spec.yaml:12:", "metrics[0].kk", "did you mean 'k'?"]),
    ("misspelt train key", spec_edit(("shuffle: true", "shufle: true")),
     ["spec.yaml:19:35:", "train.shufle", "did you mean 'shuffle'?"]),
    ("misspelt data key", spec_edit(("validation_split: 0.2", "validation_splt: 0.2")),
     ["spec.yaml:18:3:", "data.validation_splt", "did you mean 'validation_split'?"]),
    ("misspelt data input", spec_edit(("inputs: {x: [x1, x2]}", "inputs: {X: [x1, x2]}")),
     ["spec.yaml:16:12:", "data.inputs.X", "received 'X'", "did you mean 'x'?"]),
    ("unknown top-level key", spec_edit(("seed: 0", "seed: 0\nepochz: 3")),
     ["spec.yaml:3:1:", "epochz", "expected a top-level key", "received unknown key 'epochz'"]),
    ("unknown nested key", spec_edit(("units: 1, from: x}", "units: 1, from: x, colour: red}")),
     ["spec.yaml:6:52:", "layers[0].colour", "received unknown key 'colour'"]),
    ("duplicate top-level key", spec_edit(("seed: 0", "seed: 0\nseed: 1")),
     ["spec.yaml:3:1:", "seed", "expected each key once, received 'seed' again (first at line 2)"]),
    ("duplicate key in a flow mapping", spec_edit(("units: 2,", "units: 2, units: 3,")),
     ["spec.yaml:7:43:", "layers[1].units", "received 'units' again"]),
    ("Python object tag (apply)", spec_edit(("seed: 0", "seed: !!python/object/apply:os.system ['touch pwned']")),
     ["spec.yaml:2:7:", "seed", "received a value tagged '!!python/object/apply:os.system'"]),
    ("Python name tag", spec_edit(("seed: 0", "seed: !!python/name:os.system")),
     ["spec.yaml:2:7:", "seed", "'!!python/name:os.system'"]),
    ("Python object tag on a mapping", spec_edit(("train: {", "train: !!python/object:os.Foo {")),
     ["spec.yaml:19:8:", "train", "'!!python/object:os.Foo'"]),
    ("application tag", spec_edit(("loss: mse", "loss: !custom mse")),
     ["spec.yaml:11:7:", "loss", "received a value tagged '!custom'"]),
    ("recursive alias", spec_edit(("seed: 0", "seed: &loop [*loop]")),
     ["spec.yaml:2:7:", "seed[0]", "received an alias to a value that contains it (a loop)"]),
    ("alias bomb (billion laughs)", spec_edit(("seed: 0", "seed: 0\ndescription:\n" + "\n".join(
        ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]))),
     ["spec.yaml:", "description.l", "expected a spec of at most 100000 values with its aliases (*name) expanded, received more"]),
    ("nesting too deep", spec_edit(("seed: 0", "seed: " + "[" * 40 + "]" * 40)),
     ["spec.yaml:2:", "seed[0][0]", "expected at most 32 levels of nesting, received deeper"]),
    ("nesting deeper than YAML can read", spec_edit(("seed: 0", "seed: " + "[" * 200_000 + "]" * 200_000)),
     ["spec.yaml", "expected a spec nested at most 32 levels deep, received deeper nesting"]),
    ("YAML merge key", spec_edit(("optimizer: {type: adam", "optimizer: {<<: {type: adam}")),
     ["spec.yaml:13:13:", "expected plain keys, received a YAML merge key '<<'"]),
    ("lone surrogate escape", spec_edit(("name: two_tower", 'name: "two\\ud800tower"')),
     ["spec.yaml:1:7:", "name", "expected valid Unicode text, received a lone surrogate escape"]),
    ("empty file", spec_text(""), ["spec.yaml", "expected a YAML mapping of spec keys, received an empty file"]),
    ("only comments", spec_text("# nothing here\n"), ["spec.yaml", "received an empty file"]),
    ("a list, not a mapping", spec_text("- dense\n- relu\n"), ["spec.yaml:1:1:", "expected a mapping of spec keys, received list"]),
    ("a scalar, not a mapping", spec_text("dense\n"), ["spec.yaml:1:1:", "expected a mapping of spec keys, received str"]),
    ("YAML syntax error", spec_edit(("metrics: [mae]", "metrics: [mae")),
     ["spec.yaml:13:", "expected valid YAML, received a syntax error"]),
    ("not UTF-8", spec_text(TWO_TOWER.replace("two_tower", "two_t\xf6wer").encode("latin-1")),
     ["spec.yaml", "expected a readable UTF-8 spec file"]),
    ("missing spec file", lambda project: ["train", "nope.yaml"], ["nope.yaml", "does not exist"]),
    ("missing required key", spec_edit(("loss: mse\n", "")), ["spec.yaml", "expected key 'loss' at the top level, received none"]),
    ("bad input shape", spec_edit(("x: [2]", "x: [0]")),
     ["spec.yaml:4:6:", "inputs.x", "expected a per-sample shape as a list of positive integers", "received [0]"]),
    ("seed of the wrong type", spec_edit(("seed: 0", "seed: [1, 2]")),
     ["spec.yaml:2:7:", "seed", "expected a non-negative integer, received [1, 2]"]),
    ("learning rate not positive", spec_edit(("learning_rate: 0.01", "learning_rate: -1e-3")),
     ["spec.yaml:13:40:", "optimizer.learning_rate", "expected a number > 0, received -0.001"]),
    ("validation split out of range", spec_edit(("validation_split: 0.2", "validation_split: 1.5")),
     ["spec.yaml:18:21:", "data.validation_split", "expected a number in [0, 1), received 1.5"]),
    ("batch size zero", spec_edit(("batch_size: 4", "batch_size: 0")),
     ["spec.yaml:19:32:", "train.batch_size", "expected a positive integer, received 0"]),
    ("shuffle not a boolean", spec_edit(("shuffle: true", "shuffle: 'yes'")),
     ["spec.yaml:19:44:", "train.shuffle", "expected true or false, received 'yes'"]),
    ("huge number", spec_edit(("units: 2", "units: 1000000000000000000000000000000")),
     ["spec.yaml:7:5:", "layers[1]", "expected a weight small enough to allocate", "dense2/kernel"]),
    ("float overflow in an initializer", spec_edit(("units: 2,", "units: 2, kernel_initializer: {type: constant, value: 1e308},")),
     ["spec.yaml:7:", "layers[1].kernel_initializer", "expected initial values that are finite in float32", "1e+308"]),
    ("constant initializer of the wrong shape", spec_edit(("units: 2,", "units: 2, kernel_initializer: {type: constant, value: [[1, 2, 3]]},")),
     ["layers[1].kernel_initializer", "expected a scalar or a nested list of shape (2, 2), received shape (1, 3)"]),
    ("infinite learning rate", spec_edit(("learning_rate: 0.01", "learning_rate: .inf")),
     ["spec.yaml:13:40:", "optimizer.learning_rate", "expected a number > 0, received inf"]),
]

GRAPH_SPEC = """\
name: graph
inputs:
  x: [2]
  w: [3]
layers:
  - {name: a, type: dense, units: 2, from: x}
  - {name: b, type: dense, units: 3, from: w}
  - {name: joined, type: concat, from: [a, b]}
  - {name: out, type: dense, units: 1, from: joined}
loss: mse
data: {path: data.csv, inputs: {x: [x1, x2], w: [x1, x2, y]}, targets: [y]}
"""


def graph_edit(*pairs):
    def breaker(project):
        text = GRAPH_SPEC
        for old, new in pairs:
            assert old in text
            text = text.replace(old, new, 1)
        project.write("spec.yaml", text)
        return ["train", "spec.yaml"]
    return breaker


GRAPH = [
    ("cycle, named", spec_edit(("units: 1, from: x}", "units: 1, from: dense3}")),
     ["spec.yaml:6:49:", "layers[0].from", "expected an acyclic graph, received a cycle: dense1 -> dense3 -> concat -> dense1"]),
    ("layer fed by itself", graph_edit(("from: x}", "from: a}")),
     ["spec.yaml:6:44:", "layers[0].from", "received its own name 'a' (a cycle)"]),
    ("duplicate layer names", spec_edit(("name: dense2", "name: dense1"), ("[dense1, dense2]", "[dense1, dense3]")),
     ["spec.yaml:7:12:", "layers[1].name", "expected a unique name, received 'dense1', already layer 'dense1' at layers[0]"]),
    ("layer named like an input", graph_edit(("name: a,", "name: w,"), ("[a, b]", "[w, b]")),
     ["spec.yaml:6:12:", "layers[0].name", "received 'w', already an input"]),
    ("unknown reference", graph_edit(("from: w}", "from: v}")),
     ["spec.yaml:7:44:", "layers[1].from", "expected the name of an input or layer, received 'v'"]),
    ("layer that does not reach the output", spec_edit(("  - {name: dense3", "  - {name: spare, type: dense, units: 4, from: x}\n  - {name: dense3")),
     ["spec.yaml:9:5:", "layers[3]", "expected every layer to lead to the output 'dense3', received layer 'spare', which does not"]),
    ("input that does not reach the output", graph_edit(("from: w}", "from: x}")),
     ["spec.yaml:4:6:", "inputs.w", "expected every input to lead to the output 'out', received input 'w', which does not"]),
    ("add of different shapes", graph_edit(("type: concat", "type: add")),
     ["spec.yaml:8:5:", "layers[2]", "add layer 'joined': expected inputs of one shape, received (None, 2), (None, 3)"]),
    ("concat of different ranks", graph_edit(("w: [3]", "w: [3, 2]"), ("{name: b, type: dense, units: 3, from: w}", "{name: b, type: relu, from: w}")),
     ["spec.yaml:8:5:", "layers[2]", "concat layer 'joined': expected shapes equal except on axis 0, received (None, 2), (None, 3, 2)"]),
    ("dense on a 2-D input", graph_edit(("x: [2]", "x: [2, 2]")),
     ["spec.yaml:6:5:", "layers[0]", "expected a 1-D input (None, features), received (None, 2, 2)"]),
    ("softmax axis out of range", spec_edit(("units: 2,", "units: 2, activation: {type: softmax, axis: 5},")),
     ["spec.yaml:7:", "layers[1].activation.axis", "expected an axis in [-2, 1]", "received 5"]),
    *((f"{kind} of different shapes", graph_edit(("type: concat", f"type: {kind}")),
       ["spec.yaml:8:5:", "layers[2]", f"{kind} layer 'joined': expected inputs of one shape, received (None, 2), (None, 3)"])
      for kind in ("multiply", "subtract", "average", "maximum", "minimum")),
    ("subtract of three inputs", graph_edit(("type: concat, from: [a, b]", "type: subtract, from: [a, b, b]")),
     ["spec.yaml:8:5:", "layers[2]", "subtract layer 'joined': expected exactly 2 inputs (the first minus the second), received 3"]),
    ("dot of different lengths", graph_edit(("type: concat", "type: dot")),
     ["spec.yaml:8:5:", "layers[2]", "dot layer 'joined': expected inputs of one size along axes 1 and 1, received (None, 2) and (None, 3) (2 and 3)"]),
    ("dot along axes of different lengths", graph_edit(("x: [2]", "x: [3, 2]"), ("w: [3]", "w: [3, 4]"),
                                                      ("{name: a, type: dense, units: 2, from: x}", "{name: a, type: tanh, from: x}"),
                                                      ("{name: b, type: dense, units: 3, from: w}", "{name: b, type: tanh, from: w}"),
                                                      ("type: concat, from: [a, b]", "type: dot, axes: [2, 2], from: [a, b]")),
     ["spec.yaml:8:5:", "layers[2]", "dot layer 'joined': expected inputs of one size along axes 2 and 2, received (None, 3, 2) and (None, 3, 4) (2 and 4)"]),
    ("dot axes out of range", graph_edit(("type: concat, from: [a, b]", "type: dot, axes: 2, from: [a, b]")),
     ["spec.yaml:8:5:", "layers[2]", "dot layer 'joined': expected axes of a sample in [1, 1] or [-1, -1] for input (None, 2), received 2"]),
    ("dot axes on the batch", graph_edit(("type: concat, from: [a, b]", "type: dot, axes: 0, from: [a, b]")),
     ["spec.yaml:8:", "layers[2].axes", "expected an axis or a list of two axes (the batch axis is 0, as in Keras)", "received 0"]),
    ("reshape to another element count", graph_edit(("{name: out, type: dense, units: 1, from: joined}",
                                                     "{name: r, type: reshape, target_shape: [2, 2], from: joined}\n  - {name: f, type: flatten, from: r}\n  - {name: out, type: dense, units: 1, from: f}")),
     ["spec.yaml:9:5:", "layers[3]", "reshape layer 'r': expected a target_shape of 5 values like input (None, 5), received [2, 2] (4 values)"]),
    ("reshape with two unknown sizes", graph_edit(("{name: out, type: dense, units: 1, from: joined}",
                                                  "{name: r, type: reshape, target_shape: [-1, -1], from: joined}\n  - {name: out, type: dense, units: 1, from: r}")),
     ["spec.yaml:9:", "layers[3].target_shape", "expected a list of positive integers, one of them may be -1 (inferred)", "received [-1, -1]"]),
    ("layer_normalization axis on the batch", graph_edit(("type: concat, from: [a, b]}", "type: concat, from: [a, b]}\n  - {name: n, type: layer_normalization, axis: 0, from: joined}"),
                                                         ("from: joined}\nloss", "from: n}\nloss")),
     ["spec.yaml:9:5:", "layers[3]", "layer_normalization layer 'n': expected an axis of a sample in [1, 1] or [-1, -1] for input (None, 5), received 0"]),
]

def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    numpy.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(arrays) -> bytes:
    buffer = io.BytesIO()
    numpy.savez(buffer, **arrays)
    return buffer.getvalue()


def _zip_bytes(members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name + ".npy", content)
    return buffer.getvalue()


LABELS_SPEC = (("loss: mse", "loss: {type: sparse_categorical_crossentropy, from_logits: true}"),
               ("units: 1, from: concat", "units: 3, from: concat"), ("metrics: [mae]", "metrics: [accuracy]"))
ONE_HOT_SPEC = (("loss: mse", "loss: categorical_crossentropy"), ("units: 1, from: concat", "units: 2, from: concat"),
                ("metrics: [mae]", "metrics: [accuracy]"), ("targets: [y]", "targets: [p, q]"))
BINARY_SPEC = (("loss: mse", "loss: {type: binary_crossentropy, from_logits: true}"),)


def csv_rows(*rows, header="x1,x2,y"):
    return header + "\n" + "".join(row + "\n" for row in rows)


def special_file(name, make, *args):
    """`name` in the project replaced by what `make(path)` puts there (a FIFO, a link to a device),
    then `args` run (default: train); good.npz holds the trained weights."""
    def breaker(project):
        shutil.copy(project.good_weights, project.folder / "good.npz")
        make(project.folder / name)
        return list(args) or ["train", "spec.yaml"]
    return breaker


def sparse_npy_data(shape, fortran):
    def breaker(project):
        for old, new in NPY_EDITS:
            project.edit(old, new)
        hostile.sparse_npy(project.folder / "data.npy", shape, fortran)
        return ["train", "spec.yaml"]
    return breaker


def with_member(name, content, claim=None):
    """The weights as a zip of .npy members plus member `name` (deflated), its size claimed as `claim`."""
    def change(arrays):
        members = {f"{key}.npy": hostile.npy_bytes(value) for key, value in arrays.items()}
        members[f"{name}.npy"] = content
        return hostile.forged_zip(members, {f"{name}.npy": claim} if claim else None, deflate=(f"{name}.npy",))
    return change


BOMB_HEADER = hostile.npy_header((1 << 28,))  # 2 GB of float64, claimed by a member of a few bytes
HUGE_X = hostile.npy_header((10**12, 2))


DATA = [
    ("missing data file", csv_data(None), ["data.csv", "expected a data file, received a path that does not exist"]),
    ("missing validation file", csv_data(TWO_TOWER_CSV, ("validation_split: 0.2", "validation: val.csv")),
     ["val.csv", "does not exist"]),
    ("missing column, suggests the nearest", csv_data(TWO_TOWER_CSV, ("[x1, x2]", "[x1, X2]")),
     ["data.csv:1:", "input 'x': expected column 'X2'", "did you mean 'x2'?", "the header has 'x1', 'x2', 'y'"]),
    ("missing target column", csv_data(TWO_TOWER_CSV, ("targets: [y]", "targets: [target]")),
     ["data.csv:1:", "targets: expected column 'target'", "the header has 'x1', 'x2', 'y'"]),
    ("non-numeric cell", csv_data(csv_rows("1,2,3", "4,abc,6")),
     ["data.csv:3:2:", "column 'x2'", "expected a number, received 'abc'"]),
    ("empty cell", csv_data(csv_rows("1,2,3", "4,5,")),
     ["data.csv:3:3:", "column 'y'", "expected a number, received ''"]),
    ("NaN cell", csv_data(csv_rows("1,2,3", "nan,5,6")),
     ["data.csv:3:1:", "column 'x1'", "expected a finite number, received 'nan'"]),
    ("inf cell", csv_data(csv_rows("1,2,3", "4,5,6", "7,-inf,9")),
     ["data.csv:4:2:", "column 'x2'", "expected a finite number, received '-inf'"]),
    ("overflowing cell", csv_data(csv_rows("1,2,3", "1e999,5,6")),
     ["data.csv:3:1:", "expected a finite number, received '1e999'"]),
    ("ragged row (short)", csv_data(csv_rows("1,2,3", "4,5")), ["data.csv:3:", "expected 3 fields like the header, received 2"]),
    ("ragged row (long)", csv_data(csv_rows("1,2,3", "4,5,6", "7,8,9,10")), ["data.csv:4:", "expected 3 fields like the header, received 4"]),
    ("header only", csv_data(csv_rows()), ["data.csv", "expected at least one sample, received none"]),
    ("empty CSV", csv_data(""), ["data.csv", "expected a header row of column names, received an empty file"]),
    ("duplicate header column", csv_data(csv_rows("1,2,3,4", header="x1,x2,x1,y")),
     ["data.csv:1:3:", "expected column 'x1' once in the header, received it in columns 1, 3"]),
    ("CSV not UTF-8", csv_data(b"x1,x2,y\n\xe9,1,2\n"), ["data.csv", "expected a readable UTF-8 CSV file"]),
    ("columns disagree with the input shape", csv_data(TWO_TOWER_CSV, ("[x1, x2]", "[x1]")),
     ["data.csv", "input 'x': expected 2 values per sample (shape [2]), received shape [1]"]),
    ("targets disagree with the output", csv_data(TWO_TOWER_CSV, ("targets: [y]", "targets: [y, x1]")),
     ["data.csv", "targets: expected 1 column (one per output unit), received 2"]),
    ("label outside [0, classes)", csv_data(csv_rows("1,2,0", "3,4,2", "5,6,3"), *LABELS_SPEC),
     ["data.csv:4:3:", "expected class indices in [0, 3)", "received 3", "column 'y'"]),
    ("negative label", csv_data(csv_rows("1,2,-1", "3,4,2"), *LABELS_SPEC),
     ["data.csv:2:3:", "expected class indices in [0, 3)", "received -1"]),
    ("fractional label", csv_data(csv_rows("1,2,0", "3,4,1.5"), *LABELS_SPEC),
     ["data.csv:3:3:", "expected class indices in [0, 3)", "received 1.5"]),
    ("rows not one-hot", csv_data(csv_rows("1,2,1,0", "3,4,1,1", header="x1,x2,p,q"), *ONE_HOT_SPEC),
     ["data.csv:3:3:", "expected one-hot or probability rows", "received [1, 1]", "columns 'p', 'q'"]),
    ("negative probability", csv_data(csv_rows("1,2,1.5,-0.5", header="x1,x2,p,q"), *ONE_HOT_SPEC),
     ["data.csv:2:3:", "expected one-hot or probability rows", "received [1.5, -0.5]"]),
    ("binary target outside [0, 1]", csv_data(csv_rows("1,2,1", "3,4,2"), *BINARY_SPEC),
     ["data.csv:3:3:", "expected values in [0, 1] for binary cross-entropy, received [2]"]),
    ("unsupported suffix", lambda p: (p.write("data.txt", TWO_TOWER_CSV), p.edit("path: data.csv", "path: data.txt"), ["train", "spec.yaml"])[-1],
     ["data.txt", "expected a .csv, .parquet, .feather, .arrow, .npy or .npz file, received a .txt file"]),
    (".npz array missing", npz_data(lambda: {"x": X, "Y": Y}),
     ["data.npz", "input 'x': expected array 'X'", "did you mean 'x'?", "the archive has x, Y"]),
    (".npz target array missing", npz_data(lambda: {"X": X}), ["data.npz", "targets: expected array 'Y'", "the archive has X"]),
    (".npz array of the wrong shape", npz_data(lambda: {"X": X[:, :1], "Y": Y}),
     ["data.npz", "input 'x': expected 2 values per sample (shape [2]), received shape [1]"]),
    (".npz arrays of different lengths", npz_data(lambda: {"X": X, "Y": Y[:5]}), ["data.npz", "expected 20 targets (one per sample), received 5"]),
    (".npz array of strings", npz_data(lambda: {"X": X.astype(str), "Y": Y}), ["data.npz", "array 'X': expected a numeric array, received dtype <U"]),
    (".npz complex array", npz_data(lambda: {"X": X.astype(complex), "Y": Y}), ["data.npz", "array 'X'", "received dtype complex128"]),
    (".npz object array (never unpickled)", npz_data(lambda: {"X": numpy.array([[_Canary(CANARY), 1.0]] * 20, dtype=object), "Y": Y}),
     ["data.npz", "array 'X'", "received a pickled object array, which nnctl never loads"]),
    (".npz scalar array", npz_data(lambda: {"X": numpy.float64(1.0), "Y": Y}), ["data.npz", "array 'X': expected samples along axis 0, received a scalar"]),
    (".npz with NaN", npz_data(lambda: {"X": numpy.where(X > 0.5, numpy.nan, X), "Y": Y}),
     ["data.npz", "array 'X': expected finite numbers, received nan at index (15, 0)"]),
    (".npz that is not a zip", npz_data(lambda: b"just some text"), ["data.npz", "expected an .npz archive", "received a file that starts with b'just'"]),
    (".npz truncated", npz_data(lambda: _npz_bytes({"X": X, "Y": Y})[:300]), ["data.npz", "received a truncated or corrupt file"]),
    (".npz member not in .npy format", npz_data(lambda: _zip_bytes({"X": b"hello", "Y": b"world"})),
     ["data.npz", "array 'X': expected a NumPy array, received a member that is not in .npy format"]),
    ("predict: --input misses a column", predict_input("in.csv", "x2,y\n1,2\n"),
     ["in.csv:1:", "input 'x': expected column 'x1'", "the header has 'x2', 'y'"]),
    ("predict: --input has a bad cell", predict_input("in.csv", "x1,x2\n1,2\n3,four\n"),
     ["in.csv:3:2:", "column 'x2': expected a number, received 'four'"]),
    ("predict: --input does not exist", predict_input("in.csv", None), ["in.csv", "does not exist"]),
    ("predict: --input .npy of the wrong width", predict_input("in.npy", _npy_bytes(numpy.ones((4, 1)))),
     ["in.npy", "input 'x'", "within 1 columns, received"]),
    (".npy not 2-D", npy_data(lambda: X[:, 0]), ["data.npy", "expected a 2-D array (samples, columns), received shape [20]"]),
    (".npy column out of range", npy_data(lambda: numpy.hstack([X, Y]), ("targets: '2'", "targets: '5'")),
     ["data.npy", "targets: expected a column index or range like '0:784' within 3 columns, received '5'"]),
    (".npy with inf", npy_data(lambda: numpy.hstack([X, Y * numpy.inf])), ["data.npy", "expected finite numbers, received -inf at index (0, 2)"]),
    (".npy that is an .npz", npy_data(lambda: _npz_bytes({"X": X})), ["data.npy", "expected a .npy array file, received an .npz file"]),
    (".npy pickled objects", npy_data(lambda: numpy.hstack([X, Y]).astype(object)), ["data.npy", "pickled object array, which nnctl never loads"]),
    ("cell that overflows float32", csv_data(csv_rows("1,2,3", "4,1e39,6")),
     ["data.csv:3:2:", "column 'x2': expected a number that is finite in float32 (|x| <= 3.4e+38), received '1e39'"]),
    ("target that overflows float32", csv_data(csv_rows("1,2,3", "4,5,-3e38", "4,5,-4e38")),
     ["data.csv:4:3:", "column 'y': expected a number that is finite in float32", "received '-4e38'"]),
    ("predict: --input cell overflows float32", predict_input("in.csv", "x1,x2\n1,2\n3,1e39\n"),
     ["in.csv:3:2:", "column 'x2': expected a number that is finite in float32", "received '1e39'"]),
    (".npz value that overflows float32", npz_data(lambda: {"X": numpy.where(X > 0.9, 1e39, X), "Y": Y}),
     ["data.npz", "array 'X': expected numbers that are finite in float32 (|x| <= 3.4e+38), received 1e+39 at index (19, 0)"]),
    (".npy value that overflows float32", npy_data(lambda: numpy.hstack([X, numpy.where(Y > 1.5, 1e39, Y)])),
     ["data.npy", "array 'data.npy': expected numbers that are finite in float32", "received 1e+39 at index (17, 2)"]),
    ("cell after a quoted cell holding line breaks", csv_data('x1,x2,y\n"1\n\n",2,3\n4,5,6\n7,x,9\n'),
     ["data.csv:6:2:", "column 'x2': expected a number, received 'x'"]),
    ("bad cell in a row that spans lines", csv_data('x1,x2,y\n1,2,3\n"4\n",bad,6\n'),
     ["data.csv:4:2:", "column 'x2': expected a number, received 'bad'"]),
    ("label after a quoted cell holding line breaks", csv_data('x1,x2,y\n"1\n",2,0\n3,4,7\n', *LABELS_SPEC),
     ["data.csv:4:3:", "expected class indices in [0, 3)", "received 7"]),
    ("digits with an underscore", csv_data(csv_rows("1,2,3", "1_0,5,6")),
     ["data.csv:3:1:", "column 'x1': expected a number, received '1_0'"]),
    ("Arabic-Indic digits", csv_data(csv_rows("1,2,3", "4,\u0661,6")),
     ["data.csv:3:2:", "column 'x2': expected a number, received '\u0661'"]),
    ("full-width digits", csv_data(csv_rows("\uff17,2,3")),
     ["data.csv:2:1:", "expected a number, received '\uff17'"]),
    ("data file that is a FIFO", special_file("data.csv", hostile.fifo),
     ["data.csv", "expected a regular file, received a FIFO"]),
    ("data file that is /dev/zero", special_file("data.csv", lambda path: hostile.link(path, "/dev/zero")),
     ["data.csv", "expected a regular file, received a character device"]),
    ("data file that is a directory", special_file("data.csv", lambda path: (path.unlink(), path.mkdir())),
     ["data.csv", "expected a data file, received a directory"]),
    ("predict: --input is a FIFO", special_file("in.csv", hostile.fifo, "predict", "spec.yaml", "--weights", "good.npz", "--input", "in.csv"),
     ["in.csv", "expected a regular file, received a FIFO"]),
    (".npy header claims 10**12 rows", npy_data(lambda: hostile.npy_header((10**12, 3)) + bytes(24)),
     ["data.npy", "expected a .npy header that fits the data, received shape (1000000000000, 3) of float64", "with 24 bytes of data"]),
    (".npz member header claims 10**12 rows", npz_data(lambda: hostile.forged_zip({"X.npy": HUGE_X + bytes(32), "Y.npy": hostile.npy_bytes(Y)})),
     ["data.npz", "array 'X': expected a .npy header that fits the data, received shape (1000000000000, 2) of float64"]),
    (".npz member claims more than deflate makes (zip bomb)",
     npz_data(lambda: hostile.forged_zip({"X.npy": BOMB_HEADER + bytes(64), "Y.npy": hostile.npy_bytes(Y)}, {"X.npy": len(BOMB_HEADER) + (8 << 28)}, deflate=("X.npy",))),
     ["data.npz", "array 'X': expected at most 1032 times its", "received a claim of 2.0 GB (a zip bomb or a corrupt file)"]),
    (".npz stored member claiming 2 GB in a small file",
     npz_data(lambda: hostile.forged_zip({"X.npy": BOMB_HEADER + bytes(64), "Y.npy": hostile.npy_bytes(Y)}, {"X.npy": len(BOMB_HEADER) + (8 << 28)})),
     ["data.npz", "array 'X': expected a member within the file's", "received one of 2.0 GB at byte 0: a truncated or corrupt file"]),
    (".npz member smaller than its header says", npz_data(lambda: hostile.forged_zip({"X.npy": hostile.npy_bytes(X)[:200], "Y.npy": hostile.npy_bytes(Y)})),
     ["data.npz", "array 'X': expected a .npy header that fits the data, received shape (20, 2) of float64 (320 bytes)"]),
    (".npz array stored twice", npz_data(lambda: hostile.forged_zip([("X.npy", hostile.npy_bytes(X)), ("Y.npy", hostile.npy_bytes(Y)), ("X.npy", hostile.npy_bytes(-X))])),
     ["data.npz", "expected each array once, received 'X' twice (a tampered archive)"]),
    ("unreadable Parquet file", table_data("data.parquet", lambda: b"PAR1 this is not a Parquet file"),
     ["data.parquet", "expected a readable Parquet file, received ArrowInvalid"]),
    ("Parquet file lacking a column, suggests the nearest", table_data("data.parquet", lambda: _arrow_table(x1=X[:, 0], X2=X[:, 1], y=Y[:, 0])),
     ["data.parquet", "input 'x': expected column 'x2' (did you mean 'X2'?); the header has 'x1', 'X2', 'y'"]),
    ("Feather file with text in a model column", table_data("data.feather", lambda: _arrow_table(x1=X[:, 0], x2=["a"] * 20, y=Y[:, 0])),
     ["data.feather", "column 'x2': expected a number at row 1, received text 'a'"]),
    ("Parquet file with a missing value", table_data("data.parquet", lambda: _arrow_table(x1=X[:, 0], x2=X[:, 1], y=[None] + list(Y[1:, 0]))),
     ["data.parquet", "column 'y': expected a number at row 1, received a missing value"]),
    # read a row group or record batch at a time: the problem is still the one the whole file shows first
    ("Parquet file with a missing value in its last row group only",
     table_data("data.parquet", lambda: table_bytes(_arrow_table(x1=X[:, 0], x2=X[:, 1], y=list(Y[:-1, 0]) + [None]), "parquet", 6)),
     ["data.parquet", "column 'y': expected a number at row 20, received a missing value"]),
    ("Feather file with text in its last record batch only, named by the column's first cell",
     table_data("data.feather", lambda: table_bytes(_arrow_table(x1=X[:, 0], x2=[repr(v) for v in X[:-1, 1]] + ["a"], y=Y[:, 0]), "feather", 6)),
     ["data.feather", f"column 'x2': expected a number at row 1, received text {repr(X[0, 1])!r}"]),
    ("Parquet file whose earlier column is missing a value after a later column's text",
     table_data("data.parquet", lambda: table_bytes(_arrow_table(x1=list(X[:-1, 0]) + [None], x2=["a"] + [repr(v) for v in X[1:, 1]], y=Y[:, 0]), "parquet", 6)),
     ["data.parquet", "column 'x1': expected a number at row 20, received a missing value"]),
    ("missing-value token in a numeric column", csv_data(csv_rows("1,2,3", "NA,5,6")),
     ["data.csv:3:1:", "column 'x1': expected a number, received 'NA'"]),
    ("declared missing value in a numeric column", csv_data(csv_rows("1,2,3", "4,?,6"), ("validation_split: 0.2", "validation_split: 0.2\n  missing_values: ['?']")),
     ["data.csv:3:2:", "column 'x2': expected a number, received '?'"]),
    ("cell split by the declared delimiter", csv_data("x1;x2;y\n1;2;3\n4;5,5;6\n", ("validation_split: 0.2", "validation_split: 0.2\n  delimiter: ';'")),
     ["data.csv:3:2:", "column 'x2': expected a number, received '5,5'"]),
    ("delimiter of two characters", spec_edit(("validation_split: 0.2", "validation_split: 0.2\n  delimiter: ';;'")),
     ["spec.yaml:", "data.delimiter: expected one character other than a quote or a line break, received ';;'"]),
    ("missing_values not a list", spec_edit(("validation_split: 0.2", "validation_split: 0.2\n  missing_values: NA")),
     ["spec.yaml:", "data.missing_values: expected a list of distinct strings (cells that are missing values), received 'NA'"]),
    ("cache neither a folder nor false", spec_edit(("validation_split: 0.2", "validation_split: 0.2\n  cache: 3")),
     ["spec.yaml:", "data.cache: expected a folder path, or false to turn the data cache off, received 3"]),
    ("large Fortran-order .npy", sparse_npy_data((12_000_000, 3), fortran=True),
     ["data.npy", "expected a C-order (row-major) .npy file for one this large (274 MB", "received a Fortran-order one", "numpy.ascontiguousarray"]),
]


WEIGHTS = [
    ("missing weights file", weights_file(lambda a: None), ["bad.npz", "expected a weights file, received a path that does not exist"]),
    ("missing key", weights_file(without("dense3/bias")),
     ["bad.npz", "expected array 'dense3/bias' of shape (1,), received no such array"]),
    ("unexpected key", weights_file(with_array("dense9/kernel", numpy.zeros(2))),
     ["bad.npz", "received unexpected array 'dense9/kernel'"]),
    ("shape mismatch, both shapes", weights_file(with_array("dense2/kernel", numpy.zeros((3, 2), numpy.float32))),
     ["bad.npz", "array 'dense2/kernel': expected shape (2, 2), received (3, 2)"]),
    ("integer weights", weights_file(with_array("dense2/kernel", numpy.zeros((2, 2), numpy.int32))),
     ["bad.npz", "array 'dense2/kernel': expected floating-point values, received dtype int32"]),
    ("NaN weights", weights_file(with_array("dense1/bias", numpy.array([numpy.nan], numpy.float32))),
     ["bad.npz", "array 'dense1/bias': expected finite values, received NaN or inf"]),
    ("weights that overflow float32", weights_file(with_array("dense1/bias", numpy.array([1e300]))),
     ["array 'dense1/bias': expected values that are finite in float32", "1e+300"]),
    ("truncated file", weights_file(good_bytes(cut=0.5)), ["bad.npz", "expected a valid .npz archive, received a truncated or corrupt file"]),
    ("corrupt file (a flipped byte)", weights_file(good_bytes(flip=0.3)), ["bad.npz", "truncated or corrupt file", "Bad CRC-32"]),
    ("not an archive", weights_file(lambda a: b"these are not weights"), ["bad.npz", "expected an .npz archive of named arrays", "not a zip archive"]),
    ("empty file", weights_file(lambda a: b""), ["bad.npz", "received an empty file"]),
    ("a single .npy array", weights_file(lambda a: b"\x93NUMPY" + b"\x00" * 40), ["bad.npz", "received a single .npy array"]),
    ("pickled object array (never loaded)", weights_file(pickled_object_array),
     ["bad.npz", "array 'dense2/kernel'", "received a pickled object array, which nnctl never loads"]),
    ("a pickle file (never loaded)", weights_file(pickle_file), ["bad.npz", "received a pickle file, which nnctl never loads"]),
    ("--init: shape mismatch", weights_file(with_array("dense3/kernel", numpy.zeros((1, 3), numpy.float32)), how="init"),
     ["bad.npz", "array 'dense3/kernel': expected shape (3, 1), received (1, 3)"]),
    ("--init: truncated file", weights_file(good_bytes(cut=0.7), how="init"), ["bad.npz", "truncated or corrupt"]),
    ("zip bomb under an unexpected name (refused unread)", weights_file(with_member("bomb", BOMB_HEADER + bytes(64), len(BOMB_HEADER) + (8 << 28))),
     ["bad.npz", "received unexpected array 'bomb'"]),
    ("zip bomb under a weight's name", weights_file(with_member("dense1/bias", BOMB_HEADER + bytes(64), len(BOMB_HEADER) + (8 << 28))),
     ["bad.npz", "array 'dense1/bias': expected at most 1032 times its", "(a zip bomb or a corrupt file)"]),
    ("weight header claims 10**12 values", weights_file(with_member("dense1/bias", hostile.npy_header((10**12,), "<f4") + bytes(16))),
     ["bad.npz", "array 'dense1/bias': expected a .npy header that fits the data, received shape (1000000000000,) of float32"]),
    ("weights file that is a FIFO", special_file("bad.npz", hostile.fifo, "predict", "spec.yaml", "--weights", "bad.npz", "--input", "data.csv"),
     ["bad.npz", "expected a regular file, received a FIFO"]),
    ("weights file that is /dev/zero", special_file("bad.npz", lambda path: hostile.link(path, "/dev/zero"), "train", "spec.yaml", "--init", "bad.npz"),
     ["bad.npz", "expected a regular file, received a character device"]),
]

ROWS = [pytest.param(*row, id=f"spec: {row[0]}") for row in SPEC] + \
       [pytest.param(*row, id=f"graph: {row[0]}") for row in GRAPH] + \
       [pytest.param(*row, id=f"data: {row[0]}") for row in DATA] + \
       [pytest.param(*row, id=f"weights: {row[0]}") for row in WEIGHTS]


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    spec = write_project(folder)
    result = run("train", spec, "--epochs", 1, "--out", folder / "good.npz", cwd=folder)
    assert result.exit_code == 0, result.output
    return folder / "good.npz"


def run_failing(project: Project, args: list) -> str:
    """Run `nnctl ARGS` with sentinels at every output path; check exit 2 and the sentinels."""
    sentinels = {}
    if args[0] == "train":
        out = project.write("out/weights.npz", SENTINEL_WEIGHTS)
        sentinels[out] = SENTINEL_WEIGHTS
        sentinels[project.write("out/history.csv", SENTINEL_HISTORY)] = SENTINEL_HISTORY
        args = args + ["--out", "out/weights.npz"]
    elif args[0] == "predict":
        sentinels[project.write("pred.csv", SENTINEL_PREDICTIONS)] = SENTINEL_PREDICTIONS
        args = args + ["--output", "pred.csv"]
    result = run(*args, cwd=project.folder)
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "Internal error" not in output, output
    assert output.startswith("Error (") or "Usage:" in output, output
    for path, content in sentinels.items():
        assert path.read_bytes() == content, f"{path} was overwritten by a failed run"
    assert not (project.folder / CANARY).exists(), "a pickle was loaded"
    return output


@pytest.mark.parametrize("description, breaker, expected", ROWS)
def test_bad_input_is_a_clear_user_error(tmp_path, trained_weights, description, breaker, expected):
    project = Project(tmp_path / "proj", trained_weights)
    output = run_failing(project, breaker(project))
    for text in expected:
        assert text in output, f"{description}: {text!r} not in:\n{output}"


def test_every_spec_mistake_is_reported_in_one_run(tmp_path, trained_weights):
    project = Project(tmp_path / "proj", trained_weights)
    for old, new in [
        ("units: 1, from: x}", "unit: 1, from: x}"),  # misspelt key (and so a missing one)
        ("units: 2", "units: -4"),  # bad value
        ("from: concat", "from: conact"),  # misspelt reference
        ("loss: mse", "loss: msee"),  # misspelt loss
        ("metrics: [mae]", "metrics: [accuracyy]"),  # misspelt metric
        ("type: adam", "type: adma"),  # misspelt optimizer
        ("validation_split: 0.2", "validation_split: 2"),  # out of range
        ("shuffle: true", "shufle: true"),  # misspelt train key
    ]:
        project.edit(old, new)
    project.edit("seed: 0", "seed: 0\nepochz: 3")  # unknown top-level key
    output = run_failing(project, ["train", "spec.yaml"])
    expected = [
        ("spec.yaml:3:1:", "epochz"),
        ("spec.yaml:7:5:", "layers[0]: expected key 'units'"),
        ("spec.yaml:7:33:", "did you mean 'units'?"),
        ("spec.yaml:8:40:", "received -4"),
        ("spec.yaml:10:49:", "did you mean 'concat'?"),
        ("spec.yaml:12:7:", "did you mean 'mse'?"),
        ("spec.yaml:13:11:", "did you mean 'accuracy'?"),
        ("spec.yaml:14:19:", "did you mean 'adam'?"),
        ("spec.yaml:19:21:", "expected a number in [0, 1), received 2"),
        ("spec.yaml:20:35:", "did you mean 'shuffle'?"),
    ]
    lines = output.splitlines()
    assert lines[0] == "Error (spec error):"
    assert len(lines) == 1 + len(expected), output
    for (place, text), line in zip(expected, lines[1:]):  # one problem a line, in file order
        assert place in line and text in line, (place, text, line)


def test_every_weights_mismatch_is_reported_in_one_run(tmp_path, trained_weights):
    project = Project(tmp_path / "proj", trained_weights)
    arrays = project.weights()
    del arrays["dense1/bias"]
    arrays["dense2/kernel"] = numpy.zeros((5, 5), numpy.float32)
    arrays["extra"] = numpy.zeros(1)
    numpy.savez(project.folder / "bad.npz", **arrays)
    output = run_failing(project, ["predict", "spec.yaml", "--weights", "bad.npz", "--input", "data.csv"])
    for text in ("'dense1/bias' of shape (1,), received no such array", "'dense2/kernel': expected shape (2, 2), received (5, 5)",
                 "unexpected array 'extra'"):
        assert text in output


def test_a_good_project_passes_the_same_harness(tmp_path, trained_weights):
    """The rows fail because of their one change: the unchanged project trains and predicts."""
    project = Project(tmp_path / "proj", trained_weights)
    assert run("train", "spec.yaml", "--epochs", 1, cwd=project.folder).exit_code == 0
    shutil.copy(trained_weights, project.folder / "good.npz")
    result = run("predict", "spec.yaml", "--weights", "good.npz", "--input", "data.csv", cwd=project.folder)
    assert result.exit_code == 0, result.output

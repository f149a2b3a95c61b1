"""The new layers through the CLI: Keras' summary counts and shapes on random graphs, runtime errors
that the data causes (exit 2, the layer named), and resume bit-identical with batch normalization's
moving statistics and an epoch's AUC in the checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import json

import numpy as np
import pytest

from nnctl.cli.report import summary_data
from tests.helpers import run, write_project


# --- summary: Keras' counts ------------------------------------------------------------------------
def _random_summary_graph(seed):
    """(spec dict, expected (total, trainable, non-trainable), expected output shapes by layer),
    the counts by Keras' formulas: Dense in*units + units, BatchNormalization 4 * units (2 of them
    moving statistics), LayerNormalization 2 * units, Embedding input_dim * output_dim, merges 0."""
    rng = np.random.default_rng(seed)
    n_ids, width, features = int(rng.integers(3, 9)), int(rng.integers(2, 6)), int(rng.integers(2, 5))
    out_dim, hidden = int(rng.integers(2, 5)), int(rng.integers(2, 7))
    center, scale = bool(rng.integers(2)), bool(rng.integers(2))
    layers = [
        {"name": "emb", "type": "embedding", "from": "ids", "input_dim": n_ids, "output_dim": out_dim},
        {"name": "flat", "type": "flatten", "from": "emb"},
        {"name": "a", "type": "dense", "from": "x", "units": hidden},
        {"name": "bn", "type": "batch_normalization", "from": "a", "center": center, "scale": scale},
        {"name": "b", "type": "dense", "from": "flat", "units": hidden},
        {"name": "ln", "type": "layer_normalization", "from": "b", "center": center},
        {"name": "m", "type": str(rng.choice(["multiply", "subtract", "average", "maximum", "minimum"])), "from": ["bn", "ln"]},
        {"name": "r", "type": "reshape", "from": "m", "target_shape": [hidden, 1]},
        {"name": "f", "type": "flatten", "from": "r"},
        {"name": "dot", "type": "dot", "from": ["f", "bn"], "normalize": True},
        {"name": "out", "type": "dense", "from": "dot", "units": 1},
    ]
    spec = {"seed": seed, "inputs": {"ids": [width], "x": [features]}, "layers": layers, "loss": "mse"}
    affine = (center + scale) * hidden
    trainable = (n_ids * out_dim + features * hidden + hidden + affine + width * out_dim * hidden + hidden
                 + (center + 1) * hidden + 2)
    non_trainable = 2 * hidden
    shapes = {"emb": [None, width, out_dim], "flat": [None, width * out_dim], "bn": [None, hidden], "r": [None, hidden, 1],
              "f": [None, hidden], "dot": [None, 1], "out": [None, 1]}
    return spec, (trainable + non_trainable, trainable, non_trainable), shapes


@pytest.mark.parametrize("seed", range(6))
def test_summary_counts_as_keras(make_session, seed):
    spec, (total, trainable, non_trainable), shapes = _random_summary_graph(seed)
    data = summary_data(make_session(spec).model, "float64")
    assert (data["total_params"], data["trainable_params"], data["non_trainable_params"]) == (total, trainable, non_trainable)
    by_name = {layer["name"]: layer for layer in data["layers"]}
    for name, shape in shapes.items():
        assert by_name[name]["output_shape"] == shape, name
    assert by_name["bn"]["class"] == "BatchNormalization" and by_name["dot"]["class"] == "Dot"
    moving = [w["name"] for w in data["weights"] if not w["trainable"]]
    assert moving == ["bn/moving_mean", "bn/moving_variance"]


def test_summary_of_batch_normalization_prints_keras_counts(tmp_path):
    spec = write_project(tmp_path, """\
        name: bn
        inputs: {x: [2]}
        layers:
          - {name: hidden, type: dense, units: 8, from: x}
          - {name: bn, type: batch_normalization, from: hidden}
          - {name: out, type: dense, units: 1, from: bn}
        loss: mse
        """, data=None)
    data = json.loads(run("summary", spec, "--json").stdout)
    bn = next(layer for layer in data["layers"] if layer["name"] == "bn")
    assert bn["params"] == 32  # 4 x units, as Keras prints
    assert data["non_trainable_params"] == 16
    assert data["trainable_params"] == 2 * 8 + 8 + 16 + 8 + 1
    text = run("summary", spec).stdout
    assert "Non-trainable params: 16" in text and "BatchNormalization" in text


# --- runtime errors --------------------------------------------------------------------------------
BN_SPEC = """\
name: bn_run
seed: 3
inputs: {x: [2]}
layers:
  - {name: hidden, type: dense, units: 6, activation: relu, from: x}
  - {name: bn, type: batch_normalization, momentum: 0.9, from: hidden}
  - {name: out, type: dense, units: 1, from: bn}
loss: {type: binary_crossentropy, from_logits: true}
metrics: [auc, precision, recall]
optimizer: {type: adam, learning_rate: 0.01}
data: {path: data.csv, inputs: {x: [x1, x2]}, targets: [y], validation_split: 0.25}
train: {epochs: 4, batch_size: 5, shuffle: true}
"""
BN_CSV = "x1,x2,y\n" + "".join(f"{(i % 7) / 3 - 1},{(i * 3 % 5) / 2 - 1},{int((i % 7) / 3 - 1 + (i * 3 % 5) / 2 - 1 > -0.4)}\n" for i in range(32))


def test_batch_of_one_in_training_is_a_clear_error(tmp_path):
    spec = write_project(tmp_path, BN_SPEC.replace("batch_size: 5", "batch_size: 23"), BN_CSV)  # 24 rows: 23 + 1
    result = run("train", spec, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "batch_normalization layer 'bn': expected a training batch of at least 2 samples, received 1" in result.output


def test_embedding_refuses_an_id_that_is_not_an_integer(tmp_path):
    spec = write_project(tmp_path, """\
        name: ids
        inputs: {user: [1]}
        layers:
          - {name: e, type: embedding, input_dim: 4, output_dim: 2, from: user}
          - {name: f, type: flatten, from: e}
          - {name: out, type: dense, units: 1, from: f}
        loss: mse
        data: {path: data.csv, inputs: {user: [u]}, targets: [y]}
        train: {epochs: 1, batch_size: 2}
        """, "u,y\n0,1\n3,0\n2.5,1\n1,0\n")
    result = run("train", spec, cwd=tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "embedding layer 'e': expected ids that are integers in [0, 3], received 2.5" in result.output
    out_of_range = write_project(tmp_path / "range", spec.read_text(), "u,y\n0,1\n4,0\n")
    result = run("train", out_of_range, cwd=out_of_range.parent)
    assert result.exit_code == 2 and "received 4" in result.output


# --- resume: moving statistics and metric states in the checkpoint --------------------------------
def _stop_after(steps):
    """A stand-in for the CLI's Ctrl-C handler: asks to stop after `steps` training steps."""
    @contextlib.contextmanager
    def graceful_stop():
        calls = []

        def requested():
            calls.append(1)
            return len(calls) == steps

        yield requested
    return graceful_stop


def _history(folder):
    with open(folder / "runs/bn_run/history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second")} for row in csv.DictReader(handle)]


def test_resume_mid_epoch_is_bit_identical_with_batch_normalization(tmp_path, monkeypatch):
    import nnctl.cli.commands as commands

    straight = write_project(tmp_path / "straight", BN_SPEC, BN_CSV)
    assert run("train", straight, cwd=straight.parent).exit_code == 0
    stopped = write_project(tmp_path / "stopped", BN_SPEC, BN_CSV)
    with monkeypatch.context() as patch:
        patch.setattr(commands, "_graceful_stop", _stop_after(7))  # epoch 2, step 2 of 5
        result = run("train", stopped, cwd=stopped.parent)
        assert result.exit_code == 130, result.output
    with np.load(stopped.parent / "runs/bn_run/checkpoint.npz") as checkpoint:
        names = set(checkpoint.files)
    assert any("moving_variance" in name for name in names), names
    resumed = run("train", stopped, "--resume", cwd=stopped.parent)
    assert resumed.exit_code == 0, resumed.output
    weights = "runs/bn_run/weights.npz"
    assert (straight.parent / weights).read_bytes() == (stopped.parent / weights).read_bytes()
    assert _history(straight.parent) == _history(stopped.parent)
    history = _history(stopped.parent)
    assert {"auc", "val_auc", "precision", "recall"} <= set(history[0])
    with np.load(stopped.parent / weights) as trained:
        assert not np.allclose(trained["bn/moving_variance"], 1.0)


TOWERS = """\
name: towers
seed: 1
inputs: {user: [1], item: [1], x: [2]}
layers:
  - {name: user_vec, type: embedding, input_dim: 5, output_dim: 3, from: user}
  - {name: item_vec, type: embedding, input_dim: 7, output_dim: 3, from: item}
  - {name: u, type: flatten, from: user_vec}
  - {name: v, type: flatten, from: item_vec}
  - {name: cos, type: dot, axes: 1, normalize: true, from: [u, v]}
  - {name: both, type: concat, from: [cos, x]}
  - {name: out, type: dense, units: 1, from: both}
loss: {type: binary_crossentropy, from_logits: true}
"""


def test_gradcheck_and_time_draw_ids_for_embedding_inputs(tmp_path):
    """Random batches give embedding inputs ids in range, and finite differences leave them alone."""
    spec = tmp_path / "towers.yaml"
    spec.write_text(TOWERS)
    result = run("gradcheck", spec, "--json")
    assert result.exit_code == 0, result.output
    checked = {row["name"] for row in json.loads(result.stdout)["checks"]}
    assert {"x", "user_vec/embeddings", "item_vec/embeddings", "cos"} <= checked and not {"user", "item"} & checked
    assert run("time", spec, "--iterations", 2, "--json").exit_code == 0

"""The layer contract's widened parts: non-trainable weights and layer state, through every command.

A test layer (`counter`: the identity that counts, in a non-trainable weight, the samples it saw in
training) is registered for these tests only. Its count must be saved, loaded and checkpointed
with the other weights (so resume stays bit-identical), shown by summary as Keras shows
non-trainable params, and never stepped by the optimizer nor listed by gradcheck.
"""
from __future__ import annotations

import numpy
import pytest

from nnctl.model.layers import LAYERS
from nnctl.model.layers.base import Layer, WeightSpec
from nnctl.options import Choice
from tests.helpers import TWO_TOWER, TWO_TOWER_CSV, run, run_json, write_project

TRAIN_ROWS = 16  # 20 rows, validation_split 0.2
COUNTED = TWO_TOWER.replace(
    "  - {name: concat, type: concat, from: [dense1, dense2]}",
    "  - {name: counter, type: counter, from: dense2}\n  - {name: concat, type: concat, from: [dense1, counter]}")


class Counter(Layer):
    keras_name = "Counter"

    def infer_shape(self, input_shapes):
        self.weights = [WeightSpec("seen", (1,), Choice("zeros", {}), 1, 1, trainable=False)]
        return input_shapes[0]

    def call(self, inputs, weights, ctx):
        if ctx.training:
            weights["seen"].value[...] += inputs[0].shape[0]
        return inputs[0]

    def compile(self, xp, batch, dtype, weights, grads, needs_grad):
        seen = weights["seen"]

        def forward(ctx, x):
            if ctx.training:
                seen[...] += len(x)
            return x

        return forward, (lambda g: (g if needs_grad[0] else None,))


@pytest.fixture(autouse=True)
def counter_layer(monkeypatch):
    monkeypatch.setitem(LAYERS, "counter", Counter)


def _weights(path):
    with numpy.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def test_summary_counts_non_trainable_params_as_keras_does(tmp_path):
    spec = write_project(tmp_path, COUNTED)
    data = run_json("summary", spec)
    assert (data["total_params"], data["trainable_params"], data["non_trainable_params"]) == (14, 13, 1)
    assert {"name": "counter/seen", "shape": [1], "trainable": False} in data["weights"]
    text = run("summary", spec).stdout
    assert "Non-trainable params: 1 (4.00 B)" in text and "Non-trainable variables" in text


def test_training_updates_the_state_and_the_optimizer_never_steps_it(tmp_path):
    spec = write_project(tmp_path, COUNTED)
    run_json("train", spec, cwd=tmp_path)
    weights = _weights(tmp_path / "runs/two_tower/weights.npz")
    assert weights["counter/seen"].tolist() == [3 * TRAIN_ROWS]  # 3 epochs of training rows, no validation rows

    from nnctl.spec.load import load_spec
    from nnctl.train.session import open_session

    session = open_session(load_spec(spec), tmp_path / "runs/two_tower/weights.npz")
    assert session.params.flat.size == 13 and session.params.all_flat.size == 14
    assert set(session.params.grad_views) == set(weights) - {"counter/seen"}
    assert session.params.views["counter/seen"].tolist() == [3 * TRAIN_ROWS]  # loaded with the others


def test_gradcheck_checks_only_trainable_weights(tmp_path):
    spec = write_project(tmp_path, COUNTED)
    checks = run_json("gradcheck", spec)["checks"]
    weights = {c["name"] for c in checks if c["kind"] == "weight"}
    assert weights == {"dense1/kernel", "dense1/bias", "dense2/kernel", "dense2/bias", "dense3/kernel", "dense3/bias"}


def test_resume_is_bit_identical_with_the_state_in_the_checkpoint(tmp_path):
    straight = write_project(tmp_path / "straight", COUNTED)
    run_json("train", straight, "--epochs", 4, cwd=straight.parent)
    resumed = write_project(tmp_path / "resumed", COUNTED)
    run_json("train", resumed, "--epochs", 2, cwd=resumed.parent)
    run_json("train", resumed, "--epochs", 4, "--resume", cwd=resumed.parent)
    a, b = (_weights(p.parent / "runs/two_tower/weights.npz") for p in (straight, resumed))
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert a["counter/seen"].tolist() == [4 * TRAIN_ROWS]


def test_a_weights_file_without_the_state_is_refused_naming_it(tmp_path):
    spec = write_project(tmp_path, COUNTED)
    plain = write_project(tmp_path / "plain", TWO_TOWER, TWO_TOWER_CSV)
    run_json("train", plain, cwd=plain.parent)
    result = run("predict", spec, "--weights", plain.parent / "runs/two_tower/weights.npz", "--input", tmp_path / "data.csv")
    assert result.exit_code == 2 and "expected array 'counter/seen' of shape (1,), received no such array" in result.stderr

"""The compiled training step (nnctl.train.step.TrainStep) against the autograd path, in float64.

One table of specs (every activation as a dense activation and as a layer, every loss with both
reductions and from_logits where it applies, and graph shapes: a deep chain, towers, values used
twice, no bias, regularizers, dropout, two inputs), one harness: `Session.gradients` must give the
loss, the output and every gradient view that `model.forward` + `objective` + `backward` give, at a
full and a partial batch on one session, with its buffers reused call after call. The gradient
buffer is filled with NaN before each compiled step: the step must write every gradient (it
assigns, it does not accumulate, and nothing zeroes it in `fit`).

Also: float32 stays float32, a layer that reads the data computes no input gradient, dropout's
compiled form draws the same masks as autograd from the forward context, and the compiled
closures' products (ops.matmul_for) are matmul's, bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnctl.core import ops
from nnctl.core.autograd import Tensor, backward
from nnctl.diagnostics.gradcheck import random_batch
from nnctl.model.activations import ACTIVATIONS
from nnctl.model.graph import ForwardContext
from nnctl.model.layers import LAYERS
from nnctl.train.losses import LOSSES, CrossEntropy
from tests.ids import with_ids

TOL = dict(rtol=1e-12, atol=1e-14)
FULL, PARTIAL = 6, 3

# Options for the activations that have them; softmax also normalised over the batch axis.
ACTIVATION_VARIANTS = {
    "softmax": [{}, {"axis": -1}, {"axis": 0}],
    "leaky_relu": [{}, {"alpha": 0.1}],
    "elu": [{}, {"alpha": 0.7}],
}


def _variants():
    """(row suffix, activation config) for every activation and option variant."""
    for name in ACTIVATIONS:
        for options in ACTIVATION_VARIANTS.get(name, [{}]):
            suffix = name + "".join(f"-{k}{v}" for k, v in options.items())
            yield suffix, ({"type": name, **options} if options else name)


def dense(units, activation="linear", **extra):
    return {"type": "dense", "units": units, "activation": activation, **extra}


def activation_layer(config, source):
    return {**({"type": config} if isinstance(config, str) else config), "from": source}


def mlp(*layers, inputs=None, loss="mse"):
    return {"inputs": inputs or {"x": [3]}, "layers": list(layers), "loss": loss}


# --- the table -----------------------------------------------------------------------------------
ROWS = {}

for suffix, config in _variants():
    # Two hidden dense layers: the second's activation VJP feeds the first (which reads the data).
    ROWS[f"dense-{suffix}"] = mlp(dense(5, config), dense(4, config), dense(2))
    ROWS[f"layer-{suffix}"] = mlp(
        {"name": "d", **dense(4)}, activation_layer(config, "d"), dense(2))
    # On the data: no input gradient is asked of it.
    ROWS[f"layer-on-input-{suffix}"] = mlp(activation_layer(config, "x"), dense(2))

# (loss, options, output activation): non-logit cross-entropies read probabilities.
LOSS_CONFIGS = [
    ("mse", {}, "linear"),
    ("mse", {}, "relu"),  # the loss reads dense's in-place relu buffer
    ("mae", {}, "linear"),
    ("huber", {"delta": 0.5}, "linear"),
    ("half_squared_error", {}, "sigmoid"),
    ("binary_crossentropy", {"from_logits": False}, "sigmoid"),
    ("binary_crossentropy", {"from_logits": True}, "linear"),
    ("categorical_crossentropy", {"from_logits": False}, "softmax"),
    ("categorical_crossentropy", {"from_logits": True}, "linear"),
    ("sparse_categorical_crossentropy", {"from_logits": False}, "softmax"),
    ("sparse_categorical_crossentropy", {"from_logits": True}, "linear"),
]
for loss, options, activation in LOSS_CONFIGS:
    for reduction in ("mean", "sum"):
        name = "-".join([f"loss-{loss}", activation, *(f"logits{v}" for v in options.values()), reduction])
        ROWS[name] = mlp(dense(4, "tanh"), dense(3, activation), loss={"type": loss, "reduction": reduction, **options})

ROWS.update({
    "deep-mlp": mlp(
        dense(7, "relu"), dense(6, "tanh"), dense(6, "gelu"), dense(5, "elu"),
        dense(5, "leaky_relu"), dense(4, "softplus"), dense(4, "sigmoid"), dense(2)),
    "two-tower": mlp(
        {"name": "dense1", "from": "x", **dense(1)},
        {"name": "dense2", "from": "x", **dense(2)},
        {"name": "concat", "type": "concat", "from": ["dense1", "dense2"]},
        {"name": "dense3", "from": "concat", **dense(1)},
        inputs={"x": [2]}),
    "shared-dense-into-add": mlp(
        {"name": "d", "from": "x", **dense(4, "tanh")},
        {"name": "a", "from": "d", **dense(4, "sigmoid")},
        {"name": "b", "from": "d", **dense(4, "relu")},
        {"name": "s", "type": "add", "from": ["a", "b"]},
        dense(2)),
    "shared-dense-into-concat": mlp(
        {"name": "d", "from": "x", **dense(4, "tanh")},
        {"name": "a", "from": "d", **dense(3, "sigmoid")},
        {"name": "b", "from": "d", **dense(2, "relu")},
        {"name": "c", "type": "concat", "from": ["a", "b", "d"]},
        dense(2)),
    "shared-relu-buffer": mlp(  # dense's in-place relu output read by a relu layer and a dense
        {"name": "d", "from": "x", **dense(4, "relu")},
        {"name": "r", "type": "relu", "from": "d"},
        {"name": "e", "from": "d", **dense(4, "tanh")},
        {"name": "s", "type": "add", "from": ["r", "e"]},
        dense(2)),
    "add-self": mlp(
        {"name": "d", **dense(3, "tanh")},
        {"name": "s", "type": "add", "from": ["d", "d"]},
        dense(2)),
    "add-self-thrice": mlp(
        {"name": "d", **dense(3, "elu")},
        {"name": "e", "from": "x", **dense(3)},
        {"name": "s", "type": "add", "from": ["d", "e", "d", "d"]},
        dense(2)),
    "add-with-input": mlp(
        {"name": "d", **dense(3, "tanh")},
        {"name": "s", "type": "add", "from": ["x", "d"]},
        dense(2)),
    "add-output": mlp(  # the loss gradient itself reaches both denses
        {"name": "a", "from": "x", **dense(2)},
        {"name": "b", "from": "x", **dense(2, "tanh")},
        {"name": "s", "type": "add", "from": ["a", "b"]}),
    "concat-self": mlp(
        {"name": "d", **dense(3, "elu")},
        {"name": "c", "type": "concat", "from": ["d", "d"]},
        dense(2)),
    "concat-with-input": mlp(
        {"name": "d", **dense(3, "tanh")},
        {"name": "c", "type": "concat", "from": ["x", "d", "x"]},
        dense(2)),
    "concat-output": mlp(  # the concat's gradient pieces are views of the loss gradient
        {"name": "a", "from": "x", **dense(2, "relu")},
        {"name": "b", "from": "x", **dense(1)},
        {"name": "c", "type": "concat", "from": ["a", "b", "a"]}),
    "no-bias": mlp(dense(4, "tanh", use_bias=False), dense(3, "relu", use_bias=False), dense(2, use_bias=False)),
    "regularized": mlp(
        dense(4, "tanh", kernel_regularizer={"l1": 0.01, "l2": 0.02}),
        dense(4, "relu", kernel_regularizer={"l1": 0.05}),
        dense(3, use_bias=False, kernel_regularizer={"l2": 0.1}),
        dense(2)),
    "regularized-sparse-logits": mlp(
        dense(4, "tanh", kernel_regularizer={"l1": 0.03, "l2": 0.01}),
        dense(3, kernel_regularizer={"l2": 0.2}),
        loss={"type": "sparse_categorical_crossentropy", "from_logits": True}),
    "dropout": mlp(
        dense(8, "tanh"), {"type": "dropout", "rate": 0.5},
        dense(5, "relu"), {"type": "dropout", "rate": 0.3}, dense(2)),
    "dropout-on-input": mlp({"type": "dropout", "rate": 0.4}, dense(4, "tanh"), dense(2)),
    "two-inputs": {
        "inputs": {"a": [3], "b": [2]},
        "layers": [
            {"name": "da", "from": "a", **dense(4, "tanh")},
            {"name": "db", "from": "b", **dense(4, "relu")},
            {"name": "c", "type": "concat", "from": ["da", "b", "db", "a"]},
            {"name": "out", "from": "c", **dense(2)},
        ],
        "loss": "mse",
    },
    # Per-sample arrays of rank 2 (no dense can read them: these have no weights).
    "rank3-activations-concat": {
        "inputs": {"x": [2, 3]},
        "layers": [
            {"name": "r", "type": "relu", "from": "x"},
            {"name": "c", "type": "concat", "from": ["r", "x"], "axis": 0},
            {"name": "s", "type": "softmax", "from": "c", "axis": 1},
        ],
        "loss": "mae",
    },
})

ROWS["rank3-mse"] = {"inputs": {"x": [2, 3]}, "layers": [{"type": "tanh", "from": "x"}], "loss": "mse"}


def _merge_row(kind, n=2, **options):
    """n dense towers of one width merged by `kind`, then a dense."""
    towers = [{"name": f"t{i}", "from": "x", **dense(4, ["tanh", "relu", "elu"][i % 3])} for i in range(n)]
    return mlp(*towers, {"name": "m", "type": kind, "from": [f"t{i}" for i in range(n)], **options}, dense(2))


ROWS.update({
    "multiply": _merge_row("multiply"),
    "multiply-three": _merge_row("multiply", 3),
    "multiply-self": mlp({"name": "d", **dense(3, "tanh")}, {"name": "m", "type": "multiply", "from": ["d", "d", "x"]}, dense(2)),
    "subtract": _merge_row("subtract"),
    "subtract-self-with-input": mlp({"name": "d", **dense(3, "tanh")}, {"name": "m", "type": "subtract", "from": ["x", "d"]}, dense(2)),
    "average": _merge_row("average", 3),
    "average-with-input": mlp({"name": "d", **dense(3, "tanh")}, {"name": "m", "type": "average", "from": ["d", "x"]}, dense(2)),
    "maximum": _merge_row("maximum", 3),
    "minimum": _merge_row("minimum"),
    "minimum-output": mlp({"name": "a", "from": "x", **dense(2)}, {"name": "b", "from": "x", **dense(2, "tanh")},
                          {"name": "m", "type": "minimum", "from": ["a", "b"]}),
    "dot": _merge_row("dot"),
    "dot-cosine": _merge_row("dot", normalize=True),
    "dot-output-cosine": mlp({"name": "a", "from": "x", **dense(3)}, {"name": "b", "from": "x", **dense(3, "tanh")},
                             {"name": "m", "type": "dot", "from": ["a", "b"], "axes": 1, "normalize": True},
                             loss="binary_crossentropy"),
    "dot-rank2-axes": {
        "inputs": {"x": [2, 3], "y": [3, 4]},
        "layers": [
            {"name": "a", "type": "tanh", "from": "x"},
            {"name": "b", "type": "sigmoid", "from": "y"},
            {"name": "m", "type": "dot", "from": ["a", "b"], "axes": [2, 1], "normalize": True},
            {"name": "f", "type": "flatten", "from": "m"},
            dense(2),
        ],
        "loss": "mse",
    },
    "batch-norm": mlp(dense(5, "tanh"), {"type": "batch_normalization"}, dense(2)),
    "batch-norm-options": mlp(
        dense(5, "relu"), {"type": "batch_normalization", "momentum": 0.9, "epsilon": 1e-5,
                           "gamma_initializer": {"type": "random_normal", "mean": 1.0, "stddev": 0.3},
                           "beta_initializer": {"type": "random_normal", "stddev": 0.3}},
        dense(4, "tanh"), {"type": "batch_normalization", "center": False}, dense(2)),
    "batch-norm-no-affine": mlp(dense(4, "tanh"), {"type": "batch_normalization", "center": False, "scale": False}, dense(2)),
    "batch-norm-on-input": mlp({"type": "batch_normalization"}, dense(4, "tanh"), dense(2)),
    "batch-norm-output": mlp(dense(4, "tanh"), {"type": "batch_normalization", "beta_initializer": "ones"}),
    "batch-norm-rank3": {"inputs": {"x": [2, 3]}, "layers": [
        {"type": "tanh", "from": "x"}, {"type": "batch_normalization"}, {"type": "flatten"}, dense(2)], "loss": "mse"},
    "layer-norm": mlp(dense(5, "tanh"), {"type": "layer_normalization"}, dense(2)),
    "layer-norm-options": mlp(dense(5, "relu"), {"type": "layer_normalization", "epsilon": 1e-5, "center": False,
                                                 "gamma_initializer": {"type": "random_normal", "mean": 1.0, "stddev": 0.3}}, dense(2)),
    "layer-norm-on-input": mlp({"type": "layer_normalization", "scale": False}, dense(2)),
    "layer-norm-rank3-axis1": {"inputs": {"x": [2, 3]}, "layers": [
        {"type": "elu", "from": "x"},
        {"type": "layer_normalization", "axis": 1, "beta_initializer": {"type": "random_normal", "stddev": 0.3}},
        {"type": "flatten"}, dense(2)], "loss": "mse"},
    "reshape-flatten": {"inputs": {"x": [2, 3]}, "layers": [
        {"type": "flatten", "from": "x"}, dense(4, "tanh"), {"name": "r", "type": "reshape", "target_shape": [2, 2]},
        {"name": "a", "type": "relu", "from": "r"}, {"type": "reshape", "target_shape": [-1]}, dense(2)], "loss": "mse"},
    "reshape-output": mlp(dense(6, "tanh"), {"type": "reshape", "target_shape": [3, 2]}),
    "embedding": {
        "inputs": {"ids": [2], "x": [3]},
        "layers": [
            {"name": "e", "type": "embedding", "from": "ids", "input_dim": 4, "output_dim": 3},
            {"name": "f", "type": "flatten", "from": "e"},
            {"name": "d", "from": "x", **dense(3, "tanh")},
            {"name": "c", "type": "concat", "from": ["f", "d"]},
            {"name": "out", "from": "c", **dense(2)},
        ],
        "loss": "mse",
    },
    "embedding-two-tower-cosine": {
        "inputs": {"user": [1], "item": [1]},
        "layers": [
            {"name": "ue", "type": "embedding", "from": "user", "input_dim": 5, "output_dim": 4,
             "embeddings_initializer": {"type": "random_normal", "stddev": 0.5}},
            {"name": "ie", "type": "embedding", "from": "item", "input_dim": 3, "output_dim": 4},
            {"name": "uf", "type": "flatten", "from": "ue"},
            {"name": "if", "type": "flatten", "from": "ie"},
            {"name": "ut", "from": "uf", **dense(4, "tanh")},
            {"name": "score", "type": "dot", "from": ["ut", "if"], "normalize": True},
        ],
        "loss": {"type": "binary_crossentropy", "from_logits": True},
    },
})

# Several outputs: the loss is the weighted sum (loss_weights), gradients meet where the outputs'
# paths do, and an output may feed another layer (its own loss gradient plus what flows back).
ROWS.update({
    "two-outputs-regression-and-classes": {
        "inputs": {"x": [3]},
        "layers": [{"name": "shared", **dense(4, "tanh")},
                   {"name": "value", "from": "shared", **dense(2)},
                   {"name": "label", "from": "shared", **dense(3)}],
        "outputs": ["value", "label"],
        "loss": {"value": "mse", "label": {"type": "sparse_categorical_crossentropy", "from_logits": True}},
        "loss_weights": {"value": 0.5, "label": 2.0},
    },
    "two-outputs-one-feeds-the-other": {
        "inputs": {"x": [3]},
        "layers": [{"name": "first", **dense(3, "sigmoid")},
                   {"name": "second", "from": "first", **dense(2, "tanh")}],
        "outputs": ["first", "second"],
        "loss": "binary_crossentropy",
        "loss_weights": [1.5, 0.25],
    },
    "three-outputs-default-weights": {
        "inputs": {"a": [2], "b": [3]},
        "layers": [{"name": "ha", "from": "a", **dense(3, "relu")},
                   {"name": "joined", "type": "concat", "from": ["ha", "b"]},
                   {"name": "out1", "from": "joined", **dense(1)},
                   {"name": "out2", "from": "joined", **dense(2, "softmax")},
                   {"name": "out3", "from": "ha", **dense(2)}],
        "outputs": ["out1", "out2", "out3"],
        "loss": {"out1": "huber", "out2": "categorical_crossentropy", "out3": {"type": "mae", "reduction": "sum"}},
    },
})


def test_table_covers_every_layer_activation_and_loss():
    layers = [layer for spec in ROWS.values() for layer in spec["layers"]]
    assert set(LAYERS) <= {layer["type"] for layer in layers}
    dense_activations = {a if isinstance(a, str) else a["type"] for a in (l["activation"] for l in layers if l["type"] == "dense")}
    assert set(ACTIVATIONS) <= dense_activations
    # Each activation as a layer, both on another layer's output and on the data.
    standalone = {(l["type"], l["from"] in spec["inputs"]) for spec in ROWS.values() for l in spec["layers"] if l["type"] in ACTIVATIONS}
    assert {(name, on_data) for name in ACTIVATIONS for on_data in (False, True)} <= standalone
    losses = {(s["loss"]["type"], s["loss"]["reduction"], s["loss"].get("from_logits"))
              for s in ROWS.values() if isinstance(s["loss"], dict) and "reduction" in s["loss"]}
    assert sum(len(s.get("outputs", [])) > 1 and isinstance(s["outputs"], list) for s in ROWS.values()) >= 3
    for name, cls in LOSSES.items():
        logits = [False, True] if issubclass(cls, CrossEntropy) else [None]
        for reduction in ("mean", "sum"):
            for from_logits in logits:
                assert (name, reduction, from_logits) in losses, (name, reduction, from_logits)


# --- the harness ---------------------------------------------------------------------------------
def _batch(session, size, seed):
    """Seeded inputs and targets (by output) of each loss's kind, on the session's backend."""
    rng = np.random.default_rng(seed)
    inputs, targets = random_batch(session, size, rng)
    inputs = with_ids(session, inputs, rng)
    backend = session.backend
    return ({name: backend.asarray(x, dtype=session.dtype) for name, x in inputs.items()},
            {name: backend.asarray(t if t.dtype.kind == "i" else t.astype(session.dtype)) for name, t in targets.items()})


def test_random_batch_targets_take_the_output_shape(make_session):
    session = make_session({"seed": 1, **ROWS["rank3-mse"]})
    inputs, targets = random_batch(session, 4)
    assert inputs["x"].shape == (4, 2, 3) and targets["tanh"].shape == (4, 2, 3)
    session = make_session({"seed": 1, **ROWS["two-outputs-regression-and-classes"]})
    targets = random_batch(session, 5)[1]
    assert targets["value"].shape == (5, 2) and targets["label"].shape == (5,) and targets["label"].dtype.kind == "i"


def _joined(session, outputs):
    """The outputs (model order) side by side, one host row per sample: one array to compare."""
    return np.concatenate([_host(session, o).reshape(len(o), -1) for o in outputs], axis=1)


def _ctx(session, seed, training=True):
    return ForwardContext(session.backend, training=training, dropout_rng=np.random.default_rng(seed))


def _host(session, array):
    return np.array(session.backend.to_host(array), copy=True)


def _reference(session, inputs, targets, seed, training=True):
    """(loss, output, penalty or None, grads): autograd's forward, objective and backward."""
    params = session.params
    params.zero_grad()
    outputs = session.model.forward(params.tensors, inputs, _ctx(session, seed, training))
    loss = session.objective(outputs, targets, params.tensors)
    backward(loss)
    penalty = session.penalty(params.frozen()) if session.regularized else None
    grads = {key: _host(session, view) for key, view in params.grad_views.items()}
    return (_host(session, loss.value), _joined(session, [o.value for o in outputs]),
            None if penalty is None else _host(session, penalty.value), grads)


def _compiled(session, inputs, targets, seed, training=True):
    """The same four from `Session.gradients`, into a gradient buffer filled with NaN first."""
    session.params.grad_flat.fill(np.nan)
    size = len(next(iter(inputs.values())))
    loss, outputs, penalty, own = session.gradients(inputs, targets, size, _ctx(session, seed, training))
    assert (own is None) == (len(outputs) == 1)
    grads = {key: _host(session, view) for key, view in session.params.grad_views.items()}
    return (_host(session, loss), _joined(session, outputs),
            None if penalty is None else _host(session, penalty), grads)


def _assert_same(compiled, reference, tol=TOL):
    loss, output, penalty, grads = compiled
    ref_loss, ref_output, ref_penalty, ref_grads = reference
    assert loss.shape == ()
    assert np.isfinite(ref_loss)
    np.testing.assert_allclose(loss, ref_loss, **tol, err_msg="loss")
    assert output.shape == ref_output.shape and output.dtype == ref_output.dtype
    np.testing.assert_allclose(output, ref_output, **tol, err_msg="output")
    assert (penalty is None) == (ref_penalty is None)
    if penalty is not None:
        assert ref_penalty > 0
        np.testing.assert_allclose(penalty, ref_penalty, **tol, err_msg="penalty")
    assert grads.keys() == ref_grads.keys()
    for key, ref in ref_grads.items():
        assert np.isfinite(ref).all() and np.any(ref != 0), f"{key}: a degenerate reference gradient"
        np.testing.assert_allclose(grads[key], ref, **tol, err_msg=key)


@pytest.mark.parametrize("name", list(ROWS))
def test_compiled_step_matches_autograd(make_session, backend, name):
    session = make_session({"seed": 11, **ROWS[name]}, backend=backend)
    first_data = _batch(session, FULL, 1)
    kept = {k: _host(session, v) for k, v in first_data[0].items()}

    first = _compiled(session, *first_data, seed=101)
    twice = _compiled(session, *first_data, seed=101)  # the same step again, right away
    _assert_same(first, _reference(session, *first_data, seed=101))

    partial_data = _batch(session, PARTIAL, 2)
    _assert_same(_compiled(session, *partial_data, seed=102), _reference(session, *partial_data, seed=102))

    other_data = _batch(session, FULL, 3)
    other = _compiled(session, *other_data, seed=103)
    _assert_same(other, _reference(session, *other_data, seed=103))
    assert not np.allclose(other[1], first[1])  # a new batch really is computed afresh

    again = _compiled(session, *first_data, seed=101)  # after the partial step and another batch
    assert sorted(session._steps) == [PARTIAL, FULL]  # one TrainStep per batch size, reused
    for result in (twice, again):
        np.testing.assert_array_equal(result[0], first[0])
        np.testing.assert_array_equal(result[1], first[1])
        for key in first[3]:
            np.testing.assert_array_equal(result[3][key], first[3][key], err_msg=key)
    for key, value in kept.items():  # the step does not write into the data
        np.testing.assert_array_equal(_host(session, first_data[0][key]), value)


# --- float32 ---------------------------------------------------------------------------------------
FLOAT32_SPECS = {
    "mse-relu-regularized": mlp(dense(5, "relu", kernel_regularizer={"l1": 0.01, "l2": 0.02}), dense(3)),
    "sparse-logits-dropout": mlp(
        dense(5, "tanh"), {"type": "dropout", "rate": 0.3}, dense(3),
        loss={"type": "sparse_categorical_crossentropy", "from_logits": True}),
    "bce-sigmoid-concat": mlp(
        {"name": "a", "from": "x", **dense(2, "elu")}, {"name": "b", "from": "x", **dense(3, "gelu")},
        {"name": "c", "type": "concat", "from": ["a", "b"]}, {"type": "softmax", "from": "c"},
        dense(3, "sigmoid"), loss="binary_crossentropy"),
    "norms-merges-cosine": mlp(
        {"name": "a", "from": "x", **dense(4, "tanh")}, {"name": "b", "from": "x", **dense(4)},
        {"name": "bn", "type": "batch_normalization", "from": "a"}, {"name": "ln", "type": "layer_normalization", "from": "b"},
        {"name": "m", "type": "maximum", "from": ["bn", "ln"]}, {"name": "p", "type": "multiply", "from": ["bn", "ln"]},
        {"name": "c", "type": "dot", "from": ["m", "p"], "normalize": True}, loss="mse"),
}


@pytest.mark.parametrize("name", list(FLOAT32_SPECS))
def test_float32_stays_float32(make_session, backend, name):
    session = make_session({"seed": 4, **FLOAT32_SPECS[name]}, dtype="float32", backend=backend)
    inputs, targets = _batch(session, FULL, 5)
    assert all(x.dtype == np.float32 for x in inputs.values())
    session.params.grad_flat.fill(np.nan)
    loss, outputs, penalty, _ = session.gradients(inputs, targets, FULL, _ctx(session, 9))
    output = outputs[0]
    assert output.dtype == np.float32
    assert np.asarray(_host(session, loss)).dtype == np.float32
    assert penalty is None or _host(session, penalty).dtype == np.float32
    assert session.params.grad_flat.dtype == np.float32
    compiled = (_host(session, loss), _joined(session, outputs), None if penalty is None else _host(session, penalty),
                {key: _host(session, view) for key, view in session.params.grad_views.items()})
    assert all(g.dtype == np.float32 for g in compiled[3].values())
    _assert_same(compiled, _reference(session, inputs, targets, 9), tol=dict(rtol=2e-5, atol=1e-6))


# --- compiled layers that read the data ------------------------------------------------------------
def _compiled_layer_session(make_session, backend):
    spec = mlp({"name": "d", "from": "x", **dense(4, "tanh")},
               {"name": "r", "type": "elu", "from": "x"},
               {"name": "c", "type": "concat", "from": ["x", "d"]},
               {"name": "s", "type": "add", "from": ["r", "x"]},
               {"name": "j", "type": "concat", "from": ["c", "s"]},
               dense(2))
    return make_session({"seed": 2, **spec}, backend=backend)


def _autograd_input_grads(session, layer, arrays, g, needs_grad):
    tensors = [Tensor(a, requires_grad=n) for a, n in zip(arrays, needs_grad)]
    weights = {w.name: Tensor(session.params.views[f"{layer.name}/{w.name}"], requires_grad=True) for w in layer.weights}
    out = layer.call(tensors, weights, ForwardContext(session.backend))
    backward(out, g)
    return out.value, [t.grad for t in tensors], {name: t.grad for name, t in weights.items()}


@pytest.mark.parametrize("layer_name,needs_grad", [
    ("d", [False]), ("d", [True]),
    ("r", [False]), ("r", [True]),
    ("c", [False, True]), ("c", [True, True]),
    ("s", [True, False]), ("s", [False, False]),
])
def test_compiled_layer_input_gradients(make_session, backend, layer_name, needs_grad):
    """Where `needs_grad` is false (an input of the model) the compiled backward returns None for it; where
    true, autograd's input gradient. The weight gradients are written either way."""
    session = _compiled_layer_session(make_session, backend)
    xp = backend.xp
    node = next(n for n in session.model.nodes if n.name == layer_name)
    layer = node.layer
    weights = {w.name: session.params.views[f"{layer.name}/{w.name}"] for w in layer.weights}
    grads = {w.name: xp.full(weights[w.name].shape, np.nan) for w in layer.weights}
    forward, node_backward = layer.compile(xp, FULL, "float64", weights, grads, needs_grad)
    rng = np.random.default_rng(8)
    arrays = [backend.asarray(rng.standard_normal((FULL, *session.model.shapes[ref]))) for ref in node.inputs]
    g = backend.asarray(rng.standard_normal((FULL, *layer.output_shape)))
    g_kept = _host(session, g)

    out = forward(_ctx(session, 0), *arrays)
    input_grads = node_backward(g)
    ref_out, ref_input_grads, ref_weight_grads = _autograd_input_grads(session, layer, arrays, g, needs_grad)

    np.testing.assert_allclose(_host(session, out), _host(session, ref_out), **TOL)
    assert isinstance(input_grads, tuple) and len(input_grads) == len(needs_grad)
    for got, ref, needed in zip(input_grads, ref_input_grads, needs_grad):
        if needed:
            np.testing.assert_allclose(_host(session, got), _host(session, ref), **TOL)
        else:
            assert got is None
    for name, ref in ref_weight_grads.items():
        np.testing.assert_allclose(_host(session, grads[name]), _host(session, ref), **TOL, err_msg=name)
    np.testing.assert_array_equal(_host(session, g), g_kept)  # the upstream gradient is left intact


def test_dense_reading_the_data_returns_no_input_gradient(make_session, backend):
    session = _compiled_layer_session(make_session, backend)
    layer = session.model.nodes[0].layer
    assert layer.name == "d"
    weights = {"kernel": session.params.views["d/kernel"], "bias": session.params.views["d/bias"]}
    grads = {"kernel": backend.xp.zeros((3, 4)), "bias": backend.xp.zeros(4)}
    forward, node_backward = layer.compile(backend.xp, FULL, "float64", weights, grads, needs_grad=[False])
    forward(_ctx(session, 0), backend.asarray(np.ones((FULL, 3))))
    assert node_backward(backend.asarray(np.ones((FULL, 4)))) == (None,)
    assert np.any(_host(session, grads["kernel"]) != 0)


# --- the products: matmul's bits at dot's dispatch cost --------------------------------------------
# (batch, fan_in, units): the general product, and each shape where BLAS takes another routine (a
# dot product, a GEMV, a one-term sum), which NumPy's dot and matmul must pick alike.
_PRODUCT_SHAPES = [(7, 5, 3), (1, 5, 3), (7, 1, 3), (7, 5, 1), (1, 1, 1), (1, 5, 1), (128, 784, 256)]


@pytest.mark.parametrize("batch,fan_in,units", _PRODUCT_SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "column-slices"])
def test_dense_products_round_as_matmul(make_session, monkeypatch, batch, fan_in, units, dtype, strided):
    """Dense's compiled closures multiply through ops.matmul_for: numpy.dot where it makes matmul's
    BLAS call, which is cheaper to dispatch, into an output of at most DOT_ZEROING_LIMIT bytes
    (dot zeroes its output first). Every product must be bit for bit matmul's, the autograd form's
    product: the forward, the kernel's and the bias's gradient, the input's gradient. `strided`:
    the input and the upstream gradient are column slices of wider arrays (a concat's gradient
    is), where dot would round differently and matmul must be called. The largest shape's kernel
    and input gradients outgrow the limit in both dtypes; its float64 forward is at it."""
    session = make_session({"seed": 4, **mlp({"name": "d", "from": "x", **dense(units)}, inputs={"x": [fan_in]})}, dtype=dtype)
    layer = session.model.nodes[0].layer
    kernel, bias = (session.params.views[f"d/{name}"] for name in ("kernel", "bias"))
    grads = {"kernel": np.full(kernel.shape, np.nan, dtype), "bias": np.full(bias.shape, np.nan, dtype)}
    calls = []
    for name in ("dot", "matmul"):
        spy = lambda *args, f=getattr(np, name), name=name, **kwargs: calls.append((name, kwargs["out"].nbytes)) or f(*args, **kwargs)
        monkeypatch.setattr(np, name, spy)
    forward, node_backward = layer.compile(np, batch, dtype, {"kernel": kernel, "bias": bias}, grads, [True])
    rng = np.random.default_rng(batch * 1000 + fan_in * 10 + units)
    x, g = (rng.standard_normal((batch, 2 * n + 1) if strided else (batch, n)).astype(dtype) for n in (fan_in, units))
    if strided:
        x, g = x[:, 1:fan_in + 1], g[:, 1:units + 1]
    got = {"output": forward(_ctx(session, 0), x).copy()}
    (got["input"],) = node_backward(g)
    got.update(kernel=grads["kernel"], bias=grads["bias"])
    monkeypatch.undo()
    if not strided:  # each product took the cheaper call
        cheaper = lambda nbytes: "dot" if nbytes <= ops.DOT_ZEROING_LIMIT else "matmul"
        assert len(calls) == 4 and calls == [(cheaper(nbytes), nbytes) for _, nbytes in calls]
    expected = {
        "output": np.matmul(x, kernel) + bias,
        "kernel": np.matmul(x.T, g),
        "bias": np.matmul(np.ones(batch, dtype), g),
        "input": np.matmul(g, kernel.T),
    }
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name


def test_matmul_for_takes_matmul_where_dot_refuses_the_output():
    """The compiled closures' product gives matmul's result, bit for bit, where numpy.dot refuses
    `out`: a column slice of a wider buffer, and an integer input into a float32 buffer (dot's
    result would be float64)."""
    product, rng = ops.matmul_for(np), np.random.default_rng(5)
    kernel = rng.standard_normal((30, 4)).astype(np.float32)
    for x, out in [(rng.standard_normal((6, 30)).astype(np.float32), np.empty((6, 9), np.float32)[:, 2:6]),
                   (rng.integers(-9, 9, (6, 30)), np.empty((6, 4), np.float32))]:
        expected = np.matmul(x, kernel, out=np.empty(out.shape, np.float32))
        assert product(x, kernel, out=out) is out
        assert out.tobytes() == expected.tobytes()


# --- the autograd fallback -------------------------------------------------------------------------
def test_dropout_compiles_and_draws_the_masks_autograd_draws(make_session, backend):
    """Dropout reads the forward context: its mask in training, the identity in inference."""
    spec = mlp(dense(6, "tanh"), {"name": "drop", "type": "dropout", "rate": 0.5}, dense(2))
    session = make_session({"seed": 3, **spec}, backend=backend)
    dropout = next(n.layer for n in session.model.nodes if n.name == "drop")
    assert dropout.compile(backend.xp, FULL, "float64", {}, {}, [True]) is not None
    inputs, targets = _batch(session, FULL, 6)

    compiled = _compiled(session, inputs, targets, seed=21)
    _assert_same(compiled, _reference(session, inputs, targets, seed=21))
    # The compiled step draws its mask from the context's generator: another seed, another mask.
    assert not np.allclose(_reference(session, inputs, targets, seed=22)[1], compiled[1])
    # In inference mode dropout is the identity, compiled or not.
    inference = _compiled(session, inputs, targets, seed=21, training=False)
    _assert_same(inference, _reference(session, inputs, targets, seed=21, training=False))
    assert not np.allclose(inference[1], compiled[1])


# --- inference: evaluate and predict run the compiled forward -------------------------------------
@pytest.mark.parametrize("name", list(ROWS))
def test_compiled_forward_matches_autograd_inference(make_session, backend, name):
    session = make_session({"seed": 11, **ROWS[name]}, backend=backend)
    inputs, _ = _batch(session, FULL, 4)
    expected = session.model.forward(session.params.frozen(), inputs, _ctx(session, 7, training=False))
    got = session._step(FULL).forward(inputs, _ctx(session, 7, training=False))
    np.testing.assert_allclose(_joined(session, got), _joined(session, [e.value for e in expected]), **TOL)


def test_predict_and_evaluate_over_several_batches(make_session, backend):
    """Chunks from the step's reused buffers are copied (each batch keeps its own rows), and
    evaluate's sample-weighted loss equals autograd's loss over the whole set."""
    from pathlib import Path

    from nnctl.data.dataset import Dataset

    session = make_session({"seed": 3, **ROWS["two-tower"]}, backend=backend)
    rng = np.random.default_rng(8)
    n = 2 * FULL + PARTIAL
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 1))
    dataset = Dataset(Path("memory"), {"x": x}, {session.model.outputs[0]: y}, np.arange(n))
    (expected,) = session.model.forward(session.params.frozen(), {"x": backend.asarray(x)}, _ctx(session, 0, training=False))
    ((values, classes),) = session.predict(dataset, batch_size=FULL)
    assert classes is None and values.shape == (n, 1)
    np.testing.assert_allclose(values, _host(session, expected.value), **TOL)
    logs = session.evaluate(dataset, batch_size=FULL)
    np.testing.assert_allclose(logs["loss"], float(np.mean((_host(session, expected.value) - y) ** 2)), **TOL)


# --- layer state: batch normalization's moving statistics ----------------------------------------
BN_SPEC = mlp(dense(4, "tanh"), {"name": "bn", "type": "batch_normalization", "momentum": 0.8}, dense(4, "relu"),
              {"name": "bn2", "type": "batch_normalization", "center": False}, dense(2))


def test_batch_norm_moving_statistics_agree_compiled_and_autograd(make_session, backend):
    """Both paths update the moving statistics in training, with Keras' biased batch variance, and
    neither touches them in inference."""
    compiled = make_session({"seed": 5, **BN_SPEC}, backend=backend)
    reference = make_session({"seed": 5, **BN_SPEC}, backend=backend)
    start = compiled.params.to_host()
    for seed in (1, 2):
        data = _batch(compiled, FULL, seed)
        _compiled(compiled, *data, seed=seed)
        _reference(reference, *data, seed=seed)
    got, expected = compiled.params.to_host(), reference.params.to_host()
    for key in ("bn/moving_mean", "bn/moving_variance", "bn2/moving_mean", "bn2/moving_variance"):
        assert not np.allclose(got[key], start[key]), key
        np.testing.assert_allclose(got[key], expected[key], **TOL, err_msg=key)
    # The first update by hand: the batch's mean and biased variance of bn's input, weighted by 1 - momentum.
    first = make_session({"seed": 5, **BN_SPEC}, backend=backend)
    inputs, targets = _batch(first, FULL, 1)
    weights = first.params.to_host()
    h = np.tanh(_host(first, inputs["x"]) @ weights["dense/kernel"] + weights["dense/bias"])
    _compiled(first, inputs, targets, seed=1)
    after = first.params.to_host()
    np.testing.assert_allclose(after["bn/moving_mean"], 0.2 * h.mean(0), **TOL)
    np.testing.assert_allclose(after["bn/moving_variance"], 0.8 + 0.2 * h.var(0), **TOL)
    before = first.params.to_host()
    _compiled(first, *_batch(first, FULL, 3), seed=3, training=False)
    for key, value in first.params.to_host().items():
        if "moving" in key:
            np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_refuses_a_training_batch_of_one(make_session, training):
    from nnctl.errors import DataError

    session = make_session({"seed": 5, **BN_SPEC})
    inputs, targets = _batch(session, 1, 1)
    if not training:  # inference uses the moving statistics: one sample is fine
        assert np.isfinite(_compiled(session, inputs, targets, seed=1, training=False)[0])
        return
    for run in (_compiled, _reference):
        with pytest.raises(DataError, match="batch_normalization layer 'bn': expected a training batch of at least 2 samples, received 1"):
            run(session, inputs, targets, seed=1)

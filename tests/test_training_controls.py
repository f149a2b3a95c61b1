"""Training controls: early stopping, best weights, learning-rate schedules, gradient clipping,
kernel regularizers, validation_freq, the test set, and bit-exact resume with all of them on.

Most end-to-end cases train one weight w (y = w·x, no bias, x = ±1, full batch, plain SGD at
rate 0.1) on targets y = 2x, so every epoch is known in closed form:
    w_k = 2 - 2·0.8^k  (0.4, 0.72, 0.976, 1.1808, 1.34464, ...)
The validation file has y = x, so val_loss = (w_k - 1)^2 falls to its minimum at epoch 3
(0.000576) and then rises; the test file has y = 3x, so test loss = (w - 3)^2.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml

from nnctl.core.backend import get_backend
from nnctl.train.checkpoint import load_checkpoint, save_checkpoint
from nnctl.train.controls import SCHEDULES, Controls
from nnctl.errors import SpecError
from nnctl.diagnostics.gradcheck import gradcheck, random_batch
from nnctl.train.optimizers import OPTIMIZERS
from nnctl.cli.report import render_text
from nnctl.spec.load import Override, load_spec
from nnctl.train.fit import Interrupted, Progress, fit
from nnctl.train.session import Session, load_test_set, training_sets
from tests.helpers import run, run_json

torch = pytest.importorskip("torch")

W = [2 - 2 * 0.8**k for k in range(12)]  # w after k epochs of the linear case
F32 = dict(rtol=1e-5, atol=1e-6)


# --- the one-weight linear case ------------------------------------------------------------------
def _csv(path, factor, n=4):
    path.write_text("x,y\n" + "".join(f"{x},{factor * x}\n" for x in [1, -1] * (n // 2)))


def linear_spec(train=None, optimizer=None, data=None, layer=None, w0=0.0, name="lin", metrics=("mae",)):
    data = {"path": "train.csv", "inputs": {"x": ["x"]}, "targets": ["y"], "validation": "val.csv", **(data or {})}
    return {
        "name": name, "seed": 0, "inputs": {"x": [1]},
        "layers": [{"name": "w", "type": "dense", "units": 1, "use_bias": False,
                    "kernel_initializer": {"type": "constant", "value": w0}, **(layer or {})}],
        "loss": "mse", "metrics": list(metrics),
        "optimizer": {"type": "sgd", "learning_rate": 0.1, **(optimizer or {})},
        "data": {k: v for k, v in data.items() if v is not None},  # None: leave the key out
        "train": {"epochs": 8, "batch_size": 4, "shuffle": False, **(train or {})},
    }


@pytest.fixture
def project(tmp_path):
    """write(spec_dict) -> spec path, in a folder holding train.csv (2x), val.csv (x), test.csv (3x)."""
    _csv(tmp_path / "train.csv", 2)
    _csv(tmp_path / "val.csv", 1)
    _csv(tmp_path / "test.csv", 3)

    def write(spec, file="spec.yaml"):
        path = tmp_path / file
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def session_of(path, **overrides):
    return Session(load_spec(path, _overrides(overrides)), get_backend("numpy"))


def train(path, **overrides):
    session = session_of(path, **overrides)
    train_set, val_set = training_sets(session)
    return session, fit(session, train_set, val_set)


def w_of(session):
    return float(session.params.to_host()["w/kernel"][0, 0])


def test_linear_case_follows_its_closed_form(project):
    session, history = train(project(linear_spec()))
    assert len(history) == 8 and history.stopped_early is None
    np.testing.assert_allclose(w_of(session), W[8], **F32)
    np.testing.assert_allclose([h["val_loss"] for h in history], [(W[k] - 1) ** 2 for k in range(1, 9)], **F32)
    assert [h["lr"] for h in history] == [0.1] * 8
    assert history.best == {"monitor": "val_loss", "value": history[2]["val_loss"], "epoch": 3}


# --- early stopping ----------------------------------------------------------------------------
# (early_stopping, epoch it stops at or None, best epoch, final w)
EARLY_STOPPING_CASES = {
    "patience-2": ({"patience": 2}, 5, 3, W[5]),
    "patience-0": ({"patience": 0}, 4, 3, W[4]),  # Keras: 0 and 1 both stop at the first miss
    "patience-1": ({"patience": 1}, 4, 3, W[4]),
    "restore": ({"patience": 2, "restore_best_weights": True}, 5, 3, W[3]),
    "true-means-defaults": (True, 4, 3, W[4]),
    # Improvements of less than min_delta do not count: epoch 3 beats epoch 2 by 0.0778 < 0.1.
    "min-delta": ({"patience": 1, "min_delta": 0.1, "restore_best_weights": True}, 3, 2, W[2]),
    # Training loss (y = 2x) falls every epoch: never stops; its best is the last epoch.
    "monitor-loss": ({"monitor": "loss", "patience": 0}, None, 8, W[8]),
    # val_mae = |w - 1| is min-mode by auto; forced max mode, its best is epoch 1 (|0.4 - 1| = 0.6).
    "mode-max": ({"monitor": "val_mae", "mode": "max", "patience": 3, "restore_best_weights": True}, 4, 1, W[1]),
    "too-patient": ({"patience": 20, "restore_best_weights": True}, None, 3, W[3]),
}


@pytest.mark.parametrize("case", list(EARLY_STOPPING_CASES))
def test_early_stopping_stops_at_the_right_epoch_and_restores(project, case):
    config, stop, best, w = EARLY_STOPPING_CASES[case]
    session, history = train(project(linear_spec(train={"early_stopping": config})))
    assert len(history) == (stop or 8)
    assert history.best["epoch"] == best
    np.testing.assert_allclose(w_of(session), w, **F32)
    if stop is None:
        assert history.stopped_early is None
    else:
        assert history.stopped_early["epoch"] == stop and history.stopped_early["best_epoch"] == best
        assert f"best {history.best['value']:.6g} at epoch {best}" in history.stopped_early["reason"]


@pytest.mark.parametrize("config, values, stop, best", [
    ({"monitor": "val_accuracy"}, [0.5, 0.7, 0.6], 3, 2),  # auto: max for accuracy
    ({"monitor": "val_accuracy", "patience": 2}, [0.5, 0.7, 0.6, 0.7, 0.8], 4, 2),  # 0.7 again is no improvement
    ({"monitor": "val_accuracy", "patience": 2}, [0.5, 0.7, 0.6, 0.8, 0.75, 0.9], None, 6),
    ({"monitor": "val_loss", "patience": 2}, [1.0, 0.5, 0.6, 0.4, 0.45, 0.45], 6, 4),
    ({"monitor": "val_loss", "min_delta": 0.05, "patience": 1}, [1.0, 0.97, 0.96, 0.9], 2, 1),
    ({"monitor": "val_loss", "mode": "max", "patience": 1}, [1.0, 0.5], 2, 1),
])
def test_early_stopping_decisions(project, config, values, stop, best):
    spec = load_spec(project(linear_spec(train={"early_stopping": config}, metrics=["mae", "accuracy"])))
    controls = Controls(spec, 0.1, has_validation=True)
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        controls.end_epoch(epoch, {"loss": 1.0, config["monitor"]: value})
        if controls.stopped_early:
            stopped_at = controls.stopped_early["epoch"]
            break
    assert stopped_at == stop
    assert controls.best["epoch"] == best


# --- best.npz, the CLI's report, the test set -------------------------------------------------------
def test_best_npz_holds_the_best_epochs_weights(project, tmp_path):
    """Without early stopping: best.npz by val_loss; it equals a run of exactly that many epochs."""
    spec = project(linear_spec())
    data = run_json("train", spec, cwd=tmp_path)
    assert data["best"] == {"monitor": "val_loss", "value": pytest.approx((W[3] - 1) ** 2, rel=1e-4), "epoch": 3,
                            "weights": "runs/lin/best.npz"}
    best = np.load(tmp_path / "runs/lin/best.npz")
    run_json("train", spec, "--epochs", 3, "--out", tmp_path / "three/w.npz", cwd=tmp_path)
    three = np.load(tmp_path / "three/w.npz")
    assert best.files == three.files == ["w/kernel"]
    assert best["w/kernel"].tobytes() == three["w/kernel"].tobytes()
    np.testing.assert_allclose(best["w/kernel"], [[W[3]]], **F32)
    final = np.load(tmp_path / "runs/lin/weights.npz")
    np.testing.assert_allclose(final["w/kernel"], [[W[8]]], **F32)


def test_no_validation_no_best_npz(project, tmp_path):
    spec = project(linear_spec(data={"validation": None}))
    data = run_json("train", spec, cwd=tmp_path)
    assert data["best"] is None and data["validation_samples"] == 0
    assert not (tmp_path / "runs/lin/best.npz").exists()


def test_cli_reports_early_stop_restore_and_test_set(project, tmp_path):
    spec = project(linear_spec(train={"early_stopping": {"patience": 2, "restore_best_weights": True}},
                               data={"test": "test.csv"}))
    data = run_json("train", spec, cwd=tmp_path)
    assert data["epochs"] == 5
    assert data["stopped_early"]["epoch"] == 5
    assert data["stopped_early"]["reason"].startswith("val_loss did not improve for 2 epochs (patience 2, min_delta 0)")
    assert data["best"]["epoch"] == 3
    # The test set is evaluated once, after restoring epoch 3's weights: (w_3 - 3)^2.
    assert data["test_samples"] == 4
    np.testing.assert_allclose(data["test"]["loss"], (W[3] - 3) ** 2, **F32)
    np.testing.assert_allclose(data["test"]["mae"], 3 - W[3], **F32)
    np.testing.assert_allclose(np.load(tmp_path / "runs/lin/weights.npz")["w/kernel"], [[W[3]]], **F32)

    text = run("train", spec, cwd=tmp_path)
    assert text.exit_code == 0, text.output
    out = " ".join(text.stdout.split())
    assert "Stopped early at epoch 5: val_loss did not improve for 2 epochs" in out
    assert "Restored the weights of epoch 3" in out
    assert "Test set" in out and "test.csv (4 samples)" in out
    assert "best weights (epoch 3, val_loss" in out and "best.npz" in out
    # A run that stopped early has nothing to resume.
    again = run("train", spec, "--resume", cwd=tmp_path)
    assert again.exit_code == 2 and "stopped early at epoch 5" in again.output


def test_no_test_entry_gives_null(project, tmp_path):
    data = run_json("train", project(linear_spec()), "--epochs", 1, cwd=tmp_path)
    assert data["test"] is None and data["stopped_early"] is None


# --- validation_freq ------------------------------------------------------------------------------
def test_validation_freq_validates_every_nth_epoch(project, tmp_path):
    spec = project(linear_spec(train={"validation_freq": 3}))
    session, history = train(spec)
    assert [h["epoch"] for h in history if "val_loss" in h] == [3, 6]
    np.testing.assert_allclose([history[2]["val_loss"], history[5]["val_loss"]], [(W[3] - 1) ** 2, (W[6] - 1) ** 2], **F32)
    assert history.best["epoch"] == 3
    run_json("train", spec, cwd=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "runs/lin/history.csv")))
    assert list(rows[0]) == ["epoch", "loss", "mae", "val_loss", "val_mae", "lr", "seconds", "samples_per_second"]
    assert [bool(r["val_loss"]) for r in rows] == [False, False, True, False, False, True, False, False]


def test_validation_freq_with_early_stopping_counts_validated_epochs_only(project):
    # Validated epochs 2, 4, 6, 8: val_loss (w-1)^2 = 0.0784, 0.0327, 0.1188, ... best at 4, miss at 6.
    _, history = train(project(linear_spec(train={"validation_freq": 2, "early_stopping": {"patience": 1}})))
    assert history.stopped_early["epoch"] == 6 and history.best["epoch"] == 4


# --- learning-rate schedules ------------------------------------------------------------------------
def _torch_rates(make, epochs, lr):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make(optimizer)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


S = torch.optim.lr_scheduler
# (lr_schedule, train.epochs, expected: a torch scheduler factory or a closed form of the 0-based epoch)
SCHEDULE_CASES = {
    "constant": ("constant", 5, lambda o: S.LambdaLR(o, lambda e: 1.0)),
    "step": ({"type": "step", "step_size": 3, "gamma": 0.5}, 10, lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    "step-defaults": ({"type": "step"}, 25, lambda o: S.StepLR(o, step_size=10, gamma=0.1)),
    "exponential": ({"type": "exponential", "gamma": 0.8}, 10, lambda o: S.ExponentialLR(o, gamma=0.8)),
    "cosine": ({"type": "cosine", "min_lr": 0.001}, 10, lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.001)),
    "cosine-warmup": ({"type": "cosine", "warmup_epochs": 2}, 10, lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=1 / 3, total_iters=2), S.CosineAnnealingLR(o, T_max=8)], milestones=[2])),
    # Decay over 4 epochs, then min_lr (Keras' clamp; torch's cosine would rise again).
    "cosine-short": ({"type": "cosine", "epochs": 4, "min_lr": 0.01}, 7,
                     lambda e: 0.01 + 0.09 * (1 + math.cos(math.pi * min(e, 4) / 4)) / 2),
}


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_schedule_rates_match_torch(project, case):
    schedule, epochs, expected = SCHEDULE_CASES[case]
    spec = load_spec(project(linear_spec(train={"epochs": epochs, "lr_schedule": schedule})))
    controls = Controls(spec, 0.1, has_validation=True)
    rates = [controls.lr(epoch) for epoch in range(1, epochs + 1)]
    if case == "cosine-short":
        want = [expected(e) for e in range(epochs)]
        assert rates[-3:] == [0.01] * 3
    else:
        want = _torch_rates(expected, epochs, 0.1)
    np.testing.assert_allclose(rates, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("config, torch_kwargs", [
    ({"patience": 2, "factor": 0.5, "min_delta": 0.0}, {"patience": 1, "factor": 0.5, "threshold": 0.0}),
    ({"patience": 1, "factor": 0.2, "min_delta": 0.05, "min_lr": 0.003}, {"patience": 0, "factor": 0.2, "threshold": 0.05, "min_lr": 0.003}),
    ({}, {"patience": 9, "factor": 0.1, "threshold": 1e-4}),
    ({"patience": 1, "factor": 0.5, "cooldown": 2}, {"patience": 0, "factor": 0.5, "threshold": 1e-4, "cooldown": 2}),
    ({"patience": 0, "factor": 0.5, "cooldown": 1}, {"patience": 0, "factor": 0.5, "threshold": 1e-4, "cooldown": 1}),
])
def test_reduce_on_plateau_matches_torch(project, config, torch_kwargs):
    """Keras reduces after `patience` misses, torch after more than `patience`: Keras p = torch p + 1."""
    values = [1.0, 0.9, 0.95, 0.95, 0.89, 0.9, 0.9, 0.9, 0.7, 0.71, 0.72, 0.73, 0.74] + [0.75] * 12
    spec = load_spec(project(linear_spec(train={"epochs": len(values), "lr_schedule": {"type": "reduce_on_plateau", **config}})))
    controls = Controls(spec, 0.1, has_validation=True)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = S.ReduceLROnPlateau(optimizer, threshold_mode="abs", eps=0.0, **torch_kwargs)
    ours, theirs = [], []
    for epoch, value in enumerate(values, start=1):
        ours.append(controls.lr(epoch))
        theirs.append(optimizer.param_groups[0]["lr"])
        controls.end_epoch(epoch, {"val_loss": value})
        scheduler.step(value)
    assert ours == theirs
    assert len(set(ours)) > 1


def test_reduce_on_plateau_cooldown_and_lr_column(project):
    # After a reduction, `cooldown` epochs are not counted (torch's semantics).
    spec = load_spec(project(linear_spec(train={"lr_schedule": {"type": "reduce_on_plateau", "patience": 1, "factor": 0.5, "cooldown": 2}})))
    controls = Controls(spec, 0.1, has_validation=True)
    rates = []
    for epoch in range(1, 9):
        rates.append(controls.lr(epoch))
        controls.end_epoch(epoch, {"val_loss": 1.0})  # never improves after epoch 1
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025]
    assert controls.state()["schedule"] == {"lr": 0.0125, "best": 1.0, "wait": 0, "cooldown_counter": 2}


def test_schedule_drives_the_optimizer_and_history(project):
    """Step decay halving every 2 epochs: w follows w_{k+1} = w_k - lr_k * 2 (w_k - 2)."""
    _, history = train(project(linear_spec(train={"epochs": 6, "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}})))
    rates = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert [h["lr"] for h in history] == rates
    w, expected_loss = 0.0, []
    for lr in rates:
        expected_loss.append((w - 2) ** 2)  # the epoch's one step sees the weight before it
        w -= lr * 2 * (w - 2)
    np.testing.assert_allclose([h["loss"] for h in history], expected_loss, **F32)


def test_progress_sees_the_current_rate(project):
    seen = []

    class Recorder(Progress):
        def on_step(self, epoch, step, read_logs):
            seen.append((epoch, read_logs()["lr"]))

    session = session_of(project(linear_spec(train={"epochs": 3, "lr_schedule": {"type": "exponential", "gamma": 0.5}})))
    fit(session, *training_sets(session), progress=Recorder())
    assert seen == [(1, 0.1), (2, 0.05), (3, 0.025)]
    from nnctl.cli.report import LiveProgress, history_view
    from rich.console import Console
    import io

    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    live = LiveProgress(console)
    live.on_train_begin(1, 1, 4)
    live.on_epoch_end(1, {"epoch": 1, "loss": 1.0, "mae": 0.5, "lr": 0.00125, "seconds": 1.0, "samples_per_second": 4.0})
    assert "lr 0.00125" in console.file.getvalue()
    assert "0.00125" in render_text(history_view([{"epoch": 1, "loss": 1.0, "lr": 0.00125, "seconds": 1.0, "samples_per_second": 4.0}]))


# --- gradient clipping ----------------------------------------------------------------------------
# (optimizer options, torch clip) on a step of SGD with learning_rate 1: params -= clipped grads.
CLIP_CASES = {
    "norm-clips": ({"clipnorm": 0.5}, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5)),
    "norm-clips-hard": ({"clipnorm": 1e-3}, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1e-3)),
    "norm-inactive": ({"clipnorm": 100.0}, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 100.0)),
    "value": ({"clipvalue": 0.3}, lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.3)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_clipping_matches_torch_on_a_step(case, dtype):
    options, torch_clip = CLIP_CASES[case]
    rng = np.random.default_rng(7)
    shapes = [(3, 4), (4,), (4, 2), (2,)]  # several "weights" in one flat buffer
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    flat = np.concatenate([p.ravel() for p in params])
    flat_grad = np.concatenate([g.ravel() for g in grads])
    config = {k: o.default for k, o in OPTIMIZERS["sgd"].options.items()} | {"learning_rate": 1.0, **options}
    optimizer = OPTIMIZERS["sgd"](config, flat)
    optimizer.step(flat, flat_grad)

    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g.copy())
    torch_clip(tensors)
    torch.optim.SGD(tensors, lr=1.0).step()
    expected = np.concatenate([t.detach().numpy().ravel() for t in tensors])
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(flat, expected, **tol)
    norm = np.linalg.norm(np.concatenate([g.ravel() for g in grads]).astype(np.float64))
    if case == "norm-clips":
        np.testing.assert_allclose(np.linalg.norm(flat_grad.astype(np.float64)), 0.5 * norm / (norm + 1e-6), rtol=1e-6)
    if case == "norm-inactive":
        assert flat_grad.tobytes() == np.concatenate([g.ravel() for g in grads]).tobytes()


def test_clipnorm_in_training_bounds_the_step(project):
    # From w = 0 the gradient is 2(w - 2) = -4; clipnorm 1 makes the first step 0.1 * 1 = 0.1.
    session, _ = train(project(linear_spec(optimizer={"clipnorm": 1.0})), epochs=1)
    np.testing.assert_allclose(w_of(session), 0.1, **F32)
    session, _ = train(project(linear_spec(optimizer={"clipvalue": 0.5})), epochs=1)
    np.testing.assert_allclose(w_of(session), 0.05, **F32)


# --- kernel regularizers ----------------------------------------------------------------------------
REGULARIZER_CASES = [{"l2": 0.01}, {"l1": 0.02}, {"l1": 0.003, "l2": 0.05}]


@pytest.mark.parametrize("regularizer", REGULARIZER_CASES, ids=str)
def test_penalty_value_and_gradient(make_session, regularizer):
    spec = {
        "seed": 3, "inputs": {"x": [3]},
        "layers": [
            {"name": "h", "type": "dense", "units": 4, "activation": "tanh", "kernel_regularizer": regularizer},
            {"name": "out", "type": "dense", "units": 2, "kernel_regularizer": {"l1": 0.01}},
            ],
        "loss": "mse",
    }
    session = make_session(spec)
    weights = session.params.to_host()

    def keras(w, r):
        return r.get("l1", 0.0) * np.abs(w).sum() + r.get("l2", 0.0) * (w**2).sum()

    expected = keras(weights["h/kernel"], regularizer) + keras(weights["out/kernel"], {"l1": 0.01})
    np.testing.assert_allclose(float(session.penalty(session.params.frozen()).value), expected, rtol=1e-12)

    # The gradient of the objective is the loss's plus l1·sign(w) + 2·l2·w on the kernels only.
    inputs, targets = random_batch(session, 5)
    from nnctl.core.autograd import backward
    from nnctl.model.graph import ForwardContext

    def grads(objective):
        session.params.zero_grad()
        output = session.model.forward(session.params.tensors, {"x": inputs["x"]}, ForwardContext(session.backend))[0]
        backward(session.objective([output], targets, session.params.tensors) if objective else session.heads[0].loss(output, targets["out"]))
        return {k: v.copy() for k, v in session.params.grad_views.items()}

    with_penalty, without = grads(True), grads(False)
    for key, r in (("h/kernel", regularizer), ("out/kernel", {"l1": 0.01})):
        w = weights[key]
        np.testing.assert_allclose(with_penalty[key] - without[key], r.get("l1", 0.0) * np.sign(w) + 2 * r.get("l2", 0.0) * w, rtol=1e-9, atol=1e-12)
    for key in ("h/bias", "out/bias"):
        np.testing.assert_array_equal(with_penalty[key], without[key])

    # Central differences in float64 through nnctl.diagnostics.gradcheck: the penalty is part of its loss.
    rows, loss, _ = gradcheck(session, inputs, targets)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    output = session.model.forward(session.params.frozen(), {"x": inputs["x"]}, ForwardContext(session.backend))[0]
    np.testing.assert_allclose(loss, float(session.heads[0].loss(output, targets["out"]).value) + expected, rtol=1e-12)


@pytest.mark.parametrize("regularizer", REGULARIZER_CASES, ids=str)
def test_penalty_column_and_loss_include_it(project, regularizer):
    """From w0 = 0.5: epoch 1 logs loss = (0.5 - 2)^2 + penalty(0.5) (Keras adds it), penalty apart."""
    l1, l2 = regularizer.get("l1", 0.0), regularizer.get("l2", 0.0)
    _, history = train(project(linear_spec(layer={"kernel_regularizer": regularizer}, train={"epochs": 2}, w0=0.5)))
    assert list(history[0])[:3] == ["epoch", "loss", "penalty"]
    w = 0.5
    for logged in history:
        penalty = l1 * abs(w) + l2 * w * w  # the epoch's one step sees the weight before it
        loss = (w - 2) ** 2 + penalty
        w -= 0.1 * (2 * (w - 2) + l1 * np.sign(w) + 2 * l2 * w)
        val_loss = (w - 1) ** 2 + l1 * abs(w) + l2 * w * w  # at the end-of-epoch weight, penalty included
        np.testing.assert_allclose([logged["penalty"], logged["loss"], logged["val_loss"]], [penalty, loss, val_loss], **F32)


# --- spec checking and defaults ----------------------------------------------------------------------
@pytest.mark.parametrize("change, where, message", [
    ({"data": {"validation": None}, "train": {"early_stopping": {"patience": 3}}}, "train.early_stopping.monitor",
     "expected validation data to monitor 'val_loss' (data.validation or data.validation_split), received a data section without it"),
    ({"data": {"validation": None}, "train": {"lr_schedule": {"type": "reduce_on_plateau", "monitor": "val_mae"}}}, "train.lr_schedule.monitor",
     "expected validation data to monitor 'val_mae'"),
    ({"train": {"early_stopping": {"monitor": "val_los"}}}, "train.early_stopping.monitor",
     "expected a logged value to monitor (loss, mae, val_loss, val_mae), received 'val_los' (did you mean 'val_loss'?)"),
    ({"train": {"early_stopping": {"monitor": "val_accuracy"}}}, "train.early_stopping.monitor", "received 'val_accuracy'"),
    ({"train": {"early_stopping": {"patience": -1}}}, "train.early_stopping.patience", "expected a non-negative integer, received -1"),
    ({"train": {"early_stopping": {"mode": "up"}}}, "train.early_stopping.mode", "expected one of auto, min, max, received 'up'"),
    ({"train": {"early_stopping": {"patients": 2}}}, "train.early_stopping.patients", "(did you mean 'patience'?)"),
    ({"train": {"early_stopping": 5}}, "train.early_stopping",
     "expected a mapping (keys monitor, mode, patience, min_delta, restore_best_weights), true or null, received 5"),
    ({"train": {"validation_freq": 0}}, "train.validation_freq", "expected a positive integer, received 0"),
    ({"train": {"lr_schedule": {"type": "cosine", "min_lr": 0.5}}}, "train.lr_schedule.min_lr",
     "expected a number <= the optimizer's learning_rate (0.1), received 0.5"),
    ({"train": {"lr_schedule": {"type": "steps"}}}, "train.lr_schedule.type", "(did you mean 'step'?)"),
    ({"train": {"lr_schedule": {"type": "reduce_on_plateau", "factor": 1.0}}}, "train.lr_schedule.factor", "expected a number in (0, 1), received 1.0"),
    ({"optimizer": {"clipnorm": 1.0, "clipvalue": 0.5}}, "optimizer.clipvalue", "expected at most one of clipnorm and clipvalue (as in Keras), received both"),
    ({"optimizer": {"clipnorm": 0}}, "optimizer.clipnorm", "expected a number > 0 or null, received 0"),
    ({"layer": {"kernel_regularizer": {"l3": 0.1}}}, "layers[0].kernel_regularizer.l3", "expected a kernel_regularizer key (l1, l2), received unknown key 'l3'"),
    ({"layer": {"kernel_regularizer": {"l2": -1}}}, "layers[0].kernel_regularizer.l2", "expected a number >= 0, received -1"),
    ({"data": {"test": 3}}, "data.test", "expected a file path, received 3"),
])
def test_spec_errors_name_the_place(project, change, where, message):
    path = project(linear_spec(**{k: v for k, v in change.items() if k != "layer"}, layer=change.get("layer")))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    text = str(error.value)
    assert f"{path}:" in text and f": {where}: " in text and message in text, text
    line = text.split(f"{path}:")[1].split(":")[0]
    assert line.isdigit()


def test_resolved_spec_shows_every_default(project):
    resolved = load_spec(project(linear_spec(train={"early_stopping": True}))).resolved()
    assert resolved["train"]["validation_freq"] == 1
    assert resolved["train"]["early_stopping"] == {"monitor": "val_loss", "mode": "auto", "patience": 0, "min_delta": 0.0, "restore_best_weights": False}
    assert resolved["train"]["lr_schedule"] == {"type": "constant"}
    assert resolved["optimizer"]["clipnorm"] is None and resolved["optimizer"]["clipvalue"] is None
    assert resolved["layers"][0]["kernel_regularizer"] is None
    assert resolved["data"]["test"] is None
    plain = load_spec(project(linear_spec(train={"lr_schedule": {"type": "reduce_on_plateau"}}), "b.yaml")).resolved()
    assert plain["train"]["early_stopping"] is None
    assert plain["train"]["lr_schedule"] == {"type": "reduce_on_plateau", "monitor": "val_loss", "mode": "auto", "factor": 0.1,
                                             "patience": 10, "min_delta": 1e-4, "cooldown": 0, "min_lr": 0.0}
    cosine = load_spec(project(linear_spec(train={"lr_schedule": "cosine", "epochs": 3}), "c.yaml")).resolved()
    assert cosine["train"]["lr_schedule"] == {"type": "cosine", "epochs": None, "min_lr": 0.0, "warmup_epochs": 0}
    json.dumps(resolved)  # JSON-able as is
    assert set(SCHEDULES) == {"constant", "step", "exponential", "cosine", "reduce_on_plateau"}


# --- resume: bit-exact with every control on ---------------------------------------------------------
NOISY = "x1,x2,y\n" + "".join(f"{(i * 7 % 11) / 5 - 1},{(i * 5 % 13) / 6 - 1},{((i * 3) % 7) / 3 - 1}\n" for i in range(40))
RESUME_SPEC = {
    "name": "controls", "seed": 4, "inputs": {"x": [2]},
    "layers": [
        {"name": "h", "type": "dense", "units": 6, "activation": "tanh", "kernel_regularizer": {"l1": 0.001, "l2": 0.01}},
        {"name": "drop", "type": "dropout", "rate": 0.2},
        {"name": "out", "type": "dense", "units": 1},
    ],
    "loss": "mse", "metrics": ["mae"],
    "optimizer": {"type": "adam", "learning_rate": 0.05, "clipnorm": 1.0},
    "data": {"path": "noisy.csv", "inputs": {"x": ["x1", "x2"]}, "targets": ["y"], "validation_split": 0.25},
    "train": {"epochs": 30, "batch_size": 8, "validation_freq": 1,
              "early_stopping": {"patience": 6, "restore_best_weights": True},
              "lr_schedule": {"type": "reduce_on_plateau", "patience": 1, "factor": 0.5}},
}


def _no_clock(rows):
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second")} for row in rows]


def test_resume_is_bit_exact_with_early_stopping_and_plateau(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    for folder in (straight, split):
        folder.mkdir()
        (folder / "noisy.csv").write_text(NOISY)
        (folder / "spec.yaml").write_text(yaml.safe_dump(RESUME_SPEC, sort_keys=False))
    whole = run_json("train", straight / "spec.yaml", cwd=straight)
    stop = whole["stopped_early"]["epoch"]
    history = list(csv.DictReader(open(straight / "runs/controls/history.csv")))
    rates = [float(r["lr"]) for r in history]
    cut = 5
    # The case exercises what it claims: the rate falls before and after the cut, and the run stops early.
    assert len(set(rates[:cut])) > 1 and len(set(rates[cut:])) > 1 and cut < stop < 30, (rates, stop)

    run_json("train", split / "spec.yaml", "--epochs", cut, cwd=split)
    resumed = run_json("train", split / "spec.yaml", "--resume", cwd=split)
    assert resumed["stopped_early"] == whole["stopped_early"] and resumed["best"]["epoch"] == whole["best"]["epoch"]
    for name in ("weights.npz", "best.npz"):
        a, b = np.load(straight / "runs/controls" / name), np.load(split / "runs/controls" / name)
        assert a.files == b.files and all(a[k].tobytes() == b[k].tobytes() for k in a.files), name
    assert _no_clock(list(csv.DictReader(open(split / "runs/controls/history.csv")))) == _no_clock(history)


def test_mid_epoch_interruption_resumes_bit_exactly_with_controls(tmp_path):
    (tmp_path / "noisy.csv").write_text(NOISY)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(RESUME_SPEC, sort_keys=False))
    path = tmp_path / "spec.yaml"

    reference = session_of(path)
    reference_history = fit(reference, *training_sets(reference))

    session = session_of(path)
    steps = iter(range(10**6))
    with pytest.raises(Interrupted) as stop:
        fit(session, *training_sets(session), stop_requested=lambda: next(steps) == 4 * 3 + 1)  # epoch 4, step 2
    assert (stop.value.state.epoch, stop.value.state.step) == (4, 2)
    assert stop.value.state.controls["schedule"]["lr"] < 0.05  # the plateau had already cut the rate
    checkpoint = tmp_path / "checkpoint.npz"
    save_checkpoint(checkpoint, session.spec, session.params.to_host(), stop.value.state)

    resumed = session_of(path)
    weights, state = load_checkpoint(checkpoint, resumed.spec, resumed.model)
    resumed.params.load(weights)
    history = fit(resumed, *training_sets(resumed), state=state)
    assert resumed.params.flat.tobytes() == reference.params.flat.tobytes()
    assert history.stopped_early == reference_history.stopped_early is not None
    assert all(history.best_weights[k].tobytes() == reference_history.best_weights[k].tobytes() for k in history.best_weights)
    assert _no_clock(history) == _no_clock(reference_history)


def test_test_set_loader(project):
    session = session_of(project(linear_spec(data={"test": "test.csv"})))
    assert len(load_test_set(session)) == 4
    assert load_test_set(session_of(project(linear_spec(), "plain.yaml"))) is None


def _overrides(values: dict) -> list:
    """Overrides as the CLI's flags give them: train keys under train, the rest at the top."""
    return [Override.at(("train." if key in ("epochs", "batch_size", "shuffle", "validation_freq") else "") + key, value, "test") for key, value in values.items() if value is not None]

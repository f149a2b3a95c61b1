"""Several outputs through the CLI and the training loop: Keras' per-output log names, the trained
loss as the weighted sum of the outputs' losses, predict's and evaluate's per-output results,
monitors on an output's value, a mid-epoch stop resumed bit for bit, and the shipped multi-task
spec end to end (raw rows in, class names and a regression in its own units out).
"""
from __future__ import annotations

import csv
import math

import numpy
import pytest

from nnctl.train.fit import Interrupted, fit
from nnctl.train.session import training_sets
from tests.helpers import ROOT, TWO_TOWER, run, run_json, write_project

# The two-tower project with two outputs: dense3 (mse, mae) and a classifier head on the concat.
TWO_HEADS = TWO_TOWER.replace("  - {name: dense3, type: dense, units: 1, from: concat}\n",
                              "  - {name: dense3, type: dense, units: 1, from: concat}\n"
                              "  - {name: sign, type: dense, units: 1, from: concat}\n").replace(
    "outputs: dense3\nloss: mse\nmetrics: [mae]\n",
    "outputs: [dense3, sign]\n"
    "loss: {dense3: mse, sign: {type: binary_crossentropy, from_logits: true}}\n"
    "loss_weights: {dense3: 2.0, sign: 0.5}\n"
    "metrics: {dense3: [mae], sign: [accuracy, auc]}\n").replace(
    "  targets: [y]\n", "  targets: {dense3: [y], sign: [s]}\n")
DATA = "x1,x2,y,s\n" + "".join(f"{(i % 7) / 3 - 1},{(i * 3 % 5) / 2 - 1},{(i % 4) / 2},{i % 3 == 0:d}\n" for i in range(40))
LOGS = ["loss", "dense3_loss", "sign_loss", "dense3_mae", "sign_accuracy", "sign_auc"]


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path, TWO_HEADS, DATA)


def test_history_has_keras_names_and_the_weighted_total(project):
    data = run_json("train", project, "--epochs", 3, cwd=project.parent)
    with open(project.parent / "runs/two_tower/history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert list(data["final"]) == [*LOGS, *(f"val_{k}" for k in LOGS)]
    assert list(history[0]) == ["epoch", *data["final"], "lr", "seconds", "samples_per_second"]
    for row in [data["final"], *({k: float(v) for k, v in r.items()} for r in history)]:
        for prefix in ("", "val_"):
            total = 2.0 * row[f"{prefix}dense3_loss"] + 0.5 * row[f"{prefix}sign_loss"]
            assert row[f"{prefix}loss"] == pytest.approx(total, rel=1e-6)
            assert 0 <= row[f"{prefix}sign_accuracy"] <= 1 and 0 <= row[f"{prefix}sign_auc"] <= 1


def test_an_output_value_can_be_monitored(project):
    text = project.read_text().replace("train: {epochs: 3,", "train: {early_stopping: {monitor: val_sign_auc, patience: 1}, epochs: 3,")
    project.write_text(text)
    data = run_json("train", project, cwd=project.parent)
    assert data["best"]["monitor"] == "val_sign_auc"
    project.write_text(text.replace("val_sign_auc", "val_sing_auc"))
    result = run("train", project, cwd=project.parent)
    assert result.exit_code == 2 and "received 'val_sing_auc' (did you mean 'val_sign_auc'?)" in result.output


def test_predict_and_evaluate_report_each_output(project):
    run_json("train", project, cwd=project.parent)
    weights = project.parent / "runs/two_tower/weights.npz"
    out = project.parent / "predictions.csv"
    data = run_json("predict", project, "--weights", weights, "--input", project.parent / "data.csv", cwd=project.parent)
    # One unit of binary cross-entropy gives a probability and, as with one output, no class column.
    assert data["columns"] == ["dense3_0", "sign_prob_0"] and data["classes"] is None
    outputs = numpy.array(data["outputs"])
    assert outputs.shape == (40, 2) and ((0 < outputs[:, 1]) & (outputs[:, 1] < 1)).all()
    assert run("predict", project, "--weights", weights, "--input", project.parent / "data.csv", "--output", out,
               cwd=project.parent).exit_code == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["dense3_0", "sign_prob_0"] and len(rows) == 41
    numpy.testing.assert_array_equal(numpy.array(rows[1:])[:, :2].astype(float), outputs)

    evaluation = run_json("evaluate", project, "--weights", weights, cwd=project.parent)
    assert [o["name"] for o in evaluation["outputs"]] == ["dense3", "sign"]
    assert [o["loss_weight"] for o in evaluation["outputs"]] == [2.0, 0.5]
    assert evaluation["outputs"][0]["classification"] is None
    sign = evaluation["outputs"][1]["classification"]
    truth = numpy.array([i % 3 == 0 for i in range(40)], dtype=int)
    predicted = (outputs[:, 1] > 0.5).astype(int)
    assert sign["confusion_matrix"] == [[int(((truth == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    assert "loss_name" not in evaluation and "classification" not in evaluation
    metrics = evaluation["metrics"]
    assert list(metrics) == LOGS
    mse = float(numpy.mean((outputs[:, 0] - numpy.array([(i % 4) / 2 for i in range(40)])) ** 2))
    assert metrics["dense3_loss"] == pytest.approx(mse, rel=1e-5)
    shown = run("evaluate", project, "--weights", weights, cwd=project.parent).output
    assert "loss (weighted sum)" in shown and "dense3_loss (mse)" in shown and "Confusion matrix of output sign" in shown


def test_gradcheck_checks_the_weighted_total(project):
    data = run_json("gradcheck", project, cwd=project.parent)
    assert data["passed"] and {"dense3", "sign"} <= {row["name"] for row in data["checks"]}


def test_summary_lists_the_outputs(project):
    shown = run("summary", project).output
    assert "Outputs: dense3 (mse, weight 2), sign (binary_crossentropy, weight 0.5)" in shown
    data = run_json("summary", project)
    assert data["outputs"] == [{"name": "dense3", "loss": "mse", "loss_weight": 2.0, "metrics": ["mae"]},
                               {"name": "sign", "loss": "binary_crossentropy", "loss_weight": 0.5, "metrics": ["accuracy", "auc"]}]


def test_a_mid_epoch_stop_resumes_bit_exactly(make_session, project):
    """The per-output loss sums and metric states are in the checkpointed totals: stopped after
    step 3 of epoch 2 and resumed, the run ends as the straight one, history included."""
    import yaml

    spec = yaml.safe_load(project.read_text())
    spec["data"]["path"] = str(project.parent / "data.csv")
    spec["train"]["epochs"] = 3

    def session():
        made = make_session(spec, dtype="float32")
        return made, *training_sets(made)

    straight, train_set, val_set = session()
    expected = fit(straight, train_set, val_set)
    stopped, train_set, val_set = session()
    steps = []
    with pytest.raises(Interrupted) as caught:
        fit(stopped, train_set, val_set, stop_requested=lambda: steps.append(1) or len(steps) == 8 + 3)
    state = caught.value.state
    assert (state.epoch, state.step) == (2, 3) and "loss/sign_loss" in state.totals and "metric/sign_auc" in state.totals
    resumed, train_set, val_set = session()
    resumed.params.all_flat[...] = stopped.params.all_flat
    history = fit(resumed, train_set, val_set, state=state)
    numpy.testing.assert_array_equal(resumed.params.all_flat, straight.params.all_flat)
    wall = ("seconds", "samples_per_second")
    assert [{k: v for k, v in row.items() if k not in wall} for row in history] == \
           [{k: v for k, v in row.items() if k not in wall} for row in expected]


def test_the_shipped_multi_task_spec_end_to_end(tmp_path):
    """customers_multitask: a classifier with text classes and a standardized regression, from raw
    rows with missing cells; predict gives the class names and the fee in dollars."""
    spec = ROOT / "specs/customers_multitask.yaml"
    data = run_json("train", spec, "--epochs", 40, cwd=tmp_path)
    final = data["final"]
    assert final["val_outcome_accuracy"] > 0.7 and final["val_fee_r2"] > 0.7
    weights = tmp_path / "runs/customers_multitask/weights.npz"
    raw = tmp_path / "raw.csv"
    lines = (ROOT / "data/customers.csv").read_text().splitlines()
    raw.write_text("\n".join(lines[:41]) + "\n")
    predicted = run_json("predict", spec, "--weights", weights, "--input", raw, cwd=tmp_path)
    assert predicted["columns"] == ["outcome_prob_cancelled", "outcome_prob_renewed", "outcome_prob_upgraded", "fee_0"]
    assert set(predicted["classes"]["outcome_class"]) <= {"cancelled", "renewed", "upgraded"}
    fees = numpy.array(predicted["outputs"])[:, 3]
    truth = numpy.array([float(line.split(",")[2]) if line.split(",")[2] else math.nan for line in lines[1:41]])
    known = ~numpy.isnan(truth)
    # In dollars, not standardized units: within a few dollars' typical error of fees from 13 to 180.
    assert numpy.median(numpy.abs(fees[known] - truth[known])) < 15 and fees.mean() > 20


def test_weighted_two_output_training_equals_torch(make_session):
    """A shared tanh layer, a regression head and a classifier head, loss 0.7 * mse + 1.3 * sparse
    cross-entropy, trained through the compiled step: loss and weights after each of 5 Adam steps
    equal torch's in float64 to 1e-10."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    init = {"bias_initializer": {"type": "random_normal", "stddev": 0.3}}
    spec = {"seed": 4, "inputs": {"x": [3]}, "layers": [
        {"name": "shared", "type": "dense", "units": 4, "activation": "tanh", **init},
        {"name": "value", "type": "dense", "units": 2, "from": "shared", **init},
        {"name": "label", "type": "dense", "units": 3, "from": "shared", **init}],
        "outputs": ["value", "label"],
        "loss": {"value": "mse", "label": {"type": "sparse_categorical_crossentropy", "from_logits": True}},
        "loss_weights": {"value": 0.7, "label": 1.3},
        "optimizer": {"type": "adam", "learning_rate": 0.05}}
    session = make_session(spec)
    weights = {k: torch.tensor(v, requires_grad=True) for k, v in session.params.to_host().items()}
    torch_optimizer = torch.optim.Adam(weights.values(), lr=0.05, betas=(0.9, 0.999), eps=1e-7)
    optimizer = session.make_optimizer()
    rng = numpy.random.default_rng(0)
    from nnctl.model.graph import ForwardContext

    for step in range(5):
        x, y_value, y_label = rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), rng.integers(0, 3, 8)
        loss, outputs, _, own = session.gradients({"x": x}, {"value": y_value, "label": y_label}, 8,
                                                  ForwardContext(session.backend, training=True))
        optimizer.step(session.params.flat, session.params.grad_flat)
        h = torch.tanh(torch.from_numpy(x) @ weights["shared/kernel"] + weights["shared/bias"])
        value = h @ weights["value/kernel"] + weights["value/bias"]
        label = h @ weights["label/kernel"] + weights["label/bias"]
        value_loss = ((value - torch.from_numpy(y_value)) ** 2).mean()
        label_loss = F.cross_entropy(label, torch.from_numpy(y_label))
        torch_loss = 0.7 * value_loss + 1.3 * label_loss
        torch_optimizer.zero_grad()
        torch_loss.backward()
        torch_optimizer.step()
        numpy.testing.assert_allclose(outputs[0], value.detach().numpy(), rtol=1e-10, atol=1e-10)
        numpy.testing.assert_allclose([loss, *own], [torch_loss.item(), value_loss.item(), label_loss.item()], rtol=1e-10, atol=1e-10)
        for key, value in session.params.to_host().items():
            numpy.testing.assert_allclose(value, weights[key].detach().numpy(), rtol=1e-10, atol=1e-10, err_msg=f"{key}, step {step + 1}")

"""Every bad sweep file is refused before any trial runs: one table, one harness.

Each row is a sweep file for the valid two-tower project and the substrings its message must
hold (the sweep file's LINE:COLUMN, the parameter, expected/received, a did-you-mean). The
harness asserts exit code 2, no traceback or internal error, and that no study was created.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run, write_project

pytest.importorskip("optuna")

LR = "  optimizer.learning_rate: {values: [0.01]}\n"

BAD_SWEEPS = [
    ("unknown top-level path", "parameters:\n  optimiser.learning_rate: {values: [0.1]}\n",
     ["sweep.yaml:2:3", "optimiser.learning_rate", "received 'optimiser'", "did you mean 'optimizer'"]),
    ("unknown layer name", "parameters:\n  layers.dense_2.units: {values: [4]}\n",
     ["sweep.yaml:2:3", "expected a layer name", "received 'dense_2'", "did you mean 'dense2'"]),
    ("unknown layer option", "parameters:\n  layers.dense2.unit: {values: [4]}\n",
     ["sweep.yaml:2:3: layers.dense2.unit", "expected an option of layers.dense2 (name, from, units,", "unknown key 'unit'", "did you mean 'units'"]),
    ("unknown optimizer option", "parameters:\n  optimizer.learnin_rate: {values: [0.1]}\n",
     ["sweep.yaml:2:3", "expected an option of optimizer (learning_rate,", "unknown key 'learnin_rate'", "did you mean 'learning_rate'"]),
    ("the spec's name", "parameters:\n  name: {values: [a, b]}\n", ["sweep.yaml:2:3", "expected a spec key other than `name`"]),
    ("a path into a list", "parameters:\n  metrics.0: {values: [mse]}\n",
     ["sweep.yaml:2:3", "metrics.0", "expected a path through mappings of the spec, received metrics = ['mae']"]),
    ("a path through a value", "parameters:\n  seed.x: {values: [1]}\n",
     ["sweep.yaml:2:3", "expected a path through mappings of the spec, received seed = 0"]),
    ("a layer without an option", "parameters:\n  layers.dense2: {values: [4]}\n",
     ["sweep.yaml:2:3", "expected a layer option after the layer's name"]),
    ("value of the wrong type", "parameters:\n  layers.dense2.units: {values: [4, four]}\n",
     ["sweep.yaml:2:37", "layers.dense2.units", "expected a positive integer, received 'four'"]),
    ("value out of range", "parameters:\n  train.batch_size: {values: [0, 4]}\n",
     ["sweep.yaml:2:31", "train.batch_size", "expected a positive integer, received 0"]),
    ("distribution bound out of range", "parameters:\n  data.validation_split: {distribution: uniform, min: 0.1, max: 1.5}\n",
     ["sweep.yaml:2:", "data.validation_split", "received 1.5"]),
    ("a value that is a mapping", "parameters:\n  loss: {values: [mse, {type: huber}]}\n",
     ["sweep.yaml:2:", "loss", "expected a number, string, true, false or null, received a mapping"]),
    ("empty values", "parameters:\n  layers.dense2.units: {values: []}\n",
     ["sweep.yaml:2:33", "expected a non-empty list of values, received []"]),
    ("min > max", "parameters:\n  optimizer.learning_rate: {distribution: uniform, min: 0.1, max: 0.01}\n",
     ["sweep.yaml:2:", "expected max >= min (0.1), received 0.01"]),
    ("log distribution from 0", "parameters:\n  optimizer.learning_rate: {distribution: log_uniform, min: 0, max: 0.1}\n",
     ["expected a number > 0 for a log distribution, received 0"]),
    ("unknown distribution", "parameters:\n  optimizer.learning_rate: {distribution: loguniform, min: 0.001, max: 0.1}\n",
     ["sweep.yaml:2:43: optimizer.learning_rate", "expected one of uniform, log_uniform, int_uniform, log_int_uniform, received 'loguniform'"]),
    ("integer distribution of floats", "parameters:\n  layers.dense2.units: {distribution: int_uniform, min: 1.5, max: 4}\n",
     ["sweep.yaml:2:", "expected an integer, received 1.5"]),
    ("continuous distribution in a grid", "method: grid\nparameters:\n  optimizer.learning_rate: {distribution: uniform, min: 0.001, max: 0.1}\n",
     ["sweep.yaml:3:", "expected `values` or an integer range for a grid sweep"]),
    ("unknown parameter key", "parameters:\n  optimizer.learning_rate: {value: [0.1]}\n",
     ["sweep.yaml:2:", "unknown key 'value'", "did you mean 'values'"]),
    ("unknown method", "method: bayes\nparameters:\n" + LR, ["sweep.yaml:1:9", "expected one of grid, random, tpe, received 'bayes'"]),
    ("unknown metric", "metric: {name: val_acc}\nparameters:\n" + LR,
     ["sweep.yaml:1:16", "expected a value the spec logs each epoch", "received 'val_acc'", "did you mean 'val_mae'"]),
    ("unknown goal", "metric: {name: val_loss, goal: min}\nparameters:\n" + LR, ["sweep.yaml:1:32", "expected one of minimize, maximize"]),
    ("trials of 0", "trials: 0\nparameters:\n" + LR, ["sweep.yaml:1:9", "expected a positive integer, received 0"]),
    ("unknown sweep key", "trails: 5\nparameters:\n" + LR, ["sweep.yaml:1:1", "unknown key 'trails'", "did you mean 'trials'"]),
    ("unknown pruner", "early_terminate: {type: asha}\nparameters:\n" + LR, ["sweep.yaml:1:25", "expected one of median, hyperband"]),
    ("a pruner option of the other pruner", "early_terminate: {type: median, min_epochs: 2}\nparameters:\n" + LR,
     ["sweep.yaml:1:", "expected a key of the median pruner", "'min_epochs'"]),
    ("no parameters", "method: random\n", ["sweep.yaml", "expected a mapping of spec key paths"]),
    ("not a mapping", "- optimizer.learning_rate\n", ["sweep.yaml", "expected a mapping of sweep keys"]),
    ("not YAML", "parameters: {a: [\n", ["sweep.yaml:"]),
]


@pytest.mark.parametrize("sweep, needles", [row[1:] for row in BAD_SWEEPS], ids=[row[0] for row in BAD_SWEEPS])
def test_a_bad_sweep_file_exits_2_before_any_trial(tmp_path, sweep, needles):
    write_project(tmp_path)
    (tmp_path / "sweep.yaml").write_text(sweep)
    result = run("sweep", "spec.yaml", "sweep.yaml", cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stderr.startswith("Error (sweep error)")
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    assert not Path(tmp_path / "runs").exists()  # no study, no trial


def test_the_table_covers_every_check_of_the_sweep_file():
    """Each key of the sweep file and of a parameter has a row (a new key needs one too)."""
    from nnctl.sweep.plan import DISTRIBUTIONS, METHODS, PARAMETER_KEYS, SWEEP_KEYS

    text = "".join(row[1] for row in BAD_SWEEPS)
    for key in (*SWEEP_KEYS, *PARAMETER_KEYS):
        if key not in ("seed", "heartbeat_seconds"):  # integers checked as `trials` is
            assert key in text, key
    for name in (*DISTRIBUTIONS[:3], "median", "grid"):
        assert name in text, name
    assert METHODS == ("grid", "random", "tpe")  # a new method needs its own rows

"""The benchmark measures what it claims: nnctl's trainer in bench/run.py (the compiled step and
the flat Adam, as `nnctl train` runs them) ends on the same weights and loss as the hand-written
NumPy reference in bench/references.py, from the same data, initial weights and batch order, on
the benchmark's workloads and on the scaling table's MLPs (bench/scaling.py); and the "nnctl train"
row runs the real command on files and reads its speed from wall times.

float64 is the proof (1e-9, as `references.py --check` holds the references to each other);
float32 two_tower has no kinks and agrees to 1e-5. No timing is asserted.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import references  # noqa: E402
import run  # noqa: E402


SCALED = references.scaled_mlp(48, 16, 5)  # the scaling table's MLP family: 784-16-16-16-16-10
TOLERANCE = {**references.CHECK_TOLERANCE, ("float64", SCALED): (1e-9, 1e-9)}


@pytest.mark.parametrize("workload,dtype", [("mlp", "float64"), ("two_tower", "float64"), ("two_tower", "float32"), (SCALED, "float64")])
def test_nnctl_trainer_agrees_with_hand_numpy(workload, dtype):
    # 2000 samples: the last batch is partial for every batch size here (128, 32 and 48).
    x32, y32, init32, perms = references.make_workload(workload, 2000, 2, seed=0)
    x, y, init = references.cast_workload(x32, y32, init32, np.dtype(dtype))
    weights_tol, loss_tol = TOLERANCE[(dtype, workload)]
    nnctl = run.train_nnctl(workload, x, y, init, perms)
    reference = references.train_numpy(workload, x, y, init, perms)

    assert nnctl["weights"].keys() == reference["weights"].keys()
    assert all(w.dtype == np.dtype(dtype) for w in nnctl["weights"].values())
    assert references.max_relative_error(nnctl["weights"], reference["weights"]) <= weights_tol
    assert references.max_relative_error(nnctl["weights"], init) > 1e-3  # it trained
    assert abs(nnctl["final_loss"] - reference["final_loss"]) <= loss_tol * abs(reference["final_loss"])


def test_scaled_mlp_has_the_sizes_its_name_says():
    workload = references.WORKLOADS[references.scaled_mlp(64, 32, 3)]
    assert workload.layers == (("dense", 784, 32), ("dense_1", 32, 32), ("dense_2", 32, 10))
    assert workload.batch_size == 64 and workload.loss == "sparse_xent"
    with pytest.raises(KeyError):
        references.WORKLOADS["mlp-b64-wide"]


def test_scaling_points_cover_each_sweep_from_the_base():
    import scaling

    points = list(scaling.points(quick=False))
    for sweep, values in scaling.SWEEPS.items():
        sizes = [size for name, size in points if name == sweep]
        assert [size[sweep] for size in sizes] == list(values)
        assert all(size[other] == scaling.BASE[other] for size in sizes for other in scaling.BASE if other != sweep)
    assert scaling.samples_for(4096, 256, 4, quick=True) == 8 * 4096  # at least 8 batches


def test_nnctl_train_row_runs_the_command_on_files():
    result = run.nnctl_train_worker("two_tower", 640, extra_epochs=1, repeats=1)
    seconds = result["process_seconds"]
    assert set(seconds) == {"2 epochs", "3 epochs"} and all(s > 0 for s in seconds.values())
    assert result["seconds"] == pytest.approx(seconds["3 epochs"] - seconds["2 epochs"])
    assert result["samples_per_s"] == pytest.approx(640 / result["seconds"])
    assert result["reported_samples_per_s"] > 0
    assert 0 < result["final_loss"] < 10  # the first epoch of y = x @ teacher + 0.3 + noise, from init

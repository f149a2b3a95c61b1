"""The benchmark measures what it claims: nnctl's trainer in bench/run.py (the compiled step and
the flat Adam, as `nnctl train` runs them) ends on the same weights and loss as the hand-written
NumPy reference in bench/references.py, from the same data, initial weights and batch order.

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


@pytest.mark.parametrize("workload,dtype", [("mlp", "float64"), ("two_tower", "float64"), ("two_tower", "float32")])
def test_nnctl_trainer_agrees_with_hand_numpy(workload, dtype):
    # 2000 samples: the last batch is partial for both batch sizes (128 and 32).
    x32, y32, init32, perms = references.make_workload(workload, 2000, 2, seed=0)
    x, y, init = references.cast_workload(x32, y32, init32, np.dtype(dtype))
    weights_tol, loss_tol = references.CHECK_TOLERANCE[(dtype, workload)]
    nnctl = run.train_nnctl(workload, x, y, init, perms)
    reference = references.train_numpy(workload, x, y, init, perms)

    assert nnctl["weights"].keys() == reference["weights"].keys()
    assert all(w.dtype == np.dtype(dtype) for w in nnctl["weights"].values())
    assert references.max_relative_error(nnctl["weights"], reference["weights"]) <= weights_tol
    assert references.max_relative_error(nnctl["weights"], init) > 1e-3  # it trained
    assert abs(nnctl["final_loss"] - reference["final_loss"]) <= loss_tol * abs(reference["final_loss"])

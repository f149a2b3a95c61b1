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


def test_nnctl_trainer_agrees_with_torch_on_the_batchnorm_mlp():
    """mlp_bn's two trainers (nnctl's step, torch eager with Keras' batch-normalization conventions
    converted) train the same thing. Not compared: the biases that feed a batch normalization
    (their gradient is zero but for rounding, so Adam walks both at random) and moving_variance
    (torch's running variance is the unbiased one; training never reads it)."""
    pytest.importorskip("torch")
    x32, y32, init32, perms = references.make_workload("mlp_bn", 2000, 2, seed=0)
    x, y, init = references.cast_workload(x32, y32, init32, np.dtype("float64"))
    nnctl = run.train_nnctl("mlp_bn", x, y, init, perms)
    torch = references.train_torch("mlp_bn", x, y, init, perms)
    feeding = {f"{name}/bias" for name in references.WORKLOADS["mlp_bn"].batchnorm}
    compared = [k for k in init if k not in feeding and not k.endswith("/moving_variance")]
    assert nnctl["weights"].keys() == torch["weights"].keys() == init.keys()
    assert len(compared) == len(init) - 4
    assert references.max_relative_error({k: nnctl["weights"][k] for k in compared}, {k: torch["weights"][k] for k in compared}) <= 1e-9
    assert references.max_relative_error(nnctl["weights"], init) > 1e-3  # it trained
    assert abs(nnctl["final_loss"] - torch["final_loss"]) <= 1e-9 * torch["final_loss"]


def test_the_batchnorm_row_is_nnctl_against_torch(monkeypatch, capsys):
    """The report's plumbing, workers faked: mlp_bn has nnctl's rows, torch's and the GEMM bound,
    numpy and jax skipped with the reason, and the ratios printed."""
    def fake_worker(impl, workload, n, epochs, repeats):
        speed = {"nnctl_train": 900.0, "nnctl_step": 1000.0, "torch": 500.0}.get(impl, 2000.0)
        return {"seconds": n / speed, "samples_per_s": speed, "steps_per_s": speed / 128, "final_loss": 1.0,
                "peak_rss_mb": 1.0, "reported_samples_per_s": speed}

    monkeypatch.setattr(run, "run_worker", fake_worker)
    monkeypatch.setattr(run, "available", lambda impl: None)
    monkeypatch.setattr(run, "startup", lambda: {"import_numpy_s": 0.1, "nnctl_summary_s": 0.1, "ratio": 1.0})
    report = run.benchmark(quick=True, repeats=1, rounds=1, with_memory=False)
    rows = report["workloads"]["mlp_bn"]["results"]
    assert rows["numpy"] == rows["jax"] == {"skipped": "no batch-normalization reference"}
    assert {impl for impl, row in rows.items() if "samples_per_s" in row} == {"nnctl_train", "nnctl_step", "torch", "gemm"}
    assert all("samples_per_s" in row for row in report["workloads"]["mlp"]["results"].values())
    run.print_report(report)
    out = capsys.readouterr().out
    assert "mlp_bn: 15,000 samples" in out and "nnctl step / torch eager: 2.00x" in out and "no batch-normalization reference" in out


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


@pytest.mark.parametrize("workload", ["two_tower", "mlp_bn"])
def test_nnctl_train_row_runs_the_command_on_files(workload):
    result = run.nnctl_train_worker(workload, 640, extra_epochs=1, repeats=1)
    seconds = result["process_seconds"]
    assert set(seconds) == {"2 epochs", "3 epochs"} and all(s > 0 for s in seconds.values())
    assert result["seconds"] == pytest.approx(seconds["3 epochs"] - seconds["2 epochs"])
    assert result["samples_per_s"] == pytest.approx(640 / result["seconds"])
    assert result["reported_samples_per_s"] > 0
    assert 0 < result["final_loss"] < 10  # the first epoch from init (two_tower: y = x @ teacher + 0.3 + noise)

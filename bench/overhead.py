"""What nnctl's training loop adds over its compiled step, in one process (the profile behind
bench/run.py's "nnctl train / nnctl step" ratio).

    python bench/overhead.py [--n 30000] [--rounds 7]

On the benchmark's MLP (784-256-128-64-10, batch 128, float32, Adam) it times, interleaved over
rounds (medians kept): one epoch of the bare loop (batches, `Session.gradients`, the optimizer's
step), one epoch of `nnctl.train.fit.fit` with the CLI's progress writing to a pipe, and each thing
`fit` does per step besides those: the finite check, the loss sums, the progress callback, the
stop poll, and the batch gather the bare loop does too. Per-epoch work outside `fit` (the
checkpoint write, at most every 2 s) is timed too: bench/run.py's whole-process wall times count
it. PYTHONPATH picks the nnctl it measures, so one script profiles a checkout before and after.
"""
from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import references  # noqa: E402
import run  # noqa: E402


def _per_call_us(function, calls):
    start = time.perf_counter()
    for i in range(calls):
        function(i)
    return (time.perf_counter() - start) / calls * 1e6


def profile(n: int, rounds: int) -> dict:
    import yaml
    from rich.console import Console

    from nnctl.cli.report import LiveProgress
    from nnctl.core.backend import get_backend
    from nnctl.data.dataset import Dataset
    from nnctl.model.graph import ForwardContext
    from nnctl.spec.load import load_spec
    from nnctl.train import fit as fit_module
    from nnctl.train.checkpoint import save_checkpoint
    from nnctl.train.fit import TrainState
    from nnctl.train.session import Session, Totals

    wl = references.WORKLOADS["mlp"]
    x, y, init, _ = references.make_workload("mlp", n, 1, seed=0)
    folder = Path(tempfile.mkdtemp())
    spec_dict = run._spec_for(wl, wl.lr, wl.batch_size)
    spec_dict["train"].update(epochs=1, shuffle=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec_dict))
    spec = load_spec(folder / "spec.yaml")
    session = Session(spec, get_backend("numpy"), weights=init)
    dataset = Dataset(Path("memory"), {"x": x}, {session.heads[0].name: y}, np.arange(n))
    params = session.params
    order = np.random.default_rng(0).permutation(n)
    batches = session.batches(dataset, wl.batch_size)
    steps = len(batches)

    def bare_epoch():
        optimizer, ctx = session.make_optimizer(), ForwardContext(session.backend, training=True)
        start = time.perf_counter()
        for inputs, targets, size in batches(order):
            session.gradients(inputs, targets, size, ctx)
            optimizer.step(params.flat, params.grad_flat)
        return time.perf_counter() - start

    def fit_epoch():
        progress = LiveProgress(Console(file=io.StringIO(), force_terminal=False))
        start = time.perf_counter()
        fit_module.fit(session, dataset, progress=progress)
        return time.perf_counter() - start

    # The per-step pieces, on one real batch and gradient.
    ctx = ForwardContext(session.backend, training=True)
    inputs, targets, size = next(iter(batches(order)))
    loss, outputs, penalty, own = session.gradients(inputs, targets, size, ctx)
    totals = Totals(session, penalty=bool(session.regularized))
    progress = LiveProgress(Console(file=io.StringIO(), force_terminal=False))
    progress.on_train_begin(1, steps, n)
    finite = getattr(fit_module, "all_finite", None)
    pieces = {
        "finite check": (lambda i: math.isfinite(loss) and finite(params.grad_flat)) if finite else
                        (lambda i: math.isfinite(loss) and math.isfinite(params.grad_flat.sum())),
        "loss sums (Totals.add)": lambda i: totals.add(loss, outputs, targets, size, penalty, own),
        "progress.on_step (pipe)": lambda i: progress.on_step(1, i + 1, totals.read),
        "batch gather": None,  # timed below, over the epoch's own batches
        "optimizer step": lambda i: optimizer.step(params.flat, params.grad_flat),
        "compiled step (forward + backward)": lambda i: session.gradients(inputs, targets, size, ctx),
    }
    optimizer = session.make_optimizer()
    state = TrainState(epoch=2, history=[], optimizer=optimizer.state_dict())
    times = {"bare epoch s": [], "fit epoch s": [], "checkpoint write ms": [], **{k: [] for k in pieces}}
    for _ in range(rounds):
        times["bare epoch s"].append(bare_epoch())
        times["fit epoch s"].append(fit_epoch())
        for name, function in pieces.items():
            if function is None:
                gather = iter(batches(order))
                times[name].append(_per_call_us(lambda i: next(gather), steps - 1))
            else:
                times[name].append(_per_call_us(function, 200))
        start = time.perf_counter()
        save_checkpoint(folder / "checkpoint.npz", spec, params.to_host(), state)
        times["checkpoint write ms"].append((time.perf_counter() - start) * 1000)
    medians = {k: statistics.median(v) for k, v in times.items()}
    medians["fit / bare"] = medians["bare epoch s"] / medians["fit epoch s"]
    medians["steps per epoch"] = steps
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    result = profile(args.n, args.rounds)
    bare_step_us = result["bare epoch s"] / result["steps per epoch"] * 1e6
    fit_step_us = result["fit epoch s"] / result["steps per epoch"] * 1e6
    print(f"MLP, {args.n:,} samples, batch 128, medians of {args.rounds} rounds")
    print(f"  bare loop  {bare_step_us:8.1f} us/step")
    print(f"  fit        {fit_step_us:8.1f} us/step   (bare / fit {result['fit / bare']:.3f})")
    for name in ("compiled step (forward + backward)", "optimizer step", "batch gather", "finite check",
                 "loss sums (Totals.add)", "progress.on_step (pipe)"):
        print(f"  {name:<36} {result[name]:8.1f} us")
    print(f"  checkpoint write (per write, at most every 2 s) {result['checkpoint write ms']:.1f} ms")


if __name__ == "__main__":
    main()

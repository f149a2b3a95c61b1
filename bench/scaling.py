"""How cost grows: samples/s and fraction of the GEMM bound over batch size, width and depth.

    python bench/scaling.py            # every point, nnctl (its compiled step), torch and JAX, 3 rounds
    python bench/scaling.py --quick    # the end points of each sweep, less data, one round
    python bench/scaling.py --json
    python bench/scaling.py --threads 1   # every implementation on one thread (see bench/run.py)

Each sweep varies one size of an MLP (784 inputs, depth - 1 relu layers of `width` units, 10
logits; references.scaled_mlp) around a base of batch 128, width 256, depth 4, float32, Adam. Every
point trains every implementation for one epoch on the same data from the same weights, each in a
subprocess of its own (bench/run.py's drivers), interleaved over rounds (the median kept), with enough samples for about FLOPS_PER_POINT
multiply-adds of training. nnctl's row is the bare compiled step ("nnctl step" in bench/run.py;
`nnctl train` adds under 5 % to it there). The GEMM bound is only the matrix products of the same
steps on NumPy's BLAS (references.train_gemm_bound). Ratios are only meaningful within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import references  # noqa: E402
import run  # noqa: E402

BASE = {"batch": 128, "width": 256, "depth": 4}
SWEEPS = {"batch": (32, 128, 512, 4096), "width": (64, 256, 1024, 4096), "depth": (2, 4, 8, 16, 32)}
IMPLEMENTATIONS = ("nnctl_step", "torch", "jax", "gemm")
FLOPS_PER_POINT = {False: 30e9, True: 5e9}  # multiply-adds x 2 of one point's epoch


def samples_for(batch: int, width: int, depth: int, quick: bool) -> int:
    """Whole batches for about FLOPS_PER_POINT of training (forward + two backward products), at least 8."""
    name = references.scaled_mlp(batch, width, depth)
    per_sample = 6 * sum(fan_in * fan_out for _, fan_in, fan_out in references.WORKLOADS[name].layers)
    batches = max(8, round(FLOPS_PER_POINT[quick] / per_sample / batch))
    return batches * batch


def worker(impl: str, name: str, n: int) -> dict:
    x, y, init, perms = references.make_workload(name, n, 1, seed=0)
    result = run.TRAINERS[impl](name, x, y, init, perms)
    return {k: result[k] for k in ("seconds", "samples_per_s", "final_loss")}


def points(quick: bool):
    """(sweep, batch, width, depth) of every point, the base once per sweep."""
    for sweep, values in SWEEPS.items():
        for value in (values[0], values[-1]) if quick else values:
            yield sweep, {**BASE, sweep: value}


def _run_worker(impl, name, n) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", impl, name, str(n)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.splitlines()[-1])


def scaling(quick: bool, rounds: int = 1) -> dict:
    """Every point's implementations, interleaved over `rounds` (each keeps its median round)."""
    missing = {impl: run.available(impl) for impl in IMPLEMENTATIONS}
    rows = []
    for sweep, size in points(quick):
        name = references.scaled_mlp(size["batch"], size["width"], size["depth"])
        n = samples_for(size["batch"], size["width"], size["depth"], quick)
        row = {"sweep": sweep, **size, "n": n, "results": {}}
        runs = {impl: [] for impl in IMPLEMENTATIONS if not missing[impl]}
        for _ in range(rounds):
            for impl in runs:
                runs[impl].append(_run_worker(impl, name, n))
        for impl in IMPLEMENTATIONS:
            if missing[impl]:
                row["results"][impl] = {"skipped": missing[impl]}
                continue
            failed = [r for r in runs[impl] if "error" in r]
            by_time = sorted(runs[impl], key=lambda r: r["seconds"]) if not failed else failed
            row["results"][impl] = by_time[len(by_time) // 2]
        rows.append(row)
    return {"machine": run.machine(), "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "rounds": rounds, "rows": rows}


def print_scaling(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"samples/s (fraction of the GEMM bound): MLP 784-(width x depth-1)-10, float32, Adam, median of {report['rounds']} rounds; "
                        f"{report['machine']}, compute threads: {report['threads']}",
                  title_justify="left")
    for column in ("sweep", "batch", "width", "depth", *(run.NAMES.get(i, i) for i in IMPLEMENTATIONS[:-1]), "GEMM bound"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        gemm = row["results"]["gemm"].get("samples_per_s")
        cells = []
        for impl in IMPLEMENTATIONS:
            result = row["results"][impl]
            speed = result.get("samples_per_s")
            if speed is None:
                cells.append(result.get("skipped") or result.get("error"))
            elif impl == "gemm":
                cells.append(f"{speed:,.0f}")
            else:
                cells.append(f"{speed:,.0f} ({speed / gemm:.2f})" if gemm else f"{speed:,.0f}")
        table.add_row(row["sweep"], str(row["batch"]), str(row["width"]), str(row["depth"]), *cells)
    Console(width=140).print(table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="end points only, less data")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, help="compute threads of every implementation (default: each library's own)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point (the median is kept)")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "WORKLOAD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, name, n = args.worker
        print(json.dumps(worker(impl, name, int(n))))
        return
    if args.threads:
        run.limit_threads(args.threads)
    report = scaling(args.quick, 1 if args.quick else args.rounds)
    print(json.dumps(report, indent=2)) if args.json else print_scaling(report)


if __name__ == "__main__":
    main()

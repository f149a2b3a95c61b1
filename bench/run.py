"""nnctl's benchmark: training throughput against reference frameworks, in one run.

    python bench/run.py                 # both workloads, every framework that is installed
    python bench/run.py --quick         # a smaller, faster run
    python bench/run.py --memory        # also: peak RSS training on a 2 GB .npy data set
    python bench/run.py --json          # the same numbers for scripts
    python bench/run.py --threads 1     # every implementation on one thread (a shared, busy machine)
    python bench/run.py --write-mnist-like   # data/mnist_like.npz for specs/mnist_mlp.yaml

nnctl's headline row, "nnctl train", is the command as a user runs it: `python -m nnctl train` in
a subprocess on a spec file and an .npz data file on disk, its default progress going to a pipe
(not a terminal), checkpoints and history on, from the workload's initial weights (--init). Its
speed comes from whole-process wall times: (N + 2 epochs) minus (2 epochs), so start-up, reading
the data and the first and last epochs' checkpoint writes cancel (`nnctl_train_worker`). The
"nnctl step" row is the bare compiled step and optimizer through a Session, as the references are
driven, for diagnosis; their ratio is what the training loop adds.

Workloads: the 784-256-128-64-10 relu MLP (mlp), a tiny two-tower regression (two_tower) and an
MLP with batch normalization, 784-256-BN-relu-128-BN-relu-10 (mlp_bn: Keras' momentum 0.99 and
epsilon 1e-3, torch's BatchNorm1d with momentum 0.01 and eps 1e-3), which only torch eager and the
GEMM bound train besides nnctl (there is no NumPy or JAX batch-normalization reference).

The other implementations train the same network on the same data, from the same initial
weights, in the same batch order (`references.make_workload`), under one timing driver
(`references._train`: warm-up on a throwaway model, then the timed epochs); `nnctl train` shuffles
with its own seed, the same arithmetic in another order. Each implementation runs in a subprocess
of its own, so peak RSS is its own too. Final training losses must agree: exactly
(to float32 rounding) for two_tower, within a few percent for the float32 MLP, whose relu
boundaries flip under different summation orders over hundreds of Adam steps (in float64 the
references agree to 1e-9: `python bench/references.py --check`). A loss outside that means a
broken benchmark, not a fast one. Ratios are only meaningful within one run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import references  # noqa: E402  (bench/ is a folder of scripts, not a package)

SIZES = {"mlp": (60000, 1), "two_tower": (96000, 1), "mlp_bn": (60000, 1)}
QUICK_SIZES = {"mlp": (15000, 1), "two_tower": (32000, 1), "mlp_bn": (15000, 1)}
IMPLEMENTATIONS = ("nnctl_train", "nnctl_step", "numpy", "torch", "jax", "gemm")
# Epochs `nnctl train` runs beyond the 2 whose whole-process time is subtracted (quick: fewer).
TRAIN_EXTRA_EPOCHS = {False: 3, True: 2}


# --- nnctl as a reference-driver trainer -------------------------------------------------------
def _spec_for(workload, lr, batch_size, dtype="float32") -> dict:
    if workload.loss == "sparse_xent":  # a dense-relu chain with logits (references._chain_graph)
        layers = []
        for name, _, fan_out in workload.layers:
            if name in workload.batchnorm:  # dense, then batch normalization, then relu: Keras' usual order
                layers += [{"name": name, "type": "dense", "units": fan_out},
                           {"name": f"{name}_bn", "type": "batch_normalization", "momentum": references.BN_MOMENTUM,
                            "epsilon": references.BN_EPSILON},
                           {"name": f"{name}_relu", "type": "relu"}]
            else:
                layers.append({"name": name, "type": "dense", "units": fan_out, "activation": "relu"})
        del layers[-1]["activation"]
        loss = {"type": "sparse_categorical_crossentropy", "from_logits": True}
    else:
        layers = [{"name": "dense1", "type": "dense", "units": 1, "from": "x"},
                  {"name": "dense2", "type": "dense", "units": 2, "from": "x"},
                  {"name": "concat", "type": "concat", "from": ["dense1", "dense2"]},
                  {"name": "dense3", "type": "dense", "units": 1, "from": "concat"}]
        loss = "mse"
    return {"name": f"bench_{workload.name}", "dtype": dtype, "inputs": {"x": [workload.n_features]},
            "layers": layers, "loss": loss, "optimizer": {"type": "adam", "learning_rate": lr},
            "train": {"batch_size": batch_size}}


class NnctlTrainer:
    """nnctl behind the references' trainer interface: step(idx) -> loss, sync(), weights()."""

    def __init__(self, wl, x, y, init, lr, batch_size):
        import yaml

        from nnctl.core.backend import get_backend
        from nnctl.data.dataset import Dataset
        from nnctl.model.graph import ForwardContext
        from nnctl.spec.load import load_spec
        from nnctl.train.session import Session

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "spec.yaml"
            path.write_text(yaml.safe_dump(_spec_for(wl, lr, batch_size, x.dtype.name)))
            self.session = Session(load_spec(path), get_backend(os.environ.get("NNCTL_BENCH_BACKEND", "numpy")), weights=init)
        self.dataset = Dataset(Path("memory"), {"x": x}, {self.session.heads[0].name: y}, np.arange(len(x)))
        self.batches = self.session.batches(self.dataset, batch_size)
        self.optimizer = self.session.make_optimizer()
        self.ctx = ForwardContext(self.session.backend, training=True)

    def step(self, idx):
        params = self.session.params
        for inputs, targets, size in self.batches(idx):
            loss = self.session.gradients(inputs, targets, size, self.ctx)[0]
            self.optimizer.step(params.flat, params.grad_flat)
        return loss

    def sync(self):
        self.session.backend.scalar(self.session.params.flat[:1].sum())

    def weights(self):
        return self.session.params.to_host()


def train_nnctl(workload, x, y, init, perms, batch_size=None, lr=None, repeats=1):
    return references._train(NnctlTrainer, workload, x, y, init, perms, batch_size, lr, repeats)


TRAINERS = {"nnctl_step": train_nnctl, "numpy": references.train_numpy, "torch": references.train_torch,
            "jax": references.train_jax, "gemm": references.train_gemm_bound}


# --- nnctl train as a user runs it ---------------------------------------------------------------
def nnctl_train_worker(workload: str, n: int, extra_epochs: int, repeats: int) -> dict:
    """`nnctl train` on files: per-epoch speed from (extra + 2 epochs) minus (2 epochs) of whole-process
    wall time, each the fastest of `repeats` runs; plus what nnctl itself reported (its history's
    median epoch `samples_per_second`). The loss is the first epoch's, comparable with the others'
    single epoch from the same weights (in another batch order)."""
    import yaml

    from nnctl.io.weights import save_weights

    wl = references.WORKLOADS[workload]
    x, y, init, _ = references.make_workload(workload, n, 1, seed=0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("NNCTL_BENCH_TMP")) as folder:
        folder = Path(folder)
        np.savez(folder / "data.npz", x=x, y=y)
        save_weights(folder / "init.npz", init)
        spec = _spec_for(wl, wl.lr, wl.batch_size)
        spec["data"] = {"path": "data.npz", "inputs": {"x": "x"}, "targets": "y"}
        spec["train"]["shuffle"] = True
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached

        def wall(epochs):
            command = [sys.executable, "-m", "nnctl", "train", "spec.yaml", "--init", "init.npz",
                       "--epochs", str(epochs), "--restart"]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"nnctl train exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
            return seconds

        wall(1)  # bytecode cached, data file in the page cache
        short, long = [], []
        for _ in range(repeats):  # interleaved, so a slow spell of the machine hits both
            short.append(wall(2))
            long.append(wall(2 + extra_epochs))
        history = list(csv.DictReader((folder / "runs" / spec["name"] / "history.csv").open()))
    seconds_per_epoch = (min(long) - min(short)) / extra_epochs
    steps = -(-n // wl.batch_size)
    reported = [float(row["samples_per_second"]) for row in history]
    return {"seconds": seconds_per_epoch, "samples_per_s": n / seconds_per_epoch, "steps_per_s": steps / seconds_per_epoch,
            "final_loss": float(history[0]["loss"]), "reported_samples_per_s": statistics.median(reported),
            "process_seconds": {"2 epochs": min(short), f"{2 + extra_epochs} epochs": min(long)},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


# --- one implementation in a subprocess ---------------------------------------------------------
def worker(impl: str, workload: str, n: int, epochs: int, repeats: int) -> dict:
    x, y, init, perms = references.make_workload(workload, n, epochs, seed=0)
    result = TRAINERS[impl](workload, x, y, init, perms, repeats=repeats)
    result.pop("weights", None)
    if impl == "nnctl_step":
        from nnctl.core.loops import pool_threads

        result["pool_threads"] = pool_threads()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_worker(impl, workload, n, epochs, repeats):
    """`impl` in a subprocess of its own; for nnctl_train, `epochs` are the extra epochs timed."""
    command = [sys.executable, __file__, "--worker", impl, "--workload", workload, "--n", str(n),
               "--epochs", str(epochs), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def limit_threads(threads: int) -> None:
    """Every worker started from now on uses at most `threads` compute threads: OpenBLAS, MKL and
    OpenMP (NumPy, torch) and XLA (JAX). On a machine whose cores other processes also use, BLAS
    threads that wait for each other lose whole scheduler slices (a 2-thread OpenBLAS step was 30x
    slower than a 1-thread one under a load of 14 on 2 cores), so ratios mean little without this.
    The workers are also held to `threads` CPUs (where the system can): XLA's runtime keeps threads
    of its own beyond the flags (JAX used 1.25 CPUs a second under them alone), and on the CPUs
    alike every implementation gets the same machine."""
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = str(threads)
    if hasattr(os, "sched_setaffinity"):  # children inherit it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
        f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}", f"intra_op_parallelism_threads={threads}"]))


def available(impl: str) -> str | None:
    """None if `impl` can run here, else why not."""
    module = {"torch": "torch", "jax": "jax"}.get(impl)
    if module is None:
        return None
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return None if probe.returncode == 0 else f"{module} is not installed"


# --- start-up time --------------------------------------------------------------------------------
def startup(runs: int = 15) -> dict:
    """Median wall time of `nnctl summary specs/two_tower.yaml` and of `python -c "import numpy"`."""
    spec = HERE.parent / "specs" / "two_tower.yaml"
    commands = {"import numpy": [sys.executable, "-c", "import numpy"],
                "nnctl summary": [sys.executable, "-m", "nnctl", "summary", str(spec)]}
    # Bytecode caches written, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (as on
    # some machines) an edited checkout would recompile its modules on every run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for command in commands.values():
        subprocess.run(command, capture_output=True, check=True, env=env)
    times = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True, env=env)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"import_numpy_s": medians["import numpy"], "nnctl_summary_s": medians["nnctl summary"],
            "ratio": medians["nnctl summary"] / medians["import numpy"]}


# --- memory on a data set larger than the target ----------------------------------------------------
def memory(gigabytes: float = 2.0) -> dict:
    """Peak RSS of `nnctl train` (one epoch, MLP) on a float32 .npy file of `gigabytes`."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("NNCTL_BENCH_TMP")) as folder:
        folder = Path(folder)
        rows = int(gigabytes * 2**30 / (785 * 4))
        # Written by a child: a child's peak RSS counts its parent's at fork, so this process
        # must never map the file itself.
        subprocess.run([sys.executable, __file__, "--make-npy", str(folder / "big.npy"), str(rows)], check=True)
        spec = _spec_for(references.WORKLOADS["mlp"], 1e-3, 512)
        spec["data"] = {"path": "big.npy", "inputs": {"x": "0:784"}, "targets": "784"}
        spec["train"]["epochs"] = 1
        import yaml

        (folder / "big.yaml").write_text(yaml.safe_dump(spec))
        command = [sys.executable, "-c",
                   "import resource, sys; from nnctl.cli.entry import main; sys.argv = ['nnctl', '-q', 'train', 'big.yaml', '--json'];\n"
                   "try:\n    main()\nfinally:\n    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK")]
        return {"file_gb": (folder / "big.npy").stat().st_size / 2**30 if (folder / "big.npy").exists() else gigabytes,
                "rows": rows, "peak_rss_mb": int(peak[-1].split()[1]) / 1024 if peak else None,
                "seconds": seconds, "exit_code": done.returncode}


def make_npy(path: str, rows: int) -> None:
    """A float32 (rows, 785) file: 784 uniform features and a teacher's class label."""
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 785))
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((784, 10)).astype(np.float32)
    for start in range(0, rows, 50000):
        x = rng.random((min(50000, rows - start), 784), dtype=np.float32)
        data[start:start + len(x), :784] = x
        data[start:start + len(x), 784] = (x @ teacher).argmax(axis=1)
    data.flush()


# --- the report -------------------------------------------------------------------------------------
def benchmark(quick: bool, repeats: int, rounds: int, with_memory: bool, only=IMPLEMENTATIONS) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    from nnctl.core.loops import built

    report = {"machine": machine(), "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "numpy": np.__version__, "rounds": rounds,
              "nnctl_adam": "one compiled loop" if built else "NumPy passes (nnctl.core._loops not built)", "workloads": {}}
    missing = {impl: available(impl) if impl in only else "not asked for (--only)" for impl in IMPLEMENTATIONS}
    for workload, (n, epochs) in sizes.items():
        rows = {impl: {"skipped": why} for impl in IMPLEMENTATIONS
                if (why := missing[impl] or references.unsupported(impl, workload))}
        runs = {impl: [] for impl in IMPLEMENTATIONS}
        # Rounds interleave the implementations, so a slow spell of a shared machine hits all of
        # them alike; each implementation's row is its median round (by time).
        for _ in range(rounds):
            for impl in IMPLEMENTATIONS:
                if impl in rows and "skipped" in rows[impl]:
                    continue
                timed = TRAIN_EXTRA_EPOCHS[quick] if impl == "nnctl_train" else epochs
                result = run_worker(impl, workload, n, timed, repeats)
                if "error" in result:
                    rows[impl] = result
                else:
                    runs[impl].append(result)
        for impl, results in runs.items():
            if results and impl not in rows:
                median = statistics.median_high(r["seconds"] for r in results)
                rows[impl] = {**next(r for r in results if r["seconds"] == median),
                              "rounds_seconds": [r["seconds"] for r in results]}
        report["workloads"][workload] = {"n": n, "epochs": epochs, "results": {impl: rows[impl] for impl in IMPLEMENTATIONS}}
    report["startup"] = startup()
    if with_memory:
        report["memory"] = memory()
    return report


def machine() -> str:
    """The CPU's model name and count, as /proc/cpuinfo gives them (the count alone elsewhere)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]}, {os.cpu_count()} CPUs" if names else f"{os.cpu_count()} CPUs"


NAMES = {"nnctl_train": "nnctl train", "nnctl_step": "nnctl step"}


def _ratio(a, b):
    return a / b if a and b else float("nan")


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    for workload, entry in report["workloads"].items():
        rows = entry["results"]
        nnctl = rows.get("nnctl_train", {})
        gemm = rows.get("gemm", {})
        unit = "steps/s" if workload == "two_tower" else "samples/s"
        key = "steps_per_s" if workload == "two_tower" else "samples_per_s"
        table = Table(title=f"{workload}: {entry['n']:,} samples x {entry['epochs']} epoch(s), float32, median of {report['rounds']} rounds", title_justify="left")
        # How far the rounds lie apart: on a shared machine a slow spell shows here, not in the median.
        for column in ("implementation", unit, "nnctl / this", "of GEMM bound", "max/min round", "peak RSS MB", "final loss"):
            table.add_column(column, justify="left" if column == "implementation" else "right")
        for impl, result in rows.items():
            if "skipped" in result or "error" in result:
                table.add_row(NAMES.get(impl, impl), result.get("skipped") or result.get("error"), "", "", "", "", "")
                continue
            speed = result[key]
            table.add_row(NAMES.get(impl, impl), f"{speed:,.0f}", f"{_ratio(nnctl.get(key), speed):.2f}x",
                          f"{_ratio(result['samples_per_s'], gemm.get('samples_per_s')):.2f}",
                          f"{max(result['rounds_seconds']) / min(result['rounds_seconds']):.2f}", f"{result['peak_rss_mb']:.0f}",
                          "" if result["final_loss"] != result["final_loss"] else f"{result['final_loss']:.6f}")
        console.print(table)
        step, torch = rows.get("nnctl_step", {}), rows.get("torch", {})
        if key in nnctl and key in step:
            console.print(f"nnctl train / nnctl step: {nnctl[key] / step[key]:.2f} (target >= 0.95); nnctl train's own "
                          f"samples_per_second (training steps only): {nnctl['reported_samples_per_s']:,.0f}")
        if key in step and key in torch:
            console.print(f"nnctl step / torch eager: {step[key] / torch[key]:.2f}x")
    pools = {result["pool_threads"] for entry in report["workloads"].values() for result in entry["results"].values() if "pool_threads" in result}
    pool = f"; threads OpenBLAS and nnctl's loops share: {', '.join(map(str, sorted(pools)))}" if pools else ""
    console.print(f"machine: {report['machine']}, compute threads: {report['threads']}; nnctl's Adam update: {report['nnctl_adam']}{pool}")
    s = report["startup"]
    console.print(f"start-up: nnctl summary {s['nnctl_summary_s'] * 1000:.0f} ms, python -c 'import numpy' "
                  f"{s['import_numpy_s'] * 1000:.0f} ms: ratio {s['ratio']:.2f} (target <= 1.2)")
    if "memory" in report:
        m = report["memory"]
        console.print(f"memory: nnctl train on a {m['file_gb']:.2f} GB float32 .npy ({m['rows']:,} rows, 1 epoch): "
                      f"peak RSS {m['peak_rss_mb']:.0f} MB in {m['seconds']:.0f} s (target < 1024 MB; exit {m['exit_code']})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller data sets")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs in each worker (the fastest is kept; "
                        "for nnctl train: pairs of whole-process runs)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of workers (the median is kept)")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on a 2 GB .npy")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, help="compute threads of every implementation (default: each library's own)")
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=IMPLEMENTATIONS, help="run these implementations alone")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=tuple(references.WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--make-npy", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--write-mnist-like", action="store_true",
                        help="write the benchmark's MLP data set to data/mnist_like.npz (for specs/mnist_mlp.yaml)")
    args = parser.parse_args(argv)
    if args.write_mnist_like:
        x, y, _, _ = references.make_workload("mlp", SIZES["mlp"][0], 1, seed=0)
        np.savez(HERE.parent / "data" / "mnist_like.npz", x=x, y=y)
        print(f"wrote {HERE.parent / 'data' / 'mnist_like.npz'}: x {x.shape} float32, y {y.shape} int64")
        return
    if args.make_npy:
        make_npy(args.make_npy[0], int(args.make_npy[1]))
        return
    if args.worker == "nnctl_train":
        print(json.dumps(nnctl_train_worker(args.workload, args.n, args.epochs, args.repeats)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.workload, args.n, args.epochs, args.repeats)))
        return
    if args.threads:
        limit_threads(args.threads)
    report = benchmark(args.quick, args.repeats, args.rounds, args.memory, args.only)
    print(json.dumps(report, indent=2)) if args.json else print_report(report)


if __name__ == "__main__":
    main()

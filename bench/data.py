"""nnctl's data benchmark: reading table files and the data cache, as ratios measured in one run.

    python bench/data.py                # read speed and cache reuse on a 300,000 x 31 CSV (about 90 MB)
    python bench/data.py --large 2      # also: a 2 GB CSV, first and second load and one epoch, peak RSS
    python bench/data.py --json         # the same numbers for scripts

Targets (issue 12, point 5): nnctl reads a numeric CSV at >= 0.8x the speed of
`pyarrow.csv.read_csv` alone on the same file; a second run's data loading (from the cache) takes
under 10% of the first's; one epoch on a 2 GB CSV peaks under 1 GB of RSS. Every large-file step
runs in a subprocess of its own, so each peak RSS is that step's; the files live in a temporary
folder (NNCTL_BENCH_TMP to choose where) and are removed after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

COLUMNS = 31  # 30 features and a target, as in the 83 MB example
TARGETS = {"read_ratio": 0.8, "second_load_ratio": 0.10, "peak_rss_mb": 1024}


def make_csv(path: str, rows: int, seed: int = 0) -> None:
    """`rows` rows of 30 features of very different scales and a regression target, written by pyarrow."""
    import numpy
    import pyarrow
    import pyarrow.csv

    rng = numpy.random.default_rng(seed)
    scales = 10.0 ** rng.integers(-3, 4, size=COLUMNS - 1)
    names = [f"f{i}" for i in range(COLUMNS - 1)] + ["y"]
    with pyarrow.csv.CSVWriter(path, pyarrow.schema([(n, pyarrow.float64()) for n in names])) as writer:
        for start in range(0, rows, 100_000):
            x = rng.standard_normal((min(100_000, rows - start), COLUMNS - 1)) * scales
            y = (x / scales).sum(axis=1)
            writer.write_table(pyarrow.table({n: c for n, c in zip(names, [*x.T, y])}))


def _column_map():
    return {"x": [f"f{i}" for i in range(COLUMNS - 1)]}, ["y"]


def _best(functions: dict, repeats: int) -> dict:
    """The least seconds of each function over `repeats` rounds, taken in turn within each round:
    a busy machine slows both sides of a ratio alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def read_speed(folder: Path, rows: int, repeats: int) -> dict:
    """Best-of-`repeats` seconds: pyarrow alone, nnctl's model reader, and a load without and with the cache."""
    import pyarrow.csv

    from nnctl.data.dataset import load_dataset
    from nnctl.data.readers import read_csv

    path = folder / "numeric.csv"
    make_csv(str(path), rows)
    inputs, targets = _column_map()
    shapes = {"x": (COLUMNS - 1,)}
    best = _best({"arrow": lambda: pyarrow.csv.read_csv(str(path)), "nnctl": lambda: read_csv(path, inputs, targets)}, repeats)
    arrow, nnctl = best["arrow"], best["nnctl"]
    cache = folder / "cache"
    first, second = [], []
    for _ in range(repeats):
        for entry in cache.glob("*/*"):
            entry.unlink()
        start = time.perf_counter()
        load_dataset(path, inputs, targets, shapes, cache_folder=cache)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_dataset(path, inputs, targets, shapes, cache_folder=cache)
        second.append(time.perf_counter() - start)
    return {"file_mb": path.stat().st_size / 2**20, "rows": rows, "pyarrow_read_csv_s": arrow, "nnctl_read_csv_s": nnctl,
            "read_ratio": arrow / nnctl, "first_load_s": min(first), "second_load_s": min(second),
            "second_load_ratio": min(second) / min(first)}


def _child(code: str, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter; its JSON line on stdout, with its peak RSS and seconds."""
    wrapper = ("import json, resource, sys, time\nstart = time.perf_counter()\n" + code +
               "\nprint(json.dumps({'seconds': time.perf_counter() - start, "
               "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run([sys.executable, "-c", wrapper], cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"exit_code": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def large(folder: Path, gigabytes: float) -> dict:
    """A CSV of `gigabytes`: its first load (parsed, cache built), its second (from the cache), and one
    epoch of `nnctl train` on it, each in its own process."""
    path = folder / "big.csv"
    rows = int(gigabytes * 2**30 / 620)  # about 620 bytes a row
    subprocess.run([sys.executable, __file__, "--make-csv", str(path), str(rows)], check=True)
    load = ("from nnctl.data.dataset import load_dataset\n"
            f"d = load_dataset('big.csv', {{'x': [f'f{{i}}' for i in range({COLUMNS - 1})]}}, ['y'], {{'x': ({COLUMNS - 1},)}})\n"
            "assert not d.notes, d.notes")
    first = _child(load, folder)
    second = _child(load, folder)
    import yaml

    inputs, targets = _column_map()
    spec = {"name": "big", "seed": 0, "inputs": {"x": [COLUMNS - 1]},
            "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 1}],
            "loss": "mse", "optimizer": {"type": "adam", "learning_rate": 1e-3},
            "data": {"path": "big.csv", "inputs": inputs, "targets": targets},
            "train": {"epochs": 1, "batch_size": 1024}}
    (folder / "big.yaml").write_text(yaml.safe_dump(spec))
    train = _child("from nnctl.cli.commands import main\nsys.argv = ['nnctl', '-q', 'train', 'big.yaml', '--json']\n"
                   "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code", folder)
    return {"file_gb": path.stat().st_size / 2**30, "rows": rows, "first_load": first, "second_load": second,
            "second_load_ratio": second.get("seconds", 0) / first["seconds"] if "seconds" in first else None,
            "train_one_epoch": train}


def print_report(report: dict) -> None:
    read = report["read"]
    print(f"numeric CSV: {read['rows']:,} x {COLUMNS}, {read['file_mb']:.0f} MB")
    print(f"  pyarrow.csv.read_csv alone   {read['pyarrow_read_csv_s']:7.3f} s")
    print(f"  nnctl's reader (read_csv)    {read['nnctl_read_csv_s']:7.3f} s   speed ratio {read['read_ratio']:.2f}x "
          f"(target >= {TARGETS['read_ratio']}x)")
    print(f"  load, first (cache built)    {read['first_load_s']:7.3f} s")
    print(f"  load, second (from cache)    {read['second_load_s']:7.3f} s   ratio {read['second_load_ratio']:.3f} "
          f"(target < {TARGETS['second_load_ratio']})")
    big = report.get("large")
    if big:
        print(f"large CSV: {big['rows']:,} rows, {big['file_gb']:.2f} GB")
        for name in ("first_load", "second_load", "train_one_epoch"):
            step = big[name]
            if "seconds" in step:
                print(f"  {name:<16} {step['seconds']:8.1f} s   peak RSS {step['peak_rss_mb']:7.0f} MB (target < {TARGETS['peak_rss_mb']} MB)")
            else:
                print(f"  {name:<16} failed (exit {step['exit_code']}): {step['stderr']}")
        if big["second_load_ratio"] is not None:
            print(f"  second load / first load: {big['second_load_ratio']:.3f} (target < {TARGETS['second_load_ratio']})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the numeric CSV [300000]")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement; the best counts [5]")
    parser.add_argument("--large", type=float, metavar="GB", help="also measure a CSV of this many GB")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--make-csv", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_csv:
        make_csv(args.make_csv[0], int(args.make_csv[1]))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("NNCTL_BENCH_TMP")) as folder:
        report = {"read": read_speed(Path(folder), args.rows, args.repeats)}
        if args.large:
            report["large"] = large(Path(folder), args.large)
    report["targets"] = TARGETS
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)


if __name__ == "__main__":
    main()

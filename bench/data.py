"""nnctl's data benchmark: reading table files and the data cache, as ratios measured in one run.

    python bench/data.py                # read speed and cache reuse on a 300,000 x 31 CSV (about 90 MB),
                                        # and on a 300,000-row mixed CSV (text, numbers, missing cells)
    python bench/data.py --large 2      # also: a 2 GB CSV and the same rows as Parquet, first and second
                                        # load and one epoch, peak RSS
    python bench/data.py --json         # the same numbers for scripts

Targets (issue 12, point 5): nnctl reads a numeric CSV at >= 0.8x the speed of
`pyarrow.csv.read_csv` alone on the same file; a second run's data loading (from the cache) takes
under 10% of the first's, for numbers and for columns through preprocessing; one epoch on a 2 GB
CSV (and on its rows as a Parquet file) peaks under 1 GB of RSS; `predict` on raw rows reads them
in blocks, its peak RSS that of a block. Every large-file step runs in a subprocess of its own, so
each peak RSS is that step's; the files live in a temporary folder (NNCTL_BENCH_TMP to choose
where) and are removed after.
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
    """`rows` rows of 30 features of very different scales and a regression target, written by
    pyarrow as a CSV, or as Parquet (row groups of 100,000 rows) for a path ending in .parquet."""
    import numpy
    import pyarrow
    import pyarrow.csv
    import pyarrow.parquet

    rng = numpy.random.default_rng(seed)
    scales = 10.0 ** rng.integers(-3, 4, size=COLUMNS - 1)
    names = [f"f{i}" for i in range(COLUMNS - 1)] + ["y"]
    schema = pyarrow.schema([(n, pyarrow.float64()) for n in names])
    writer = pyarrow.parquet.ParquetWriter if path.endswith(".parquet") else pyarrow.csv.CSVWriter
    with writer(path, schema) as out:
        for start in range(0, rows, 100_000):
            x = rng.standard_normal((min(100_000, rows - start), COLUMNS - 1)) * scales
            y = (x / scales).sum(axis=1)
            out.write_table(pyarrow.table({n: c for n, c in zip(names, [*x.T, y])}))


MIXED_CITIES = 40


def make_mixed_csv(path: str, rows: int, seed: int = 0, unknown: bool = False) -> None:
    """`rows` rows of four text columns (40 cities, 3 plans, 60 devices in a Zipf mix, yes/no), four
    numbers of different scales and a three-class text target, 1 to 5% of each feature's cells
    missing; `unknown`: an unseen city too. About 75 bytes a row."""
    import numpy
    import pyarrow
    import pyarrow.csv

    rng = numpy.random.default_rng(seed)
    cities = numpy.array([f"city_{i:02d}" for i in range(MIXED_CITIES)] + (["Atlantis"] if unknown else []))

    def holes(values, share):
        values = values.astype(object)
        values[rng.random(len(values)) < share] = None
        return pyarrow.array(values.tolist(), pyarrow.string())

    def gaps(values, share):
        values[rng.random(len(values)) < share] = numpy.nan
        return pyarrow.array(values, from_pandas=True)

    plan = numpy.array(["basic", "plus", "pro"])[rng.integers(0, 3, rows)]
    age, visits, score = rng.integers(18, 90, rows).astype(float), rng.integers(0, 20, rows).astype(float), rng.standard_normal(rows)
    outcome = numpy.array(["cancelled", "renewed", "upgraded"])[(visits + (plan == "pro") * 5 + score * 3 > 12).astype(int) + (age > 60)]
    table = pyarrow.table({
        "city": holes(cities[rng.integers(0, len(cities), rows)], 0.03), "plan": holes(plan, 0.02),
        "device": holes(numpy.array([f"dev-{i:03d}" for i in range(60)])[rng.zipf(1.5, rows) % 60], 0.01),
        "member": holes(numpy.array(["no", "yes"])[rng.integers(0, 2, rows)], 0.05), "age": gaps(age, 0.04),
        "fee": gaps(numpy.round(rng.gamma(2.0, 400.0, rows), 2), 0.04), "visits": visits, "score": score, "outcome": outcome.tolist()})
    pyarrow.csv.write_csv(table, path)


def mixed_spec(cache) -> dict:
    """A classifier on make_mixed_csv's columns: numbers standardized and filled with the mean, the
    cities one-hot (declared), plans one-hot, devices as an index, members binary."""
    columns = {"city": {"type": "category", "missing": "most_frequent", "vocabulary": [f"city_{i:02d}" for i in range(MIXED_CITIES)]},
               "plan": {"type": "category", "missing": "most_frequent", "vocabulary": ["basic", "plus", "pro"]},
               "device": {"type": "category", "missing": "most_frequent", "encode": "index", "max_tokens": 100},
               "member": {"type": "binary", "missing": "most_frequent"}}
    return {"name": "mixed", "seed": 0, "inputs": {"x": "auto"},
            "layers": [{"type": "dense", "units": 32, "activation": "relu"}, {"type": "dense", "units": 3}],
            "loss": {"type": "sparse_categorical_crossentropy", "from_logits": True}, "optimizer": {"type": "adam", "learning_rate": 1e-3},
            "data": {"path": "mixed.csv", "inputs": {"x": list(columns) + ["age", "fee", "visits", "score"]}, "targets": "outcome",
                     "validation_split": 0.2, "cache": cache,
                     "preprocessing": {"type": "numeric", "normalize": "zscore", "missing": "mean"}, "columns": columns},
            "train": {"epochs": 1, "batch_size": 256}}


def mixed(folder: Path, rows: int, repeats: int) -> dict:
    """A mixed CSV through column preprocessing: the data loading of a training run (read, split,
    fit, transform) without the cache, first (cache built from nothing) and second (from it), best
    of `repeats`; then `nnctl predict` on `rows` new raw rows (an unseen city among them), its
    peak RSS without the cache, building it and reading it."""
    import shutil

    import yaml

    from nnctl.spec.load import load_spec
    from nnctl.train.session import open_session, training_sets

    make_mixed_csv(str(folder / "mixed.csv"), rows)
    make_mixed_csv(str(folder / "new.csv"), rows, seed=1, unknown=True)
    for name, cache in (("mixed.yaml", "cache"), ("plain.yaml", False)):
        (folder / name).write_text(yaml.safe_dump(mixed_spec(cache)))
    here = os.getcwd()
    os.chdir(folder)
    try:
        def load(name):
            session = open_session(load_spec(name))
            start = time.perf_counter()
            training_sets(session)
            return time.perf_counter() - start

        plain, first, second = [], [], []
        for _ in range(repeats):
            plain.append(load("plain.yaml"))
            shutil.rmtree("cache", ignore_errors=True)  # a first run: the file hashed, read and transformed
            first.append(load("mixed.yaml"))
            second.append(load("mixed.yaml"))
    finally:
        os.chdir(here)
    run = "from nnctl.cli.entry import main\nsys.argv = ['nnctl', '-q', {}]\ntry:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code"
    _child(run.format("'train', 'mixed.yaml'"), folder)
    predict = {}
    for step, spec in (("uncached", "plain.yaml"), ("cache_built", "mixed.yaml"), ("from_cache", "mixed.yaml")):
        predict[step] = _child(run.format(f"'predict', '{spec}', '--weights', 'runs/mixed/weights.npz', '--input', 'new.csv', "
                                          "'--output', 'predictions.csv'"), folder)
    return {"file_mb": (folder / "mixed.csv").stat().st_size / 2**20, "rows": rows, "uncached_load_s": min(plain),
            "first_load_s": min(first), "second_load_s": min(second), "second_load_ratio": min(second) / min(first), "predict": predict}


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
    best = _best({"arrow": lambda: pyarrow.csv.read_csv(str(path)), "nnctl": lambda: read_csv(path, inputs, {"y": targets})}, repeats)
    arrow, nnctl = best["arrow"], best["nnctl"]
    cache = folder / "cache"
    first, second = [], []
    for _ in range(repeats):
        for entry in cache.glob("*/*"):
            entry.unlink()
        start = time.perf_counter()
        load_dataset(path, inputs, {"y": targets}, shapes, cache_folder=cache)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_dataset(path, inputs, {"y": targets}, shapes, cache_folder=cache)
        second.append(time.perf_counter() - start)
    return {"file_mb": path.stat().st_size / 2**20, "rows": rows, "pyarrow_read_csv_s": arrow, "nnctl_read_csv_s": nnctl,
            "read_ratio": arrow / nnctl, "first_load_s": min(first), "second_load_s": min(second),
            "second_load_ratio": min(second) / min(first)}


def _child(code: str, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter; its JSON line on stdout, with its peak RSS and seconds.
    The peak is the interpreter's own (Linux's VmHWM): getrusage's ru_maxrss would count the memory
    of this process, which the child was forked from, too."""
    wrapper = ("import json, resource, sys, time\nstart = time.perf_counter()\n" + code +
               "\ntry:\n    peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024\n"
               "except (OSError, IndexError):\n    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
               "print(json.dumps({'seconds': time.perf_counter() - start, 'peak_rss_mb': peak}))")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run([sys.executable, "-c", wrapper], cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"exit_code": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def large(folder: Path, gigabytes: float) -> dict:
    """A CSV of `gigabytes`, and its rows as a Parquet file: for each, its first load (parsed, cache
    built), its second (from the cache), and one epoch of `nnctl train` on it, each in its own process."""
    import yaml

    rows = int(gigabytes * 2**30 / 620)  # about 620 bytes a CSV row
    inputs, targets = _column_map()
    report = {"rows": rows}
    for kind, name in (("csv", "big.csv"), ("parquet", "big.parquet")):
        path = folder / name
        subprocess.run([sys.executable, __file__, "--make-csv", str(path), str(rows)], check=True)
        load = ("from nnctl.data.dataset import load_dataset\n"
                f"d = load_dataset({name!r}, {{'x': [f'f{{i}}' for i in range({COLUMNS - 1})]}}, {{'y': ['y']}}, {{'x': ({COLUMNS - 1},)}})\n"
                "assert not d.notes, d.notes")
        first = _child(load, folder)
        second = _child(load, folder)
        spec = {"name": f"big_{kind}", "seed": 0, "inputs": {"x": [COLUMNS - 1]},
                "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 1}],
                "loss": "mse", "optimizer": {"type": "adam", "learning_rate": 1e-3},
                "data": {"path": name, "inputs": inputs, "targets": targets},
                "train": {"epochs": 1, "batch_size": 1024}}
        (folder / f"{kind}.yaml").write_text(yaml.safe_dump(spec))
        train = _child(f"from nnctl.cli.entry import main\nsys.argv = ['nnctl', '-q', 'train', '{kind}.yaml', '--json']\n"
                       "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code", folder)
        report[kind] = {"file_gb": path.stat().st_size / 2**30, "first_load": first, "second_load": second,
                        "second_load_ratio": second.get("seconds", 0) / first["seconds"] if "seconds" in first else None,
                        "train_one_epoch": train}
        path.unlink()  # the next file's room
    return report


def print_report(report: dict) -> None:
    read = report["read"]
    print(f"numeric CSV: {read['rows']:,} x {COLUMNS}, {read['file_mb']:.0f} MB")
    print(f"  pyarrow.csv.read_csv alone   {read['pyarrow_read_csv_s']:7.3f} s")
    print(f"  nnctl's reader (read_csv)    {read['nnctl_read_csv_s']:7.3f} s   speed ratio {read['read_ratio']:.2f}x "
          f"(target >= {TARGETS['read_ratio']}x)")
    print(f"  load, first (cache built)    {read['first_load_s']:7.3f} s")
    print(f"  load, second (from cache)    {read['second_load_s']:7.3f} s   ratio {read['second_load_ratio']:.3f} "
          f"(target < {TARGETS['second_load_ratio']})")
    mixed_ = report["mixed"]
    print(f"mixed CSV through preprocessing: {mixed_['rows']:,} rows, {mixed_['file_mb']:.0f} MB (4 text columns, 4 numbers, missing cells)")
    print(f"  load, no cache               {mixed_['uncached_load_s']:7.3f} s")
    print(f"  load, first (cache built)    {mixed_['first_load_s']:7.3f} s")
    print(f"  load, second (from cache)    {mixed_['second_load_s']:7.3f} s   ratio {mixed_['second_load_ratio']:.3f} "
          f"(target < {TARGETS['second_load_ratio']})")
    for step, result in mixed_["predict"].items():
        if "seconds" in result:
            print(f"  predict, {step:<19} {result['seconds']:7.3f} s   peak RSS {result['peak_rss_mb']:5.0f} MB")
        else:
            print(f"  predict, {step:<19} failed (exit {result['exit_code']}): {result['stderr']}")
    large_ = report.get("large")
    for kind, title in (("csv", "CSV"), ("parquet", "Parquet file")):
        big = large_ and large_[kind]
        if not big:
            continue
        print(f"large {title}: {large_['rows']:,} rows, {big['file_gb']:.2f} GB")
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
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the numeric and the mixed CSV [300000]")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement; the best counts [5]")
    parser.add_argument("--large", type=float, metavar="GB", help="also measure a CSV of this many GB, and its rows as Parquet")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--make-csv", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_csv:
        make_csv(args.make_csv[0], int(args.make_csv[1]))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("NNCTL_BENCH_TMP")) as folder:
        report = {"read": read_speed(Path(folder), args.rows, args.repeats), "mixed": mixed(Path(folder), args.rows, args.repeats)}
        if args.large:
            report["large"] = large(Path(folder), args.large)
    report["targets"] = TARGETS
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)


if __name__ == "__main__":
    main()

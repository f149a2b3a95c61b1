"""Inference throughput of an exported model: onnxruntime on the ONNX file against nnctl's predict.

    python bench/export.py                          # specs/digits.yaml at its initial weights
    python bench/export.py --weights runs/digits/weights.npz --json

Both run in this process on the same rows (every row of the spec's data file, tiled to --rows):
nnctl as `nnctl predict` runs it (Session.predict: the compiled forward in chunks of 1024, then the
probabilities; for a spec with column preprocessing, from the raw columns through it), onnxruntime
as a server would (one InferenceSession, one run per call). Rows per
second for one call of --rows rows and for --single calls of one row; the best of --repeats
rounds, the two taking turns within each round. Start-up and file reading are not timed. Ratios
are only meaningful within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nnctl.export.onnx_file import build, nnctl_outputs, sample_inputs  # noqa: E402
from nnctl.model.graph import Model  # noqa: E402
from nnctl.spec.load import load_spec  # noqa: E402
from nnctl.train.session import open_session  # noqa: E402


def best_rates(runs: dict, rows: int, repeats: int) -> dict:
    """Rows per second of each `runs[name]()` (each handles `rows` rows): the fastest of `repeats`
    rounds after one warm-up, the implementations taking turns within a round so that both see
    the same machine (a shared machine's load shifts from second to second)."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    rates = {name: rows / seconds for name, seconds in best.items()}
    return rates | {"ratio": rates["onnxruntime"] / rates["nnctl_predict"]}


def measure(spec_path: Path, weights: Path | None, rows: int, single: int, repeats: int) -> dict:
    import onnxruntime as ort

    spec = load_spec(spec_path)
    with tempfile.TemporaryDirectory() as folder:
        if weights is None:
            weights = Path(folder) / "initial.npz"
            np.savez(weights, **Model(spec).initial_weights(spec.seed))
        session = open_session(spec, weights)
    data = sample_inputs(session, 10**9)  # every row of the data file
    reps = -(-rows // len(next(iter(data.values()))))
    inputs = {name: np.ascontiguousarray(np.concatenate([a] * reps)[:rows]) for name, a in data.items()}
    exported = build(session)
    options = ort.SessionOptions()
    runner = ort.InferenceSession(exported.data, options, providers=["CPUExecutionProvider"])
    names = [port.name for port in exported.outputs]
    one_row = [{name: a[i:i + 1] for name, a in inputs.items()} for i in range(single)]
    results = {
        "spec": str(spec_path), "rows": rows, "single_rows": single, "threads": options.intra_op_num_threads or "default",
        "bytes": len(exported.data),
        "batch": best_rates({"nnctl_predict": lambda: nnctl_outputs(session, inputs),
                             "onnxruntime": lambda: runner.run(names, inputs)}, rows, repeats),
        "one_row": best_rates({"nnctl_predict": lambda: [nnctl_outputs(session, feed) for feed in one_row],
                               "onnxruntime": lambda: [runner.run(names, feed) for feed in one_row]}, single, repeats),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=HERE.parent / "specs" / "digits.yaml")
    parser.add_argument("--weights", type=Path, help="trained weights (default: the spec's initial weights)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows per batched run (the data file's rows, tiled)")
    parser.add_argument("--single", type=int, default=2000, help="rows run one at a time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.spec, args.weights, args.rows, args.single, args.repeats)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['spec']}: ONNX file {results['bytes']:,} bytes")
    for group, label in (("batch", f"batches of {results['rows']:,} rows"), ("one_row", "one row per call")):
        r = results[group]
        print(f"{label:>24}: onnxruntime {r['onnxruntime']:>12,.0f} rows/s · nnctl predict {r['nnctl_predict']:>12,.0f} rows/s · ratio {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()

"""`nnctl init` + `train` + `evaluate` on raw tables against scikit-learn, on the same split.

For each data set, one seeded 80/20 split is written as train.csv and held_out.csv; nnctl gets
`nnctl init train.csv --target T`, `nnctl train` and `nnctl evaluate --data held_out.csv` (or
`predict` for a regression's R^2) with no edits; scikit-learn gets its MLP in a Pipeline of
SimpleImputer, StandardScaler and OneHotEncoder(handle_unknown="ignore") with its defaults.

    python bench/tabular.py            # the table (a minute or two; needs scikit-learn and pandas)
    python bench/tabular.py --json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parent.parent


def _sklearn_tables():
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    for name, loader in (("breast_cancer", load_breast_cancer), ("wine", load_wine), ("diabetes", load_diabetes)):
        bunch = loader()
        columns = [c.replace(" ", "_") for c in bunch.feature_names]
        target = bunch.target.astype(int) if name != "diabetes" else bunch.target
        yield name, columns + ["target"], [list(map(float, row)) + [t] for row, t in zip(bunch.data, target)], "target"


def _shipped_tables():
    for name, target in (("customers", "outcome"), ("iris_names", "species")):
        with open(ROOT / "data" / f"{name}.csv", newline="", encoding="utf-8") as handle:
            header, *rows = list(csv.reader(handle))
        yield name, header, rows, target


def _write(path: Path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _nnctl(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "nnctl", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode not in (0,):
        raise RuntimeError(f"nnctl {' '.join(map(str, args))}: {result.stderr}")
    return json.loads(result.stdout) if "--json" in args else result.stdout


def _sklearn_score(header, train, held, target, regression):
    import pandas
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = lambda rows: pandas.DataFrame(rows, columns=header).replace("", numpy.nan)  # noqa: E731
    a, b = frame(train), frame(held)
    features = [c for c in header if c != target]
    numeric = [c for c in features if pandas.to_numeric(a[c], errors="coerce").notna().sum() == a[c].notna().sum()]
    for c in numeric:
        a[c], b[c] = pandas.to_numeric(a[c]), pandas.to_numeric(b[c])
    text = [c for c in features if c not in numeric]
    columns = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
                                 ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), text)])
    model = MLPRegressor(random_state=0, max_iter=500) if regression else MLPClassifier(random_state=0, max_iter=500)
    pipe = Pipeline([("columns", columns), ("mlp", model)])
    y_a, y_b = a[target], b[target]
    if regression:
        y_a, y_b = y_a.astype(float), y_b.astype(float)
    pipe.fit(a[features], y_a)
    return r2_score(y_b, pipe.predict(b[features])) if regression else float((pipe.predict(b[features]) == y_b).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    results = []
    for name, header, rows, target in [*_sklearn_tables(), *_shipped_tables()]:
        rng = numpy.random.default_rng(0)
        order = rng.permutation(len(rows))
        cut = int(len(rows) * 0.8)
        train, held = [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]
        regression = name == "diabetes"
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            _write(folder / "train.csv", header, train)
            _write(folder / "held_out.csv", header, held)
            _nnctl("-q", "init", "train.csv", "--target", target, "--out", "spec.yaml", cwd=folder)
            _nnctl("-q", "train", "spec.yaml", cwd=folder)
            if regression:
                inputs = folder / "inputs.csv"
                _write(inputs, [c for c in header if c != target], [row[:-1] for row in held])
                out = _nnctl("predict", "spec.yaml", "--weights", "runs/train/weights.npz", "--input", inputs, "--json", cwd=folder)
                y, p = numpy.array([float(r[-1]) for r in held]), numpy.array(out["outputs"])[:, 0]
                ours = 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()
            else:
                ours = _nnctl("evaluate", "spec.yaml", "--weights", "runs/train/weights.npz", "--data", "held_out.csv", "--json",
                              cwd=folder)["classification"]["accuracy"]
        theirs = _sklearn_score(header, train, held, target, regression)
        results.append({"data": name, "rows": len(rows), "score": "R^2" if regression else "accuracy",
                        "nnctl": float(ours), "sklearn": float(theirs), "gap": float(ours - theirs)})
        if not options.json:
            print(f"{name:15s} {len(rows):5d} rows  {results[-1]['score']:8s} nnctl {ours:.4f}  scikit-learn {theirs:.4f}  gap {ours - theirs:+.4f}", flush=True)
    if options.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

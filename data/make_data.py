#!/usr/bin/env python3
"""Regenerate the data files used by the example specs in ../specs/.

Usage (from any working directory):

    python data/make_data.py

Files are written next to this script. The synthetic files need only NumPy and
are fully deterministic: every file has its own fixed seed for
``numpy.random.default_rng`` and floats are written with ``repr`` (the shortest
string that round-trips to the same float64), so two runs give byte-identical
output. ``iris.csv`` and ``digits.csv`` are real datasets copied from
scikit-learn; they are committed, and are only rewritten when scikit-learn is
importable (it is not a dependency of nnctl).
"""

from __future__ import annotations

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# One fixed seed per synthetic file, so each file is independent of the others.
SEED_TWO_TOWER = 0
SEED_LINEAR = 1
SEED_PRODUCT = 2
SEED_CUSTOMERS = 3
SEED_CLICKS = 4

LINEAR_KERNEL = [[2.0], [-3.4], [0.5]]
LINEAR_BIAS = [4.2]


def _fmt(v) -> str:
    """Exact text for one value: text as it is, ints as ints, floats as repr (round-trips)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    if f == 0.0:
        f = 0.0  # no "-0.0"
    return repr(f)


def write_csv(name: str, header: list[str], rows) -> str:
    path = os.path.join(HERE, name)
    with open(path, "w", newline="\n", encoding="ascii") as fh:
        fh.write(",".join(header) + "\n")
        for row in rows:
            fh.write(",".join(_fmt(v) for v in row) + "\n")
    return path


def _round_sig(a: np.ndarray, digits: int) -> np.ndarray:
    return np.array([float(f"{v:.{digits}g}") for v in np.asarray(a).ravel()]).reshape(np.shape(a))


def make_two_tower() -> None:
    """Keras two-tower example: x (10, 2), y (10, 1), all standard normal."""
    rng = np.random.default_rng(SEED_TWO_TOWER)
    x = _round_sig(rng.standard_normal((10, 2)), 8)
    y = _round_sig(rng.standard_normal((10, 1)), 8)
    rows = np.hstack([x, y]).tolist()
    print("wrote", write_csv("two_tower.csv", ["x1", "x2", "y"], rows))


def make_linear() -> None:
    """y = x @ [2.0, -3.4, 0.5] + 4.2 exactly (no noise), x ~ N(0, 1)."""
    rng = np.random.default_rng(SEED_LINEAR)
    x = rng.standard_normal((1000, 3))
    y = x @ np.array(LINEAR_KERNEL) + np.array(LINEAR_BIAS)
    rows = np.hstack([x, y]).tolist()
    print("wrote", write_csv("linear.csv", ["x1", "x2", "x3", "y"], rows))
    path = os.path.join(HERE, "linear_true.json")
    with open(path, "w", newline="\n", encoding="ascii") as fh:
        json.dump({"kernel": LINEAR_KERNEL, "bias": LINEAR_BIAS}, fh)
        fh.write("\n")
    print("wrote", path)


def make_product() -> None:
    """y = x1 * x2 exactly, x ~ Uniform(-1, 1)."""
    rng = np.random.default_rng(SEED_PRODUCT)
    x = rng.uniform(-1.0, 1.0, size=(1000, 2))
    y = x[:, :1] * x[:, 1:]
    rows = np.hstack([x, y]).tolist()
    print("wrote", write_csv("product.csv", ["x1", "x2", "y"], rows))


def make_fnn_sigmoid() -> None:
    """The single worked-example sample: x = (1, 2), y = (0.3, 0.5, 0.2)."""
    rows = [[1, 2, 0.3, 0.5, 0.2]]
    print("wrote", write_csv("fnn_sigmoid.csv", ["x1", "x2", "y1", "y2", "y3"], rows))


def make_sklearn() -> None:
    try:
        from sklearn.datasets import load_digits, load_iris
    except ImportError:
        print("scikit-learn is not importable: skipped iris.csv and digits.csv "
              "(the committed copies are kept)")
        return

    iris = load_iris()
    header = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
    rows = [[float(v) for v in feats] + [int(t)] for feats, t in zip(iris.data, iris.target)]
    print("wrote", write_csv("iris.csv", header, rows))

    digits = load_digits()
    header = [f"p{i}" for i in range(64)] + ["label"]
    pixels = digits.data.astype(np.int64)
    assert np.array_equal(pixels, digits.data)
    rows = [[int(v) for v in px] + [int(t)] for px, t in zip(pixels, digits.target)]
    print("wrote", write_csv("digits.csv", header, rows))


def make_iris_names() -> None:
    """iris.csv with each species by its name, as a user's file would hold it."""
    names = ["setosa", "versicolor", "virginica"]
    with open(os.path.join(HERE, "iris.csv"), encoding="utf-8") as handle:
        header, *lines = handle.read().splitlines()
    rows = [line.split(",")[:-1] + [names[int(line.split(",")[-1])]] for line in lines]
    path = os.path.join(HERE, "iris_names.csv")
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    print("wrote", path)


def make_customers() -> None:
    """A raw table of the kind users have: text columns, numbers of very different scales, about
    5% of cells empty, and a text target (what each customer did at renewal time)."""
    rng = np.random.default_rng(SEED_CUSTOMERS)
    n = 600
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    fee = 12.0 + rng.gamma(2.0, 8.0, n) + np.where(plan == "plus", 23.0, np.where(plan == "pro", 108.0, 0.0))
    fee = np.round(fee, 2)
    tenure = rng.integers(0, 121, n)
    calls = rng.poisson(2.0, n)
    autopay = rng.choice(["yes", "no"], n, p=[0.6, 0.4])
    # Cancelled: many support calls, short tenure, no autopay; upgraded: long tenure on a small plan.
    cancel = 0.45 * calls - 0.02 * tenure + 0.8 * (autopay == "no") + 0.3 * (region == "south") + rng.normal(0, 0.5, n)
    upgrade = 0.025 * tenure - 1.2 * (plan == "pro") + 0.6 * (plan == "basic") - 0.2 * calls + rng.normal(0, 0.5, n)
    outcome = np.where(cancel > 1.0, "cancelled", np.where(upgrade > 1.6, "upgraded", "renewed"))
    columns = {"plan": plan, "region": region, "monthly_fee": fee, "tenure_months": tenure, "support_calls": calls, "autopay": autopay}
    header = list(columns) + ["outcome"]
    empty = rng.random((n, len(columns))) < 0.05
    rows = []
    for i in range(n):
        cells = ["" if empty[i, j] else _fmt(values[i]) if not isinstance(values[i], str) else str(values[i])
                 for j, values in enumerate(columns.values())]
        rows.append(cells + [str(outcome[i])])
    path = os.path.join(HERE, "customers.csv")
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in rows))
    print("wrote", path)


def make_clicks() -> None:
    """Synthetic recommender interactions whose structure is known: each user and item has a hidden
    3-d taste; a click is likelier the closer the tastes (cosine), and for popular items. User
    features (age, region) and item features (category, price) carry part of the taste."""
    rng = np.random.default_rng(SEED_CLICKS)
    users, items, n = 200, 100, 6000
    regions, categories = ["north", "south", "east", "west"], ["books", "games", "music", "tools", "garden"]
    user_region = rng.integers(0, len(regions), users)
    item_category = rng.integers(0, len(categories), items)
    region_taste, category_taste = rng.normal(size=(len(regions), 3)), rng.normal(size=(len(categories), 3))
    user_taste = region_taste[user_region] + 0.7 * rng.normal(size=(users, 3))
    item_taste = category_taste[item_category] + 0.7 * rng.normal(size=(items, 3))
    user_age = rng.integers(18, 75, users)
    item_price = np.round(rng.gamma(2.0, 15.0, items), 2)
    popularity = rng.normal(0, 0.6, items)
    u, i = rng.integers(0, users, n), rng.integers(0, items, n)
    cosine = (user_taste[u] * item_taste[i]).sum(1) / np.linalg.norm(user_taste[u], axis=1) / np.linalg.norm(item_taste[i], axis=1)
    click = rng.random(n) < 1 / (1 + np.exp(-(3.0 * cosine + popularity[i] - 1.0)))
    header = ["user_id", "user_age", "user_region", "item_id", "item_category", "item_price", "click"]
    rows = [[int(u[k]), int(user_age[u[k]]), regions[user_region[u[k]]], int(i[k]), categories[item_category[i[k]]],
             float(item_price[i[k]]), int(click[k])] for k in range(n)]
    print("wrote", write_csv("clicks.csv", header, rows))


def main() -> None:
    make_two_tower()
    make_linear()
    make_product()
    make_fnn_sigmoid()
    make_sklearn()
    make_iris_names()
    make_customers()
    make_clicks()


if __name__ == "__main__":
    main()

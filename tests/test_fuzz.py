"""Fuzzing: a mutated two-tower spec (and CSV) must never crash nnctl.

Hypothesis mutates the valid TWO_TOWER spec and its data at random: values replaced by wrong
types, keys deleted, unknown keys added, odd shapes, huge and negative numbers, unicode names,
lists and mappings nested where they do not belong, broken CSV cells and rows. `nnctl summary`
and `nnctl train --epochs 1` then run in-process on the result. Whatever the input, the command
must end with exit code 0 (it was still valid) or 2 (a user error, reported as such), never a
traceback or an "Internal error" (exit 1 is allowed only for a reported training divergence,
which a huge learning rate or initial weight legitimately causes).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SPECS, TWO_TOWER, TWO_TOWER_CSV, run

BASE_SPEC = yaml.safe_load(TWO_TOWER)
BASE_ROWS = [line.split(",") for line in TWO_TOWER_CSV.splitlines()]

# Fixed examples (derandomize): the same 1,000 every run, about 13 s of CPU (15 s on an idle 2-core machine).
FUZZ_SETTINGS = settings(
    deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMES = ["x", "y", "x1", "dense1", "dense2", "concat", "dense3", "dense", "add", "relu", "softmax", "adam",
         "mse", "sparse_categorical_crossentropy", "glorot_uniform", "constant", "type", "units", "from",
         "", " ", "dénsé", "层", "😀", "a/b", "null", "~", "-1", "1e308", "NaN"]
NUMBERS = [0, 1, 2, 3, -1, -4, 7, 10**30, -(10**30), 2**63, 2**64 + 1, 1e308, -1e308, 1e-320, 0.5, -0.0,
           1.5, float("inf"), float("-inf"), float("nan")]
# Values a spec could hold (registry names, small numbers): these keep more mutants valid, so
# that the data checks and a training step are reached, not only the spec checks.
PLAUSIBLE = ["dense", "concat", "add", "dropout", "relu", "tanh", "sigmoid", "softmax", "leaky_relu", "gelu",
             "mse", "mae", "huber", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
             "sgd", "adam", "adamw", "rmsprop", "adagrad", "accuracy", "zeros", "ones", "he_normal", "float64",
             "x", "dense1", "dense2", "concat", "dense3", "x1", "x2", "y", 0.001, 0.1, 0.9, True, False]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(min_value=-3, max_value=40),
    st.sampled_from(NAMES),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
)
wild = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(NAMES), children, max_size=3),
    ),
    max_leaves=6,
)
plausible = st.one_of(st.sampled_from(PLAUSIBLE), st.integers(min_value=1, max_value=5),
                      st.lists(st.sampled_from(["x", "dense1", "dense2", "concat", "x1", "x2", "y"]), min_size=1, max_size=3))
values = st.one_of(wild, plausible)


def _paths(node, prefix=()):
    """Every path to a value of the parsed spec (mapping keys and list indices)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _parent(doc, path):
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


def _apply(doc, path, op, value):
    """One mutation at `path` (a path into the current document)."""
    if not path:  # the root: replace it, or add a key
        if op == "replace":
            return value
        if isinstance(doc, dict):
            doc[str(value) if not isinstance(value, (dict, list)) else "unknown_key"] = value
        return doc
    parent, last = _parent(doc, path), path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "wrap_list":
        parent[last] = [parent[last]]
    elif op == "wrap_dict":
        parent[last] = {"type": parent[last]} if isinstance(value, bool) else {"value": parent[last]}
    elif op == "add_key":
        target = parent[last]
        if isinstance(target, dict):
            target[value if isinstance(value, str) else "unknwn"] = value
        elif isinstance(target, list):
            target.append(value)
        else:
            parent[last] = value
    return doc


@st.composite
def mutated_spec(draw, most=3):
    doc = copy.deepcopy(BASE_SPEC)
    for _ in range(draw(st.integers(min_value=1, max_value=most))):
        if not isinstance(doc, (dict, list)):
            break
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "wrap_list", "wrap_dict", "add_key"]))
        doc = _apply(doc, path, op, draw(values))
    return doc


@st.composite
def mutated_csv(draw):
    rows = [list(r) for r in BASE_ROWS]
    ops = draw(st.lists(st.sampled_from(["none", "cell", "header", "ragged", "truncate", "drop_column", "blank"]), min_size=1, max_size=2))
    for op in ops:
        if op == "cell" and len(rows) > 1 and rows[1:] and all(rows[1:]):
            r = draw(st.integers(min_value=1, max_value=len(rows) - 1))
            c = draw(st.integers(min_value=0, max_value=len(rows[r]) - 1)) if rows[r] else 0
            cell = draw(st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "", "abc", "1,5", '"', "0x10", "1_000", "∞", "٣"]),
                                  st.text(max_size=4)))
            if rows[r]:
                rows[r][c] = cell
        elif op == "header" and rows and rows[0]:
            c = draw(st.integers(min_value=0, max_value=len(rows[0]) - 1))
            rows[0][c] = draw(st.sampled_from(["x", "X1", "y ", "", "x1", "😀"]))
        elif op == "ragged" and len(rows) > 1:
            r = draw(st.integers(min_value=1, max_value=len(rows) - 1))
            rows[r] = rows[r][:-1] if draw(st.booleans()) else rows[r] + ["1"]
        elif op == "truncate":
            rows = rows[:draw(st.integers(min_value=0, max_value=3))]
        elif op == "drop_column" and rows and rows[0]:
            c = draw(st.integers(min_value=0, max_value=len(rows[0]) - 1))
            rows = [r[:c] + r[c + 1:] for r in rows]
        elif op == "blank":
            return draw(st.sampled_from(["", "\n", "\ufeffx1,x2,y\n1,2,3\n", "x1,x2,y\n\x00,1,2\n", b"x1,x2,y\n\xff\xfe,1,2\n"]))
    return "".join(",".join(r) + "\n" for r in rows)


def _check(result, command):
    output = result.output
    assert "Traceback" not in output, (command, output)
    assert "Internal error" not in output, (command, output)
    if result.exit_code == 1:  # only a reported divergence may exit 1
        assert "training diverged" in output, (command, output)
    else:
        assert result.exit_code in (0, 2), (command, result.exit_code, output)


def _run_both(folder: Path, spec_text: str, csv_text: str | bytes):
    (folder / "spec.yaml").write_text(spec_text, encoding="utf-8")
    if isinstance(csv_text, bytes):
        (folder / "data.csv").write_bytes(csv_text)
    else:
        (folder / "data.csv").write_text(csv_text, encoding="utf-8")
    summary = run("summary", "spec.yaml", cwd=folder)
    _check(summary, "summary")
    train = run("train", "spec.yaml", "--epochs", 1, cwd=folder)
    _check(train, "train")
    return summary.exit_code, train.exit_code


@settings(FUZZ_SETTINGS, max_examples=600)
@given(spec=mutated_spec())
def test_mutated_spec_never_crashes(spec):
    spec_text = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
    with tempfile.TemporaryDirectory() as folder:
        _run_both(Path(folder), spec_text, TWO_TOWER_CSV)


@settings(FUZZ_SETTINGS, max_examples=300)
@given(spec=st.one_of(st.just(BASE_SPEC), mutated_spec(most=1)), data=mutated_csv())
def test_mutated_data_never_crashes(spec, data):
    """Broken CSVs, under the valid spec or one changed once (a loss that wants other targets, ...)."""
    spec_text = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
    with tempfile.TemporaryDirectory() as folder:
        _run_both(Path(folder), spec_text, data)


# Raw-text mutations: what yaml.safe_dump would never write (tags, anchors, duplicates, broken syntax).
TEXT_EDITS = [
    ("seed: 0", "seed: !!python/object/apply:os.system ['true']"),
    ("seed: 0", "seed: !!python/name:os.system"),
    ("seed: 0", "seed: 0\nseed: 1"),
    ("train: {", "train: !!set {"),
    ("metrics: [mae]", "metrics: !!omap [a: 1]"),
    ("metrics: [mae]", "metrics: !!binary aGVsbG8="),
    ("seed: 0", "seed: 2001-12-14"),
    ("inputs:\n", "inputs: &a\n"),
    ("outputs: dense3", "outputs: *nope"),
    ("optimizer: {type: adam", "optimizer: {<<: {type: adam}"),
    ("layers:", "layers: ["),
    ("  - {name: dense1", "\t- {name: dense1"),
    ("x: [2]", "? [x]\n  : [2]"),
    ("name: two_tower", "name: \"\\ud800\""),
    ("seed: 0", "seed: &loop [*loop]"),
    ("seed: 0", "seed: 0\ndescription:\n" + "\n".join(["  l0: &l0 [a, a, a, a, a, a, a, a, a]"] + [
        f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 8)])),
    ("seed: 0", "seed: " + "[" * 100 + "]" * 100),
    ("units: 2", "units: 0x10"),
    ("units: 2", "units: 1e3"),
    ("units: 2", "units: 2.0"),
    ("learning_rate: 0.01", "learning_rate: 1e-2"),
]


@settings(FUZZ_SETTINGS, max_examples=100)
@given(edits=st.lists(st.sampled_from(TEXT_EDITS), min_size=1, max_size=3, unique=True))
def test_raw_yaml_edits_never_crash(edits):
    text = TWO_TOWER
    for old, new in edits:
        text = text.replace(old, new, 1)
    with tempfile.TemporaryDirectory() as folder:
        _run_both(Path(folder), text, TWO_TOWER_CSV)



# --- the spec reader's two parsers ----------------------------------------------------------------
# nnctl.spec.yamlmarks parses with libyaml and composes with PyYAML's Python composer; the positions
# and checks were written against the pure-Python parser. On every document both accept, the two
# must give the same nodes: kind, tag, value and position.
YAML_FORMS = [
    TWO_TOWER,
    TWO_TOWER.replace("\n", "\r\n"),
    "\ufeff" + TWO_TOWER,
    "# a comment\nname: x  # another\nnote: |\n  kept\n   as written\nfold: >\n  one\n  line\n",
    "a: &anchor {b: [1, 2.5, 1e-3, -.inf, .nan, 0x1f, 0o17, true, ~, '', \"\\u00e9\\t\"]}\nc: *anchor\n",
    "plain: a multi-line\n  plain scalar\nquoted: 'it''s'\nkey with spaces: \"x\"\n? explicit\n: value\n",
    "- [a, {b: c}]\n- - nested\n  - list\n-\n- ! 12\n- !!str 12\n- \"dénsé 层 😀\"\n",
    "---\nname: x\n...\n",
]


def _nodes(root):
    """(kind, tag, value, line, column) of every node, depth first."""
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        scalar = isinstance(node, yaml.ScalarNode)
        found.append((type(node).__name__, node.tag, node.value if scalar else None, node.start_mark.line, node.start_mark.column))
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in reversed(node.value) for part in reversed(pair))
        elif not scalar:
            stack.extend(reversed(node.value))
    return found


def _same_nodes(text):
    from nnctl.spec.yamlmarks import _FastLoader, _Loader

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml here: specs are read by the Python parser alone")
    assert _FastLoader is not _Loader
    assert _nodes(yaml.compose(text, Loader=_FastLoader)) == _nodes(yaml.compose(text, Loader=_Loader))


@pytest.mark.parametrize("text", YAML_FORMS + [path.read_text() for path in sorted(SPECS.glob("*.yaml"))])
def test_libyaml_reads_what_pyyaml_reads(text):
    _same_nodes(text)


@settings(FUZZ_SETTINGS, max_examples=200)
@given(document=st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=4),
       flow=st.sampled_from([False, True, None]), width=st.sampled_from([12, 80]))
def test_libyaml_reads_generated_documents_as_pyyaml_does(document, flow, width):
    _same_nodes(yaml.safe_dump(document, default_flow_style=flow, width=width, allow_unicode=True))


# --- mixed-type CSVs: text, missing values, quotes, delimiters ----------------------------------------
MIXED_CELLS = ["1", "-2.5", "1e3", " 3 ", "0x10", "inf", "nan", "1_0", "\u0663", "", "NA", "NaN", "null", "None", "n/a",
               "red", "Blue", "true", "False", "2020-01-01", '"a,b"', '"x\ny"', '"say ""hi"""', '" "', "é", "😀"]


@st.composite
def mixed_csv(draw):
    """(bytes, delimiter): a header x1,x2,y and rows of cells of mixed kinds, one kind per column mostly."""
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    column_pools = [draw(st.lists(st.sampled_from(MIXED_CELLS), min_size=1, max_size=4)) for _ in range(3)]
    rows = draw(st.integers(min_value=0, max_value=12))
    quote = '"' if draw(st.booleans()) else ""  # a header of quoted names, as R and pyarrow write it
    lines = [delimiter.join(f"{quote}{name}{quote}" for name in ["x1", "x2", "y"])]
    for _ in range(rows):
        cells = [draw(st.sampled_from(pool)) for pool in column_pools]
        if draw(st.integers(0, 9)) == 0:
            cells = cells[:draw(st.integers(0, 2))]  # a ragged or blank row
        lines.append(delimiter.join(cell.replace(",", delimiter) if not cell.startswith('"') else cell for cell in cells))
    text = newline.join(lines) + newline
    return (("\ufeff" if draw(st.booleans()) else "") + text).encode("utf-8"), delimiter


def _typed(path, delimiter):
    from nnctl.errors import DataError
    from nnctl.io.tables import read_table

    try:
        table = read_table(path, DataError, "a table", delimiter=delimiter)
    except DataError as exc:
        return str(exc)
    return {n: (c.kind, [repr(v) for v in c.values.tolist()], c.missing.tolist()) for n, c in table.columns.items()}


@settings(FUZZ_SETTINGS, max_examples=150)
@given(data=mixed_csv())
def test_mixed_type_csvs_read_the_same_by_pyarrow_and_csvtable(data):
    """pyarrow's typed columns are CsvTable's, cell for cell, or the same error; never a crash."""
    from nnctl.io import tables

    content, delimiter = data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        path.write_bytes(content)
        fast = _typed(path, delimiter)
        real = tables._arrow_csv_columns
        tables._arrow_csv_columns = lambda *a, **k: (_ for _ in ()).throw(tables.Fallback("CsvTable only"))
        try:
            slow = _typed(path, delimiter)
        finally:
            tables._arrow_csv_columns = real
        assert fast == slow


@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=mixed_csv())
def test_training_on_mixed_type_csvs_never_crashes(data):
    content, delimiter = data
    spec = TWO_TOWER.replace("  validation_split: 0.2", f"  validation_split: 0.2\n  delimiter: {delimiter!r}".replace("'\\t'", '"\\t"'))
    with tempfile.TemporaryDirectory() as folder:
        _run_both(Path(folder), spec, content)

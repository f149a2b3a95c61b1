"""`nnctl export`: a session's model as an ONNX file, checked and run by onnxruntime against nnctl.

The graph is written with onnx.helper from the lowering table (nnctl.export.lowering): one input
per model input, named as it and shaped (batch, *per-sample) with a symbolic batch dimension; per
model output, one named as `predict`'s columns are ("prob" for probabilities, else the output
layer's name; prefixed by the output's name when there are several), plus "class" (int64, or
"<output>_class") where `predict` shows the predicted class. Dropout is the identity.

A spec with column preprocessing (data.columns) takes the raw rows instead: one input per raw
column, named as the column and shaped (batch, 1): float64 for a numeric column (NaN where
missing), string for a category or binary one ("" where missing). The graph fills, normalizes
and encodes each column as nnctl does, puts each model input's columns side by side as
data.inputs lists them, and, for a text target, "class" is the class's text (column j of "prob"
is predict's prob_<class j>); a normalized regression target's values are in its own units.

Verification runs `onnx.checker.check_model(full_check=True)` and onnxruntime on up to 256 of the
spec's data rows, evenly spaced (seeded random inputs for a spec without data; raw rows, with
their missing cells, for column preprocessing), at batch 1 and at the whole sample, against
nnctl's own predictions. The file is written (atomically) only when it
verifies or verification is skipped: a failed check leaves the previous file as it was.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from nnctl import __version__
from nnctl.data import prepared
from nnctl.data.dataset import Dataset
from nnctl.data.preprocessing import Column, Numeric, keep_rows
from nnctl.diagnostics.gradcheck import random_batch
from nnctl.errors import MissingTool, Problem, UsageError
from nnctl.export.lowering import LOWERINGS, MIN_OPSET, ML_DOMAIN, ML_OPSET, Graph
from nnctl.io.atomic import atomic_write
from nnctl.io.tables import Table
from nnctl.train.session import class_names, fitted_preprocessing, load_spec_data, open_session, shown_output

DEFAULT_OPSET = 17
# (rtol, atol): a sample agrees when |onnxruntime - nnctl| <= atol + rtol * |nnctl|.
TOLERANCES = {"float32": (1e-4, 1e-5), "float64": (1e-9, 1e-9)}
VERIFY_ROWS = 256
# protobuf's limit on one message: a bigger model needs its weights in external data files.
MAX_BYTES = 2**31 - 1
_ELEMENT_TYPES = {"float32": "FLOAT", "float64": "DOUBLE", "int64": "INT64", "string": "STRING"}
EXACT = ("int64", "string")  # outputs compared for equality


def require(module: str):
    """`module` imported, or MissingTool naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingTool(f"nnctl export: expected {module} to be installed, received no module named {module!r}: "
                          "install the extra with pip install 'nnctl[onnx]'") from None


def max_opset() -> int:
    return require("onnx").defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    newest = max_opset()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset: expected an opset in [{MIN_OPSET}, {newest}] (onnxruntime runs {MIN_OPSET} and later; "
                         f"the installed onnx knows up to {newest}), received {opset}")


@dataclass(frozen=True)
class Port:
    """One input or output of the ONNX graph."""

    name: str
    dtype: str  # float32, float64, int64, string
    shape: list  # "batch" first

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass
class Exported:
    model: object  # onnx.ModelProto
    opset: int
    inputs: list[Port]
    outputs: list[Port]
    data: bytes = field(repr=False)  # the serialized model: what is checked, run and written


def build(session, opset: int = DEFAULT_OPSET) -> Exported:
    """The ONNX model of `session` (its weights as initializers); UsageError naming every layer that
    needs a newer opset than `opset`."""
    onnx = require("onnx")
    helper = onnx.helper
    spec, model = session.spec, session.model
    dtype = session.dtype
    g = Graph(helper, onnx.numpy_helper, dtype, opset)
    fitted = fitted_preprocessing(session)
    if fitted is None:
        inputs = [Port(name, dtype, ["batch", *shape]) for name, shape in model.input_shapes.items()]
        places = {name: ("inputs", name) for name in model.input_shapes}
    else:
        groups = prepared.input_groups(spec.data)
        places = {column: ("data", "inputs", group) for group, columns in groups.items() for column in columns}
        inputs = [Port(column, "float64" if isinstance(fitted[column], Numeric) else "string", ["batch", 1]) for column in places]
    outputs = []
    for head in session.heads:
        outputs.append(Port(head.shown, dtype, ["batch", *head.shape]))
        if head.targets.shows_classes:
            outputs.append(Port(head.class_column, "int64" if class_names(session, head) is None else "string", ["batch", *head.shape[:-1]]))
    clash = [port.name for port in inputs if port.name in {out.name for out in outputs}]
    if clash:
        raise UsageError(spec.problem(places[clash[0]], f"expected input names other than the exported outputs' "
                                      f"({', '.join(o.name for o in outputs)}), received input {clash[0]!r}", key=fitted is None))
    for port in inputs + outputs:  # their names are the file's interface: no internal tensor takes them
        g.name(port.name)

    weights = session.params.to_host()
    tensors = {port.name: port.name for port in inputs} if fitted is None else {}
    if fitted is not None:  # the model's inputs from the raw columns
        for group, columns in groups.items():
            g.where = ("data", "inputs", group), f"the columns of input {group!r}"
            parts = [LOWERINGS["column", type(fitted[c]).__name__.lower()](g, fitted[c], c, f"{group}/{c}") for c in columns]
            joined = parts[0] if len(parts) == 1 else g.op("Concat", parts, f"{group}/columns", axis=1)
            shape = model.input_shapes[group]
            tensors[group] = joined if len(shape) == 1 else g.reshape(joined, shape, group)
    for node in model.nodes:
        g.where = ("layers", node.index), f"{node.layer.type_name} layer {node.name!r}"
        own = {w.name: weights[f"{node.name}/{w.name}"] for w in node.layer.weights}
        tensors[node.name] = LOWERINGS["layer", node.layer.type_name](g, node.layer, [tensors[r] for r in node.inputs], own)
    for head, output in zip(session.heads, spec.outputs):
        _lower_output(g, session, head, output, tensors[head.name])
    _refuse_shortfalls(spec, g.shortfalls, opset)

    def info(port):
        return helper.make_tensor_value_info(port.name, getattr(onnx.TensorProto, _ELEMENT_TYPES[port.dtype]), port.shape)

    graph = helper.make_graph(g.nodes, spec.name, [info(p) for p in inputs], [info(p) for p in outputs], g.initializers)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(ML_DOMAIN, ML_OPSET)] if g.ml else [])
    # IR 4 at least: before it, every initializer had to be listed as a graph input too (opsets 7
    # and 8 alone would ask only IR 3), which would make the weights inputs a caller could override.
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="nnctl", producer_version=__version__,
                              ir_version=max(4, helper.find_min_ir_version_for(opsets)))
    proto.doc_string = f"{spec.name}, exported by nnctl {__version__}"  # no local paths in a file that ships
    size = proto.ByteSize()
    if size > MAX_BYTES:
        raise UsageError(Problem(f"expected a model that fits one ONNX file ({MAX_BYTES:,} bytes at most; weights in "
                                 f"external data files are not written), received {size:,} bytes", str(spec.file)))
    return Exported(proto, opset, inputs, outputs, proto.SerializeToString())


def _lower_output(g, session, head, output, tensor) -> None:
    """An output as `predict` shows it: its loss's shown values (probabilities for logits), in a
    normalized regression target's own units, and its class (by name for a text target)."""
    helper, rank = g.helper, len(head.shape) + 1
    g.where = (("loss", output.name) if len(session.heads) > 1 else ("loss",)), f"the {output.loss.name} output {head.name!r}"
    shown = LOWERINGS["output", output.loss.name](g, head.loss, tensor, rank)
    data = session.spec.data
    target = prepared.target_transform(session.preprocessing, data, head.name) if data is not None else None
    if isinstance(target, Numeric):  # Numeric.restore: values * scale + center, in the model's dtype
        scaled = g.op("Mul", [shown, g.constant(target.scale, f"{head.shown}/scale")], f"{head.shown}/scaled")
        shown = g.op("Add", [scaled, g.constant(target.center, f"{head.shown}/center")], f"{head.shown}/restored")
    g.nodes.append(helper.make_node("Identity", [shown], [head.shown], name=head.shown))
    if head.targets.shows_classes:
        names = class_names(session, head)
        # First index of the largest value, as NumPy's argmax (Loss.targets.predicted_classes).
        index = head.class_column if names is None else g.name(f"{head.class_column}/index")
        g.nodes.append(helper.make_node("ArgMax", [head.shown], [index], name=index, axis=rank - 1, keepdims=0))
        if names is not None:
            g.nodes.append(helper.make_node("Gather", [g.constant(names, f"{head.class_column}/names", str), index], [head.class_column],
                                            name=head.class_column, axis=0))


def _refuse_shortfalls(spec, shortfalls, opset):
    needs = {}  # what was lowered -> (path, the highest opset it needs, why)
    for (path, what), need, why in shortfalls:
        if what not in needs or need > needs[what][1]:
            needs[what] = (path, need, why)
    if needs:
        raise UsageError([spec.problem(path, f"--opset {opset}: expected an opset of at least {need} for {what} ({why}), received {opset}")
                          for what, (path, need, why) in needs.items()])


# --- verification ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sample_inputs(session, rows: int = VERIFY_ROWS) -> dict:
    """The ONNX feeds of up to `rows` of the spec's data rows, evenly spaced over the file (a file
    sorted by class gives every class; a file of one row gives it twice): host arrays in the
    session's dtype, or raw columns (`raw_feeds`) for column preprocessing; `rows` seeded random
    samples (gradcheck's) for a spec without data."""
    if session.spec.data is None:
        inputs, _ = random_batch(session, rows)
        return {name: array.astype(session.dtype) for name, array in inputs.items()}
    if session.spec.data.columns is not None:
        return _raw_sample(session, rows)
    dataset = load_spec_data(session, targets=False)
    picked = _spread(dataset.rows, rows)
    batch, _, _ = next(iter(session.batches(dataset.subset(picked), len(picked))(None)))
    return {name: numpy.array(session.backend.to_host(array)) for name, array in batch.items()}


def _spread(rows, count: int):
    if len(rows) > count:
        rows = rows[numpy.linspace(0, len(rows) - 1, count).round().astype(numpy.int64)]
    if len(rows) == 1:  # twice: the symbolic batch dimension is checked beyond 1 too
        rows = numpy.repeat(rows, 2)
    return rows


def _raw_sample(session, rows: int) -> dict:
    """Raw rows of the data file that nnctl predicts on (a row that `missing: drop` drops has no
    prediction to compare), missing cells and all."""
    spec, fitted = session.spec, fitted_preprocessing(session)
    raw = prepared.read_raw(spec.data.path, spec.data, targets=False)
    keep = keep_rows(raw, fitted, prepared.configs_of(spec.data, targets=False))
    return raw_feeds(raw, _spread(numpy.flatnonzero(keep), rows), fitted)


def raw_feeds(raw: dict, rows, fitted: dict) -> dict:
    """The ONNX feeds of `rows` of raw columns ({name: preprocessing.Column}) with `fitted`
    transforms: a numeric column's floats (NaN where missing), any other's text as nnctl reads it
    (numbers as tokens, "" where missing), each (rows, 1)."""
    feeds = {}
    for name, column in raw.items():
        if isinstance(fitted[name], Numeric):
            feeds[name] = column.values[rows].astype(numpy.float64)[:, None]
        else:
            feeds[name] = numpy.array(["" if t is None else t for t in column.tokens()[rows]], dtype=object)[:, None]
    return feeds


def nnctl_outputs(session, inputs: dict) -> list:
    """What `nnctl predict` gives for the feeds `inputs`, in the exported outputs' order: per output
    the shown values, and the classes (by name for a text target) where it shows them."""
    fitted = fitted_preprocessing(session)
    n = len(next(iter(inputs.values())))
    if fitted is None:
        dataset = Dataset(None, inputs, None, numpy.arange(n))
    else:
        # predict_file's path from the raw columns (read_raw's types: float64 with NaN, text with None)
        table = Table("the exported model's feeds", list(inputs), {}, n)
        raw = {name: Column(name, values[:, 0] if values.dtype.kind == "f" else numpy.array([None if t == "" else t for t in values[:, 0]], dtype=object), table)
               for name, values in inputs.items()}
        dataset = prepared.prepare(table.file, raw, fitted, session.spec.data, session.model.input_shapes, dtype=session.dtype, targets=False)[0]
    shown = [shown_output(session, head, *predicted) for head, predicted in zip(session.heads, session.predict(dataset))]
    return [part for values, classes in shown for part in ([values] if classes is None else [values, classes])]


def verify(session, exported: Exported, inputs: dict) -> list[OutputError]:
    """Check the model in full and compare onnxruntime with nnctl at batch 1 and at all of `inputs`."""
    onnx, ort = require("onnx"), require("onnxruntime")
    onnx.checker.check_model(exported.model, full_check=True)
    runner = ort.InferenceSession(exported.data, providers=["CPUExecutionProvider"])
    n = len(next(iter(inputs.values())))
    rtol, atol = TOLERANCES[session.dtype]
    worst = {port.name: [0.0, 0.0, True] for port in exported.outputs}
    for size in sorted({1, n}):
        feed = {name: array[:size] for name, array in inputs.items()}
        got = runner.run([port.name for port in exported.outputs], feed)
        for port, expected, actual in zip(exported.outputs, nnctl_outputs(session, feed), got):
            if port.dtype == "string":  # class names: 1 where any differs
                passed = numpy.array_equal(numpy.asarray(expected, dtype=object), numpy.asarray(actual, dtype=object))
                max_abs = max_rel = 0.0 if passed else 1.0
            else:
                exact = port.dtype in EXACT  # classes: equal or not
                max_abs, max_rel, passed = compare(expected, actual, 0.0 if exact else rtol, 0.0 if exact else atol)
            entry = worst[port.name]
            entry[0], entry[1], entry[2] = max(entry[0], max_abs), max(entry[1], max_rel), entry[2] and passed
    return [OutputError(port.name, *worst[port.name][:2], 0.0 if port.dtype in EXACT else rtol,
                        0.0 if port.dtype in EXACT else atol, worst[port.name][2]) for port in exported.outputs]


def compare(expected, actual, rtol: float, atol: float) -> tuple[float, float, bool]:
    """(max |actual - expected|, max of that over |expected|, whether every element is within
    atol + rtol * |expected|); a shape mismatch fails with infinite errors."""
    expected, actual = numpy.asarray(expected, dtype=numpy.float64), numpy.asarray(actual, dtype=numpy.float64)
    if expected.shape != actual.shape:
        return float("inf"), float("inf"), False
    difference = numpy.abs(actual - expected)
    relative = numpy.divide(difference, numpy.abs(expected), out=numpy.zeros_like(difference), where=(difference > 0) & (expected != 0))
    relative[(difference > 0) & (expected == 0)] = numpy.inf
    passed = bool(numpy.all(difference <= atol + rtol * numpy.abs(expected)))
    return float(difference.max(initial=0)), float(relative.max(initial=0)), passed


# --- the command ----------------------------------------------------------------------------------
def default_output(spec) -> Path:
    return Path("runs") / spec.name / "model.onnx"


def check_output(path: Path, explicit: bool) -> None:
    """Before any work: an .onnx path that can be written; a path given with --output must be in a
    folder that exists (the default runs/<name>/ is made)."""
    from nnctl.io.atomic import check_writable
    from nnctl.io.paths import check_suffix

    check_suffix(path, (".onnx",), "--output")
    if explicit and not path.parent.is_dir():
        received = "which is not a folder" if path.parent.exists() else "which does not exist"
        raise UsageError(Problem(f"--output: expected a path in an existing folder, received a path in {path.parent}, {received}", str(path)))
    check_writable(path)


@dataclass
class ExportResult:
    path: Path
    exported: Exported
    size: int
    rows: int
    errors: list[OutputError] | None  # None: not verified
    written: bool = False
    sample: str | None = None  # the data file the rows came from; None: seeded random inputs

    @property
    def passed(self) -> bool:
        return self.errors is None or all(e.passed for e in self.errors)

    def as_dict(self) -> dict:
        return {
            "path": str(self.path), "opset": self.exported.opset, "bytes": self.size, "verified": self.errors is not None,
            "passed": self.passed, "written": self.written, "rows": self.rows, "sample": self.sample,
            "inputs": [p.as_dict() for p in self.exported.inputs], "outputs": [p.as_dict() for p in self.exported.outputs],
            "errors": None if self.errors is None else [e.as_dict() for e in self.errors],
        }


def export_spec(spec, weights, output=None, opset: int = DEFAULT_OPSET, verify: bool = True) -> ExportResult:
    """`nnctl export`: every check before any work (the extras, the opset, the output path, which is
    none of the inputs), then `export` of `spec` with the weights file `weights`."""
    from nnctl.io.paths import refuse_inputs

    require("onnx")
    if verify:
        require("onnxruntime")
    check_opset(opset)
    path = Path(output) if output is not None else default_output(spec)
    refuse_inputs(path, "--output", {"the spec": spec.file, "the --weights file": weights})
    check_output(path, explicit=output is not None)
    return export(open_session(spec, weights), path, opset, verify_rows=VERIFY_ROWS if verify else None)


def export(session, path: Path, opset: int = DEFAULT_OPSET, verify_rows: int | None = VERIFY_ROWS) -> ExportResult:
    """Build, verify (unless `verify_rows` is None) and, when it verifies, write the ONNX file at `path`."""
    check_opset(opset)
    if verify_rows is not None:
        require("onnxruntime")
    exported = build(session, opset)
    errors, rows = None, 0
    if verify_rows is not None:
        inputs = sample_inputs(session, verify_rows)
        rows = len(next(iter(inputs.values())))
        errors = verify(session, exported, inputs)
    data = session.spec.data
    result = ExportResult(Path(path), exported, len(exported.data), rows, errors, sample=None if data is None else str(data.path))
    if result.passed:
        with atomic_write(path) as handle:
            handle.write(exported.data)
        result.written = True
    return result

"""Spec: a YAML file -> validated, fully resolved objects (every default filled in).

All problems in a spec are reported at once, each with FILE:LINE:COLUMN, the key path, what was
expected and what was received, and a "did you mean" for a near miss. Graph-level checks
(references, cycles, shapes) come next, in nnctl.model.graph.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import NamedTuple

from nnctl.core.backend import BACKENDS
from nnctl.data.column_options import COLUMN_OPTIONS
from nnctl.train.controls import EARLY_STOPPING, SCHEDULES, monitorable, monitors
from nnctl.train.heads import log_names
from nnctl.errors import Problem, SpecError, describe, did_you_mean
from nnctl.io.paths import open_regular
from nnctl.model.layers import LAYERS
from nnctl.train.losses import LOSSES
from nnctl.train.metrics import METRICS
from nnctl.train.optimizers import OPTIMIZERS
from nnctl.options import REQUIRED, Check, Choice, Invalid, Option, Section, Typed, boolean, integer, number, one_of, text
from nnctl.spec.yamlmarks import Marks, load_yaml, path_text

DTYPES = ("float32", "float64")
AUTO = "auto"  # an input's shape that follows from its columns' preprocessing
PREPROCESSING = Section(COLUMN_OPTIONS, "preprocessing")
MAX_NAME = 100
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def _is_run_name(value) -> bool:
    """A single, ordinary path component: the run folder runs/<name> stays inside runs/."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_NAME and value not in (".", "..")
            and not _UNSAFE_NAME.search(value))


RUN_NAME = Check(f"a name of 1 to {MAX_NAME} characters without '/', '\\', control characters, '.' or '..' (it names the run folder)",
                 _is_run_name, {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": "^[^/\\\\\\x00-\\x1f\\x7f]+$", "not": {"enum": [".", ".."]}})


def safe_name(stem: str) -> str:
    """A spec file's stem made a run name: unsafe characters become '_', at most MAX_NAME long."""
    name = _UNSAFE_NAME.sub("_", stem)[:MAX_NAME]
    return name if _is_run_name(name) else "model"
TOP_LEVEL_KEYS = (
    "name", "description", "seed", "dtype", "backend", "inputs", "layers", "outputs",
    "loss", "loss_weights", "metrics", "optimizer", "data", "train",
)
TRAIN_OPTIONS = {
    "epochs": Option(integer(1), 10, "passes over the training data"),
    "batch_size": Option(integer(1), 32, "samples per step"),
    "shuffle": Option(boolean, True, "reshuffle the training data every epoch"),
    "validation_freq": Option(integer(1), 1, "validate at the end of every N-th epoch (Keras' validation_freq)"),
    "early_stopping": Option(EARLY_STOPPING, None, "stop when a monitored value stops improving (null: off; true: the defaults)"),
    "lr_schedule": Option(Typed(lambda: SCHEDULES, "learning-rate schedule"), "constant", "the learning rate of each epoch"),
}
DATA_KEYS = ("path", "inputs", "targets", "validation_split", "validation", "test", "delimiter", "missing_values", "cache",
             "preprocessing", "columns")
MISSING_VALUES = ("", "NA", "NaN", "null", "None")  # nnctl.io.tables.MISSING_VALUES, without importing pyarrow's side
CACHE_FOLDER = "runs/.cache"  # nnctl.data.cache.DEFAULT_FOLDER


class LayerSpec(NamedTuple):
    name: str
    type: str
    inputs: list  # names of inputs or layers
    config: dict  # resolved options
    index: int  # position in `layers`, for error locations


class OutputSpec(NamedTuple):
    """One of the model's outputs: the layer, its loss, its weight in the total, its metrics."""

    name: str
    loss: Choice
    weight: float  # loss_weights
    metrics: list  # [Choice(metric name, options)]


class DataSpec(NamedTuple):
    path: Path
    inputs: dict  # input name -> list of CSV columns, or an array name for .npz
    targets: dict  # output name -> its list of CSV columns, or an array name
    validation_split: float = 0.0
    validation: Path | None = None
    test: Path | None = None  # evaluated once, after training
    delimiter: str = ","  # CSV field separator
    missing_values: tuple = MISSING_VALUES  # cells that are missing values (matched exactly)
    cache: Path | None = Path(CACHE_FOLDER)  # the data cache's folder (None: off)
    # Column preprocessing (nnctl.data.preprocessing): None when the spec declares none (the
    # columns are read as numbers, as they are); else the resolved options of every column read.
    columns: dict | None = None


class Spec(NamedTuple):
    file: Path
    name: str
    seed: int
    dtype: str
    backend: str
    inputs: dict  # name -> per-sample shape tuple
    layers: list
    outputs: list  # [OutputSpec], in the spec's order
    optimizer: Choice
    data: DataSpec | None
    train: dict
    marks: Marks = None
    description: str = ""

    def problem(self, path: tuple, message: str, key: bool = False) -> Problem:
        line, column = self.marks.at(path, key=key)
        return Problem(message, str(self.file), line, column, path_text(path) or None)

    def resolved(self) -> dict:
        """The spec as nnctl understands it, every default filled in (for `nnctl config`)."""
        def typed(choice):
            return {"type": choice.name, **choice.options}

        layers = []
        for layer in self.layers:
            config = {k: typed(v) if isinstance(v, Choice) else v for k, v in layer.config.items()}
            layers.append({"name": layer.name, "type": layer.type, "from": list(layer.inputs), **config})
        several = len(self.outputs) > 1

        def per_output(value_of):
            return {o.name: value_of(o) for o in self.outputs} if several else value_of(self.outputs[0])

        def metrics(output):
            return [typed(m) if m.options else m.name for m in output.metrics]

        data = None
        if self.data is not None:
            data = {
                "path": str(self.data.path),
                "inputs": self.data.inputs,
                "targets": per_output(lambda o: self.data.targets[o.name]),
                "validation_split": self.data.validation_split,
                "validation": str(self.data.validation) if self.data.validation else None,
                "test": str(self.data.test) if self.data.test else None,
                "delimiter": self.data.delimiter,
                "missing_values": list(self.data.missing_values),
                "cache": str(self.data.cache) if self.data.cache else False,
                **({"columns": self.data.columns} if self.data.columns is not None else {}),
            }
        return {
            "name": self.name, "seed": self.seed, "dtype": self.dtype, "backend": self.backend,
            "inputs": {k: list(v) for k, v in self.inputs.items()}, "layers": layers,
            "outputs": [o.name for o in self.outputs] if several else self.outputs[0].name,
            "loss": per_output(lambda o: typed(o.loss)), **({"loss_weights": per_output(lambda o: o.weight)} if several else {}),
            "metrics": per_output(metrics), "optimizer": typed(self.optimizer),
            "data": data, "train": {k: typed(v) if isinstance(v, Choice) else v for k, v in self.train.items()},
        }


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class _Checker:
    """Collects problems while walking the raw YAML data."""

    def __init__(self, file: Path, marks: Marks):
        self.file, self.marks, self.problems = file, marks, []
        self.sources = {}  # key path -> where an override came from ("--epochs")

    def problem(self, path: tuple, message: str, key: bool = False) -> Problem:
        source = next((s for p, s in self.sources.items() if path[:len(p)] == p), None)
        if source is not None:
            return Problem(message, source, path=path_text(path) or None)
        line, column = self.marks.at(path, key=key)
        return Problem(message, str(self.file), line, column, path_text(path) or None)

    def report(self, path: tuple, message: str, key: bool = False) -> None:
        self.problems.append(self.problem(path, message, key))

    def unknown_keys(self, mapping: dict, allowed, path: tuple, what: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.report(
                    path + (key,),
                    f"expected {_article(what)} {what} key ({', '.join(allowed)}), received unknown key {key!r}{did_you_mean(key, allowed)}",
                    key=True,
                )

    def value(self, check, value, path):
        try:
            return check(value)
        except Invalid as exc:
            self.report(path, f"expected {exc}, received {describe(value)}")
            return None

    def options(self, mapping: dict, options: dict, path: tuple, what: str, skip=()) -> dict:
        """Validate `mapping` against declared options; return them with defaults filled in."""
        self.unknown_keys({k: v for k, v in mapping.items() if k not in skip}, list(options), path, what)
        resolved = {}
        for name, option in options.items():
            if name not in mapping:
                if option.default is REQUIRED:
                    self.report(path, f"expected key {name!r} ({option.doc or what}), received none")
                resolved[name] = None if option.default is REQUIRED else option.default
                if isinstance(option.check, Typed) and option.default is not REQUIRED:
                    resolved[name] = Choice(option.default, self.defaults(option.check.registry()[option.default].options))
                continue
            if isinstance(option.check, Typed):
                resolved[name] = self.typed(mapping[name], option.check.registry(), path + (name,), option.check.what)
            elif isinstance(option.check, Section):
                resolved[name] = self.section(mapping[name], option.check, path + (name,))
            else:
                resolved[name] = self.value(option.check, mapping[name], path + (name,))
        return resolved

    def section(self, value, section: Section, path: tuple):
        """A nested mapping of options (defaults filled in), or None when null/false (off)."""
        if value is None or value is False:
            return None
        if value is True and section.allow_true:
            return self.defaults(section.options)
        if not isinstance(value, dict):
            self.report(path, f"expected {section.expected}, received {describe(value)}")
            return None
        return self.options(value, section.options, path, section.what)

    @staticmethod
    def defaults(options: dict) -> dict:
        return {k: o.default for k, o in options.items() if o.default is not REQUIRED}

    def typed(self, value, registry: dict, path: tuple, what: str):
        """`name` or `{type: name, ...options}` naming a registry entry -> (name, options)."""
        if isinstance(value, dict):
            if "type" not in value:
                self.report(path, f"expected {_article(what)} {what} mapping with a 'type' key, received keys {sorted(value)}")
                return None
            name, mapping, type_path = value["type"], value, path + ("type",)
        else:
            name, mapping, type_path = value, {}, path
        if not isinstance(name, str) or name not in registry:
            self.report(
                type_path,
                f"expected {_article(what)} {what}: one of {', '.join(registry)}; received {describe(name)}{did_you_mean(name, registry)}",
            )
            return None
        return Choice(name, self.options(mapping, registry[name].options, path, f"{what} {name!r}", skip=("type",)))


class Override(NamedTuple):
    """A value set from outside the spec (a CLI flag, a sweep's parameter) at a key path, checked
    with the same options as the key in the file; problems name `source` ("--epochs")."""

    path: tuple  # ("train", "epochs")
    value: object
    source: str

    @classmethod
    def at(cls, dotted: str, value, source: str) -> "Override":
        """An override of the key path written with dots ("train.epochs")."""
        return cls(tuple(dotted.split(".")), value, source)


MAX_SPEC_BYTES = 4 << 20  # a spec is a few kB; a bigger file is not one


def load_spec(source, overrides=(), file=None) -> Spec:
    """Read and validate a spec; raise SpecError with every problem found.

    `source` is a YAML file's path, or a mapping already parsed (a sweep's trial, a test), whose
    relative data paths and default name come from `file` (default: a spec in the current folder).
    `overrides` (Override, ...) replace keys before validation.
    """
    if isinstance(source, dict):
        path, data, marks = Path(file or "spec.yaml"), copy.deepcopy(source), Marks(str(file or "spec"))
    else:
        path = Path(source)
        data, marks = load_yaml(_read_spec_text(path), str(path))
    checker = _Checker(path, marks)
    for override in overrides:
        _apply(data, override, checker)
    spec = _validate(data, path, checker)
    if checker.problems:
        raise SpecError(sorted(checker.problems, key=lambda p: (p.line or 0, p.column or 0)))
    return spec


def _read_spec_text(path: Path) -> str:
    with open_regular(path, SpecError, "a spec file") as handle:
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(Problem(f"expected a spec file of at most {MAX_SPEC_BYTES >> 20} MB, received a larger file", str(path)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(Problem(f"expected a readable UTF-8 spec file, received {exc.__class__.__name__}: {exc}", str(path))) from None


def _apply(data: dict, override: Override, c: _Checker) -> None:
    """Set `override` in the raw data; its problems are reported at its source, not in the file."""
    c.sources[override.path] = override.source
    node = data
    for key, below in zip(override.path, override.path[1:]):
        if isinstance(node, list):  # a list index ("layers", 2, "units"): the list is the spec's own
            if not (isinstance(key, int) and -len(node) <= key < len(node)):
                c.report(override.path[:1], f"expected a key path into the spec, received {path_text(override.path)}")
                return
        elif not isinstance(node.get(key), (dict, list)):
            node[key] = [] if isinstance(below, int) else {}
        node = node[key]
    if isinstance(node, list) and not isinstance(override.path[-1], int):
        c.report(override.path[:1], f"expected a key path into the spec, received {path_text(override.path)}")
        return
    node[override.path[-1]] = override.value


def _validate(data: dict, path: Path, c: _Checker) -> Spec | None:
    c.unknown_keys(data, TOP_LEVEL_KEYS, (), "top-level")
    for key in ("inputs", "layers", "loss"):
        if key not in data:
            c.report((), f"expected key {key!r} at the top level, received none")

    name = c.value(RUN_NAME, data["name"], ("name",)) if "name" in data else safe_name(path.stem)
    seed = c.value(integer(0), data.get("seed", 0), ("seed",))
    dtype = c.value(one_of(DTYPES), data.get("dtype", "float32"), ("dtype",))
    backend = c.value(one_of(BACKENDS), data.get("backend", "numpy"), ("backend",))
    description = c.value(text, data["description"], ("description",)) if "description" in data else ""
    inputs = _validate_inputs(data.get("inputs"), c) if "inputs" in data else {}
    layers = _validate_layers(data.get("layers"), inputs, c) if "layers" in data else []
    if c.problems and isinstance(data.get("layers"), list) and len(layers) == len(data["layers"]) and isinstance(data.get("inputs"), dict) and len(inputs) == len(data["inputs"]):
        # Every layer and input was read: report unknown references and duplicate names now,
        # together with the other problems, rather than after they are fixed.
        from nnctl.model.graph import reference_problems

        c.problems.extend(reference_problems(inputs, layers, c.problem))
    outputs = _validate_outputs(data, layers, inputs, c)
    optimizer = c.typed(data.get("optimizer", "adam"), OPTIMIZERS, ("optimizer",), "optimizer")
    data_spec = _validate_data(data["data"], path, inputs, [o.name for o in outputs], c) if data.get("data") is not None else None
    _input_widths(inputs, data_spec, c)
    train_raw = data.get("train", {})
    if not isinstance(train_raw, dict):
        c.report(("train",), f"expected a mapping of training options, received {describe(train_raw)}")
        train_raw = {}
    train = c.options(train_raw, TRAIN_OPTIONS, ("train",), "train")
    _check_training_controls(train, outputs, optimizer, data_spec, c)
    if c.problems:
        return None
    return Spec(
        file=path, name=name, seed=seed, dtype=dtype, backend=backend, inputs=inputs, layers=layers,
        outputs=outputs, optimizer=optimizer, data=data_spec, train=train,
        marks=c.marks, description=description,
    )


def _validate_inputs(raw, c: _Checker) -> dict:
    if not isinstance(raw, dict) or not raw:
        c.report(("inputs",), f"expected a mapping of input name -> shape (e.g. x: [2]), received {describe(raw)}")
        return {}
    inputs = {}
    for name, shape in raw.items():
        if shape == AUTO:  # its width follows from its columns' preprocessing (_input_widths)
            inputs[name] = AUTO
            continue
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = [shape]
        if not isinstance(shape, list) or not shape or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
        ):
            c.report(("inputs", name), f"expected a per-sample shape as a list of positive integers (e.g. [2]) or {AUTO!r}, received {describe(shape)}")
            continue
        inputs[name] = tuple(shape)
    return inputs


def _input_widths(inputs: dict, data_spec, c: _Checker) -> None:
    """Replace each `auto` input by the width its columns' preprocessing gives: 1 for a numeric or a
    binary column, a category's declared vocabulary size when one-hot (one more with an unknown
    bucket), 1 as an index. Known from the spec alone (every column's type declared), so summary
    reads no data."""
    for name in [n for n, shape in inputs.items() if shape == AUTO]:
        columns = data_spec.inputs.get(name) if data_spec is not None else None
        if data_spec is None or data_spec.columns is None or not isinstance(columns, list):
            c.report(("inputs", name), f"expected a per-sample shape, received {AUTO!r} for an input whose columns have no "
                                       "preprocessing (data.preprocessing or data.columns) to take a width from")
            inputs[name] = (1,)
            continue
        width = 0
        for column in columns:
            options = data_spec.columns.get(column, {})
            if options.get("type") == "auto":
                c.report(("inputs", name), f"expected a width, or a declared type for column {column!r} (numeric, category or binary), "
                                           f"received {AUTO!r}: with type auto its width is known only from the data")
                continue
            if options.get("type") == "category" and options.get("encode") == "one_hot":
                if options.get("vocabulary") is None:
                    c.report(("inputs", name), f"expected a width, or a declared vocabulary for one-hot column {column!r}, received "
                                               f"{AUTO!r}: a learned vocabulary's size is known only from the data")
                    continue
                width += len(options["vocabulary"]) + (options.get("unknown") == "bucket")
            else:
                width += 1
        inputs[name] = (max(width, 1),)


def _validate_layers(raw, inputs: dict, c: _Checker) -> list:
    if not isinstance(raw, list) or not raw:
        c.report(("layers",), f"expected a non-empty list of layers, received {describe(raw)}")
        return []
    layers, counts, previous = [], {}, (next(iter(inputs)) if len(inputs) == 1 else None)
    for index, item in enumerate(raw):
        path = ("layers", index)
        if not isinstance(item, dict):
            c.report(path, f"expected a layer mapping with a 'type' key, received {describe(item)}")
            continue
        type_name = item.get("type")
        if not isinstance(type_name, str) or type_name not in LAYERS:
            c.report(
                path + (("type",) if "type" in item else ()),
                f"expected a layer type: one of {', '.join(LAYERS)}; received {describe(type_name)}{did_you_mean(type_name, LAYERS)}",
            )
            continue
        layer_class = LAYERS[type_name]
        # Keras' naming: dense, dense_1, dense_2, ... per type, counting every layer of the type.
        count = counts.get(type_name, 0)
        counts[type_name] = count + 1
        name = item.get("name", type_name if count == 0 else f"{type_name}_{count}")
        if not isinstance(name, str) or not name or "/" in name:
            c.report(path + ("name",), f"expected a layer name (a non-empty string without '/'), received {describe(name)}")
            name = f"{type_name}_{index}"
        inputs_of = item.get("from", previous)
        if inputs_of is None:
            c.report(path, "expected a 'from' key naming this layer's input (the model has several inputs), received none")
            inputs_of = []
        if layer_class.many_inputs:
            if not isinstance(inputs_of, list) or len(inputs_of) < 2 or not all(isinstance(n, str) for n in inputs_of):
                c.report(path + ("from",), f"expected a list of two or more layer or input names, received {describe(inputs_of)}")
                inputs_of = []
        else:
            if isinstance(inputs_of, list) and len(inputs_of) == 1:
                inputs_of = inputs_of[0]
            if not isinstance(inputs_of, str):
                c.report(path + ("from",), f"expected one layer or input name, received {describe(inputs_of)}")
                inputs_of = None
            inputs_of = [inputs_of] if inputs_of else []
        config = c.options(item, layer_class.options, path, f"{type_name} layer", skip=("name", "type", "from"))
        layers.append(LayerSpec(name, type_name, list(inputs_of), config, index))
        previous = name
    return layers


def _validate_outputs(data: dict, layers, inputs, c: _Checker) -> list:
    """The outputs with their losses, weights and metrics (`outputs`, `loss`, `loss_weights`,
    `metrics`); `loss` and `metrics` may be one for every output or a mapping by output name, and
    every key of such a mapping is checked against the outputs here, not at the first batch."""
    names = _output_names(data.get("outputs"), layers, inputs, c)
    if not names:
        return []
    losses = _per_output(data["loss"], names, "loss", "loss", c) if "loss" in data else {}
    metrics = _per_output(data.get("metrics", []), names, "metrics", "list of metrics", c)
    weights = _loss_weights(data.get("loss_weights"), names, c)
    outputs = []
    for name in names:
        loss = c.typed(losses[name][0], LOSSES, losses[name][1], "loss") if name in losses else None
        outputs.append(OutputSpec(name, loss, weights.get(name, 1.0), _validate_metrics(*metrics.get(name, ([], ("metrics",))), c)))
    return outputs


def _output_names(raw, layers, inputs, c: _Checker) -> list:
    """`outputs`: a layer's name or a list of distinct names (default: the last layer)."""
    if raw is None:
        return [layers[-1].name] if layers else []
    listed = raw if isinstance(raw, list) else [raw]
    if not listed or not all(isinstance(name, str) for name in listed):
        c.report(("outputs",), f"expected the name of the output layer, or a list of output layer names, received {describe(raw)}")
        return []
    known = [layer.name for layer in layers] + list(inputs)
    names = []
    for i, name in enumerate(listed):
        path = ("outputs", i) if isinstance(raw, list) else ("outputs",)
        if name not in known:
            c.report(path, f"expected the name of a layer, received {name!r}{did_you_mean(name, known)}")
        elif name in names:
            c.report(path, f"expected each output once, received {name!r} again")
        else:
            names.append(name)
    return names if len(names) == len(listed) else []


def _per_output(raw, names: list, key: str, what: str, c: _Checker) -> dict:
    """{output: (its value, its key path)} from `raw`: one value for every output, or a mapping by
    output name (a mapping with a 'type' key is one loss). Each key must be an output, and with a
    mapping every output needs its entry (metrics excepted: an output may have none)."""
    by_output = isinstance(raw, dict) and "type" not in raw and (len(names) > 1 or set(raw) <= set(names) and raw)
    if not by_output:
        return {name: (raw, (key,)) for name in names}
    found = {}
    for name, value in raw.items():
        if name not in names:
            c.report((key, name), f"expected an output name ({', '.join(names)}), received {name!r}{did_you_mean(name, names)}", key=True)
        else:
            found[name] = (value, (key, name))
    if key == "loss":
        for name in names:
            if name not in found:
                c.report((key,), f"expected a loss for output {name!r}, received none")
    return found


def _loss_weights(raw, names: list, c: _Checker) -> dict:
    """`loss_weights`: {output: weight >= 0}, or a list of weights in the outputs' order (Keras)."""
    if raw is None:
        return {}
    weight = number(low=0)
    if isinstance(raw, list):
        if len(raw) != len(names):
            c.report(("loss_weights",), f"expected {len(names)} weights (one per output: {', '.join(names)}), received {len(raw)}")
            return {}
        pairs = [(name, value, ("loss_weights", i)) for i, (name, value) in enumerate(zip(names, raw))]
    elif isinstance(raw, dict):
        pairs = []
        for name, value in raw.items():
            if name not in names:
                c.report(("loss_weights", name), f"expected an output name ({', '.join(names)}), received {name!r}{did_you_mean(name, names)}", key=True)
            else:
                pairs.append((name, value, ("loss_weights", name)))
    else:
        c.report(("loss_weights",), f"expected a mapping of output name -> weight, or a list of weights, received {describe(raw)}")
        return {}
    weights = {name: c.value(weight, value, path) for name, value, path in pairs}
    return {name: float(value) for name, value in weights.items() if value is not None}


def _validate_metrics(raw, path: tuple, c: _Checker) -> list:
    """[Choice(metric, options)]: names, or mappings with 'type' and options (`k`)."""
    if isinstance(raw, (str, dict)):
        raw, listed = [raw], False
    else:
        listed = True
    if not isinstance(raw, list):
        c.report(path, f"expected a list of metric names, received {describe(raw)}")
        return []
    metrics = []
    for i, entry in enumerate(raw):
        choice = c.typed(entry, METRICS, path + ((i,) if listed else ()), "metric")
        if choice is None:
            continue
        if any(m.name == choice.name for m in metrics):
            c.report(path + ((i,) if listed else ()), f"expected each metric once, received {choice.name!r} again")
        else:
            metrics.append(choice)
    return metrics


def _validate_columns(raw, path, c: _Checker):
    """A list of column names, or one name (a CSV column or an .npz array)."""
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, list) and raw and all(isinstance(x, str) and x for x in raw):
        return list(raw)
    c.report(path, f"expected a column name or a list of column names, received {describe(raw)}")
    return None


DELIMITER = Check("one character other than a quote or a line break", lambda v: isinstance(v, str) and len(v) == 1 and v not in "\"\r\n",
                  {"type": "string", "minLength": 1, "maxLength": 1, "not": {"enum": ["\"", "\r", "\n"]}})
MISSING_LIST = Check("a list of distinct strings (cells that are missing values)",
                     lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v),
                     {"type": "array", "items": {"type": "string"}, "uniqueItems": True})


def _validate_data(raw, spec_path: Path, inputs: dict, outputs: list, c: _Checker) -> DataSpec | None:
    if not isinstance(raw, dict):
        c.report(("data",), f"expected a data mapping (path, inputs, targets), received {describe(raw)}")
        return None
    c.unknown_keys(raw, DATA_KEYS, ("data",), "data")
    if "path" not in raw:
        c.report(("data",), "expected key 'path' (the data file, relative to the spec), received none")
        return None
    if not isinstance(raw["path"], str) or not raw["path"]:
        c.report(("data", "path"), f"expected a file path, received {describe(raw['path'])}")
        return None
    base = spec_path.parent
    mapping = raw.get("inputs")
    if mapping is None and len(inputs) == 1:
        c.report(("data",), f"expected key 'inputs' mapping input {next(iter(inputs))!r} to its columns, received none")
        return None
    if not isinstance(mapping, dict):
        c.report(("data", "inputs"), f"expected a mapping of input name -> columns, received {describe(mapping)}")
        return None
    data_inputs = {}
    for name, columns in mapping.items():
        if inputs and name not in inputs:
            c.report(("data", "inputs", name), f"expected one of the model's inputs ({', '.join(inputs)}), received {name!r}{did_you_mean(name, inputs)}", key=True)
            continue
        data_inputs[name] = _validate_columns(columns, ("data", "inputs", name), c)
    for name in inputs:
        if name not in mapping:
            c.report(("data", "inputs"), f"expected columns for model input {name!r}, received none")
    if "targets" not in raw:
        c.report(("data",), "expected key 'targets' (the target columns), received none")
        return None
    targets = _validate_targets(raw["targets"], outputs, c)
    split = c.value(number(0, 1, high_open=True), raw.get("validation_split", 0.0), ("data", "validation_split"))
    validation = _optional_path(raw, "validation", base, c)
    if raw.get("validation") is not None and raw.get("validation_split"):
        c.report(("data", "validation"), "expected either 'validation' or 'validation_split', received both")
    test = _optional_path(raw, "test", base, c)
    delimiter = c.value(DELIMITER, raw.get("delimiter", ","), ("data", "delimiter"))
    missing = c.value(MISSING_LIST, raw.get("missing_values", list(MISSING_VALUES)), ("data", "missing_values"))
    cache = raw.get("cache", CACHE_FOLDER)
    if cache is not False and (not isinstance(cache, str) or not cache):
        c.report(("data", "cache"), f"expected a folder path, or false to turn the data cache off, received {describe(cache)}")
        cache = False
    # Relative to the working folder, as runs/ is: a place nnctl writes, not one of the spec's inputs.
    cache = None if cache is False else Path(cache)
    columns = _validate_preprocessing(raw, data_inputs, targets, c)
    return DataSpec(base / raw["path"], data_inputs, targets, split or 0.0, validation, test,
                    delimiter or ",", tuple(missing) if missing is not None else MISSING_VALUES, cache, columns)


def _validate_targets(raw, outputs: list, c: _Checker) -> dict:
    """{output: its columns}: the columns themselves for one output, a mapping by output name for
    several (one entry each)."""
    if not isinstance(raw, dict):
        if len(outputs) > 1:
            c.report(("data", "targets"), f"expected a mapping of output name -> target columns (the model has outputs "
                                          f"{', '.join(outputs)}), received {describe(raw)}")
            return {}
        return {name: _validate_columns(raw, ("data", "targets"), c) for name in outputs}
    targets = {}
    for name, columns in raw.items():
        if name not in outputs:
            c.report(("data", "targets", name), f"expected an output name ({', '.join(outputs)}), received {name!r}{did_you_mean(name, outputs)}", key=True)
        else:
            targets[name] = _validate_columns(columns, ("data", "targets", name), c)
    for name in outputs:
        if name not in raw:
            c.report(("data", "targets"), f"expected target columns for output {name!r}, received none")
    return targets


def _validate_preprocessing(raw: dict, data_inputs: dict, targets: dict, c: _Checker) -> dict | None:
    """{column: resolved options} for every column the spec reads, from data.preprocessing (the
    defaults) and data.columns (per column); None when the spec has neither."""
    if raw.get("preprocessing") is None and raw.get("columns") is None:
        return None
    defaults = c.section(raw.get("preprocessing", {}), PREPROCESSING, ("data", "preprocessing")) or c.defaults(COLUMN_OPTIONS)
    per_column = raw.get("columns") or {}
    if not isinstance(per_column, dict):
        c.report(("data", "columns"), f"expected a mapping of column name -> preprocessing options, received {describe(per_column)}")
        per_column = {}
    target_names = list(dict.fromkeys(name for columns in targets.values() if columns is not None
                                      for name in ([columns] if isinstance(columns, str) else columns)))
    read = [name for columns in data_inputs.values() if isinstance(columns, list) for name in columns]
    read += [name for name in target_names if name not in read]
    resolved = {}
    for name in read:
        options = per_column.get(name, {})
        if not isinstance(options, dict):
            c.report(("data", "columns", name), f"expected a mapping of preprocessing options, received {describe(options)}")
            continue
        given = c.options(options, COLUMN_OPTIONS, ("data", "columns", name), f"column {name!r}")
        # data.preprocessing is the inputs' default; a target is transformed only as its own entry says.
        base = c.defaults(COLUMN_OPTIONS) if name in target_names else defaults
        resolved[name] = {**base, **{key: value for key, value in given.items() if key in options}}
    for name in per_column:
        if name not in read:
            c.report(("data", "columns", name), f"expected a column the spec reads ({', '.join(read)}), received {name!r}{did_you_mean(name, read)}", key=True)
    return resolved


def _check_training_controls(train: dict, outputs: list, optimizer, data_spec, c: _Checker) -> None:
    """What no single option can check: monitored names, validation data, rates, clipping."""
    allowed = monitorable(log_names(outputs))
    has_validation = data_spec is None or bool(data_spec.validation or data_spec.validation_split)
    for path, monitor in monitors(train):
        if monitor is None:  # already reported as invalid
            continue
        if monitor not in allowed:
            c.report(path, f"expected a logged value to monitor ({', '.join(allowed)}), received {monitor!r}{did_you_mean(monitor, allowed)}")
        elif monitor.startswith("val_") and not has_validation:
            c.report(path, f"expected validation data to monitor {monitor!r} (data.validation or data.validation_split), "
                           "received a data section without it; monitor 'loss' to watch the training loss")
    schedule = train.get("lr_schedule")
    if schedule and optimizer and "min_lr" in schedule.options:
        rate, min_lr = optimizer.options["learning_rate"], schedule.options["min_lr"]
        if rate is not None and min_lr is not None and min_lr > rate:
            c.report(("train", "lr_schedule", "min_lr"), f"expected a number <= the optimizer's learning_rate ({rate:g}), received {min_lr:g}")
    if optimizer and optimizer.options.get("clipnorm") is not None and optimizer.options.get("clipvalue") is not None:
        c.report(("optimizer", "clipvalue"), "expected at most one of clipnorm and clipvalue (as in Keras), received both")


def _optional_path(raw: dict, key: str, base: Path, c: _Checker) -> Path | None:
    """data.<key> as a path relative to the spec's folder, or None when absent, null or invalid."""
    if raw.get(key) is None:
        return None
    if not isinstance(raw[key], str) or not raw[key]:
        c.report(("data", key), f"expected a file path, received {describe(raw[key])}")
        return None
    return base / raw[key]

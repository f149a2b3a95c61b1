"""A JSON Schema (draft 2020-12) of the spec format, generated from the registries' declared options.

Layer types are a oneOf on `type`; losses, optimizers, initializers and activations are a name or
a `{type: name, option: value}` mapping; every option carries its default and description. Editors
(VS Code's YAML extension, JetBrains IDEs) use it for completion, hover help and checking as you type.
nnctl itself validates specs with nnctl.spec.load (which also checks references and shapes); the schema
only describes the format.
"""
from __future__ import annotations

import math

from nnctl.model.activations import ACTIVATIONS
from nnctl.core.backend import BACKENDS
from nnctl.data.column_options import COLUMN_OPTIONS
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers import LAYERS
from nnctl.train.losses import LOSSES
from nnctl.train.metrics import METRICS
from nnctl.train.optimizers import OPTIMIZERS
from nnctl.options import REQUIRED, Section, Typed
from nnctl.spec.load import CACHE_FOLDER, DATA_KEYS, DELIMITER, DTYPES, MISSING_LIST, MISSING_VALUES, TOP_LEVEL_KEYS, TRAIN_OPTIONS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:nnctl:spec"

# The registries a spec names entries of; Typed options found while walking add any others.
REGISTRIES = {
    "activation": ACTIVATIONS,
    "initializer": INITIALIZERS,
    "loss": LOSSES,
    "metric": METRICS,
    "optimizer": OPTIMIZERS,
}
# Descriptions of the data keys (spec.DATA_KEYS is the list; a key missing here is still allowed).
DATA_DOCS = {
    "path": ({"type": "string", "minLength": 1}, "a .csv (with a header), .parquet, .feather, .arrow, .npy or .npz file, relative to the spec"),
    "validation_split": ({"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0}, "fraction of the samples held out for validation (seeded)"),
    "validation": ({"type": "string", "minLength": 1}, "a separate validation file (instead of validation_split)"),
    "test": ({"type": "string", "minLength": 1}, "a test file, evaluated once after training"),
    "delimiter": (DELIMITER.schema | {"default": ","}, "the CSV field separator"),
    "missing_values": (MISSING_LIST.schema | {"default": list(MISSING_VALUES)}, "cells that are missing values, matched exactly"),
    "cache": ({"oneOf": [{"type": "string", "minLength": 1}, {"const": False}], "default": CACHE_FOLDER},
              "the folder of the data cache (table files of 1 MB or more are parsed once); false: off. "
              "Relative to the working folder, as runs/ is"),
}


def slug(what: str) -> str:
    """A $defs key for a registry's `what` ("learning-rate schedule" -> "learning_rate_schedule")."""
    return "".join(c if c.isalnum() else "_" for c in what)


def _json_value(value):
    """A default as JSON can hold it (a tuple becomes a list; inf has no JSON form)."""
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _doc(entry) -> str:
    doc = getattr(entry, "doc", "") or ""
    own = entry.__dict__.get("__doc__") if isinstance(entry, type) else None
    if not doc and own and own.strip():
        doc = own.strip().splitlines()[0]
    return doc


class _Builder:
    """Walks declared options into schemas, collecting each registry's entries under $defs."""

    def __init__(self):
        self.defs = {}

    def typed(self, what: str, registry: dict) -> dict:
        """{"$ref"} to a registry entry by name, or as a mapping with `type` and its options."""
        key = slug(what)
        if key not in self.defs:
            self.defs[key] = {}  # placeholder: a registry may refer to itself
            names = list(registry)
            for name, entry in registry.items():
                self.defs[f"{key}.{name}"] = self.options_object(name, entry.options, _doc(entry))
            self.defs[key] = {
                "description": f"{'an' if what[0] in 'aeiou' else 'a'} {what}: a name, or a mapping with 'type' and options",
                "oneOf": [
                    {"type": "string", "enum": names},
                    {"type": "object", "required": ["type"], "oneOf": [{"$ref": f"#/$defs/{key}.{name}"} for name in names]},
                ],
            }
        return {"$ref": f"#/$defs/{key}"}

    def option(self, option) -> dict:
        check = option.check
        if isinstance(check, Typed):
            schema = self.typed(check.what, check.registry())
        elif isinstance(check, Section):
            mapping = {"type": "object", "properties": self.properties(check.options), "additionalProperties": False}
            choices = [mapping, {"type": "null"}] + ([{"const": True}] if check.allow_true else [])
            schema = {"oneOf": choices}
        else:
            schema = dict(check.schema)
        if option.doc:
            schema["description"] = option.doc
        if option.default is not REQUIRED:
            schema["default"] = _json_value(option.default)
        return schema

    def properties(self, options: dict) -> dict:
        return {key: self.option(option) for key, option in options.items()}

    def options_object(self, name: str, options: dict, doc: str, extra: dict | None = None) -> dict:
        properties = {"type": {"const": name, "description": doc or name}}
        properties.update(extra or {})
        properties.update(self.properties(options))
        required = ["type"] + [key for key, option in options.items() if option.default is REQUIRED]
        schema = {"type": "object", "title": name, "properties": properties, "required": required, "additionalProperties": False}
        if doc:
            schema["description"] = doc
        return schema

    def layer(self, name: str, layer_class) -> dict:
        if layer_class.many_inputs:
            source = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2,
                      "description": "the names of the inputs or layers this layer joins"}
        else:
            source = {"oneOf": [{"type": "string", "minLength": 1},
                                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1}],
                      "description": "the input or layer feeding this one (default: the previous layer)"}
        extra = {
            "name": {"type": "string", "pattern": "^[^/]+$", "description": "unique layer name (default: type, type_1, ... as in Keras)"},
            "from": source,
        }
        return self.options_object(name, layer_class.options, _doc(layer_class) or f"{layer_class.keras_name} layer", extra)


def _columns(what: str) -> dict:
    return {
        "description": what,
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ],
    }


def spec_schema() -> dict:
    builder = _Builder()
    defs = builder.defs
    defs["shape"] = {
        "description": "per-sample shape: a list of positive integers (or one integer), or auto: the width of its columns' preprocessing",
        "oneOf": [
            {"type": "integer", "minimum": 1},
            {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
            {"const": "auto"},
        ],
    }
    defs["layer"] = {"description": "a layer: its `type` picks the options it takes", "oneOf": [{"$ref": f"#/$defs/layer.{name}"} for name in LAYERS]}
    for name, layer_class in LAYERS.items():
        defs[f"layer.{name}"] = builder.layer(name, layer_class)
    refs = {what: builder.typed(what, registry) for what, registry in REGISTRIES.items()}
    metric = refs["metric"]
    metric_list = {"oneOf": [metric, {"type": "array", "items": metric, "uniqueItems": True}]}
    columns = _columns("CSV columns (or an .npz array name, or .npy column ranges like '0:64')")
    name = {"type": "string", "minLength": 1}
    data_properties = {}
    for key in DATA_KEYS:
        if key == "inputs":
            data_properties[key] = {"type": "object", "additionalProperties": columns, "description": "model input name -> its columns"}
        elif key == "targets":
            data_properties[key] = {"description": "target columns (or an .npz array name); with several outputs, output name -> its target columns",
                                    "oneOf": [columns, {"type": "object", "minProperties": 1, "additionalProperties": columns}]}
        elif key == "preprocessing":
            data_properties[key] = {"type": "object", "properties": builder.properties(COLUMN_OPTIONS), "additionalProperties": False,
                                    "description": "the preprocessing of every column the spec reads, unless data.columns says otherwise"}
        elif key == "columns":
            data_properties[key] = {"type": "object", "description": "column name -> its preprocessing (overrides data.preprocessing)",
                                    "additionalProperties": {"type": "object", "properties": builder.properties(COLUMN_OPTIONS),
                                                             "additionalProperties": False}}
        else:
            schema, doc = DATA_DOCS.get(key, ({}, key))
            data_properties[key] = {**schema, "description": doc}
    properties = {
        "name": {"type": "string", "minLength": 1, "description": "model name (default: the file's stem); runs go to runs/<name>/"},
        "description": {"type": "string", "minLength": 1, "description": "free text"},
        "seed": {"type": "integer", "minimum": 0, "default": 0, "description": "seed of every random stream (init, split, shuffle, dropout)"},
        "dtype": {"enum": list(DTYPES), "default": "float32", "description": "floating-point type of weights and activations"},
        "backend": {"enum": list(BACKENDS), "default": "numpy", "description": "array library: numpy, or cupy on an NVIDIA GPU"},
        "inputs": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/shape"},
                   "description": "input name -> per-sample shape, e.g. x: [2]"},
        "layers": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/layer"},
                   "description": "the layers, in order; `from` names an input or an earlier layer"},
        "outputs": {"description": "the output layer, or a list of them (default: the last layer)",
                    "oneOf": [name, {"type": "array", "items": name, "minItems": 1, "uniqueItems": True}]},
        "loss": {"description": "the loss minimised: a name, or a mapping with 'type' and options; with several outputs, one for "
                                "every output or a mapping of output name -> its loss",
                 "oneOf": [refs["loss"], {"type": "object", "minProperties": 1, "not": {"required": ["type"]}, "additionalProperties": refs["loss"]}]},
        "loss_weights": {"description": "with several outputs, each output's weight in the trained loss (their weighted sum, as Keras): "
                                        "output name -> weight, or a list in the outputs' order; default 1 each",
                         "oneOf": [{"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                                   {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 1}]},
        "metrics": {"description": "metrics reported during training and evaluation, for every output, or output name -> its metrics",
                    "oneOf": [metric_list, {"type": "object", "not": {"required": ["type"]}, "additionalProperties": metric_list}], "default": []},
        "optimizer": {**refs["optimizer"], "default": "adam", "description": "the optimizer: a name, or a mapping with 'type' and options"},
        "data": {"type": "object", "description": "where the samples come from (paths relative to the spec file)",
                 "properties": data_properties, "required": ["path", "targets"], "additionalProperties": False},
        "train": {"type": "object", "properties": builder.properties(TRAIN_OPTIONS), "additionalProperties": False,
                  "description": "training options"},
    }
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "nnctl spec",
        "description": "A neural network, its loss, optimizer, data and training options, as read by nnctl.",
        "type": "object",
        "properties": {key: properties.get(key, {}) for key in TOP_LEVEL_KEYS},
        "required": ["inputs", "layers", "loss"],
        "additionalProperties": False,
        "$defs": defs,
    }

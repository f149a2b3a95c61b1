"""A sweep file -> a checked plan: every parameter path resolved against the spec, every value the
sweep can produce validated with the spec's own options, before any trial runs.

A config error found mid-sweep would fail one trial after another (Ludwig's "list index out of
range" hours in); here every problem is reported at once, at the sweep file's line and column,
with the spec's own message ("expected a positive integer, received 0") and a did-you-mean.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from nnctl.errors import Problem, SpecError, SweepError, describe, did_you_mean
from nnctl.io.paths import open_regular
from nnctl.options import Invalid, integer, number, one_of
from nnctl.spec.load import TOP_LEVEL_KEYS, load_spec, safe_name
from nnctl.spec.yamlmarks import load_yaml
from nnctl.train.controls import monitorable
from nnctl.train.heads import log_names

METHODS = ("grid", "random", "tpe")
GOALS = ("minimize", "maximize")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "log_int_uniform")
PRUNERS = {"median": ("warmup_epochs", "startup_trials"), "hyperband": ("min_epochs", "reduction_factor")}
SWEEP_KEYS = ("method", "metric", "trials", "seed", "parameters", "early_terminate", "heartbeat_seconds")
PARAMETER_KEYS = ("values", "distribution", "min", "max")
MAX_SWEEP_BYTES = 1 << 20
# The spec's data paths, rewritten for a trial's spec file in another folder.
DATA_PATHS = ("path", "validation", "test")


class Parameter(NamedTuple):
    key: str  # as written in the sweep file: "layers.hidden.units"
    path: tuple  # in the raw spec: ("layers", 1, "units")
    values: tuple | None  # a `values` list, or None for a distribution
    distribution: str | None = None
    low: float | None = None
    high: float | None = None

    def grid(self) -> tuple:
        """The values a grid takes: the list, or every integer of an integer range."""
        return self.values if self.values is not None else tuple(range(int(self.low), int(self.high) + 1))


@dataclass
class Plan:
    """A validated sweep of one spec: what `nnctl sweep` runs and `status` reads."""

    spec_file: Path
    file: Path
    name: str  # the sweep's name: its file's stem
    spec_name: str
    raw: dict = field(repr=False)  # the spec as parsed, choices given as {type: name} where swept
    method: str = "tpe"
    metric: str = "val_loss"
    goal: str = "minimize"
    trials: int = 10
    seed: int = 0
    parameters: list = field(default_factory=list)
    early_terminate: dict | None = None  # {type, ...}
    heartbeat_seconds: int = 10
    epochs: int = 1  # the spec's train.epochs (hyperband's budget)

    @property
    def folder(self) -> Path:
        return Path("runs") / self.spec_name / "sweeps" / self.name

    @property
    def study_name(self) -> str:
        return f"{self.spec_name}/{self.name}"

    def grid(self) -> list[dict]:
        """Every combination of a grid sweep, at most `trials` of them, in a fixed order."""
        keys = [p.key for p in self.parameters]
        combos = itertools.product(*(p.grid() for p in self.parameters))
        return [dict(zip(keys, combo)) for combo in itertools.islice(combos, self.trials)]

    @property
    def target(self) -> int:
        """How many trials the study runs to (a grid: each combination once, at most `trials`)."""
        if self.method != "grid":
            return self.trials
        return min(self.trials, math.prod(len(p.grid()) for p in self.parameters))

    def trial_raw(self, params: dict, name: str, folder: Path) -> dict:
        """The spec of one trial as a mapping for a spec file in `folder`: its own name, the
        sweep's values set, data paths relative to that folder."""
        raw = copy.deepcopy(self.raw)
        raw["name"] = name
        for parameter in self.parameters:
            _set(raw, parameter.path, params[parameter.key])
        data = raw.get("data")
        if isinstance(data, dict):
            base = self.spec_file.parent
            for key in DATA_PATHS:
                if isinstance(data.get(key), str):
                    data[key] = os.path.relpath((base / data[key]).resolve(), Path(folder).resolve())
        return raw


def _set(raw, path, value):
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


class _Reader:
    """Collects the sweep file's problems, each at its line and column."""

    def __init__(self, file: Path, marks):
        self.file, self.marks, self.problems = file, marks, []

    def report(self, path: tuple, message: str, key: bool = False, shown: str | None = None) -> None:
        line, column = self.marks.at(path, key=key)
        self.problems.append(Problem(message, str(self.file), line, column, shown if shown is not None else ".".join(map(str, path)) or None))

    def value(self, check, value, path, shown=None):
        try:
            check(value)
            return value
        except Invalid as exc:
            self.report(path, f"expected {exc}, received {describe(value)}", shown=shown)
            return None

    def mapping(self, value, path, what, allowed) -> dict:
        if not isinstance(value, dict):
            self.report(path, f"expected {what}, received {describe(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.report(path + (key,), f"expected a key of {what} ({', '.join(allowed)}), received unknown key {key!r}{did_you_mean(key, allowed)}", key=True)
        return value


def read_sweep(file: Path) -> tuple[dict, object]:
    with open_regular(file, SweepError, "a sweep file") as handle:
        data = handle.read(MAX_SWEEP_BYTES + 1)
    if len(data) > MAX_SWEEP_BYTES:
        raise SweepError(Problem(f"expected a sweep file of at most {MAX_SWEEP_BYTES >> 20} MB, received a larger file", str(file)))
    try:
        raw, marks = load_yaml(data.decode("utf-8"), str(file))
    except UnicodeDecodeError as exc:
        raise SweepError(Problem(f"expected a readable UTF-8 sweep file, received {exc}", str(file))) from None
    except SpecError as exc:  # YAML's own problems, worded by the spec reader
        raise SweepError([Problem(p.message.replace("spec keys", "sweep keys"), p.file, p.line, p.column, p.path) for p in exc.problems]) from None
    if not isinstance(raw, dict):
        raise SweepError(Problem(f"expected a mapping of sweep keys ({', '.join(SWEEP_KEYS)}), received {describe(raw)}", str(file)))
    return raw, marks


def load_plan(spec_file, sweep_file) -> Plan:
    """Read SWEEP against SPEC; raise SweepError with every problem, or SpecError for the spec's own."""
    spec_file, sweep_file = Path(spec_file), Path(sweep_file)
    spec = load_spec(spec_file)  # the spec's own problems first, at its own lines
    with open_regular(spec_file, SpecError, "a spec file") as handle:
        spec_raw, _ = load_yaml(handle.read().decode("utf-8"), str(spec_file))
    raw, marks = read_sweep(sweep_file)
    r = _Reader(sweep_file, marks)
    r.mapping(raw, (), "a sweep file", SWEEP_KEYS)
    plan = Plan(spec_file, sweep_file, safe_name(sweep_file.stem), spec.name, spec_raw, seed=spec.seed, epochs=spec.train["epochs"])
    plan.method = r.value(one_of(METHODS), raw.get("method", "tpe"), ("method",)) or "tpe"
    metric = r.mapping(raw.get("metric", {}), ("metric",), "a metric mapping (name, goal)", ("name", "goal"))
    allowed = [m for m in monitorable(log_names(spec.outputs)) if not m.startswith("val_") or _has_validation(spec)]
    plan.metric = metric.get("name", "val_loss" if _has_validation(spec) else "loss")
    if plan.metric not in allowed:
        place = ("metric", "name") if "name" in metric else ("metric",)
        r.report(place, f"expected a value the spec logs each epoch ({', '.join(allowed)}), received {describe(plan.metric)}{did_you_mean(plan.metric, allowed)}")
    plan.goal = r.value(one_of(GOALS), metric.get("goal", "minimize"), ("metric", "goal")) or "minimize"
    plan.trials = r.value(integer(1), raw.get("trials", 10), ("trials",)) or 1
    plan.seed = r.value(integer(0), raw.get("seed", spec.seed), ("seed",)) or 0
    plan.heartbeat_seconds = r.value(integer(1), raw.get("heartbeat_seconds", 10), ("heartbeat_seconds",)) or 10
    plan.early_terminate = _early_terminate(raw.get("early_terminate"), r)
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        r.report(("parameters",), f"expected a mapping of spec key paths to values or distributions, received {describe(parameters)}")
        parameters = {}
    for key, value in parameters.items():
        parameter = _parameter(key, value, plan, spec, r)
        if parameter is not None:
            plan.parameters.append(parameter)
    if r.problems:
        raise SweepError(sorted(r.problems, key=lambda p: (p.line or 0, p.column or 0)))
    for parameter in plan.parameters:
        _validate_values(parameter, plan, r)
    if r.problems:
        raise SweepError(sorted(r.problems, key=lambda p: (p.line or 0, p.column or 0)))
    return plan


def _has_validation(spec) -> bool:
    return spec.data is None or bool(spec.data.validation or spec.data.validation_split)


def _early_terminate(value, r: _Reader) -> dict | None:
    if value is None:
        return None
    mapping = r.mapping(value, ("early_terminate",), "an early_terminate mapping (type, ...)", ("type", *{k for keys in PRUNERS.values() for k in keys}))
    kind = r.value(one_of(PRUNERS), mapping.get("type"), ("early_terminate", "type") if "type" in mapping else ("early_terminate",))
    if kind is None:
        return None
    for key in mapping:
        if key != "type" and key not in PRUNERS[kind]:
            r.report(("early_terminate", key), f"expected a key of the {kind} pruner ({', '.join(PRUNERS[kind])}), received {key!r}", key=True)
    defaults = {"warmup_epochs": 0, "startup_trials": 1, "min_epochs": 1, "reduction_factor": 3}
    result = {"type": kind}
    for key in PRUNERS[kind]:
        minimum = 2 if key == "reduction_factor" else (1 if key == "min_epochs" else 0)
        result[key] = r.value(integer(minimum), mapping.get(key, defaults[key]), ("early_terminate", key))
    return result


def _parameter(key, value, plan: Plan, spec, r: _Reader) -> Parameter | None:
    where = ("parameters", key)
    path = _resolve(key, plan, spec, r)
    if not isinstance(value, dict):
        r.report(where, f"expected a mapping with `values` or `distribution`, `min` and `max`, received {describe(value)}", shown=key)
        return None
    for k in value:
        if k not in PARAMETER_KEYS:
            r.report(where + (k,), f"expected a parameter key ({', '.join(PARAMETER_KEYS)}), received unknown key {k!r}{did_you_mean(k, PARAMETER_KEYS)}", key=True, shown=key)
    if "values" in value:
        values = value["values"]
        if "distribution" in value:
            r.report(where, "expected either `values` or a `distribution`, received both", shown=key)
        if not isinstance(values, list) or not values:
            r.report(where + ("values",), f"expected a non-empty list of values, received {describe(values)}", shown=key)
            return None
        for i, item in enumerate(values):
            if item is not None and not isinstance(item, (bool, int, float, str)):
                r.report(where + ("values", i), f"expected a number, string, true, false or null, received {describe(item)}", shown=key)
        return Parameter(key, path, tuple(values)) if path else None
    kind = r.value(one_of(DISTRIBUTIONS), value.get("distribution"), where + ("distribution",) if "distribution" in value else where, key)
    integral = kind in ("int_uniform", "log_int_uniform")
    check = integer() if integral else number()
    bounds = []
    for end in ("min", "max"):
        if end not in value:
            r.report(where, f"expected key {end!r} of the distribution, received none", shown=key)
            return None
        bounds.append(r.value(check, value[end], where + (end,), key))
    low, high = bounds
    if kind is None or low is None or high is None:
        return None
    if low > high:
        r.report(where + ("max",), f"expected max >= min ({low:g}), received {high:g}", shown=key)
    if kind.startswith("log") and low <= 0:
        r.report(where + ("min",), f"expected a number > 0 for a log distribution, received {low:g}", shown=key)
    if plan.method == "grid" and not integral:
        r.report(where + ("distribution",), f"expected `values` or an integer range for a grid sweep, received the continuous distribution {kind!r}", shown=key)
    return Parameter(key, path, None, kind, low, high) if path else None


def _resolve(key, plan: Plan, spec, r: _Reader) -> tuple | None:
    """A sweep key path -> the raw spec's key path; a layer is addressed by its name. Where a
    swept option sits under a choice written as a bare name (`optimizer: adam`) or left to its
    default, the raw spec gets that choice as `{type: name}` so the option can be set."""
    where = ("parameters", key)
    parts = key.split(".") if isinstance(key, str) else []
    if not parts or not all(parts):
        r.report(where, f"expected a spec key path such as optimizer.learning_rate, received {describe(key)}", key=True, shown=str(key))
        return None
    if parts[0] not in TOP_LEVEL_KEYS:
        r.report(where, f"expected a path starting with a top-level spec key ({', '.join(TOP_LEVEL_KEYS)}), received {parts[0]!r}{did_you_mean(parts[0], TOP_LEVEL_KEYS)}", key=True, shown=key)
        return None
    if parts[0] == "name":
        r.report(where, "expected a spec key other than `name`, which the sweep gives each trial (its folder's name), received 'name'", key=True, shown=key)
        return None
    path = (parts[0],)
    rest = parts[1:]
    if parts[0] == "layers":
        names = [layer.name for layer in spec.layers]
        if not rest or rest[0] not in names:
            got = rest[0] if rest else None
            r.report(where, f"expected a layer name after 'layers.' ({', '.join(names)}), received {describe(got)}{did_you_mean(got, names)}", key=True, shown=key)
            return None
        path, rest = ("layers", spec.layers[names.index(rest[0])].index), rest[1:]
        if not rest:
            r.report(where, "expected a layer option after the layer's name (e.g. layers.hidden.units), received none", key=True, shown=key)
            return None
    path += tuple(rest)
    node, known = plan.raw, spec.resolved() | {"description": spec.description}
    for i, part in enumerate(path[:-1]):
        known = known[part] if isinstance(known, (dict, list)) and (isinstance(known, list) or part in known) else None
        child = node[part] if isinstance(node, list) else node.get(part)
        if isinstance(child, str) and isinstance(known, dict) and "type" in known:
            child = {"type": child}
        elif child is None:
            child = {"type": known["type"]} if isinstance(known, dict) and "type" in known else {}
        if not isinstance(child, dict) and not (path[:i + 1] == ("layers",) and isinstance(child, list)):
            r.report(where, f"expected a path through mappings of the spec, received {'.'.join(map(str, path[:i + 1]))} = {describe(child)}", key=True, shown=key)
            return None
        node[part] = child
        node = child
    if isinstance(known, dict) and path[-1] not in known:
        # Every option is in the resolved spec, defaults too: anything else is a typo, reported at
        # the key (load_spec would report it at the value).
        options = [k for k in known if k != "type"]
        r.report(where, f"expected an option of {'.'.join(parts[:-1]) or 'the spec'} ({', '.join(options)}), received unknown key "
                        f"{path[-1]!r}{did_you_mean(path[-1], options)}", key=True, shown=key)
        return None
    return path


def _validate_values(parameter: Parameter, plan: Plan, r: _Reader) -> None:
    """Each value the parameter can take, set in the spec and checked by the spec's own options;
    a problem is reported at the value's place in the sweep file."""
    if parameter.values is not None:
        candidates = [(v, ("parameters", parameter.key, "values", i)) for i, v in enumerate(parameter.values)]
    else:
        candidates = [(parameter.low, ("parameters", parameter.key, "min")), (parameter.high, ("parameters", parameter.key, "max"))]
        if parameter.distribution in ("int_uniform", "log_int_uniform"):
            candidates = [(int(v), where) for v, where in candidates]
    for value, where in candidates:
        # Set in a copy, not as an Override: an Override's path cannot go through the `layers` list.
        raw = copy.deepcopy(plan.raw)
        _set(raw, parameter.path, value)
        try:
            load_spec(raw, file=plan.spec_file)
        except SpecError as exc:
            for problem in exc.problems:
                r.report(where, problem.message, shown=parameter.key)

"""Data sets through column preprocessing: a table's raw columns, fitted on the training rows,
transformed into a Dataset the model reads (the spec's data.columns / data.preprocessing).

The split is drawn over the file's rows before anything is fitted, so validation rows never
shape the means, scales, fill values or vocabularies; rows dropped for a missing cell leave the
split they were in.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy

from nnctl.core.random import STREAM_SPLIT, rng_for
from nnctl.data import cache, preprocessing, raw
from nnctl.data.dataset import Dataset, shape_input, split_mask
from nnctl.data.readers import LOAD_WHOLE_BYTES, Target, target_text
from nnctl.data.targets import kind_for
from nnctl.errors import DataError, Problem
from nnctl.io.tables import Table


def target_groups(data_spec) -> dict:
    """{output: its target columns}."""
    return {output: [columns] if isinstance(columns, str) else list(columns) for output, columns in data_spec.targets.items()}


def target_names(data_spec) -> list:
    """Every target column, each once, in the outputs' order."""
    return list(dict.fromkeys(name for columns in target_groups(data_spec).values() for name in columns))


def input_groups(data_spec) -> dict:
    """{model input: its raw columns, in data.inputs' order}."""
    return {name: [columns] if isinstance(columns, str) else list(columns) for name, columns in data_spec.inputs.items()}


def raw_names(data_spec, targets: bool = True) -> list:
    """Every column the spec reads (targets too unless False), inputs first."""
    names = [name for columns in input_groups(data_spec).values() for name in columns]
    if targets:
        names += [name for name in target_names(data_spec) if name not in names]
    return names


def raw_table(file, data_spec, targets: bool = True, on_disk: bool = False) -> raw.RawTable:
    """The raw columns the spec reads from `file` (nnctl.data.raw), through its data cache."""
    return raw.read_raw_table(file, raw_names(data_spec, targets), data_spec.delimiter, data_spec.missing_values, data_spec.cache, on_disk)


def read_raw(file, data_spec, targets: bool = True) -> raw.Columns:
    """{column: Column} of every column the spec reads from `file` (targets too unless False),
    typed over the whole file (numbers, or text where any cell is not one); `.notes` says what
    the user should hear of the data cache."""
    return raw_table(file, data_spec, targets).columns()


def configs_of(data_spec, targets: bool = True) -> dict:
    wanted = set(target_names(data_spec)) if targets else set()
    configs = {}
    for name, config in data_spec.columns.items():
        if name in target_names(data_spec):
            if name in wanted:
                configs[name] = preprocessing.target_config(config)
        else:
            configs[name] = config
    return configs


def fit(raw: dict, data_spec, rows, problem) -> dict:
    """The fitted transform of every column from the training `rows`."""
    return preprocessing.fit(raw, configs_of(data_spec), rows, problem, targets=target_names(data_spec))


def prepare(file, raw: dict, fitted: dict, data_spec, input_shapes: dict, target_kinds: dict | None = None, dtype="float32",
            targets: bool = True, transformed=None):
    """(Dataset, kept-row mask, preprocessing.Report) for `raw` transformed by `fitted`, or for
    `transformed`, what `transform_groups` made of them (then `raw` is needed for its places only);
    each output's targets checked as `target_kinds[output]` = (kind of target, units) says."""
    arrays, keep, report = transformed or transform_groups(file, raw, fitted, data_spec, input_shapes, dtype, targets)
    if not keep.any():
        raise _no_rows(file)
    inputs = _shaped(file, arrays, fitted, groups_of(data_spec, targets), input_shapes, dtype)
    target_values = None
    if targets:
        kept, target_values = numpy.flatnonzero(keep), {}
        for output, columns in target_groups(data_spec).items():
            first = raw[columns[0]]

            def locate(i, first=first):
                return first.place(int(kept[i])), f"column {first.name!r}"

            kind, units = kind_for(target_kinds, output)
            target_values[output] = kind.check(file, arrays[Target(output)], units, dtype, locate, target_text(data_spec.targets, output))
    return Dataset(file, inputs, target_values, numpy.arange(int(keep.sum()))), keep, report


def groups_of(data_spec, targets: bool = True) -> dict:
    """The transform's groups: the model's inputs, and each output's targets (its Target)."""
    groups = input_groups(data_spec)
    if targets:
        groups.update({Target(output): columns for output, columns in target_groups(data_spec).items()})
    return groups


def transform_groups(file, raw: dict, fitted: dict, data_spec, input_shapes: dict, dtype="float32", targets: bool = True):
    """({group: array}, kept-row mask, preprocessing.Report): `raw` transformed by `fitted`, the
    inputs in `dtype` and the targets as float64."""
    configs = configs_of(data_spec, targets)
    return preprocessing.transform(raw, _fitted_for(file, fitted, configs), configs, groups_of(data_spec, targets),
                                   {name: dtype for name in input_shapes})


def _fitted_for(file, fitted: dict, configs: dict) -> dict:
    try:
        return {name: fitted[name] for name in configs}
    except KeyError as exc:
        raise DataError(Problem(f"expected the fitted preprocessing of column {exc.args[0]!r}, received a model without it", str(file))) from None


def _no_rows(file) -> DataError:
    return DataError(Problem("expected at least one row with every value present, received none (missing: drop dropped them all)", str(file)))


def _shaped(file, arrays: dict, fitted: dict, groups: dict, input_shapes: dict, dtype) -> dict:
    """The model's inputs from their groups' transformed columns, each shaped as the model takes it."""
    inputs = {}
    for name, shape in input_shapes.items():
        widths = ", ".join(f"{column} {fitted[column].width}" for column in groups[name])
        try:
            inputs[name] = shape_input(file, name, arrays[name], shape, dtype)
        except DataError as exc:
            raise DataError(Problem(f"{exc.problems[0].message}; after preprocessing its columns are {widths} wide", str(file))) from None
    return inputs


class InputBlocks:
    """The model's inputs from a raw table (nnctl.data.raw.RawTable) `rows` rows at a time:
    iterating yields {input: array} of each block's kept rows. A problem is raised after the last
    block, and it is the one the whole table at once would raise (`prepare`): the first missing
    cell under `missing: error`, else the first value a transform refuses, in input order, else
    no row kept, else an input of the wrong width. `report` is then the whole table's."""

    def __init__(self, file, table, fitted: dict, data_spec, input_shapes: dict, dtype, rows: int):
        self.file, self.table, self.data_spec, self.input_shapes, self.dtype, self.rows = file, table, data_spec, input_shapes, dtype, rows
        self.configs = configs_of(data_spec, targets=False)
        self.fitted = _fitted_for(file, fitted, self.configs)
        self.report = None

    def __iter__(self):
        groups = input_groups(self.data_spec)
        report, failures, kept, wrong_width = preprocessing.Report(), {}, 0, None
        for columns in self.table.blocks(self.rows):
            found = preprocessing.scan(columns, self.fitted, self.configs, groups)
            for key, failure in found.failures.items():
                failures.setdefault(key, failure)  # a column's first problem is in the first block that has one
            report.add(found.report, found.order)
            kept += int(numpy.count_nonzero(found.keep))
            if failures or wrong_width is not None or not found.keep.any():
                continue  # a problem found (only the first of the file's is looked for now), or no row to predict
            arrays = preprocessing.encode(columns, self.fitted, groups, found.keep, {name: self.dtype for name in self.input_shapes})
            try:
                inputs = _shaped(self.file, arrays, self.fitted, groups, self.input_shapes, self.dtype)
            except DataError as exc:
                wrong_width = exc
                continue
            yield inputs
        preprocessing.raise_first(failures)
        if not kept:
            raise _no_rows(self.file)
        if wrong_width is not None:
            raise wrong_width
        self.report = report


# --- prepared entries of the data cache --------------------------------------------------------------
PREPARED_PER_FILE = 3  # prepared entries kept per file read one way (the most recently used)


@dataclass(frozen=True)
class Loaded:
    """A table file through the spec's preprocessing (`load`)."""

    fitted: dict  # the column transforms
    dataset: Dataset
    keep: numpy.ndarray  # which of the file's rows are in the data set (missing: drop)
    report: preprocessing.Report
    held: numpy.ndarray | None  # which of the data set's rows the seeded split holds out (None: no split asked)


def load(file, data_spec, fitted: dict | None, input_shapes: dict, target_kinds: dict | None = None, dtype="float32",
         targets: bool = True, split: tuple | None = None, problem=None) -> Loaded:
    """The table file `file` through the spec's preprocessing: `fitted` (a weights file's), or
    fitted here on the training rows of the seeded split `split` ((fraction, seed); it gives
    `held` either way). Through the data cache (data.cache, for files of cache.MIN_BYTES or more):
    the raw columns (nnctl.data.raw) and, beside them, what `transform_groups` made of them (and
    the transforms fitted), keyed by the file's fingerprint, its reading, the columns' options, the
    groups, the dtype and the fit (the split, or a digest of the given transforms), so a second run
    neither reads the file's text nor transforms it."""
    configs = configs_of(data_spec, targets)
    fit_here = fitted is None
    if fit_here and split is None:
        raise ValueError("a split to fit on, or fitted transforms")
    dtypes = {name: numpy.dtype(dtype).str for name in input_shapes}
    identity = {"prepared": {"raw": {"columns": raw_names(data_spec, targets), "delimiter": data_spec.delimiter,
                                     "missing_values": list(data_spec.missing_values)},
                             "configs": configs, "groups": [[_json_key(k), v] for k, v in groups_of(data_spec, targets).items()],
                             "dtypes": dtypes,
                             "fit": {"fraction": split[0], "seed": split[1]} if fit_here else {"state": _digest(preprocessing.state_arrays(fitted))}}}

    def compute():
        columns = read_raw(file, data_spec, targets)
        fitted_, held = fitted, None
        if split is not None:  # drawn over the file's rows before anything is fitted
            held = split_mask(len(next(iter(columns.values()))), split[0], rng_for(split[1], STREAM_SPLIT), file)
        if fit_here:
            fitted_ = fit(columns, data_spec, numpy.flatnonzero(~held), problem)
        return columns, fitted_, transform_groups(file, columns, fitted_, data_spec, input_shapes, dtype, targets), held

    def build(entry, found):
        columns, fitted_, transformed, held = compute()
        if sum(array.nbytes for array in transformed[0].values()) <= LOAD_WHOLE_BYTES:  # larger ones are transformed each run
            # (the split is the key's only for transforms fitted here)
            _write_prepared(entry, found, columns, fitted_ if fit_here else None, transformed, held if fit_here else None)
        return columns, fitted_, transformed, held

    notes = []
    if data_spec.cache is None or os.stat(file).st_size < cache.MIN_BYTES:
        columns, fitted, transformed, held = compute()
    else:
        (columns, fitted_found, transformed, held), notes = cache.cached(
            data_spec.cache, file, identity, lambda entry, found: _read_prepared(entry, found, file, configs, fitted), build, compute)
        fitted = fitted_found
    notes = list(dict.fromkeys(notes + getattr(columns, "notes", [])))
    dataset, keep, report = prepare(file, columns, fitted, data_spec, input_shapes, target_kinds, dtype, targets, transformed)
    dataset.notes.extend(notes)
    if split is not None:
        if held is None:
            held = split_mask(len(keep), split[0], rng_for(split[1], STREAM_SPLIT), file)
        held = held[keep]
    return Loaded(fitted, dataset, keep, report, held)


def _digest(arrays: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = numpy.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _json_key(key):
    """A group's key as JSON holds it: an input's name, or {"targets": output} for an output's Target."""
    return key if isinstance(key, str) else {"targets": key.output}


def _group_key(held):
    return held if isinstance(held, str) else Target(held["targets"])


def _write_prepared(entry, identity: dict, columns: dict, fitted: dict | None, transformed, held) -> None:
    arrays, keep, report = transformed
    table = next(iter(columns.values())).table
    groups = [[_json_key(name), _write_group(entry, f"group.{i}", array)] for i, (name, array) in enumerate(arrays.items())]
    written = {f"{name}.npy": {"name": name, "dtype": "|b1", **cache.write_array(entry / f"{name}.npy", array)}
               for name, array in (("keep", keep), ("held", held)) if array is not None}
    # the fitted transforms are a few small arrays: in the manifest, numbers and text as JSON holds them
    state = {name: {"dtype": value.dtype.str, "value": value.tolist()}
             for name, value in (preprocessing.state_arrays(fitted) if fitted is not None else {}).items()}
    cache.write_manifest(entry, {"identity": identity, "header": table.header, "rows": len(keep), "csv": table.delimiter is not None,
                                 "report": report.as_dict(), "groups": groups, "arrays": written, "state": state})
    # a sweep over seeds or options makes an entry each: the file's few most recent are kept
    cache.evict(entry, lambda other: "prepared" in other and other.get("file") == identity["file"]
                and other["prepared"]["raw"] == identity["prepared"]["raw"], PREPARED_PER_FILE)


def _write_group(entry, stem: str, array) -> dict:
    """A transformed group as two files: its columns of nothing but 0 and 1 (one-hot and binary
    inputs), packed eight to a byte, and the others as they are; a quarter of the bytes to read and
    check for a typical table."""
    bits = ((array == 1) | ((array == 0) & ~numpy.signbit(array))).all(axis=0)  # -0.0 is kept as it is
    return {"stem": stem, "shape": list(array.shape), "dtype": array.dtype.str, "bits": numpy.flatnonzero(bits).tolist(),
            "packed": cache.write_array(entry / f"{stem}.bits.npy", numpy.packbits(array[:, bits] == 1, axis=1)),
            "rest": cache.write_array(entry / f"{stem}.rest.npy", array[:, ~bits])}


def _read_group(entry, meta: dict):
    (rows, width), dtype = meta["shape"], numpy.dtype(meta["dtype"])
    bits = numpy.zeros(width, dtype=bool)
    bits[meta["bits"]] = True
    packed = cache.open_array(entry / f"{meta['stem']}.bits.npy", meta["packed"]["shape"], numpy.dtype("u1"), meta["packed"]["crc32"])
    rest = cache.open_array(entry / f"{meta['stem']}.rest.npy", meta["rest"]["shape"], dtype, meta["rest"]["crc32"])
    if list(packed.shape) != [rows, (int(bits.sum()) + 7) // 8] or list(rest.shape) != [rows, width - int(bits.sum())]:
        raise ValueError(f"{meta['stem']}'s parts do not make a {rows} x {width} array")
    # runs of neighbouring columns of one kind, written a block of rows at a time: slices, not a mask
    edges = numpy.flatnonzero(numpy.diff(bits.astype(numpy.int8))) + 1
    runs = list(zip(numpy.concatenate([[0], edges]).tolist(), numpy.concatenate([edges, [width]]).tolist()))
    array = numpy.empty((rows, width), dtype=dtype)
    for first in range(0, rows, preprocessing.ENCODE_ROWS):
        last = min(first + preprocessing.ENCODE_ROWS, rows)
        parts = {True: numpy.unpackbits(packed[first:last], axis=1, count=int(bits.sum())), False: rest[first:last]}
        done = {True: 0, False: 0}
        for start, stop in runs:
            kind = bool(bits[start])
            array[first:last, start:stop] = parts[kind][:, done[kind]:done[kind] + stop - start]
            done[kind] += stop - start
    return array


def _read_prepared(entry, identity: dict, file, configs: dict, fitted: dict | None):
    manifest = cache.read_manifest(entry, identity)
    cache.touch(entry)
    flags = {meta["name"]: cache.open_array(entry / name, meta["shape"], numpy.dtype(meta["dtype"]), meta["crc32"])
             for name, meta in manifest["arrays"].items()}
    keep, held = flags["keep"], flags.get("held")
    arrays = {_group_key(key): _read_group(entry, meta) for key, meta in manifest["groups"]}
    if len(keep) != manifest["rows"] or (held is not None and len(held) != len(keep)):
        raise ValueError("its kept or held rows are not one per row")
    if fitted is None:
        state = {name: numpy.array(item["value"], dtype=item["dtype"]) for name, item in manifest["state"].items()}
        fitted = preprocessing.state_from_arrays(state, configs, str(entry))
    report = manifest["report"]
    table = Table(str(file), list(manifest["header"]), {}, manifest["rows"], identity["prepared"]["raw"]["delimiter"] if manifest["csv"] else None)
    # the columns' places only (a target's bad value names its line): their values are not read
    places = {name: preprocessing.Column(name, numpy.empty(0), table) for name in identity["prepared"]["raw"]["columns"]}
    return places, fitted, (arrays, keep, preprocessing.Report(report["filled"], report["dropped_rows"], report["unknown"])), held


def target_transform(fitted: dict | None, data_spec, output: str):
    """The fitted transform of an output's (first) target column, or None without preprocessing."""
    return None if fitted is None else fitted.get(target_groups(data_spec)[output][0])


def class_names(fitted: dict | None, data_spec, output: str) -> list | None:
    """The classes of an output's text (category) target, in index order; None for numbers."""
    target = target_transform(fitted, data_spec, output)
    return list(target.vocabulary) if isinstance(target, preprocessing.Category) else None

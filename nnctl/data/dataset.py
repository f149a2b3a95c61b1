"""Data sets: a data file's arrays picked, shaped and checked for a model, and split for validation."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from nnctl.data import cache
from nnctl.data.readers import ReadOptions, RowFile, joined_blocks, read_npy, read_npz, split_keys, table_blocks, target_text
from nnctl.data.targets import kind_for, sample_locator
from nnctl.errors import DataError, Problem
from nnctl.io.tables import TABLE_SUFFIXES


@dataclass(frozen=True)
class Dataset:
    """Arrays with samples along axis 0; `rows` selects this set's samples (a split is a view)."""

    file: Path
    inputs: dict  # input name -> array (N, *shape)
    targets: dict | None  # output name -> its targets, array (N, ...); None without targets
    rows: object  # int64 index array into the arrays
    notes: list = field(default_factory=list)  # what the caller should tell the user (a rebuilt cache)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, rows) -> "Dataset":
        return Dataset(self.file, self.inputs, self.targets, rows, self.notes)


def load_dataset(file, column_map: dict, target_map: dict | None, input_shapes: dict, target_kinds: dict | None = None,
                 dtype="float32", read: ReadOptions = ReadOptions(), cache_folder=cache.DEFAULT_FOLDER) -> Dataset:
    """Read `file`, pick the model's inputs (and each output's targets: `target_map` is {output:
    columns}, None for none), check them (targets as `target_kinds[output]` = (the loss's kind of
    target, nnctl.data.targets, and the output's units) says; values by default). A table file (.csv,
    .parquet, .feather, .arrow) is read as `read` says, through the cache in `cache_folder` (None: none)."""
    file = Path(file)
    suffix = file.suffix.lower()
    locators = {}  # output -> (sample index -> Problem(...) keyword arguments and a text naming the place)
    notes = []
    if suffix in TABLE_SUFFIXES:
        wanted, blocks, locators = table_blocks(file, column_map, target_map, dtype, read)
        if cache_folder is not None and os.stat(file).st_size >= cache.MIN_BYTES:
            config = {"delimiter": read.delimiter, "missing_values": list(read.missing_values), "dtype": str(dtype)}
            arrays, notes = cache.cached_arrays(cache_folder, file, config, wanted, blocks)
        else:
            arrays = joined_blocks(wanted, blocks())
        inputs, targets = split_keys(arrays, column_map, target_map)
    elif suffix == ".npz":
        inputs, targets = read_npz(file, column_map, target_map, dtype)
    elif suffix == ".npy":
        inputs, targets = read_npy(file, column_map, target_map, dtype)
    else:
        raise DataError(Problem(f"expected a .csv, .parquet, .feather, .arrow, .npy or .npz file, received a {suffix or 'suffix-less'} file", str(file)))
    n = len(next(iter(inputs.values())))
    if n == 0:
        raise DataError(Problem("expected at least one sample, received none", str(file)))
    for name, array in inputs.items():
        if len(array) != n:
            raise DataError(Problem(f"expected {n} samples in every array, received {len(array)} for input {name!r}", str(file)))
        inputs[name] = shape_input(file, name, array, input_shapes[name], dtype)
    if targets is not None:
        for output, values in targets.items():
            if len(values) != n:
                raise DataError(Problem(f"expected {n} {target_text(target_map, output)} (one per sample), received {len(values)}", str(file)))
            kind, units = kind_for(target_kinds, output)
            locate = locators.get(output) or sample_locator(file, target_map[output])
            targets[output] = kind.check(file, values, units, dtype, locate, target_text(target_map, output))
    return Dataset(file, inputs, targets, numpy.arange(n), notes)


def shape_input(file, name, array, shape, dtype):
    per_sample = array.shape[1:]
    on_disk = isinstance(array, RowFile)  # batches convert their rows; never copy the file
    if per_sample == tuple(shape):
        return array if array.dtype == dtype or on_disk else array.astype(dtype)
    if array.ndim == 2 and array.shape[1] == math.prod(shape) and not on_disk:
        return array.reshape((len(array),) + tuple(shape)).astype(dtype, copy=False)
    raise DataError(
        Problem(f"input {name!r}: expected {math.prod(shape)} values per sample (shape {list(shape)}), received shape {list(per_sample)}", str(file))
    )


def split_mask(rows: int, fraction: float, rng, file):
    """Which of `rows` samples a seeded random hold-out of `fraction` keeps for validation."""
    n_val = int(round(rows * fraction))
    held = numpy.zeros(rows, dtype=bool)
    if fraction <= 0 or n_val == 0:
        return held
    if n_val >= rows:
        raise DataError(Problem(f"validation_split: expected a split leaving training samples, received {fraction} of {rows} samples", str(file)))
    held[rng.permutation(rows)[:n_val]] = True
    return held


def split(dataset: Dataset, fraction: float, rng) -> tuple[Dataset, Dataset | None]:
    """A seeded random hold-out of `fraction` of the samples (rows stay in file order)."""
    held = split_mask(len(dataset), fraction, rng, dataset.file)
    if not held.any():
        return dataset, None
    return dataset.subset(dataset.rows[~held]), dataset.subset(dataset.rows[held])

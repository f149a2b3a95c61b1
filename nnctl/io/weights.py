"""Weights files: `.npz` with one array per weight, keyed `<layer>/<param>` (e.g. dense1/kernel).

Kernels are (in, out), as in Keras. Loading never unpickles and checks every key, shape and dtype
against the model, naming each mismatch, before any weight is read: an unexpected or misshapen
array in the file is refused unread (nnctl.io.arrays).
"""
from __future__ import annotations

import numpy

from nnctl.errors import Problem, WeightsError
from nnctl.io.arrays import Archive
from nnctl.io.atomic import atomic_write


def save_weights(path, weights: dict) -> None:
    with atomic_write(path) as handle:
        numpy.savez(handle, **weights)


def read_arrays(path, what="weights file") -> dict:
    """All arrays of an .npz file, or a WeightsError saying why they cannot be read."""
    with Archive(path, WeightsError, f"a {what}") as archive:
        return {name: archive.read(name) for name in archive.names}


def load_weights(path, expected_shapes: dict, state_prefix: str | None = None) -> dict:
    """Arrays for exactly the model's weights, and those under `state_prefix` (the fitted
    preprocessing: numbers and fixed-width text); every problem is listed at once."""
    problems, weights = [], {}
    with Archive(path, WeightsError, "a weights file") as archive:
        for key in archive.names:
            if state_prefix is not None and key.startswith(state_prefix):
                header = archive.header(key)
                if header.dtype.kind not in "fU" or len(header.shape) > 1:
                    problems.append(Problem(f"array {key!r}: expected a number or text, received dtype {header.dtype} of shape {header.shape}", str(path)))
                else:
                    weights[key] = archive.read(key)
        for key, shape in expected_shapes.items():
            if key not in archive.names:
                problems.append(Problem(f"expected array {key!r} of shape {tuple(shape)}, received no such array", str(path)))
                continue
            header = archive.header(key)
            if header.shape != tuple(shape):
                problems.append(Problem(f"array {key!r}: expected shape {tuple(shape)}, received {header.shape}", str(path)))
            elif header.dtype.kind != "f":
                problems.append(Problem(f"array {key!r}: expected floating-point values, received dtype {header.dtype}", str(path)))
            else:  # its size is the model's, whatever the file claims elsewhere
                weights[key] = archive.read(key)
                if not numpy.isfinite(weights[key]).all():
                    problems.append(Problem(f"array {key!r}: expected finite values, received NaN or inf", str(path)))
        for key in archive.names:  # never read: a zip bomb under an unexpected name costs nothing
            if key not in expected_shapes and not (state_prefix is not None and key.startswith(state_prefix)):
                problems.append(Problem(f"expected only the model's weights ({', '.join(expected_shapes)}), received unexpected array {key!r}", str(path)))
    if problems:
        raise WeightsError(problems)
    return weights

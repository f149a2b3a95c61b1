"""Weights files: `.npz` with one array per weight, keyed `<layer>/<param>` (e.g. dense1/kernel).

Kernels are (in, out), as in Keras. Loading never unpickles (allow_pickle=False) and checks every
key, shape and dtype against the model, naming each mismatch.
"""
from __future__ import annotations

import zipfile
import zlib

import numpy

from nnctl.errors import Problem, WeightsError
from nnctl.io.atomic import atomic_write


def save_weights(path, weights: dict) -> None:
    with atomic_write(path) as handle:
        numpy.savez(handle, **weights)


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first bytes (an empty one: the second)
_NPY_MAGIC = b"\x93NUMPY"


def read_arrays(path, what="weights file") -> dict:
    """All arrays of an .npz file, or a WeightsError saying why they cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except FileNotFoundError:
        raise WeightsError(Problem(f"expected a {what}, received a path that does not exist", str(path))) from None
    except IsADirectoryError:
        raise WeightsError(Problem(f"expected a {what}, received a directory", str(path))) from None
    except OSError as exc:
        raise WeightsError(Problem(f"expected a readable {what}, received {exc.__class__.__name__}: {exc}", str(path))) from None
    if head.startswith(_NPY_MAGIC):
        raise WeightsError(Problem("expected an .npz archive of named arrays, received a single .npy array", str(path)))
    if not head.startswith(_ZIP_MAGIC):
        if head.startswith(b"\x80") or head[:1] in (b"(", b"]", b"}"):
            reason = "a pickle file, which nnctl never loads"
        elif not head:
            reason = "an empty file"
        else:
            reason = f"a file that is not a zip archive (it starts with {head[:4]!r})"
        raise WeightsError(Problem(f"expected an .npz archive of named arrays, received {reason}", str(path)))
    corrupt = (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error)
    try:
        archive = numpy.load(path, allow_pickle=False)
    except (ValueError, *corrupt) as exc:
        raise WeightsError(Problem(f"expected a valid .npz archive, received a truncated or corrupt file ({exc})", str(path))) from None
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                value = archive[key]
            except ValueError as exc:
                if "pickle" in str(exc):
                    reason = "a pickled object array, which nnctl never loads"
                else:
                    reason = f"an unreadable one ({exc})"
                raise WeightsError(Problem(f"array {key!r}: expected a plain numeric array, received {reason}", str(path))) from None
            except corrupt as exc:
                raise WeightsError(Problem(f"expected a valid .npz archive, received a truncated or corrupt file ({exc})", str(path))) from None
            if not isinstance(value, numpy.ndarray):
                raise WeightsError(Problem(f"array {key!r}: expected a NumPy array, received a member that is not in .npy format", str(path)))
            arrays[key] = value
    return arrays


def load_weights(path, expected_shapes: dict) -> dict:
    """Arrays for exactly the model's weights; every problem is listed at once."""
    arrays = read_arrays(path)
    problems = []
    for key, shape in expected_shapes.items():
        if key not in arrays:
            problems.append(Problem(f"expected array {key!r} of shape {tuple(shape)}, received no such array", str(path)))
        elif arrays[key].shape != tuple(shape):
            problems.append(Problem(f"array {key!r}: expected shape {tuple(shape)}, received {arrays[key].shape}", str(path)))
        elif arrays[key].dtype.kind != "f":
            problems.append(Problem(f"array {key!r}: expected floating-point values, received dtype {arrays[key].dtype}", str(path)))
        elif not numpy.isfinite(arrays[key]).all():
            problems.append(Problem(f"array {key!r}: expected finite values, received NaN or inf", str(path)))
    for key in arrays:
        if key not in expected_shapes:
            problems.append(Problem(f"expected only the model's weights ({', '.join(expected_shapes)}), received unexpected array {key!r}", str(path)))
    if problems:
        raise WeightsError(problems)
    return {key: arrays[key] for key in expected_shapes}

"""Weights files: `.npz` with one array per weight, keyed `<layer>/<param>` (e.g. dense1/kernel).

Kernels are (in, out), as in Keras. Loading never unpickles (allow_pickle=False) and checks every
key, shape and dtype against the model, naming each mismatch.
"""
from __future__ import annotations

import zipfile

import numpy

from nnctl.errors import Problem, WeightsError
from nnctl.fileio import atomic_write


def save_weights(path, weights: dict) -> None:
    with atomic_write(path) as handle:
        numpy.savez(handle, **weights)


def read_arrays(path, what="weights file") -> dict:
    """All arrays of an .npz file, or a WeightsError saying why they cannot be read."""
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, numpy.lib.npyio.NpzFile):
                raise WeightsError(Problem(f"expected an .npz archive of named arrays, received a single array", str(path)))
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise WeightsError(Problem(f"expected a {what}, received a path that does not exist", str(path))) from None
    except WeightsError:
        raise
    except ValueError as exc:
        reason = "pickled object arrays, which nnctl never loads" if "pickle" in str(exc) else str(exc)
        raise WeightsError(Problem(f"expected plain numeric arrays, received {reason}", str(path))) from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise WeightsError(Problem(f"expected a valid .npz archive, received a truncated or corrupt file ({exc})", str(path))) from None


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

"""Weight initializers, with Keras' names and formulas.

Initial values are drawn on the host with NumPy's PCG64 generator, whatever the backend: the same
spec and seed give the same initial weights on NumPy and on CuPy.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from nnctl.options import NO_OPTIONS, Check, Option, number

# Keras draws its *_normal initializers from a normal truncated at 2 standard deviations and
# divides the target stddev by this constant (the truncated normal's stddev for stddev 1).
_TRUNCATED_STDDEV = 0.87962566103423978


def _truncated_normal(rng, shape, stddev):
    import numpy  # here, not at the top: `nnctl summary` never draws weights

    values = rng.standard_normal(shape)
    outside = numpy.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = numpy.abs(values) > 2
    return values * (stddev / _TRUNCATED_STDDEV)


class Initializer(NamedTuple):
    draw: object  # (rng, shape, fan_in, fan_out, **options) -> numpy float64 array
    options: dict = NO_OPTIONS
    doc: str = ""


def _uniform(rng, shape, limit):
    return rng.uniform(-limit, limit, size=shape)


def _constant(rng, shape, fan_in, fan_out, value):
    import numpy

    values = numpy.asarray(value, dtype=numpy.float64)
    if values.ndim and values.shape != tuple(shape):
        raise ValueError(f"expected a scalar or a nested list of shape {tuple(shape)}, received shape {values.shape}")
    return numpy.broadcast_to(values, shape).copy()


def _is_constant_value(value) -> bool:
    import numpy

    try:
        array = numpy.asarray(value, dtype=numpy.float64)
    except (TypeError, ValueError):
        return False
    return bool(numpy.isfinite(array).all())


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": Initializer(
        lambda rng, shape, fan_in, fan_out: _uniform(rng, shape, math.sqrt(6 / (fan_in + fan_out))),
        doc="U(-l, l), l = sqrt(6 / (fan_in + fan_out))",
    ),
    "glorot_normal": Initializer(
        lambda rng, shape, fan_in, fan_out: _truncated_normal(rng, shape, math.sqrt(2 / (fan_in + fan_out))),
        doc="truncated N(0, 2 / (fan_in + fan_out))",
    ),
    "he_uniform": Initializer(
        lambda rng, shape, fan_in, fan_out: _uniform(rng, shape, math.sqrt(6 / fan_in)),
        doc="U(-l, l), l = sqrt(6 / fan_in)",
    ),
    "he_normal": Initializer(
        lambda rng, shape, fan_in, fan_out: _truncated_normal(rng, shape, math.sqrt(2 / fan_in)),
        doc="truncated N(0, 2 / fan_in)",
    ),
    "lecun_normal": Initializer(
        lambda rng, shape, fan_in, fan_out: _truncated_normal(rng, shape, math.sqrt(1 / fan_in)),
        doc="truncated N(0, 1 / fan_in)",
    ),
    "random_normal": Initializer(
        lambda rng, shape, fan_in, fan_out, mean, stddev: rng.normal(mean, stddev, size=shape),
        {"mean": Option(number(), 0.0), "stddev": Option(number(low=0), 0.05)},
        doc="N(mean, stddev^2)",
    ),
    "random_uniform": Initializer(
        lambda rng, shape, fan_in, fan_out, minval, maxval: rng.uniform(minval, maxval, size=shape),
        {"minval": Option(number(), -0.05), "maxval": Option(number(), 0.05)},
        doc="U(minval, maxval)",
    ),
    "zeros": Initializer(lambda rng, shape, fan_in, fan_out: _constant(rng, shape, fan_in, fan_out, 0.0), doc="0"),
    "ones": Initializer(lambda rng, shape, fan_in, fan_out: _constant(rng, shape, fan_in, fan_out, 1.0), doc="1"),
    "constant": Initializer(
        _constant,
        {
            "value": Option(
                Check("a number or a nested list of numbers", _is_constant_value, {"type": ["number", "array"]}),
                doc="a scalar, or a nested list of the weight's exact shape",
            )
        },
        doc="given values",
    ),
}

"""Whether a float buffer holds only finite numbers: one pass of the compiled check
(nnctl/core/_loops.c, over the values' bits) where it was built, NumPy's answer where it was not.

Used by `fit` on every step's gradient and by the data readers on every float array they load.
`all_finite` takes a C-contiguous float32 or float64 buffer in native byte order (the compiled
check refuses any other); `numpy_all_finite` takes anything NumPy does.
"""
from __future__ import annotations

import numpy

from nnctl.core.loops import built


def numpy_all_finite(array) -> bool:
    """Whether no element of `array` is NaN or infinite (the fallback of the compiled check)."""
    return bool(numpy.isfinite(array).all())


# Every element checked in one vectorised pass, a third of a float sum's time; or NumPy's answer.
all_finite = numpy_all_finite if built is None else built.all_finite

# The dtypes all_finite reads (native byte order).
CHECKED_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))

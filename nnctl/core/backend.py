"""The array backend: NumPy or CuPy, seen by the math only as `xp`.

This is the only module of the engine that imports an array library, and only when a backend is
asked for: CuPy only for a cupy backend, and not even NumPy for commands that need no arrays
(`nnctl summary` starts faster than `import numpy`).
"""
from __future__ import annotations

import sys

from nnctl.errors import BackendError

BACKENDS = ("numpy", "cupy")
INSTALL_HINT = "install the extra that matches your CUDA: pip install 'nnctl[cuda12]' or 'nnctl[cuda13]'"


def namespace_of(array):
    """numpy or cupy, whichever owns `array`; an array exists, so its module is imported."""
    return sys.modules["cupy" if type(array).__module__.startswith("cupy") else "numpy"]


def to_host(array):
    """A NumPy array for files, tables and comparisons, from either backend."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    import numpy

    return numpy.asarray(array)


class Backend:
    """A named array namespace plus the few host <-> device moves the rest of nnctl needs."""

    def __init__(self, name: str, xp):
        self.name = name
        self.xp = xp

    def asarray(self, array, dtype=None):
        return self.xp.asarray(array, dtype=dtype)

    to_host = staticmethod(to_host)

    def scalar(self, value) -> float:
        """A Python float; on a GPU this is the one place a step synchronises."""
        return float(value)

    def __repr__(self) -> str:
        return f"Backend({self.name})"


def get_backend(name: str) -> Backend:
    if name == "numpy":
        import numpy

        from nnctl.core.loops import share_blas_threads

        share_blas_threads()
        return Backend("numpy", numpy)
    if name == "cupy":
        try:
            import cupy
        except ImportError as exc:
            raise BackendError(
                f"--backend cupy: expected CuPy to be installed, received an import failure ({exc}); "
                + INSTALL_HINT
            ) from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDA driver missing or broken: CuPy reports it many ways
            count, reason = 0, str(exc)
        else:
            reason = "no CUDA device was found"
        if count == 0:
            raise BackendError(
                f"--backend cupy: expected an NVIDIA GPU, received none ({reason}); "
                "run on a machine with a GPU, or use --backend numpy"
            )
        return Backend("cupy", cupy)
    raise BackendError(f"backend: expected one of numpy, cupy, received {name!r}")

"""Where the compiled loops (nnctl/core/_loops.c) run: pip built them (a C compiler was there) and
the arrays are NumPy's. Everywhere else their callers run the same arithmetic as NumPy passes,
bit for bit, so the weights never depend on which ran."""
from __future__ import annotations

import os

try:
    from nnctl.core import _loops as built
except ImportError:  # no C compiler at install
    built = None

# Set to 0, OpenBLAS keeps its own threads and the loops run on one (to measure the pool's worth).
POOL_VARIABLE = "NNCTL_POOL"


def loops_for(xp):
    """nnctl.core._loops where it was built and `xp` is NumPy, else None."""
    return built if built is not None and xp.__name__ == "numpy" else None


def share_blas_threads() -> int:
    """Run NumPy's OpenBLAS products and the loops on one pool of threads (nnctl/core/_loops.c says
    why): the threads the loops now use, 1 where the pool is off, unbuilt or has no OpenBLAS."""
    if built is None or os.environ.get(POOL_VARIABLE) == "0":
        return 1
    return built.share_blas_threads()


def pool_threads() -> int:
    """The threads OpenBLAS's products and the loops share now (OpenBLAS's count; 1: nothing shared)."""
    return built.pool_stats()[0] if built is not None else 1

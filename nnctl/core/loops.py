"""Where the compiled loops (nnctl/core/_loops.c) run: pip built them (a C compiler was there) and
the arrays are NumPy's. Everywhere else their callers run the same arithmetic as NumPy passes,
bit for bit, so the weights never depend on which ran."""
from __future__ import annotations

try:
    from nnctl.core import _loops as built
except ImportError:  # no C compiler at install
    built = None


def loops_for(xp):
    """nnctl.core._loops where it was built and `xp` is NumPy, else None."""
    return built if built is not None and xp.__name__ == "numpy" else None

"""Random streams: every random draw of a run comes from the spec's one seed, a stream per use.

The streams are independent (NumPy SeedSequence spawn keys) and drawn on the host whatever the
backend, so the same spec, seed and backend give the same weights, splits, batches and masks.
"""
from __future__ import annotations

# STREAM_GRADCHECK draws gradcheck's random batch, _SAMPLE the elements it checks, _DROPOUT its masks.
(STREAM_INIT, STREAM_SPLIT, STREAM_SHUFFLE, STREAM_DROPOUT, STREAM_GRADCHECK, STREAM_GRADCHECK_SAMPLE,
 STREAM_GRADCHECK_DROPOUT) = range(7)


def rng_for(seed: int, stream: int):
    """A PCG64 generator for one stream of the seed (NumPy's, whatever the backend)."""
    import numpy  # here, not at the top: `nnctl summary` needs no arrays

    return numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence(seed, spawn_key=(stream,))))

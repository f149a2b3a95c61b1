"""Inputs that feed an embedding hold ids: random batches draw integers for them."""
from __future__ import annotations

import numpy as np


def with_ids(session, inputs: dict, rng) -> dict:
    """`inputs` with every model input read by an embedding layer redrawn as ids (floats of
    integer value in [0, input_dim)); the others untouched."""
    inputs = dict(inputs)
    for node in session.model.nodes:
        if node.layer.type_name == "embedding":
            for ref in node.inputs:
                if ref in inputs:
                    inputs[ref] = rng.integers(0, node.layer.config["input_dim"], size=np.shape(inputs[ref])).astype(float)
    return inputs

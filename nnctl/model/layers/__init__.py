"""Layer types: the registry `LAYERS`, type name -> class; one module per family of layers.

Adding a layer type means one class in a module here and one entry in `LAYERS`.
"""
from __future__ import annotations

from nnctl.model.activations import ACTIVATIONS
from nnctl.model.layers.activation import activation_layer
from nnctl.model.layers.base import Layer
from nnctl.model.layers.dense import Dense
from nnctl.model.layers.dropout import Dropout
from nnctl.model.layers.embedding import Embedding
from nnctl.model.layers.merge import Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract
from nnctl.model.layers.normalization import BatchNormalization, LayerNormalization
from nnctl.model.layers.reshaping import Flatten, Reshape

LAYERS: dict[str, type[Layer]] = {
    "dense": Dense,
    "concat": Concatenate,
    "add": Add,
    "dropout": Dropout,
    "multiply": Multiply,
    "subtract": Subtract,
    "average": Average,
    "maximum": Maximum,
    "minimum": Minimum,
    "dot": Dot,
    "batch_normalization": BatchNormalization,
    "layer_normalization": LayerNormalization,
    "reshape": Reshape,
    "flatten": Flatten,
    "embedding": Embedding,
    **{name: activation_layer(name) for name in ACTIVATIONS},
}

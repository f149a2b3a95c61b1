"""Parameters: a model's weight values on the backend, in one flat buffer with a view per weight.

Trainable weights come first in the buffer, so `flat` (what the optimizer steps) and `grad_flat`
(its gradient) are one contiguous range each; non-trainable weights (moving statistics, adapted
preprocessing state) follow them in `all_flat`, saved, loaded and checkpointed with the rest but
never stepped, regularized or gradient-checked.
"""
from __future__ import annotations

import math

from nnctl.core.autograd import Tensor
from nnctl.errors import WeightsError


def _check_fits(key, value, dtype) -> None:
    """Weights from a file must stay finite when cast to the run's dtype (1e300 is inf in float32)."""
    import numpy

    limit = float(numpy.finfo(dtype).max)
    worst = float(abs(value).max()) if value.size else 0.0
    if not worst <= limit:
        raise WeightsError(f"array {key!r}: expected values that are finite in {numpy.dtype(dtype).name} (|x| <= {limit:.3g}), received values up to {worst:.3g}")


class Parameters:
    """Every weight in one flat buffer, every trainable weight's gradient in another; views and tensors."""

    def __init__(self, model, backend, dtype: str, values: dict):
        self.backend = backend
        xp = backend.xp
        specs = model.weight_specs  # trainable first
        sizes = [math.prod(w.shape) for _, w in specs]
        trainable_size = sum(size for (_, w), size in zip(specs, sizes) if w.trainable)
        self.all_flat = xp.zeros(sum(sizes), dtype=dtype)
        self.flat = self.all_flat[:trainable_size]
        self.grad_flat = xp.zeros(trainable_size, dtype=dtype)
        self.views, self.grad_views, self.tensors = {}, {}, {}
        offset = 0
        for (key, w), size in zip(specs, sizes):
            self.views[key] = self.all_flat[offset:offset + size].reshape(w.shape)
            _check_fits(key, values[key], dtype)
            self.views[key][...] = backend.asarray(values[key], dtype=dtype)
            tensor = Tensor(self.views[key], requires_grad=w.trainable)
            if w.trainable:
                self.grad_views[key] = self.grad_flat[offset:offset + size].reshape(w.shape)
                tensor.grad = self.grad_views[key]
            self.tensors[key] = tensor
            offset += size

    def load(self, values: dict) -> None:
        for key, view in self.views.items():
            _check_fits(key, values[key], view.dtype)
            view[...] = self.backend.asarray(values[key], dtype=view.dtype)

    def zero_grad(self) -> None:
        self.grad_flat.fill(0)

    def to_host(self) -> dict:
        return {key: self.backend.to_host(view).copy() for key, view in self.views.items()}

    def unflatten(self, host_flat) -> dict:
        """Host arrays keyed like the weights file, from a host copy of `all_flat`."""
        import numpy

        values, offset = {}, 0
        for key, view in self.views.items():
            values[key] = numpy.array(host_flat[offset:offset + view.size]).reshape(view.shape)
            offset += view.size
        return values

    def frozen(self) -> dict:
        """Tensors that need no gradient: for prediction, where no graph should be recorded."""
        return {key: Tensor(view) for key, view in self.views.items()}

"""Batches of rows for a step: gathered into reused host buffers, or on the device itself."""
from __future__ import annotations

import numpy

from nnctl.data.readers import RowFile


class Batches:
    """Batches of rows: gathered into reused host buffers, or on the device itself.

    On a GPU backend a data set that fits (DEVICE_BYTES) is copied to the device once, and each
    batch is gathered there: no host-to-device copy inside a training step.
    """

    DEVICE_BYTES = 2 << 30

    def __init__(self, dataset, batch_size: int, backend, dtype):
        self.dataset, self.batch_size, self.backend, self.dtype = dataset, batch_size, backend, dtype
        self._buffers = {}
        self._device = None
        arrays = [*dataset.inputs.values()] + ([dataset.targets] if dataset.targets is not None else [])
        if backend.name != "numpy" and not any(isinstance(a, RowFile) for a in arrays) and sum(a.nbytes for a in arrays) <= self.DEVICE_BYTES:
            self._device = {name: backend.asarray(a, dtype=dtype) for name, a in dataset.inputs.items()}
            if dataset.targets is not None:
                self._device["__targets__"] = backend.asarray(dataset.targets)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def _gather(self, key, array, rows):
        if isinstance(array, RowFile):
            gathered = array.take(rows)
            return gathered.astype(self.dtype) if gathered.dtype.kind == "f" else gathered
        shape = (len(rows),) + array.shape[1:]
        buffer = self._buffers.get((key, shape))
        if buffer is None:
            buffer = self._buffers[(key, shape)] = numpy.empty(shape, dtype=array.dtype)
        # mode="clip" (the rows are valid): under the default "raise", take() gathers into a
        # temporary and copies it into `out`.
        return numpy.take(array, rows, axis=0, out=buffer, mode="clip")

    def __call__(self, order, skip: int = 0):
        """Yield (inputs, targets, size) for the dataset's rows taken in `order`, after `skip` batches."""
        rows_all = self.dataset.rows[order] if order is not None else self.dataset.rows
        if self._device is not None:
            yield from self._on_device(self.backend.asarray(rows_all), skip)
            return
        to_device = self.backend.asarray
        for start in range(skip * self.batch_size, len(rows_all), self.batch_size):
            rows = rows_all[start:start + self.batch_size]
            inputs = {name: to_device(self._gather(name, array, rows)) for name, array in self.dataset.inputs.items()}
            targets = None
            if self.dataset.targets is not None:
                targets = to_device(self._gather("__targets__", self.dataset.targets, rows))
            yield inputs, targets, len(rows)

    def _on_device(self, rows_all, skip):
        take = self.backend.xp.take
        for start in range(skip * self.batch_size, len(rows_all), self.batch_size):
            rows = rows_all[start:start + self.batch_size]
            inputs = {name: take(self._device[name], rows, axis=0) for name in self.dataset.inputs}
            targets = take(self._device["__targets__"], rows, axis=0) if "__targets__" in self._device else None
            yield inputs, targets, len(rows)

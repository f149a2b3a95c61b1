"""Batches of rows for a step: gathered into reused host buffers, or on the device itself."""
from __future__ import annotations

import numpy

from nnctl.core.loops import loops_for
from nnctl.data.readers import RowFile

TARGETS = object()  # with an output's name, the key of its targets' buffers (an input's key is its name)


class Batches:
    """Batches of rows: gathered into reused host buffers, or on the device itself.

    On a GPU backend a data set that fits (DEVICE_BYTES) is copied to the device once, and each
    batch is gathered there: no host-to-device copy inside a training step.
    """

    DEVICE_BYTES = 2 << 30

    def __init__(self, dataset, batch_size: int, backend, dtype):
        self.dataset, self.batch_size, self.backend, self.dtype = dataset, batch_size, backend, dtype
        self._buffers = {}
        self._loops = loops_for(numpy)  # the host's gather: one copy a row, split across the pool's threads
        self._device = None
        self._targets = {(TARGETS, output): array for output, array in (dataset.targets or {}).items()}
        arrays = [*dataset.inputs.values(), *self._targets.values()]
        if backend.name != "numpy" and not any(isinstance(a, RowFile) for a in arrays) and sum(a.nbytes for a in arrays) <= self.DEVICE_BYTES:
            self._device = {name: backend.asarray(a, dtype=dtype) for name, a in dataset.inputs.items()}
            self._device.update({key: backend.asarray(array) for key, array in self._targets.items()})

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
        if (self._loops is not None and array.flags.c_contiguous and not array.dtype.hasobject
                and rows.dtype == numpy.int64 and rows.flags.c_contiguous):
            return self._loops.gather_rows(array, rows, buffer)
        # mode="clip" (the rows are valid): under the default "raise", take() gathers into a
        # temporary and copies it into `out`.
        return array.take(rows, axis=0, out=buffer, mode="clip")

    def __call__(self, order, skip: int = 0):
        """Yield (inputs, targets, size) for the dataset's rows taken in `order`, after `skip` batches;
        targets by output name, or None."""
        rows_all = self.dataset.rows[order] if order is not None else self.dataset.rows
        if self._device is not None:
            yield from self._on_device(self.backend.asarray(rows_all), skip)
            return
        to_device = self.backend.asarray
        for start in range(skip * self.batch_size, len(rows_all), self.batch_size):
            rows = rows_all[start:start + self.batch_size]
            inputs = {name: to_device(self._gather(name, array, rows)) for name, array in self.dataset.inputs.items()}
            targets = {key[1]: to_device(self._gather(key, array, rows)) for key, array in self._targets.items()}
            yield inputs, targets if self.dataset.targets is not None else None, len(rows)

    def _on_device(self, rows_all, skip):
        take = self.backend.xp.take
        for start in range(skip * self.batch_size, len(rows_all), self.batch_size):
            rows = rows_all[start:start + self.batch_size]
            inputs = {name: take(self._device[name], rows, axis=0) for name in self.dataset.inputs}
            targets = {key[1]: take(self._device[key], rows, axis=0) for key in self._targets}
            yield inputs, targets if self.dataset.targets is not None else None, len(rows)

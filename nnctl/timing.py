"""Per-layer timing of a training step, like `caffe time`: forward, backward and their share.

Forward: each layer's `call` is wrapped (on this session's layer objects only) and timed.
Backward: after the forward pass every graph tensor is assigned to the layer that created it (the
tensors between a layer's output and its inputs and weights; the loss's own ops to "loss"), and
those tensors' VJP closures are wrapped with timers before the ordinary `backward` runs. The
training path (nnctl.training.fit, nnctl.autograd.backward) is not touched and pays nothing.
On CuPy the device is synchronised around each timed region, so times are the kernels' own.
No printing: `time_step` returns plain data that nnctl.report renders.
"""
from __future__ import annotations

import time

from nnctl.autograd import Tensor, backward
from nnctl.gradcheck import random_batch
from nnctl.graph import STREAM_DROPOUT, ForwardContext, rng_for

LOSS = "loss"


class _RecordingContext(ForwardContext):
    """Remembers every tapped value (inputs, layer outputs, pre-activations) by name."""

    def __init__(self, backend, training, dropout_rng):
        super().__init__(backend, training=training, dropout_rng=dropout_rng)
        self.values = {}

    def tap(self, name, tensor):
        self.values[name] = tensor
        return tensor


def _synchronizer(backend):
    if backend.name == "cupy":
        stream = backend.xp.cuda.get_current_stream
        return lambda: stream().synchronize()
    return lambda: None


def _assign_owners(root, stop_ids, owner, owners: dict) -> None:
    """Mark every tensor from `root` back to (not including) the tensors in `stop_ids` as `owner`'s."""
    stack = [root]
    while stack:
        tensor = stack.pop()
        if not isinstance(tensor, Tensor) or id(tensor) in stop_ids or id(tensor) in owners:
            continue
        owners[id(tensor)] = (owner, tensor)
        stack.extend(parent for parent, _ in tensor.parents)


def _timed_vjp(vjp, bucket: dict, key: str, sync):
    def timed(g):
        sync()
        started = time.perf_counter()
        out = vjp(g)
        sync()
        bucket[key] += time.perf_counter() - started
        return out

    return timed


def time_step(session, batch_size: int, iterations: int, warmup: int = 2) -> dict:
    """Average milliseconds per training step, per layer, on seeded random inputs of the spec's shapes."""
    backend, model, params = session.backend, session.model, session.params
    sync = _synchronizer(backend)
    host_inputs, host_targets = random_batch(session, batch_size)
    inputs = {k: backend.asarray(v, dtype=session.dtype) for k, v in host_inputs.items()}
    targets = backend.asarray(host_targets if host_targets.dtype.kind == "i" else host_targets.astype(session.dtype))
    names = [node.name for node in model.nodes]
    forward_s = dict.fromkeys(names + [LOSS], 0.0)
    backward_s = dict.fromkeys(names + [LOSS], 0.0)
    totals = {"forward": 0.0, "backward": 0.0, "update": 0.0}
    optimizer = session.make_optimizer()
    ctx = _RecordingContext(backend, True, rng_for(session.spec.seed, STREAM_DROPOUT))

    for node in model.nodes:
        def timed_call(layer_inputs, weights, call_ctx, name=node.name, call=node.layer.call):
            sync()
            started = time.perf_counter()
            out = call(layer_inputs, weights, call_ctx)
            sync()
            forward_s[name] += time.perf_counter() - started
            return out

        node.layer.call = timed_call  # an instance attribute of this session's layer only

    try:
        for iteration in range(warmup + iterations):
            if iteration == warmup:  # the warm-up steps fill caches and allocators; not counted
                for bucket in (forward_s, backward_s):
                    for key in bucket:
                        bucket[key] = 0.0
                totals = dict.fromkeys(totals, 0.0)
            ctx.values.clear()
            params.zero_grad()
            sync()
            started = time.perf_counter()
            output = model.forward(params.tensors, inputs, ctx)
            loss_started = time.perf_counter()
            loss = session.objective(output, targets, params.tensors)  # the loss plus any regularization
            sync()
            forward_s[LOSS] += time.perf_counter() - loss_started
            totals["forward"] += time.perf_counter() - started

            owners: dict = {}
            weight_ids = {id(t) for t in params.tensors.values()}
            _assign_owners(loss, weight_ids | {id(output)}, LOSS, owners)
            for node in model.nodes:
                stop = weight_ids | {id(ctx.values[ref]) for ref in node.inputs}
                _assign_owners(ctx.values[node.name], stop, node.name, owners)
            for owner, tensor in owners.values():
                tensor.parents = tuple((parent, _timed_vjp(vjp, backward_s, owner, sync)) for parent, vjp in tensor.parents)

            sync()
            started = time.perf_counter()
            backward(loss)
            sync()
            totals["backward"] += time.perf_counter() - started
            started = time.perf_counter()
            optimizer.step(params.flat, params.grad_flat)
            sync()
            totals["update"] += time.perf_counter() - started
    finally:
        for node in model.nodes:
            del node.layer.call  # back to the class's method
    ms = 1000.0 / iterations
    step = sum(totals.values()) * ms
    classes = {node.name: (node.layer.type_name, node.layer.keras_name) for node in model.nodes}
    classes[LOSS] = (session.spec.loss[0], "Loss")
    layers = []
    for name in names + [LOSS]:
        forward_ms, backward_ms = forward_s[name] * ms, backward_s[name] * ms
        layers.append({
            "name": name, "type": classes[name][0], "class": classes[name][1],
            "forward_ms": forward_ms, "backward_ms": backward_ms, "total_ms": forward_ms + backward_ms,
            "share": (forward_ms + backward_ms) / step if step > 0 else 0.0,
        })
    accounted = sum(row["total_ms"] for row in layers) + totals["update"] * ms
    return {
        "name": session.spec.name, "backend": backend.name, "dtype": session.dtype,
        "batch_size": batch_size, "iterations": iterations, "warmup": warmup,
        "layers": layers,
        "forward_ms": totals["forward"] * ms, "backward_ms": totals["backward"] * ms,
        "update_ms": totals["update"] * ms, "step_ms": step,
        "other_ms": max(step - accounted, 0.0),
    }

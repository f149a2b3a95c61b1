"""Per-layer timing of a training step, like `caffe time`: forward, backward and their share.

It times what `nnctl train` runs: a compiled step (nnctl.train.step.TrainStep) of its own, whose layer
closures are wrapped with timers, then the optimizer update. The loss gives its value and its
gradient in one call, so its time is all in the forward column. What the layers and the update
do not account for is the step's own overhead (its loops, a regularization penalty if any, and on
NumPy the finite check of the gradient that `fit` runs after every step).
On CuPy the device is synchronised around each timed region, so times are the kernels' own.
No printing: `time_step` returns plain data that nnctl.cli.report renders.
"""
from __future__ import annotations

import time

from nnctl.diagnostics.gradcheck import random_batch
from nnctl.core.random import STREAM_DROPOUT, rng_for
from nnctl.model.graph import ForwardContext
from nnctl.core.finite import all_finite
from nnctl.core.loops import pool_threads
from nnctl.train.heads import loss_names
from nnctl.train.step import TrainStep

LOSS = "loss"


def _synchronizer(backend):
    if backend.name == "cupy":
        stream = backend.xp.cuda.get_current_stream
        return lambda: stream().synchronize()
    return lambda: None


def time_step(session, batch_size: int, iterations: int, warmup: int = 2) -> dict:
    """Average milliseconds per training step, per layer, on seeded random inputs of the spec's shapes."""
    backend, model, params = session.backend, session.model, session.params
    sync = _synchronizer(backend)
    host_inputs, host_targets = random_batch(session, batch_size)
    inputs = {k: backend.asarray(v, dtype=session.dtype) for k, v in host_inputs.items()}
    targets = {name: backend.asarray(t if t.dtype.kind == "i" else t.astype(session.dtype)) for name, t in host_targets.items()}
    names = [node.name for node in model.nodes] + [LOSS]
    seconds = {part: dict.fromkeys(names, 0.0) for part in ("forward", "backward")}

    def timer(name, part, closure):
        def timed(*args):
            sync()
            started = time.perf_counter()
            out = closure(*args)
            sync()
            seconds[part][name] += time.perf_counter() - started
            return out

        return timed

    step = TrainStep(session, batch_size)  # not the session's own: its closures get timers
    step.wrap(timer)
    optimizer = session.make_optimizer()
    ctx = ForwardContext(backend, True, rng_for(session.spec.seed, STREAM_DROPOUT))
    step_s = update_s = 0.0
    checks = backend.name == "numpy"  # as in fit: on a GPU the check would synchronise every step
    for iteration in range(warmup + iterations):
        if iteration == warmup:  # the warm-up steps fill caches and allocators; not counted
            for bucket in seconds.values():
                bucket.update(dict.fromkeys(bucket, 0.0))
            step_s = update_s = 0.0
        sync()
        started = time.perf_counter()
        step(inputs, targets, ctx)
        if checks:
            all_finite(params.grad_flat)
        sync()
        step_s += time.perf_counter() - started
        started = time.perf_counter()
        optimizer.step(params.flat, params.grad_flat)
        sync()
        update_s += time.perf_counter() - started

    ms = 1000.0 / iterations
    step_ms, update_ms = (step_s + update_s) * ms, update_s * ms
    forward_ms = sum(seconds["forward"].values()) * ms
    classes = {node.name: (node.layer.type_name, node.layer.keras_name) for node in model.nodes}
    classes[LOSS] = (loss_names(session.spec.outputs), "Loss")
    layers = []
    for name in names:
        layer_forward, layer_backward = seconds["forward"][name] * ms, seconds["backward"][name] * ms
        layers.append({
            "name": name, "type": classes[name][0], "class": classes[name][1],
            "forward_ms": layer_forward, "backward_ms": layer_backward, "total_ms": layer_forward + layer_backward,
            "share": (layer_forward + layer_backward) / step_ms if step_ms > 0 else 0.0,
        })
    accounted = sum(row["total_ms"] for row in layers) + update_ms
    return {
        "name": session.spec.name, "backend": backend.name, "dtype": session.dtype,
        "batch_size": batch_size, "iterations": iterations, "warmup": warmup,
        "layers": layers,
        "forward_ms": forward_ms, "backward_ms": step_s * ms - forward_ms,
        "update_ms": update_ms, "step_ms": step_ms,
        "optimizer": session.spec.optimizer.name, "optimizer_compiled": optimizer.compiled(backend.xp),
        "other_ms": max(step_ms - accounted, 0.0),
        # NumPy's OpenBLAS and the compiled loops on one pool (nnctl/core/_loops.c); None on a GPU
        "threads": pool_threads() if backend.name == "numpy" else None,
    }

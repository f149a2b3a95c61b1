"""Checkpoints: a run's full state in one .npz, so `nnctl train --resume` continues bit-exactly.

Arrays: `weights/<key>`, `optimizer/<slot>`, `totals/<name>`, `order`; a JSON document `meta`
holds epoch, step, history, the random generators' states and the spec's fingerprint. Nothing
is pickled.
"""
from __future__ import annotations

import hashlib
import json

import numpy

from nnctl.errors import Problem, WeightsError
from nnctl.fileio import atomic_write
from nnctl.training import TrainState
from nnctl.weights import read_arrays

FORMAT = 1


def spec_fingerprint(spec) -> str:
    """What must not change between a checkpoint and its resume: all but epochs and backend."""
    resolved = spec.resolved()
    resolved["train"] = {k: v for k, v in resolved["train"].items() if k != "epochs"}
    resolved.pop("backend", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path, spec, weights: dict, state: TrainState) -> None:
    optimizer = dict(state.optimizer or {})
    meta = {
        "format": FORMAT, "spec": spec_fingerprint(spec), "seed": spec.seed, "epoch": state.epoch, "step": state.step,
        "iterations": int(optimizer.pop("iterations", 0)), "history": state.history,
        "shuffle_rng": state.shuffle_rng, "dropout_rng": state.dropout_rng, "count": int(state.totals.get("count", 0)),
    }
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    arrays.update({f"optimizer/{k}": v for k, v in optimizer.items()})
    arrays.update({f"totals/{k}": v for k, v in state.totals.items() if k != "count"})
    if state.order is not None:
        arrays["order"] = numpy.asarray(state.order)
    arrays["meta"] = numpy.array(json.dumps(meta))
    with atomic_write(path) as handle:
        numpy.savez(handle, **arrays)


def load_checkpoint(path, spec, weight_shapes: dict):
    """(weights, TrainState) from `path`, refused if the spec changed or the file is damaged."""
    arrays = read_arrays(path, what="checkpoint (train without --resume first to make one)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError):
        raise WeightsError(Problem("expected an nnctl checkpoint with a 'meta' record, received a file without one", str(path))) from None
    if meta.get("format") != FORMAT:
        raise WeightsError(Problem(f"expected checkpoint format {FORMAT}, received {meta.get('format')!r}", str(path)))
    if meta["spec"] != spec_fingerprint(spec):
        raise WeightsError(Problem(
            f"expected the spec the checkpoint was made with, received a changed spec ({spec.file}); "
            "only train.epochs and the backend may change on --resume. Train without --resume to start over", str(path)))
    weights = {}
    for key, shape in weight_shapes.items():
        value = arrays.get(f"weights/{key}")
        if value is None or value.shape != tuple(shape):
            raise WeightsError(Problem(f"expected array 'weights/{key}' of shape {tuple(shape)} in the checkpoint, received {None if value is None else value.shape}", str(path)))
        weights[key] = value
    optimizer = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    optimizer["iterations"] = meta["iterations"]
    totals = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("totals/")}
    if totals:
        totals["count"] = meta["count"]
    state = TrainState(meta["epoch"], meta["step"], arrays.get("order"), totals, meta["history"],
                       meta["shuffle_rng"], meta["dropout_rng"], optimizer)
    return weights, state

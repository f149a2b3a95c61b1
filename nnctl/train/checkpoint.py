"""Checkpoints: a run's full state in one .npz, so `nnctl train --resume` continues bit-exactly.

Arrays: `weights/<key>`, `optimizer/<slot>`, `totals/<name>`, `order`, `best_weights` (the flat
weights of the best epoch); a JSON document `meta` holds epoch, step, history, the random
generators' states, the training controls' state (early-stopping counters, best value, schedule
state and current rate: exact floats), the spec's fingerprint and the data files' (a resume on
changed data is refused). Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy

from nnctl.data import cache
from nnctl.errors import CheckpointError, Problem
from nnctl.io import hashing
from nnctl.io.atomic import atomic_write
from nnctl.train.optimizers import OPTIMIZERS
from nnctl.train.fit import TrainState
from nnctl.train.heads import total_keys
from nnctl.io.arrays import Archive

FORMAT = 3  # 2: training controls (meta "controls", array "best_weights"); 3: Adam keeps decayed sums


def spec_fingerprint(spec) -> str:
    """What must not change between a checkpoint and its resume: all but epochs and backend.

    Data files count by their contents (`data_fingerprint`), not by how their paths are spelled:
    `nnctl train $PWD/specs/x.yaml --resume` continues `nnctl train specs/x.yaml`.
    """
    resolved = spec.resolved()
    resolved["train"] = {k: v for k, v in resolved["train"].items() if k != "epochs"}
    resolved.pop("backend", None)
    if resolved["data"] is not None:
        # (and the cache folder: where parsed data is kept changes nothing it holds)
        resolved["data"] = {k: v for k, v in resolved["data"].items() if k not in ("path", "validation", "test", "cache")}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def _data_files(spec) -> list:
    return [path for path in (spec.data.path, spec.data.validation) if path is not None] if spec.data is not None else []


def start_data_fingerprint(spec) -> None:
    """Begin hashing the training and validation files in threads (nnctl.io.hashing), to run beside
    their reading; a file whose hash the data cache's hashes.json holds for its present stat is not
    read again."""
    for path in _data_files(spec):
        try:
            known = spec.data.cache is not None and cache.known_sha256(path, spec.data.cache) is not None
        except OSError:
            continue  # the loader says what is wrong with the path
        if not known:
            hashing.start(path)


def data_fingerprint(spec) -> str | None:
    """The training and validation files' contents (None when one is missing: the loader says so).
    Each file is hashed once per process (waiting for a hash that start_data_fingerprint began)."""
    if spec.data is None:
        return None
    digest = hashlib.sha256()
    for path in _data_files(spec):
        try:
            digest.update(hashing.sha256(path).encode())
        except OSError:
            return None
    return digest.hexdigest()


def save_checkpoint(path, spec, weights: dict, state: TrainState) -> None:
    optimizer = dict(state.optimizer or {})
    meta = {
        "format": FORMAT, "spec": spec_fingerprint(spec), "data": data_fingerprint(spec), "seed": spec.seed,
        "epochs": spec.train["epochs"], "epoch": state.epoch, "step": state.step,
        "iterations": int(optimizer.pop("iterations", 0)), "history": state.history,
        "shuffle_rng": state.shuffle_rng, "dropout_rng": state.dropout_rng, "count": int(state.totals.get("count", 0)),
        "controls": state.controls or {},
    }
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    arrays.update({f"optimizer/{k}": v for k, v in optimizer.items()})
    arrays.update({f"totals/{k}": v for k, v in state.totals.items() if k != "count"})
    if state.order is not None:
        arrays["order"] = numpy.asarray(state.order)
    if state.best_weights is not None:
        arrays["best_weights"] = numpy.asarray(state.best_weights)
    arrays["meta"] = numpy.array(json.dumps(meta))
    with atomic_write(path) as handle:
        numpy.savez(handle, **arrays)


def _read(path, what: str) -> dict:
    with Archive(path, CheckpointError, f"a {what}") as archive:
        return {name: archive.read(name) for name in archive.names}


def checkpoint_progress(path) -> dict | None:
    """{epoch, epochs, seed, finished} of the checkpoint at `path`, or None when there is none
    (or it cannot be read: a damaged file holds no run to continue)."""
    try:
        meta = json.loads(str(_read(path, "checkpoint")["meta"]))
        epoch, planned = int(meta["epoch"]), meta.get("epochs")
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None
    stopped = bool((meta.get("controls") or {}).get("stopped_early"))
    # A checkpoint without its planned epochs predates them: it cannot say it is unfinished.
    finished = stopped or not isinstance(planned, int) or epoch > planned
    return {"epoch": epoch, "epochs": planned, "seed": meta.get("seed"), "finished": finished}


def load_checkpoint(path, spec, model):
    """(weights, TrainState) from `path` for `model` (nnctl.model.graph.Model), refused if the spec
    changed or the file is damaged."""
    weight_shapes = model.weight_shapes
    size = sum(math.prod(s) for s in weight_shapes.values())
    trainable_size = sum(math.prod(w.shape) for _, w in model.weight_specs if w.trainable)
    arrays = _read(path, "checkpoint (train without --resume first to make one)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError):
        raise CheckpointError(Problem("expected an nnctl checkpoint with a 'meta' record, received a file without one", str(path))) from None
    if not isinstance(meta, dict):
        raise CheckpointError(Problem(f"expected an nnctl checkpoint's 'meta' record (a JSON object), received {type(meta).__name__}", str(path)))
    if meta.get("format") != FORMAT:
        raise CheckpointError(Problem(f"expected checkpoint format {FORMAT}, received {meta.get('format')!r}", str(path)))
    if meta.get("spec") != spec_fingerprint(spec):
        raise CheckpointError(Problem(
            f"expected the spec the checkpoint was made with, received a changed spec ({spec.file}); "
            "only train.epochs and the backend may change on --resume. Train without --resume to start over", str(path)))
    saved_data, current_data = meta.get("data"), data_fingerprint(spec)
    if saved_data is not None and current_data is not None and saved_data != current_data:
        files = " or ".join(str(p) for p in (spec.data.path, spec.data.validation) if p is not None)
        raise CheckpointError(Problem(
            f"expected the data the checkpoint was made with, received changed data ({files}); "
            "train without --resume to start over on it", str(path)))
    weights = {}
    for key, shape in weight_shapes.items():
        value = arrays.get(f"weights/{key}")
        if value is None or value.shape != tuple(shape):
            raise CheckpointError(Problem(f"expected array 'weights/{key}' of shape {tuple(shape)} in the checkpoint, received {None if value is None else value.shape}", str(path)))
        _check_floats(path, f"weights/{key}", value)
        weights[key] = value
    optimizer = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    totals = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("totals/")}
    _check_state(path, spec, meta, optimizer, totals, arrays.get("order"), trainable_size)
    optimizer["iterations"] = meta["iterations"]
    if totals:
        totals["count"] = meta["count"]
    controls, best = meta.get("controls", {}), arrays.get("best_weights")
    if best is not None and best.shape != (size,):
        raise CheckpointError(Problem(f"expected an intact nnctl checkpoint, received a damaged one: 'best_weights' should have shape {(size,)}, has {best.shape}", str(path)))
    if best is not None:
        _check_floats(path, "best_weights", best)
    state = TrainState(meta["epoch"], meta["step"], arrays.get("order"), totals, meta["history"],
                       meta["shuffle_rng"], meta["dropout_rng"], optimizer, controls, best)
    return weights, state


def _check_state(path, spec, meta, optimizer, totals, order, size) -> None:
    """A damaged or hand-edited checkpoint is refused here, not half-way into training; `size` is
    the number of trainable values (the optimizer's slots)."""
    def damaged(what):
        return CheckpointError(Problem(f"expected an intact nnctl checkpoint, received a damaged one: {what}", str(path)))

    def is_int(value, minimum):
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    for key, minimum in (("epoch", 1), ("step", 0), ("iterations", 0), ("count", 0)):
        if not is_int(meta.get(key), minimum):
            raise damaged(f"meta {key!r} is {meta.get(key)!r}, not an integer >= {minimum}")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise damaged("meta 'history' is not a list of epoch records")
    if len(history) != meta["epoch"] - 1 or any(row.get("epoch") != i for i, row in enumerate(history, start=1)):
        raise damaged(f"meta 'history' should hold epochs 1 to {meta['epoch'] - 1}, holds {len(history)} records")
    if not all(_is_number_or_null(v) for row in history for v in row.values()):
        raise damaged("meta 'history' holds a value that is not a number")
    _check_controls(meta.get("controls", {}), damaged)
    for key in ("shuffle_rng", "dropout_rng"):
        if meta.get(key) is not None:
            try:
                numpy.random.PCG64().state = meta[key]
            except (TypeError, ValueError, KeyError) as exc:
                raise damaged(f"meta {key!r} is not a generator state ({exc})") from None
    expected = OPTIMIZERS[spec.optimizer.name].slots
    for slot in expected:
        value = optimizer.get(slot)
        if value is None or value.shape != (size,):
            raise damaged(f"optimizer slot {slot!r} should have shape {(size,)}, has {None if value is None else value.shape}")
        _check_floats(path, f"optimizer/{slot}", value)
    if meta["step"] > 0:
        if order is None or order.ndim != 1 or order.dtype.kind not in "iu":
            raise damaged("a run stopped mid-epoch needs its sample 'order' (1-D integers)")
        needed = total_keys(spec.outputs)
        missing = [k for k in needed if k not in totals]
        if missing:
            raise damaged(f"the running totals lack {', '.join(missing)}")
        for name, value in totals.items():  # a metric's state may be an array (AUC keeps its scores)
            if value.shape != () and not name.startswith("metric/"):
                raise damaged(f"the running total {name!r} should be one number, has shape {value.shape}")
            _check_floats(path, f"totals/{name}", value)


def _check_floats(path, name: str, value) -> None:
    """An array a checkpoint holds must be finite floating-point numbers."""
    if value.dtype.kind != "f" or not numpy.isfinite(value).all():
        what = f"dtype {value.dtype}" if value.dtype.kind != "f" else "NaN or inf"
        raise CheckpointError(Problem(f"array {name!r}: expected finite floating-point values, received {what}", str(path)))


def _is_number_or_null(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_controls(controls, damaged) -> None:
    """The training controls' state as Controls.state() writes it (nnctl.train.controls)."""
    if not isinstance(controls, dict):
        raise damaged("meta 'controls' is not a JSON object")
    tracker = controls.get("tracker")
    if tracker is not None and not (isinstance(tracker, dict) and _is_number_or_null(tracker.get("best"))
                                    and _is_number_or_null(tracker.get("best_epoch"))):
        raise damaged("meta 'controls' has a tracker that is not {best, best_epoch}")
    if not isinstance(controls.get("wait", 0), int) or not isinstance(controls.get("schedule") or {}, dict):
        raise damaged("meta 'controls' has a 'wait' or 'schedule' of the wrong type")
    if not all(_is_number_or_null(v) for v in (controls.get("schedule") or {}).values()):
        raise damaged("meta 'controls' has a schedule state that is not numbers")
    stopped = controls.get("stopped_early")
    if stopped is not None and not (isinstance(stopped, dict) and isinstance(stopped.get("epoch"), int) and isinstance(stopped.get("reason"), str)):
        raise damaged("meta 'controls' has a 'stopped_early' that is not {epoch, reason, ...}")

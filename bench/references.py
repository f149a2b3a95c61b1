"""Reference trainers for the nnctl throughput benchmark.

Every reference trains the same network on the same inputs (data, initial weights and batch
order all come from `make_workload`), so a throughput number is only ever compared with another
one that did the same arithmetic.  `python bench/references.py --check` proves that: the NumPy,
PyTorch and JAX references end on the same weights.

Implementations, each `train_<impl>(workload, x, y, init, perms, batch_size=None, lr=None,
repeats=1)` returning {"seconds", "samples_per_s", "steps_per_s", "final_loss", "weights"}:

    numpy  hand-written forward/backward, preallocated buffers, fused softmax-xent gradient
    torch  PyTorch eager, nn.Linear (+ nn.BatchNorm1d) + torch.optim.Adam (optional: skipped if not importable)
    jax    whole train step under jax.jit, Adam written in jax.numpy (optional)
    gemm   only the matrix products of a training step: an upper bound on samples/s

The batch-normalized MLP (mlp_bn) has two of them, torch and gemm (`unsupported` says why not
the others): nnctl's batch normalization is Keras' (momentum 0.99, epsilon 1e-3), torch's
BatchNorm1d is configured to match (momentum = 1 - 0.99 = 0.01, eps = 1e-3); both normalize a
training batch with its biased variance, and only torch's running variance (the unbiased one)
differs, which training never reads.

Adam everywhere is PyTorch's formula (bias-corrected, eps added to sqrt(v_hat)), in the same
order of operations as torch's CPU kernel so float64 runs agree to rounding.

Usage:
    python bench/references.py --check            # do the references agree? (~10 s idle)
    python bench/references.py --repeat 3         # benchmark table (mlp and two_tower)
    python bench/references.py --workload mlp --n 20000 --epochs 1 --impl numpy gemm
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

BETA1, BETA2, EPS = 0.9, 0.999, 1e-7
# Batch normalization as Keras (and nnctl) defines it; torch's momentum is 1 - this one.
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3

# Warm-up steps run on a throwaway copy of the model before the clock starts, so JIT compiles,
# BLAS thread start-up and first-touch allocations are never timed.
WARMUP_FULL_BATCHES = 3


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


def _chain_graph(names, dense, relu, concat, x):
    """Dense-relu layers `names` in a chain, the last without relu (the logits)."""
    h = x
    for name in names[:-1]:
        h = relu(dense(name, h))
    return dense(names[-1], h)


def _two_tower_graph(dense, relu, concat, x):
    return dense("dense3", concat([dense("dense1", x), dense("dense2", x)]))


@dataclass(frozen=True)
class Workload:
    name: str
    # (layer name, fan_in, fan_out), in the order make_workload draws their initial kernels.
    layers: tuple[tuple[str, int, int], ...]
    # Layers that read the raw input: backprop never needs their dX.
    input_layers: frozenset[str]
    # graph(dense, relu, concat, x) -> output. Declared once so that the torch and jax
    # references cannot drift apart; the NumPy reference spells out its backward by hand.
    graph: Callable
    loss: str  # "sparse_xent" (logits, int labels) or "mse"
    batch_size: int
    lr: float
    # Dense layers whose output is batch-normalized (a layer "<name>_bn") before its relu.
    batchnorm: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return self.layers[0][1]


class _Workloads(dict):
    """The named workloads, and MLPs sized by name for the scaling table (bench/scaling.py):
    "mlp-b{batch}-w{width}-d{depth}" is 784 inputs, depth - 1 relu layers of width units, 10 logits."""

    def __missing__(self, name):
        try:
            batch, width, depth = (int(part[1:]) for part in name.split("-")[1:])
        except ValueError:
            raise KeyError(name) from None
        names = ["dense"] + [f"dense_{i}" for i in range(1, depth)]
        fans = [784] + [width] * (depth - 1) + [10]
        return Workload(name, tuple(zip(names, fans[:-1], fans[1:])), frozenset({"dense"}),
                        functools.partial(_chain_graph, tuple(names)), "sparse_xent", batch, 1e-3)


def scaled_mlp(batch: int, width: int, depth: int) -> str:
    """The name of the scaling table's MLP of `depth` dense layers (see _Workloads)."""
    return f"mlp-b{batch}-w{width}-d{depth}"


WORKLOADS: dict[str, Workload] = _Workloads({
    "mlp": Workload(
        name="mlp",
        layers=(("dense", 784, 256), ("dense_1", 256, 128), ("dense_2", 128, 64), ("dense_3", 64, 10)),
        input_layers=frozenset({"dense"}),
        graph=functools.partial(_chain_graph, ("dense", "dense_1", "dense_2", "dense_3")),
        loss="sparse_xent",
        batch_size=128,
        lr=1e-3,
    ),
    "two_tower": Workload(
        name="two_tower",
        layers=(("dense1", 2, 1), ("dense2", 2, 2), ("dense3", 3, 1)),
        input_layers=frozenset({"dense1", "dense2"}),
        graph=_two_tower_graph,
        loss="mse",
        batch_size=32,
        lr=0.01,
    ),
    "mlp_bn": Workload(
        name="mlp_bn",
        layers=(("dense", 784, 256), ("dense_1", 256, 128), ("dense_2", 128, 10)),
        input_layers=frozenset({"dense"}),
        graph=functools.partial(_chain_graph, ("dense", "dense_1", "dense_2")),
        loss="sparse_xent",
        batch_size=128,
        lr=1e-3,
        batchnorm=("dense", "dense_1"),
    ),
})


def unsupported(impl: str, workload: str) -> str | None:
    """Why reference `impl` cannot train `workload` (None when it can)."""
    if WORKLOADS[workload].batchnorm and impl in ("numpy", "jax"):
        return "no batch-normalization reference"
    return None


def full_references() -> tuple:
    """The workloads every reference trains (what --check and the reference table cover)."""
    return tuple(name for name, workload in WORKLOADS.items() if not workload.batchnorm)


def make_workload(name: str, n: int, epochs: int, seed: int = 0):
    """(x, y, init, perms) for workload `name`, deterministic in `seed`, all float32.

    x: (n, d) float32. y: (n,) int64 labels for mlp, (n, 1) float32 for two_tower.
    init: {"<layer>/kernel": (in, out) glorot-uniform, "<layer>/bias": zeros}.
    perms: one permutation of range(n) per epoch (the batch order).

    Data, weights and batch order draw from separate child streams of default_rng(seed), so the
    initial weights do not change with n or epochs (a small --check and a full benchmark start
    from the same network).
    """
    workload = WORKLOADS[name]
    data_rng, init_rng, perm_rng = np.random.default_rng(seed).spawn(3)

    if workload.loss == "sparse_xent":
        x = data_rng.random((n, workload.n_features), dtype=np.float32)
        teacher = data_rng.standard_normal((workload.n_features, 10))
        # Centred columns: with x >= 0 an uncentred teacher lets one class win almost always.
        teacher -= teacher.mean(axis=0)
        y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    else:
        x = data_rng.standard_normal((n, workload.n_features)).astype(np.float32)
        teacher = data_rng.standard_normal((workload.n_features, 1))
        noise = 0.1 * data_rng.standard_normal((n, 1))
        y = (x @ teacher + 0.3 + noise).astype(np.float32)

    init = {}
    for layer, fan_in, fan_out in workload.layers:
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        init[f"{layer}/kernel"] = init_rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        init[f"{layer}/bias"] = np.zeros(fan_out, np.float32)
        if layer in workload.batchnorm:  # Keras' (and torch's) initial batch normalization
            for weight, value in (("gamma", 1), ("beta", 0), ("moving_mean", 0), ("moving_variance", 1)):
                init[f"{layer}_bn/{weight}"] = np.full(fan_out, value, np.float32)

    perms = [perm_rng.permutation(n) for _ in range(epochs)]
    return x, y, init, perms


def cast_workload(x, y, init, dtype):
    """The same problem in another float dtype (labels stay int64)."""
    y = y if y.dtype.kind == "i" else y.astype(dtype)
    return x.astype(dtype), y, {k: v.astype(dtype) for k, v in init.items()}


# --------------------------------------------------------------------------------------------
# Shared training driver
# --------------------------------------------------------------------------------------------


def _batches(perm, batch_size):
    """Index arrays of one epoch, the last partial batch included."""
    return [perm[start:start + batch_size] for start in range(0, len(perm), batch_size)]


def _warmup_batches(perm, batch_size):
    batches = _batches(perm, batch_size)
    warm = batches[:WARMUP_FULL_BATCHES]
    # A partial last batch has a new shape: the JIT must compile it before the clock starts.
    if len(batches[-1]) != batch_size:
        warm.append(batches[-1])
    return warm


def _throughput(seconds, n_samples, n_steps):
    return {"seconds": seconds, "samples_per_s": n_samples / seconds, "steps_per_s": n_steps / seconds}


def _train(trainer_cls, workload, x, y, init, perms, batch_size, lr, repeats):
    """Warm up on a throwaway trainer, then time every epoch of `perms` on a fresh one.

    A trainer is built as trainer_cls(workload, x, y, init, lr, batch_size) and has
    step(idx) -> loss (a backend scalar, read only after the clock stops), sync() and weights().
    With repeats > 1 the whole timed run is redone from `init` and the fastest one is kept: every
    run computes the same thing, and the minimum is the one least disturbed by other processes.
    """
    wl = WORKLOADS[workload]
    batch_size = batch_size or wl.batch_size
    lr = lr or wl.lr

    warm = trainer_cls(wl, x, y, init, lr, batch_size)
    for idx in _warmup_batches(perms[0], batch_size):
        warm.step(idx)
    warm.sync()
    del warm

    best = None
    for _ in range(repeats):
        trainer = trainer_cls(wl, x, y, init, lr, batch_size)
        n_steps = 0
        start = time.perf_counter()
        for perm in perms:
            batches = _batches(perm, batch_size)
            # Losses stay on the backend until the end: reading one per step would force a sync.
            losses = [trainer.step(idx) for idx in batches]
            n_steps += len(batches)
        trainer.sync()
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, trainer, losses, batches)

    seconds, trainer, losses, batches = best
    # Sample-weighted, so the partial last batch counts for what it holds (as Keras reports it).
    final_loss = sum(float(loss) * len(idx) for loss, idx in zip(losses, batches)) / len(x)
    result = _throughput(seconds, len(x) * len(perms), n_steps)
    result.update(final_loss=final_loss, weights=trainer.weights())
    return result


# --------------------------------------------------------------------------------------------
# (a) Hand-written NumPy
# --------------------------------------------------------------------------------------------


def _flat_views(template: dict, dtype):
    """One contiguous buffer plus a per-key view of it shaped like `template`.

    Adam then runs as a handful of ufunc calls over every parameter at once instead of a
    handful per tensor, which is most of the optimizer's cost on small layers.
    """
    sizes = {k: int(np.prod(v.shape)) for k, v in template.items()}
    flat = np.zeros(sum(sizes.values()), dtype)
    views, offset = {}, 0
    for key, arr in template.items():
        views[key] = flat[offset:offset + sizes[key]].reshape(arr.shape)
        offset += sizes[key]
    return flat, views


class _NumpyAdam:
    """In-place Adam over one flat parameter buffer, op for op like torch's single-tensor Adam."""

    def __init__(self, params_flat, lr):
        self.params = params_flat
        self.lr = lr
        self.m = np.zeros_like(params_flat)
        self.v = np.zeros_like(params_flat)
        self.tmp = np.empty_like(params_flat)
        self.t = 0

    def update(self, grads):
        self.t += 1
        m, v, tmp = self.m, self.v, self.tmp
        step_size = self.lr / (1 - BETA1**self.t)
        bias_correction2_sqrt = math.sqrt(1 - BETA2**self.t)

        np.subtract(grads, m, out=tmp)  # m.lerp_(g, 1 - beta1)
        tmp *= 1 - BETA1
        m += tmp
        v *= BETA2  # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        np.multiply(grads, grads, out=tmp)
        tmp *= 1 - BETA2
        v += tmp
        np.sqrt(v, out=tmp)  # denom = sqrt(v) / sqrt(bc2) + eps
        tmp /= bias_correction2_sqrt
        tmp += EPS
        np.divide(m, tmp, out=tmp)
        tmp *= -step_size
        self.params += tmp


def _softmax_xent_grad_(logits, labels):
    """Mean sparse cross-entropy of `logits`, overwritten in place by its gradient."""
    nb = len(logits)
    rows = np.arange(nb)
    logits -= logits.max(axis=1, keepdims=True)
    # The label's logit is read before exp(): log(exp(z)) would round small probabilities away.
    picked = logits[rows, labels]
    np.exp(logits, out=logits)
    sums = logits.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(sums[:, 0]) - picked))
    logits /= sums
    logits[rows, labels] -= 1
    logits *= 1.0 / nb
    return loss


def _mse_grad_(pred, target):
    """Mean squared error of `pred`, overwritten in place by its gradient."""
    pred -= target
    loss = float(np.vdot(pred, pred)) / pred.size
    pred *= 2.0 / pred.size
    return loss


class _NumpyMLP:
    """Dense-relu chain with a logits head; every intermediate lives in a preallocated buffer."""

    def __init__(self, wl, params, grads, batch_size, dtype):
        self.names = [layer for layer, _, _ in wl.layers]
        self.params, self.grads = params, grads
        widths = [fan_out for _, _, fan_out in wl.layers]
        self.acts = [np.empty((batch_size, w), dtype) for w in widths]
        self.act_grads = [np.empty((batch_size, w), dtype) for w in widths[:-1]]
        self.masks = [np.empty((batch_size, w), bool) for w in widths[:-1]]

    def loss_and_grads(self, xb, yb):
        nb, p, g = len(xb), self.params, self.grads
        inputs = [xb]
        for i, name in enumerate(self.names):
            z = np.matmul(inputs[-1], p[f"{name}/kernel"], out=self.acts[i][:nb])
            z += p[f"{name}/bias"]
            if i < len(self.names) - 1:
                np.maximum(z, 0, out=z)
            inputs.append(z)

        delta = inputs.pop()
        loss = _softmax_xent_grad_(delta, yb)
        for i in reversed(range(len(self.names))):
            name, a_in = self.names[i], inputs[i]
            np.matmul(a_in.T, delta, out=g[f"{name}/kernel"])
            np.sum(delta, axis=0, out=g[f"{name}/bias"])
            if i == 0:
                break
            upstream = np.matmul(delta, p[f"{name}/kernel"].T, out=self.act_grads[i - 1][:nb])
            upstream *= np.greater(a_in, 0, out=self.masks[i - 1][:nb])  # relu'
            delta = upstream
        return loss


class _NumpyTwoTower:
    """dense1(x) ++ dense2(x) -> dense3, all linear, MSE."""

    def __init__(self, wl, params, grads, batch_size, dtype):
        self.params, self.grads = params, grads
        self.split = params["dense1/kernel"].shape[1]
        width = self.split + params["dense2/kernel"].shape[1]
        self.concat = np.empty((batch_size, width), dtype)
        self.pred = np.empty((batch_size, params["dense3/kernel"].shape[1]), dtype)
        self.concat_grad = np.empty((batch_size, width), dtype)

    def loss_and_grads(self, xb, yb):
        nb, p, g, s = len(xb), self.params, self.grads, self.split
        h = self.concat[:nb]
        np.matmul(xb, p["dense1/kernel"], out=h[:, :s])
        np.matmul(xb, p["dense2/kernel"], out=h[:, s:])
        h[:, :s] += p["dense1/bias"]
        h[:, s:] += p["dense2/bias"]
        delta = np.matmul(h, p["dense3/kernel"], out=self.pred[:nb])
        delta += p["dense3/bias"]

        loss = _mse_grad_(delta, yb)
        np.matmul(h.T, delta, out=g["dense3/kernel"])
        np.sum(delta, axis=0, out=g["dense3/bias"])
        dh = np.matmul(delta, p["dense3/kernel"].T, out=self.concat_grad[:nb])
        for name, part in (("dense1", dh[:, :s]), ("dense2", dh[:, s:])):
            np.matmul(xb.T, part, out=g[f"{name}/kernel"])
            np.sum(part, axis=0, out=g[f"{name}/bias"])
        return loss


_NUMPY_MODELS = {"sparse_xent": _NumpyMLP, "mse": _NumpyTwoTower}  # by the workload's loss


class _NumpyTrainer:
    def __init__(self, wl, x, y, init, lr, batch_size):
        dtype = x.dtype
        self.x, self.y = x, y
        self.params_flat, self.params = _flat_views(init, dtype)
        for key, value in init.items():
            self.params[key][...] = value
        self.grads_flat, grads = _flat_views(init, dtype)
        self.adam = _NumpyAdam(self.params_flat, lr)
        self.model = _NUMPY_MODELS[wl.loss](wl, self.params, grads, batch_size, dtype)
        self.x_batch = np.empty((batch_size,) + x.shape[1:], x.dtype)
        self.y_batch = np.empty((batch_size,) + y.shape[1:], y.dtype)

    def step(self, idx):
        nb = len(idx)
        # mode="clip" because take() buffers `out` under the default mode="raise".
        xb = np.take(self.x, idx, axis=0, out=self.x_batch[:nb], mode="clip")
        yb = np.take(self.y, idx, axis=0, out=self.y_batch[:nb], mode="clip")
        loss = self.model.loss_and_grads(xb, yb)
        self.adam.update(self.grads_flat)
        return loss

    def sync(self):
        pass

    def weights(self):
        return {k: v.copy() for k, v in self.params.items()}


def train_numpy(workload, x, y, init, perms, batch_size=None, lr=None, repeats=1):
    """Hand-written NumPy forward/backward + Adam. Returns seconds, samples_per_s,
    steps_per_s, final_loss and weights ({key: ndarray}, Keras orientation)."""
    return _train(_NumpyTrainer, workload, x, y, init, perms, batch_size, lr, repeats)


# --------------------------------------------------------------------------------------------
# (b) PyTorch eager
# --------------------------------------------------------------------------------------------


class _TorchTrainer:
    def __init__(self, wl, x, y, init, lr, batch_size):
        import torch

        self.torch = torch
        self.wl = wl
        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[x.dtype]
        self.linears = torch.nn.ModuleDict(
            {name: torch.nn.Linear(fan_in, fan_out, dtype=dtype) for name, fan_in, fan_out in wl.layers}
        )
        with torch.no_grad():
            for name, linear in self.linears.items():
                linear.weight.copy_(torch.from_numpy(init[f"{name}/kernel"]).T)
                linear.bias.copy_(torch.from_numpy(init[f"{name}/bias"]))
        # Keras' momentum 0.99 is torch's 0.01; eps as Keras' epsilon.
        self.norms = torch.nn.ModuleDict(
            {name: torch.nn.BatchNorm1d(fan_out, eps=BN_EPSILON, momentum=1 - BN_MOMENTUM, dtype=dtype)
             for name, _, fan_out in wl.layers if name in wl.batchnorm}
        )
        with torch.no_grad():
            for name, norm in self.norms.items():
                for attribute, weight in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                          ("running_var", "moving_variance")):
                    getattr(norm, attribute).copy_(torch.from_numpy(init[f"{name}_bn/{weight}"]))
        parameters = list(self.linears.parameters()) + list(self.norms.parameters())
        self.optimizer = torch.optim.Adam(parameters, lr=lr, betas=(BETA1, BETA2), eps=EPS)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.loss_fn = {"sparse_xent": torch.nn.functional.cross_entropy,
                        "mse": torch.nn.functional.mse_loss}[wl.loss]

    def _dense(self, name, h):
        out = self.linears[name](h)
        return self.norms[name](out) if name in self.norms else out  # (training mode: batch statistics)

    def _concat(self, parts):
        return self.torch.cat(parts, dim=1)

    def step(self, idx):
        idx = self.torch.from_numpy(idx)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.wl.graph(self._dense, self.torch.relu, self._concat, self.x[idx])
        loss = self.loss_fn(out, self.y[idx])
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def sync(self):
        pass  # CPU eager is synchronous

    def weights(self):
        out = {}
        for name, linear in self.linears.items():
            out[f"{name}/kernel"] = linear.weight.detach().numpy().T.copy()
            out[f"{name}/bias"] = linear.bias.detach().numpy().copy()
        for name, norm in self.norms.items():  # moving_variance: torch's running variance (unbiased)
            for attribute, weight in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                      ("running_var", "moving_variance")):
                out[f"{name}_bn/{weight}"] = getattr(norm, attribute).detach().numpy().copy()
        return out


def train_torch(workload, x, y, init, perms, batch_size=None, lr=None, repeats=1):
    """PyTorch eager, nn.Linear (+ nn.BatchNorm1d(eps=1e-3, momentum=0.01)) + torch.optim.Adam(eps=1e-7),
    default thread count."""
    return _train(_TorchTrainer, workload, x, y, init, perms, batch_size, lr, repeats)


# --------------------------------------------------------------------------------------------
# (c) JAX, whole step under jit
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jax_train_step(workload_name):
    """The jitted step for one workload, built once so that the warm-up trainer's compile is the
    one the timed trainer reuses (a fresh closure would be a fresh jit cache entry)."""
    import jax
    import jax.numpy as jnp

    wl = WORKLOADS[workload_name]

    def loss_fn(params, xb, yb):
        def dense(name, h):
            return h @ params[f"{name}/kernel"] + params[f"{name}/bias"]

        out = wl.graph(dense, jax.nn.relu, lambda parts: jnp.concatenate(parts, axis=1), xb)
        if wl.loss == "sparse_xent":
            log_probs = jax.nn.log_softmax(out, axis=1)
            return -jnp.mean(jnp.take_along_axis(log_probs, yb[:, None], axis=1))
        return jnp.mean((out - yb) ** 2)

    def step(params, m, v, t, x, y, idx, lr):
        loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
        t = t + 1
        # 1 - beta**t as -expm1(t * log(beta)): float32 0.999 is off by 1.3e-8, i.e. by 1.3e-5 of
        # 1 - 0.999, while torch and the NumPy reference take bias corrections in Python doubles;
        # the naive form left float32 two_tower weights 4e-6 away from theirs, this 3e-7.
        tf = t.astype(x.dtype)
        step_size = lr / -jnp.expm1(tf * math.log(BETA1))
        bias_correction2_sqrt = jnp.sqrt(-jnp.expm1(tf * math.log(BETA2)))
        m = jax.tree.map(lambda m_, g: m_ + (1 - BETA1) * (g - m_), m, grads)
        v = jax.tree.map(lambda v_, g: v_ * BETA2 + (1 - BETA2) * g * g, v, grads)
        params = jax.tree.map(
            lambda p, m_, v_: p - step_size * (m_ / (jnp.sqrt(v_) / bias_correction2_sqrt + EPS)),
            params, m, v,
        )
        return params, m, v, t, loss

    # Donating params and optimizer state lets XLA update them in place, not allocate per step.
    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


class _JaxTrainer:
    def __init__(self, wl, x, y, init, lr, batch_size):
        import jax
        import jax.numpy as jnp

        self.jax = jax
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise RuntimeError("float64 JAX needs jax.config.update('jax_enable_x64', True)")
        self.step_fn = _jax_train_step(wl.name)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        # Fresh device copies: the step donates (frees) them, and init must stay intact.
        self.params = {k: jnp.array(v) for k, v in init.items()}
        self.keys = list(init)
        self.m = {k: jnp.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: jnp.zeros_like(v) for k, v in self.params.items()}
        self.t = jnp.zeros((), jnp.int32)
        self.lr = jnp.asarray(lr, x.dtype)
        self.index_dtype = np.int64 if jax.config.jax_enable_x64 else np.int32

    def step(self, idx):
        idx = idx.astype(self.index_dtype, copy=False)
        self.params, self.m, self.v, self.t, loss = self.step_fn(
            self.params, self.m, self.v, self.t, self.x, self.y, idx, self.lr
        )
        return loss

    def sync(self):
        self.jax.block_until_ready(self.params)

    def weights(self):
        return {k: np.array(self.params[k]) for k in self.keys}  # jit outputs come back key-sorted


def train_jax(workload, x, y, init, perms, batch_size=None, lr=None, repeats=1):
    """jax.jit of the whole train step (forward, grad, hand-written Adam); compile not timed."""
    return _train(_JaxTrainer, workload, x, y, init, perms, batch_size, lr, repeats)


# --------------------------------------------------------------------------------------------
# (d) GEMM-only bound
# --------------------------------------------------------------------------------------------


def train_gemm_bound(workload, x, y, init, perms, batch_size=None, lr=None, repeats=1):
    """Time only the matrix products of one epoch of training steps, on the real shapes.

    Per layer: forward a @ W, backward dW = a^T g and dX = g W^T (skipped for layers reading the
    raw input). Nothing else a trainer must do (bias, activation, loss, optimizer, batch gather)
    is counted, so nothing built on NumPy's BLAS can beat this samples/s (torch uses MKL and XLA
    its own kernels, so theirs is a reference line rather than a hard ceiling). Trains nothing:
    final_loss is nan and weights is None.
    """
    wl = WORKLOADS[workload]
    batch_size = batch_size or wl.batch_size
    rng = np.random.default_rng(0)
    dtype = x.dtype

    def buffer(*shape):
        # Random values: zeros or denormals could take a different path through the kernels.
        return rng.random(shape).astype(dtype)

    layers = []
    for name, fan_in, fan_out in wl.layers:
        layers.append({
            "kernel": init[f"{name}/kernel"].astype(dtype),
            "a": buffer(batch_size, fan_in), "z": buffer(batch_size, fan_out),
            "g": buffer(batch_size, fan_out), "dW": buffer(fan_in, fan_out),
            "dX": None if name in wl.input_layers else buffer(batch_size, fan_in),
        })

    def step(nb):
        for L in layers:
            np.matmul(L["a"][:nb], L["kernel"], out=L["z"][:nb])
        for L in reversed(layers):
            np.matmul(L["a"][:nb].T, L["g"][:nb], out=L["dW"])
            if L["dX"] is not None:
                np.matmul(L["g"][:nb], L["kernel"].T, out=L["dX"][:nb])

    sizes = [len(idx) for idx in _batches(perms[0], batch_size)]
    for nb in sizes[:WARMUP_FULL_BATCHES] + sizes[-1:]:
        step(nb)
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for nb in sizes:
            step(nb)
        seconds = min(seconds, time.perf_counter() - start)
    result = _throughput(seconds, sum(sizes), len(sizes))
    result.update(final_loss=float("nan"), weights=None)
    return result


# --------------------------------------------------------------------------------------------
# Registry, check and benchmark
# --------------------------------------------------------------------------------------------

IMPLEMENTATIONS: dict[str, Callable] = {
    "numpy": train_numpy,
    "torch": train_torch,
    "jax": train_jax,
    "gemm": train_gemm_bound,
}
_OPTIONAL_MODULE = {"torch": "torch", "jax": "jax"}


def available_implementations(names=None):
    """({name: train_fn} for the importable ones, {name: why skipped})."""
    available, skipped = {}, {}
    for name in names or IMPLEMENTATIONS:
        module = _OPTIONAL_MODULE.get(name)
        if module is not None:
            try:
                __import__(module)
            except Exception as exc:  # an optional framework may fail on import in any way
                skipped[name] = f"{module} not importable ({type(exc).__name__}: {exc})"
                continue
        available[name] = IMPLEMENTATIONS[name]
    return available, skipped


def max_relative_error(weights, reference):
    """max over keys of max|w - ref| / max|ref| (norm-wise: zero-initialised biases have no
    meaningful element-wise relative error)."""
    worst = 0.0
    for key, ref in reference.items():
        scale = max(float(np.max(np.abs(ref))), np.finfo(ref.dtype).tiny)
        worst = max(worst, float(np.max(np.abs(weights[key] - ref))) / scale)
    return worst


# (weights tolerance or None = reported only, final-loss tolerance), both relative.
# float64 is the proof: the three references run the same arithmetic to rounding.
# float32 mlp weights cannot be held to any tight bound: a relu pre-activation within float32
# rounding of zero (seen at |z| = 8e-8) takes a different branch in different BLAS summation
# orders, and Adam turns that one-sample difference into whole ~lr steps on the weights (the
# biases are only ~lr in size after 32 steps). It happens on about half of the seeds, to torch
# and JAX alike; the loss stays within 1e-3, so that is all float32 mlp asserts. (Over a full
# 60,000-sample epoch the float32 final losses spread by up to 2.3%, seeds 0-3, while float64
# agrees to 1e-13.) two_tower has no kinks: float32 weights agree to ~5e-7 (seeds 0-5), held to 1e-5.
CHECK_TOLERANCE = {
    ("float64", "mlp"): (1e-9, 1e-9),
    ("float64", "two_tower"): (1e-9, 1e-9),
    ("float32", "mlp"): (None, 5e-3),
    ("float32", "two_tower"): (1e-5, 1e-5),
}


def check(n=2000, epochs=2, seed=0, workloads=full_references(), impls=None, out=sys.stdout):
    """Train every available reference on a small problem; assert they end on the same weights.

    n=2000 rather than 2048 so the last batch is partial for both batch sizes (2000 % 128 = 80,
    2000 % 32 = 16): that path is where an off-by-one would hide. Returns True when all agree.
    Turns on jax_enable_x64 for the rest of the process (float32 inputs stay float32).
    """
    available, skipped = available_implementations(impls)
    if "jax" in available:
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 JAX; float32 inputs stay float32
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=out)

    header = (f"{'workload':<10} {'dtype':<8} {'impl':<6} {'final_loss':>19} {'loss_rel_err':>12} "
              f"{'weights_rel_err':>15} {'tolerance (w / loss)':>21}  ok")
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = True
    for workload in workloads:
        x32, y32, init32, perms = make_workload(workload, n, epochs, seed)
        for dtype in (np.float64, np.float32):
            weights_tol, loss_tol = CHECK_TOLERANCE[(np.dtype(dtype).name, workload)]
            x, y, init = cast_workload(x32, y32, init32, dtype)
            results = {name: fn(workload, x, y, init, perms) for name, fn in available.items()}
            # NumPy is the reference when present: it is the one whose every operation is visible.
            reference = results.get("numpy") or next((r for r in results.values() if r["weights"]), None)
            for name, res in results.items():
                if res["weights"] is None or reference is None:
                    err = loss_err = float("nan")  # the GEMM bound trains nothing: it only has to run
                    ok = True
                else:
                    err = max_relative_error(res["weights"], reference["weights"])
                    loss_err = abs(res["final_loss"] - reference["final_loss"]) / abs(reference["final_loss"])
                    ok = loss_err <= loss_tol and (weights_tol is None or err <= weights_tol)
                all_ok &= ok
                tol = f"{'info' if weights_tol is None else f'{weights_tol:.0e}'} / {loss_tol:.0e}"
                print(f"{workload:<10} {np.dtype(dtype).name:<8} {name:<6} {res['final_loss']:>19.15g} "
                      f"{loss_err:>12.2e} {err:>15.2e} {tol:>21}  {'yes' if ok else 'NO'}", file=out)
    print("references agree" if all_ok else "REFERENCES DISAGREE", file=out)
    return all_ok


BENCH_DEFAULTS = {"mlp": (60_000, 1), "two_tower": (96_000, 1)}  # (n, timed epochs)
GEMM_MIN_REPEATS = 5


def benchmark(workloads=full_references(), impls=None, n=None, epochs=None, seed=0, repeats=1, out=sys.stdout):
    """Time every available reference; print the table and return its rows (weights dropped).

    Defaults: mlp 60,000 samples x 1 epoch (469 steps); two_tower 96,000 x 1 (3,000 steps).
    """
    available, skipped = available_implementations(impls)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=out)
    # On 2 cores any other busy process moves these numbers by tens of percent: say so up front.
    print(f"load average before: {_load_average()}", file=out)

    rows = []
    for workload in workloads:
        wl_n, wl_epochs = n or BENCH_DEFAULTS[workload][0], epochs or BENCH_DEFAULTS[workload][1]
        x, y, init, perms = make_workload(workload, wl_n, wl_epochs, seed)
        for name, fn in available.items():
            # The bound is every ratio's denominator and costs well under a second: best of several.
            runs = max(repeats, GEMM_MIN_REPEATS) if name == "gemm" else repeats
            res, others = _others_cpu_share(lambda: fn(workload, x, y, init, perms, repeats=runs))
            res.pop("weights")
            rows.append(dict(res, workload=workload, impl=name, n=wl_n, epochs=wl_epochs, others_cpu=others))
    print(f"load average after:  {_load_average()}", file=out)
    print(format_table(rows), file=out)
    return rows


def _load_average():
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not on every platform
        return "unknown"


def _machine_busy_seconds():
    """CPU seconds all processes have used since boot (Linux), or None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _others_cpu_share(fn):
    """(fn(), share of the machine's cores that other processes kept busy while it ran).

    A load average lags by a minute; this says whether *this* measurement had company.
    """
    busy0, own0, wall0 = _machine_busy_seconds(), os.times(), time.perf_counter()
    result = fn()
    busy1, own1, wall1 = _machine_busy_seconds(), os.times(), time.perf_counter()
    if busy0 is None:
        return result, float("nan")
    own = (own1.user + own1.system) - (own0.user + own0.system)
    others = max(0.0, (busy1 - busy0) - own) / ((wall1 - wall0) * (os.cpu_count() or 1))
    return result, others


def format_table(rows):
    """The benchmark table; rows are dicts like benchmark() returns (others, e.g. nnctl's, may be
    appended). 'vs gemm' divides by the same workload's gemm row when there is one; 'others cpu'
    is the share of all cores other processes used meanwhile (anything above a few % taints it)."""
    header = (f"{'workload':<10} {'impl':<8} {'n x epochs':>12} {'seconds':>8} {'samples/s':>11} "
              f"{'steps/s':>9} {'vs gemm':>8} {'final_loss':>11} {'others cpu':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        bound = next((r for r in rows if r["workload"] == row["workload"] and r["impl"] == "gemm"), None)
        ratio = f"{row['samples_per_s'] / bound['samples_per_s']:.2f}" if bound else "-"
        lines.append(f"{row['workload']:<10} {row['impl']:<8} {row['n']:>7,}x{row['epochs']:<4} "
                     f"{row['seconds']:>8.2f} {row['samples_per_s']:>11,.0f} {row['steps_per_s']:>9,.0f} "
                     f"{ratio:>8} {row['final_loss']:>11.5f} {row.get('others_cpu', float('nan')):>10.0%}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="assert numpy/torch/jax agree, then exit")
    parser.add_argument("--workload", nargs="+", choices=list(full_references()), default=list(full_references()))
    parser.add_argument("--impl", nargs="+", choices=list(IMPLEMENTATIONS), default=None)
    parser.add_argument("--n", type=int, default=None, help="samples (default: 60,000 mlp, 96,000 two_tower)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per reference; the fastest is kept")
    args = parser.parse_args(argv)

    if args.check:
        start = time.perf_counter()
        ok = check(seed=args.seed, workloads=tuple(args.workload), impls=args.impl)
        print(f"check took {time.perf_counter() - start:.1f} s")
        return 0 if ok else 1
    benchmark(tuple(args.workload), args.impl, args.n, args.epochs, args.seed, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

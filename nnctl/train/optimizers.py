"""Optimizers: the registry `OPTIMIZERS`, name -> class, with Keras' names and defaults.

Each takes exactly the steps of its torch.optim namesake with equal hyper-parameters (the README
lists where Keras' formulas differ). Every parameter lives in one flat buffer, so a step is a
handful of whole-buffer, in-place operations whatever the number of layers.

A step reads the rate from `optimizer.learning_rate`, which a schedule may set between steps
(nnctl.train.controls sets it once per epoch); it starts as the `learning_rate` option. Gradient
clipping (`clipnorm`: the global norm of the whole flat gradient, torch's clip_grad_norm_ and
Keras' global_clipnorm; `clipvalue`: each element) happens in `step`, before the update.
"""
from __future__ import annotations

import math

from nnctl.core.backend import namespace_of, to_host
from nnctl.core.loops import loops_for
from nnctl.options import Option, boolean, number, optional

_LR = "step size"


def _learning_rate(default):
    return Option(number(low=0, low_open=True), default, _LR)


# Every optimizer takes these (at most one of them, as in Keras).
CLIPPING = {
    "clipnorm": Option(optional(number(low=0, low_open=True)), None, "scale the gradient down to this global L2 norm (null: off)"),
    "clipvalue": Option(optional(number(low=0, low_open=True)), None, "clip each gradient element to [-clipvalue, clipvalue] (null: off)"),
}
# torch's clip_grad_norm_ divides by (norm + 1e-6).
CLIPNORM_EPSILON = 1e-6


def flush_subnormal(xp, state) -> None:
    """A decaying state's elements below the smallest normal number (and -0) made 0, as the
    compiled loops do (nnctl/core/_loops.c, FLUSH): a stopped gradient's state would otherwise
    decay into subnormals, on which arithmetic is many times slower. Their part of an update is
    below any weight's rounding."""
    tiny = xp.finfo(state.dtype).tiny
    xp.copyto(state, 0, where=(state < tiny) & (state > -tiny))


class Optimizer:
    options: dict = {}
    slots: tuple = ()  # names of per-parameter state buffers

    def __init__(self, config: dict, params):
        self.config = config
        self.learning_rate = config["learning_rate"]
        self.clipnorm, self.clipvalue = config.get("clipnorm"), config.get("clipvalue")
        self.iterations = 0
        xp = namespace_of(params)
        self.state = {slot: xp.zeros_like(params) for slot in self.slots}
        self.scratch = xp.empty_like(params)

    def step(self, params, grads) -> None:
        """Update the flat `params` in place from the flat `grads` (clipped in place first)."""
        self.iterations += 1
        xp = namespace_of(params)
        if self.clipnorm is not None:
            clip_global_norm(xp, grads, self.clipnorm)
        elif self.clipvalue is not None:
            xp.clip(grads, -self.clipvalue, self.clipvalue, out=grads)
        self.update(xp, params, grads, self.state, self.scratch)

    def update(self, xp, params, grads, state, scratch):
        """One step on the flat buffers; `state` holds the slot buffers, `scratch` is free space."""
        raise NotImplementedError

    def loops(self, xp):
        """nnctl.core._loops where `update` on `xp` runs as one compiled loop, else None (passes)."""
        return loops_for(xp)

    def compiled(self, xp) -> bool:
        """Whether `update` on `xp` runs as one compiled loop rather than passes (`nnctl time` says)."""
        return self.loops(xp) is not None

    def state_dict(self) -> dict:
        """Host copies of the state buffers and the step count, for checkpoints."""
        host = {slot: to_host(value) for slot, value in self.state.items()}
        return {"iterations": self.iterations, **host}

    def load_state(self, saved: dict) -> None:
        self.iterations = int(saved["iterations"])
        for slot, value in self.state.items():
            value[...] = namespace_of(value).asarray(saved[slot])


class SGD(Optimizer):
    options = {
        "learning_rate": _learning_rate(0.01),
        "momentum": Option(number(0, 1), 0.0, "velocity decay"),
        "nesterov": Option(boolean, False, "Nesterov momentum"),
        **CLIPPING,
    }

    def __init__(self, config, params):
        self.slots = ("momentum",) if config["momentum"] else ()
        super().__init__(config, params)

    def update(self, xp, params, grads, state, scratch):
        lr, momentum = self.learning_rate, self.config["momentum"]
        if not momentum:
            xp.multiply(grads, lr, out=scratch)
            params -= scratch
            return
        velocity = state["momentum"]
        loops = self.loops(xp)
        if loops is not None:
            loops.sgd(params, grads, velocity, momentum, lr, self.config["nesterov"])
            return
        velocity *= momentum
        velocity += grads
        flush_subnormal(xp, velocity)
        if self.config["nesterov"]:
            xp.multiply(velocity, momentum, out=scratch)
            scratch += grads
        else:
            scratch[...] = velocity
        scratch *= lr
        params -= scratch

    def loops(self, xp):
        return super().loops(xp) if self.config["momentum"] else None  # plain SGD: two passes, no loop


_ADAM_OPTIONS = {
    "learning_rate": _learning_rate(0.001),
    "beta_1": Option(number(0, 1, high_open=True), 0.9, "first-moment decay"),
    "beta_2": Option(number(0, 1, high_open=True), 0.999, "second-moment decay"),
    "epsilon": Option(number(low=0), 1e-7, "added to the denominator"),
}


class Adam(Optimizer):
    """torch's Adam in 10 whole-buffer passes instead of 13.

    The slots hold the moments without their (1 - beta) factor: m_sum = m / (1 - beta_1) and
    v_sum = v / (1 - beta_2), the plain decayed sums of g and g^2, so each updates in two
    passes (decay, add) with no multiply by (1 - beta). Those factors and the bias corrections
    fold into two scalars per step:
        p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
           = step * m_sum / (sqrt(v_sum) + eps'),
        with c = sqrt(1 - beta_2) / sqrt(bc2), eps' = eps / c, step = lr / bc1 * (1 - beta_1) / c.
    Equal to torch's formula in exact arithmetic; float64 results agree to rounding.

    On NumPy the passes run as one compiled loop when nnctl.core._loops is built, with the same
    roundings in the same order: bit-identical weights, a quarter of the time. (Every optimizer's
    update does, plain SGD's two passes aside.)
    """

    options = {**_ADAM_OPTIONS, **CLIPPING}
    slots = ("m_sum", "v_sum")

    def update(self, xp, params, grads, state, scratch, decay=None):
        """`decay`: AdamW's factor on params, applied before the update."""
        c = self.config
        b1, b2, t = c["beta_1"], c["beta_2"], self.iterations
        m_sum, v_sum = state["m_sum"], state["v_sum"]
        scale = math.sqrt(1 - b2) / math.sqrt(1 - b2**t)
        epsilon, step = c["epsilon"] / scale, -self.learning_rate / (1 - b1**t) * (1 - b1) / scale
        loops = self.loops(xp)
        if loops is not None:
            loops.adam(params, grads, m_sum, v_sum, b1, b2, epsilon, step, 1.0 if decay is None else decay)
            return
        if decay is not None:
            params *= decay
        m_sum *= b1
        m_sum += grads
        flush_subnormal(xp, m_sum)
        v_sum *= b2
        xp.multiply(grads, grads, out=scratch)
        v_sum += scratch
        flush_subnormal(xp, v_sum)
        xp.sqrt(v_sum, out=scratch)
        scratch += epsilon
        xp.divide(m_sum, scratch, out=scratch)
        scratch *= step
        params += scratch


class AdamW(Adam):
    options = {**_ADAM_OPTIONS, "weight_decay": Option(number(low=0), 0.004, "decoupled decay, times learning_rate"), **CLIPPING}

    def update(self, xp, params, grads, state, scratch, decay=None):
        super().update(xp, params, grads, state, scratch, 1 - self.learning_rate * self.config["weight_decay"])


def _scaled_step(optimizer, xp, params, grads, squares, rho, scale, scratch) -> None:
    """squares = squares * rho + grads^2 * scale, then params -= learning_rate * grads / (sqrt(squares) +
    epsilon): RMSprop's and Adagrad's step (Adagrad's rho and scale are None: no multiply)."""
    epsilon, learning_rate = optimizer.config["epsilon"], optimizer.learning_rate
    loops = optimizer.loops(xp)
    if loops is not None:  # a factor of 1 is exact: the loop equals the passes without it
        loops.scaled(params, grads, squares, 1.0 if rho is None else rho, 1.0 if scale is None else scale, epsilon, learning_rate)
        return
    if rho is not None:
        squares *= rho
    xp.multiply(grads, grads, out=scratch)
    if scale is not None:
        scratch *= scale
    squares += scratch
    flush_subnormal(xp, squares)
    xp.sqrt(squares, out=scratch)
    scratch += epsilon
    xp.divide(grads, scratch, out=scratch)
    scratch *= learning_rate
    params -= scratch


class RMSprop(Optimizer):
    options = {
        "learning_rate": _learning_rate(0.001),
        "rho": Option(number(0, 1, high_open=True), 0.9, "decay of the squared-gradient average"),
        "epsilon": Option(number(low=0), 1e-7, "added to the denominator"),
        **CLIPPING,
    }
    slots = ("square_average",)

    def update(self, xp, params, grads, state, scratch):
        rho = self.config["rho"]
        _scaled_step(self, xp, params, grads, state["square_average"], rho, 1 - rho, scratch)


class Adagrad(Optimizer):
    options = {
        "learning_rate": _learning_rate(0.001),
        "initial_accumulator_value": Option(number(low=0), 0.1, "starting sum of squared gradients"),
        "epsilon": Option(number(low=0), 1e-7, "added to the denominator"),
        **CLIPPING,
    }
    slots = ("accumulator",)

    def __init__(self, config, params):
        super().__init__(config, params)
        self.state["accumulator"] += config["initial_accumulator_value"]

    def update(self, xp, params, grads, state, scratch):
        _scaled_step(self, xp, params, grads, state["accumulator"], None, None, scratch)


def clip_global_norm(xp, grads, max_norm: float) -> None:
    """grads *= min(1, max_norm / (||grads|| + 1e-6)), in place: torch's clip_grad_norm_.

    The factor stays an array on the device (no synchronisation on a GPU); multiplying by
    exactly 1 when no clipping is needed changes nothing, as in torch.
    """
    norm = xp.sqrt(xp.dot(grads, grads))
    grads *= xp.minimum(max_norm / (norm + CLIPNORM_EPSILON), 1.0).astype(grads.dtype)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
}

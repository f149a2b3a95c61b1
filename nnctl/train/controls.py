"""Training controls: learning-rate schedules, early stopping and the best epoch (Keras' semantics).

Bookkeeping on Python floats, consulted by `fit` once per epoch: one learning rate at an epoch's
start, one look at the epoch's logs at its end. No arrays and no printing here. Every object's
state is a JSON-able dict of exact Python floats and ints, so checkpoints resume bit-exactly.
"""
from __future__ import annotations

import math

from nnctl.errors import SpecError
from nnctl.options import Option, Section, boolean, integer, number, one_of, optional, text

MODES = ("auto", "min", "max")
_MONITOR_DOC = "the logged value watched: loss, a metric, or val_ and either"
_MODE_DOC = "min: lower is better; max: higher is; auto: max for accuracy, min otherwise"


def direction(monitor: str, mode: str) -> str:
    """'min' or 'max'. `auto` is max for accuracy (and val_accuracy), min for losses and errors."""
    if mode != "auto":
        return mode
    return "max" if monitor.removeprefix("val_") == "accuracy" else "min"


def monitorable(names) -> list[str]:
    """The logged values a control may watch: an epoch's log `names` (nnctl.train.heads.log_names),
    then their val_ forms."""
    return [*names] + [f"val_{name}" for name in names]


def monitors(train: dict) -> list[tuple[tuple, str]]:
    """(key path of the `monitor` option, monitored name) for every control that watches a value."""
    found = []
    if train.get("early_stopping"):
        found.append((("train", "early_stopping", "monitor"), train["early_stopping"]["monitor"]))
    schedule = train.get("lr_schedule")
    if schedule and "monitor" in schedule.options:
        found.append((("train", "lr_schedule", "monitor"), schedule.options["monitor"]))
    return found


EARLY_STOPPING_OPTIONS = {
    "monitor": Option(text, "val_loss", _MONITOR_DOC),
    "mode": Option(one_of(MODES), "auto", _MODE_DOC),
    "patience": Option(integer(0), 0, "epochs without improvement before stopping"),
    "min_delta": Option(number(low=0), 0.0, "the least change that counts as an improvement"),
    "restore_best_weights": Option(boolean, False, "end the run with the weights of the best epoch"),
}
EARLY_STOPPING = Section(EARLY_STOPPING_OPTIONS, "early_stopping", allow_true=True)


class Tracker:
    """The best value of one monitored log and its epoch, by Keras' EarlyStopping test:
    an improvement is `value + min_delta < best` (min) or `value - min_delta > best` (max)."""

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0):
        self.monitor = monitor
        self.lower = direction(monitor, mode) == "min"
        self.min_delta = min_delta
        self.best = None
        self.best_epoch = None

    def improves(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.lower:
            return value + self.min_delta < self.best
        return value - self.min_delta > self.best

    def update(self, epoch: int, logs: dict):
        """None when `logs` lack the monitored value (an epoch without validation), else whether
        this epoch is the new best."""
        value = logs.get(self.monitor)
        if value is None:
            return None
        if self.improves(value):
            self.best, self.best_epoch = value, epoch
            return True
        return False

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


# --- learning-rate schedules ------------------------------------------------------------------------
class Schedule:
    """The learning rate of each epoch (1-based), from the optimizer's `learning_rate` (`base`)."""

    options: dict = {}

    def __init__(self, config: dict, base: float, epochs: int):
        self.config, self.base, self.epochs = config, base, epochs

    def lr(self, epoch: int) -> float:
        raise NotImplementedError

    def end_epoch(self, epoch: int, logs: dict) -> None:
        """See the epoch's logs (only reduce_on_plateau does)."""

    def state(self) -> dict:
        return {}

    def load(self, state: dict) -> None:
        pass


class Constant(Schedule):
    """The optimizer's learning_rate throughout."""

    def lr(self, epoch):
        return self.base


class StepDecay(Schedule):
    """learning_rate * gamma ** floor((epoch - 1) / step_size): torch's StepLR."""

    options = {
        "step_size": Option(integer(1), 10, "epochs between decays"),
        "gamma": Option(number(0, 1, low_open=True), 0.1, "factor applied every step_size epochs"),
    }

    def lr(self, epoch):
        return self.base * self.config["gamma"] ** ((epoch - 1) // self.config["step_size"])


class ExponentialDecay(Schedule):
    """learning_rate * gamma ** (epoch - 1): torch's ExponentialLR (Keras' ExponentialDecay per epoch)."""

    options = {"gamma": Option(number(0, 1, low_open=True), 0.9, "factor applied every epoch")}

    def lr(self, epoch):
        return self.base * self.config["gamma"] ** (epoch - 1)


class CosineDecay(Schedule):
    """Linear warm-up over `warmup_epochs`, then half a cosine from learning_rate to min_lr over
    `epochs` epochs, then min_lr (Keras' CosineDecay with warm-up, counted in epochs).

    With W warm-up epochs and T decay epochs, epoch e (0-based) has
      e < W:  learning_rate * (e + 1) / (W + 1)
      else:   min_lr + (learning_rate - min_lr) * (1 + cos(pi * min(e - W, T) / T)) / 2
    which is torch's CosineAnnealingLR(T_max=T, eta_min=min_lr) after LinearLR(1 / (W + 1), W).
    """

    options = {
        "epochs": Option(optional(integer(1)), None, "epochs of decay after the warm-up (null: train.epochs minus warmup_epochs)"),
        "min_lr": Option(number(low=0), 0.0, "the rate at the end of the decay"),
        "warmup_epochs": Option(integer(0), 0, "epochs of linear warm-up to learning_rate first"),
    }

    def __init__(self, config, base, epochs):
        super().__init__(config, base, epochs)
        warmup = config["warmup_epochs"]
        self.decay_epochs = config["epochs"] or max(1, epochs - warmup)

    def lr(self, epoch):
        e, warmup, min_lr = epoch - 1, self.config["warmup_epochs"], self.config["min_lr"]
        if e < warmup:
            return self.base * (e + 1) / (warmup + 1)
        t = min(e - warmup, self.decay_epochs)
        return min_lr + (self.base - min_lr) * (1 + math.cos(math.pi * t / self.decay_epochs)) / 2


class ReduceOnPlateau(Schedule):
    """Keras' ReduceLROnPlateau: after `patience` epochs in a row without an improvement of more
    than `min_delta` (absolute) in `monitor`, multiply the rate by `factor`, never below min_lr.

    After a reduction, the next `cooldown` epochs are not counted, as in torch's
    ReduceLROnPlateau (Keras' own counter skips one epoch fewer). Keras' patience p is torch's
    p - 1 with threshold_mode="abs"; patience 0 acts as 1, as in Keras.
    """

    options = {
        "monitor": Option(text, "val_loss", _MONITOR_DOC),
        "mode": Option(one_of(MODES), "auto", _MODE_DOC),
        "factor": Option(number(0, 1, low_open=True, high_open=True), 0.1, "new rate = rate * factor"),
        "patience": Option(integer(0), 10, "epochs without improvement before a reduction"),
        "min_delta": Option(number(low=0), 1e-4, "the least change that counts as an improvement"),
        "cooldown": Option(integer(0), 0, "epochs not counted after a reduction"),
        "min_lr": Option(number(low=0), 0.0, "the rate never goes below this"),
    }

    def __init__(self, config, base, epochs):
        super().__init__(config, base, epochs)
        self.lower = direction(config["monitor"], config["mode"]) == "min"
        self.current, self.best, self.wait, self.cooldown_counter = base, None, 0, 0

    def lr(self, epoch):
        return self.current

    def _improves(self, value):
        if self.best is None:
            return not math.isnan(value)
        delta = self.config["min_delta"]
        return value < self.best - delta if self.lower else value > self.best + delta

    def end_epoch(self, epoch, logs):
        value = logs.get(self.config["monitor"])
        if value is None:  # an epoch without validation: Keras skips it
            return
        c = self.config
        if self._improves(value):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.wait >= max(1, c["patience"]):
            if self.current > c["min_lr"]:
                self.current = max(self.current * c["factor"], c["min_lr"])
            self.cooldown_counter, self.wait = c["cooldown"], 0

    def state(self):
        return {"lr": self.current, "best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load(self, state):
        if not state:
            return
        self.current, self.best = state["lr"], state["best"]
        self.wait, self.cooldown_counter = state["wait"], state["cooldown_counter"]


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": StepDecay,
    "exponential": ExponentialDecay,
    "cosine": CosineDecay,
    "reduce_on_plateau": ReduceOnPlateau,
}


# --- all of it, as fit sees it ------------------------------------------------------------------
class Controls:
    """The learning rate of each epoch, the best epoch and early stopping, for one run of `fit`.

    The best epoch is judged by early_stopping's monitor, mode and min_delta when early stopping is
    on, else by val_loss (lower is better) when there is validation data, else not at all.
    """

    def __init__(self, spec, base_lr: float, has_validation: bool, state: dict | None = None):
        train = spec.train
        for path, monitor in monitors(train):
            if monitor.startswith("val_") and not has_validation:
                raise SpecError(spec.problem(path, f"expected validation data to monitor {monitor!r}, received a run without any "
                                                   "(set data.validation or data.validation_split, or monitor 'loss')"))
        self.early_stopping = train["early_stopping"]
        if self.early_stopping:
            es = self.early_stopping
            self.tracker = Tracker(es["monitor"], es["mode"], es["min_delta"])
        else:
            self.tracker = Tracker("val_loss") if has_validation else None
        schedule = train["lr_schedule"]
        self.schedule = SCHEDULES[schedule.name](schedule.options, base_lr, train["epochs"])
        self.wait = 0
        self.stopped_early = None
        # Best weights are kept for best.npz (with validation data) and for restore_best_weights.
        self.keeps_best_weights = self.tracker is not None and (
            has_validation or bool(self.early_stopping and self.early_stopping["restore_best_weights"]))
        if state:
            self.load(state)

    def lr(self, epoch: int) -> float:
        return self.schedule.lr(epoch)

    def end_epoch(self, epoch: int, logs: dict) -> bool:
        """Judge the epoch; True when it is the new best. Sets `stopped_early` when training should stop."""
        improved = self.tracker.update(epoch, logs) if self.tracker is not None else None
        es = self.early_stopping
        if es and improved is not None:
            if improved:
                self.wait = 0
            else:
                self.wait += 1
                if self.wait >= es["patience"]:
                    self.stopped_early = {
                        "epoch": epoch,
                        "reason": f"{es['monitor']} did not improve for {self.wait} epoch{'s' if self.wait != 1 else ''} "
                                  f"(patience {es['patience']}, min_delta {es['min_delta']:g}); best "
                                  f"{self.tracker.best:.6g} at epoch {self.tracker.best_epoch}",
                        "monitor": es["monitor"], "best": self.tracker.best, "best_epoch": self.tracker.best_epoch,
                        "restored_best_weights": bool(es["restore_best_weights"]),
                    }
        self.schedule.end_epoch(epoch, logs)
        return bool(improved)

    @property
    def best(self) -> dict | None:
        """The best epoch so far: {monitor, value, epoch}, or None."""
        if self.tracker is None or self.tracker.best_epoch is None:
            return None
        return {"monitor": self.tracker.monitor, "value": self.tracker.best, "epoch": self.tracker.best_epoch}

    def state(self) -> dict:
        return {
            "tracker": self.tracker.state() if self.tracker is not None else None,
            "wait": self.wait, "schedule": self.schedule.state(), "stopped_early": self.stopped_early,
        }

    def load(self, state: dict) -> None:
        if self.tracker is not None and state.get("tracker"):
            self.tracker.load(state["tracker"])
        self.wait = state.get("wait", 0)
        self.schedule.load(state.get("schedule") or {})
        self.stopped_early = state.get("stopped_early")

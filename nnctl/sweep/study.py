"""A sweep's study on Optuna: its storage, the workers that run its trials, and what it holds.

Storage. By default Optuna's journal storage, one append-only file under
runs/<spec>/sweeps/<sweep>/ (Optuna warns against SQLite with parallel writers: "database is
locked"), with an `fcntl` lock: the kernel releases it when its holder dies, where Optuna's own
file locks wait out a stale-lock timeout or, given a relative path, never recover after a
SIGKILL mid-write. `--storage URL` is any Optuna RDB URL; on PostgreSQL any number of workers on
any hosts join one study.

Trials are asked for under one gate per study (an fcntl lock beside the default storage, a
PostgreSQL advisory lock for a postgresql:// storage, which the server releases with a dead
worker's connection): counting the study's live trials, picking a grid's next combination and
asking happen as one step, so no trial is run twice and the study stops at its trial count.
A worker holds an fcntl lock on its trial's folder while it runs it, so a RUNNING trial whose lock
is free has lost its worker and is marked failed at the next ask; across hosts Optuna's
heartbeats (RDB storages) do the same. Such lost trials do not count toward the trial count (a
rerun tops the study up); a trial that failed by itself (it diverged) does.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import socket
import threading
import time
import warnings
import zlib
from pathlib import Path

import yaml

from nnctl.errors import MissingExtra, NnctlError, Problem, SweepError, UsageError
from nnctl.io.atomic import atomic_write
from nnctl.spec.load import load_spec
from nnctl.train.fit import Progress
from nnctl.train.run import RunInterrupted, train_run

INSTALL_HINT = "pip install 'nnctl[sweep]' (or pip install optuna)"
JOURNAL = "journal.log"
WORKER_LOCK = ".worker.lock"


def optuna():
    """The optuna module, or exit 2 naming the extra that installs it."""
    try:
        import optuna as module
    except ImportError:
        raise MissingExtra(f"expected Optuna for `nnctl sweep`, received an environment without it; {INSTALL_HINT}") from None
    module.logging.set_verbosity(module.logging.WARNING)
    return module


class _Flock:
    """An exclusive fcntl lock on a file, held while inside `with`; the kernel drops it with its holder."""

    def __init__(self, path):
        self.path, self.fd = Path(path), None

    def acquire(self, blocking=True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _journal_lock(path):
    """A lock for Optuna's journal file of the kind it expects (made here: optuna is optional)."""
    from optuna.storages.journal._file import BaseJournalFileLock  # not exported, but the type the backend takes

    class FlockJournalLock(_Flock, BaseJournalFileLock):
        pass

    return FlockJournalLock(path)


class _AdvisoryGate:
    """A PostgreSQL session-level advisory lock: one study's asks, across hosts."""

    def __init__(self, url: str, name: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.engine, self.key, self.connection = sqlalchemy.create_engine(url, poolclass=NullPool), zlib.crc32(name.encode()), None
        self.text = sqlalchemy.text

    def __enter__(self):
        self.connection = self.engine.connect()
        self.connection.execute(self.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        return self

    def __exit__(self, *exc):
        self.connection.execute(self.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        self.connection.close()


def describe_storage(plan, url) -> str:
    return url.split("@")[-1] if url else f"journal file {plan.folder / JOURNAL} (fcntl-locked)"


def open_storage(plan_folder: Path, study_name: str, url: str | None, heartbeat_seconds: int = 10):
    """(Optuna storage, gate) of a study: the default journal file in `plan_folder`, or `url`."""
    module = optuna()
    plan_folder.mkdir(parents=True, exist_ok=True)
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        folder = plan_folder.resolve()
        backend = JournalFileBackend(str(folder / JOURNAL), lock_obj=_journal_lock(folder / "journal.lock"))
        return JournalStorage(backend), _Flock(folder / "ask.lock")
    postgres = url.startswith("postgresql")
    try:
        # Workers that start together would each create Optuna's tables (a duplicate-key error):
        # on PostgreSQL one at a time.
        with _AdvisoryGate(url, "nnctl schema") if postgres else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna calls its heartbeats experimental
            storage = module.storages.RDBStorage(url, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds)
    except Exception as exc:  # SQLAlchemy's and the drivers' errors: a URL that cannot be used
        raise UsageError(Problem(f"expected an Optuna RDB storage URL it can open (postgresql://user@host/db), received {exc.__class__.__name__}: {exc}", "--storage")) from None
    gate = _AdvisoryGate(url, study_name) if postgres else _Flock(plan_folder.resolve() / "ask.lock")
    return storage, gate


def fingerprint(plan) -> dict:
    """What makes a study this sweep's: a rerun of another sweep file under the same name is refused."""
    return {"method": plan.method, "metric": plan.metric, "goal": plan.goal, "seed": plan.seed,
            "parameters": {p.key: list(p.values) if p.values is not None else [p.distribution, p.low, p.high] for p in plan.parameters}}


def _pruner(plan, module):
    terminate = plan.early_terminate
    if terminate is None:
        return module.pruners.NopPruner()
    if terminate["type"] == "median":
        return module.pruners.MedianPruner(n_startup_trials=terminate["startup_trials"], n_warmup_steps=terminate["warmup_epochs"])
    return module.pruners.HyperbandPruner(min_resource=terminate["min_epochs"], max_resource=plan.epochs, reduction_factor=terminate["reduction_factor"])


def _sampler(plan, number: int, module):
    """A sampler seeded by the sweep's seed and the trial's number: the same trials again for the
    same seed, and workers that do not all propose the same point."""
    import numpy

    seed = int(numpy.random.SeedSequence([plan.seed, number]).generate_state(1)[0])
    if plan.method == "tpe":
        return module.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, plan.target // 4)), constant_liar=True)
    return module.samplers.RandomSampler(seed=seed)


def open_study(plan, url=None):
    module = optuna()
    storage, gate = open_storage(plan.folder, plan.study_name, url, plan.heartbeat_seconds)
    study = module.create_study(study_name=plan.study_name, storage=storage, direction=plan.goal, load_if_exists=True,
                                sampler=module.samplers.RandomSampler(seed=plan.seed), pruner=_pruner(plan, module))
    with gate:
        recorded = study.user_attrs.get("sweep")
        if recorded is None:
            study.set_user_attr("sweep", fingerprint(plan))
        elif recorded != fingerprint(plan):
            raise SweepError(Problem("expected the sweep file that started this study, received one with other method, metric, seed or "
                                     "parameters; give the changed sweep file another name, or remove the study's folder", str(plan.file)))
        if study.user_attrs.get("target") != plan.target:  # --trials may take a study further
            study.set_user_attr("target", plan.target)
    return study, gate


def _counted(trials):
    """The trials that count toward the study's trial count: all but those lost to a dead worker or
    a stop request (a rerun runs them again). A trial that failed by itself (it diverged) counts:
    its parameters would fail again, and a grid would retry them for ever."""
    return [t for t in trials if t.state != _states().FAIL or _facts(t).get("counts")]


def _facts(trial) -> dict:
    """What the worker recorded of a trial: where it ran ("worker", at the ask) and how it ended
    ("result"): one attribute each, since every write is a synced append to the journal."""
    return {**trial.user_attrs.get("worker", {}), **trial.user_attrs.get("result", {})}


def _states():
    return optuna().trial.TrialState


def _reap(study) -> None:
    """Mark failed each RUNNING trial whose worker died: on this host, its folder lock is free (or
    it has no folder yet: its worker died inside the gate, which we now hold); on any host of an
    RDB storage, its heartbeat stopped."""
    storage, states, host = study._storage, _states(), socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        facts = _facts(trial)
        if facts.get("host") not in (None, host):
            continue
        folder = facts.get("folder")
        lock = _Flock(Path(folder) / WORKER_LOCK) if folder else None
        if lock is None or (Path(folder).exists() and lock.acquire(blocking=False)):
            try:
                _fail_lost(storage, trial._trial_id, "its worker died")  # read again holding its lock:
            finally:  # a worker tells its trial's end before it lets go
                if lock is not None:
                    lock.release()
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            _fail_lost(storage, trial_id, f"its heartbeat stopped (no beat for {storage.get_heartbeat_interval() * 3} s)")


def _fail_lost(storage, trial_id: int, why: str) -> None:
    """A trial lost with its worker: failed, and not counted (a rerun runs another)."""
    states = _states()
    if storage.get_trial(trial_id).state != states.RUNNING:
        return
    try:
        storage.set_trial_user_attr(trial_id, "result", {**storage.get_trial(trial_id).user_attrs.get("result", {}), "error": why})
        storage.set_trial_state_values(trial_id, states.FAIL)
    except optuna().exceptions.UpdateFinishedTrialError:  # its worker told its end meanwhile (another host)
        pass


def _next_combination(plan, trials):
    used = {tuple(_params(t).get(p.key) for p in plan.parameters) for t in _counted(trials)}
    return next((combo for combo in plan.grid() if tuple(combo.values()) not in used), None)


def _params(trial) -> dict:
    return trial.params or trial.system_attrs.get("fixed_params", {})


def _ask(plan, study, gate, trials_folder: Path):
    """The next trial, its parameters and its folder (locked by this worker), or None when the
    study has its trial count."""
    module = optuna()
    with gate:
        _reap(study)
        trials = study.get_trials(deepcopy=False)
        if len(_counted(trials)) >= plan.target:
            return None
        if plan.method == "grid":
            combo = _next_combination(plan, trials)
            if combo is None:
                return None
            study.enqueue_trial(combo, skip_if_exists=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's heartbeats are meant for its own loop; ours beat too
            trial = study.ask()
        folder = trials_folder / f"trial-{trial.number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        lock = _Flock(folder / WORKER_LOCK)
        lock.acquire()
        os.ftruncate(lock.fd, 0)
        os.write(lock.fd, f"{os.getpid()}\n".encode())
        trial.set_user_attr("worker", {"folder": str(folder.resolve()), "host": socket.gethostname(), "pid": os.getpid()})
        study.sampler = _sampler(plan, trial.number, module)
        params = {}
        for p in plan.parameters:
            if p.values is not None:
                params[p.key] = trial.suggest_categorical(p.key, list(p.values))
            elif p.distribution in ("int_uniform", "log_int_uniform"):
                params[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.distribution.startswith("log"))
            else:
                params[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.distribution.startswith("log"))
    return trial, params, folder, lock


class _Pruned(Exception):
    pass


class _Reporter(Progress):
    """Reports each epoch's metric to the trial and stops it when the pruner says so."""

    def __init__(self, plan, trial, on_epoch=None):
        self.plan, self.trial, self.on_epoch = plan, trial, on_epoch
        self.best = None  # (value, epoch)

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.plan.metric)
        if value is None:  # not a validation epoch
            return
        better = self.best is None or (value < self.best[0] if self.plan.goal == "minimize" else value > self.best[0])
        if math.isfinite(value) and better:
            self.best = (value, epoch)
        if self.on_epoch:
            self.on_epoch()
        if self.plan.early_terminate is not None:  # each report is a write to the study
            # An infinite or NaN value too: the pruner stops a diverging trial before its loss does.
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                raise _Pruned(epoch)


def _heartbeat(study, trial):
    """Optuna's heartbeats for an RDB storage (how another host's worker sees this one die)."""
    storage, stop = study._storage, threading.Event()
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        return stop

    def beat():
        storage.record_heartbeat(trial._trial_id)
        while not stop.wait(interval):
            storage.record_heartbeat(trial._trial_id)

    threading.Thread(target=beat, daemon=True).start()
    return stop


def run_trial(plan, study, trial, params, folder: Path, stop_requested=lambda: False, on_epoch=None) -> bool:
    """Train one trial with the training-run function `nnctl train` uses, and tell the study how
    it ended (whatever ended it: a bug's exception still leaves the trial failed, not running).
    False when a stop request ended it."""
    states = _states()
    started = time.monotonic()
    reporter = _Reporter(plan, trial, on_epoch)
    stop_beating = _heartbeat(study, trial)
    spec_file = folder / "spec.yaml"
    with atomic_write(spec_file) as handle:
        handle.write(yaml.safe_dump(plan.trial_raw(params, folder.name, folder), sort_keys=False).encode("utf-8"))
    state, interrupted, facts = states.FAIL, False, {}
    try:
        result = train_run(load_spec(spec_file), root=folder.parent, progress=reporter, stop_requested=stop_requested)
        best = result.best if result.best and result.best["monitor"] == plan.metric else None
        facts["weights"] = str(Path(best["weights"] if best else result.files.weights).resolve())
        state = states.COMPLETE if reporter.best is not None else states.FAIL
        if reporter.best is None:
            facts.update(error=f"no epoch logged a finite {plan.metric}", counts=True)
    except _Pruned:
        state = states.PRUNED
    except RunInterrupted:
        facts["error"] = "interrupted"
        interrupted = True
    except NnctlError as exc:  # a diverged run, a data file that went missing mid-sweep
        facts.update(error=str(exc), counts=True)
    except BaseException as exc:
        facts["error"] = f"stopped by {exc.__class__.__name__}"
        raise
    finally:
        stop_beating.set()
        facts["seconds"] = time.monotonic() - started
        if reporter.best is not None:
            facts.update(best_value=reporter.best[0], best_epoch=reporter.best[1])
        trial.set_user_attr("result", facts)
        study.tell(trial, reporter.best[0] if state == states.COMPLETE else None, state=state)
    return not interrupted


def work(plan, url=None, stop_requested=lambda: False, on_change=lambda: None) -> None:
    """One worker: ask, train, tell, until the study has its trial count (or a stop request)."""
    study, gate = open_study(plan, url)
    trials_folder = plan.folder / "trials"
    while not stop_requested():
        asked = _ask(plan, study, gate, trials_folder)
        if asked is None:
            return
        trial, params, folder, lock = asked
        on_change()
        try:
            carry_on = run_trial(plan, study, trial, params, folder, stop_requested, on_change)
        finally:
            lock.release()
        on_change()
        if not carry_on:
            return


def _worker_process() -> None:
    """A worker process's body: its (plan, url) come pickled on stdin from `start_workers`."""
    import pickle
    import signal
    import sys

    plan, url = pickle.load(sys.stdin.buffer)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        work(plan, url, stop_requested=lambda: bool(stop))
    except NnctlError as exc:
        print(f"Error ({exc.kind}): {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def start_workers(plan, count: int, url=None) -> list:
    """`count` worker processes, fresh ones (not forked): a BLAS library reads its thread count
    once, when loaded, and N workers each running as many threads as there are cores spin against
    each other (a 64 x 256 matrix product then took 15 times as long). Each gets its share of the
    cores unless the user set the count; the checked plan goes to them pickled, not re-read."""
    import pickle
    import subprocess
    import sys

    share = str(max(1, (os.cpu_count() or 1) // count))
    env = {**{name: share for name in BLAS_THREADS}, **os.environ}
    code = "from nnctl.sweep.study import _worker_process; _worker_process()"
    processes = []
    for _ in range(count):
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        process.stdin.write(pickle.dumps((plan, url)))
        process.stdin.close()
        processes.append(process)
    return processes


def run_sweep(plan, workers: int, url=None, stop_requested=lambda: False, on_change=lambda: None) -> list:
    """The study's trials run to its count: in this process (one worker), or by `workers` worker
    processes while `on_change` is called every 0.1 s; returns the exit codes of workers that failed."""
    import time

    if workers == 1:
        work(plan, url, stop_requested, on_change=on_change)
        return []
    processes = start_workers(plan, workers, url)
    while any(p.poll() is None for p in processes):
        on_change()
        time.sleep(0.1)
    return [p.returncode for p in processes if p.returncode]


# --- what a study holds --------------------------------------------------------------------------
def summary(study) -> dict:
    """Counts, the rows of every trial sorted by the metric (best first), and the best trial."""
    states = _states()
    attrs = study.user_attrs.get("sweep", {})
    maximize = attrs.get("goal") == "maximize"
    rows = []
    for t in study.get_trials(deepcopy=False):
        facts = _facts(t)
        rows.append({
            "trial": t.number, "params": _params(t), "value": t.value if t.state == states.COMPLETE else facts.get("best_value"),
            "best_epoch": facts.get("best_epoch"), "state": t.state.name.lower(), "seconds": facts.get("seconds"),
            "folder": facts.get("folder"), "host": facts.get("host"), "weights": facts.get("weights"), "error": facts.get("error"),
        })
    order = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}

    def key(row):
        value = row["value"]
        missing = value is None or not math.isfinite(value)
        return (order[row["state"]], missing, 0 if missing else (-value if maximize else value), row["trial"])

    rows.sort(key=key)
    counts = {name: sum(r["state"] == name for r in rows) for name in ("complete", "running", "pruned", "fail")}
    best = next((r for r in rows if r["state"] == "complete"), None)
    return {"study": study.study_name, "metric": attrs.get("metric"), "goal": attrs.get("goal", "minimize"),
            "parameters": list(attrs.get("parameters", {})), "target": study.user_attrs.get("target"),
            "counts": counts, "trials": rows, "best": best}


def write_best(plan, best: dict | None) -> dict | None:
    """best.yaml (a spec `nnctl train` accepts) and best.npz (its trial's weights, when on this host)."""
    if best is None:
        return None
    folder = plan.folder
    spec_file = folder / "best.yaml"
    raw = plan.trial_raw(best["params"], f"{plan.spec_name}-{plan.name}-best", folder)
    header = f"# The best trial ({best['trial']}) of sweep {plan.file} on {plan.spec_file}: {plan.metric} {best['value']:.6g}\n"
    with atomic_write(spec_file) as handle:
        handle.write((header + yaml.safe_dump(raw, sort_keys=False)).encode("utf-8"))
    weights = None
    if best.get("weights") and best.get("host") == socket.gethostname() and Path(best["weights"]).exists():
        weights = folder / "best.npz"
        with atomic_write(weights) as handle, open(best["weights"], "rb") as source:
            shutil.copyfileobj(source, handle)
    return {"spec": str(spec_file), "weights": str(weights) if weights else None, "trial": best["trial"]}


def find_study(sweep_file: Path, url=None, runs=Path("runs")):
    """The study of a sweep file (for `status`): in --storage by its name, else in the default
    storage found under runs/*/sweeps/<sweep>/."""
    from nnctl.spec.load import safe_name

    name = safe_name(Path(sweep_file).stem)
    if url is not None:
        storage, _ = open_storage(runs, name, url)
        names = sorted(s.study_name for s in optuna().get_all_study_summaries(storage) if s.study_name.endswith("/" + name))
        if len(names) != 1:
            raise UsageError(Problem(f"expected one study of sweep {name!r} in the storage, received {len(names)}: {', '.join(names) or 'none'}", "--storage"))
        return optuna().load_study(study_name=names[0], storage=storage)
    found = sorted(p.parent for p in runs.glob(f"*/sweeps/{name}/{JOURNAL}"))
    if len(found) != 1:
        received = "none" if not found else f"{len(found)} ({', '.join(str(p) for p in found)})"
        raise UsageError(Problem(f"expected one sweep study of this sweep file under {runs}/*/sweeps/{name}/, received {received}; "
                                 "run it in the folder `nnctl sweep` ran in, or pass --storage", str(sweep_file)))
    storage, _ = open_storage(found[0], name, None)
    return optuna().load_study(study_name=f"{found[0].parent.parent.name}/{name}", storage=storage)

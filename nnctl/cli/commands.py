"""The `nnctl` command line: thin click commands over nnctl's modules.

User errors (NnctlError) become one message and exit code 2, here and nowhere else; a training
divergence or a failed check exits 1; anything unexpected is reported as an nnctl bug.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path

import click

from nnctl import __version__
from nnctl.core.backend import BACKENDS
from nnctl.errors import NnctlError, Problem, TrainingDiverged, WeightsError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Stream:
    """sys.stdout or sys.stderr as the commands print to them, looked up at each write (tests swap
    them). Output may be lost, never the run: a reader that went away (nnctl train | head) silences
    the stream for the rest of the run, and a character its encoding lacks (PYTHONIOENCODING=latin-1)
    is printed as '?'."""

    def __init__(self, name: str):
        self.name = name

    def _target(self):
        stream = getattr(sys, self.name)
        # While a progress bar is live, rich puts a proxy that prints through our console in sys.stdout:
        # writing to it from here would come back here.
        return getattr(stream, "rich_proxied_file", stream)

    def __getattr__(self, attribute):
        return getattr(self._target(), attribute)

    def write(self, text: str) -> int:
        stream = self._target()
        try:
            try:
                return stream.write(text)
            except UnicodeEncodeError:
                encoding = stream.encoding or "ascii"
                return stream.write(text.encode(encoding, "replace").decode(encoding))
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._target().flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        import os

        # Onto /dev/null at the descriptor: what is still buffered, and Python's flush at exit, then
        # go nowhere instead of failing again. A stream without a descriptor (a test's) has no exit flush.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._target().fileno())
            os.close(devnull)


_STDOUT, _STDERR = _Stream("stdout"), _Stream("stderr")


class NnctlGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NnctlError as exc:
            _print_error(exc)
            ctx.exit(EXIT_BAD_INPUT)
        except TrainingDiverged as exc:
            click.echo(f"Error: training diverged: {exc}", file=_STDERR)
            ctx.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("Stopped.", file=_STDERR)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # The reader of the output left (nnctl summary | head): what it did not read is what it
            # chose not to; the command itself succeeded (0, so `set -o pipefail` scripts carry on).
            _STDOUT.flush()
            ctx.exit(EXIT_OK)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if isinstance(exc, OSError) and exc.filename is not None:
                from nnctl.errors import FileSystemError

                # The last resort for a file nnctl reads or writes without its own message: the
                # user's machine refused it (a permission, a full disk), which is no bug to report.
                _print_error(FileSystemError(Problem(f"expected a usable file or folder, received: {exc.strerror or exc}", str(exc.filename))))
                ctx.exit(EXIT_BAD_INPUT)
            click.echo(f"Internal error in nnctl ({exc.__class__.__name__}: {exc}). Run again with --debug for the traceback, and please report it.", file=_STDERR)
            ctx.exit(EXIT_FAILED)


def _print_error(exc: NnctlError) -> None:
    click.echo(f"Error ({exc.kind}):" if len(exc.problems) > 1 else f"Error ({exc.kind}): {exc.problems[0]}", file=_STDERR)
    if len(exc.problems) > 1:
        for problem in exc.problems:
            click.echo(f"  {problem}", file=_STDERR)


def _console():
    from rich.console import Console

    # Off a terminal (pipes, CI logs) rich would wrap at 80 columns; tables read better wider.
    return Console(file=_STDOUT, highlight=False, width=None if sys.stdout.isatty() else 120)


def _quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))


def _print(renderable):
    """Tables and charts: not shown under --quiet."""
    if not _quiet():
        _console().print(renderable)


def _print_path(label, path):
    """A file a command wrote: shown even under --quiet."""
    click.echo(f"{label}: {path}", file=_STDOUT)


def _json_safe(value):
    """`value` with every NaN and infinity as None: JSON has no such numbers (json.dumps would
    write NaN, which strict parsers refuse)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _emit_json(data):
    click.echo(json.dumps(_json_safe(data), indent=2, allow_nan=False), file=_STDOUT)


def _session(spec_path, backend=None, seed=None, epochs=None, batch_size=None, weights=None, dtype=None):
    from nnctl.core.backend import get_backend
    from nnctl.model.graph import Model
    from nnctl.spec.load import load_spec
    from nnctl.train.session import Session

    spec = load_spec(spec_path, {"backend": backend, "seed": seed, "epochs": epochs, "batch_size": batch_size})
    values = None
    if weights is not None:
        from nnctl.io.weights import load_weights

        values = load_weights(weights, Model(spec).weight_shapes)
    try:
        return Session(spec, get_backend(spec.backend), weights=values, dtype=dtype)
    except WeightsError as exc:  # values that overflow the run's dtype: say which file they came from
        raise WeightsError([p if p.file else Problem(p.message, str(weights)) for p in exc.problems]) from None


spec_argument = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")


@click.group(cls=NnctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nnctl")
@click.option("--debug", is_flag=True, help="Show the full traceback of an internal error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables: only errors and the paths of files written.")
@click.pass_context
def cli(ctx, debug, quiet):
    """Declare, train, inspect and verify neural networks from a YAML spec.

    Shell completion (bash): eval "$(_NNCTL_COMPLETE=bash_source nnctl)"; zsh and fish: zsh_source, fish_source.
    """
    ctx.obj = {"debug": debug, "quiet": quiet}


@cli.command()
@spec_argument
@click.option("--graph", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw the layer graph: .dot/.gv as text, .svg/.png/.pdf through Graphviz's dot.")
@json_option
def summary(spec, graph, as_json):
    """Print the layer table, parameter counts and weight names of SPEC."""
    from nnctl.model.graph import Model
    from nnctl.cli.report import summary_data, summary_view
    from nnctl.spec.load import load_spec

    if graph is not None:
        from nnctl.cli.graphviz import check_suffix

        check_suffix(graph)
    # No Session: the summary needs shapes only, not weights or arrays (so no NumPy import).
    loaded = load_spec(spec)
    data = summary_data(Model(loaded), loaded.dtype)
    if graph is not None:
        from nnctl.cli.graphviz import to_dot, write_graph

        write_graph(to_dot(data), graph)
    if as_json:
        _emit_json(data | ({"graph": str(graph)} if graph is not None else {}))
        return
    _print(summary_view(data))
    if graph is not None:
        _print_path("graph", graph)


@cli.command()
@spec_argument
@click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override train.batch_size.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the spec's seed.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Override the spec's backend.")
@click.option("--init", "init_weights", type=click.Path(dir_okay=False, path_type=Path), help="Start from these weights (.npz).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to save weights [runs/<name>/weights.npz].")
@click.option("--resume", is_flag=True, help="Continue from runs/<name>/checkpoint.npz.")
@json_option
def train(spec, epochs, batch_size, seed, backend, init_weights, out, resume, as_json):
    """Train SPEC on its data and save the weights and history."""
    from nnctl.train.checkpoint import load_checkpoint, save_checkpoint
    from nnctl.cli.report import LiveProgress, history_view, loss_sparkline, saved_view, training_end_view
    from nnctl.io.records import save_history, save_run_record
    from nnctl.train.session import Interrupted, Progress, fit, load_test_set, training_sets
    from nnctl.io.weights import save_weights

    if resume and init_weights:
        raise click.UsageError("--resume continues a checkpoint; it cannot start from --init weights too")
    session = _session(spec, backend, seed, epochs, batch_size, init_weights)
    run_dir = Path("runs") / session.spec.name
    checkpoint_path = run_dir / "checkpoint.npz"
    state = None
    if resume:
        weights, state = load_checkpoint(checkpoint_path, session.spec, session.model.weight_shapes)
        session.params.load(weights)
        stopped = state.controls.get("stopped_early")
        if stopped:
            raise click.UsageError(f"nothing to resume: the run stopped early at epoch {stopped['epoch']} ({stopped['reason']}); "
                                   "train without --resume to start over")
        if state.epoch > session.spec.train["epochs"]:
            raise click.UsageError(f"nothing to resume: the checkpoint has all {state.epoch - 1} epochs done; pass --epochs N to train further")
    train_set, val_set = training_sets(session)
    test_set = load_test_set(session)  # read now: a bad test file fails before training, not after
    out = out or run_dir / "weights.npz"
    history_path = out.parent / "history.csv"
    best_path = out.parent / "best.npz"
    save_run_record(run_dir / "run.json", session.spec, sys.argv)
    console = _console()
    progress = Progress() if as_json or _quiet() else LiveProgress(console, session.spec.metrics)

    def write_checkpoint(train_state):
        save_checkpoint(checkpoint_path, session.spec, session.params.to_host(), train_state)

    try:
        with _graceful_stop() as stop_requested:
            history = fit(session, train_set, val_set, progress, state=state, stop_requested=stop_requested, on_epoch_end=write_checkpoint)
    except Interrupted as stop:
        progress.close()
        write_checkpoint(stop.state)
        click.echo(f"Interrupted at epoch {stop.state.epoch}, step {stop.state.step}; checkpoint saved to {checkpoint_path}.\n"
                   f"Resume with: nnctl train {spec} --resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except TrainingDiverged as exc:
        progress.close()
        last_good = f"the last good checkpoint is {checkpoint_path}" if checkpoint_path.exists() else "no checkpoint was written"
        raise TrainingDiverged(f"{exc}; {last_good}; weights on disk were left as they were") from None
    finally:
        progress.close()
    save_weights(out, session.params.to_host())
    save_history(history_path, history)
    best = None
    if val_set is not None and history.best_weights is not None:
        save_weights(best_path, history.best_weights)
        best = {**history.best, "weights": str(best_path)}
    test = session.evaluate(test_set, session.spec.train["batch_size"]) if test_set is not None else None
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "lr", "seconds", "samples_per_second")}
    run_history = history[len(state.history):] if state else history
    trained = sum(h["samples_per_second"] * h["seconds"] for h in run_history)
    seconds = sum(h["seconds"] for h in run_history)
    if as_json:
        _emit_json({
            "name": session.spec.name, "epochs": len(history), "train_samples": len(train_set),
            "validation_samples": len(val_set) if val_set is not None else 0, "final": final,
            "samples_per_second": trained / seconds if seconds else None, "lr": history[-1]["lr"],
            "stopped_early": history.stopped_early, "best": best,
            "test": test, "test_samples": len(test_set) if test_set is not None else 0,
            "weights": str(out), "history": str(history_path), "checkpoint": str(checkpoint_path),
        })
        return
    show = (lambda renderable: None) if _quiet() else console.print  # --quiet: only the paths below
    show(history_view(history))
    show(loss_sparkline(history))
    restored = session.spec.train["early_stopping"] and session.spec.train["early_stopping"]["restore_best_weights"]
    end = training_end_view(history.stopped_early, history.best if restored else None)
    if end is not None:
        show(end)
    if test is not None:
        from rich.text import Text

        show(history_view([test], title="Test set"))
        show(Text(f"evaluated once after training on {test_set.file} ({len(test_set)} samples)"))
    paths = {"weights": out}
    if best is not None:
        paths[f"best weights (epoch {best['epoch']}, {best['monitor']} {best['value']:.4g})"] = best_path
    console.print(saved_view({**paths, "history": history_path, "checkpoint": checkpoint_path}))


@contextlib.contextmanager
def _graceful_stop():
    """First Ctrl-C / SIGTERM: ask training to stop after the current step. Second: stop now."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@cli.command()
@spec_argument
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Trained weights (.npz).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Rows to predict (.csv, .npy or .npz).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write predictions to a .csv or .npy file.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Override the spec's backend.")
@json_option
def predict(spec, weights, input_path, output, backend, as_json):
    """Run SPEC with WEIGHTS on the rows of INPUT."""
    from nnctl.data.dataset import load_dataset
    from nnctl.cli.report import predictions_view
    from nnctl.io.records import save_predictions

    if output is not None and output.suffix.lower() not in (".csv", ".npy"):
        raise click.BadParameter(f"expected a .csv or .npy file, received {output.name!r}", param_hint="--output")
    session = _session(spec, backend, weights=weights)
    column_map = session.spec.data.inputs if session.spec.data else None
    if column_map is None:
        raise click.UsageError("the spec has no data.inputs to say which columns of --input feed which input")
    dataset = load_dataset(input_path, column_map, None, session.model.input_shapes, dtype=session.dtype)
    values, classes = session.predict(dataset)
    prefix = "prob" if session.loss.gives_probabilities else session.model.output
    columns = [f"{prefix}_{i}" for i in range(values.shape[1])] if values.ndim == 2 else [prefix]
    if output is not None:
        save_predictions(output, values, classes, columns)
    if as_json:
        _emit_json({"columns": columns, "outputs": values.tolist(), "classes": None if classes is None else classes.tolist(), "output": str(output) if output else None})
    elif output is None:
        _print(predictions_view(values, classes, columns))
    else:
        click.echo(f"Wrote {len(values)} predictions to {output}")


@cli.command()
@spec_argument
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), help="Check at these weights instead of the initial ones.")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True, help="Finite-difference step.")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--atol", type=click.FloatRange(min=0), default=1e-6, show_default=True)
@click.option("--max-elements", type=click.IntRange(min=1), default=1000, show_default=True, help="Most elements checked per weight or node (a seeded sample).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Samples in the checked batch.")
@click.option("--explain", is_flag=True, help="Walk through backprop for the first sample: every node's value and gradient "
              "by autograd, by finite differences and (dense+sigmoid under half_squared_error) by the hand-derived formula.")
@json_option
def gradcheck(spec, weights, eps, rtol, atol, max_elements, batch_size, explain, as_json):
    """Check SPEC's gradients against central finite differences in float64."""
    from nnctl.diagnostics.gradcheck import gradcheck as run_check, random_batch
    from nnctl.cli.report import gradcheck_view
    from nnctl.train.session import load_spec_data

    session = _session(spec, backend="numpy", weights=weights, dtype="float64")
    if explain:
        batch_size = 1
    if session.spec.data is not None:
        dataset = load_spec_data(session)
        batch = session.batches(dataset.subset(dataset.rows[:batch_size]), batch_size)
        inputs, targets, _ = next(iter(batch(None)))
    else:
        inputs, targets = random_batch(session, batch_size)
    if explain:
        from nnctl.diagnostics.explain import explain as walkthrough
        from nnctl.cli.report import explain_view

        data = walkthrough(session, inputs, targets, eps=eps, rtol=rtol, atol=atol, max_elements=max_elements)
        _emit_json(data) if as_json else _print(explain_view(data))
        sys.exit(EXIT_OK if data["passed"] else EXIT_FAILED)
    rows, loss, _ = run_check(session, inputs, targets, eps=eps, rtol=rtol, atol=atol, max_elements=max_elements)
    passed = all(r.passed for r in rows)
    if as_json:
        _emit_json({"passed": passed, "loss": loss, "eps": eps, "rtol": rtol, "atol": atol,
                    "checks": [r.__dict__ | {"shape": list(r.shape)} for r in rows]})
    else:
        _print(gradcheck_view(rows, loss, eps, rtol, atol))
    sys.exit(EXIT_OK if passed else EXIT_FAILED)


# --- inspecting and evaluating ---------------------------------------------------------------------
@cli.command()
@spec_argument
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Trained weights (.npz).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluate on this file (same columns as the spec's data) instead of the spec's data file.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Override the spec's backend.")
@json_option
def evaluate(spec, weights, data_path, backend, as_json):
    """Loss and metrics of WEIGHTS on every row of SPEC's data (or --data); a confusion matrix and
    per-class precision, recall and F1 for classifiers."""
    from nnctl.diagnostics.evaluation import evaluate_file
    from nnctl.cli.report import evaluation_view

    data = evaluate_file(_session(spec, backend, weights=weights), data_path)
    _emit_json(data) if as_json else _print(evaluation_view(data))


@cli.command()
@click.argument("history", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the curves as .png/.svg/.pdf (needs matplotlib: pip install 'nnctl[plot]').")
@json_option
def plot(history, out, as_json):
    """Loss and metric curves, train against validation, from a run's HISTORY (runs/<name>/history.csv).

    Without --out, or without matplotlib, the curves are drawn in the terminal."""
    from nnctl.cli.plotting import PlotUnavailable, check_picture_suffix, curves, read_history, save_figure
    from nnctl.cli.report import curves_view

    if out is not None:
        check_picture_suffix(out)
    data = curves(read_history(history))
    written = None
    if out is not None:
        try:
            save_figure(data, out, title=str(history))
            written = out
        except PlotUnavailable as exc:
            click.echo(f"Note: {exc}; drawing the curves in the terminal instead.", err=True)
    if as_json:
        _emit_json({"history": str(history), **data, "out": str(written) if written else None})
    elif written is not None:
        _print_path("curves", written)
    else:
        _print(curves_view(data))


@cli.command("time")
@spec_argument
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step [train.batch_size].")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True, help="Timed steps (after 2 warm-up steps).")
@click.option("--backend", type=click.Choice(BACKENDS), help="Override the spec's backend.")
@json_option
def time_command(spec, batch_size, iterations, backend, as_json):
    """Per-layer forward and backward milliseconds of a training step on random inputs (like caffe time)."""
    from nnctl.cli.report import timing_view
    from nnctl.diagnostics.timing import time_step

    session = _session(spec, backend)
    data = time_step(session, batch_size or session.spec.train["batch_size"], iterations)
    _emit_json(data) if as_json else _print(timing_view(data))


@cli.command()
@spec_argument
@json_option
def config(spec, as_json):
    """SPEC as nnctl reads it, with every default filled in (YAML, or JSON with --json)."""
    from nnctl.cli.report import config_yaml
    from nnctl.spec.load import load_spec

    resolved = load_spec(spec).resolved()
    if as_json:
        _emit_json(resolved)
    elif not _quiet():
        click.echo(config_yaml(resolved, str(spec)), nl=False)


@cli.command()
@click.argument("csv_file", metavar="DATA.csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="The column to predict.")
@click.option("--task", type=click.Choice(["regression", "classification"]),
              help="Default: classification when the target holds at most 20 integer labels 0, 1, 2, ..., else regression.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the spec [<DATA>.yaml in the current folder].")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@json_option
def init(csv_file, target, task, out, force, as_json):
    """Write a starter spec for DATA.csv: a small MLP from the other numeric columns to --target."""
    from nnctl.cli.report import init_view
    from nnctl.cli.starter import starter_spec, write_new

    out = out or Path(csv_file.stem + ".yaml")
    text, facts = starter_spec(csv_file, target, task, out)
    write_new(out, text, force)
    if as_json:
        _emit_json({"spec": str(out), **facts})
    elif _quiet():
        _print_path("spec", out)
    else:
        _print(init_view(facts, out))


@cli.command()
@json_option
def schema(as_json):
    """The JSON Schema (draft 2020-12) of spec files, for editor completion and checking.

    Save it (nnctl schema > nnctl.schema.json) and point your editor at it; see the README."""
    from nnctl.spec.schema import spec_schema

    _emit_json(spec_schema())


def main():
    cli(prog_name="nnctl")

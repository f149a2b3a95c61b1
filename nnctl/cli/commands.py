"""The `nnctl` command line: thin click commands over nnctl's modules.

User errors (NnctlError) become one message and exit code 2, here and nowhere else; a training
divergence or a failed check exits 1; anything unexpected is reported as an nnctl bug.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from nnctl import __version__
from nnctl.cli.starter import TASKS
from nnctl.core.backend import BACKENDS
from nnctl.cli.output import STDERR, STDOUT, console, emit_json, print_error, print_path, quiet, show
from nnctl.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, FileSystemError, NnctlError, Problem



class NnctlGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NnctlError as exc:
            print_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Stopped.", file=STDERR)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # The reader of the output left (nnctl summary | head): what it did not read is what it
            # chose not to; the command itself succeeded (0, so `set -o pipefail` scripts carry on).
            STDOUT.flush()
            ctx.exit(EXIT_OK)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if isinstance(exc, OSError) and exc.filename is not None:
                # The last resort for a file nnctl reads or writes without its own message: the
                # user's machine refused it (a permission, a full disk), which is no bug to report.
                error = FileSystemError(Problem(f"expected a usable file or folder, received: {exc.strerror or exc}", str(exc.filename)))
                print_error(error)
                ctx.exit(error.exit_code)
            click.echo(f"Internal error in nnctl ({exc.__class__.__name__}: {exc}). Run again with --debug for the traceback, and please report it.", file=STDERR)
            ctx.exit(EXIT_FAILED)


# Flags that override spec keys: their values are read as YAML scalars and checked with the
# spec's own options, so `--epochs 0` and `epochs: 0` get the same message.
OVERRIDES = {"backend": ("backend",), "seed": ("seed",), "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size")}


def _load_spec(spec_path, **flags):
    import yaml

    from nnctl.spec.load import Override, load_spec

    overrides = [Override(OVERRIDES[name], yaml.safe_load(value), "--" + name.replace("_", "-"))
                 for name, value in flags.items() if value is not None]
    return load_spec(spec_path, overrides)


def _session(spec_path, weights=None, dtype=None, **flags):
    from nnctl.train.session import open_session

    return open_session(_load_spec(spec_path, **flags), weights, dtype)


spec_argument = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")


def _override_option(flag, help_text):
    return click.option(flag, metavar="VALUE", help=help_text)


epochs_option = _override_option("--epochs", "Override train.epochs.")
batch_size_option = _override_option("--batch-size", "Override train.batch_size.")
backend_option = _override_option("--backend", f"Override the spec's backend ({', '.join(BACKENDS)}).")


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
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Also show what these weights were fitted with: the columns' preprocessing and classes.")
@json_option
def summary(spec, graph, weights, as_json):
    """Print the layer table, parameter counts and weight names of SPEC."""
    from nnctl.model.graph import Model
    from nnctl.cli.report import summary_data, summary_view
    from nnctl.spec.load import load_spec

    if graph is not None:
        from nnctl.cli.graphviz import check_suffix
        from nnctl.io.paths import refuse_inputs

        check_suffix(graph)
        refuse_inputs(graph, "--graph", {"the spec": spec})
    # No Session: the summary needs shapes only, not weights or arrays (so no NumPy import).
    loaded = load_spec(spec)
    data = summary_data(Model(loaded), loaded.dtype)
    if weights is not None:
        from nnctl.cli.report import preprocessing_data
        from nnctl.train.session import open_session

        data["preprocessing"] = preprocessing_data(open_session(loaded, weights).preprocessing)
    if graph is not None:
        from nnctl.cli.graphviz import to_dot, write_graph

        write_graph(to_dot(data), graph)
    if as_json:
        emit_json(data | ({"graph": str(graph)} if graph is not None else {}))
        return
    show(summary_view(data))
    if graph is not None:
        print_path("graph", graph)


@cli.command()
@spec_argument
@epochs_option
@batch_size_option
@_override_option("--seed", "Override the spec's seed.")
@backend_option
@click.option("--init", "init_weights", type=click.Path(dir_okay=False, path_type=Path), help="Start from these weights (.npz).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to save weights [runs/<name>/weights.npz].")
@click.option("--resume", is_flag=True, help="Continue from runs/<name>/checkpoint.npz.")
@click.option("--restart", is_flag=True, help="Discard an unfinished run's checkpoint and start over.")
@json_option
def train(spec, epochs, batch_size, seed, backend, init_weights, out, resume, restart, as_json):
    """Train SPEC on its data and save the weights and history."""
    from nnctl.cli.report import LiveProgress, training_data, training_view
    from nnctl.train.fit import Progress
    from nnctl.train.run import RunInterrupted, train_run

    loaded = _load_spec(spec, epochs=epochs, batch_size=batch_size, seed=seed, backend=backend)
    progress = Progress() if as_json or quiet() else LiveProgress(console())
    try:
        with _graceful_stop() as stop_requested:
            result = train_run(loaded, out=out, init=init_weights, resume=resume, restart=restart,
                               progress=progress, stop_requested=stop_requested, argv=sys.argv)
    except RunInterrupted as stop:
        import shlex  # here, as signal below: what only `train` uses, the other commands' start-up skips

        again = ["nnctl", "train", str(spec)]
        for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--seed", seed), ("--backend", backend), ("--out", out)):
            again += [flag, str(value)] if value is not None else []
        click.echo(f"Interrupted at epoch {stop.epoch}, step {stop.step}; checkpoint saved to {stop.checkpoint}.\n"
                   f"Resume with: {shlex.join([*again, '--resume'])}", file=STDERR)
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        emit_json(training_data(result))
        return
    view, paths = training_view(result)
    if not quiet():
        console().print(view)
    console().print(paths)


@contextlib.contextmanager
def _graceful_stop():
    """First Ctrl-C / SIGTERM: ask training to stop after the current step. Second: stop now."""
    import signal

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
@click.option("--layer", help="Write this layer's activations (a tower's embedding, a hidden layer) instead of the outputs.")
@backend_option
@json_option
def predict(spec, weights, input_path, output, layer, backend, as_json):
    """Run SPEC with WEIGHTS on the rows of INPUT."""
    from nnctl.cli.report import predictions_json, predictions_view
    from nnctl.io.paths import check_suffix, refuse_inputs
    from nnctl.io.records import save_predictions, write_predictions
    from nnctl.train.session import predict_file

    if output is not None:
        check_suffix(output, (".csv", ".npy"), "--output")
    refuse_inputs(output, "--output", {"the spec": spec, "the --weights file": weights, "the --input file": input_path})
    predictions = predict_file(_session(spec, weights, backend=backend), input_path, layer)
    for note in predictions.notes:
        click.echo(f"Note: {note}", file=STDERR)
    if output is not None and not as_json:
        # written as the rows are predicted: a large input costs a block of rows' memory
        count = write_predictions(output, predictions, predictions.columns, predictions.class_columns)
        click.echo(f"Wrote {count} predictions to {output}", file=STDOUT)
        return
    values, classes = predictions.collect()
    if output is not None:
        save_predictions(output, values, classes, predictions.columns)
    if as_json:
        emit_json(predictions_json(predictions.columns, values, classes, predictions.report, output))
    else:
        show(predictions_view(predictions.columns, values, classes, predictions.report))


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
    from nnctl.cli.report import gradcheck_view
    from nnctl.diagnostics.gradcheck import check_batch, gradcheck as run_check

    session = _session(spec, weights, dtype="float64", backend="numpy")
    inputs, targets = check_batch(session, 1 if explain else batch_size)
    if explain:
        from nnctl.diagnostics.explain import explain as walkthrough
        from nnctl.cli.report import explain_view

        data = walkthrough(session, inputs, targets, eps=eps, rtol=rtol, atol=atol, max_elements=max_elements)
        emit_json(data) if as_json else show(explain_view(data))
        sys.exit(EXIT_OK if data["passed"] else EXIT_FAILED)
    rows, loss, _ = run_check(session, inputs, targets, eps=eps, rtol=rtol, atol=atol, max_elements=max_elements)
    passed = all(r.passed for r in rows)
    if as_json:
        emit_json({"passed": passed, "loss": loss, "eps": eps, "rtol": rtol, "atol": atol,
                    "checks": [r.__dict__ | {"shape": list(r.shape)} for r in rows]})
    else:
        show(gradcheck_view(rows, loss, eps, rtol, atol))
    sys.exit(EXIT_OK if passed else EXIT_FAILED)


# --- inspecting and evaluating ---------------------------------------------------------------------
@cli.command()
@spec_argument
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Trained weights (.npz).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluate on this file (same columns as the spec's data) instead of the spec's data file.")
@backend_option
@json_option
def evaluate(spec, weights, data_path, backend, as_json):
    """Loss and metrics of WEIGHTS on every row of SPEC's data (or --data); a confusion matrix and
    per-class precision, recall and F1 for classifiers."""
    from nnctl.diagnostics.evaluation import evaluate_file
    from nnctl.cli.report import evaluation_view

    data = evaluate_file(_session(spec, weights, backend=backend), data_path)
    emit_json(data) if as_json else show(evaluation_view(data))


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
        from nnctl.io.paths import refuse_inputs

        check_picture_suffix(out)
        refuse_inputs(out, "--out", {"the history file": history})
    data = curves(read_history(history))
    written = None
    if out is not None:
        try:
            save_figure(data, out, title=str(history))
            written = out
        except PlotUnavailable as exc:
            click.echo(f"Note: {exc}; drawing the curves in the terminal instead.", file=STDERR)
    if as_json:
        emit_json({"history": str(history), **data, "out": str(written) if written else None})
    elif written is not None:
        print_path("curves", written)
    else:
        show(curves_view(data))


@cli.command("time")
@spec_argument
@_override_option("--batch-size", "Samples per step [train.batch_size].")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True, help="Timed steps (after 2 warm-up steps).")
@backend_option
@json_option
def time_command(spec, batch_size, iterations, backend, as_json):
    """Per-layer forward and backward milliseconds of a training step on random inputs (like caffe time)."""
    from nnctl.cli.report import timing_view
    from nnctl.diagnostics.timing import time_step

    session = _session(spec, backend=backend, batch_size=batch_size)
    data = time_step(session, session.spec.train["batch_size"], iterations)
    emit_json(data) if as_json else show(timing_view(data))


@cli.command()
@spec_argument
@json_option
def config(spec, as_json):
    """SPEC as nnctl reads it, with every default filled in (YAML, or JSON with --json)."""
    from nnctl.cli.report import config_yaml
    from nnctl.spec.load import load_spec

    resolved = load_spec(spec).resolved()
    if as_json:
        emit_json(resolved)
    elif not quiet():
        click.echo(config_yaml(resolved, str(spec)), nl=False, file=STDOUT)


@cli.command()
@click.argument("csv_file", metavar="DATA.csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="The column to predict.")
@click.option("--task", type=click.Choice(TASKS),
              help="Default: classification when the target holds at most 20 integer labels 0, 1, 2, ..., else regression.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the spec [<DATA>.yaml in the current folder].")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@json_option
def init(csv_file, target, task, out, force, as_json):
    """Write a starter spec for DATA.csv: a small MLP from the other numeric columns to --target."""
    from nnctl.cli.report import init_view
    from nnctl.cli.starter import starter_spec, write_new
    from nnctl.io.paths import refuse_inputs

    out = out or Path(csv_file.stem + ".yaml")
    refuse_inputs(out, "--out", {"the data file": csv_file})
    text, facts = starter_spec(csv_file, target, task, out)
    write_new(out, text, force)
    if as_json:
        emit_json({"spec": str(out), **facts})
    elif quiet():
        print_path("spec", out)
    else:
        show(init_view(facts, out))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The output is JSON either way; accepted as by every command, for scripts.")
def schema(as_json):
    """The JSON Schema (draft 2020-12) of spec files, for editor completion and checking.

    Save it (nnctl schema > nnctl.schema.json) and point your editor at it; see the README."""
    from nnctl.spec.schema import spec_schema

    emit_json(spec_schema())


@cli.command("export")
@spec_argument
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Trained weights (.npz).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the model [runs/<name>/model.onnx].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version of the file.")
@click.option("--no-verify", is_flag=True, help="Skip the full check and the comparison with onnxruntime.")
@json_option
def export_command(spec, weights, output, opset, no_verify, as_json):
    """Write SPEC with WEIGHTS as an ONNX model, then check it and compare onnxruntime with nnctl's
    predictions on the spec's data rows (exit 1 if they disagree; the file is then not written).

    Needs the onnx extra: pip install 'nnctl[onnx]'."""
    from nnctl.cli.export_report import export_view
    from nnctl.export.onnx_file import export_spec

    result = export_spec(_load_spec(spec), weights, output, opset, verify=not no_verify)
    if as_json:
        emit_json(result.as_dict())
    elif quiet():
        if result.passed:
            print_path("model", result.path)
    else:
        console().print(export_view(result))
    sys.exit(EXIT_OK if result.passed else EXIT_FAILED)


# --- sweeps --------------------------------------------------------------------------------------
class _SweepGroup(click.Group):
    """`nnctl sweep SPEC SWEEP.yaml` runs a sweep; `nnctl sweep status SWEEP.yaml` shows one."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


plot_option = click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
                           help="Also save the metric against each parameter as .png/.svg/.pdf (needs matplotlib: pip install 'nnctl[plot]').")
storage_option = click.option("--storage", metavar="URL", help="An Optuna RDB URL (postgresql://...) that workers on several "
                              "machines share [a journal file under runs/<name>/sweeps/<sweep>/].")


@cli.group(cls=_SweepGroup)
def sweep():
    """Hyper-parameter sweeps of a spec on Optuna (pip install 'nnctl[sweep]'): nnctl sweep SPEC SWEEP.yaml."""


@sweep.command("run")
@spec_argument
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trials", type=click.IntRange(min=1), help="Run the study to this many trials [the sweep file's trials].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Local worker processes.")
@storage_option
@plot_option
@json_option
def sweep_run(spec, sweep_file, trials, workers, storage, plot, as_json):
    """Run the trials of SWEEP.yaml on SPEC until the study has its trial count (a rerun resumes it)."""
    from nnctl.cli.sweep_report import SweepProgress
    from nnctl.sweep.plan import load_plan
    from nnctl.sweep.study import open_study, run_sweep, summary, write_best

    if plot is not None:
        _check_plot(plot, {"the spec": spec, "the sweep file": sweep_file})
    plan = load_plan(spec, sweep_file)
    if trials is not None:
        plan.trials = trials
    study, _ = open_study(plan, storage)
    live = SweepProgress(console(), lambda: summary(study), enabled=not (as_json or quiet()))
    with live, _graceful_stop() as stop_requested:
        dead = run_sweep(plan, workers, storage, stop_requested, on_change=live.refresh)
    if dead:
        click.echo(f"Note: {len(dead)} worker(s) ended with exit codes {dead}; rerun the command to complete the study.", file=STDERR)
    data = summary(study)
    best = write_best(plan, data["best"])
    _show_sweep(data, best, plot, as_json)


def _check_plot(plot, inputs):
    from nnctl.cli.plotting import PICTURE_SUFFIXES
    from nnctl.io.paths import check_suffix, refuse_inputs

    check_suffix(plot, PICTURE_SUFFIXES, "--plot")
    refuse_inputs(plot, "--plot", inputs)


def _show_sweep(data, best, plot, as_json):
    from nnctl.cli.plotting import PlotUnavailable
    from nnctl.cli.sweep_report import save_sweep_figure, sweep_data, sweep_view

    written = None
    if plot is not None:
        try:
            save_sweep_figure(data, plot)
            written = plot
        except PlotUnavailable as exc:
            click.echo(f"Note: {exc}; the terminal chart is all there is.", file=STDERR)
    if as_json:
        emit_json(sweep_data(data, best) | {"plot": str(written) if written else None})
        return
    show(sweep_view(data, best))
    for label, path in (("best spec", best and best["spec"]), ("best weights", best and best["weights"]), ("plot", written)):
        if path:
            print_path(label, path)


@sweep.command("status")
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False, path_type=Path))
@storage_option
@plot_option
@json_option
def sweep_status(sweep_file, storage, plot, as_json):
    """The trials of SWEEP.yaml's study so far, sorted by the metric."""
    from nnctl.sweep.study import find_study, summary

    if plot is not None:
        _check_plot(plot, {"the sweep file": sweep_file})
    _show_sweep(summary(find_study(sweep_file, storage)), None, plot, as_json)


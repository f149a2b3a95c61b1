"""What `nnctl sweep` adds to the trainings it runs, in one run:

    python bench/sweep.py            # a 2 x 2 grid on specs/digits.yaml, its 30 epochs a trial
    python bench/sweep.py --json

Three timings of the same trainings (the grid's trial specs, same seeds): `nnctl sweep` (one
process, default journal storage), the same specs with `nnctl train` one after another (a shell
loop, one process each), and the same specs with `train_run` in one process (training alone,
no start-ups). The target: the sweep takes at most 5% more wall time than the shell loop. Then
what the sweep machinery itself costs (asks, tells, each trial's spec file), start-ups set aside:
the same trainings in one warm process as `train_run` calls and as a sweep's worker.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SWEEP = """\
method: grid
metric: {name: val_loss, goal: minimize}
parameters:
  layers.dense.units: {values: [64, 128]}
  optimizer.learning_rate: {values: [0.001, 0.003]}
"""


def _project(folder: Path, epochs: int) -> tuple[Path, Path]:
    specs = folder / "specs"
    specs.mkdir(parents=True)
    shutil.copytree(ROOT / "data", folder / "data", ignore=shutil.ignore_patterns("*.npz", "*.npy"))
    text = (ROOT / "specs" / "digits.yaml").read_text().replace("epochs: 30", f"epochs: {epochs}")
    (specs / "digits.yaml").write_text(text)
    (folder / "sweep.yaml").write_text(SWEEP)
    return specs / "digits.yaml", folder / "sweep.yaml"


def measure(epochs: int, rounds: int) -> dict:
    from nnctl.spec.load import load_spec
    from nnctl.sweep.plan import load_plan
    from nnctl.sweep.study import work
    from nnctl.train.run import train_run

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec, sweep = _project(folder, epochs)
        os.chdir(folder)
        plan = load_plan(spec, sweep)
        trial_specs = []
        for i, params in enumerate(plan.grid()):
            target = folder / "loop" / f"t{i}"
            target.mkdir(parents=True)
            import yaml

            (target / "spec.yaml").write_text(yaml.safe_dump(plan.trial_raw(params, f"t{i}", target), sort_keys=False))
            trial_specs.append(target / "spec.yaml")

        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nnctl", "-q", "sweep", str(spec), str(sweep)], env=env, check=True, stdout=subprocess.DEVNULL)
        sweep_seconds = time.perf_counter() - start

        start = time.perf_counter()
        for path in trial_specs:
            subprocess.run([sys.executable, "-m", "nnctl", "-q", "train", str(path)], env=env, check=True, stdout=subprocess.DEVNULL)
        shell_seconds = time.perf_counter() - start

        # The sweep's own cost, start-ups set aside: the same trainings in this (warm) process as
        # train_run calls and as a sweep's worker, in interleaved rounds (this machine is noisy).
        loops, workers = [], []
        for round_ in range(rounds):
            start = time.perf_counter()
            for path in trial_specs:
                train_run(load_spec(path), root=folder / f"inprocess{round_}")
            loops.append(time.perf_counter() - start)
            (folder / f"again{round_}").mkdir()
            os.chdir(folder / f"again{round_}")
            start = time.perf_counter()
            work(load_plan(spec, sweep))
            workers.append(time.perf_counter() - start)
        inprocess_seconds, worker_seconds = statistics.median(loops), statistics.median(workers)
    return {"trials": len(trial_specs), "epochs": epochs, "sweep_s": sweep_seconds, "shell_loop_s": shell_seconds,
            "in_process_s": inprocess_seconds, "worker_s": worker_seconds, "overhead_vs_shell_loop": sweep_seconds / shell_seconds - 1,
            "overhead_in_process": worker_seconds / inprocess_seconds - 1, "rounds": rounds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved in-process rounds (medians)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.epochs, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['trials']} trials of specs/digits.yaml, {result['epochs']} epochs each")
    print(f"nnctl sweep                     {result['sweep_s']:7.2f} s")
    print(f"nnctl train, one after another  {result['shell_loop_s']:7.2f} s   sweep overhead {100 * result['overhead_vs_shell_loop']:+.1f}% (target <= +5%)")
    print(f"in one process: train_run calls {result['in_process_s']:7.2f} s   (median of {result['rounds']} rounds)")
    print(f"in one process: a sweep worker  {result['worker_s']:7.2f} s   sweep machinery {100 * result['overhead_in_process']:+.1f}%")


if __name__ == "__main__":
    main()

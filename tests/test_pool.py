"""The shared pool (nnctl/core/_loops.c): NumPy's OpenBLAS products and the compiled loops on one
set of threads, bit for bit what they give without it.

Every case runs in child processes whose OpenBLAS is set to 3 threads (threadpoolctl: the
OPENBLAS_NUM_THREADS variable is capped at the core count), so the products and the loops are split
three ways (two workers and the caller) whatever this machine's core count, and compares a child
with the pool against one without it (NNCTL_POOL=0: OpenBLAS's own threads, the loops on one).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnctl.core import loops

kernels = pytest.importorskip("nnctl.core._loops", reason="nnctl.core._loops was not built (no C compiler at install)")
pytest.importorskip("threadpoolctl", reason="threadpoolctl (scikit-learn's) sets the children's OpenBLAS threads")

ROOT = Path(__file__).resolve().parent.parent
THREADS = 3
# The loops that split their elements (or rows) across the pool; the cross-entropy loops run on the
# calling thread.
SPLIT_LOOPS = {"adam", "sgd", "scaled", "relu", "add_bias", "relu_grad", "gather_rows", "all_finite"}
# Past the pool's POOL_SPLIT_MIN (16,384 elements) and not a multiple of any part's length.
N = 3 * 16384 + 7

THREE_THREADS = f"import numpy, threadpoolctl; threadpoolctl.threadpool_limits({THREADS}, user_api='blas')\n"
CHILD_PREAMBLE = THREE_THREADS + f"""
import hashlib, json, sys
import numpy as np
from nnctl.core import _loops as kernels, loops
threads = loops.share_blas_threads()
rng = np.random.default_rng(0)
digests = {{}}
def record(name, *arrays):
    digests[name] = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()
N = {N}
"""

PRODUCTS = """
for dtype in (np.float32, np.float64):
    for m, k, n in ((128, 784, 256), (301, 129, 77), (64, 1000, 1000)):
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        g = rng.standard_normal((m, n)).astype(dtype)
        record(f"{np.dtype(dtype).name} {m}x{k}x{n}", a @ b, a.T @ g, g @ b.T)
"""

LOOPS = """
for dtype in (np.float32, np.float64):
    def buffers(count):
        return [rng.standard_normal(N).astype(dtype) for _ in range(count)]
    p, g, m, v = buffers(4); v = np.abs(v)
    kernels.adam(p, g, m, v, 0.9, 0.999, 1e-7, -1e-3, 0.99); record(f"adam {dtype}", p, m, v)
    p, g, vel = buffers(3)
    kernels.sgd(p, g, vel, 0.9, 0.01, True); record(f"sgd {dtype}", p, vel)
    p, g, sq = buffers(3); sq = np.abs(sq)
    kernels.scaled(p, g, sq, 0.9, 0.1, 1e-7, 1e-3); record(f"scaled {dtype}", p, sq)
    x, bias = rng.standard_normal((N // 61, 61)).astype(dtype), rng.standard_normal(61).astype(dtype)
    record(f"relu {dtype}", kernels.relu(x, bias, np.empty_like(x)))
    record(f"add_bias {dtype}", kernels.add_bias(x, bias, np.empty_like(x)))
    g, out = buffers(2)
    record(f"relu_grad {dtype}", kernels.relu_grad(g, out, np.empty_like(g)))
    source, rows = rng.standard_normal((5000, 97)).astype(dtype), rng.integers(0, 5000, 3001)
    record(f"gather_rows {dtype}", kernels.gather_rows(source, rows, np.empty((3001, 97), dtype)))
    verdicts = []
    for where in (None, 0, N // 3, N // 2, N - 1):  # in each part, and none
        values = rng.standard_normal(N).astype(dtype)
        if where is not None:
            values[where] = np.inf if where % 2 else np.nan
        verdicts.append(kernels.all_finite(values))
    record(f"all_finite {dtype}", np.array(verdicts))
    assert verdicts == [True, False, False, False, False], verdicts
"""

CHILD_END = """
print(json.dumps({"threads": threads, "stats": kernels.pool_stats(), "digests": digests}))
"""


def _child(code: str, pool: bool, timeout: float = 120, first: str = "") -> dict:
    """`code` between the preamble and the report in a child; `first` before the preamble."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not pool:
        env[loops.POOL_VARIABLE] = "0"
    done = subprocess.run([sys.executable, "-c", first + CHILD_PREAMBLE + code + CHILD_END], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shared():
    """One child with the pool, one without, each running the products and the loops."""
    with_pool, without = _child(PRODUCTS + LOOPS, pool=True), _child(PRODUCTS + LOOPS, pool=False)
    if with_pool["threads"] != THREADS:
        pytest.skip(f"NumPy's BLAS here is not an OpenBLAS that takes a threading callback (threads: {with_pool['threads']})")
    return with_pool, without


def test_the_pool_runs_openblas_products_and_the_loops_three_ways(shared):
    with_pool, without = shared
    threads, workers, blas_tasks = with_pool["stats"]
    assert (threads, workers) == (THREADS, THREADS - 1) and blas_tasks >= 6  # every product here is threaded
    assert without["threads"] == 1 and without["stats"] == [1, 0, 0]


def test_products_through_the_pool_are_bit_identical_to_openblas_threads(shared):
    with_pool, without = shared
    products = [name for name in with_pool["digests"] if "x" in name.split()[-1]]
    assert len(products) == 6
    assert {name: with_pool["digests"][name] for name in products} == {name: without["digests"][name] for name in products}


def test_split_loops_are_bit_identical_to_one_thread(shared):
    with_pool, without = shared
    ran = {name.split()[0] for name in with_pool["digests"]} - {"float32", "float64"}
    assert ran == SPLIT_LOOPS
    assert with_pool["digests"] == without["digests"]


def test_every_loop_is_either_split_or_run_on_the_caller():
    runs_alone = {"xent_shift", "xent_grad"}
    pool_functions = {"share_blas_threads", "pool_stats"}
    assert SPLIT_LOOPS | runs_alone | pool_functions == {name for name in dir(kernels) if not name.startswith("_")}


def test_a_forked_child_starts_workers_of_its_own():
    """The parent's workers are not in a forked child: its products and loops start new ones."""
    code = PRODUCTS + """
import multiprocessing
def work():
    a = np.linspace(-1, 1, 256 * 512, dtype=np.float32).reshape(256, 512)
    p, g, m, v = (np.linspace(0, 1, N, dtype=np.float32) for _ in range(4))
    kernels.adam(p, g, m, v, 0.9, 0.999, 1e-7, -1e-3)
    return hashlib.sha256((a @ a.T).tobytes() + p.tobytes()).hexdigest()
def in_child(queue):
    queue.put((work(), kernels.pool_stats()[1]))
context = multiprocessing.get_context("fork")
queue = context.Queue()
child = context.Process(target=in_child, args=(queue,))
child.start()
digests["child"], digests["child workers"] = queue.get(timeout=60)
child.join(60)
digests["exit"], digests["parent"] = child.exitcode, work()
"""
    result = _child(code, pool=True)
    if result["threads"] != THREADS:
        pytest.skip("no OpenBLAS threading callback here")
    digests = result["digests"]
    assert digests["exit"] == 0 and digests["child workers"] == THREADS - 1
    assert digests["child"] == digests["parent"]


def test_an_openblas_loaded_before_numpys_shares_the_pool_too():
    """SciPy's own OpenBLAS, imported first, gets the pool as NumPy's does; the loops keep NumPy's count."""
    pytest.importorskip("scipy.linalg.blas")
    code = """
import scipy.linalg.blas as scipy_blas
a = np.ones((512, 512), np.float32)
for name, product in (("scipy", lambda: scipy_blas.sgemm(1.0, a, a)), ("numpy", lambda: a @ a)):
    before = kernels.pool_stats()[2]
    digests[name] = [float(product()[0, 0]), kernels.pool_stats()[2] - before]
"""
    result = _child(code, pool=True, first="import scipy.linalg.blas\n")
    if result["threads"] != THREADS:
        pytest.skip("no OpenBLAS threading callback here")
    assert result["digests"] == {"scipy": [512.0, 1], "numpy": [512.0, 1]}


def test_products_from_several_python_threads_take_turns():
    code = """
import threading
a = rng.standard_normal((200, 300)).astype(np.float32)
b = rng.standard_normal((300, 400)).astype(np.float32)
expected = a @ b
results = []
def work():
    for _ in range(50):
        results.append(np.array_equal(a @ b, expected))
workers = [threading.Thread(target=work) for _ in range(4)]
for w in workers: w.start()
for w in workers: w.join()
digests["all equal"] = all(results) and len(results) == 200
"""
    result = _child(code, pool=True, timeout=60)
    assert result["digests"]["all equal"] is True


def test_a_model_trains_to_the_same_weights_with_and_without_the_pool(tmp_path):
    """digits at batch 256: threaded products, split relu loops and a split Adam update."""
    weights = {}
    for pool in (True, False):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if not pool:
            env[loops.POOL_VARIABLE] = "0"
        out = tmp_path / f"pool_{pool}.npz"
        argv = ["nnctl", "-q", "train", str(ROOT / "specs" / "digits.yaml"), "--epochs", "2", "--batch-size", "256", "--out", str(out)]
        code = THREE_THREADS + f"import sys; from nnctl.cli.entry import main; sys.argv = {argv!r}; main()"
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        with np.load(out) as arrays:
            weights[pool] = {name: arrays[name] for name in arrays.files}
    assert weights[True].keys() == weights[False].keys() and len(weights[True]) == 6
    for name, array in weights[True].items():
        assert array.dtype == weights[False][name].dtype and array.tobytes() == weights[False][name].tobytes(), name


def test_the_numpy_backend_shares_the_pool():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = THREE_THREADS + ("from nnctl.core import _loops; from nnctl.core.backend import get_backend; before = _loops.pool_stats()[0]; "
                            "get_backend('numpy'); print(before, _loops.pool_stats()[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    before, after = map(int, done.stdout.split())
    if after == 1:
        pytest.skip("no OpenBLAS threading callback here")
    assert (before, after) == (1, THREADS)

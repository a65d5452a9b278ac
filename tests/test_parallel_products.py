"""Single-row products split between two threads (`microkernels.par_dots`): against
NumPy with a live worker, with a worker that never comes (the half is taken back),
and from several threads at once next to sharded calls."""
import ctypes
import threading
import time

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
from compiler import jit, microkernels, spin

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path / "kernels"))


@pytest.fixture(scope="module")
def par_dots():
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), jit._new_target_machine())
    for unit in microkernels.units([("par_dots", d) for d in microkernels.DTYPES]):
        engine.add_object_file(llvm.ObjectFileRef.from_data(jit.library_object(*unit)))
    engine.finalize_object()
    args = microkernels.SIGNATURES["par_dots"]
    ty = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p if a[0].isupper() else ctypes.c_int64
                                  for a in args])
    fns = {d: ty(engine.get_function_address(microkernels.symbol("par_dots", d)))
           for d in microkernels.DTYPES}
    yield fns
    del engine


def _ptr(a):
    return a.__array_interface__["data"][0]


def _call(fn, words, A, W, C):
    M, K = A.shape
    N = W.shape[0]
    s = [x // A.itemsize for x in C.strides]
    fn(words, M, N, K, _ptr(A), A.strides[0] // A.itemsize, _ptr(W),
       W.strides[0] // W.itemsize, _ptr(C), *s)


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)


@given(M=st.integers(1, 3), N=st.sampled_from([16, 40, 129, 512]),
       K=st.sampled_from([48, 64, 200]), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_split_products_match_numpy(par_dots, M, N, K, dtype, seed):
    """With the worker awake the columns are shared (its count of calls moves when
    N·K is large enough); either way C = A·Wᵀ and nothing past C is written."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype)
    big = np.full((M, N + 2), 7.0, dtype)
    C = big[:, :N]
    with spin.lock:
        worker = spin.workers(1)[0]
        for _ in range(200):            # woken, and spinning before the call
            if worker.awake():
                break
            threading.Event().wait(0.001)
        before = worker.words[1]
        _call(par_dots[dtype], worker.address, A, W, C)
        shared = worker.words[1] > before
    np.testing.assert_allclose(C, A @ W.T, **_tol(dtype))
    assert (big[:, N:] == 7).all()
    assert shared == (N * K >= microkernels.split_min(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_half_no_worker_claims_is_taken_back(par_dots, dtype):
    """Words that look like an idle, awake worker, but no thread reads them: the
    kernel posts its half, waits RETRACT_POLLS polls, claims it back and does it."""
    words = (ctypes.c_int64 * 11)()
    rng = np.random.default_rng(0)
    A = rng.standard_normal((1, 128)).astype(dtype)
    W = rng.standard_normal((512, 128)).astype(dtype)
    C = np.zeros((1, 512), dtype)
    for call in range(1, 4):
        _call(par_dots[dtype], ctypes.addressof(words), A, W, C)
        np.testing.assert_allclose(C, A @ W.T, **_tol(dtype))
        assert (words[0], words[1], words[10]) == (call, call, call)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_busy_or_sleeping_worker_is_not_posted_to(par_dots, dtype):
    words = (ctypes.c_int64 * 11)()
    A = np.ones((1, 128), dtype)
    W = np.ones((512, 128), dtype)
    C = np.zeros((1, 512), dtype)
    words[0] = 5                        # a call posted and not done: busy
    _call(par_dots[dtype], ctypes.addressof(words), A, W, C)
    assert (C == 128).all() and words[0] == 5 and words[1] == 0
    words[0], words[2] = 0, 1           # asleep
    _call(par_dots[dtype], ctypes.addressof(words), A, W, C)
    assert words[0] == 0


def _lstm_step(dtype, H=128, D=64):
    import rnn
    c = rnn.CELLS["lstm"](D, H, dtype=dtype).init(0)
    x = ag.placeholder("x", (1, D), dtype)
    state = [ag.placeholder(f"s{i}", (1, H), dtype) for i in range(2)]
    new_state, out = c.step(tuple(state), x)
    inputs = [x, *state, *c.nodes().values()]
    rng = np.random.default_rng(1)
    args = [rng.standard_normal((1, D)).astype(dtype),
            *[rng.standard_normal((1, H)).astype(dtype) for _ in range(2)],
            *c.state_dict().values()]
    return inputs, [out, *new_state], args


def _worker():
    with spin.lock:
        return spin.workers(1)[0]


def _training(cell, T, seed):
    """A workload training step at B = 8 (sharded): its function, arguments and the
    interpreter's values."""
    from rnn.workload import training_step
    model, data, outs = training_step(cell, 8, 16)
    params = list(model.nodes().values())
    rng = np.random.default_rng(seed)
    args = [rng.normal(size=(T, 8, 8)), rng.normal(size=(T, 8, 8)),
            *model.state_dict().values()]
    ref = ag.function(data + params, outs)(*args)
    return ag.function(data + params, outs, backend="llvm"), args, ref


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_inference_step_shares_its_products_and_agrees(dtype, rtol):
    """An LSTM step at B = 1 (H = 128): the bound call hands half of each product to
    the worker, and gives the interpreter's numbers."""
    inputs, outputs, args = _lstm_step(dtype)
    f = ag.function(inputs, outputs, backend="llvm")
    kernel = f.runner.kernel
    assert kernel.parallel
    ref = ag.function(inputs, outputs)(*args)
    step = f.bind(*args)
    worker = _worker()
    before = worker.words[1]
    # a worker that sleeps is woken by a call and takes part from the next one on;
    # on a busy machine (tests in parallel) it may take the scheduler a while
    deadline = time.perf_counter() + 10.0
    while worker.words[1] == before and time.perf_counter() < deadline:
        got = step()
    assert worker.words[1] > before
    for _ in range(50):
        got = step()
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol)
    for r, g in zip(ref, f(*args)):            # the plain call too
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol)
    # plain calls that repeat the last one (`Kernel.repeat`) hand off the same way
    before = worker.words[1]
    deadline = time.perf_counter() + 10.0
    while worker.words[1] == before and time.perf_counter() < deadline:
        got = f(*args)
    assert worker.words[1] > before
    for _ in range(50):
        for r, g in zip(ref, f(*args)):
            np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol)


def test_threads_and_sharded_calls_at_once():
    """Two threads run bound B = 1 steps and two plain ones of the same function while
    a fifth runs sharded training steps (which hold the worker): every result right,
    no thread stuck."""
    inputs, outputs, args = _lstm_step("float64")
    f = ag.function(inputs, outputs, backend="llvm")
    ref = ag.function(inputs, outputs)(*args)
    train, targs, tref = _training("gru", 5, 2)
    errors = []

    def infer():
        step = f.bind(*args)
        for _ in range(400):
            for r, g in zip(ref, step()):
                if not np.allclose(g, r, rtol=1e-12, atol=1e-12):
                    errors.append("inference")

    def plain():                # plain calls of the same function, repeated
        for _ in range(400):
            for r, g in zip(ref, f(*args)):
                if not np.allclose(g, r, rtol=1e-12, atol=1e-12):
                    errors.append("plain inference")

    def sharded():
        for _ in range(30):
            for r, g in zip(tref, train(*targs)):
                if not np.allclose(g, r, rtol=1e-10, atol=1e-12):
                    errors.append("training")

    threads = [threading.Thread(target=t) for t in (infer, infer, plain, plain, sharded)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_both_products_of_a_step_go_in_one_hand_off(dtype, rtol):
    """x·U and h·W of an LSTM step are one `par_dots2` call (one job for the worker);
    posted to words no worker reads, the kernel takes the job back and is right."""
    import re
    inputs, outputs, args = _lstm_step(dtype)
    f = ag.function(inputs, outputs, backend="llvm")
    kernel = f.runner.kernel
    calls = re.findall(r'call void @"?(ag_\w+)', kernel.ir_text)
    assert calls.count(f"ag_par_dots2_{dtype}") == 1
    ref = ag.function(inputs, outputs)(*args)
    call, outs = kernel.bind(args, {})
    words = (ctypes.c_int64 * 11)()
    call.status[2] = ctypes.addressof(words)
    kernel._fn(*call.args)
    call.status[2] = 0
    assert (words[0], words[1], words[10]) == (1, 1, 1)
    for r, g in zip(ref, outs):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol)


def test_one_thread_when_asked(monkeypatch):
    """AUTOGRAPH_THREADS=1 keeps a B = 1 step on the calling thread, as it keeps a
    training step unsharded."""
    monkeypatch.setenv("AUTOGRAPH_THREADS", "1")
    inputs, outputs, args = _lstm_step("float64")
    f = ag.function(inputs, outputs, backend="llvm")
    worker = _worker()
    before = worker.words[0]
    step = f.bind(*args)
    for _ in range(50):
        step()
        f(*args)
    assert worker.words[0] == before


def test_sharded_calls_count_on_from_the_kernels_posts():
    """Kernels post to the worker natively; a sharded call posted afterwards continues
    the same count (a count of its own could post the number the worker has already
    done, and the call would return before its shard ran)."""
    inputs, outputs, args = _lstm_step("float64")
    step = ag.function(inputs, outputs, backend="llvm").bind(*args)
    train, targs, ref = _training("elman", 4, 3)
    worker = _worker()
    for _ in range(100):
        step()
    for _ in range(3):
        done = worker.words[1]
        got = train.runner.sharder.run(targs, {"T": 4, "B": 8}, shards=2)
        assert worker.words[0] == worker.words[1] == done + 1
        for r, g in zip(ref, got):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)

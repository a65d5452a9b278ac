"""One step of a cell at B = 1 split by hidden unit (`codegen.unit_plan`): the worker
computes half the units' pre-activations and gates, the calling thread the other half.
Checked against the same kernel built without the split (bit for bit) and the NumPy
interpreter, with a live worker, with words no worker reads (the job is taken back),
and with a busy or sleeping worker (no post: the products and gates run here)."""
import ctypes
import time

import numpy as np
import pytest

import autograph as ag
import rnn
from compiler import codegen, spin
from compiler.loopir import Fused, Map


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path / "kernels"))


def _step(cell, dtype, H=128, D=64, seed=1, **options):
    c = rnn.CELLS[cell](D, H, dtype=dtype, **options).init(0)
    x = ag.placeholder("x", (1, D), dtype)
    state = [ag.placeholder(f"s{i}", (1, H), dtype) for i in range(len(c.state_names))]
    new_state, out = c.step(tuple(state), x)
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((1, D)).astype(dtype),
            *[rng.standard_normal((1, H)).astype(dtype) for _ in state],
            *c.state_dict().values()]
    return [x, *state, *c.nodes().values()], [out, *new_state], args


def _compiled(inputs, outputs, split, monkeypatch):
    monkeypatch.setattr(codegen, "UNIT_SPLIT", split)
    return ag.function(inputs, outputs, backend="llvm")


def _tol(dtype):
    return 1e-12 if dtype == "float64" else 2e-5


def _worker():
    with spin.lock:
        return spin.workers(1)[0]


@pytest.mark.parametrize("cell, dtype, blocks", [
    ("lstm", "float64", 4), ("lstm", "float32", 4), ("gru", "float64", 3),
    ("gru", "float32", 3)])
def test_gated_steps_split_by_unit_at_the_gate_offsets(cell, dtype, blocks):
    inputs, outputs, _ = _step(cell, dtype)
    kernel = ag.function(inputs, outputs, backend="llvm").runner.kernel
    plan = codegen.unit_plan(kernel.prog.body)
    assert plan is not None and kernel.parallel
    assert plan.units == 128 and plan.cut == 64
    for s, starts in plan.columns:
        assert starts == [128 * g for g in range(blocks)]
    assert all(isinstance(g, (Map, Fused)) for g in plan.gates)


def test_no_split_outside_its_window():
    """Below UNIT_SPLIT_BYTES of weights (an Elman step at H = 128 in float64: 192 KB),
    above UNIT_SPLIT_MAX_BYTES (an LSTM step at H = 512: 9.4 MB), and a training step
    (loops)."""
    small = ag.function(*_step("elman", "float64")[:2], backend="llvm").runner.kernel
    large = ag.function(*_step("lstm", "float64", H=512)[:2], backend="llvm").runner.kernel
    from rnn.workload import training_step
    model, data, outs = training_step("lstm", 8, 16)
    train = ag.function(data + list(model.nodes().values()), outs, backend="llvm")
    for kernel in (small, large, train.runner.kernel):
        assert codegen.unit_plan(kernel.prog.body) is None


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_split_step_equals_the_unsplit_one(cell, dtype, monkeypatch):
    """Bound calls with the worker taking part: the same numbers, bit for bit, as the
    kernel built without the split, and the interpreter's within rounding."""
    inputs, outputs, args = _step(cell, dtype)
    split = _compiled(inputs, outputs, True, monkeypatch)
    whole = _compiled(inputs, outputs, False, monkeypatch)
    assert codegen.unit_plan(split.runner.kernel.prog.body) is not None
    ref = ag.function(inputs, outputs)(*args)
    want = [np.array(o) for o in whole.bind(*args)()]
    step = split.bind(*args)
    worker = _worker()
    before = worker.words[1]
    deadline = time.perf_counter() + 10.0       # a sleeping worker is woken by a call
    while worker.words[1] == before and time.perf_counter() < deadline:
        step()
    assert worker.words[1] > before
    for _ in range(20):
        got = step()
        for g, w, r in zip(got, want, ref):
            np.testing.assert_array_equal(g, w)
            np.testing.assert_allclose(g, r, rtol=_tol(dtype), atol=_tol(dtype))
    for g, w in zip(split(*args), want):       # plain calls, repeated and not
        np.testing.assert_array_equal(g, w)


def _raw(step):
    """The bound call's native function, arguments and status words."""
    return step.function.runner.kernel._fn, step._call.args, step._call.status


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_job_no_worker_claims_is_taken_back(cell, monkeypatch):
    """Words that look like an idle, awake worker that never comes: the kernel posts
    its half, waits, claims it back and computes it itself."""
    inputs, outputs, args = _step(cell, "float64")
    want = [np.array(o) for o in _compiled(inputs, outputs, False, monkeypatch).bind(*args)()]
    step = _compiled(inputs, outputs, True, monkeypatch).bind(*args)
    fn, cargs, status = _raw(step)
    words = (ctypes.c_int64 * 11)()
    for call in range(1, 4):
        for o in step.outputs:
            o[...] = np.nan
        status[2] = ctypes.addressof(words)
        fn(*cargs)
        status[2] = 0
        assert (words[0], words[1], words[10]) == (call, call, call)
        for g, w in zip(step.outputs, want):
            np.testing.assert_array_equal(g, w)


def test_a_busy_or_sleeping_worker_is_not_posted_to(monkeypatch):
    inputs, outputs, args = _step("lstm", "float64")
    want = [np.array(o) for o in _compiled(inputs, outputs, False, monkeypatch).bind(*args)()]
    step = _compiled(inputs, outputs, True, monkeypatch).bind(*args)
    fn, cargs, status = _raw(step)
    words = (ctypes.c_int64 * 11)()
    for posted, asleep in ((5, 0), (0, 1)):      # a call posted and not done; asleep
        words[0], words[2] = posted, asleep
        for o in step.outputs:
            o[...] = np.nan
        status[2] = ctypes.addressof(words)
        fn(*cargs)
        status[2] = 0
        assert (words[0], words[1], words[10]) == (posted, 0, 0)
        for g, w in zip(step.outputs, want):
            np.testing.assert_array_equal(g, w)


def test_peephole_lstm_step_splits_too(monkeypatch):
    """Peepholes read the cell state unit by unit: the step still splits, and agrees
    with the unsplit kernel bit for bit (the job run here: words no worker reads)."""
    inputs, outputs, args = _step("lstm", "float64", peephole=True)
    want = [np.array(o) for o in _compiled(inputs, outputs, False, monkeypatch).bind(*args)()]
    f = _compiled(inputs, outputs, True, monkeypatch)
    assert codegen.unit_plan(f.runner.kernel.prog.body) is not None
    step = f.bind(*args)
    fn, cargs, status = _raw(step)
    words = (ctypes.c_int64 * 11)()
    status[2] = ctypes.addressof(words)
    fn(*cargs)
    status[2] = 0
    assert words[10] == 1
    ref = ag.function(inputs, outputs)(*args)
    for g, w, r in zip(step.outputs, want, ref):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)

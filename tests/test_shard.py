"""Batch sharding (compiler/shard.py): the separability analysis, and sharded calls
against whole calls and the NumPy interpreter."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
from autograph.errors import InputError
from autograph.graph import Graph
from compiler import shard
from compiler.shard import bounds, find_plan
from rnn.workload import training_step


def _relerr(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.max(np.abs(ref - got), initial=0.0)
                 / max(float(np.max(np.abs(ref), initial=0.0)), 1e-300))


def _three_ways(inputs, outputs, args, shards=2):
    """(interpreter, whole compiled call, sharded compiled call) outputs."""
    ref = ag.function(inputs, outputs)(*args)
    f = ag.function(inputs, outputs, backend="llvm")
    arrays, dims = ag.backends.bind_inputs(f.graph.inputs, args)
    whole = f.runner.kernel.run(arrays, dims)
    assert f.runner.sharder is not None, f.runner.shard_note
    parts = f.runner.sharder.run(arrays, dims, shards=shards)
    return ref, whole, parts


def _elman(dtype="float64"):
    """Per-example outputs, a mean loss and its gradients, and a batch-free output."""
    x = ag.placeholder("x", ("T", "B", 3), dtype)
    h0 = ag.placeholder("h0", ("B", 4), dtype)
    U = ag.placeholder("U", (3, 4), dtype)
    W = ag.placeholder("W", (4, 4), dtype)
    hT, hs = ag.scan(lambda h, x_t: (ag.tanh(x_t @ U + h @ W),) * 2, h0, x)
    loss = ag.mean(hs * hs)
    gU, gW, gh0 = ag.grad(loss, [U, W, h0])
    return [x, h0, U, W], [loss, hs, hT, gU, gW, gh0, W * 2.0]


def _elman_args(T, B, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((T, B, 3)).astype(dtype),
            rng.standard_normal((B, 4)).astype(dtype),
            (0.5 * rng.standard_normal((3, 4))).astype(dtype),
            (0.5 * rng.standard_normal((4, 4))).astype(dtype)]


# ----------------------------------------------------------------------------- the analysis

def test_each_output_is_classified():
    inputs, outputs = _elman()
    plan, why = find_plan(Graph(inputs, outputs))
    assert why is None and plan.dim == "B"
    assert plan.in_axes == (1, 0, None, None)
    kinds = [(s[0], s[2]) for s in plan.out_states]
    # loss: a sum over the batch divided by B; hs [T,B,H] batched on axis 1; h_T on 0;
    # gradients of weights: sums (with the mean's 1/B); of h0: per row; W·2: shared.
    assert kinds == [("sum", 1), ("batch", 0), ("batch", 0), ("sum", 1), ("sum", 1),
                     ("batch", 1), ("free", 0)]
    assert plan.out_axes == (None, 1, 0, None, None, 0, None)
    assert "summed" in plan.describe() and "concatenated on axis 1" in plan.describe()


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_training_steps_are_separable(cell):
    model, data, outputs = training_step(cell, 5, 6)
    plan, why = find_plan(Graph(data + list(model.nodes().values()), outputs))
    assert why is None
    assert all(s[0] == "sum" for s in plan.out_states)    # the loss and every gradient


def _not_separable_cases():
    x = ag.placeholder("x", ("B", 3))
    W = ag.placeholder("W", (3, 3))
    y = ag.tanh(x @ W)
    loss = ag.mean(y * y)
    (gW,) = ag.grad(loss, [W])
    norm = ag.sqrt(ag.sum(gW * gW))
    T = ag.placeholder("xs", ("B", 2))
    cases = {
        # gradient clipping inside the graph: a nonlinear function of a batch sum
        "clip": ([x, W], [gW * ag.minimum(1.0, 1.0 / norm)], "a sum over the batch"),
        # batch normalisation: every row depends on the whole batch
        "batchnorm": ([x, W], [y - ag.mean(y, axis=0)], "sum over the batch"),
        "max over batch": ([x, W], [ag.max(y, axis=0)], "maximum across the batch"),
        "exp of the loss": ([x, W], [ag.exp(loss)], "nonlinear function"),
        "scan over B": ([T], [ag.scan(lambda c, t: (c + t, c), ag.zeros((2,)), T)[0]],
                        "loops over the batch dim"),
        "slice of the batch": ([x, W], [y[0]], "slices the batch dim"),
        # Σ f_b / B + Σ g_b: the shards' terms would need two different rescalings
        "mean plus sum": ([x, W], [loss + ag.sum(y)], "different powers of the batch size"),
    }
    return cases


@pytest.mark.parametrize("case", list(_not_separable_cases()))
def test_graphs_that_mix_the_batch_are_not_sharded(case, monkeypatch):
    inputs, outputs, reason = _not_separable_cases()[case]
    plan, why = find_plan(Graph(inputs, outputs))
    assert plan is None and reason in why
    # They still run (whole) and agree with the interpreter, even when sharding is forced.
    monkeypatch.setenv("AUTOGRAPH_SHARD", "always")
    rng = np.random.default_rng(1)
    args = [rng.standard_normal(tuple(4 if d == "B" else d for d in x.shape)) for x in inputs]
    f = ag.function(inputs, outputs, backend="llvm")
    assert f.runner.sharder is None and reason in f.runner.shard_note
    for r, g in zip(ag.function(inputs, outputs)(*args), f(*args)):
        assert _relerr(r, g) < 1e-12


def test_bounds_cover_the_batch():
    assert bounds(5, 2) == [(0, 3), (3, 5)]
    assert bounds(2, 2) == [(0, 1), (1, 2)]
    for total in range(1, 20):
        for n in range(1, min(total, 4) + 1):
            spans = bounds(total, n)
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(h - l for l, h in spans) - min(h - l for l, h in spans) <= 1


# ----------------------------------------------------------------------------- sharded calls

@pytest.mark.parametrize("B", [2, 5, 16])
def test_sharded_call_equals_whole_call_and_interpreter(B):
    """Uneven shards (5 = 3 + 2) exercise the (B_i / B) rescaling of the mean."""
    inputs, outputs = _elman()
    ref, whole, parts = _three_ways(inputs, outputs, _elman_args(7, B))
    for r, w, p in zip(ref, whole, parts):
        assert p.shape == r.shape and p.dtype == r.dtype
        assert _relerr(r, p) < 1e-12 and _relerr(w, p) < 1e-12


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_sharded_training_step(cell, dtype, tol):
    model, data, outputs = training_step(cell, 8, 16, dtype)
    rng = np.random.default_rng(2)
    x, y = (rng.standard_normal((6, 9, 8)).astype(dtype) for _ in range(2))
    ref, whole, parts = _three_ways(data + list(model.nodes().values()), outputs,
                                    [x, y] + list(model.state_dict().values()), shards=3)
    for r, w, p in zip(ref, whole, parts):
        assert _relerr(r, p) < tol and _relerr(w, p) < tol


def test_embedding_and_cross_entropy_shard():
    """Int inputs, take / take_grad (a scatter-add over the batch) and one-hot."""
    idx = ag.placeholder("idx", ("T", "B"), "int64")
    tgt = ag.placeholder("tgt", ("T", "B"), "int64")
    E = ag.placeholder("E", (11, 4))
    V = ag.placeholder("V", (4, 11))
    logits = ag.take(E, idx) @ V
    loss = ag.cross_entropy(logits, tgt)
    gE, gV = ag.grad(loss, [E, V])
    rng = np.random.default_rng(3)
    args = [rng.integers(0, 11, (5, 6)), rng.integers(0, 11, (5, 6)),
            rng.standard_normal((11, 4)), rng.standard_normal((4, 11))]
    ref, whole, parts = _three_ways([idx, tgt, E, V], [loss, gE, gV, ag.one_hot(idx, 11)], args)
    for r, w, p in zip(ref, whole, parts):
        assert _relerr(r, p) < 1e-12


def test_an_error_in_one_shard_is_an_input_error_and_nothing_breaks():
    idx = ag.placeholder("idx", ("B",), "int64")
    E = ag.placeholder("E", (5, 2))
    out = ag.sum(ag.take(E, idx))
    f = ag.function([idx, E], out, backend="llvm")
    arrays, dims = ag.backends.bind_inputs(f.graph.inputs, [np.array([0, 1, 2, 9]), np.ones((5, 2))])
    with pytest.raises(InputError, match="9"):      # the bad row is in the second shard
        f.runner.sharder.run(arrays, dims, shards=2)
    good, dims = ag.backends.bind_inputs(f.graph.inputs, [np.array([0, 1, 2, 4]), np.ones((5, 2))])
    for _ in range(3):                              # both threads' status words were cleared
        assert f.runner.sharder.run(good, dims, shards=2)[0] == pytest.approx(8.0)


def test_bound_sharded_call_reads_the_current_inputs(monkeypatch):
    monkeypatch.setenv("AUTOGRAPH_SHARD", "always")
    inputs, outputs = _elman()
    f = ag.function(inputs, outputs, backend="llvm")
    args = _elman_args(6, 5)
    bound = f.bind(*args)
    first = [np.array(o) for o in bound()]
    ref = ag.function(inputs, outputs)
    for r, g in zip(ref(*args), first):
        assert _relerr(r, g) < 1e-12
    new = _elman_args(6, 5, seed=9)
    for name, a in zip(["x", "h0"], new):    # x is split on axis 1 (copied), h0 on 0 (views)
        bound.inputs[name][...] = a
    for r, g in zip(ref(*new[:2], *args[2:]), bound()):
        assert _relerr(r, g) < 1e-12


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 5), B=st.integers(2, 6), H=st.integers(1, 5),
       act=st.sampled_from(["tanh", "sigmoid", "relu"]), reverse=st.booleans(),
       mean=st.booleans(), seed=st.integers(0, 1000))
def test_random_recurrences_sharded(T, B, H, act, reverse, mean, seed):
    x = ag.placeholder("x", ("T", "B", 3))
    s0 = ag.placeholder("s0", ("B", H))
    U, W = ag.placeholder("U", (3, H)), ag.placeholder("W", (H, H))
    b = ag.placeholder("b", (H,))

    def step(s, x_t):
        z = getattr(ag, act)(x_t @ U + s @ W + b)
        return z, ag.sum(z * z, axis=-1)
    s_T, ys = ag.scan(step, s0, x, reverse=reverse)
    # Both terms divided by B, or neither (a mix is not separable: see above).
    loss = ag.mean(ys) + ag.mean(s_T) if mean else ag.sum(ys) + ag.sum(s_T)
    grads = ag.grad(loss, [U, W, b, s0, x])
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((T, B, 3)), rng.standard_normal((B, H)),
            0.5 * rng.standard_normal((3, H)), 0.5 * rng.standard_normal((H, H)),
            rng.standard_normal(H)]
    ref, whole, parts = _three_ways([x, s0, U, W, b], [loss, ys, *grads], args,
                                    shards=min(B, 3))
    for r, p in zip(ref, parts):
        assert _relerr(r, p) < 1e-12


# ----------------------------------------------------------------------------- the policy

def test_policy_times_both_ways_then_decides(monkeypatch):
    """Sharded calls, then whole ones, all timed; under the threshold the binding runs
    whole. Every trial call returns the right values."""
    inputs, outputs = _elman()
    args = _elman_args(4, 6)
    ref = ag.function(inputs, outputs)(*args)
    monkeypatch.delenv("AUTOGRAPH_SHARD", raising=False)
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    monkeypatch.setattr(shard, "SHARDED_TRIAL_SECONDS", 0.0)
    for threshold in (0.0, float("inf")):
        monkeypatch.setattr(shard, "SHARD_MIN_SECONDS", threshold)
        f = ag.function(inputs, outputs, backend="llvm")
        arrays, dims = ag.backends.bind_inputs(f.graph.inputs, args)
        s = f.runner.sharder
        rounds = 0          # a first race the shards lose has a second round
        while s.shards_for(dims) is None:
            rounds += 1
            assert rounds <= shard.FIRST_ROUNDS
            for _ in range(shard.SHARDED_TRIALS + shard.TRIAL_CALLS):
                assert s.shards_for(dims) is None
                for r, g in zip(ref, f(*args)):
                    assert _relerr(r, g) < 1e-12
        assert s.shards_for(dims) in ((1, 2) if threshold == 0.0 else (1,))
        assert rounds == 1 or threshold == 0.0     # under the threshold: one round
        for r, g in zip(ref, f(*args)):
            assert _relerr(r, g) < 1e-12


@pytest.mark.parametrize("whole, sharded, expect, rounds", [
    (300e-6, 200e-6, 2, 1),   # long enough, and the shards are faster
    (300e-6, 400e-6, 1, 2),   # long enough, but the shards are slower, twice
    (100e-6, 50e-6, 1, 1),    # too short to gain from shards, whatever they measured
])
def test_the_faster_way_is_kept(monkeypatch, whole, sharded, expect, rounds):
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    monkeypatch.delenv("AUTOGRAPH_SHARD", raising=False)
    monkeypatch.setattr(shard, "SHARD_MIN_SECONDS", 250e-6)
    monkeypatch.setattr(shard, "SHARDED_TRIAL_SECONDS", 0.0)
    inputs, outputs = _elman()
    f = ag.function(inputs, outputs, backend="llvm")
    s = f.runner.sharder
    dims = {"T": 4, "B": 6}
    for _ in range(rounds):
        assert s.shards_for(dims) is None
        for _ in range(shard.SHARDED_TRIALS):   # the sharded calls first
            assert s.shards_for(dims) is None and s._trial_sharded(dims)
            s._record(dims, sharded, sharded=True)
        for _ in range(shard.TRIAL_CALLS):
            assert s.shards_for(dims) is None and not s._trial_sharded(dims)
            s._record(dims, whole)
    assert s.shards_for(dims) == expect


def test_a_first_race_the_shards_lose_gets_a_second_round(monkeypatch):
    """Shards slowed during the first round (another process on the second core) win
    the second, and the best call of both rounds counts."""
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    monkeypatch.delenv("AUTOGRAPH_SHARD", raising=False)
    monkeypatch.setattr(shard, "SHARD_MIN_SECONDS", 250e-6)
    monkeypatch.setattr(shard, "SHARDED_TRIAL_SECONDS", 0.0)
    inputs, outputs = _elman()
    s = ag.function(inputs, outputs, backend="llvm").runner.sharder
    dims = {"T": 4, "B": 6}
    for sharded, whole in ((400e-6, 300e-6), (200e-6, 320e-6)):
        assert s.shards_for(dims) is None
        for _ in range(shard.SHARDED_TRIALS):
            assert s._trial_sharded(dims)
            s._record(dims, sharded, sharded=True)
        for _ in range(shard.TRIAL_CALLS):
            assert not s._trial_sharded(dims)
            s._record(dims, whole)
    assert s.shards_for(dims) == 2
    # whole calls that got faster in the second round still win against slower shards
    g = ag.function(inputs, outputs, backend="llvm").runner.sharder
    for sharded, whole in ((310e-6, 330e-6), (300e-6, 280e-6)):
        for _ in range(shard.SHARDED_TRIALS):
            g._record(dims, sharded, sharded=True)
        for _ in range(shard.TRIAL_CALLS):
            g._record(dims, whole)
    assert g.shards_for(dims) == 1


def test_shards_are_timed_for_a_while_but_not_forever(monkeypatch):
    """Sharded trials go on for SHARDED_TRIAL_SECONDS (the spin window of threads a
    BLAS call left behind), at most SHARDED_TRIALS_MAX calls."""
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    monkeypatch.delenv("AUTOGRAPH_SHARD", raising=False)
    monkeypatch.setattr(shard, "SHARDED_TRIAL_SECONDS", 1e9)
    monkeypatch.setattr(shard, "SHARDED_TRIALS_MAX", 9)
    inputs, outputs = _elman()
    s = ag.function(inputs, outputs, backend="llvm").runner.sharder
    dims = {"T": 4, "B": 6}
    for _ in range(9):
        assert s._trial_sharded(dims)
        s._record(dims, 1e-3, sharded=True)
    assert not s._trial_sharded(dims)


def test_bind_decides_by_timing_both_ways(monkeypatch):
    monkeypatch.delenv("AUTOGRAPH_SHARD", raising=False)
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    monkeypatch.setattr(shard, "SHARD_MIN_SECONDS", 0.0)
    inputs, outputs = _elman()
    args = _elman_args(4, 6)
    f = ag.function(inputs, outputs, backend="llvm")
    call = f.bind(*args)
    _, dims = ag.backends.bind_inputs(f.graph.inputs, args)
    assert f.runner.sharder.shards_for(dims) in (1, 2)
    for r, g in zip(ag.function(inputs, outputs)(*args), call()):
        assert _relerr(r, g) < 1e-12


@pytest.mark.parametrize("env", [{"AUTOGRAPH_THREADS": "1", "AUTOGRAPH_SHARD": "always"},
                                 {"AUTOGRAPH_SHARD": "never"}])
def test_sharding_can_be_turned_off(env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    inputs, outputs = _elman()
    f = ag.function(inputs, outputs, backend="llvm")
    args = _elman_args(4, 6)
    f(*args)
    _, dims = ag.backends.bind_inputs(f.graph.inputs, args)
    assert f.runner.sharder.shards_for(dims) == 1


def test_batch_of_one_runs_whole(monkeypatch):
    monkeypatch.setenv("AUTOGRAPH_SHARD", "always")
    inputs, outputs = _elman()
    f = ag.function(inputs, outputs, backend="llvm")
    args = _elman_args(4, 1)
    _, dims = ag.backends.bind_inputs(f.graph.inputs, args)
    assert f.runner.sharder.shards_for(dims) == 1
    for r, g in zip(ag.function(inputs, outputs)(*args), f(*args)):
        assert _relerr(r, g) < 1e-12


def test_bad_thread_count_is_named(monkeypatch, caplog):
    monkeypatch.setenv("AUTOGRAPH_THREADS", "many")
    assert shard.thread_count() == 1
    assert "AUTOGRAPH_THREADS" in caplog.text


def test_a_forked_child_starts_its_own_workers(monkeypatch):
    """A child made by fork has none of its parent's worker threads (posting to them
    would wait forever): the workers are keyed by process id. Forking this test
    process itself is avoided (JAX's threads may hold locks), so the child's view —
    another pid — is simulated."""
    from compiler import spin
    inputs, outputs = _elman()
    f = ag.function(inputs, outputs, backend="llvm")
    arrays, dims = ag.backends.bind_inputs(f.graph.inputs, _elman_args(4, 6))
    expect = f.runner.sharder.run(arrays, dims, shards=2)[0]   # this process's workers
    before = list(spin._workers)
    monkeypatch.setattr(spin, "_pid", -1)                      # as seen after a fork
    got = f.runner.sharder.run(arrays, dims, shards=2)[0]
    assert spin._workers and not set(map(id, spin._workers)) & set(map(id, before))
    assert float(got) == pytest.approx(float(expect), rel=1e-12)


def test_a_verdict_is_raced_again_less_and_less_often(monkeypatch):
    """Shards that lost their first race (slowed by another library's spinning threads,
    say) get another one after RECHECK_AFTER whole calls, then after twice as many
    each time; so does a shards verdict (whole calls slowed during the race), after
    RECHECK_AFTER sharded calls, then twice as many."""
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    monkeypatch.delenv("AUTOGRAPH_SHARD", raising=False)
    monkeypatch.setattr(shard, "SHARD_MIN_SECONDS", 250e-6)
    monkeypatch.setattr(shard, "SHARDED_TRIAL_SECONDS", 0.0)
    monkeypatch.setattr(shard, "RECHECK_AFTER", 3)
    inputs, outputs = _elman()
    f = ag.function(inputs, outputs, backend="llvm")
    s = f.runner.sharder
    args = _elman_args(4, 6)
    arrays, dims = ag.backends.bind_inputs(f.graph.inputs, args)

    def race(whole, sharded):
        for _ in range(shard.SHARDED_TRIALS):
            s._record(dims, sharded, sharded=True)
        for _ in range(shard.TRIAL_CALLS):
            s._record(dims, whole)
    race(whole=300e-6, sharded=400e-6)
    assert s.shards_for(dims) is None          # the first race has two rounds
    race(whole=300e-6, sharded=400e-6)
    assert s.shards_for(dims) == 1
    for _ in range(3):
        assert s.shards_for(dims) == 1
        s.run(arrays, dims)
    assert s.shards_for(dims) is None          # racing again
    race(whole=300e-6, sharded=200e-6)
    assert s.shards_for(dims) == 2
    for _ in range(6):          # sharded now, raced again after 6 sharded calls (3 · 2)
        assert s.shards_for(dims) == 2
        s.run(arrays, dims)
    assert s.shards_for(dims) is None          # racing again
    race(whole=300e-6, sharded=200e-6)
    for _ in range(12):         # shards won again: next race after 12
        assert s.shards_for(dims) == 2
        s.run(arrays, dims)
    assert s.shards_for(dims) is None
    race(whole=200e-6, sharded=300e-6)         # now one thread wins
    assert s.shards_for(dims) == 1
    # lost again and again: raced after 3, 6, 12 whole calls
    g = ag.function(inputs, outputs, backend="llvm").runner.sharder
    for calls in (0, 3, 6, 12):        # 0: the first race's second round
        for _ in range(shard.SHARDED_TRIALS):
            g._record(dims, 400e-6, sharded=True)
        for _ in range(shard.TRIAL_CALLS):
            g._record(dims, 300e-6)
        for _ in range(calls):
            assert g.shards_for(dims) == 1
            g.run(arrays, dims)
        assert g.shards_for(dims) is None      # racing again

"""The register-tiled product of the compiler (codegen `_matmul_panels`): per-step
products h·W inside a loop, with W copied once into panels. Checked against NumPy
on every row-tile combination (8 or 6, 4, 2, 1 rows), chunked k (PANEL_KC) with a
remainder, both dtypes, on one BLAS thread (as in a sharded call) and on the
default count; and that the loop IR uses panels where it should."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
import compiler
from compiler import codegen, vecmath
from compiler.loopir import Loop, MatMul
from compiler.shard import blas_threads

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.skipif(vecmath.isa() is None,
                                reason="panels need a vector width (libmvec host)")


def _lane(dtype):
    return 2 * vecmath.isa()[1] // np.dtype(dtype).itemsize      # NR


def _recurrence(K, N, dtype):
    """s_t = tanh(s_{t-1}·W + x_t·U)[:, :K] with W [K, N]: the product of every step
    reads a loop-invariant W (so it gets panels); N ≥ K columns, the first K carried."""
    x = ag.placeholder("x", ("T", "B", N), dtype)
    s0 = ag.placeholder("s0", ("B", K), dtype)
    W = ag.placeholder("W", (K, N), dtype)

    def step(s, x_t):
        z = ag.tanh(s @ W + x_t)
        return z[:, :K], z
    _, zs = ag.scan(step, s0, x)
    loss = ag.sum(zs * zs)
    return [x, s0, W], [loss] + ag.grad(loss, [x, s0, W])


def _products(prog):
    out = []
    for s in prog.body:
        if isinstance(s, Loop):
            out += [t for t in s.body if isinstance(t, MatMul)]
    return out


def test_per_step_products_get_panels():
    """Forward s·W ([K, N]) and backward ds·Wᵀ ([N, K]): both widths multiples of NR."""
    nr = _lane("float32")
    ins, outs = _recurrence(nr, 2 * nr, "float32")
    prog = compiler.compile_graph(ag.Graph(ins, outs)).kernel.prog
    products = _products(prog)
    assert len(products) == 2 and all(p.packed is not None for p in products)
    for p in products:
        K, N = p.b.shape
        assert tuple(d.const for d in p.packed.shape) == (N.const // nr, K.const, nr)


def test_a_width_not_a_multiple_of_the_panels_pads_the_last_panel():
    """N = 2·NR + 3: three panels, the last with NR − 3 zero columns; the product's
    output rows are padded alike and read through a view of N columns."""
    nr = _lane("float64")
    ins, outs = _recurrence(nr, 2 * nr + 3, "float64")
    prog = compiler.compile_graph(ag.Graph(ins, outs)).kernel.prog
    forward = [p for p in _products(prog) if p.b.shape[1].const == 2 * nr + 3]
    assert len(forward) == 1 and forward[0].packed is not None
    assert tuple(d.const for d in forward[0].packed.shape) == (3, nr, nr)
    assert forward[0].out.strides[0].const == 3 * nr


def test_panels_keep_their_slot_for_the_whole_loop():
    """The panels are packed on a loop's first step and read on every step: no other
    buffer of the loop may share their arena slot (a temp of the same size did, and
    overwrote them from the second step on)."""
    x = ag.placeholder("x", ("T", "B", 12))
    W = ag.placeholder("W", (12, 12))
    C = ag.placeholder("C", (12, 16))
    D = ag.placeholder("D", (16, 3))

    def body(s, x_t):
        z = ag.tanh(C * ag.sum(s))          # 12·16 numbers: as many as W's two panels
        h = ag.tanh(x_t + s @ W + ag.sum(z @ D) * 1e-3)
        return h, h
    _, ys = ag.scan(body, ag.zeros_like(x[0]), x)
    rng = np.random.default_rng(0)
    args = [rng.normal(size=(5, 8, 12)), rng.normal(size=(12, 12)) * 0.3,
            rng.normal(size=(12, 16)), rng.normal(size=(16, 3))]
    f = ag.function([x, W, C, D], ys, backend="llvm")
    assert any(p.packed is not None for p in _products(f.runner.kernel.prog))
    np.testing.assert_allclose(f(*args), ag.function([x, W, C, D], ys)(*args), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("threads", [1, None])
@given(B=st.integers(1, 21), K=st.sampled_from([1, 3, 17, 256, 300, 520]),
       panels=st.integers(1, 3), extra=st.integers(0, 15),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_tiled_products_match_numpy(threads, B, K, panels, extra, dtype, seed):
    """The forward product always has panels (the last one padded when N is not a
    multiple of NR); the backward one when K is at least NR."""
    N = max(panels * _lane(dtype), K + (-K) % _lane(dtype)) + extra % _lane(dtype)
    ins, outs = _recurrence(K, N, dtype)
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((3, B, N)).astype(dtype),
            rng.standard_normal((B, K)).astype(dtype),
            (rng.standard_normal((K, N)) / np.sqrt(K)).astype(dtype)]
    want = ag.function(ins, outs)(*args)
    f = ag.function(ins, outs, backend="llvm")
    blas_threads.set(threads)
    try:
        got = f.runner.kernel.run(args, {"T": 3, "B": B})
    finally:
        blas_threads.set(None)
    tol = 1e-12 if dtype == "float64" else 2e-4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_the_single_thread_switch_reaches_the_kernel():
    """Above PANEL_MAX_WORK the tiles run only when OpenBLAS is on one thread; both
    settings give NumPy's values (the switch is read at each call)."""
    dtype = "float64"
    K, N = 128, 16 * _lane(dtype)
    B = codegen.PANEL_MAX_WORK // (K * N) + 4
    ins, outs = _recurrence(K, N, dtype)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((2, B, N)), rng.standard_normal((B, K)),
            rng.standard_normal((K, N)) / 16]
    want = ag.function(ins, outs)(*args)
    kernel = ag.function(ins, outs, backend="llvm").runner.kernel
    for threads in (1, None):
        blas_threads.set(threads)
        try:
            got = kernel.run(args, {"T": 2, "B": B})
        finally:
            blas_threads.set(None)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_panels_are_repacked_for_each_run_of_an_inner_loop():
    """An outer scan hands each step a new weight W_t, which the inner scan reads as its
    loop-invariant weight: the panels must be filled again for every outer step."""
    dtype = "float64"
    nr = _lane(dtype)
    K = N = nr
    Ws = ag.placeholder("Ws", ("T2", K, N), dtype)
    x = ag.placeholder("x", ("T", "B", N), dtype)
    s0 = ag.placeholder("s0", ("B", K), dtype)

    def outer(s, W_t):
        def inner(h, x_t):
            h_new = ag.tanh(h @ W_t + x_t)
            return h_new, h_new
        s_new, _ = ag.scan(inner, s, x)
        return s_new, ag.sum(s_new * s_new)
    _, per_step = ag.scan(outer, s0, Ws)
    outs = [per_step, ag.grad(ag.sum(per_step), Ws)]
    rng = np.random.default_rng(5)
    args = [rng.standard_normal((3, K, N)) / np.sqrt(K), rng.standard_normal((4, 6, N)),
            rng.standard_normal((6, K))]
    want = ag.function([Ws, x, s0], outs)(*args)
    f = ag.function([Ws, x, s0], outs, backend="llvm")
    blas_threads.set(1)
    try:
        got = f.runner.kernel.run(args, {"T2": 3, "T": 4, "B": 6})
    finally:
        blas_threads.set(None)
    assert any(st.packed is not None for st in _walk(f.runner.kernel.prog.body)
               if isinstance(st, MatMul))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def _walk(body):
    for s in body:
        yield s
        if isinstance(s, Loop):
            yield from _walk(s.body)

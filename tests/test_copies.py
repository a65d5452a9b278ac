"""The tiles' transposing copies folded into their products (compiler/copies.py): made
on the tiles' path only, the library reading and writing the operands where they lie.
Every case against NumPy, on both paths (small products: the tiles; large: OpenBLAS),
with OpenBLAS on one thread (a shard's: the tiles take larger products) and on its
default."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
from compiler import codegen, copies, vecmath
from compiler.loopir import Map, MatMul, walk
from compiler.shard import blas_threads

DTYPES = ["float32", "float64"]


def _close(got, A, B, f=lambda v: v):
    """got ≈ f(A·B), A·B computed in float64, within the rounding of a sum of K
    products in got's dtype: 4·eps·√K·√(Σ_k (a·b)²) per element (a random walk of
    roundings; a wrong or missing term is off by ~|a·b|, far beyond it)."""
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    eps = np.finfo(got.dtype).eps
    bound = 4 * eps * np.sqrt(A.shape[1]) * np.sqrt((A64 ** 2) @ (B64 ** 2)) + 4 * eps
    err = np.abs(got.astype(np.float64) - f(A64 @ B64))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"off by {err[worst]:.3g} at {worst}, bound {bound[worst]:.3g}"


def _layer(dtype, K, N):
    """y = x·Wᵀ and the weight's gradient (xᵀ·d)ᵀ for a loss Σ d·y, in W's layout."""
    x = ag.placeholder("x", ("M", K), dtype)
    w = ag.placeholder("w", (N, K), dtype)
    d = ag.placeholder("d", ("M", N), dtype)
    y = x @ ag.transpose(w)
    gw = ag.transpose(ag.transpose(x) @ d)
    return ag.function([x, w, d], [y, gw], backend="llvm")


def _runs(f, arrays):
    """The outputs with OpenBLAS on one thread, then on its default count."""
    kernel = f.runner.kernel
    dims = kernel.check_args(arrays)
    for threads in (1, None):
        blas_threads.set(threads)
        try:
            yield kernel.run(arrays, dims)
        finally:
            blas_threads.set(None)


def _check(f, dtype, M, K, N, seed=0):
    """Both outputs on new data for each OpenBLAS thread count (so that a path that
    left a temporary unwritten cannot pass on the last call's values)."""
    kernel = f.runner.kernel
    rng = np.random.default_rng(seed)
    for threads in (None, 1, None):
        X = rng.standard_normal((M, K)).astype(dtype)
        W = rng.standard_normal((N, K)).astype(dtype)
        D = rng.standard_normal((M, N)).astype(dtype)
        blas_threads.set(threads)
        try:
            y, gw = kernel.run([X, W, D], kernel.check_args([X, W, D]))
        finally:
            blas_threads.set(None)
        _close(y, X, W.T)
        _close(gw, D.T, X)


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_copies_fold_into_their_products(dtype):
    """The staged Wᵀ and the transposed gradient become part of their products: no
    copy statement is left in the program, and the values are NumPy's whether the
    tiles (a few rows) or OpenBLAS (M·N·K beyond TOP_TILES_MAX_WORK) run them."""
    K, N = 64, 4 * vecmath.lanes(dtype) * 2
    f = _layer(dtype, K, N)
    body = f.runner.kernel.prog.body
    products = [s for s in body if isinstance(s, MatMul)]
    assert len(products) == 2
    staged = [s for s in products if s.stage is not None]
    unstaged = [s for s in products if s.unstage is not None]
    assert len(staged) == 1 and len(unstaged) == 1
    assert not any(isinstance(s, Map) for s in body), "a copy statement was left over"
    rows_for_library = codegen.TOP_TILES_MAX_WORK // (K * N) + 1
    for M in (4, 7, 33, rows_for_library, 3 * rows_for_library + 5):
        _check(f, dtype, M, K, N, seed=M)


@pytest.mark.parametrize("dtype", DTYPES)
def test_switched_off_the_copies_stay_statements(dtype, monkeypatch):
    """copies.FOLD = False (in the cache key): the copies are statements of their own,
    as before the pass, with the same values."""
    monkeypatch.setattr(copies, "FOLD", False)
    K, N = 64, 4 * vecmath.lanes(dtype) * 2
    f = _layer(dtype, K, N)
    body = f.runner.kernel.prog.body
    assert all(s.stage is None and s.unstage is None for s in body if isinstance(s, MatMul))
    assert sum(isinstance(s, Map) for s in body) == 2
    for M in (5, codegen.TOP_TILES_MAX_WORK // (K * N) + 1):
        _check(f, dtype, M, K, N)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_product_read_twice_keeps_its_copy(dtype):
    """The product's result is also read as it is: its transposed copy is not folded
    (the library would not write the result the other reader needs)."""
    K, N = 32, 2 * vecmath.lanes(dtype) * 2
    x = ag.placeholder("x", ("M", K), dtype)
    d = ag.placeholder("d", ("M", N), dtype)
    p = ag.transpose(x) @ d
    f = ag.function([x, d], [ag.transpose(p), ag.tanh(p)], backend="llvm")
    assert all(s.unstage is None for s in walk(f.runner.kernel.prog.body)
               if isinstance(s, MatMul))
    rng = np.random.default_rng(1)
    for M in (6, 3000):
        X = rng.standard_normal((M, K)).astype(dtype)
        D = rng.standard_normal((M, N)).astype(dtype)
        for gt, th in _runs(f, [X, D]):
            _close(gt, D.T, X)
            _close(th, X.T, D, np.tanh)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_weight_read_by_two_products_is_staged_once_or_not_at_all(dtype):
    """Two products read the same transposed weight: whatever the lowering shares, a
    copy read by more than one product stays a statement of its own; values right."""
    K, N = 16, 2 * vecmath.lanes(dtype) * 2
    x = ag.placeholder("x", ("M", K), dtype)
    z = ag.placeholder("z", ("M", K), dtype)
    w = ag.placeholder("w", (N, K), dtype)
    f = ag.function([x, z, w], [x @ ag.transpose(w), ag.tanh(z @ ag.transpose(w))],
                    backend="llvm")
    body = f.runner.kernel.prog.body
    for s in body:
        if isinstance(s, MatMul) and s.stage is not None:
            assert not any(t is not s and any(r.buf is s.b.buf for r in t.refs())
                           for t in walk(body))
    rng = np.random.default_rng(2)
    W = rng.standard_normal((N, K)).astype(dtype)
    for M in (5, 5000):
        X = rng.standard_normal((M, K)).astype(dtype)
        Z = rng.standard_normal((M, K)).astype(dtype)
        a, b = f(X, Z, W)
        _close(a, X, W.T)
        _close(b, Z, W.T, np.tanh)


@given(M=st.integers(1, 400), k=st.integers(1, 6), n=st.integers(1, 4),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 16))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_folded_products_match_numpy(M, k, n, dtype, seed):
    """Any rows (either side of the tiles' limit), widths K and N (N a multiple of two
    vectors, so the tiles apply): both outputs NumPy's."""
    K, N = 16 * k, 2 * vecmath.lanes(dtype) * n
    _check(_layer_cached(dtype, K, N), dtype, M, K, N, seed)


_LAYERS: dict = {}


def _layer_cached(dtype, K, N):
    key = (dtype, K, N)
    if key not in _LAYERS:
        _LAYERS[key] = _layer(dtype, K, N)
    return _LAYERS[key]


def test_the_training_step_of_a_wide_input_has_no_copy_left():
    """The Elman step of the benchmark at D = 1024, H = 64 (where the copies took 12%
    of a float64 step): both transposed weights staged, both weight gradients
    unstaged, and the step's loss and gradients those of the interpreter."""
    from rnn.workload import training_step
    B, T, D, H = 3, 4, 1024, 64
    model, data, outputs = training_step("elman", D, H, "float64")
    params = list(model.nodes().values())
    f = ag.function(data + params, outputs, backend="llvm")
    ref = ag.function(data + params, outputs)
    body = f.runner.kernel.prog.body
    assert sum(s.stage is not None for s in body if isinstance(s, MatMul)) == 2
    assert sum(s.unstage is not None for s in body if isinstance(s, MatMul)) >= 2
    rng = np.random.default_rng(3)
    for b in (B, 40):
        x = rng.standard_normal((T, b, D))
        y = rng.standard_normal((T, b, D))
        values = list(model.state_dict().values())
        for got, want in zip(f(x, y, *values), ref(x, y, *values)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

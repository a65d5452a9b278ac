"""The product kernels shared by every kernel (`compiler/microkernels.py`): rows, dots
and panels, called directly through ctypes on strided NumPy views, and through
compiled graphs, against NumPy's products."""
import ctypes
import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
from compiler import jit, microkernels, vecmath
from compiler.expr import Expr

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from(["float32", "float64"])


@pytest.fixture(scope="module")
def library():
    """Addresses of the library's functions, from an engine that loaded its object."""
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), jit._new_target_machine())
    for unit in microkernels.units((k, d) for k in microkernels.SIGNATURES
                                   for d in microkernels.DTYPES):
        engine.add_object_file(llvm.ObjectFileRef.from_data(jit.library_object(*unit)))
    engine.finalize_object()
    fns = {}
    for kind, args in microkernels.SIGNATURES.items():
        ty = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p if a[0].isupper() else ctypes.c_int64
                                      for a in args])
        for dtype in microkernels.DTYPES:
            addr = engine.get_function_address(microkernels.symbol(kind, dtype))
            assert addr, (kind, dtype)
            fns[kind, dtype] = ty(addr)
    yield fns
    del engine


def _ptr(a):
    return a.__array_interface__["data"][0]


def _strides(a):
    return [s // a.itemsize for s in a.strides]


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)


def _operand(rng, shape, dtype, transposed):
    """A [rows, cols] operand, stored transposed (a column-major view) or not."""
    if transposed:
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal(shape).astype(dtype)


@given(M=st.integers(0, 9), N=st.integers(0, 150), K=st.integers(0, 70), dtype=DTYPES,
       a_t=st.booleans(), seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_rows(library, M, N, K, dtype, a_t, seed):
    """Every block width (full, 4, 2, 1 vectors, scalar columns); A in either layout;
    C with a row stride wider than N (a column block of a bigger matrix)."""
    rng = np.random.default_rng(seed)
    A = _operand(rng, (M, K), dtype, a_t)
    B = rng.standard_normal((K, N)).astype(dtype)
    np.testing.assert_allclose(_rows(library, A, B), A @ B, **_tol(dtype))


def _rows(library, A, B, kind="rows"):
    """`rows` (or `rows_stream`) into a column block of a wider matrix; checks nothing
    else is written."""
    (M, K), N = A.shape, B.shape[1]
    big = np.full((M, N + 3), 7.0, A.dtype)
    C = big[:, 1:N + 1]
    library[kind, A.dtype.name](M, N, K, _ptr(A), *_strides(A), _ptr(B),
                                  _strides(B)[0], _ptr(C), _strides(C)[0])
    assert (big[:, 0] == 7).all() and (big[:, N + 1:] == 7).all()   # nothing else written
    return C


@given(M=st.integers(0, 8), N=st.integers(1, 1200), dtype=DTYPES, a_t=st.booleans(),
       odd_k=st.booleans(), seed=st.integers(0, 2 ** 16))
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_rows_streaming_a_large_b(library, M, N, dtype, a_t, odd_k, seed):
    """B of ROWS_STREAM_BYTES or more: `rows_stream` (groups of 3, 2 and 1 rows; column
    blocks, full and partial; vector and scalar columns; an odd K's last row)."""
    item = np.dtype(dtype).itemsize
    K = -(-microkernels.ROWS_STREAM_BYTES // (N * item)) + odd_k   # at the threshold
    assert K * N * item >= microkernels.ROWS_STREAM_BYTES
    rng = np.random.default_rng(seed)
    A = _operand(rng, (M, K), dtype, a_t)
    B = rng.standard_normal((K, N)).astype(dtype)
    want = A.astype(np.float64) @ B.astype(np.float64)
    got = _rows(library, A, B, "rows_stream")
    if dtype == "float64":
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-11)
    else:
        # a float32 sum of K ~ 2**18 / N terms: rounding errors add up like a random
        # walk, ~eps·sqrt(K)·sqrt(Σ (a·b)²) (a result near 0 after cancellation can be
        # off by 2e-3 with every step right); a wrong or missing term is off by ~|a·b|
        terms = np.sqrt(A.astype(np.float64) ** 2 @ B.astype(np.float64) ** 2)
        bound = 1e-3 + 2 * np.finfo(np.float32).eps * np.sqrt(K) * terms
        assert (np.abs(got - want) <= bound + 1e-4 * np.abs(want)).all()


@pytest.mark.parametrize("dims", [(3, 1024), (3, "H")])
def test_products_with_a_large_b_call_rows_stream(tmp_path, monkeypatch, dims):
    """A B of ROWS_STREAM_BYTES or more goes to `rows_stream`: chosen when the graph is
    compiled for fixed sizes, at run time for symbolic ones (both are then called for
    the sizes they are for); a kernel without such a product does not load it."""
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path))
    rows, H = dims
    a = ag.placeholder("a", (rows, 512), "float32")
    w = ag.placeholder("w", (512, H), "float32")
    f = ag.function([a, w], [a @ w], backend="llvm")
    text = f.runner.kernel.ir_text
    assert ('ag_rows_stream_float32' in text) and (('ag_rows_float32' in text) == (H == "H"))
    rng = np.random.default_rng(0)
    for n in ([1024] if H == 1024 else [8, 1024]):     # 16 KB and 2 MB of W
        A = rng.standard_normal((rows, 512)).astype(np.float32)
        W = rng.standard_normal((512, n)).astype(np.float32)
        np.testing.assert_allclose(f(A, W)[0], A @ W, rtol=1e-4, atol=1e-4)
    calls = microkernels.called_by(f.runner.kernel.object_code)
    assert ("rows_stream", "float32") in calls
    assert (("rows", "float32") in calls) == (H == "H")
    v = ag.placeholder("v", (512, 8), "float32")          # 16 KB: never streamed
    small = ag.function([a, v], [a @ v], backend="llvm")
    assert microkernels.called_by(small.runner.kernel.object_code) == [("rows", "float32")]


@given(M=st.integers(0, 5), N=st.integers(0, 40), K=st.integers(0, 70), dtype=DTYPES,
       c_t=st.booleans(), seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_dots(library, M, N, K, dtype, c_t, seed):
    """Column groups of 8, 4, 2, 1; k past the last full vector; C either layout."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype)
    C = np.zeros((N, M), dtype).T if c_t else np.zeros((M, N), dtype)
    library["dots", dtype](M, N, K, _ptr(A), _strides(A)[0], _ptr(W), _strides(W)[0],
                           _ptr(C), *_strides(C))
    np.testing.assert_allclose(C, A @ W.T, **_tol(dtype))


@given(M=st.integers(0, 30), panels=st.integers(1, 3), K=st.sampled_from([1, 5, 256, 300, 520]),
       dtype=DTYPES, a_t=st.booleans(), seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_panels(library, M, panels, K, dtype, a_t, seed):
    """Every row tile (the tall one, 4, 2, 1) and k chunk (one, several, a remainder)."""
    nr = 2 * vecmath.lanes(dtype)
    N = panels * nr
    rng = np.random.default_rng(seed)
    A = _operand(rng, (M, K), dtype, a_t)
    B = rng.standard_normal((K, N)).astype(dtype)
    P = np.ascontiguousarray(B.reshape(K, panels, nr).transpose(1, 0, 2))
    C = np.full((M, N), np.nan, dtype)
    library["panels", dtype](M, panels, K, _ptr(A), *_strides(A), _ptr(P), K * nr, nr,
                             _ptr(C), _strides(C)[0])
    np.testing.assert_allclose(C, A @ B, **_tol(dtype))
    # the same tiles reading B where it lies (rows contiguous, a wider row stride)
    wide = np.zeros((K, N + 5), dtype)
    wide[:, 2:N + 2] = B
    C2 = np.full((M, N), np.nan, dtype)
    library["panels", dtype](M, panels, K, _ptr(A), *_strides(A), _ptr(wide[:, 2:]), nr,
                             N + 5, _ptr(C2), _strides(C2)[0])
    np.testing.assert_allclose(C2, A @ B, **_tol(dtype))


@given(M=st.integers(1, 6), N=st.integers(1, 70), K=st.integers(1, 40), dtype=DTYPES,
       seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_compiled_products_with_few_rows(M, N, K, dtype, seed):
    """a·Wᵀ (dots up to 3 rows, the library above) and a·W (rows) in a compiled graph."""
    a = ag.placeholder("a", (M, K), dtype)
    w = ag.placeholder("w", (N, K), dtype)
    w2 = ag.placeholder("w2", (K, N), dtype)
    f = ag.function([a, w, w2], [a @ ag.transpose(w), a @ w2], backend="llvm")
    rng = np.random.default_rng(seed)
    A, W, W2 = (rng.standard_normal(s).astype(dtype) for s in ((M, K), (N, K), (K, N)))
    got = f(A, W, W2)
    np.testing.assert_allclose(got[0], A @ W.T, **_tol(dtype))
    np.testing.assert_allclose(got[1], A @ W2, **_tol(dtype))


def test_kernels_call_the_library_and_define_no_product_loops():
    """A B = 1 LSTM step: both products are calls of the dots kernel, whose code is in
    the library, not in the kernel."""
    import rnn
    c = rnn.CELLS["lstm"](16, 32, dtype="float64").init(0)
    x = ag.placeholder("x", (1, 16), "float64")
    s = tuple(ag.placeholder(f"s{i}", (1, 32), "float64") for i in range(2))
    new_state, out = c.step(s, x)
    f = ag.function([x, *s, *c.nodes().values()], [out, *new_state], backend="llvm")
    text = f.runner.kernel.ir_text
    assert len(re.findall(r'call void @"?ag_dots_float64"?\(', text)) == 2
    assert re.search(r'declare void @"?ag_dots_float64"?\(', text)
    assert not re.search(r"define .*ag_(dots|rows|panels)", text)


def test_the_library_is_cached_on_disk(tmp_path, monkeypatch):
    """Each product kernel is built into an empty library directory the first time it
    is asked for, then loaded from it by the next process (here: with the in-process
    copies dropped) without being built again — with a new kernel cache too."""
    monkeypatch.setenv("AUTOGRAPH_LIBRARY_DIR", str(tmp_path / "library"))
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.setattr(jit, "_library", {})
    monkeypatch.setattr(jit, "library_seconds", 0.0)
    built = jit.library_object("dots", "float64")
    assert jit.library_seconds > 0
    assert len(list((tmp_path / "library").glob(jit.LIBRARY_PREFIX + "*.o"))) == 1
    assert not list(jit.cache_dir().glob("*.o"))         # nothing in the kernel cache
    key = jit.library_key("dots", "float64")
    assert jit.cache_load(key, jit.LIBRARY_PREFIX, jit.library_dir()) == built
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path / "other-kernels"))
    monkeypatch.setattr(jit, "_library", {})
    monkeypatch.setattr(jit, "library_seconds", 0.0)
    assert jit.library_object("dots", "float64") == built and jit.library_seconds == 0.0
    assert jit.library_object("dots", "float64", rebuild=True) == built
    assert jit.library_seconds > 0
    with pytest.raises(ValueError, match="no product kernel 'gemm'"):
        jit.library_object("gemm", "float64")


def test_a_kernel_loads_the_product_kernels_it_calls(tmp_path, monkeypatch):
    """`par_dots` calls `dots` and `job_dots`: a kernel that calls it loads all three,
    callees first; one without products loads none."""
    assert microkernels.units([("par_dots", "float32"), ("dots", "float32")]) == [
        ("dots", "float32"), ("job_dots", "float32"), ("par_dots", "float32")]
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path))
    x = ag.placeholder("x", (4,), "float64")
    f = ag.function([x], [ag.exp(x)], backend="llvm")
    assert microkernels.called_by(f.runner.kernel.object_code) == []
    np.testing.assert_allclose(f(np.arange(4.0))[0], np.exp(np.arange(4.0)), rtol=1e-15)


def test_the_library_directory_falls_back_to_the_kernel_cache(tmp_path, monkeypatch, caplog):
    """A library directory that cannot be made (a file is in the way) is logged, and the
    product kernels are kept in the kernel cache instead."""
    (tmp_path / "blocked").write_text("not a directory")
    monkeypatch.setenv("AUTOGRAPH_LIBRARY_DIR", str(tmp_path / "blocked" / "library"))
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.setattr(jit, "_library", {})
    with caplog.at_level("WARNING", logger="autograph.compiler"):
        jit.library_object("dots", "float32")
    assert "unusable" in caplog.text and "blocked" in caplog.text
    assert len(list((tmp_path / "kernels").glob(jit.LIBRARY_PREFIX + "*.o"))) == 1


def test_the_library_command_builds_every_product_kernel(tmp_path, monkeypatch, capsys):
    """`autograph library` builds each kind in each dtype once; run again, it finds them
    stored; `--rebuild` builds them again."""
    from autograph.cli import main
    monkeypatch.setenv("AUTOGRAPH_LIBRARY_DIR", str(tmp_path))
    monkeypatch.setattr(microkernels, "DTYPES", ("float32",))    # one dtype: quicker
    monkeypatch.setattr(jit, "_library", {})
    assert main(["library"]) == 0
    out = capsys.readouterr().out
    kinds = len(microkernels.SIGNATURES)
    assert f"{kinds} product kernels in {tmp_path}: built in" in out
    assert len(list(tmp_path.glob(jit.LIBRARY_PREFIX + "*.o"))) == kinds
    monkeypatch.setattr(jit, "_library", {})
    assert main(["library"]) == 0
    assert "all stored already" in capsys.readouterr().out
    assert main(["library", "--rebuild"]) == 0
    assert "built in" in capsys.readouterr().out


def test_a_damaged_library_entry_is_rebuilt(tmp_path, monkeypatch, caplog):
    """A corrupt product-kernel file is logged, ignored and replaced; kernels compiled
    afterwards run."""
    monkeypatch.setenv("AUTOGRAPH_LIBRARY_DIR", str(tmp_path))
    monkeypatch.setattr(jit, "_library", {})
    good = jit.library_object("dots", "float64")
    (entry,) = tmp_path.glob(jit.LIBRARY_PREFIX + "*.o")
    entry.write_bytes(entry.read_bytes()[:100])
    monkeypatch.setattr(jit, "_library", {})
    with caplog.at_level("WARNING", logger="autograph.compiler"):
        assert jit.library_object("dots", "float64") == good
    assert "corrupt or foreign" in caplog.text
    assert jit.cache_load(jit.library_key("dots", "float64"), jit.LIBRARY_PREFIX,
                          tmp_path) == good
    a = ag.placeholder("a", (1, 8), "float64")
    w = ag.placeholder("w", (5, 8), "float64")
    A, W = np.ones((1, 8)), np.arange(40.0).reshape(5, 8)
    got = ag.function([a, w], [a @ ag.transpose(w)], backend="llvm")(A, W)[0]
    np.testing.assert_allclose(got, A @ W.T, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_top_level_products_in_tiles_alone_or_in_shards(dtype):
    """Products with B's rows contiguous run in the tiles up to TOP_TILES_MAX_WORK
    multiply-adds, and up to TILES_IN_SHARDS when OpenBLAS is on one thread (as in a
    sharded call); beyond, OpenBLAS. Each case against NumPy."""
    from compiler import codegen
    nr = 2 * vecmath.lanes(dtype)
    M, K, N = "M", 100, 8 * nr
    a = ag.placeholder("a", (M, K), dtype)
    w = ag.placeholder("w", (K, N), dtype)
    kernel = ag.function([a, w], [a @ w], backend="llvm").runner.kernel
    assert re.search(r'call void @"?ag_panels_' + dtype, kernel.ir_text)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((K, N)).astype(dtype)
    sizes = [8, codegen.TOP_TILES_MAX_WORK // (K * N) + 7,       # tiles either way
             codegen.TILES_IN_SHARDS // (K * N) - 3]              # tiles only on one thread
    for rows in sizes:
        A = rng.standard_normal((rows, K)).astype(dtype)
        for got in _on_blas_threads(kernel, [A, W], {"M": rows}):
            np.testing.assert_allclose(got, A @ W, **_tol(dtype))


def _on_blas_threads(kernel, arrays, dims):
    """The kernel's first output with OpenBLAS on one thread (as in a sharded call),
    then on its default count."""
    from compiler.shard import blas_threads
    for threads in (1, None):
        blas_threads.set(threads)
        try:
            yield kernel.run(arrays, dims)[0]
        finally:
            blas_threads.set(None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_thin_weight_gradients_in_the_tiles(dtype):
    """δᵀ·X over a short k (T ≤ THIN_MAX_K) with an output of up to THIN_MAX_OUT
    elements runs in the tiles whatever its work; a longer k goes to OpenBLAS as before.
    Each case against NumPy, with OpenBLAS on one thread and on its default."""
    from compiler import codegen
    d = ag.placeholder("d", ("T", 512), dtype)
    x = ag.placeholder("x", ("T", 1024), dtype)
    kernel = ag.function([d, x], [ag.transpose(d) @ x], backend="llvm").runner.kernel
    assert re.search(r'call void @"?ag_panels_' + dtype, kernel.ir_text)
    assert 512 * 1024 <= codegen.THIN_MAX_OUT and 512 * 1024 * codegen.THIN_MAX_K > (
        codegen.TOP_TILES_MAX_WORK)
    rng = np.random.default_rng(0)
    for T in (1, 8, codegen.THIN_MAX_K, codegen.THIN_MAX_K + 1, 40):
        D = rng.standard_normal((T, 512)).astype(dtype)
        X = rng.standard_normal((T, 1024)).astype(dtype)
        for got in _on_blas_threads(kernel, [D, X], {"T": T}):
            np.testing.assert_allclose(got, D.T @ X, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_transposed_weights_outside_loops_are_copied_for_the_tiles(dtype):
    """x·Wᵀ outside any loop, W small and static, its width a multiple of two vectors:
    Wᵀ is copied row-major and the product reads the copy (so the tiles, not a
    library call, run it when it is small) — the copy made on the tiles' path only
    (`MatMul.stage`, see compiler/copies.py); the values are NumPy's for any rows."""
    from compiler import lower
    from compiler.loopir import Map, MatMul
    nr = 2 * vecmath.lanes(dtype)
    K, N = 10, 2 * nr
    x = ag.placeholder("x", ("M", K), dtype)
    w = ag.placeholder("w", (N, K), dtype)
    f = ag.function([x, w], [ag.tanh(x @ ag.transpose(w))], backend="llvm")
    body = f.runner.kernel.prog.body
    (mm,) = [s for s in body if isinstance(s, MatMul)]
    assert mm.b.buf.kind == "arena" and mm.b.strides[-1] == Expr.of(1)
    assert isinstance(mm.stage, Map) and mm.stage.out.buf is mm.b.buf
    assert not any(isinstance(s, Map) and s.out.buf is mm.b.buf for s in body)
    assert lower.PACK_FOR_TILES >= K * N
    rng = np.random.default_rng(0)
    W = rng.standard_normal((N, K)).astype(dtype)
    for rows in (1, 5, 300):
        X = rng.standard_normal((rows, K)).astype(dtype)
        np.testing.assert_allclose(f(X, W)[0], np.tanh(X @ W.T), **_tol(dtype))

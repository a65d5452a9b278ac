"""ag.function: calling conventions, input checking and its errors, outputs, and the
backend registry."""
import numpy as np
import pytest

import autograph as ag


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture
def affine():
    x = ag.placeholder("x", ("B", 3))
    W = ag.placeholder("W", (3, 2))
    b = ag.placeholder("b", (2,))
    return x, W, b, x @ W + b


def affine_values(B=4, seed=0):
    r = rng(seed)
    return r.standard_normal((B, 3)), r.standard_normal((3, 2)), r.standard_normal(2)


# ----------------------------------------------------------------------------- calling


def test_positional_keyword_and_mixed_args(affine):
    x, W, b, y = affine
    f = ag.function([x, W, b], y)
    xv, Wv, bv = affine_values()
    want = xv @ Wv + bv
    np.testing.assert_allclose(f(xv, Wv, bv), want, rtol=1e-15)
    np.testing.assert_allclose(f(x=xv, W=Wv, b=bv), want, rtol=1e-15)
    np.testing.assert_allclose(f(b=bv, x=xv, W=Wv), want, rtol=1e-15)
    np.testing.assert_allclose(f(xv, b=bv, W=Wv), want, rtol=1e-15)


def test_single_vs_list_outputs(affine):
    x, W, b, y = affine
    vals = affine_values()
    single = ag.function([x, W, b], y)(*vals)
    assert isinstance(single, np.ndarray) and single.shape == (4, 2)
    one_list = ag.function([x, W, b], [y])(*vals)
    assert isinstance(one_list, list) and len(one_list) == 1
    np.testing.assert_array_equal(one_list[0], single)
    several = ag.function([x, W, b], [y, ag.sum(y), y * 2.0])(*vals)
    assert isinstance(several, list) and len(several) == 3
    np.testing.assert_allclose(several[1], single.sum(), rtol=1e-14)
    np.testing.assert_allclose(several[2], 2 * single, rtol=1e-15)
    # a tuple of outputs also gives a list
    assert isinstance(ag.function([x, W, b], (y, y))(*vals), list)


def test_single_placeholder_as_inputs():
    x = ag.placeholder("x", (2,))
    f = ag.function(x, x * 3.0)
    np.testing.assert_allclose(f(np.array([1.0, 2.0])), [3.0, 6.0])


def test_no_inputs():
    f = ag.function([], ag.ones((2, 2)) * 4.0)
    np.testing.assert_array_equal(f(), np.full((2, 2), 4.0))


def test_results_are_numpy_arrays(affine):
    x, W, b, y = affine
    outs = ag.function([x, W, b], [y, ag.sum(y), y[0, 1], y.T, x])(*affine_values())
    for o in outs:
        assert type(o) is np.ndarray
        assert o.dtype == np.float64
    assert outs[1].shape == () and outs[2].shape == ()
    assert outs[3].shape == (2, 4)


def test_lists_accepted_as_inputs():
    x = ag.placeholder("x", (2, 2))
    i = ag.placeholder("i", (3,), "int64")
    f = ag.function([x, i], [x * 2.0, i + 1])
    a, b = f([[1, 2], [3, 4]], [1, 2, 3])  # a list of ints for a float input is fine
    np.testing.assert_array_equal(a, [[2.0, 4.0], [6.0, 8.0]])
    assert a.dtype == np.float64
    np.testing.assert_array_equal(b, [2, 3, 4])
    assert b.dtype == np.int64
    a, _ = f([[1.5, 2], [3, 4]], (0, 0, 0))
    np.testing.assert_array_equal(a, [[3.0, 4.0], [6.0, 8.0]])
    # Python scalars for scalar inputs
    s = ag.placeholder("s", ())
    assert ag.function([s], s * 2.0)(1.5) == 3.0


def test_ragged_list_raises_input_error():
    x = ag.placeholder("x", (2, 2))
    with pytest.raises(ag.InputError, match="'x'"):
        ag.function([x], x)([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32])
def test_int_arrays_become_int64(dtype):
    i = ag.placeholder("i", ("N",), "int64")
    seen = ag.function([i], i * 2)(np.array([1, 2, 3], dtype=dtype))
    assert seen.dtype == np.int64
    np.testing.assert_array_equal(seen, [2, 4, 6])


def test_uint64_is_not_silently_narrowed():
    i = ag.placeholder("i", (2,), "int64")
    with pytest.raises(ag.InputError, match="'i'"):
        ag.function([i], i)(np.array([1, 2], dtype=np.uint64))


def test_float32_graph():
    x = ag.placeholder("x32", (3,), "float32")
    f = ag.function([x], x * 2.0)
    out = f(np.ones(3, np.float32))
    assert out.dtype == np.float32
    # a float64 array for a float32 input is refused, naming the input
    with pytest.raises(ag.InputError, match="'x32'.*float32.*float64"):
        f(np.ones(3))


def test_float_array_for_int_input_and_int_array_for_float_input_raise():
    i = ag.placeholder("idx", (3,), "int64")
    x = ag.placeholder("xf", (3,))
    with pytest.raises(ag.InputError, match="'idx'"):
        ag.function([i], i)(np.ones(3))
    with pytest.raises(ag.InputError, match="'xf'.*int64"):
        ag.function([x], x)(np.arange(3))  # an int *array* is not silently converted
    m = ag.placeholder("m", (3,), "bool")
    with pytest.raises(ag.InputError, match="'m'"):
        ag.function([m], m)(np.ones(3))


def test_wrong_shape_names_input_and_axis(affine):
    x, W, b, y = affine
    f = ag.function([x, W, b], y)
    xv, Wv, bv = affine_values()
    with pytest.raises(ag.InputError, match=r"'W'.*axis 1") as e:
        f(xv, np.zeros((3, 5)), bv)
    assert "(3, 5)" in str(e.value)
    with pytest.raises(ag.InputError, match=r"'W'.*axis 0"):
        f(xv, np.zeros((4, 2)), bv)
    with pytest.raises(ag.InputError, match=r"'b'.*1 dims"):
        f(xv, Wv, np.zeros((1, 2)))
    with pytest.raises(ag.InputError, match=r"'x'.*2 dims"):
        f(np.zeros(3), Wv, bv)
    # InputError is also a ValueError
    with pytest.raises(ValueError):
        f(xv, Wv, np.zeros(3))


def test_symbolic_dim_conflict_raises():
    a = ag.placeholder("a", ("B", 2))
    c = ag.placeholder("c", ("B",))
    f = ag.function([a, c], a * ag.expand_dims(c, 1))
    out = f(np.ones((3, 2)), np.arange(3.0))
    np.testing.assert_array_equal(out[:, 0], [0.0, 1.0, 2.0])
    with pytest.raises(ag.InputError, match=r"'c'.*B=4.*'a'.*B=3"):
        f(np.ones((3, 2)), np.zeros(4))
    # the same dim twice in one input
    sq = ag.placeholder("sq", ("N", "N"))
    g = ag.function([sq], sq.T + sq)
    g(np.eye(3))
    with pytest.raises(ag.InputError, match="N"):
        g(np.zeros((2, 3)))


def test_symbolic_dims_rebind_between_calls():
    x = ag.placeholder("x", ("T", "B"))
    f = ag.function([x], ag.sum(x, 0))
    for shape in [(1, 1), (3, 2), (2, 5), (0, 3)]:
        v = rng(1).standard_normal(shape)
        np.testing.assert_allclose(f(v), v.sum(0), atol=1e-14)


def test_missing_extra_and_duplicate_args(affine):
    x, W, b, y = affine
    f = ag.function([x, W, b], y)
    xv, Wv, bv = affine_values()
    with pytest.raises(ag.InputError, match=r"missing.*'b'"):
        f(xv, Wv)
    with pytest.raises(ag.InputError, match=r"missing.*'x'.*'W'.*'b'"):
        f()
    with pytest.raises(ag.InputError, match="at most 3"):
        f(xv, Wv, bv, bv)
    with pytest.raises(ag.InputError, match=r"unknown input 'bias'.*x, W, b"):
        f(xv, Wv, bias=bv)
    with pytest.raises(ag.InputError, match=r"'W' given twice"):
        f(xv, Wv, bv, W=Wv)
    # all of these are GraphErrors (and ValueErrors), catchable in one place
    with pytest.raises(ag.GraphError):
        f(xv)


def test_graph_value_as_argument_raises(affine):
    x, W, b, y = affine
    f = ag.function([x, W, b], y)
    xv, Wv, bv = affine_values()
    with pytest.raises(ag.InputError, match="'b'.*graph value"):
        f(xv, Wv, b)


def test_function_graph_errors():
    x = ag.placeholder("x", (2,))
    z = ag.placeholder("z", (2,))
    with pytest.raises(ag.GraphError, match="'z'"):
        ag.function([x], x + z)  # z is not an input
    with pytest.raises(ag.GraphError, match="placeholder"):
        ag.function([x * 2.0], x)  # inputs must be placeholders
    with pytest.raises(ag.GraphError, match="'x'"):
        ag.function([x, ag.placeholder("x", (2,))], x)  # two inputs named x
    with pytest.raises(ag.GraphError):
        ag.function([x], [x, np.ones(2)])  # outputs must be graph values


def test_unused_input_is_still_required_and_checked():
    x = ag.placeholder("x", (2,))
    unused = ag.placeholder("unused", (3,))
    f = ag.function([x, unused], x + 1.0)
    np.testing.assert_array_equal(f(np.zeros(2), np.zeros(3)), [1.0, 1.0])
    with pytest.raises(ag.InputError, match="unused"):
        f(np.zeros(2))
    with pytest.raises(ag.InputError, match="unused"):
        f(np.zeros(2), np.zeros(4))


def test_runtime_errors_name_the_node():
    table = ag.placeholder("table", (4, 2))
    idx = ag.placeholder("idx", ("N",), "int64")
    f = ag.function([table, idx], ag.take(table, idx, name="rows"))
    with pytest.raises(ag.InputError, match=r"index 7.*rows"):
        f(np.zeros((4, 2)), np.array([0, 7]))


# ----------------------------------------------------------------------------- outputs are owned


def test_repeat_calls_give_the_same_answer(affine):
    x, W, b, y = affine
    loss = ag.sum(ag.tanh(y) ** 2)
    f = ag.function([x, W, b], [loss] + ag.grad(loss, [W, b]))
    vals = affine_values()
    first = f(*vals)
    first_copy = [a.copy() for a in first]
    for a in first:  # mutating results must not affect later calls
        a[...] = 123.0
    second = f(*vals)
    for a, c in zip(second, first_copy):
        np.testing.assert_array_equal(a, c)
    # other inputs, then the first inputs again
    f(*affine_values(B=7, seed=3))
    for a, c in zip(f(*vals), first_copy):
        np.testing.assert_array_equal(a, c)


def test_inputs_are_not_modified(affine):
    x, W, b, y = affine
    f = ag.function([x, W, b], ag.grad(ag.sum(y * y), [x, W, b]))
    vals = affine_values()
    copies = [v.copy() for v in vals]
    f(*vals)
    for v, c in zip(vals, copies):
        np.testing.assert_array_equal(v, c)


def test_outputs_do_not_alias_inputs_or_constants():
    x = ag.placeholder("x", (3,))
    c = ag.constant([1.0, 2.0, 3.0])
    f = ag.function([x], [x, c, x.reshape((3, 1)), x[1:], x])
    a = np.zeros(3)
    outs = f(a)
    for o in outs:
        assert isinstance(o, np.ndarray)
        assert o.flags.writeable
        assert not np.shares_memory(o, a)
    assert outs[0] is not outs[4]
    outs[1][0] = 99.0  # a result is the caller's to change ...
    np.testing.assert_array_equal(f(a)[1], [1.0, 2.0, 3.0])  # ... the constant is unchanged
    outs[0][0] = 5.0
    assert a[0] == 0.0 and outs[4][0] == 0.0


# ----------------------------------------------------------------------------- backends


def test_available_backends_includes_numpy():
    names = ag.available_backends()
    assert "numpy" in names
    assert names == sorted(names)
    assert callable(ag.get_backend("numpy"))


def test_unknown_backend_is_helpful():
    x = ag.placeholder("x", (2,))
    with pytest.raises(ag.BackendError, match=r"unknown backend 'tpu'.*available.*numpy"):
        ag.function([x], x, backend="tpu")
    with pytest.raises(ag.BackendError):
        ag.get_backend("tpu")
    with pytest.raises(RuntimeError):  # BackendError is a RuntimeError too
        ag.get_backend("tpu")


def test_register_custom_backend():
    calls = []

    class Doubling:
        def __init__(self, graph):
            self.inner = ag.get_backend("numpy")(graph)

        def __call__(self, args, dims):
            calls.append(dict(dims))
            return [2 * o for o in self.inner(args, dims)]

    ag.register_backend("test-doubling", Doubling)
    try:
        assert "test-doubling" in ag.available_backends()
        x = ag.placeholder("x", ("N",))
        f = ag.function([x], x + 1.0, backend="test-doubling")
        np.testing.assert_array_equal(f(np.array([1.0, 2.0])), [4.0, 6.0])
        assert calls == [{"N": 2}]
        assert f.backend == "test-doubling"
        assert "test-doubling" in repr(f)
    finally:
        from autograph import backends
        backends._BACKENDS.pop("test-doubling", None)
    assert "test-doubling" not in ag.available_backends()


def test_function_object():
    x = ag.placeholder("x", (2,))
    y = ag.placeholder("y", (2,))
    f = ag.function([x, y], [x + y, x * y])
    assert isinstance(f, ag.Function)
    assert [n.name for n in f.graph.inputs] == ["x", "y"]
    assert len(f.graph.outputs) == 2
    assert "x" in repr(f) and "numpy" in repr(f)


def test_scan_graph_through_function_with_keywords():
    xs = ag.placeholder("xs", ("T", 2))
    h0 = ag.placeholder("h0", (2,))
    hT, ys = ag.scan(lambda h, x: (h + x, h), h0, xs)
    f = ag.function([xs, h0], [hT, ys])
    a = np.arange(6.0).reshape(3, 2)
    hT_v, ys_v = f(h0=np.ones(2), xs=a)
    np.testing.assert_array_equal(hT_v, 1 + a.sum(0))
    np.testing.assert_array_equal(ys_v, np.vstack([np.ones(2), 1 + np.cumsum(a, 0)[:-1]]))


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_repeated_calls_skip_checks_only_when_nothing_changed(backend):
    """After a checked call, arrays of the same shapes and dtypes reuse its dim binding;
    anything else is checked again (new sizes, a wrong dtype, a view, a list)."""
    x = ag.placeholder("x", ("T", 3))
    y = ag.placeholder("y", ("T", 3))
    f = ag.function([x, y], [ag.sum(x * y, axis=1)], backend=backend)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_allclose(f(a, b)[0], (a * b).sum(1))
    a2 = rng.normal(size=(4, 3))
    np.testing.assert_allclose(f(a2, b)[0], (a2 * b).sum(1))          # same shapes
    c, d = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    np.testing.assert_allclose(f(c, d)[0], (c * d).sum(1))            # new T
    view = rng.normal(size=(3, 6)).T                                   # not contiguous
    np.testing.assert_allclose(f(view, d)[0], (view * d).sum(1))
    with pytest.raises(ag.InputError, match="'y' has T=4"):
        f(c, b)
    with pytest.raises(ag.InputError, match="expects dtype float64"):
        f(c.astype(np.float32), d)
    np.testing.assert_allclose(f(c.tolist(), d)[0], (c * d).sum(1))   # lists still work


def test_compiled_calls_repeat_the_last_one_safely():
    """On the compiled backend a call with arrays of the last call's types, shapes and
    dtypes repeats it directly (`Kernel.repeat`): new values, new arrays, arrays
    changed in place, a view that must be copied, a new size and back, an error raised
    from inside the kernel, another thread — each answer against NumPy, every output
    a new array."""
    import threading
    import time
    emb = ag.placeholder("E", (10, 3))
    ids = ag.placeholder("ids", ("N",), "int64")
    w = ag.placeholder("w", (3,))
    f = ag.function([emb, ids, w], [ag.take(emb, ids) @ w, ag.sum(emb, axis=0)],
                    backend="llvm")
    rng = np.random.default_rng(0)
    E, i, v = rng.normal(size=(10, 3)), np.array([1, 4, 9, 0]), rng.normal(size=3)

    def check(E, i, v):
        got = f(E, i, v)
        np.testing.assert_allclose(got[0], E[i] @ v, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got[1], E.sum(0), rtol=1e-12, atol=1e-14)
        return got
    first = check(E, i, v)
    sharder = f.runner.sharder                 # (AUTOGRAPH_SHARD=always: shards, no repeat)

    def whole():
        return sharder is None or sharder.shards_for({"N": 4}) == 1
    deadline = time.perf_counter() + 10        # the sharder times its first calls
    while (f._last[2] is None and time.perf_counter() < deadline
           and (sharder is None or sharder.shards_for({"N": 4}) in (None, 1))):
        first = check(E, i, v)
    assert (f._last[2] is not None) == whole()  # run whole: the next call repeats this one
    second = check(E, i, v)                    # the very same arrays
    assert all(a is not b for a, b in zip(first, second))
    second[0][:] = 7.0                         # a caller's output is its own
    np.testing.assert_allclose(first[0], E[i] @ v, rtol=1e-12, atol=1e-14)
    E[2] += 1.0                                # changed in place
    check(E, i, v)
    check(rng.normal(size=(10, 3)), np.array([3, 3, 2, 8]), rng.normal(size=3))  # new arrays
    check(np.asfortranarray(E), i, v)          # same shape, not C-contiguous: copied
    check(E, np.array([5, 6]), v)              # a new N, then the old one again
    check(E, i, v)
    with pytest.raises(ag.InputError, match="out of range"):
        f(E, np.array([1, 4, 10, 0]), v)       # raised by the kernel, on a repeat
    check(E, i, v)
    errors = []

    def other():
        try:
            for _ in range(50):
                E2, v2 = rng.normal(size=(10, 3)), rng.normal(size=3)
                np.testing.assert_allclose(f(E2, i, v2)[0], E2[i] @ v2, rtol=1e-12, atol=1e-14)
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
    t = threading.Thread(target=other)
    t.start()
    for _ in range(50):
        check(E, i, v)
    t.join()
    assert not errors, errors


# ----------------------------------------------------------------------------- output reuse

def _large_product():
    """A compiled a @ w whose output (256 x 128 float64, 256 KB) is large enough to be
    taken back from an earlier call (`compiler.jit.REUSE_OUTPUT_BYTES`), and a small
    sum that never is."""
    a = ag.placeholder("a", ("B", 64))
    w = ag.placeholder("w", (64, 128))
    return ag.function([a, w], [a @ w, ag.sum(a, axis=0)], backend="llvm")


def test_large_outputs_the_caller_dropped_are_reused(monkeypatch):
    """A large output array that nothing references any more is filled again by a later
    call (its pages are mapped already); small ones are always new; every answer is
    right."""
    import weakref
    from compiler import jit
    monkeypatch.setenv("AUTOGRAPH_SHARD", "never")
    f = _large_product()
    r = np.random.default_rng(0)
    w = r.standard_normal((64, 128))
    large, small = [], []
    for k in range(6):
        a = r.standard_normal((256, 64))
        out = f(a, w)
        np.testing.assert_allclose(out[0], a @ w, rtol=1e-12)
        np.testing.assert_allclose(out[1], a.sum(0), rtol=1e-12)
        assert out[0].nbytes >= jit.REUSE_OUTPUT_BYTES > out[1].nbytes
        for seen, x in ((large, out[0]), (small, out[1])):
            if any(ref() is x for ref in seen):
                seen.append(None)                   # an array returned before
            else:
                seen.append(weakref.ref(x))
        del out, x
    assert large.count(None) >= 3 and small.count(None) == 0


def test_outputs_the_caller_holds_are_never_overwritten(monkeypatch):
    """Kept outputs, views of them, outputs passed back in as inputs, outputs held by a
    training loop's variables while it makes the next call: none of them changes."""
    monkeypatch.setenv("AUTOGRAPH_SHARD", "never")     # whole calls (shards: below)
    f = _large_product()
    r = np.random.default_rng(1)
    w = r.standard_normal((64, 128))
    batches = [r.standard_normal((256, 64)) for _ in range(8)]
    kept = f(batches[0], w)[0]                          # kept whole
    view = f(batches[1], w)[0][:10, :5]                 # only a view kept (holds its base)
    grads = None
    for a in batches[2:6]:                              # `grads = step(...)`: the last
        grads = f(a, w)                                 # call's outputs held meanwhile
        np.testing.assert_allclose(grads[0], a @ w, rtol=1e-12)
    sq = r.standard_normal((256, 64))
    back = f(sq, w)[0][:, :64].copy()
    fed = f(sq, w)[0]                                   # an output fed back as an input
    np.testing.assert_allclose(f(np.ascontiguousarray(fed[:, :64]), w)[0],
                               fed[:, :64] @ w, rtol=1e-12)
    for a in batches[6:]:
        f(a, w)
    np.testing.assert_allclose(kept, batches[0] @ w, rtol=1e-12)
    np.testing.assert_allclose(view, (batches[1] @ w)[:10, :5], rtol=1e-12)
    np.testing.assert_allclose(grads[0], batches[5] @ w, rtol=1e-12)
    np.testing.assert_allclose(fed[:, :64], back, rtol=1e-12)


def test_output_reuse_in_shards_and_threads(monkeypatch):
    """Sharded calls (each shard's outputs reused apart) and calls from two threads
    (each thread its own outputs) keep every held output intact."""
    import threading
    monkeypatch.setenv("AUTOGRAPH_SHARD", "always")
    monkeypatch.setenv("AUTOGRAPH_THREADS", "2")
    a = ag.placeholder("a", ("B", 256))
    f = ag.function([a], [ag.transpose(a) @ a], backend="llvm")    # summed over shards
    g = _large_product()
    r = np.random.default_rng(2)
    w_ = r.standard_normal((64, 128))
    errors = []

    def loop(seed):
        rr = np.random.default_rng(seed)
        try:
            held = []
            for k in range(12):
                a_ = rr.standard_normal((256, 64))
                out = g(a_, w_)
                if k % 3 == 0:
                    held.append((a_, out))
            for a_, out in held:
                np.testing.assert_allclose(out[0], a_ @ w_, rtol=1e-12)
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=loop, args=(s,)) for s in (3, 4)]
    for t in threads:
        t.start()
    held = []
    for k in range(8):
        a_ = r.standard_normal((64, 256))
        out = f(a_)[0]
        if k % 2:
            held.append((a_, out))
    for t in threads:
        t.join()
    assert not errors, errors
    assert f.runner.sharder.shards_for({"B": 64}) == 2
    for a_, out in held:
        np.testing.assert_allclose(out, a_.T @ a_, rtol=1e-11)


def test_small_outputs_reused_as_a_set_only_when_all_are_free(monkeypatch):
    """When every output is small, a whole earlier set is returned again once nothing
    else holds any of its arrays; the set a caller still holds (or one array of it,
    or a view) is not; switching between the last and the earlier set writes each
    call's results into the arrays it returns."""
    import weakref
    monkeypatch.setenv("AUTOGRAPH_SHARD", "never")
    a = ag.placeholder("a", ("B", 4))
    f = ag.function([a], [a * 2.0, ag.sum(a, axis=0), ag.tanh(a)], backend="llvm")
    r = np.random.default_rng(3)

    def check(x, out):
        np.testing.assert_allclose(out[0], x * 2.0, rtol=1e-15)
        np.testing.assert_allclose(out[1], x.sum(0), rtol=1e-14)
        np.testing.assert_allclose(out[2], np.tanh(x), rtol=1e-14)
    x = r.standard_normal((5, 4))
    refs = []
    for _ in range(4):                               # dropped each time: one set, again
        out = f(x)
        check(x, out)
        refs.append(weakref.ref(out[0]))
        del out
    assert refs[-1]() is not None and refs[-1]() is refs[-2]()
    x1, x2, x3, x4 = (r.standard_normal((5, 4)) for _ in range(4))
    r1 = f(x1)
    r2 = f(x2)                                       # r1 held: other arrays
    assert not any(p is q for p, q in zip(r1, r2))
    check(x1, r1)
    del r1
    r3 = f(x3)                                       # r2 held, r1's set free: taken back
    check(x2, r2)
    check(x3, r3)
    one = r3[1]                                      # one array of r3 kept
    view = r2[2][1:, :2]                             # a view of r2's third output
    del r2, r3
    r4 = f(x4)
    r5 = f(x1)
    check(x4, r4)
    check(x1, r5)
    np.testing.assert_allclose(one, x3.sum(0), rtol=1e-14)
    np.testing.assert_allclose(view, np.tanh(x2)[1:, :2], rtol=1e-14)
    assert all(o is not one for o in (*r4, *r5))

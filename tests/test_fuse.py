"""Loop fusion (compiler/fuse.py): what it fuses, what it must not, and that fused
kernels compute what the NumPy interpreter computes.

The view predicates are checked against brute force (the element offsets a view
touches, enumerated for concrete dims); the pass itself against the interpreter on
random elementwise programs built from the patterns fusion reasons about: values
used twice (stored), column slices and rotations (views of one buffer at other
offsets), rows rotated, and a scan whose carry a fused step reads and overwrites.
"""
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
from compiler.expr import Expr
from compiler.fuse import _disjoint, _subview, fuse
from compiler.loopir import Apply, Buffer, Fused, Load, Loop, Map, MatMul, Program, Ref
from compiler.lower import lower
from compiler.rewrite import rewrite
from rnn.workload import training_step

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- what it fuses

def _program(cell="lstm", D=4, H=8):
    model, data, outputs = training_step(cell, D, H, "float64")
    graph = ag.Graph(data + list(model.nodes().values()), outputs)
    return fuse(lower(rewrite(graph)))


def _loops(body):
    return [s for s in body if isinstance(s, Loop)]


def test_lstm_step_is_one_product_and_one_fused_loop():
    """The forward step: the carries saved for the backward pass (one fused copy),
    the product h·Wᵀ, then everything else — pre-activation, four gates, cell, output,
    stored activations, new carries — in one loop nest whose gates and cell stay in
    registers."""
    prog = _program()
    forward, backward = _loops(prog.body)
    kinds = [type(s).__name__ for s in forward.body]
    assert kinds == ["Fused", "MatMul", "Fused"], kinds
    step = forward.body[2]
    temps = [m for m in step.maps if m.out.buf.id in step.temps]
    assert len(temps) >= 6          # σ(i), σ(f), σ(o), tanh(g), c, tanh(c), h
    # the backward step fuses the four gate gradients, which write disjoint column
    # blocks of one matrix
    fused = [s for s in backward.body if isinstance(s, Fused)]
    blocks = [m for s in fused for m in s.maps if m.out.shape[-1] == Expr.of(8)
              and m.out.strides[-2] == Expr.of(32)]
    assert len(blocks) == 4


def test_register_temporaries_get_no_arena_slot():
    prog = _program()
    fused_temps = {t for s in _walk(prog.body) if isinstance(s, Fused) for t in s.temps}
    assert fused_temps
    assert not fused_temps & {b.id for b in prog.buffers}


def _walk(body):
    for s in body:
        yield s
        if isinstance(s, Loop):
            yield from _walk(s.body)


def test_no_fusion_across_a_product():
    """Maps on either side of a matrix product stay apart (the product reads what the
    first wrote and the second reads what it wrote)."""
    prog = _program("elman")
    forward = _loops(prog.body)[0]
    for a, b in zip(forward.body, forward.body[1:]):
        if isinstance(a, MatMul):
            assert not isinstance(b, MatMul)
    assert any(isinstance(s, MatMul) for s in forward.body)


# ----------------------------------------------------------------------------- the predicates

def _elements(ref: Ref, env) -> list:
    shape = [d.evaluate(env) for d in ref.shape]
    strides = [s.evaluate(env) for s in ref.strides]
    off = ref.offset.evaluate(env)
    return [off + sum(i * s for i, s in zip(idx, strides))
            for idx in itertools.product(*(range(n) for n in shape))]


_BUF = Buffer(0, "float64", Expr.of(4096))
_B = Expr.of("B")


@st.composite
def column_views(draw):
    """Two views of a row-major [B or const, P] matrix: row stride P, width w, column
    offsets a and b (sometimes plus a multiple of P·t, as a step of a loop adds)."""
    P = draw(st.sampled_from([4, 6, 8, 12, 16]))
    w = draw(st.integers(1, P))
    rows = draw(st.sampled_from([_B, Expr.of(3)]))
    t = Expr.of("t") * (P * 5) if draw(st.booleans()) else Expr.of(0)
    a, b = draw(st.integers(0, P - 1)), draw(st.integers(0, P - 1))
    shape = (rows, Expr.of(w))
    strides = (Expr.of(P), Expr.of(1))
    return Ref(_BUF, t + a, shape, strides), Ref(_BUF, t + b, shape, strides)


@given(column_views(), st.integers(1, 4), st.integers(0, 3))
@SETTINGS
def test_disjoint_is_never_wrong(views, B, t):
    x, y = views
    env = {"B": B, "t": t}
    if _disjoint(x, y):
        assert not set(_elements(x, env)) & set(_elements(y, env))


def test_disjoint_finds_the_gate_blocks():
    H, rows = 8, _B
    gates = [Ref(_BUF, Expr.of(k * H), (rows, Expr.of(H)), (Expr.of(4 * H), Expr.of(1)))
             for k in range(4)]
    assert all(_disjoint(a, b) for a, b in itertools.combinations(gates, 2))
    assert not _disjoint(gates[0], gates[0])
    shifted = Ref(_BUF, Expr.of(H // 2), gates[0].shape, gates[0].strides)
    assert not _disjoint(gates[0], shifted)


@st.composite
def sub_blocks(draw):
    """A row-major array of 2–3 axes and a view into it: per axis a start and an
    extent, the axes in any order, possibly a broadcast axis (stride 0) in front."""
    shape = [draw(st.integers(1, 5)) for _ in range(draw(st.integers(2, 3)))]
    R = [int(np.prod(shape[k + 1:])) for k in range(len(shape))]
    start = [draw(st.integers(0, n - 1)) for n in shape]
    ext = [draw(st.integers(1, n - s)) for n, s in zip(shape, start)]
    order = draw(st.permutations(range(len(shape))))     # a transposed view
    v_shape = [ext[a] for a in order]
    v_strides = [R[a] for a in order]
    if draw(st.booleans()):       # a broadcast axis in front
        v_shape.insert(0, draw(st.integers(1, 3)))
        v_strides.insert(0, 0)
    off = sum(s * r for s, r in zip(start, R))
    view = Ref(_BUF, Expr.of(off), tuple(map(Expr.of, v_shape)), tuple(map(Expr.of, v_strides)))
    return tuple(map(Expr.of, shape)), view


@given(sub_blocks())
@SETTINGS
def test_subview_maps_each_element_to_the_same_offset(case):
    shape, view = case
    found = _subview(view, shape)
    assert found is not None
    start, axes = found
    R = [int(np.prod([d.const for d in shape[k + 1:]])) for k in range(len(shape))]
    expected = _elements(view, {})
    got = []
    for idx in itertools.product(*(range(d.const) for d in view.shape)):
        j = [s.const for s in start]
        for i, a in zip(idx, axes):
            if a is not None:
                j[a] += i
        got.append(sum(x * r for x, r in zip(j, R)))
    assert got == expected


def test_subview_refuses_what_is_not_a_block():
    shape = (Expr.of(4), Expr.of(4))
    diagonal = Ref(_BUF, Expr.of(0), (Expr.of(4),), (Expr.of(5),))
    past_the_end = Ref(_BUF, Expr.of(2), (Expr.of(4), Expr.of(3)), (Expr.of(4), Expr.of(1)))
    symbolic = Ref(_BUF, Expr.of("t"), (Expr.of(2),), (Expr.of(1),))
    for v in (diagonal, past_the_end, symbolic):
        assert _subview(v, shape) is None


# ----------------------------------------------------------------------------- fused == interpreter

W = 8


def _rot_cols(v, k):
    return ag.concat([v[:, k:], v[:, :k]], axis=1)


UNARY = [ag.tanh, ag.sigmoid, lambda v: v * v, lambda v: -v, lambda v: ag.exp(ag.tanh(v))]
BINARY = [ag.add, ag.subtract, ag.multiply, lambda a, b: a * ag.tanh(b)]


@st.composite
def programs(draw):
    """A list of steps; each makes a new [B, W] value from earlier ones."""
    steps = []
    for _ in range(draw(st.integers(3, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "rot", "swap", "rows", "gate"]))
        steps.append((kind, draw(st.integers(0, 99)), draw(st.integers(0, 99)),
                      draw(st.integers(1, W - 1))))
    n_out = draw(st.integers(1, 3))
    return steps, n_out


def _build(steps, n_out, seeds, static_rows):
    vals = list(seeds)
    for kind, i, j, k in steps:
        a, b = vals[i % len(vals)], vals[j % len(vals)]
        if kind == "unary":
            v = UNARY[k % len(UNARY)](a)
        elif kind == "binary":
            v = BINARY[k % len(BINARY)](a, b)
        elif kind == "rot":
            v = _rot_cols(a, k) + b
        elif kind == "swap":          # two halves written from one value, read crossed
            v = ag.concat([ag.tanh(a[:, W // 2:]), a[:, :W // 2] * b[:, :W // 2]], axis=1)
        elif kind == "rows" and static_rows:
            v = ag.concat([a[1:], a[:1]], axis=0) * b
        else:                         # gate-like: four column blocks of a product-free sum
            q = W // 4
            z = a + b
            v = ag.concat([ag.sigmoid(z[:, g * q:(g + 1) * q]) * z[:, ((g + 1) % 4) * q:
                                                                  ((g + 1) % 4 + 1) * q]
                           for g in range(4)], axis=1)
        vals.append(v)
    return vals[-n_out:] + vals[len(seeds):len(seeds) + 1]


@given(programs(), st.booleans(), st.integers(0, 2 ** 16))
@SETTINGS
def test_fused_elementwise_programs_match_the_interpreter(prog, static_rows, seed):
    steps, n_out = prog
    rows = 3 if static_rows else "B"
    x = ag.placeholder("x", (rows, W), "float64")
    y = ag.placeholder("y", (rows, W), "float64")
    outs = _build(steps, n_out, [x, y], static_rows)
    rng = np.random.default_rng(seed)
    xv, yv = rng.standard_normal((2, 3, W))
    want = ag.function([x, y], outs)(xv, yv)
    got = ag.function([x, y], outs, backend="llvm")(xv, yv)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@given(programs(), st.integers(0, 2 ** 16))
@SETTINGS
def test_fused_scan_steps_match_the_interpreter(prog, seed):
    """The program as the step of a scan (carry and input both [B, W]), with its
    gradient: fused loops inside both the forward and the reverse loop."""
    steps, _ = prog
    x = ag.placeholder("x", ("T", "B", W), "float64")
    h0 = ag.placeholder("h0", ("B", W), "float64")

    def step(h, x_t):
        v = _build(steps, 1, [h, x_t], False)[0]
        h_new = ag.tanh(v) * 0.5 + h * 0.5       # bounded, so long runs stay finite
        return h_new, h_new
    _, hs = ag.scan(step, h0, x)
    loss = ag.sum(hs * hs)
    outs = [loss] + ag.grad(loss, [x, h0])
    rng = np.random.default_rng(seed)
    xv, hv = rng.standard_normal((5, 3, W)), rng.standard_normal((3, W))
    want = ag.function([x, h0], outs)(xv, hv)
    got = ag.function([x, h0], outs, backend="llvm")(xv, hv)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)


def test_a_map_reading_its_own_output_at_another_offset_is_not_fused():
    """y[:, 1:] written from y[:, :-1] by a later map would see new values if the two
    ran element by element; the pass keeps them apart and the result is NumPy's."""
    x = ag.placeholder("x", ("B", W), "float64")
    a = ag.tanh(x)
    b = a * 2.0
    c = ag.concat([b[:, 1:], b[:, :1]], axis=1) + a
    f = ag.function([x], [c, b], backend="llvm")
    xv = np.random.default_rng(1).standard_normal((4, W))
    want = ag.function([x], [c, b])(xv)
    for g, w in zip(f(xv), want):
        np.testing.assert_allclose(g, w, rtol=1e-14)


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_fusion_shrinks_the_arena(cell):
    from compiler.plan import plan
    model, data, outputs = training_step(cell, 4, 8, "float64")
    graph = rewrite(ag.Graph(data + list(model.nodes().values()), outputs))
    env = {"B": 4, "T": 16}
    plain = plan(lower(graph)).arena_layout(env)[0]
    fused = plan(fuse(lower(graph))).arena_layout(env)[0]
    assert fused <= plain
    if cell != "elman":     # gates and cell no longer have slots of their own
        assert fused < plain


# ----------------------------------------------------------------------------- hand-built hazards

def _buf(i, n=64, kind="arena"):
    return Buffer(i, "float64", Expr.of(n), kind, index=i if kind != "arena" else -1)


def _view(buf, off, rows=4, cols=4, row_stride=8):
    return Ref(buf, Expr.of(off), (Expr.of(rows), Expr.of(cols)),
               (Expr.of(row_stride), Expr.of(1)))


def _tanh(ref):
    return Apply("tanh", (Load(ref),), "float64")


def _fused_groups(body):
    inp, out = _buf(0, kind="input"), _buf(9, kind="output")
    bufs = [inp, out] + [b for b in {r.buf.id: r.buf for s in body for r in s.refs()}.values()
                         if b.kind == "arena"]
    prog = Program([inp], [out], [(Expr.of(64),)], bufs, list(body), [])
    fuse(prog)
    return [len(s.maps) if isinstance(s, Fused) else 1 for s in prog.body], prog


def test_a_read_of_another_element_of_a_new_value_keeps_maps_apart():
    """map 2 reads X one column to the right of where map 1 writes it: run element by
    element, it would read X before map 1 has written that element."""
    inp, out, X = _buf(0, kind="input"), _buf(9, kind="output"), _buf(1)
    body = [Map(_view(X, 0), _tanh(_view(inp, 0))),
            Map(_view(out, 0), _tanh(_view(X, 1)))]
    assert _fused_groups(body)[0] == [1, 1]


def test_a_later_write_over_what_an_earlier_map_reads_keeps_maps_apart():
    """map 1 reads X at column 1, map 2 overwrites X at column 0: fused, map 2 would
    overwrite element i+1 of map 1's input before map 1 reads it."""
    inp, out, X = _buf(0, kind="input"), _buf(9, kind="output"), _buf(1)
    body = [Map(_view(X, 0), _tanh(_view(inp, 0))),     # X ready before the pair
            Map(_view(out, 0), _tanh(_view(X, 1))),
            Map(_view(X, 0), _tanh(_view(inp, 1)))]
    groups, _ = _fused_groups(body)
    assert groups[-1] == 1 and sum(groups) == 3


def test_overlapping_writes_keep_maps_apart_and_disjoint_blocks_fuse():
    inp, out = _buf(0, kind="input"), _buf(9, kind="output")
    overlapping = [Map(_view(out, 0), _tanh(_view(inp, 0))),
                   Map(_view(out, 2), _tanh(_view(inp, 1)))]
    assert _fused_groups(overlapping)[0] == [1, 1]
    blocks = [Map(_view(out, 0), _tanh(_view(inp, 0))),
              Map(_view(out, 4), _tanh(_view(inp, 1)))]
    assert _fused_groups(blocks)[0] == [2]


def test_same_view_chains_fuse_and_private_values_become_registers():
    inp, out, X, Y = _buf(0, kind="input"), _buf(9, kind="output"), _buf(1), _buf(2)
    body = [Map(_view(X, 0), _tanh(_view(inp, 0))),
            Map(_view(Y, 0), _tanh(_view(X, 0))),
            Map(_view(out, 0), Apply("add", (Load(_view(X, 0)), Load(_view(Y, 0))),
                                     "float64"))]
    groups, prog = _fused_groups(body)
    assert groups == [3]
    assert prog.body[0].temps == {X.id, Y.id}
    assert X not in prog.buffers and Y not in prog.buffers


def test_a_value_read_after_the_group_is_stored():
    inp, out, X, Z = _buf(0, kind="input"), _buf(9, kind="output"), _buf(1), _buf(3)
    body = [Map(_view(X, 0), _tanh(_view(inp, 0))),
            Map(_view(Z, 0), _tanh(_view(X, 0))),
            MatMul(Ref.full(out, (Expr.of(4), Expr.of(4))), _view(X, 0), _view(Z, 0))]
    groups, prog = _fused_groups(body)
    assert groups == [2, 1]
    assert prog.body[0].temps == frozenset()


def test_a_carry_read_before_it_is_overwritten_is_stored():
    """Member 1 reads C, member 2 writes C at the same elements (a loop carry): C is
    needed by the next iteration, so it is stored, not kept in a register."""
    inp, out, C = _buf(0, kind="input"), _buf(9, kind="output"), _buf(1)
    body = [Map(_view(out, 0), _tanh(_view(C, 0))),
            Map(_view(C, 0), _tanh(_view(inp, 0)))]
    groups, prog = _fused_groups(body)
    assert groups == [2]
    assert prog.body[0].temps == frozenset()


def test_a_value_also_read_through_another_view_is_stored():
    """X's block at column 0 is written in the group; its block at column 4 (written
    earlier) is read: X must stay in memory."""
    inp, out, X = _buf(0, kind="input"), _buf(9, kind="output"), _buf(1)
    body = [Map(_view(X, 4), _tanh(_view(inp, 4))),
            Map(_view(out, 4), _tanh(_view(inp, 0))),
            Map(_view(X, 0), _tanh(_view(inp, 0))),
            Map(_view(out, 0), Apply("add", (Load(_view(X, 0)), Load(_view(X, 4))),
                                     "float64"))]
    groups, prog = _fused_groups(body)
    assert sum(groups) == 4
    assert all(not s.temps for s in prog.body if isinstance(s, Fused))


# ----------------------------------------------------------------------------- sums

def _sums(s):
    from compiler.loopir import Reduce
    return [m for m in s.maps if isinstance(m, Reduce)] if isinstance(s, Fused) else []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_squared_error_loss_is_one_pass(dtype):
    """The benchmark's loss over [T, B, D]: the error, the sum of its squares, its
    gradient and the readout bias's gradient (a sum over T and B, after the backward
    loop in program order) run in one loop nest, the error in registers; the step's
    values are the interpreter's."""
    from compiler import fuse as fuse_mod
    model, data, outputs = training_step("elman", 16, 8, dtype)
    params = list(model.nodes().values())
    f = ag.function(data + params, outputs, backend="llvm")
    body = f.runner.kernel.prog.body
    (loss,) = [s for s in body if len(_sums(s)) == 2]
    assert loss.shape[-1] == Expr.of(16) and len(loss.shape) == 3
    assert any(m.out.buf.id in loss.temps for m in loss.maps)
    assert fuse_mod.FUSE_SUMS
    ref = ag.function(data + params, outputs)
    rng = np.random.default_rng(0)
    tol = dict(rtol=1e-11, atol=1e-13) if dtype == "float64" else dict(rtol=2e-4, atol=1e-6)
    for T, B in ((1, 1), (5, 3), (9, 17)):
        x = rng.standard_normal((T, B, 16)).astype(dtype)
        y = rng.standard_normal((T, B, 16)).astype(dtype)
        values = list(model.state_dict().values())
        for got, want in zip(f(x, y, *values), ref(x, y, *values)):
            np.testing.assert_allclose(got, want, **tol)


def test_a_sum_read_within_the_loop_is_not_fused_with_its_reader():
    """z = x · Σx needs the finished sum: the reader cannot run in the sum's loop."""
    x = ag.placeholder("x", ("N", 8), "float64")
    s = ag.sum(x * x)
    f = ag.function([x], [x * s, s], backend="llvm")
    for st in walk_all(f.runner.kernel.prog.body):
        if _sums(st):
            reads = {r.buf.id for m in st.maps for r in m.refs()[1:]}
            assert not any(m.out.buf.id in reads for m in _sums(st))
    X = np.random.default_rng(1).standard_normal((37, 8))
    z, total = f(X)
    np.testing.assert_allclose(total, np.sum(X * X), rtol=1e-13)
    np.testing.assert_allclose(z, X * np.sum(X * X), rtol=1e-13)


def walk_all(body):
    from compiler.loopir import walk
    return list(walk(body))


@pytest.mark.parametrize("switch", [True, False])
def test_sums_switched_off_stay_statements(switch, monkeypatch):
    """FUSE_SUMS (in the kernel cache's key) off: no sum is a member of a fused loop;
    on or off, the values are NumPy's."""
    from compiler import fuse as fuse_mod
    monkeypatch.setattr(fuse_mod, "FUSE_SUMS", switch)
    x = ag.placeholder("x", ("N", 12), "float64")
    c = ag.placeholder("c", (12,), "float64")
    e = x + c
    f = ag.function([x, c], [ag.sum(e * e), ag.sum(e, axis=0), ag.tanh(e)], backend="llvm")
    fused_sums = sum(len(_sums(s)) for s in walk_all(f.runner.kernel.prog.body))
    assert (fused_sums == 2) if switch else (fused_sums == 0)
    rng = np.random.default_rng(2)
    X, C = rng.standard_normal((23, 12)), rng.standard_normal(12)
    a, b, t = f(X, C)
    np.testing.assert_allclose(a, np.sum((X + C) ** 2), rtol=1e-13)
    np.testing.assert_allclose(b, np.sum(X + C, axis=0), rtol=1e-13)
    np.testing.assert_allclose(t, np.tanh(X + C), rtol=1e-13)


@given(rows=st.integers(1, 40), cols=st.integers(1, 19), axes=st.sampled_from([None, 0, 1]),
       scale=st.floats(0.1, 3.0), seed=st.integers(0, 2 ** 16))
@SETTINGS
def test_fused_sums_match_numpy(rows, cols, axes, scale, seed):
    """An elementwise value, its square summed over some axes, the value scaled and
    summed over the others, and a reader of the finished sum: against NumPy."""
    x = ag.placeholder("x", ("R", cols), "float64")
    y = ag.placeholder("y", ("R", cols), "float64")
    e = ag.exp(x * scale) - y
    other = None if axes is None else 1 - axes
    s1 = ag.sum(e * e, axis=axes)
    g = e * (2.0 / cols)
    s2 = ag.sum(g, axis=other)
    f = ag.function([x, y], [s1, g, s2, ag.sum(s1) * 0.5], backend="llvm")
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((rows, cols)), rng.standard_normal((rows, cols))
    E = np.exp(X * scale) - Y
    want = [np.sum(E * E, axis=axes), E * (2.0 / cols), np.sum(E * (2.0 / cols), axis=other)]
    want.append(np.sum(want[0]) * 0.5)
    for got, w in zip(f(X, Y), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)

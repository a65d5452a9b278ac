"""Stacked outputs of a loop stored in place of the sequences it has read
(`compiler/inplace.py`): the same values as the interpreter, the arena it saves, and
the cases where it must not happen."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autograph as ag
from compiler import inplace, lower
from compiler.expr import Expr
from compiler.loopir import Buffer, Loop, Map, MatMul, Ref, walk
from compiler.pipeline import build

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGRAPH_CACHE_DIR", str(tmp_path / "kernels"))


def _close(ref, got, rtol):
    for r, g in zip(ref, got):
        r, g = np.asarray(r), np.asarray(g)
        assert r.shape == g.shape and r.dtype == g.dtype
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-300)
        assert float(np.max(np.abs(r - g), initial=0.0)) <= rtol * scale


def _arena(graph, dims, monkeypatch, on, history=True):
    monkeypatch.setattr(lower, "INPLACE", on)
    monkeypatch.setattr(lower, "HISTORY_IN_STACK", history)
    _, prog, _ = build(graph)
    return prog.arena_layout(dims)[0]


# ----------------------------------------------------------------------------- the pieces

def _ref(offset, shape, strides):
    buf = Buffer(0, "float64", Expr.of(1))
    return Ref(buf, Expr.of(offset), tuple(map(Expr.of, shape)), tuple(map(Expr.of, strides)))


def test_offsets_split_into_base_and_loop_stride():
    t, B = Expr.of("$t"), Expr.of("B")
    base, s = inplace.split_linear(384 + 512 * t * B, "$t")
    assert base == Expr.of(384) and s == 512 * B
    assert inplace.split_linear(t * t, "$t") is None
    assert inplace.split_linear(Expr.of(7), "$t") == (Expr.of(7), Expr.of(0))


def test_step_views_inside_their_slice():
    t, B = Expr.of("$t"), Expr.of("B")
    gate = Ref(Buffer(0, "float64", Expr.of(1)), 256 + 512 * B * t, (B, Expr.of(128)),
               (Expr.of(512), Expr.of(1)))
    assert inplace.within_slice(gate, "$t", 512 * B)
    # the next step's first row, or a column block past the row's end
    assert not inplace.within_slice(Ref(gate.buf, 512 * B * t + 512 * B, gate.shape,
                                        gate.strides), "$t", 512 * B)
    assert not inplace.within_slice(Ref(gate.buf, 400 + 512 * B * t, gate.shape,
                                        gate.strides), "$t", 512 * B)
    assert not inplace.within_slice(gate, "$t", 256 * B)          # another loop stride


def test_views_that_repeat_an_element_are_not_homes():
    assert inplace.injective(_ref(0, (4, 3), (3, 1)))
    assert inplace.injective(_ref(5, (4, 3), (1, 4)))             # transposed
    assert inplace.injective(_ref(0, (4, 3), (8, 1)))             # column block
    assert not inplace.injective(_ref(0, (4, 3), (0, 1)))         # broadcast
    assert not inplace.injective(_ref(0, (4, 3), (2, 1)))         # rows overlap
    assert not inplace.injective(_ref(0, (4, 3), (-3, 1)))


# ----------------------------------------------------------------------------- training steps

def test_arithmetic_on_stored_values_is_recomputed_not_stored(monkeypatch):
    """A GRU's 1 − z is arithmetic on its stored gate z: the backward loop computes it
    from z (rewrite.RECOMPUTED) instead of the forward loop storing a [T, B, H] stack
    of it; the gradients agree with the interpreter (1e-12)."""
    from compiler import rewrite
    from rnn.workload import training_step
    D, H, B, T = 8, 16, 3, 5
    model, data, outs = training_step("gru", D, H)
    params = list(model.nodes().values())
    graph = ag.Graph(data + params, outs)
    dims = {"T": T, "B": B}
    monkeypatch.setattr(rewrite, "RECOMPUTED", set())
    stored = _arena(graph, dims, monkeypatch, True)
    monkeypatch.setattr(rewrite, "RECOMPUTED", {"add", "sub", "mul", "neg"})
    recomputed = _arena(graph, dims, monkeypatch, True)
    assert recomputed <= stored - T * B * H * 8
    rng = np.random.default_rng(2)
    args = [rng.normal(size=(T, B, D)), rng.normal(size=(T, B, D))]
    args += list(model.state_dict().values())
    ref = ag.function(data + params, outs)(*args)
    _close(ref, ag.function(data + params, outs, backend="llvm")(*args), 1e-12)


@pytest.mark.parametrize("kind, saved", [("elman", 1), ("lstm", 4), ("gru", 3)])
def test_training_steps_store_gates_in_place_and_agree(kind, saved, monkeypatch):
    """The workload's step: the same numbers as the interpreter (1e-12), and `saved`
    [T, B, H] stacks fewer in the arena (the gates live in X·U's slices, the
    pre-activation gradients in the gates'), one more for h's history."""
    from rnn.workload import training_step
    D, H, B, T = 8, 16, 3, 5
    model, data, outs = training_step(kind, D, H)
    params = list(model.nodes().values())
    graph = ag.Graph(data + params, outs)
    dims = {"T": T, "B": B}
    off = _arena(graph, dims, monkeypatch, False)
    on = _arena(graph, dims, monkeypatch, True)
    assert on <= off - saved * T * B * H * 8
    # h's history (h_{t-1}, for the backward pass) and its stack (h_t, for the readout)
    # are one [T + 1, B, H] buffer
    assert on <= _arena(graph, dims, monkeypatch, True, history=False) - (T - 1) * B * H * 8
    rng = np.random.default_rng(1)
    args = [rng.normal(size=(T, B, D)), rng.normal(size=(T, B, D))]
    args += list(model.state_dict().values())
    ref = ag.function(data + params, outs)(*args)
    _close(ref, ag.function(data + params, outs, backend="llvm")(*args), 1e-12)


def test_seq2seq_with_attention_gradients_agree():
    """Encoder states read by every decoder step through broadcast views: such a view
    repeats elements and is never a home (this graph once got wrong encoder
    gradients from one)."""
    import rnn
    model = rnn.Seq2Seq(9, 9, 8, go_id=1, eos_id=2, embed_dim=5, cell="gru",
                        attention=True).init(0)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 9, size=n) for n in (4, 6, 5)]
    src, src_mask = rnn.pad_batch(seqs, 0)
    dec_in, dec_out, tgt_mask = rnn.shift_targets([s[::-1] for s in seqs], 1, 2, 0)
    got = model.step("llvm")(src, src_mask, dec_in, dec_out, tgt_mask)
    ref = model.step("numpy")(src, src_mask, dec_in, dec_out, tgt_mask)
    assert abs(got[0] - ref[0]) <= 1e-12 * abs(ref[0])
    for name in ref[2]:
        _close([ref[2][name]], [got[2][name]], 1e-11)


# ----------------------------------------------------------------------------- when not to

def _sequence_graph(read_after: bool):
    x_in = ag.placeholder("x", ("T", "B", 4), "float64")
    s0 = ag.placeholder("s0", ("B", 4), "float64")
    A = ag.placeholder("A", (4, 4), "float64")
    xs = x_in @ A               # a sequence in the arena, like X·U (its VJP does not read it)

    def step(s, x_t):
        y = ag.sigmoid(x_t + s)
        return s * y, y

    s_T, ys = ag.scan(step, s0, xs)
    loss = ag.sum(ys * ys) + ag.sum(s_T)
    if read_after:
        loss = loss + ag.sum(xs * xs)
    inputs = [x_in, s0, A]
    return inputs, [loss] + ag.grad(loss, inputs)


@pytest.mark.parametrize("read_after", [False, True])
def test_no_alias_into_a_sequence_read_after_the_loop(read_after, monkeypatch):
    """y_t = σ(x_t + s) is stored in x's slices (x = x_in·A, like X·U) unless x is
    read again after the loop."""
    inputs, outputs = _sequence_graph(read_after)
    graph = ag.Graph(inputs, outputs)
    T, B = 5, 2
    monkeypatch.setattr(lower, "INPLACE", True)
    _, prog, _ = build(graph)
    x_buf = next(s for s in prog.body if isinstance(s, MatMul)).out.buf     # x_in·A
    forward = next(s for s in prog.body if isinstance(s, Loop))
    written = {m.out.buf.id for st in walk(forward.body)
               for m in getattr(st, "maps", [st]) if isinstance(m, Map)}
    assert (x_buf.id in written) == (not read_after)
    rng = np.random.default_rng(3)
    args = [rng.normal(size=(T, B, 4)), rng.normal(size=(B, 4)), rng.normal(size=(4, 4))]
    ref = ag.function(inputs, outputs)(*args)
    _close(ref, ag.function(inputs, outputs, backend="llvm")(*args), 1e-12)


# ----------------------------------------------------------------------------- property

ACTS = {"sigmoid": ag.sigmoid, "tanh": ag.tanh, "exp": lambda z: ag.exp(0.3 * z)}


@SETTINGS
@given(T=st.integers(1, 5), B=st.integers(1, 3), H=st.integers(1, 6),
       acts=st.lists(st.sampled_from(sorted(ACTS)), min_size=1, max_size=4),
       stacked=st.lists(st.booleans(), min_size=4, max_size=4), reverse=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_random_gated_recurrences_agree(T, B, H, acts, stacked, reverse, seed):
    """Cells with k gates sliced from one hoisted x·U, a random subset of them stacked
    for the loss, forward and backward (the backward loop stores the gates'
    gradients in place of the gates): the interpreter's numbers to 1e-12."""
    k, D = len(acts), 3

    def build():
        x = ag.placeholder("x", ("T", "B", D), "float64")
        s0 = ag.placeholder("s0", ("B", H), "float64")
        U = ag.placeholder("U", (D, k * H), "float64")
        W = ag.placeholder("W", (H, k * H), "float64")

        def step(s, x_t):
            z = x_t @ U + s @ W
            gates = [ACTS[a](z[:, i * H:(i + 1) * H]) for i, a in enumerate(acts)]
            new = ag.tanh(sum(gates[1:], gates[0] * s))
            return new, tuple(g for g, keep in zip(gates, stacked) if keep) + (new,)

        s_T, ys = ag.scan(step, s0, x, reverse=reverse)
        loss = ag.sum(s_T) + sum(ag.sum(y * y) for y in ys)
        return [x, s0, U, W], [loss] + ag.grad(loss, [x, s0, U, W])

    rng = np.random.default_rng(seed)
    args = [rng.normal(size=(T, B, D)), rng.normal(size=(B, H)),
            0.5 * rng.normal(size=(D, k * H)), 0.5 * rng.normal(size=(H, k * H))]
    inputs, outputs = build()
    ref = ag.function(inputs, outputs)(*args)
    _close(ref, ag.function(inputs, outputs, backend="llvm")(*args), 1e-12)


def test_no_alias_into_a_sequence_an_outer_loop_reads_again(monkeypatch):
    """An inner loop that reads x = x_in·A (made once, outside the outer loop) at every
    outer step: the inner loop's stacked output must not take x's slices, or the
    next outer step would read them overwritten."""
    x_in = ag.placeholder("x", ("T", "B", 4), "float64")
    A = ag.placeholder("A", (4, 4), "float64")
    c0 = ag.placeholder("c0", ("B", 4), "float64")
    xs = x_in @ A

    def outer(c, _):
        def inner(s, x_t):
            y = ag.sigmoid(x_t + s)
            return 0.5 * s + y, y
        s_T, ys = ag.scan(inner, c, xs)
        return 0.5 * c + 0.1 * ag.sum(ys, axis=0), ag.sum(s_T)

    c_T, totals = ag.scan(outer, c0, length=3)
    loss = ag.sum(c_T) + ag.sum(totals)
    inputs = [x_in, A, c0]
    rng = np.random.default_rng(4)
    args = [rng.normal(size=(5, 2, 4)), rng.normal(size=(4, 4)), rng.normal(size=(2, 4))]
    # forward only (the backward pass would read x again after the loops anyway)
    for outputs in ([loss, totals], [loss] + ag.grad(loss, inputs)):
        ref = ag.function(inputs, outputs)(*args)
        _close(ref, ag.function(inputs, outputs, backend="llvm")(*args), 1e-12)

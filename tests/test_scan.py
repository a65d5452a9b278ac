"""scan: closed forms, an Elman RNN against a hand-written NumPy BPTT, tuple carries,
reverse scans, length-only scans, symbolic dims, int sequences, grad_steps,
grad of grad through a scan and nested scans."""
import numpy as np
import pytest

import autograph as ag

# ----------------------------------------------------------------------------- helpers


def rng(seed=0):
    return np.random.default_rng(seed)


def elman_graph(D=3, H=4, T="T", B="B"):
    """Elman RNN s_t = tanh(x_t U + s_{t-1} W + b); L = Σ_t Σ (s_t·C_t + ½ s_t²)."""
    X = ag.placeholder("X", (T, B, D))
    C = ag.placeholder("C", (T, B, H))
    U = ag.placeholder("U", (D, H))
    W = ag.placeholder("W", (H, H))
    b = ag.placeholder("b", (H,))
    s0 = ag.placeholder("s0", (B, H))

    def step(s, x):
        s = ag.tanh(x @ U + s @ W + b, name="s")
        return s, s

    sT, S = ag.scan(step, s0, X)
    loss = ag.sum(S * C + 0.5 * S * S, name="L")
    return dict(X=X, C=C, U=U, W=W, b=b, s0=s0, sT=sT, S=S, loss=loss)


def elman_values(T=5, B=2, D=3, H=4, seed=0):
    r = rng(seed)
    return dict(X=r.standard_normal((T, B, D)), C=r.standard_normal((T, B, H)),
                U=0.5 * r.standard_normal((D, H)), W=0.5 * r.standard_normal((H, H)),
                b=0.1 * r.standard_normal(H), s0=0.3 * r.standard_normal((B, H)))


def np_elman_forward(X, U, W, b, s0, Ws=None):
    """Plain NumPy loop; `Ws` optionally gives a separate copy of W per step."""
    s, S = s0, []
    for t in range(X.shape[0]):
        Wt = W if Ws is None else Ws[t]
        s = np.tanh(X[t] @ U + s @ Wt + b)
        S.append(s)
    return np.stack(S)


def np_elman_loss(X, C, U, W, b, s0, Ws=None):
    S = np_elman_forward(X, U, W, b, s0, Ws)
    return float(np.sum(S * C + 0.5 * S * S))


def np_elman_bptt(X, C, U, W, b, s0):
    """Textbook BPTT: δ_t = (∂L/∂s_t + δ_{t+1} Wᵀ) ⊙ (1 − s_t²)."""
    S = np_elman_forward(X, U, W, b, s0)
    T = X.shape[0]
    prev = np.concatenate([s0[None], S[:-1]])  # s_{t-1}
    dU, dW, db = np.zeros_like(U), np.zeros_like(W), np.zeros_like(b)
    dX = np.zeros_like(X)
    dW_steps = np.zeros((T,) + W.shape)
    delta_next = np.zeros_like(s0)
    for t in reversed(range(T)):
        dL_ds = C[t] + S[t]
        delta = (dL_ds + delta_next @ W.T) * (1 - S[t] ** 2)
        dW_steps[t] = prev[t].T @ delta
        dW += dW_steps[t]
        dU += X[t].T @ delta
        db += delta.sum(0)
        dX[t] = delta @ U.T
        delta_next = delta
    ds0 = delta_next @ W.T
    return dict(U=dU, W=dW, b=db, s0=ds0, X=dX, W_steps=dW_steps)


ELMAN_ORDER = ["X", "C", "U", "W", "b", "s0"]


# ----------------------------------------------------------------------------- (a) closed forms


def test_cumsum_equals_np_cumsum():
    xs = ag.placeholder("xs", ("T", 3))

    def step(c, x):
        c = c + x
        return c, c

    final, ys = ag.scan(step, ag.zeros((3,)), xs)
    f = ag.function([xs], [final, ys])
    for T in (1, 2, 7):
        a = rng(T).standard_normal((T, 3))
        fin, got = f(a)
        np.testing.assert_allclose(got, np.cumsum(a, axis=0), rtol=0, atol=1e-13)
        np.testing.assert_allclose(fin, a.sum(0), rtol=0, atol=1e-13)


def test_cumsum_gradient_is_reverse_count():
    # L = Σ_t w_t · cumsum(x)_t  ⇒  ∂L/∂x_k = Σ_{t≥k} w_t
    xs = ag.placeholder("xs", ("T",))
    w = ag.placeholder("w", ("T",))
    _, ys = ag.scan(lambda c, x: (c + x, c + x), ag.zeros(()), xs)
    g = ag.function([xs, w], ag.grad(ag.sum(ys * w), xs))
    wv = rng(1).standard_normal(6)
    np.testing.assert_allclose(g(rng(2).standard_normal(6), wv),
                               np.cumsum(wv[::-1])[::-1], atol=1e-13)


def test_geometric_recurrence():
    a = ag.placeholder("a", ())
    s0 = ag.placeholder("s0", ())

    def step(s, _):
        s = a * s
        return s, s

    T = 6
    final, ys = ag.scan(step, s0, length=T)
    f = ag.function([a, s0], [final, ys])
    fin, got = f(0.9, 1.0)
    np.testing.assert_allclose(got, 0.9 ** np.arange(1, T + 1), rtol=1e-14)
    np.testing.assert_allclose(fin, 0.9 ** T, rtol=1e-14)
    # d(a^T s0)/da = T a^(T-1) s0
    g = ag.function([a, s0], ag.grad(final, [a, s0]))
    da, ds0 = g(0.9, 2.0)
    np.testing.assert_allclose(da, T * 0.9 ** (T - 1) * 2.0, rtol=1e-13)
    np.testing.assert_allclose(ds0, 0.9 ** T, rtol=1e-13)


# ----------------------------------------------------------------------------- (b) Elman RNN


@pytest.fixture(scope="module")
def elman():
    return elman_graph()


def test_elman_forward_matches_numpy_loop(elman):
    v = elman_values()
    f = ag.function([elman[k] for k in ELMAN_ORDER], [elman["S"], elman["sT"], elman["loss"]])
    S, sT, L = f(*[v[k] for k in ELMAN_ORDER])
    want = np_elman_forward(v["X"], v["U"], v["W"], v["b"], v["s0"])
    np.testing.assert_allclose(S, want, rtol=0, atol=1e-14)
    np.testing.assert_allclose(sT, want[-1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(L, np_elman_loss(*[v[k] for k in ELMAN_ORDER]), rtol=1e-14)


def test_elman_check_grad(elman):
    v = elman_values()
    rep = ag.check_grad(elman["loss"], [elman[k] for k in ELMAN_ORDER],
                        [v[k] for k in ELMAN_ORDER])
    assert set(rep.errors) == set(ELMAN_ORDER)
    assert rep.ok(1e-6), str(rep)


def test_elman_matches_handwritten_bptt(elman):
    v = elman_values(T=6, B=3)
    wrt = ["U", "W", "b", "s0", "X"]
    g = ag.function([elman[k] for k in ELMAN_ORDER],
                    ag.grad(elman["loss"], [elman[k] for k in wrt]))
    got = dict(zip(wrt, g(*[v[k] for k in ELMAN_ORDER])))
    want = np_elman_bptt(*[v[k] for k in ELMAN_ORDER])
    for k in wrt:
        assert got[k].shape == v[k].shape
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_elman_gradient_of_constant_input_C(elman):
    # ∂L/∂C = S: the cotangent path through the stacked ys alone.
    v = elman_values()
    g = ag.function([elman[k] for k in ELMAN_ORDER], ag.grad(elman["loss"], elman["C"]))
    np.testing.assert_allclose(g(*[v[k] for k in ELMAN_ORDER]),
                               np_elman_forward(v["X"], v["U"], v["W"], v["b"], v["s0"]),
                               atol=1e-14)


def test_loss_on_final_carry_only():
    # Only the final carry is used: the cotangent enters through ct_final, not ys.
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))
    sT, _ = ag.scan(lambda s, x: (ag.tanh(s @ W + x), ag.zeros(())), s0, X)
    r = rng(3)
    vals = [r.standard_normal((5, 2)), 0.7 * r.standard_normal((2, 2)), r.standard_normal(2)]
    rep = ag.check_grad(ag.sum(sT * sT), [X, W, s0], vals)
    assert rep.ok(1e-6), str(rep)


# ----------------------------------------------------------------------------- (c) tuple carry


def lstm_graph(D=3, H=4):
    X = ag.placeholder("X", ("T", "B", D))
    Wx = ag.placeholder("Wx", (D, 4 * H))
    Wh = ag.placeholder("Wh", (H, 4 * H))
    bias = ag.placeholder("bias", (4 * H,))
    h0 = ag.placeholder("h0", ("B", H))
    c0 = ag.placeholder("c0", ("B", H))

    def step(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh + bias
        i = ag.sigmoid(z[:, 0:H])
        f = ag.sigmoid(z[:, H:2 * H])
        o = ag.sigmoid(z[:, 2 * H:3 * H])
        g = ag.tanh(z[:, 3 * H:])
        c = ag.named(f * c + i * g, "c")
        h = ag.named(o * ag.tanh(c), "h")
        return (h, c), h

    (hT, cT), Hs = ag.scan(step, (h0, c0), X)
    loss = ag.sum(Hs * Hs) + ag.sum(ag.tanh(cT) * 1.5)
    inputs = [X, Wx, Wh, bias, h0, c0]
    return inputs, (hT, cT, Hs), loss


def lstm_values(T=4, B=2, D=3, H=4, seed=5):
    r = rng(seed)
    return [r.standard_normal((T, B, D)), 0.4 * r.standard_normal((D, 4 * H)),
            0.4 * r.standard_normal((H, 4 * H)), 0.1 * r.standard_normal(4 * H),
            0.3 * r.standard_normal((B, H)), 0.3 * r.standard_normal((B, H))]


def np_lstm(X, Wx, Wh, bias, h0, c0):
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    H = h0.shape[-1]
    h, c, Hs = h0, c0, []
    for t in range(X.shape[0]):
        z = X[t] @ Wx + h @ Wh + bias
        i, f, o, g = sig(z[:, :H]), sig(z[:, H:2 * H]), sig(z[:, 2 * H:3 * H]), np.tanh(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        Hs.append(h)
    return h, c, np.stack(Hs)


def test_lstm_tuple_carry_forward():
    inputs, (hT, cT, Hs), _ = lstm_graph()
    vals = lstm_values()
    got = ag.function(inputs, [hT, cT, Hs])(*vals)
    for g, w in zip(got, np_lstm(*vals)):
        np.testing.assert_allclose(g, w, atol=1e-14)


def test_lstm_tuple_carry_check_grad():
    inputs, _, loss = lstm_graph()
    rep = ag.check_grad(loss, inputs, lstm_values())
    assert rep.ok(1e-6), str(rep)


def test_nested_tuple_carry_structure_is_kept():
    x = ag.placeholder("x", ("T",))
    a0 = ag.placeholder("a0", ())

    def step(carry, xt):
        a, (b, c) = carry
        return (a + xt, (b * 2, c - xt)), [a, b]

    (a, (b, c)), (ya, yb) = ag.scan(step, (a0, (ag.ones(()), ag.zeros(()))), x)
    out = ag.function([x, a0], [a, b, c, ya, yb])(np.array([1.0, 2.0, 3.0]), 10.0)
    np.testing.assert_allclose(out[0], 16.0)
    np.testing.assert_allclose(out[1], 8.0)
    np.testing.assert_allclose(out[2], -6.0)
    np.testing.assert_allclose(out[3], [10.0, 11.0, 13.0])
    np.testing.assert_allclose(out[4], [1.0, 2.0, 4.0])


# ----------------------------------------------------------------------------- (d) reverse


def test_reverse_equals_scanning_flipped_xs():
    X = ag.placeholder("X", ("T", 2))
    Xf = ag.placeholder("Xf", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))

    def step(s, x):
        s = ag.tanh(s @ W + x)
        return s, s * 2.0

    fin_r, ys_r = ag.scan(step, s0, X, reverse=True)
    fin_f, ys_f = ag.scan(step, s0, Xf)
    f = ag.function([X, Xf, W, s0], [fin_r, ys_r, fin_f, ys_f])
    r = rng(7)
    x = r.standard_normal((5, 2))
    w, s = 0.8 * r.standard_normal((2, 2)), r.standard_normal(2)
    a, ya, b, yb = f(x, x[::-1].copy(), w, s)
    np.testing.assert_allclose(a, b, atol=1e-15)
    # ys are stored at their step's index: ys_r[t] belongs to x[t]
    np.testing.assert_allclose(ya, yb[::-1], atol=1e-15)

    # gradients agree too (after flipping back)
    Lr = ag.sum(ys_r * ys_r) + ag.sum(fin_r)
    Lf = ag.sum(ys_f * ys_f) + ag.sum(fin_f)
    g = ag.function([X, Xf, W, s0], ag.grad(Lr, [X, W, s0]) + ag.grad(Lf, [Xf, W, s0]))
    gx_r, gw_r, gs_r, gx_f, gw_f, gs_f = g(x, x[::-1].copy(), w, s)
    np.testing.assert_allclose(gx_r, gx_f[::-1], atol=1e-13)
    np.testing.assert_allclose(gw_r, gw_f, atol=1e-13)
    np.testing.assert_allclose(gs_r, gs_f, atol=1e-13)
    rep = ag.check_grad(Lr, [X, W, s0], [x, w, s])
    assert rep.ok(1e-6), str(rep)


# ----------------------------------------------------------------------------- (e) length only


def test_length_without_xs_receives_none():
    seen = []

    def step(c, x):
        seen.append(x)
        return c + 1.0, c

    final, ys = ag.scan(step, ag.zeros(()), length=4)
    assert seen == [None]
    fin, got = ag.function([], [final, ys])()
    np.testing.assert_allclose(fin, 4.0)
    np.testing.assert_allclose(got, [0.0, 1.0, 2.0, 3.0])
    assert ys.shape == (4,)


def test_symbolic_length_without_xs():
    # length may be a dim name bound by another input
    v = ag.placeholder("v", ("T",))
    a = ag.placeholder("a", ())
    final, ys = ag.scan(lambda c, _: (c * a, c * a), ag.ones(()), length="T")
    assert ys.shape == ("T",)
    f = ag.function([v, a], [final, ys + v])
    fin, got = f(np.zeros(3), 2.0)
    np.testing.assert_allclose(fin, 8.0)
    np.testing.assert_allclose(got, [2.0, 4.0, 8.0])


def test_length_must_agree_with_xs():
    x = ag.placeholder("x", (3, 2))
    with pytest.raises(ag.ShapeError):
        ag.scan(lambda c, xt: (c, xt), ag.zeros(()), x, length=4)
    with pytest.raises(ag.GraphError):
        ag.scan(lambda c, xt: (c, c), ag.zeros(()))


# ----------------------------------------------------------------------------- (f) symbolic T, B


@pytest.mark.parametrize("T,B", [(1, 1), (1, 3), (4, 1), (3, 2), (7, 5)])
def test_symbolic_T_and_B(elman, T, B):
    # One graph (built once in the fixture) serves every (T, B).
    v = elman_values(T=T, B=B, seed=T * 10 + B)
    args = [v[k] for k in ELMAN_ORDER]
    wrt = ["U", "W", "b", "s0", "X"]
    f = ag.function([elman[k] for k in ELMAN_ORDER],
                    [elman["S"], elman["loss"]] + ag.grad(elman["loss"], [elman[k] for k in wrt]))
    S, L, *grads = f(*args)
    assert S.shape == (T, B, 4)
    np.testing.assert_allclose(S, np_elman_forward(v["X"], v["U"], v["W"], v["b"], v["s0"]),
                               atol=1e-14)
    np.testing.assert_allclose(L, np_elman_loss(*args), rtol=1e-13)
    want = np_elman_bptt(*args)
    for k, g in zip(wrt, grads):
        np.testing.assert_allclose(g, want[k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_symbolic_dims_conflict_in_scan_inputs(elman):
    v = elman_values(T=3, B=2)
    f = ag.function([elman[k] for k in ELMAN_ORDER], elman["loss"])
    bad = dict(v, s0=np.zeros((4, 4)))  # B=4 vs X's B=2
    with pytest.raises(ag.InputError, match="B"):
        f(*[bad[k] for k in ELMAN_ORDER])
    bad = dict(v, C=np.zeros((5, 2, 4)))  # T=5 vs X's T=3
    with pytest.raises(ag.InputError, match="T"):
        f(*[bad[k] for k in ELMAN_ORDER])


# ----------------------------------------------------------------------------- (g) int xs


def token_rnn():
    tok = ag.placeholder("tok", ("T", "B"), "int64")
    E = ag.placeholder("E", (6, 3))
    W = ag.placeholder("W", (3, 3))
    h0 = ag.placeholder("h0", ("B", 3))

    def step(h, t):
        assert t.dtype == "int64" and t.shape == ("B",)
        h = ag.tanh(ag.take(E, t) + h @ W)
        return h, h

    _, Hs = ag.scan(step, h0, tok)
    return [tok, E, W, h0], ag.sum(Hs * Hs)


def test_int_token_sequence_forward_and_grad():
    inputs, loss = token_rnn()
    r = rng(11)
    toks = r.integers(0, 6, size=(5, 2))
    vals = [toks, r.standard_normal((6, 3)), 0.5 * r.standard_normal((3, 3)),
            r.standard_normal((2, 3))]
    L = ag.function(inputs, loss)(*vals)
    h, want = vals[3], 0.0
    for t in range(5):
        h = np.tanh(vals[1][toks[t]] + h @ vals[2])
        want += np.sum(h * h)
    np.testing.assert_allclose(L, want, rtol=1e-13)
    # int32 tokens are accepted and widened
    np.testing.assert_allclose(ag.function(inputs, loss)(toks.astype(np.int32), *vals[1:]), want,
                               rtol=1e-13)
    rep = ag.check_grad(loss, inputs, vals)
    assert "tok" not in rep.errors  # ints are held fixed
    assert rep.ok(1e-6), str(rep)
    # unused rows of E get exactly zero gradient
    dE = ag.function(inputs, ag.grad(loss, inputs[1]))(*vals)
    unused = sorted(set(range(6)) - set(toks.ravel().tolist()))
    assert np.all(dE[unused] == 0)


def test_int_xs_have_no_gradient():
    inputs, loss = token_rnn()
    with pytest.raises(ag.DTypeError, match="tok"):
        ag.grad(loss, inputs[0])


# ----------------------------------------------------------------------------- (h) grad_steps


def test_grad_steps_sum_to_grad_and_match_bptt(elman):
    v = elman_values(T=5, B=2)
    args = [v[k] for k in ELMAN_ORDER]
    params = [elman["W"], elman["U"], elman["b"]]
    steps = ag.grad_steps(elman["loss"], params)
    assert all(s is not None for s in steps)
    assert steps[0].shape == ("T", 4, 4)
    assert steps[1].shape == ("T", 3, 4)
    assert steps[2].shape == ("T", 4)
    f = ag.function([elman[k] for k in ELMAN_ORDER],
                    steps + ag.grad(elman["loss"], params))
    sW, sU, sb, gW, gU, gb = f(*args)
    np.testing.assert_allclose(sW.sum(0), gW, atol=1e-13)
    np.testing.assert_allclose(sU.sum(0), gU, atol=1e-13)
    np.testing.assert_allclose(sb.sum(0), gb, atol=1e-13)
    # slice t is s_{t-1}ᵀ δ_t of the textbook
    np.testing.assert_allclose(sW, np_elman_bptt(*args)["W_steps"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_grad_steps_slice_is_derivative_wrt_step_copy(elman, k):
    """Slice k is ∂L/∂W^(k): perturb only the copy of W used at step k."""
    T = 5
    v = elman_values(T=T, B=2, seed=3)
    sW = ag.function([elman[n] for n in ELMAN_ORDER],
                     ag.grad_steps(elman["loss"], elman["W"]))(*[v[n] for n in ELMAN_ORDER])
    eps = 1e-5
    fd = np.zeros_like(v["W"])
    for idx in np.ndindex(*v["W"].shape):
        vals = []
        for sign in (+1, -1):
            Ws = [v["W"].copy() for _ in range(T)]
            Ws[k][idx] += sign * eps
            vals.append(np_elman_loss(v["X"], v["C"], v["U"], v["W"], v["b"], v["s0"], Ws=Ws))
        fd[idx] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(sW[k], fd, rtol=1e-6, atol=1e-8)


def test_grad_steps_none_when_not_a_scan_param():
    x = ag.placeholder("x", (3,))
    W = ag.placeholder("W", (3,))
    _, ys = ag.scan(lambda c, xt: (c + xt, c * 2.0), ag.zeros(()), x)
    assert ag.grad_steps(ag.sum(ys) + ag.sum(W), W) is None


# ----------------------------------------------------------------------------- (i) grad of grad


def test_grad_of_grad_through_scan(elman):
    V = ag.placeholder("V", (4, 4))
    gW = ag.grad(elman["loss"], [elman["W"]])[0]
    y = ag.sum(gW * V)
    v = elman_values(T=4, B=2, seed=9)
    names = ["X", "C", "U", "W", "b", "s0"]
    inputs = [elman[k] for k in names] + [V]
    vals = [v[k] for k in names] + [rng(12).standard_normal((4, 4))]
    # the first-order gradient is the BPTT one
    np.testing.assert_allclose(ag.function(inputs, gW)(*vals),
                               np_elman_bptt(*[v[k] for k in ELMAN_ORDER])["W"],
                               rtol=1e-10, atol=1e-10)
    rep = ag.check_grad(y, inputs, vals)
    assert rep.ok(1e-6), str(rep)


def test_hessian_vector_product_geometric():
    # y = a^T: d²y/da² = T (T-1) a^(T-2)
    a = ag.placeholder("a", ())
    final, _ = ag.scan(lambda s, _: (s * a, s), ag.ones(()), length=5)
    d1 = ag.grad(final, a)
    d2 = ag.grad(d1, a)
    d3 = ag.grad(d2, a)
    got = ag.function([a], [d1, d2, d3])(1.3)
    np.testing.assert_allclose(got, [5 * 1.3 ** 4, 20 * 1.3 ** 3, 60 * 1.3 ** 2], rtol=1e-13)


# ----------------------------------------------------------------------------- (j) nested scan


def nested_graph():
    # outer over T, inner over K: c ← tanh(c * w + x_{t,k}) inside, carry passes out.
    X = ag.placeholder("X", ("T", "K", 2))
    w = ag.placeholder("w", (2,))
    c0 = ag.placeholder("c0", (2,))

    def outer(c, xt):
        def inner(ci, xk):
            ci = ag.tanh(ci * w + xk)
            return ci, ci

        c_in, ys = ag.scan(inner, c, xt)
        return c_in, ag.sum(ys, 0)

    cT, Y = ag.scan(outer, c0, X)
    return [X, w, c0], cT, Y, ag.sum(Y * Y) + ag.sum(cT)


def np_nested(X, w, c0):
    c, Y = c0, []
    for t in range(X.shape[0]):
        acc = np.zeros_like(c)
        for k in range(X.shape[1]):
            c = np.tanh(c * w + X[t, k])
            acc += c
        Y.append(acc)
    return c, np.stack(Y)


def test_nested_scan_forward_and_check_grad():
    inputs, cT, Y, loss = nested_graph()
    r = rng(21)
    vals = [r.standard_normal((3, 4, 2)), r.standard_normal(2), r.standard_normal(2)]
    got_c, got_Y = ag.function(inputs, [cT, Y])(*vals)
    want_c, want_Y = np_nested(*vals)
    np.testing.assert_allclose(got_c, want_c, atol=1e-14)
    np.testing.assert_allclose(got_Y, want_Y, atol=1e-14)
    rep = ag.check_grad(loss, inputs, vals)
    assert rep.ok(1e-6), str(rep)
    # a different (T, K) with the same graph
    vals2 = [r.standard_normal((1, 2, 2)), vals[1], vals[2]]
    np.testing.assert_allclose(ag.function(inputs, Y)(*vals2), np_nested(*vals2)[1], atol=1e-14)


def test_named_carry_used_only_through_final_carry():
    # Regression: the carry's incoming cotangent is a body placeholder; the VJP used
    # to try to rename it ("placeholder 'ct_s0' already has its name").
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))
    sT, _ = ag.scan(lambda s, x: (ag.tanh(s @ W + x, name="s"), ag.zeros(())), s0, X)
    r = rng(4)
    vals = [r.standard_normal((4, 2)), 0.6 * r.standard_normal((2, 2)), r.standard_normal(2)]
    rep = ag.check_grad(ag.sum(sT * sT), [X, W, s0], vals)
    assert rep.ok(1e-6), str(rep)


def test_int_counter_carry_gets_no_gradient_but_float_carry_does():
    # Regression: the scan VJP used to differentiate every carry, so an int64 counter
    # in the carry made grad fail ("cannot differentiate with respect to 'c0'").
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))

    def step(carry, x):
        n, s = carry
        s = ag.tanh(s @ W + x * ag.cast(n + 1, "float64"))
        return (n + 1, s), n

    (n, sT), ns = ag.scan(step, (ag.zeros((), "int64"), ag.zeros((2,))), X)
    loss = ag.sum(sT * sT)
    r = rng(13)
    vals = [r.standard_normal((4, 2)), 0.6 * r.standard_normal((2, 2))]
    n_v, ns_v = ag.function([X, W], [n, ns])(*vals)
    assert n_v == 4 and ns_v.dtype == np.int64
    np.testing.assert_array_equal(ns_v, [0, 1, 2, 3])
    rep = ag.check_grad(loss, [X, W], vals)
    assert rep.ok(1e-6), str(rep)
    # the unrolled graph agrees
    u = ag.unroll(loss, T=4)
    a = ag.function([X, W], ag.grad(loss, [X, W]))(*vals)
    b = ag.function([X, W], ag.grad(u, [X, W]))(*vals)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)


def test_grad_steps_reverse_scan_slices_are_per_step_copies():
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))
    wts = np.array([1.0, 2.0])

    def step(s, x):
        s = ag.tanh(s @ W + x)
        return s, s

    _, S = ag.scan(step, s0, X, reverse=True)
    loss = ag.sum(S * S * wts)
    T = 4
    r = rng(14)
    xv, wv, sv = r.standard_normal((T, 2)), 0.6 * r.standard_normal((2, 2)), r.standard_normal(2)
    steps = ag.function([X, W, s0], ag.grad_steps(loss, W))(xv, wv, sv)

    def np_loss(Ws):
        s, tot = sv, 0.0
        for t in reversed(range(T)):  # step t uses the copy Ws[t]
            s = np.tanh(s @ Ws[t] + xv[t])
            tot += np.sum(s * s * wts)
        return tot

    eps = 1e-6
    for k in range(T):
        fd = np.zeros((2, 2))
        for idx in np.ndindex(2, 2):
            Wp, Wm = [wv.copy() for _ in range(T)], [wv.copy() for _ in range(T)]
            Wp[k][idx] += eps
            Wm[k][idx] -= eps
            fd[idx] = (np_loss(Wp) - np_loss(Wm)) / (2 * eps)
        np.testing.assert_allclose(steps[k], fd, rtol=1e-6, atol=1e-8, err_msg=str(k))


def test_loop_invariant_expression_is_hoisted_and_differentiated():
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))
    sT, S = ag.scan(lambda s, x: (ag.tanh(s @ (W * 2.0) + x), s), s0, X)
    (node,) = {n for n in ag.toposort([sT]) if n.op == "scan"}
    body_ops = {n.op for n in node.params["body"].nodes}
    assert "mul" not in body_ops  # W * 2.0 is computed once, outside the loop
    loss = ag.sum(S * S) + ag.sum(sT)
    r = rng(15)
    rep = ag.check_grad(loss, [X, W, s0], [r.standard_normal((3, 2)),
                                           0.4 * r.standard_normal((2, 2)), r.standard_normal(2)])
    assert rep.ok(1e-6), str(rep)
    # the scan closes over W * 2.0, not W: its per-step cotangents are carried back to W
    steps, total = ag.function([X, W, s0], [ag.grad_steps(loss, W), ag.grad(loss, W)])(
        r.standard_normal((3, 2)), 0.4 * r.standard_normal((2, 2)), r.standard_normal(2))
    assert steps.shape == (3, 2, 2)
    np.testing.assert_allclose(steps.sum(axis=0), total, rtol=1e-13, atol=1e-15)


def test_zero_length_sequence():
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))
    sT, S = ag.scan(lambda s, x: (ag.tanh(s @ W + x), s), s0, X)
    loss = ag.sum(S) + ag.sum(sT)
    out = ag.function([X, W, s0], [sT, S, loss] + ag.grad(loss, [X, W, s0]))(
        np.zeros((0, 2)), np.eye(2), np.array([0.5, -1.0]))
    np.testing.assert_array_equal(out[0], [0.5, -1.0])
    assert out[1].shape == (0, 2)
    assert out[2] == -0.5
    assert out[3].shape == (0, 2)
    np.testing.assert_array_equal(out[4], np.zeros((2, 2)))
    np.testing.assert_array_equal(out[5], [1.0, 1.0])


def test_step_returning_no_ys_and_bad_carries():
    X = ag.placeholder("X", ("T", 2))
    s0 = ag.placeholder("s0", (2,))
    c, ys = ag.scan(lambda s, x: (s + x, None), s0, X)
    assert ys is None
    np.testing.assert_array_equal(ag.function([X, s0], c)(np.ones((3, 2)), np.zeros(2)), [3.0, 3.0])
    with pytest.raises(ag.ShapeError, match="s0"):
        ag.scan(lambda s, x: (ag.sum(s), s), s0, X)  # the carry changes shape
    with pytest.raises(ag.GraphError, match="structure"):
        ag.scan(lambda s, x: ((s, s), s), s0, X)  # the carry changes structure
    with pytest.raises(ag.GraphError, match="pair"):
        ag.scan(lambda s, x: s, s0, X)
    with pytest.raises(ag.ShapeError, match="scalar"):
        ag.scan(lambda s, x: (s, s), s0, ag.placeholder("z", ()))


def test_float32_scan_keeps_dtype():
    X = ag.placeholder("X32", ("T", 2), "float32")
    W = ag.placeholder("W32", (2, 2), "float32")
    c, ys = ag.scan(lambda s, x: (ag.tanh(s @ W + x), s), ag.zeros((2,), "float32"), X)
    loss = ag.sum(ys * ys) + ag.sum(c)
    xv = rng(16).standard_normal((3, 2)).astype(np.float32)
    wv = (0.5 * rng(17).standard_normal((2, 2))).astype(np.float32)
    out = ag.function([X, W], [loss] + ag.grad(loss, [X, W]))(xv, wv)
    assert all(o.dtype == np.float32 for o in out)
    # compare with the float64 graph
    X64, W64 = ag.placeholder("X", ("T", 2)), ag.placeholder("W", (2, 2))
    c64, ys64 = ag.scan(lambda s, x: (ag.tanh(s @ W64 + x), s), ag.zeros((2,)), X64)
    l64 = ag.sum(ys64 * ys64) + ag.sum(c64)
    out64 = ag.function([X64, W64], [l64] + ag.grad(l64, [X64, W64]))(xv.astype(float),
                                                                        wv.astype(float))
    for a, b in zip(out, out64):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

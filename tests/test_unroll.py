"""unroll: the expanded graph computes what the scan computes (values and gradients),
its nodes carry per-step names, it is pinned to its T, and long graphs (10k steps,
100k-node chains) sort and differentiate without recursion."""
import time

import numpy as np
import pytest

import autograph as ag


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- models


def elman():
    X = ag.placeholder("X", ("T", "B", 3))
    U = ag.placeholder("U", (3, 4))
    W = ag.placeholder("W", (4, 4))
    b = ag.placeholder("b", (4,))
    s0 = ag.placeholder("s0", ("B", 4))

    def step(s, x):
        s = ag.tanh(x @ U + s @ W + b, name="s")
        return s, ag.named(s * 2.0, "y")

    sT, Y = ag.scan(step, s0, X)
    loss = ag.named(ag.sum(Y * Y) + ag.sum(sT), "L")
    return [X, U, W, b, s0], loss


def elman_values(T, B=2, seed=0):
    r = rng(seed)
    return [r.standard_normal((T, B, 3)), 0.5 * r.standard_normal((3, 4)),
            0.5 * r.standard_normal((4, 4)), 0.1 * r.standard_normal(4),
            0.3 * r.standard_normal((B, 4))]


def lstm(H=3):
    X = ag.placeholder("X", ("T", "B", 2))
    Wx = ag.placeholder("Wx", (2, 4 * H))
    Wh = ag.placeholder("Wh", (H, 4 * H))
    h0 = ag.placeholder("h0", ("B", H))
    c0 = ag.placeholder("c0", ("B", H))

    def step(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh
        i, f = ag.sigmoid(z[:, :H]), ag.sigmoid(z[:, H:2 * H])
        o, g = ag.sigmoid(z[:, 2 * H:3 * H]), ag.tanh(z[:, 3 * H:])
        c = ag.named(f * c + i * g, "c")
        h = ag.named(o * ag.tanh(c), "h")
        return (h, c), h

    (hT, cT), Hs = ag.scan(step, (h0, c0), X)
    loss = ag.sum(Hs * Hs) + ag.sum(cT * hT)
    return [X, Wx, Wh, h0, c0], loss


def lstm_values(T, B=2, H=3, seed=1):
    r = rng(seed)
    return [r.standard_normal((T, B, 2)), 0.5 * r.standard_normal((2, 4 * H)),
            0.5 * r.standard_normal((H, 4 * H)), 0.3 * r.standard_normal((B, H)),
            0.3 * r.standard_normal((B, H))]


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("model,values", [(elman, elman_values), (lstm, lstm_values)],
                         ids=["elman", "lstm"])
@pytest.mark.parametrize("T", [1, 2, 6])
def test_unroll_matches_scan_values_and_grads(model, values, T):
    inputs, loss = model()
    wrt = list(inputs)
    u_loss = ag.unroll(loss, T=T)
    assert u_loss is not loss
    assert not any(n.op == "scan" for n in ag.toposort([u_loss]))
    scan_f = ag.function(inputs, [loss] + ag.grad(loss, wrt))
    unr_f = ag.function(inputs, [u_loss] + ag.grad(u_loss, wrt))
    vals = values(T)
    for a, b, x in zip(scan_f(*vals), unr_f(*vals), ["loss"] + [w.name for w in wrt]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=x)


def test_unroll_list_of_values_and_stacked_ys():
    X = ag.placeholder("X", ("T", 2))
    s0 = ag.placeholder("s0", (2,))
    sT, ys = ag.scan(lambda s, x: (ag.tanh(s + x, name="s"), s * x), s0, X)
    u_sT, u_ys, u_s0 = ag.unroll([sT, ys, s0], T=3)
    assert u_s0 is s0  # placeholders are shared with the original graph
    assert u_ys.shape == ("T", 2)  # the stacked ys keep the symbolic dim
    x, s = rng(2).standard_normal((3, 2)), rng(3).standard_normal(2)
    a = ag.function([X, s0], [sT, ys])(x, s)
    b = ag.function([X, s0], [u_sT, u_ys])(x, s)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-15)
    assert isinstance(ag.unroll(sT, T=3), ag.Node)  # a single value in, a single value out


def test_unroll_reverse_scan_matches():
    X = ag.placeholder("X", (4, 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))
    sT, ys = ag.scan(lambda s, x: (ag.tanh(s @ W + x, name="s"), s), s0, X, reverse=True)
    loss = ag.sum(ys * ys) + ag.sum(sT)
    u = ag.unroll(loss)  # a static length needs no T
    vals = [rng(4).standard_normal((4, 2)), 0.7 * rng(5).standard_normal((2, 2)),
            rng(6).standard_normal(2)]
    a = ag.function([X, W, s0], [loss] + ag.grad(loss, [X, W, s0]))(*vals)
    b = ag.function([X, W, s0], [u] + ag.grad(u, [X, W, s0]))(*vals)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)
    # a reverse scan's first step is the last time index
    names = {n.name for n in ag.toposort([u]) if n.name}
    assert {"s_1", "s_2", "s_3", "s_4"} <= names


def test_unroll_nested_scan_matches():
    X = ag.placeholder("X", (2, 3, 2))
    w = ag.placeholder("w", (2,))
    c0 = ag.placeholder("c0", (2,))

    def outer(c, xt):
        ci, ys = ag.scan(lambda cc, xk: (ag.tanh(cc * w + xk, name="s"), cc), c, xt)
        return ci, ag.sum(ys, 0)

    cT, Y = ag.scan(outer, c0, X)
    loss = ag.sum(Y * Y) + ag.sum(cT)
    u = ag.unroll(loss)
    vals = [rng(7).standard_normal((2, 3, 2)), rng(8).standard_normal(2), rng(9).standard_normal(2)]
    a = ag.function([X, w, c0], [loss] + ag.grad(loss, [X, w, c0]))(*vals)
    b = ag.function([X, w, c0], [u] + ag.grad(u, [X, w, c0]))(*vals)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)
    names = {n.name for n in ag.toposort([u]) if n.name}
    # outer step t, inner step k: s_{t}_{k}
    assert {"s_1_1", "s_1_3", "s_2_1", "s_2_3"} <= names
    assert not any(n.op == "scan" for n in ag.toposort([u]))


# ----------------------------------------------------------------------------- names


def test_unrolled_nodes_are_named_per_step():
    inputs, loss = elman()
    T = 4
    u = ag.unroll(loss, T=T)
    nodes = ag.toposort([u])
    names = [n.name for n in nodes if n.name]
    for t in range(1, T + 1):
        assert names.count(f"s_{t}") == 1, t
        assert names.count(f"y_{t}") == 1, t
        assert names.count(f"X_{t}") == 1, t  # the slice x_t of the sequence
    assert "s_0" not in names and f"s_{T + 1}" not in names
    assert "s" not in names  # the body's own nodes are not in the unrolled graph
    # step names follow time order: s_t is computed from s_{t-1}
    s = {n.name: n for n in nodes if n.name and n.name.startswith("s_")}
    for t in range(2, T + 1):
        assert s[f"s_{t - 1}"] in ag.toposort([s[f"s_{t}"]])
        assert s[f"s_{t}"] not in ag.toposort([s[f"s_{t - 1}"]])
    # the shared weights appear once
    assert names.count("W") == 1 and names.count("L") == 1


def test_unrolled_gradient_names_read_like_the_chain_rule():
    inputs, loss = elman()
    u = ag.unroll(loss, T=3)
    g = ag.grad(u, inputs[2])
    names = {n.name for n in ag.toposort([g]) if n.name}
    assert {"dL/ds_1", "dL/ds_2", "dL/ds_3"} <= names
    assert g.name == "dL/dW"


def test_lstm_tuple_carry_names():
    inputs, loss = lstm()
    names = {n.name for n in ag.toposort([ag.unroll(loss, T=3)]) if n.name}
    assert {"h_1", "h_2", "h_3", "c_1", "c_2", "c_3"} <= names


# ----------------------------------------------------------------------------- pinned T


def test_unrolled_graph_rejects_another_T():
    inputs, loss = elman()
    u = ag.unroll(loss, T=4)
    f = ag.function(inputs, u)
    f(*elman_values(4))  # fine
    for T in (3, 5):
        with pytest.raises(ag.InputError, match="T=4"):
            f(*elman_values(T))
    # the scan version takes any T
    g = ag.function(inputs, loss)
    g(*elman_values(3))
    g(*elman_values(5))


def test_unroll_symbolic_length_needs_T():
    inputs, loss = elman()
    with pytest.raises(ag.GraphError, match="T"):
        ag.unroll(loss)
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(ag.GraphError):
            ag.unroll(loss, T=bad)
    with pytest.raises(ag.GraphError):
        ag.unroll(loss, T=0)


def test_unroll_without_scan_is_identity():
    x = ag.placeholder("x", (3,))
    y = ag.sum(ag.tanh(x) * 2.0)
    assert ag.unroll(y) is y


# ----------------------------------------------------------------------------- scale


def test_unroll_10000_steps_builds_and_differentiates():
    X = ag.placeholder("X", ("T", 2))
    W = ag.placeholder("W", (2, 2))
    s0 = ag.placeholder("s0", (2,))

    def step(s, x):
        s = ag.tanh(s @ W + x, name="s")
        return s, s

    sT, S = ag.scan(step, s0, X)
    loss = ag.sum(S * S)
    T = 10_000
    start = time.perf_counter()
    u = ag.unroll(loss, T=T)
    gs = ag.grad(u, [W, s0])
    r = rng(10)
    vals = [r.standard_normal((T, 2)), 0.5 * r.standard_normal((2, 2)), r.standard_normal(2)]
    got = ag.function([X, W, s0], [u] + gs)(*vals)
    elapsed = time.perf_counter() - start
    want = ag.function([X, W, s0], [loss] + ag.grad(loss, [W, s0]))(*vals)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert elapsed < 30, elapsed


def test_100k_node_chain_sorts_and_differentiates():
    x = ag.placeholder("x", ())
    y = x
    n_steps = 50_000  # each step adds a mul, an add and a constant: 150k nodes
    for _ in range(n_steps):
        y = y * 0.999 + x
    nodes = ag.toposort([y])
    assert len(nodes) >= 100_000
    assert nodes[0] is x and nodes[-1] is y
    gx = ag.grad(y, x)
    # y = k x with k = 0.999^n + (1 - 0.999^n) / 0.001
    k = 0.999 ** n_steps + (1 - 0.999 ** n_steps) / 0.001
    val, grad = ag.function([x], [y, gx])(2.0)
    np.testing.assert_allclose(val, 2.0 * k, rtol=1e-10)
    np.testing.assert_allclose(grad, k, rtol=1e-10)

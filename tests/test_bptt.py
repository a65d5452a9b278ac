"""BPTT terms (rnn.bptt): checked against autograph.grad, finite differences on the
per-step weight copies, the course formula, truncated BPTT with stop_gradient, and
the vanishing / surviving norms of the course material."""
import numpy as np
import pytest

import autograph as ag
import rnn
from rnn.bptt import demo_cell, explain_gradient

RNG = np.random.default_rng(7)
XS = RNG.standard_normal((6, 2, 2))


def _explain(kind, param="W", T=6, **kw):
    cell = demo_cell(kind, 2, 3, scale=kw.pop("scale", 0.8), **kw)
    s0 = tuple(0.3 * RNG.standard_normal((2, 3)) for _ in cell.state_names)
    return explain_gradient(cell, XS[:T], param, state0=s0)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("param", ["W", "U", "b"])
def test_terms_add_up_to_autograph_grad(kind, param):
    ex = _explain(kind, param)
    assert np.allclose(ex.total(), ex.grad_total, rtol=0, atol=1e-12)
    # each L_t on its own: Σ_k of its terms is ∂L_t/∂W (the k > t terms are zero)
    assert np.all(ex.contributions[~ex.valid] == 0)
    assert ex.explicit.sum() == ex.T and ex.implicit.sum() == ex.T * (ex.T - 1) // 2


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_each_term_matches_finite_differences_on_its_copy(kind):
    ex = _explain(kind, T=4)
    W = ex.contributions.shape[2:]
    base = np.stack([_param(ex, kind)] * ex.T)
    eps = 1e-5
    for k in range(1, ex.T + 1):
        D = RNG.standard_normal(W)
        plus, minus = base.copy(), base.copy()
        plus[k - 1] += eps * D
        minus[k - 1] -= eps * D
        fd = (ex.step_losses(plus) - ex.step_losses(minus)) / (2 * eps)   # [T]: each L_t
        for t in range(1, ex.T + 1):
            assert fd[t - 1] == pytest.approx(np.vdot(ex.term(t, k), D), abs=1e-8)


def _param(ex, kind):
    return _CELLS[kind].params["W"]


_CELLS = {k: demo_cell(k, 2, 3, scale=0.8) for k in ("elman", "lstm", "gru")}


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_course_formula_from_jacobian_products(kind):
    ex = _explain(kind)
    for t in range(1, ex.T + 1):
        for k in range(1, t + 1):
            assert np.allclose(ex.formula_term(t, k), ex.term(t, k), atol=1e-13)


def test_jacobian_products_match_the_graph():
    """∂s_t/∂s_k from products of one-step Jacobians equals the unrolled graph's own
    derivative of s_t with respect to s_k (vjp per unit)."""
    cell = demo_cell("elman", 2, 3, scale=0.8)
    ex = explain_gradient(cell, XS[:5, :1])
    x = ag.placeholder("x", (5, 1, 2))
    s0 = ag.placeholder("s0", (1, 3))
    _, hs = rnn.run(cell, x, (s0,))
    hs_u = ag.unroll(hs)
    by_name = {n.name: n for n in ag.toposort([hs_u])}
    s2, s5 = by_name["s_2"], by_name["s_5"]
    rows = []
    for u in range(3):
        e = np.zeros((1, 3))
        e[0, u] = 1
        rows.append(ag.vjp([s5], [ag.constant(e)], [s2])[0])
    feed = [XS[:5, :1], np.zeros((1, 3))] + [cell.params[k] for k in ("U", "W", "b", "b_hh")]
    got = ag.function([x, s0] + [cell.p(k) for k in ("U", "W", "b", "b_hh")], rows)(*feed)
    assert np.allclose(np.concatenate(got), ex.jacobian_product(5, 2)[0], atol=1e-14)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_grad_steps_of_a_cell_are_the_copy_gradients(kind):
    """ag.grad_steps on the ordinary scan graph of an rnn cell (which closes over W.T,
    not W) gives per step k what the unrolled copy graph gives for W^(k)."""
    cell = demo_cell(kind, seed=4)
    xs = np.random.default_rng(4).standard_normal((5, 2, cell.input_size))
    ex = explain_gradient(cell, xs, "W")
    x = ag.placeholder("x", ("T", "B", cell.input_size))
    _, hs = rnn.run(cell, x)
    loss = ag.sum(hs)            # Σ_t L_t with explain_gradient's default L_t = Σ y_t
    steps = ag.function([x, *cell.nodes().values()], [ag.grad_steps(loss, cell.p("W"))])(
        ex.xs, *cell.state_dict().values())[0]
    np.testing.assert_allclose(steps, ex.contributions.sum(axis=0), rtol=1e-10, atol=1e-14)


def test_copies_identity_scalar_rnn():
    """The course's 'treat each W^(k) as its own weight and add' for the scalar RNN
    s_t = tanh(w·s_{t−1} + u·x_t), T = 4: ∂s_4/∂W = Σ_k ∂s_4/∂s_k ∂⁺s_k/∂W."""
    cell = rnn.Elman(1, 1, name="scalar")
    cell.params.update(U=np.array([[0.7]]), W=np.array([[0.9]]), b=np.zeros(1), b_hh=np.zeros(1))
    xs = np.array([[[1.0]], [[-0.5]], [[0.3]], [[0.8]]])
    only_4 = lambda y, t: ag.sum(y) * (1.0 if t == 4 else 0.0)
    ex = explain_gradient(cell, xs, "W", state0=(np.array([[0.2]]),), loss=only_4)
    s = [0.2]
    for x in xs[:, 0, 0]:
        s.append(np.tanh(0.9 * s[-1] + 0.7 * x))
    d = [1 - s[k] ** 2 for k in range(5)]                     # tanh' at step k
    explicit = [d[k] * s[k - 1] for k in range(1, 5)]         # ∂⁺s_k/∂W
    chain = lambda t, k: np.prod([d[j] * 0.9 for j in range(k + 1, t + 1)])
    for k in range(1, 5):
        assert ex.term(4, k)[0, 0] == pytest.approx(chain(4, k) * explicit[k - 1], rel=1e-12)
        assert ex.jacobian_product(4, k)[0, 0, 0] == pytest.approx(chain(4, k), rel=1e-12)
    assert ex.total()[0, 0] == pytest.approx(sum(chain(4, k) * explicit[k - 1]
                                                 for k in range(1, 5)), rel=1e-12)


def test_vanishing_in_elman_survival_in_lstm():
    T = 20
    xs = np.random.default_rng(0).standard_normal((T, 1, 2))
    elman = explain_gradient(demo_cell("elman", 2, 4, scale=0.5), xs)
    lstm = explain_gradient(demo_cell("lstm", 2, 4, scale=0.5, forget_bias=5.0), xs)
    e = elman.state_norms[T, 1]
    c = lstm.chain_norms("c")[T, 1]
    assert e < 1e-4                                   # tanh RNN, small weights: gone
    assert c > 0.7                                    # Π diag(f), f ≈ 1: kept
    # the c → c block of each one-step Jacobian is diag(f_j)
    J = lstm.jacobian(5)[0][4:, 4:]
    assert np.allclose(J, np.diag(np.diag(J))) and np.all(np.diag(J) > 0.99)
    # and ‖∂s_t/∂s_k‖ decays monotonically with the distance for the Elman cell
    row = elman.state_norms[T, :T + 1]
    assert np.all(np.diff(row) > 0)


def test_lstm_paths_through_h_and_c_add_up():
    ex = _explain("lstm", scale=0.8, forget_bias=1.0)
    assert np.allclose(ex.contribution_via("h") + ex.contribution_via("c"), ex.contributions,
                       atol=1e-14)
    assert np.all(ex.contribution_via("c")[ex.explicit] == 0)   # L_t reads h_t only
    assert ex.block(4, 2, "c", "c").shape == (2, 3, 3)
    with pytest.raises(KeyError, match="components"):
        ex.contribution_via("s")


def _truncated_reference(cell, xs, state0, K):
    """Truncated BPTT built independently: L_t sees the state K+1 steps back through
    stop_gradient, so its gradient reaches only W^(t−K) … W^(t)."""
    T, B, D = xs.shape
    x = ag.placeholder("x", (T, B, D))
    s0 = tuple(ag.placeholder(f"s0{i}", (B, 3)) for i in range(len(state0)))
    state, states = s0, [s0]
    for t in range(T):
        state, _ = cell.step(state, x[t])
        states.append(state)
    total = None
    for t in range(1, T + 1):
        start = max(0, t - K - 1)
        st = tuple(ag.stop_gradient(c) for c in states[start])
        for j in range(start, t):
            st, _ = cell.step(st, x[j])
        term = ag.sum(st[0])
        total = term if total is None else total + term
    g = ag.grad(total, cell.p("W"))
    inputs = [x, *s0] + [cell.p(k) for k in cell.params]
    return ag.function(inputs, g)(xs, *state0, *cell.params.values())


@pytest.mark.parametrize("kind", ["elman", "lstm"])
def test_truncation_equals_truncated_bptt(kind):
    cell = demo_cell(kind, 2, 3, scale=0.8)
    s0 = tuple(0.3 * np.ones((2, 3)) for _ in cell.state_names)
    ex = explain_gradient(cell, XS, "W", state0=s0)
    for K in (0, 2, 5):
        assert np.allclose(ex.truncated(K), _truncated_reference(cell, XS, s0, K), atol=1e-12)
    assert np.allclose(ex.truncated(ex.T), ex.total())


def test_clipping_matches_training_clip():
    ex = _explain("elman", scale=3.0)
    g, scale = ex.clipped(0.01)
    assert np.linalg.norm(g) == pytest.approx(0.01, rel=1e-9)
    ref, _ = rnn.clip_by_global_norm({"W": ex.total()}, 0.01)
    assert np.allclose(g, ref["W"]) and scale < 1
    assert ex.clipped(1e9)[1] == 1.0


def test_table_and_text():
    ex = _explain("lstm")
    text = str(ex)
    assert "explicit" in text and "implicit" in text and "via c_k" in text
    assert text.count("\n") > ex.T
    assert "max |difference|" in ex.summary()
    assert "k" in ex.table(2) and "L_2" in ex.table(2)
    with pytest.raises(IndexError):
        ex.table(ex.T + 1)
    assert "BPTTExplanation" in repr(ex)


def test_errors_name_the_problem():
    cell = demo_cell("elman", 2, 3)
    with pytest.raises(KeyError, match="no parameter 'V'"):
        explain_gradient(cell, XS, "V")
    with pytest.raises(ValueError, match="xs must be"):
        explain_gradient(cell, np.zeros((4, 1, 5)))
    with pytest.raises(TypeError, match="rnn cell"):
        explain_gradient(object(), XS)


def test_heatmap_pngs(tmp_path):
    ex = _explain("elman")
    fig = ex.heatmap(tmp_path / "h.png", truncate=2, clip=0.1)
    assert (tmp_path / "h.png").stat().st_size > 10_000
    from rnn.bptt_plots import compare
    compare({"Elman": ex, "LSTM": _explain("lstm", forget_bias=3.0)}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt
    plt.close("all")
    assert fig is not None

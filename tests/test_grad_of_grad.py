"""Second derivatives: the backward graph is an ordinary graph, so grad can run on it."""
import numpy as np
import pytest

import autograph as ag

TOL = 1e-6


def run(inputs, outputs, *values):
    return ag.function(inputs, outputs)(*values)


def _away(rng, shape, margin=0.3):
    return rng.uniform(margin, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


UNARY = {
    "tanh": (ag.tanh, lambda r, s: r.standard_normal(s)),
    "sigmoid": (ag.sigmoid, lambda r, s: r.standard_normal(s)),
    "exp": (ag.exp, lambda r, s: r.standard_normal(s)),
    "log": (ag.log, lambda r, s: r.uniform(0.5, 3.0, s)),
    "sqrt": (ag.sqrt, lambda r, s: r.uniform(0.5, 3.0, s)),
    "square": (ag.square, lambda r, s: r.standard_normal(s)),
    "neg": (ag.negative, lambda r, s: r.standard_normal(s)),
    "abs": (ag.abs, _away),
    "relu": (ag.relu, _away),
    "softmax": (ag.softmax, lambda r, s: r.standard_normal(s)),
    "log_softmax": (ag.log_softmax, lambda r, s: r.standard_normal(s)),
    "logsumexp": (lambda x: ag.logsumexp(x, -1, keepdims=True), lambda r, s: r.standard_normal(s)),
    "x**3": (lambda x: x ** 3, lambda r, s: r.standard_normal(s)),
    "1/x": (lambda x: 1.0 / x, _away),
    "mean": (lambda x: ag.mean(x, 0, keepdims=True), lambda r, s: r.standard_normal(s)),
    "tanh_of_sigmoid": (lambda x: ag.tanh(ag.sigmoid(x) * 3), lambda r, s: r.standard_normal(s)),
}


def hvp_objective(y, x, rng):
    """sum(grad(sum(y * w), x) * v) for fixed random w, v: a Hessian-vector product."""
    w = ag.constant(rng.standard_normal(tuple(y.shape)))
    g = ag.grad(ag.sum(y * w), x)
    v = ag.constant(rng.standard_normal(tuple(x.shape)))
    return ag.sum(g * v)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_second_derivative_unary(name, rng, assert_grad):
    f, sample = UNARY[name]
    x = ag.placeholder("x", (3, 4))
    xv = sample(rng, (3, 4))
    assert_grad(hvp_objective(f(x), x, rng), [x], [xv], TOL)


BINARY = {
    "add": (lambda a, b: a + b, None),
    "sub": (lambda a, b: a - b, None),
    "mul": (lambda a, b: a * b, None),
    "div": (lambda a, b: a / b, "b_away"),
    "pow": (lambda a, b: a ** b, "a_positive"),
    "maximum": (ag.maximum, "no_ties"),
    "minimum": (ag.minimum, "no_ties"),
    "where": (lambda a, b: ag.where(a > b, a * b, a / (b * b + 1)), "no_ties"),
}


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((4,), (3, 4))],
                         ids=str)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_second_derivative_binary(name, shapes, rng, assert_grad):
    f, domain = BINARY[name]
    sa, sb = shapes
    a, b = ag.placeholder("a", sa), ag.placeholder("b", sb)
    av, bv = rng.standard_normal(sa), rng.standard_normal(sb)
    if domain == "b_away":
        bv = _away(rng, sb)
    elif domain == "a_positive":
        av = rng.uniform(0.5, 2.0, sa)
    elif domain == "no_ties":
        av = rng.integers(-4, 4, sa) * 0.5 + 0.25
        bv = rng.integers(-4, 4, sb) * 0.5
    y = f(a, b)
    w = ag.constant(rng.standard_normal(tuple(y.shape)))
    ga, gb = ag.grad(ag.sum(y * w), [a, b])
    va = ag.constant(rng.standard_normal(sa))
    vb = ag.constant(rng.standard_normal(sb))
    for y2 in (ag.sum(ga * va), ag.sum(gb * vb), ag.sum(ga * va) + ag.sum(gb * vb)):
        assert_grad(y2, [a, b], [av, bv], TOL)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 2)), ((4,), (4, 3))],
                         ids=str)
def test_second_derivative_matmul(shapes, rng, assert_grad):
    sa, sb = shapes
    a, b = ag.placeholder("a", sa), ag.placeholder("b", sb)
    av, bv = rng.standard_normal(sa) * 0.5, rng.standard_normal(sb) * 0.5
    y = ag.tanh(a @ b)
    w = ag.constant(rng.standard_normal(tuple(y.shape)))
    ga, gb = ag.grad(ag.sum(y * w), [a, b])
    va, vb = ag.constant(rng.standard_normal(sa)), ag.constant(rng.standard_normal(sb))
    assert_grad(ag.sum(ga * va) + ag.sum(gb * vb), [a, b], [av, bv], TOL)


def test_second_derivative_of_bilinear_matmul_is_exact(rng):
    """y = sum(A @ B * W): d/dB of sum(dy/dA * V) is V^T W... exactly, no tanh."""
    a, b = ag.placeholder("a", (3, 4)), ag.placeholder("b", (4, 5))
    W, V = rng.standard_normal((3, 5)), rng.standard_normal((3, 4))
    ga = ag.grad(ag.sum((a @ b) * ag.constant(W)), a)  # = W @ B^T
    gb2 = ag.grad(ag.sum(ga * ag.constant(V)), b)      # = d/dB tr(V^T W B^T) = V^T W
    out = run([a, b], gb2, rng.standard_normal((3, 4)), rng.standard_normal((4, 5)))
    np.testing.assert_allclose(out, V.T @ W, rtol=1e-13)


def test_reductions_second_derivative(rng, assert_grad):
    x = ag.placeholder("x", (2, 3, 4))
    xv = (rng.permutation(24) * 0.1 - 0.987).reshape(2, 3, 4)  # no |x| ties either
    y = ag.max(ag.tanh(x) * x, axis=(0, 2)) + ag.min(ag.sum(x * x, axis=2), axis=0)
    assert_grad(hvp_objective(y, x, rng), [x], [xv], TOL)


def test_third_derivative_scalar():
    """d³/dx³ tanh(x) = -2 (1 - t²)(1 - 3 t²) with t = tanh(x)."""
    x = ag.placeholder("x", ())
    g1 = ag.grad(ag.tanh(x), x)
    g2 = ag.grad(g1, x)
    g3 = ag.grad(g2, x)
    for xv in (-1.3, 0.0, 0.4, 2.0):
        t = np.tanh(xv)
        out = run([x], [g1, g2, g3], np.array(xv))
        np.testing.assert_allclose(out, [1 - t * t, -2 * t * (1 - t * t),
                                         -2 * (1 - t * t) * (1 - 3 * t * t)],
                                   rtol=1e-12, atol=1e-15)


def hessian(y, x, n):
    """The n x n Hessian of the scalar y w.r.t. the vector x, one grad per row."""
    g = ag.grad(y, x)
    return ag.stack([ag.grad(g[i], x) for i in range(n)], 0)


def test_hessian_of_sum_tanh_matvec(rng):
    """y = sum(tanh(W x)):  H = W^T diag(-2 tanh(u) (1 - tanh(u)^2)) W,  u = W x."""
    W = ag.placeholder("W", (5, 3))
    x = ag.placeholder("x", (3,))
    Wv, xv = rng.standard_normal((5, 3)), rng.standard_normal(3)
    H = run([W, x], hessian(ag.sum(ag.tanh(W @ x)), x, 3), Wv, xv)
    t = np.tanh(Wv @ xv)
    expected = Wv.T @ np.diag(-2 * t * (1 - t * t)) @ Wv
    np.testing.assert_allclose(H, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)


def test_hessian_of_log_sum_exp(rng):
    """y = logsumexp(x): H = diag(p) - p p^T with p = softmax(x)."""
    x = ag.placeholder("x", (4,))
    xv = rng.standard_normal(4) * 3
    H = run([x], hessian(ag.logsumexp(x), x, 4), xv)
    p = np.exp(xv - xv.max())
    p /= p.sum()
    np.testing.assert_allclose(H, np.diag(p) - np.outer(p, p), rtol=1e-12, atol=1e-15)


def test_hessian_of_quadratic_form(rng):
    """y = x^T A x / 2 + b·x: H = (A + A^T) / 2 exactly."""
    x = ag.placeholder("x", (4,))
    A, b = rng.standard_normal((4, 4)), rng.standard_normal(4)
    y = (x @ (ag.constant(A) @ x)) / 2 + x @ b
    H = run([x], hessian(y, x, 4), rng.standard_normal(4))
    np.testing.assert_allclose(H, (A + A.T) / 2, rtol=1e-14, atol=1e-15)


def test_hessian_of_cross_entropy(rng):
    """Sum cross-entropy of one example: H = diag(p) - p p^T, independent of the target."""
    logits = ag.placeholder("logits", (1, 4))
    target = ag.placeholder("target", (1,), "int64")
    lv = rng.standard_normal((1, 4))
    y = ag.cross_entropy(logits, target, "sum")
    g = ag.grad(y, logits)
    H = ag.stack([ag.grad(g[0, i], logits)[0] for i in range(4)], 0)
    p = np.exp(lv[0] - lv.max())
    p /= p.sum()
    for tv in (0, 3):
        out = run([logits, target], H, lv, np.array([tv]))
        np.testing.assert_allclose(out, np.diag(p) - np.outer(p, p), rtol=1e-12, atol=1e-15)

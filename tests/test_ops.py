"""Every user-facing op: forward value against NumPy, gradient against finite differences."""
import numpy as np
import pytest

import autograph as ag

TOL = 1e-6


def run(inputs, outputs, *values):
    return ag.function(inputs, outputs)(*values)


def weighted_sum(y, rng):
    """sum(y * w) for a fixed random w: every output element gets its own weight."""
    w = rng.standard_normal(tuple(y.shape)) if y.shape else 1.3
    return ag.sum(y * ag.constant(w))


def away_from_zero(rng, shape, margin=0.2):
    x = rng.uniform(margin, 2.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- unary

UNARY = {
    "tanh": (ag.tanh, np.tanh, "any"),
    "sigmoid": (ag.sigmoid, _sigmoid, "any"),
    "relu": (ag.relu, lambda x: np.maximum(x, 0), "nonzero"),
    "exp": (ag.exp, np.exp, "any"),
    "log": (ag.log, np.log, "positive"),
    "sqrt": (ag.sqrt, np.sqrt, "positive"),
    "square": (ag.square, np.square, "any"),
    "abs": (ag.abs, np.abs, "nonzero"),
    "abs_operator": (lambda x: abs(x), np.abs, "nonzero"),
    "neg": (ag.negative, np.negative, "any"),
    "neg_operator": (lambda x: -x, np.negative, "any"),
    "pos_operator": (lambda x: +x, lambda x: x, "any"),
}


def _unary_input(rng, domain, shape=(3, 4)):
    if domain == "positive":
        return rng.uniform(0.3, 3.0, size=shape)
    if domain == "nonzero":
        return away_from_zero(rng, shape)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_forward_and_grad(name, rng, assert_grad):
    f, ref, domain = UNARY[name]
    x = ag.placeholder("x", (3, 4))
    xv = _unary_input(rng, domain)
    y = f(x)
    assert y.shape == (3, 4) and y.dtype == "float64"
    np.testing.assert_allclose(run([x], y, xv), ref(xv), rtol=1e-13, atol=1e-15)
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


def test_sigmoid_is_stable_for_large_inputs():
    x = ag.placeholder("x", (4,))
    xv = np.array([-1000.0, -50.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = run([x], ag.sigmoid(x), xv)
    np.testing.assert_allclose(out, [0.0, np.exp(-50.0), 1.0, 1.0], rtol=1e-12, atol=0)


def test_sign_forward_and_zero_grad():
    x = ag.placeholder("x", (5,))
    xv = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(run([x], ag.sign(x), xv), np.sign(xv))
    g = ag.grad(ag.sum(ag.sign(x) * x), x)  # d/dx (sign(x) x) = sign(x) away from 0
    np.testing.assert_array_equal(run([x], g, xv), np.sign(xv))


def test_relu_grad_is_step_function():
    x = ag.placeholder("x", (4,))
    xv = np.array([-1.5, -0.1, 0.2, 3.0])
    g = ag.grad(ag.sum(ag.relu(x)), x)
    np.testing.assert_array_equal(run([x], g, xv), [0.0, 0.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- binary

BINARY = {
    "add": (ag.add, np.add, lambda a, b: a + b),
    "sub": (ag.subtract, np.subtract, lambda a, b: a - b),
    "mul": (ag.multiply, np.multiply, lambda a, b: a * b),
    "div": (ag.divide, np.divide, lambda a, b: a / b),
    "pow": (ag.power, np.power, lambda a, b: a ** b),
    "maximum": (ag.maximum, np.maximum, None),
    "minimum": (ag.minimum, np.minimum, None),
}

BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),
    ((4,), (3, 4)),
    ((3, 4), ()),
    ((), (2, 3)),
    ((2, 1, 4), (3, 1)),
]


def _binary_inputs(rng, name, sa, sb):
    if name == "pow":
        return rng.uniform(0.5, 2.0, sa), rng.uniform(-1.5, 1.5, sb)
    if name == "div":
        return rng.standard_normal(sa), away_from_zero(rng, sb, 0.5)
    if name in ("maximum", "minimum"):
        # a on a grid offset by 0.25 from b's grid: the operands never tie.
        return rng.integers(-4, 4, sa) * 0.5 + 0.25, rng.integers(-4, 4, sb) * 0.5 + 0.0
    return rng.standard_normal(sa), rng.standard_normal(sb)


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("name,style", [(n, "function") for n in sorted(BINARY)] +
                         [(n, "operator") for n in sorted(BINARY) if BINARY[n][2]])
def test_binary_forward_and_grad(name, shapes, style, rng, assert_grad):
    fn, ref, operator = BINARY[name]
    if style == "operator":
        fn = operator
    sa, sb = shapes
    a, b = ag.placeholder("a", sa), ag.placeholder("b", sb)
    av, bv = _binary_inputs(rng, name, sa, sb)
    y = fn(a, b)
    expected = ref(av, bv)
    assert y.shape == expected.shape
    np.testing.assert_allclose(run([a, b], y, av, bv), expected, rtol=1e-13, atol=1e-15)
    assert_grad(weighted_sum(y, rng), [a, b], [av, bv], TOL)


SCALAR_CASES = {
    "x+s": (lambda x: x + 2.5, lambda x: x + 2.5),
    "s+x": (lambda x: 2.5 + x, lambda x: 2.5 + x),
    "x-s": (lambda x: x - 1.5, lambda x: x - 1.5),
    "s-x": (lambda x: 1.5 - x, lambda x: 1.5 - x),
    "x*s": (lambda x: x * 3, lambda x: x * 3),
    "s*x": (lambda x: 3 * x, lambda x: 3 * x),
    "x/s": (lambda x: x / 4.0, lambda x: x / 4.0),
    "s/x": (lambda x: 2.0 / x, lambda x: 2.0 / x),
    "x**s": (lambda x: x ** 3, lambda x: x ** 3),
    "x**frac": (lambda x: x ** 0.5, lambda x: x ** 0.5),
    "s**x": (lambda x: 2.0 ** x, lambda x: 2.0 ** x),
    "maximum(x,s)": (lambda x: ag.maximum(x, 1.0), lambda x: np.maximum(x, 1.0)),
    "minimum(s,x)": (lambda x: ag.minimum(1.0, x), lambda x: np.minimum(1.0, x)),
    "array+x": (lambda x: np.arange(4.0) + x, lambda x: np.arange(4.0) + x),
}


@pytest.mark.parametrize("case", sorted(SCALAR_CASES))
def test_python_scalar_operands(case, rng, assert_grad):
    fn, ref = SCALAR_CASES[case]
    x = ag.placeholder("x", (3, 4))
    xv = rng.uniform(0.3, 0.9, (3, 4)) * rng.choice([1.0, 2.5], (3, 4))  # never exactly 1.0
    y = fn(x)
    assert y.dtype == "float64" and y.shape == (3, 4)
    np.testing.assert_allclose(run([x], y, xv), ref(xv), rtol=1e-13)
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


def test_where_forward_and_grad(rng, assert_grad):
    m = ag.placeholder("m", (3, 1), "bool")
    a = ag.placeholder("a", (3, 4))
    b = ag.placeholder("b", (4,))
    mv = np.array([[True], [False], [True]])
    av, bv = rng.standard_normal((3, 4)), rng.standard_normal(4)
    y = ag.where(m, a, b)
    np.testing.assert_array_equal(run([m, a, b], y, mv, av, bv), np.where(mv, av, bv))
    assert_grad(weighted_sum(y, rng), [m, a, b], [mv, av, bv], TOL)
    ga, gb = ag.grad(ag.sum(y), [a, b])
    gav, gbv = run([m, a, b], [ga, gb], mv, av, bv)
    np.testing.assert_array_equal(gav, np.broadcast_to(mv, (3, 4)).astype(float))
    np.testing.assert_array_equal(gbv, np.full(4, 1.0))  # one row of three is b


def test_where_with_scalar_branch(rng, assert_grad):
    x = ag.placeholder("x", (3, 4))
    xv = away_from_zero(rng, (3, 4))
    y = ag.where(x > 0, x * x, 0.5)
    np.testing.assert_allclose(run([x], y, xv), np.where(xv > 0, xv * xv, 0.5))
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


def test_clip_forward_and_grad(rng, assert_grad):
    x = ag.placeholder("x", (12,))
    xv = np.array([-3, -1.2, -0.8, -0.3, 0.1, 0.4, 0.6, 0.9, 1.3, 2.0, -2.1, 0.0]) + 0.05
    y = ag.clip(x, -1.0, 1.0)
    np.testing.assert_array_equal(run([x], y, xv), np.clip(xv, -1.0, 1.0))
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)
    g = run([x], ag.grad(ag.sum(y), x), xv)
    np.testing.assert_array_equal(g, ((xv > -1) & (xv < 1)).astype(float))


# ----------------------------------------------------------------------------- reductions

AXES = [None, 0, 1, -1, (0, 2), (-1, -3), (0, 1, 2), ()]


def _distinct(rng, shape):
    """Values at least 0.1 apart, so max/min never tie within the finite-difference step."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 - 1.0 + rng.uniform(0, 0.01, n)).reshape(shape)


REDUCTIONS = {
    "sum": (ag.sum, np.sum),
    "mean": (ag.mean, np.mean),
    "max": (ag.max, np.max),
    "min": (ag.min, np.min),
}


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_forward_and_grad(name, axis, keepdims, rng, assert_grad):
    fn, ref = REDUCTIONS[name]
    x = ag.placeholder("x", (2, 3, 4))
    xv = _distinct(rng, (2, 3, 4))
    y = fn(x, axis=axis, keepdims=keepdims)
    expected = ref(xv, axis=axis, keepdims=keepdims)
    assert y.shape == expected.shape
    np.testing.assert_allclose(run([x], y, xv), expected, rtol=1e-13)
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reduction_methods(name, rng):
    x = ag.placeholder("x", (2, 3))
    xv = _distinct(rng, (2, 3))
    y = getattr(x, name)(axis=1)
    np.testing.assert_allclose(run([x], y, xv), getattr(np, name)(xv, axis=1), rtol=1e-13)


def test_max_ties_share_gradient():
    x = ag.placeholder("x", (4,))
    xv = np.array([1.0, 3.0, 3.0, 2.0])
    g = run([x], ag.grad(ag.max(x), x), xv)
    np.testing.assert_array_equal(g, [0.0, 0.5, 0.5, 0.0])


def test_sum_of_bool_counts():
    m = ag.placeholder("m", (5,), "bool")
    y = ag.sum(m)
    assert y.dtype == "int64"
    assert run([m], y, np.array([True, False, True, True, False])) == 3


def test_mean_with_symbolic_dim(rng, assert_grad):
    x = ag.placeholder("x", ("B", 3))
    y = ag.mean(x, axis=0)
    for b in (2, 5):
        xv = rng.standard_normal((b, 3))
        np.testing.assert_allclose(run([x], y, xv), xv.mean(axis=0), rtol=1e-13)
    assert_grad(weighted_sum(y, rng), [x], [rng.standard_normal((4, 3))], TOL)


# ----------------------------------------------------------------------------- softmax family

def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _np_logsumexp(x, axis, keepdims):
    m = x.max(axis=axis, keepdims=True)
    out = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


SOFTMAXES = {
    "softmax": (lambda x, axis: ag.softmax(x, axis),
                lambda x, axis: np.exp(_np_log_softmax(x, axis))),
    "log_softmax": (lambda x, axis: ag.log_softmax(x, axis), _np_log_softmax),
    "logsumexp": (lambda x, axis: ag.logsumexp(x, axis),
                  lambda x, axis: _np_logsumexp(x, axis, False)),
    "logsumexp_keepdims": (lambda x, axis: ag.logsumexp(x, axis, keepdims=True),
                           lambda x, axis: _np_logsumexp(x, axis, True)),
}


@pytest.mark.parametrize("scale", [1.0, 1000.0])
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("name", sorted(SOFTMAXES))
def test_softmax_family(name, axis, scale, rng, assert_grad):
    fn, ref = SOFTMAXES[name]
    x = ag.placeholder("x", (3, 4, 5))
    xv = rng.standard_normal((3, 4, 5)) * 2 + scale
    y = fn(x, axis)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = run([x], y, xv)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref(xv, axis), rtol=1e-12, atol=1e-14)
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


def test_softmax_stability_with_logits_of_1000():
    x = ag.placeholder("x", (3,))
    xv = np.array([1000.0, 1000.0, 999.0])
    e = np.exp([0.0, 0.0, -1.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sm, lsm, lse = run([x], [ag.softmax(x), ag.log_softmax(x), ag.logsumexp(x)], xv)
    np.testing.assert_allclose(sm, e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(lsm, np.log(e / e.sum()), rtol=1e-14)
    np.testing.assert_allclose(lse, 1000.0 + np.log(e.sum()), rtol=1e-14)
    g = run([x], ag.grad(ag.logsumexp(x), x), xv)
    np.testing.assert_allclose(g, e / e.sum(), rtol=1e-14)


def test_softmax_rows_sum_to_one(rng):
    x = ag.placeholder("x", (4, 6))
    out = run([x], ag.softmax(x), rng.standard_normal((4, 6)) * 30)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5), (5,)], ids=str)
def test_cross_entropy(reduction, shape, rng, assert_grad):
    logits = ag.placeholder("logits", shape)
    targets = ag.placeholder("targets", shape[:-1], "int64")
    lv = rng.standard_normal(shape) * 3
    tv = rng.integers(0, shape[-1], shape[:-1])
    y = ag.cross_entropy(logits, targets, reduction=reduction)
    losses = -np.take_along_axis(_np_log_softmax(lv, -1), tv[..., None], -1)[..., 0]
    expected = {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]
    assert y.shape == np.shape(expected)
    np.testing.assert_allclose(run([logits, targets], y, lv, tv), expected, rtol=1e-13)
    assert_grad(weighted_sum(y, rng), [logits, targets], [lv, tv], TOL)
    if reduction == "sum":  # the textbook gradient: softmax(logits) - one_hot(targets)
        g = run([logits, targets], ag.grad(y, logits), lv, tv)
        p = np.exp(_np_log_softmax(lv, -1))
        np.testing.assert_allclose(g, p - np.eye(shape[-1])[tv], rtol=1e-12, atol=1e-15)


def test_cross_entropy_large_logits_finite():
    logits = ag.placeholder("logits", (2, 3))
    targets = ag.placeholder("targets", (2,), "int64")
    lv = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = run([logits, targets], ag.cross_entropy(logits, targets, "none"), lv,
                  np.array([0, 0]))
    np.testing.assert_allclose(out, [0.0, 1000.0], atol=1e-12)


# ----------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
@pytest.mark.parametrize("style", ["matmul", "operator"])
def test_matmul(shapes, style, rng, assert_grad):
    sa, sb = shapes
    a, b = ag.placeholder("a", sa), ag.placeholder("b", sb)
    av, bv = rng.standard_normal(sa), rng.standard_normal(sb)
    y = ag.matmul(a, b) if style == "matmul" else a @ b
    expected = np.matmul(av, bv)
    assert y.shape == np.shape(expected)
    np.testing.assert_allclose(run([a, b], y, av, bv), expected, rtol=1e-12, atol=1e-14)
    assert_grad(weighted_sum(y, rng), [a, b], [av, bv], TOL)


def test_matmul_with_constant_array(rng, assert_grad):
    a = ag.placeholder("a", (3, 4))
    m = rng.standard_normal((4, 2))
    av = rng.standard_normal((3, 4))
    for y, expected in [(a @ m, av @ m), (m.T @ a.T, m.T @ av.T)]:
        np.testing.assert_allclose(run([a], y, av), expected, rtol=1e-12)
        assert_grad(weighted_sum(y, rng), [a], [av], TOL)


# ----------------------------------------------------------------------------- shape ops

SHAPE_OPS = {
    "reshape": (lambda x: ag.reshape(x, (6, 4)), lambda x: x.reshape(6, 4)),
    "reshape_-1": (lambda x: ag.reshape(x, (-1, 2)), lambda x: x.reshape(-1, 2)),
    "reshape_method": (lambda x: x.reshape(4, -1), lambda x: x.reshape(4, -1)),
    "reshape_flat": (lambda x: ag.reshape(x, -1), lambda x: x.reshape(-1)),
    "transpose": (lambda x: ag.transpose(x), lambda x: x.transpose()),
    "transpose_axes": (lambda x: ag.transpose(x, (1, 0, 2)), lambda x: x.transpose(1, 0, 2)),
    "transpose_neg": (lambda x: ag.transpose(x, (-1, 0, 1)), lambda x: x.transpose(-1, 0, 1)),
    "transpose_method": (lambda x: x.transpose(2, 0, 1), lambda x: x.transpose(2, 0, 1)),
    ".T": (lambda x: x.T, lambda x: x.T),
    "broadcast_to": (lambda x: ag.broadcast_to(x, (5, 2, 3, 4)),
                     lambda x: np.broadcast_to(x, (5, 2, 3, 4))),
    "expand_dims_0": (lambda x: ag.expand_dims(x, 0), lambda x: np.expand_dims(x, 0)),
    "expand_dims_-1": (lambda x: ag.expand_dims(x, -1), lambda x: np.expand_dims(x, -1)),
    "expand_dims_mid": (lambda x: ag.expand_dims(x, 2), lambda x: np.expand_dims(x, 2)),
    "squeeze": (lambda x: ag.squeeze(ag.expand_dims(x, 1), 1), lambda x: x),
    "squeeze_neg": (lambda x: ag.squeeze(ag.reshape(x, (2, 3, 4, 1)), -1), lambda x: x),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_ops(name, rng, assert_grad):
    fn, ref = SHAPE_OPS[name]
    x = ag.placeholder("x", (2, 3, 4))
    xv = rng.standard_normal((2, 3, 4))
    y = fn(x)
    expected = ref(xv)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(run([x], y, xv), expected)
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


def test_broadcast_to_of_size_one_axes(rng, assert_grad):
    x = ag.placeholder("x", (3, 1))
    xv = rng.standard_normal((3, 1))
    y = ag.broadcast_to(x, (2, 3, 4))
    np.testing.assert_array_equal(run([x], y, xv), np.broadcast_to(xv, (2, 3, 4)))
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)
    np.testing.assert_array_equal(run([x], ag.grad(ag.sum(y), x), xv), np.full((3, 1), 8.0))


INDEXES = {
    "int": 1,
    "neg_int": -1,
    "slice": slice(1, 3),
    "slice_step": (slice(None), slice(0, 4, 2)),
    "neg_step": slice(None, None, -1),
    "neg_step_inner": (Ellipsis, slice(3, 0, -2)),
    "int_int": (1, 2),
    "int_slice_int": (0, slice(1, None), -2),
    "none": (None,),
    "none_mid": (slice(None), None, 1),
    "ellipsis_int": (Ellipsis, 0),
    "ellipsis_none": (Ellipsis, None),
    "int_ellipsis": (1, Ellipsis),
    "all": (Ellipsis,),
    "full_slices": (slice(None), slice(None), slice(None)),
    "empty_slice": slice(2, 2),
    "np_int": np.int64(1),
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_getitem(name, rng, assert_grad):
    key = INDEXES[name]
    x = ag.placeholder("x", (2, 3, 4))
    xv = rng.standard_normal((2, 3, 4))
    y = x[key]
    expected = xv[key]
    assert y.shape == expected.shape
    np.testing.assert_array_equal(run([x], y, xv), expected)
    if expected.size:
        assert_grad(weighted_sum(y, rng), [x], [xv], TOL)
    g = run([x], ag.grad(ag.sum(y), x), xv)  # ones where x was picked, zeros elsewhere
    picked = np.zeros_like(xv)
    picked[key] = 1.0
    np.testing.assert_array_equal(g, picked)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis, rng, assert_grad):
    shapes = [(2, 3), (2, 3), (2, 3)]
    shapes = [tuple(s[i] + (k if i == axis % 2 else 0) for i in range(2))
              for k, s in enumerate(shapes)]
    xs = [ag.placeholder(f"x{k}", s) for k, s in enumerate(shapes)]
    vs = [rng.standard_normal(s) for s in shapes]
    y = ag.concat(xs, axis)
    np.testing.assert_array_equal(run(xs, y, *vs), np.concatenate(vs, axis))
    assert_grad(weighted_sum(y, rng), xs, vs, TOL)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis, rng, assert_grad):
    xs = [ag.placeholder(f"x{k}", (2, 3)) for k in range(3)]
    vs = [rng.standard_normal((2, 3)) for _ in range(3)]
    y = ag.stack(xs, axis)
    np.testing.assert_array_equal(run(xs, y, *vs), np.stack(vs, axis))
    assert_grad(weighted_sum(y, rng), xs, vs, TOL)


def test_concat_same_value_twice(rng, assert_grad):
    x = ag.placeholder("x", (2, 3))
    xv = rng.standard_normal((2, 3))
    y = ag.concat([x, x * 2], 0)
    np.testing.assert_array_equal(run([x], y, xv), np.concatenate([xv, 2 * xv]))
    np.testing.assert_array_equal(run([x], ag.grad(ag.sum(y), x), xv), np.full((2, 3), 3.0))


@pytest.mark.parametrize("idx_shape", [(5,), (2, 3), ()], ids=str)
def test_take_embedding_lookup(idx_shape, rng, assert_grad):
    table = ag.placeholder("table", (6, 3))
    idx = ag.placeholder("idx", idx_shape, "int64")
    tv = rng.standard_normal((6, 3))
    iv = np.array(rng.integers(0, 6, idx_shape))
    for y in (ag.take(table, idx), table[idx]):
        assert y.shape == idx_shape + (3,)
        np.testing.assert_array_equal(run([table, idx], y, tv, iv), tv[iv])
        assert_grad(weighted_sum(y, rng), [table, idx], [tv, iv], TOL)


def test_take_repeated_indices_accumulate(rng, assert_grad):
    table = ag.placeholder("table", (4, 2))
    idx = ag.placeholder("idx", (6,), "int64")
    tv = rng.standard_normal((4, 2))
    iv = np.array([1, 3, 1, 1, 0, 3])
    y = ag.take(table, idx)
    g = run([table, idx], ag.grad(ag.sum(y), table), tv, iv)
    counts = np.bincount(iv, minlength=4).astype(float)
    np.testing.assert_array_equal(g, np.repeat(counts[:, None], 2, axis=1))
    assert_grad(ag.sum(ag.tanh(y) * ag.constant(rng.standard_normal((6, 2)))),
                [table, idx], [tv, iv], TOL)


def test_one_hot(rng):
    idx = ag.placeholder("idx", (2, 3), "int64")
    iv = rng.integers(0, 5, (2, 3))
    for dtype in ("float64", "float32", "int64", "bool"):
        y = ag.one_hot(idx, 5, dtype)
        assert y.shape == (2, 3, 5) and y.dtype == dtype
        out = run([idx], y, iv)
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, np.eye(5, dtype=dtype)[iv])


def test_one_hot_has_no_gradient_but_flows_to_others(rng, assert_grad):
    idx = ag.placeholder("idx", (4,), "int64")
    x = ag.placeholder("x", (4, 3))
    iv, xv = rng.integers(0, 3, 4), rng.standard_normal((4, 3))
    y = ag.sum(ag.one_hot(idx, 3) * ag.tanh(x))
    assert_grad(y, [idx, x], [iv, xv], TOL)


# ----------------------------------------------------------------------------- cast, stop_gradient

@pytest.mark.parametrize("src,dst", [("float64", "float32"), ("float64", "int64"),
                                     ("float64", "bool"), ("int64", "float64"),
                                     ("bool", "float64"), ("float32", "float64"),
                                     ("float64", np.float32), ("float64", "float64")])
def test_cast_forward(src, dst, rng):
    x = ag.placeholder("x", (3, 4), src)
    xv = (rng.standard_normal((3, 4)) * 3).astype(src)
    y = ag.cast(x, dst)
    assert y.dtype == np.dtype(dst).name
    out = run([x], y, xv)
    assert out.dtype == np.dtype(dst)
    np.testing.assert_array_equal(out, xv.astype(dst))
    np.testing.assert_array_equal(run([x], x.astype(dst), xv), xv.astype(dst))


def test_cast_gradient_between_floats(rng):
    x = ag.placeholder("x", (3,), "float32")
    w = rng.standard_normal(3)
    g = ag.grad(ag.sum(ag.cast(x, "float64") * ag.constant(w)), x)
    assert g.dtype == "float32"
    out = run([x], g, np.ones(3, np.float32))
    np.testing.assert_array_equal(out, w.astype(np.float32))


def test_cast_to_int_blocks_gradient(rng):
    x = ag.placeholder("x", (3,))
    y = ag.sum(ag.cast(ag.cast(x, "int64"), "float64") * x)
    g = run([x], ag.grad(y, x), np.array([1.5, 2.5, -3.5]))
    np.testing.assert_array_equal(g, [1.0, 2.0, -3.0])  # only the direct x factor


def test_stop_gradient(rng, assert_grad):
    x = ag.placeholder("x", (3, 4))
    xv = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(run([x], ag.stop_gradient(x), xv), xv)
    g = run([x], ag.grad(ag.sum(ag.stop_gradient(x) * 3), x), xv)
    np.testing.assert_array_equal(g, np.zeros((3, 4)))
    g = run([x], ag.grad(ag.sum(ag.stop_gradient(x) * x), x), xv)
    np.testing.assert_array_equal(g, xv)  # not 2x


# ----------------------------------------------------------------------------- comparisons, logic

COMPARISONS = {
    "greater": (ag.greater, np.greater, lambda a, b: a > b),
    "greater_equal": (ag.greater_equal, np.greater_equal, lambda a, b: a >= b),
    "less": (ag.less, np.less, lambda a, b: a < b),
    "less_equal": (ag.less_equal, np.less_equal, lambda a, b: a <= b),
    "equal": (ag.equal, np.equal, None),
    "not_equal": (ag.not_equal, np.not_equal, None),
}


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_comparisons(name, rng):
    fn, ref, operator = COMPARISONS[name]
    a, b = ag.placeholder("a", (3, 1)), ag.placeholder("b", (4,))
    av = rng.integers(-2, 3, (3, 1)).astype(float)
    bv = rng.integers(-2, 3, 4).astype(float)
    fns = [fn] + ([operator] if operator else [])
    for f in fns:
        y = f(a, b)
        assert y.dtype == "bool" and y.shape == (3, 4)
        out = run([a, b], y, av, bv)
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, ref(av, bv))
        # A comparison has no gradient: its float cast contributes nothing.
        ga, gb = ag.grad(ag.sum(ag.cast(y, "float64")), [a, b])
        np.testing.assert_array_equal(run([a, b], ga, av, bv), np.zeros((3, 1)))
        np.testing.assert_array_equal(run([a, b], gb, av, bv), np.zeros(4))
    np.testing.assert_array_equal(run([a], fn(a, 0.0), av), ref(av, 0.0))


def test_comparisons_on_ints(rng):
    a = ag.placeholder("a", (5,), "int64")
    av = rng.integers(-3, 3, 5)
    np.testing.assert_array_equal(run([a], a > 0, av), av > 0)
    np.testing.assert_array_equal(run([a], ag.equal(a, 1), av), av == 1)


def test_logical_ops(rng):
    p, q = ag.placeholder("p", (3, 1), "bool"), ag.placeholder("q", (4,), "bool")
    pv, qv = rng.random((3, 1)) > 0.5, np.array([True, False, True, False])
    cases = [
        (ag.logical_and(p, q), np.logical_and(pv, qv)),
        (p & q, pv & qv),
        (ag.logical_or(p, q), np.logical_or(pv, qv)),
        (p | q, pv | qv),
        (ag.logical_not(p), ~pv),
        (~q, ~qv),
        (ag.equal(p, q), pv == qv),
        (ag.not_equal(p, True), pv != True),  # noqa: E712
    ]
    for y, expected in cases:
        assert y.dtype == "bool"
        out = run([p, q], y, pv, qv)
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, expected)


def test_mask_from_comparison_in_where(rng, assert_grad):
    x = ag.placeholder("x", (3, 4))
    xv = away_from_zero(rng, (3, 4))
    mask = (x > 0.5) | ~(x > -0.5)
    y = ag.where(mask, ag.tanh(x), x * x)
    expected = np.where((xv > 0.5) | ~(xv > -0.5), np.tanh(xv), xv * xv)
    np.testing.assert_allclose(run([x], y, xv), expected, rtol=1e-14)
    xv = np.where(np.abs(np.abs(xv) - 0.5) < 0.05, xv + 0.2, xv)  # away from the switch
    assert_grad(weighted_sum(y, rng), [x], [xv], TOL)


# ----------------------------------------------------------------------------- constants, sources

def test_constants_full_zeros_ones(rng, assert_grad):
    x = ag.placeholder("x", ("B", 3))
    xv = rng.standard_normal((4, 3))
    y = x + ag.ones(("B", 3)) * 2 + ag.zeros_like(x) + ag.full((3,), 0.5) + ag.ones_like(x)
    np.testing.assert_allclose(run([x], y, xv), xv + 3.5, rtol=1e-15)
    assert_grad(ag.sum(y * y), [x], [xv], TOL)
    n = ag.shape_size(("B", 3))
    assert run([x], n, xv) == 12.0
    assert run([x], ag.shape_size((2, 3)), xv) == 6.0


def test_named_values_keep_their_value(rng):
    x = ag.placeholder("x", (3,))
    y = ag.named(x * 2, "double")
    assert y.name == "double"
    np.testing.assert_array_equal(run([x], y, np.arange(3.0)), [0.0, 2.0, 4.0])

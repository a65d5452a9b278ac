"""Property tests: random small graphs, evaluated by autograph and by plain NumPy, and
differentiated by autograph and by finite differences.

The op pools hold only functions that are smooth and defined on all of R (log(x*x+1)
rather than log(x)), so that any drawn input is a fair point for finite differences.
Kinked ops (relu, abs, maximum, max) are covered at chosen points in test_ops.py.
"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import autograph as ag

TOL = 1e-6
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _odd7(d):
    d2 = d * d
    return d2 * d2 * d2 * d


def _np_log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# name -> (autograph function, NumPy function); both applied to the same values.
UNARY = {
    "tanh": (ag.tanh, np.tanh),
    "sigmoid": (ag.sigmoid, _np_sigmoid),
    "exp_tanh": (lambda x: ag.exp(ag.tanh(x)), lambda x: np.exp(np.tanh(x))),
    "log_sq1": (lambda x: ag.log(x * x + 1), lambda x: np.log(x * x + 1)),
    "sqrt_sq1": (lambda x: ag.sqrt(x * x + 1), lambda x: np.sqrt(x * x + 1)),
    "square": (ag.square, np.square),
    "neg": (lambda x: -x, np.negative),
    "affine": (lambda x: 0.5 * x - 0.25, lambda x: 0.5 * x - 0.25),
    "recip_sq1": (lambda x: 1.0 / (x * x + 1), lambda x: 1.0 / (x * x + 1)),
    "pow_sq1": (lambda x: (x * x + 1) ** 1.5, lambda x: (x * x + 1) ** 1.5),
    "softmax": (lambda x: ag.softmax(x, -1) if x.ndim else ag.tanh(x),
                lambda x: np.exp(_np_log_softmax(x)) if x.ndim else np.tanh(x)),
    "log_softmax": (lambda x: ag.log_softmax(x, -1) if x.ndim else -x,
                    lambda x: _np_log_softmax(x) if x.ndim else -x),
}

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div_safe": (lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1)),
    "pow_safe": (lambda a, b: (a * a + 1) ** ag.tanh(b), lambda a, b: (a * a + 1) ** np.tanh(b)),
    # Two branches that meet with six matching derivatives (they differ by (a-b)^7), so
    # the finite-difference stencil stays exact (error ~ 10 h^6) across the switch at a
    # tie, yet the mask routes values. With (a-b)^5 the error (2 h^4 = 2e-12) exceeds
    # check_grad's absolute floor of 1e-12 where y ~ 0.
    "where_gt": (lambda a, b: ag.where(a > b, ag.tanh(a * b) + _odd7(a - b), ag.tanh(a * b)),
                 lambda a, b: np.where(a > b, np.tanh(a * b) + _odd7(a - b), np.tanh(a * b))),
}


def _reduce(kind, axis):
    """Final reductions to a scalar: (autograph, NumPy)."""
    if kind == "sum":
        return ag.sum, np.sum
    if kind == "mean":
        return ag.mean, np.mean
    if kind == "sum_axis_then_mean":
        return (lambda y: ag.mean(ag.sum(y, axis=-1 - axis % y.ndim) ** 2) if y.ndim else y,
                lambda y: np.mean(np.sum(y, axis=-1 - axis % y.ndim) ** 2) if y.ndim else y)
    if kind == "logsumexp":
        return (lambda y: ag.sum(ag.logsumexp(y, axis=axis % y.ndim)) if y.ndim else y,
                lambda y: np.sum(np.log(np.sum(np.exp(y), axis=axis % y.ndim))) if y.ndim else y)
    raise AssertionError(kind)


def _array(shape):
    # Shifted off the "nice" values hypothesis favours (0, 1, 0.5): at x = 0 many pool
    # functions are stationary with a large 5th derivative, e.g. (x*x+1)**tanh(x) =
    # 1 + x**3 + O(x**5), and there the 4th-order finite difference with eps=1e-3 is off
    # by ~2 eps**4 = 2e-12 against a true derivative of 0 -- above check_grad's absolute
    # floor of 1e-6 * 1e-6 (1 + |y|). The symbolic gradient is exact there; the finite
    # difference is not. Equal elements (ties) still occur and are still tested.
    return hnp.arrays(np.float64, shape,
                      elements=st.floats(-1.5, 1.5, allow_nan=False, allow_infinity=False,
                                         allow_subnormal=False).map(lambda v: v + 0.0123))


@st.composite
def programs(draw):
    """Input shapes that broadcast to a common base shape, their values, a list of
    elementwise steps over the values computed so far, and a final reduction."""
    base = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    n_inputs = draw(st.integers(1, 3))
    shapes = []
    for _ in range(n_inputs):
        k = draw(st.integers(0, len(base)))
        tail = base[len(base) - k:]
        shapes.append(tuple(d if draw(st.booleans()) else 1 for d in tail))
    shapes[0] = base  # at least one input has the full shape
    arrays = [draw(_array(s)) for s in shapes]
    steps = []
    n_values = n_inputs
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY))),
                          draw(st.integers(0, n_values - 1))))
        else:
            steps.append(("binary", draw(st.sampled_from(sorted(BINARY))),
                          draw(st.integers(0, n_values - 1)), draw(st.integers(0, n_values - 1))))
        n_values += 1
    kind = draw(st.sampled_from(["sum", "mean", "sum_axis_then_mean", "logsumexp"]))
    axis = draw(st.integers(0, 5))  # taken modulo the rank of the final value
    return shapes, arrays, steps, kind, axis


def _interpret(steps, leaves, unary_pick, binary_pick):
    vals = list(leaves)
    for step in steps:
        if step[0] == "unary":
            vals.append(unary_pick(UNARY[step[1]])(vals[step[2]]))
        else:
            vals.append(binary_pick(BINARY[step[1]])(vals[step[2]], vals[step[3]]))
    return vals[-1]


@SETTINGS
@given(programs())
def test_random_elementwise_graphs(program):
    shapes, arrays, steps, kind, axis = program
    xs = [ag.placeholder(f"x{k}", s) for k, s in enumerate(shapes)]
    red_ag, red_np = _reduce(kind, axis)

    y_ag = _interpret(steps, xs, lambda p: p[0], lambda p: p[0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y_np = _interpret(steps, arrays, lambda p: p[1], lambda p: p[1])
    assert y_ag.shape == np.shape(y_np)
    loss_ag, loss_np = red_ag(y_ag), red_np(y_np)

    f = ag.function(xs, [y_ag, loss_ag])
    out, loss = f(*arrays)
    np.testing.assert_allclose(out, y_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss, loss_np, rtol=1e-12, atol=1e-12)

    report = ag.check_grad(loss_ag, xs, arrays)
    assert report.ok(TOL), f"{steps} {kind}\n{report}"


@st.composite
def matmul_programs(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))

    def batch_of():
        j = draw(st.integers(0, len(batch)))
        return tuple(d if draw(st.booleans()) else 1 for d in batch[len(batch) - j:])

    a_kind = draw(st.sampled_from(["vector", "matrix", "batched"]))
    b_kind = draw(st.sampled_from(["vector", "matrix", "batched"]))
    sa = (k,) if a_kind == "vector" else (batch_of() if a_kind == "batched" else ()) + (m, k)
    sb = (k,) if b_kind == "vector" else (batch_of() if b_kind == "batched" else ()) + (k, n)
    a, b = draw(_array(sa)), draw(_array(sb))
    f_in = draw(st.sampled_from(sorted(UNARY)))
    f_out = draw(st.sampled_from(sorted(UNARY)))
    transpose_b = b.ndim >= 2 and draw(st.booleans())
    return a, b, f_in, f_out, transpose_b


@SETTINGS
@given(matmul_programs())
def test_random_matmul_graphs(program):
    av, bv, f_in, f_out, transpose_b = program
    a = ag.placeholder("a", av.shape)
    b = ag.placeholder("b", bv.T.shape if transpose_b else bv.shape)
    bv_in = bv.T.copy() if transpose_b else bv
    b_used = b.T if transpose_b else b
    b_np = bv_in.T if transpose_b else bv_in

    y = UNARY[f_out][0](UNARY[f_in][0](a) @ b_used)
    expected = UNARY[f_out][1](np.matmul(UNARY[f_in][1](av), b_np))
    assert y.shape == np.shape(expected)
    loss = ag.sum(y * y) if y.ndim else y
    np.testing.assert_allclose(ag.function([a, b], y)(av, bv_in), expected,
                               rtol=1e-12, atol=1e-12)
    report = ag.check_grad(loss, [a, b], [av, bv_in])
    assert report.ok(TOL), f"{f_in} {f_out} {av.shape} {bv_in.shape}\n{report}"


@SETTINGS
@given(st.data())
def test_random_reductions_and_reshapes(data):
    """sum/mean over random axes, keepdims, then reshape and transpose, forward and grad."""
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    xv = data.draw(_array(shape))
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), unique_by=lambda a: a % len(shape),
                              max_size=len(shape)))
    keepdims = data.draw(st.booleans())
    op = data.draw(st.sampled_from(["sum", "mean", "logsumexp"]))
    x = ag.placeholder("x", shape)
    t = ag.tanh(x) * x
    tv = np.tanh(xv) * xv
    axis = tuple(axes) if axes else None
    if op == "logsumexp":
        axis = axis or tuple(range(len(shape)))
        y = ag.logsumexp(t, axis, keepdims=keepdims)
        m = tv.max(axis=axis, keepdims=True)
        expected = np.log(np.exp(tv - m).sum(axis=axis, keepdims=True)) + m
        if not keepdims:
            expected = np.squeeze(expected, axis=axis)
    else:
        y = getattr(ag, op)(t, axis=axis, keepdims=keepdims)
        expected = getattr(np, op)(tv, axis=axis, keepdims=keepdims)
    assert y.shape == np.shape(expected)
    y = ag.reshape(y, (-1,))
    expected = np.reshape(expected, (-1,))
    perm = data.draw(st.permutations(range(y.ndim)))
    y, expected = ag.transpose(y, perm), np.transpose(expected, perm)
    np.testing.assert_allclose(ag.function([x], y)(xv), expected, rtol=1e-12, atol=1e-12)
    w = np.linspace(-1, 1, expected.size).reshape(expected.shape)
    report = ag.check_grad(ag.sum(y * ag.constant(w)), [x], [xv])
    assert report.ok(TOL), str(report)

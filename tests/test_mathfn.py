"""exp, tanh and sigmoid written out in IR (`compiler.mathfn`): the kernels' own
versions, used where libmvec lacks a vector function and when `INLINE_EXP` is set.
References: long-double NumPy (64-bit mantissa on x86) and NumPy's own results."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import autograph as ag
from compiler import codegen, vecmath
from compiler.codegen import emit_text

LIMITS = {"float64": 709.0, "float32": 88.0}
REFS = {"exp": (ag.exp, np.exp), "tanh": (ag.tanh, np.tanh),
        "sigmoid": (ag.sigmoid, lambda v: 1 / (1 + np.exp(-v)))}
# measured maxima over the sample below: exp 0.95 / 1.00, tanh 2.51 / 2.33,
# sigmoid 2.03 / 2.04 ulp (float64 / float32)
BOUND_ULP = {"exp": 1.0, "tanh": 3.0, "sigmoid": 3.0}


@pytest.fixture
def inline(monkeypatch):
    monkeypatch.setattr(codegen, "INLINE_EXP", True)


def _fn(name, dtype):
    x = ag.placeholder("x", ("N",), dtype)
    return ag.function([x], [REFS[name][0](x)], backend="llvm")


def _ulps(got, exact, dtype):
    """|got − exact| in units of the last place of exact rounded to dtype."""
    want = exact.astype(dtype)
    unit = np.spacing(np.abs(want)).astype(np.longdouble)
    err = np.abs(got.astype(np.longdouble) - exact) / unit
    return np.where(got == want, 0.0, err)


def _sample(dtype, rng):
    lim = LIMITS[dtype]
    return np.concatenate([rng.uniform(-lim - 40, lim, 100000), rng.uniform(-1, 1, 50000),
                           rng.uniform(-30, 30, 50000),
                           np.logspace(-300 if dtype == "float64" else -37, 0, 20000)
                           * rng.choice([-1, 1], 20000)]).astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_within_a_few_ulp_of_long_double(inline, name, dtype):
    v = _sample(dtype, np.random.default_rng(3))
    got = _fn(name, dtype)(v)[0]
    with np.errstate(over="ignore", under="ignore"):
        exact = REFS[name][1](v.astype(np.longdouble))
        finite = np.isfinite(exact.astype(dtype))
    assert np.array_equal(got[~finite], exact[~finite].astype(dtype))
    ulps = _ulps(got[finite], exact[finite], dtype)
    assert ulps.max() <= BOUND_ULP[name], (ulps.max(), v[finite][ulps.argmax()])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_special_values_and_the_ends_of_the_range(inline, dtype):
    info = np.finfo(dtype)
    top = np.log(info.max.astype(np.longdouble))          # largest x with a finite e^x
    bottom = np.log(np.longdouble(info.smallest_subnormal))
    v = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, top, top + 1,
                  bottom, bottom - 1, bottom + 5, -700.0 if dtype == "float64" else -95.0],
                 dtype)
    got = _fn("exp", dtype)(v)[0]
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(v)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    ok = np.isfinite(want)
    # subnormal results round once more than NumPy's: within one unit of the subnormals
    assert np.all(np.abs(got[ok] - want[ok]) <= np.maximum(np.spacing(want[ok]),
                                                            info.smallest_subnormal)), got
    assert got[2] == np.inf and got[3] == 0.0 and got[8] == np.inf and got[10] == 0.0
    t = _fn("tanh", dtype)(np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, 50.0, -50.0], dtype))[0]
    assert np.array_equal(np.signbit(t[:2]), [True, False])
    assert list(t[2:4]) == [1.0, -1.0] and np.isnan(t[4]) and list(t[5:]) == [1.0, -1.0]
    s = _fn("sigmoid", dtype)(np.array([np.inf, -np.inf, np.nan, 1000.0, -1000.0], dtype))[0]
    assert list(s[[0, 1, 3, 4]]) == [1.0, 0.0, 1.0, 0.0] and np.isnan(s[2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-745, 709, allow_nan=False), min_size=1, max_size=40))
def test_exp_agrees_with_numpy_property(values):
    v = np.array(values)
    codegen_before = codegen.INLINE_EXP
    codegen.INLINE_EXP = True
    try:
        got = _fn("exp", "float64")(v)[0]
    finally:
        codegen.INLINE_EXP = codegen_before
    want = np.exp(v)
    assert np.all(np.abs(got - want) <= 2 * np.maximum(np.spacing(want), 5e-324))


def test_the_switch_and_the_fallback_choose_the_ir_versions(monkeypatch):
    """Default: libmvec's vector functions where the host has them. INLINE_EXP, or a
    libmvec without the function (another libc), gives the IR versions, vectorized."""
    def text(name, dtype):
        f = _fn(name, dtype)
        f(np.ones(64, dtype))
        return emit_text(f.runner.kernel.prog)

    if vecmath.has("exp", "float64"):
        assert "@exp(" in text("exp", "float64")
    monkeypatch.setattr(codegen, "INLINE_EXP", True)
    assert "@exp(" not in text("exp", "float64")
    assert "@tanhf(" not in text("tanh", "float32")
    monkeypatch.setattr(codegen, "INLINE_EXP", False)
    monkeypatch.setattr(vecmath, "has", lambda fn, dtype: False)
    assert "@expm1(" not in text("tanh", "float64") and "@exp(" not in text("sigmoid", "float64")


def test_a_training_step_with_the_ir_versions_matches_numpy(inline):
    """An LSTM training step (sigmoid, tanh and their gradients) compiled with the IR
    versions, against the NumPy backend: float64, 1e-12."""
    from rnn.workload import training_step
    model, data, outs = training_step("lstm", 5, 7, "float64")
    inputs = data + list(model.nodes().values())
    rng = np.random.default_rng(0)
    T, B = 6, 3
    x = rng.standard_normal((T, B, 5))
    y = rng.standard_normal((T, B, 5))
    params = list(model.state_dict().values())
    want = ag.function(inputs, outs, backend="numpy")(x, y, *params)
    got = ag.function(inputs, outs, backend="llvm")(x, y, *params)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)

"""compiler.profile: cycles per top-level statement of a compiled kernel."""
import numpy as np
import pytest

import autograph as ag
from compiler import codegen
from compiler.loopir import walk
from compiler.profile import format_profile, profile


def _step():
    x = ag.placeholder("x", ("M", 256), "float64")
    w = ag.placeholder("w", (256, 256), "float64")
    v = ag.placeholder("v", (256,), "float64")
    return ag.function([x, w, v], [ag.sum(ag.tanh(x @ w) * v)], backend="llvm")


def test_every_top_level_statement_is_timed_and_the_product_dominates():
    f = _step()
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((512, 256)), rng.standard_normal((256, 256)),
            rng.standard_normal(256)]
    lines = profile(f, *args, calls=5)
    body = f.runner.kernel.prog.body
    assert len(lines) == len(body)          # no loops: every statement at top level
    assert abs(sum(ln.share for ln in lines) - 1) < 1e-9
    assert all(ln.seconds >= 0 for ln in lines)
    costliest = max(lines, key=lambda ln: ln.share)
    assert costliest.text.startswith("matmul"), format_profile(lines)
    assert costliest.share > 0.3
    text = format_profile(lines)
    assert len(text.splitlines()) == len(body) and "µs" in text
    # the switch is restored and the function's own kernel is not the profiled one
    assert codegen.PROFILE is False
    assert codegen.PROFILE_SYMBOL not in f.runner.kernel.ir_text
    np.testing.assert_allclose(f(*args), np.sum(np.tanh(args[0] @ args[1]) * args[2]),
                               rtol=1e-12)


def test_a_loop_is_one_line():
    x = ag.placeholder("x", ("T", 3, 4), "float64")
    w = ag.placeholder("w", (4, 4), "float64")

    def body(h, xt):
        h = ag.tanh(h @ w + xt)
        return h, h
    _, hs = ag.scan(body, ag.zeros((3, 4), "float64"), x)
    f = ag.function([x, w], [ag.sum(hs)], backend="llvm")
    rng = np.random.default_rng(1)
    lines = profile(f, rng.standard_normal((7, 3, 4)), rng.standard_normal((4, 4)))
    order = list(walk(f.runner.kernel.prog.body))
    assert len(lines) == len(order)
    loops = [k for k, ln in enumerate(lines) if ln.text.startswith("for ")]
    assert len(loops) == 1 and "statements)" in lines[loops[0]].text
    # the loop's body: one level deeper, after the loop, within its time
    inner = [ln for ln in lines[loops[0] + 1:] if ln.depth == 1]
    assert len(inner) == len(order[loops[0]].body)
    assert all(ln.depth in (0, 1) for ln in lines)
    assert sum(ln.seconds for ln in inner) <= lines[loops[0]].seconds * 1.0001
    assert abs(sum(ln.share for ln in lines if ln.depth == 0) - 1) < 1e-9


def test_bad_uses_are_refused():
    x = ag.placeholder("x", (3,), "float64")
    with pytest.raises(ValueError, match="llvm backend"):
        profile(ag.function([x], [x * 2]), np.ones(3))
    f = ag.function([x], [x * 2], backend="llvm")
    with pytest.raises(ValueError, match="calls must be at least 1"):
        profile(f, np.ones(3), calls=0)
    with pytest.raises(ag.InputError):
        profile(f, np.ones(4))

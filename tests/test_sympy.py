"""The sympy bridge: every op's rule against the NumPy interpreter, proofs that the
backward graph equals sympy's derivative, hand derivations, and caught bugs."""
import subprocess
import sys

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

import autograph as ag  # noqa: E402
from autograph.ops import OPS  # noqa: E402
from autograph.sympy_bridge import SYMPY, elman_derivation, to_sympy, verify_grad  # noqa: E402
from autograph.vjp import VJP  # noqa: E402


# ----------------------------------------------------------------------------- coverage

def test_every_op_has_a_sympy_rule():
    missing = [name for name in OPS if not callable(SYMPY.get(name))]
    assert not missing, f"ops without a sympy rule: {missing}; add one to autograph/sympy_bridge.py"
    assert set(SYMPY) <= set(OPS), set(SYMPY) - set(OPS)


def test_a_new_op_without_a_sympy_rule_is_caught(monkeypatch):
    monkeypatch.setitem(OPS, "frobnicate", OPS["tanh"])
    with pytest.raises(AssertionError, match="frobnicate"):
        test_every_op_has_a_sympy_rule()


def test_import_autograph_does_not_import_sympy():
    code = "import sys, autograph; assert 'sympy' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- rules vs NumPy

rng = np.random.default_rng(0)
a = ag.placeholder("a", (2, 3))
b = ag.placeholder("b", (2, 3))
v = ag.placeholder("v", (3,))
m = ag.placeholder("m", (3, 2))
ids = ag.placeholder("ids", (4,), "int64")
k = ag.placeholder("k", (2, 3), "int64")
xs = ag.placeholder("xs", ("T", 3))


def _scan_graph():
    def step(s, x_t):
        s = ag.tanh(s * x_t + v).named("s")
        return s, s * 2.0
    (final, ys) = ag.scan(step, v, xs)
    return final + ag.sum(ys, 0)


# One graph per op (at least); each is evaluated by the interpreter and by sympy.
CASES = {
    "constant": lambda: a + ag.constant(np.arange(6.0).reshape(2, 3)),
    "full": lambda: ag.full((2, 3), 0.5) * a,
    "shape_size": lambda: ag.shape_size(("T",)) * xs[0],
    "exp": lambda: ag.exp(a), "log": lambda: ag.log(ag.abs(a) + 0.5),
    "tanh": lambda: ag.tanh(a), "sigmoid": lambda: ag.sigmoid(a),
    "sqrt": lambda: ag.sqrt(ag.abs(a)), "neg": lambda: -a, "abs": lambda: ag.abs(a),
    "sign": lambda: ag.sign(a), "relu": lambda: ag.relu(a),
    "add": lambda: a + v, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / (b * b + 1.0),
    "pow": lambda: ag.power(ag.abs(a) + 0.5, b), "maximum": lambda: ag.maximum(a, b),
    "minimum": lambda: ag.minimum(a, b),
    "compare": lambda: ag.where((a > b) & (a >= 0.1) | ~(a < b) & (b <= 0.0), a, b),
    "equal": lambda: ag.where(ag.equal(k, 1) | ag.not_equal(k, 2), a, b),
    "cast": lambda: ag.cast(a > b, "float64") * a + ag.cast(ag.cast(a * 3.0, "int64"), "float64"),
    "int_div": lambda: ag.cast(ag.divide(k, 2), "float64") + a,
    "stop_gradient": lambda: ag.stop_gradient(a) * b,
    "matmul": lambda: a @ m, "matvec": lambda: a @ v,
    "sum": lambda: ag.sum(a, 1, keepdims=True) + ag.sum(a), "max": lambda: ag.max(a, 0) + ag.min(a),
    "softmax": lambda: ag.softmax(a) + ag.log_softmax(b, 0),
    "broadcast_to": lambda: ag.broadcast_to(v, (4, 3)), "reshape": lambda: ag.reshape(a, (3, 2)),
    "transpose": lambda: a.T @ b, "slice": lambda: a[1, 1:] + a[:, ::2].sum(),
    "concat": lambda: ag.concat([a, b], 1), "stack": lambda: ag.stack([a, b]),
    "take": lambda: ag.take(m, ids), "one_hot": lambda: ag.one_hot(ids, 3),
    "cross_entropy": lambda: ag.cross_entropy(a, ids[:2], reduction="sum"),
    "scan": _scan_graph,
    "grad": lambda: ag.grad(ag.sum(ag.take(m, ids) ** 2) + ag.sum(ag.concat([a, b], 1)[:, 1:] ** 3),
                            [m, a]),  # unslice, take_grad, bind_dims-free gradient graph
    "unroll": lambda: ag.unroll(_scan_graph(), T=3),  # bind_dims, item
}
INPUTS = [a, b, v, m, ids, k, xs]


def _values():
    return {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=(2, 3)), "v": rng.normal(size=3),
            "m": rng.normal(size=(3, 2)), "ids": np.array([0, 2, 1, 2]),
            "k": rng.integers(0, 3, size=(2, 3)), "xs": rng.normal(size=(3, 3))}


def _check_against_numpy(outs):
    outs = outs if isinstance(outs, list) else [outs]
    vals = _values()
    used = {n.name for n in ag.toposort(outs) if n.op == "placeholder"}
    inputs = [x for x in INPUTS if x.name in used]
    numeric = ag.function(inputs, outs)(*[vals[x.name] for x in inputs])
    numeric = numeric if isinstance(numeric, list) else [numeric]
    symbolic = to_sympy(outs, dims={"T": 3}, values_of={"ids": vals["ids"], "k": vals["k"]})
    syms = {}
    for n in ag.toposort(outs):
        if n.op == "placeholder" and n.dtype == "float64":
            for i in np.ndindex(vals[n.name].shape):
                syms[sp.Symbol("_".join([n.name] + [str(j) for j in i]), real=True)] = \
                    sp.Float(vals[n.name][i], 30)
    for got, want in zip(symbolic, numeric):
        got = np.array(sp.Array(got).tolist() if hasattr(got, "shape") and got.shape else got,
                       dtype=object)
        assert got.shape == np.shape(want)
        for i in np.ndindex(got.shape):
            e = sp.sympify(got[i]).xreplace(syms)
            value = float(e.evalf(30)) if not isinstance(e, sp.logic.boolalg.Boolean) else bool(e)
            assert abs(value - float(np.asarray(want)[i])) <= 1e-12 * (1 + abs(value)), (i, e)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sympy_rule_matches_the_interpreter(case):
    _check_against_numpy(CASES[case]())


def test_the_cases_cover_every_op():
    used = set()
    for make in CASES.values():
        outs = make()
        for n in ag.toposort(outs if isinstance(outs, list) else [outs]):
            used.add(n.op)
            if n.op == "scan":
                used |= {b.op for b in n.params["body"].nodes}
    assert set(OPS) - used == set(), set(OPS) - used


def test_placeholders_become_named_symbols():
    W = ag.placeholder("W", (2, 2))
    x = ag.placeholder("x", ())
    e = to_sympy(ag.sum(W) * x)
    assert {s.name for s in e.free_symbols} == {"W_0_0", "W_0_1", "W_1_0", "W_1_1", "x"}
    assert to_sympy(ag.Graph([W], [W.T]))[0][0, 1] == sp.Symbol("W_1_0", real=True)


def test_take_without_concrete_indices_says_what_to_pass():
    with pytest.raises(ag.InputError, match="values"):
        to_sympy(ag.take(m, ids))


# ----------------------------------------------------------------------------- proofs

@pytest.mark.parametrize("f", [ag.tanh, ag.sigmoid, ag.exp, ag.relu, ag.abs, ag.sign,
                               lambda x: ag.log(x * x + 1.0), lambda x: ag.sqrt(x * x + 1.0),
                               lambda x: ag.clip(x, -0.5, 0.5), lambda x: ag.maximum(x, x * x),
                               lambda x: x / (x * x + 2.0), lambda x: ag.where(x > 0, x * x, -x)])
def test_verify_grad_proves_elementwise_ops(f):
    x = ag.placeholder("x", (2, 2))
    W = ag.placeholder("W", (2, 2))
    L = ag.sum(f(x * W + 0.25) * ag.sum(x)).named("L")
    proof = verify_grad(L, [x, W])
    assert proof.proven, str(proof)


def test_verify_grad_proves_pow_with_both_operands():
    p, q = ag.placeholder("p", (2,)), ag.placeholder("q", (2,))
    assert verify_grad(ag.sum(ag.power(p * p + 1.0, q)), [p, q]).proven


def test_verify_grad_proves_softmax_and_cross_entropy():
    z = ag.placeholder("z", (2, 3))
    t = ag.placeholder("t", (2,), "int64")
    W = ag.placeholder("W", (3, 3))
    L = (ag.cross_entropy(z @ W, t) + ag.sum(ag.softmax(z) ** 2)).named("L")
    proof = verify_grad(L, [z, W], values_of={"t": np.array([2, 0])})
    assert proof.proven, str(proof)
    assert proof.held  # the max of the stable softmax is held constant, as stop_gradient says


def _elman(H, D=1):
    x = ag.placeholder("x", ("T", D))
    s0 = ag.placeholder("s0", (H,))
    U, W, b = ag.placeholder("U", (D, H)), ag.placeholder("W", (H, H)), ag.placeholder("b", (H,))

    def step(s, x_t):
        s = ag.tanh(x_t @ U + s @ W + b).named("s")
        return s, s
    _, s = ag.scan(step, s0, x)
    return ag.sum(s * s).named("L"), [x, s0, U, W, b]


@pytest.mark.parametrize("H,T", [(1, 3), (1, 4), (2, 3), (2, 4)])
def test_verify_grad_proves_an_elman_rnn(H, T):
    L, inputs = _elman(H)
    proof = verify_grad(L, inputs, dims={"T": T})
    assert proof.proven, str(proof)
    assert len(proof.entries) == T + 2 * H + H * H + H


def test_verify_grad_proves_the_unrolled_elman_rnn():
    L, inputs = _elman(2)
    assert verify_grad(ag.unroll(L, T=3), inputs[2:], dims={"T": 3}).proven


def test_verify_grad_proves_an_lstm_step():
    H, D = 2, 2
    x, h, c = ag.placeholder("x", (D,)), ag.placeholder("h", (H,)), ag.placeholder("c", (H,))
    Wx, Wh = ag.placeholder("Wx", (D, 4 * H)), ag.placeholder("Wh", (H, 4 * H))
    b = ag.placeholder("b", (4 * H,))
    z = x @ Wx + h @ Wh + b
    i, f, g, o = (z[j * H:(j + 1) * H] for j in range(4))
    c1 = (ag.sigmoid(f) * c + ag.sigmoid(i) * ag.tanh(g)).named("c1")
    h1 = (ag.sigmoid(o) * ag.tanh(c1)).named("h1")
    L = ag.sum(h1 * h1 + c1).named("L")
    proof = verify_grad(L, [x, h, c, Wx, Wh, b])
    assert proof.proven, str(proof)


def test_verify_grad_proves_an_lstm_over_time():
    from autograph.cli_verify import build_cell
    L, inputs, params = build_cell("lstm", 2, 1, 1)
    assert verify_grad(L, params, dims={"T": 2}).proven


# ----------------------------------------------------------------------------- caught bugs

def test_a_broken_vjp_rule_is_caught_and_located(monkeypatch):
    monkeypatch.setitem(VJP, "tanh", lambda node, ct, need: (ct * (1 - node),))  # forgot ²
    L, inputs = _elman(1)
    proof = verify_grad(L, inputs[2:], dims={"T": 3})
    assert not proof.ok and not proof.proven
    bad = proof.first_difference
    assert bad is not None and bad.counterexample is not None
    text = str(proof)
    assert "DIFFER" in text and "first differing entry" in text
    assert "dL/ds_2" in proof.cotangent          # dL/ds_3 is still right; s_3's tanh rule is not
    assert "'tanh'" in proof.culprit and "s_3" in proof.culprit
    assert "tanh(a0_0)**2" in proof.culprit     # sympy's 1 − tanh², shown beside the rule's


def test_a_broken_matmul_rule_is_located(monkeypatch):
    def wrong(node, ct, need):
        a_, b_ = node.inputs
        return ct @ b_.T, a_.T @ ct * 2.0
    monkeypatch.setitem(VJP, "matmul", wrong)
    x, W = ag.placeholder("x", (2, 2)), ag.placeholder("W", (2, 2))
    L = ag.sum(ag.tanh(x @ W)).named("L")
    proof = verify_grad(L, [W])
    assert not proof.ok and "'matmul'" in proof.culprit


# ----------------------------------------------------------------------------- hand derivations

def test_check_derivation_equal_and_differs():
    x, W = ag.placeholder("x", ()), ag.placeholder("W", ())
    y = ag.tanh(W * x).named("y")
    Ws, xs_ = sp.symbols("W x")
    right = ag.check_derivation(xs_ * (1 - sp.tanh(Ws * xs_) ** 2), y, W)
    assert right.verdict == "equal" and right.proven and str(right).startswith("equal")
    wrong = ag.check_derivation(xs_ * (1 - sp.tanh(Ws * xs_)), y, W)
    assert wrong.verdict == "differs" and not wrong
    point = wrong.counterexample["point"]
    assert {s.name for s in point} == {"W", "x"}
    assert abs(wrong.counterexample["hand"] - wrong.counterexample["graph"]) > 1e-6
    assert "counterexample" in str(wrong)


def test_check_derivation_of_a_matrix_and_unknown_symbols():
    x, W = ag.placeholder("x", (2,)), ag.placeholder("W", (2, 2))
    y = ag.sum(x @ W)
    X = sp.symbols("x_0 x_1")
    assert ag.check_derivation(sp.Matrix([[X[0], X[0]], [X[1], X[1]]]), y, W).equal
    assert not ag.check_derivation([[X[0], X[1]], [X[0], X[1]]], y, W).equal
    with pytest.raises(ag.GraphError, match="not symbols of the graph"):
        ag.check_derivation([[sp.Symbol("q")] * 2] * 2, y, W)


# ----------------------------------------------------------------------------- the textbook's expansion

@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_elman_derivation_is_proven_and_printed_as_the_course_writes_it(activation):
    d = elman_derivation(4, activation)
    assert d.verified, d.checks
    assert set(d.checks) == {"generic f", "sympy", "backward graph", "per step"}
    tex = d.latex()
    course = (r"\frac{\partial^+ s_{4}}{\partial W} + \frac{\partial s_{4}}{\partial s_{3}} "
              r"\frac{\partial^+ s_{3}}{\partial W} + \frac{\partial s_{4}}{\partial s_{3}} "
              r"\frac{\partial s_{3}}{\partial s_{2}} \frac{\partial^+ s_{2}}{\partial W} + "
              r"\frac{\partial s_{4}}{\partial s_{3}} \frac{\partial s_{3}}{\partial s_{2}} "
              r"\frac{\partial s_{2}}{\partial s_{1}} \frac{\partial^+ s_{1}}{\partial W}")
    assert course in tex
    assert r"f'(z_{4})\,s_{3} + f'(z_{4})\,W f'(z_{3})\,s_{2}" in tex
    assert len(d.terms) == 4


def test_elman_derivation_terms_are_the_per_copy_gradients():
    """Term k is ∂s_T/∂W^(k): treat W at step k as its own weight, and add."""
    d = elman_derivation(3)
    U, W, s0 = sp.symbols("U W s_0", real=True)
    x = sp.symbols("x_1:4", real=True)
    Wk = sp.symbols("W1:4", real=True)
    s = s0
    for k in range(3):
        s = sp.tanh(U * x[k] + Wk[k] * s)
    same = {w: W for w in Wk}
    for k in range(3):
        per_copy = sp.diff(s, Wk[k]).xreplace(same)
        assert sp.simplify(sp.expand(per_copy - d.terms[k])) == 0


# ----------------------------------------------------------------------------- command line

def test_verify_command(capsys):
    from autograph.cli import main
    assert main(["verify", "--cell", "elman", "-T", "3", "--latex"]) == 0
    out = capsys.readouterr().out
    assert "proven equal" in out and "max rel. error" in out
    assert r"\frac{\partial^+ s_{1}}{\partial W}" in out and "all checks passed" in out


def test_verify_command_other_cells(capsys):
    from autograph.cli import main
    assert main(["verify", "--cell", "gru", "-T", "2"]) == 0
    assert main(["verify", "--cell", "lstm", "-T", "2", "--no-sympy"]) == 0

"""Tables stay complete: every op has a gradient rule (or is declared to have none),
the type checker accepts the graphs we build, and the printer shows them."""
import sys

import numpy as np
import pytest

import autograph as ag
from autograph.ops import OPS
from autograph.vjp import VJP, VJP_TUPLE

# Note: `ag.vjp` is the vjp *function* (it shadows the submodule on the package),
# so the module is reached through sys.modules.
vjp_module = sys.modules["autograph.vjp"]

# Ops with no gradient: sources, piecewise-constant ops (sign), comparisons and logic
# (bool outputs), one_hot (int input) and stop_gradient (zero by definition). vjp.py
# registers all of them on one rule, `_no_gradient`.
NON_DIFFERENTIABLE = {
    "placeholder", "constant", "full", "shape_size", "stop_gradient", "sign",
    "greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
    "logical_and", "logical_or", "logical_not", "one_hot",
}

# Ops the engine differentiates itself: `item` routes its cotangent into the tuple's
# list of output cotangents, and multi-output ops (scan) have a rule in VJP_TUPLE.
ENGINE_HANDLED = {"item"}


def test_every_op_has_a_gradient_rule_or_is_declared_non_differentiable():
    missing = []
    for name in OPS:
        if name in VJP_TUPLE:
            assert callable(VJP_TUPLE[name]), name
            continue
        if name in ENGINE_HANDLED:
            assert name in VJP and VJP[name] is None, name
            continue
        if name not in VJP or not callable(VJP[name]):
            missing.append(name)
    assert not missing, (f"ops without a VJP rule: {missing}; add a rule to autograph/vjp.py "
                         "or, if they truly have no gradient, to NON_DIFFERENTIABLE")


def test_non_differentiable_set_matches_the_no_gradient_rule():
    no_grad = {name for name, f in VJP.items() if f is vjp_module._no_gradient}
    assert no_grad == NON_DIFFERENTIABLE
    assert NON_DIFFERENTIABLE <= set(OPS)


def test_vjp_tables_name_only_registered_ops():
    assert set(VJP) <= set(OPS), set(VJP) - set(OPS)
    assert set(VJP_TUPLE) <= set(OPS), set(VJP_TUPLE) - set(OPS)
    assert ENGINE_HANDLED <= set(OPS)


def test_every_op_record_is_complete():
    for name, op in OPS.items():
        assert op.name == name
        assert callable(op.rule) and callable(op.impl)
        assert op.doc, f"op {name!r} has no doc string"


def test_public_api_exposes_the_tables():
    assert ag.OPS is OPS
    assert ag.VJP is VJP
    assert vjp_module.VJP_TUPLE is VJP_TUPLE


def test_a_new_op_without_a_rule_is_caught(monkeypatch):
    """The completeness check fails for a freshly registered op with no rule."""
    monkeypatch.setitem(OPS, "frobnicate", OPS["tanh"])
    with pytest.raises(AssertionError, match="frobnicate"):
        test_every_op_has_a_gradient_rule_or_is_declared_non_differentiable()


# ----------------------------------------------------------------------------- typecheck

def _graphs():
    """(name, inputs, outputs) of graphs that use most ops, forward and backward."""
    x = ag.placeholder("x", (3, 4))
    w = ag.placeholder("w", (4, 5))
    idx = ag.placeholder("idx", ("B",), "int64")
    table = ag.placeholder("table", (6, 4))
    seq = ag.placeholder("seq", ("T", "B", 4))
    h = ag.tanh(x @ w)
    y = ag.sum(ag.softmax(h) * ag.log_softmax(h)) + ag.mean(ag.relu(x) ** 2)
    e = ag.take(table, idx)
    z = ag.concat([e, ag.zeros(("B", 2))], 1)[:, 1:]
    loss = (y + ag.sum(ag.sigmoid(z)) + ag.sum(ag.where(x > 0, x, -x))
            + ag.sum(ag.clip(seq, -1.0, 1.0).max(axis=0) * ag.expand_dims(ag.sqrt(e * e + 1), 0)))
    ce = ag.cross_entropy(ag.reshape(h, (3, 5)), ag.constant(np.array([0, 1, 4])), "sum")
    loss = loss + ce + ag.sum(ag.stack([x, x.T.T], -1)) + ag.sum(ag.one_hot(idx, 3))
    inputs = [x, w, idx, table, seq]
    grads = ag.grad(loss, [x, w, table, seq])
    g2 = ag.grad(ag.sum(grads[0] * grads[0]), [x, w])
    return [
        ("forward", inputs, [loss]),
        ("backward", inputs, grads),
        ("second_order", inputs, g2),
        ("mixed", inputs, [loss, h > 0, ag.cast(idx, "float32")] + grads),
    ]


@pytest.mark.parametrize("case", range(4))
def test_typecheck_accepts_built_graphs(case):
    name, inputs, outputs = _graphs()[case]
    graph = ag.Graph(inputs, outputs)
    assert ag.typecheck(graph) is None
    ops = {n.op for n in graph.nodes}
    assert len(ops) > 10, ops


def test_typecheck_accepts_graphs_built_in_the_other_test_files():
    from test_ops import SHAPE_OPS, UNARY  # the op tables of test_ops.py
    x = ag.placeholder("x", (2, 3, 4))
    outs = [f(x) for f, _ in SHAPE_OPS.values()] + [f(x) for f, _, _ in UNARY.values()]
    loss = ag.sum(ag.stack([ag.sum(o) for o in outs]))
    ag.typecheck(ag.Graph([x], [loss, ag.grad(loss, x)] + outs))


def test_typecheck_rejects_a_mistyped_node():
    x = ag.placeholder("x", (3, 4))
    bad = ag.Node("tanh", (x,), {}, (4, 3), "float64", "bad")
    with pytest.raises(ag.GraphError, match=r"'bad'.*\(4, 3\).*\(3, 4\)"):
        ag.typecheck(ag.Graph([x], [bad]))
    bad_dtype = ag.Node("exp", (x,), {}, (3, 4), "float32", "bad_dtype")
    with pytest.raises(ag.GraphError, match="bad_dtype"):
        ag.typecheck(ag.Graph([x], [bad_dtype]))


# ----------------------------------------------------------------------------- printing

def test_format_graph_shows_ops_and_types():
    x = ag.placeholder("x", (3, 4))
    w = ag.placeholder("w", (4, 2))
    h = ag.named(ag.tanh(x @ w), "h")
    loss = ag.named(ag.sum(h * 2.0), "loss")
    text = ag.format_graph(ag.Graph([x, w], [loss]))
    for piece in ("x:f64[3,4]", "w:f64[4,2]", "h:f64[3,2]", "loss:f64[]",
                  "matmul", "tanh", "mul", "sum[axes=(0, 1), keepdims=False]", "2.0",
                  "in (loss)"):
        assert piece in text, f"{piece!r} not in\n{text}"
    assert str(ag.Graph([x, w], [loss])) == text


def test_format_graph_of_backward_graph_names_cotangents():
    x = ag.placeholder("x", (3, 4))
    loss = ag.named(ag.sum(ag.exp(x)), "loss")
    g = ag.grad(loss, x)
    text = ag.format_graph(ag.Graph([x], [g]))
    assert "exp" in text and "broadcast_to" in text
    assert "dloss/dx" in text
    assert "f64[3,4]" in text


def test_format_graph_shows_symbolic_dims_and_other_dtypes():
    x = ag.placeholder("x", ("T", "B", 16), "float32")
    i = ag.placeholder("i", ("B",), "int64")
    m = ag.named(x[0] > 0, "m")
    text = ag.format_graph(ag.Graph([x, i], [m, ag.one_hot(i, 5)]))
    for piece in ("x:f32[T,B,16]", "i:i64[B]", "m:bool[B,16]", "one_hot[depth=5",
                  "f64[B,5]", "slice", "greater"):
        assert piece in text, f"{piece!r} not in\n{text}"


@pytest.mark.parametrize("case", range(4))
def test_format_graph_prints_every_node(case):
    name, inputs, outputs = _graphs()[case]
    graph = ag.Graph(inputs, outputs)
    text = ag.format_graph(graph)
    for n in graph.nodes:
        if n.op == "constant" and n.shape == ():
            continue  # scalars print inline as literals
        if n.op != "placeholder":
            assert f"= {n.op}" in text, n.op
        assert n.type_str in text

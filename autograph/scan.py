"""`scan`: the time loop as one op whose body is a `Graph` (the cell).

A scan node's inputs are the initial carries, the sequences ``xs`` (time on axis 0)
and the values the step closes over ("consts": loop-invariant, typically the
weights). Its outputs, taken with `item`, are

    final carries (n_carry) | stacked per-step outputs ys (n_ys) | carry history (n_carry)

where the history holds, at index t, the carry that *entered* step t (s_{t-1} for
step t). The backward pass needs it, and keeping it as an output lets every
backend decide whether to store or recompute it.

The gradient of a scan is a reverse scan whose body is the VJP of the step body.
Its per-step outputs include the cotangent of each const at each step,
∂L/∂W^(k), stacked along time; their sum over time is ∂L/∂W.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import api as ag
from .errors import GraphError, ShapeError
from .graph import FLOAT_DTYPES, Graph, Node, toposort, type_str
from .ops import fail, register, resolve


# ----------------------------------------------------------------------------- pytrees

def flatten(tree) -> tuple[list, Any]:
    """Leaves of nested tuples/lists, and a structure to rebuild them with."""
    if isinstance(tree, (tuple, list)):
        leaves, shapes = [], []
        for t in tree:
            lv, st = flatten(t)
            leaves += lv
            shapes.append(st)
        return leaves, (type(tree), shapes)
    if tree is None:
        return [], None
    return [tree], "*"


def unflatten(structure, leaves):
    it = iter(leaves)

    def build(st):
        if st == "*":
            return next(it)
        if st is None:
            return None
        kind, parts = st
        return kind(build(p) for p in parts)
    return build(structure)


# ----------------------------------------------------------------------------- tracing

def _unique(name: str, taken: set) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}{k}"
    taken.add(out)
    return out


def _depends(outputs, inner: set[int]) -> set[int]:
    """Ids of the nodes (reachable from `outputs`) that depend on an `inner` node."""
    dep: set[int] = set()
    for n in toposort(outputs):
        if id(n) in inner or any(id(i) in dep for i in n.inputs):
            dep.add(id(n))
    return dep


def close_over(outputs, inner_inputs, taken: set):
    """Split traced `outputs` into a closed body: the outer values it uses become new
    placeholders. Returns ``(new_outputs, const_placeholders, outer_values)``.

    A value that does not depend on `inner_inputs` is loop-invariant: it is computed
    once outside (so ``W * 2`` inside a step is hoisted out), except sources with no
    inputs (literals, zeros) which stay in the body.
    """
    inner = set(map(id, inner_inputs))
    dep = _depends(outputs, inner)
    consts: dict[int, Node] = {}
    outer: list[Node] = []

    def const_for(n: Node) -> Node:
        if id(n) not in consts:
            name = _unique(n.name or f"p{len(outer)}", taken)
            consts[id(n)] = ag.placeholder(name, n.shape, n.dtype)
            outer.append(n)
        return consts[id(n)]

    memo: dict[int, Node] = {}

    def rebuild(n: Node) -> Node:
        if id(n) in memo:
            return memo[id(n)]
        if id(n) not in dep:
            out = n if not n.inputs and n.op != "placeholder" else const_for(n)
        else:
            out = n  # placeholders of the body stay as they are
        memo[id(n)] = out
        return out

    for n in toposort(outputs):
        if id(n) in dep and n.inputs:
            new_inputs = tuple(memo.get(id(i), i) if id(i) in dep else rebuild(i)
                               for i in n.inputs)
            if any(a is not b for a, b in zip(new_inputs, n.inputs)):
                memo[id(n)] = Node(n.op, new_inputs, n.params, n.shape, n.dtype, n.name)
            else:
                memo[id(n)] = n
        elif id(n) in dep:
            memo[id(n)] = n
    new_outputs = [memo[id(y)] if id(y) in dep else rebuild(y) for y in outputs]
    return new_outputs, [consts[id(n)] for n in outer], outer


def scan(step, init, xs=None, length=None, reverse=False):
    """Run `step(carry, x_t) -> (new_carry, y_t)` along time; return ``(carry, ys)``.

    `init` is a value or nested tuple of values (e.g. ``(h0, c0)``); `xs` a value or
    tuple of values whose axis 0 is time (its size may be symbolic, ``"T"``), or
    None with `length` given. `step` is traced once into a body graph; the values it
    closes over become loop-invariant inputs of the scan. `ys` stacks each y_t along
    a new axis 0. With `reverse=True` steps run from the last to the first, and ys
    are still stored at their step's index.
    """
    if not callable(step):
        raise GraphError("scan: step must be a function step(carry, x_t) -> (carry, y_t)")
    init_leaves, carry_tree = flatten(init)
    init_leaves = [ag.as_node(c) for c in init_leaves]
    xs_leaves, xs_tree = flatten(xs)
    xs_leaves = [ag.as_node(x) for x in xs_leaves]
    for x in xs_leaves:
        if x.ndim == 0:
            raise ShapeError(f"scan: the sequence {x.label!r} is a scalar; xs need a time axis 0")
    lengths = {x.shape[0] for x in xs_leaves}
    if length is not None:
        if not isinstance(length, (int, str)) or isinstance(length, bool):
            raise GraphError(f"scan: length must be an int or a dim name, got {length!r}")
        lengths.add(length)
    if not lengths:
        raise GraphError("scan: give xs (with a time axis) or a length")
    if len(lengths) > 1:
        raise ShapeError("scan: the sequences disagree on the number of steps: "
                         + ", ".join(f"{x.label!r} has {x.shape[0]}" for x in xs_leaves)
                         + (f", length={length!r}" if length is not None else ""))
    T = lengths.pop()

    taken: set[str] = set()
    carry_in = [ag.placeholder(_unique(c.name or f"c{i}", taken), c.shape, c.dtype)
                for i, c in enumerate(init_leaves)]
    x_in = [ag.placeholder(_unique(x.name or f"x{i}", taken), x.shape[1:], x.dtype)
            for i, x in enumerate(xs_leaves)]
    out = step(unflatten(carry_tree, carry_in), unflatten(xs_tree, x_in))
    if not isinstance(out, tuple) or len(out) != 2:
        raise GraphError("scan: step must return a pair (new_carry, y_t); "
                         f"it returned {type(out).__name__}")
    new_carry, ys = out
    carry_out, out_tree = flatten(new_carry)
    if out_tree != carry_tree:
        raise GraphError("scan: step returned a carry of another structure than init "
                         f"({len(carry_out)} values vs {len(init_leaves)})")
    carry_out = [ag.as_node(c, like=p) for c, p in zip(carry_out, carry_in)]
    for c, p in zip(carry_out, carry_in):
        if c.shape != p.shape or c.dtype != p.dtype:
            raise ShapeError(f"scan: the step turns the carry {p.name!r} of type {p.type_str} "
                             f"into {c.label!r} of type {c.type_str}; a carry must keep its "
                             "type from step to step")
    y_leaves, ys_tree = flatten(ys)
    y_leaves = [ag.as_node(y) for y in y_leaves]
    outputs, const_in, consts = close_over(carry_out + y_leaves, carry_in + x_in, taken)
    body = Graph(carry_in + x_in + const_in, outputs)
    node = make_scan(body, init_leaves, xs_leaves, consts, T, reverse)
    n = len(init_leaves)
    final = [ag.item(node, i) for i in range(n)]
    stacked = [ag.item(node, n + i) for i in range(len(y_leaves))]
    return unflatten(carry_tree, final), unflatten(ys_tree, stacked)


def make_scan(body: Graph, init, xs, consts, length, reverse) -> Node:
    """The scan node itself, from a closed body graph (used by tracing and by VJP)."""
    from .ops import make
    return make("scan", list(init) + list(xs) + list(consts),
                {"body": body, "n_carry": len(init), "n_xs": len(xs),
                 "n_consts": len(consts), "length": length, "reverse": bool(reverse),
                 "out_types": _out_types(body, len(init), length)})


def _out_types(body: Graph, n_carry: int, length):
    carries = [(c.shape, c.dtype) for c in body.outputs[:n_carry]]
    ys = [((length,) + y.shape, y.dtype) for y in body.outputs[n_carry:]]
    history = [((length,) + c.shape, c.dtype) for c in body.outputs[:n_carry]]
    return tuple(carries + ys + history)


def split_inputs(node: Node):
    """The scan's inputs as (init, xs, consts)."""
    p = node.params
    a, b = p["n_carry"], p["n_carry"] + p["n_xs"]
    return node.inputs[:a], node.inputs[a:b], node.inputs[b:]


def _scan_rule(inputs, p):
    body: Graph = p["body"]
    n_carry, n_xs, T = p["n_carry"], p["n_xs"], p["length"]
    expected = [b.shape for b in body.inputs[:n_carry]] + \
               [(T,) + b.shape for b in body.inputs[n_carry:n_carry + n_xs]] + \
               [b.shape for b in body.inputs[n_carry + n_xs:]]
    if len(inputs) != len(body.inputs):
        fail("scan", inputs, f"the body takes {len(body.inputs)} inputs, got {len(inputs)}")
    for x, b, shape in zip(inputs, body.inputs, expected):
        if x.shape != shape or x.dtype != b.dtype:
            fail("scan", inputs, f"{x.label!r} should be {type_str(shape, b.dtype)} "
                                 f"for body input {b.name!r}")
    return None, "tuple"


def _scan_impl(args, p, dims):
    from .interpret import evaluate
    body: Graph = p["body"]
    n_carry, n_xs = p["n_carry"], p["n_xs"]
    carry = list(args[:n_carry])
    xs = args[n_carry:n_carry + n_xs]
    consts = list(args[n_carry + n_xs:])
    T = resolve((p["length"],), dims)[0]
    n_ys = len(body.outputs) - n_carry
    out_shapes = [resolve(s, dims) for s, _ in p["out_types"]]
    ys = [np.empty(out_shapes[n_carry + i], dtype=d)
          for i, (_, d) in enumerate(p["out_types"][n_carry:n_carry + n_ys])]
    history = [np.empty(out_shapes[n_carry + n_ys + i], dtype=c.dtype)
               for i, c in enumerate(carry)]
    for t in (range(T - 1, -1, -1) if p["reverse"] else range(T)):
        for h, c in zip(history, carry):
            h[t] = c
        res = evaluate(body, carry + [x[t] for x in xs] + consts, dims)
        carry = res[:n_carry]
        for y, r in zip(ys, res[n_carry:]):
            y[t] = r
    return tuple(carry) + tuple(ys) + tuple(history)


register("scan", _scan_rule, _scan_impl, "a loop over time whose body is a graph")


# ----------------------------------------------------------------------------- gradient

def _scan_vjp(node: Node, cts: list, need: tuple):
    """Cotangents of a scan's inputs: a reverse scan over the body's VJP.

    The reverse body, at step t, takes the cotangent arriving at carry s_t, the
    stored carry s_{t-1} (history[t]), x_t and the cotangents of y_t and history[t];
    it returns the cotangent of s_{t-1} and, per step, those of x_t and of each const.
    """
    from .vjp import StepRecorder, vjp
    body: Graph = node.params["body"]
    p = node.params
    n_carry, n_xs, n_consts = p["n_carry"], p["n_xs"], p["n_consts"]
    n_ys = len(body.outputs) - n_carry
    init, xs, consts = split_inputs(node)
    c_in = body.inputs[:n_carry]
    x_in = body.inputs[n_carry:n_carry + n_xs]
    p_in = body.inputs[n_carry + n_xs:]
    ct_final = cts[:n_carry]
    ct_ys = cts[n_carry:n_carry + n_ys]
    ct_hist = cts[n_carry + n_ys:]

    taken = {b.name for b in body.inputs}
    ct_c_next = [ag.placeholder(_unique(f"ct_{c.name}", taken), c.shape, c.dtype) for c in c_in]
    y_used = [i for i, c in enumerate(ct_ys) if c is not None]
    h_used = [i for i, c in enumerate(ct_hist) if c is not None]
    ct_y_in = [ag.placeholder(_unique(f"ct_y{i}", taken), body.outputs[n_carry + i].shape,
                              body.outputs[n_carry + i].dtype) for i in y_used]
    ct_h_in = [ag.placeholder(_unique(f"ct_hist_{c_in[i].name}", taken), c_in[i].shape,
                              c_in[i].dtype) for i in h_used]
    x_need = [i for i in range(n_xs) if need[n_carry + i]]
    p_need = [i for i in range(n_consts) if need[n_carry + n_xs + i]]
    # Int/bool carries (counters) have no cotangent: they stay zeros of their own type.
    c_float = [i for i, c in enumerate(c_in) if c.dtype in FLOAT_DTYPES]
    wrt = [c_in[i] for i in c_float] + [x_in[i] for i in x_need] + [p_in[i] for i in p_need]
    seeds_out = list(body.outputs[:n_carry]) + [body.outputs[n_carry + i] for i in y_used]
    seeds = ct_c_next + ct_y_in
    got = vjp(seeds_out, seeds, wrt) if wrt else []
    got = [g if g is not None else ag.zeros(w.shape, w.dtype) for g, w in zip(got, wrt)]
    ct_c = [ag.zeros(c.shape, c.dtype) for c in c_in]
    for k, i in enumerate(c_float):
        ct_c[i] = got[k]
    for k, i in enumerate(h_used):
        ct_c[i] = ct_c[i] + ct_h_in[k]
    rev_body = Graph(ct_c_next + list(c_in) + list(x_in) + ct_y_in + ct_h_in + list(p_in),
                     ct_c + got[len(c_float):])

    history = [ag.item(node, n_carry + n_ys + i) for i in range(n_carry)]
    rev_init = [c if c is not None else ag.zeros(i.shape, i.dtype)
                for c, i in zip(ct_final, init)]
    rev_xs = history + list(xs) + [ct_ys[i] for i in y_used] + [ct_hist[i] for i in h_used]
    rev = make_scan(rev_body, rev_init, rev_xs, consts, p["length"], not p["reverse"])
    out: list = [ag.item(rev, i) for i in range(n_carry)]
    out += [None] * (n_xs + n_consts)
    for k, i in enumerate(x_need):
        out[n_carry + i] = ag.item(rev, n_carry + k)
    for k, i in enumerate(p_need):
        stacked = ag.item(rev, n_carry + len(x_need) + k)
        for recorder in StepRecorder.active[-1:]:
            recorder.add(consts[i], stacked)
        out[n_carry + n_xs + i] = ag.sum(stacked, 0)
    for i, c in enumerate(out[:n_carry]):
        if not need[i]:
            out[i] = None
    return out


def _register_vjp():
    from .vjp import VJP, VJP_TUPLE
    VJP["scan"] = None  # a multi-output op: its rule lives in VJP_TUPLE
    VJP_TUPLE["scan"] = _scan_vjp


_register_vjp()

"""Graph rewrites before lowering, each a small named pass from Graph to Graph.

  simplify    algebraic identities: x·1, x+0, x**2 → x·x, double transposes, no-op
              reshapes/casts/broadcasts, stop_gradient (the gradient is built already)
  fold        constant folding of small all-constant subgraphs
  cse         common subexpressions, constants included
  hoist       time-vectorization: the body nodes of a scan that depend on its
              sequences and loop-invariant values but not on its carry are computed
              for all steps at once, outside the loop — so X·U becomes one matrix
              product, and the reverse loop of a gradient no longer recomputes the
              forward gates it can read from the stored states
  weight_sums per-step weight-gradient contributions δ_t·s_{t−1}ᵀ leave the reverse
              loop: the loop stacks δ_t and one product after it forms Σ_t (the
              lowering turns sum(matmul(A, B), axis 0) into a single GEMM over T·B)
  transposed_products
              (A·B)ᵀ → Bᵀ·Aᵀ (also summed over time) where nothing else reads A·B:
              the product writes the layout asked for, with no transposing copy

Every pass recurses into scan bodies. `PASSES` lists them in order; `rewrite` runs
them all, and `rewrite(graph, trace=True)` also returns each stage for printing.
"""
from __future__ import annotations

import itertools

import numpy as np

import autograph as ag
from autograph.graph import Graph, Node, toposort
from autograph.ops import OPS, make
from autograph.scan import _out_types

ELEMENTWISE = {"exp", "log", "tanh", "sigmoid", "sqrt", "neg", "abs", "sign", "relu", "add",
               "sub", "mul", "div", "pow", "maximum", "minimum", "greater", "greater_equal",
               "less", "less_equal", "equal", "not_equal", "logical_and", "logical_or",
               "logical_not", "where", "cast", "stop_gradient"}


# ----------------------------------------------------------------------------- framework

def rebuild(n: Node, inputs, params=None) -> Node:
    """`n` with new inputs (and params): the same node if nothing changed."""
    inputs = tuple(inputs)
    if params is None and all(a is b for a, b in zip(inputs, n.inputs)):
        return n
    p = dict(n.params) if params is None else params
    if n.op == "scan":
        p["out_types"] = _out_types(p["body"], p["n_carry"], p["length"])
    return make(n.op, inputs, p, n.name)


def transform(graph: Graph, fn) -> Graph:
    """Rebuild `graph` bottom-up: ``fn(node, new_inputs)`` returns each node's replacement.
    Scan bodies are transformed with the same pass first."""
    memo = {id(x): x for x in graph.inputs}
    for n in graph.nodes:
        if id(n) in memo:
            continue
        ins = [memo[id(i)] for i in n.inputs]
        memo[id(n)] = fn(n, ins)
    return Graph(graph.inputs, [memo[id(y)] for y in graph.outputs])


def pass_over(rule):
    """A pass that applies `rule(node, inputs) -> node` everywhere, bodies included."""
    def run(graph: Graph) -> Graph:
        def fn(n, ins):
            if n.op == "scan":
                body = run(n.params["body"])
                if body is not n.params["body"] or any(a is not b for a, b in zip(ins, n.inputs)):
                    n = rebuild(n, ins, dict(n.params, body=body))
                return rule(n, n.inputs)
            return rule(n, ins)
        return transform(graph, fn)
    run.__name__ = rule.__name__.lstrip("_")
    return run


def _value(n: Node):
    """The array of a constant node, or the value of a static `full`, else None."""
    if n.op == "constant":
        return n.params["value"]
    if n.op == "full" and all(isinstance(d, int) for d in n.shape):
        return np.full(n.shape, n.params["value"], dtype=n.dtype)
    return None


def _is(n: Node, v) -> bool:
    a = _value(n)
    return a is not None and a.size > 0 and bool(np.all(a == v))


# ----------------------------------------------------------------------------- simplify

def _simplify(n: Node, ins) -> Node:
    op = n.op
    same = lambda x: x.shape == n.shape and x.dtype == n.dtype  # noqa: E731
    if op in ("add", "sub") and _is(ins[1], 0) and same(ins[0]):
        return ins[0]
    if op == "add" and _is(ins[0], 0) and same(ins[1]):
        return ins[1]
    if op in ("mul", "div") and _is(ins[1], 1) and same(ins[0]):
        return ins[0]
    if op == "mul" and _is(ins[0], 1) and same(ins[1]):
        return ins[1]
    if op == "pow" and _is(ins[1], 1) and same(ins[0]):
        return ins[0]
    if op == "pow" and _is(ins[1], 2) and ins[1].ndim <= ins[0].ndim and same(ins[0]):
        return make("mul", (ins[0], ins[0]), None, n.name)   # NumPy's x**2 is x*x too
    if op == "neg" and ins[0].op == "neg":
        return ins[0].inputs[0]
    if op in ("stop_gradient",) or (op == "cast" and ins[0].dtype == n.dtype):
        return ins[0]
    if op in ("reshape", "broadcast_to") and ins[0].shape == n.shape:
        return ins[0]
    if op == "reshape" and ins[0].op == "reshape":
        return make("reshape", ins[0].inputs, {"shape": n.params["shape"]}, n.name)
    if op == "transpose":
        perm = n.params["perm"]
        if ins[0].op == "transpose":
            inner = ins[0].params["perm"]
            perm = tuple(inner[p] for p in perm)
            ins = ins[0].inputs
        if perm == tuple(range(len(perm))):
            return ins[0]
        return rebuild(n, ins, {"perm": perm})
    if op in ("sum", "max") and not n.params["axes"]:
        return ins[0]
    if op == "slice" and all(isinstance(i, slice) and i == slice(None) for i in n.params["index"]):
        return ins[0]
    if op == "add":
        joined = _join_unslices(n, ins)
        if joined is not None:
            return joined
    return rebuild(n, ins)


def _join_unslices(n: Node, ins):
    """unslice(a, [:, 0:H]) + unslice(b, [:, H:2H]) + … covering the whole axis is
    concat(a, b, …): the gradient of the gates of a cell, gathered without zero-filling
    and adding four arrays."""
    leaves, stack = [], list(ins)
    while stack:
        x = stack.pop()
        if x.op == "add" and x.shape == n.shape and all(i.shape == n.shape for i in x.inputs):
            stack.extend(x.inputs)
        elif x.op == "unslice" and tuple(x.params["in_shape"]) == tuple(n.shape) \
                and x.dtype == n.dtype:
            leaves.append(x)
        else:
            return None
    if len(leaves) < 2:
        return None
    axis, parts = None, []
    for u in leaves:
        index = tuple(u.params["index"])
        if len(index) != n.ndim or not all(isinstance(i, slice) for i in index):
            return None
        cut = [k for k, i in enumerate(index) if i != slice(None)]
        if len(cut) != 1:
            return None
        k = cut[0]
        sl, size = index[k], n.shape[k]
        if (axis is not None and k != axis) or not isinstance(size, int) \
                or sl.step not in (None, 1) or any(not isinstance(e, (int, type(None)))
                                                   for e in (sl.start, sl.stop)):
            return None
        axis = k
        start, stop, _ = sl.indices(size)       # z[:, 2H:] is z[:, 2H:3H]
        parts.append((start, stop, u.inputs[0]))
    parts.sort(key=lambda t: t[0])
    if parts[0][0] != 0 or parts[-1][1] != size or \
            any(a[1] != b[0] for a, b in zip(parts, parts[1:])):
        return None
    return make("concat", tuple(x for _, _, x in parts), {"axis": axis}, n.name)


simplify = pass_over(_simplify)


# ----------------------------------------------------------------------------- fold

def _fold(n: Node, ins) -> Node:
    n = rebuild(n, ins)
    if n.op in ("constant", "placeholder", "scan", "item", "full") or not n.inputs:
        return n
    if n.shape is None or any(isinstance(d, str) for d in n.shape) or np.prod(n.shape) > 4096:
        return n
    values = [_value(i) for i in n.inputs]
    if any(v is None for v in values):
        return n
    try:
        out = OPS[n.op].impl(values, n.params, {})
    except Exception:   # leave a failing op to fail at run time, as NumPy would
        return n
    return ag.constant(np.asarray(out, dtype=n.dtype), name=n.name)


fold = pass_over(_fold)


# ----------------------------------------------------------------------------- cse

def _freeze(v):
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str, v.tobytes())
    if isinstance(v, slice):
        return ("slice", v.start, v.stop, v.step)
    if isinstance(v, (tuple, list)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, Graph):
        return ("graph", id(v))
    if isinstance(v, float) and v != v:
        return ("nan",)
    return v


def _key(op, params, inputs):
    """Structural identity of a node: the same op, params and input nodes."""
    return (op, tuple(id(i) for i in inputs),
            tuple(sorted((k, _freeze(v)) for k, v in params.items() if k != "out_types")))


def cse(graph: Graph) -> Graph:
    """Merge nodes with the same op, inputs and params (within each graph)."""
    table: dict = {}

    def fn(n, ins):
        if n.op == "placeholder":
            return n
        if n.op == "scan":
            body = cse(n.params["body"])
            n = rebuild(n, ins, dict(n.params, body=body))
        else:
            n = rebuild(n, ins)
        return table.setdefault(_key(n.op, n.params, n.inputs), n)
    return transform(graph, fn)


# ----------------------------------------------------------------------------- hoist

VECTORIZABLE = ELEMENTWISE | {"matmul", "transpose", "reshape", "broadcast_to", "slice",
                              "unslice", "sum", "max", "concat", "take", "one_hot"}


def _stack(n: Node, ins, stacked, T) -> Node | None:
    """The node computing `n` for every step at once, from step-stacked inputs
    (``stacked[i]``: input i has a leading time axis). None if `n` cannot be."""
    op, p = n.op, dict(n.params)
    r = n.ndim
    if op in ELEMENTWISE or op == "matmul":
        args = []
        for x, s in zip(ins, stacked):
            if s and x.ndim - 1 < r:
                x = ag.reshape(x, (x.shape[0],) + (1,) * (r - x.ndim + 1) + x.shape[1:])
            args.append(x)
        return make(op, args, p)
    x = ins[0]
    if op == "take":
        return make(op, ins, p) if stacked[1] and not stacked[0] else None
    if op == "one_hot":
        return make(op, ins, p)
    if op == "concat":
        args = [a if s else ag.broadcast_to(a, (T,) + a.shape) for a, s in zip(ins, stacked)]
        return make(op, args, {"axis": p["axis"] + 1})
    if not stacked[0]:
        return None
    if op == "transpose":
        return make(op, [x], {"perm": (0,) + tuple(i + 1 for i in p["perm"])})
    if op == "reshape":
        return make(op, [x], {"shape": (T,) + tuple(p["shape"])})
    if op == "broadcast_to":
        if x.ndim - 1 < len(p["shape"]):
            x = ag.reshape(x, (T,) + (1,) * (len(p["shape"]) - x.ndim + 1) + x.shape[1:])
        return make(op, [x], {"shape": (T,) + tuple(p["shape"])})
    if op in ("slice", "unslice"):
        return make(op, [x], {"index": (slice(None),) + tuple(p["index"]),
                              "in_shape": (T,) + tuple(p["in_shape"])})
    if op in ("sum", "max"):
        return make(op, [x], {"axes": tuple(a + 1 for a in p["axes"]),
                              "keepdims": p["keepdims"]})
    return None


def _hoist_scan(n: Node) -> Node:
    """Move the body nodes of scan `n` that do not depend on its carry out of its loop:
    loop-invariant ones are computed once (new loop-invariant inputs), sequence-
    dependent ones for every step at once (new sequences)."""
    p = n.params
    body: Graph = p["body"]
    nc, nx = p["n_carry"], p["n_xs"]
    T = p["length"]
    c_in, x_in, k_in = body.inputs[:nc], body.inputs[nc:nc + nx], body.inputs[nc + nx:]
    init, xs, consts = n.inputs[:nc], n.inputs[nc:nc + nx], n.inputs[nc + nx:]
    # outer[id(body node)] = (outer value, stacked over time?)
    outer = {id(b): (v, True) for b, v in zip(x_in, xs)}
    outer.update({id(b): (v, False) for b, v in zip(k_in, consts)})
    moved: set[int] = set()
    for m in body.nodes:
        if m.op == "placeholder" or not m.inputs or m.op in ("scan", "item"):
            continue
        if not all(id(i) in outer or (not i.inputs and i.op != "placeholder") for i in m.inputs):
            continue
        args = [outer[id(i)] if id(i) in outer else (i, False) for i in m.inputs]
        stacked = [s for _, s in args]
        vals = [v for v, _ in args]
        if not any(stacked):
            v = rebuild(m, vals)
        elif m.op in VECTORIZABLE:
            v = _stack(m, vals, stacked, T)
        else:
            v = None
        if v is None:
            continue
        outer[id(m)] = (v, any(stacked))
        moved.add(id(m))
    # The frontier: moved nodes that the loop still reads.
    needed, seen = [], set()
    for m in list(body.nodes) + list(body.outputs):
        for i in ([m] if m in body.outputs and id(m) in moved else []) + \
                 ([] if id(m) in moved else list(m.inputs)):
            if id(i) in moved and id(i) not in seen:
                seen.add(id(i))
                needed.append(i)
    if not needed:
        return n
    new_in = {id(m): ag.placeholder(f"{m.name or m.op}_{'t' if outer[id(m)][1] else 'k'}{k}",
                                    m.shape, m.dtype) for k, m in enumerate(needed)}
    memo = {id(b): b for b in body.inputs}
    memo.update(new_in)
    for m in body.nodes:
        if id(m) not in memo:
            memo[id(m)] = rebuild(m, [memo[id(i)] for i in m.inputs])
    outs = [memo[id(y)] for y in body.outputs]
    used = {id(i) for m in toposort(outs) for i in m.inputs} | {id(y) for y in outs}
    seq = [(b, v) for b, v in zip(x_in, xs) if id(b) in used] + \
          [(new_in[id(m)], outer[id(m)][0]) for m in needed if outer[id(m)][1]]
    inv = [(b, v) for b, v in zip(k_in, consts) if id(b) in used] + \
          [(new_in[id(m)], outer[id(m)][0]) for m in needed if not outer[id(m)][1]]
    body2 = Graph(list(c_in) + [b for b, _ in seq] + [b for b, _ in inv], outs)
    params = dict(p, body=body2, n_xs=len(seq), n_consts=len(inv))
    return rebuild(n, list(init) + [v for _, v in seq] + [v for _, v in inv], params)


def hoist(graph: Graph) -> Graph:
    """Time-vectorize what each scan computes from its sequences alone."""
    def fn(n, ins):
        if n.op == "scan":
            body = hoist(n.params["body"])
            n2 = rebuild(n, ins, dict(n.params, body=body)) if body is not n.params["body"] \
                else rebuild(n, ins)
            return _hoist_scan(n2)
        return rebuild(n, ins)
    return transform(graph, fn)


# ----------------------------------------------------------------------------- weight sums

def weight_sums(graph: Graph) -> Graph:
    """A scan output y_t = X_t·Q_t (or Q_t·X_t) with X a sequence of the scan and Q
    computed in the loop becomes: the loop stacks Q_t, and X·Q is formed after it,
    for all steps in one batched product (whose sum over time lowers to one GEMM)."""
    replace: dict = {}

    def fn(n, ins):
        if n.op == "item" and (id(ins[0]), n.params["index"]) in replace:
            return replace[(id(ins[0]), n.params["index"])]
        if n.op == "scan":
            body = weight_sums(n.params["body"])
            n = rebuild(n, ins, dict(n.params, body=body)) if body is not n.params["body"] \
                else rebuild(n, ins)
            return _weight_sums_scan(n, replace)
        return rebuild(n, ins)
    return transform(graph, fn)


def _weight_sums_scan(n: Node, replace: dict) -> Node:
    p = n.params
    body: Graph = p["body"]
    nc, nx = p["n_carry"], p["n_xs"]
    x_in = body.inputs[nc:nc + nx]
    x_pos = {id(b): k for k, b in enumerate(x_in)}
    n_ys = len(body.outputs) - nc
    outs = list(body.outputs)
    plan = []
    for j in range(n_ys):
        y = outs[nc + j]
        if y.op != "matmul" or y.ndim != 2:
            continue
        a, b = y.inputs
        for side, (xv, q) in enumerate(((a, b), (b, a))):
            xv_src = xv.inputs[0] if xv.op == "transpose" else xv
            if id(xv_src) in x_pos and id(q) not in x_pos and q.op != "placeholder" \
                    and q.ndim == 2:
                plan.append((j, side, xv, xv_src, q))
                break
    if not plan:
        return n
    for j, side, xv, xv_src, q in plan:
        outs[nc + j] = q
    body2 = Graph(body.inputs, outs)
    new = rebuild(n, n.inputs, dict(p, body=body2))
    xs_outer = n.inputs[nc:nc + nx]
    for j, side, xv, xv_src, q in plan:
        X = xs_outer[x_pos[id(xv_src)]]
        if xv.op == "transpose":
            X = ag.transpose(X, (0,) + tuple(i + 1 for i in xv.params["perm"]))
        Q = ag.item(new, nc + j)
        replace[(id(new), nc + j)] = ag.matmul(X, Q) if side == 0 else ag.matmul(Q, X)
    return new


# ----------------------------------------------------------------------------- transposed products

# Results from which (A·B)ᵀ is formed as Bᵀ·Aᵀ: below, the copy sits in L2 and the
# product in its own orientation ran faster (a small GRU step in shards, float32: the
# weight gradients [384, 64] and [384, 128] over K = 512 took 12.2 ms as Bᵀ·Aᵀ, 8.5 ms
# as A·B and a copy).
TRANSPOSED_PRODUCT_BYTES = 1 << 20


def transposed_products(graph: Graph) -> Graph:
    """(A·B)ᵀ → Bᵀ·Aᵀ, and (Σ_t A_t·B_t)ᵀ → Σ_t B_tᵀ·A_tᵀ, for results of
    TRANSPOSED_PRODUCT_BYTES or more where nothing else reads the product: it then
    writes its result in the layout asked for, instead of a temporary that a
    transposing copy reads down its columns. The gradient of a
    weight used as x·Wᵀ (PyTorch's [4H, D] layout) was such a copy: (Σ_t X_tᵀ·δ_t)ᵀ,
    4 MB of float32 for a D = H = 512 LSTM, copied at a stride of 8 KB per element.
    The operands' transposes are views (or undo a transpose already there)."""
    users: dict[int, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users[id(i)] = users.get(id(i), 0) + 1
    for y in graph.outputs:
        users[id(y)] = users.get(id(y), 0) + 1

    def alone(n):
        return users.get(id(n), 0) == 1

    def swapped(x):
        perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
        if x.op == "transpose" and x.params["perm"] == perm:
            return x.inputs[0]
        return ag.transpose(x, perm)

    def summed(src, new):
        """The rebuilt batched product that `src` sums over its first axis (the sum's
        kept axis reshaped away, or not kept), or None."""
        if (src.op == "reshape" and alone(src) and src.inputs[0].op == "sum"
                and src.inputs[0].params["keepdims"] and src.shape == src.inputs[0].shape[1:]):
            src, new = src.inputs[0], new.inputs[0]
        elif src.op != "sum" or src.params["keepdims"]:
            return None
        if (alone(src) and src.params["axes"] == (0,) and src.inputs[0].op == "matmul"
                and alone(src.inputs[0]) and all(x.ndim == 3 for x in new.inputs[0].inputs)):
            return new.inputs[0]
        return None

    def large(n):
        return all(isinstance(d, int) for d in n.shape) and \
            np.prod(n.shape) * np.dtype(n.dtype).itemsize >= TRANSPOSED_PRODUCT_BYTES

    def fn(n, ins):
        if (n.op == "transpose" and n.ndim == 2 and n.params["perm"] == (1, 0)
                and large(n)):
            src, new = n.inputs[0], ins[0]
            if src.op == "matmul" and alone(src) and all(x.ndim == 2 for x in new.inputs):
                a, b = new.inputs
                return ag.matmul(swapped(b), swapped(a))
            product = summed(src, new)
            if product is not None:
                a, b = product.inputs
                return ag.sum(ag.matmul(swapped(b), swapped(a)), axis=0)
        return rebuild(n, ins)
    return transform(graph, fn)


# ----------------------------------------------------------------------------- sink

def sink(graph: Graph) -> Graph:
    """The inverse of `hoist` for cheap work: an elementwise value over all steps that
    only one loop reads (the derivative σ(1 − σ) of stored gates, say) is computed in
    that loop, step by step, fused with its neighbours — instead of being stored as a
    [T, …] array and read back. Products and reductions stay hoisted."""
    for _ in range(256):                    # one link of each chain per round
        users: dict[int, list] = {}
        for n in graph.nodes:
            for i in n.inputs:
                users.setdefault(id(i), []).append(n)
        outputs = {id(y) for y in graph.outputs}
        changed = []

        def fn(n, ins):
            n2 = rebuild(n, ins)
            if n.op == "scan" and n2 is n:
                m = _sink_one(n, users, outputs)
                if m is not None:
                    changed.append(m)
                    return m
            return n2
        graph = transform(graph, fn)
        if not changed:
            return graph
    return graph


_SUNK = itertools.count()


def _sink_one(n: Node, users, outputs) -> Node | None:
    p = n.params
    body: Graph = p["body"]
    nc, nx = p["n_carry"], p["n_xs"]
    T = p["length"]
    init, xs, consts = n.inputs[:nc], n.inputs[nc:nc + nx], n.inputs[nc + nx:]
    for j, v in enumerate(xs):
        if v.op not in ELEMENTWISE or id(v) in outputs or not v.inputs:
            continue
        if any(u is not n for u in users.get(id(v), [])) or list(n.inputs).count(v) != 1:
            continue
        kinds = []
        for i in v.inputs:
            if i.ndim == v.ndim and i.shape[0] == T and v.shape[0] == T:
                kinds.append("seq")
            elif i.ndim < v.ndim:
                kinds.append("inv")
            else:
                kinds = None
                break
        if not kinds or "seq" not in kinds:
            continue
        # the body gets v's inputs (sequence slices or invariants) and computes v itself
        new_x, new_k, args = [], [], []
        for i, kind in zip(v.inputs, kinds):
            outer, inner = (xs, body.inputs[nc:nc + nx]) if kind == "seq" else \
                (consts, body.inputs[nc + nx:])
            known = [b for o, b in zip(outer, inner) if o is i and o is not v]
            if known:                       # already a sequence / invariant of the loop
                args.append(known[0])
                continue
            ph = ag.placeholder(f"{i.name or i.op}_sunk{next(_SUNK)}",
                                i.shape[1:] if kind == "seq" else i.shape, i.dtype)
            (new_x if kind == "seq" else new_k).append((ph, i))
            args.append(ph)
        step_v = make(v.op, tuple(args), dict(v.params))
        old_in = body.inputs[nc + j]
        memo = {id(old_in): step_v}
        for b in body.inputs:
            memo.setdefault(id(b), b)
        for b in body.nodes:
            if id(b) not in memo:
                memo[id(b)] = rebuild(b, [memo[id(i)] for i in b.inputs])
        outs = [memo[id(y)] for y in body.outputs]
        x_in = [b for k, b in enumerate(body.inputs[nc:nc + nx]) if k != j]
        xs2 = [x for k, x in enumerate(xs) if k != j]
        body2 = Graph(list(body.inputs[:nc]) + x_in + [ph for ph, _ in new_x]
                      + list(body.inputs[nc + nx:]) + [ph for ph, _ in new_k], outs)
        params = dict(p, body=body2, n_xs=len(x_in) + len(new_x),
                      n_consts=len(consts) + len(new_k))
        return rebuild(n, list(init) + xs2 + [i for _, i in new_x] + list(consts)
                       + [i for _, i in new_k], params)
    return None


# ----------------------------------------------------------------------------- duplicate outputs

def dedupe_outputs(graph: Graph) -> Graph:
    """A scan whose body yields the same value twice (the reverse loop of a gradient
    yields δ_t once per weight it feeds) is read through its first copy only, so the
    loop stores it once."""
    def fn(n, ins):
        if n.op == "item":
            s = ins[0]
            if s.op == "scan":
                p = s.params
                nc, outs = p["n_carry"], p["body"].outputs
                i = n.params["index"]
                if nc <= i < len(outs):
                    first = next(k for k in range(nc, len(outs)) if outs[k] is outs[i])
                    if first != i:
                        return ag.item(s, first)
        return rebuild(n, ins)
    return transform(graph, fn)


# ----------------------------------------------------------------------------- stored activations

RECOMPUTED = {"add", "sub", "mul", "neg"}   # see `store_activations`


def store_activations(graph: Graph) -> Graph:
    """Values that the backward pass recomputes for all steps at once from a forward
    scan's stored states (the gates σ(z_t), tanh(c_t), … after `hoist`) are the values
    the forward loop computed at each step: the forward loop stores them instead.

    A top-level node is matched to a body node of scan S when it is the same op with the
    same params on matched inputs: S's carry history ↔ the body's carry, S's sequences
    ↔ the body's step slices, S's loop-invariant inputs ↔ the body's, equal constants.
    The matched nodes that unmatched nodes read become new outputs of S, and the
    recomputation (an extra product of the recurrent size, for a gated cell) is gone.
    """
    plans = {}          # id(scan) -> [(top node, body node)]
    for n in graph.nodes:
        if n.op == "scan":
            found = _match_body(graph, n)
            if found:
                plans[id(n)] = found
    if not plans:
        return graph
    frontier = {}       # id(top node) -> (id(scan), body node)
    users: dict[int, list] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(id(i), []).append(n)
    outputs = {id(y) for y in graph.outputs}
    for sid, found in plans.items():
        matched = {id(t) for t, _ in found}
        for t, b in found:
            if id(t) in outputs or any(id(u) not in matched for u in users.get(id(t), [])):
                frontier[id(t)] = (sid, b)
        # Arithmetic on values that are stored anyway (1 − z of a GRU's stored gate z)
        # is not stored as well: `sink` computes it in the loop that reads it, from
        # the stored values, and a [T, …] stack is saved.
        for t, _ in found:
            if (id(t) in frontier and t.op in RECOMPUTED and id(t) not in outputs
                    and all(id(i) not in matched or id(i) in frontier for i in t.inputs)):
                del frontier[id(t)]
    new_scans, index_map = {}, {}

    def fn(n, ins):
        if n.op == "scan" and id(n) in plans:
            p = n.params
            nc, body = p["n_carry"], p["body"]
            n_ys = len(body.outputs) - nc
            extra = []
            for t, b in plans[id(n)]:
                if id(t) in frontier and b not in body.outputs[nc:] and b not in extra:
                    extra.append(b)
            outs = list(body.outputs[:nc + n_ys]) + extra
            new = rebuild(n, ins, dict(p, body=Graph(body.inputs, outs)))
            where = {id(b): nc + n_ys + k for k, b in enumerate(extra)}
            where.update({id(y): nc + k for k, y in enumerate(body.outputs[nc:])})
            new_scans[id(n)] = new
            index_map[id(n)] = (nc + n_ys, len(extra), where)
            return new
        if n.op == "item" and id(n.inputs[0]) in new_scans:
            start, shift, _ = index_map[id(n.inputs[0])]
            i = n.params["index"]
            return ag.item(new_scans[id(n.inputs[0])], i + shift if i >= start else i)
        if id(n) in frontier:
            sid, b = frontier[id(n)]
            if sid in new_scans:
                return ag.item(new_scans[sid], index_map[sid][2][id(b)])
        return rebuild(n, ins)
    return transform(graph, fn)


def _match_body(graph: Graph, scan: Node):
    """[(top-level node, body node)] of the values of `graph` that are `scan`'s body
    values, stacked over time (see `store_activations`)."""
    p = scan.params
    body: Graph = p["body"]
    nc, nx, T = p["n_carry"], p["n_xs"], p["length"]
    if p["reverse"]:
        return []
    n_ys = len(body.outputs) - nc
    table = {}
    for b in body.nodes:
        if b.op not in ("placeholder", "scan"):
            table.setdefault(_key(b.op, b.params, b.inputs), b)
    # top-level value -> (body node, stacked over time?)
    mapped = {}
    for k, (b, v) in enumerate(zip(body.inputs, scan.inputs)):
        if k >= nc:
            mapped[id(v)] = (b, k < nc + nx)
    for n in graph.nodes:
        if n.op == "item" and n.inputs[0] is scan:
            i = n.params["index"]
            if nc + n_ys <= i < nc + n_ys + nc:
                mapped[id(n)] = (body.inputs[i - nc - n_ys], True)
            elif nc <= i < nc + n_ys:
                mapped[id(n)] = (body.outputs[i], True)
    found = []
    for n in graph.nodes:
        if id(n) in mapped or n.op in ("placeholder", "scan", "item"):
            continue
        if not n.inputs:                    # a constant: the body's equal constant
            b = table.get(_key(n.op, n.params, ()))
            if b is not None:
                mapped[id(n)] = (b, False)
            continue
        if not all(id(i) in mapped for i in n.inputs):
            continue
        stacked = [mapped[id(i)][1] for i in n.inputs]
        if not any(stacked):
            continue
        params = n.params
        if n.op == "slice":
            if not (stacked[0] and params["index"][:1] == (slice(None),)):
                continue
            params = dict(params, index=tuple(params["index"][1:]),
                          in_shape=tuple(params["in_shape"][1:]))
        elif n.op not in ELEMENTWISE and n.op != "matmul":
            continue
        b = table.get(_key(n.op, params, [mapped[id(i)][0] for i in n.inputs]))
        if b is None or tuple(n.shape) != (T,) + tuple(b.shape):
            continue
        if n.op == "matmul" and not stacked[0]:
            continue                        # only (stacked)·(invariant) keeps the layout
        mapped[id(n)] = (b, True)
        found.append((n, b))
    return found


PASSES = [("simplify", simplify), ("fold", fold), ("cse", cse), ("hoist", hoist),
          ("weight_sums", weight_sums), ("dedupe_outputs", dedupe_outputs),
          ("simplify", simplify), ("cse", cse), ("transposed_products", transposed_products),
          ("store_activations", store_activations), ("sink", sink), ("cse", cse)]


def rewrite(graph: Graph, trace: bool = False):
    """Run every pass of `PASSES`; with `trace`, also return [(name, graph)] per stage."""
    stages = []
    for name, run in PASSES:
        graph = run(graph)
        stages.append((name, graph))
    return (graph, stages) if trace else graph

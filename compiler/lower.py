"""Lowering: a graph becomes a loop-IR `Program`.

Each op has one rule in `LOWER`, keyed by the op's name (the coverage test checks
that every op of `autograph.ops.OPS` has one). A rule receives the values of the
node's inputs and returns the node's value, which is one of
  Ref   a strided view of a buffer (views — reshape, transpose, slice, broadcast —
        cost nothing: they only change offset, shape and strides);
  Lit   one number everywhere (scalar constants, `full`, dim sizes);
  Lazy  an elementwise tree not yet stored. A value with a single consumer stays
        lazy and is inlined into that consumer, so chains of elementwise ops fuse
        into one loop; anything else is stored (`materialize`) into a new buffer.
A scan becomes a `Loop` whose trip count is its (possibly symbolic) length; its body
is lowered once, so compile time does not depend on T.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from autograph.graph import Graph

from . import inplace
from .expr import Expr, product, row_major
from .loopir import (Apply, Buffer, Check, Const, Gather, Iota, Lazy, Lit, Load, Loop, Map,
                     MatMul, Program, Reduce, Ref, ScatterAdd, tree_refs, walk)

LOWER: dict = {}

ELEMENTWISE = ("exp", "log", "tanh", "sigmoid", "sqrt", "neg", "abs", "sign", "relu",
               "add", "sub", "mul", "div", "pow", "maximum", "minimum",
               "greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
               "logical_and", "logical_or", "logical_not", "where", "cast")

ERR_INDEX, ERR_ZERO_DIV, ERR_NEG_POW = 1, 2, 3
INPLACE = True    # stacked outputs of a loop in place of the sequences it has read (inplace.py)
HISTORY_IN_STACK = True   # a carry's history and its stacked new values share one [T + 1] stack
MAX_FUSED = 48   # ops in one fused elementwise tree; longer chains are stored in pieces


def tree_size(tree, cap: int) -> int:
    """Nodes of a scalar tree, counting stops at `cap`."""
    n, stack = 0, [tree]
    while stack and n < cap:
        t = stack.pop()
        n += 1
        if isinstance(t, Apply):
            stack.extend(t.args)
        elif isinstance(t, Gather):
            stack.append(t.idx)
    return n


def rule(*names):
    def deco(fn):
        for n in names:
            LOWER[n] = fn
        return fn
    return deco


def S(shape) -> tuple:
    return tuple(Expr.of(d) for d in shape)


def index0(v, t: Expr):
    """Step t of a value with a leading time axis."""
    if isinstance(v, Lit):
        return Lit(v.value, v.dtype, v.shape[1:])
    return Ref(v.buf, v.offset + t * v.strides[0], v.shape[1:], v.strides[1:])


def broadcast_view(ref: Ref, shape) -> Ref:
    """`ref` seen with NumPy broadcasting as an array of `shape` (stride 0 where repeated)."""
    shape = tuple(shape)
    lead = len(shape) - ref.ndim
    strides = [Expr.of(0)] * lead
    for d_in, d_out, st in zip(ref.shape, shape[lead:], ref.strides):
        strides.append(Expr.of(0) if d_in == Expr.of(1) and d_out != Expr.of(1) else st)
    return Ref(ref.buf, ref.offset, shape, tuple(strides))


def left_view(ref: Ref, shape) -> Ref:
    """`ref` (of the leading dims of `shape`) repeated along the trailing dims."""
    shape = tuple(shape)
    return Ref(ref.buf, ref.offset, shape,
               tuple(ref.strides) + (Expr.of(0),) * (len(shape) - ref.ndim))


class Lowering:
    """State of one lowering: buffers made so far, checks, loop variable names."""

    def __init__(self, approved=frozenset()):
        self.approved = set(approved)       # (scan, output) stored in place (inplace.py)
        self.proposals: list = []
        self.buffers: list[Buffer] = []
        self.constraints: list = []
        self.errors: dict = {}
        self._ids = itertools.count()
        self._loops = itertools.count()
        self.items: dict[int, set] = {}     # scan node → which of its outputs are used
        self.fuse_sum: set[int] = set()     # matmuls whose only use is a sum over axis 0
        self.invariant: set = set()         # loop-invariant buffers of the loop being lowered
        self.depth = 0                      # loops around the statements being lowered
        self.panels: dict = {}              # view of a weight → its panel-packed copy

    # ----------------------------------------------------------------- buffers

    def new(self, shape, dtype, kind="arena", name="") -> Ref:
        shape = S(shape)
        buf = Buffer(next(self._ids), dtype, product(shape), kind, name=name)
        self.buffers.append(buf)
        return Ref.full(buf, shape)

    def tree(self, v, shape, body) -> object:
        """A scalar tree that reads `v` broadcast to `shape`."""
        shape = tuple(shape)
        if isinstance(v, Lit):
            return Const(v.value, v.dtype)
        if isinstance(v, Lazy):
            if tuple(v.shape) == shape:
                return v.tree
            v = self.materialize(v, body)
        return Load(broadcast_view(v, shape))

    def store(self, dst: Ref, v, body) -> None:
        body.append(Map(dst, self.tree(v, dst.shape, body)))

    def materialize(self, v, body) -> Ref:
        """`v` stored in a buffer (a Ref stays as it is)."""
        if isinstance(v, Ref):
            return v
        ref = self.new(v.shape, v.dtype)
        self.store(ref, v, body)
        return ref

    def contiguous(self, v, body) -> Ref:
        v = self.materialize(v, body)
        if v.strides == row_major(v.shape):
            return v
        ref = self.new(v.shape, v.dtype)
        self.store(ref, v, body)
        return ref

    def check(self, shape, cond, code, value, message, body):
        self.errors.setdefault(code, {})
        key = len(self.errors[code])
        self.errors[code][key] = message
        body.append(Check(tuple(shape), cond, code * 1000 + key, value))

    # ----------------------------------------------------------------- graphs

    def lower_nodes(self, graph: Graph, env: dict, body: list) -> list:
        """Lower the nodes of `graph` (inputs already in `env`); values of its outputs."""
        users: dict[int, int] = {}
        items: dict[int, set] = {}
        for n in graph.nodes:
            for i in n.inputs:
                users[id(i)] = users.get(id(i), 0) + 1
            if n.op == "item":
                items.setdefault(id(n.inputs[0]), set()).add(n.params["index"])
        for y in graph.outputs:
            users[id(y)] = users.get(id(y), 0) + 2   # an output is always stored
        # sum(matmul(A, B), axis 0) over a batch of steps: one GEMM with K = T·K.
        fuse_sum = {id(n.inputs[0]) for n in graph.nodes
                    if n.op == "sum" and n.params["axes"] == (0,) and n.inputs[0].op == "matmul"
                    and n.inputs[0].ndim == 3 and users.get(id(n.inputs[0])) == 1}
        # a scan body is lowered by a nested call: keep this graph's tables around it
        saved = self.items, self.fuse_sum
        self.items, self.fuse_sum = items, fuse_sum
        try:
            return self._lower_each(graph, env, body, users)
        finally:
            self.items, self.fuse_sum = saved

    def _lower_each(self, graph, env, body, users):
        for n in graph.nodes:
            if id(n) in env:
                continue
            vals = [env[id(i)] for i in n.inputs]
            v = LOWER[n.op](self, n, vals, body)
            if isinstance(v, Lazy) and (users.get(id(n), 0) != 1
                                        or tree_size(v.tree, MAX_FUSED) >= MAX_FUSED):
                v = self.materialize(v, body)
            env[id(n)] = v
        return [env[id(y)] for y in graph.outputs]

    def lower_graph(self, graph: Graph) -> Program:
        env, inputs = {}, []
        for i, x in enumerate(graph.inputs):
            ref = self.new(x.shape, x.dtype, kind="input", name=x.name)
            ref.buf.index = i
            inputs.append(ref.buf)
            env[id(x)] = ref
        body: list = []
        outs = self.lower_nodes(graph, env, body)
        out_bufs, out_shapes, claimed = [], [], set()
        for k, (y, v) in enumerate(zip(graph.outputs, outs)):
            shape = S(y.shape)
            if isinstance(v, Ref) and v.buf.kind == "arena" and v.is_contiguous() \
                    and v.buf.id not in claimed:
                buf = v.buf
                claimed.add(buf.id)
            else:
                ref = self.new(shape, y.dtype)
                self.store(ref, v, body)
                buf = ref.buf
            buf.kind, buf.index = "output", k
            buf.name = buf.name or f"out{k}"
            out_bufs.append(buf)
            out_shapes.append(shape)
        symbols = set()
        for b in self.buffers:
            symbols |= b.size.symbols
        for s in walk(body):
            for r in s.refs():
                symbols |= r.offset.symbols
                for e in r.shape + r.strides:
                    symbols |= e.symbols
            if isinstance(s, Loop):
                symbols |= s.count.symbols
        for n in graph.nodes:
            for d in n.shape or ():
                if isinstance(d, str):
                    symbols.add(d)
        dims = sorted(s for s in symbols if not s.startswith("$"))
        return Program(inputs, out_bufs, out_shapes, self.buffers, body, dims,
                       self.constraints, self.errors)


# ----------------------------------------------------------------------------- sources

@rule("placeholder")
def _placeholder(lw, node, vals, body):
    raise ValueError(f"placeholder {node.label!r} is not an input of the compiled graph")


@rule("constant")
def _constant(lw, node, vals, body):
    value = node.params["value"]
    if value.ndim == 0:
        return Lit(value.item(), node.dtype, ())
    ref = lw.new(node.shape, node.dtype, kind="const", name=node.name or "")
    ref.buf.data = np.ascontiguousarray(value)
    return ref


@rule("full")
def _full(lw, node, vals, body):
    return Lit(node.params["value"], node.dtype, S(node.shape))


@rule("shape_size")
def _shape_size(lw, node, vals, body):
    return Lit(product(S(node.params["dims"])), node.dtype, ())


# ----------------------------------------------------------------------------- elementwise

@rule(*ELEMENTWISE)
def _elementwise(lw, node, vals, body):
    shape = S(node.shape)
    args = tuple(lw.tree(v, shape, body) for v in vals)
    if node.dtype != "bool" and node.op in ("div", "pow") and vals[0].dtype == "int64":
        code, what = ((ERR_ZERO_DIV, "integer division by zero in a graph")
                      if node.op == "div" else
                      (ERR_NEG_POW, "integer power with a negative exponent; use float operands"))
        bad = Apply("equal" if node.op == "div" else "less", (args[1], Const(0, "int64")), "bool")
        lw.check(shape, bad, code, args[1], what, body)
    params = (("dtype", node.params["dtype"]),) if node.op == "cast" else ()
    return Lazy(Apply(node.op, args, node.dtype, params), node.dtype, shape)


@rule("stop_gradient")
def _identity(lw, node, vals, body):
    return vals[0]


@rule("bind_dims")
def _bind_dims(lw, node, vals, body):
    for a, b in zip(node.params["shape"], node.params["in_shape"]):
        if isinstance(a, int) != isinstance(b, int):
            sym, static = (a, b) if isinstance(a, str) else (b, a)
            lw.constraints.append(("eq", sym, static,
                                   f"this graph was built for {sym}={static} (by unroll, or with "
                                   f"a fixed size), but it is called with {sym}={{value}}"))
    v = vals[0]
    shape = S(node.shape)
    if isinstance(v, Ref):
        return Ref(v.buf, v.offset, shape, v.strides)
    return Lit(v.value, v.dtype, shape) if isinstance(v, Lit) else Lazy(v.tree, v.dtype, shape)


# ----------------------------------------------------------------------------- views

@rule("reshape")
def _reshape(lw, node, vals, body):
    v = vals[0]
    shape = S(node.shape)
    if isinstance(v, Lit):
        return Lit(v.value, v.dtype, shape)
    v = lw.contiguous(v, body)
    return Ref(v.buf, v.offset, shape, row_major(shape))


@rule("transpose")
def _transpose(lw, node, vals, body):
    v = vals[0]
    perm = node.params["perm"]
    if isinstance(v, Lit):
        return Lit(v.value, v.dtype, S(node.shape))
    v = lw.materialize(v, body)
    return Ref(v.buf, v.offset, tuple(v.shape[i] for i in perm), tuple(v.strides[i] for i in perm))


@rule("broadcast_to")
def _broadcast_to(lw, node, vals, body):
    v = vals[0]
    shape = S(node.shape)
    if isinstance(v, Lit):
        return Lit(v.value, v.dtype, shape)
    return broadcast_view(lw.materialize(v, body), shape)


def slice_view(lw, ref: Ref, index, in_shape) -> Ref:
    offset, shape, strides = ref.offset, [], []
    for d, ix, st, dim in zip(ref.shape, index, ref.strides, in_shape):
        if isinstance(ix, int):
            if isinstance(dim, str):
                lw.constraints.append(("range", dim, ix, f"slice: index {ix} is out of range "
                                       f"for axis of size {dim}={{value}}"))
                at = Expr.of(ix) if ix >= 0 else d + ix
            else:
                at = Expr.of(ix % dim)
            offset = offset + at * st
            continue
        if isinstance(dim, int):
            start, stop, step = ix.indices(dim)
            n = len(range(start, stop, step))
            offset = offset + Expr.of(start) * st
            shape.append(Expr.of(n))
            strides.append(st * step)
        elif ix.step == -1:
            offset = offset + (d - 1) * st
            shape.append(d)
            strides.append(-st)
        else:
            shape.append(d)
            strides.append(st)
    return Ref(ref.buf, offset, tuple(shape), tuple(strides))


@rule("slice")
def _slice(lw, node, vals, body):
    v = vals[0]
    if isinstance(v, Lit):
        slice_view(lw, lw.new((), v.dtype), (), ())  # nothing to view; keep the value
        return Lit(v.value, v.dtype, S(node.shape))
    return slice_view(lw, lw.materialize(v, body), node.params["index"], node.params["in_shape"])


@rule("unslice")
def _unslice(lw, node, vals, body):
    out = lw.new(node.shape, node.dtype)
    lw.store(out, Lit(0, node.dtype, out.shape), body)
    view = slice_view(lw, out, node.params["index"], node.params["in_shape"])
    lw.store(view, vals[0], body)
    return out


@rule("concat")
def _concat(lw, node, vals, body):
    axis = node.params["axis"]
    out = lw.new(node.shape, node.dtype)
    at = 0
    for v, x in zip(vals, node.inputs):
        n = x.shape[axis]
        shape = out.shape[:axis] + (Expr.of(n),) + out.shape[axis + 1:]
        view = Ref(out.buf, out.offset + Expr.of(at) * out.strides[axis], shape, out.strides)
        lw.store(view, v, body)
        at += n
    return out


# ----------------------------------------------------------------------------- products, reductions

@dataclass(frozen=True)
class PendingMatMul:
    """A batched product whose only use is its sum over the batch (see `_sum_matmul`)."""

    a: Ref
    b: Ref
    dtype: str


@rule("matmul")
def _matmul(lw, node, vals, body):
    a, b = (lw.materialize(v, body) for v in vals)
    shape = S(node.shape)
    batch = shape[:-2]
    a = broadcast_view(a, batch + a.shape[-2:])
    b = broadcast_view(b, batch + b.shape[-2:])
    if id(node) in lw.fuse_sum:
        return PendingMatMul(a, b, node.dtype)
    out = lw.new(node.shape, node.dtype)
    flat = _flatten_batch(a, b, out)
    if flat:
        o, a2, b2 = flat
        if lw.depth == 0 and _transposed_for_tiles(a2, b2):
            b2 = lw.contiguous(b2, body)
        body.append(MatMul(o, a2, b2))
        return out
    if lw.depth == 0 and _transposed_for_tiles(a, b):
        b = lw.contiguous(b, body)
    packed = _panels(lw, a, b)
    if packed is not None and out.ndim == 2:
        width = packed.shape[0].const * packed.shape[2].const
        if width != out.shape[1].const:
            # N not a multiple of the panels' width: the last panel is padded with zero
            # columns, and so are out's rows, which the tiles write whole (the product's
            # readers see the N columns of a view)
            full = lw.new((out.shape[0], width), node.dtype)
            out = Ref(full.buf, full.offset, out.shape, (Expr.of(width), Expr.of(1)))
    elif packed is not None:
        packed = None
    body.append(MatMul(out, a, b, packed))
    return out


PACK_FOR_TILES = 1 << 16    # elements of a transposed weight copied for the tiles (0: never)


def _transposed_for_tiles(a: Ref, b: Ref) -> bool:
    """A small static weight read transposed (W.T: unit stride down its columns) by a
    product outside any loop: copied row-major first (K·N ≤ PACK_FOR_TILES numbers, a
    fraction of the product's work), so that the register tiles (`codegen`) can run it
    instead of a library call when it is small. Not for a known handful of rows (a
    B = 1 inference step), where the copy would cost as much as the product and the
    dot-product kernel reads W.T in place."""
    from . import vecmath
    if b.ndim != 2 or b.dtype not in ("float32", "float64") or vecmath.isa() is None:
        return False
    M = a.shape[-2]
    if M.is_const and M.const < 8:
        return False
    K, N = b.shape
    one = Expr.of(1)
    return (K.is_const and N.is_const and 0 < K.const * N.const <= PACK_FOR_TILES
            and b.strides[0] == one and b.strides[1] != one
            and N.const % (2 * vecmath.lanes(b.dtype)) == 0)


def _panels(lw, a: Ref, b: Ref) -> Ref | None:
    """A per-step product h·W inside a loop, with W loop-invariant and static: a buffer
    for W in panels [N / NR, K, NR] (NR = two vector widths), which the register-tiled
    kernel of `codegen` fills once per run of the loop and streams through; None where
    that does not apply (then BLAS or the generated loops run the product as given)."""
    from . import vecmath
    host = vecmath.isa()
    if (a.ndim != 2 or b.buf.id not in lw.invariant or host is None
            or a.dtype not in ("float32", "float64")):
        return None
    K, N = b.shape
    nr = 2 * host[1] // (4 if a.dtype == "float32" else 8)
    if not (K.is_const and N.is_const) or K.const == 0 or N.const < nr:
        return None
    key = b.view
    if key not in lw.panels:        # filled by the kernel when a tiled product first runs
        lw.panels[key] = lw.new((-(-N.const // nr), K, nr), b.dtype)   # last one padded
    return lw.panels[key]


def _flatten_batch(a: Ref, b: Ref, out: Ref):
    """A batch of products that share B (stride 0 over the batch) is one product of
    the stacked rows: [T, M, K]·[K, N] → [T·M, K]·[K, N] (X·U of every step at once).
    (out, a, b) as 2-D views, or None when A's rows cannot be stacked without a copy."""
    nb = out.ndim - 2
    zero = Expr.of(0)
    if nb == 0 or any(st != zero for st in b.strides[:nb]):
        return None
    rows = a.shape[:-1]           # batch dims and M: one stride step apart each?
    for i in range(len(rows) - 1):
        if a.strides[i] != a.strides[i + 1] * rows[i + 1]:
            return None
    m = product(rows)
    a2 = Ref(a.buf, a.offset, (m, a.shape[-1]), (a.strides[-2], a.strides[-1]))
    b2 = Ref(b.buf, b.offset, b.shape[-2:], b.strides[-2:])
    o2 = Ref(out.buf, out.offset, (m, out.shape[-1]), (out.strides[-2], out.strides[-1]))
    return o2, a2, b2


def _sum_matmul(lw, node, pm: PendingMatMul, body):
    """Σ_t A_t·B_t = [A_1 … A_T]·[B_1; …; B_T]: one product with K' = T·K, on views
    when the layout allows it (else after one copy into that layout)."""
    a, b = pm.a, pm.b
    T, M, K = a.shape
    N = b.shape[2]
    if a.strides[0] != K * a.strides[2] or a.strides[0] == Expr.of(0):
        tmp = lw.new((M, T, K), a.dtype)
        lw.store(tmp, Ref(a.buf, a.offset, (M, T, K), (a.strides[1], a.strides[0], a.strides[2])),
                 body)
        a = Ref(tmp.buf, tmp.offset, (T, M, K), (tmp.strides[1], tmp.strides[0], tmp.strides[2]))
    if b.strides[0] != K * b.strides[1] or b.strides[0] == Expr.of(0):
        b = lw.contiguous(b, body)
    a2 = Ref(a.buf, a.offset, (M, T * K), (a.strides[1], a.strides[2]))
    b2 = Ref(b.buf, b.offset, (T * K, N), (b.strides[1], b.strides[2]))
    out = lw.new(node.shape, node.dtype)      # [M, N], or [1, M, N] with keepdims
    body.append(MatMul(Ref(out.buf, out.offset, (M, N), out.strides[-2:]), a2, b2))
    return out


@rule("sum", "max")
def _reduce(lw, node, vals, body):
    if isinstance(vals[0], PendingMatMul):
        return _sum_matmul(lw, node, vals[0], body)
    x = node.inputs[0]
    axes = node.params["axes"]
    in_shape = S(x.shape)
    out = lw.new(node.shape, node.dtype)
    if node.op == "sum":
        init = 0
    else:
        init = -math.inf if node.dtype in ("float32", "float64") else np.iinfo(np.int64).min
        lw.constraints.append(("nonempty", product(in_shape[a] for a in axes),
                               "max of an empty array: bind the reduced dims to at least 1"))
    lw.store(out, Lit(init, node.dtype, out.shape), body)
    strides, k = [], 0
    for i in range(len(in_shape)):
        if i in axes:
            strides.append(Expr.of(0))
            if node.params["keepdims"]:
                k += 1
        else:
            strides.append(out.strides[k])
            k += 1
    view = Ref(out.buf, out.offset, in_shape, tuple(strides))
    body.append(Reduce(view, lw.tree(vals[0], in_shape, body), node.op, in_shape))
    return out


# ----------------------------------------------------------------------------- indexing

def _index_tree(lw, v, shape, body):
    """An int index value (of the leading dims of `shape`) as a tree over `shape`."""
    if isinstance(v, Lit):
        return Const(v.value, v.dtype)
    return Load(left_view(lw.materialize(v, body), shape))


def _check_rows(lw, op, idx_val, rows, body):
    shape = idx_val.shape
    t = lw.tree(idx_val, shape, body) if not isinstance(idx_val, Lazy) else \
        Load(lw.materialize(idx_val, body))
    bad = Apply("logical_or", (Apply("less", (t, Const(0, "int64")), "bool"),
                               Apply("greater_equal", (t, Const(rows, "int64")), "bool")), "bool")
    lw.check(shape, bad, ERR_INDEX, t,
             f"{op}: index {{value}} is out of range for a table of {rows} rows", body)


@rule("take")
def _take(lw, node, vals, body):
    table, idx = vals
    table = lw.materialize(table, body)
    if isinstance(idx, Lazy):
        idx = lw.materialize(idx, body)
    _check_rows(lw, "take", idx, table.shape[0], body)
    shape = S(node.shape)
    return Lazy(Gather(table, _index_tree(lw, idx, shape, body), len(idx.shape)),
                node.dtype, shape)


@rule("take_grad")
def _take_grad(lw, node, vals, body):
    ct, idx = (lw.materialize(v, body) for v in vals)
    rows = Expr.of(node.params["rows"])
    _check_rows(lw, "take_grad", idx, rows, body)
    out = lw.new(node.shape, node.dtype)
    lw.store(out, Lit(0, node.dtype, out.shape), body)
    body.append(ScatterAdd(out, ct, idx))
    return out


@rule("one_hot")
def _one_hot(lw, node, vals, body):
    idx = vals[0]
    if isinstance(idx, Lazy):
        idx = lw.materialize(idx, body)
    depth = node.params["depth"]
    _check_rows(lw, "one_hot", idx, Expr.of(depth), body)
    shape = S(node.shape)
    hit = Apply("equal", (_index_tree(lw, idx, shape, body), Iota(len(shape) - 1)), "bool")
    return Lazy(Apply("cast", (hit,), node.dtype, (("dtype", node.dtype),)), node.dtype, shape)


# ----------------------------------------------------------------------------- scan

@rule("item")
def _item(lw, node, vals, body):
    return vals[0][node.params["index"]]


@rule("scan")
def _scan(lw, node, vals, body):
    """
    carry ← init
    for t in range(T) (reversed if reverse):
        hist[t] ← carry                      (only if the history is used)
        <body nodes>                         (x_t are views xs[t]; consts are outer values)
        ys[t] ← y_t
        carry ← new carry                    (staged through a temp if it reads a carry)
    final ← carry
    """
    p = node.params
    g: Graph = p["body"]
    nc, nx = p["n_carry"], p["n_xs"]
    used = lw.items.get(id(node), set())
    init, xs, consts = vals[:nc], vals[nc:nc + nx], vals[nc + nx:]
    xs = [lw.materialize(x, body) if isinstance(x, Lazy) else x for x in xs]
    # Loop-invariant operands are packed row-major once, before the loop: a transposed
    # weight (W.T is a strided view) read with unit stride by every step's product.
    consts = [lw.contiguous(c, body) for c in consts]
    carries = []
    for b, v in zip(g.inputs[:nc], init):
        ref = lw.new(b.shape, b.dtype, name=f"carry_{b.name}")
        lw.store(ref, v, body)
        carries.append(ref)
    types = p["out_types"]
    n_ys = len(g.outputs) - nc
    # a carry whose history and whose new values are both stacked: one [T + 1] stack
    shared = {}
    for i in range(nc):
        k = next((k for k in range(n_ys) if g.outputs[nc + k] is g.outputs[i]
                  and nc + k in used and k not in shared.values()), None)
        if k is not None and nc + n_ys + i in used and HISTORY_IN_STACK:
            shared[i] = k
    hist = [lw.new(types[nc + n_ys + i][0], types[nc + n_ys + i][1])
            if nc + n_ys + i in used and i not in shared else None for i in range(nc)]
    ys = [None] * n_ys
    for i, k in shared.items():
        hist[i], ys[k] = _history_and_stack(lw, types[nc + k], p["reverse"])
    var = f"$t{next(lw._loops)}"
    t = Expr.of(var)
    loop = Loop(var, Expr.of(p["length"]), p["reverse"])
    inner = loop.body
    for h, c in zip(hist, carries):
        if h is not None:
            lw.store(index0(h, t), c, inner)
    env = {}
    for b, c in zip(g.inputs[:nc], carries):
        env[id(b)] = c
    for b, x in zip(g.inputs[nc:nc + nx], xs):
        env[id(b)] = index0(x, t)
    for b, c in zip(g.inputs[nc + nx:], consts):
        env[id(b)] = c
    saved = lw.invariant, lw.panels
    lw.invariant, lw.panels = {c.buf.id for c in consts if isinstance(c, Ref)}, {}
    lw.depth += 1
    try:
        outs = lw.lower_nodes(g, env, inner)
    finally:
        lw.invariant, lw.panels = saved
        lw.depth -= 1
    carry_bufs = {c.buf.id for c in carries}
    homes, proposed = _homes(lw, node, xs, consts, carry_bufs, outs[nc:],
                             used - {nc + k for k in shared.values()}, inner, loop)
    for i, v in enumerate(outs[nc:]):
        if nc + i not in used:
            continue
        if i in shared.values():
            lw.store(index0(ys[i], t), v, inner)
            continue
        if i in homes:
            ys[i] = homes[i]
            continue
        ys[i] = lw.new(types[nc + i][0], types[nc + i][1])
        lw.store(index0(ys[i], t), v, inner)
        if i in proposed:
            lw.proposals.append(dataclasses.replace(proposed[i], own=ys[i].buf))
    staged = []
    for c, v in zip(carries, outs[:nc]):
        if v is c:
            staged.append(None)
            continue
        reads = ({v.buf.id} if isinstance(v, Ref) else
                 {r.buf.id for r in tree_refs(v.tree)} if isinstance(v, Lazy) else set())
        if reads & carry_bufs and not (isinstance(v, Ref) and v.buf is c.buf
                                       and v.offset == c.offset and v.strides == c.strides):
            tmp = lw.new(v.shape, v.dtype)
            lw.store(tmp, v, inner)
            v = tmp
        staged.append(v)
    for c, v in zip(carries, staged):
        if v is not None and not (isinstance(v, Ref) and v.buf is c.buf):
            lw.store(c, v, inner)
    # outputs stored in place of the sequence they were computed from: last in the step
    for i, h in sorted(homes.items()):
        v, dst = outs[nc + i], index0(h, t)
        if not (isinstance(v, Ref) and v.view == dst.view):     # already there
            lw.store(dst, v, inner)
    body.append(loop)
    return tuple(carries + ys + hist)


def _history_and_stack(lw, typ, reverse) -> tuple:
    """Views of one [T + 1, …] buffer: the carry at the start of each step (its history)
    and after it (its stacked new values) — the same values one step apart."""
    shape, dtype = S(typ[0]), typ[1]
    full = lw.new((shape[0] + 1,) + shape[1:], dtype)
    step = full.strides[0]
    first = Ref(full.buf, Expr.of(0), shape, full.strides)
    second = Ref(full.buf, step, shape, full.strides)
    return (second, first) if reverse else (first, second)


def _source(v, defs):
    """The elementwise tree that computed a step value: its own, or that of the one map
    of this step that stored it (`inplace.definitions`)."""
    if isinstance(v, Lazy):
        return v.tree
    if isinstance(v, Ref) and v.buf.id in defs and defs[v.buf.id].out.view == v.view:
        return defs[v.buf.id].tree
    return None


def _homes(lw, node, xs, consts, carry_bufs, values, used, inner, loop) -> tuple:
    """Stacked outputs stored in place of a sequence (see `inplace.py`): the homes of
    the approved ones (output index → view) and proposals for the others."""
    if not INPLACE:
        return {}, {}
    blocked = {c.buf.id for c in consts if isinstance(c, Ref)} | carry_bufs
    seqs = [x for x in xs if isinstance(x, Ref) and x.buf.kind == "arena"
            and x.buf.id not in blocked]
    options: dict = {}          # sequence buffer id → {output: [(home, depth, exclusive)]}
    defs = inplace.definitions(inner) if seqs else {}
    for i, v in enumerate(values):
        if node.params["n_carry"] + i not in used or isinstance(v, Lit) \
                or any(r.buf.id in carry_bufs for r in inplace.reads(v)):
            continue
        source = _source(v, defs)
        for x in seqs:
            found = inplace.candidates(x, v, source, defs, S(v.shape), loop.var)
            if found:
                options.setdefault(x.buf.id, {})[i] = found
                break
    homes, proposed = {}, {}
    for opts in options.values():
        for i, (h, _) in inplace.assign(opts, loop.var).items():
            key = (id(node), i)
            if key in lw.approved:
                homes[i] = h
            else:
                proposed[i] = inplace.Proposal(key, h, loop, None)
    return homes, proposed


def lower(graph: Graph) -> Program:
    """The loop-IR program of `graph` (before buffer planning), with the stacked outputs
    of loops stored in place of dead sequences where `inplace.approve` finds it safe:
    lowered again while new aliases are approved (one round per link of a chain)."""
    approved: set = set()
    for _ in range(inplace.MAX_ROUNDS):
        lw = Lowering(approved)
        prog = lw.lower_graph(graph)
        new = inplace.approve(prog, lw.proposals, approved)
        if not new:
            return prog
        approved |= new
    return Lowering(approved).lower_graph(graph)

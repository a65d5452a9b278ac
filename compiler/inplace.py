"""Stacked outputs of a loop stored in place of a sequence the loop has finished reading.

A training step keeps, for the backward pass, a [T, B, ·] stack per stored activation,
and it also holds [T, B, ·] sequences that die slice by slice as a loop walks them:
the hoisted input projection X·U (step t of the forward loop reads slice t, nothing
reads it again) and, in the reverse loop, the stored gates (step t reads slice t for
the last time when it computes the gradient of the pre-activations, dz_t). Storing a
stacked output in the slice its loop just finished with costs nothing, and the buffer
planner alone cannot find it: as whole buffers both sequences live across the loop.

An LSTM's gates go into the slices of X·U (each gate in its own column block), then
its dz stack into the same memory in the reverse loop: one [T, B, 4H] buffer instead
of three (13.6 instead of 21.6 [T, B, H] arena at the benchmark's medium size).

How it is decided, for a stacked output y of a scan and a sequence xs it reads:
- **locally, while the scan is lowered** (`home`): y's step t gets a *home* inside
  xs's slice t — the view through which y's value loads xs (a gate read in its own
  column block), or xs's whole slice when the layouts agree (dz over the gates).
  Its store is emitted last in the step, after the carries, and its value may read
  neither a carry nor xs (except at the home itself, element by element). Homes of
  several outputs in one sequence never overlap (`fuse._disjoint`).
- **globally, on the program lowered without the alias** (`approve`): xs's buffer is
  dead after the loop, y's buffer is untouched before it, and inside the loop every
  access to xs's buffer is a read whose footprint lies within slice t of the loop's
  index (so storing slice t cannot change what another step reads).
Lowering runs again with the approved aliases (`lower.lower`), until no new alias is
found: an alias can make another possible (the gates move into X·U, and then dz
into the gates).
"""
from __future__ import annotations

from dataclasses import dataclass

from .expr import Expr
from .fuse import _compose, _disjoint, _nonneg, _subview
from .loopir import Apply, Load, Loop, Map, Ref, tree_refs

MAX_ROUNDS = 4       # lowerings of one graph at most (each round approves a new link)
MAX_DEPTH = 2        # temporaries of a step looked through for the sequence's views


@dataclass(frozen=True)
class Proposal:
    """Stacked output `k` of the scan `node` stored in `home`, a view of a sequence's
    buffer; `loop` is the scan's loop and `own` the buffer y has without the alias."""

    key: tuple            # (id(scan node), k)
    home: Ref             # [T, step…] view of the sequence's buffer
    loop: Loop
    own: object           # Buffer


def split_linear(e: Expr, var: str):
    """(e0, s) with e = e0 + s·var and neither depending on var; None if e is not so."""
    base, coeff = {}, {}
    for k, v in e.terms.items():
        n = k.count(var)
        if n == 0:
            base[k] = v
        elif n == 1:
            rest = list(k)
            rest.remove(var)
            coeff[tuple(rest)] = v
        else:
            return None
    return Expr(base), Expr(coeff)


def within_slice(ref: Ref, var: str, stride: Expr) -> bool:
    """Every element `ref` addresses at loop index var = t lies in [t·stride,
    (t + 1)·stride) of its buffer, for every binding of the dims."""
    split = split_linear(ref.offset, var)
    if split is None or split[1] != stride:
        return False
    o0 = split[0]
    if any(s.startswith("$") for s in o0.symbols):
        return False
    last = o0
    for d, st in zip(ref.shape, ref.strides):
        if any(s.startswith("$") for s in st.symbols) or not _nonneg(st):
            return False
        last = last + (Expr.of(d) - 1) * st
    return _nonneg(o0) and _nonneg(stride - 1 - last)


def candidates(xs: Ref, value, source, defs, step_shape, var) -> list:
    """Where in sequence `xs` ([T, …], read as xs[t] at loop index `var`) the stacked
    output of step value `value` may be stored: [(home view, depth, exclusive)], the
    views through which its `source` tree loads xs (the fewest temporaries of the step
    deep, see `expand`; `defs` from `definitions`), or else xs's whole slice when the
    layouts agree."""
    t = Expr.of(var)
    s = xs.strides[0]
    step_shape = tuple(step_shape)
    found, seen = [], set()
    tree = source if reaches(source, defs, xs.buf.id, MAX_DEPTH) else None
    for depth in range(MAX_DEPTH + 1):
        if tree is None or found:
            break
        if depth:
            tree = expand(tree, defs, 1)
        for r in tree_refs(tree):
            if r.buf is not xs.buf or tuple(r.shape) != step_shape or r.view in seen:
                continue
            seen.add(r.view)
            split = split_linear(r.offset, var)
            if split is not None and split[1] == s:
                found.append((Ref(xs.buf, split[0], (xs.shape[0],) + step_shape,
                                  (s,) + tuple(r.strides)), depth, False))
    if not found:
        n = Expr.of(1)
        for d in step_shape:
            n = n * Expr.of(d)
        if xs.buf.size == n * Expr.of(xs.shape[0]) and s == n and xs.offset == Expr.of(0):
            found.append((Ref.full(xs.buf, (xs.shape[0],) + step_shape), 0, True))
    out = []
    for h, depth, exclusive in found:
        step = at_step(h, t)
        # what the value reads when it is stored (last in the step): xs only at the home
        if injective(step) and within_slice(step, var, s) and all(
                r.buf is not xs.buf or r.view == step.view for r in reads(value)):
            out.append((h, depth, exclusive))
    return out


def injective(ref: Ref) -> bool:
    """No two elements of `ref` share an address, for every binding of the dims: with
    its axes ordered by stride, each stride spans the whole of the axes inside it."""
    axes = [(st, d) for d, st in zip(ref.shape, ref.strides) if d != Expr.of(1)]
    if any(not st.is_const and not _nonneg(st) for st, _ in axes) \
            or any(st == Expr.of(0) for st, _ in axes):
        return False
    try:
        axes.sort(key=lambda a: a[0].evaluate({s: 1 << 20 for s in a[0].symbols}))
    except KeyError:
        return False
    span = Expr.of(1)
    for st, d in axes:
        if not _nonneg(st - span):
            return False
        span = st * Expr.of(d)
    return True


def at_step(h: Ref, t: Expr) -> Ref:
    return Ref(h.buf, h.offset + t * h.strides[0], h.shape[1:], h.strides[1:])


def assign(options: dict, var) -> dict:
    """Homes in one sequence for several outputs (output → [(home, depth, exclusive)]):
    pairwise disjoint, an exclusive home (the whole slice) only alone; greedily, the
    outputs with the shallowest and fewest choices first."""
    t = Expr.of(var)
    order = sorted(options, key=lambda i: (min(d for _, d, _ in options[i]),
                                           len(options[i]), i))
    chosen: dict = {}
    for i in order:
        for h, _, exclusive in options[i]:
            if exclusive and chosen:
                continue
            if any(e for _, e in chosen.values()):
                break
            if all(_disjoint(at_step(h, t), at_step(o, t)) for o, _ in chosen.values()):
                chosen[i] = (h, exclusive)
                break
    return chosen


def definitions(inner) -> dict:
    """Buffer id → the one `Map` of a loop body that stores the whole buffer (the
    step's temporaries that `expand` looks through)."""
    writers: dict = {}
    for st in inner:
        for r in _outs(st):
            writers.setdefault(r.buf.id, []).append(st)
    return {b: w[0] for b, w in writers.items()
            if len(w) == 1 and isinstance(w[0], Map) and w[0].out.is_contiguous()}


def reaches(tree, defs, buf_id, depth) -> bool:
    """`tree` loads buffer `buf_id`, directly or through at most `depth` temporaries."""
    if tree is None:
        return False
    for r in tree_refs(tree):
        if r.buf.id == buf_id:
            return True
        m = defs.get(r.buf.id)
        if depth and m is not None and reaches(m.tree, defs, buf_id, depth - 1):
            return True
    return False


def expand(tree, defs, depth):
    """`tree` with its loads of this step's temporaries (`definitions`) replaced by
    their maps' trees, `depth` levels deep: how the value reads the sequence, seen
    through the pre-activation it was sliced from."""
    if depth == 0 or tree is None:
        return tree
    if isinstance(tree, Load):
        m = defs.get(tree.ref.buf.id)
        if m is None:
            return tree
        sv = _subview(tree.ref, m.out.shape)
        if sv is None:
            return tree
        return expand(_compose(m.tree, sv[0], sv[1], tree.ref, [1 << 30]), defs, depth - 1)
    if isinstance(tree, Apply):
        return Apply(tree.op, tuple(expand(a, defs, depth) for a in tree.args),
                     tree.dtype, tree.params)
    return tree


def reads(value) -> list:
    """The views a step value loads when it is stored."""
    if isinstance(value, Ref):
        return [value]
    tree = getattr(value, "tree", None)
    return tree_refs(tree) if tree is not None else []


# ----------------------------------------------------------------------------- approval

def _positions(body):
    """Program-order positions: buffer id → [(position, ref, written)], and the
    [start, end) range of positions of each loop at the top level. (A loop inside
    another runs again at the next outer step: what it read once may be read again
    then, which program order does not show. Its outputs keep their own buffers.)"""
    access: dict = {}
    ranges: dict = {}
    pos = 0

    def visit(stmts, top):
        nonlocal pos
        for s in stmts:
            if isinstance(s, Loop):
                start = pos
                visit(s.body, False)
                if top:
                    ranges[id(s)] = (start, pos)
                continue
            refs = s.refs()
            written = {id(r) for r in _outs(s)}
            for r in refs:
                access.setdefault(r.buf.id, []).append((pos, r, id(r) in written))
            pos += 1

    visit(body, True)
    return access, ranges


def _outs(s) -> list:
    out = getattr(s, "out", None)
    if out is not None:
        return [out]
    return [m.out for m in getattr(s, "maps", ())]


def approve(prog, proposals: list, approved: set) -> set:
    """The proposals (made by a lowering without them) that are safe in `prog`: their
    sequence's buffer dead after the loop and read only slice by slice inside it, their
    own buffer not used before the loop. No buffer takes part in two new aliases,
    except several outputs of one loop into one sequence (disjoint homes)."""
    access, ranges = _positions(prog.body)
    ok = []
    for p in proposals:
        if p.key in approved or id(p.loop) not in ranges:
            continue
        X, Y = p.home.buf, p.own
        if X.kind != "arena" or Y.kind != "arena":
            continue
        start, end = ranges[id(p.loop)]
        ys = access.get(Y.id, [])
        xs = access.get(X.id, [])
        if not ys or min(q for q, _, _ in ys) < start or not xs \
                or max(q for q, _, _ in xs) >= end:
            continue
        s = p.home.strides[0]
        if all(not w and within_slice(r, p.loop.var, s)
               for q, r, w in xs if q >= start):
            ok.append(p)
    # one new link per buffer and round (several outputs of one loop may share a sequence)
    chosen, owner = set(), {}
    for p in ok:
        group = (id(p.loop), p.home.buf.id)
        if owner.get(p.own.id, group) != group or owner.get(p.home.buf.id, group) != group:
            continue
        owner[p.own.id] = owner[p.home.buf.id] = group
        chosen.add(p.key)
    return chosen

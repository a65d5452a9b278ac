"""Loop fusion: elementwise statements over one index space run in one loop nest.

Lowering stores every value that has more than one use (`lower.py`), so one LSTM step
becomes ~17 small loops: the pre-activation, four gates, the cell, its tanh, the
output, and copies into the stored activations. At B = 1 each loop runs two or
three vector iterations, and the per-loop cost (bounds, alias checks, the remainder)
is most of the step. This pass, between lowering and buffer planning:

1. **inlines sliced producers**: a `Map` whose buffer is read only by later `Map`s,
   each through a view that is a sub-block of it (the four gate slices of the
   pre-activation), and whose elements are read at most once in all, is substituted
   into its readers, the views composed; its buffer disappears.
2. **groups** consecutive `Map`s with the same shape into one `Fused` statement when
   running them element by element gives the same result as one after another: any
   buffer that one member writes and another reads or writes is accessed by both
   through the same view (element i depends only on element i) or through views
   that cannot overlap (the gate slices of one matrix).
3. **keeps temporaries in registers**: a buffer written by one member and read only
   by later members of the same group, through the same view, is never stored; the
   planner then gives it no slot, which also shrinks the arena.
4. **fuses sums into the loops that produce what they sum** (FUSE_SUMS): a float
   `Reduce` over the group's index space joins it as a member that accumulates
   (its accumulator read or written by no other member), and statements of other
   shapes between the members that commute with them (a sum's zero fill before,
   the scalar that reads the finished sum after) move out of the way. Before
   grouping, each top-level sum (with its zero fill) moves up to just after the
   last statement it depends on, next to its producer. A squared-error loss over
   [T, B, D] (the error, its square summed, its gradient, the readout bias's
   gradient summed over T and B) was four passes over [T, B, D]: 2.3 ms of a 9 ms
   float32 step at D = 2048; fused, one.
"""
from __future__ import annotations

from .expr import Expr, product, row_major
from .loopir import Apply, Fused, Gather, Iota, Load, Loop, Map, MatMul, Program, Ref, \
    Reduce, ScatterAdd, tree_nodes, tree_refs, walk

MAX_INLINED = 64     # nodes of a reader's tree after a producer is substituted into it
FUSE_SUMS = True


def fuse(prog: Program) -> Program:
    """`prog` with sliced producers inlined and same-shape maps fused (in place)."""
    reads, writes = accesses(prog.body)
    _inline(prog.body, reads, writes)
    if FUSE_SUMS:
        _hoist_sums(prog.body)
    reads, writes = accesses(prog.body)
    _group(prog.body, reads, writes)
    used = {r.buf.id for s in walk(prog.body) for r in s.refs()}
    prog.buffers = [b for b in prog.buffers if b.kind != "arena" or b.id in used]
    return prog


# ----------------------------------------------------------------------------- access tables

def _written(s) -> list:
    if isinstance(s, (Map, Reduce, MatMul, ScatterAdd)):
        return [s.out]
    if isinstance(s, Fused):
        return [m.out for m in s.maps]
    return []


def accesses(body):
    """buffer id → [(statement, ref)] of its reads, and of its writes. A reduction or
    scatter reads what it accumulates into, so its output counts as both. (Also used
    by `copies.fold`.)"""
    reads: dict = {}
    writes: dict = {}
    for s in walk(body):
        if isinstance(s, Loop):
            continue
        out = _written(s)
        for r in out:
            writes.setdefault(r.buf.id, []).append((s, r))
        read = s.refs()
        if not isinstance(s, (Reduce, ScatterAdd)):
            read = [r for r in read if not any(r is o for o in out)]
        for r in read:
            reads.setdefault(r.buf.id, []).append((s, r))
    return reads, writes


# ----------------------------------------------------------------------------- 1. inlining

def _nonneg(e: Expr) -> bool:
    """e ≥ 0 for every binding of the dims (which are ≥ 1): no negative coefficient."""
    return all(v >= 0 for v in e.terms.values())


def _subview(view: Ref, shape) -> tuple | None:
    """How `view` reads a contiguous array of `shape`: (start index per axis, the array
    axis each view axis walks, or None where it stays put); None if it is not a
    sub-block (a diagonal, a reshape, an offset not decomposable here)."""
    R = row_major(shape)
    used: set = set()
    axes = []
    for n, st in zip(view.shape, view.strides):
        if n == Expr.of(1) or st == Expr.of(0):
            axes.append(None)
            continue
        a = next((a for a in range(len(shape))
                  if a not in used and R[a] == st and shape[a] != Expr.of(1)), None)
        if a is None:
            return None
        used.add(a)
        axes.append(a)
    if view.offset == Expr.of(0):
        start = [Expr.of(0)] * len(shape)
    elif view.offset.is_const and all(r.is_const for r in R):
        rest, start = view.offset.const, []
        for r in R:
            start.append(Expr.of(rest // r.const))
            rest %= r.const
    else:
        return None
    for a, d in enumerate(shape):
        extent = next((n for n, ax in zip(view.shape, axes) if ax == a), Expr.of(1))
        if not _nonneg(d - start[a] - extent):
            return None
    return start, axes


def _compose(tree, start, axes, view: Ref, cap: list):
    """The producer's `tree` (over its own index space) read through `view`."""
    if isinstance(tree, Load):
        r = tree.ref
        offset = r.offset + sum((s * st for s, st in zip(start, r.strides)), Expr.of(0))
        strides = tuple(Expr.of(0) if a is None else r.strides[a] for a in axes)
        return Load(Ref(r.buf, offset, view.shape, strides))
    if isinstance(tree, Apply):
        cap[0] -= 1
        return Apply(tree.op, tuple(_compose(a, start, axes, view, cap) for a in tree.args),
                     tree.dtype, tree.params)
    return tree      # Const


def _substitute(tree, buf_id, producer, subviews, cap):
    if isinstance(tree, Load) and tree.ref.buf.id == buf_id:
        start, axes = subviews[tree.ref.view]
        return _compose(producer.tree, start, axes, tree.ref, cap)
    if isinstance(tree, Apply):
        return Apply(tree.op, tuple(_substitute(a, buf_id, producer, subviews, cap)
                                    for a in tree.args), tree.dtype, tree.params)
    return tree


def _inline(body, reads, writes):
    for s in body:
        if isinstance(s, Loop):
            _inline(s.body, reads, writes)
    k = 0
    while k < len(body):
        if _try_inline(body, k, reads, writes):
            del body[k]
        else:
            k += 1


def _try_inline(body, k, reads, writes) -> bool:
    p = body[k]
    if not isinstance(p, Map) or p.out.buf.kind != "arena" or not p.out.is_contiguous():
        return False
    bid = p.out.buf.id
    if len(writes.get(bid, ())) != 1 or any(isinstance(t, (Iota, Gather))
                                            for t in tree_nodes(p.tree)):
        return False
    users = reads.get(bid, [])
    positions = {id(s): j for j, s in enumerate(body)}
    if not users or any(not isinstance(s, Map) or id(s) not in positions
                        or positions[id(s)] <= k for s, _ in users):
        return False
    subviews, total = {}, Expr.of(0)
    for _, r in users:
        sv = _subview(r, p.out.shape)
        if sv is None:
            return False
        subviews[r.view] = sv
        total = total + product(d for d, a in zip(r.shape, sv[1]) if a is not None)
    if not _nonneg(p.out.buf.size - total):     # an element read twice: computed twice
        return False
    # what the producer reads must not change before its last reader has run
    sources = {r.buf.id for r in p.refs()[1:]}
    last = max(positions[id(s)] for s, _ in users)
    for s in body[k + 1:last + 1]:
        if any(r.buf.id in sources for w in _stmts(s) for r in _written(w)):
            return False
    new = {}
    for s, _ in users:
        if id(s) in new:
            continue
        cap = [MAX_INLINED]
        tree = _substitute(s.tree, bid, p, subviews, cap)
        if cap[0] < 0:
            return False
        new[id(s)] = tree
    for s, _ in users:
        s.tree = new[id(s)]
    _retable(reads, writes, p, users)
    return True


def _stmts(s):
    return list(walk(s.body)) if isinstance(s, Loop) else [s]


def _retable(reads, writes, p, users):
    """Update the access tables after `p` was substituted into `users`."""
    del writes[p.out.buf.id]
    del reads[p.out.buf.id]
    for r in p.refs()[1:]:
        lst = reads[r.buf.id]
        lst[:] = [(s, x) for s, x in lst if s is not p]
    for s in {id(s): s for s, _ in users}.values():
        for r in tree_refs(s.tree):
            lst = reads.setdefault(r.buf.id, [])
            if not any(x is r for _, x in lst):
                lst.append((s, r))


# ----------------------------------------------------------------------------- 2. grouping

def _disjoint(a: Ref, b: Ref) -> bool:
    """Two views of one buffer that never share an element: same shape and strides, a
    contiguous last axis of constant width w, outer strides multiples of a constant P,
    and offsets whose residues mod P leave [r, r + w) ranges apart (column blocks of a
    row-major matrix, like the four gates)."""
    if a.shape != b.shape or a.strides != b.strides or not a.shape:
        return False
    w = a.shape[-1]
    if a.strides[-1] != Expr.of(1) or not w.is_const:
        return False
    outer = [st for n, st in zip(a.shape[:-1], a.strides[:-1]) if n != Expr.of(1)]
    coeffs = [v for st in outer for v in st.terms.values()]
    if not coeffs:
        return False
    P = min(abs(v) for v in coeffs)
    if P == 0 or any(v % P for v in coeffs):
        return False

    def residue(off: Expr):
        if any(k != () and v % P for k, v in off.terms.items()):
            return None
        return off.terms.get((), 0) % P
    ra, rb = residue(a.offset), residue(b.offset)
    if ra is None or rb is None or ra + w.const > P or rb + w.const > P:
        return False
    return ra + w.const <= rb or rb + w.const <= ra


def _compatible(x: Ref, y: Ref) -> bool:
    """Accesses of one buffer by two members may interleave element by element."""
    return x.view == y.view or _disjoint(x, y)


def _joins(m, group: list) -> bool:
    """`m` (a Map or a fusable sum) may run element by element with the group: every
    buffer one writes at each index and the other accesses is accessed by both
    through compatible views, and a sum's accumulator is touched by no other member
    (it holds partial sums until the group's loop ends)."""
    if _shape_of(m) != _shape_of(group[0]) or _irregular(m):
        return False
    for g in group:
        for x, y in ((g, m), (m, g)):
            y_refs = y.refs()
            if isinstance(x, Reduce):
                if any(r.buf.id == x.out.buf.id for r in y_refs):
                    return False
                continue
            for r in y_refs:
                if r.buf.id == x.out.buf.id and not _compatible(x.out, r):
                    return False
    return True


def _shape_of(s):
    return s.shape if isinstance(s, Reduce) else s.out.shape


def _irregular(m) -> bool:
    """Index-dependent trees (iota, gathers) keep their own loops: their index space
    cannot be merged with another statement's."""
    return any(isinstance(t, (Iota, Gather)) for t in tree_nodes(m.tree))


def _member(s) -> bool:
    """A statement that may start or join a group."""
    if isinstance(s, Map):
        return not _irregular(s)
    return FUSE_SUMS and _fusable_sum(s)


def _fusable_sum(s) -> bool:
    return (isinstance(s, Reduce) and s.kind == "sum" and s.out.dtype in ("float32", "float64")
            and len(s.shape) > 0 and not _irregular(s))


def _group(body, reads, writes):
    """Groups of consecutive members (`_joins`). A Map that cannot join moves out of
    the way when it commutes with the group so far: before it if it is a sum's zero
    fill, after it if it reads a finished sum of the group and writes nothing the
    group accesses (the loss from its sum of squares); later members must then
    commute with what moved after. Any other statement ends the group."""
    out: list = []
    group: list = []
    before: list = []
    after: list = []

    def flush():
        out.extend(before)
        if len(group) > 1:
            out.append(_fused(list(group), reads, writes))
        else:
            out.extend(group)
        out.extend(after)
        group.clear()
        before.clear()
        after.clear()

    for s in body:
        if isinstance(s, Loop):
            _group(s.body, reads, writes)
        if (group and _member(s) and _joins(s, group)
                and all(_commute(s, a) for a in after)):
            group.append(s)
            continue
        if group and FUSE_SUMS and isinstance(s, Map):
            if _starts_sum(s, body) and all(_commute(s, t) for t in group + after):
                before.append(s)
                continue
            if _reads_a_sum(s, group) and _only_reads(s, group) \
                    and all(_commute(s, a) for a in after):
                after.append(s)
                continue
        flush()
        if _member(s):
            group.append(s)
        else:
            out.append(s)
    flush()
    body[:] = out


def _starts_sum(s: Map, body) -> bool:
    """`s` fills the accumulator of a fusable sum (its zero fill)."""
    return any(_fusable_sum(t) and t.out.buf.id == s.out.buf.id for t in body)


def _reads_a_sum(s: Map, group) -> bool:
    """`s` reads the accumulator of a sum in the group (it needs the finished sum)."""
    sums = {g.out.buf.id for g in group if isinstance(g, Reduce)}
    return any(r.buf.id in sums for r in tree_refs(s.tree))


def _only_reads(s: Map, group) -> bool:
    """`s` reads what the group writes but writes nothing any member accesses."""
    return not any(r.buf.id == s.out.buf.id for g in group for r in g.refs())


# ----------------------------------------------------------------------------- sums

def _effects(s):
    """(buffer ids written, buffer ids read) by `s`, loop bodies included."""
    w, r = set(), set()
    for t in _stmts(s):
        outs = _written(t)
        if isinstance(t, (Reduce, ScatterAdd)):
            outs = outs + [t.out]
        w |= {x.buf.id for x in outs}
        r |= {x.buf.id for x in t.refs()}
    return w, r


def _commute(a, b) -> bool:
    """Running `a` and `b` in either order gives the same memory (neither writes what
    the other reads or writes); a runtime check never moves."""
    from .loopir import Check
    if any(isinstance(t, Check) for x in (a, b) for t in _stmts(x)):
        return False
    wa, ra = _effects(a)
    wb, rb = _effects(b)
    return not (wa & (rb | wb) or wb & ra)


def _hoist_sums(body):
    """Each top-level fusable sum (with its zero fill right before it) moved up to just
    after the last statement it does not commute with: next to its producer, where
    grouping can take it into the producer's loop."""
    k = 0
    while k < len(body):
        s = body[k]
        if _fusable_sum(s):
            pair = [s]
            if k > 0 and isinstance(body[k - 1], Map) and not tree_refs(body[k - 1].tree) \
                    and body[k - 1].out.buf.id == s.out.buf.id:
                pair = [body[k - 1], s]
            start = k - len(pair) + 1
            j = start
            while j > 0 and all(_commute(body[j - 1], p) for p in pair):
                j -= 1
            if j < start:
                del body[start:k + 1]
                body[j:j] = pair
        k += 1


def _fused(maps: list, reads, writes) -> Fused:
    """One `Fused` statement; its temporaries are the buffers no one outside reads."""
    members = {id(m): k for k, m in enumerate(maps)}
    temps = set()
    for k, m in enumerate(maps):
        if isinstance(m, Reduce):
            continue
        b = m.out.buf
        if b.kind != "arena" or len(writes.get(b.id, ())) != 1:
            continue
        rs = reads.get(b.id, [])
        if rs and all(members.get(id(s), -1) > k and r.view == m.out.view for s, r in rs):
            temps.add(b.id)
    return Fused(_shape_of(maps[0]), maps, frozenset(temps))

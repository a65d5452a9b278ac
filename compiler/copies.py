"""Transposing copies that only the register tiles need, folded into their products.

Two top-level copies exist for the tiles' sake (`codegen.Emitter._matmul_tiles` reads
B's rows and writes out's rows where they lie):

- a weight read transposed (x·Wᵀ) is copied row-major first (`lower._transposed_for_tiles`);
- a product whose result is wanted transposed ((A·B)ᵀ, a weight gradient in PyTorch's
  [out, in] layout smaller than `rewrite.TRANSPOSED_PRODUCT_BYTES`) is written to a
  temporary that a copy reads down its columns.

Whether the tiles run is decided at run time (M·N·K against `codegen.TOP_TILES_MAX_WORK`,
M = T·B being a dim). When they do not, OpenBLAS runs the product and needs neither
copy: it reads Wᵀ in place and writes (A·B)ᵀ as Bᵀ·Aᵀ. So each such copy becomes part
of its product (`MatMul.stage`, `MatMul.unstage`), emitted on the tiles' path only
(and the second also where OpenBLAS runs on one thread, a shard's: there the Bᵀ·Aᵀ
form ran slower, `codegen.Emitter._matmul_library`).
For an Elman step with D = 1024, H = 64 at B = 16, T = 8 the four copies took 0.5 ms
of a 4.2 ms float64 step (12%), every call.
"""
from __future__ import annotations

from .codegen import FLOATS, PANEL_MIN_ROWS, dots_apply
from .expr import Expr
from .fuse import accesses
from .loopir import Load, Loop, Map, MatMul, Program, Ref, transposed, walk

FOLD = True


def fold(prog: Program) -> Program:
    """`prog` with the copies described above folded into their products (in place)."""
    if not FOLD:
        return prog
    body = prog.body
    readers, writers = ({b: list({id(s): s for s, _ in pairs}.values())
                         for b, pairs in table.items()} for table in accesses(body))
    for s in list(body):
        if not _eligible(s):
            continue
        stage = _stage(s, body, readers, writers)
        if stage is not None:
            body.remove(stage)
            s.stage = stage
        unstage = _unstage(s, body, readers, writers)
        if unstage is not None:
            body.remove(unstage)
            s.unstage = unstage
    return prog


def _eligible(s) -> bool:
    """A 2-D float product at top level that the tiles may run (not one of a known
    handful of rows, which `dots` or `rows` run in place)."""
    if not isinstance(s, MatMul) or s.packed is not None or s.out.ndim != 2:
        return False
    if s.out.dtype not in FLOATS or dots_apply(s):
        return False
    M = s.out.shape[0]
    return not (M.is_const and M.const < PANEL_MIN_ROWS)


def _copy_source(m) -> Ref | None:
    """The view a plain 2-D copy `m` reads, or None."""
    if not isinstance(m, Map) or not isinstance(m.tree, Load) or m.out.ndim != 2:
        return None
    return m.tree.ref


def _stage(s: MatMul, body, readers, writers):
    """The top-level copy of a transposed weight into s.b, read by s alone."""
    b = s.b
    if not b.is_contiguous() or b.buf.kind != "arena":
        return None
    ws = writers.get(b.buf.id, [])
    m = ws[0] if len(ws) == 1 else None
    src = _copy_source(m)
    if src is None or m not in body or body.index(m) > body.index(s):
        return None
    one = Expr.of(1)
    if not (m.out.view == b.view and src.strides[0] == one and src.strides[1] != one):
        return None
    if src.buf.kind not in ("input", "const") or readers.get(b.buf.id) != [s]:
        return None
    return m


def _unstage(s: MatMul, body, readers, writers):
    """The top-level copy of all of s.out, transposed, that alone reads it, with
    nothing between them touching its destination."""
    out = s.out
    if not out.is_contiguous() or out.buf.kind != "arena" or writers.get(out.buf.id) != [s]:
        return None
    users = readers.get(out.buf.id, [])
    if len(users) != 1:
        return None
    m = users[0]
    src = _copy_source(m)
    if src is None or m not in body or src.view != transposed(out).view:
        return None
    dst = m.out
    one = Expr.of(1)
    if dst.strides[1] != one or dst.buf.id in (s.a.buf.id, s.b.buf.id):
        return None
    i, k = body.index(s), body.index(m)
    if k < i:
        return None
    for t in walk(body[i + 1:k]):
        if not isinstance(t, Loop) and any(r.buf.id == dst.buf.id for r in t.refs()):
            return None
    return m

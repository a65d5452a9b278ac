"""LLVM IR for a planned loop-IR program, built with `llvmlite.ir`.

The kernel has one signature for every program:

    void kernel(i64* dims, ptr* inputs, ptr* outputs, i8* arena, i64* offsets, i64* status)

`dims` holds the symbolic dims in `Program.dims` order; `inputs` and `outputs` the
array objects (NumPy's `PyArrayObject*`: the kernel reads each one's data pointer at
ARRAY_DATA_FIELD, so a call passes `id(array)` instead of converting pointers in
Python, ~0.5 µs an array); `offsets` the byte offset of
each arena slot (computed in Python from the dims); `status` receives
(code, value) when a runtime check fails, and the kernel returns at once.

Scalars: float32 → float, float64 → double, int64 → i64; bool is i1 in registers
and i8 in memory (NumPy's layout). `SCALAR` holds one emitter per elementwise op,
keyed by the op's name, so every op of the core has its LLVM rule in one table.
"""
from __future__ import annotations


from llvmlite import ir

import re

from . import blas, mathfn, microkernels, vecmath
from .expr import Expr
from .loopir import (ITEMSIZE, Apply, Check, Const, Fused, Gather, Iota, Load, Loop, Map,
                     MatMul, Program, Reduce, Ref, ScatterAdd, transposed, tree_nodes, tree_refs,
                     walk)

I1, I8, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
REG = {"float32": F32, "float64": F64, "int64": I64, "bool": I1}
MEM = {"float32": F32, "float64": F64, "int64": I64, "bool": I8}
FLOATS = ("float32", "float64")
PANEL_MIN_ROWS = 4          # fewer rows: the row-vector loops or BLAS (latency-bound tiles)
PANEL_MAX_WORK = 1 << 20    # M·N·K up to which the tiles beat a multi-threaded library call
TOP_TILES_MAX_WORK = 1 << 20  # other products with B's rows contiguous: tiles up to this M·N·K
TILES_IN_SHARDS = 1 << 24     # ... and up to this in sharded calls (OpenBLAS on one thread)
# ... and, whatever their work, products over a short k (T·B ≤ 16) with A read transposed
# and M·N ≤ THIN_MAX_OUT: the weight gradients of short sequences (δᵀ·X). A library call
# writes C twice (zeroed first) and wakes its threads for a few multiply-adds per
# element: an Elman step at B = 1, T = 8, D = H = 512, float64, 6.5-7.7 -> 4.2-4.6 ms;
# a 512 x 512 x 8 product alone 0.95 ms through OpenBLAS, 0.38 in the tiles. Row-major
# A (input projections of a narrow input over many rows) stays with the library: its
# two threads write a large C faster (4096 x 1024 x 8 float32: 4.1 against 8.2 ms).
THIN_MAX_K = 16
THIN_MAX_OUT = 1 << 20
# One step of a cell at B = 1 (no loop; x·U and h·W through `dots`, then the gates):
# the worker computes the pre-activations of half the hidden units and those units'
# gates, this thread the other half (`unit_plan`), instead of splitting the products'
# columns and computing every gate here — when the weights (N·K·itemsize of both
# products) take UNIT_SPLIT_BYTES to UNIT_SPLIT_MAX_BYTES: each core's share stays in
# its L2 (512 KB here) from call to call. Measured (bound calls, one process, the two
# ways alternated, D = 64): LSTM H = 128 float64 15.7-16.0 -> 14.1-14.9 µs, GRU
# 12.2-12.5 -> 11.3-11.6, float32 1.03-1.07x; below (an Elman step, H = 128, float64,
# 192 KB) 0.94-0.96x, above (LSTM H = 512, 9.4 MB streamed from memory) 0.87-0.92x.
UNIT_SPLIT = True
UNIT_SPLIT_BYTES = 1 << 18
UNIT_SPLIT_MAX_BYTES = 1 << 20
UNIT_SPLIT_SHARE = 0.5       # of the units computed by the calling thread (0.375, 0.4375,
#                              0.5625, 0.625: LSTM float64 H = 128 15.7-16.6, 14.8-14.9, 15.1-17.5,
#                              16.3-16.6 µs against 13.5-14.0 at 0.5, alternated in one process)
DOTS_MAX_ROWS = 3           # products with B = Wᵀ and at most this many rows: dot products
ROWS_MAX_ROWS = 3           # ... with B row-major: `rows` (each row streams B), not BLAS
# Byte offset of the data pointer in an ndarray object: right after the object header
# (reference count and type) in NumPy's public `PyArrayObject_fields`. `jit` checks it
# on live arrays at import and hands the kernel stand-in headers if it does not hold.
ARRAY_DATA_FIELD = object.__basicsize__

PROFILE = False             # every statement between two cycle-counter reads (`compiler.profile`)
PROFILE_SYMBOL = "ag_profile_cycles"


class Emitter:
    """Emits one kernel function; `env` maps dim names and loop variables to i64 values."""

    def __init__(self, module: ir.Module, prog: Program, name: str):
        self.module, self.prog = module, prog
        self.vec_used: set[tuple[str, str]] = set()   # (function, dtype) of vecmath calls
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * 6)
        self.fn = ir.Function(module, fnty, name)
        for a, n in zip(self.fn.args, ("dims", "inputs", "outputs", "arena", "offsets", "status")):
            a.name = n
            a.add_attribute("noalias")
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.env: dict = {}
        self.base: dict = {}
        self.strides: dict = {}   # collapsed strides of the refs of the current statement
        self.regs: dict = {}      # view → value computed at this index (fused maps)
        self.pack_flags: dict = {}  # panel buffer id → i1 slot: packed in this loop run
        self.consts: dict = {}    # const buffer id → its global (shared with job functions)
        self.profile = None       # (statement id → counter, counters, clock): PROFILE

    # ----------------------------------------------------------------- plumbing

    def intrinsic(self, name: str, ty, n_args=1):
        suffix = {F32: "f32", F64: "f64"}[ty]
        full = f"{name}.{suffix}"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * n_args), full)
        return fn

    def micro(self, kind: str, dtype: str):
        """A product kernel of the shared library (`microkernels`), declared here."""
        return microkernels.declare(self.module, kind, dtype)

    def vecmath(self, name: str, ty):
        """`name` (exp, log, tanh) through its vectorizable wrapper (see vecmath.py)."""
        dtype = "float32" if ty == F32 else "float64"
        full = vecmath.wrapper_name(name, dtype)
        self.vec_used.add((name, dtype))
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty]), full)
        return fn

    def i64(self, v: int):
        return ir.Constant(I64, int(v))

    def ex(self, e: Expr):
        """An Expr as an i64 value."""
        b = self.b
        total = None
        for syms, coeff in sorted(e.terms.items()):
            term = self.i64(coeff) if not syms or coeff != 1 else None
            for s in syms:
                term = self.env[s] if term is None else b.mul(term, self.env[s])
            total = term if total is None else b.add(total, term)
        return total if total is not None else self.i64(0)

    def loop(self, count, body_fn, name="i"):
        """for i in range(count): body_fn(i)   (skipped when count <= 0)."""
        microkernels.emit_loop(self.fn, self.b, count, body_fn, name)

    def nest(self, shape, fn, idx=()):
        """Loops over every index of `shape` (row-major order); fn(index tuple)."""
        if len(idx) == len(shape):
            fn(idx)
            return
        self.loop(self.ex(shape[len(idx)]), lambda i: self.nest(shape, fn, idx + (i,)),
                  name=f"ax{len(idx)}")

    def at(self, buf, off):
        """Pointer to element `off` (i64) of `buf`."""
        return self.b.gep(self.base[buf.id], [off], inbounds=True, source_etype=MEM[buf.dtype])

    def ptr(self, ref, idx):
        b = self.b
        off = self.ex(ref.offset)
        for i, st in zip(idx, self.strides.get(id(ref), ref.strides)):
            if st == Expr.of(0):
                continue
            off = b.add(off, i if st == Expr.of(1) else b.mul(i, self.ex(st)))
        return self.at(ref.buf, off)

    def alias_scopes(self):
        """One alias scope per memory region the kernel addresses — each arena slot,
        each output, the constants, the inputs (one scope for all: a caller may pass
        one array twice, and they are only read) — so LLVM knows that accesses to
        different regions never overlap and vectorizes without run-time overlap
        checks. Slots are disjoint by construction (`plan.py`); outputs are new arrays."""
        m = self.module
        domain = m.add_metadata([ir.MetaDataString(m, "autograph.regions")])
        regions = sorted({_region(b) for b in self.prog.buffers if b.index >= 0
                          or b.kind == "const"})
        scopes = {r: m.add_metadata([ir.MetaDataString(m, "/".join(map(str, r))), domain])
                  for r in regions}
        self.tags = {r: (m.add_metadata([scopes[r]]),
                         m.add_metadata([scopes[o] for o in regions if o != r]))
                     for r in regions}

    def tag(self, instr, buf):
        scope, others = self.tags[_region(buf)]
        instr.set_metadata("alias.scope", scope)
        instr.set_metadata("noalias", others)
        return instr

    def load(self, ref, idx):
        v = self.tag(self.b.load(self.ptr(ref, idx), typ=MEM[ref.dtype]), ref.buf)
        if ref.dtype == "bool":
            v = self.b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
        return v

    def store(self, ref, idx, v):
        if ref.dtype == "bool":
            v = self.b.zext(v, I8)
        self.tag(self.b.store(v, self.ptr(ref, idx)), ref.buf)

    def const(self, value, dtype):
        ty = REG[dtype]
        if isinstance(value, Expr):
            v = self.ex(value)
            return convert(self.b, v, "int64", dtype)
        if dtype == "bool":
            return ir.Constant(I1, int(bool(value)))
        if dtype == "int64":
            return ir.Constant(I64, int(value))
        return ir.Constant(ty, float(value))

    # ----------------------------------------------------------------- scalar trees

    def val(self, t, idx):
        if isinstance(t, Load):
            v = self.regs.get(t.ref.view)
            return v if v is not None else self.load(t.ref, idx)
        if isinstance(t, Const):
            return self.const(t.value, t.dtype)
        if isinstance(t, Iota):
            return idx[t.axis]
        if isinstance(t, Gather):
            row = self.val(t.idx, idx)
            ref = t.table
            b = self.b
            off = b.add(self.ex(ref.offset), b.mul(row, self.ex(ref.strides[0])))
            for i, st in zip(idx[t.n_lead:], ref.strides[1:]):
                off = b.add(off, b.mul(i, self.ex(st)))
            v = self.tag(b.load(self.at(ref.buf, off), typ=MEM[ref.dtype]), ref.buf)
            if ref.dtype == "bool":
                v = b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
            return v
        if isinstance(t, Apply):
            args = [self.val(a, idx) for a in t.args]
            dtypes = [a.dtype for a in t.args]
            return SCALAR[t.op](self, args, dtypes, t.dtype, dict(t.params))
        raise TypeError(f"cannot emit {t!r}")

    # ----------------------------------------------------------------- statements

    def emit(self, body):
        if self.profile is not None:
            for s in body:
                self._emit_timed(s)
            return
        k = 0
        while k < len(body):
            s = body[k]
            if k + 1 < len(body) and self._dots_pair(s, body[k + 1]):
                self._matmul_dots_pair(s, body[k + 1])
                k += 2
                continue
            getattr(self, "emit_" + type(s).__name__)(s)
            k += 1

    def collapsed(self, shape, refs, trees):
        """Merge adjacent axes that every ref walks as one (row-major contiguous in both,
        or both broadcast): fewer, longer loops. Sets `self.strides` for the refs."""
        self.strides = {}
        if any(isinstance(t, (Iota, Gather)) for tree in trees for t in tree_nodes(tree)) \
                or len(shape) < 2:
            return shape
        shape = list(shape)
        strides = {id(r): list(r.strides) for r in refs}
        k = len(shape) - 2
        while k >= 0:
            if all(st[k] == st[k + 1] * shape[k + 1] for st in strides.values()):
                shape[k] = shape[k] * shape[k + 1]
                del shape[k + 1]
                for st in strides.values():
                    del st[k]
            k -= 1
        self.strides = {i: tuple(st) for i, st in strides.items()}
        return tuple(shape)

    def emit_Map(self, s: Map):
        shape = self.collapsed(s.out.shape, s.refs(), [s.tree])

        def element(idx):
            self.store(s.out, idx, self.val(s.tree, idx))
        if self._transposes(s, shape):
            self.tiled_nest(shape, element, ITEMSIZE[s.out.dtype])
        elif self._reads_down_columns(s, shape):
            # a small transposing copy whose rows are shorter than its operand's: walk
            # the operand along its rows instead (e.g. out [1024, 64] from W [64, 1024]:
            # reading W down its columns strode 4 KB, every load in one L1 set)
            self.nest((shape[1], shape[0]), lambda idx: element((idx[1], idx[0])))
        else:
            self.nest(shape, element)
        self.strides = {}

    def _column_reads(self, s: Map, shape) -> list:
        """For a 2-D map writing contiguous rows: the row strides of the operands it
        reads down their columns (unit stride along out's rows); else []."""
        if len(shape) != 2 or self.strides.get(id(s.out), s.out.strides)[1] != Expr.of(1):
            return []
        reads = (self.strides.get(id(r), r.strides) for r in tree_refs(s.tree))
        return [st[1] for st in reads
                if st[0] == Expr.of(1) and st[1] not in (Expr.of(1), Expr.of(0))]

    def _transposes(self, s: Map, shape) -> bool:
        """A transposed copy of a weight (`lower.contiguous`) of TILED_COPY_BYTES or
        more (smaller ones stay row by row: the blocks' loops took ~70 ms more of LLVM's
        time for an LSTM step at H = 128, whose copies are in L2 either way)."""
        if not self._column_reads(s, shape):
            return False
        size = shape[0] * shape[1] * ITEMSIZE[s.out.dtype]
        return not (size.is_const and size.const < TILED_COPY_BYTES)

    def _reads_down_columns(self, s: Map, shape) -> bool:
        """A smaller such copy whose rows are shorter than its operand's (see emit_Map)."""
        reads = self._column_reads(s, shape)
        row = self.strides.get(id(s.out), s.out.strides)[0] if reads else None
        return bool(reads) and row.is_const and any(st.is_const and st.const > row.const
                                                    for st in reads)

    def tiled_nest(self, shape, fn, itemsize):
        """`nest` over a 2-D shape in blocks of one cache line by one cache line
        (8 × 8 float64, 16 × 16 float32): each line a block reads down the columns or
        writes along the rows is used whole within the block, so no line has to stay
        in L1 between blocks. A row-by-row order missed the cache and the TLB on every
        element of a large transposed weight (H = 1024 float64: a 32 MB copy took
        75 ms), and larger blocks (32 × 32) thrashed L1's sets at power-of-two strides."""
        b = self.b
        rows, cols = self.ex(shape[0]), self.ex(shape[1])
        size = LINE_BYTES // itemsize
        tile = self.i64(size)

        def span(total, start):
            rest = b.sub(total, start)
            return b.select(b.icmp_signed("<", rest, tile), rest, tile)

        def block(ti, tj):
            i0, j0 = b.mul(ti, tile), b.mul(tj, tile)
            self.loop(span(rows, i0), lambda i: self.loop(
                span(cols, j0), lambda j: fn((b.add(i0, i), b.add(j0, j))), "tj0"), "ti0")
        up = self.i64(size - 1)
        self.loop(b.sdiv(b.add(rows, up), tile), lambda ti: self.loop(
            b.sdiv(b.add(cols, up), tile), lambda tj: block(ti, tj), "tj"), "ti")

    def emit_Fused(self, s: Fused):
        """
        for i in shape: v1 = tree1(i); store v1 unless a temporary; v2 = tree2(i, v1) …
        A member's load of a view an earlier member wrote at this index reuses the value.
        A sum member adds its value into its output; one whose output is one element
        along the innermost (collapsed) axis sums in a register over that axis.
        """
        shape = self.collapsed(s.shape, [r for m in s.maps for r in m.refs()],
                               [m.tree for m in s.maps])
        b = self.b
        # sums whose accumulator is one element along the innermost axis: in a
        # register over it, added to memory once per outer index (as `_reduce_inner`)
        acc = {}
        for m in s.maps:
            if isinstance(m, Reduce) and self.strides.get(id(m.out), m.out.strides)[-1] \
                    == Expr.of(0):
                with b.goto_entry_block():
                    acc[id(m)] = b.alloca(REG[m.out.dtype], name="sum")

        def element(idx):
            self.regs = {}
            for m in s.maps:
                v = self.val(m.tree, idx)
                if isinstance(m, Reduce):
                    p = acc.get(id(m))
                    if p is None:
                        p = self.ptr(m.out, idx)
                        old = self.tag(b.load(p, typ=MEM[m.out.dtype]), m.out.buf)
                        self.tag(b.store(b.fadd(old, v), p), m.out.buf)
                    else:
                        total = b.fadd(b.load(p, typ=REG[m.out.dtype]), v)
                        total.flags.append("reassoc")
                        b.store(total, p)
                    continue
                if m.out.buf.id not in s.temps:
                    self.store(m.out, idx, v)
                self.regs[m.out.view] = v
            self.regs = {}
        if not acc:
            self.nest(shape, element)
        else:
            def outer(idx):
                for p in acc.values():
                    b.store(ir.Constant(p.allocated_type, 0.0), p)
                self.loop(self.ex(shape[-1]), lambda j: element(idx + (j,)), "r")
                for m in s.maps:
                    if id(m) in acc:
                        p = self.ptr(m.out, idx + (self.i64(0),))
                        old = self.tag(b.load(p, typ=MEM[m.out.dtype]), m.out.buf)
                        total = b.fadd(old, b.load(acc[id(m)], typ=REG[m.out.dtype]))
                        self.tag(b.store(total, p), m.out.buf)
            self.nest(shape[:-1], outer)
        self.strides = {}

    def emit_Reduce(self, s: Reduce):
        if REDUCE_IN_REGISTERS and s.kind == "sum" and s.out.dtype in FLOATS and s.shape:
            shape = self.collapsed(s.shape, s.refs(), [s.tree])
            if self.strides.get(id(s.out), s.out.strides)[-1] == Expr.of(0):
                self._reduce_inner(s, shape)
                self.strides = {}
                return
            self.strides = {}

        def step(idx):
            v = self.val(s.tree, idx)
            p = self.ptr(s.out, idx)
            old = self.tag(self.b.load(p, typ=MEM[s.out.dtype]), s.out.buf)
            dtype = s.out.dtype
            if s.kind == "sum":
                new = self.b.fadd(old, v) if dtype in FLOATS else self.b.add(old, v)
            else:
                new = maximum(self, old, v, dtype)
            self.tag(self.b.store(new, p), s.out.buf)
        self.nest(s.shape, step)

    def _reduce_inner(self, s: Reduce, shape):
        """A float sum along the innermost (collapsed) axis: accumulated in a register
        with reassociation allowed, so that the loop vectorizer keeps a vector of
        partial sums, then added to out once per outer index. Summing through out's
        memory made a chain of dependent load-add-stores: a squared-error loss over
        [8, 16, 1024] took ~0.35 ms. The partial sums are no less accurate than the
        sequential order (NumPy's own sum is pairwise)."""
        b, ty = self.b, REG[s.out.dtype]
        with b.goto_entry_block():
            acc = b.alloca(ty, name="sum")

        def outer(idx):
            b.store(ir.Constant(ty, 0.0), acc)

            def inner(j):
                total = b.fadd(b.load(acc, typ=ty), self.val(s.tree, idx + (j,)))
                total.flags.append("reassoc")
                b.store(total, acc)
            self.loop(self.ex(shape[-1]), inner, "r")
            p = self.ptr(s.out, idx + (self.i64(0),))
            old = self.tag(b.load(p, typ=MEM[s.out.dtype]), s.out.buf)
            self.tag(b.store(b.fadd(old, b.load(acc, typ=ty)), p), s.out.buf)
        self.nest(shape[:-1], outer)

    def emit_MatMul(self, s: MatMul):
        """
        if B comes in panels and PANEL_MIN_ROWS ≤ M and OpenBLAS runs on one thread (a
        shard of a sharded call) or M·N·K ≤ PANEL_MAX_WORK: the register-tiled kernel
        elif BLAS applies and (B is transposed or M·N·K ≥ BLAS_MIN_WORK):
            for batch…: gemm(A, B, out)
        else: for batch…: for i < M: out[i, :] = 0; for k < K: a = A[i, k];
                                      for j < N: out[i, j] += a·B[k, j]
        """
        if s.packed is None or s.out.strides[-1] != Expr.of(1):
            self._matmul_general(s)
            return
        b = self.b
        M, N, K = (self.ex(e) for e in (s.out.shape[0], s.out.shape[1], s.a.shape[1]))
        use = b.icmp_signed(">=", M, self.i64(PANEL_MIN_ROWS))
        small = b.icmp_signed("<=", b.mul(b.mul(M, N), K), self.i64(PANEL_MAX_WORK))
        use = b.and_(use, b.or_(small, self.blas_single))
        with b.if_else(use) as (then, otherwise):
            with then:
                self._matmul_panels(s)
            with otherwise:
                self._matmul_general(s)

    def pack_flag(self, buf):
        """i1 slot: the panels in `buf` hold this run's weights."""
        flag = self.pack_flags.get(buf.id)
        if flag is None:
            with self.b.goto_entry_block():
                flag = self.pack_flags[buf.id] = self.b.alloca(I1, name=f"packed{buf.id}")
                self.b.store(ir.Constant(I1, 0), flag)
        return flag

    def _pack_panels(self, s: MatMul):
        """P[j, k, r] = B[k, j·NR + r], once per run of the loop (see `emit_Loop`)."""
        b = self.b
        flag = self.pack_flag(s.packed.buf)
        with b.if_then(b.not_(b.load(flag, typ=I1))):
            P, B = s.packed, s.b
            _, K, nr = (d.const for d in P.shape)
            N = B.shape[1].const
            whole, rest = divmod(N, nr)
            if whole:
                src = Ref(B.buf, B.offset, (Expr.of(whole), *P.shape[1:]),
                          (nr * B.strides[1], B.strides[0], B.strides[1]))
                self.emit_Map(Map(Ref.full(P.buf, (whole, K, nr)), Load(src)))
            if rest:        # the last panel: N's last columns, then zeros (see lower._matmul)
                at = Expr.of(whole * K * nr)
                self.emit_Map(Map(Ref(P.buf, at, (Expr.of(K), Expr.of(nr)),
                                      (Expr.of(nr), Expr.of(1))), Const(0, P.dtype)))
                src = Ref(B.buf, B.offset + B.strides[1] * (whole * nr),
                          (Expr.of(K), Expr.of(rest)), B.strides)
                self.emit_Map(Map(Ref(P.buf, at, (Expr.of(K), Expr.of(rest)),
                                      (Expr.of(nr), Expr.of(1))), Load(src)))
            b.store(ir.Constant(I1, 1), flag)

    def _matmul_panels(self, s: MatMul):
        """out = A·B with B in panels (see `microkernels.panels`), packed first if this
        run of the loop has not packed them yet."""
        self._pack_panels(s)
        out, A, P = s.out, s.a, s.packed
        n_panels, K, _ = (d.const for d in P.shape)
        zero = self.i64(0)
        self.b.call(self.micro("panels", out.dtype), [
            self.ex(out.shape[0]), self.i64(n_panels), self.i64(K),
            self.ptr(A, (zero, zero)), self.ex(A.strides[0]), self.ex(A.strides[1]),
            self.at(P.buf, self.ex(P.offset)), self.i64(K * P.shape[2].const),
            self.i64(P.shape[2].const), self.ptr(out, (zero, zero)),
            self.ex(out.strides[0])])

    def _matmul_general(self, s: MatMul):
        """The register tiles where they apply and the product is small enough (with
        the copies they need: `MatMul.stage`, `MatMul.unstage`), else OpenBLAS or the
        generated loops on the operands where they lie (`_direct`). The copy out is
        emitted once, after whichever path ran, if that path needs it (two copies of
        its loops cost the LSTM step's compile ~45 ms)."""
        b = self.b
        copy = None
        if s.unstage is not None:
            with b.goto_entry_block():
                copy = b.alloca(I1, name="unstage")
            b.store(ir.Constant(I1, 1), copy)
        if self._tiles_apply(s):
            M, N, K = self._mnk(s)
            use = b.icmp_signed(">=", M, self.i64(PANEL_MIN_ROWS))
            use = b.and_(use, b.icmp_signed(">", K, self.i64(0)))
            small = b.icmp_signed("<=", b.mul(b.mul(M, N), K), self.i64(TOP_TILES_MAX_WORK))
            if s.a.strides[-1] != Expr.of(1):          # thin weight gradients
                thin = b.and_(b.icmp_signed("<=", K, self.i64(THIN_MAX_K)),
                              b.icmp_signed("<=", b.mul(M, N), self.i64(THIN_MAX_OUT)))
                small = b.or_(small, thin)
            if TILES_IN_SHARDS:
                small = b.or_(small, b.and_(self.blas_single, b.icmp_signed(
                    "<=", b.mul(b.mul(M, N), K), self.i64(TILES_IN_SHARDS))))
            use = b.and_(use, small)
            with b.if_else(use) as (then, otherwise):
                with then:
                    if s.stage is not None:
                        self.emit_Map(s.stage)
                    self._matmul_tiles(s)
                with otherwise:
                    self._matmul_library(s, copy)
        else:
            self._matmul_library(s, copy)
        if copy is not None:
            with b.if_then(b.load(copy, typ=I1)):
                self.emit_Map(s.unstage)

    def _matmul_library(self, s: MatMul, copy=None):
        """OpenBLAS (or the loops) on the operands where they lie (`_direct`). A
        product whose result is wanted transposed writes it there as Bᵀ·Aᵀ when the
        library runs it on several threads (and stores 0 in `copy`); elsewhere it
        writes its own layout, copied after (on one thread — a shard of a sharded
        call — the Bᵀ·Aᵀ form of a small GRU step's weight gradient, [384, 128] over
        k = 512, made the float32 step 8.9 → 12.7 ms, while whole calls ran the same
        either way)."""
        if s.unstage is None:
            self._matmul_library_or_loops(_direct(s))
            return
        d = _direct(s)
        layout = _blas_layout(d) if d.out.dtype in FLOATS and blas.available() else None
        if layout is None:
            self._matmul_library_or_loops(_direct(s, unstage=False))
            return
        b = self.b
        M, N, K = self._mnk(d)
        use = b.and_(b.not_(self.blas_single), self._blas_use(d, layout, M, N, K))
        with b.if_else(use) as (several, otherwise):
            with several:
                self._matmul_blas(d, layout, M, N, K)
                b.store(ir.Constant(I1, 0), copy)
            with otherwise:
                self._matmul_library_or_loops(_direct(s, unstage=False))

    def _tiles_apply(self, s: MatMul) -> bool:
        """A product the register tiles can run on B where it lies: rows of B and out
        contiguous, N a compile-time multiple of two vectors, no batch."""
        one = Expr.of(1)
        N = s.out.shape[-1]
        return (TOP_TILES_MAX_WORK > 0 and s.out.dtype in FLOATS and s.out.ndim == 2
                and s.b.strides[-1] == one and s.out.strides[-1] == one and N.is_const
                and N.const % (2 * vecmath.lanes(s.out.dtype)) == 0)

    def _matmul_tiles(self, s: MatMul):
        """The register tiles of `microkernels.panels` reading B in place (its rows are
        the panels' rows, `spk` its row stride): small products that a library call's
        packing and set-up would dominate (M·N·K ≤ TOP_TILES_MAX_WORK)."""
        out, A, B = s.out, s.a, s.b
        nr = 2 * vecmath.lanes(out.dtype)
        zero = self.i64(0)
        self.b.call(self.micro("panels", out.dtype), [
            self.ex(out.shape[0]), self.i64(out.shape[1].const // nr), self.ex(A.shape[1]),
            self.ptr(A, (zero, zero)), self.ex(A.strides[0]), self.ex(A.strides[1]),
            self.ptr(B, (zero, zero)), self.i64(nr), self.ex(B.strides[0]),
            self.ptr(out, (zero, zero)), self.ex(out.strides[0])])

    def _matmul_library_or_loops(self, s: MatMul):
        out = s.out
        layout = _blas_layout(s) if s.out.dtype in FLOATS and blas.available() else None
        if layout is None:
            if self._dots_apply(s):
                self._matmul_dots(s)
            else:
                self._matmul_loops(s)
            return
        M, N, K = self._mnk(s)
        with self.b.if_else(self._blas_use(s, layout, M, N, K)) as (then, otherwise):
            with then:
                self._matmul_blas(s, layout, M, N, K)
            with otherwise:
                if self._dots_apply(s):
                    self._matmul_dots(s)
                else:
                    # with M > ROWS_MAX_ROWS, below BLAS_MIN_WORK here (unless the
                    # library's argument rules refused it: then `rows` is only slower)
                    few = not out.shape[-2].is_const or out.shape[-2].const <= ROWS_MAX_ROWS
                    self._matmul_loops(s, None if few else blas.BLAS_MIN_WORK)

    def _mnk(self, s: MatMul):
        return tuple(self.ex(e) for e in (s.out.shape[-2], s.out.shape[-1], s.a.shape[-1]))

    def _blas_use(self, s: MatMul, layout, M, N, K):
        """i1: the library runs `s` (else `dots` or the loops)."""
        b = self.b
        # B read across its rows would make the loops stride through memory, which
        # costs more than a library call even for the smallest products — except for
        # a few rows, where dot products along k run at the speed of streaming B
        if layout[1][0] == blas.TRANS:
            use = ir.Constant(I1, 1)
            if self._dots_apply(s):
                use = b.icmp_signed(">=", M, self.i64(DOTS_MAX_ROWS + 1))
        else:
            work = b.mul(b.mul(M, N), K)
            use = b.icmp_signed(">=", work, self.i64(blas.BLAS_MIN_WORK))
            if rows_apply(s):
                # a few rows: `rows` streams B once per row, where the library packs
                # all of B first (per step, in a loop: a B = 1 Elman step with H = 200
                # ran 6x slower through sgemm, most of it in packing and thread hand-offs)
                use = b.and_(use, b.icmp_signed(">", M, self.i64(ROWS_MAX_ROWS)))
        # the library's argument rules: no empty sizes, leading dimensions ≥ the rows
        (ta, lda), (tb, ldb), ldc = layout
        need = [(lda, K if ta == blas.NO_TRANS else M), (ldb, N if tb == blas.NO_TRANS else K),
                (ldc, N)]
        for dim in (M, N, K):
            use = b.and_(use, b.icmp_signed(">", dim, self.i64(0)))
        for ld, rows in need:
            use = b.and_(use, b.icmp_signed(">=", self.ex(ld), rows))
        return use

    def _dots_apply(self, s: MatMul) -> bool:
        return dots_apply(s)

    def _matmul_dots(self, s: MatMul):
        """Dot products along k, per batch: `microkernels.par_dots`, which splits the
        columns with the worker whose words status[2] points to (0: none; set by bound
        calls, `jit.Kernel.bind`) when the product is large enough, else `dots`."""
        out = s.out
        if may_split(s):
            mailbox, kernel = [self._mailbox()], self.micro("par_dots", out.dtype)
        else:
            mailbox, kernel = [], self.micro("dots", out.dtype)
        self.nest(out.shape[:out.ndim - 2],
                  lambda bidx: self.b.call(kernel, mailbox + self._dots_args(s, bidx)))

    def _mailbox(self):
        """The worker's words from status[2] (null: this call has no worker)."""
        b = self.b
        return b.inttoptr(b.load(b.gep(self.status, [self.i64(2)], source_etype=I64),
                                 typ=I64), PTR)

    def _dots_args(self, s: MatMul, bidx=()):
        out, A, B = s.out, s.a, s.b
        zero = self.i64(0)
        return [self.ex(out.shape[-2]), self.ex(out.shape[-1]), self.ex(A.shape[-1]),
                self.ptr(A, bidx + (zero, zero)), self.ex(A.strides[-2]),
                self.ptr(B, bidx + (zero, zero)), self.ex(B.strides[-1]),
                self.ptr(out, bidx + (zero, zero)), self.ex(out.strides[-2]),
                self.ex(out.strides[-1])]

    def _dots_pair(self, s1, s2) -> bool:
        return dots_pair(s1, s2)

    def _matmul_dots_pair(self, s1: MatMul, s2: MatMul):
        """Both products through `par_dots2` when both have at most DOTS_MAX_ROWS rows
        (where each alone would take `dots`), else each its own way."""
        b = self.b
        few = b.and_(b.icmp_signed("<=", self.ex(s1.out.shape[0]), self.i64(DOTS_MAX_ROWS)),
                     b.icmp_signed("<=", self.ex(s2.out.shape[0]), self.i64(DOTS_MAX_ROWS)))
        with b.if_else(few) as (then, otherwise):
            with then:
                b.call(self.micro("par_dots2", s1.out.dtype),
                       [self._mailbox()] + self._dots_args(s1) + self._dots_args(s2))
            with otherwise:
                self.emit_MatMul(s1)
                self.emit_MatMul(s2)

    def _matmul_blas(self, s: MatMul, layout, M, N, K):
        out, A, B = s.out, s.a, s.b
        nb = out.ndim - 2
        ty = REG[out.dtype]
        i32 = ir.IntType(32)
        name = blas.GEMM[out.dtype]
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(
                ir.VoidType(), [i32, i32, i32, I64, I64, I64, ty, PTR, I64, PTR, I64, ty, PTR,
                                I64]), name)
        (ta, lda), (tb, ldb), ldc = layout

        def call(bidx):
            zeros = (self.i64(0), self.i64(0))
            pa, pb, pc = (self.ptr(r, tuple(bidx) + zeros) for r in (A, B, out))
            self.b.call(fn, [ir.Constant(i32, blas.ROW_MAJOR), ir.Constant(i32, ta),
                             ir.Constant(i32, tb), M, N, K, ir.Constant(ty, 1.0), pa,
                             self.ex(lda), pb, self.ex(ldb), ir.Constant(ty, 0.0), pc,
                             self.ex(ldc)])
        self.nest(out.shape[:nb], call)

    def _matmul_loops(self, s: MatMul, work_below=None):
        """The product in loops (`rows` where it applies); `work_below`: M·N·K is
        known to be less than that here."""
        if self._matmul_rows(s, work_below):
            return
        out, A, B = s.out, s.a, s.b
        nb = out.ndim - 2
        M, N, K = out.shape[-2], out.shape[-1], A.shape[-1]
        is_float = out.dtype in FLOATS
        zero = self.const(0, out.dtype)

        def per_batch(bidx):
            def row(i):
                self.loop(self.ex(N), lambda j: self.store(out, bidx + (i, j), zero), "j0")

                def inner(k):
                    a = self.load(A, bidx + (i, k))

                    def col(j):
                        p = self.ptr(out, bidx + (i, j))
                        prod = self.b.fmul(a, self.load(B, bidx + (k, j))) if is_float else \
                            self.b.mul(a, self.load(B, bidx + (k, j)))
                        old = self.b.load(p, typ=MEM[out.dtype])
                        self.b.store(self.b.fadd(old, prod) if is_float else self.b.add(old, prod), p)
                    self.loop(self.ex(N), col, "j")
                self.loop(self.ex(K), inner, "k")
            self.loop(self.ex(M), row, "m")
        self.nest(out.shape[:nb], per_batch)

    def _matmul_rows(self, s: MatMul, work_below=None) -> bool:
        """Rows of out held in vector registers (`microkernels.rows`), per batch; for
        float products whose B and out have contiguous rows. `work_below`: a bound on
        M·N·K (B is then at most work_below / M elements)."""
        out, A, B = s.out, s.a, s.b
        zero = self.i64(0)
        if not rows_apply(s):
            return False

        # A B of ROWS_STREAM_BYTES or more is streamed (`microkernels.rows_stream`),
        # chosen here, so that kernels without such a product never build that kernel.
        size = A.shape[-1] * out.shape[-1] * ITEMSIZE[out.dtype]
        limit = microkernels.ROWS_STREAM_BYTES
        M = out.shape[-2]
        if (work_below is not None and M.is_const and M.const > 0
                and work_below * ITEMSIZE[out.dtype] <= limit * M.const):
            size = Expr.of(0)       # B < work_below / M elements: never streamed

        def call(bidx):
            args = [self.ex(out.shape[-2]), self.ex(out.shape[-1]), self.ex(A.shape[-1]),
                    self.ptr(A, bidx + (zero, zero)), self.ex(A.strides[-2]),
                    self.ex(A.strides[-1]), self.ptr(B, bidx + (zero, zero)),
                    self.ex(B.strides[-2]), self.ptr(out, bidx + (zero, zero)),
                    self.ex(out.strides[-2])]
            if size.is_const:
                kind = "rows_stream" if size.const >= limit else "rows"
                self.b.call(self.micro(kind, out.dtype), args)
                return
            big = self.b.icmp_signed(">=", self.ex(size), self.i64(limit))
            with self.b.if_else(big) as (then, otherwise):
                with then:
                    self.b.call(self.micro("rows_stream", out.dtype), args)
                with otherwise:
                    self.b.call(self.micro("rows", out.dtype), args)
        self.nest(out.shape[:out.ndim - 2], call)
        return True

    def emit_ScatterAdd(self, s: ScatterAdd):
        lead = s.idx.ndim
        is_float = s.out.dtype in FLOATS

        def step(idx):
            b = self.b
            row = self.load(s.idx, idx[:lead])
            off = b.add(self.ex(s.out.offset), b.mul(row, self.ex(s.out.strides[0])))
            for i, st in zip(idx[lead:], s.out.strides[1:]):
                off = b.add(off, b.mul(i, self.ex(st)))
            p = self.at(s.out.buf, off)
            v = self.load(s.src, idx)
            old = b.load(p, typ=MEM[s.out.dtype])
            b.store(b.fadd(old, v) if is_float else b.add(old, v), p)
        self.nest(s.src.shape, step)

    def emit_Check(self, s: Check):
        def step(idx):
            b = self.b
            bad = self.val(s.cond, idx)
            fail_bb = self.fn.append_basic_block("check.fail")
            ok_bb = self.fn.append_basic_block("check.ok")
            b.cbranch(bad, fail_bb, ok_bb)
            b.position_at_end(fail_bb)
            value = convert(b, self.val(s.value, idx), s.value.dtype, "int64")
            b.store(self.i64(s.code), b.gep(self.status, [self.i64(0)], source_etype=I64))
            b.store(value, b.gep(self.status, [self.i64(1)], source_etype=I64))
            b.ret_void()
            b.position_at_end(ok_bb)
        self.nest(s.shape, step)

    def emit_Loop(self, s: Loop):
        count = self.ex(s.count)
        # weights in panels are loop-invariant: packed at most once per run of the loop
        for st in walk(s.body):
            if isinstance(st, MatMul) and st.packed is not None:
                self.b.store(ir.Constant(I1, 0), self.pack_flag(st.packed.buf))

        def body(i):
            self.env[s.var] = self.b.sub(self.b.sub(count, self.i64(1)), i) if s.reverse else i
            self.emit(s.body)
            del self.env[s.var]
        self.loop(count, body, name=s.var.lstrip("$"))

    # ----------------------------------------------------------------- the function

    def _blas_single_thread(self):
        """i1: OpenBLAS would run a product on one thread (or is absent). Read once per
        call: sharded calls set it to one thread per shard (`shard.py`)."""
        if not blas.available():
            return ir.Constant(I1, 1)
        if not any(isinstance(st, MatMul) and (st.packed is not None or self._tiles_apply(st))
                   for st in walk(self.prog.body)):
            return ir.Constant(I1, 0)
        i32 = ir.IntType(32)
        fn = self.module.globals.get(blas.GET_THREADS) or ir.Function(
            self.module, ir.FunctionType(i32, []), blas.GET_THREADS)
        return self.b.icmp_signed("<=", self.b.call(fn, []), ir.Constant(i32, 1))

    def build(self):
        b = self.b
        dims, inputs, outputs, arena, offsets, status = self.fn.args
        self.status = status
        self.alias_scopes()
        self.blas_single = self._blas_single_thread()
        self.bases()
        plan = unit_plan(self.prog.body) if UNIT_SPLIT and not PROFILE else None
        if PROFILE:
            self._emit_profiled(self.prog.body)
        elif plan is None:
            self.emit(self.prog.body)
        else:
            self._emit_unit_split(plan)
        self.b.ret_void()

    def _emit_profiled(self, body):
        """Each statement, at every depth, between two reads of the cycle counter, its
        cycles added to PROFILE_SYMBOL[k] (k: its place in `walk(body)` order; a loop's
        count includes its body's; the last entry counts calls). A development tool
        (`compiler.profile`): statements that the usual path emits together (the unit
        split, pairs of `dots`) are emitted one by one."""
        b = self.b
        order = list(walk(body))
        n = len(order)
        ty = ir.ArrayType(I64, n + 1)
        table = ir.GlobalVariable(self.module, ty, PROFILE_SYMBOL)
        table.initializer = ir.Constant(ty, [0] * (n + 1))
        clock = self.module.globals.get("llvm.readcyclecounter") or ir.Function(
            self.module, ir.FunctionType(I64, []), "llvm.readcyclecounter")
        base = b.inttoptr(b.ptrtoint(table, I64), PTR)     # (llvmlite types the global)
        self.profile = ({id(s): k for k, s in enumerate(order)}, base, clock)
        self._profile_add(n, self.i64(1))
        self.emit(body)

    def _profile_add(self, k, value):
        b = self.b
        slot = b.gep(self.profile[1], [self.i64(k)], source_etype=I64)
        b.store(b.add(b.load(slot, typ=I64), value), slot)

    def _emit_timed(self, s):
        slots, _, clock = self.profile
        t0 = self.b.call(clock, [])
        getattr(self, "emit_" + type(s).__name__)(s)
        self._profile_add(slots[id(s)], self.b.sub(self.b.call(clock, []), t0))

    def bases(self):
        """The dims and every buffer's base pointer, loaded from the arguments."""
        b = self.b
        dims, inputs, outputs, arena, offsets, status = self.fn.args
        for k, d in enumerate(self.prog.dims):
            self.env[d] = b.load(b.gep(dims, [self.i64(k)], source_etype=I64), name=d, typ=I64)
        for buf in self.prog.buffers:
            if buf.kind in ("input", "output"):
                table = inputs if buf.kind == "input" else outputs
                obj = b.load(b.gep(table, [self.i64(buf.index)], source_etype=PTR), typ=PTR)
                p = b.load(b.gep(obj, [self.i64(ARRAY_DATA_FIELD)], source_etype=I8), typ=PTR)
            elif buf.kind == "arena":
                if buf.index < 0:
                    continue
                off = b.load(b.gep(offsets, [self.i64(buf.index)], source_etype=I64), typ=I64)
                p = b.gep(arena, [off], source_etype=I8)
            else:  # const
                p = self.consts.get(buf.id)
                if p is None:
                    data = buf.data.reshape(-1)
                    ty = ir.ArrayType(MEM[buf.dtype], data.size)
                    p = ir.GlobalVariable(self.module, ty, f"const{buf.id}")
                    p.global_constant = True
                    p.linkage = "internal"
                    p.initializer = ir.Constant(
                        ty, [self._elem(x, buf.dtype) for x in data.tolist()])
                    self.consts[buf.id] = p
            self.base[buf.id] = p

    # ----------------------------------------------------------------- unit split

    def _emit_unit_split(self, plan: "UnitPlan"):
        """The statements before the products; then, when the worker that status[2]
        lends is idle, half the hidden units posted to it as a job (`_unit_job`) and
        the other half here, waiting for it at the end (or taking the job back, if no
        worker claimed it: see `_join`); else the products and the gates as usual.
        Then the statements after them."""
        b = self.b
        body = self.prog.body
        self.emit(body[:plan.start])
        job = self._unit_job(plan)
        with b.goto_entry_block():
            before = b.alloca(I64, name="posted0")
        posted = self._post(job, before)
        with b.if_else(posted) as (then, otherwise):
            with then:
                self._emit_units(plan, 0, plan.cut)
                self._join(job, before)
            with otherwise:
                self.emit(body[plan.start:plan.end])
        self.emit(body[plan.end:])

    def _unit_job(self, plan: "UnitPlan"):
        """A function with the kernel's signature that computes units [cut, H)."""
        em = Emitter(self.module, self.prog, f"{self.fn.name}.units")
        em.fn.linkage = "internal"
        em.tags, em.consts, em.vec_used = self.tags, self.consts, self.vec_used
        em.blas_single, em.status = self.blas_single, em.fn.args[5]
        em.bases()
        em._emit_units(plan, plan.cut, plan.units)
        em.b.ret_void()
        return em.fn

    def _emit_units(self, plan: "UnitPlan", u0: int, u1: int):
        """Units [u0, u1): the product columns their gates read (`dots`, one call per
        block of columns), then the elementwise statements on their slice."""
        zero = self.i64(0)
        self.strides = {}
        for s, starts in plan.columns:
            out, A, B = s.out, s.a, s.b
            for c in starts:
                at = self.i64(c + u0)
                self.b.call(self.micro("dots", out.dtype), [
                    self.ex(out.shape[0]), self.i64(u1 - u0), self.ex(A.shape[1]),
                    self.ptr(A, (zero, zero)), self.ex(A.strides[0]),
                    self.ptr(B, (zero, at)), self.ex(B.strides[1]),
                    self.ptr(out, (zero, at)), self.ex(out.strides[0]), self.ex(out.strides[1])])
        for st in plan.gates:
            self.emit([_unit_slice(st, u0, u1)])

    def _post(self, job, before):
        """i1: `job` posted to the worker whose words status[2] holds (called with this
        kernel's arguments), which was idle; `before` receives its post count."""
        from .spin import emit_idle, store_release
        b = self.b
        mb = self._mailbox()
        with b.goto_entry_block():
            flag = b.alloca(I1, name="posted")
        b.store(ir.Constant(I1, 0), flag)
        with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(mb, I64), self.i64(0))):
            idle, posted0 = emit_idle(b, lambda k: self._word(mb, k))
            with b.if_then(idle):
                b.store(b.ptrtoint(job, I64), self._word(mb, 3))
                for k, a in enumerate(self.fn.args):
                    b.store(b.ptrtoint(a, I64), self._word(mb, 4 + k))
                b.store(posted0, before)
                store_release(b, b.add(posted0, self.i64(1)), self._word(mb, 0))
                b.store(ir.Constant(I1, 1), flag)
        return b.load(flag, typ=I1)

    def _join(self, job, before):
        """Wait for the posted job, or take it back and run it here if no worker
        claims it (`spin.emit_join`, as `microkernels.par_dots` does with half a
        product)."""
        from .spin import emit_join
        b = self.b
        mb = self._mailbox()
        exit_bb = self.fn.append_basic_block("join.exit")
        emit_join(self.module, b, lambda k: self._word(mb, k), b.load(before, typ=I64),
                  microkernels.RETRACT_POLLS, _x86(),
                  lambda: b.call(job, list(self.fn.args)), exit_bb)
        b.position_at_end(exit_bb)

    def _word(self, base, k):
        return self.b.gep(base, [self.i64(k)], source_etype=I64)

    def _elem(self, x, dtype):
        if dtype == "bool":
            return ir.Constant(I8, int(bool(x)))
        if dtype == "int64":
            return ir.Constant(I64, int(x))
        return ir.Constant(MEM[dtype], float(x))


# ----------------------------------------------------------------------------- scalar rules

def _blas_layout(s: MatMul):
    """((transA, lda), (transB, ldb), ldc) when every operand is a row- or column-major
    matrix (per batch), else None."""
    one, zero = Expr.of(1), Expr.of(0)

    def operand(ref, cols):
        r, c = ref.strides[-2], ref.strides[-1]
        if c == one and r != zero:
            return blas.NO_TRANS, r
        if r == one and c != zero:
            return blas.TRANS, c
        return None
    a = operand(s.a, s.a.shape[-1])
    b = operand(s.b, s.b.shape[-1])
    if a is None or b is None or s.out.strides[-1] != one:
        return None
    return a, b, s.out.strides[-2]


def _direct(s: MatMul, unstage: bool = True) -> MatMul:
    """`s` without the tiles' copies: B read where the staged weight lies (transposed),
    and (unless `unstage` is False) (A·B)ᵀ written where the copy would have put it,
    as Bᵀ·Aᵀ."""
    if s.stage is None and (s.unstage is None or not unstage):
        return s
    a, b, out = s.a, s.b if s.stage is None else s.stage.tree.ref, s.out
    if s.unstage is not None and unstage:
        a, b, out = transposed(b), transposed(a), s.unstage.out
    return MatMul(out, a, b)


def rows_apply(s: MatMul) -> bool:
    """A product `microkernels.rows` can run: float, B's and out's rows contiguous."""
    one = Expr.of(1)
    return s.out.dtype in FLOATS and s.b.strides[-1] == one and s.out.strides[-1] == one


def dots_apply(s: MatMul) -> bool:
    """A product `microkernels.dots` can run: A's rows and B's columns contiguous (B = Wᵀ)."""
    one = Expr.of(1)
    return (s.out.dtype in FLOATS and s.a.strides[-1] == one and s.b.strides[-2] == one
            and s.b.strides[-1] != one)


def may_split(*products: MatMul) -> bool:
    """Products whose N·K together can reach `microkernels.split_min`: worth handing
    half to the worker (`par_dots`, `par_dots2`)."""
    work = Expr.of(0)
    for s in products:
        work = work + s.out.shape[-1] * s.a.shape[-1]
    return not work.is_const or work.const >= microkernels.split_min(products[0].out.dtype)


class UnitPlan:
    """How one step of a cell splits by hidden unit (`unit_plan`): body[start:end] is
    the products (`columns`: each with the first column of every block of `units`
    columns its readers take) and the elementwise statements (`gates`) over
    (rows, units); `cut` the first unit of the worker's half."""

    def __init__(self, start, end, columns, gates, units, cut):
        self.start, self.end, self.columns, self.gates = start, end, columns, gates
        self.units, self.cut = units, cut


def unit_plan(body) -> UnitPlan | None:
    """A program without loops whose products of a few rows through `dots` (with
    UNIT_SPLIT_BYTES to UNIT_SPLIT_MAX_BYTES of weights together) are read only by the
    elementwise statements right after them, over one index space (M, H) of constant sizes, through blocks of H
    columns (the gate slices of x·U + h·W); each of those statements treats units
    independently (views sliced along the last axis with a constant stride, no index
    trees), and any buffer one of them writes is read by the others only through the
    view it was written with. Else None."""
    if any(isinstance(s, Loop) for s in body):
        return None
    for start, s in enumerate(body):
        if isinstance(s, MatMul):
            break
    else:
        return None
    end = start
    while end < len(body) and isinstance(body[end], MatMul):
        end += 1
    products = body[start:end]
    if not (1 <= len(products) <= 2) or not all(
            s.out.ndim == 2 and s.packed is None and s.out.dtype in FLOATS and dots_apply(s)
            and s.out.shape[0].is_const and s.out.shape[0].const <= DOTS_MAX_ROWS
            and s.out.buf.kind == "arena" and s.out.is_contiguous() for s in products) \
            or len({s.out.dtype for s in products}) != 1:
        return None
    work = sum(s.out.shape[1].const * s.a.shape[1].const if s.a.shape[1].is_const else 0
               for s in products if s.out.shape[1].is_const)
    if not UNIT_SPLIT_BYTES <= work * ITEMSIZE[products[0].out.dtype] <= UNIT_SPLIT_MAX_BYTES:
        return None
    outs = {s.out.buf.id: s for s in products}
    if any(r.buf.id in outs for s in products for r in s.refs() if r is not s.out):
        return None
    gates, k = [], end
    while k < len(body) and isinstance(body[k], (Map, Fused)):
        gates.append(body[k])
        k += 1
    if not gates:
        return None
    shape = _space(gates[0])
    if len(shape) != 2 or not all(d.is_const for d in shape) or \
            any(_space(g) != shape for g in gates):
        return None
    rows, units = shape[0].const, shape[1].const
    lanes = vecmath.lanes(products[0].out.dtype)
    cut = int(units * UNIT_SPLIT_SHARE) // lanes * lanes
    if cut == 0 or rows != products[0].out.shape[0].const:
        return None
    if any(r.buf.id in outs for s in body[k:] for st in walk([s]) for r in st.refs()):
        return None
    starts: dict = {b: set() for b in outs}
    written: dict = {}
    for g in gates:
        maps = g.maps if isinstance(g, Fused) else [g]
        for m in maps:
            if isinstance(m, Reduce):
                return None
            if any(isinstance(t, (Iota, Gather)) for t in tree_nodes(m.tree)):
                return None
            for r in [m.out] + tree_refs(m.tree):
                if r.ndim != 2 or r.shape != shape or not r.strides[-1].is_const:
                    return None
                if r.buf.id in written and written[r.buf.id] != r.view:
                    return None
                if r.buf.id in outs:
                    src = outs[r.buf.id]
                    if r.strides[-1] != src.out.strides[-1] or not r.offset.is_const or (
                            rows > 1 and r.strides[0] != src.out.strides[0]):
                        return None
                    starts[r.buf.id].add(r.offset.const)
            written.setdefault(m.out.buf.id, m.out.view)
    columns = []
    for b, s in outs.items():
        width = s.out.shape[1].const
        cols = sorted(starts[b])
        if any(c + units > width for c in cols) or any(
                c2 - c1 < units for c1, c2 in zip(cols, cols[1:])):
            return None
        columns.append((s, cols))
    return UnitPlan(start, k, columns, gates, units, cut)


def _space(s) -> tuple:
    return s.shape if isinstance(s, Fused) else s.out.shape


def _unit_slice(s, u0: int, u1: int):
    """Statement `s` (a Map or Fused over (M, H)) on units [u0, u1) only."""
    def ref(r):
        return Ref(r.buf, r.offset + r.strides[-1] * u0, r.shape[:-1] + (Expr.of(u1 - u0),),
                   r.strides)

    def tree(t):
        if isinstance(t, Load):
            return Load(ref(t.ref))
        if isinstance(t, Apply):
            return Apply(t.op, tuple(tree(a) for a in t.args), t.dtype, t.params)
        return t
    if isinstance(s, Fused):
        return Fused(s.shape[:-1] + (Expr.of(u1 - u0),),
                     [Map(ref(m.out), tree(m.tree)) for m in s.maps], s.temps)
    return Map(ref(s.out), tree(s.tree))


def _x86() -> bool:
    from .jit import target_machine
    return target_machine()[3].startswith(("x86_64", "i686", "i386"))


def dots_pair(s1, s2) -> bool:
    """Two products in a row that `par_dots2` may run with one hand-off: each a single
    `dots` call, together large enough to split, neither reading what the other
    writes (the x·U and h·W of one step)."""
    def single(s):
        return (isinstance(s, MatMul) and s.out.ndim == 2 and s.packed is None
                and s.out.dtype in FLOATS and dots_apply(s))
    return (single(s1) and single(s2) and s1.out.dtype == s2.out.dtype
            and may_split(s1, s2)
            and all(r.buf.id != s1.out.buf.id for r in s2.refs())
            and all(r.buf.id != s2.out.buf.id for r in s1.refs()))


def _region(buf):
    """The memory region of a buffer (see `Emitter.alias_scopes`)."""
    if buf.kind == "input":
        return ("inputs", 0)
    return (buf.kind, buf.index if buf.kind in ("arena", "output") else buf.id)


def convert(b, v, src: str, dst: str):
    """Cast a register value between our dtypes, as NumPy's astype does."""
    if src == dst:
        return v
    if src in FLOATS and dst in FLOATS:
        return b.fpext(v, F64) if dst == "float64" else b.fptrunc(v, F32)
    if src in FLOATS:
        if dst == "bool":
            return b.fcmp_unordered("!=", v, ir.Constant(REG[src], 0.0))
        return b.fptosi(v, I64)
    if src == "int64":
        if dst == "bool":
            return b.icmp_signed("!=", v, ir.Constant(I64, 0))
        return b.sitofp(v, REG[dst])
    # bool
    if dst == "int64":
        return b.zext(v, I64)
    return b.uitofp(v, REG[dst])


def maximum(em, x, y, dtype):
    if dtype in FLOATS:
        return em.b.call(em.intrinsic("llvm.maximum", REG[dtype], 2), [x, y])
    return em.b.select(em.b.icmp_signed(">", x, y), x, y)


def minimum(em, x, y, dtype):
    if dtype in FLOATS:
        return em.b.call(em.intrinsic("llvm.minimum", REG[dtype], 2), [x, y])
    return em.b.select(em.b.icmp_signed("<", x, y), x, y)


def _sigmoid(em, x, ty):
    """1/(1+e^-x) for x ≥ 0, e^x/(1+e^x) below: exp of a non-positive number only
    (one division: the numerator is chosen first)."""
    b = em.b
    ax = b.call(em.intrinsic("llvm.fabs", ty), [x])
    e = _exp(em, b.fneg(ax), ty)
    one = ir.Constant(ty, 1.0)
    d = b.fadd(one, e)
    return b.fdiv(b.select(b.fcmp_ordered(">=", x, ir.Constant(ty, 0.0)), one, e), d)


LINE_BYTES = 64   # a cache line: the blocks of a transposing copy (`Emitter.tiled_nest`)
TILED_COPY_BYTES = 1 << 20   # ... of copies this large or larger
REDUCE_IN_REGISTERS = True   # float sums along the innermost axis: `_reduce_inner`
TANH_BY_EXPM1 = True    # float64 tanh as expm1(2|x|) / (expm1(2|x|) + 2) (see _tanh)
# exp and expm1 written out in IR (`mathfn`) even where libmvec has them. Off: on the
# machine measured (Zen 1) libmvec's were as fast or faster (tiny steps 0.96–1.04x) and
# ~10% quicker to compile. Where libmvec lacks a function (another libc), the IR
# versions are used anyway: vectorized, where a libm call would keep the loop scalar.
INLINE_EXP = False
TANH_CAP = {"float64": 20.0, "float32": 10.0}   # tanh rounds to ±1 beyond these


def _libmvec(fn: str, ty) -> bool:
    return not INLINE_EXP and vecmath.has(fn, "float32" if ty == F32 else "float64")


def _exp(em, x, ty):
    if _libmvec("exp", ty):
        return em.b.call(em.vecmath("exp", ty), [x])
    return mathfn.exp(em, x, ty)


def _tanh(em, x, dtype):
    """tanh(x) = sign(x) · u / (u + 2) with u = expm1(2·min(|x|, cap)): no cancellation
    (u ≥ 0), one division; NaN stays NaN. u comes from libmvec's expm1 in float64
    (measured within 3.9 ulp of the exact value, and faster than libmvec's tanh on
    Zen 1: 5.1 against 8.2 ns per number), else from `mathfn.expm1` (within 2.5 ulp);
    float32 uses libmvec's tanhf where there is one."""
    ty = REG[dtype]
    b = em.b
    by_expm1 = TANH_BY_EXPM1 and dtype == "float64" and _libmvec("expm1", ty)
    if not by_expm1 and _libmvec("tanh", ty):
        return b.call(em.vecmath("tanh", ty), [x])
    ax = b.call(em.intrinsic("llvm.fabs", ty), [x])
    cap = ir.Constant(ty, TANH_CAP[dtype])
    ax = b.select(b.fcmp_ordered(">", ax, cap), cap, ax)
    two_ax = b.fadd(ax, ax)
    if by_expm1:
        u = b.call(em.vecmath("expm1", ty), [two_ax])
    else:
        u = mathfn.expm1(em, two_ax, ty)
    r = b.fdiv(u, b.fadd(u, ir.Constant(ty, 2.0)))
    return b.call(em.intrinsic("llvm.copysign", ty, 2), [r, x])


def _floor_div(b, x, y):
    q = b.sdiv(x, y)
    r = b.srem(x, y)
    zero = ir.Constant(I64, 0)
    fix = b.and_(b.icmp_signed("!=", r, zero),
                 b.icmp_signed("<", b.xor(r, y), zero))
    return b.sub(q, b.zext(fix, I64))


def _cmp(op_float, op_int, unordered=False):
    def emit(em, a, dtypes, out, p):
        x, y = a
        if dtypes[0] in FLOATS:
            f = em.b.fcmp_unordered if unordered else em.b.fcmp_ordered
            return f(op_float, x, y)
        return em.b.icmp_signed(op_int, x, y)
    return emit


def _unary_float(intr=None, vec=None):
    def emit(em, a, dtypes, out, p):
        ty = REG[out]
        fn = em.vecmath(vec, ty) if vec else em.intrinsic(intr, ty)
        return em.b.call(fn, [a[0]])
    return emit


def _arith(fop, iop):
    def emit(em, a, dtypes, out, p):
        x, y = a
        return getattr(em.b, fop)(x, y) if out in FLOATS else getattr(em.b, iop)(x, y)
    return emit


def _div(em, a, dtypes, out, p):
    x, y = a
    return em.b.fdiv(x, y) if out in FLOATS else _floor_div(em.b, x, y)


def _pow(em, a, dtypes, out, p):
    x, y = a
    if out in FLOATS:
        return em.b.call(em.intrinsic("llvm.pow", REG[out], 2), [x, y])
    fx, fy = em.b.sitofp(x, F64), em.b.sitofp(y, F64)
    r = em.b.call(em.intrinsic("llvm.pow", F64, 2), [fx, fy])
    return em.b.fptosi(r, I64)


def _neg(em, a, dtypes, out, p):
    return em.b.fneg(a[0]) if out in FLOATS else em.b.neg(a[0])


def _abs(em, a, dtypes, out, p):
    if out in FLOATS:
        return em.b.call(em.intrinsic("llvm.fabs", REG[out]), [a[0]])
    x = a[0]
    return em.b.select(em.b.icmp_signed("<", x, ir.Constant(I64, 0)), em.b.neg(x), x)


def _sign(em, a, dtypes, out, p):
    b, x = em.b, a[0]
    if out in FLOATS:
        ty = REG[out]
        zero = ir.Constant(ty, 0.0)
        neg = b.select(b.fcmp_ordered("<", x, zero), ir.Constant(ty, -1.0), x)
        return b.select(b.fcmp_ordered(">", x, zero), ir.Constant(ty, 1.0), neg)
    zero = ir.Constant(I64, 0)
    return b.sub(b.zext(b.icmp_signed(">", x, zero), I64), b.zext(b.icmp_signed("<", x, zero), I64))


def _relu(em, a, dtypes, out, p):
    return maximum(em, a[0], em.const(0, out), out)


SCALAR = {
    "exp": lambda em, a, d, out, p: _exp(em, a[0], REG[out]),
    "log": _unary_float(vec="log"),
    "sqrt": _unary_float("llvm.sqrt"),
    "tanh": lambda em, a, d, out, p: _tanh(em, a[0], out),
    "sigmoid": lambda em, a, d, out, p: _sigmoid(em, a[0], REG[out]),
    "neg": _neg,
    "abs": _abs,
    "sign": _sign,
    "relu": _relu,
    "add": _arith("fadd", "add"),
    "sub": _arith("fsub", "sub"),
    "mul": _arith("fmul", "mul"),
    "div": _div,
    "pow": _pow,
    "maximum": lambda em, a, d, out, p: maximum(em, a[0], a[1], out),
    "minimum": lambda em, a, d, out, p: minimum(em, a[0], a[1], out),
    "greater": _cmp(">", ">"),
    "greater_equal": _cmp(">=", ">="),
    "less": _cmp("<", "<"),
    "less_equal": _cmp("<=", "<="),
    "equal": _cmp("==", "=="),
    "not_equal": _cmp("!=", "!=", unordered=True),
    "logical_and": lambda em, a, d, out, p: em.b.and_(a[0], a[1]),
    "logical_or": lambda em, a, d, out, p: em.b.or_(a[0], a[1]),
    "logical_not": lambda em, a, d, out, p: em.b.xor(a[0], ir.Constant(I1, 1)),
    "where": lambda em, a, d, out, p: em.b.select(a[0], a[1], a[2]),
    "cast": lambda em, a, d, out, p: convert(em.b, a[0], d[0], out),
}


def emit_text(prog: Program, name: str = "kernel") -> str:
    """The LLVM IR text of the kernel of `prog`, with the vectorizable math wrappers
    of `vecmath` defined in it."""
    module, used = _emit(prog, name)
    text = str(module)
    if not used:
        return text
    # llvmlite declared the wrappers; their definitions replace those declarations
    text = re.sub(r'^declare [^\n]*@"?ag_(' + "|".join(vecmath.FUNCTIONS)
                  + r')_f(32|64)"?\([^\n]*\n', "", text,
                  flags=re.M)
    return text + "\n" + vecmath.definitions(used)


def _emit(prog: Program, name: str):
    module = ir.Module(name=name)
    em = Emitter(module, prog, name)
    em.build()
    _packed_entry(module, em.fn)
    return module, em.vec_used


def _packed_entry(module, kernel):
    """void <kernel>_packed(ptr args): the kernel on the six pointers at `args`. A
    prepared call passes one pointer through ctypes instead of six (~0.4 µs less a
    call here: `jit.Kernel._native_call`)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), f"{kernel.name}_packed")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    args = [b.load(b.gep(fn.args[0], [ir.Constant(I64, k)], source_etype=PTR), typ=PTR)
            for k in range(6)]
    b.call(kernel, args)
    b.ret_void()

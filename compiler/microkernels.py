"""The product kernels shared by every matrix product of a module.

Each kind is emitted once per dtype as a never-inlined function with run-time sizes and
strides, and every product that takes that path calls it. Before, each product carried
its own copy of each fallback path: products were 86% of the LLVM IR of an LSTM training
step, and LLVM's time grows with the IR it is given. Each (kind, dtype) is compiled on
its own, the first time a kernel calls it (`unit_ir`, `jit.library_objects`).

    rows(M, N, K, A, sa0, sa1, B, sb0, C, sc0)
        C[i, j] = Σ_k A[i·sa0 + k·sa1] · B[k·sb0 + j]      (rows of B and C contiguous)
        A block of the row of C in vector registers: per k one broadcast of A[i, k] and
        one fused multiply-add per vector of the block. Blocks of half the vector
        registers (8 with AVX2, 16 with AVX-512), then of 4, 2, 1 vectors (more
        accumulator sets over k for narrow blocks, to hide the latency of the
        multiply-add), then scalar columns.

    rows_stream(<the arguments of rows>)
        rows for a B of ROWS_STREAM_BYTES or more: up to 3 rows of A per pass over B,
        B's rows streamed two at a time over blocks of C's columns that stay in L2.

    dots(M, N, K, A, sa0, B, sb1, C, sc0, sc1)
        C[i·sc0 + j·sc1] = Σ_k A[i·sa0 + k] · B[j·sb1 + k]  (B = Wᵀ: W's rows contiguous)
        Dot products along k, 8 columns at a time (then 4, 2, 1), one vector accumulator
        each; the k past the last full vector in scalars. The single-row products of
        inference at B = 1: no library call's set-up and no copy of Wᵀ.

    par_dots(MB, M, N, K, A, sa0, B, sb1, C, sc0, sc1)
        dots, its columns split between this thread and an idle, spinning worker whose
        words are at MB (`spin.Worker`; null: no worker) when W has PAR_SPLIT_BYTES: the
        worker's half of W stays in its core's L2 from call to call. The second half
        is posted as `job_dots`; a worker that has not claimed it after RETRACT_POLLS
        polls (it fell asleep) is not waited for: the half is claimed back and done here.
    par_dots2(MB, <the ten arguments of dots> × 2)
        Two independent products (x·U and h·W of one step) split the same way with one
        hand-off: the worker gets both second halves in one job.

    panels(M, NP, K, A, sa0, sa1, P, spj, spk, C, sc0)
        C[i, j·NR + r] = Σ_k A[i·sa0 + k·sa1] · P[j·spj + k·spk + r]  (NR = 2 vectors,
        C's rows contiguous): B packed in panels (spj = K·NR, spk = NR), or B itself
        when its rows are contiguous (spj = NR, spk = its row stride). Register tiles of R rows × NR columns: R = 8 with 32 vector registers
        (AVX-512), 6 with 16 (AVX2: 12 accumulators, 2 panel vectors, 1 broadcast), then
        4, 2, 1 rows; k in chunks of PANEL_KC with the panel chunk kept in L1 while every
        block of rows passes over it.
"""
from __future__ import annotations

from llvmlite import ir

from . import vecmath

I64 = ir.IntType(64)
PTR = ir.PointerType()
REG = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
PANEL_KC = 256              # steps of k per pass of the tiles: a block of rows stays in L1
PAR_SPLIT_BYTES = 1 << 18   # bytes of W (N·K·itemsize) from which `dots` is split
#                             between two threads (256 KB: a float64 Elman step's two
#                             products, 192 KB, gained −0.3 to +0.9 µs from run to run)
ROWS_STREAM_BYTES = 1 << 20  # B (K·N·itemsize) from which `rows` streams B's rows
STREAM_BLOCK_BYTES = 1 << 16  # C's columns per pass of `_rows_stream` (per row of A): in L2
RETRACT_POLLS = 1 << 12     # polls for a worker to claim a posted half before taking it back


def emit_loop(fn: ir.Function, b: ir.IRBuilder, count, body, name="i"):
    """for i in range(count): body(i) in `fn` at `b`'s position (skipped when count
    <= 0); the one loop builder of the code generator and of these kernels."""
    zero = ir.Constant(I64, 0)
    pre = b.block
    body_bb = fn.append_basic_block(f"{name}.body")
    exit_bb = fn.append_basic_block(f"{name}.exit")
    b.cbranch(b.icmp_signed(">", count, zero), body_bb, exit_bb)
    b.position_at_end(body_bb)
    i = b.phi(I64, name=name)
    i.add_incoming(zero, pre)
    body(i)
    nxt = b.add(i, ir.Constant(I64, 1), name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, count), body_bb, exit_bb)
    b.position_at_end(exit_bb)


def split_min(dtype: str) -> int:
    """N·K from which single-row products are split between two threads."""
    return PAR_SPLIT_BYTES // (4 if dtype == "float32" else 8)


def panel_rows() -> int:
    """Rows of a register tile of `panels`: 2 vector registers per row, 3 left for the
    panel row and the broadcast."""
    return 8 if vecmath.vector_registers() >= 32 else 6


SIGNATURES = {
    "rows": ["m", "n", "k", "A", "sa0", "sa1", "B", "sb0", "C", "sc0"],
    "rows_stream": ["m", "n", "k", "A", "sa0", "sa1", "B", "sb0", "C", "sc0"],
    "dots": ["m", "n", "k", "A", "sa0", "B", "sb1", "C", "sc0", "sc1"],
    "panels": ["m", "np", "k", "A", "sa0", "sa1", "P", "spj", "spk", "C", "sc0"],
    "job_dots": ["BLOCK", "U1", "U2", "U3", "U4", "U5"],     # a worker's call: 6 pointers
    "par_dots": ["MB", "m", "n", "k", "A", "sa0", "B", "sb1", "C", "sc0", "sc1"],
    "par_dots2": ["MB", "m", "n", "k", "A", "sa0", "B", "sb1", "C", "sc0", "sc1",
                  "m_2", "n_2", "k_2", "A_2", "sa0_2", "B_2", "sb1_2", "C_2", "sc0_2", "sc1_2"],
}
DTYPES = ("float32", "float64")
# The kernels each kind calls: built and loaded with it.
CALLS = {"job_dots": ("dots",), "par_dots": ("dots", "job_dots"),
         "par_dots2": ("dots", "job_dots")}


def symbol(kind: str, dtype: str) -> str:
    return f"ag_{kind}_{dtype}"


def _fnty(kind):
    return ir.FunctionType(ir.VoidType(), [PTR if a[0].isupper() else I64
                                           for a in SIGNATURES[kind]])


def declare(module: ir.Module, kind: str, dtype: str) -> ir.Function:
    """The kernel `kind` for `dtype` as a declaration in `module` (its code is its own
    object, see `unit_ir`)."""
    name = symbol(kind, dtype)
    return module.globals.get(name) or ir.Function(module, _fnty(kind), name)


def unit_ir(kind: str, dtype: str) -> str:
    """The LLVM IR of one kernel of the library for one dtype (the kernels it calls
    declared): each is compiled once per host and compiler version, the first time a
    kernel calls it, cached on disk like a kernel and loaded next to every kernel that
    calls it (`jit.library_objects`), so a kernel's compile time is spent on its own
    code only and a process builds only the product kernels its graphs use."""
    if kind not in SIGNATURES or dtype not in DTYPES:
        raise ValueError(f"no product kernel {kind!r} for {dtype!r}")
    from .jit import target_machine
    module = ir.Module(name=f"autograph_{kind}_{dtype}")
    kernels = MicroKernels(module, target_machine()[3].startswith(("x86_64", "i686", "i386")))
    getattr(kernels, "_" + kind)(symbol(kind, dtype), dtype)
    return str(module)


def units(kinds_dtypes) -> list:
    """The (kind, dtype) units to load for kernels that call `kinds_dtypes`: with the
    kernels they call, each once, callees first."""
    out: list = []

    def add(kind, dtype):
        for callee in CALLS.get(kind, ()):
            add(callee, dtype)
        if (kind, dtype) not in out:
            out.append((kind, dtype))
    for kind, dtype in kinds_dtypes:
        add(kind, dtype)
    return out


def called_by(obj: bytes) -> list:
    """The (kind, dtype) units an object file calls (its symbol table names them)."""
    return units((kind, dtype) for kind in SIGNATURES for dtype in DTYPES
                 if symbol(kind, dtype).encode() + b"\0" in obj)


class _Body:
    """Builder plumbing for one kernel function."""

    def __init__(self, module, name, args, dtype):
        self.module, self.dtype = module, dtype
        self.ty = REG[dtype]
        self.width = vecmath.lanes(dtype)
        self.vty = ir.VectorType(self.ty, self.width)
        self.align = self.itemsize = 4 if dtype == "float32" else 8
        types = [PTR if a[0].isupper() else I64 for a in args]
        self.fn = ir.Function(module, ir.FunctionType(ir.VoidType(), types), name)
        self.fn.attributes.add("nounwind")
        self.arg = {}
        for a, name_ in zip(self.fn.args, args):
            a.name = name_
            if name_[0].isupper():
                a.add_attribute("noalias")
            self.arg[name_] = a
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.undef = ir.Constant(self.vty, ir.Undefined)
        self.splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), self.width),
                                      [0] * self.width)
        self.zero_v = ir.Constant(self.vty, [0.0] * self.width)
        self.zero = ir.Constant(self.ty, 0.0)
        suffix = f"v{self.width}{'f32' if dtype == 'float32' else 'f64'}"
        self.fma = self._intrinsic(f"llvm.fma.{suffix}", self.vty, [self.vty] * 3)
        self.reduce = self._intrinsic(f"llvm.vector.reduce.fadd.{suffix}", self.ty,
                                      [self.ty, self.vty])

    def _intrinsic(self, name, ret, args):
        return self.module.globals.get(name) or ir.Function(
            self.module, ir.FunctionType(ret, args), name)

    def c(self, v):
        return ir.Constant(I64, int(v))

    def loop(self, count, body, name="i"):
        emit_loop(self.fn, self.b, count, body, name)

    def at(self, base, off):
        return self.b.gep(base, [off], inbounds=True, source_etype=self.ty)

    def scalar(self, base, off):
        return self.b.load(self.at(base, off), typ=self.ty)

    def vector(self, base, off):
        return self.b.load(self.at(base, off), typ=self.vty, align=self.align)

    def splat(self, x):
        b = self.b
        return b.shuffle_vector(b.insert_element(self.undef, x, self.c(0)), self.undef,
                                self.splat_mask)

    def slots_block(self):
        return self.b.goto_entry_block()

    def slots(self, n, ty, name):
        with self.b.goto_entry_block():         # promoted to registers by mem2reg
            return [self.b.alloca(ty, name=f"{name}{r}") for r in range(n)]

    def mul_add(self, acc, x, y):
        b = self.b
        b.store(b.call(self.fma, [x, y, b.load(acc, typ=self.vty)]), acc)

    def powers_below(self, n):
        """Block sizes for a remainder below `n` (a power of two): n/2, …, 2, 1."""
        out, k = [], n // 2
        while k:
            out.append(k)
            k //= 2
        return out

    def done(self):
        self.b.ret_void()
        return self.fn


class MicroKernels:
    """Emits the kernels' definitions into the library module."""

    def __init__(self, module: ir.Module, x86: bool = True):
        self.module, self.x86 = module, x86

    # ------------------------------------------------------------------ two threads

    def _job_dots(self, name, dtype):
        """A worker's call: BLOCK holds a count (1 or 2), then the ten arguments of
        `dots` for each product."""
        k_ = _Body(self.module, name, SIGNATURES["job_dots"], dtype)
        b = k_.b
        dots = declare(self.module, "dots", dtype)

        def word(i):
            return b.load(b.gep(k_.arg["BLOCK"], [k_.c(i)], source_etype=I64), typ=I64)
        count = word(0)
        for j in range(2):
            with b.if_then(b.icmp_signed(">", count, k_.c(j))):
                b.call(dots, [b.inttoptr(word(1 + 10 * j + i), PTR) if n[0].isupper()
                              else word(1 + 10 * j + i)
                              for i, n in enumerate(SIGNATURES["dots"])])
        return k_.done()

    def _par_dots(self, name, dtype):
        self._par(name, dtype, "par_dots", 1)

    def _par_dots2(self, name, dtype):
        self._par(name, dtype, "par_dots2", 2)

    def _par(self, name, dtype, kind, count):
        """`count` dots products, each product's columns split at a multiple of 8 (one
        under 16 columns stays whole here), the second parts posted as one job."""
        from .spin import emit_idle, emit_join, store_release
        k_ = _Body(self.module, name, SIGNATURES[kind], dtype)
        b, a, fn = k_.b, k_.arg, k_.fn
        dots = declare(self.module, "dots", dtype)
        job = declare(self.module, "job_dots", dtype)
        names = SIGNATURES["dots"]
        products = [{n: a[n + ("" if j == 0 else f"_{j + 1}")] for n in names}
                    for j in range(count)]
        mb = a["MB"]

        def word(i):
            return b.gep(mb, [k_.c(i)], source_etype=I64)

        def run(parts):
            for p in parts:
                b.call(dots, [p[n] for n in names])
        with k_.slots_block():
            block = b.alloca(I64, size=1 + 10 * count, name="block")
        work = k_.c(0)
        for p in products:
            work = b.add(work, b.mul(p["n"], p["k"]))
        big = b.and_(b.icmp_unsigned("!=", b.ptrtoint(mb, I64), k_.c(0)),
                     b.icmp_signed(">=", work, k_.c(split_min(dtype))))
        split_bb, check_bb, whole_bb, exit_bb = (fn.append_basic_block(n) for n in (
            "split", "check", "whole", "exit"))
        b.cbranch(big, check_bb, whole_bb)
        b.position_at_end(whole_bb)
        run(products)
        b.branch(exit_bb)
        b.position_at_end(check_bb)
        idle, posted0 = emit_idle(b, word)
        b.cbranch(idle, split_bb, whole_bb)
        b.position_at_end(split_bb)
        firsts, seconds = [], []
        for p in products:
            half = b.and_(b.sdiv(p["n"], k_.c(2)), k_.c(-8))     # whole groups of 8
            n1 = b.select(b.icmp_signed(">=", p["n"], k_.c(16)), half, p["n"])
            firsts.append(dict(p, n=n1))
            seconds.append(dict(p, n=b.sub(p["n"], n1), B=k_.at(p["B"], b.mul(n1, p["sb1"])),
                                C=k_.at(p["C"], b.mul(n1, p["sc1"]))))
        b.store(k_.c(count), b.gep(block, [k_.c(0)], source_etype=I64))
        for j, p in enumerate(seconds):
            for i, n in enumerate(names):
                b.store(b.ptrtoint(p[n], I64) if n[0].isupper() else p[n],
                        b.gep(block, [k_.c(1 + 10 * j + i)], source_etype=I64))
        b.store(b.ptrtoint(job, I64), word(3))
        b.store(b.ptrtoint(block, I64), word(4))
        posted = b.add(posted0, k_.c(1))
        store_release(b, posted, word(0))
        run(firsts)
        # wait for the worker's part; take it back if no worker has claimed it
        emit_join(self.module, b, word, posted0, RETRACT_POLLS, self.x86,
                  lambda: run(seconds), exit_bb)
        b.position_at_end(exit_bb)
        return k_.done()

    # ------------------------------------------------------------------ rows

    def _rows(self, name, dtype):
        """C = A·B, one row of A at a time, each block of 8 vectors of C's row in
        registers while k runs down B's rows. A product whose B has ROWS_STREAM_BYTES or
        more (out of the caches) calls `rows_stream` instead (chosen in `codegen`)."""
        k_ = _Body(self.module, name, SIGNATURES["rows"], dtype)
        b, L, a = k_.b, k_.width, k_.arg
        most = vecmath.vector_registers() // 2
        accs = [k_.slots(most, k_.vty, f"acc{sp}_") for sp in range(4)]
        tail = k_.slots(1, k_.ty, "tail")[0]

        def block(a_row, c_row, j0, count):
            """C[i, j0 : j0 + count·L] for one row."""
            splits = max(1, min(4, 8 // count))
            for sp in range(splits):
                for v in range(count):
                    b.store(k_.zero_v, accs[sp][v])

            def update(kk, sp):
                x = k_.splat(k_.scalar(a_row, b.mul(kk, a["sa1"])))
                brow = b.add(b.mul(kk, a["sb0"]), j0)
                for v in range(count):
                    k_.mul_add(accs[sp][v], x, k_.vector(a["B"], b.add(brow, k_.c(v * L))))

            def step(k2):
                for sp in range(splits):
                    update(b.add(b.mul(k2, k_.c(splits)), k_.c(sp)), sp)
            k_.loop(b.sdiv(a["k"], k_.c(splits)), step, "k")
            done = b.mul(b.sdiv(a["k"], k_.c(splits)), k_.c(splits))
            k_.loop(b.sub(a["k"], done), lambda r: update(b.add(done, r), 0), "kr")
            for v in range(count):
                total = b.load(accs[0][v], typ=k_.vty)
                for sp in range(1, splits):
                    total = b.fadd(total, b.load(accs[sp][v], typ=k_.vty))
                b.store(total, k_.at(c_row, b.add(j0, k_.c(v * L))), align=k_.align)

        def row(i):
            a_row = k_.at(a["A"], b.mul(i, a["sa0"]))
            c_row = k_.at(a["C"], b.mul(i, a["sc0"]))
            wide = most * L
            full = b.sdiv(a["n"], k_.c(wide))
            k_.loop(full, lambda jb: block(a_row, c_row, b.mul(jb, k_.c(wide)), most), "jb")
            j0 = b.mul(full, k_.c(wide))
            rest = b.sdiv(b.sub(a["n"], j0), k_.c(L))
            for count in k_.powers_below(most):
                with b.if_then(b.icmp_signed("!=", b.and_(rest, k_.c(count)), k_.c(0))):
                    block(a_row, c_row, j0, count)
                j0 = b.add(j0, b.mul(b.and_(rest, k_.c(count)), k_.c(L)))

            def column(jj):
                j = b.add(j0, jj)
                b.store(k_.zero, tail)

                def step(kk):
                    prod = b.fmul(k_.scalar(a_row, b.mul(kk, a["sa1"])),
                                  k_.scalar(a["B"], b.add(b.mul(kk, a["sb0"]), j)))
                    b.store(b.fadd(b.load(tail, typ=k_.ty), prod), tail)
                k_.loop(a["k"], step, "ks")
                b.store(b.load(tail, typ=k_.ty), k_.at(c_row, j))
            k_.loop(b.sub(a["n"], j0), column, "js")
        k_.loop(a["m"], row, "m")
        return k_.done()

    def _rows_stream(self, name, dtype):
        """`rows` for a B too large for the caches: up to 3 rows of A per pass, so B
        is read once for them; B's rows are streamed two at a time, each over a block
        of STREAM_BLOCK_BYTES of C's columns (long contiguous runs that the prefetcher
        follows; the register-blocked order above reads 8 vectors of every row of B in
        turn and missed the cache on each). C's block stays in L2 between the k steps.
        Measured on one thread, B 32 MB: 16 GB/s for one row, 14 for two (4 KB blocks:
        13 and 11; the register-blocked order: ~3.5). A product calls it instead of
        `rows` when its B has ROWS_STREAM_BYTES or more (`codegen`), so the kernels
        without such a product never need it built."""
        k_ = _Body(self.module, name, SIGNATURES["rows_stream"], dtype)
        b, L, a = k_.b, k_.width, k_.arg
        cols = STREAM_BLOCK_BYTES // k_.itemsize
        zero_i = k_.c(0)

        def group(i0, mr):
            a_rows = [k_.at(a["A"], b.mul(b.add(i0, k_.c(r)), a["sa0"])) for r in range(mr)]
            c_rows = [k_.at(a["C"], b.mul(b.add(i0, k_.c(r)), a["sc0"])) for r in range(mr)]

            def block(jb):
                j0 = b.mul(jb, k_.c(cols))
                rest = b.sub(a["n"], j0)
                width = b.select(b.icmp_signed("<", rest, k_.c(cols)), rest, k_.c(cols))
                vecs = b.sdiv(width, k_.c(L))
                tail0 = b.add(j0, b.mul(vecs, k_.c(L)))
                tail = b.sub(b.add(j0, width), tail0)
                for r in range(mr):
                    k_.loop(vecs, lambda v, r=r: b.store(
                        k_.zero_v, k_.at(c_rows[r], b.add(j0, b.mul(v, k_.c(L)))),
                        align=k_.align), "zv")
                    k_.loop(tail, lambda t, r=r: b.store(
                        k_.zero, k_.at(c_rows[r], b.add(tail0, t))), "zt")

                def update(k0, ks):
                    """C[:, block] += A[:, k0 : k0 + ks] · B[k0 : k0 + ks, block]."""
                    xs = [[k_.scalar(a_rows[r], b.mul(b.add(k0, k_.c(u)), a["sa1"]))
                           for u in range(ks)] for r in range(mr)]
                    xv = [[k_.splat(x) for x in row] for row in xs]
                    w_rows = [k_.at(a["B"], b.add(b.mul(b.add(k0, k_.c(u)), a["sb0"]), j0))
                              for u in range(ks)]

                    def vec(v):
                        off = b.mul(v, k_.c(L))
                        w = [k_.vector(w_rows[u], off) for u in range(ks)]
                        for r in range(mr):
                            p = k_.at(c_rows[r], b.add(j0, off))
                            c = b.load(p, typ=k_.vty, align=k_.align)
                            for u in range(ks):
                                c = b.call(k_.fma, [xv[r][u], w[u], c])
                            b.store(c, p, align=k_.align)
                    k_.loop(vecs, vec, "sv")

                    def scalar(t):
                        j = b.sub(b.add(tail0, t), j0)
                        w = [k_.scalar(w_rows[u], j) for u in range(ks)]
                        for r in range(mr):
                            p = k_.at(c_rows[r], b.add(tail0, t))
                            c = b.load(p, typ=k_.ty)
                            for u in range(ks):
                                c = b.fadd(c, b.fmul(xs[r][u], w[u]))
                            b.store(c, p)
                    k_.loop(tail, scalar, "st")
                pairs = b.sdiv(a["k"], k_.c(2))
                k_.loop(pairs, lambda kp: update(b.mul(kp, k_.c(2)), 2), "kp")
                with b.if_then(b.icmp_signed("!=", b.srem(a["k"], k_.c(2)), zero_i)):
                    update(b.sub(a["k"], k_.c(1)), 1)
            blocks = b.sdiv(b.add(a["n"], k_.c(cols - 1)), k_.c(cols))
            k_.loop(blocks, block, "jb")

        threes = b.sdiv(a["m"], k_.c(3))
        k_.loop(threes, lambda g: group(b.mul(g, k_.c(3)), 3), "g3")
        left = b.srem(a["m"], k_.c(3))
        done = b.mul(threes, k_.c(3))
        with b.if_then(b.icmp_signed("==", left, k_.c(2))):
            group(done, 2)
        with b.if_then(b.icmp_signed("==", left, k_.c(1))):
            group(done, 1)
        return k_.done()

    # ------------------------------------------------------------------ dots

    def _dots(self, name, dtype):
        k_ = _Body(self.module, name, SIGNATURES["dots"], dtype)
        b, L, a = k_.b, k_.width, k_.arg
        accs = k_.slots(8, k_.vty, "dacc")
        tails = k_.slots(8, k_.ty, "dtail")
        full = b.sdiv(a["k"], k_.c(L))
        done = b.mul(full, k_.c(L))

        def row(i):
            a_row = k_.at(a["A"], b.mul(i, a["sa0"]))
            c_row = k_.at(a["C"], b.mul(i, a["sc0"]))

            def group(j0, cols):
                cols_at = [k_.at(a["B"], b.mul(b.add(j0, k_.c(r)), a["sb1"]))
                           for r in range(cols)]
                for r in range(cols):
                    b.store(k_.zero_v, accs[r])
                    b.store(k_.zero, tails[r])

                def step(kv):
                    kk = b.mul(kv, k_.c(L))
                    x = k_.vector(a_row, kk)
                    for r in range(cols):
                        k_.mul_add(accs[r], x, k_.vector(cols_at[r], kk))
                k_.loop(full, step, "dk")

                def tail(kr):
                    kk = b.add(done, kr)
                    x = k_.scalar(a_row, kk)
                    for r in range(cols):
                        prod = b.fmul(x, k_.scalar(cols_at[r], kk))
                        b.store(b.fadd(b.load(tails[r], typ=k_.ty), prod), tails[r])
                k_.loop(b.sub(a["k"], done), tail, "dkr")
                for r in range(cols):
                    total = b.call(k_.reduce, [b.load(tails[r], typ=k_.ty),
                                               b.load(accs[r], typ=k_.vty)],
                                   fastmath=("reassoc",))
                    b.store(total, k_.at(c_row, b.mul(b.add(j0, k_.c(r)), a["sc1"])))
            groups = b.sdiv(a["n"], k_.c(8))
            k_.loop(groups, lambda jg: group(b.mul(jg, k_.c(8)), 8), "dj")
            j0 = b.mul(groups, k_.c(8))
            rest = b.sub(a["n"], j0)
            for cols in (4, 2, 1):
                with b.if_then(b.icmp_signed("!=", b.and_(rest, k_.c(cols)), k_.c(0))):
                    group(j0, cols)
                j0 = b.add(j0, b.and_(rest, k_.c(cols)))
        k_.loop(a["m"], row, "m")
        return k_.done()

    # ------------------------------------------------------------------ panels

    def _panels(self, name, dtype):
        k_ = _Body(self.module, name, SIGNATURES["panels"], dtype)
        b, L, a = k_.b, k_.width, k_.arg
        nr = 2 * L
        tall = panel_rows()
        accs = [k_.slots(2, k_.vty, f"pacc{r}_") for r in range(tall)]
        K = a["k"]

        def tile(rows, i0, j, k0, klen, first):
            """Rows i0 … i0 + rows − 1 of panel j, over steps k0 … k0 + klen − 1."""
            c_at = [k_.at(a["C"], b.add(b.mul(b.add(i0, k_.c(r)), a["sc0"]),
                                        b.mul(j, k_.c(nr)))) for r in range(rows)]
            a_at = [k_.at(a["A"], b.mul(b.add(i0, k_.c(r)), a["sa0"])) for r in range(rows)]
            for r in range(rows):
                for v in range(2):
                    old = k_.vector(c_at[r], k_.c(v * L))
                    b.store(b.select(first, k_.zero_v, old), accs[r][v])
            panel = k_.at(a["P"], b.mul(j, a["spj"]))

            def step(kk):
                k = b.add(k0, kk)
                base = b.mul(k, a["spk"])
                p = [k_.vector(panel, b.add(base, k_.c(v * L))) for v in range(2)]
                for r in range(rows):
                    x = k_.splat(k_.scalar(a_at[r], b.mul(k, a["sa1"])))
                    for v in range(2):
                        k_.mul_add(accs[r][v], x, p[v])
            k_.loop(klen, step, "pk")
            for r in range(rows):
                for v in range(2):
                    b.store(b.load(accs[r][v], typ=k_.vty), k_.at(c_at[r], k_.c(v * L)),
                            align=k_.align)

        M = a["m"]

        def chunk(cidx):
            k0 = b.mul(cidx, k_.c(PANEL_KC))
            left = b.sub(K, k0)
            klen = b.select(b.icmp_signed("<", left, k_.c(PANEL_KC)), left, k_.c(PANEL_KC))
            first = b.icmp_signed("==", cidx, k_.c(0))

            def panel(j):
                blocks = b.sdiv(M, k_.c(tall))
                k_.loop(blocks, lambda ib: tile(tall, b.mul(ib, k_.c(tall)), j, k0, klen,
                                                first), "pi")
                i0 = b.mul(blocks, k_.c(tall))
                rest = b.sub(M, i0)
                for rows in (4, 2, 1):
                    with b.if_then(b.icmp_signed("!=", b.and_(rest, k_.c(rows)), k_.c(0))):
                        tile(rows, i0, j, k0, klen, first)
                    i0 = b.add(i0, b.and_(rest, k_.c(rows)))
            k_.loop(a["np"], panel, "pj")
        chunks = b.sdiv(b.add(K, k_.c(PANEL_KC - 1)), k_.c(PANEL_KC))
        k_.loop(chunks, chunk, "pc")
        return k_.done()

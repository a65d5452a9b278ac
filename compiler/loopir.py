"""The loop IR: buffers, strided views, scalar expression trees and loop statements.

Lowering (`lower.py`) turns a graph into a `Program` of statements over buffers;
buffer planning (`plan.py`) places the buffers in one arena; code generation
(`codegen.py`) turns each statement into LLVM loops. Every shape, stride and offset
is an `Expr` of the symbolic dims (and loop variables), so one program serves every
binding of B and T.

Statements
  Map(out, tree)                 out[i] = tree(i) over out's index space (fused maps)
  Fused(shape, maps, temps)      maps over one index space in one loop nest (fuse.py)
  Reduce(out, tree, kind, shape) out[proj(i)] ⊕= tree(i) over `shape`; out pre-filled
  MatMul(out, a, b, batch)       out[b, m, n] = Σ_k a[b, m, k] · b[b, k, n]
  ScatterAdd(out, src, idx)      out[idx[i], r] += src[i, r]   (take's VJP)
  Check(shape, cond, code, value) if cond(i) anywhere: report (code, value) and stop
  Loop(var, count, reverse, body) for var in 0..count-1 (or reversed): body
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .expr import Expr, product, row_major

ITEMSIZE = {"float32": 4, "float64": 8, "int64": 8, "bool": 1}


# ----------------------------------------------------------------------------- buffers

# Bytes left free after each arena slot. LLVM's vectorized loops test at run time that
# the arrays they read and write are at least a few vectors apart (a conservative
# check: `dst - src >= VF·UF·size`); two small slots side by side would fail it and send
# every step of a B = 1 loop down the scalar path.
SLOT_GAP = 1024


@dataclass(eq=False)
class Buffer:
    """A block of memory: an input, an output, a constant, or a slot of the arena."""

    id: int
    dtype: str
    size: Expr                      # elements
    kind: str = "arena"             # "arena" | "input" | "output" | "const"
    index: int = -1                 # the input/output position, or the arena slot
    name: str = ""
    data: Any = None                # the array of a "const" buffer

    def __str__(self):
        return f"%{self.name or self.id}"


@dataclass(frozen=True, eq=False)
class Ref:
    """A strided view of a buffer: element i is at buf[offset + Σ i_k · strides_k]."""

    buf: Buffer
    offset: Expr
    shape: tuple
    strides: tuple

    @property
    def dtype(self):
        return self.buf.dtype

    @property
    def ndim(self):
        return len(self.shape)

    @staticmethod
    def full(buf: Buffer, shape) -> "Ref":
        shape = tuple(Expr.of(d) for d in shape)
        return Ref(buf, Expr.of(0), shape, row_major(shape))

    @property
    def view(self) -> tuple:
        """What identifies the view: two Refs with equal `view` read the same elements
        in the same order."""
        return (self.buf.id, self.offset, self.shape, self.strides)

    def is_contiguous(self) -> bool:
        return self.offset == Expr.of(0) and self.strides == row_major(self.shape) \
            and product(self.shape) == self.buf.size

    def __str__(self):
        if self.is_contiguous():
            return str(self.buf)
        return (f"{self.buf}[off={self.offset}; shape=({', '.join(map(str, self.shape))}); "
                f"strides=({', '.join(map(str, self.strides))})]")


def transposed(r: Ref) -> Ref:
    """The 2-D view `r` with its axes swapped (no copy)."""
    return Ref(r.buf, r.offset, r.shape[::-1], r.strides[::-1])


@dataclass(frozen=True)
class Lit:
    """A value that is one number everywhere (a scalar constant, `full`, a dim size)."""

    value: Any                      # a Python number, or an Expr computed from the dims
    dtype: str
    shape: tuple

    def __str__(self):
        return f"{self.value}:{self.dtype}"


# ----------------------------------------------------------------------------- scalar trees

@dataclass(frozen=True, eq=False)
class Load:
    ref: Ref

    @property
    def dtype(self):
        return self.ref.dtype

    def __str__(self):
        return f"{self.ref}[i]"


@dataclass(frozen=True, eq=False)
class Const:
    value: Any                      # number or Expr
    dtype: str

    def __str__(self):
        return f"{self.value}"


@dataclass(frozen=True, eq=False)
class Iota:
    """The index along `axis` of the iteration space (int64)."""

    axis: int
    dtype: str = "int64"

    def __str__(self):
        return f"i{self.axis}"


@dataclass(frozen=True, eq=False)
class Gather:
    """table[idx(i_lead), i_rest]: the row picked by the int tree `idx`."""

    table: Ref
    idx: Any
    n_lead: int

    @property
    def dtype(self):
        return self.table.dtype

    def __str__(self):
        return f"{self.table}[{self.idx}, ...]"


@dataclass(frozen=True, eq=False)
class Apply:
    """An elementwise op (named as in autograph's op table) on scalar trees."""

    op: str
    args: tuple
    dtype: str
    params: tuple = ()              # (key, value) pairs, e.g. (("dtype", "float32"),)

    def __str__(self):
        extra = "".join(f", {k}={v}" for k, v in self.params)
        return f"{self.op}({', '.join(map(str, self.args))}{extra})"


def tree_refs(tree) -> list:
    """Every Ref a scalar tree reads."""
    out, stack = [], [tree]
    while stack:
        t = stack.pop()
        if isinstance(t, Load):
            out.append(t.ref)
        elif isinstance(t, Gather):
            out.append(t.table)
            stack.append(t.idx)
        elif isinstance(t, Apply):
            stack.extend(t.args)
    return out


def tree_nodes(tree):
    """Every node of a scalar tree."""
    stack = [tree]
    while stack:
        t = stack.pop()
        yield t
        if isinstance(t, Apply):
            stack.extend(t.args)
        elif isinstance(t, Gather):
            stack.append(t.idx)


def walk(body):
    """Every statement of `body`, loop bodies included (after their loop)."""
    for s in body:
        yield s
        if isinstance(s, Loop):
            yield from walk(s.body)


@dataclass(frozen=True)
class Lazy:
    """An elementwise value not yet stored: its tree is inlined into its one consumer."""

    tree: Any
    dtype: str
    shape: tuple


# ----------------------------------------------------------------------------- statements

@dataclass(eq=False)
class Map:
    out: Ref
    tree: Any

    def refs(self):
        return [self.out] + tree_refs(self.tree)


@dataclass(eq=False)
class Fused:
    """Maps over one index space in one loop nest: at each index i, member k runs
    after member k−1. `temps` are buffers held in registers only, never stored.
    A member may be a float sum (`Reduce`) over the same index space: it accumulates
    into its output, which no other member reads or writes (`fuse.py`)."""

    shape: tuple
    maps: list
    temps: frozenset = frozenset()

    def refs(self):
        return [r for m in self.maps for r in m.refs() if r.buf.id not in self.temps]


@dataclass(eq=False)
class Reduce:
    out: Ref                        # viewed over `shape`, stride 0 on reduced axes
    tree: Any
    kind: str                       # "sum" | "max"
    shape: tuple

    def refs(self):
        return [self.out] + tree_refs(self.tree)


@dataclass(eq=False)
class MatMul:
    out: Ref                        # [*batch, M, N], contiguous
    a: Ref                          # [*batch, M, K] (broadcast batch: stride 0)
    b: Ref                          # [*batch, K, N]
    packed: Ref | None = None       # b in panels [N / NR, K, NR] (2-D products in loops)
    # transposing copies that only the register tiles need (`copies.fold`): `stage`
    # copies a transposed weight into b before the tiles run (a library call reads the
    # weight in place), `unstage` copies out, transposed, to where the result is
    # wanted (a library call writes it there directly, as Bᵀ·Aᵀ)
    stage: Map | None = None
    unstage: Map | None = None

    def refs(self):
        return [self.out, self.a, self.b] + ([self.packed] if self.packed else []) \
            + [r for m in (self.stage, self.unstage) if m is not None for r in m.refs()]


@dataclass(eq=False)
class ScatterAdd:
    out: Ref                        # [rows, *rest], pre-filled with zeros
    src: Ref                        # [*lead, *rest]
    idx: Ref                        # [*lead] int64, checked in range

    def refs(self):
        return [self.out, self.src, self.idx]


@dataclass(eq=False)
class Check:
    shape: tuple
    cond: Any                       # bool tree: true where the input is bad
    code: int
    value: Any                      # int tree reported with the code

    def refs(self):
        return tree_refs(self.cond) + tree_refs(self.value)


@dataclass(eq=False)
class Loop:
    var: str
    count: Expr
    reverse: bool
    body: list = field(default_factory=list)

    def refs(self):
        return [r for s in self.body for r in s.refs()]


# ----------------------------------------------------------------------------- program

@dataclass
class Program:
    """A lowered graph: its buffers, statements and the facts its caller checks."""

    inputs: list                    # Buffer per graph input
    outputs: list                   # Buffer per graph output
    out_shapes: list                # shape (tuple of Expr) per output
    buffers: list                   # every Buffer
    body: list                      # statements
    dims: list                      # symbolic dim names, in the order of the dims array
    constraints: list = field(default_factory=list)   # (kind, ...) checked before a call
    errors: dict = field(default_factory=dict)        # status code -> message template
    slots: list = field(default_factory=list)         # arena slots: (size Expr, itemsize)

    def arena_layout(self, env) -> tuple[int, list]:
        """Byte offsets of the arena slots for a dim binding, and the arena's size."""
        offsets, total = [], 0
        for size, itemsize in self.slots:
            offsets.append(total)
            total += (size.evaluate(env) * itemsize + 63) // 64 * 64 + SLOT_GAP
        return total, offsets


def format_program(prog: Program) -> str:
    """The loop IR as text."""
    lines = [f"program(dims=[{', '.join(prog.dims)}])"]
    for b in prog.inputs:
        lines.append(f"  input  {b} : {b.dtype}[{b.size}]")
    for b, s in zip(prog.outputs, prog.out_shapes):
        lines.append(f"  output {b} : {b.dtype}[{', '.join(map(str, s))}]")
    for b in prog.buffers:
        if b.kind == "arena":
            lines.append(f"  arena  {b} : {b.dtype}[{b.size}] slot {b.index}")
        elif b.kind == "const":
            lines.append(f"  const  {b} : {b.dtype}[{b.size}]")
    for c in prog.constraints:
        lines.append(f"  check  {c}")
    lines.extend(_format_body(prog.body, 1))
    return "\n".join(lines)


def _shape(s):
    return "(" + ", ".join(map(str, s)) + ")"


def _format_body(body, depth):
    pad = "  " * depth
    out = []
    for s in body:
        if isinstance(s, Map):
            out.append(f"{pad}map {_shape(s.out.shape)}: {s.out} = {s.tree}")
        elif isinstance(s, Fused):
            out.append(f"{pad}fused {_shape(s.shape)}:")
            for m in s.maps:
                if isinstance(m, Reduce):
                    out.append(f"{pad}  sum {m.out} ⊕= {m.tree}")
                    continue
                kind = "reg" if m.out.buf.id in s.temps else "map"
                out.append(f"{pad}  {kind} {m.out} = {m.tree}")
        elif isinstance(s, Reduce):
            out.append(f"{pad}reduce_{s.kind} {_shape(s.shape)}: {s.out} ⊕= {s.tree}")
        elif isinstance(s, MatMul):
            panels = f" (panels {s.packed})" if s.packed else ""
            if s.stage is not None:
                panels += f" (b staged from {s.stage.tree} for the tiles)"
            if s.unstage is not None:
                panels += f" (then {s.unstage.out} = {s.unstage.tree})"
            out.append(f"{pad}matmul {_shape(s.out.shape)}: {s.out} = {s.a} @ {s.b}{panels}")
        elif isinstance(s, ScatterAdd):
            out.append(f"{pad}scatter_add: {s.out}[{s.idx}] += {s.src}")
        elif isinstance(s, Check):
            out.append(f"{pad}check {_shape(s.shape)}: fail {s.code} if {s.cond}")
        elif isinstance(s, Loop):
            order = "reversed " if s.reverse else ""
            out.append(f"{pad}for {s.var} in {order}range({s.count}):")
            out.extend(_format_body(s.body, depth + 1))
    return out


def fingerprint(prog: Program) -> str:
    """A digest of everything in `prog` that code generation reads: every buffer
    (constants by their bytes), every statement and scalar tree with all their fields,
    the dims and the arena slots. Two programs with the same fingerprint compile to
    the same code, so the kernel cache is keyed on it without generating LLVM IR."""
    h = hashlib.sha256()

    def put(x):
        if isinstance(x, Buffer):
            h.update(f"Buffer({x.id},{x.dtype},{x.size},{x.kind},{x.index},{x.name!r})".encode())
            if x.data is not None:
                data = np.ascontiguousarray(x.data)
                h.update(f"{data.dtype}{data.shape}".encode())
                h.update(data.tobytes())
        elif isinstance(x, Ref):
            h.update(f"Ref({x.buf.id},{x.offset},".encode())
            put(x.shape)
            put(x.strides)
            h.update(b")")
        elif dataclasses.is_dataclass(x):
            h.update(type(x).__name__.encode() + b"(")
            for f in dataclasses.fields(x):
                put(getattr(x, f.name))
                h.update(b",")
            h.update(b")")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                put(v)
                h.update(b",")
            h.update(b"]")
        elif isinstance(x, (set, frozenset)):
            put(sorted(x, key=repr))
        elif isinstance(x, dict):
            put(sorted(x.items(), key=repr))
        else:       # Expr, numbers, strings, None
            h.update(f"{type(x).__name__}:{x!r}".encode())
    put(prog)
    return h.hexdigest()

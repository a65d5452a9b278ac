"""Graphs as exact sympy expressions: `to_sympy`, `verify_grad`, `check_derivation`,
and the textbook's BPTT expansion of ∂s_T/∂W as LaTeX (`elman_derivation`).

`SYMPY` maps every op to its rule. A rule takes the node, its inputs' values and the
evaluation context, and returns the node's value as a NumPy *object* array of sympy
expressions (0-d for scalars), so that NumPy does the shape work (broadcasting,
reshapes, slices, matmul over ``+`` and ``*``) and sympy does the algebra.

Conventions:
- A placeholder becomes symbols named after it: ``W`` for a scalar, ``W_0_1`` for
  the element [0, 1] of an array (0-based), all real. `symbols=` overrides this.
- Symbolic dims (``"T"``, ``"B"``) are bound by `dims=`; shapes must end up concrete.
- Comparisons are sympy relations and `where` is a ``Piecewise``; `relu`, `maximum`
  and `minimum` are ``Piecewise`` too, with the engine's tie rule (ties go to the
  first operand).
- `take` and `one_hot` need concrete int indices: pass them with `values=`.
- `stop_gradient(v)` is v itself, except where a derivative is taken (`verify_grad`,
  `check_derivation`): there it is a fresh symbol ``sg0, sg1, …`` held constant, as
  the engine holds it, and substituted back to evaluate numbers.
- Derivatives are taken almost everywhere: the DiracDelta of a piecewise-constant
  op's derivative (`sign`) is dropped, as the engine's zero gradient drops it.

sympy is imported lazily: `import autograph` never imports it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import GraphError, InputError
from .graph import FLOAT_DTYPES, Graph, Node, toposort

SYMPY: dict[str, Callable] = {}


def _sp():
    import sympy
    return sympy


def rule(*names):
    def deco(f):
        for n in names:
            SYMPY[n] = f
        return f
    return deco


# ----------------------------------------------------------------------------- arrays

def obj(x) -> np.ndarray:
    """`x` (a sympy expression, a number or a nested list) as an object array."""
    if isinstance(x, np.ndarray) and x.dtype == object:
        return x
    sp = _sp()
    if isinstance(x, np.ndarray):
        out = np.empty(x.shape, dtype=object)
        for i in np.ndindex(x.shape):
            out[i] = _number(x[i])
        return out
    if isinstance(x, (sp.NDimArray, sp.MatrixBase)):
        return obj(np.array(x.tolist(), dtype=object))
    if isinstance(x, (list, tuple)):
        a = np.array(x, dtype=object)
        for i in np.ndindex(a.shape):
            a[i] = sp.sympify(a[i])
        return a
    out = np.empty((), dtype=object)
    out[()] = sp.sympify(x)
    return out


def _number(v):
    """A NumPy scalar as an exact sympy number (floats by their exact binary value)."""
    sp = _sp()
    if isinstance(v, (bool, np.bool_)):
        return sp.true if v else sp.false
    if isinstance(v, (int, np.integer)):
        return sp.Integer(int(v))
    v = float(v)
    if not math.isfinite(v):
        return sp.nan if math.isnan(v) else (sp.oo if v > 0 else -sp.oo)
    return sp.Rational(v)


def _map(f, *arrays) -> np.ndarray:
    """`f` applied elementwise, with NumPy broadcasting, to object arrays."""
    arrays = np.broadcast_arrays(*[obj(a) for a in arrays])
    out = np.empty(arrays[0].shape, dtype=object)
    for i in np.ndindex(out.shape):
        out[i] = f(*(a[i] for a in arrays))
    return out


def _reduce(f, x: np.ndarray, axes, keepdims) -> np.ndarray:
    """`f(list of elements)` over `axes` of `x`."""
    axes = tuple(axes)
    keep = [i for i in range(x.ndim) if i not in axes]
    moved = np.transpose(x, keep + list(axes))
    lead = moved.shape[:len(keep)]
    flat = moved.reshape(lead + (-1,))
    out = np.empty(lead, dtype=object)
    for i in np.ndindex(lead):
        out[i] = f(list(flat[i]))
    if keepdims:
        out = out.reshape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return out


def to_public(a: np.ndarray):
    """An object array as what users get: a sympy expression, or a sympy Array."""
    sp = _sp()
    if a.ndim == 0:
        return a[()]
    return sp.ImmutableDenseNDimArray(a.tolist(), a.shape)


# ----------------------------------------------------------------------------- sigmoid

_SIGMOID = None


def sigmoid_function():
    """The sympy function σ(x) = 1/(1 + e^(−x)), with σ' = σ(1 − σ)."""
    global _SIGMOID
    if _SIGMOID is None:
        sp = _sp()

        class sigmoid(sp.Function):  # noqa: N801 - sympy's naming of functions
            """Logistic function; kept whole so that σ' = σ(1 − σ) is an identity in atoms."""

            @classmethod
            def eval(cls, x):
                if x.is_Number:
                    return 1 / (1 + sp.exp(-x))

            def fdiff(self, argindex=1):
                s = sigmoid(self.args[0])
                return s * (1 - s)

            def _eval_rewrite_as_exp(self, x, **kwargs):
                return 1 / (1 + sp.exp(-x))

            def _eval_is_real(self):
                return self.args[0].is_real

            def _latex(self, printer, exp=None):
                tex = r"\sigma\left(%s\right)" % printer._print(self.args[0])
                return tex if exp is None else r"%s^{%s}" % (tex, exp)

        _SIGMOID = sigmoid
    return _SIGMOID


# ----------------------------------------------------------------------------- context

class Context:
    """One evaluation: symbols of placeholders, given values, dim binding, memo."""

    def __init__(self, dims=None, values=None, symbols=None, hold_stop_gradient=False):
        self.dims = dict(dims or {})
        self.values = {_key(k): v for k, v in (values or {}).items()}
        self.symbols = {_key(k): v for k, v in (symbols or {}).items()}
        self.hold = hold_stop_gradient
        self.held: dict = {}          # symbol -> the expression it stands for
        self._held_by_expr: dict = {}
        self.env: dict[int, object] = {}
        self.by_name: dict[str, object] = {}   # every symbol made, by name

    def shape(self, shape) -> tuple:
        out = []
        for d in shape:
            if isinstance(d, str):
                if d not in self.dims:
                    raise InputError(f"to_sympy: symbolic dim {d!r} is not bound; "
                                     f"pass dims={{{d!r}: ...}}")
                d = self.dims[d]
            out.append(d)
        return tuple(out)

    def placeholder(self, n: Node) -> np.ndarray:
        sp = _sp()
        shape = self.shape(n.shape)
        for key in (n, n.name):
            key = _key(key)
            if key in self.values:
                v = np.asarray(self.values[key], dtype=n.dtype)
                if v.shape != shape:
                    raise InputError(f"to_sympy: the value for {n.name!r} has shape "
                                     f"{list(v.shape)}, the placeholder needs {list(shape)}")
                return obj(v)
            if key in self.symbols:
                a = obj(self.symbols[key])
                if a.shape != shape:
                    raise InputError(f"to_sympy: the symbols for {n.name!r} have shape "
                                     f"{list(a.shape)}, the placeholder needs {list(shape)}")
                for s in a.flat:
                    for f in s.free_symbols:
                        self.by_name.setdefault(f.name, f)
                return a
        if n.dtype in ("int64", "bool") and shape != ():
            pass  # int and bool arrays become symbols too; ops that need numbers say so
        assumptions = {"real": True} if n.dtype in FLOAT_DTYPES else \
            ({"integer": True} if n.dtype == "int64" else {})
        out = np.empty(shape, dtype=object)
        for i in np.ndindex(shape):
            name = "_".join([n.name] + [str(k) for k in i])
            s = sp.Symbol(name, **assumptions)
            self.by_name[name] = s
            out[i] = s
        return out

    def held_symbol(self, expr):
        """One symbol per distinct held expression (a recomputed max reuses it)."""
        sp = _sp()
        if expr.is_Number:
            return expr
        s = self._held_by_expr.get(expr)
        if s is None:
            s = sp.Symbol(f"sg{len(self.held)}", real=True)
            self.held[s] = expr
            self._held_by_expr[expr] = s
        return s

    def unhold(self, expr):
        """`expr` with every held symbol replaced by what it stands for."""
        if not self.held:
            return expr
        for _ in range(len(self.held) + 1):
            if not (getattr(expr, "free_symbols", set()) & self.held.keys()):
                return expr
            expr = expr.xreplace(self.held)
        return expr

    def evaluate(self, outputs) -> list[np.ndarray]:
        for n in toposort(outputs):
            if id(n) in self.env:
                continue
            if n.op == "placeholder":
                self.env[id(n)] = self.placeholder(n)
                continue
            args = [self.env[id(i)] for i in n.inputs]
            try:
                self.env[id(n)] = SYMPY[n.op](n, args, self)
            except KeyError as e:
                if n.op not in SYMPY:
                    raise GraphError(f"to_sympy: op {n.op!r} has no sympy rule") from None
                raise e
        return [self.env[id(y)] for y in outputs]


def _key(k):
    return k.name if isinstance(k, Node) else k


# ----------------------------------------------------------------------------- rules

@rule("placeholder")
def _placeholder(node, args, ctx):
    return ctx.placeholder(node)


@rule("constant")
def _constant(node, args, ctx):
    return obj(np.asarray(node.params["value"]))


@rule("full")
def _full(node, args, ctx):
    v = _number(np.asarray(node.params["value"], dtype=node.params["dtype"])[()])
    out = np.empty(ctx.shape(node.params["shape"]), dtype=object)
    out.fill(v)
    return out


@rule("shape_size")
def _shape_size(node, args, ctx):
    return obj(math.prod(ctx.shape(node.params["dims"])))


def _unary(name, f):
    SYMPY[name] = lambda node, args, ctx: _map(f, args[0])


def _relu(x):
    sp = _sp()
    return sp.Piecewise((x, x > 0), (0, True))


_unary("exp", lambda x: _sp().exp(x))
_unary("log", lambda x: _sp().log(x))
_unary("tanh", lambda x: _sp().tanh(x))
_unary("sigmoid", lambda x: sigmoid_function()(x))
_unary("sqrt", lambda x: _sp().sqrt(x))
_unary("neg", lambda x: -x)
_unary("abs", lambda x: _sp().Abs(x))
_unary("sign", lambda x: _sp().sign(x))
_unary("relu", _relu)


def _binary(name, f):
    SYMPY[name] = lambda node, args, ctx: _map(f, args[0], args[1])


def _div_values(node):
    def div(a, b):
        if node.dtype == "int64":
            return _sp().floor(a / b)
        return a / b
    return div


SYMPY["div"] = lambda node, args, ctx: _map(_div_values(node), args[0], args[1])
_binary("add", lambda a, b: a + b)
_binary("sub", lambda a, b: a - b)
_binary("mul", lambda a, b: a * b)
_binary("pow", lambda a, b: a ** b)
_binary("maximum", lambda a, b: _sp().Piecewise((a, a >= b), (b, True)))
_binary("minimum", lambda a, b: _sp().Piecewise((a, a <= b), (b, True)))
_binary("greater", lambda a, b: _sp().Gt(a, b))
_binary("greater_equal", lambda a, b: _sp().Ge(a, b))
_binary("less", lambda a, b: _sp().Lt(a, b))
_binary("less_equal", lambda a, b: _sp().Le(a, b))
_binary("equal", lambda a, b: _sp().Eq(a, b))
_binary("not_equal", lambda a, b: _sp().Ne(a, b))
_binary("logical_and", lambda a, b: _sp().And(a, b))
_binary("logical_or", lambda a, b: _sp().Or(a, b))
_unary("logical_not", lambda a: _sp().Not(a))


@rule("where")
def _where(node, args, ctx):
    sp = _sp()
    return _map(lambda c, a, b: sp.Piecewise((a, c), (b, True)), *args)


@rule("cast")
def _cast(node, args, ctx):
    sp = _sp()
    src, dst = node.inputs[0].dtype, node.params["dtype"]

    def cast(x):
        if src == "bool" and dst != "bool":
            return sp.Piecewise((1, x), (0, True))
        if dst == "bool" and src != "bool":
            return sp.Ne(x, 0)
        if dst == "int64" and src in FLOAT_DTYPES:  # NumPy truncates toward zero
            return sp.sign(x) * sp.floor(sp.Abs(x))
        return x
    return _map(cast, args[0])


@rule("stop_gradient")
def _stop_gradient(node, args, ctx):
    if not ctx.hold:
        return args[0]
    return _map(ctx.held_symbol, args[0])


@rule("matmul")
def _matmul(node, args, ctx):
    return obj(np.matmul(args[0], args[1]))


@rule("sum")
def _sum(node, args, ctx):
    sp = _sp()
    return _reduce(lambda xs: sp.Add(*xs), args[0], node.params["axes"], node.params["keepdims"])


@rule("max")
def _max(node, args, ctx):
    sp = _sp()
    return _reduce(lambda xs: sp.Max(*xs), args[0], node.params["axes"], node.params["keepdims"])


@rule("broadcast_to")
def _broadcast_to(node, args, ctx):
    return np.array(np.broadcast_to(args[0], ctx.shape(node.params["shape"])), dtype=object)


@rule("reshape")
def _reshape(node, args, ctx):
    return args[0].reshape(ctx.shape(node.params["shape"]))


@rule("transpose")
def _transpose(node, args, ctx):
    return np.transpose(args[0], node.params["perm"])


@rule("slice")
def _slice(node, args, ctx):
    return obj(np.array(args[0][node.params["index"]], dtype=object))


@rule("unslice")
def _unslice(node, args, ctx):
    sp = _sp()
    out = np.empty(ctx.shape(node.params["in_shape"]), dtype=object)
    out.fill(sp.Integer(0))
    out[node.params["index"]] = args[0]
    return out


@rule("concat")
def _concat(node, args, ctx):
    return np.concatenate(args, axis=node.params["axis"])


@rule("bind_dims")
def _bind_dims(node, args, ctx):
    return args[0]


def _ints(op, a: np.ndarray) -> np.ndarray:
    """Concrete int indices from an object array, or an error that says what to pass."""
    out = np.empty(a.shape, dtype=np.int64)
    for i in np.ndindex(a.shape):
        v = a[i]
        if not getattr(v, "is_Integer", False):
            raise InputError(f"to_sympy: {op} needs concrete int indices, got {v}; pass the "
                             "index array with values={name: array}")
        out[i] = int(v)
    return out


@rule("take")
def _take(node, args, ctx):
    table, idx = args
    return obj(np.array(table[_ints("take", idx)], dtype=object))


@rule("take_grad")
def _take_grad(node, args, ctx):
    sp = _sp()
    ct, idx = args
    idx = _ints("take_grad", idx)
    rows = ctx.shape((node.params["rows"],))[0]
    out = np.empty((rows,) + ct.shape[idx.ndim:], dtype=object)
    out.fill(sp.Integer(0))
    for i in np.ndindex(idx.shape):
        out[idx[i]] = out[idx[i]] + ct[i]
    return out


@rule("one_hot")
def _one_hot(node, args, ctx):
    sp = _sp()
    idx = _ints("one_hot", args[0])
    depth = node.params["depth"]
    out = np.empty(idx.shape + (depth,), dtype=object)
    for i in np.ndindex(idx.shape):
        for k in range(depth):
            out[i + (k,)] = sp.Integer(int(idx[i] == k))
    return out


@rule("item")
def _item(node, args, ctx):
    return args[0][node.params["index"]]


@rule("scan")
def _scan(node, args, ctx):
    """Iterate the body: the unrolled expressions, step by step."""
    p = node.params
    body: Graph = p["body"]
    n_carry, n_xs = p["n_carry"], p["n_xs"]
    carry = list(args[:n_carry])
    xs = args[n_carry:n_carry + n_xs]
    consts = list(args[n_carry + n_xs:])
    T = ctx.shape((p["length"],))[0]
    n_ys = len(body.outputs) - n_carry
    ys = [[None] * T for _ in range(n_ys)]
    hist = [[None] * T for _ in range(n_carry)]
    for t in (range(T - 1, -1, -1) if p["reverse"] else range(T)):
        for h, c in zip(hist, carry):
            h[t] = c
        inner = Context.__new__(Context)
        inner.__dict__.update(ctx.__dict__)
        inner.env = {id(b): v for b, v in zip(body.inputs, carry + [x[t] for x in xs] + consts)}
        res = inner.evaluate(list(body.outputs))
        carry = res[:n_carry]
        for j in range(n_ys):
            ys[j][t] = res[n_carry + j]

    def stacked(vals, like):
        if T == 0:
            return np.empty((0,) + like.shape, dtype=object)
        return np.stack([obj(v) for v in vals])
    out_ys = [stacked(v, body.outputs[n_carry + j]) for j, v in enumerate(ys)]
    out_hist = [stacked(v, body.inputs[j]) for j, v in enumerate(hist)]
    return tuple(carry) + tuple(out_ys) + tuple(out_hist)


# ----------------------------------------------------------------------------- to_sympy

def to_sympy(values, *, dims=None, values_of=None, symbols=None):
    """Exact sympy expressions for graph values.

    `values` is a node, a list of nodes or a `Graph` (then its outputs). A scalar
    becomes a sympy expression, an array a sympy ``Array``. Placeholders become
    real symbols named after them (``W``; ``W_0_1`` for element [0, 1]); `symbols`
    maps a placeholder (or its name) to the sympy symbols to use instead, and
    `values_of` maps one to a concrete array (needed for the int indices of `take`
    and `one_hot`). `dims` binds symbolic dims, e.g. ``{"T": 4}``.
    """
    single = isinstance(values, Node)
    outs = list(values.outputs) if isinstance(values, Graph) else ([values] if single else
                                                                   list(values))
    ctx = Context(dims, values_of, symbols)
    res = [to_public(a) for a in ctx.evaluate(outs)]
    return res[0] if single else res


def symbols_of(values, *, dims=None, symbols=None):
    """The sympy symbols `to_sympy` gives each placeholder the values depend on, by name."""
    vals = [values] if isinstance(values, Node) else list(values)
    ctx = Context(dims, None, symbols)
    return {n.name: to_public(ctx.placeholder(n)) for n in toposort(vals)
            if n.op == "placeholder"}


# ----------------------------------------------------------------------------- zero tests

def _drop_deltas(e):
    sp = _sp()
    if e.has(sp.DiracDelta):
        e = e.replace(sp.DiracDelta, lambda *a: sp.Integer(0))
    return e


def _small(e) -> bool:
    """Whether `simplify` may be tried: it is slow on big expressions and on Max/Min."""
    sp = _sp()
    return not e.has(sp.Max, sp.Min) and sp.count_ops(e) <= 200


def atomize(e, memo: dict | None = None, atoms: dict | None = None):
    """`e` with every function application (tanh(z), σ(z), exp(z), …) replaced by a
    symbol, innermost first; equal arguments (after `expand`) give the same symbol.

    Reverse mode and sympy's `diff` both write a derivative through the same
    applications (tanh' = 1 − tanh², σ' = σ(1 − σ)), so their difference is a
    rational function of these symbols. If it vanishes with the symbols taken as
    independent, it vanishes for their true values: a proof, and one whose cost
    does not blow up with the nesting depth of an unrolled recurrence.
    """
    sp = _sp()
    memo = {} if memo is None else memo
    atoms = {} if atoms is None else atoms
    # Iterative post-order walk: unrolled expressions are deep.
    stack = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if node in memo:
            continue
        if node.is_Atom:
            memo[node] = node
            continue
        if not ready:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in memo)
            continue
        args = [memo[a] for a in node.args]
        if isinstance(node, sp.Function) and not isinstance(node, (sp.Piecewise, sp.Max, sp.Min)) \
                and all(isinstance(a, sp.Expr) for a in args):
            key = (node.func, tuple(sp.expand(a) for a in args))
            if key not in atoms:
                atoms[key] = sp.Dummy(f"{node.func.__name__}{len(atoms)}", real=True)
            memo[node] = atoms[key]
        else:
            memo[node] = node.func(*args) if any(a is not b for a, b in zip(args, node.args)) \
                else node
    return memo[e]


class _NotPolynomial(Exception):
    pass


def _in_ring(e):
    """`e` as a polynomial with rational coefficients (sparse, fast arithmetic)."""
    from sympy.polys.rings import ring
    return _fold(e, ring, allow_division=False)


def _in_field(e):
    """`e` as a rational function with rational coefficients."""
    from sympy.polys.fields import field
    return _fold(e, field, allow_division=True)


def _fold(e, make, allow_division):
    sp = _sp()
    syms = sorted(e.free_symbols, key=lambda s: (str(s), s.dummy_index or 0)
                  if isinstance(s, sp.Dummy) else (str(s), 0))
    if not syms:
        return sp.nsimplify(e) if not e.is_Rational else e
    K, *gens = make(syms, sp.QQ)
    memo = {s: g for s, g in zip(syms, gens)}
    stack = [(e, False)]
    while stack:
        n, ready = stack.pop()
        if n in memo:
            continue
        if n.is_Rational:
            memo[n] = K(n)
            continue
        if n.is_Atom:
            raise _NotPolynomial(n)
        if not ready:
            stack.append((n, True))
            stack.extend((a, False) for a in n.args if a not in memo)
            continue
        args = [memo[a] for a in n.args]
        if n.is_Add:
            r = K(0)
            for a in args:
                r = r + a
        elif n.is_Mul:
            r = K(1)
            for a in args:
                r = r * a
        elif n.is_Pow and n.exp.is_Integer and (n.exp >= 0 or allow_division):
            r = args[0] ** int(n.exp)
        else:
            raise _NotPolynomial(n)
        memo[n] = r
    return memo[e]


def prove_zero(e) -> bool:
    """True when sympy shows that `e` is identically zero (cheapest test first).

    First `e` is atomized (see `atomize`) and expanded as a rational function of
    the atoms; then expanded whole; `simplify` after rewriting into exp is the
    last resort, for small expressions.
    """
    sp = _sp()
    e = sp.sympify(e)
    if e == 0:
        return True
    if not e.has(sp.Piecewise):
        a = atomize(e)
        for exact in (_in_ring, _in_field):
            try:
                if exact(a) == 0:
                    return True
                break
            except _NotPolynomial:
                continue
        if sp.count_ops(e) > 3000:  # too big to expand whole (exp(a)·exp(b) = exp(a+b) may
            return False            # be what the atoms missed; small cases are tried below)
    if e.has(sp.Piecewise):
        e = sp.piecewise_fold(e)
        if isinstance(e, sp.Piecewise) and all(prove_zero(b) for b, _ in e.args):
            return True
        try:  # branches that cannot be reached are dropped by simplify
            if _small(e) and sp.simplify(e) == 0:
                return True
        except (TypeError, ValueError, NotImplementedError):
            pass
    try:
        for step in (sp.expand, lambda x: sp.cancel(sp.together(x)),
                     lambda x: sp.simplify(x.rewrite(sp.exp)) if _small(x) else x):
            e = step(e)
            if e == 0:
                return True
    except (TypeError, ValueError, NotImplementedError):
        return False
    return False


def _random_point(syms, rng: random.Random, positive=False) -> dict:
    """Small non-zero rationals (k/4, |k| ≤ 7) for `syms`: readable counterexamples."""
    sp = _sp()
    point = {}
    for s in sorted(syms, key=lambda s: s.name):
        if s.is_integer:
            point[s] = sp.Integer(rng.randint(0, 2))
            continue
        k = rng.randint(1, 7)
        if not positive and rng.random() < 0.5:
            k = -k
        point[s] = sp.Rational(k, 4)
    return point


def _numeric(e, point, ctx: Context | None = None):
    """The value of `e` at `point`, as a complex (mpmath, 30 digits), or None."""
    sp = _sp()
    if ctx is not None:
        e = ctx.unhold(e)
    try:
        v = complex(sp.sympify(e).xreplace(point).evalf(30))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if np.isfinite(v) else None


def find_counterexample(a, b, ctx: Context | None = None, tries: int = 12, seed: int = 0):
    """A point where `a` and `b` differ clearly, as ``(point, value_a, value_b)``, or None."""
    sp = _sp()
    a, b = sp.sympify(a), sp.sympify(b)
    if ctx is not None:
        a, b = ctx.unhold(a), ctx.unhold(b)
    syms = (a.free_symbols | b.free_symbols)
    rng = random.Random(seed)
    for k in range(tries):
        point = _random_point(syms, rng, positive=k % 2 == 1)
        va, vb = _numeric(a, point), _numeric(b, point)
        if va is None or vb is None:
            continue
        if abs(va - vb) > 1e-10 * (1 + abs(va) + abs(vb)):
            return point, va, vb
    return None


def _fmt_point(point) -> str:
    return ", ".join(f"{s} = {v}" for s, v in sorted(point.items(), key=lambda kv: kv[0].name))


def _short(e, limit: int = 400) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + f" … ({len(text)} characters)"


def _fmt_num(v: complex) -> str:
    return f"{v.real:.12g}" if abs(v.imag) < 1e-12 * (1 + abs(v.real)) else f"{v:.12g}"


# ----------------------------------------------------------------------------- derivatives

def _wrt_placeholders(wrt):
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    for w in wrt:
        if not isinstance(w, Node) or w.op != "placeholder":
            raise GraphError(f"verify: wrt must be placeholders, got {getattr(w, 'label', w)!r}")
        if w.dtype not in FLOAT_DTYPES:
            raise GraphError(f"verify: {w.name!r} is {w.dtype}; only float inputs have gradients")
    return wrt, single


def _derivative(y_expr, w_syms: np.ndarray) -> np.ndarray:
    """∂y/∂w elementwise over the symbols of w (almost everywhere)."""
    sp = _sp()
    return _map(lambda s: _drop_deltas(sp.diff(y_expr, s)), w_syms)


def _index_str(name, i) -> str:
    return f"{name}[{', '.join(map(str, i))}]" if i else name


@dataclass
class EntryCheck:
    """One gradient entry: what the backward graph gives, sympy's derivative, status."""

    wrt: str
    index: tuple
    graph: object
    sympy: object
    status: str          # "proven" | "numeric" (equal at random points, not proven) | "differs"
    counterexample: dict | None = None

    @property
    def label(self) -> str:
        return _index_str(self.wrt, self.index)


@dataclass
class GradProof:
    """The result of `verify_grad`: per gradient entry, proven zero difference or not.

    `proven` is True when every difference simplified to exactly 0. When an entry
    differs, `first_difference` names it with a counterexample point, and
    `culprit` names the first op whose VJP rule disagrees with sympy, walking the
    backward graph from the output.
    """

    y: str
    entries: list[EntryCheck]
    seconds: float
    culprit: str | None = None
    cotangent: str | None = None
    held: dict = field(default_factory=dict)

    @property
    def proven(self) -> bool:
        return all(e.status == "proven" for e in self.entries)

    @property
    def ok(self) -> bool:
        """No entry differs (some may be equal only numerically)."""
        return not any(e.status == "differs" for e in self.entries)

    @property
    def first_difference(self) -> EntryCheck | None:
        return next((e for e in self.entries if e.status == "differs"), None)

    def __bool__(self):
        return self.proven

    def __str__(self):
        counts = {s: sum(e.status == s for e in self.entries)
                  for s in ("proven", "numeric", "differs")}
        head = (f"verify_grad d{self.y}: {len(self.entries)} entries, {counts['proven']} proven "
                f"equal (difference simplifies to 0)")
        if counts["numeric"]:
            head += f", {counts['numeric']} equal at random points only"
        if counts["differs"]:
            head += f", {counts['differs']} DIFFER"
        lines = [head + f"  [{self.seconds:.2f} s]"]
        bad = self.first_difference
        if bad is not None:
            lines.append(f"first differing entry: d{self.y}/d{bad.label}")
            lines.append(f"  backward graph: {_short(bad.graph)}")
            lines.append(f"  sympy:          {_short(bad.sympy)}")
            if bad.counterexample:
                pt, va, vb = bad.counterexample["point"], bad.counterexample["graph"], \
                    bad.counterexample["sympy"]
                lines.append(f"  at {_fmt_point(pt)}: graph {_fmt_num(va)} vs sympy {_fmt_num(vb)}")
        if self.cotangent:
            lines.append(self.cotangent)
        if self.culprit:
            lines.append(self.culprit)
        return "\n".join(lines)


def verify_grad(y: Node, wrt, *, dims=None, values_of=None, symbols=None,
                localize: bool = True) -> GradProof:
    """Prove that the backward graph `ag.grad(y, wrt)` equals sympy's derivative.

    For every entry of every `wrt` placeholder the difference between the backward
    graph's expression and ``sympy.diff`` of the forward graph's expression must
    simplify to exactly 0 ("proven"). If it does not, the entry is compared at
    random points: equal there is "numeric"; different is "differs", with the
    point as a counterexample. Then (`localize`) the backward graph is walked from
    the output: the first named cotangent (``dL/ds_3``) that differs from sympy's
    ∂y/∂s_3 is reported, and the first node whose op's VJP rule disagrees with
    sympy's derivative of that op, with both sub-expressions.
    """
    import time

    from .vjp import grad
    t0 = time.perf_counter()
    wrt, _ = _wrt_placeholders(wrt)
    grads = grad(y, wrt)
    ctx = Context(dims, values_of, symbols, hold_stop_gradient=True)
    (y_val,) = ctx.evaluate([y])
    y_expr = y_val[()]
    got = ctx.evaluate(grads)
    entries = []
    for w, g in zip(wrt, got):
        w_syms = ctx.env[id(w)] if id(w) in ctx.env else ctx.placeholder(w)
        want = _derivative(y_expr, w_syms)
        g = obj(g)
        for i in np.ndindex(want.shape):
            a, b = g[i], want[i]
            if prove_zero(a - b):
                status, cex = "proven", None
            else:
                found = find_counterexample(a, b, ctx)
                if found is None:
                    status, cex = "numeric", None
                else:
                    status = "differs"
                    cex = {"point": found[0], "graph": found[1], "sympy": found[2]}
            entries.append(EntryCheck(w.name, i, a, b, status, cex))
    proof = GradProof(y.label, entries, 0.0, held=dict(ctx.held))
    if localize and not proof.ok:
        proof.cotangent = _first_bad_cotangent(y, wrt, dims, values_of, symbols)
        proof.culprit = _first_bad_rule(y, wrt, dims, values_of, symbols)
    proof.seconds = time.perf_counter() - t0
    return proof


def _unrolled(y, wrt, dims):
    from .unroll import unroll
    T = (dims or {}).get("T")
    return unroll(y, T) if any(n.op == "scan" for n in toposort([y])) else y


def _live(y, wrt):
    """Forward nodes on a differentiable path from some `wrt` to `y`, in order."""
    ids = set(map(id, wrt))
    live = []
    seen = set()
    for n in toposort([y]):
        if id(n) in ids or (n.op != "stop_gradient" and n.dtype in FLOAT_DTYPES
                            and any(id(i) in seen for i in n.inputs)):
            seen.add(id(n))
            live.append(n)
    return live


def _first_bad_cotangent(y, wrt, dims, values_of, symbols) -> str | None:
    """The named cotangent nearest to y (e.g. ``dL/ds_3``) that differs from sympy's ∂y/∂s_3."""
    from .vjp import grad
    sp = _sp()
    y_u = _unrolled(y, wrt, dims)
    grads = grad(y_u, wrt)
    back = {n.name: n for n in toposort(grads) if n.name}
    prefix = f"d{y_u.name or 'y'}/d"
    for n in reversed(_live(y_u, wrt)):
        if not n.name or n is y_u or n.op == "placeholder" or prefix + n.name not in back:
            continue
        ctx = Context(dims, values_of, symbols, hold_stop_gradient=True)
        ct_graph = ctx.evaluate([back[prefix + n.name]])[0]
        # ∂y/∂n: the forward graph again, with n's value replaced by free symbols.
        free = np.empty(ctx.shape(n.shape), dtype=object)
        for i in np.ndindex(free.shape):
            free[i] = sp.Symbol("_".join([f"v_{n.name}"] + [str(k) for k in i]), real=True)
        probe = Context(dims, values_of, symbols, hold_stop_gradient=True)
        probe.held, probe._held_by_expr = ctx.held, ctx._held_by_expr
        probe.env[id(n)] = free
        y_free = probe.evaluate([y_u])[0][()]
        true_value = ctx.evaluate([n])[0]
        back_subs = {free[j]: true_value[j] for j in np.ndindex(free.shape)}
        for i in np.ndindex(free.shape):
            want = _drop_deltas(sp.diff(y_free, free[i])).xreplace(back_subs)
            found = find_counterexample(ct_graph[i], want, ctx)
            if found is not None:
                return (f"first differing cotangent (from the output back): "
                        f"{_index_str(prefix + n.name, i)}\n"
                        f"  backward graph: {_short(ct_graph[i])}\n"
                        f"  sympy:          {_short(want)}\n"
                        f"  at {_fmt_point(found[0])}: graph {_fmt_num(found[1])} vs "
                        f"sympy {_fmt_num(found[2])}")
    return None


def _first_bad_rule(y, wrt, dims, values_of, symbols) -> str | None:
    """The first node (from y back) whose op's VJP rule disagrees with sympy, locally.

    For a node m = op(a_1, …), fresh symbols stand for its float inputs and for the
    incoming cotangent ct; the rule's cotangent of a_i must equal
    Σ_k ct_k ∂op_k/∂a_i, which sympy computes from the op's sympy rule.
    """
    from .api import placeholder
    from .vjp import VJP
    sp = _sp()
    y_u = _unrolled(y, wrt, dims)
    fwd = Context(dims, values_of, symbols, hold_stop_gradient=True)
    fwd.evaluate([y_u])
    live = _live(y_u, wrt)
    live_ids = set(map(id, live))
    for m in reversed(live):
        if m.op == "placeholder" or not callable(VJP.get(m.op)):
            continue
        need = tuple(id(i) in live_ids for i in m.inputs)
        local = Context(dims, values_of, symbols, hold_stop_gradient=True)
        new_inputs = []
        for k, (x, needed) in enumerate(zip(m.inputs, need)):
            if needed:
                new_inputs.append(placeholder(f"a{k}", x.shape, x.dtype))
            else:
                new_inputs.append(x)
                local.env[id(x)] = fwd.env[id(x)]
        m2 = Node(m.op, new_inputs, m.params, m.shape, m.dtype, m.name)
        ct = placeholder("ct", m.shape, m.dtype)
        try:
            cts = VJP[m.op](m2, ct, need)
        except Exception as e:  # a rule that cannot even be built is the culprit
            return f"the VJP rule of {m.op!r} at node {m.label!r} fails: {e!r}"
        (out,) = local.evaluate([m2])
        ct_syms = local.evaluate([ct])[0]
        for k, (x, c) in enumerate(zip(new_inputs, cts)):
            if not need[k]:
                continue
            a_syms = local.env[id(x)]
            got = local.evaluate([c])[0] if c is not None else np.full(a_syms.shape, 0, object)
            got = np.array(np.broadcast_to(obj(got), a_syms.shape), dtype=object)
            for j in np.ndindex(a_syms.shape):
                want = sp.Add(*[ct_syms[o] * _drop_deltas(sp.diff(out[o], a_syms[j]))
                                for o in np.ndindex(out.shape)])
                if find_counterexample(got[j], want, local, tries=6) is not None:
                    return (f"first VJP rule that disagrees (from the output back): op "
                            f"{m.op!r} at node {m.label!r}, cotangent of its input {k} "
                            f"({x.label if x.op != 'placeholder' else m.inputs[k].label!r})"
                            f"{'' if not j else ' at ' + str(list(j))}\n"
                            f"  rule gives: {got[j]}\n"
                            f"  sympy:      {want}\n"
                            f"  (a{k} stands for the input, ct for the incoming cotangent)")
    return None


# ----------------------------------------------------------------------------- hand derivations

@dataclass
class DerivationCheck:
    """The verdict on a hand derivation: "equal" or "differs" plus a counterexample."""

    verdict: str
    proven: bool
    hand: object
    graph: object
    entry: str | None = None
    counterexample: dict | None = None

    @property
    def equal(self) -> bool:
        return self.verdict == "equal"

    def __bool__(self):
        return self.equal

    def __str__(self):
        if self.equal:
            how = "proven: the difference simplifies to 0" if self.proven else \
                "equal at random points (not proven symbolically)"
            return f"equal ({how})"
        out = [f"differs{' at entry ' + self.entry if self.entry else ''}"]
        if self.counterexample:
            c = self.counterexample
            out.append(f"  counterexample: {_fmt_point(c['point'])}")
            out.append(f"  hand derivation: {_fmt_num(c['hand'])}")
            out.append(f"  graph:           {_fmt_num(c['graph'])}")
        return "\n".join(out)


def check_derivation(expr, y: Node, wrt: Node, *, dims=None, values_of=None,
                     symbols=None) -> DerivationCheck:
    """Check a hand-derived ∂y/∂wrt, typed as a sympy expression, against the graph.

    `expr` uses symbols named like `to_sympy`'s (``W``, ``U``, ``x_1``; elements
    ``W_0_1``); they are matched by name, so plain ``sympy.symbols("W U")`` will do.
    For an array `wrt`, `expr` is a nested list, sympy Matrix or Array of its shape.
    The reference is sympy's derivative of the forward graph.
    """
    sp = _sp()
    (w,), _ = _wrt_placeholders([wrt])
    ctx = Context(dims, values_of, symbols, hold_stop_gradient=True)
    (y_val,) = ctx.evaluate([y])
    w_syms = ctx.env[id(w)] if id(w) in ctx.env else ctx.placeholder(w)
    want = _derivative(y_val[()], w_syms)
    hand = obj(expr)
    if hand.shape != want.shape:
        if hand.size == want.size:
            hand = hand.reshape(want.shape)
        else:
            raise GraphError(f"check_derivation: the derivation has shape {list(hand.shape)}, "
                             f"{w.name!r} has shape {list(want.shape)}")
    known = dict(ctx.by_name)
    proven = True
    for i in np.ndindex(want.shape):
        h = sp.sympify(hand[i])
        unknown = sorted(s.name for s in h.free_symbols if s.name not in known)
        if unknown:
            raise GraphError(f"check_derivation: the derivation uses {unknown}, which are not "
                             f"symbols of the graph (it has {sorted(known)})")
        h = h.xreplace({s: known[s.name] for s in h.free_symbols})
        if prove_zero(h - want[i]):
            continue
        found = find_counterexample(h, want[i], ctx)
        if found is not None:
            return DerivationCheck("differs", False, h, want[i], _index_str(w.name, i),
                                   {"point": found[0], "hand": found[1], "graph": found[2]})
        proven = False
    return DerivationCheck("equal", proven, to_public(hand), to_public(want))


# ----------------------------------------------------------------------------- the textbook's expansion

_FPRIME_LATEX = {
    "tanh": lambda k: rf"\left(1 - s_{{{k}}}^{{2}}\right)",
    "sigmoid": lambda k: rf"s_{{{k}}}\left(1 - s_{{{k}}}\right)",
}


@dataclass
class Derivation:
    """∂s_T/∂W for the scalar Elman RNN s_t = f(U x_t + W s_{t−1}), expanded by BPTT.

    `terms[k-1]` is the k-th path ∂s_T/∂s_k · ∂⁺s_k/∂W (k = T is the explicit one),
    as a sympy expression. `checks` records what was proven, each a bool:
    ``"generic f"`` (the expansion equals sympy's derivative for an undefined f),
    ``"sympy"`` (with f itself), ``"backward graph"`` (equals `ag.grad(s_T, W)`),
    ``"per step"`` (term k equals the graph's per-step contribution ∂s_T/∂W^(k)).
    """

    T: int
    activation: str
    terms: list
    derivative: object
    checks: dict
    _latex: str

    @property
    def verified(self) -> bool:
        return all(self.checks.values())

    def latex(self) -> str:
        return self._latex

    def __str__(self):
        return self._latex


def elman_graph(T: int, activation: str = "tanh"):
    """The scalar Elman RNN as a graph: placeholders and the final state s_T.

    Returns ``(x, s0, U, W, s_T, symbols)``, where `symbols` names x's elements
    x_1 … x_T and s0 as s_0, as the course material writes them.
    """
    from . import api as ag
    from .scan import scan
    sp = _sp()
    f = {"tanh": ag.tanh, "sigmoid": ag.sigmoid}[activation]
    x = ag.placeholder("x", ("T",))
    s0 = ag.placeholder("s0", ())
    U = ag.placeholder("U", ())
    W = ag.placeholder("W", ())

    def step(s, x_t):
        s = f(U * x_t + W * s).named("s")
        return s, s
    s_T, _ = scan(step, s0, x)
    s_T = s_T.named(f"s_{T}")
    symbols = {"x": [sp.Symbol(f"x_{k}", real=True) for k in range(1, T + 1)],
               "s0": sp.Symbol("s_0", real=True)}
    return x, s0, U, W, s_T, symbols


def elman_derivation(T: int = 4, activation: str = "tanh") -> Derivation:
    """The BPTT expansion of ∂s_T/∂W for the scalar Elman RNN, proven and as LaTeX.

    Implements the course material's
    ∂s_T/∂W = Σ_{k=1..T} (Π_{j=k+1..T} ∂s_j/∂s_{j−1}) ∂⁺s_k/∂W,
    with ∂s_j/∂s_{j−1} = f'(z_j) W and ∂⁺s_k/∂W = f'(z_k) s_{k−1}, z_k = U x_k + W s_{k−1}.
    """
    from .vjp import grad, grad_steps
    sp = _sp()
    if activation not in _FPRIME_LATEX:
        raise GraphError(f"elman_derivation: activation must be one of {sorted(_FPRIME_LATEX)}")
    if not isinstance(T, int) or T < 1:
        raise GraphError(f"elman_derivation: T must be a positive int, got {T!r}")
    U, W = sp.symbols("U W", real=True)
    xs = [sp.Symbol(f"x_{k}", real=True) for k in range(1, T + 1)]
    s0 = sp.Symbol("s_0", real=True)

    def expansion(f, fprime):
        s, z = [s0], [None]
        for k in range(1, T + 1):
            z.append(U * xs[k - 1] + W * s[-1])
            s.append(f(z[-1]))
        terms = []
        for k in range(1, T + 1):
            t = fprime(z[k], s[k]) * s[k - 1]
            for j in range(k + 1, T + 1):
                t = fprime(z[j], s[j]) * W * t
            terms.append(t)
        return s, terms

    # 1. for an undefined f: sympy writes f' as Subs(Derivative(f(ξ), ξ), ξ, z)
    fg, fpg = sp.Function("f"), sp.Function("f'")
    s_g, terms_g = expansion(fg, lambda z, s: fpg(z))
    d_g = sp.diff(s_g[T], W).replace(
        lambda a: isinstance(a, sp.Subs) and isinstance(a.expr, sp.Derivative),
        lambda a: fpg(a.point[0]))
    checks = {"generic f": prove_zero(d_g - sp.Add(*terms_g))}

    # 2. for the concrete f, and against the graph
    f = sp.tanh if activation == "tanh" else sigmoid_function()
    fprime = (lambda z, s: 1 - s ** 2) if activation == "tanh" else (lambda z, s: s * (1 - s))
    s_c, terms = expansion(f, fprime)
    total = sp.Add(*terms)
    d = sp.diff(s_c[T], W)
    checks["sympy"] = prove_zero(d - total)
    x, s0_node, U_node, W_node, s_T, syms = elman_graph(T, activation)
    dims = {"T": T}
    g_back = to_sympy(grad(s_T, W_node), dims=dims, symbols=syms)
    checks["backward graph"] = prove_zero(g_back - total)
    per_step = to_sympy(grad_steps(s_T, W_node), dims=dims, symbols=syms)
    checks["per step"] = all(prove_zero(per_step[k - 1] - terms[k - 1]) for k in range(1, T + 1))

    return Derivation(T, activation, terms, d, checks, _latex_expansion(T, activation, checks))


def _latex_expansion(T: int, activation: str, checks: dict) -> str:
    def frac(a, b, plus=False):
        return rf"\frac{{\partial{'^+' if plus else ''} {a}}}{{\partial {b}}}"

    def path(k, jac, explicit):
        """The k-th term, factors in the course's order: ∂s_T/∂s_{T−1} … ∂⁺s_k/∂W."""
        return " ".join([jac(j) for j in range(T, k, -1)] + [explicit(k)])

    order = range(T, 0, -1)
    symbolic = " + ".join(path(k, lambda j: frac(f"s_{{{j}}}", f"s_{{{j - 1}}}"),
                               lambda k: frac(f"s_{{{k}}}", "W", plus=True)) for k in order)
    braced = " + ".join(
        (rf"\underbrace{{{frac(f's_{{{k}}}', 'W', plus=True)}}}_{{\text{{explicit}}}}" if k == T
         else rf"\underbrace{{{path(k, lambda j: frac(f's_{{{j}}}', f's_{{{j - 1}}}'), lambda k: frac(f's_{{{k}}}', 'W', plus=True))}}}_{{\text{{implicit}}}}")
        for k in order)
    generic = " + ".join(path(k, lambda j: rf"f'(z_{{{j}}})\,W",
                              lambda k: rf"f'(z_{{{k}}})\,s_{{{k - 1}}}") for k in order)
    fp = _FPRIME_LATEX[activation]
    concrete = " + ".join(path(k, lambda j: rf"{fp(j)} W", lambda k: rf"{fp(k)} s_{{{k - 1}}}")
                          for k in order)
    fname = r"\tanh" if activation == "tanh" else r"\sigma"
    fprime = r"1 - f(z)^{2}" if activation == "tanh" else r"f(z)\left(1 - f(z)\right)"
    ok = ", ".join(f"{name}: {'proven' if v else 'NOT proven'}" for name, v in checks.items())
    return "\n".join([
        r"\begin{aligned}",
        rf"{frac(f's_{{{T}}}', 'W')} &= \sum_{{k=1}}^{{{T}}} {frac(f's_{{{T}}}', 's_{k}')} "
        rf"{frac('s_{k}', 'W', plus=True)} \\",
        rf"&= {braced} \\",
        rf"&= {symbolic} \\",
        rf"&= {generic} \\",
        rf"&= {concrete}",
        r"\end{aligned}",
        "",
        rf"% where z_k = U x_k + W s_{{k-1}},\ s_k = f(z_k),\ f = {fname},\ f'(z) = {fprime};",
        rf"% {frac('s_j', 's_{j-1}')} = f'(z_j)\,W (implicit paths), "
        rf"{frac('s_k', 'W', plus=True)} = f'(z_k)\,s_{{k-1}} (explicit: s_{{k-1}} held constant).",
        f"% verified with sympy: {ok}",
    ])

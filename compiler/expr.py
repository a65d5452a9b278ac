"""Integer expressions over symbolic dims and loop variables: sizes, strides, offsets.

An `Expr` is a polynomial with integer coefficients, e.g. ``4*B*T + 2*t``: shapes
of graphs with named dims (``"T"``, ``"B"``) multiply out into such sums, and loop
IR addresses add loop variables to them. Polynomials are closed under + and *, so
every size, stride and offset the lowering needs is an `Expr`; it is evaluated in
Python (arena layout) or emitted as LLVM integer arithmetic (addresses).
"""
from __future__ import annotations

import math
from typing import Mapping


class Expr:
    """Σ coeff · Π symbols, with terms keyed by the sorted tuple of their symbols."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: Mapping[tuple, int] | None = None):
        t = {k: int(v) for k, v in (terms or {}).items() if v != 0}
        object.__setattr__(self, "terms", t)
        object.__setattr__(self, "_hash", hash(frozenset(t.items())))

    def __reduce__(self):          # pickled as its terms (the hash is per process)
        return Expr, (self.terms,)

    @staticmethod
    def of(x) -> "Expr":
        """An Expr from an int, a symbol name or an Expr (ints and names are interned:
        lowering builds tens of thousands of these)."""
        if isinstance(x, Expr):
            return x
        e = _INTERNED.get(x)
        if e is None:
            e = Expr({(x,): 1}) if isinstance(x, str) else Expr({(): int(x)})
            if len(_INTERNED) < 4096:
                _INTERNED[x] = e
        return e

    def __add__(self, other):
        other = Expr.of(other)
        if not other.terms:
            return self
        if not self.terms:
            return other
        t = dict(self.terms)
        for k, v in other.terms.items():
            t[k] = t.get(k, 0) + v
        return Expr(t)

    __radd__ = __add__

    def __neg__(self):
        return Expr({k: -v for k, v in self.terms.items()})

    def __sub__(self, other):
        return self + (-Expr.of(other))

    def __rsub__(self, other):
        return Expr.of(other) - self

    def __mul__(self, other):
        other = Expr.of(other)
        if other.terms == _ONE_TERMS:
            return self
        if self.terms == _ONE_TERMS:
            return other
        t: dict = {}
        for k1, v1 in self.terms.items():
            for k2, v2 in other.terms.items():
                k = tuple(sorted(k1 + k2))
                t[k] = t.get(k, 0) + v1 * v2
        return Expr(t)

    __rmul__ = __mul__

    def __eq__(self, other):
        if isinstance(other, (int, str)):
            other = Expr.of(other)
        return isinstance(other, Expr) and self.terms == other.terms

    def __hash__(self):
        return self._hash

    def __setattr__(self, k, v):
        raise AttributeError("Expr is immutable")

    @property
    def is_const(self) -> bool:
        return all(k == () for k in self.terms)

    @property
    def const(self) -> int:
        """The value of a constant expression."""
        if not self.is_const:
            raise ValueError(f"{self} is not a constant")
        return self.terms.get((), 0)

    @property
    def symbols(self) -> set:
        return {s for k in self.terms for s in k}

    def evaluate(self, env: Mapping[str, int]) -> int:
        return sum(v * math.prod(env[s] for s in k) for k, v in self.terms.items())

    def __str__(self):
        if not self.terms:
            return "0"
        parts = []
        for k, v in sorted(self.terms.items(), key=lambda kv: (len(kv[0]), kv[0])):
            if not k:
                parts.append(str(v))
            else:
                sym = "*".join(k)
                parts.append(sym if v == 1 else f"-{sym}" if v == -1 else f"{v}*{sym}")
        return " + ".join(parts).replace("+ -", "- ")

    __repr__ = __str__


_INTERNED: dict = {}
_ONE_TERMS = {(): 1}


def product(xs) -> Expr:
    out = Expr.of(1)
    for x in xs:
        out = out * Expr.of(x)
    return out


def row_major(shape) -> tuple:
    """Strides (in elements) of a contiguous array of `shape`."""
    strides, acc = [], Expr.of(1)
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * Expr.of(d)
    return tuple(reversed(strides))

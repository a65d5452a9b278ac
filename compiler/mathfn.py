"""exp and expm1 written out in LLVM IR, for the loops of a kernel.

The loop vectorizer widens these like any other arithmetic: no call, no spilled
vector registers around it, no dependence on glibc's libmvec (see vecmath.py, which
still provides log). Both are the textbook construction:

1. reduction: k = round(x / ln 2), r = x − k·ln2_hi − k·ln2_lo (Cody and Waite: ln2_hi
   has enough trailing zero bits that k·ln2_hi and the subtraction are exact), so
   |r| ≤ ln(2)/2;
2. expm1(r) by its Taylor polynomial, r + r²·(1/2! + r/3! + … ) in Horner form: degree
   13 in float64 (truncation below 2e-17 relative), degree 7 in float32 (below 5e-9);
3. scaling by 2^k built from its bits. The integer k is read from the low bits of
   x/ln2 + 1.5·2^p (p = 52 or 23; no float-to-int conversion, so NaN cannot make a
   poison value); exp scales in two halves, 2^k1·2^k2 with k1 + k2 = k, so that
   results down to the smallest subnormal and up to overflow come out right.

Accuracy, measured against long-double references by tests/test_mathfn.py: exp
within 1 ulp, tanh and sigmoid (built on these) within 2–3 ulp, in both dtypes.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

F32, F64 = ir.FloatType(), ir.DoubleType()

# float64: fdlibm's split of ln 2 (ln2_hi has 32 significant bits), float32: Cephes'.
_LN2 = {F64: (6.93147180369123816490e-01, 1.90821492927058770002e-10),
        F32: (0.693359375, -2.12194440e-4)}
_DEGREE = {F64: 13, F32: 7}
# (mantissa bits, exponent bias, clamp below, clamp above): exp(lo) rounds to 0 and
# exp(hi) to +inf in the dtype, so clamping changes no result and keeps k in range.
_FORMAT = {F64: (52, 1023, -746.0, 710.0), F32: (23, 127, -104.0, 89.0)}
_INT = {F64: ir.IntType(64), F32: ir.IntType(32)}


def _c(ty, v):
    return ir.Constant(ty, v)


def _reduce(em, x, ty):
    """(k as the integer type, r) with x = k·ln 2 + r, |r| ≤ ln(2)/2 (x finite, or NaN:
    then k is some integer and r is NaN)."""
    b = em.b
    bits, _, _, _ = _FORMAT[ty]
    it = _INT[ty]
    hi, lo = _LN2[ty]
    magic = _c(ty, 1.5 * 2.0 ** bits)
    fma = em.intrinsic("llvm.fmuladd", ty, 3)
    t = b.call(fma, [x, _c(ty, 1.0 / math.log(2.0)), magic])
    kf = b.fsub(t, magic)                                   # round(x / ln 2), exact
    r = b.call(fma, [kf, _c(ty, -hi), x])
    r = b.call(fma, [kf, _c(ty, -lo), r])
    # t's low `bits` bits hold 2^(bits-1) + k
    k = b.sub(b.and_(b.bitcast(t, it), _c(it, (1 << bits) - 1)), _c(it, 1 << (bits - 1)))
    return k, r


def _poly(em, r, ty):
    """expm1(r) for |r| ≤ ln(2)/2: r + r²·Σ r^(n-2)/n!, n = 2 … degree."""
    b = em.b
    fma = em.intrinsic("llvm.fmuladd", ty, 3)
    n = _DEGREE[ty]
    q = _c(ty, 1.0 / math.factorial(n))
    for m in range(n - 1, 1, -1):
        q = b.call(fma, [q, r, _c(ty, 1.0 / math.factorial(m))])
    return b.call(fma, [b.fmul(r, r), q, r])


def _pow2(em, k, ty):
    """2^k for an integer k in the normal range, from its exponent bits."""
    bits, bias, _, _ = _FORMAT[ty]
    it = _INT[ty]
    return em.b.bitcast(em.b.shl(em.b.add(k, _c(it, bias)), _c(it, bits)), ty)


def exp(em, x, ty):
    """e^x for every x: +inf above the overflow bound, subnormals and 0 below the
    underflow bound, NaN for NaN."""
    b = em.b
    bits, bias, lo, hi = _FORMAT[ty]
    it = _INT[ty]
    # clamp (NaN stays NaN: the comparisons are ordered)
    xc = b.select(b.fcmp_ordered(">", x, _c(ty, hi)), _c(ty, hi), x)
    xc = b.select(b.fcmp_ordered("<", xc, _c(ty, lo)), _c(ty, lo), xc)
    k, r = _reduce(em, xc, ty)
    p = _poly(em, r, ty)
    # 2^k = 2^k1 · 2^k2, both halves normal; k1 = floor(k / 2) by a logical shift of
    # k + 2·span, span > |k| for every clamped x (AVX2 has no 64-bit arithmetic shift)
    span = 1 << (bits.bit_length() + 8)
    k1 = b.sub(b.lshr(b.add(k, _c(it, 2 * span)), _c(it, 1)), _c(it, span))
    s1, s2 = _pow2(em, k1, ty), _pow2(em, b.sub(k, k1), ty)
    fma = em.intrinsic("llvm.fmuladd", ty, 3)
    return b.fmul(b.call(fma, [p, s1, s1]), s2)


def expm1(em, x, ty):
    """e^x − 1 without cancellation near 0, for x in [−20, 700] (float64) or
    [−10, 88] (float32): 2^k·expm1(r) + (2^k − 1), where 2^k − 1 is exact."""
    b = em.b
    k, r = _reduce(em, x, ty)
    p = _poly(em, r, ty)
    s = _pow2(em, k, ty)
    fma = em.intrinsic("llvm.fmuladd", ty, 3)
    return b.call(fma, [s, p, b.fsub(s, _c(ty, 1.0))])

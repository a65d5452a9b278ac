"""Vectorized exp, log and tanh from glibc's libmvec, for the loop vectorizer.

LLVM vectorizes a loop that calls a math function only if it knows a vector version
of it. Each function is therefore called through a small scalar wrapper
(``ag_exp_f64``, …) that carries the ``vector-function-abi-variant`` attribute naming
libmvec's vector version for the host (``_ZGVeN8v_exp``: AVX-512, 8 doubles). The
vectorizer calls the vector version on full vectors and the wrapper on the remainder.
The wrapper is ``noinline`` so the attribute survives until vectorization.
These few definitions are written as IR text, the one place where the compiler does
so: `llvmlite.ir` accepts only a fixed list of function attributes, and
``vector-function-abi-variant`` (a string attribute) is not among them.

Accuracy: glibc documents at most 4 ulp for these vector functions (1 ulp for most),
so float64 results stay within ~1e-15 relative of NumPy's. Without glibc's libmvec
(another libc, another CPU) every call stays scalar libm: correct, slower.
"""
from __future__ import annotations

import functools

FUNCTIONS = ("exp", "log", "tanh", "expm1")


@functools.lru_cache(maxsize=None)
def isa() -> tuple[str, int] | None:
    """(libmvec ISA letter, vector bytes) for this host, or None when libmvec is not
    usable: 'e' AVX-512 (64 bytes), 'd' AVX2 (32), 'b' SSE4 (16)."""
    try:
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features()
        llvm.load_library_permanently("libmvec.so.1")
    except Exception:   # no libmvec (non-glibc system) or no feature list: stay scalar
        return None
    if features.get("avx512f"):
        return "e", 64
    if features.get("avx2"):
        return "d", 32
    if features.get("sse4.2"):
        return "b", 16
    return None


@functools.lru_cache(maxsize=None)
def has(fn: str, dtype: str) -> bool:
    """libmvec has the vector version of `fn` for `dtype` on this host (expm1 came with
    glibc 2.35)."""
    host = isa()
    if host is None:
        return False
    import llvmlite.binding as llvm
    letter, nbytes = host
    n = nbytes // (4 if dtype == "float32" else 8)
    return bool(llvm.address_of_symbol(f"_ZGV{letter}N{n}v_{fn}{'f' if dtype == 'float32' else ''}"))


def lanes(dtype: str) -> int:
    """Numbers of `dtype` in one vector register of the host (64-byte vectors assumed
    when the host's vector unit is unknown: LLVM splits them)."""
    host = isa()
    return (host[1] if host else 64) // (4 if dtype == "float32" else 8)


def vector_registers() -> int:
    """Vector registers the host has: 32 with AVX-512, 16 otherwise (AVX2, SSE)."""
    host = isa()
    return 32 if host is not None and host[0] == "e" else 16


def wrapper_name(fn: str, dtype: str) -> str:
    return f"ag_{fn}_{'f32' if dtype == 'float32' else 'f64'}"


def definitions(used: set[tuple[str, str]]) -> str:
    """LLVM IR text defining the wrappers in `used` ({(function, dtype)}), their vector
    variants' declarations, and ``llvm.compiler.used`` (which keeps those declarations
    alive until the vectorizer has seen them)."""
    host = isa()
    lines, keep = [], []
    for fn, dtype in sorted(used):
        ty, suffix = ("float", "f") if dtype == "float32" else ("double", "")
        name = wrapper_name(fn, dtype)
        attrs = "noinline nounwind willreturn memory(none)"
        if host is not None:
            letter, nbytes = host
            lanes = nbytes // (4 if dtype == "float32" else 8)
            vec = f"_ZGV{letter}N{lanes}v_{fn}{suffix}"
            lines.append(f"declare <{lanes} x {ty}> @{vec}(<{lanes} x {ty}>)")
            keep.append(f"ptr @{vec}")
            attrs += f' "vector-function-abi-variant"="_ZGV_LLVM_N{lanes}v_{name}({vec})"'
        lines.append(f"declare {ty} @{fn}{suffix}({ty})")
        lines.append(f"define internal {ty} @{name}({ty} %x) {attrs} {{\n"
                     f"  %r = call {ty} @{fn}{suffix}({ty} %x)\n  ret {ty} %r\n}}")
    if keep:
        lines.append(f"@llvm.compiler.used = appending global [{len(keep)} x ptr] "
                     f"[{', '.join(keep)}], section \"llvm.metadata\"")
    return "\n".join(lines) + "\n"

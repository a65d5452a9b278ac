"""OpenBLAS for the large matrix products, from the `scipy-openblas64` wheel.

The wheel ships OpenBLAS as a shared library at a documented path with prefixed
symbols (``scipy_cblas_dgemm64_``: 64-bit integers). Loading it makes those symbols
resolvable by JIT-compiled code. Products too small to pay for a library call stay in
generated loops (`BLAS_MIN_WORK`, chosen by measurement: see bench/gemm_threshold.py).
"""
from __future__ import annotations

import functools

GEMM = {"float64": "scipy_cblas_dgemm64_", "float32": "scipy_cblas_sgemm64_"}
GET_THREADS = "scipy_openblas_get_num_threads64_"
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
BLAS_MIN_WORK = 32 * 32 * 32     # M·N·K below which generated loops win


def _path() -> str:
    """The shared library's file, found without importing the package (whose import
    reads its own version through importlib.metadata: ~50 ms of a new process's first
    compile on a 2-core machine)."""
    import importlib.util
    import os
    spec = importlib.util.find_spec("scipy_openblas64")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scipy_openblas64 is not installed")
    lib = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    names = sorted(n for n in os.listdir(lib)
                   if n.startswith("libscipy_openblas") and n.endswith(".so"))
    if not names:
        raise ImportError(f"no libscipy_openblas*.so in {lib}")
    return os.path.join(lib, names[0])


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """True when the OpenBLAS library is loaded (the package is a dependency, but a
    missing or broken install only costs speed)."""
    try:
        import llvmlite.binding as llvm
        llvm.load_library_permanently(_path())
        return True
    except Exception:  # ImportError, OSError, RuntimeError from LLVM
        return False


@functools.lru_cache(maxsize=None)
def handle():
    """The same library through ctypes (to set its thread count), or None."""
    if not available():
        return None
    try:
        import ctypes
        return ctypes.CDLL(_path())
    except OSError:
        return None

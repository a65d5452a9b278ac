"""Where does OpenBLAS beat the compiler's generated matrix-product loops?

Compiles ``a @ b`` twice per dtype: once with every product sent to the generated loops
and once with every product sent to OpenBLAS, then times both at the products the
recurrent workload runs (per-step B×H·H×4H, hoisted T·B×D·D×4H, weight gradients) and a
few square sizes. Prints a markdown table of medians and the ratio loops/BLAS; the
crossing point is `compiler.blas.BLAS_MIN_WORK`.

    python bench/gemm_threshold.py [--repeat 50]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import autograph as ag
from compiler import blas

SHAPES = [  # (M, N, K)
    (1, 128, 32), (8, 32, 32), (16, 64, 16), (32, 32, 32), (16, 128, 32), (1, 512, 128),
    (16, 512, 128), (32, 1024, 256), (64, 64, 64), (128, 128, 128), (1024, 512, 64),
    (256, 256, 256),
]


def kernel(dtype: str, min_work: int):
    saved = blas.BLAS_MIN_WORK
    blas.BLAS_MIN_WORK = min_work        # baked into the IR as a constant
    try:
        a = ag.placeholder("a", ("M", "K"), dtype)
        b = ag.placeholder("b", ("K", "N"), dtype)
        return ag.function([a, b], [a @ b], backend="llvm")
    finally:
        blas.BLAS_MIN_WORK = saved


def median_seconds(fn, args, repeat: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args(argv)
    if not blas.available():
        raise SystemExit("OpenBLAS (scipy-openblas64) did not load; nothing to compare")
    print(f"current threshold BLAS_MIN_WORK = {blas.BLAS_MIN_WORK} (M·N·K)\n")
    print("| dtype | M×N×K | M·N·K | loops µs | BLAS µs | loops/BLAS |")
    print("|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        loops, lib = kernel(dtype, 1 << 62), kernel(dtype, 0)
        for M, N, K in SHAPES:
            x = [rng.normal(size=(M, K)).astype(dtype), rng.normal(size=(K, N)).astype(dtype)]
            np.testing.assert_allclose(loops(*x)[0], lib(*x)[0], rtol=1e-4, atol=1e-4)
            t_loop, t_blas = (median_seconds(f, x, args.repeat) for f in (loops, lib))
            print(f"| {dtype} | {M}×{N}×{K} | {M * N * K} | {1e6 * t_loop:.1f} | "
                  f"{1e6 * t_blas:.1f} | {t_loop / t_blas:.2f} |")


if __name__ == "__main__":
    main()

"""How the core scales with graph size: build, differentiate, unroll and run.

    python bench/core_scaling.py [--steps 10000] [--chain 100000]

Prints medians of 3 runs; the scan/unroll ratio shows what the loop op saves.
"""
import argparse
import statistics
import sys
import time

import numpy as np

import autograph as ag


def timed(fn, repeat=3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000, help="sequence length T")
    ap.add_argument("--chain", type=int, default=100_000, help="nodes in the chain graph")
    args = ap.parse_args(argv)
    sys.setrecursionlimit(1000)  # prove that nothing recurses per node

    T, B, D, H = args.steps, 4, 8, 16
    x = ag.placeholder("x", ("T", "B", D))
    U, W = ag.placeholder("U", (D, H)), ag.placeholder("W", (H, H))
    s0 = ag.zeros(("B", H))
    _, s = ag.scan(lambda s, x_t: ((t := ag.tanh(x_t @ U + s @ W)), t), s0, x)
    loss = ag.mean(s * s)
    rng = np.random.default_rng(0)
    vals = [rng.normal(size=(T, B, D)), 0.3 * rng.normal(size=(D, H)),
            0.3 * rng.normal(size=(H, H))]

    rows = []
    t_scan_grad, (dW,) = timed(lambda: ag.grad(loss, [W]))
    f_scan = ag.function([x, U, W], dW)
    t_scan_run, g_scan = timed(lambda: f_scan(*vals))
    t_unroll, loss_u = timed(lambda: ag.unroll(loss, T=T))
    t_unroll_grad, (dW_u,) = timed(lambda: ag.grad(loss_u, [W]))
    n_nodes = len(ag.toposort([dW_u]))
    f_u = ag.function([x, U, W], dW_u)
    t_unroll_run, g_unroll = timed(lambda: f_u(*vals))
    agree = float(np.max(np.abs(g_scan - g_unroll)) / np.max(np.abs(g_scan)))
    rows += [("scan: grad (build backward graph)", t_scan_grad),
             ("scan: forward+backward, NumPy", t_scan_run),
             (f"unroll T={T}", t_unroll),
             (f"unrolled: grad ({n_nodes:,} nodes)", t_unroll_grad),
             ("unrolled: forward+backward, NumPy", t_unroll_run)]

    N = args.chain
    y = ag.placeholder("c", (3,))
    c = y
    t0 = time.perf_counter()
    for _ in range(N // 2):
        c = c * 0.9999 + y
    t_build = time.perf_counter() - t0
    t_sort, order = timed(lambda: ag.toposort([ag.sum(c)]))
    t_chain_grad, (dc,) = timed(lambda: ag.grad(ag.sum(c), [y]), repeat=1)
    rows += [(f"chain: build {len(order):,} nodes", t_build),
             ("chain: toposort", t_sort), ("chain: grad", t_chain_grad)]

    print("| stage | median s |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} |")
    print(f"\nscan vs unrolled dL/dW: max relative difference {agree:.1e}")
    print(f"unrolled / scan run time: {t_unroll_run / t_scan_run:.2f}x")


if __name__ == "__main__":
    main()

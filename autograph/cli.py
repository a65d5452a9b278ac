"""The `autograph` command line.

Subcommands:
  demo   build a small Elman RNN as a graph, differentiate it, and check the
         gradient three ways (finite differences, the unrolled graph, textbook BPTT).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _demo(args) -> int:
    import autograph as ag

    T, B, D, H = args.steps, args.batch, 3, 4
    rng = np.random.default_rng(args.seed)
    x = ag.placeholder("x", ("T", "B", D))
    s0 = ag.placeholder("s0", ("B", H))
    U = ag.placeholder("U", (D, H))
    W = ag.placeholder("W", (H, H))
    b = ag.placeholder("b", (H,))

    def step(s, x_t):
        s = ag.tanh(x_t @ U + s @ W + b).named("s")
        return s, s

    t0 = time.perf_counter()
    s_T, s = ag.scan(step, s0, x)
    loss = ag.mean(ag.square(s)).named("L")
    dU, dW, db = ag.grad(loss, [U, W, b])
    built = time.perf_counter() - t0

    print("Elman RNN  s_t = tanh(x_t·U + s_{t-1}·W + b),  L = mean(s²)")
    print(f"sizes: T={T} (symbolic), B={B} (symbolic), D={D}, H={H}\n")
    print("forward graph:")
    print(ag.format_graph(ag.Graph([x, s0, U, W, b], [loss])))
    print(f"\nforward + backward built in {built * 1e3:.1f} ms "
          f"({len(ag.toposort([dU, dW, db]))} nodes, scan bodies not counted)\n")

    values = [rng.standard_normal((T, B, D)), np.zeros((B, H)),
              0.5 * rng.standard_normal((D, H)), 0.5 * rng.standard_normal((H, H)),
              0.1 * rng.standard_normal(H)]
    f = ag.function([x, s0, U, W, b], [loss, dW])
    L, gW = f(*values)
    print(f"L = {float(L):.6f}")
    print("dL/dW =\n" + np.array2string(gW, precision=5, suppress_small=True))

    print("\n1. against finite differences (4th-order central, float64):")
    report = ag.check_grad(loss, [x, s0, U, W, b], values)
    print(report)

    print(f"\n2. against the unrolled graph (scan expanded into s_1 … s_{T}):")
    (loss_u,) = ag.unroll([loss], T=T)
    (gW_u,) = ag.grad(loss_u, [W])
    gW_unrolled = ag.function([x, s0, U, W, b], gW_u)(*values)
    unroll_err = float(np.max(np.abs(gW_unrolled - gW)))
    print(f"max |dL/dW(scan) − dL/dW(unrolled)| = {unroll_err:.2e}")

    print("\n3. against the textbook's BPTT written in NumPy:")
    gW_bptt = _textbook_bptt(*values)
    bptt_err = float(np.max(np.abs(gW_bptt - gW)))
    print(f"max |dL/dW(autograph) − dL/dW(textbook)| = {bptt_err:.2e}")

    ok = report.ok(1e-6) and unroll_err < 1e-12 and bptt_err < 1e-12
    print("\nall checks passed" if ok else "\nCHECK FAILED")
    return 0 if ok else 1


def _textbook_bptt(x, s0, U, W, b):
    """dL/dW for L = mean(s²) by the recurrence δ_t = (∂L/∂s_t + δ_{t+1}Wᵀ) ⊙ (1 − s_t²)."""
    T = x.shape[0]
    s = [s0]
    for t in range(T):
        s.append(np.tanh(x[t] @ U + s[-1] @ W + b))
    n = np.prod(x.shape[:2]) * U.shape[1]
    dW = np.zeros_like(W)
    carry = np.zeros_like(s0)
    for t in range(T, 0, -1):
        delta = (2 * s[t] / n + carry) * (1 - s[t] ** 2)
        dW += s[t - 1].T @ delta
        carry = delta @ W.T
    return dW


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="autograph",
        description="Symbolic reverse-mode autodiff for recurrent networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build, differentiate and check a small RNN graph")
    demo.add_argument("--steps", type=int, default=5, help="sequence length T (default 5)")
    demo.add_argument("--batch", type=int, default=2, help="batch size B (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

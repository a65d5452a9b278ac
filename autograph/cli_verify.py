"""`autograph verify`: a small recurrent cell's gradient checked two ways.

1. sympy: the backward graph equals sympy's derivative of the forward graph,
   every entry proven (the difference simplifies to exactly 0);
2. finite differences (`check_grad`, float64, fourth-order stencil).

With ``--latex`` it also prints the BPTT expansion of ∂s_T/∂W of the scalar Elman
RNN, as the course material writes it, proven equal to sympy's derivative.
"""
from __future__ import annotations

import time

import numpy as np


def build_cell(cell: str, T: int, hidden: int, inputs: int, activation: str = "tanh"):
    """A one-sequence RNN graph: ``(loss, placeholders, parameters)``.

    The loss is L = Σ_t Σ_i s_t[i]² over the states (h for LSTM and GRU), so every
    step's state reaches the loss through both the explicit and the implicit paths.
    """
    import autograph as ag
    H, D = hidden, inputs
    x = ag.placeholder("x", ("T", D))
    f = {"tanh": ag.tanh, "sigmoid": ag.sigmoid, "relu": ag.relu}[activation]
    if cell == "elman":
        U, W, b = ag.placeholder("U", (D, H)), ag.placeholder("W", (H, H)), ag.placeholder("b", (H,))
        s0 = ag.placeholder("s0", (H,))

        def step(s, x_t):
            s = f(x_t @ U + s @ W + b).named("s")
            return s, s
        _, states = ag.scan(step, s0, x)
        params, init = [U, W, b], [s0]
    elif cell == "lstm":
        U, W = ag.placeholder("U", (D, 4 * H)), ag.placeholder("W", (H, 4 * H))
        b = ag.placeholder("b", (4 * H,))
        h0, c0 = ag.placeholder("h0", (H,)), ag.placeholder("c0", (H,))

        def step(state, x_t):
            h, c = state
            z = x_t @ U + h @ W + b
            i, fg, g, o = (z[k * H:(k + 1) * H] for k in range(4))
            c = (ag.sigmoid(fg) * c + ag.sigmoid(i) * ag.tanh(g)).named("c")
            h = (ag.sigmoid(o) * ag.tanh(c)).named("h")
            return (h, c), h
        _, states = ag.scan(step, (h0, c0), x)
        params, init = [U, W, b], [h0, c0]
    elif cell == "gru":
        U, W = ag.placeholder("U", (D, 3 * H)), ag.placeholder("W", (H, 3 * H))
        b = ag.placeholder("b", (3 * H,))
        h0 = ag.placeholder("h0", (H,))

        def step(h, x_t):
            gx, gh = x_t @ U + b, h @ W
            r = ag.sigmoid(gx[:H] + gh[:H])
            z = ag.sigmoid(gx[H:2 * H] + gh[H:2 * H])
            n = ag.tanh(gx[2 * H:] + r * gh[2 * H:])
            h = ((1.0 - z) * n + z * h).named("h")
            return h, h
        _, states = ag.scan(step, h0, x)
        params, init = [U, W, b], [h0]
    else:
        raise ValueError(f"unknown cell {cell!r}; choose elman, lstm or gru")
    loss = ag.sum(states * states).named("L")
    return loss, [x] + init + params, params


def run(args) -> int:
    import autograph as ag
    from .sympy_bridge import elman_derivation, verify_grad

    T = args.steps
    loss, inputs, params = build_cell(args.cell, T, args.hidden, args.inputs, args.activation)
    print(f"{args.cell} cell, T={T}, hidden={args.hidden}, inputs={args.inputs}"
          + (f", f={args.activation}" if args.cell == "elman" else "")
          + ";  L = Σ_t ‖s_t‖²")
    ok = True
    if not args.no_sympy:
        print("\n1. sympy: backward graph vs sympy's derivative of the forward graph")
        proof = verify_grad(loss, params, dims={"T": T})
        print(proof)
        ok &= proof.proven
    print("\n2. finite differences (4th-order central, float64):")
    rng = np.random.default_rng(args.seed)
    values = [rng.standard_normal(ag.ops.resolve(x.shape, {"T": T})) * (0.5 if x in params else 1)
              for x in inputs]
    t0 = time.perf_counter()
    report = ag.check_grad(loss, inputs, values)
    print(report)
    print(f"[{time.perf_counter() - t0:.2f} s]")
    ok &= report.ok(1e-6)
    if args.latex:
        print(f"\nBPTT expansion of ∂s_{args.latex_steps}/∂W, scalar Elman RNN "
              f"(f = {args.activation if args.activation != 'relu' else 'tanh'}):\n")
        d = elman_derivation(args.latex_steps,
                             args.activation if args.activation != "relu" else "tanh")
        print(d.latex())
        ok &= d.verified
    print("\nall checks passed" if ok else "\nCHECK FAILED")
    return 0 if ok else 1


def add_command(subparsers) -> None:
    """Register ``autograph verify`` on the main parser's subparsers."""
    import argparse

    def positive(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")
        if v < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
        return v

    p = subparsers.add_parser(
        "verify", help="prove a small cell's gradient with sympy and check it by finite "
                       "differences; --latex prints the BPTT expansion of ∂s_T/∂W")
    p.add_argument("--cell", choices=["elman", "lstm", "gru"], default="elman")
    p.add_argument("--steps", "-T", type=positive, default=3, help="sequence length T (3)")
    p.add_argument("--hidden", type=positive, default=1, help="hidden size (1: scalar)")
    p.add_argument("--inputs", type=positive, default=1, help="input size (1)")
    p.add_argument("--activation", choices=["tanh", "sigmoid", "relu"], default="tanh",
                   help="the Elman cell's f (tanh)")
    p.add_argument("--latex", action="store_true",
                   help="print the explicit + implicit expansion of ∂s_T/∂W as LaTeX")
    p.add_argument("--latex-steps", type=positive, default=4,
                   help="T of the printed expansion (4, as in the course material)")
    p.add_argument("--no-sympy", action="store_true", help="finite differences only")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)

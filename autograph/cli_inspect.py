"""`autograph explain` and `autograph draw`: BPTT terms and pictures from the shell.

Both build a cell with random weights of a chosen scale (`rnn.bptt.demo_cell`), run
it over a random sequence with B = 1 and L = Σ_t Σ h_t, and decompose ∂L/∂param.
"""
from __future__ import annotations

import numpy as np


def _explanation(args):
    from rnn.bptt import demo_cell, explain_gradient

    cell = demo_cell(args.cell, args.input_size, args.hidden, scale=args.scale,
                     forget_bias=args.forget_bias, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    xs = rng.standard_normal((args.steps, 1, args.input_size))
    s0 = tuple(0.5 * rng.standard_normal((1, args.hidden)) for _ in cell.state_names)
    return explain_gradient(cell, xs, args.param, state0=s0)


def _explain(args) -> int:
    ex = _explanation(args)
    t = args.t or ex.T
    print(ex.table(t))
    print(ex.summary())
    print(f"\n‖∂s_T/∂s_k‖ for k = 0..T (T = {ex.T}):  "
          + " ".join(f"{v:.2e}" for v in ex.state_norms[ex.T, :ex.T + 1]))
    if "c" in ex.state_names:
        print("c-only chain Π diag(f), ‖∂c_T/∂c_k‖:    "
              + " ".join(f"{v:.2e}" for v in ex.chain_norms("c")[ex.T, :ex.T + 1]))
    if args.truncate is not None:
        print(f"truncated BPTT (K = {args.truncate}): ‖g‖ = "
              f"{np.linalg.norm(ex.truncated(args.truncate)):.4e}")
    if args.clip is not None:
        g, scale = ex.clipped(args.clip)
        print(f"clipped to {args.clip:g}: ‖g‖ = {np.linalg.norm(g):.4e} (scale {scale:.3g})")
    if args.png:
        ex.heatmap(args.png, truncate=args.truncate, clip=args.clip)
        print(f"wrote {args.png}")
    if args.svg:
        ex.draw(t).save(args.svg)
        print(f"wrote {args.svg}")
    return 0


def _draw(args) -> int:
    from .draw import graph_diagram, html_page

    fmt = args.format or args.output.rsplit(".", 1)[-1]
    if fmt not in ("svg", "html", "dot"):
        raise SystemExit(f"autograph draw: unknown format {fmt!r}; use svg, html or dot")
    if args.graph:
        import autograph as ag
        import rnn
        from .nx import to_networkx

        net = rnn.RNN(args.cell, args.input_size, args.hidden, num_layers=args.layers,
                      name=args.cell).init(args.seed)
        x = ag.placeholder("x", ("T", "B", args.input_size))
        hs, _ = net(x)
        Ls = [ag.sum(hs[t]).named(f"L_{t + 1}") for t in range(args.steps)]
        d = graph_diagram(to_networkx(Ls, T=args.steps, collapse=not args.expand),
                          f"unrolled {args.cell}, {args.layers} layer(s), T = {args.steps}")
        text = d.html() if fmt == "html" else d.dot() if fmt == "dot" else d.svg()
    else:
        ex = _explanation(args)
        if fmt == "html":
            text = html_page(ex)
        else:
            d = ex.draw(args.t or ex.T)
            text = d.dot() if fmt == "dot" else d.svg()
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


def _common(p):
    p.add_argument("--cell", choices=["elman", "lstm", "gru"], default="elman")
    p.add_argument("--steps", "-T", type=int, default=6, help="sequence length T (6)")
    p.add_argument("--hidden", type=int, default=3, help="hidden size H (3)")
    p.add_argument("--input-size", type=int, default=2, help="input size D (2)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="weights ~ normal(0, scale²/H) (1.0); small → vanishing")
    p.add_argument("--forget-bias", type=float, default=0.0,
                   help="LSTM forget-gate bias; large (e.g. 5) makes f ≈ 1")
    p.add_argument("--param", default="W", help="parameter to explain: W, U, b, ... (W)")
    p.add_argument("--t", type=int, default=None, help="loss term L_t to show (T)")
    p.add_argument("--seed", type=int, default=0)


def add_commands(sub) -> None:
    """Add `explain` and `draw` to the `autograph` command's subparsers."""
    p = sub.add_parser("explain", help="the BPTT terms ∂L_t/∂W^(k) of a cell, as a table")
    _common(p)
    p.add_argument("--truncate", type=int, default=None, help="also show truncated BPTT (K)")
    p.add_argument("--clip", type=float, default=None, help="also show clipping to this norm")
    p.add_argument("--png", help="write the heatmaps to this PNG file")
    p.add_argument("--svg", help="write the path diagram of L_t to this SVG file")
    p.set_defaults(run=_explain)

    d = sub.add_parser("draw", help="draw gradient paths or the unrolled graph (SVG, HTML, DOT)")
    _common(d)
    d.add_argument("output", help="file to write: .svg, .html or .dot")
    d.add_argument("--format", choices=["svg", "html", "dot"], default=None,
                   help="default: from the file's extension")
    d.add_argument("--graph", action="store_true",
                   help="draw the unrolled graph (to_networkx) instead of the gradient paths")
    d.add_argument("--layers", type=int, default=1, help="stacked layers for --graph (1)")
    d.add_argument("--expand", action="store_true",
                   help="with --graph: one node per op instead of one per cell and step")
    d.set_defaults(run=_draw)

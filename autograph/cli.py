"""The `autograph` command line.

Subcommands:
  train   train a character-level language model (LSTM by default) on text files,
          or on the source of a standard-library package; checkpoints and samples
  sample  generate text from a checkpoint written by `train`
  bench   time the training step of DESIGN.md's workload against the references
  demo    build a small Elman RNN as a graph, differentiate it, and check the
          gradient three ways (finite differences, the unrolled graph, textbook BPTT)
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


def _train(args) -> int:
    from rnn.checkpoint import CheckpointError
    from rnn.lm import default_corpus, read_corpus, sample

    try:
        if args.files:
            text = read_corpus(args.files)
            source = f"{len(args.files)} file(s)"
        else:
            text, files = default_corpus(args.package)
            source = f"the standard library's {args.package!r} package ({len(files)} files)"
    except (OSError, ValueError) as e:
        print(f"autograph train: {e}", file=sys.stderr)
        return 1
    print(f"training a character-level {args.cell.upper()} on {source}")
    try:
        result = _run_training(args, text)
    except (CheckpointError, ValueError) as e:
        print(f"autograph train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last checkpoint ({args.checkpoint}) is intact; "
              "continue with --resume", file=sys.stderr)
        return 130
    H, val = result["unigram_entropy"], result["val_bits_per_char"]
    print(f"validation: {val:.3f} bits/char (unigram entropy {H:.3f} bits/char, "
          f"{100 * (1 - val / H):.0f}% below it)")
    print(f"checkpoint: {args.checkpoint}")
    print("sample:\n" + sample(result["graphs"], result["model"], result["vocab"],
                                args.prime, args.sample_length, args.temperature, args.seed))
    return 0


def _run_training(args, text):
    from rnn.lm import train_language_model

    return train_language_model(
        text, hidden_size=args.hidden, num_layers=args.layers, cell=args.cell,
        embed_dim=args.embed or None, batch=args.batch, seq_len=args.seq_len,
        steps=args.steps, lr=args.lr, optimizer=args.optimizer, clip_norm=args.clip,
        checkpoint=args.checkpoint, resume=args.resume, eval_every=args.eval_every,
        checkpoint_every=args.eval_every, seed=args.seed, backend=args.backend,
        progress=not args.quiet)


def _sample(args) -> int:
    from rnn.checkpoint import CheckpointError
    from rnn.lm import load_language_model, sample

    try:
        model, vocab, graphs = load_language_model(args.checkpoint, args.backend)
    except CheckpointError as e:
        print(f"autograph sample: {e}", file=sys.stderr)
        return 1
    print(sample(graphs, model, vocab, args.prime, args.length, args.temperature, args.seed))
    return 0


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}")
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v
    return parse


def _bench(rest) -> int:
    """Run bench/workload.py of the source checkout this package was installed from,
    with the arguments after `bench` (its own parser reads them)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "workload.py"
    if not path.is_file():
        print(f"autograph bench: {path} is missing; the benchmark runs from a source "
              "checkout (git clone, then pip install -e \".[dev,compare]\")", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("autograph_bench_workload", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(rest)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(
        prog="autograph",
        description="Symbolic reverse-mode autodiff for recurrent networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build, differentiate and check a small RNN graph")
    demo.add_argument("--steps", type=int, default=5, help="sequence length T (default 5)")
    demo.add_argument("--batch", type=int, default=2, help="batch size B (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(run=_demo)

    train = sub.add_parser("train", help="train a character-level language model")
    train.add_argument("files", nargs="*", help="text files (default: a stdlib package's source)")
    train.add_argument("--package", default="json",
                       help="standard-library package whose source is the corpus when no "
                            "file is given (default json)")
    train.add_argument("--cell", choices=["lstm", "gru", "elman"], default="lstm")
    train.add_argument("--hidden", type=_positive(int), default=128, help="hidden size (128)")
    train.add_argument("--layers", type=_positive(int), default=1, help="stacked layers (1)")
    train.add_argument("--embed", type=int, default=0,
                       help="embedding size; 0 feeds one-hot characters (default 0)")
    train.add_argument("--batch", type=_positive(int), default=32, help="parallel streams (32)")
    train.add_argument("--seq-len", type=_positive(int), default=64,
                       help="truncated-BPTT length k: the gradient is cut every k steps (64)")
    train.add_argument("--steps", type=_positive(int), default=1000, help="updates (1000)")
    train.add_argument("--lr", type=_positive(float), default=3e-3, help="learning rate (3e-3)")
    train.add_argument("--optimizer", choices=["adam", "momentum", "sgd"], default="adam")
    train.add_argument("--clip", type=_positive(float), default=5.0,
                       help="clip the gradient's global norm to this (5)")
    train.add_argument("--checkpoint", default="checkpoints/char-lm.npz",
                       help="checkpoint path (default checkpoints/char-lm.npz)")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    train.add_argument("--eval-every", type=_positive(int), default=200,
                       help="evaluate and checkpoint every N steps (200)")
    train.add_argument("--backend", default="llvm",
                       help="autograph backend: llvm (compiled, default) or numpy")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--prime", default="def ", help="text the sample starts from")
    train.add_argument("--sample-length", type=int, default=300)
    train.add_argument("--temperature", type=_positive(float), default=0.8)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    samp = sub.add_parser("sample", help="generate text from a language-model checkpoint")
    samp.add_argument("checkpoint", help="a checkpoint written by `autograph train`")
    samp.add_argument("--length", type=_positive(int), default=500)
    samp.add_argument("--temperature", type=_positive(float), default=0.8)
    samp.add_argument("--prime", default="def ")
    samp.add_argument("--seed", type=int, default=0)
    samp.add_argument("--backend", default="llvm")
    samp.set_defaults(run=_sample)
    sub.add_parser("bench", add_help=False,   # listed in --help; main() dispatches it
                   help="time the training step against NumPy, PyTorch and JAX "
                        "(bench/workload.py; `autograph bench --help`)")
    from .cli_verify import add_command as add_verify
    add_verify(sub)
    from compiler.cli import add_command as add_compile
    add_compile(sub)
    from .cli_inspect import add_commands as add_inspect
    add_inspect(sub)
    args = parser.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

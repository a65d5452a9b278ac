"""`autograph compile`: show every stage of compiling a graph. `autograph library`:
build the product kernels for this machine."""
from __future__ import annotations

import sys
import time

STAGES = ("graph", "rewritten", "shards", "loop_ir", "llvm_ir", "optimized_ir", "assembly")


def add_command(sub) -> None:
    p = sub.add_parser("compile", help="show every compiler stage for a training step")
    p.add_argument("--cell", choices=["lstm", "gru", "elman"], default="lstm")
    p.add_argument("--input", type=int, default=4, help="input size D (default 4)")
    p.add_argument("--hidden", type=int, default=8, help="hidden size H (default 8)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--stage", choices=STAGES + ("all", "timings"), default="all",
                   help="which stage to print (default all)")
    p.set_defaults(run=run)
    lib = sub.add_parser("library", help="build the product kernels for this machine, once "
                                         "(else the first compile that calls one builds it)")
    lib.add_argument("--rebuild", action="store_true",
                     help="build them again even where they are stored")
    lib.set_defaults(run=build_library)


def build_library(args) -> int:
    """Every product kernel of `microkernels` in both dtypes, into `jit.library_dir()`."""
    from . import jit, microkernels

    t0 = time.perf_counter()
    before = jit.library_seconds
    units = [(k, d) for d in microkernels.DTYPES for k in microkernels.SIGNATURES]
    for kind, dtype in units:
        jit.library_object(kind, dtype, rebuild=args.rebuild)
    built = jit.library_seconds - before
    print(f"{len(units)} product kernels in {jit.library_dir()}: "
          + (f"built in {built:.2f} s" if built else "all stored already")
          + f" ({time.perf_counter() - t0:.2f} s in all)")
    return 0


def run(args) -> int:
    import autograph as ag
    from rnn.workload import training_step

    from .pipeline import compile_graph, stages

    if args.input < 1 or args.hidden < 1:
        print("autograph compile: --input and --hidden must be positive", file=sys.stderr)
        return 2
    model, data, outputs = training_step(args.cell, args.input, args.hidden, args.dtype)
    graph = ag.Graph(data + list(model.nodes().values()), outputs)
    if args.stage == "timings":
        t0 = time.perf_counter()
        compiled = compile_graph(graph, use_cache=False)
        total = time.perf_counter() - t0
        for k, v in compiled.timings.items():
            print(f"{k:>10}: {v:.4f}" if isinstance(v, float) else f"{k:>10}: {v}")
        print(f"{'total':>10}: {total:.4f} s (cold, cache bypassed)")
        return 0
    text = stages(graph)
    for name in STAGES:
        if args.stage in (name, "all"):
            if args.stage == "all":
                print(f"===== {name} " + "=" * max(0, 60 - len(name)))
            print(text[name])
    return 0

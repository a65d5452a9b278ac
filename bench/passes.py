"""What each compiler pass buys: the training step with every pass, against the same
step compiled without one of them, timed in one process.

    python bench/passes.py                                 # tiny, small, medium
    python bench/passes.py --sizes large --cells lstm --dtypes float64

Passes that can be switched off here:
  fusion   `compiler/fuse.py` (same-shape maps in one loop nest, registers)
  scopes   alias scopes on loads and stores (`codegen.Emitter.alias_scopes`)
  panels   register-tiled per-step products on panel-packed weights
           (`lower._panels`, `codegen._matmul_panels`)
  copies   the tiles' transposing copies made on the tiles' path only
           (`compiler/copies.py`; off: every copy is made, whoever runs the product)
  sums     float sums in the loops that produce what they sum (`fuse.FUSE_SUMS`)

For each case the variants are compiled (cache bypassed: LLVM time is reported too),
checked against each other, then timed in alternated blocks of 0.15 s, so that the
shared machine's drift hits every variant alike. Prints a markdown table of median
ms per step and the speed-up of the full pipeline over each variant (> 1: the pass
helps). Each call is the compiled step's own (`Compiled.__call__`: whole or sharded,
as the sharder decides), without `Function`'s argument checks, the same for all.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograph as ag  # noqa: E402
import compiler  # noqa: E402
from compiler import codegen, copies, fuse, lower, pipeline  # noqa: E402
from rnn.workload import SIZES, training_step  # noqa: E402

PASSES = ("fusion", "scopes", "panels", "copies", "sums")


@contextlib.contextmanager
def without(name: str):
    """Compile with the pass `name` switched off (module attributes restored after)."""
    if name == "fusion":
        target, attr, stub = pipeline, "fuse", lambda prog: prog
    elif name == "scopes":
        target, attr, stub = codegen.Emitter, "tag", lambda self, instr, buf: instr
    elif name == "panels":
        target, attr, stub = lower, "_panels", lambda *args: None
    elif name == "copies":
        target, attr, stub = copies, "FOLD", False
    elif name == "sums":
        target, attr, stub = fuse, "FUSE_SUMS", False
    else:
        raise ValueError(f"unknown pass {name!r}; the passes are {', '.join(PASSES)}")
    saved = getattr(target, attr)
    setattr(target, attr, stub)
    try:
        yield
    finally:
        setattr(target, attr, saved)


def build(cell, size, dtype, off=None):
    """(a zero-argument training step, seconds of LLVM + JIT) with pass `off` off."""
    B, T, D, H = SIZES[size]
    model, data, outputs = training_step(cell, D, H, dtype)
    graph = ag.Graph(data + list(model.nodes().values()), outputs)
    with without(off) if off else contextlib.nullcontext():
        compiled = compiler.compile_graph(graph, use_cache=False)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((T, B, D)).astype(dtype),
            rng.standard_normal((T, B, D)).astype(dtype)] + list(model.state_dict().values())
    dims = {"T": T, "B": B}
    return (lambda: compiled(args, dims)), compiled.timings["jit"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["elman", "lstm", "gru"])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium"],
                   choices=list(SIZES))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    p.add_argument("--rounds", type=int, default=8, help="alternated blocks per variant")
    args = p.parse_args(argv)
    head = " | ".join(f"without {n} ms | {n} gains" for n in args.passes)
    print(f"| cell | size | dtype | all passes ms | {head} | LLVM s (all / " +
          " / ".join(f"no {n}" for n in args.passes) + ") |")
    print("|---|---|---|---:|" + "---:|---:|" * len(args.passes) + "---|")
    for size in args.sizes:
        for cell in args.cells:
            for dtype in args.dtypes:
                variants = {None: build(cell, size, dtype)}
                for n in args.passes:
                    variants[n] = build(cell, size, dtype, n)
                want = variants[None][0]()
                tol = 1e-10 if dtype == "float64" else 2e-3
                for n, (fn, _) in variants.items():
                    for g, w in zip(fn(), want):
                        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())
                times = {n: [] for n in variants}
                for _ in range(args.rounds):
                    for n, (fn, _) in variants.items():
                        fn()
                        start = time.perf_counter()
                        while time.perf_counter() - start < 0.15:
                            t0 = time.perf_counter()
                            fn()
                            times[n].append(time.perf_counter() - t0)
                med = {n: float(np.median(t)) * 1e3 for n, t in times.items()}
                cols = " | ".join(f"{med[n]:.3f} | {med[n] / med[None]:.2f}x"
                                  for n in args.passes)
                jit = " / ".join(f"{variants[n][1]:.2f}" for n in variants)
                print(f"| {cell} | {size} | {dtype} | {med[None]:.3f} | {cols} | {jit} |",
                      flush=True)


if __name__ == "__main__":
    main()

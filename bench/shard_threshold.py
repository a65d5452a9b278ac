"""Where batch sharding starts to pay: a compiled training step run whole (one
thread, OpenBLAS on its default threads) against the same kernel run as two
parallel shards of the batch, over a sweep of sizes.

    python bench/shard_threshold.py            # prints a markdown table

`compiler.shard.SHARD_MIN_SECONDS` is set from this: a whole call at least that
long is run as shards. Each row: the median over alternated blocks of back-to-back
calls of each mode (the throughput of a training loop).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import autograph as ag  # noqa: E402
from compiler.shard import SHARD_MIN_SECONDS, blas_threads  # noqa: E402
from rnn.workload import training_step  # noqa: E402

SWEEP = [  # (B, T, D, H)
    (2, 16, 8, 16), (4, 16, 16, 32), (2, 32, 16, 32), (4, 32, 16, 32), (8, 32, 16, 32),
    (4, 32, 32, 64), (8, 32, 32, 64), (16, 32, 32, 64), (8, 64, 64, 128),
    (16, 64, 64, 128), (32, 64, 64, 128),
]


def measure(cell, B, T, D, H, dtype, rounds, block):
    model, data, outputs = training_step(cell, D, H, dtype)
    f = ag.function(data + list(model.nodes().values()), outputs, backend="llvm")
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((T, B, D)).astype(dtype) for _ in range(2)]
    arrays, dims = ag.backends.bind_inputs(f.graph.inputs, args + list(model.state_dict().values()))
    sharder = f.runner.sharder

    def whole():
        blas_threads.set(None)
        f.runner.kernel.run(arrays, dims)

    def sharded():
        sharder.run(arrays, dims, shards=2)
    # Steady state, as in a training loop: blocks of back-to-back calls lasting about
    # `block` seconds each, the modes alternated. Short bursts mislead here: a vCPU
    # that went idle between bursts wakes slowly, and after a mode switch OpenBLAS's
    # idle threads spin for a while.
    t = {whole: [], sharded: []}
    for _ in range(rounds):
        for fn in (whole, sharded):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < block / 2:      # settle
                fn()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < block:
                fn()
                n += 1
            t[fn].append((time.perf_counter() - t0) / n)
    return float(np.median(t[whole])), float(np.median(t[sharded]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["elman", "lstm"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=3, help="blocks per mode")
    p.add_argument("--block", type=float, default=0.2, help="seconds per block")
    a = p.parse_args(argv)
    print(f"current SHARD_MIN_SECONDS = {SHARD_MIN_SECONDS * 1e6:.0f} us\n")
    print("| cell | B | T | D | H | whole µs | 2 shards µs | whole / sharded |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell in a.cells:
        for B, T, D, H in SWEEP:
            w, s = measure(cell, B, T, D, H, a.dtype, a.rounds, a.block)
            print(f"| {cell} | {B} | {T} | {D} | {H} | {w * 1e6:.0f} | {s * 1e6:.0f} | "
                  f"{w / s:.2f} |", flush=True)


if __name__ == "__main__":
    main()

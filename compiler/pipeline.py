"""The compiler pipeline from a graph to a kernel, and its printable stages."""
from __future__ import annotations

import time
from dataclasses import dataclass

from autograph.errors import BackendError
from autograph.graph import Graph
from autograph.printing import format_graph

from .codegen import emit_text
from .fuse import fuse
from .jit import Kernel, optimize, target_machine
from .loopir import format_program
from .lower import lower
from .plan import plan
from .shard import Sharder, find_plan
from .rewrite import rewrite


@dataclass
class Compiled:
    """A compiled graph: the kernel and what it took to build it. Calls run the
    kernel whole, or in parallel shards of the batch when the graph is separable
    and a whole call is slow enough to gain from it (`shard.py`)."""

    kernel: Kernel
    graph: Graph              # after rewrites
    timings: dict
    sharder: Sharder | None = None
    shard_note: str = ""      # why the graph cannot be sharded, when it cannot
    # every call returns new arrays: the kernel's outputs, or the shards' combined
    owns_outputs = True

    def __call__(self, arrays, dims):
        if self.sharder is not None:
            return self.sharder.run(arrays, dims)
        return self.kernel.run(arrays, dims)

    def bind(self, arrays, dims):
        if self.sharder is not None:
            return self.sharder.bind(arrays, dims)
        return self.kernel.bind(arrays, dims)


def build(graph: Graph):
    """(rewritten graph, planned program, timings)."""
    t = {}
    t0 = time.perf_counter()
    g = rewrite(graph)
    t["rewrite"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prog = plan(fuse(lower(g)))
    t["lower"] = time.perf_counter() - t0
    return g, prog, t


def compile_graph(graph: Graph, use_cache: bool = True) -> Compiled:
    """Compile `graph` to a native kernel (cached on disk, keyed on its loop IR)."""
    try:
        g, prog, t = build(graph)
        kernel = Kernel(g, prog, use_cache)
    except BackendError:
        raise
    except Exception as e:   # a compiler bug must not take the user's program down
        raise BackendError(f"the LLVM backend could not compile this graph: "
                           f"{type(e).__name__}: {e}") from e
    t["codegen"] = kernel.codegen_seconds
    t["jit"] = kernel.compile_seconds
    t["cache_hit"] = kernel.cache_hit
    t0 = time.perf_counter()
    plan, note = find_plan(graph)
    t["shard_analysis"] = time.perf_counter() - t0
    return Compiled(kernel, g, t, Sharder(kernel, plan) if plan else None, note or "")


def stages(graph: Graph) -> dict:
    """Every stage of the compilation of `graph`, as text: the graph as given, after
    rewrites, how calls are split across threads (the batch-sharding plan), the loop IR, the LLVM IR before and after optimization, the assembly."""
    g, prog, _ = build(graph)
    ir_text = emit_text(prog)
    mod = optimize(ir_text)
    shard_plan, why = find_plan(graph)
    return {
        "graph": format_graph(graph),
        "rewritten": format_graph(g),
        "shards": shard_plan.describe() if shard_plan else f"not separable: {why}",
        "loop_ir": format_program(prog),
        "llvm_ir": ir_text,
        "optimized_ir": str(mod),
        "assembly": target_machine()[0].emit_assembly(mod),
    }

"""The compiler pipeline from a graph to a kernel, and its printable stages."""
from __future__ import annotations

import time
from dataclasses import dataclass

from autograph.errors import BackendError
from autograph.graph import Graph
from autograph.printing import format_graph

from .codegen import emit_text
from .jit import Kernel, optimize, target_machine
from .loopir import format_program
from .lower import lower
from .plan import plan
from .rewrite import rewrite


@dataclass
class Compiled:
    """A compiled graph: the kernel and what it took to build it."""

    kernel: Kernel
    graph: Graph              # after rewrites
    timings: dict

    def __call__(self, arrays, dims):
        return self.kernel.run(arrays, dims)

    def bind(self, arrays, dims):
        return self.kernel.bind(arrays, dims)


def build(graph: Graph):
    """(rewritten graph, planned program, LLVM IR text, timings)."""
    t = {}
    t0 = time.perf_counter()
    g = rewrite(graph)
    t["rewrite"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prog = plan(lower(g))
    t["lower"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ir_text = emit_text(prog)
    t["codegen"] = time.perf_counter() - t0
    return g, prog, ir_text, t


def compile_graph(graph: Graph, use_cache: bool = True) -> Compiled:
    """Compile `graph` to a native kernel (cached on disk)."""
    try:
        g, prog, ir_text, t = build(graph)
        kernel = Kernel(g, prog, ir_text, use_cache)
    except BackendError:
        raise
    except Exception as e:   # a compiler bug must not take the user's program down
        raise BackendError(f"the LLVM backend could not compile this graph: "
                           f"{type(e).__name__}: {e}") from e
    t["jit"] = kernel.compile_seconds
    t["cache_hit"] = kernel.cache_hit
    return Compiled(kernel, g, t)


def stages(graph: Graph) -> dict:
    """Every stage of the compilation of `graph`, as text: the graph as given, after
    rewrites, the loop IR, the LLVM IR before and after optimization, the assembly."""
    g, prog, ir_text, _ = build(graph)
    mod = optimize(ir_text)
    return {
        "graph": format_graph(graph),
        "rewritten": format_graph(g),
        "loop_ir": format_program(prog),
        "llvm_ir": ir_text,
        "optimized_ir": str(mod),
        "assembly": target_machine()[0].emit_assembly(mod),
    }

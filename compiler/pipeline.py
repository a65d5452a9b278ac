"""The compiler pipeline from a graph to a kernel, and its printable stages."""
from __future__ import annotations

import contextlib
import gc
import logging
import pickle
import time
from dataclasses import dataclass

from autograph.errors import BackendError
from autograph.graph import Graph
from autograph.printing import format_graph

from .codegen import emit_text
from .copies import fold
from .fuse import fuse
from .graphkey import graph_fingerprint
from .jit import Kernel, cache_key, cache_load, cache_store, optimize, target_machine
from .loopir import format_program
from .lower import lower
from .plan import plan
from .shard import Sharder, blas_threads, find_plan
from .rewrite import rewrite

log = logging.getLogger("autograph.compiler")


@dataclass
class Compiled:
    """A compiled graph: the kernel and what it took to build it. Calls run the
    kernel whole, or in parallel shards of the batch when the graph is separable
    and a whole call is slow enough to gain from it (`shard.py`)."""

    kernel: Kernel
    source: Graph             # as given
    timings: dict
    sharder: Sharder | None = None
    shard_note: str = ""      # why the graph cannot be sharded, when it cannot
    rewritten: Graph | None = None
    # every call returns new arrays: the kernel's outputs, or the shards' combined
    owns_outputs = True

    @property
    def graph(self) -> Graph:
        """The graph after rewrites (made again on demand after a graph-level cache
        hit, which skips the rewrites)."""
        if self.rewritten is None:
            self.rewritten = rewrite(self.source)
        return self.rewritten

    def __call__(self, arrays, dims):
        if self.sharder is not None:
            return self.sharder.run(arrays, dims)
        return self.kernel.run(arrays, dims)

    def bind(self, arrays, dims):
        if self.sharder is not None:
            return self.sharder.bind(arrays, dims)
        return self.kernel.bind(arrays, dims)

    def repeat(self, dims):
        """The call just made at `dims` on this thread, to repeat on arrays of the same
        types, shapes and dtypes (`Kernel.repeat`), or None: while the sharder is
        still timing this binding, or runs it in shards, or will race it again."""
        sharder = self.sharder
        if sharder is None:
            return self.kernel.repeat(dims)
        if not sharder.runs_whole(dims):
            return None
        again = self.kernel.repeat(dims)
        if again is None:
            return None
        reset = blas_threads.set

        def repeat(arrays):
            reset(None)
            return again(arrays)
        return repeat


def build(graph: Graph):
    """(rewritten graph, planned program, timings)."""
    t = {}
    t0 = time.perf_counter()
    g = rewrite(graph)
    t["rewrite"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prog = plan(fold(fuse(lower(g))))
    t["lower"] = time.perf_counter() - t0
    return g, prog, t


GRAPH_PREFIX = "graph-"


def compile_graph(graph: Graph, use_cache: bool = True) -> Compiled:
    """Compile `graph` to a native kernel, cached on disk twice over: keyed on the
    graph as given (a hit skips every pass: the entry holds the planned program and
    its object code) and on its loop IR (a hit skips LLVM: graphs that differ only
    in ways the passes erase share a kernel).

    Python's cyclic garbage collector is paused while it compiles: the passes and
    the LLVM IR builder make ~10⁵ short-lived container objects (IR values point
    at their blocks and back), and collections during the compile promoted them
    until a full collection of the whole process ran — 100–150 ms in the middle of
    the code generator where JAX and PyTorch are imported too (the benchmark's
    process: cold compiles of 570–630 ms instead of ~450). Paused, they die young:
    the first collections afterwards find them unreachable. (A cache hit makes few
    objects and keeps them: it runs with the collector as it was — paused there, its
    load took 19 ms instead of 12.)"""
    try:
        t = {}
        t0 = time.perf_counter()
        gkey = graph_fingerprint(graph) if use_cache else None
        key = cache_key("graph " + gkey) if gkey else None
        entry = _load_entry(key) if key else None
        t["graph_key"] = time.perf_counter() - t0
        if entry is not None:
            prog, obj = entry
            g = None
            t["rewrite"] = t["lower"] = 0.0
            kernel = Kernel(graph, prog, use_cache, obj=obj)
        else:
            with _collector_paused():
                g, prog, tb = build(graph)
                t.update(tb)
                kernel = Kernel(g, prog, use_cache)
            if key:
                cache_store(key, pickle.dumps((prog, kernel.object_code), protocol=5),
                            GRAPH_PREFIX)
    except BackendError:
        raise
    except Exception as e:   # a compiler bug must not take the user's program down
        raise BackendError(f"the LLVM backend could not compile this graph: "
                           f"{type(e).__name__}: {e}") from e
    t["codegen"] = kernel.codegen_seconds
    t["jit"] = kernel.compile_seconds
    t["cache_hit"] = kernel.cache_hit
    t["graph_cache_hit"] = entry is not None
    t0 = time.perf_counter()
    plan, note = find_plan(graph)
    t["shard_analysis"] = time.perf_counter() - t0
    return Compiled(kernel, graph, t, Sharder(kernel, plan) if plan else None, note or "",
                    rewritten=g)


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic collector off for the block, then as it was (see
    `compile_graph`)."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _load_entry(key: str):
    """(program, object code) of a graph-level entry, or None. The entry is checked
    like a kernel's (key, length, sha256) before it is unpickled; the cache directory
    is private to the user (mode 0700), as for the object code it also holds."""
    blob = cache_load(key, GRAPH_PREFIX)
    if blob is None:
        return None
    try:
        prog, obj = pickle.loads(blob)
    except Exception as e:      # written by a build whose classes have changed
        log.warning("graph cache entry %s unreadable (%s); rebuilding", key[:16], e)
        return None
    return prog, obj


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

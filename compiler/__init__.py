"""compiler: lower autograph graphs to LLVM native kernels (``backend="llvm"``).

The pipeline, each stage printable (`stages`):
  graph rewrites (`rewrite.py`) → loop IR (`lower.py`) → loop fusion (`fuse.py`)
  → buffer plan (`plan.py`)
  → LLVM IR (`codegen.py`) → optimized for the host CPU → JIT, cached on disk (`jit.py`)

Importing this package registers the ``"llvm"`` backend of `autograph.function`.
"""
from .pipeline import Compiled, compile_graph, stages
from .jit import Kernel, cache_dir

from autograph.backends import register_backend as _register


def _backend(graph):
    return compile_graph(graph)


_register("llvm", _backend)

__all__ = ["Compiled", "Kernel", "cache_dir", "compile_graph", "stages"]

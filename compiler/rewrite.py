"""Graph rewrites before lowering."""
from __future__ import annotations

from autograph.graph import Graph


def rewrite(graph: Graph) -> Graph:
    return graph

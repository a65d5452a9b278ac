"""The type checker: re-derives every node's type with the ops' own shape rules."""
from __future__ import annotations

from .errors import GraphError
from .graph import Graph
from .ops import OPS


def typecheck(graph: Graph) -> None:
    """Raise `GraphError` if a node's recorded type differs from what its op's rule
    gives for its inputs, if a node is used before it is defined, or if a scan body
    is ill-typed. Returns None for a well-typed graph."""
    defined = {id(x) for x in graph.inputs}
    for n in graph.nodes:
        if n.op == "placeholder":
            if id(n) not in defined:
                raise GraphError(f"placeholder {n.label!r} is not a graph input")
            continue
        for i in n.inputs:
            if id(i) not in defined:
                raise GraphError(f"node {n.label!r} uses {i.label!r} before it is defined")
        if n.op not in OPS:
            raise GraphError(f"node {n.label!r} has the unknown op {n.op!r}")
        try:
            shape, dtype = OPS[n.op].rule(n.inputs, n.params)
        except GraphError as e:
            raise GraphError(f"node {n.label!r} is ill-typed: {e}") from None
        if (shape, dtype) != (n.shape, n.dtype):
            raise GraphError(f"node {n.label!r} ({n.op}) records shape {n.shape} and dtype "
                             f"{n.dtype}, but its rule gives {shape} and {dtype}")
        if n.op == "scan":
            typecheck(n.params["body"])
        defined.add(id(n))

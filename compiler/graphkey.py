"""A digest of a graph as given — every node's op, inputs, params, shape, dtype and name,
scan bodies included — for the graph-level kernel cache.

A hit on it skips the rewrites, the lowering and the buffer plan (two thirds of a
cache load, which is otherwise keyed on the loop IR those passes produce). Anything
the digest cannot spell exactly (a param of a type it does not know, a node that a
scan body reads from outside the body) makes it give up: such a graph is cached by
its loop IR only, as before.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from autograph.graph import Graph


class _Unkeyable(Exception):
    """Raised inside the digest by what it cannot spell; caught by graph_fingerprint."""


def graph_fingerprint(graph: Graph) -> str | None:
    """sha256 of the graph's structure, or None when it cannot be spelled exactly."""
    h = hashlib.sha256()
    try:
        _graph(h, graph)
    except _Unkeyable:
        return None
    return h.hexdigest()


def _graph(h, graph: Graph):
    index: dict = {}
    h.update(b"graph(")
    for node in list(graph.inputs) + [n for n in graph.nodes if n not in graph.inputs]:
        if id(node) in index:
            continue
        try:
            ins = [index[id(i)] for i in node.inputs]
        except KeyError:            # read from outside this graph
            raise _Unkeyable from None
        index[id(node)] = len(index)
        h.update(f"{node.op}|{ins}|{node.shape!r}|{node.dtype}|{node.name!r}|".encode())
        for k in sorted(node.params):
            h.update(f"{k}=".encode())
            _value(h, node.params[k])
            h.update(b";")
        h.update(b"\n")
    try:
        outs = [index[id(o)] for o in graph.outputs]
        ins = [index[id(i)] for i in graph.inputs]
    except KeyError:
        raise _Unkeyable from None
    h.update(f"inputs{ins}outputs{outs})".encode())


def _value(h, v):
    if v is None or isinstance(v, (bool, int, str)):
        h.update(f"{type(v).__name__}:{v!r}".encode())
    elif isinstance(v, float):
        h.update(f"float:{'nan' if math.isnan(v) else v.hex()}".encode())
    elif isinstance(v, np.ndarray):
        data = np.ascontiguousarray(v)
        h.update(f"array:{data.dtype.str}{data.shape}:".encode())
        h.update(data.tobytes())
    elif isinstance(v, np.generic):
        _value(h, np.asarray(v))
    elif isinstance(v, slice):
        h.update(b"slice(")
        for x in (v.start, v.stop, v.step):
            _value(h, x)
        h.update(b")")
    elif isinstance(v, (tuple, list)):
        h.update(f"{type(v).__name__}(".encode())
        for x in v:
            _value(h, x)
            h.update(b",")
        h.update(b")")
    elif isinstance(v, Graph):
        _graph(h, v)
    elif hasattr(v, "keys") and hasattr(v, "__getitem__"):      # a mapping
        h.update(b"map(")
        for k in sorted(v.keys(), key=repr):
            _value(h, k)
            h.update(b":")
            _value(h, v[k])
            h.update(b",")
        h.update(b")")
    else:
        raise _Unkeyable(type(v).__name__)

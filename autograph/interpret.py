"""The NumPy interpreter: the reference backend every other backend is tested against."""
from __future__ import annotations

import weakref
from typing import Mapping, Sequence

import numpy as np

from .errors import GraphError, InputError
from .graph import Graph
from .ops import OPS

_plans: "weakref.WeakKeyDictionary[Graph, tuple]" = weakref.WeakKeyDictionary()


def _plan(graph: Graph):
    """Slots for the graph's nodes, and when each value is last used (to free it)."""
    plan = _plans.get(graph)
    if plan is not None:
        return plan
    slot = {id(x): i for i, x in enumerate(graph.inputs)}
    steps = []
    for n in graph.nodes:
        if id(n) in slot:
            continue
        if n.op == "placeholder":
            raise GraphError(f"placeholder {n.label!r} is not a graph input")
        slot[id(n)] = len(slot)
        steps.append((n, OPS[n.op].impl, n.params, [slot[id(i)] for i in n.inputs], slot[id(n)]))
    last_use: dict[int, int] = {}
    for k, (_, _, _, ins, _) in enumerate(steps):
        for s in ins:
            last_use[s] = k
    keep = {slot[id(y)] for y in graph.outputs}
    free = [[] for _ in steps]
    for s, k in last_use.items():
        if s not in keep:
            free[k].append(s)
    plan = (steps, free, [slot[id(y)] for y in graph.outputs], len(slot))
    _plans[graph] = plan
    return plan


def evaluate(graph: Graph, args: Sequence[np.ndarray], dims: Mapping[str, int]) -> list:
    """Values of the graph's outputs for input arrays `args` (already checked)."""
    steps, free, outs, n = _plan(graph)
    env: list = [None] * n
    env[:len(args)] = args
    for k, (node, impl, params, ins, out) in enumerate(steps):
        try:
            env[out] = impl([env[i] for i in ins], params, dims)
        except InputError as e:
            raise InputError(f"{e} (in {node.op} node {node.label!r})") from None
        for s in free[k]:
            env[s] = None
    return [env[i] for i in outs]


class NumpyBackend:
    """Runs a graph with the interpreter; `autograph.function(..., backend="numpy")`."""

    name = "numpy"

    def __init__(self, graph: Graph):
        self.graph = graph

    def __call__(self, args, dims):
        return evaluate(self.graph, args, dims)

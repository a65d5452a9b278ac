"""The IR: immutable nodes, graphs in topological order, and the walks over them.

A `Node` is one value of a graph: the op that makes it, its input nodes, static
params, its shape (ints and symbolic dim names such as ``"T"``), its dtype and an
optional readable name. User code holds nodes directly; the numpy-like operators on
them are installed by `autograph.api`.

A `Graph` is inputs (placeholder nodes), the nodes that the outputs need in
topological order, and outputs. Walks are iterative, so graphs of hundreds of
thousands of nodes never meet Python's recursion limit.
"""
from __future__ import annotations

import itertools
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from .errors import GraphError

DTYPES = ("float32", "float64", "int64", "bool")
FLOAT_DTYPES = ("float32", "float64")
SHORT_DTYPE = {"float32": "f32", "float64": "f64", "int64": "i64", "bool": "bool", "tuple": "tuple"}

_ids = itertools.count()
_EMPTY = MappingProxyType({})


class Node:
    """One immutable value of a graph; build it with the functions of `autograph`."""

    __slots__ = ("op", "inputs", "params", "shape", "dtype", "name", "id", "__weakref__")

    op: str
    inputs: tuple
    params: Mapping
    shape: tuple
    dtype: str
    name: str | None
    id: int

    def __init__(self, op, inputs, params, shape, dtype, name=None):
        s = object.__setattr__
        s(self, "op", op)
        s(self, "inputs", tuple(inputs))
        s(self, "params", MappingProxyType(dict(params)) if params else _EMPTY)
        s(self, "shape", tuple(shape) if shape is not None else None)
        s(self, "dtype", dtype)
        s(self, "name", name)
        s(self, "id", next(_ids))

    def __setattr__(self, key, value):
        raise AttributeError(f"graph nodes are immutable; cannot set {key!r}")

    __delattr__ = __setattr__

    # Identity semantics: `==` is not overloaded, so nodes can key dicts and sets.
    __hash__ = object.__hash__

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def type_str(self) -> str:
        return type_str(self.shape, self.dtype)

    @property
    def label(self) -> str:
        """The node's name if it has one, else its op and id (for messages)."""
        return self.name if self.name else f"{self.op}#{self.id}"

    def __repr__(self):
        if self.dtype == "tuple":
            return f"<Node {self.label}: {self.op} with {len(self.params['out_types'])} outputs>"
        return f"<Node {self.label}: {self.type_str} = {self.op}>"

    def __bool__(self):
        raise TypeError(
            f"the truth value of graph value {self.label!r} is unknown while the graph "
            "is built; use autograph.where(mask, a, b) for a data-dependent choice")

    def __iter__(self):
        raise TypeError(f"graph value {self.label!r} is not iterable; index it instead (x[0])")

    def __len__(self):
        if not self.shape:
            raise TypeError(f"len() of a scalar graph value {self.label!r}")
        d = self.shape[0]
        if isinstance(d, str):
            raise TypeError(f"len() of {self.label!r}: its first dim {d!r} is symbolic")
        return d

    # NumPy must not turn `ndarray + node` into an object array: hand the op to us.
    __array_ufunc__ = None


def type_str(shape, dtype) -> str:
    """Text of a type as the printer shows it, e.g. ``f64[T,B,16]``."""
    if dtype == "tuple":
        return "tuple"
    return f"{SHORT_DTYPE.get(dtype, dtype)}[{','.join(str(d) for d in shape)}]"


def toposort(outputs: Iterable[Node]) -> list[Node]:
    """Every node that `outputs` depend on, inputs before users (iterative DFS)."""
    order: list[Node] = []
    done: set[int] = set()
    on_stack: set[int] = set()
    for root in outputs:
        if id(root) in done:
            continue
        stack = [(root, iter(root.inputs))]
        on_stack.add(id(root))
        while stack:
            node, it = stack[-1]
            for child in it:
                if id(child) not in done:
                    if id(child) in on_stack:  # impossible for immutable nodes; guards misuse
                        raise GraphError(f"cycle through node {child.label!r}")
                    on_stack.add(id(child))
                    stack.append((child, iter(child.inputs)))
                    break
            else:
                stack.pop()
                on_stack.discard(id(node))
                done.add(id(node))
                order.append(node)
    return order


def users(nodes: Sequence[Node]) -> dict[Node, list[Node]]:
    """For each node of `nodes`, the nodes of `nodes` that take it as input."""
    out: dict[Node, list[Node]] = {n: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i in out:
                out[i].append(n)
    return out


class Graph:
    """Inputs, the nodes the outputs need (topologically sorted), and outputs."""

    __slots__ = ("inputs", "outputs", "nodes", "__weakref__")

    def __init__(self, inputs: Sequence[Node], outputs: Sequence[Node]):
        inputs = tuple(inputs)
        outputs = tuple(outputs)
        for x in inputs:
            if not isinstance(x, Node) or x.op != "placeholder":
                raise GraphError(
                    f"graph inputs must be placeholders; got {getattr(x, 'label', x)!r}")
        names = [x.name for x in inputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise GraphError(f"two graph inputs share the name(s) {sorted(dup)}; rename one")
        if len(set(map(id, inputs))) != len(inputs):
            raise GraphError("the same placeholder is listed twice among the graph inputs")
        for y in outputs:
            if not isinstance(y, Node):
                raise GraphError(f"graph outputs must be graph values; got {type(y).__name__}")
        nodes = toposort(outputs)
        given = set(map(id, inputs))
        missing = [n for n in nodes if n.op == "placeholder" and id(n) not in given]
        if missing:
            raise GraphError(
                "the outputs depend on placeholder(s) "
                + ", ".join(repr(n.label) for n in missing)
                + " that are not among the inputs; add them to the inputs")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "nodes", tuple(nodes))

    def __setattr__(self, key, value):
        raise AttributeError("graphs are immutable")

    def __str__(self):
        from .printing import format_graph
        return format_graph(self)

    def __repr__(self):
        return (f"<Graph {len(self.inputs)} inputs, {len(self.nodes)} nodes, "
                f"{len(self.outputs)} outputs>")

    @property
    def dims(self) -> tuple[str, ...]:
        """The symbolic dim names the inputs use, in first-seen order."""
        seen: dict[str, None] = {}
        for x in self.inputs:
            for d in x.shape:
                if isinstance(d, str):
                    seen.setdefault(d)
        return tuple(seen)

"""`unroll`: expand every scan into T named copies of its body.

The unrolled graph is what the textbook draws: one node group per time step, the
body's named values suffixed with their step (``s`` becomes ``s_1 … s_T``). It
computes exactly what the scan computes, so values and gradients agree with the
scan form; it exists for drawing and for inspecting gradient paths.
"""
from __future__ import annotations

from .api import bind_dims, stack
from .errors import GraphError
from .graph import Node, toposort
from .ops import make


def unroll(values, T: int | None = None):
    """The values corresponding to `values` in a graph where each scan is unrolled.

    `T` gives the number of steps of scans whose length is symbolic; the unrolled
    graph then only runs with that binding (a call with another length raises).
    Placeholders are shared with the original graph, so the same inputs drive both.
    """
    if T is not None and (not isinstance(T, int) or isinstance(T, bool) or T < 0):
        raise GraphError(f"unroll: T must be a non-negative int, got {T!r}")
    single = isinstance(values, Node)
    vals = [values] if single else list(values)
    memo: dict[int, object] = {}
    _copy_nodes(toposort(vals), memo, T, suffix="")
    out = [memo[id(v)] for v in vals]
    return out[0] if single else out


class _Unrolled:
    """The outputs of one unrolled scan; stacks are built only when asked for."""

    def __init__(self, finals, ys, hist, length, T):
        self.n_carry = len(finals)
        self.finals, self.ys, self.hist = finals, ys, hist
        self.length, self.T = length, T
        self.cache: dict[int, Node] = {}

    def get(self, i: int) -> Node:
        if i < self.n_carry:
            return self.finals[i]
        if i not in self.cache:
            j = i - self.n_carry
            steps = self.ys[j] if j < len(self.ys) else self.hist[j - len(self.ys)]
            stacked = stack(steps, 0)
            if isinstance(self.length, str):
                stacked = bind_dims(stacked, (self.length,) + stacked.shape[1:])
            self.cache[i] = stacked
        return self.cache[i]


def _copy_nodes(nodes, memo, T, suffix):
    for n in nodes:
        if id(n) in memo:
            continue
        if n.op == "placeholder" or not n.inputs:
            new = n if not suffix or not n.name or n.op == "placeholder" else \
                Node(n.op, (), n.params, n.shape, n.dtype, f"{n.name}{suffix}")
        elif n.op == "item":
            new = memo[id(n.inputs[0])].get(n.params["index"])
        elif n.op == "scan":
            new = _expand(n, [memo[id(i)] for i in n.inputs], T, suffix)
        else:
            inputs = tuple(memo[id(i)] for i in n.inputs)
            name = f"{n.name}{suffix}" if n.name and suffix else n.name
            if suffix or any(a is not b for a, b in zip(inputs, n.inputs)):
                new = Node(n.op, inputs, n.params, n.shape, n.dtype, name)
            else:
                new = n
        memo[id(n)] = new


def _expand(node: Node, inputs, T, suffix) -> _Unrolled:
    p = node.params
    body = p["body"]
    n_carry, n_xs = p["n_carry"], p["n_xs"]
    length = p["length"]
    if isinstance(length, str):
        if T is None:
            raise GraphError(f"unroll: a scan runs for the symbolic length {length!r}; "
                             f"pass T=... to say how many steps to unroll")
        steps = T
    else:
        steps = length
    if steps == 0:
        raise GraphError("unroll: cannot unroll a scan of zero steps")
    carry = list(inputs[:n_carry])
    xs = list(inputs[n_carry:n_carry + n_xs])
    consts = list(inputs[n_carry + n_xs:])
    if isinstance(length, str):  # pin the sequence length, checked when the graph runs
        xs = [bind_dims(x, (steps,) + x.shape[1:]) for x in xs]
    x_in = body.inputs[n_carry:n_carry + n_xs]
    n_ys = len(body.outputs) - n_carry
    ys = [[None] * steps for _ in range(n_ys)]
    hist = [[None] * steps for _ in range(n_carry)]
    for t in (range(steps - 1, -1, -1) if p["reverse"] else range(steps)):
        tag = f"{suffix}_{t + 1}"
        memo: dict[int, object] = {}
        for h, c in zip(hist, carry):
            h[t] = c
        for b, c in zip(body.inputs[:n_carry], carry):
            memo[id(b)] = c
        for b, x in zip(x_in, xs):
            index = (t,) + (slice(None),) * (x.ndim - 1)
            memo[id(b)] = make("slice", (x,), {"index": index, "in_shape": x.shape},
                               name=f"{b.name}{tag}")
        for b, c in zip(body.inputs[n_carry + n_xs:], consts):
            memo[id(b)] = c
        _copy_nodes(body.nodes, memo, T, tag)
        outs = [memo[id(y)] for y in body.outputs]
        carry = outs[:n_carry]
        for j in range(n_ys):
            ys[j][t] = outs[n_carry + j]
    return _Unrolled(carry, ys, hist, length, steps)

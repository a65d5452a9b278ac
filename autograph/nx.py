"""`to_networkx`: unrolled graphs as networkx digraphs, collapsed per cell and step.

Each scan is expanded into one copy of its body per step (as `unroll` does), and
every node is tagged with the step that made it (``time``, 1..T; None outside the
loops), the ``layer`` (0 for the first loop, one more for each loop it depends on)
and the ``pass`` (``"forward"``, or ``"backward"`` for the reverse scans that
`grad` builds). A value read at step t of a scan's stacked outputs (``hs[t]``)
points straight at that step's copy, so path counts follow the textbook's
pictures: in an Elman RNN there are exactly t paths from W to L_t.

By default the graph is collapsed to what a person draws: one node per cell per
step (``s_3``), the placeholders (weights, inputs, initial states) and the named
values outside the loops (``L_3``); the edges between them summarize the paths of
the full graph. ``collapse=False`` keeps every op.
"""
from __future__ import annotations

from . import api as ag
from .errors import GraphError
from .graph import Graph, Node, toposort


def _tags(values, T):
    """Expand the scans under `values`; return (new outputs, tags by node id)."""
    tags: dict[int, dict] = {}
    memo: dict[int, object] = {}
    depth: dict[int, int] = {}   # scan-dependence depth per original node id
    for n in toposort(values):
        d_in = max((depth.get(id(i), 0) for i in n.inputs), default=0)
        if n.op == "scan":
            depth[id(n)] = d_in + 1
            memo[id(n)] = _expand(n, [memo[id(i)] for i in n.inputs], T, d_in, tags)
            continue
        depth[id(n)] = d_in
        if n.op == "item":
            memo[id(n)] = memo[id(n.inputs[0])].get(n.params["index"])
            continue
        if n.op == "slice" and isinstance(memo.get(id(n.inputs[0])), _Stacked):
            st = memo[id(n.inputs[0])]
            t, rest = n.params["index"][0], n.params["index"][1:]
            if isinstance(t, int):
                got = st.steps[t]
                if any(r != slice(None) for r in rest):
                    got = got[rest]
                memo[id(n)] = got
                continue
        inputs = [memo[id(i)] for i in n.inputs]
        inputs = [i.node if isinstance(i, _Stacked) else i for i in inputs]
        if all(a is b for a, b in zip(inputs, n.inputs)):
            new = n
        else:
            new = Node(n.op, inputs, n.params, n.shape, n.dtype, n.name)
        memo[id(n)] = new
    out = [memo[id(v)] for v in values]
    return [o.node if isinstance(o, _Stacked) else o for o in out], tags


class _Stacked:
    """A scan output stacked over time, remembering its per-step values."""

    def __init__(self, steps, length):
        self.steps = steps
        node = ag.stack(steps, 0)
        self.node = ag.bind_dims(node, (length,) + node.shape[1:]) if isinstance(length, str) \
            else node


class _Loop:
    def __init__(self, finals, ys, hist, length):
        self.finals, self.ys, self.hist, self.length = finals, ys, hist, length
        self.n_carry = len(finals)
        self.cache: dict[int, object] = {}

    def get(self, i):
        if i < self.n_carry:
            return self.finals[i]
        if i not in self.cache:
            j = i - self.n_carry
            steps = self.ys[j] if j < len(self.ys) else self.hist[j - len(self.ys)]
            self.cache[i] = _Stacked(steps, self.length)
        return self.cache[i]


def _expand(node, inputs, T, layer, tags):
    p = node.params
    body: Graph = p["body"]
    n_carry, n_xs = p["n_carry"], p["n_xs"]
    steps = p["length"] if isinstance(p["length"], int) else T
    if steps is None:
        raise GraphError(f"to_networkx: a loop runs for the symbolic length {p['length']!r}; "
                         "pass T=... to say how many steps to draw")
    backward = any((b.name or "").startswith("ct_") for b in body.inputs)
    xs = inputs[n_carry:n_carry + n_xs]   # a _Stacked sequence gives its steps directly
    inputs = [i.node if isinstance(i, _Stacked) else i for i in inputs]
    carry = list(inputs[:n_carry])
    consts = inputs[n_carry + n_xs:]
    n_ys = len(body.outputs) - n_carry
    ys = [[None] * steps for _ in range(n_ys)]
    hist = [[None] * steps for _ in range(n_carry)]
    for t in (range(steps - 1, -1, -1) if p["reverse"] else range(steps)):
        tag = {"time": t + 1, "layer": layer, "pass": "backward" if backward else "forward"}
        memo: dict[int, Node] = {}
        for h, c in zip(hist, carry):
            h[t] = c
        for b, c in zip(body.inputs[:n_carry], carry):
            memo[id(b)] = c
        for b, x in zip(body.inputs[n_carry:n_carry + n_xs], xs):
            step_t = x.steps[t] if isinstance(x, _Stacked) else ag.getitem(x, t)
            sl = ag.named(step_t, f"{b.name}_{t + 1}") if step_t.op != "placeholder" else step_t
            tags[id(sl)] = dict(tag, role="input")
            memo[id(b)] = sl
        for b, c in zip(body.inputs[n_carry + n_xs:], consts):
            memo[id(b)] = c
        for n in body.nodes:
            if id(n) in memo:
                continue
            if n.op == "scan":
                raise GraphError("to_networkx: nested loops are not supported")
            if not n.inputs:
                memo[id(n)] = n
                continue
            memo[id(n)] = Node(n.op, [memo[id(i)] for i in n.inputs], n.params, n.shape,
                               n.dtype, f"{n.name}_{t + 1}" if n.name else None)
            tags[id(memo[id(n)])] = dict(tag, role="cell")
        outs = [memo[id(y)] for y in body.outputs]
        carry = outs[:n_carry]
        for j in range(n_ys):
            ys[j][t] = outs[n_carry + j]
    return _Loop(carry, ys, hist, p["length"])


def to_networkx(values, *, T: int | None = None, collapse: bool = True):
    """A `networkx.DiGraph` of the unrolled graph of `values` (a node, a list of
    nodes or a `Graph`), edges pointing from inputs to users.

    Node attributes: ``op``, ``shape``, ``dtype``, ``name``, ``label``, ``time``
    (1..T or None), ``layer``, ``pass`` and ``kind`` (``"param"``, ``"input"``,
    ``"cell"``, ``"value"``). `T` gives the number of steps of loops of symbolic
    length. Collapsed (default), a cell node stands for all the ops of one loop
    body at one step (attribute ``ops``: how many).
    """
    import networkx as nx

    if isinstance(values, Graph):
        values = list(values.outputs)
    single = isinstance(values, Node)
    values = [values] if single else list(values)
    outs, tags = _tags(values, T)
    order = toposort(outs)
    G = nx.DiGraph()
    for n in order:
        tag = tags.get(id(n), {})
        kind = "param" if n.op == "placeholder" else tag.get("role", "value")
        if kind == "param" and len(n.shape) and isinstance(n.shape[0], str):
            kind = "input"
        G.add_node(n.id, op=n.op, shape=tuple(n.shape or ()), dtype=n.dtype,
                   name=n.name, label=n.label, time=tag.get("time"), layer=tag.get("layer", 0),
                   kind=kind, **{"pass": tag.get("pass", "forward")})
        for i in n.inputs:
            G.add_edge(i.id, n.id)
    G.graph["outputs"] = [o.id for o in outs]
    return collapse_graph(G) if collapse else G


def collapse_graph(G):
    """One node per (loop, layer, step) group; placeholders, inputs sliced per step
    and named values outside loops stay; all other nodes are contracted into edges."""
    import networkx as nx

    def group(n):
        a = G.nodes[n]
        if a["kind"] == "cell":
            return ("cell", a["layer"], a["pass"], a["time"])
        if a["kind"] in ("param", "input") or a["name"] or n in G.graph["outputs"]:
            return ("node", n)
        return None

    H = nx.DiGraph()
    members: dict = {}
    for n in nx.topological_sort(G):
        g = group(n)
        if g is not None:
            members.setdefault(g, []).append(n)
    for g, ns in members.items():
        a = G.nodes[ns[0]]
        if g[0] == "cell":
            named = [G.nodes[m]["name"] for m in ns if G.nodes[m]["name"]]
            outs = [m for m in ns if not any(group(u) == g for u in G.successors(m))]
            named_outs = [G.nodes[m]["name"] for m in outs if G.nodes[m]["name"]]
            label = ",".join(named_outs) or (named[-1] if named else f"step {g[3]}")
            if g[2] == "backward":  # the reverse loop's step t: cotangents of step t
                label = f"backward step {g[3]}"
            H.add_node(g, label=label, kind="cell", time=g[3], layer=g[1], ops=len(ns),
                       op="cell", shape=G.nodes[outs[-1]]["shape"], **{"pass": g[2]})
        else:
            H.add_node(g, **{k: v for k, v in a.items()})
    # Edges: from each kept group, walk forward through contracted nodes.
    for g, ns in members.items():
        seen, stack = set(), [s for m in ns for s in G.successors(m)]
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            h = group(m)
            if h == g:
                continue
            if h is None:
                stack.extend(G.successors(m))
            else:
                H.add_edge(g, h)
    H.graph["outputs"] = [next(g for g, ns in members.items() if o in ns)
                          for o in G.graph["outputs"] if any(o in ns for ns in members.values())]
    return H


def find(G, label: str):
    """The node of `G` whose label is `label` (``"L_3"``, ``"W"``, ``"s_2"``)."""
    hits = [n for n, a in G.nodes(data=True) if a.get("label") == label]
    if not hits:
        raise KeyError(f"no node labelled {label!r}; labels: "
                       f"{sorted({str(a.get('label')) for _, a in G.nodes(data=True)})[:40]}")
    return hits[0]


def paths(G, source, target) -> list[list]:
    """Every path from `source` back to `target` (e.g. from L_t to W), as lists of
    node keys from the loss to the parameter: the routes along which the gradient
    of `source` reaches `target`. Labels are accepted for either end."""
    import networkx as nx

    s = find(G, source) if isinstance(source, str) else source
    t = find(G, target) if isinstance(target, str) else target
    return [list(reversed(p)) for p in nx.all_simple_paths(G, t, s)]


def path_labels(G, path) -> str:
    """A path as text: ``L_3 ← s_3 ← s_2 ← W``."""
    return " ← ".join(str(G.nodes[n].get("label")) for n in path)


__all__ = ["to_networkx", "collapse_graph", "paths", "find", "path_labels"]

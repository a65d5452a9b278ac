"""The one text printer: a graph shown like a jaxpr, one line per node."""
from __future__ import annotations

import re

import numpy as np

from .graph import Graph, Node, type_str

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_/']*$")


def _letters(k: int) -> str:
    s = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        s = chr(97 + r) + s
    return s


class _Names:
    """Readable, unique variable names: the user's names first, then a, b, c, …"""

    def __init__(self):
        self.of: dict[int, str] = {}
        self.taken: set[str] = set()
        self.counter = 0

    def __call__(self, n: Node) -> str:
        if id(n) in self.of:
            return self.of[id(n)]
        if n.name:
            base = n.name if _IDENT.match(n.name) else f"'{n.name}'"
            name, k = base, 1
            while name in self.taken:
                k += 1
                name = f"{base}.{k}"
        else:
            while True:
                name = _letters(self.counter)
                self.counter += 1
                if name not in self.taken:
                    break
        self.taken.add(name)
        self.of[id(n)] = name
        return name


def _fmt_value(v) -> str:
    if isinstance(v, slice):
        parts = ["" if x is None else str(x) for x in (v.start, v.stop, v.step)]
        return ":".join(parts[:2] if v.step is None else parts)
    if isinstance(v, tuple):
        inner = ", ".join(_fmt_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, np.ndarray):
        return np.array2string(v, threshold=6, precision=4, separator=",") if v.size <= 6 \
            else f"<array {type_str(v.shape, v.dtype.name)}>"
    return str(v)


def _fmt_params(n: Node) -> str:
    skip = {"body", "out_types", "in_shape"}
    if n.op == "placeholder":
        return ""
    items = [f"{k}={_fmt_value(v)}" for k, v in n.params.items() if k not in skip]
    return f"[{', '.join(items)}]" if items else ""


def _is_literal(n: Node) -> bool:
    return n.op == "constant" and n.shape == () and not n.name


def _literal(n: Node) -> str:
    v = n.params["value"].item()
    return repr(v) if isinstance(v, float) else str(v)


def format_graph(graph: Graph, indent: int = 0, names: _Names | None = None) -> str:
    """The graph as text: inputs, one ``name:type = op[params] args`` line per node,
    outputs; a scan shows its body graph indented under it."""
    names = names or _Names()
    pad = " " * indent

    def arg(x: Node) -> str:
        return _literal(x) if _is_literal(x) else names(x)

    ins = " ".join(f"{names(x)}:{x.type_str}" for x in graph.inputs)
    lines = [f"{pad}{{ lambda {ins} . let"]
    for n in graph.nodes:
        if n.op == "placeholder" or _is_literal(n):
            continue
        args = " ".join(arg(i) for i in n.inputs)
        if n.dtype == "tuple":
            lhs = names(n)
            lines.append(f"{pad}    {lhs}:tuple = {n.op}{_fmt_params(n)} {args}".rstrip())
            if n.op == "scan":
                lines.append(format_graph(n.params["body"], indent + 8, names))
        else:
            lines.append(f"{pad}    {names(n)}:{n.type_str} = {n.op}{_fmt_params(n)} {args}"
                         .rstrip())
    outs = ", ".join(arg(y) for y in graph.outputs)
    lines.append(f"{pad}  in ({outs}) }}")
    return "\n".join(lines)

"""Pictures of unrolled graphs and of BPTT gradient paths: SVG, DOT and HTML.

Everything here is plain text written by hand: SVG needs no system binaries, the
HTML page inlines its script and style (it works offline), and DOT is for people
who have graphviz. Layout: time runs left to right, layers bottom to top
(parameters at the bottom, then inputs, then the state, then the losses).

`Diagram` is the drawing: positioned nodes and styled edges, with a title and a
legend. `bptt_diagram(explanation, t)` draws the gradient of one loss term L_t on
the unrolled cell (explicit and implicit edges in different colours, widths
proportional to the gradient each edge carries); `graph_diagram(G)` draws any graph
from `autograph.nx.to_networkx`. `html_page` makes the interactive page.
"""
from __future__ import annotations

import json
from html import escape

import numpy as np

EXPLICIT = "#d95f02"   # orange: the explicit path (k = t)
IMPLICIT = "#1f78b4"   # blue: implicit paths (k < t), through earlier states
CELL_C = "#33a02c"     # green: the LSTM's c → c chain (diag f)
IDLE = "#c8c8c8"       # grey: edges that carry nothing for the chosen loss term

KIND_FILL = {"param": "#fdd9b5", "input": "#e0e0e0", "cell": "#cfe3f5", "loss": "#f6c9d0",
             "value": "#f6c9d0", "c": "#d4edcf"}


class Diagram:
    """Positioned nodes and styled edges; renders to SVG, DOT and HTML.

    nodes: id -> dict(x, y, label, kind, [title]); edges: dicts with ``src``,
    ``dst``, ``color``, ``width``, optional ``label`` and ``title`` (tooltip).
    """

    def __init__(self, nodes: dict, edges: list, title: str = "", legend=(), notes=()):
        self.nodes, self.edges = nodes, edges
        self.title, self.legend, self.notes = title, list(legend), list(notes)

    # ----------------------------------------------------------------- SVG

    def _size(self):
        xs = [n["x"] for n in self.nodes.values()]
        ys = [n["y"] for n in self.nodes.values()]
        return max(xs) + 90, max(ys) + 80 + 22 * len(self.legend) + 18 * len(self.notes)

    def svg(self, highlight=None) -> str:
        """The diagram as a standalone SVG document."""
        w, h = self._size()
        w = max(w, 560)
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
               f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="Helvetica, Arial, sans-serif">',
               '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" '
               'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" '
               'fill="#555"/></marker></defs>',
               f'<rect width="{w:.0f}" height="{h:.0f}" fill="white"/>',
               f'<text x="16" y="26" font-size="16" font-weight="bold">{escape(self.title)}</text>']
        for i, e in enumerate(self.edges):
            a, b = self.nodes[e["src"]], self.nodes[e["dst"]]
            x1, y1, x2, y2 = _clip(a, b)
            title = f'<title>{escape(e.get("title", ""))}</title>' if e.get("title") else ""
            out.append(f'<line class="edge" id="e{i}" data-src="{escape(str(e["src"]))}" '
                       f'data-dst="{escape(str(e["dst"]))}" x1="{x1:.1f}" y1="{y1:.1f}" '
                       f'x2="{x2:.1f}" y2="{y2:.1f}" stroke="{e["color"]}" '
                       f'stroke-width="{e["width"]:.2f}" stroke-linecap="round" '
                       f'marker-end="url(#arrow)">{title}</line>')
            if e.get("label"):
                mx, my = x1 + 0.8 * (x2 - x1), y1 + 0.8 * (y2 - y1)   # near the head
                out.append(f'<text x="{mx + 5:.1f}" y="{my + 4:.1f}" font-size="11" '
                           f'font-weight="bold" fill="{e["color"]}">{escape(e["label"])}</text>')
        for key, n in self.nodes.items():
            fill = KIND_FILL.get(n["kind"], "#eeeeee")
            r = 8 if n["kind"] in ("cell", "c") else 14
            tip = f'<title>{escape(n.get("title", n["label"]))}</title>'
            out.append(f'<g class="node" id="n-{escape(str(key))}" data-id="{escape(str(key))}" '
                       f'data-kind="{n["kind"]}">{tip}<rect x="{n["x"] - 30:.1f}" '
                       f'y="{n["y"] - 15:.1f}" width="60" height="30" rx="{r}" fill="{fill}" '
                       f'stroke="#444" stroke-width="1.2"/><text x="{n["x"]:.1f}" '
                       f'y="{n["y"] + 4:.1f}" font-size="12" text-anchor="middle">'
                       f'{escape(n["label"])}</text></g>')
        y = max(n["y"] for n in self.nodes.values()) + 50
        for color, width, text in self.legend:
            out.append(f'<line x1="20" y1="{y - 4}" x2="60" y2="{y - 4}" stroke="{color}" '
                       f'stroke-width="{width}"/><text x="70" y="{y}" font-size="12">'
                       f'{escape(text)}</text>')
            y += 22
        for text in self.notes:
            out.append(f'<text x="20" y="{y}" font-size="11" fill="#444">{escape(text)}</text>')
            y += 18
        out.append("</svg>")
        return "\n".join(out)

    def _repr_svg_(self):
        return self.svg()

    # ----------------------------------------------------------------- DOT

    def dot(self) -> str:
        """The diagram in graphviz's DOT language, positions pinned (``neato -n``)."""
        ids = {k: f"n{i}" for i, k in enumerate(self.nodes)}
        out = ["digraph bptt {", f'  label="{_dq(self.title)}"; labelloc=t;',
               '  node [shape=box, style="rounded,filled", fontname=Helvetica];']
        for k, n in self.nodes.items():
            out.append(f'  {ids[k]} [label="{_dq(n["label"])}", fillcolor="'
                       f'{KIND_FILL.get(n["kind"], "#eeeeee")}", pos="{n["x"]:.0f},'
                       f'{-n["y"]:.0f}!"];')
        for e in self.edges:
            lab = f', label="{_dq(e["label"])}"' if e.get("label") else ""
            out.append(f'  {ids[e["src"]]} -> {ids[e["dst"]]} [color="{e["color"]}", '
                       f'penwidth={e["width"]:.2f}{lab}];')
        out.append("}")
        return "\n".join(out)

    def save(self, path) -> None:
        """Write SVG, DOT or HTML, chosen by the file's extension."""
        path = str(path)
        text = self.dot() if path.endswith(".dot") else \
            self.html() if path.endswith((".html", ".htm")) else self.svg()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    # ----------------------------------------------------------------- HTML

    def html(self, paths: dict | None = None) -> str:
        """A self-contained page (inline script and style, no network): click a loss
        node, then a parameter node, and the paths between them light up, listed
        with their numbers. `paths` maps "loss|param" to a list of
        ``{"nodes": [...], "value": float, "text": str}``; without it the page
        finds the paths itself and lists them unnumbered."""
        data = {"edges": [{"src": str(e["src"]), "dst": str(e["dst"])} for e in self.edges],
                "nodes": {str(k): {"kind": n["kind"], "label": n["label"]}
                          for k, n in self.nodes.items()},
                "paths": paths or {}}
        return _PAGE.replace("%TITLE%", escape(self.title)).replace(
            "%SVG%", self.svg()).replace("%DATA%", json.dumps(data).replace("</", "<\\/"))

    def _repr_html_(self):
        return self.svg()


def _dq(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _clip(a, b):
    """End points of an edge between two 60×30 boxes, stopping at their borders."""
    x1, y1, x2, y2 = a["x"], a["y"], b["x"], b["y"]
    dx, dy = x2 - x1, y2 - y1
    d = max(abs(dx) / 30, abs(dy) / 15, 1e-9)
    return x1 + dx / d, y1 + dy / d, x2 - dx / d * 1.1, y2 - dy / d * 1.1


def _width(v, vmax, wmax=9.0):
    return 0.6 if not vmax > 0 else 0.6 + wmax * float(v) / vmax


# ----------------------------------------------------------------------------- BPTT

class PathModel:
    """The unrolled cell of a `BPTTExplanation` as a small path graph.

    Nodes are ``(component, k)`` (s_k, or h_k and c_k for the LSTM), ``("L", t)``
    and ``("W",)``; an edge carries a block of a one-step Jacobian, of the
    explicit derivative ∂⁺s_k/∂W, or ∂L_t/∂s_t. The value of a path from L_t to W
    is the product along it (a W-shaped matrix): summed over all paths it is
    ∂L_t/∂W, and for a one-component state the path through step k is exactly the
    term ∂L_t/∂W^(k).
    """

    def __init__(self, ex):
        self.ex = ex
        self.comps = ex.state_names
        self.H = ex.hidden_size
        self.y = 0   # cells emit their first component (h) as the output

    def _blk(self, j, out, inp):
        i, m, H = self.comps.index(out), self.comps.index(inp), self.H
        return self.ex.jacobians[j - 1][:, i * H:(i + 1) * H, m * H:(m + 1) * H]

    def paths(self, t: int):
        """Every path from L_t to W: lists of (component, step) from step t back to
        the step k whose copy W^(k) it reaches, with its value (a W-shaped array)."""
        ex, H, y = self.ex, self.H, self.y
        g = ex.dL_ds[t - 1, t][:, y * H:(y + 1) * H]      # [B, H], enters via s_t's output
        out = []
        stack = [([(self.comps[y], t)], g)]
        while stack:
            route, g = stack.pop()
            comp, k = route[-1]
            i = self.comps.index(comp)
            e = ex.explicit_jacobians[k - 1][:, i * H:(i + 1) * H]
            out.append((route, np.tensordot(g, e, axes=([0, 1], [0, 1]))))
            if k > 1:
                for prev in self.comps:
                    stack.append((route + [(prev, k - 1)],
                                  np.einsum("bi,bij->bj", g, self._blk(k, comp, prev))))
        out.sort(key=lambda r: (-r[0][-1][1], len(r[0])))
        return out


def bptt_diagram(ex, t: int | None = None) -> Diagram:
    """The unrolled cell with the gradient of L_t drawn on it.

    Orange: the explicit edge W → s_t (k = t). Blue: the implicit edges, W → s_k
    for k < t and the state edges that carry the gradient back in time. Green (LSTM):
    the c → c chain. Grey: edges that carry nothing to L_t. Widths are proportional
    to the norm of the gradient each edge carries; W-edges are labelled with
    ‖∂L_t/∂W^(k)‖ (for the LSTM, its part entering through that component).
    """
    T = ex.T
    t = T if t is None else t
    comps, H = ex.state_names, ex.hidden_size
    dx = 110
    row = {"W": 110 + 80 * (len(comps) + 2), "x": 70 + 80 * (len(comps) + 1)}
    for i, c in enumerate(comps):   # the output component (h) on top, next to the losses
        row[c] = 70 + 80 * (i + 1)
    row["L"] = 70
    nodes = {"W": {"x": 60 + dx * (T + 1) / 2, "y": row["W"], "label": ex.param, "kind": "param",
                   "title": f"the parameter {ex.param}, shared by every step"}}
    for k in range(T + 1):
        x = 60 + dx * k
        for c in comps:
            nodes[f"{c}{k}"] = {"x": x, "y": row[c], "label": f"{c}_{k}",
                                "kind": "c" if c == "c" else "cell",
                                "title": f"state {c}_{k}" + (" (initial)" if k == 0 else "")}
        if k:
            nodes[f"x{k}"] = {"x": x - 45, "y": row["x"], "label": f"x_{k}", "kind": "input"}
            nodes[f"L{k}"] = {"x": x, "y": row["L"], "label": f"L_{k}", "kind": "loss",
                              "title": f"loss term L_{k} = {ex.loss_values[k - 1]:.4g}"}
    # gradient carried along each edge, for L_t
    flow: dict = {}
    via = {c: ex.contribution_via(c)[t - 1] for c in comps}
    for k in range(1, T + 1):
        for c in comps:
            flow[("W", f"{c}{k}")] = float(np.linalg.norm(via[c][k - 1])) if k <= t else 0.0
        for c in comps:
            i = comps.index(c)
            g = ex.dL_ds[t - 1, k][:, i * H:(i + 1) * H] if k <= t else 0 * ex.dL_ds[0, 0][:, :H]
            for p in comps:
                m = comps.index(p)
                blk = ex.jacobians[k - 1][:, i * H:(i + 1) * H, m * H:(m + 1) * H]
                flow[(f"{p}{k - 1}", f"{c}{k}")] = float(np.linalg.norm(
                    np.einsum("bi,bij->bj", g, blk))) if k <= t else 0.0
    g_t = float(np.linalg.norm(ex.dL_ds[t - 1, t][:, :H]))
    vmax_w = max(v for (a, _), v in flow.items() if a == "W") or 1.0
    vmax_s = max([v for (a, _), v in flow.items() if a != "W"] + [g_t]) or 1.0
    edges = []
    for k in range(1, T + 1):
        edges.append({"src": f"x{k}", "dst": f"{comps[-1]}{k}", "color": IDLE, "width": 0.8})
        edges.append({"src": f"{comps[0]}{k}", "dst": f"L{k}",
                      "color": EXPLICIT if k == t else IDLE,
                      "width": _width(g_t, vmax_s) if k == t else 0.8,
                      "title": f"‖∂L_{t}/∂{comps[0]}_{t}‖ = {g_t:.3g}" if k == t else ""})
        for c in comps:
            for p in comps:
                v = flow[(f"{p}{k - 1}", f"{c}{k}")]
                color = (CELL_C if (p == c == "c") else IMPLICIT) if v > 0 else IDLE
                edges.append({"src": f"{p}{k - 1}", "dst": f"{c}{k}", "color": color,
                              "width": _width(v, vmax_s) if v > 0 else 0.8,
                              "title": f"gradient of L_{t} carried from {c}_{k} back to "
                                       f"{p}_{k - 1}: ‖·‖ = {v:.3g}"})
            v = flow[("W", f"{c}{k}")]
            color = IDLE if v == 0 else EXPLICIT if k == t else IMPLICIT
            edges.append({"src": "W", "dst": f"{c}{k}", "color": color,
                          "width": _width(v, vmax_w) if v > 0 else 0.8,
                          "label": f"{v:.2g}" if v > 0 else "",
                          "title": f"‖∂L_{t}/∂{ex.param}^({k})‖ through {c}_{k} = {v:.3g}"})
    legend = [(EXPLICIT, 4, f"explicit: {ex.param} → s_{t} → L_{t} (k = t), ∂⁺s_{t}/∂{ex.param}"),
              (IMPLICIT, 4, f"implicit: {ex.param} → s_k (k < {t}) and back through the states "
                            f"∂s_j/∂s_(j−1)")]
    if "c" in comps:
        legend.append((CELL_C, 4, "the c → c chain: ∂c_j/∂c_(j−1) = diag(f_j), "
                                  "the uninterrupted gradient flow"))
    legend.append((IDLE, 1, f"carries nothing to L_{t}"))
    notes = [f"Edge width ∝ norm of the gradient of L_{t} the edge carries; numbers on "
             f"{ex.param}-edges are ‖∂L_{t}/∂{ex.param}^(k)‖.",
             f"Sum of all terms = ∂L_{t}/∂{ex.param}: "
             f"‖·‖ = {np.linalg.norm(ex.contributions[t - 1].sum(0)):.3g}. "
             f"Time runs left to right; layers bottom ({ex.param}, inputs) to top (losses)."]
    title = (f"∂L_{t}/∂{ex.param} in the unrolled {ex.cell} cell: "
             f"one path per copy {ex.param}^(k)" if len(comps) == 1 else
             f"∂L_{t}/∂{ex.param} in the unrolled {ex.cell} cell: paths through h and c")
    d = Diagram(nodes, edges, title, legend, notes)
    d.explanation = ex
    return d


def html_page(ex, path=None) -> str:
    """The interactive page for an explanation: click a loss node L_t, then the
    parameter node, and every path between them is highlighted and listed with
    its number, ‖gradient of L_t along the path‖ (for the Elman cell exactly the
    terms ‖∂L_t/∂W^(k)‖). Paths of every L_t are precomputed here."""
    d = bptt_diagram(ex, ex.T)
    for e in d.edges:   # the page colours paths itself; start neutral
        if e["src"] != "x" and not str(e["src"]).startswith("x"):
            e["color"], e["width"], e["label"] = "#9a9a9a", 1.4, ""
    d.title = (f"BPTT paths of the {ex.cell} cell (T = {ex.T}): click a loss L_t, "
               f"then {ex.param}")
    d.legend = [(EXPLICIT, 4, "explicit path (k = t)"), (IMPLICIT, 4, "implicit paths (k < t)")]
    d.notes = ["Each path is one term of the chain rule; their values add up to "
               f"∂L_t/∂{ex.param}. Hover an edge or node for details."]
    model = PathModel(ex)
    data = {}
    for t in range(1, ex.T + 1):
        rows = []
        for route, value in model.paths(t):
            k = route[-1][1]
            ids = [f"L{t}"] + [f"{c}{j}" for c, j in route] + ["W"]
            rows.append({"nodes": ids, "value": float(np.linalg.norm(value)), "k": k,
                         "explicit": len(route) == 1,
                         "text": " ← ".join([f"L_{t}"] + [f"{c}_{j}" for c, j in route]
                                            + [f"{ex.param}^({k})"])})
        data[f"L{t}|W"] = rows
    page = d.html(data)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    return page


# ----------------------------------------------------------------------------- graphs

def graph_diagram(G, title: str = "unrolled graph") -> Diagram:
    """Any graph from `autograph.nx.to_networkx`, laid out with time left to right
    and, bottom to top, parameters, inputs, cells by layer (forward, then
    backward), and values outside the loops."""
    import networkx as nx

    layers = sorted({(a.get("pass") == "backward", a.get("layer") or 0)
                     for _, a in G.nodes(data=True) if a.get("kind") == "cell"})
    n_rows = len(layers) + 3
    y_of = {key: 60 + 100 * (n_rows - 1 - i - 2) for i, key in enumerate(layers)}
    y_param, y_input, y_value = 60 + 100 * (n_rows - 1), 60 + 100 * (n_rows - 2), 40
    times = [a["time"] for _, a in G.nodes(data=True) if a.get("time")]
    T = max(times) if times else 1
    nodes, count = {}, {}
    order = list(nx.topological_sort(G))
    for n in order:
        a = G.nodes[n]
        kind = a.get("kind", "value")
        if kind == "cell":
            y = y_of[(a.get("pass") == "backward", a.get("layer") or 0)]
            x = 80 + 110 * a["time"]
        elif kind == "input" and a.get("time"):   # x_t: just below its layer's cells
            y = y_of.get((False, a.get("layer") or 0), y_input) + 44
            x = 80 + 110 * a["time"] - 50
        elif kind in ("param", "input"):
            y = y_param
            count[y] = count.get(y, 0) + 1
            x = 80 + 110 * (count[y] - 1) * max(1.0, (T + 1) / max(1, _n_kind(G, kind)))
        else:
            preds = [nodes[str(p)]["x"] for p in G.predecessors(n) if str(p) in nodes]
            x = float(np.mean(preds)) if preds else 80
            y = y_value
        nodes[str(n)] = {"x": x, "y": y + 20, "label": str(a.get("label")),
                         "kind": "loss" if kind == "value" else kind,
                         "title": f"{a.get('label')}: {a.get('op')} {list(a.get('shape') or ())}"}
    # values stacked on one row may collide: spread equal x's
    seen = {}
    for k, v in nodes.items():
        key = (round(v["x"]), v["y"])
        if key in seen:
            v["y"] -= 36 * seen[key]
        seen[key] = seen.get(key, 0) + 1
    edges = []
    for a, b in G.edges():
        ka, kb = G.nodes[a].get("kind"), G.nodes[b].get("kind")
        color = IMPLICIT if ka == kb == "cell" else "#f4b183" if ka == "param" else "#777777"
        edges.append({"src": str(a), "dst": str(b), "color": color,
                      "width": 2.2 if ka == kb == "cell" else 0.7 if ka == "param" else 1.2})
    legend = [(IMPLICIT, 3, "state → state (the recurrence: implicit paths)"),
              ("#f4b183", 2, "parameter → cell (explicit dependence at each step)"),
              ("#777777", 2, "other data flow")]
    return Diagram(nodes, edges, title, legend,
                   ["Time runs left to right; bottom to top: parameters, inputs, "
                    "cells by layer, values (losses)."])


def _n_kind(G, kind):
    return sum(1 for _, a in G.nodes(data=True) if a.get("kind") == kind and not a.get("time"))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; margin: 16px; color: #222; }
#help { margin: 8px 0; font-size: 14px; }
.node { cursor: pointer; }
.node.selected rect { stroke: #e7298a; stroke-width: 3; }
.node.onpath rect { stroke: #000; stroke-width: 2.2; }
.edge.dim { opacity: 0.15; }
table { border-collapse: collapse; font-size: 13px; margin-top: 8px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-family: monospace; }
tr.explicit td:first-child { border-left: 6px solid #d95f02; }
tr.implicit td:first-child { border-left: 6px solid #1f78b4; }
</style></head><body>
<div id="help">Click a loss node (pink, top row), then the parameter (orange, bottom).
The paths between them are highlighted: orange the explicit one, blue the implicit ones.
Edge width is proportional to the gradient along the path. <span id="status">Selected: nothing.</span></div>
<div id="figure">%SVG%</div>
<div id="result"></div>
<script id="data" type="application/json">%DATA%</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById("data").textContent);
  var loss = null, param = null;
  function el(id) { return document.getElementById("n-" + id); }
  function findPaths(src, dst) {          // every path from src back to dst
    var into = {}, out = [];
    data.edges.forEach(function (e) { (into[e.dst] = into[e.dst] || []).push(e.src); });
    (function walk(node, route) {
      if (node === dst) { out.push({nodes: route.slice(), value: null, text: route.join(" <- ")}); return; }
      (into[node] || []).forEach(function (p) { if (route.indexOf(p) < 0) { route.push(p); walk(p, route); route.pop(); } });
    })(src, [src]);
    return out;
  }
  function show() {
    document.querySelectorAll(".node").forEach(function (n) { n.classList.remove("selected", "onpath"); });
    var edges = document.querySelectorAll(".edge");
    edges.forEach(function (e) { e.classList.remove("dim"); e.setAttribute("stroke", "#9a9a9a"); e.setAttribute("stroke-width", "1.4"); });
    if (loss) el(loss).classList.add("selected");
    if (param) el(param).classList.add("selected");
    document.getElementById("status").textContent = "Selected: " +
      (loss ? data.nodes[loss].label : "no loss") + ", " + (param ? data.nodes[param].label : "no parameter") + ".";
    var box = document.getElementById("result");
    if (!loss || !param) { box.innerHTML = ""; return; }
    var paths = data.paths[loss + "|" + param] || findPaths(loss, param);
    var vmax = 0;
    paths.forEach(function (p) { if (p.value !== null && p.value > vmax) vmax = p.value; });
    edges.forEach(function (e) { e.classList.add("dim"); });
    paths.forEach(function (p) {
      var color = p.explicit ? "#d95f02" : "#1f78b4";
      var w = (p.value !== null && vmax > 0) ? 1 + 9 * p.value / vmax : 3;
      for (var i = 0; i + 1 < p.nodes.length; i++) {
        var a = p.nodes[i + 1], b = p.nodes[i];
        edges.forEach(function (e) {
          if (e.dataset.src === a && e.dataset.dst === b) {
            e.classList.remove("dim");
            if (p.explicit || e.getAttribute("stroke") !== "#d95f02") e.setAttribute("stroke", color);
            if (parseFloat(e.getAttribute("stroke-width")) < w) e.setAttribute("stroke-width", w.toFixed(2));
          }
        });
        el(p.nodes[i]).classList.add("onpath");
      }
    });
    var total = 0;
    var rows = paths.map(function (p, i) {
      if (p.value !== null) total += p.value;
      return "<tr class='path " + (p.explicit ? "explicit" : "implicit") + "'><td>" + (i + 1) + "</td><td>" +
        (p.explicit ? "explicit" : "implicit") + "</td><td>" + p.text + "</td><td class='num'>" +
        (p.value === null ? "" : p.value.toExponential(3)) + "</td></tr>";
    });
    box.innerHTML = "<p id='count'>" + paths.length + " path" + (paths.length === 1 ? "" : "s") + " from " +
      data.nodes[loss].label + " to " + data.nodes[param].label + ".</p>" +
      "<table><tr><th>#</th><th>kind</th><th>path (gradient flows right to left)</th>" +
      "<th>norm of its term</th></tr>" + rows.join("") + "</table>";
  }
  document.querySelectorAll(".node").forEach(function (n) {
    n.addEventListener("click", function () {
      var id = n.dataset.id, kind = data.nodes[id].kind;
      if (kind === "loss" || kind === "value") loss = (loss === id ? null : id);
      else if (kind === "param") param = (param === id ? null : id);
      show();
    });
  });
  show();
})();
</script></body></html>
"""

"""to_networkx, path queries and drawings (SVG, DOT, HTML); the HTML page is also
opened and clicked in headless chromium."""
import os
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import autograph as ag
import rnn
from autograph.draw import bptt_diagram, graph_diagram, html_page
from autograph.nx import path_labels, paths, to_networkx
from rnn.bptt import demo_cell, explain_gradient


def _elman_losses(T=4, layers=1):
    net = rnn.RNN("elman", 2, 3, num_layers=layers, name="rnn").init(0)
    x = ag.placeholder("x", ("T", "B", 2))
    hs, _ = net(x)
    Ls = [ag.sum(hs[t]).named(f"L_{t + 1}") for t in range(T)]
    L = Ls[0]
    for term in Ls[1:]:
        L = L + term
    return net, x, L.named("L"), Ls


def test_vanilla_rnn_has_t_paths_from_L_t_to_W():
    net, _, L, Ls = _elman_losses(T=5)
    G = to_networkx([L] + Ls, T=5)
    cells = [a for _, a in G.nodes(data=True) if a["kind"] == "cell"]
    assert sorted(a["time"] for a in cells) == [1, 2, 3, 4, 5]
    assert {a["label"] for a in cells} == {f"s_{t}" for t in range(1, 6)}
    for t in range(1, 6):
        found = paths(G, f"L_{t}", "rnn.l0.W")
        assert len(found) == t
        texts = sorted(path_labels(G, p) for p in found)
        assert f"L_{t} ← s_{t} ← rnn.l0.W" in texts       # the explicit path
    a = G.nodes[next(n for n, a in G.nodes(data=True) if a["label"] == "rnn.l0.W")]
    assert a["kind"] == "param" and a["shape"] == (3, 3) and a["op"] == "placeholder"


def test_expanded_view_and_layers_and_backward():
    net, x, L, Ls = _elman_losses(T=3, layers=2)
    full = to_networkx(L, T=3, collapse=False)
    small = to_networkx(L, T=3)
    assert len(full) > 2 * len(small)
    assert {a["layer"] for _, a in small.nodes(data=True) if a["kind"] == "cell"} == {0, 1}
    dW = ag.grad(L, net.layers[0][0].p("W"))
    G = to_networkx([L, dW], T=3)
    passes = {a["pass"] for _, a in G.nodes(data=True) if a["kind"] == "cell"}
    assert passes == {"forward", "backward"}
    ops = {a["op"] for _, a in full.nodes(data=True)}
    assert {"tanh", "matmul", "placeholder"} <= ops
    with pytest.raises(ag.GraphError, match="T=..."):
        to_networkx(L)


def _svg_ok(text):
    root = ET.fromstring(text)
    assert root.tag.endswith("svg")
    return root


def test_bptt_diagram_svg_dot(tmp_path):
    cell = demo_cell("elman", 2, 3, scale=0.8)
    ex = explain_gradient(cell, np.random.default_rng(0).standard_normal((4, 1, 2)),
                          state0=(0.3 * np.ones((1, 3)),))
    d = bptt_diagram(ex, 3)
    svg = d.svg()
    _svg_ok(svg)
    assert "explicit" in svg and "implicit" in svg and "L_3" in svg
    # edge widths ∝ the term norms: W → s_k for k ≤ 3
    widths = {}
    for m in re.finditer(r'data-src="W" data-dst="s(\d)"[^>]*stroke="([^"]+)" '
                         r'stroke-width="([\d.]+)"', svg):
        widths[int(m.group(1))] = (m.group(2), float(m.group(3)))
    assert widths[3][0] == "#d95f02" and widths[2][0] == "#1f78b4" and widths[4][1] < 1
    n = ex.contribution_norms[2, :3]
    w = np.array([widths[k][1] for k in (1, 2, 3)]) - 0.6
    assert np.allclose(w / w.max(), n / n.max(), atol=1e-2)
    dot = d.dot()
    assert dot.startswith("digraph") and "->" in dot
    for ext in ("svg", "dot", "html"):
        d.save(tmp_path / f"g.{ext}")
        assert (tmp_path / f"g.{ext}").stat().st_size > 500
    assert ex._repr_html_().count("<svg") == 1 and d._repr_svg_().startswith("<svg")
    lstm = explain_gradient(demo_cell("lstm", 2, 3, forget_bias=2.0),
                            np.ones((3, 1, 2)))
    svg = bptt_diagram(lstm).svg()
    _svg_ok(svg)
    assert "c_2" in svg and "diag(f_j)" in svg


def test_graph_diagram_of_networkx():
    _, _, L, Ls = _elman_losses(T=3, layers=2)
    d = graph_diagram(to_networkx([L] + Ls, T=3), "two layers")
    _svg_ok(d.svg())
    ys = {d.nodes[k]["label"]: d.nodes[k]["y"] for k in d.nodes}
    xs = {d.nodes[k]["label"]: d.nodes[k]["x"] for k in d.nodes}
    assert xs["s_1"] < xs["s_2"] < xs["s_3"]                 # time left → right
    assert ys["rnn.l0.W"] > ys["x_1"]                         # params at the bottom


def test_html_is_self_contained():
    ex = explain_gradient(demo_cell("elman", 2, 3), np.ones((3, 1, 2)))
    page = html_page(ex)
    assert "<script" in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page and not re.search(r"<(script|img|link)[^>]*\s(src|href)=", page)


def _chromium():
    for exe in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(exe):
            return exe
    return shutil.which("chromium")


def test_html_page_in_headless_chromium(tmp_path):
    """Open the page in a real browser, click L_3 and W, and read the listed paths."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    ex = explain_gradient(demo_cell("elman", 2, 3, scale=0.8),
                          np.random.default_rng(1).standard_normal((4, 1, 2)),
                          state0=(0.3 * np.ones((1, 3)),))
    page = tmp_path / "bptt.html"
    html_page(ex, page)
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1100,900"):
        opts.add_argument(a)
    opts.binary_location = _chromium()
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(page.as_uri())
        driver.find_element(By.ID, "n-L3").click()
        driver.find_element(By.ID, "n-W").click()
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.path")
        assert len(rows) == 3
        assert "3 paths" in driver.find_element(By.ID, "count").text
        kinds = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
        assert kinds.count("explicit") == 1
        numbers = sorted(float(r.find_elements(By.TAG_NAME, "td")[3].text) for r in rows)
        assert np.allclose(numbers, sorted(ex.contribution_norms[2, :3]), rtol=1e-3)
        lit = [e for e in driver.find_elements(By.CSS_SELECTOR, "line.edge")
               if "dim" not in (e.get_attribute("class") or "")]
        assert {(e.get_attribute("data-src"), e.get_attribute("data-dst")) for e in lit} == {
            ("W", "s1"), ("W", "s2"), ("W", "s3"), ("s1", "s2"), ("s2", "s3"), ("s3", "L3")}
        driver.save_screenshot(str(tmp_path / "clicked.png"))
        assert (tmp_path / "clicked.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_cli_explain_and_draw(tmp_path, capsys):
    from autograph.cli import main
    assert main(["explain", "--cell", "lstm", "--forget-bias", "5", "-T", "5", "--truncate",
                 "2", "--clip", "0.1", "--png", str(tmp_path / "h.png"),
                 "--svg", str(tmp_path / "p.svg")]) == 0
    out = capsys.readouterr().out
    assert "explicit" in out and "c-only chain" in out and "truncated BPTT (K = 2)" in out
    assert (tmp_path / "h.png").stat().st_size > 10_000
    _svg_ok((tmp_path / "p.svg").read_text())
    for name, extra in (("a.html", []), ("b.dot", ["--cell", "gru"]),
                        ("c.svg", ["--graph", "--layers", "2", "-T", "3"])):
        assert main(["draw", str(tmp_path / name)] + extra) == 0
        assert (tmp_path / name).stat().st_size > 500
    import matplotlib.pyplot as plt
    plt.close("all")

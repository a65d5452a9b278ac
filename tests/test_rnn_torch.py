"""rnn vs PyTorch: recurrent layers (outputs, final states, every gradient), masks vs
packed sequences, optimizers and gradient clipping.

float64 comparisons are held to 1e-12 (abs and rel): both sides compute the same
formulas, so they differ by round-off only (measured: ≤ ~1e-14). float32 is held to
FLOAT32_TOL = 1e-5 (abs and rel), which is ~100× float32's epsilon and covers the
different summation orders of two float32 implementations over a few time steps.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import autograph as ag  # noqa: E402
import rnn  # noqa: E402

TOL = dict(rtol=1e-12, atol=1e-12)
FLOAT32_TOL = dict(rtol=1e-5, atol=1e-5)
T, B, D, H = 5, 3, 4, 6

KINDS = [("elman", "tanh"), ("elman", "relu"), ("lstm", None), ("gru", None)]
KIND_IDS = ["elman-tanh", "elman-relu", "lstm", "gru"]


def torch_model(kind, nonlinearity, layers, bi, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    if kind == "elman":
        m = torch.nn.RNN(D, H, num_layers=layers, bidirectional=bi, nonlinearity=nonlinearity)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](D, H, num_layers=layers,
                                                                bidirectional=bi)
    return m.to(dtype)


def our_model(kind, nonlinearity, layers, bi, dtype="float64"):
    opts = {"activation": nonlinearity} if kind == "elman" else {}
    return rnn.RNN(kind, D, H, num_layers=layers, bidirectional=bi, dtype=dtype, **opts)


def run_both(kind, nonlinearity, layers, bi, with_state0, dtype="float64", seed=0):
    """Build both models with the same weights, run a random batch through both and
    backpropagate the same random linear functional of (outputs, final states).
    Returns (ours, theirs): dicts with y, h_n, [c_n], dx, dh0, [dc0], grads (torch names)."""
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    tm = torch_model(kind, nonlinearity, layers, bi, tdtype, seed)
    m = our_model(kind, nonlinearity, layers, bi, dtype)
    m.params_from_torch(tm.state_dict())
    nstate = 2 if kind == "lstm" else 1
    ncells = layers * (2 if bi else 1)

    rng = np.random.default_rng(seed + 100)
    xv = rng.standard_normal((T, B, D)).astype(dtype)
    s0v = [rng.standard_normal((ncells, B, H)).astype(dtype) for _ in range(nstate)]
    w_y = rng.standard_normal((T, B, H * (2 if bi else 1))).astype(dtype)
    w_s = [rng.standard_normal((ncells, B, H)).astype(dtype) for _ in range(nstate)]

    # ours
    x = ag.placeholder("x", (T, B, D), dtype)
    s0 = [[ag.placeholder(f"s0_{j}_{i}", (B, H), dtype) for j in range(nstate)]
          for i in range(ncells)]
    hs, finals = m(x, state0=[tuple(s) for s in s0] if with_state0 else None)
    assert len(finals) == ncells
    loss = ag.sum(hs * w_y)
    for i, f in enumerate(finals):
        assert len(f) == nstate
        for j in range(nstate):
            loss = loss + ag.sum(f[j] * w_s[j][i])
    nodes = m.nodes()
    flat_s0 = [p for s in s0 for p in s] if with_state0 else []
    wrt = [x] + flat_s0 + list(nodes.values())
    grads = ag.grad(loss, wrt)
    outs = [hs] + [f[j] for j in range(nstate) for f in finals] + grads
    fn = ag.function([x] + flat_s0 + list(nodes.values()), outs)
    s0_args = [s0v[j][i] for i in range(ncells) for j in range(nstate)] if with_state0 else []
    res = fn(xv, *s0_args, *m.state_dict().values())
    ours = {"y": res[0]}
    k = 1
    for j in range(nstate):
        ours[f"s{j}_n"] = np.stack(res[k:k + ncells])
        k += ncells
    ours["dx"] = res[k]
    k += 1
    if with_state0:
        g0 = res[k:k + len(flat_s0)]
        k += len(flat_s0)
        for j in range(nstate):
            ours[f"ds{j}_0"] = np.stack([g0[i * nstate + j] for i in range(ncells)])
    ours["grads"] = m.params_to_torch(dict(zip(nodes, res[k:])))
    assert k + len(nodes) == len(res)

    # theirs
    xt = torch.tensor(xv, requires_grad=True)
    s0t = [torch.tensor(v, requires_grad=True) for v in s0v]
    if with_state0:
        y, hn = tm(xt, tuple(s0t) if kind == "lstm" else s0t[0])
    else:
        y, hn = tm(xt)
    hn = hn if kind == "lstm" else (hn,)
    tl = (y * torch.tensor(w_y)).sum() + sum((h * torch.tensor(w)).sum() for h, w in zip(hn, w_s))
    tl.backward()
    theirs = {"y": y.detach().numpy(), "dx": xt.grad.numpy()}
    for j in range(nstate):
        theirs[f"s{j}_n"] = hn[j].detach().numpy()
        if with_state0:
            theirs[f"ds{j}_0"] = s0t[j].grad.numpy()
    theirs["grads"] = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    return ours, theirs


def max_diff(ours, theirs):
    d = 0.0
    for k, v in theirs.items():
        if k == "grads":
            assert set(ours[k]) == set(v)
            d = max([d] + [float(np.abs(ours[k][n] - v[n]).max()) for n in v])
        else:
            d = max(d, float(np.abs(ours[k] - v).max()))
    return d


def assert_match(ours, theirs, tol):
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if k == "grads":
            assert set(ours[k]) == set(v), "parameter names differ from torch's"
            for n in v:
                assert ours[k][n].shape == v[n].shape, n
                np.testing.assert_allclose(ours[k][n], v[n], err_msg=f"grad {n}", **tol)
        else:
            assert ours[k].shape == v.shape, k
            np.testing.assert_allclose(ours[k], v, err_msg=k, **tol)


@pytest.mark.parametrize("with_state0", [False, True], ids=["zero-state", "state0"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind,nonlinearity", KINDS, ids=KIND_IDS)
def test_matches_torch_float64(kind, nonlinearity, layers, bi, with_state0):
    seed = 17 * layers + 3 * bi + 7 * with_state0 + KIND_IDS.index(
        kind if nonlinearity is None else f"{kind}-{nonlinearity}")
    ours, theirs = run_both(kind, nonlinearity, layers, bi, with_state0, seed=seed)
    assert_match(ours, theirs, TOL)
    # sanity: the functional is not degenerate (gradients are not all zero)
    assert all(np.abs(g).max() > 0 for g in theirs["grads"].values())


@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind,nonlinearity", KINDS, ids=KIND_IDS)
def test_matches_torch_float32(kind, nonlinearity, bi):
    ours, theirs = run_both(kind, nonlinearity, 2, bi, True, dtype="float32", seed=5)
    assert ours["y"].dtype == np.float32
    assert all(g.dtype == np.float32 for g in ours["grads"].values())
    assert_match(ours, theirs, FLOAT32_TOL)


@pytest.mark.parametrize("kind,nonlinearity", KINDS, ids=KIND_IDS)
def test_round_trip_through_torch(kind, nonlinearity):
    """Our random init → params_to_torch → torch.load_state_dict: identical outputs."""
    m = our_model(kind, nonlinearity, 2, True).init(seed=3)
    sd = m.params_to_torch()
    tm = torch_model(kind, nonlinearity, 2, True, seed=99)  # different weights at first
    assert set(sd) == set(tm.state_dict())
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
    for k, v in tm.state_dict().items():
        assert np.array_equal(v.numpy(), sd[k])
    x = ag.placeholder("x", ("T", "B", D))
    hs, _ = m(x)
    f = ag.function([x] + list(m.nodes().values()), hs)
    xv = np.random.default_rng(0).standard_normal((T, B, D))
    np.testing.assert_allclose(f(xv, *m.state_dict().values()),
                               tm(torch.tensor(xv))[0].detach().numpy(), **TOL)
    # and back: a fresh model loading torch's dict has bitwise equal parameters
    m2 = our_model(kind, nonlinearity, 2, True)
    m2.params_from_torch(tm.state_dict())
    for k, v in m.state_dict().items():
        assert np.array_equal(v, m2.state_dict()[k]), k


def test_peephole_lstm_cannot_go_to_torch():
    m = rnn.RNN("lstm", D, H, peephole=True).init()
    with pytest.raises(ValueError, match="peephole"):
        m.params_to_torch()
    with pytest.raises(ValueError, match="peephole"):
        m.cells[0].params_to_torch()


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind,nonlinearity", KINDS, ids=KIND_IDS)
def test_mask_matches_packed_sequence(kind, nonlinearity, bi):
    layers, Tm = 2, 6
    lengths = [4, 6, 1, 3]  # not sorted: enforce_sorted=False
    Bm = len(lengths)
    tm = torch_model(kind, nonlinearity, layers, bi, seed=11)
    m = our_model(kind, nonlinearity, layers, bi)
    m.params_from_torch(tm.state_dict())
    rng = np.random.default_rng(4)
    xv = rng.standard_normal((Tm, Bm, D))
    mask = np.arange(Tm)[:, None] < np.array(lengths)[None, :]
    xv[~mask] = 1e3 * rng.standard_normal(xv[~mask].shape)  # garbage at pad steps

    x = ag.placeholder("x", (Tm, Bm, D))
    mk = ag.placeholder("mask", (Tm, Bm), "bool")
    hs, finals = m(x, mask=mk)
    nstate = 2 if kind == "lstm" else 1
    outs = [hs] + [f[j] for j in range(nstate) for f in finals]
    res = ag.function([x, mk] + list(m.nodes().values()), outs)(
        xv, mask, *m.state_dict().values())

    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(xv), torch.tensor(lengths), enforce_sorted=False)
    y, hn = tm(packed)
    y, ylens = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=Tm)
    assert ylens.tolist() == lengths
    hn = hn if kind == "lstm" else (hn,)
    y = y.detach().numpy()
    np.testing.assert_allclose(res[0][mask], y[mask], **TOL)
    ncells = len(finals)
    for j in range(nstate):
        np.testing.assert_allclose(np.stack(res[1 + j * ncells:1 + (j + 1) * ncells]),
                                   hn[j].detach().numpy(), **TOL)
    # each sequence run alone, unpadded, gives the same final state
    for b, n in enumerate(lengths):
        yb, hb = tm(torch.tensor(xv[:n, b:b + 1]))
        hb = hb if kind == "lstm" else (hb,)
        for j in range(nstate):
            got = np.stack(res[1 + j * ncells:1 + (j + 1) * ncells])[:, b:b + 1]
            np.testing.assert_allclose(got, hb[j].detach().numpy(), **TOL)


# ----------------------------------------------------------------------------- optimizers

def _params_and_grads(steps, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"a.U": (4, 3), "a.b": (4,), "z.W": (2, 2, 2)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("name,ours,theirs", [
    ("sgd", lambda: rnn.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    ("momentum", lambda: rnn.Momentum(0.1, 0.9),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0)),
    ("momentum-0.5", lambda: rnn.Momentum(0.03, 0.5),
     lambda p: torch.optim.SGD(p, lr=0.03, momentum=0.5, dampening=0)),
    ("adam", lambda: rnn.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adam-betas", lambda: rnn.Adam(0.05, betas=(0.8, 0.99), eps=1e-6),
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
])
def test_optimizer_matches_torch(name, ours, theirs):
    steps = 6
    params, grads = _params_and_grads(steps)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt, topt = ours(), theirs(list(tparams.values()))
    live = {k: v.copy() for k, v in params.items()}
    for g in grads:
        opt.step(live, g)  # in place
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        topt.step()
        for k in live:
            np.testing.assert_allclose(live[k], tparams[k].detach().numpy(), err_msg=k, **TOL)
    assert opt.t == steps
    # the parameters actually moved
    assert all(np.abs(live[k] - params[k]).max() > 1e-3 for k in params)


def test_momentum_formula_by_hand():
    """v ← μv + g; θ ← θ − ηv, written out for three steps."""
    p = {"w": np.array([1.0, -2.0])}
    gs = [np.array([0.5, 1.0]), np.array([-1.0, 0.25]), np.array([2.0, 0.0])]
    opt = rnn.Momentum(0.1, 0.9)
    v, theta = np.zeros(2), p["w"].copy()
    for g in gs:
        opt.step(p, {"w": g})
        v = 0.9 * v + g
        theta = theta - 0.1 * v
        np.testing.assert_allclose(p["w"], theta, rtol=0, atol=1e-15)


def _torch_grads(grads):
    ps = []
    for g in grads.values():
        p = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor(g.copy())
        ps.append(p)
    return ps


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 3.0, 100.0])
def test_clip_by_global_norm_matches_torch(max_norm):
    """torch scales by max_norm / (‖g‖ + 1e-6), we by max_norm / (‖g‖ + 1e-12): the
    clipped gradients differ by a relative ~1e-6/‖g‖, so the tolerance is
    rtol = 2e-6/‖g‖ (plus round-off). The norms themselves agree to 1e-12; when no
    clipping happens (‖g‖ < max_norm) the gradients are returned unchanged by both."""
    _, (grads,) = _params_and_grads(1, seed=7)
    ps = _torch_grads(grads)
    tnorm = float(torch.nn.utils.clip_grad_norm_(ps, max_norm))
    clipped, norm = rnn.clip_by_global_norm(grads, max_norm)
    assert abs(norm - tnorm) <= 1e-12 * norm
    assert norm == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in grads.values())), rel=1e-14)
    for (k, g), p in zip(clipped.items(), ps):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=2e-6 / norm + 1e-14, atol=0,
                                   err_msg=k)
    if norm <= max_norm:
        for k in grads:
            assert np.array_equal(clipped[k], grads[k])
    else:
        assert rnn.global_norm(clipped) == pytest.approx(max_norm, rel=1e-10)


@pytest.mark.parametrize("limit", [0.05, 0.5, 10.0])
def test_clip_by_value_matches_torch(limit):
    _, (grads,) = _params_and_grads(1, seed=8)
    ps = _torch_grads(grads)
    torch.nn.utils.clip_grad_value_(ps, limit)
    clipped = rnn.clip_by_value(grads, limit)
    for (k, g), p in zip(clipped.items(), ps):
        assert np.array_equal(g, p.grad.numpy()), k


def test_clip_errors():
    with pytest.raises(ValueError):
        rnn.clip_by_global_norm({"a": np.ones(2)}, 0.0)
    with pytest.raises(ValueError):
        rnn.clip_by_value({"a": np.ones(2)}, -1.0)
    with pytest.raises(FloatingPointError):
        rnn.clip_by_global_norm({"a": np.array([np.inf, 1.0])}, 1.0)


@pytest.mark.parametrize("kind,nonlinearity", [("lstm", None), ("gru", None)], ids=["lstm", "gru"])
def test_mask_with_initial_state_matches_packed_sequence(kind, nonlinearity):
    """With h0/c0 given, the reverse direction starts from them at each sequence's last
    real step (our pad steps carry the initial state until then)."""
    Tm, lengths = 5, [2, 5, 3]
    Bm = len(lengths)
    tm = torch_model(kind, nonlinearity, 2, True, seed=12)
    m = our_model(kind, nonlinearity, 2, True)
    m.params_from_torch(tm.state_dict())
    rng = np.random.default_rng(9)
    xv = rng.standard_normal((Tm, Bm, D))
    mask = np.arange(Tm)[:, None] < np.array(lengths)[None, :]
    nstate = 2 if kind == "lstm" else 1
    s0v = [rng.standard_normal((4, Bm, H)) for _ in range(nstate)]
    x = ag.placeholder("x", (Tm, Bm, D))
    mk = ag.placeholder("mask", (Tm, Bm), "bool")
    s0 = [tuple(ag.placeholder(f"s{j}_{i}", (Bm, H)) for j in range(nstate)) for i in range(4)]
    hs, finals = m(x, state0=s0, mask=mk)
    outs = [hs] + [f[j] for j in range(nstate) for f in finals]
    res = ag.function([x, mk] + [p for s in s0 for p in s] + list(m.nodes().values()), outs)(
        xv, mask, *[s0v[j][i] for i in range(4) for j in range(nstate)],
        *m.state_dict().values())
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(xv), torch.tensor(lengths), enforce_sorted=False)
    s0t = tuple(torch.tensor(v) for v in s0v)
    y, hn = tm(packed, s0t if kind == "lstm" else s0t[0])
    y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=Tm)[0].detach().numpy()
    hn = hn if kind == "lstm" else (hn,)
    np.testing.assert_allclose(res[0][mask], y[mask], **TOL)
    for j in range(nstate):
        np.testing.assert_allclose(np.stack(res[1 + 4 * j:1 + 4 * (j + 1)]),
                                   hn[j].detach().numpy(), **TOL)

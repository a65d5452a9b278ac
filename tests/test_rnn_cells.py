"""rnn cells: gradients vs finite differences, a NumPy reference of each cell written
from PyTorch's documented equations (and Gers & Schmidhuber's peepholes), mask
semantics, and errors for bad inputs."""
import numpy as np
import pytest

import autograph as ag
import rnn

T, B, D, H = 4, 2, 3, 2


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACT = {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda z: np.maximum(z, 0.0)}

# (id, constructor) of every cell variant under test
CELLS = [
    ("elman-tanh", lambda **kw: rnn.Elman(D, H, activation="tanh", name="c", **kw)),
    ("elman-sigmoid", lambda **kw: rnn.Elman(D, H, activation="sigmoid", name="c", **kw)),
    ("elman-relu", lambda **kw: rnn.Elman(D, H, activation="relu", name="c", **kw)),
    ("lstm", lambda **kw: rnn.LSTM(D, H, name="c", **kw)),
    ("lstm-peephole", lambda **kw: rnn.LSTM(D, H, peephole=True, name="c", **kw)),
    ("gru", lambda **kw: rnn.GRU(D, H, name="c", **kw)),
]
CELL_IDS = [c[0] for c in CELLS]


def make_cell(cid, learn_init=False, seed=0):
    cell = dict(CELLS)[cid](learn_init=learn_init).init(seed)
    rng = np.random.default_rng(seed + 1)
    for k, v in cell.params.items():  # learned s0 and peepholes start at zero: randomize
        if k.endswith("0") or k.startswith("p_"):
            cell.params[k] = rng.uniform(-0.8, 0.8, v.shape)
    # larger weights than the default init, so every nonlinearity is exercised
    for k in ("U", "W", "b"):
        cell.params[k] = cell.params[k] * 2.5
    return cell


# ----------------------------------------------------------------------------- reference

def reference_step(cell, state, x):
    """One step from the documented equations (PyTorch's nn.RNN / nn.LSTM / nn.GRU
    docs; peepholes per Gers & Schmidhuber), with plain NumPy."""
    P = cell.params
    Hh = cell.hidden_size
    if isinstance(cell, rnn.Elman):
        (h,) = state
        h = ACT[cell.activation](x @ P["U"].T + P["b"] + h @ P["W"].T + P["b_hh"])
        return (h,), h
    if isinstance(cell, rnn.LSTM):
        h, c = state
        Wi, Wf, Wg, Wo = np.split(P["U"], 4)
        Hi, Hf, Hg, Ho = np.split(P["W"], 4)
        bi, bf, bg, bo = np.split(P["b"], 4)
        ci, cf, cg, co = np.split(P["b_hh"], 4)
        zi = x @ Wi.T + bi + h @ Hi.T + ci
        zf = x @ Wf.T + bf + h @ Hf.T + cf
        zo = x @ Wo.T + bo + h @ Ho.T + co
        if cell.peephole:
            zi = zi + P["p_i"] * c          # p_i ⊙ c_{t−1}
            zf = zf + P["p_f"] * c          # p_f ⊙ c_{t−1}
        i, f = sigmoid(zi), sigmoid(zf)
        g = np.tanh(x @ Wg.T + bg + h @ Hg.T + cg)
        c = f * c + i * g
        if cell.peephole:
            zo = zo + P["p_o"] * c          # p_o ⊙ c_t
        o = sigmoid(zo)
        h = o * np.tanh(c)
        return (h, c), h
    assert isinstance(cell, rnn.GRU)
    (h,) = state
    Wr, Wz, Wn = np.split(P["U"], 3)
    Hr, Hz, Hn = np.split(P["W"], 3)
    bir, biz, bin_ = np.split(P["b"], 3)
    bhr, bhz, bhn = np.split(P["b_hh"], 3)
    r = sigmoid(x @ Wr.T + bir + h @ Hr.T + bhr)
    z = sigmoid(x @ Wz.T + biz + h @ Hz.T + bhz)
    n = np.tanh(x @ Wn.T + bin_ + r * (h @ Hn.T + bhn))
    h = (1 - z) * n + z * h
    assert h.shape[-1] == Hh
    return (h,), h


def reference_run(cell, xs, state0=None, mask=None, reverse=False):
    """(final_state, hs): pad steps (mask False) carry the state; hs repeats state[0]."""
    Tn, Bn, _ = xs.shape
    if state0 is None:
        if cell.learn_init:
            state0 = tuple(np.broadcast_to(cell.params[f"{k}0"], (Bn, cell.hidden_size)).copy()
                           for k in cell.state_names)
        else:
            state0 = tuple(np.zeros((Bn, cell.hidden_size)) for _ in cell.state_names)
    state = state0
    hs = np.zeros((Tn, Bn, cell.hidden_size))
    for t in (range(Tn - 1, -1, -1) if reverse else range(Tn)):
        new, _ = reference_step(cell, state, xs[t])
        if mask is not None:
            new = tuple(np.where(mask[t][:, None], n, o) for n, o in zip(new, state))
        state = new
        hs[t] = state[0]
    return state, hs


def build(cell, mask=False, reverse=False, state0=False):
    x = ag.placeholder("x", (T, B, D))
    m = ag.placeholder("mask", (T, B), "bool") if mask else None
    s0 = tuple(ag.placeholder(f"s0_{k}", (B, H)) for k in cell.state_names) if state0 else None
    final, hs = rnn.run(cell, x, state0=s0, mask=m, reverse=reverse)
    return x, m, s0, final, hs


def evaluate(cell, xv, mask=None, reverse=False, s0v=None):
    x, m, s0, final, hs = build(cell, mask is not None, reverse, s0v is not None)
    inputs = [x] + ([m] if m is not None else []) + list(s0 or ()) + list(cell.nodes().values())
    args = [xv] + ([mask] if mask is not None else []) + list(s0v or ()) + \
        list(cell.state_dict().values())
    out = ag.function(inputs, [hs, *final])(*args)
    return out[0], tuple(out[1:])


# ----------------------------------------------------------------------------- reference

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("learn_init", [False, True], ids=["zero-init", "learn-init"])
@pytest.mark.parametrize("cid", CELL_IDS)
def test_matches_numpy_reference(cid, learn_init, reverse):
    cell = make_cell(cid, learn_init, seed=CELL_IDS.index(cid))
    if learn_init:
        assert all(f"{k}0" in cell.params for k in cell.state_names)
    xv = np.random.default_rng(2).standard_normal((T, B, D))
    hs, final = evaluate(cell, xv, reverse=reverse)
    ref_final, ref_hs = reference_run(cell, xv, reverse=reverse)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-12, atol=1e-12)
    assert len(final) == len(cell.state_names)
    for a, b in zip(final, ref_final):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cid", CELL_IDS)
def test_given_initial_state_matches_reference(cid):
    cell = make_cell(cid, seed=4)
    rng = np.random.default_rng(3)
    xv = rng.standard_normal((T, B, D))
    s0v = tuple(rng.standard_normal((B, H)) for _ in cell.state_names)
    hs, final = evaluate(cell, xv, s0v=s0v)
    ref_final, ref_hs = reference_run(cell, xv, state0=s0v)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-12, atol=1e-12)
    for a, b in zip(final, ref_final):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_peephole_changes_the_output():
    """The peephole weights are used (a zero-peephole LSTM equals the plain one)."""
    xv = np.random.default_rng(0).standard_normal((T, B, D))
    peep = make_cell("lstm-peephole", seed=1)
    plain = rnn.LSTM(D, H, name="c")
    plain.load_state_dict({k: v for k, v in peep.state_dict().items()
                           if not k.split(".")[-1].startswith("p_")})
    a, _ = evaluate(peep, xv)
    b, _ = evaluate(plain, xv)
    assert np.abs(a - b).max() > 1e-3
    for k in ("p_i", "p_f", "p_o"):
        peep.params[k][:] = 0
    a, _ = evaluate(peep, xv)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("learn_init", [False, True], ids=["zero-init", "learn-init"])
@pytest.mark.parametrize("cid", CELL_IDS)
def test_gradient_check(cid, learn_init, assert_grad):
    cell = make_cell(cid, learn_init, seed=10 + CELL_IDS.index(cid))
    rng = np.random.default_rng(5)
    x, _, _, final, hs = build(cell)
    w = rng.standard_normal((T, B, H))
    loss = ag.sum(hs * w)
    for s in final:
        loss = loss + ag.sum(s * rng.standard_normal((B, H)))
    nodes = cell.nodes()
    report = assert_grad(loss, [x] + list(nodes.values()),
                         [rng.standard_normal((T, B, D))] + list(cell.state_dict().values()),
                         tol=1e-6)
    assert set(report.errors) == {"x"} | set(nodes)


@pytest.mark.parametrize("cid", ["elman-tanh", "lstm-peephole", "gru"])
def test_gradient_check_with_mask_and_state0(cid, assert_grad):
    cell = make_cell(cid, seed=21)
    rng = np.random.default_rng(6)
    x, m, s0, final, hs = build(cell, mask=True, reverse=True, state0=True)
    loss = ag.sum(hs * rng.standard_normal((T, B, H))) + \
        sum(ag.sum(s * rng.standard_normal((B, H))) for s in final)
    mask = np.array([[1, 1], [1, 0], [0, 1], [1, 0]], bool)
    vals = [rng.standard_normal((T, B, D)), mask] + \
        [rng.standard_normal((B, H)) for _ in s0] + list(cell.state_dict().values())
    assert_grad(loss, [x, m, *s0, *cell.nodes().values()], vals, tol=1e-6)


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cid", CELL_IDS)
def test_mask_semantics(cid, reverse):
    cell = make_cell(cid, seed=7)
    rng = np.random.default_rng(8)
    lengths = [3, 1]
    mask = np.arange(T)[:, None] < np.array(lengths)[None, :]
    xv = rng.standard_normal((T, B, D))
    garbage = xv.copy()
    garbage[~mask] = 100.0
    hs, final = evaluate(cell, xv, mask=mask, reverse=reverse)
    hs2, final2 = evaluate(cell, garbage, mask=mask, reverse=reverse)
    # pad inputs are ignored entirely
    np.testing.assert_array_equal(hs, hs2)
    for a, b in zip(final, final2):
        np.testing.assert_array_equal(a, b)
    for b, n in enumerate(lengths):
        alone_hs, alone_final = evaluate_single(cell, xv[:n, b:b + 1], reverse)
        # final state = the state at the last real step of each sequence
        for a, s in zip(final, alone_final):
            np.testing.assert_allclose(a[b:b + 1], s, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(hs[:n, b:b + 1], alone_hs, rtol=1e-13, atol=1e-14)
        if not reverse:  # pad steps carry the state: hs repeats the last real output
            for t in range(n, T):
                np.testing.assert_array_equal(hs[t, b], hs[n - 1, b])
        else:  # reverse: the pad steps come first and carry the zero initial state
            for t in range(n, T):
                np.testing.assert_array_equal(hs[t, b], 0.0)
    # an arbitrary mask (holes in the middle) carries the state at every False step
    holes = np.array([[1, 0], [0, 1], [1, 0], [1, 1]], bool)
    hs, final = evaluate(cell, xv, mask=holes, reverse=reverse)
    ref_final, ref_hs = reference_run(cell, xv, mask=holes, reverse=reverse)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-12, atol=1e-12)
    for a, b in zip(final, ref_final):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def evaluate_single(cell, xv, reverse):
    x = ag.placeholder("x1", xv.shape)
    final, hs = rnn.run(cell, x, reverse=reverse)
    out = ag.function([x] + list(cell.nodes().values()), [hs, *final])(
        xv, *cell.state_dict().values())
    return out[0], tuple(out[1:])


def test_all_true_mask_equals_no_mask():
    cell = make_cell("lstm", seed=9)
    xv = np.random.default_rng(1).standard_normal((T, B, D))
    a, fa = evaluate(cell, xv)
    b, fb = evaluate(cell, xv, mask=np.ones((T, B), bool))
    np.testing.assert_array_equal(a, b)
    for u, v in zip(fa, fb):
        np.testing.assert_array_equal(u, v)


def test_all_false_mask_keeps_initial_state():
    cell = make_cell("gru", learn_init=True, seed=9)
    xv = np.random.default_rng(1).standard_normal((T, B, D))
    hs, (h,) = evaluate(cell, xv, mask=np.zeros((T, B), bool))
    np.testing.assert_array_equal(h, np.broadcast_to(cell.params["h0"], (B, H)))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("cid", CELL_IDS)
def test_wrong_input_size_names_the_cell(cid):
    cell = dict(CELLS)[cid]()
    cell.name = "encoder.l0"
    x = ag.placeholder("x", (T, B, D + 1))
    with pytest.raises(ag.ShapeError, match=r"encoder\.l0.*input_size=3"):
        rnn.run(cell, x)


@pytest.mark.parametrize("cid", CELL_IDS)
def test_dtype_mismatch(cid):
    cell = dict(CELLS)[cid]()
    with pytest.raises(ag.DTypeError, match="float32"):
        rnn.run(cell, ag.placeholder("x", (T, B, D), "float32"))
    cell32 = dict(CELLS)[cid](dtype="float32")
    with pytest.raises(ag.DTypeError, match="float64"):
        rnn.run(cell32, ag.placeholder("x", (T, B, D)))


def test_rnn_stack_wrong_input_and_dtype():
    m = rnn.RNN("lstm", D, H, num_layers=2, bidirectional=True, name="enc")
    with pytest.raises(ag.ShapeError, match=r"enc\.l0"):
        m(ag.placeholder("x", (T, B, D + 2)))
    with pytest.raises(ag.DTypeError):
        m(ag.placeholder("x", (T, B, D), "float32"))
    with pytest.raises(ag.ShapeError):
        m(ag.placeholder("x", (B, D)))  # not [T, B, D]
    with pytest.raises(ValueError, match="state0"):
        m(ag.placeholder("x", (T, B, D)), state0=[(ag.zeros((B, H)), ag.zeros((B, H)))])


@pytest.mark.parametrize("shape", [(T, B + 1), (T + 1, B), (T,), (T, B, 1)])
def test_mask_wrong_shape(shape):
    cell = rnn.GRU(D, H, name="g")
    with pytest.raises(ag.ShapeError, match="mask"):
        rnn.run(cell, ag.placeholder("x", (T, B, D)), mask=ag.placeholder("m", shape, "bool"))
    m = rnn.RNN("elman", D, H)
    with pytest.raises(ag.ShapeError, match="mask"):
        m(ag.placeholder("x", (T, B, D)), mask=ag.placeholder("m", shape, "bool"))


@pytest.mark.parametrize("dtype", ["float64", "int64", "float32"])
def test_mask_not_bool(dtype):
    cell = rnn.LSTM(D, H, name="l")
    with pytest.raises(ag.DTypeError, match="bool"):
        rnn.run(cell, ag.placeholder("x", (T, B, D)), mask=ag.placeholder("m", (T, B), dtype))


def test_state0_wrong_number_of_components():
    cell = rnn.LSTM(D, H, name="l")
    with pytest.raises(ValueError, match="state"):
        rnn.run(cell, ag.placeholder("x", (T, B, D)), state0=(ag.zeros((B, H)),))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        rnn.RNN("transformer", D, H)
    with pytest.raises(ValueError, match="activation"):
        rnn.Elman(D, H, activation="softplus")
    with pytest.raises(ValueError, match="hidden_size"):
        rnn.LSTM(D, 0)
    with pytest.raises(ValueError, match="input_size"):
        rnn.GRU(2.5, H)
    with pytest.raises(ValueError, match="num_layers"):
        rnn.RNN("gru", D, H, num_layers=0)
    with pytest.raises(ag.DTypeError):
        rnn.Elman(D, H, dtype="int64")


def _torch_like_sd(layers=1, bi=False, gates=4, d=D, h=H):
    sd = {}
    for k in range(layers):
        for suffix in ("", "_reverse")[:2 if bi else 1]:
            din = d if k == 0 else h * (2 if bi else 1)
            sd[f"weight_ih_l{k}{suffix}"] = np.zeros((gates * h, din))
            sd[f"weight_hh_l{k}{suffix}"] = np.zeros((gates * h, h))
            sd[f"bias_ih_l{k}{suffix}"] = np.zeros(gates * h)
            sd[f"bias_hh_l{k}{suffix}"] = np.zeros(gates * h)
    return sd


def test_params_from_torch_accepts_matching_arrays():
    m = rnn.RNN("lstm", D, H, num_layers=2, bidirectional=True)
    sd = _torch_like_sd(2, True)
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(v.shape) for k, v in sd.items()}
    m.params_from_torch(sd)
    assert all(np.array_equal(v, sd[k]) for k, v in m.params_to_torch().items())


@pytest.mark.parametrize("key", ["weight_ih_l1_reverse", "weight_hh_l0", "bias_ih_l1",
                                 "bias_hh_l0_reverse"])
def test_params_from_torch_wrong_shape_names_key(key):
    m = rnn.RNN("lstm", D, H, num_layers=2, bidirectional=True)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    sd = _torch_like_sd(2, True)
    sd[key] = np.zeros(sd[key].shape[:-1] + (sd[key].shape[-1] + 1,))
    with pytest.raises(ValueError, match=key):
        m.params_from_torch(sd)
    # a GRU's state dict (3 gates) does not fit an LSTM
    with pytest.raises(ValueError, match="weight_ih_l0"):
        m.params_from_torch(_torch_like_sd(2, True, gates=3))
    # the cell whose key has the wrong shape is left unchanged
    cell = "lstm.l" + key.split("_l")[1]
    for k, v in m.state_dict().items():
        if k.rsplit(".", 1)[0] == cell:
            assert np.array_equal(v, before[k]), k


@pytest.mark.parametrize("key", ["weight_ih_l0", "bias_hh_l1", "weight_hh_l1_reverse"])
def test_params_from_torch_missing_key(key):
    m = rnn.RNN("gru", D, H, num_layers=2, bidirectional=True)
    sd = _torch_like_sd(2, True, gates=3)
    del sd[key]
    with pytest.raises(KeyError, match=key):
        m.params_from_torch(sd)
    # a unidirectional dict for a bidirectional model: the _reverse keys are missing
    with pytest.raises(KeyError, match="_reverse"):
        m.params_from_torch(_torch_like_sd(2, False, gates=3))


def test_module_load_state_dict_errors():
    m = rnn.RNN("elman", D, H)
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="missing"):
        m.load_state_dict({k: v for k, v in list(sd.items())[1:]})
    with pytest.raises(ValueError, match="unknown"):
        m.load_state_dict(dict(sd, extra=np.zeros(1)))
    k0 = next(iter(sd))
    with pytest.raises(ValueError, match=k0.replace(".", r"\.")):
        m.load_state_dict(dict(sd, **{k0: np.zeros((1, 1))}))
    with pytest.raises(ag.DTypeError):
        m.load_state_dict(dict(sd, **{k0: sd[k0].astype(np.int64)}))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="non-finite"):
        m.load_state_dict(dict(sd, **{k0: np.full_like(sd[k0], np.inf)}))
    for k, v in m.state_dict().items():  # checked before changing anything
        assert np.array_equal(v, before[k]), k
    with pytest.raises(KeyError, match="nope"):
        m.cells[0].p("nope")

"""rnn training pieces: vocabulary and tokenizers, padded batches, losses, checkpoints
(round trip, corruption, no pickle, atomic writes), Trainer resuming exactly, and
truncated BPTT as a stop-gradient at the chunk boundary."""
import json
import os
import zipfile

import numpy as np
import pytest

import autograph as ag
import rnn
from rnn.checkpoint import FORMAT

# ----------------------------------------------------------------------------- vocab


def test_vocab_build_order_and_specials():
    corpus = "b a c a b a d".split()  # a×3, b×2, c, d (c seen before d)
    v = rnn.Vocab.build(corpus, specials=[rnn.EOS, rnn.GO, rnn.PAD])
    assert v.tokens == [rnn.PAD, rnn.UNK, rnn.EOS, rnn.GO, "a", "b", "c", "d"]
    assert v.pad_id == 0 and v.unk_id == 1
    assert v.index[rnn.PAD] == 0 and v.index[rnn.UNK] == 1
    assert len(v) == 8 and "a" in v and "z" not in v


def test_vocab_min_count_and_max_size():
    corpus = "b a c a b a d".split()
    assert rnn.Vocab.build(corpus, min_count=2).tokens == [rnn.PAD, rnn.UNK, "a", "b"]
    assert rnn.Vocab.build(corpus, min_count=4).tokens == [rnn.PAD, rnn.UNK]
    # max_size counts the specials too
    assert rnn.Vocab.build(corpus, max_size=3).tokens == [rnn.PAD, rnn.UNK, "a"]
    assert rnn.Vocab.build(corpus, max_size=4, specials=[rnn.EOS]).tokens == \
        [rnn.PAD, rnn.UNK, rnn.EOS, "a"]
    assert rnn.Vocab.build(corpus, max_size=1).tokens == [rnn.PAD, rnn.UNK]
    # a special seen in the corpus is not listed twice
    assert rnn.Vocab.build(["[UNK]", "x", "[UNK]"]).tokens == [rnn.PAD, rnn.UNK, "x"]


def test_vocab_encode_decode():
    v = rnn.Vocab.build("the cat sat on the mat".split())
    ids = v.encode(["the", "dog", "sat", "[PAD]"])
    assert ids.dtype == np.int64
    assert ids.tolist() == [v.index["the"], v.unk_id, v.index["sat"], 0]
    assert v.decode(ids) == ["the", rnn.UNK, "sat", rnn.PAD]
    assert v.decode(np.array([2, 3])) == v.tokens[2:4]
    assert v.encode([]).shape == (0,)
    with pytest.raises(ValueError, match=r"token id 99\b"):
        v.decode([2, 99])
    with pytest.raises(ValueError, match=r"token id -1\b"):
        v.decode([-1])
    with pytest.raises(ValueError, match="twice"):
        rnn.Vocab(["a", "b", "a"])
    w = rnn.Vocab.from_array(v.to_array())
    assert w.tokens == v.tokens and w.index == v.index


def test_word_tokens():
    text = "Visit https://example.com/a?b=1 or www.x.org on 3.14 and 1,000 Days!"
    assert rnn.word_tokens(text) == ["visit", "https://example.com/a?b=1", "or", "www.x.org",
                                     "on", "3.14", "and", "1,000", "days", "!"]
    assert rnn.word_tokens(text, replace_numbers=True, replace_urls=True) == \
        ["visit", rnn.URL, "or", rnn.URL, "on", rnn.NUM, "and", rnn.NUM, "days", "!"]
    assert rnn.word_tokens(text, replace_numbers=True)[1] == "https://example.com/a?b=1"
    assert rnn.word_tokens(text, replace_urls=True)[5] == "3.14"
    assert rnn.word_tokens("Hello, World", lower=False) == ["Hello", ",", "World"]
    assert rnn.word_tokens("") == []


def test_char_tokens():
    assert rnn.char_tokens("ab c\nd") == ["a", "b", " ", "c", "\n", "d"]
    assert rnn.char_tokens("") == []


def test_pad_batch():
    ids, mask = rnn.pad_batch([[5, 6, 7], [8], [9, 10]])
    assert ids.shape == mask.shape == (3, 3)
    assert ids.dtype == np.int64 and mask.dtype == bool
    assert ids.T.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.T.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    ids, mask = rnn.pad_batch([[1, 2], [3]], pad_id=7, length=4)
    assert ids.shape == (4, 2) and ids[:, 1].tolist() == [3, 7, 7, 7]
    assert mask.sum(0).tolist() == [2, 1]
    with pytest.raises(ValueError, match="3 tokens.*length=2"):
        rnn.pad_batch([[1, 2, 3], [1]], length=2)
    with pytest.raises(ValueError):
        rnn.pad_batch([])


def test_batches_cover_every_sequence_once():
    seqs = [[1] * n for n in [3, 1, 4, 1, 5, 9, 2]]
    seen = []
    for ids, mask, idx in rnn.batches(seqs, 3, rng=np.random.default_rng(0)):
        assert ids.shape[1] == mask.shape[1] == len(idx) <= 3
        assert mask.sum(0).tolist() == [len(seqs[i]) for i in idx]
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(seqs)))


# ----------------------------------------------------------------------------- losses

def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_sequence_cross_entropy(reduction, use_mask):
    rng = np.random.default_rng(0)
    Tn, Bn, V = 4, 3, 5
    z = rng.standard_normal((Tn, Bn, V)) * 3
    y = rng.integers(0, V, (Tn, Bn))
    m = np.arange(Tn)[:, None] < np.array([4, 2, 1])[None, :]
    lz, ly = ag.placeholder("z", (Tn, Bn, V)), ag.placeholder("y", (Tn, Bn), "int64")
    lm = ag.placeholder("m", (Tn, Bn), "bool") if use_mask else None
    loss = rnn.sequence_cross_entropy(lz, ly, lm, reduction=reduction)
    args = [z, y] + ([m] if use_mask else [])
    got = ag.function([lz, ly] + ([lm] if use_mask else []), loss)(*args)
    nll = -np.take_along_axis(_log_softmax(z), y[..., None], -1)[..., 0]
    w = m if use_mask else np.ones_like(m)
    ref = (nll * w).sum() / (w.sum() if reduction == "mean" else 1)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0)
    # its gradient: softmax − onehot at real positions (scaled for "mean")
    (g,) = ag.grad(loss, [lz])
    gv = ag.function([lz, ly] + ([lm] if use_mask else []), g)(*args)
    ref_g = (np.exp(_log_softmax(z)) - np.eye(V)[y]) * w[..., None]
    if reduction == "mean":
        ref_g = ref_g / w.sum()
    np.testing.assert_allclose(gv, ref_g, rtol=1e-12, atol=1e-15)


def test_sequence_cross_entropy_errors():
    z = ag.placeholder("z", (2, 3, 4))
    y = ag.placeholder("y", (2, 3), "int64")
    with pytest.raises(ValueError, match="reduction"):
        rnn.sequence_cross_entropy(z, y, reduction="max")
    with pytest.raises(ag.ShapeError, match="mask"):
        rnn.sequence_cross_entropy(z, y, ag.placeholder("m", (3, 2), "bool"))
    with pytest.raises(ag.ShapeError, match="bool"):
        rnn.sequence_cross_entropy(z, y, ag.placeholder("m", (2, 3)))


def test_all_masked_mean_is_zero_not_nan():
    z = ag.placeholder("z", (2, 1, 3))
    y = ag.placeholder("y", (2, 1), "int64")
    m = ag.placeholder("m", (2, 1), "bool")
    f = ag.function([z, y, m], rnn.sequence_cross_entropy(z, y, m))
    assert f(np.ones((2, 1, 3)), np.zeros((2, 1), np.int64), np.zeros((2, 1), bool)) == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_squared_error(reduction):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x = ag.placeholder("x", (3, 4))
    got = ag.function([x], rnn.squared_error(x, b, reduction))(a)
    ref = 0.5 * ((a - b) ** 2).mean() if reduction == "mean" else 0.5 * ((a - b) ** 2).sum()
    np.testing.assert_allclose(got, ref, rtol=1e-14)
    with pytest.raises(ValueError, match="reduction"):
        rnn.squared_error(x, b, "none")


# ----------------------------------------------------------------------------- checkpoints

def _ckpt(seed=0):
    rng = np.random.default_rng(seed)
    return rnn.Checkpoint(
        params={"m.l0.U": rng.standard_normal((3, 2)), "m.out.c": rng.standard_normal(4).astype(
            np.float32)},
        optimizer={"t": np.array(7), "m/m.l0.U": rng.standard_normal((3, 2))},
        arrays={"h": rng.standard_normal((2, 3)), "vocab": np.array(["[PAD]", "ä", "b c"])},
        meta={"hidden": 3, "name": "tëst", "nested": {"a": [1, 2]}, "lr": 0.1})


def _assert_same(a, b):
    for group in ("params", "optimizer", "arrays"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert set(ga) == set(gb), group
        for k in ga:
            assert ga[k].dtype == gb[k].dtype and np.array_equal(ga[k], gb[k]), (group, k)
    assert a.meta == b.meta


def test_checkpoint_round_trip(tmp_path):
    c = _ckpt()
    path = rnn.save_checkpoint(tmp_path / "sub" / "model.npz", c)  # creates the folder
    assert path.is_file()
    _assert_same(rnn.load_checkpoint(path), c)
    assert os.listdir(tmp_path / "sub") == ["model.npz"]
    # overwriting replaces the content
    c2 = _ckpt(1)
    rnn.save_checkpoint(path, c2)
    _assert_same(rnn.load_checkpoint(path), c2)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(rnn.CheckpointError, match="no checkpoint"):
        rnn.load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.9, -30])
def test_truncated_checkpoint(tmp_path, keep):
    path = rnn.save_checkpoint(tmp_path / "m.npz", _ckpt())
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(rnn.CheckpointError):
        rnn.load_checkpoint(path)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_checkpoint(tmp_path, seed):
    path = tmp_path / "m.npz"
    path.write_bytes(np.random.default_rng(seed).bytes(2000))
    with pytest.raises(rnn.CheckpointError):
        rnn.load_checkpoint(path)


def test_flipped_bytes_checkpoint(tmp_path):
    """Damage inside a stored array: the zip CRC check catches it."""
    path = rnn.save_checkpoint(tmp_path / "m.npz", _ckpt())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param:m.l0.U.npy")
    # the member's payload starts after its local header (30 bytes + name + extra);
    # the array's float data follows the 128-byte .npy header
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    assert info.compress_size > 140
    data[start + 140] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(rnn.CheckpointError):
        rnn.load_checkpoint(path)


def test_non_checkpoint_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(rnn.CheckpointError, match="not an autograph checkpoint"):
        rnn.load_checkpoint(path)
    np.savez(path, format=np.array("some-other-format-2"), meta=np.array("{}"))
    with pytest.raises(rnn.CheckpointError, match="not an autograph checkpoint"):
        rnn.load_checkpoint(path)
    np.savez(path, format=np.array(FORMAT), meta=np.array("{not json"))
    with pytest.raises(rnn.CheckpointError, match="metadata"):
        rnn.load_checkpoint(path)
    path.write_text("just text")
    with pytest.raises(rnn.CheckpointError):
        rnn.load_checkpoint(path)


def test_object_arrays_are_rejected_without_unpickling(tmp_path, monkeypatch):
    """np.load runs with allow_pickle=False: an object array (a pickle inside the npz)
    is refused, and nothing is unpickled."""
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.npz"
    np.savez(path, format=np.array(FORMAT), meta=np.array(json.dumps({})),
             **{"param:x": np.array([Boom()], dtype=object)})
    called = []
    real_loads = pickle.loads
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: called.append(1) or real_loads(*a, **k))
    real_load = np.load
    seen = {}

    def spy(*a, **k):
        seen.update(k)
        return real_load(*a, **k)

    monkeypatch.setattr(np, "load", spy)
    with pytest.raises(rnn.CheckpointError):
        rnn.load_checkpoint(path)
    assert seen.get("allow_pickle") is False
    assert not called and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, exc):
    path = rnn.save_checkpoint(tmp_path / "m.npz", _ckpt(0))
    before = path.read_bytes()

    def broken_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04" + b"\0" * 1000)  # a partial write ...
        raise exc                                 # ... then the failure

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(type(exc)):
        rnn.save_checkpoint(path, _ckpt(1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    _assert_same(rnn.load_checkpoint(path), _ckpt(0))
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_savez(file, *args, **kwargs):
        file.write(b"PK")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        rnn.save_checkpoint(tmp_path / "m.npz", _ckpt())
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- trainer

V, HID, TT, BB = 5, 4, 4, 3


class Tagger(rnn.Module):
    """A tiny sequence tagger: one-hot ids → GRU → linear → logits; the GRU's initial
    state is an input (carried between batches like truncated BPTT)."""

    def __init__(self, hidden=HID, cell="gru"):
        super().__init__("tagger")
        self.rnn = rnn.RNN(cell, V, hidden, name="tagger.rnn")
        self.out = rnn.Linear(hidden, V, name="tagger.out")
        self.children = [self.rnn, self.out]
        self.hidden = hidden

    def graph(self):
        ids = ag.placeholder("ids", (TT, BB), "int64")
        targets = ag.placeholder("targets", (TT, BB), "int64")
        mask = ag.placeholder("mask", (TT, BB), "bool")
        h0 = ag.placeholder("h0", (BB, self.hidden))
        hs, finals = self.rnn(rnn.one_hot(ids, V), state0=[(h0,)], mask=mask)
        loss = rnn.sequence_cross_entropy(self.out(hs), targets, mask)
        return [ids, targets, mask, h0], loss, [finals[0][0]]


def make_trainer(hidden=HID, seed=0, path=None, opt=None, meta=None):
    model = Tagger(hidden).init(seed)
    inputs, loss, outputs = model.graph()
    step = rnn.Step(model, inputs, loss, outputs)
    trainer = rnn.Trainer(step, opt or rnn.Adam(0.05), clip_norm=1.0, clip_value=0.5,
                          checkpoint=path, meta={"hidden": hidden} if meta is None else meta)
    trainer.arrays["h"] = np.zeros((BB, hidden))

    def next_batch(i):
        rng = np.random.default_rng(1000 + i)
        ids = rng.integers(0, V, (TT, BB))
        mask = np.arange(TT)[:, None] < rng.integers(1, TT + 1, BB)[None, :]
        return ids, np.roll(ids, -1, 0), mask, trainer.arrays["h"]

    def after_step(i, outputs):
        trainer.arrays["h"] = outputs[0]

    return model, trainer, next_batch, after_step


def test_step_gradients_match_check_grad(assert_grad):
    model = Tagger().init(1)
    inputs, loss, _ = model.graph()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (TT, BB))
    data = [ids, np.roll(ids, -1, 0), rng.random((TT, BB)) < 0.7, rng.standard_normal((BB, HID))]
    assert_grad(loss, inputs + list(model.nodes().values()),
                data + list(model.state_dict().values()), tol=1e-6)
    step = rnn.Step(model, inputs, loss)
    lv, outs, grads = step(*data)
    assert outs == [] and set(grads) == set(model.state_dict())
    assert step.evaluate(*data)[0] == pytest.approx(lv, rel=1e-15)


@pytest.mark.parametrize("opt", [lambda: rnn.Adam(0.05), lambda: rnn.Momentum(0.1, 0.9),
                                 lambda: rnn.SGD(0.3)], ids=["adam", "momentum", "sgd"])
def test_resume_continues_exactly(tmp_path, opt):
    N, k = 7, 3
    model_a, tr_a, nb_a, as_a = make_trainer(opt=opt())
    hist_a = tr_a.fit(nb_a, N, after_step=as_a, progress=False)
    assert tr_a.steps_done == N and len(hist_a) == N

    path = tmp_path / "ck.npz"
    model_b, tr_b, nb_b, as_b = make_trainer(path=str(path), opt=opt())
    tr_b.fit(nb_b, k, after_step=as_b, progress=False)
    assert tr_b.steps_done == k and path.is_file()
    del model_b, tr_b

    # new objects, different random init: everything must come from the checkpoint
    model_c, tr_c, nb_c, as_c = make_trainer(path=str(path), seed=123, opt=opt())
    ck = tr_c.resume()
    assert tr_c.steps_done == k and ck.meta["steps_done"] == k
    hist_c = tr_c.fit(nb_c, N, after_step=as_c, progress=False)
    assert tr_c.steps_done == N and [r["step"] for r in hist_c] == list(range(k + 1, N + 1))
    for key, v in model_a.state_dict().items():
        assert np.array_equal(v, model_c.state_dict()[key]), key
    assert np.array_equal(tr_a.arrays["h"], tr_c.arrays["h"])
    assert [r["loss"] for r in hist_a[k:]] == [r["loss"] for r in hist_c]
    # the final checkpoint holds the result
    _, tr_d, _, _ = make_trainer(path=str(path), seed=7, opt=opt())
    tr_d.resume()
    assert tr_d.steps_done == N
    for key, v in model_a.state_dict().items():
        assert np.array_equal(v, tr_d.model.state_dict()[key]), key


def test_periodic_checkpoints(tmp_path, monkeypatch):
    import rnn.train as train_mod

    path = tmp_path / "ck.npz"
    _, tr, nb, after = make_trainer(path=str(path))
    saved = []
    real = train_mod.save_checkpoint

    def spy(p, c):
        saved.append(c.meta["steps_done"])
        return real(p, c)

    monkeypatch.setattr(train_mod, "save_checkpoint", spy)
    tr.fit(nb, 5, after_step=after, checkpoint_every=2, progress=False)
    assert saved == [2, 4, 5]
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_resume_from_another_model(tmp_path):
    path = tmp_path / "ck.npz"
    _, tr, nb, after = make_trainer(hidden=4, path=str(path))
    tr.fit(nb, 2, after_step=after, progress=False)
    # the config in meta differs
    _, other, _, _ = make_trainer(hidden=5, path=str(path))
    with pytest.raises(rnn.CheckpointError, match="another model"):
        other.resume()
    assert other.steps_done == 0
    # same (empty) meta but different shapes: caught by the parameter check
    _, other, _, _ = make_trainer(hidden=5, path=str(path), meta={})
    with pytest.raises(rnn.CheckpointError, match="does not fit"):
        other.resume()
    # another optimizer
    _, other, _, _ = make_trainer(hidden=4, path=str(path), opt=rnn.SGD(0.1))
    with pytest.raises(rnn.CheckpointError, match="Adam"):
        other.resume()
    # a checkpoint whose parameters are not finite (saved after divergence) is refused
    bad = rnn.load_checkpoint(path)
    key = next(iter(bad.params))
    bad.params[key] = np.full_like(bad.params[key], np.nan)
    bad_path = tmp_path / "nan.npz"
    rnn.save_checkpoint(bad_path, bad)
    _, other, _, _ = make_trainer(hidden=4, path=str(bad_path))
    before = {k: v.copy() for k, v in other.model.state_dict().items()}
    with pytest.raises(rnn.CheckpointError, match="non-finite"):
        other.resume()
    for k, v in other.model.state_dict().items():  # nothing was changed
        assert np.array_equal(v, before[k]), k
    # the failed attempts changed nothing; the right model resumes
    _, same, _, _ = make_trainer(hidden=4, path=str(path))
    same.resume()
    assert same.steps_done == 2


def test_trainer_rejects_nan_loss():
    model, tr, nb, _ = make_trainer()
    ids, tg, mask, h = nb(0)
    with pytest.raises(FloatingPointError, match="loss"):
        tr.train_step(ids, tg, mask, np.full_like(h, np.nan))
    assert tr.steps_done == 0


# ----------------------------------------------------------------------------- truncated BPTT

@pytest.mark.parametrize("cell", ["elman", "lstm"])
def test_truncated_bptt_is_full_bptt_with_stop_gradient(cell):
    """Chunk 2's loss with the state carried in as a new placeholder has the gradient
    of the full graph with a stop_gradient on the state entering chunk 2; the full-BPTT
    gradient is that plus the contribution that flows back across the boundary."""
    Tc, Bc, Dc, Hc = 3, 2, 3, 4
    m = rnn.RNN(cell, Dc, Hc).init(5)
    nodes = m.nodes()
    params = list(nodes.values())
    ns = 2 if cell == "lstm" else 1
    rng = np.random.default_rng(0)
    x1v, x2v = rng.standard_normal((Tc, Bc, Dc)), rng.standard_normal((Tc, Bc, Dc))
    w = rng.standard_normal((Tc, Bc, Hc))
    pv = list(m.state_dict().values())

    x1, x2 = ag.placeholder("x1", (Tc, Bc, Dc)), ag.placeholder("x2", (Tc, Bc, Dc))
    _, (fin1,) = m(x1)

    def chunk2_loss(state):
        hs2, _ = m(x2, state0=[state])
        return ag.sum(hs2 * w)

    # (a) truncated BPTT: chunk 1 run on its own, its final state fed in as data
    carried = tuple(ag.placeholder(f"carry{j}", (Bc, Hc)) for j in range(ns))
    loss_t = chunk2_loss(carried)
    g_carry_and_params = ag.grad(loss_t, list(carried) + params)
    state1 = ag.function([x1] + params, list(fin1))(x1v, *pv)
    state1 = state1 if isinstance(state1, list) else [state1]
    out_t = ag.function([x2, *carried] + params, g_carry_and_params)(x2v, *state1, *pv)
    g_carry, g_trunc = out_t[:ns], out_t[ns:]

    # (b) one graph over both chunks with stop_gradient at the boundary
    loss_s = chunk2_loss(tuple(ag.stop_gradient(s) for s in fin1))
    g_stop = ag.function([x1, x2] + params, ag.grad(loss_s, [x1] + params))(x1v, x2v, *pv)
    np.testing.assert_array_equal(g_stop[0], 0.0)  # nothing reaches chunk 1's inputs
    for name, a, b in zip(nodes, g_trunc, g_stop[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15, err_msg=name)

    # (c) full BPTT = truncated + the contribution across the boundary, i.e. the VJP of
    # chunk 1's final state with the cotangent ∂loss/∂(carried state)
    loss_f = chunk2_loss(tuple(fin1))
    g_full = ag.function([x1, x2] + params, ag.grad(loss_f, params))(x1v, x2v, *pv)
    cot = tuple(ag.placeholder(f"cot{j}", (Bc, Hc)) for j in range(ns))
    across = ag.grad(sum(ag.sum(s * c) for s, c in zip(fin1, cot)), params)
    g_across = ag.function([x1, *cot] + params, across)(x1v, *g_carry, *pv)
    diff = 0.0
    for name, f, t, a in zip(nodes, g_full, g_trunc, g_across):
        np.testing.assert_allclose(f, t + a, rtol=1e-12, atol=1e-13, err_msg=name)
        diff = max(diff, np.abs(f - t).max())
    assert diff > 1e-3  # truncation really drops something

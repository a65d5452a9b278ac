"""The course material's RNN architectures as modules that build graphs.

=====================  ==================================================================
one-to-one             `OneToOne`: a feed-forward net, y = V·tanh(U·x + b) + c
one-to-many            `OneToMany`: a vector x starts (or is fed into every step of) a
                       decoder that writes a token sequence (image captioning)
many-to-one            `SequenceClassifier`: the readout reads the last real state
many-to-many (equal)   `Tagger`: one readout per time step
many-to-many (n-to-m)  `Seq2Seq`: encoder → context C → decoder, teacher forcing with
                       ``<go>``/``<eos>``, optional source reversal, greedy decoding;
                       ``attention=True`` adds Bahdanau's additive attention
=====================  ==================================================================

Conventions are the package's: tensors are time-major ([T, B, …]), token ids are
int64, masks are bool [T, B] (True at real tokens, right padding). Every module builds
graphs from placeholders; its parameters are `module.p(key)` placeholders, so
``rnn.Step(model, inputs, loss, outputs)`` compiles any loss built here. Each class also
has a `placeholders()` / `loss(...)` pair and a `step(backend)` shortcut that returns
the ready `rnn.Step`.

Greedy decoding (`OneToMany.generate`, `Seq2Seq.greedy`) is a Python loop over a
compiled one-step function (the arg-max of the logits is not a graph op): each step
feeds the previous step's most probable token back in and stops at ``<eos>`` or
`max_len`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

import autograph as ag

from .cells import CELLS, Cell
from .layers import RNN, Embedding, Linear, one_hot, run
from .losses import sequence_cross_entropy
from .module import Module
from .train import DEFAULT_BACKEND, Step, compile_function

NEG = -1e9   # the score of a masked (pad) source position before the softmax


def _check_size(what, v, owner):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {v!r}")
    return int(v)


class _TokenInput(Module):
    """Shared input coding: int64 token ids go through an `Embedding` (``embed_dim``)
    or one-hot vectors (``embed_dim=None``, the course's coding); float inputs
    [T, B, D] are used as they are."""

    def _make_input(self, input_size, embed_dim, key="embed"):
        self.input_size = _check_size("input_size", input_size, self.name)
        self.embed_dim = None if embed_dim is None else _check_size("embed_dim", embed_dim,
                                                                    self.name)
        emb = Embedding(self.input_size, self.embed_dim, name=f"{self.name}.{key}",
                        dtype=self.dtype) if self.embed_dim else None
        return emb, (self.embed_dim or self.input_size)

    def _code(self, x, emb, vocab):
        x = ag.as_node(x)
        if x.dtype == "int64":
            return emb(x) if emb is not None else one_hot(x, vocab, self.dtype)
        return x


# --------------------------------------------------------------------------- 1 → 1

class OneToOne(Module):
    """One input vector, one output: y = V·tanh(U·x + b) + c (logits or a regression).
    ``hidden_size=None`` drops the hidden layer: y = V·x + c."""

    def __init__(self, in_features: int, out_features: int, hidden_size: int | None = None,
                 *, name="one_to_one", dtype="float64"):
        super().__init__(name, dtype)
        self.hidden = Linear(in_features, hidden_size, name=f"{name}.hidden", dtype=dtype) \
            if hidden_size else None
        self.out = Linear(hidden_size or in_features, out_features, name=f"{name}.out",
                          dtype=dtype)
        self.children = [m for m in (self.hidden, self.out) if m is not None]
        self.in_features, self.out_features = in_features, out_features

    def __call__(self, x):
        """Logits [B, out] for x [B, in]."""
        h = ag.tanh(self.hidden(x)) if self.hidden is not None else x
        return self.out(h)

    def placeholders(self):
        return [ag.placeholder("x", ("B", self.in_features), self.dtype),
                ag.placeholder("y", ("B",), "int64")]

    def loss(self, x, y):
        return ag.cross_entropy(self(x), y, "mean", name="L")

    def step(self, backend=DEFAULT_BACKEND) -> Step:
        x, y = self.placeholders()
        return Step(self, [x, y], self.loss(x, y), [self(x)], backend)


# --------------------------------------------------------------------------- n → 1

class SequenceClassifier(_TokenInput):
    """Many-to-one: an RNN reads the sequence, the readout V·s_T + c reads its last
    state. With a mask, the state is carried through pad steps (`rnn.run`), so s_T is
    each sequence's last *real* state and padding never changes the prediction.
    Bidirectional stacks read the forward final state and the backward one (the state
    after the first token), concatenated."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, *,
                 cell="elman", num_layers=1, bidirectional=False, embed_dim=None,
                 name="classifier", dtype="float64", **cell_options):
        super().__init__(name, dtype)
        self.embed, d_in = self._make_input(input_size, embed_dim)
        self.rnn = RNN(cell, d_in, hidden_size, num_layers, bidirectional=bidirectional,
                       name=f"{name}.rnn", dtype=dtype, **cell_options)
        self.num_classes = _check_size("num_classes", num_classes, name)
        self.out = Linear(hidden_size * self.rnn.directions, num_classes, name=f"{name}.out",
                          dtype=dtype)
        self.children = [m for m in (self.embed, self.rnn, self.out) if m is not None]
        self._predict = None

    def __call__(self, x, mask=None):
        """Logits [B, classes] for ids [T, B] (int64) or inputs [T, B, D]."""
        xs = self._code(x, self.embed, self.input_size)
        _, finals = self.rnn(xs, mask=mask)
        top = [st[0] for st in finals[-self.rnn.directions:]]
        return self.out(top[0] if len(top) == 1 else ag.concat(top, axis=-1))

    def placeholders(self, tokens=True):
        """``[x, mask, labels]``: ids [T, B] (or inputs [T, B, D] with ``tokens=False``)."""
        x = ag.placeholder("x", ("T", "B"), "int64") if tokens else \
            ag.placeholder("x", ("T", "B", self.input_size), self.dtype)
        return [x, ag.placeholder("mask", ("T", "B"), "bool"),
                ag.placeholder("labels", ("B",), "int64")]

    def loss(self, x, mask, labels):
        return ag.cross_entropy(self(x, mask), labels, "mean", name="L")

    def step(self, backend=DEFAULT_BACKEND, tokens=True) -> Step:
        """A `Step` taking ``(x, mask, labels)``; its output is the logits [B, classes]."""
        x, mask, labels = self.placeholders(tokens)
        return Step(self, [x, mask, labels], self.loss(x, mask, labels), [self(x, mask)],
                    backend)

    def predict(self, x, mask=None, backend=DEFAULT_BACKEND) -> np.ndarray:
        """Class probabilities [B, classes] for a NumPy batch (mask: all True if None)."""
        x = np.asarray(x)
        if x.ndim < 2:
            raise ag.ShapeError(f"{self.name}: inputs must be [T, B] ids or [T, B, D], got "
                                f"shape {list(x.shape)}")
        mask = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask)
        if mask.shape != x.shape[:2]:
            raise ag.ShapeError(f"{self.name}: the mask has shape {list(mask.shape)}; it must "
                                f"be [T, B] = {list(x.shape[:2])} like the inputs")
        if mask.dtype != bool:
            raise ag.DTypeError(f"{self.name}: the mask must be bool, got {mask.dtype}")
        if x.dtype.kind in "iu":
            _check_ids(x, self.input_size, f"{self.name}: input")
            x = x.astype(np.int64)
        tokens = x.ndim == 2
        key = (tokens, backend)
        if self._predict is None or self._predict[0] != key:
            xp, mp, _ = self.placeholders(tokens)
            probs = ag.softmax(self(xp, mp), axis=-1)
            self._predict = (key, compile_function([xp, mp, *self.nodes().values()], probs,
                                                   backend))
        return self._predict[1](x, mask, *self.state_dict().values())


# --------------------------------------------------------------------------- n → n

class Tagger(_TokenInput):
    """Many-to-many, equal lengths: one output per input, y_t = V·s_t + c (per-frame
    labels, part-of-speech tags, next-character prediction)."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, *,
                 cell="elman", num_layers=1, bidirectional=False, embed_dim=None,
                 name="tagger", dtype="float64", **cell_options):
        super().__init__(name, dtype)
        self.embed, d_in = self._make_input(input_size, embed_dim)
        self.rnn = RNN(cell, d_in, hidden_size, num_layers, bidirectional=bidirectional,
                       name=f"{name}.rnn", dtype=dtype, **cell_options)
        self.num_classes = _check_size("num_classes", num_classes, name)
        self.out = Linear(hidden_size * self.rnn.directions, num_classes, name=f"{name}.out",
                          dtype=dtype)
        self.children = [m for m in (self.embed, self.rnn, self.out) if m is not None]

    def __call__(self, x, mask=None):
        """Logits [T, B, classes] for ids [T, B] or inputs [T, B, D]."""
        hs, _ = self.rnn(self._code(x, self.embed, self.input_size), mask=mask)
        return self.out(hs)

    def placeholders(self, tokens=True):
        x = ag.placeholder("x", ("T", "B"), "int64") if tokens else \
            ag.placeholder("x", ("T", "B", self.input_size), self.dtype)
        return [x, ag.placeholder("targets", ("T", "B"), "int64"),
                ag.placeholder("mask", ("T", "B"), "bool")]

    def loss(self, x, targets, mask=None, reduction="mean"):
        return sequence_cross_entropy(self(x, mask), targets, mask, reduction).named("L")

    def step(self, backend=DEFAULT_BACKEND, tokens=True, reduction="mean") -> Step:
        """A `Step` taking ``(x, targets, mask)``; its output is the logits [T, B, C]."""
        x, t, m = self.placeholders(tokens)
        return Step(self, [x, t, m], self.loss(x, t, m, reduction), [self(x, m)], backend)


# --------------------------------------------------------------------------- decoding

@dataclass
class Decoded:
    """The result of greedy decoding.

    `tokens`: per sequence, the ids written before ``<eos>`` (without it).
    `ids` [T, B]: every step's arg-max (T ≤ max_len; after a sequence's ``<eos>`` its
    column holds the eos id). `finished` [B]: whether ``<eos>`` came before max_len.
    `attention` [T, B, S] (attention models only): the weights a_ij of each step.
    """

    tokens: list
    ids: np.ndarray
    finished: np.ndarray
    attention: np.ndarray | None = None


def _check_ids(ids, vocab_size, what):
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ag.DTypeError(f"{what} ids must be integers, got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise ValueError(f"{what} token id {int(bad.flat[0])} is not in the vocabulary of "
                         f"{vocab_size} tokens (ids are 0 … {vocab_size - 1})")


def _greedy_loop(one_step, state, first, batch, max_len, eos_id, extra=(), with_attn=False):
    """Feed the arg-max back: ``logits, *state, [attn] = one_step(prev, *state, *extra)``."""
    if not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    prev = np.full((batch,), first, np.int64)
    done = np.zeros(batch, bool)
    out, attn = [], []
    n_state = len(state)
    for _ in range(int(max_len)):
        values = one_step(prev, *state, *extra)
        logits, state = values[0], list(values[1:1 + n_state])
        if with_attn:
            attn.append(values[1 + n_state])
        prev = np.where(done, eos_id, np.argmax(logits, axis=-1)).astype(np.int64)
        out.append(prev)
        done |= prev == eos_id
        if done.all():
            break
    ids = np.stack(out)
    tokens = []
    for b in range(batch):
        col = ids[:, b].tolist()
        tokens.append(col[:col.index(eos_id)] if eos_id in col else col)
    return Decoded(tokens, ids, done.copy(), np.stack(attn) if with_attn else None)


def shift_targets(sequences: Sequence[Sequence[int]], go_id: int, eos_id: int,
                  pad_id: int = 0):
    """Teacher forcing data for target sequences: ``(dec_in, dec_out, mask)``, each
    [T, B] with T = longest + 1. dec_in is ``<go> y_1 … y_n`` (what the decoder reads,
    the targets pushed back by one step), dec_out is ``y_1 … y_n <eos>`` (what it must
    write); mask is True on those n + 1 real positions."""
    if len(sequences) == 0:
        raise ValueError("shift_targets needs at least one sequence")
    T = max(len(s) for s in sequences) + 1
    dec_in = np.full((T, len(sequences)), pad_id, np.int64)
    dec_out = np.full((T, len(sequences)), pad_id, np.int64)
    mask = np.zeros((T, len(sequences)), bool)
    for b, s in enumerate(sequences):
        s = np.asarray(s, np.int64)
        n = len(s)
        dec_in[0, b] = go_id
        dec_in[1:n + 1, b] = s
        dec_out[:n, b] = s
        dec_out[n, b] = eos_id
        mask[:n + 1, b] = True
    return dec_in, dec_out, mask


def _state_like(cell: Cell, first):
    """A full state tuple whose first component is `first`, the others zeros."""
    return (first,) + tuple(ag.zeros_like(first) for _ in cell.state_names[1:])


# --------------------------------------------------------------------------- 1 → n

class OneToMany(_TokenInput):
    """One-to-many (image captioning): a vector x [B, D] → a token sequence.

    ``feed="init"``: x sets the first state, s_0 = tanh(A·x + a) (the other components of
    an LSTM state start at zero). ``feed="every_step"``: s_0 = 0 and x is concatenated to
    the input of every step. ``feed="both"`` does both. Each step also reads the token
    written before it (``<go>`` first): teacher forcing in training (`loss`), the model's
    own arg-max in `generate`.
    """

    FEEDS = ("init", "every_step", "both")

    def __init__(self, in_features: int, vocab_size: int, hidden_size: int, *,
                 go_id: int, eos_id: int, feed="init", cell="elman", embed_dim=None,
                 name="one_to_many", dtype="float64", **cell_options):
        super().__init__(name, dtype)
        if feed not in self.FEEDS:
            raise ValueError(f"{name}: feed must be one of {self.FEEDS}, got {feed!r}")
        if cell not in CELLS:
            raise ValueError(f"{name}: unknown cell {cell!r}; choose one of {sorted(CELLS)}")
        self.feed = feed
        self.in_features = _check_size("in_features", in_features, name)
        self.embed, d_tok = self._make_input(vocab_size, embed_dim)
        self.vocab_size = self.input_size
        self.go_id, self.eos_id = int(go_id), int(eos_id)
        _check_ids([self.go_id, self.eos_id], self.vocab_size, f"{name}: <go>/<eos>")
        d_in = d_tok + (self.in_features if feed != "init" else 0)
        self.cell = CELLS[cell](d_in, hidden_size, name=f"{name}.{cell}", dtype=dtype,
                                **cell_options)
        self.init_proj = Linear(self.in_features, hidden_size, name=f"{name}.init",
                                dtype=dtype) if feed != "every_step" else None
        self.out = Linear(hidden_size, self.vocab_size, name=f"{name}.out", dtype=dtype)
        self.children = [m for m in (self.embed, self.init_proj, self.cell, self.out)
                         if m is not None]
        self._one_step = None

    def initial_state(self, x):
        if self.init_proj is not None:
            return _state_like(self.cell, ag.tanh(self.init_proj(x)))
        return self.cell.initial_state(x.shape[0])

    def _step(self, x):
        def step(state, e_t):
            if self.feed != "init":
                e_t = ag.concat([e_t, x], axis=-1)
            new, h = self.cell.step(state, e_t)
            return new, h
        return step

    def __call__(self, x, dec_in):
        """Logits [T, B, V] for x [B, D] and the tokens read, dec_in [T, B] (``<go>`` …)."""
        x = ag.as_node(x)
        _, hs = ag.scan(self._step(x), self.initial_state(x),
                        self._code(dec_in, self.embed, self.vocab_size))
        return self.out(hs)

    def placeholders(self):
        """``[x, dec_in, dec_out, mask]`` (see `shift_targets`)."""
        return [ag.placeholder("x", ("B", self.in_features), self.dtype),
                ag.placeholder("dec_in", ("T", "B"), "int64"),
                ag.placeholder("dec_out", ("T", "B"), "int64"),
                ag.placeholder("mask", ("T", "B"), "bool")]

    def loss(self, x, dec_in, dec_out, mask=None, reduction="mean"):
        return sequence_cross_entropy(self(x, dec_in), dec_out, mask, reduction).named("L")

    def step(self, backend=DEFAULT_BACKEND) -> Step:
        x, di, do, m = self.placeholders()
        return Step(self, [x, di, do, m], self.loss(x, di, do, m), [self(x, di)], backend)

    def generate(self, x, max_len: int = 20, backend=DEFAULT_BACKEND) -> Decoded:
        """Greedy decoding from x [B, D]: stops at ``<eos>`` or after `max_len` tokens."""
        x = np.asarray(x, self.dtype)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ag.ShapeError(f"{self.name}: x must be [B, {self.in_features}], got "
                                f"{list(x.shape)}")
        if self._one_step is None or self._one_step[0] != backend:
            xp = ag.placeholder("x", ("B", self.in_features), self.dtype)
            prev = ag.placeholder("prev", ("B",), "int64")
            state = tuple(ag.placeholder(f"state.{k}", ("B", self.cell.hidden_size),
                                         self.dtype) for k in self.cell.state_names)
            new, h = self._step(xp)(state, self._code(prev, self.embed, self.vocab_size))
            one = compile_function([prev, *state, xp, *self.nodes().values()],
                                   [self.out(h), *new], backend)
            s0 = compile_function([xp, *self.nodes().values()],
                                  list(self.initial_state(xp)), backend)
            self._one_step = (backend, one, s0)
        _, one, s0 = self._one_step
        params = list(self.state_dict().values())
        state = s0(x, *params)
        return _greedy_loop(one, state, self.go_id, x.shape[0], max_len, self.eos_id,
                            extra=(x, *params))


# --------------------------------------------------------------------------- n → m

class Attention(Module):
    """Bahdanau's additive attention (Bahdanau, Cho & Bengio 2015):

        e_ij = vᵀ tanh(W_a·s_{i−1} + U_a·h_j),   a_ij = softmax_j(e_ij),   c_i = Σ_j a_ij h_j

    over the encoder states h_j [S, B, H]; source pad positions get e_ij = −1e9, so their
    weight is 0. U_a·h_j does not depend on i and is computed once, outside the decoder
    loop (`keys`)."""

    def __init__(self, query_size: int, key_size: int, attn_size: int, *, name="attn",
                 dtype="float64"):
        super().__init__(name, dtype)
        self.add("W", (attn_size, query_size))
        self.add("U", (attn_size, key_size))
        self.add("v", (attn_size,))
        self.fan = attn_size

    def keys(self, hs):
        return hs @ self.p("U").T                            # [S, B, A]

    def __call__(self, s, hs, keys, mask=None):
        """``(c, a)``: the context [B, H] and the weights a [S, B] for state s [B, Hd]."""
        e = ag.sum(ag.tanh(keys + s @ self.p("W").T) * self.p("v"), axis=-1)   # [S, B]
        if mask is not None:
            e = ag.where(mask, e, NEG)
        a = ag.softmax(e, axis=0).named("a")
        c = ag.sum(a[:, :, None] * hs, axis=0).named("c")
        return c, a


class Seq2Seq(Module):
    """Encoder–decoder (n-to-m): the encoder RNN reads the source, the decoder RNN
    writes the target, one token per step, reading the token before (``<go>`` first)
    and ending with ``<eos>``.

    ``context``: the context vector C is the encoder's final state; it is the decoder's
    initial state (``"init"``, the course's h_0 = C; needs equal hidden sizes), or
    concatenated to every decoder input (``"every_step"``, with s_0 = 0), or ``"both"``.
    ``reverse_source``: the encoder reads each source backwards (Sutskever et al.; the
    course's "milk drink I"). With a mask, only the real tokens are reversed: the
    encoder runs from the last real token to the first, pads carry the zero state.

    ``attention=True``: `Attention` (additive, Bahdanau) over all encoder states; the
    decoder step i reads [embed(y_{i−1}), c_i] (plus C with ``"every_step"``) and the
    readout is V·[s_i, c_i] + b. `__call__` then also returns the weights a [T, B, S].
    """

    CONTEXTS = ("init", "every_step", "both")

    def __init__(self, src_vocab: int, tgt_vocab: int, hidden_size: int, *,
                 go_id: int, eos_id: int, embed_dim: int | None = 16, cell="gru",
                 context="init", reverse_source=False, attention=False,
                 attn_size: int | None = None, name="seq2seq", dtype="float64"):
        super().__init__(name, dtype)
        if context not in self.CONTEXTS:
            raise ValueError(f"{name}: context must be one of {self.CONTEXTS}, got {context!r}")
        if cell not in CELLS:
            raise ValueError(f"{name}: unknown cell {cell!r}; choose one of {sorted(CELLS)}")
        self.src_vocab = _check_size("src_vocab", src_vocab, name)
        self.tgt_vocab = _check_size("tgt_vocab", tgt_vocab, name)
        H = self.hidden_size = _check_size("hidden_size", hidden_size, name)
        self.embed_dim = embed_dim
        self.go_id, self.eos_id = int(go_id), int(eos_id)
        _check_ids([self.go_id, self.eos_id], self.tgt_vocab, f"{name}: <go>/<eos>")
        self.context, self.reverse_source = context, bool(reverse_source)
        self.attention = bool(attention)
        self.src_embed = Embedding(src_vocab, embed_dim, name=f"{name}.src_embed",
                                   dtype=dtype) if embed_dim else None
        self.tgt_embed = Embedding(tgt_vocab, embed_dim, name=f"{name}.tgt_embed",
                                   dtype=dtype) if embed_dim else None
        d_src, d_tgt = embed_dim or src_vocab, embed_dim or tgt_vocab
        self.encoder = CELLS[cell](d_src, H, name=f"{name}.encoder", dtype=dtype)
        d_dec = d_tgt + (H if context != "init" else 0) + (H if attention else 0)
        self.decoder = CELLS[cell](d_dec, H, name=f"{name}.decoder", dtype=dtype)
        self.attn = Attention(H, H, attn_size or H, name=f"{name}.attn", dtype=dtype) \
            if attention else None
        self.out = Linear(H * (2 if attention else 1), tgt_vocab, name=f"{name}.out",
                          dtype=dtype)
        self.children = [m for m in (self.src_embed, self.tgt_embed, self.encoder,
                                     self.attn, self.decoder, self.out) if m is not None]
        self._compiled = None

    # ------------------------------------------------------------ graph pieces

    def _src(self, ids):
        return self.src_embed(ids) if self.src_embed else one_hot(ids, self.src_vocab, self.dtype)

    def _tgt(self, ids):
        return self.tgt_embed(ids) if self.tgt_embed else one_hot(ids, self.tgt_vocab, self.dtype)

    def encode(self, src, src_mask=None):
        """``(hs, final)``: encoder states [S, B, H] (hs[j] belongs to source position j,
        reversed or not) and the final state tuple (C is its first component)."""
        src = ag.as_node(src)
        if src.dtype != "int64" or src.ndim != 2:
            raise ag.ShapeError(f"{self.name}: the source must be int64 ids [S, B], got "
                                f"{src.label!r} ({src.type_str})")
        final, hs = run(self.encoder, self._src(src), mask=src_mask,
                        reverse=self.reverse_source)
        return hs, final

    def decoder_state0(self, final):
        if self.context == "every_step":
            return self.decoder.initial_state(final[0].shape[0])
        return tuple(final)

    def _dec_step(self, C, hs, keys, src_mask):
        """One decoder step ``(state, e_t) → (state, (logits_t, a_t))``."""
        def step(state, e_t):
            parts = [e_t]
            if self.context != "init":
                parts.append(C)
            if self.attn is not None:
                c, a = self.attn(state[0], hs, keys, src_mask)
                parts.append(c)
            x_t = parts[0] if len(parts) == 1 else ag.concat(parts, axis=-1)
            new, h = self.decoder.step(state, x_t)
            if self.attn is None:
                return new, (self.out(h),)
            return new, (self.out(ag.concat([h, c], axis=-1)), a.T)
        return step

    def __call__(self, src, dec_in, src_mask=None):
        """Teacher forcing: logits [T, B, V] for the source ids [S, B] and the decoder's
        inputs dec_in [T, B] (``<go> y_1 … y_n``). With attention, returns
        ``(logits, weights)``, weights [T, B, S] (row i: a_ij over source positions j)."""
        hs, final = self.encode(src, src_mask)
        keys = self.attn.keys(hs) if self.attn is not None else None
        step = self._dec_step(final[0], hs, keys, src_mask)
        _, ys = ag.scan(step, self.decoder_state0(final), self._tgt(ag.as_node(dec_in)))
        if self.attn is None:
            return ys[0]
        return ys[0], ys[1].named("attention")

    def placeholders(self):
        """``[src, src_mask, dec_in, dec_out, tgt_mask]`` (see `shift_targets`)."""
        return [ag.placeholder("src", ("S", "B"), "int64"),
                ag.placeholder("src_mask", ("S", "B"), "bool"),
                ag.placeholder("dec_in", ("T", "B"), "int64"),
                ag.placeholder("dec_out", ("T", "B"), "int64"),
                ag.placeholder("tgt_mask", ("T", "B"), "bool")]

    def loss(self, src, src_mask, dec_in, dec_out, tgt_mask, reduction="mean"):
        """``(L, outputs)``: the masked cross-entropy and [logits] (+ [weights])."""
        out = self(src, dec_in, src_mask)
        outs = list(out) if self.attn is not None else [out]
        return sequence_cross_entropy(outs[0], dec_out, tgt_mask, reduction).named("L"), outs

    def step(self, backend=DEFAULT_BACKEND, reduction="mean") -> Step:
        """A `Step` taking ``(src, src_mask, dec_in, dec_out, tgt_mask)``; outputs are the
        logits [T, B, V] and, with attention, the weights [T, B, S]."""
        ph = self.placeholders()
        L, outs = self.loss(*ph, reduction=reduction)
        return Step(self, ph, L, outs, backend)

    # ------------------------------------------------------------ inference

    def _compile(self, backend):
        if self._compiled is not None and self._compiled[0] == backend:
            return self._compiled[1:]
        params = list(self.nodes().values())
        src = ag.placeholder("src", ("S", "B"), "int64")
        m = ag.placeholder("src_mask", ("S", "B"), "bool")
        hs, final = self.encode(src, m)
        s0 = self.decoder_state0(final)
        enc = compile_function([src, m, *params], [hs, final[0], *s0], backend)
        hs_p = ag.placeholder("hs", ("S", "B", self.hidden_size), self.dtype)
        C_p = ag.placeholder("C", ("B", self.hidden_size), self.dtype)
        prev = ag.placeholder("prev", ("B",), "int64")
        state = tuple(ag.placeholder(f"state.{k}", ("B", self.hidden_size), self.dtype)
                      for k in self.decoder.state_names)
        keys = self.attn.keys(hs_p) if self.attn is not None else None
        new, ys = self._dec_step(C_p, hs_p, keys, m)(state, self._tgt(prev))
        one = compile_function([prev, *state, hs_p, m, C_p, *params],
                               [ys[0], *new, *ys[1:]], backend)
        self._compiled = (backend, enc, one)
        return enc, one

    def greedy(self, src, src_mask=None, max_len: int = 50, backend=DEFAULT_BACKEND) -> Decoded:
        """Greedy decoding of a batch of sources ids [S, B] (mask: all True if None):
        start from ``<go>``, feed each step's arg-max back, stop at ``<eos>`` (per
        sequence) or after `max_len` tokens. Returns a `Decoded`."""
        src = np.asarray(src)
        if src.ndim != 2:
            raise ag.ShapeError(f"{self.name}: the source must be ids [S, B], got shape "
                                f"{list(src.shape)}")
        _check_ids(src, self.src_vocab, f"{self.name}: source")
        src = src.astype(np.int64)
        mask = np.ones(src.shape, bool) if src_mask is None else np.asarray(src_mask)
        if mask.shape != src.shape:
            raise ag.ShapeError(f"{self.name}: the source mask has shape {list(mask.shape)}; "
                                f"it must be [S, B] = {list(src.shape)} like the source")
        if mask.dtype != bool:
            raise ag.DTypeError(f"{self.name}: the source mask must be bool, got {mask.dtype}")
        if not mask.any(axis=0).all():
            raise ValueError(f"{self.name}: every source needs at least one real token")
        enc, one = self._compile(backend)
        params = list(self.state_dict().values())
        hs, C, *s0 = enc(src, mask, *params)
        return _greedy_loop(one, s0, self.go_id, src.shape[1], max_len, self.eos_id,
                            extra=(hs, mask, C, *params), with_attn=self.attn is not None)


def token_accuracy(predicted: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]):
    """The fraction of target positions where the prediction has the same token (a
    prediction that is too short counts as wrong at the missing positions)."""
    right = total = 0
    for p, t in zip(predicted, targets):
        total += len(t)
        right += sum(1 for a, b in zip(p, t) if a == b)
    return right / max(total, 1)

"""Language models: an embedding (or one-hot input), a recurrent stack and a softmax
readout, trained with truncated BPTT on a stream of tokens, and sampled from."""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np

import autograph as ag

from .checkpoint import CheckpointError, load_checkpoint
from .data import Vocab, char_tokens
from .layers import RNN, Embedding, Linear, one_hot
from .module import Module
from .optim import OPTIMIZERS
from .train import DEFAULT_BACKEND, Step, Trainer, compile_function


class LanguageModel(Module):
    """P(x_{t+1} | x_1 … x_t): tokens → embedding (or one-hot) → RNN → V·h_t + c → softmax."""

    def __init__(self, vocab_size: int, hidden_size: int = 128, num_layers: int = 1,
                 cell: str = "lstm", embed_dim: int | None = None, name="lm", dtype="float64"):
        super().__init__(name, dtype)
        self.config = dict(vocab_size=int(vocab_size), hidden_size=int(hidden_size),
                           num_layers=int(num_layers), cell=cell,
                           embed_dim=None if embed_dim is None else int(embed_dim),
                           dtype=self.dtype)
        self.embed = Embedding(vocab_size, embed_dim, name=f"{name}.embed", dtype=dtype) \
            if embed_dim else None
        d_in = embed_dim or vocab_size
        self.rnn = RNN(cell, d_in, hidden_size, num_layers, name=f"{name}.rnn", dtype=dtype)
        self.out = Linear(hidden_size, vocab_size, name=f"{name}.out", dtype=dtype)
        self.children = [m for m in (self.embed, self.rnn, self.out) if m is not None]

    def state_inputs(self, batch="B") -> list[tuple]:
        """One placeholder per cell and state component: the state carried in."""
        return [tuple(ag.placeholder(f"state.{c.name}.{k}", (batch, c.hidden_size), self.dtype)
                      for k in c.state_names) for c in self.rnn.cells]

    def logits(self, ids, state0):
        """Logits [T, B, V] for ids [T, B], and the final states."""
        x = self.embed(ids) if self.embed else one_hot(ids, self.config["vocab_size"], self.dtype)
        hs, finals = self.rnn(x, state0)
        return self.out(hs), finals

    def zero_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, c.hidden_size), self.dtype)
                for c in self.rnn.cells for _ in c.state_names]


@dataclass
class LMGraphs:
    """The training step and the one-step sampler of a language model."""

    step: Step
    sampler: object
    n_state: int


def build(model: LanguageModel, backend=DEFAULT_BACKEND) -> LMGraphs:
    ids = ag.placeholder("ids", ("T", "B"), "int64")
    targets = ag.placeholder("targets", ("T", "B"), "int64")
    state0 = model.state_inputs()
    logits, finals = model.logits(ids, state0)
    loss = ag.cross_entropy(logits, targets, "mean", name="L")
    flat_in = [s for st in state0 for s in st]
    flat_out = [s for st in finals for s in st]
    step = Step(model, [ids, targets, *flat_in], loss, flat_out, backend)
    last = logits[-1]
    sampler = compile_function([ids, *flat_in, *model.nodes().values()], [last, *flat_out],
                               backend)
    return LMGraphs(step, sampler, len(flat_in))


def stream_batches(ids: np.ndarray, batch: int, seq_len: int):
    """Cut a token stream into `batch` parallel streams; chunk i of an epoch is
    ``(x, y)`` [seq_len, batch] with y the next tokens (classic TBPTT batching)."""
    per = (len(ids) - 1) // batch
    if per < seq_len:
        raise ValueError(f"the text has {len(ids)} tokens: too short for batch={batch} "
                         f"streams of seq_len={seq_len} (needs {batch * seq_len + 1})")
    streams = ids[:per * batch + 1]
    xs = np.stack([streams[b * per: b * per + per] for b in range(batch)], axis=1)
    ys = np.stack([streams[b * per + 1: b * per + per + 1] for b in range(batch)], axis=1)
    n = per // seq_len
    return n, lambda i: (np.ascontiguousarray(xs[(i % n) * seq_len:(i % n + 1) * seq_len]),
                         np.ascontiguousarray(ys[(i % n) * seq_len:(i % n + 1) * seq_len]))


def unigram_entropy(ids: np.ndarray) -> float:
    """Bits per token of the best model that ignores context: H = −Σ p log₂ p."""
    counts = np.bincount(ids)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def bits_per_token(graphs: LMGraphs, model: LanguageModel, ids: np.ndarray, batch: int,
                   seq_len: int) -> float:
    """Cross-entropy of `ids` under the model in bits per token (state carried along)."""
    n, chunk = stream_batches(ids, batch, seq_len)
    state = model.zero_state(batch)
    total = 0.0
    for i in range(n):
        x, y = chunk(i)
        loss, outs = graphs.step.evaluate(x, y, *state)
        state = list(outs)
        total += loss
    return total / n / math.log(2)


def sample(graphs: LMGraphs, model: LanguageModel, vocab: Vocab, prime: str, length: int,
           temperature: float = 1.0, seed: int = 0) -> str:
    """Text drawn from the model: it reads `prime`, then draws `length` characters,
    each from softmax(logits / temperature)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    rng = np.random.default_rng(seed)
    params = list(model.state_dict().values())
    state = [np.ascontiguousarray(s) for s in model.zero_state(1)]
    token = np.zeros((1, 1), dtype=np.int64)
    step = graphs.sampler.bind(token, *state, *params)   # one prepared call per token
    prime_ids = vocab.encode(char_tokens(prime or "\n"))

    def advance(tok):
        token[0, 0] = tok
        logits, *new_state = step()
        for s, n in zip(state, new_state):
            s[...] = n                  # the state is fed back in place
        return logits

    out = []
    logits = None
    for tok in prime_ids:
        logits = advance(tok)
    for _ in range(length):
        z = logits[0] / temperature
        p = np.exp(z - z.max())
        p[vocab.pad_id] = 0.0   # never draw padding
        p /= p.sum()
        tok = int(rng.choice(len(p), p=p))
        out.append(vocab.tokens[tok])
        logits = advance(tok)
    return "".join(t if len(t) == 1 else "" for t in out)


def default_corpus(package: str = "json") -> tuple[str, list[pathlib.Path]]:
    """The source of one standard-library package: text on every Python install."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"the standard library has no package {package!r} here")
    root = pathlib.Path(spec.origin).parent
    files = sorted(root.rglob("*.py")) if spec.submodule_search_locations else [pathlib.Path(spec.origin)]
    return read_corpus(files), files


def read_corpus(files) -> str:
    texts = []
    for f in files:
        f = pathlib.Path(f)
        if not f.is_file():
            raise FileNotFoundError(f"no text file at {str(f)!r}")
        texts.append(f.read_text(encoding="utf-8", errors="replace"))
    text = "\n".join(texts)
    if not text:
        raise ValueError("the corpus is empty")
    return text


def train_language_model(text: str, *, hidden_size=128, num_layers=1, cell="lstm",
                         embed_dim=None, batch=16, seq_len=64, steps=500, lr=3e-3,
                         optimizer="adam", clip_norm=5.0, checkpoint=None, resume=False,
                         eval_every=100, checkpoint_every=100, seed=0, backend=DEFAULT_BACKEND,
                         progress=True, log=print):
    """Train a character-level language model with truncated BPTT (the state is carried
    from chunk to chunk; the gradient stops at chunk boundaries). Returns a dict of
    the model, vocabulary, graphs, trainer and the validation bits per character."""
    vocab = Vocab.build(char_tokens(text))
    ids = vocab.encode(char_tokens(text))
    cut = int(len(ids) * 0.9)
    train_ids, val_ids = ids[:cut], ids[cut:]
    model = LanguageModel(len(vocab), hidden_size, num_layers, cell, embed_dim).init(seed)
    graphs = build(model, backend)
    opt = OPTIMIZERS[optimizer](lr)
    meta = dict(model.config, kind="char-lm", tokens="".join(vocab.tokens[2:]))
    trainer = Trainer(graphs.step, opt, clip_norm=clip_norm, checkpoint=checkpoint, meta=meta)
    trainer.arrays["vocab"] = vocab.to_array()
    n_chunks, chunk = stream_batches(train_ids, batch, seq_len)
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs a checkpoint path")
        trainer.resume()
        log(f"resumed from {checkpoint} at step {trainer.steps_done}")
    H = unigram_entropy(train_ids)
    val_batch = max(1, min(batch, (len(val_ids) - 1) // seq_len))

    def state_now(i):
        if i % n_chunks == 0 or "state0" not in trainer.arrays:
            return model.zero_state(batch)   # a new pass over the text starts fresh
        return [trainer.arrays[f"state{j}"] for j in range(graphs.n_state)]

    def next_batch(i):
        x, y = chunk(i)
        return (x, y, *state_now(i))

    def after_step(i, outs):
        trainer.arrays.update({f"state{j}": np.asarray(s) for j, s in enumerate(outs)})

    def evaluate():
        return {"val_bits_per_char": bits_per_token(graphs, model, val_ids, val_batch, seq_len)}

    log(f"corpus: {len(ids):,} characters, {len(vocab)} symbols; unigram entropy "
        f"{H:.3f} bits/char; {model.num_params():,} parameters")
    trainer.fit(next_batch, steps, after_step=after_step, evaluate=evaluate,
                eval_every=eval_every, checkpoint_every=checkpoint_every, progress=progress,
                describe=lambda l: f"{l / math.log(2):.3f} bits/char")
    val = bits_per_token(graphs, model, val_ids, val_batch, seq_len)
    return dict(model=model, vocab=vocab, graphs=graphs, trainer=trainer,
                val_bits_per_char=val, unigram_entropy=H)


def load_language_model(path, backend=DEFAULT_BACKEND):
    """Model, vocabulary and graphs from a checkpoint written by `train_language_model`."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("kind") != "char-lm" or "vocab" not in ckpt.arrays:
        raise CheckpointError(f"{str(path)!r} is not a language-model checkpoint")
    c = ckpt.meta
    model = LanguageModel(c["vocab_size"], c["hidden_size"], c["num_layers"], c["cell"],
                          c["embed_dim"], dtype=c["dtype"])
    try:
        model.load_state_dict(ckpt.params)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} does not fit its own model description: {e}") from e
    vocab = Vocab.from_array(ckpt.arrays["vocab"])
    return model, vocab, build(model, backend)

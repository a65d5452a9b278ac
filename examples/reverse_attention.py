"""Seq2seq with attention learns to reverse sequences; prints held-out accuracy and time.

    python examples/reverse_attention.py [--steps N] [--min-len 5] [--max-len 8] [--symbols 8]

Adam (lr 0.01 falling linearly to 0.001), GRU encoder and decoder of 32 units,
Bahdanau attention. Measured on a 2-core machine: the default (length 5-8, 400
steps) reaches 1.000 in about 5 s (seeds 0-5); ``--min-len 10 --max-len 15 --steps 800``
reaches 0.996 in about 18 s.

Token accuracy is measured with greedy decoding (the model's own outputs fed back),
on sequences never seen in training.
"""
import argparse
import time

import numpy as np

import rnn
from rnn.data import EOS, GO, Vocab


def make_task(symbols: int):
    vocab = Vocab.build([], specials=[GO, EOS])
    vocab = Vocab(vocab.tokens + [chr(ord("a") + k) for k in range(symbols)])
    return vocab, np.arange(len(vocab) - symbols, len(vocab))


def sample(rng, letters, n, lo, hi):
    return [rng.choice(letters, size=rng.integers(lo, hi + 1)) for _ in range(n)]


def batch(seqs, vocab):
    src, src_mask = rnn.pad_batch(seqs, vocab.pad_id)
    dec_in, dec_out, tgt_mask = rnn.shift_targets([s[::-1] for s in seqs], vocab.index[GO],
                                                  vocab.index[EOS], vocab.pad_id)
    return src, src_mask, dec_in, dec_out, tgt_mask


def train(steps=400, batch_size=32, lo=5, hi=8, symbols=8, hidden=32, lr=0.01, seed=0,
          progress=True):
    vocab, letters = make_task(symbols)
    model = rnn.Seq2Seq(len(vocab), len(vocab), hidden, go_id=vocab.index[GO],
                        eos_id=vocab.index[EOS], embed_dim=16, cell="gru",
                        attention=True).init(seed)
    step = model.step()
    opt = rnn.Adam(lr)
    trainer = rnn.Trainer(step, opt, clip_norm=5.0)
    rng = np.random.default_rng(seed)

    def decay(i, outputs):      # the learning rate falls linearly to lr/10
        opt.lr = lr * (1.0 - 0.9 * (i + 1) / steps)

    trainer.fit(lambda i: batch(sample(rng, letters, batch_size, lo, hi), vocab), steps,
                after_step=decay, progress=progress)
    return model, vocab, letters


def evaluate(model, vocab, letters, n=200, lo=5, hi=8, seed=123):
    rng = np.random.default_rng(seed)
    seqs = sample(rng, letters, n, lo, hi)
    src, mask = rnn.pad_batch(seqs, vocab.pad_id)
    out = model.greedy(src, mask, max_len=hi + 2)
    return rnn.token_accuracy(out.tokens, [s[::-1].tolist() for s in seqs]), out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=5)
    ap.add_argument("--max-len", type=int, default=8)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    a = ap.parse_args()
    t0 = time.perf_counter()
    model, vocab, letters = train(a.steps, a.batch, a.min_len, a.max_len, a.symbols, a.hidden,
                                  seed=a.seed, progress=a.progress)
    t1 = time.perf_counter()
    acc, _ = evaluate(model, vocab, letters, lo=a.min_len, hi=a.max_len)
    t2 = time.perf_counter()
    print(f"held-out token accuracy {acc:.3f} (greedy decoding, 200 sequences of length "
          f"{a.min_len}-{a.max_len}, {a.symbols} symbols)")
    print(f"training {t1 - t0:.1f} s for {a.steps} steps of batch {a.batch}; "
          f"evaluation {t2 - t1:.1f} s")

"""Text to token ids: tokenizers, a vocabulary with special tokens, padded batches."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

PAD, UNK, NUM, URL, GO, EOS = "[PAD]", "[UNK]", "[NUM]", "[URL]", "<go>", "<eos>"

_WORD = re.compile(r"https?://\S+|www\.\S+|\d+(?:[.,]\d+)*|\w+|[^\w\s]")
_URL = re.compile(r"^(?:https?://|www\.)\S+$")
_NUMBER = re.compile(r"^\d+(?:[.,]\d+)*$")


def char_tokens(text: str) -> list[str]:
    """Character-level tokens: every character, spaces and newlines included."""
    return list(text)


def word_tokens(text: str, lower: bool = True, replace_numbers: bool = False,
                replace_urls: bool = False) -> list[str]:
    """Word-level tokens: words, numbers, URLs and single punctuation marks.

    With `replace_numbers` / `replace_urls`, numbers become ``[NUM]`` and web
    addresses ``[URL]``, as the course material suggests for keeping a vocabulary small.
    """
    out = []
    for tok in _WORD.findall(text):
        if replace_urls and _URL.match(tok):
            out.append(URL)
        elif replace_numbers and _NUMBER.match(tok):
            out.append(NUM)
        else:
            out.append(tok.lower() if lower else tok)
    return out


class Vocab:
    """A token ↔ id map. Id 0 is ``[PAD]`` and id 1 is ``[UNK]``; `specials` follow,
    then the tokens by decreasing frequency (ties in first-seen order)."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("a vocabulary cannot hold the same token twice")

    @classmethod
    def build(cls, corpus: Iterable[str], max_size: int | None = None, min_count: int = 1,
              specials: Sequence[str] = ()) -> "Vocab":
        """From a stream of tokens: keep those seen `min_count` times, at most `max_size`
        in all (specials included); every other token maps to ``[UNK]``."""
        counts = Counter(corpus)
        head = [PAD, UNK] + [s for s in specials if s not in (PAD, UNK)]
        kept = [t for t, c in counts.most_common() if c >= min_count and t not in head]
        if max_size is not None:
            kept = kept[:max(0, max_size - len(head))]
        return cls(head + kept)

    def __len__(self):
        return len(self.tokens)

    def __contains__(self, token):
        return token in self.index

    @property
    def pad_id(self):
        return self.index[PAD]

    @property
    def unk_id(self):
        return self.index[UNK]

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids of `tokens` (int64); unknown tokens become ``[UNK]``."""
        unk = self.unk_id
        return np.array([self.index.get(t, unk) for t in tokens], dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of `ids`; an id outside the vocabulary is an error that names it."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is not in this vocabulary of {len(self)} tokens")
            out.append(self.tokens[i])
        return out

    def to_array(self) -> np.ndarray:
        """The tokens as a unicode array (for checkpoints; no pickle needed)."""
        return np.array(self.tokens, dtype=str)

    @classmethod
    def from_array(cls, arr) -> "Vocab":
        return cls([str(t) for t in np.asarray(arr).tolist()])


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0,
              length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id sequences into time-major ``ids`` [T, B] (int64) and ``mask``
    [T, B] (bool, True at real tokens). T is the longest sequence, or `length`."""
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    lengths = [len(s) for s in sequences]
    T = max(lengths) if length is None else length
    if max(lengths) > T:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit length={T}")
    ids = np.full((T, len(sequences)), pad_id, dtype=np.int64)
    mask = np.zeros((T, len(sequences)), dtype=bool)
    for b, s in enumerate(sequences):
        ids[:len(s), b] = np.asarray(s, dtype=np.int64)
        mask[:len(s), b] = True
    return ids, mask


def batches(sequences: Sequence, batch_size: int, rng: np.random.Generator | None = None,
            pad_id: int = 0, sort_within: bool = True):
    """Yield ``(ids, mask, index)`` padded batches; with `sort_within`, sequences of
    similar length go together (less padding), batches in a random order."""
    order = np.arange(len(sequences))
    if rng is not None:
        order = rng.permutation(order)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in chunks:
        if sort_within:
            idx = sorted(idx, key=lambda i: -len(sequences[i]))
        ids, mask = pad_batch([sequences[i] for i in idx], pad_id)
        yield ids, mask, np.asarray(idx)

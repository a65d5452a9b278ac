"""Layers around the cells: running a cell over time (with masks), stacked and
bidirectional RNNs, the output layer and embeddings."""
from __future__ import annotations

import autograph as ag

from .cells import CELLS, Cell
from .module import Module


def run(cell: Cell, xs, state0=None, mask=None, reverse=False):
    """Scan `cell` over `xs` [T, B, D]: returns ``(final_state, hs)``, hs [T, B, H].

    `state0` is a tuple with one [B, H] value per state component (zeros if None).
    `mask` [T, B] (bool) marks real steps; at a pad step the state is carried through
    unchanged, so with right-padding the final state is each sequence's last real
    state, and hs at a pad step repeats the last real output.
    """
    xs = ag.as_node(xs)
    if xs.ndim != 3:
        raise ag.ShapeError(f"{cell.name}: inputs must be [T, B, D], got {xs.label!r} "
                            f"of shape {list(xs.shape)}")
    state0 = cell.initial_state(xs.shape[1]) if state0 is None else tuple(state0)
    if len(state0) != len(cell.state_names):
        raise ValueError(f"{cell.name}: the state is {cell.state_names}; got {len(state0)} values")
    if mask is None:
        return ag.scan(cell.step, state0, xs, reverse=reverse)
    mask = ag.as_node(mask)
    if mask.dtype != "bool":
        raise ag.DTypeError(f"{cell.name}: the mask {mask.label!r} must be bool, got {mask.dtype}")
    if mask.shape != xs.shape[:2]:
        raise ag.ShapeError(f"{cell.name}: the mask {mask.label!r} has shape {list(mask.shape)}; "
                            f"it must be [T, B] = {list(xs.shape[:2])} like the inputs {xs.label!r}")

    def step(state, inputs):
        x_t, m_t = inputs
        new, _ = cell.step(state, x_t)
        keep = m_t[:, None]
        new = tuple(ag.where(keep, n, o) for n, o in zip(new, state))
        return new, new[0]

    return ag.scan(step, state0, (xs, mask), reverse=reverse)


class RNN(Module):
    """A stack of recurrent layers, optionally bidirectional, like ``torch.nn.LSTM``.

    ``RNN("lstm", 16, 32, num_layers=2, bidirectional=True)``. Calling it on
    xs [T, B, D] returns ``(hs, finals)``: hs [T, B, H·directions] from the top layer
    and, per layer and direction, the final state tuple. Each layer's input is the
    previous layer's output (both directions concatenated).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bidirectional: bool = False, name: str | None = None, dtype="float64",
                 **cell_options):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(CELLS)}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        super().__init__(name or cell, dtype)
        self.cell, self.hidden_size = cell, hidden_size
        self.num_layers, self.bidirectional = num_layers, bool(bidirectional)
        self.directions = 2 if bidirectional else 1
        self.layers: list[list[Cell]] = []
        for k in range(num_layers):
            d_in = input_size if k == 0 else hidden_size * self.directions
            row = [CELLS[cell](d_in, hidden_size, name=f"{self.name}.l{k}{suffix}",
                               dtype=dtype, **cell_options)
                   for suffix in ("", "_reverse")[:self.directions]]
            self.layers.append(row)
            self.children.extend(row)

    @property
    def cells(self) -> list[Cell]:
        return [c for row in self.layers for c in row]

    def __call__(self, xs, state0=None, mask=None):
        """``(hs, finals)`` for xs [T, B, D]; `state0`, if given, is a list of state
        tuples in the order of `cells`."""
        if state0 is not None and len(state0) != len(self.cells):
            raise ValueError(f"{self.name}: state0 needs one state per layer and direction "
                             f"({len(self.cells)}), got {len(state0)}")
        finals, h = [], xs
        states = iter(state0) if state0 is not None else None
        for row in self.layers:
            outs = []
            for cell, reverse in zip(row, (False, True)):
                final, hs = run(cell, h, None if states is None else next(states), mask, reverse)
                finals.append(final)
                outs.append(hs)
            h = outs[0] if len(outs) == 1 else ag.concat(outs, axis=-1)
        return h, finals

    def params_from_torch(self, state_dict) -> None:
        """Load a ``torch.nn.RNN/LSTM/GRU`` state dict (tensors or arrays)."""
        for k, row in enumerate(self.layers):
            for cell, reverse in zip(row, (False, True)):
                cell.params_from_torch(state_dict, layer=k, reverse=reverse)

    def params_to_torch(self, values=None) -> dict:
        """PyTorch's state dict of this stack, as NumPy arrays. `values` (e.g. the
        gradients), if given, is keyed like `state_dict()`."""
        out = {}
        for k, row in enumerate(self.layers):
            for cell, reverse in zip(row, (False, True)):
                own = None if values is None else \
                    {key: values[f"{cell.name}.{key}"] for key in cell.params}
                out.update(cell.params_to_torch(k, reverse, own))
        return out


class Linear(Module):
    """The output layer y = x·Vᵀ + c (the course material's V·s_t + c), V [out, in]."""

    def __init__(self, in_features: int, out_features: int, *, name="out", dtype="float64"):
        super().__init__(name, dtype)
        self.add("V", (out_features, in_features))
        self.add("c", (out_features,))
        self.fan = in_features

    def __call__(self, x):
        return x @ self.p("V").T + self.p("c")


class Embedding(Module):
    """A trainable lookup table E [vocab, dim]: token ids [...] → vectors [..., dim]."""

    def __init__(self, vocab_size: int, dim: int, *, name="embed", dtype="float64"):
        super().__init__(name, dtype)
        self.vocab_size, self.dim = vocab_size, dim
        self.add("E", (vocab_size, dim))

    def reset(self, rng):
        self.params["E"] = rng.standard_normal(self.params["E"].shape).astype(self.dtype)

    def __call__(self, ids):
        return ag.take(self.p("E"), ids)


def one_hot(ids, vocab_size: int, dtype="float64"):
    """Token ids [...] → one-hot vectors [..., vocab_size] (the course's input coding)."""
    return ag.one_hot(ids, vocab_size, dtype)

"""Recurrent cells: one time step as a graph, parameters as NumPy arrays.

Convention: a batch of inputs x_t is a row block [B, D] and states are [B, H]. The
weights are stored as the course material writes them for one column vector
(U is [H, D] in s_t = f(U·x_t + W·s_{t−1} + b)), which is also PyTorch's layout
(``weight_ih_l0`` is [gates·H, D]). A step therefore computes x_t·Uᵀ + s_{t−1}·Wᵀ;
the transposes are loop-invariant and `scan` hoists them out of the time loop.

Each cell keeps PyTorch's two biases, ``b`` (``bias_ih``) and ``b_hh`` (``bias_hh``),
so weights move to and from PyTorch exactly. Their sum is the textbook's b; it is
loop-invariant and also computed once, outside the loop.
"""
from __future__ import annotations

import numpy as np

import autograph as ag

from .module import Module

ACTIVATIONS = {"tanh": ag.tanh, "sigmoid": ag.sigmoid, "relu": ag.relu}


class Cell(Module):
    """One recurrent layer in one direction. Subclasses define `gates`, `step`."""

    gates = 1          # rows of U, W and b per hidden unit
    state_names = ("s",)
    torch_kind = ""    # the nn.RNNBase mode whose state dict this cell reads

    def __init__(self, input_size: int, hidden_size: int, *, name: str, dtype="float64",
                 learn_init: bool = False):
        super().__init__(name, dtype)
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: {what} must be a positive int, got {v!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        G, H, D = self.gates, self.hidden_size, self.input_size
        self.add("U", (G * H, D))
        self.add("W", (G * H, H))
        self.add("b", (G * H,))
        self.add("b_hh", (G * H,))
        self.learn_init = bool(learn_init)
        if self.learn_init:
            for k in self.state_names:
                self.add(f"{k}0", (H,))

    @property
    def fan(self):
        return self.hidden_size

    def reset(self, rng):
        super().reset(rng)
        for k in self.state_names:  # a learned initial state starts at zero
            if f"{k}0" in self.params:
                self.params[f"{k}0"][:] = 0

    def initial_state(self, batch="B") -> tuple:
        """The state before step 1, one [batch, H] value per component: zeros, or the
        learned s_0 (``learn_init=True``) repeated over the batch."""
        if self.learn_init:
            return tuple(ag.broadcast_to(self.p(f"{k}0"), (batch, self.hidden_size))
                         for k in self.state_names)
        return tuple(ag.zeros((batch, self.hidden_size), self.dtype) for _ in self.state_names)

    def step(self, state: tuple, x_t):
        """One step: ``(state_t, h_t) = step(state_{t−1}, x_t)``."""
        raise NotImplementedError

    def _check_input(self, x_t):
        if x_t.shape[-1] != self.input_size:
            raise ag.ShapeError(f"{self.name}: the input {x_t.label!r} has {x_t.shape[-1]} "
                                f"features, the cell was built for input_size={self.input_size}")
        if x_t.dtype != self.dtype:
            raise ag.DTypeError(f"{self.name}: the input {x_t.label!r} is {x_t.dtype}, the "
                                f"cell's parameters are {self.dtype}")

    def _preactivations(self, s, x_t):
        """x_t·Uᵀ + s·Wᵀ + b + b_hh: every gate's pre-activation, [B, gates·H]."""
        self._check_input(x_t)
        return x_t @ self.p("U").T + s @ self.p("W").T + (self.p("b") + self.p("b_hh"))

    # ----------------------------------------------------------------- PyTorch

    def params_from_torch(self, state_dict, layer: int = 0, reverse: bool = False) -> None:
        """Load PyTorch's ``weight_ih_l{layer}`` … ``bias_hh_l{layer}`` (``_reverse``)."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        values = {}
        for ours, theirs in (("U", "weight_ih"), ("W", "weight_hh"),
                             ("b", "bias_ih"), ("b_hh", "bias_hh")):
            key = theirs + suffix
            if key not in state_dict:
                raise KeyError(f"{self.name}: the state dict has no {key!r} "
                               f"(it has {sorted(state_dict)})")
            v = np.asarray(_numpy(state_dict[key]))
            if v.shape != self.params[ours].shape:
                raise ValueError(f"{self.name}: {key!r} has shape {list(v.shape)}, this "
                                 f"{type(self).__name__} needs {list(self.params[ours].shape)} "
                                 f"(input_size={self.input_size}, hidden_size={self.hidden_size})")
            values[ours] = v.astype(self.dtype)
        self.params.update(values)

    def params_to_torch(self, layer: int = 0, reverse: bool = False, values=None) -> dict:
        """Our parameters (or `values`, e.g. gradients, keyed like `params`) under
        PyTorch's names and in its layout, as NumPy arrays."""
        values = self.params if values is None else values
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        return {theirs + suffix: np.array(values[ours]) for ours, theirs in
                (("U", "weight_ih"), ("W", "weight_hh"), ("b", "bias_ih"), ("b_hh", "bias_hh"))}


def _numpy(v):
    """A NumPy array from an array or a torch tensor, without importing torch."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return v


class Elman(Cell):
    """The simple recurrent network (Elman):  s_t = f(U·x_t + W·s_{t−1} + b),
    f = tanh, sigmoid or relu. Matches ``torch.nn.RNN(nonlinearity=...)`` for tanh and relu.
    """

    torch_kind = "RNN"

    def __init__(self, input_size, hidden_size, *, activation="tanh", name="elman",
                 dtype="float64", learn_init=False):
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.activation = activation
        super().__init__(input_size, hidden_size, name=name, dtype=dtype, learn_init=learn_init)

    def step(self, state, x_t):
        (s,) = state
        s = ACTIVATIONS[self.activation](self._preactivations(s, x_t)).named("s")
        return (s,), s


class LSTM(Cell):
    """Long short-term memory, gates in PyTorch's order i, f, g, o:

        i = σ(U_i x_t + W_i h_{t−1} + b_i [+ p_i ⊙ c_{t−1}])
        f = σ(U_f x_t + W_f h_{t−1} + b_f [+ p_f ⊙ c_{t−1}])
        g = tanh(U_g x_t + W_g h_{t−1} + b_g)
        c_t = f ⊙ c_{t−1} + i ⊙ g
        o = σ(U_o x_t + W_o h_{t−1} + b_o [+ p_o ⊙ c_t])
        h_t = o ⊙ tanh(c_t)

    The bracketed terms are the peephole connections of Gers & Schmidhuber
    (``peephole=True``; diagonal weights p_i, p_f, p_o). Without them the cell is
    ``torch.nn.LSTM``'s. The state is (h, c).
    """

    gates = 4
    state_names = ("h", "c")
    torch_kind = "LSTM"

    def __init__(self, input_size, hidden_size, *, peephole=False, name="lstm",
                 dtype="float64", learn_init=False):
        super().__init__(input_size, hidden_size, name=name, dtype=dtype, learn_init=learn_init)
        self.peephole = bool(peephole)
        if self.peephole:
            for k in ("p_i", "p_f", "p_o"):
                self.add(k, (hidden_size,))

    def step(self, state, x_t):
        h, c = state
        H = self.hidden_size
        z = self._preactivations(h, x_t)
        zi, zf, zg, zo = (z[:, k * H:(k + 1) * H] for k in range(4))
        if self.peephole:
            zi = zi + self.p("p_i") * c
            zf = zf + self.p("p_f") * c
        i, f, g = ag.sigmoid(zi, name="i"), ag.sigmoid(zf, name="f"), ag.tanh(zg, name="g")
        c = (f * c + i * g).named("c")
        if self.peephole:
            zo = zo + self.p("p_o") * c
        o = ag.sigmoid(zo, name="o")
        h = (o * ag.tanh(c)).named("h")
        return (h, c), h

    def params_to_torch(self, layer=0, reverse=False, values=None):
        if self.peephole:
            raise ValueError(f"{self.name}: PyTorch's LSTM has no peephole connections; "
                             "build the cell with peephole=False to exchange weights")
        return super().params_to_torch(layer, reverse, values)


class GRU(Cell):
    """Gated recurrent unit (Cho et al. 2014) in PyTorch's variant, gates r, z, n:

        r = σ(U_r x_t + b_r + W_r h_{t−1} + b_hr)
        z = σ(U_z x_t + b_z + W_z h_{t−1} + b_hz)
        n = tanh(U_n x_t + b_n + r ⊙ (W_n h_{t−1} + b_hn))
        h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

    Here the reset gate multiplies W_n h_{t−1} + b_hn, after the product (PyTorch,
    and Cho et al.'s eq. 8 read with the bias inside), and z is the gate that *keeps*
    the old state. The course material writes h_t = (1 − z')⊙h_{t−1} + z'⊙n: the same
    cell with z' = 1 − z (its update gate is this one's complement).
    """

    gates = 3
    state_names = ("h",)
    torch_kind = "GRU"

    def __init__(self, input_size, hidden_size, *, name="gru", dtype="float64",
                 learn_init=False):
        super().__init__(input_size, hidden_size, name=name, dtype=dtype, learn_init=learn_init)

    def step(self, state, x_t):
        (h,) = state
        self._check_input(x_t)
        H = self.hidden_size
        gx = x_t @ self.p("U").T + self.p("b")
        gh = h @ self.p("W").T + self.p("b_hh")
        r = ag.sigmoid(gx[:, :H] + gh[:, :H], name="r")
        z = ag.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H], name="z")
        n = ag.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:], name="n")
        h = ((1.0 - z) * n + z * h).named("h")
        return (h,), h


CELLS = {"elman": Elman, "rnn": Elman, "lstm": LSTM, "gru": GRU}

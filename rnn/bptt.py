"""BPTT made visible: the per-step terms of ∂L/∂W for any recurrent cell.

The course material writes the gradient of the loss term L_t as

    ∂L_t/∂W = ∂L_t/∂s_t · Σ_{k=1..t} (∂s_t/∂s_k) · ∂⁺s_k/∂W,
    ∂s_t/∂s_k = Π_{j=k+1..t} ∂s_j/∂s_{j−1},

where ∂⁺ holds s_{k−1} constant. The k = t term is the *explicit* path, the k < t
terms the *implicit* ones. Equivalently, give step k its own copy W^(k) of the weight
and add the gradients: ∂L_t/∂W^(k) is exactly the k-th term.

`explain_gradient` computes every piece with the graph machinery, never with a
hand-written formula, so it works for any cell of `rnn` (Elman, LSTM, GRU):

- the terms ∂L_t/∂W^(k): `grad` of L_t in an unrolled graph where step k reads its
  own placeholder W^(k);
- the cotangents ∂L_t/∂s_k: the same backward sweep, taken at the state nodes;
- the one-step Jacobians ∂s_j/∂s_{j−1} and the explicit derivatives ∂⁺s_k/∂W: one
  `vjp` of the cell's step graph per state unit;
- their products ∂s_t/∂s_k, and the course formula rebuilt from them
  (`formula_term`), which tests compare with the copy gradients.

The state s is every state component side by side: (h, c) for the LSTM, so its
Jacobians are 2×2 block matrices and the c→c block of ∂(h,c)_j/∂(h,c)_{j−1} is
diag(f_j) — the "uninterrupted gradient flow" (`chain_norms("c")`).

Batch: Jacobians are kept per batch element ([B, S, S]), since elements do not
interact. A norm over (t, k) is the spectral norm, the largest over the batch; with
B = 1 (the default of the examples) it is just the spectral norm of the matrix.
Contributions ∂L_t/∂W^(k) sum over the batch, like the loss.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import autograph as ag

from .cells import CELLS, Cell
from .layers import run
from .optim import clip_by_global_norm


def sum_loss(y_t, t: int):
    """The default loss term L_t = Σ y_t: a linear probe of the output, so that
    ∂L_t/∂y_t = 1 and every change in a term comes from the recurrence itself."""
    return ag.sum(y_t)


def explain_gradient(cell: Cell, xs, param: str = "W", *, state0=None,
                     loss: Callable | None = None) -> "BPTTExplanation":
    """Decompose ∂(Σ_t L_t)/∂`param` of `cell` run over `xs` into its BPTT terms.

    `cell` holds its parameter values (`cell.params`); `xs` is [T, B, D] or [T, D]
    (then B = 1); `param` is a key of `cell.params` ("W", "U", "b", ...); `state0`
    is a tuple of [B, H] arrays (zeros if None); `loss(y_t, t)` builds the scalar
    loss term L_t from the step's output y_t [B, H] and the step t = 1..T
    (default `sum_loss`). Returns a `BPTTExplanation`.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"explain_gradient needs an rnn cell (Elman, LSTM, GRU), got {cell!r}")
    if param not in cell.params:
        raise KeyError(f"{cell.name} has no parameter {param!r}; it has {sorted(cell.params)}")
    dtype = cell.dtype
    xs = np.asarray(xs, dtype=dtype)
    if xs.ndim == 2:
        xs = xs[:, None, :]
    if xs.ndim != 3 or xs.shape[2] != cell.input_size or xs.shape[0] < 1:
        raise ValueError(f"xs must be [T, B, {cell.input_size}] with T ≥ 1, got {list(xs.shape)}")
    T, B, D = xs.shape
    H, names = cell.hidden_size, cell.state_names
    if state0 is None:
        state0 = tuple(np.zeros((B, H), dtype) for _ in names)
    state0 = tuple(np.asarray(s, dtype) for s in state0)
    if len(state0) != len(names) or any(s.shape != (B, H) for s in state0):
        raise ValueError(f"state0 must hold {len(names)} arrays of shape [{B}, {H}] ({names})")
    loss = loss or sum_loss
    W = cell.p(param)
    params = {cell.p(k): v for k, v in cell.params.items()}

    # The cell's step, traced once on placeholders with the batch size fixed.
    s_in = tuple(ag.placeholder(n, (B, H), dtype) for n in names)
    x_in = ag.placeholder("x", (B, D), dtype)
    s_out, y_out = cell.step(s_in, x_in)
    s_out = tuple(s_out)

    # 1. The unrolled graph with one weight copy per step: W^(1) … W^(T).
    x_k = [ag.placeholder(f"x_{k}", (B, D), dtype) for k in range(1, T + 1)]
    W_k = [ag.placeholder(f"{W.name}^({k})", W.shape, dtype) for k in range(1, T + 1)]
    # A state leaves step k as s_k + δ_k with δ_k = 0: the gradient at δ_k is the
    # partial ∂L_t/∂s_k of the course, with the components of s_k independent (the
    # LSTM's h_k = o·tanh(c_k) inside step k is not a path from c_k to L_t).
    if not any(y_out is s for s in s_out):
        raise ValueError(f"{cell.name}: the step's output must be one of its state "
                         "components for ∂L_t/∂s_t to be defined")
    y_index = next(i for i, s in enumerate(s_out) if s is y_out)
    states = [tuple(ag.placeholder(f"{n}_0", (B, H), dtype) for n in names)]
    deltas = [states[0]]
    L = []
    for k in range(1, T + 1):
        memo = {id(s): v for s, v in zip(s_in, states[-1])}
        memo[id(x_in)] = x_k[k - 1]
        memo[id(W)] = W_k[k - 1]
        new = copy_step(list(s_out), memo, f"_{k}")
        deltas.append(tuple(ag.placeholder(f"δ{n}_{k}", (B, H), dtype) for n in names))
        states.append(tuple(s + d for s, d in zip(new, deltas[-1])))
        L.append(ag.named(loss(states[-1][y_index], k), f"L_{k}"))
    one = ag.ones((), dtype)
    outs = list(L) + [c for s in states[1:] for c in s]
    index = {}  # (kind, t, k[, component]) -> position in outs
    for t in range(1, T + 1):
        wrt = W_k[:t] + [d for s in deltas[:t + 1] for d in s]
        got = ag.vjp([L[t - 1]], [one], wrt, prefix=f"dL_{t}/d")
        got = [g if g is not None else ag.zeros(w.shape, dtype) for g, w in zip(got, wrt)]
        for k in range(1, t + 1):
            index["W", t, k] = len(outs)
            outs.append(got[k - 1])
        for k in range(t + 1):
            for i in range(len(names)):
                index["s", t, k, i] = len(outs)
                outs.append(got[t + k * len(names) + i])
    feed_u = {p: v for p, v in params.items() if p is not W}
    feed_u.update({x: xs[k] for k, x in enumerate(x_k)})
    feed_u.update({s: v for s, v in zip(states[0], state0)})
    feed_u.update({w: cell.params[param] for w in W_k})
    feed_u.update({d: np.zeros((B, H), dtype) for ds in deltas[1:] for d in ds})
    vals = evaluate_nodes(outs, feed_u)
    nc = len(names)
    loss_values = np.array([float(v) for v in vals[:T]])
    hist = np.stack([np.stack(state0)] + [np.stack(vals[T + k * nc: T + (k + 1) * nc])
                                          for k in range(T)])          # [T+1, nc, B, H]
    contributions = np.zeros((T, T) + W.shape, dtype)
    dL_ds = np.zeros((T, T + 1, B, nc * H), dtype)
    for t in range(1, T + 1):
        for k in range(1, t + 1):
            contributions[t - 1, k - 1] = vals[index["W", t, k]]
        for k in range(t + 1):
            dL_ds[t - 1, k] = np.concatenate([vals[index["s", t, k, i]] for i in range(nc)], -1)

    # 2. One-step Jacobians ∂s_j/∂s_{j−1} and explicit ∂⁺s_j/∂W, one vjp per state unit.
    S = nc * H
    rows = []
    for b in range(B):
        for i in range(nc):
            for u in range(H):
                e = np.zeros((B, H), dtype)
                e[b, u] = 1.0
                cts = [ag.constant(e) if m == i else None for m in range(nc)]
                got = ag.vjp(list(s_out), cts, list(s_in) + [W], prefix="d")
                rows += [g if g is not None else ag.zeros(w.shape, dtype)
                         for g, w in zip(got, list(s_in) + [W])]
    jac_inputs = [p for p in ag.toposort(rows) if p.op == "placeholder"]
    jac_fn = ag.function(jac_inputs, rows)
    J = np.zeros((T, B, S, S), dtype)
    E = np.zeros((T, B, S) + W.shape, dtype)
    for j in range(1, T + 1):
        f = {p: v for p, v in params.items()}
        f[x_in] = xs[j - 1]
        f.update({s: hist[j - 1, i] for i, s in enumerate(s_in)})
        got = jac_fn(*[f[p] for p in jac_inputs])
        r = 0
        for b in range(B):
            for row in range(S):
                J[j - 1, b, row] = np.concatenate([got[r + i][b] for i in range(nc)])
                E[j - 1, b, row] = got[r + nc]
                r += nc + 1

    # 3. The total gradient from the ordinary scan graph, for the checks.
    xs_p = ag.placeholder("xs", (T, B, D), dtype)
    s0_p = tuple(ag.placeholder(f"{n}0", (B, H), dtype) for n in names)
    _, hs = run(cell, xs_p, s0_p)
    total_loss = loss(hs[0], 1)
    for t in range(2, T + 1):
        total_loss = total_loss + loss(hs[t - 1], t)
    g = ag.grad(total_loss, W)
    feed = dict(params)
    feed[xs_p] = xs
    feed.update({s: v for s, v in zip(s0_p, state0)})
    grad_total = evaluate_nodes([g], feed)[0]

    return BPTTExplanation(
        cell=type(cell).__name__, cell_name=cell.name, param=param, state_names=names,
        hidden_size=H, xs=xs, states=hist, loss_values=loss_values,
        contributions=contributions, dL_ds=dL_ds, jacobians=J, explicit_jacobians=E,
        grad_total=grad_total, step_losses=_LossOfCopies(L, W_k, feed_u))


def copy_step(outputs, memo: dict, suffix: str):
    """Copies of `outputs` (nodes of one traced step) with the inputs in `memo`
    (keyed by node id) replaced; named nodes get `suffix` (``s`` → ``s_3``)."""
    for n in ag.toposort(outputs):
        if id(n) in memo:
            continue
        if n.op == "placeholder" or not n.inputs:
            memo[id(n)] = n
            continue
        inputs = tuple(memo[id(i)] for i in n.inputs)
        if all(a is b for a, b in zip(inputs, n.inputs)):
            memo[id(n)] = n  # loop-invariant (Wᵀ, b + b_hh): shared by every step
        else:
            memo[id(n)] = ag.Node(n.op, inputs, n.params, n.shape, n.dtype,
                                  f"{n.name}{suffix}" if n.name else None)
    return [memo[id(y)] for y in outputs]


def evaluate_nodes(outputs, feed: dict):
    """Values of `outputs` given arrays for the placeholders they need (`feed`)."""
    inputs = [p for p in ag.toposort(outputs) if p.op == "placeholder"]
    return ag.function(inputs, list(outputs))(*[feed[p] for p in inputs])


class _LossOfCopies:
    """L_1 … L_T as a function of the per-step weight copies W^(1) … W^(T)."""

    def __init__(self, L, W_k, feed):
        self.L, self.W_k, self.feed = L, W_k, dict(feed)
        self._fn = None

    def __call__(self, copies) -> np.ndarray:
        """[T]: the loss terms when step k reads ``copies[k-1]`` as its weight."""
        feed = dict(self.feed)
        feed.update({w: np.asarray(c, float) for w, c in zip(self.W_k, copies)})
        if self._fn is None:
            self._inputs = [p for p in ag.toposort(self.L) if p.op == "placeholder"]
            self._fn = ag.function(self._inputs, self.L)
        return np.array([float(v) for v in self._fn(*[feed[p] for p in self._inputs])])


def _spectral(m: np.ndarray) -> float:
    """Largest spectral norm over the leading (batch) axis of m [B, n, n']."""
    return float(max(np.linalg.norm(x, 2) for x in m))


class BPTTExplanation:
    """The BPTT terms of ∂L/∂W for one cell, sequence and parameter.

    Steps are numbered as in the course: t, k = 1..T for loss terms and weight
    copies, states s_0 … s_T. Arrays are indexed from 0, so the term ∂L_t/∂W^(k) is
    ``contributions[t-1, k-1]`` (zero for k > t).

    Attributes: `contributions` [T, T, *W.shape]; `dL_ds` [T, T+1, B, S], the
    cotangent ∂L_t/∂s_k (zero for k > t); `jacobians` [T, B, S, S], entry j−1 being
    ∂s_j/∂s_{j−1}; `explicit_jacobians` [T, B, S, *W.shape], ∂⁺s_k/∂W; `states`
    [T+1, components, B, H]; `loss_values` [T]; `grad_total`, ∂(Σ_t L_t)/∂W from
    `autograph.grad` on the ordinary scan graph. S = components · H; the state
    vector is the components side by side, in `state_names` order.
    """

    def __init__(self, *, cell, cell_name, param, state_names, hidden_size, xs, states,
                 loss_values, contributions, dL_ds, jacobians, explicit_jacobians,
                 grad_total, step_losses):
        self.cell, self.cell_name, self.param = cell, cell_name, param
        self.state_names, self.hidden_size = tuple(state_names), hidden_size
        self.xs, self.states, self.loss_values = xs, states, loss_values
        self.contributions, self.dL_ds = contributions, dL_ds
        self.jacobians, self.explicit_jacobians = jacobians, explicit_jacobians
        self.grad_total = grad_total
        self.step_losses = step_losses
        self.T, self.B = xs.shape[0], xs.shape[1]
        self._cache: dict = {}

    # ----------------------------------------------------------------- the terms

    @property
    def valid(self) -> np.ndarray:
        """[T, T] bool: the pairs (t, k) with k ≤ t that carry a term."""
        return np.tril(np.ones((self.T, self.T), bool))

    @property
    def explicit(self) -> np.ndarray:
        """[T, T] bool: the explicit terms, k = t."""
        return np.eye(self.T, dtype=bool)

    @property
    def implicit(self) -> np.ndarray:
        """[T, T] bool: the implicit terms, k < t."""
        return np.tril(np.ones((self.T, self.T), bool), -1)

    def term(self, t: int, k: int) -> np.ndarray:
        """∂L_t/∂W^(k) (zero when k > t)."""
        self._check(t, 1)
        self._check(k, 1)
        return self.contributions[t - 1, k - 1]

    def total(self) -> np.ndarray:
        """Σ_t Σ_{k≤t} ∂L_t/∂W^(k): the full BPTT gradient ∂L/∂W."""
        return self.contributions.sum(axis=(0, 1))

    def per_copy(self) -> np.ndarray:
        """[T, *W.shape]: Σ_t ∂L_t/∂W^(k), the gradient of the copy W^(k)."""
        return self.contributions.sum(axis=0)

    def truncated(self, K: int) -> np.ndarray:
        """The truncated-BPTT gradient: the terms with t − k > K dropped (each L_t
        backpropagates through at most K earlier steps; K = 0 keeps only the
        explicit terms)."""
        keep = self.valid & ~np.tril(np.ones((self.T, self.T), bool), -K - 1)
        return np.tensordot(keep.astype(self.contributions.dtype), self.contributions,
                            axes=([0, 1], [0, 1]))

    def clipped(self, max_norm: float) -> tuple[np.ndarray, float]:
        """The total gradient clipped to the global norm `max_norm` (as training
        does, `rnn.clip_by_global_norm`), and the scale that was applied."""
        out, norm = clip_by_global_norm({"g": self.total()}, max_norm)
        return out["g"], float(np.linalg.norm(out["g"]) / norm) if norm > 0 else 1.0

    def formula_term(self, t: int, k: int) -> np.ndarray:
        """The course formula's k-th term of ∂L_t/∂W, rebuilt from its factors:
        ∂L_t/∂s_t · ∂s_t/∂s_k · ∂⁺s_k/∂W (summed over the batch)."""
        self._check(t, 1)
        self._check(k, 1)
        if k > t:
            return np.zeros_like(self.contributions[0, 0])
        g = np.einsum("bs,bsr->br", self.dL_ds[t - 1, t], self.jacobian_product(t, k))
        return np.tensordot(g, self.explicit_jacobians[k - 1], axes=([0, 1], [0, 1]))

    def contribution_via(self, component: str) -> np.ndarray:
        """[T, T, *W.shape]: the part of each term ∂L_t/∂W^(k) that enters step k
        through the state component `component` (for the LSTM, "h" or "c"). The
        parts over all components add up to the term."""
        i = self._component(component)
        H = self.hidden_size
        out = np.zeros_like(self.contributions)
        for t in range(1, self.T + 1):
            for k in range(1, t + 1):
                g = self.dL_ds[t - 1, k][:, i * H:(i + 1) * H]
                e = self.explicit_jacobians[k - 1][:, i * H:(i + 1) * H]
                out[t - 1, k - 1] = np.tensordot(g, e, axes=([0, 1], [0, 1]))
        return out

    # ----------------------------------------------------------------- Jacobians

    def jacobian(self, j: int) -> np.ndarray:
        """∂s_j/∂s_{j−1} [B, S, S] (j = 1..T)."""
        self._check(j, 1)
        return self.jacobians[j - 1]

    def jacobian_product(self, t: int, k: int) -> np.ndarray:
        """∂s_t/∂s_k = Π_{j=k+1..t} ∂s_j/∂s_{j−1} [B, S, S] (k = 0..t; identity at k = t)."""
        self._check(t, 0)
        self._check(k, 0)
        if k > t:
            raise ValueError(f"∂s_t/∂s_k needs k ≤ t; got t={t}, k={k}")
        S = self.jacobians.shape[-1]
        P = np.broadcast_to(np.eye(S), (self.B, S, S)).copy()
        for j in range(k + 1, t + 1):
            P = self.jacobians[j - 1] @ P
        return P

    def block(self, t: int, k: int, out: str, inp: str) -> np.ndarray:
        """The block ∂out_t/∂inp_k of ∂s_t/∂s_k [B, H, H], e.g. ``block(t, k, "c", "c")``."""
        i, m, H = self._component(out), self._component(inp), self.hidden_size
        return self.jacobian_product(t, k)[:, i * H:(i + 1) * H, m * H:(m + 1) * H]

    def chain(self, t: int, k: int, component: str) -> np.ndarray:
        """The paths from `component`_k to `component`_t that never leave it:
        Π_{j=k+1..t} ∂comp_j/∂comp_{j−1} (for the LSTM's c, Π diag(f_j))."""
        i, H = self._component(component), self.hidden_size
        P = np.broadcast_to(np.eye(H), (self.B, H, H)).copy()
        for j in range(k + 1, t + 1):
            P = self.jacobians[j - 1][:, i * H:(i + 1) * H, i * H:(i + 1) * H] @ P
        return P

    @property
    def state_norms(self) -> np.ndarray:
        """[T+1, T+1]: ‖∂s_t/∂s_k‖ (spectral) at [t, k], k ≤ t; NaN above the diagonal."""
        return self._norms("state", lambda t, k: _spectral(self.jacobian_product(t, k)))

    def block_norms(self, out: str, inp: str) -> np.ndarray:
        """[T+1, T+1]: ‖∂out_t/∂inp_k‖, a block of `state_norms` (LSTM: "h"/"c")."""
        return self._norms(("block", out, inp), lambda t, k: _spectral(self.block(t, k, out, inp)))

    def chain_norms(self, component: str) -> np.ndarray:
        """[T+1, T+1]: the norm of the paths that stay in `component` (`chain`)."""
        return self._norms(("chain", component),
                           lambda t, k: _spectral(self.chain(t, k, component)))

    @property
    def contribution_norms(self) -> np.ndarray:
        """[T, T]: ‖∂L_t/∂W^(k)‖ (Frobenius) at [t−1, k−1]; NaN for k > t."""
        n = np.linalg.norm(self.contributions.reshape(self.T, self.T, -1), axis=-1)
        return np.where(self.valid, n, np.nan)

    def _norms(self, key, fn):
        if key not in self._cache:
            T = self.T
            out = np.full((T + 1, T + 1), np.nan)
            for t in range(T + 1):
                for k in range(t + 1):
                    out[t, k] = fn(t, k)
            self._cache[key] = out
        return self._cache[key]

    def _component(self, name: str) -> int:
        if name not in self.state_names:
            raise KeyError(f"the {self.cell} state has components {self.state_names}, "
                           f"not {name!r}")
        return self.state_names.index(name)

    def _check(self, t, low):
        if not isinstance(t, (int, np.integer)) or not low <= t <= self.T:
            raise IndexError(f"step {t!r} is outside {low}..{self.T}")

    # ----------------------------------------------------------------- showing

    def table(self, t: int | None = None) -> str:
        """The terms of ∂L_t/∂W as text, one row per k (t = T by default)."""
        t = self.T if t is None else t
        self._check(t, 1)
        lstm = "c" in self.state_names and "h" in self.state_names
        head = ["k", "kind", f"‖∂L_{t}/∂{self.param}^(k)‖", f"‖∂s_{t}/∂s_k‖"]
        if lstm:
            head += ["via h_k", "via c_k", f"‖∂c_{t}/∂c_k‖ c-only"]
        rows = []
        via = {n: self.contribution_via(n) for n in ("h", "c")} if lstm else {}
        total = np.linalg.norm(self.contributions[t - 1].sum(0))
        for k in range(t, 0, -1):
            r = [str(k), "explicit" if k == t else "implicit",
                 f"{self.contribution_norms[t - 1, k - 1]:.3e}", f"{self.state_norms[t, k]:.3e}"]
            if lstm:
                r += [f"{np.linalg.norm(via['h'][t - 1, k - 1]):.3e}",
                      f"{np.linalg.norm(via['c'][t - 1, k - 1]):.3e}",
                      f"{self.chain_norms('c')[t, k]:.3e}"]
            rows.append(r)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
        out = [f"∂L_{t}/∂{self.param} = Σ_k ∂L_{t}/∂{self.param}^(k)   "
               f"({self.cell} '{self.cell_name}', T={self.T}, B={self.B}, H={self.hidden_size})",
               line(head), line(["-" * w for w in widths])]
        out += [line(r) for r in rows]
        out.append(f"‖∂L_{t}/∂{self.param}‖ = {total:.3e}   "
                   f"(the terms are matrices: their norms do not add)")
        return "\n".join(out)

    def summary(self) -> str:
        """Totals and the checks: terms vs `autograph.grad`, and the formula."""
        diff = float(np.max(np.abs(self.total() - self.grad_total)))
        return (f"∂L/∂{self.param} = Σ_t Σ_k≤t ∂L_t/∂{self.param}^(k): "
                f"‖Σ terms‖ = {np.linalg.norm(self.total()):.6e}, "
                f"‖autograph.grad‖ = {np.linalg.norm(self.grad_total):.6e}, "
                f"max |difference| = {diff:.1e}")

    def __str__(self):
        return self.table() + "\n" + self.summary()

    def __repr__(self):
        return (f"<BPTTExplanation {self.cell} '{self.cell_name}' ∂L/∂{self.param}: "
                f"T={self.T}, B={self.B}, {self.T * (self.T + 1) // 2} terms>")

    def heatmap(self, path=None, *, truncate: int | None = None, clip: float | None = None):
        """The picture of the terms (matplotlib figure; saved to `path` if given)."""
        from .bptt_plots import heatmap
        return heatmap(self, path, truncate=truncate, clip=clip)

    def draw(self, t: int | None = None):
        """The unrolled graph with the gradient of L_t drawn on it (`autograph.draw`)."""
        from autograph.draw import bptt_diagram
        return bptt_diagram(self, t)

    def _repr_html_(self):
        from html import escape
        return (f"<pre>{escape(str(self))}</pre>" + self.draw().svg())


def demo_cell(kind: str = "elman", input_size: int = 2, hidden_size: int = 3, *,
              scale: float = 1.0, forget_bias: float = 0.0, seed: int = 0,
              name: str | None = None) -> Cell:
    """A cell with random weights of a chosen size: every weight matrix normal with
    standard deviation `scale`/√H, biases zero except the LSTM's forget-gate bias
    (`forget_bias`; a large one makes f ≈ 1)."""
    if kind not in CELLS:
        raise ValueError(f"unknown cell {kind!r}; choose one of {sorted(CELLS)}")
    cell = CELLS[kind](input_size, hidden_size, name=name or kind)
    rng = np.random.default_rng(seed)
    for k, v in cell.params.items():
        if v.ndim == 2:
            cell.params[k] = rng.standard_normal(v.shape) * scale / np.sqrt(hidden_size)
        else:
            cell.params[k] = np.zeros(v.shape)
    if forget_bias:
        if kind != "lstm":
            raise ValueError("forget_bias is for the LSTM")
        cell.params["b"][hidden_size:2 * hidden_size] = forget_bias
    return cell

"""Reference implementations of the benchmark workload, for `bench/workload.py` to time
ours against.

The workload (``rnn/workload.py`` builds it as a graph): x [T, B, D], h_0 = 0 (and
c_0 = 0 for the LSTM), a recurrent cell with PyTorch's conventions, the readout
out_t = h_t·Vᵀ + c and loss = ½ · mean over (T, B, D) of (out_t − y_t)². One training
step gives the loss and the gradient of every parameter. Parameters and gradients are
dicts under our names: ``cell.U`` [G·H, D], ``cell.W`` [G·H, H], ``cell.b``,
``cell.b_hh`` [G·H], ``readout.V`` [D, H], ``readout.c`` [D]; G = 1 (Elman, tanh),
4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n, b_hn inside r ⊙ (W_n h + b_hn)).

Each reference is what a competent user would otherwise run, so a speed-up over it
means something:

- `numpy_bptt`: backpropagation through time written by hand in NumPy, the way a
  careful user writes it. Every product that does not depend on the recurrence is one
  GEMM over all T·B rows: the input projection before the loop, and dU, dW, dV after
  it. The loops do only the per-step recurrent product and the elementwise work.
- `torch_step`: ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` and a ``Linear`` readout, eager
  mode, ``loss.backward()``: what most people would use.
- `jax_step`: ``jax.jit(jax.value_and_grad(loss))`` over ``jax.lax.scan``: a tracing
  compiler with a loop primitive, like ours. Its compile time is returned apart.

torch and jax are imported only when their reference is asked for (the ``compare``
extra installs them). The caller sets thread counts.
"""
from __future__ import annotations

import time

import numpy as np

GATES = {"elman": 1, "lstm": 4, "gru": 3}
NAMES = ("cell.U", "cell.W", "cell.b", "cell.b_hh", "readout.V", "readout.c")


def _check(cell: str, params: dict) -> tuple[int, int, int]:
    """(G, D, H) of `params`, after checking the cell name and the parameters."""
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(GATES)}")
    missing = [k for k in NAMES if k not in params]
    if missing:
        raise ValueError(f"{cell}: the parameters lack {missing} (they have {sorted(params)})")
    G = GATES[cell]
    GH, D = params["cell.U"].shape
    H = params["cell.W"].shape[1]
    expected = {"cell.U": (G * H, D), "cell.W": (G * H, H), "cell.b": (G * H,),
                "cell.b_hh": (G * H,), "readout.V": (D, H), "readout.c": (D,)}
    for k, shape in expected.items():
        if params[k].shape != shape:
            raise ValueError(f"{cell}: {k} has shape {list(params[k].shape)}; a {cell} cell "
                             f"with D={D}, H={H} needs {list(shape)}")
    return G, D, H


# ----------------------------------------------------------------------------- NumPy

def numpy_bptt(cell: str, params: dict, x: np.ndarray, y: np.ndarray):
    """(loss, grads) of one training step, by hand-written BPTT in NumPy.

    Forward: A = X·Uᵀ + b for all steps at once (X = x as a [T·B, D] matrix), then per
    step only h_{t−1}·Wᵀ and the gates. Backward: the readout's ∂L/∂h_t for all steps
    at once, then per step the cell's VJP, which stores the gradients of the
    pre-activations, ∂L/∂A [T, B, G·H]; after the loop dU = (∂L/∂A)ᵀ·X and
    dW = (∂L/∂R)ᵀ·H_prev are single GEMMs over the T·B rows (R = h_{t−1}·Wᵀ + b_hh,
    whose gradient is ∂L/∂A except for the GRU's n gate). Everything stays in x's dtype.
    """
    G, D, H = _check(cell, params)
    dtype = x.dtype
    for k, v in [("y", y)] + [(k, params[k]) for k in NAMES]:
        if v.dtype != dtype:
            raise ValueError(f"{cell}: {k} is {v.dtype}, x is {dtype}; give one dtype")
    if x.ndim != 3 or x.shape[2] != D or y.shape != x.shape:
        raise ValueError(f"{cell}: x and y must both be [T, B, D={D}]; got "
                         f"{list(x.shape)} and {list(y.shape)}")
    U, W, b, b_hh = (params[f"cell.{k}"] for k in ("U", "W", "b", "b_hh"))
    V, c = params["readout.V"], params["readout.c"]
    T, B, _ = x.shape
    X = x.reshape(T * B, D)

    A = (X @ U.T).reshape(T, B, G * H)
    A += b if cell == "gru" else b + b_hh           # the GRU adds b_hh inside the step
    hs = np.zeros((T + 1, B, H), dtype)              # hs[0] = h_0 = 0, hs[t] = h_t
    W_T = np.ascontiguousarray(W.T)                  # the per-step product is faster row-major
    forward, backward = _CELLS[cell]
    saved = forward(A, W_T, b_hh, hs)

    h = hs[1:].reshape(T * B, H)
    diff = h @ V.T
    diff += c
    diff -= y.reshape(T * B, D)
    N = T * B * D
    loss = 0.5 * np.vdot(diff, diff) / N
    dout = diff
    dout *= 1 / N                                    # ∂L/∂out_t
    dh = (dout @ V).reshape(T, B, H)                 # ∂L/∂h_t from the readout, all t

    dA, dR = backward(saved, A, W, hs, dh)
    dA2, dR2 = dA.reshape(T * B, G * H), dR.reshape(T * B, G * H)
    grads = {"cell.U": dA2.T @ X,
             "cell.W": dR2.T @ hs[:-1].reshape(T * B, H),
             "cell.b": dA2.sum(axis=0),
             "cell.b_hh": dR2.sum(axis=0),
             "readout.V": dout.T @ h,
             "readout.c": dout.sum(axis=0)}
    return dtype.type(loss), grads


def _sigmoid(a):
    """σ(a) in place, as ½(1 + tanh(a/2)): one transcendental and no overflow."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def _elman_forward(A, W_T, b_hh, hs):
    """h_t = tanh(A_t + h_{t−1}·Wᵀ) into hs[1:]; nothing else to save."""
    for t in range(len(A)):
        np.matmul(hs[t], W_T, out=hs[t + 1])
        hs[t + 1] += A[t]
        np.tanh(hs[t + 1], out=hs[t + 1])


def _elman_backward(saved, A, W, hs, dh):
    """∂L/∂z_t = (∂L/∂h_t) ⊙ (1 − h_t²), with ∂L/∂h_t = readout + ∂L/∂z_{t+1}·W.
    Overwrites dh with ∂L/∂z (the input and recurrent pre-activations are one sum)."""
    dtanh = hs[1:] * hs[1:]                          # tanh' of every step, before the loop
    np.subtract(1, dtanh, out=dtanh)
    dz, carry = dh, np.empty_like(dh[0])
    for t in reversed(range(len(A))):
        if t + 1 < len(A):
            np.matmul(dz[t + 1], W, out=carry)
            dz[t] += carry
        dz[t] *= dtanh[t]
    return dz, dz


def _lstm_forward(A, W_T, b_hh, hs):
    """The LSTM of rnn/cells.py. A becomes the gate activations i, f, g, o; returns
    (c [T+1, B, H] with c_0 = 0, tanh(c_t) [T, B, H])."""
    T, B, H = hs[1:].shape
    cs = np.zeros_like(hs)
    tanh_c = np.empty_like(hs[1:])
    buf, ig = np.empty_like(A[0]), np.empty_like(hs[0])
    for t in range(T):
        z = A[t]
        np.matmul(hs[t], W_T, out=buf)
        z += buf
        _sigmoid(z[:, :2 * H])                       # i, f
        np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])
        _sigmoid(z[:, 3 * H:])                       # o
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        np.multiply(f, cs[t], out=cs[t + 1])
        np.multiply(i, g, out=ig)
        cs[t + 1] += ig
        np.tanh(cs[t + 1], out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=hs[t + 1])
    return cs, tanh_c


def _lstm_backward(saved, A, W, hs, dh):
    """VJP of each step, last to first, carrying ∂L/∂h and ∂L/∂c back. Returns
    ∂L/∂z [T, B, 4H] (gates i, f, g, o) twice: input and recurrent sides are one sum."""
    cs, tanh_c = saved
    T, B, H = dh.shape
    gates = A.reshape(T, B, 4, H)
    i, f, g, o = (gates[:, :, k] for k in range(4))
    # What does not depend on the carried gradients, for all steps at once: the gate
    # derivatives and ∂c_t/∂h_t = o ⊙ (1 − tanh² c_t).
    dgates = np.subtract(1, gates)
    dgates *= gates                                            # σ' = σ(1 − σ)
    np.multiply(g, g, out=dgates[:, :, 2])
    np.subtract(1, dgates[:, :, 2], out=dgates[:, :, 2])       # tanh' = 1 − g²
    dc_dh = tanh_c * tanh_c
    np.subtract(1, dc_dh, out=dc_dh)
    dc_dh *= o

    dZ = np.empty_like(gates)
    dc = np.zeros_like(dh[0])
    carry = np.empty_like(dh[0])
    for t in reversed(range(T)):
        dh_t = dh[t]
        if t + 1 < T:
            np.matmul(dZ[t + 1].reshape(B, 4 * H), W, out=carry)
            dh_t += carry
        np.multiply(dh_t, dc_dh[t], out=carry)
        dc += carry
        np.multiply(dc, g[t], out=dZ[t, :, 0])                # ∂L/∂i
        np.multiply(dc, cs[t], out=dZ[t, :, 1])               # ∂L/∂f
        np.multiply(dc, i[t], out=dZ[t, :, 2])                # ∂L/∂g
        np.multiply(dh_t, tanh_c[t], out=dZ[t, :, 3])         # ∂L/∂o
        dZ[t] *= dgates[t]                                     # → pre-activations
        dc *= f[t]                                             # ∂L/∂c_{t−1}
    dZ = dZ.reshape(A.shape)
    return dZ, dZ


def _gru_forward(A, W_T, b_hh, hs):
    """The GRU of rnn/cells.py (PyTorch's variant). A (x_t·Uᵀ + b) becomes the gate
    activations r, z, n; returns W_n h_{t−1} + b_hn [T, B, H], which dr needs."""
    T, B, H = hs[1:].shape
    gh = np.empty_like(A[0])
    gh_n = np.empty_like(hs[1:])
    for t in range(T):
        a = A[t]
        np.matmul(hs[t], W_T, out=gh)
        gh += b_hh
        a[:, :2 * H] += gh[:, :2 * H]
        _sigmoid(a[:, :2 * H])                       # r, z
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        gh_n[t] = gh[:, 2 * H:]
        n += r * gh_n[t]
        np.tanh(n, out=n)
        np.subtract(hs[t], n, out=hs[t + 1])         # h_t = n + z ⊙ (h_{t−1} − n)
        hs[t + 1] *= z
        hs[t + 1] += n
    return gh_n


def _gru_backward(gh_n, A, W, hs, dh):
    """VJP of each step, last to first. Returns ∂L/∂A (input side, x_t·Uᵀ + b) and
    ∂L/∂R (recurrent side, h_{t−1}·Wᵀ + b_hh), [T, B, 3H] each: they differ in the
    n gate, where the recurrent side is multiplied by r."""
    T, B, H = dh.shape
    r, z, n = A[:, :, :H], A[:, :, H:2 * H], A[:, :, 2 * H:]
    # What does not depend on the carried gradient, for all steps at once: the
    # derivatives of the n, z and r pre-activations by ∂L/∂h_t (n, z) and ∂L/∂n (r).
    dn_dh = (1 - z) * (1 - n * n)
    dz_dh = (hs[:-1] - n) * z * (1 - z)
    dr_dn = gh_n * r * (1 - r)

    dA, dR = np.empty_like(A), np.empty_like(A)
    carry = np.empty_like(dh[0])                     # ∂L/∂h_t through step t+1
    for t in reversed(range(T)):
        dar, daz, dan = dA[t, :, :H], dA[t, :, H:2 * H], dA[t, :, 2 * H:]
        dh_t = dh[t]
        if t + 1 < T:
            dh_t += carry
        np.multiply(dh_t, dn_dh[t], out=dan)
        np.multiply(dh_t, dz_dh[t], out=daz)
        np.multiply(dan, dr_dn[t], out=dar)
        dR[t, :, :2 * H] = dA[t, :, :2 * H]
        np.multiply(dan, r[t], out=dR[t, :, 2 * H:])
        if t > 0:
            np.matmul(dR[t], W, out=carry)
            np.multiply(dh_t, z[t], out=dh_t)        # dh is not needed after this step
            carry += dh_t
    return dA, dR


_CELLS = {"elman": (_elman_forward, _elman_backward),
          "lstm": (_lstm_forward, _lstm_backward),
          "gru": (_gru_forward, _gru_backward)}


# ----------------------------------------------------------------------------- PyTorch

def torch_step(cell: str, params: dict, dtype):
    """A callable ``(x, y) -> (loss, grads)``: ``torch.nn.RNN`` / ``LSTM`` / ``GRU``
    with our weights and a ``Linear`` readout, eager mode, gradients by ``backward()``
    and returned as NumPy arrays under our names."""
    _check(cell, params)
    import torch

    tdtype = getattr(torch, np.dtype(dtype).name)
    D, H = params["readout.V"].shape
    kind = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    rnn = kind(D, H, dtype=tdtype)
    readout = torch.nn.Linear(H, D, dtype=tdtype)
    theirs = {"cell.U": rnn.weight_ih_l0, "cell.W": rnn.weight_hh_l0,
              "cell.b": rnn.bias_ih_l0, "cell.b_hh": rnn.bias_hh_l0,
              "readout.V": readout.weight, "readout.c": readout.bias}
    with torch.no_grad():
        for k, p in theirs.items():
            p.copy_(torch.from_numpy(np.asarray(params[k])))

    def step(x, y):
        for p in theirs.values():
            p.grad = None
        hs, _ = rnn(torch.from_numpy(x))            # h_0 (and c_0) = 0
        loss = 0.5 * torch.nn.functional.mse_loss(readout(hs), torch.from_numpy(y))
        loss.backward()
        return loss.detach().numpy()[()], {k: p.grad.numpy() for k, p in theirs.items()}

    return step


# ----------------------------------------------------------------------------- JAX

def jax_step(cell: str, params: dict, dtype, *, T: int, B: int):
    """(callable ``(x, y) -> (loss, grads)``, compile seconds) for x, y [T, B, D]:
    ``jax.jit(jax.value_and_grad(loss))`` over ``jax.lax.scan``, compiled ahead of
    time (T and B are needed for that) so that the callable's first call is not a
    compile. Grads are NumPy arrays under our names. float64 turns on JAX's x64 mode."""
    _check(cell, params)
    import jax
    import jax.numpy as jnp

    dtype = np.dtype(dtype)
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    H = params["cell.W"].shape[1]
    D = params["readout.V"].shape[0]

    def elman(p, h, a_t):
        h = jnp.tanh(a_t + h @ p["cell.W"].T)
        return h, h

    def lstm(p, state, a_t):
        h, c = state
        i, f, g, o = jnp.split(a_t + h @ p["cell.W"].T, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    def gru(p, h, a_t):
        ar, az, an = jnp.split(a_t, 3, axis=-1)
        gr, gz, gn = jnp.split(h @ p["cell.W"].T + p["cell.b_hh"], 3, axis=-1)
        r, z = jax.nn.sigmoid(ar + gr), jax.nn.sigmoid(az + gz)
        n = jnp.tanh(an + r * gn)
        h = (1 - z) * n + z * h
        return h, h

    step = {"elman": elman, "lstm": lstm, "gru": gru}[cell]

    def loss_fn(p, x, y):
        bias = p["cell.b"] if cell == "gru" else p["cell.b"] + p["cell.b_hh"]
        a = x @ p["cell.U"].T + bias                 # the input projection of every step
        h0 = jnp.zeros((x.shape[1], H), dtype)
        _, hs = jax.lax.scan(lambda s, a_t: step(p, s, a_t),
                             (h0, h0) if cell == "lstm" else h0, a)
        out = hs @ p["readout.V"].T + p["readout.c"]
        return 0.5 * jnp.mean((out - y) ** 2)

    p = {k: jnp.asarray(params[k], dtype) for k in NAMES}
    xy = jax.ShapeDtypeStruct((T, B, D), dtype)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(p, xy, xy).compile()
    seconds = time.perf_counter() - t0

    def run(x, y):
        loss, grads = compiled(p, x, y)
        return np.asarray(loss)[()], {k: np.asarray(grads[k]) for k in NAMES}

    return run, seconds

"""Optimizers and gradient clipping, on dicts of NumPy arrays keyed by parameter name."""
from __future__ import annotations

import numpy as np


def global_norm(grads: dict) -> float:
    """‖g‖ over every gradient together: √(Σ_i Σ g_i²)."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))


def clip_by_global_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    """Scale all gradients by min(1, max_norm / ‖g‖); returns (clipped, ‖g‖ before)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    norm = global_norm(grads)
    if not np.isfinite(norm):
        raise FloatingPointError(f"the gradient norm is {norm}; training diverged "
                                 "(lower the learning rate or clip harder)")
    scale = min(1.0, max_norm / (norm + 1e-12))
    return {k: g * scale for k, g in grads.items()}, norm


def clip_by_value(grads: dict, limit: float) -> dict:
    """Clip every gradient element into [−limit, limit]."""
    if not limit > 0:
        raise ValueError(f"the clipping limit must be positive, got {limit!r}")
    return {k: np.clip(g, -limit, limit) for k, g in grads.items()}


class Optimizer:
    """Updates parameters in place from gradients; its state can be saved and restored."""

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"the learning rate must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.t = 0
        self.slots: dict[str, dict[str, np.ndarray]] = {}

    def step(self, params: dict, grads: dict) -> None:
        missing = sorted(set(params) - set(grads))
        if missing:
            raise KeyError(f"no gradient for {missing}")
        self.t += 1
        for k, p in params.items():
            g = grads[k]
            if g.shape != p.shape:
                raise ValueError(f"gradient of {k!r} has shape {list(g.shape)}, the parameter "
                                 f"{list(p.shape)}")
            self.update(k, p, np.asarray(g, p.dtype))

    def slot(self, name: str, key: str, like: np.ndarray) -> np.ndarray:
        s = self.slots.setdefault(name, {})
        if key not in s:
            s[key] = np.zeros_like(like)
        return s[key]

    def update(self, key, p, g):
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t)}
        for name, s in self.slots.items():
            out.update({f"{name}/{k}": v for k, v in s.items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.slots = {}
        for key, v in state.items():
            if key != "t":
                name, k = key.split("/", 1)
                self.slots.setdefault(name, {})[k] = np.array(v)


class SGD(Optimizer):
    """θ ← θ − η g."""

    def update(self, key, p, g):
        p -= self.lr * g


class Momentum(Optimizer):
    """v ← μ v + g;  θ ← θ − η v (heavy ball)."""

    def __init__(self, lr: float, momentum: float = 0.9):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum

    def update(self, key, p, g):
        v = self.slot("v", key, p)
        v *= self.momentum
        v += g
        p -= self.lr * v


class Adam(Optimizer):
    """Adam (Kingma & Ba): bias-corrected first and second moments."""

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(lr)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        self.b1, self.b2 = betas
        self.eps = eps

    def update(self, key, p, g):
        m, v = self.slot("m", key, p), self.slot("v", key, p)
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        m_hat = m / (1 - self.b1 ** self.t)
        v_hat = v / (1 - self.b2 ** self.t)
        p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}

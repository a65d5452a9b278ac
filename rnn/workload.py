"""The benchmark workload of DESIGN.md as a graph: one training step of a recurrent
regressor (forward, loss and every gradient), for any cell, size and dtype.

x [T, B, D] → cell (PyTorch's conventions, h0 = 0) → out_t = h_t·Vᵀ + c
loss = ½ · mean over (T, B, D) of (out_t − y_t)²
"""
from __future__ import annotations

import autograph as ag

from .cells import CELLS
from .layers import Linear, run
from .losses import squared_error
from .module import Module

SIZES = {  # (B, T, D, H)
    "tiny": (1, 64, 16, 32),
    "small": (16, 64, 64, 128),
    "medium": (32, 64, 256, 256),
    "large": (64, 32, 512, 512),
}


class Regressor(Module):
    """A cell and its linear readout."""

    def __init__(self, cell: str, D: int, H: int, dtype="float64"):
        super().__init__("model", dtype)
        self.cell = CELLS[cell](D, H, name="cell", dtype=dtype)
        self.out = Linear(H, D, name="readout", dtype=dtype)
        self.children = [self.cell, self.out]


def training_step(cell: str, D: int, H: int, dtype="float64", seed: int = 0):
    """(model, data placeholders [x, y], outputs [loss, *grads in state_dict order])."""
    model = Regressor(cell, D, H, dtype).init(seed)
    x = ag.placeholder("x", ("T", "B", D), dtype)
    y = ag.placeholder("y", ("T", "B", D), dtype)
    _, hs = run(model.cell, x)
    loss = squared_error(model.out(hs), y)
    grads = ag.grad(loss, list(model.nodes().values()))
    return model, [x, y], [loss] + grads

"""Losses over time steps."""
from __future__ import annotations

import autograph as ag


def sequence_cross_entropy(logits, targets, mask=None, reduction="mean"):
    """Softmax cross-entropy over time steps: L = Σ_t −log y_{t, c_t}.

    logits [T, B, V], targets [T, B] (int64 class ids). `mask` [T, B] (bool) drops
    pad positions. ``reduction="sum"`` is the course material's Σ_t L_t (summed over
    the batch too); ``"mean"`` divides by the number of real positions.
    """
    logits, targets = ag.as_node(logits), ag.as_node(targets)
    losses = ag.cross_entropy(logits, targets, reduction="none")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if mask is None:
        return ag.mean(losses) if reduction == "mean" else ag.sum(losses)
    mask = ag.as_node(mask)
    if mask.dtype != "bool" or mask.shape != targets.shape:
        raise ag.ShapeError(f"the mask {mask.label!r} ({mask.type_str}) must be bool with the "
                            f"targets' shape {list(targets.shape)}")
    m = mask.astype(logits.dtype)
    total = ag.sum(losses * m)
    if reduction == "sum":
        return total
    return total / ag.maximum(ag.sum(m), 1.0)


def squared_error(y, target, reduction="mean"):
    """½ (y − target)², averaged over every element (``"mean"``) or summed (``"sum"``)."""
    d = ag.as_node(y) - target
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return 0.5 * (ag.mean(d * d) if reduction == "mean" else ag.sum(d * d))

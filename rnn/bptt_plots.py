"""Heatmaps of a `BPTTExplanation` with matplotlib (imported only when drawing).

Every picture says in its title and axes what it shows, so that it can be read
without the code: rows are loss terms L_t (or later states s_t), columns are the
step k whose weight copy W^(k) (or state s_k) the gradient reaches.
"""
from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf", "cairo"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _log_image(ax, values, title, xlabel, ylabel, first, vmin=None, vmax=None):
    """A lower-triangular matrix as a log10 heatmap; NaN (k > t) left blank."""
    from matplotlib.colors import LogNorm
    v = np.where(values > 0, values, np.nan)
    finite = v[np.isfinite(v)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 1e-3)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
    lo = max(lo, hi * 1e-12)
    n = values.shape[0]
    im = ax.imshow(v, norm=LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001)), cmap="viridis",
                   origin="upper", extent=(first - .5, first + n - .5, first + n - .5, first - .5))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ticks = list(range(first, first + n, max(1, n // 8)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_facecolor("#f2f2f2")
    return im


def heatmap(ex, path=None, *, truncate: int | None = None, clip: float | None = None):
    """Three panels for one explanation: ‖∂s_t/∂s_k‖ over (t, k); ‖∂L_t/∂W^(k)‖ over
    (t, k) with the explicit diagonal outlined (and the truncation band, if given);
    the gradient of each copy, ‖Σ_t ∂L_t/∂W^(k)‖, over k, with truncation and
    clipping applied."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    T = ex.T
    im = _log_image(axes[0], ex.state_norms, "‖∂s_t/∂s_k‖ (product of one-step Jacobians)",
                    "k (earlier state s_k)", "t (later state s_t)", 0)
    fig.colorbar(im, ax=axes[0], label="spectral norm (log scale)")
    im = _log_image(axes[1], ex.contribution_norms,
                    f"‖∂L_t/∂{ex.param}^(k)‖: term k of loss L_t", f"k (copy {ex.param}^(k))",
                    "t (loss term L_t)", 1)
    fig.colorbar(im, ax=axes[1], label="Frobenius norm (log scale)")
    ks = np.arange(1, T + 1)
    axes[1].plot(ks, ks, "s", ms=min(14, 160 / T), mfc="none", mec="#d95f02", mew=1.5,
                 label="explicit (k = t)")
    if truncate is not None and truncate < T - 1:
        xs_, ys_ = [], []
        for t in range(truncate + 2, T + 1):   # row t keeps k ≥ t − K
            xs_ += [t - truncate - .5, t - truncate - .5]
            ys_ += [t - .5, t + .5]
        axes[1].plot(xs_, ys_, color="red", lw=2,
                     label=f"truncated BPTT: terms left of the line (t − k > {truncate}) dropped")
    axes[1].legend(loc="upper right", fontsize=8, framealpha=.9)

    ax = axes[2]
    full = np.linalg.norm(ex.per_copy().reshape(T, -1), axis=1)
    ax.plot(ks, full, "o-", color="#1b9e77", label=f"full BPTT, ‖∂L/∂{ex.param}‖ = "
                                                   f"{np.linalg.norm(ex.total()):.2e}")
    if truncate is not None:
        keep = np.tril(np.ones((T, T)), 0) - np.tril(np.ones((T, T)), -truncate - 1)
        trunc = np.einsum("tk,tk...->k...", keep, ex.contributions)
        ax.plot(ks, np.linalg.norm(trunc.reshape(T, -1), axis=1), "s--", color="red",
                label=f"truncated (K = {truncate}), ‖g‖ = {np.linalg.norm(ex.truncated(truncate)):.2e}")
    if clip is not None:
        _, scale = ex.clipped(clip)
        ax.plot(ks, full * scale, "^:", color="#7570b3",
                label=f"clipped to ‖g‖ ≤ {clip:g} (× {scale:.2g})")
    ax.set_yscale("log")
    ax.set_xlabel(f"k (copy {ex.param}^(k))")
    ax.set_ylabel(f"‖Σ_t ∂L_t/∂{ex.param}^(k)‖")
    ax.set_title(f"gradient reaching each copy {ex.param}^(k)", fontsize=10)
    ax.grid(True, which="both", alpha=.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"BPTT terms of ∂L/∂{ex.param} for the {ex.cell} cell "
                 f"'{ex.cell_name}' (T = {T}, H = {ex.hidden_size}, L = Σ_t L_t)", fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def compare(explanations: dict, path=None):
    """Side by side: ‖∂s_t/∂s_k‖ heatmaps of several explanations (keyed by a label
    such as "Elman, scale 0.5"), and one plot of ‖∂s_T/∂s_k‖ against the distance
    T − k for all of them — where vanishing and exploding show as slopes."""
    plt = _plt()
    n = len(explanations)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.4 * n + 5, 4.2), constrained_layout=True)
    vals = np.concatenate([e.state_norms[np.isfinite(e.state_norms)] for e in explanations.values()])
    vals = vals[vals > 0]
    lo, hi = max(vals.min(), vals.max() * 1e-12), vals.max()
    for ax, (label, e) in zip(axes, explanations.items()):
        im = _log_image(ax, e.state_norms, label, "k", "t", 0, lo, hi)
    fig.colorbar(im, ax=axes[:n], label="‖∂s_t/∂s_k‖ (log scale)", shrink=.9)
    ax = axes[-1]
    for label, e in explanations.items():
        d = np.arange(e.T + 1)
        ax.plot(d, e.state_norms[e.T, ::-1], "o-", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("distance T − k (steps back in time)")
    ax.set_ylabel("‖∂s_T/∂s_k‖")
    ax.set_title("how far back the gradient reaches", fontsize=10)
    ax.grid(True, which="both", alpha=.3)
    ax.legend(fontsize=8)
    fig.suptitle("‖∂s_t/∂s_k‖ across cells and weight scales "
                 "(dark = vanished, bright = kept or exploded)", fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
